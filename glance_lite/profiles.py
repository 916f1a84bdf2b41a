"""Hardware profiles: what to load, at which precision, and where, for one kind of machine.

A profile is plain data (`Profile`, frozen dataclasses) read from a YAML file: `profiles/<name>.yaml` for the
built-in ones, or any file a user writes. The planner (`glance_lite.plan`) predicts what it costs, the placement
rules (`glance_lite.placement`) say where each component lives in each stage, and the manager carries that out.
Keeping the policy as data means a new card is a new YAML file, not new code.

Loading is strict: an unknown key, a value outside its choices, a wrong type, a missing key or a storage /
placement pairing that is known to break upstream (`glance_lite.pairings`) is an error that names the file and
the dotted field (``components.transformer.placement``), with a suggestion, so a mistyped profile fails in
milliseconds instead of after gigabytes have been loaded. `--profile auto` is `glance_lite.autoselect`.
"""

from __future__ import annotations

import difflib
import importlib.resources
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from types import MappingProxyType
from typing import Any

import yaml

from .errors import UserError, read_text_file, yaml_error_text
from .pairings import QUANTIZATIONS, TRAINING_QUANTIZATIONS, cuda_quanto_problem, placement_problem, training_problem

# ---- vocabularies (the manager and the planner understand exactly these) ---------------------------------------
# Without a GPU a component either stays in RAM, is freed after its stage, or runs block by block (cpu -> cpu).
CPU_PLACEMENTS = ("cpu", "evict_after_use", "group_offload")
FUSABLE_PLACEMENTS = ("resident", "cpu", "evict_after_use")  # fuse_lora: offload hooks would move the weights
PLACEMENTS = ("resident", "evict_after_use", "model_offload", "group_offload", "sharded", "cpu")
DTYPES = ("bfloat16", "float16", "float32")
DEVICES = ("cuda", "cpu")
ATTENTION_BACKENDS = ("sdpa", "xformers")
OPTIMIZERS = ("adamw8bit", "adamw")
MIXED_PRECISIONS = ("bf16", "fp16", "no")
COMPONENT_ROLES = ("text_encoder", "transformer", "vae")
# Components a pipeline may have beyond the three roles, and the role whose policy they follow.
ROLE_ALIASES = {"text_encoder_2": "text_encoder"}
# bfloat16 arithmetic needs Ampere (sm_80) or newer; a V100 is sm_70.
BF16_MIN_COMPUTE_CAPABILITY = 8.0
# A "24 GB" card reports a little less than 24 GiB in total.
CARD_SIZE_TOLERANCE_GB = 1.0


class ProfileError(UserError, ValueError):
    """A profile that cannot be used; the message names the file and the field."""


@dataclass(frozen=True)
class ComponentPolicy:
    """How one component is held: its dtype, quantization and placement (see `PLACEMENTS`).

    `blocks_per_group` / `use_stream` / `resident_blocks` only mean something for `group_offload`: the blocks kept
    on the GPU while the rest stream ("auto": as many as the profile's `vram_target_gb` leaves room for; the
    planner counts them). `tiling` only applies to the VAE, and `gpu` picks the GPU a non-sharded component runs
    on (multi-GPU profiles put the text encoder beside the transformer's shards).
    """

    dtype: str
    quantization: str = "none"
    placement: str = "resident"
    blocks_per_group: int | None = None
    use_stream: bool = False
    resident_blocks: int | str = "auto"
    tiling: bool = False
    gpu: int = 0


@dataclass(frozen=True)
class TrainingPolicy:
    """How a training run holds the transformer: frozen base precision, block offload, optimizer."""

    gradient_checkpointing: bool
    optimizer: str
    base_quantization: str
    block_offload: bool
    mixed_precision: str
    blocks_per_group: int | None = None
    resident_blocks: int | str = "auto"

    @property
    def dtype(self) -> str:
        """The dtype the frozen base weights and activations are kept in during training."""
        return {"bf16": "bfloat16", "fp16": "float16", "no": "float32"}[self.mixed_precision]


