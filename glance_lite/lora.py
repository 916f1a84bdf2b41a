"""Glance LoRA files in and out: where they come from, whether they fit the base model, and at what scale.

The official Glance files (CSU-JPG/Glance) mix two key layouts and carry no alpha (reference notes §5):
to_q/to_k/to_v/to_out.0 use `lora.down`/`lora.up`, everything else `lora_A`/`lora_B`. diffusers decides
the layout from the *first* key, so it silently drops the attention weights and loads the rest at alpha = r,
a quarter of the trained scale. Both behaviours are offered, explicitly:

- ``lora_compat="diffusers"``: load exactly as `<Pipeline>.load_lora_weights` does (reproduces published images).
- ``lora_compat="trained"``: every key, at the scale it was trained with (the file's metadata, else the
  family's recipe alpha / rank, i.e. alpha = 4 r for Glance).

Each load returns a `LoraReport` saying which layers were applied and which were dropped. Files glance_lite
writes are plain diffusers LoRA files *with* adapter metadata, so every loader applies them identically.
"""

from __future__ import annotations

import json
import os
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch
from safetensors import safe_open

LoraCompat = Literal["trained", "diffusers"]
LORA_COMPAT_MODES = ("trained", "diffusers")
DEFAULT_WEIGHT_NAME = "pytorch_lora_weights.safetensors"
_LAYER_SUFFIX = re.compile(r"\.(lora_A|lora_B|lora\.down|lora\.up)(\.[^.]+)?\.weight$")


class LoraMismatchError(ValueError):
    """A LoRA file whose layers do not exist in, or do not fit the shapes of, the base transformer."""


@dataclass(frozen=True)
class LoraSource:
    """Where an adapter comes from: a local .safetensors file or folder, or a hub repo plus file name."""

    location: str
    weight_name: str | None = None

    def __str__(self) -> str:
        return f"{self.location}::{self.weight_name}" if self.weight_name else self.location

    def resolve(self) -> Path:
        """Local path of the file; hub files come from the local cache or a download. Clear errors otherwise."""
        path = Path(self.location).expanduser()
        if path.is_file():
            return path
        if path.is_dir():
            candidate = path / (self.weight_name or DEFAULT_WEIGHT_NAME)
            if candidate.is_file():
                return candidate
            raise FileNotFoundError(
                f"LoRA folder {path} has no {candidate.name}. Pass the .safetensors file itself, or its name as weight_name."
            )
        looks_local = path.suffix == ".safetensors" or self.location.startswith((".", "/", "~")) or os.sep + os.sep in self.location
        if looks_local or self.location.count("/") != 1:
            raise FileNotFoundError(
                f"LoRA file not found: {self.location}. Check the path, or give a hub repo as 'owner/name' with a weight name."
            )
        return self._download()

    def _download(self) -> Path:
        from huggingface_hub import hf_hub_download

        weight = self.weight_name or DEFAULT_WEIGHT_NAME
        try:
            return Path(hf_hub_download(self.location, weight))
        except Exception as exc:  # network, auth, missing file: all mean "cannot get it from here"
            raise FileNotFoundError(
                f"Could not get LoRA {weight!r} from hub repo {self.location!r} ({type(exc).__name__}: {exc}). "
                "If this machine is offline, download the file elsewhere and pass its local path."
            ) from None


