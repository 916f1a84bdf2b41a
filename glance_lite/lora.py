"""Glance LoRA files in and out: where they come from, whether they fit the base model, at what scale each loader
applies them, and `python -m glance_lite.lora info|convert`.

    python -m glance_lite.lora info slow.safetensors         # family, layers, rank, alpha, layout, each loader's scale
    python -m glance_lite.lora convert glance_qwen_slow.safetensors --out slow.safetensors --scale as-trained
    python -m glance_lite.lora convert glance_qwen_slow.safetensors --out published.safetensors --scale as-diffusers

Files glance_lite writes (`save_lora`, `convert`) hold `lora_A`/`lora_B` weights and one `.alpha` tensor per layer
(alpha = scale x rank), keyed with the family's `lora_key_prefix` (`diffusion_model.` for Qwen-Image, `transformer.`
for FLUX), and no diffusers adapter metadata. Every loader checked applies them at the trained scale (README, "LoRA
files"): glance_lite; plain diffusers `load_lora_weights` (Qwen-Image: `_convert_non_diffusers_qwen_lora_to_diffusers`
folds alpha/rank into the weights; FLUX: the `.alpha` keys become peft's lora_alpha); and readers of per-layer `.alpha`
keys such as ComfyUI and kohya-style tools (scale alpha/rank, 1.0 without `.alpha`; they do not read metadata).
Adapter metadata is left out on purpose: diffusers' Qwen-Image path would apply its alpha on top of the folded one,
and its FLUX path refuses a file holding both. Older glance_lite files (`transformer.` keys, alpha in the metadata)
still load at their trained scale in glance_lite and in diffusers.

The official Glance files (CSU-JPG/Glance) mix two key layouts and carry no alpha (reference notes §5):
to_q/to_k/to_v/to_out.0 use `lora.down`/`lora.up`, everything else `lora_A`/`lora_B`. diffusers decides
the layout from the *first* key, so it silently drops the attention weights and loads the rest at alpha = r,
a quarter of the trained scale. Both behaviours are offered, explicitly:

- ``lora_compat="diffusers"``: load exactly as `<Pipeline>.load_lora_weights` does (reproduces published images).
- ``lora_compat="trained"``: every key, at the scale it was trained with (the file's `.alpha` keys, else its
  metadata, else the family's recipe alpha / rank, i.e. alpha = 4 r for Glance).
- ``lora_compat="published"``: every key, at the scale plain diffusers applies (`.alpha` keys, else metadata, else
  1.0): how a few-step LoRA someone else published (Qwen-Image-Lightning) is meant to run. Its files come as
  diffusers/peft keys (`transformer.` + `lora_A/lora_B`), `diffusion_model.` + `lora_down/lora_up` + per-layer
  `.alpha`, or kohya's flattened `lora_unet_...` names, which are read as diffusers' own conversion reads them.

`convert` writes either reading into the portable layout above (`--scale as-diffusers` leaves out the layers
diffusers drops). Each load returns a `LoraReport` saying which layers were applied, which were dropped, and the
scale they were applied at.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import warnings
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from . import cli
from .errors import UserError, library_reason

if TYPE_CHECKING:
    import torch

LoraCompat = Literal["trained", "diffusers", "published"]
LORA_COMPAT_MODES = ("trained", "diffusers", "published")
CONVERT_SCALES = ("as-trained", "as-diffusers")
DEFAULT_WEIGHT_NAME = "pytorch_lora_weights.safetensors"
_LAYER_SUFFIX = re.compile(r"\.(lora_A|lora_B|lora\.down|lora\.up|lora_down|lora_up)(\.[^.]+)?\.weight$")
# Down/up names of the layouts read here, each mapped to the peft names (`lora_A` = down, `lora_B` = up).
_TO_PEFT = ((".lora.down.", ".lora_A."), (".lora.up.", ".lora_B."), (".lora_down.", ".lora_A."), (".lora_up.", ".lora_B."))
_STYLE_NAMES = {"lora_A": "lora_A/lora_B", "lora.down": "lora.down/lora.up", "lora_down": "lora_down/lora_up"}


class LoraMismatchError(UserError, ValueError):
    """A LoRA file whose layers do not exist in, or do not fit the shapes of, the base transformer."""


class LoraFileError(UserError, ValueError):
    """A file that is not a LoRA file glance_lite can read (not safetensors, no LoRA keys, unknown key layout)."""


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
    """What a load actually did: user-facing evidence for the compat mode chosen.

    `alpha` is the alpha the applied layers act with (scale x rank), measured on the loaded weights, so a loader
    that folds alpha into the weights (diffusers' Qwen-Image path) reports the scale it really applies."""

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
            text += f"; {len(self.dropped)} layers in the file were NOT applied ({', '.join(_layer_kinds(self.dropped))})"
        return text

    def to_dict(self) -> dict:
        return {
            "adapter": self.adapter_name, "source": self.source, "compat": self.compat, "rank": self.rank,
            "alpha": self.alpha, "scale": self.scale, "applied_layers": len(self.applied),
            "dropped_layers": len(self.dropped), "dropped": self.dropped,
        }  # fmt: skip


def _layer_kind(module_name: str) -> str:
    """'transformer_blocks.3.attn.to_out.0' -> 'attn.to_out.0' (the part after the block index names the kind)."""
    parts = module_name.split(".")
    first_index = next((i for i, p in enumerate(parts) if p.isdigit()), None)
    return ".".join(parts[first_index + 1 :]) if first_index is not None else module_name


def _layer_kinds(module_names) -> list[str]:
    return sorted({_layer_kind(m) for m in module_names})


# ==== reading files ================================================================================================
def _read_safetensors(path: Path) -> tuple[dict[str, torch.Tensor], dict]:
    """Tensors and file metadata; a file that is not safetensors (or is cut short) is a `LoraFileError` naming it."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            return {k: f.get_tensor(k) for k in f.keys()}, dict(f.metadata() or {})
    except OSError as exc:
        raise _unreadable(path, exc) from None
    except Exception as exc:  # safetensors' header and truncation errors come in several types
        raise _not_safetensors(path, exc) from None


def _unreadable(path: Path, exc: OSError) -> LoraFileError:
    return LoraFileError(f"LoRA file {path} cannot be read ({exc.strerror or exc}).")


def _not_safetensors(path: Path, exc: Exception) -> LoraFileError:
    return LoraFileError(
        f"{path} is not a safetensors file ({library_reason(exc, 120)}): give a LoRA .safetensors file "
        "(python -m glance_lite.lora info FILE checks one)."
    )


_LORA_FACTORS = "no lora_A/lora_B, lora.down/lora.up or lora_down/lora_up weights"


def _no_lora_keys(path: Path) -> LoraFileError:
    return LoraFileError(f"{path} holds no LoRA keys ({_LORA_FACTORS}).")


def check_lora_file_header(path: Path) -> None:
    """Refuse, from its header alone (no torch), a file that is not safetensors, is cut short, or holds no LoRA keys:
    a command line answers these at once, before any model loads. The full read (`_read_safetensors`) says the same."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            length = int.from_bytes(f.read(8), "little")
            if size < 8 or length > size - 8:
                raise ValueError("header too large" if size >= 8 else "shorter than a safetensors header")
            header = json.loads(f.read(length))
    except OSError as exc:
        raise _unreadable(path, exc) from None
    except (ValueError, UnicodeDecodeError) as exc:  # json.JSONDecodeError is a ValueError
        raise _not_safetensors(path, exc) from None
    tensors = {k: v for k, v in header.items() if k != "__metadata__"} if isinstance(header, dict) else {}
    try:
        end = max((int(v["data_offsets"][1]) for v in tensors.values()), default=0)
    except (KeyError, TypeError, ValueError, IndexError):
        raise LoraFileError(f"{path} is not a safetensors file (its header does not describe tensors).") from None
    if 8 + length + end > size:
        raise LoraFileError(f"{path} is cut short ({size} of {8 + length + end} bytes): copy or download it again.")
    if not any(_LAYER_SUFFIX.search(key) for key in tensors):
        raise _no_lora_keys(path)


def _adapter_metadata(file_metadata: dict) -> dict | None:
    """The diffusers adapter metadata (a LoraConfig dict, `transformer.` stripped), if the file has it."""
    raw = file_metadata.get("lora_adapter_metadata")
    if not raw:
        return None
    return {k.split(".", 1)[1]: v for k, v in json.loads(raw).items() if k.startswith("transformer.")} or None


def read_lora_file(path: Path) -> tuple[dict[str, torch.Tensor], dict | None]:
    """Tensors and the diffusers adapter metadata (LoraConfig dict, prefix stripped) if the file has it."""
    tensors, file_metadata = _read_safetensors(path)
    return tensors, _adapter_metadata(file_metadata)


KOHYA_PREFIX = "lora_unet_"


def kohya_module_names(keys) -> dict[str, str]:
    """{flattened kohya module name: dotted module name} for keys like `lora_unet_transformer_blocks_0_attn_to_q.
    lora_down.weight`, named exactly as diffusers' own conversion names them
    (`_convert_non_diffusers_qwen_lora_to_diffusers`, the layout Qwen-Image-Lightning and kohya-trained Qwen-Image
    LoRAs ship in): the conversion is run on one placeholder pair per layer and its output names read back."""
    flat = sorted({key.split(".", 1)[0] for key in keys if key.startswith(KOHYA_PREFIX)})
    if not flat:
        return {}
    import torch
    from diffusers.loaders.lora_conversion_utils import _convert_non_diffusers_qwen_lora_to_diffusers

    placeholder = torch.zeros(1, 1)
    pairs = {f"{name}.{side}.weight": placeholder for name in flat for side in ("lora_down", "lora_up")}
    converted = [k for k in _convert_non_diffusers_qwen_lora_to_diffusers(pairs) if k.endswith(".lora_A.weight")]
    return {name: key.removeprefix("transformer.").removesuffix(".lora_A.weight") for name, key in zip(flat, converted)}


def normalize_lora_keys(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """One layout: no `transformer.`/`diffusion_model.` prefix, kohya's flattened names dotted, `lora_A`/`lora_B`
    everywhere (the peft layout); per-layer `<module>.alpha` keys keep their module name."""
    dotted = kohya_module_names(state_dict)
    out = {}
    for key, value in state_dict.items():
        key = key.removeprefix("transformer.").removeprefix("diffusion_model.")
        if key.startswith(KOHYA_PREFIX):
            flat, _, rest = key.partition(".")
            key = f"{dotted[flat]}.{rest}"
        for old, new in _TO_PEFT:
            key = key.replace(old, new)
        out[key] = value
    return out


def lora_modules(state_dict: dict[str, torch.Tensor]) -> dict[str, dict[str, torch.Tensor]]:
    """Group a (normalized) state dict by the module it adapts: {'blocks.0.attn.to_q': {'A': .., 'B': ..}}."""
    modules: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in state_dict.items():
        match = _LAYER_SUFFIX.search(key)
        if not match:
            continue
        side = "A" if match.group(1) in ("lora_A", "lora.down", "lora_down") else "B"
        modules.setdefault(key[: match.start()], {})[side] = value
    return modules


def layer_alphas(state_dict: dict[str, torch.Tensor]) -> dict[str, float]:
    """Per-layer alphas from `<module>.alpha` keys (the kohya / ComfyUI convention), by module name."""
    return {k.removesuffix(".alpha"): float(v) for k, v in normalize_lora_keys(state_dict).items() if k.endswith(".alpha")}


def peft_layers(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Only the LoRA weights, in the peft layout: what `load_lora_adapter` / `set_peft_model_state_dict` take."""
    return {k: v for k, v in normalize_lora_keys(state_dict).items() if _LAYER_SUFFIX.search(k)}


def layer_ranks(modules: dict[str, dict[str, torch.Tensor]]) -> dict[str, int]:
    return {name: int(pair["A"].shape[0] if "A" in pair else pair["B"].shape[1]) for name, pair in modules.items()}


def _most_common(values):
    return Counter(values).most_common(1)[0][0]


def lora_config(ranks: dict[str, int], alphas: dict[str, float]) -> dict:
    """A LoraConfig dict giving every module its own rank and alpha (the most common ones as defaults)."""
    rank = _most_common(ranks.values())
    alpha = _most_common(alphas[m] for m in ranks)
    return {
        "r": rank, "lora_alpha": alpha, "target_modules": sorted(ranks),
        "rank_pattern": {f"^{m}$": r for m, r in ranks.items() if r != rank},
        "alpha_pattern": {f"^{m}$": alphas[m] for m in ranks if alphas[m] != alpha},
        "init_lora_weights": False,
    }  # fmt: skip


def _metadata_alphas(metadata: dict, ranks: dict[str, int]) -> dict[str, float]:
    """The alpha each module gets from diffusers adapter metadata, as scale x rank (so rsLoRA files read right)."""
    from peft.utils.other import get_pattern_key

    pattern = metadata.get("alpha_pattern") or {}
    out = {}
    for name, rank in ranks.items():
        alpha = float(pattern.get(get_pattern_key(pattern.keys(), name), metadata.get("lora_alpha", rank)))
        out[name] = alpha * rank**0.5 if metadata.get("use_rslora") else alpha
    return out


# One key of a file: [prefix]<module>.<down/up factor>.weight or [prefix]<module>.alpha; kohya's flattened
# `lora_unet_<module with _ for .>` names the module in one word.
_KEY = re.compile(r"^(?P<prefix>transformer\.|diffusion_model\.|lora_unet_)?(?P<module>.+?)\.(?:(?P<factor>lora_A|lora_B|lora\.down|lora\.up|lora_down|lora_up)\.weight|alpha)$")


def _parse_key(key: str):
    """The regex match of a key glance_lite reads, or None (text-encoder keys are not)."""
    match = _KEY.match(key)
    if not match or match["module"].startswith(("lora_te", "text_encoder")):
        return None
    if match["prefix"] == KOHYA_PREFIX or "." in match["module"]:
        return match
    return None


@dataclass
class LoraFile:
    """A LoRA file as its keys and metadata describe it (no model needed): its layers, their ranks, every alpha it
    states, and how its keys are laid out. The `*_alphas` methods say which alpha each loader applies per layer."""

    path: Path
    modules: dict[str, dict[str, torch.Tensor]]  # module -> {"A": down, "B": up}, prefix stripped
    alphas: dict[str, float]  # from per-layer `.alpha` keys
    metadata: dict | None  # diffusers adapter metadata (a LoraConfig dict)
    prefixes: Counter  # key prefix ('' for none) -> number of keys
    styles: Counter  # 'lora_A/lora_B' | 'lora.down/lora.up' | 'lora_down/lora_up' -> number of layers

    @classmethod
    def from_tensors(cls, path: Path, tensors: dict[str, torch.Tensor], file_metadata: dict) -> "LoraFile":
        parsed = [m for k in tensors if (m := _parse_key(k))]
        prefixes = Counter(m["prefix"] or "" for m in parsed)
        styles = Counter(_STYLE_NAMES[m["factor"]] for m in parsed if m["factor"] in _STYLE_NAMES)
        modules = lora_modules(normalize_lora_keys(tensors))
        return cls(Path(path), modules, layer_alphas(tensors), _adapter_metadata(file_metadata), prefixes, styles)

    @property
    def ranks(self) -> dict[str, int]:
        return layer_ranks(self.modules)

    def trained_alphas(self, family) -> dict[str, float]:
        """What `--lora-compat trained` applies: `.alpha` keys, else the metadata, else the recipe's alpha/rank."""
        if self.alphas or self.metadata:
            return self.diffusers_alphas()
        ratio = family.recipe.alpha / family.recipe.rank
        return {m: ratio * r for m, r in self.ranks.items()}

    def diffusers_alphas(self) -> dict[str, float]:
        """What plain diffusers applies: `.alpha` keys, else the metadata, else alpha = rank (scale 1.0)."""
        if self.metadata and not self.alphas:
            return _metadata_alphas(self.metadata, self.ranks)
        return self.per_layer_alpha_reader_alphas()

    def per_layer_alpha_reader_alphas(self) -> dict[str, float]:
        """What ComfyUI / kohya-style loaders apply: each layer's `.alpha` key, alpha = rank (1.0) without one."""
        return {m: self.alphas.get(m, float(r)) for m, r in self.ranks.items()}

    def trained_config(self, family) -> dict:
        """The LoraConfig `--lora-compat trained` loads with (a metadata-only file: its own config, unchanged)."""
        if self.metadata and not self.alphas:
            return self.metadata
        return lora_config(self.ranks, self.trained_alphas(family))

    def published_config(self) -> dict:
        """The LoraConfig of `compat="published"`: every layer, at the scale its publisher's diffusers pipeline
        applies (`.alpha` keys, else the metadata, else 1.0): how a few-step LoRA such as Lightning is meant to run."""
        if self.metadata and not self.alphas:
            return self.metadata
        return lora_config(self.ranks, self.diffusers_alphas())


def read_lora_layout(path: str | Path) -> LoraFile:
    """Read and check a LoRA file before anything heavy is imported; `LoraFileError` / `FileNotFoundError` say why not."""
    path = Path(path)
    if path.is_dir():
        raise LoraFileError(f"{path} is a folder; give the LoRA .safetensors file itself.")
    if not path.is_file():
        raise FileNotFoundError(f"no such file: {path}")
    tensors, file_metadata = _read_safetensors(path)
    lora = LoraFile.from_tensors(path, tensors, file_metadata)
    if not lora.modules:
        raise _no_lora_keys(path)
    unknown = [k for k in tensors if not _parse_key(k)]
    unknown += [f"{m} (one of its two factors only)" for m, pair in lora.modules.items() if len(pair) != 2]
    if unknown:
        raise LoraFileError(
            f"{path} has a LoRA key layout glance_lite does not read ({len(unknown)} keys, e.g. {unknown[0]}). It reads "
            "[transformer.|diffusion_model.]<module>.<lora_A|lora_B|lora.down|lora.up|lora_down|lora_up>.weight and "
            "<module>.alpha with the transformer's own module names, or kohya's lora_unet_<module>.<lora_down|lora_up>.weight."
        )
    return lora


# ==== fitting a model ==============================================================================================
def linear_shapes(transformer) -> dict[str, tuple[int, int]]:
    """{module name: (in_features, out_features)} of the layers a LoRA can adapt (works on a meta-device model)."""
    return {name: (m.in_features, m.out_features) for name, m in transformer.named_modules() if hasattr(m, "in_features")}


def lora_fit_problems(modules: dict, shapes: dict[str, tuple[int, int]]) -> tuple[list[str], list[str]]:
    """(layers the model does not have, layers whose shapes differ from the model's)."""
    missing, misshaped = [], []
    for name, pair in modules.items():
        if name not in shapes:
            missing.append(name)
            continue
        (fan_in, fan_out), a, b = shapes[name], pair.get("A"), pair.get("B")
        if (a is not None and a.shape[1] != fan_in) or (b is not None and b.shape[0] != fan_out):
            misshaped.append(f"{name}: LoRA {tuple(a.shape) if a is not None else '?'} vs layer {fan_in}->{fan_out}")
    return missing, misshaped


def lora_origin(modules) -> str | None:
    """The family whose transformer these module names look like (by name only, whatever the sizes)."""
    from .families import FAMILIES

    return next((o for cls in FAMILIES.values() if (o := cls().describe_lora_origin(modules))), None)


def check_lora_fits(state_dict: dict[str, torch.Tensor], transformer, family, source: str) -> None:
    """Refuse a LoRA made for another architecture before anything is loaded (works on a meta-device model)."""
    check_modules_fit(lora_modules(normalize_lora_keys(state_dict)), transformer, family, source)


def check_modules_fit(modules: dict, transformer, family, source: str) -> None:
    """`check_lora_fits` for a file already grouped by module (`LoraFile.modules`)."""
    if not modules:
        raise LoraMismatchError(f"{source} contains no LoRA layers ({_LORA_FACTORS}).")
    missing, misshaped = lora_fit_problems(modules, linear_shapes(transformer))
    if missing or misshaped:
        origin = lora_origin(modules)
        hint = f" It looks like a LoRA for {origin}." if origin and origin != family.name else ""
        examples = (missing + misshaped)[:3]
        raise LoraMismatchError(
            f"{source} does not fit this {family.name} model: {len(missing)} of {len(modules)} LoRA layers name "
            f"modules the transformer does not have and {len(misshaped)} have the wrong shape "
            f"(e.g. {'; '.join(examples)}).{hint} Use a LoRA trained for this base model."
        )


# ==== loading into a transformer ===================================================================================
def load_lora(transformer, family, source: LoraSource, adapter_name: str, compat: LoraCompat = "trained") -> LoraReport:
    """Add one named adapter to the transformer from a file, in the chosen compat mode, and report what landed."""
    if compat not in LORA_COMPAT_MODES:
        raise ValueError(f"Unknown lora_compat {compat!r}: choose 'trained' (every key, trained scale) or 'diffusers'.")
    path = source.resolve()
    tensors, file_metadata = _read_safetensors(path)
    lora = LoraFile.from_tensors(path, tensors, file_metadata)
    check_modules_fit(lora.modules, transformer, family, str(source))
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Already found a `peft_config`")  # the slow and fast adapters: intended
        if compat == "diffusers":
            _load_as_diffusers(path, transformer, family, adapter_name)
        else:
            config = lora.trained_config(family) if compat == "trained" else lora.published_config()
            transformer.load_lora_adapter(peft_layers(tensors), prefix=None, adapter_name=adapter_name, metadata=config)
    return _report(transformer, adapter_name, str(source), compat, lora.modules)


def _load_as_diffusers(path: Path, transformer, family, adapter_name: str) -> None:
    """What `<Pipeline>.load_lora_weights` does with the file: its key conversions and alpha handling, unchanged."""
    import inspect

    mixin = family.pipeline_class
    if "network_alphas" in inspect.signature(mixin.load_lora_into_transformer).parameters:  # FLUX: `.alpha` keys
        sd, alphas, meta = mixin.lora_state_dict(str(path), return_alphas=True, return_lora_metadata=True)
        mixin.load_lora_into_transformer(sd, network_alphas=alphas, transformer=transformer, adapter_name=adapter_name, metadata=meta)
    else:  # Qwen-Image: a file with `.alpha` keys is converted, alpha/rank folded into the weights
        sd, meta = mixin.lora_state_dict(str(path), return_lora_metadata=True)
        mixin.load_lora_into_transformer(sd, transformer=transformer, adapter_name=adapter_name, metadata=meta)


def diffusers_dropped_layers(path: Path, family, modules) -> list[str]:
    """The layers of a file that a plain `<Pipeline>.load_lora_weights` leaves out, found without a model: diffusers'
    own key conversion (`lora_state_dict`), then the first-key test of `load_lora_adapter` (a file whose first key
    is not `lora_A` is converted as a whole); peft then loads only `lora_A`/`lora_B` weights.
    tests/test_lora_files.py checks this against a real load."""
    from diffusers.utils import convert_unet_state_dict_to_peft

    sd = family.pipeline_class.lora_state_dict(str(path))
    sd = {k.removeprefix("transformer."): v for k, v in sd.items() if k.startswith("transformer.")}
    if sd and "lora_A" not in next(iter(sd)):
        sd = convert_unet_state_dict_to_peft(sd)
    kept = {k.rsplit(".lora_", 1)[0] for k in sd if k.endswith((".lora_A.weight", ".lora_B.weight"))}
    return sorted(set(modules) - kept)


def _report(transformer, adapter_name, source, compat, file_modules) -> LoraReport:
    from peft.utils import get_peft_model_state_dict

    loaded = lora_modules(get_peft_model_state_dict(transformer, adapter_name=adapter_name))
    layers = dict(transformer.named_modules())
    scales = {}
    for name, pair in file_modules.items():
        gain = _gain(pair, loaded[name]) if name in loaded else None
        if gain is not None:
            scales[name] = float(layers[name].scaling[adapter_name]) * gain
    config = transformer.peft_config[adapter_name]
    scale = _most_common(round(s, 6) for s in scales.values()) if scales else float(config.lora_alpha) / config.r
    dropped = sorted(m for m in file_modules if m not in scales)
    return LoraReport(adapter_name, source, compat, config.r, scale * config.r, sorted(scales), dropped)


def _gain(from_file: dict, in_model: dict) -> float | None:
    """c such that the loaded factors' product is c times the file's (each factor equal up to a positive factor,
    e.g. alpha/rank folded in by diffusers), or None if the model does not hold the file's weights."""
    gain = 1.0
    for side in ("A", "B"):
        f, m = from_file.get(side), in_model.get(side)
        if f is None or m is None or f.shape != m.shape:
            return None
        import torch

        f, m = f.detach().float().cpu(), m.detach().float().cpu()
        norm_f, norm_m = float(f.norm()), float(m.norm())
        if norm_f == 0 or norm_m == 0:
            if norm_f != norm_m:
                return None
            continue
        if not torch.allclose(m / norm_m, f / norm_f, rtol=1e-4, atol=1e-7):
            return None
        gain *= norm_m / norm_f
    return gain


# ==== writing files ================================================================================================
def write_lora_file(path: Path, modules: dict, alphas: dict[str, float] | None, prefix: str, metadata: dict | None = None,
                    factors: str = "lora_A") -> Path:  # fmt: skip
    """The portable layout (module docstring): `<prefix><module>.lora_A.weight`, `.lora_B.weight` and `.alpha`.
    Other layouts the ecosystem ships (read back by `load_lora`): `factors="lora_down"` names them
    `.lora_down/.lora_up`, `prefix="lora_unet_"` flattens module names as kohya does, `alphas=None` writes no alpha.

    Written to a temporary name in the same folder and renamed, so a crash never leaves a half-written file.
    """
    import torch
    from safetensors.torch import save_file

    down, up = {"lora_A": ("lora_A", "lora_B"), "lora_down": ("lora_down", "lora_up")}[factors]
    tensors = {}
    for name in sorted(modules):
        key = name.replace(".", "_") if prefix == KOHYA_PREFIX else name
        tensors[f"{prefix}{key}.{down}.weight"] = modules[name]["A"].detach().contiguous().cpu()
        tensors[f"{prefix}{key}.{up}.weight"] = modules[name]["B"].detach().contiguous().cpu()
        if alphas is not None:
            tensors[f"{prefix}{key}.alpha"] = torch.tensor(float(alphas[name]), dtype=torch.float32)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    save_file(tensors, str(tmp), metadata={"format": "pt", **(metadata or {})})
    os.replace(tmp, path)
    return path


def save_lora(transformer, family, adapter_name: str, path: Path) -> Path:
    """Write one adapter in the portable layout, each layer's alpha as the scale it trained with times its rank."""
    from peft.utils import get_peft_model_state_dict

    modules = lora_modules(get_peft_model_state_dict(transformer, adapter_name=adapter_name))
    layers = dict(transformer.named_modules())
    alphas = {name: float(layers[name].scaling[adapter_name]) * layers[name].r[adapter_name] for name in modules}
    return write_lora_file(path, modules, alphas, family.lora_key_prefix, {"glance_lite.family": family.name})


# ==== info and convert =============================================================================================
@dataclass
class LoraFileInfo:
    """What `python -m glance_lite.lora info` reports: the file's layers and layout, the model families it fits, and
    the alpha every loader applies to each layer (`LoraFile.*_alphas`)."""

    lora: LoraFile
    fits: list[str]  # families whose transformer every layer fits
    fitting_models: list[str]  # the models those transformers come from
    checked_against: list[str]  # the models whose architectures were checked (meta device, no weights)
    family: object | None  # the family the recipe scale comes from: the first fit, else the one the names suggest
    diffusers_dropped: list[str] | None  # layers plain diffusers leaves out (None: no family, or diffusers failed)
    diffusers_error: str | None = None

    def loaders(self) -> dict[str, dict]:
        """{loader: {'alphas': per layer, 'because': where they come from}} for the layers each loader applies."""
        lora, family = self.lora, self.family
        source = ".alpha keys" if lora.alphas else "adapter metadata" if lora.metadata else None
        out = {}
        if family is not None:
            recipe = f"no alpha in the file: the {family.name} recipe's alpha/rank = {family.recipe.alpha / family.recipe.rank:g}"
            out["glance_lite --lora-compat trained"] = {"alphas": lora.trained_alphas(family), "because": source or recipe}
        out["glance_lite as a few-step LoRA (--method fewstep-N / lightning-*)"] = {
            "alphas": lora.diffusers_alphas(), "because": source or "no alpha in the file: alpha = rank, as diffusers",
        }  # fmt: skip
        if self.diffusers_dropped is not None:
            kept = {m: a for m, a in lora.diffusers_alphas().items() if m not in self.diffusers_dropped}
            out["plain diffusers load_lora_weights (= --lora-compat diffusers)"] = {
                "alphas": kept, "because": source or "no alpha in the file: alpha = rank", "dropped": self.diffusers_dropped,
            }  # fmt: skip
        out["per-layer .alpha readers (ComfyUI, kohya-style)"] = {
            "alphas": lora.per_layer_alpha_reader_alphas(), "because": ".alpha keys" if lora.alphas else "no .alpha keys: scale 1.0",
        }  # fmt: skip
        return out

    def to_dict(self) -> dict:
        lora, ranks = self.lora, self.lora.ranks
        loaders = {}
        for name, entry in self.loaders().items():
            scales = sorted({round(a / ranks[m], 6) for m, a in entry["alphas"].items()})
            loaders[name] = {"layers": len(entry["alphas"]), "scale": scales[0] if len(scales) == 1 else scales or None,
                             "because": entry["because"], **({"dropped": entry["dropped"]} if "dropped" in entry else {})}  # fmt: skip
        return {
            "file": str(lora.path), "fits": self.fits, "fitting_models": self.fitting_models, "checked_against": self.checked_against,
            "family": self.family.name if self.family is not None else None, "layers": len(lora.modules),
            "layer_kinds": _layer_kinds(lora.modules), "ranks": dict(Counter(ranks.values())),
            "key_prefixes": dict(lora.prefixes), "key_styles": dict(lora.styles), "alpha_keys": len(lora.alphas),
            "adapter_metadata": lora.metadata is not None, "comfyui_reads_keys": self._comfyui_reads_keys(),
            "loaders": loaders, "diffusers_error": self.diffusers_error,
        }  # fmt: skip

    def _comfyui_reads_keys(self) -> bool | None:
        if self.family is None:
            return None
        return all(prefix in self.family.comfyui_lora_prefixes for prefix in self.lora.prefixes)

    def text(self) -> str:
        data, lora = self.to_dict(), self.lora
        size = lora.path.stat().st_size
        size = f"{size / 2**20:.1f} MiB" if size >= 2**20 else f"{size / 2**10:.1f} KiB"
        if self.fits:
            fits = f"{', '.join(self.fits)} (every layer matches the {' / '.join(self.fitting_models)} transformer)"
        else:
            fits = f"none of the architectures checked ({', '.join(self.checked_against)})"
            if self.family is not None:  # `describe_lora_file` found it by the module names alone
                fits += f"; the module names are {self.family.name}'s (a smaller model of that family? pass --model)"
        ranks = data["ranks"]
        rank = ", ".join(f"{r} ({n} layers)" for r, n in sorted(ranks.items())) if len(ranks) > 1 else str(next(iter(ranks)))
        prefixes = ", ".join(f"'{p}'" if p else "none" for p in lora.prefixes)
        styles = ", ".join(f"{s}: {n} layers" for s, n in lora.styles.items())
        lines = [
            f"file        {lora.path} ({len(lora.modules)} layers, {size})",
            f"fits        {fits}",
            f"layers      {len(lora.modules)}: {', '.join(data['layer_kinds'])}",
            f"rank        {rank}",
            f"key layout  prefix {prefixes}; {styles}; .alpha keys: {len(lora.alphas) or 'none'}; "
            f"adapter metadata: {'yes' if lora.metadata else 'none'}",
        ]
        for i, (name, entry) in enumerate(data["loaders"].items()):
            applies = f"{_scale_text(entry['scale'])} on {entry['layers']} layers" if entry["layers"] else "applies nothing"
            line = f"{'scale' if i == 0 else '':<11} {name}: {applies} ({entry['because']})"
            if entry.get("dropped"):
                line += f"; drops {len(entry['dropped'])} layers: {', '.join(_layer_kinds(entry['dropped']))}"
                if len(lora.styles) > 1:
                    line += " (it reads the key layout from the first key)"
            lines.append(line)
        if self.diffusers_error:
            lines.append(f"diffusers   cannot load this file: {self.diffusers_error}")
        if data["comfyui_reads_keys"] is False:
            expected = ", ".join(repr(p) for p in self.family.comfyui_lora_prefixes)
            lines.append(f"ComfyUI     does not map these keys for {self.family.name} (it reads the prefixes {expected})")
        if lora.alphas and lora.metadata:
            lines.append("note        .alpha keys AND adapter metadata: diffusers' Qwen-Image path applies both, its FLUX path refuses the file")
        return "\n".join(lines)


def _scale_text(scale) -> str:
    return f"{scale:g}" if not isinstance(scale, list) else f"{min(scale):g} to {max(scale):g}"


def _fitting_families(modules: dict, model: str | None) -> tuple[list[str], list[str], list[str]]:
    """(families, models) whose transformer every layer fits, and the models checked: `model`, or the base models
    whose configs ship with glance_lite (built on the meta device by the memory planner: no weights, no network)."""
    from .families import family_for_pipeline_class
    from .plan import SHIPPED_MODELS, inventory, model_configs

    fits, fitting_models, checked = [], [], [model] if model else list(SHIPPED_MODELS)
    for model_id in checked:
        configs = model_configs(model_id)
        layers = inventory(configs.component("transformer")).layers
        shapes = {layer.name: (layer.weight_shape[1], layer.weight_shape[0]) for layer in layers if layer.kind == "linear"}
        if not any(lora_fit_problems(modules, shapes)):
            fits.append(family_for_pipeline_class(configs.pipeline_class).name)
            fitting_models.append(model_id)
    return fits, fitting_models, checked


def describe_lora_file(path: str | Path, model: str | None = None) -> LoraFileInfo:
    """Everything `info` prints, for a file (bad input fails before diffusers is imported)."""
    lora = read_lora_layout(path)
    from .families import family_by_name

    fits, fitting_models, checked = _fitting_families(lora.modules, model)
    name = fits[0] if fits else lora_origin(lora.modules)
    family = family_by_name(name) if name else None
    dropped, error = None, None
    if family is not None:
        try:
            dropped = diffusers_dropped_layers(lora.path, family, lora.modules)
        except Exception as exc:  # whatever diffusers raises on this file is what a diffusers user would see
            error = f"{type(exc).__name__}: {library_reason(exc, 200)}"
    return LoraFileInfo(lora, fits, fitting_models, checked, family, dropped, error)


def convert_lora_file(path: str | Path, out: str | Path, scale: str, prefix: str | None = None, model: str | None = None) -> Path:
    """Write `path` in the portable layout with explicit per-layer alphas.

    `scale="as-trained"`: every layer at the scale `--lora-compat trained` applies (official files: alpha = 4 r).
    `scale="as-diffusers"`: exactly what plain diffusers applies: the layers it drops are left out and each other
    layer keeps diffusers' scale (official files: alpha = r), so the result reproduces the published images in
    any loader. `prefix`: key prefix, default the family's `lora_key_prefix` (read by diffusers and ComfyUI alike).
    """
    if scale not in CONVERT_SCALES:
        raise ValueError(f"scale must be one of {', '.join(CONVERT_SCALES)}, got {scale!r}.")
    info = describe_lora_file(path, model)
    lora, family = info.lora, info.family
    if family is None:
        raise LoraFileError(f"{lora.path}: cannot tell which model family its layers are for; pass --model.")
    if scale == "as-trained":
        modules, alphas = lora.modules, lora.trained_alphas(family)
    else:
        if info.diffusers_error:
            raise LoraFileError(f"plain diffusers cannot load {lora.path} ({info.diffusers_error}), so it has no as-diffusers scale.")
        modules = {m: pair for m, pair in lora.modules.items() if m not in info.diffusers_dropped}
        alphas = lora.diffusers_alphas()
    metadata = {"glance_lite.family": family.name, "glance_lite.converted_from": lora.path.name, "glance_lite.scale": scale}
    return write_lora_file(Path(out), modules, alphas, family.lora_key_prefix if prefix is None else prefix, metadata)


# ==== command line ===================================================================================================
def build_parser() -> argparse.ArgumentParser:
    p = cli.ArgumentParser(prog="python -m glance_lite.lora", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = p.add_subparsers(dest="command", required=True)
    model_help = ("check the layers against this model (tiny/..., a local pipeline folder, a hub id whose configs are cached) "
                  "instead of the Qwen-Image, Qwen-Image-Edit and FLUX.1-dev architectures that ship with glance_lite")  # fmt: skip
    info = commands.add_parser("info", help="family, layers, rank, alpha, key layout, and the scale each loader applies")
    info.add_argument("file", type=Path)
    info.add_argument("--model", help=model_help)
    info.add_argument("--json", action="store_true", help="one JSON object instead of text")
    convert = commands.add_parser("convert", help="rewrite a LoRA file in one clean layout with explicit per-layer alpha")
    convert.add_argument("file", type=Path)
    convert.add_argument("--out", type=Path, required=True, help="the .safetensors file to write")
    convert.add_argument("--scale", choices=CONVERT_SCALES, required=True,
                         help="as-trained: every layer at its trained scale (--lora-compat trained); as-diffusers: what plain "
                              "diffusers applies, dropped layers left out (--lora-compat diffusers, the published images)")  # fmt: skip
    convert.add_argument("--prefix", choices=("diffusion_model", "transformer", "none"),
                         help="key prefix (default: the family's, which diffusers and ComfyUI both read)")  # fmt: skip
    convert.add_argument("--model", help=model_help)
    convert.add_argument("--overwrite", action="store_true", help="replace --out if it exists (refused otherwise)")
    return p


@cli.command
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "info":
        info = describe_lora_file(args.file, args.model)
        print(json.dumps(info.to_dict(), indent=2) if args.json else info.text())
    else:
        from .checks import check_output_file

        check_output_file(args.out, "--out", args.overwrite, extensions=(".safetensors",))
        prefix = None if args.prefix is None else "" if args.prefix == "none" else f"{args.prefix}."
        out = convert_lora_file(args.file, args.out, args.scale, prefix, args.model)
        print(f"wrote {out} ({args.scale}):")
        print(describe_lora_file(out, args.model).text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