@dataclass(frozen=True)
class Profile:
    """One machine class. `components` maps "text_encoder" / "transformer" / "vae" to their policies."""

    name: str
    description: str
    gpu_memory_gb: float | None
    num_gpus: int
    min_compute_capability: float | None
    system_ram_gb: float
    device: str
    compute_dtype: str
    components: Mapping[str, ComponentPolicy]
    training: TrainingPolicy
    attention: str = "sdpa"
    batch_cfg: bool = True
    fuse_lora: bool = False  # merge the phase's LoRA into the weights while it runs (see glance_lite.adapters)
    vram_target_gb: float | None = None  # the peak per GPU the plan aims for (resident blocks fill up to it)
    source: str = field(default="", compare=False)

    def component(self, name: str) -> ComponentPolicy:
        """The policy for a pipeline component; FLUX's `text_encoder_2` follows `text_encoder`."""
        return self.components[ROLE_ALIASES.get(name, name)]

    @property
    def gpu_memory_bytes(self) -> int | None:
        return None if self.gpu_memory_gb is None else int(self.gpu_memory_gb * 2**30)

    @property
    def system_ram_bytes(self) -> int:
        return int(self.system_ram_gb * 2**30)

    @property
    def vram_target_bytes(self) -> int | None:
        """What the plan may fill on each GPU: `vram_target_gb`, or the whole card when the profile sets none."""
        target = self.vram_target_gb if self.vram_target_gb is not None else self.gpu_memory_gb
        return None if target is None else int(target * 2**30)

    def to_dict(self) -> dict:
        """The profile as the YAML mapping it came from (defaults filled in)."""
        data = {f.name: getattr(self, f.name) for f in fields(self)}  # asdict cannot copy the read-only mapping
        data["components"] = {role: _policy_dict(policy) for role, policy in self.components.items()}
        data["training"] = {k: v for k, v in asdict(self.training).items() if v is not None}
        if not self.training.block_offload:
            data["training"].pop("resident_blocks")
        if self.vram_target_gb is None:
            data.pop("vram_target_gb")
        data.pop("source")
        return data


def _policy_dict(policy: ComponentPolicy) -> dict:
    """Only the keys that mean something for this policy, so the mapping validates again (round trip)."""
    data = asdict(policy)
    if policy.placement != "group_offload":
        data.pop("blocks_per_group")
        data.pop("use_stream")
        data.pop("resident_blocks")
    if not policy.tiling:
        data.pop("tiling")
    return data


# ---- schema ------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Field:
    """One YAML key: accepted Python types, allowed values, and whether it must be present."""

    types: tuple[type, ...]
    choices: tuple | None = None
    required: bool = True
    nullable: bool = False
    minimum: float | None = None
    word: str | None = None  # a string accepted besides the types (resident_blocks: "auto")

    def type_name(self) -> str:
        names = {bool: "true/false", int: "an integer", float: "a number", str: "a string", dict: "a mapping"}
        text = " or ".join(dict.fromkeys(names[t] for t in self.types))
        return text + (f" or '{self.word}'" if self.word else "") + (" or null" if self.nullable else "")


_NUMBER = (int, float)
_TOP_FIELDS = {
    "name": _Field((str,)),
    "description": _Field((str,)),
    "gpu_memory_gb": _Field(_NUMBER, nullable=True, minimum=0.5),
    "num_gpus": _Field((int,), minimum=0),
    "min_compute_capability": _Field(_NUMBER, nullable=True, minimum=1.0),
    "system_ram_gb": _Field(_NUMBER, minimum=0.5),
    "device": _Field((str,), DEVICES),
    "compute_dtype": _Field((str,), DTYPES),
    "attention": _Field((str,), ATTENTION_BACKENDS, required=False),
    "batch_cfg": _Field((bool,), required=False),
    "fuse_lora": _Field((bool,), required=False),
    "vram_target_gb": _Field(_NUMBER, required=False, minimum=0.5),
    "components": _Field((dict,)),
    "training": _Field((dict,)),
}
_COMPONENT_FIELDS = {
    "dtype": _Field((str,), DTYPES),
    "quantization": _Field((str,), QUANTIZATIONS),
    "placement": _Field((str,), PLACEMENTS),
    "blocks_per_group": _Field((int,), required=False, minimum=1),
    "use_stream": _Field((bool,), required=False),
    "resident_blocks": _Field((int,), required=False, minimum=0, word="auto"),
    "tiling": _Field((bool,), required=False),
    "gpu": _Field((int,), required=False, minimum=0),
}
_TRAINING_FIELDS = {
    "gradient_checkpointing": _Field((bool,)),
    "optimizer": _Field((str,), OPTIMIZERS),
    "base_quantization": _Field((str,), TRAINING_QUANTIZATIONS),
    "block_offload": _Field((bool,)),
    "mixed_precision": _Field((str,), MIXED_PRECISIONS),
    "blocks_per_group": _Field((int,), required=False, minimum=1),
    "resident_blocks": _Field((int,), required=False, minimum=0, word="auto"),
}