@dataclass
class LoraReport:
    """What a load actually did: user-facing evidence for the compat mode chosen."""

    adapter_name: str
    source: str
    compat: str
    rank: int
    alpha: float
    applied: list[str] = field(default_factory=list)
    dropped: list[str] = field(default_factory=list)

    @property
    def scale(self) -> float:
        return self.alpha / self.rank

    def summary(self) -> str:
        text = (
            f"{self.adapter_name}: {len(self.applied)} LoRA layers applied from {self.source} "
            f"(compat={self.compat}, rank {self.rank}, alpha {self.alpha:g}, scale {self.scale:g})"
        )
        if self.dropped:
            kinds = sorted({_layer_kind(m) for m in self.dropped})
            text += f"; {len(self.dropped)} layers in the file were NOT applied ({', '.join(kinds)})"
        return text

    def to_dict(self) -> dict:
        return {
            "adapter": self.adapter_name, "source": self.source, "compat": self.compat, "rank": self.rank,
            "alpha": self.alpha, "scale": self.scale, "applied_layers": len(self.applied),
            "dropped_layers": len(self.dropped), "dropped": self.dropped,
        }  # fmt: skip


def _layer_kind(module_name: str) -> str:
    """'transformer_blocks.3.attn.to_q' -> 'attn.to_q' (the part that names the kind of layer)."""
    parts = [p for p in module_name.split(".") if not p.isdigit()]
    return ".".join(parts[-2:])


def read_lora_file(path: Path) -> tuple[dict[str, torch.Tensor], dict | None]:
    """Tensors and the diffusers adapter metadata (LoraConfig dict, prefix stripped) if the file has it."""
    with safe_open(str(path), framework="pt") as f:
        tensors = {k: f.get_tensor(k) for k in f.keys()}
        raw = (f.metadata() or {}).get("lora_adapter_metadata")
    metadata = None
    if raw:
        packed = json.loads(raw)
        metadata = {k.split(".", 1)[1]: v for k, v in packed.items() if k.startswith("transformer.")} or None
    return tensors, metadata