def _check_mapping(data: Any, fields: dict[str, _Field], prefix: str) -> list[str]:
    """Unknown keys (with a did-you-mean), missing required keys, wrong types and values outside their choices."""
    errors = []
    for key in data:
        if key not in fields:
            guess = difflib.get_close_matches(str(key), fields, n=1)
            hint = f" (did you mean '{guess[0]}'?)" if guess else f" (known keys: {', '.join(fields)})"
            errors.append(f"unknown key '{prefix}{key}'{hint}")
    for key, spec in fields.items():
        if key not in data:
            if spec.required:
                errors.append(f"missing required key '{prefix}{key}'")
            continue
        errors += _check_value(data[key], spec, prefix + key)
    return errors


def _check_value(value: Any, spec: _Field, path: str) -> list[str]:
    if value is None:
        return [] if spec.nullable else [f"{path} is null but must be {spec.type_name()}"]
    if spec.word is not None and value == spec.word:
        return []
    # YAML `true` is a Python bool, which is also an int: numbers must not accept it.
    if isinstance(value, bool) != (bool in spec.types) or not isinstance(value, spec.types):
        return [f"{path} = {value!r} has the wrong type: expected {spec.type_name()}"]
    if spec.choices is not None and value not in spec.choices:
        return [f"{path} = {value!r} is not one of {', '.join(spec.choices)}"]
    if spec.minimum is not None and value < spec.minimum:
        return [f"{path} = {value!r} must be at least {spec.minimum:g}"]
    return []


def _uses_bf16(data: dict) -> bool:
    dtypes = [data.get("compute_dtype")] + [c.get("dtype") for c in data["components"].values() if isinstance(c, dict)]
    return "bfloat16" in dtypes or data["training"].get("mixed_precision") == "bf16"


def _check_consistency(data: dict) -> list[str]:
    """Rules across fields: what the manager could not carry out, said before anything is loaded."""
    errors = []
    components, training = data["components"], data["training"]
    on_cpu = data["device"] == "cpu"
    num_gpus = data["num_gpus"]
    for role in COMPONENT_ROLES:
        if role not in components:
            errors.append(f"missing required key 'components.{role}'")
    for role, policy in components.items():
        if role not in COMPONENT_ROLES:
            continue
        path = f"components.{role}"
        placement = policy["placement"]
        if placement == "group_offload" and "blocks_per_group" not in policy:
            errors.append(f"{path}.blocks_per_group is required when placement is group_offload")
        for key in ("blocks_per_group", "use_stream", "resident_blocks"):
            if placement != "group_offload" and key in policy:
                errors.append(f"{path}.{key} only applies to placement group_offload (placement is {placement})")
        if "tiling" in policy and role != "vae":
            errors.append(f"{path}.tiling only applies to the vae")
        if placement == "sharded" and role != "transformer":
            errors.append(f"{path}.placement = 'sharded' only applies to the transformer")
        if placement == "sharded" and num_gpus < 2:
            errors.append(f"{path}.placement = 'sharded' needs num_gpus >= 2 (num_gpus is {num_gpus})")
        if on_cpu and placement not in CPU_PLACEMENTS:
            errors.append(
                f"{path}.placement = {placement!r} is not possible on device cpu: use one of {', '.join(CPU_PLACEMENTS)}"
            )
        if not on_cpu and policy.get("gpu", 0) >= max(num_gpus, 1):
            errors.append(f"{path}.gpu = {policy['gpu']} but the profile has num_gpus = {num_gpus}")
        problem = placement_problem(policy["quantization"], placement)
        if on_cpu and policy["quantization"].startswith("bnb-"):  # one error for the field, the more direct one
            errors.append(f"{path}.quantization = {policy['quantization']!r} needs a CUDA GPU (bitsandbytes loading)")
        elif problem:
            errors.append(f"{path}: {problem}")
        elif not on_cpu and placement != "cpu" and (kernel := cuda_quanto_problem(policy["quantization"], f"{path}.quantization")):
            errors.append(kernel)
    transformer = components.get("transformer", {})
    if data.get("fuse_lora") and transformer.get("quantization", "none") != "none":
        errors.append(
            f"fuse_lora needs unquantized transformer weights (components.transformer.quantization is "
            f"{transformer['quantization']!r}): set fuse_lora: false"
        )
    if data.get("fuse_lora") and transformer.get("placement") not in FUSABLE_PLACEMENTS:
        errors.append(
            f"fuse_lora needs transformer weights that stay in place ({', '.join(FUSABLE_PLACEMENTS)}); "
            f"components.transformer.placement is {transformer.get('placement')!r}: set fuse_lora: false"
        )
    if training["block_offload"] and "blocks_per_group" not in training:
        errors.append("training.blocks_per_group is required when training.block_offload is true")
    for key in ("blocks_per_group", "resident_blocks"):
        if not training["block_offload"] and key in training:
            errors.append(f"training.{key} only applies when training.block_offload is true")
    problem = training_problem(training["base_quantization"], training["block_offload"])
    if problem:
        errors.append(problem)
    elif not on_cpu and (kernel := cuda_quanto_problem(training["base_quantization"], "training.base_quantization")):
        errors.append(kernel)
    if on_cpu:
        if data["gpu_memory_gb"] is not None:
            errors.append("gpu_memory_gb must be null for device cpu")
        if data.get("vram_target_gb") is not None:
            errors.append("vram_target_gb only applies to GPU profiles")
        if num_gpus != 0:
            errors.append(f"num_gpus = {num_gpus} but device cpu uses no GPU: set num_gpus: 0")
        if training["base_quantization"].startswith("bnb-"):
            errors.append("training.base_quantization with bitsandbytes needs a CUDA GPU")
    else:
        if data["gpu_memory_gb"] is None:
            errors.append("gpu_memory_gb is required for device cuda (the card size this profile is for)")
        elif data.get("vram_target_gb", 0) > data["gpu_memory_gb"]:
            errors.append(f"vram_target_gb = {data['vram_target_gb']:g} is more than gpu_memory_gb = {data['gpu_memory_gb']:g}")
        if num_gpus < 1:
            errors.append("num_gpus must be at least 1 for device cuda")
        cc = data["min_compute_capability"]
        if cc is None:
            errors.append("min_compute_capability is required for device cuda")
        elif _uses_bf16(data) and cc < BF16_MIN_COMPUTE_CAPABILITY:
            errors.append(
                f"bfloat16 needs compute capability >= {BF16_MIN_COMPUTE_CAPABILITY} but min_compute_capability is "
                f"{cc:g}: use float16 / fp16 (e.g. V100, sm_70) or raise min_compute_capability"
            )
    return errors


def parse_profile(data: Any, source: str = "<profile>") -> Profile:
    """Validate a YAML mapping and build the `Profile`; every problem is reported at once, each naming its field."""
    if data is None:
        raise ProfileError(f"{source} is empty: a profile is a YAML mapping of settings; copy a built-in one to start (profiles/*.yaml)")
    if not isinstance(data, dict):
        raise ProfileError(f"{source}: a profile must be a YAML mapping of settings (name: ..., components: ...), got a {type(data).__name__}")
    errors = _check_mapping(data, _TOP_FIELDS, "")
    components = data.get("components")
    if isinstance(components, dict):
        for role, policy in components.items():
            if role not in COMPONENT_ROLES:
                guess = difflib.get_close_matches(str(role), COMPONENT_ROLES, n=1)
                hint = f" (did you mean '{guess[0]}'?)" if guess else f" (known: {', '.join(COMPONENT_ROLES)})"
                errors.append(f"unknown key 'components.{role}'{hint}")
            elif not isinstance(policy, dict):
                errors.append(f"components.{role} = {policy!r} has the wrong type: expected a mapping")
            else:
                errors += _check_mapping(policy, _COMPONENT_FIELDS, f"components.{role}.")
    if isinstance(data.get("training"), dict):
        errors += _check_mapping(data["training"], _TRAINING_FIELDS, "training.")
    if not errors:
        errors = _check_consistency(data)
    if errors:
        raise ProfileError("\n".join(f"{source}: {e}" for e in errors))
    return _build(data, source)