def normalize_lora_keys(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """One layout: no `transformer.` prefix, `lora_A`/`lora_B` everywhere (the peft layout)."""
    out = {}
    for key, value in state_dict.items():
        key = key.removeprefix("transformer.").removeprefix("diffusion_model.")
        key = key.replace(".lora.down.", ".lora_A.").replace(".lora.up.", ".lora_B.")
        out[key] = value
    return out


def lora_modules(state_dict: dict[str, torch.Tensor]) -> dict[str, dict[str, torch.Tensor]]:
    """Group a (normalized) state dict by the module it adapts: {'blocks.0.attn.to_q': {'A': .., 'B': ..}}."""
    modules: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in state_dict.items():
        match = _LAYER_SUFFIX.search(key)
        if not match:
            continue
        side = "A" if match.group(1) in ("lora_A", "lora.down") else "B"
        modules.setdefault(key[: match.start()], {})[side] = value
    return modules


def check_lora_fits(state_dict: dict[str, torch.Tensor], transformer, family, source: str) -> None:
    """Refuse a LoRA made for another architecture before anything is loaded (works on a meta-device model)."""
    modules = lora_modules(normalize_lora_keys(state_dict))
    if not modules:
        raise LoraMismatchError(f"{source} contains no LoRA layers (no lora_A/lora_B or lora.down/lora.up keys).")
    named = dict(transformer.named_modules())
    missing, misshaped = [], []
    for name, pair in modules.items():
        layer = named.get(name)
        if layer is None or not hasattr(layer, "in_features"):
            missing.append(name)
            continue
        a, b = pair.get("A"), pair.get("B")
        if (a is not None and a.shape[1] != layer.in_features) or (b is not None and b.shape[0] != layer.out_features):
            misshaped.append(f"{name}: LoRA {tuple(a.shape) if a is not None else '?'} vs layer {layer.in_features}->{layer.out_features}")
    if missing or misshaped:
        from .families import FAMILIES

        origin = next((o for cls in FAMILIES.values() if (o := cls().describe_lora_origin(modules))), None)
        hint = f" It looks like a LoRA for {origin}." if origin and origin != family.name else ""
        examples = (missing + misshaped)[:3]
        raise LoraMismatchError(
            f"{source} does not fit this {family.name} model: {len(missing)} of {len(modules)} LoRA layers name "
            f"modules the transformer does not have and {len(misshaped)} have the wrong shape "
            f"(e.g. {'; '.join(examples)}).{hint} Use a LoRA trained for this base model."
        )


def _trained_metadata(modules: dict, metadata: dict | None, family) -> dict:
    """LoraConfig for 'trained' mode: the file's own config, else the recipe's alpha/rank ratio per rank."""
    if metadata:
        return metadata
    ranks = {name: int(pair["B"].shape[1]) for name, pair in modules.items() if "B" in pair}
    rank = Counter(ranks.values()).most_common(1)[0][0]
    ratio = family.recipe.alpha / family.recipe.rank
    rank_pattern = {f"^{n}$": r for n, r in ranks.items() if r != rank}
    return {
        "r": rank, "lora_alpha": ratio * rank, "target_modules": sorted(modules),
        "rank_pattern": rank_pattern, "alpha_pattern": {k: ratio * r for k, r in rank_pattern.items()},
        "init_lora_weights": False,
    }  # fmt: skip


def load_lora(transformer, family, source: LoraSource, adapter_name: str, compat: LoraCompat = "trained") -> LoraReport:
    """Add one named adapter to the transformer from a file, in the chosen compat mode, and report what landed."""
    if compat not in LORA_COMPAT_MODES:
        raise ValueError(f"Unknown lora_compat {compat!r}: choose 'trained' (every key, trained scale) or 'diffusers'.")
    path = source.resolve()
    state_dict, metadata = read_lora_file(path)
    check_lora_fits(state_dict, transformer, family, str(source))
    if compat == "diffusers":
        sd, meta = family.pipeline_class.lora_state_dict(str(path), return_lora_metadata=True)
        family.pipeline_class.load_lora_into_transformer(sd, transformer=transformer, adapter_name=adapter_name, metadata=meta)
    else:
        normalized = normalize_lora_keys(state_dict)
        config = _trained_metadata(lora_modules(normalized), metadata, family)
        transformer.load_lora_adapter(normalized, prefix=None, adapter_name=adapter_name, metadata=config)
    return _report(transformer, adapter_name, str(source), compat, lora_modules(normalize_lora_keys(state_dict)))


def _report(transformer, adapter_name, source, compat, file_modules) -> LoraReport:
    from peft.utils import get_peft_model_state_dict

    loaded = lora_modules(get_peft_model_state_dict(transformer, adapter_name=adapter_name))
    config = transformer.peft_config[adapter_name]
    applied = sorted(m for m in file_modules if m in loaded and _equal(file_modules[m], loaded[m]))
    dropped = sorted(m for m in file_modules if m not in applied)
    return LoraReport(adapter_name, source, compat, config.r, float(config.lora_alpha), applied, dropped)


def _equal(from_file: dict, in_model: dict) -> bool:
    return all(k in in_model and torch.equal(v.to(in_model[k].dtype).cpu(), in_model[k].cpu()) for k, v in from_file.items())


def save_lora(transformer, family, adapter_name: str, path: Path) -> Path:
    """Write one adapter as a diffusers LoRA file with its LoraConfig metadata (alpha survives the round trip).

    Written to a temporary name in the same folder and renamed, so a crash never leaves a half-written file.
    """
    from peft.utils import get_peft_model_state_dict
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    config = transformer.peft_config[adapter_name].to_dict()
    config = {k: (sorted(v) if isinstance(v, set) else v) for k, v in config.items()}
    layers = get_peft_model_state_dict(transformer, adapter_name=adapter_name)
    tensors = {f"transformer.{k}": v.detach().contiguous().cpu() for k, v in layers.items()}
    metadata = {
        "format": "pt",
        "lora_adapter_metadata": json.dumps({f"transformer.{k}": v for k, v in config.items()}, default=str),
        "glance_lite.family": family.name,
    }
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    save_file(tensors, str(tmp), metadata=metadata)
    os.replace(tmp, path)
    return path