def _build(data: dict, source: str) -> Profile:
    components = MappingProxyType({role: ComponentPolicy(**data["components"][role]) for role in COMPONENT_ROLES})
    return Profile(
        name=data["name"],
        description=data["description"],
        gpu_memory_gb=None if data["gpu_memory_gb"] is None else float(data["gpu_memory_gb"]),
        num_gpus=data["num_gpus"],
        min_compute_capability=None if data["min_compute_capability"] is None else float(data["min_compute_capability"]),
        system_ram_gb=float(data["system_ram_gb"]),
        device=data["device"],
        compute_dtype=data["compute_dtype"],
        components=components,
        training=TrainingPolicy(**data["training"]),
        attention=data.get("attention", "sdpa"),
        batch_cfg=data.get("batch_cfg", True),
        fuse_lora=data.get("fuse_lora", False),
        vram_target_gb=None if data.get("vram_target_gb") is None else float(data["vram_target_gb"]),
        source=source,
    )


# ---- finding and loading ------------------------------------------------------------------------------------------
def _builtin_files() -> dict[str, Any]:
    """name -> readable file for every built-in profile.

    An installed package carries them as `glance_lite.profile_files` (setup.py maps the repo folder `profiles/`
    there); a source checkout has them in `<repo>/profiles/`.
    """
    try:
        root = importlib.resources.files("glance_lite.profile_files")
        files = {p.name[: -len(".yaml")]: p for p in root.iterdir() if p.name.endswith(".yaml")}
        if files:
            return files
    except (ModuleNotFoundError, FileNotFoundError, NotADirectoryError, TypeError):
        pass
    folder = Path(__file__).resolve().parent.parent / "profiles"
    return {p.stem: p for p in sorted(folder.glob("*.yaml"))}


def list_profiles() -> list[str]:
    """Built-in profile names, biggest machine first (cpu last)."""
    profiles = [load_profile(name) for name in _builtin_files()]
    profiles.sort(key=lambda p: (p.device == "cpu", -(p.gpu_memory_gb or 0) * max(p.num_gpus, 1), p.name))
    return [p.name for p in profiles]


def _looks_like_path(text: str) -> bool:
    return text.endswith((".yaml", ".yml")) or "/" in text or "\\" in text or Path(text).is_file()


def early_profile(name_or_path: str) -> Profile | str:
    """A command line's --profile, loaded (and refused if unknown or broken) before anything heavy is imported, so
    the run is handed the parsed Profile. "auto" stays a name: choosing needs the model and the machine."""
    return name_or_path if name_or_path == "auto" else load_profile(name_or_path)


def load_profile(name_or_path: str | Path | Profile) -> Profile:
    """A built-in profile by name (`4090`, `12gb`, ...) or a user's YAML file by path; validated strictly."""
    if isinstance(name_or_path, Profile):
        return name_or_path
    text = str(name_or_path)
    builtin = _builtin_files()
    if text in builtin:
        return _load_file(builtin[text], f"profiles/{text}.yaml")
    if isinstance(name_or_path, Path) or _looks_like_path(text):
        return _load_file(Path(text).expanduser(), text)
    guess = difflib.get_close_matches(text, builtin, n=1)
    hint = f" Did you mean '{guess[0]}'?" if guess else ""
    raise ProfileError(
        f"Unknown profile {text!r}.{hint} Built-in profiles: {', '.join(sorted(builtin))}. "
        "A path to a YAML file also works (e.g. --profile ./my-card.yaml; copy a built-in one to start)."
    )


def _load_file(file, source: str) -> Profile:
    text = file.read_text(encoding="utf-8") if not isinstance(file, Path) else read_text_file(file, "Profile file", ProfileError)
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ProfileError(f"{source}: not valid YAML: {yaml_error_text(exc)}.") from None
    return parse_profile(data, source)
