"""The trainer's settings: `TrainConfig` (the family's reference recipe plus a user's overrides, each checked with
a message that names the key) and the YAML file a run can read them from (`--config`, `--set key=value`): either
glance_lite's own keys or, as is, the official Glance trainer's `train_configs/Glance_qwen.yaml` / `Glance_flux.yaml`
(mapped key by key below, in one table, with one note per key)."""

from __future__ import annotations

import dataclasses
import difflib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import InputFileError, read_text_file, yaml_error_text

PHASES = ("slow", "fast")
DISTILL = "distill"  # the few-step student's training mode (`glance_lite.distill`), beside the Glance phases
# What a distillation run changes in the family's recipe before a user's overrides: it learns a whole trajectory
# over many captions (pocket-measured: `benchmarks/results/pocket-fewstep.md`), and samples without guidance, so
# no caption dropout.
DISTILL_RECIPE = {"steps": 1500, "caption_dropout": 0.0, "warmup_steps": 20, "checkpoint_every": 100}
TIMESTEP_MODES = ("consistent", "reference")


class ConfigFileError(InputFileError):
    """A training config file that cannot be read: missing, a folder, not UTF-8, not YAML, not a mapping."""


# ==== configuration ===============================================================================================
@dataclass(frozen=True)
class TrainConfig:
    """Everything a run may change. Defaults: the family's reference recipe (`family.recipe`) and, for the keys the
    reference notes leave open, the values of the trainer the reference builds on (AdamW betas, decay, clipping).

    `optimizer: null` means the profile's choice (8-bit AdamW on small GPUs); `min_image_size: null` means
    min(256, resolution); `condition_area: null` the edit family's stock ~1024x1024 condition size.
    """

    rank: int
    alpha: float
    learning_rate: float
    warmup_steps: int
    steps: int
    caption_dropout: float
    resolution: int
    seed: int = 0
    timesteps: Any = "consistent"
    slow_steps: tuple[int, ...] | None = None
    fast_steps: tuple[int, ...] | None = None
    optimizer: str | None = None
    adam_betas: tuple[float, float] = (0.9, 0.999)
    adam_epsilon: float = 1e-8
    weight_decay: float = 0.01
    max_grad_norm: float | None = 1.0
    checkpoint_every: int = 20
    keep_checkpoints: int = 2
    min_image_size: int | None = None
    condition_area: int | None = None
    cache_dir: str | None = None
    # --phase distill only (`glance_lite.distill`): the student's step count, and the teacher it imitates.
    distill_steps: int = 4
    teacher_steps: int = 50
    teacher_cfg: float | None = None
    teacher_noises: int = 1

    @classmethod
    def for_family(cls, family, overrides: dict | None = None, phase: str | None = None) -> "TrainConfig":
        """The family's recipe (with `DISTILL_RECIPE` for `phase="distill"`) and `overrides` applied; unknown keys
        and bad values fail with a clear message. `teacher_cfg: null` means the family's true CFG scale."""
        recipe = dataclasses.asdict(family.recipe)
        recipe.pop("optimizer")  # the profile picks the optimizer (memory), a config may override it
        if phase == DISTILL:
            recipe.update(DISTILL_RECIPE)
        overrides = dict(overrides or {})
        known = [f.name for f in dataclasses.fields(cls)]
        unknown = [k for k in overrides if k not in known]
        if unknown:
            hints = {"lr": "learning_rate", "max_train_steps": "steps", "caption_dropout_rate": "caption_dropout",
                     "img_size": "resolution", "lora_alpha": "alpha", "r": "rank"}  # fmt: skip
            lines = []
            for key in unknown:
                guess = hints.get(key) or next(iter(difflib.get_close_matches(key, known, n=1)), None)
                lines.append(f"unknown config key {key!r}" + (f" (did you mean {guess!r}?)" if guess else ""))
            raise ValueError("; ".join(lines) + f". Known keys: {', '.join(known)}.")
        config = cls(**{**recipe, **overrides})._checked()
        split = config.split(family)  # bad slow_steps / fast_steps fail here, not after encoding
        teacher_cfg = family.default_true_cfg_scale if config.teacher_cfg is None else config.teacher_cfg
        return dataclasses.replace(config, slow_steps=split.slow, fast_steps=split.fast, teacher_cfg=teacher_cfg)

    def _checked(self) -> "TrainConfig":
        def number(name, kind=float, minimum=None, maximum=None, optional=False):
            value = getattr(self, name)
            if value is None and optional:
                return None
            try:
                value = kind(value) if not isinstance(value, bool) else None
            except (TypeError, ValueError):
                value = None
            if value is None or (kind is int and float(getattr(self, name)) != value):
                raise ValueError(f"config {name} = {getattr(self, name)!r} must be {'an integer' if kind is int else 'a number'}.")
            if (minimum is not None and value < minimum) or (maximum is not None and value > maximum):
                raise ValueError(f"config {name} = {value!r} must lie in [{minimum}, {maximum if maximum is not None else 'inf'}].")
            return value

        values = {
            "rank": number("rank", int, 1), "alpha": _int_if_whole(number("alpha", float, 1e-9)), "steps": number("steps", int, 1),
            "learning_rate": number("learning_rate", float, 0), "warmup_steps": number("warmup_steps", int, 0),
            "caption_dropout": number("caption_dropout", float, 0, 0.99), "resolution": number("resolution", int, 32),
            "seed": number("seed", int, 0), "adam_epsilon": number("adam_epsilon", float, 0),
            "weight_decay": number("weight_decay", float, 0), "checkpoint_every": number("checkpoint_every", int, 1),
            "keep_checkpoints": number("keep_checkpoints", int, 1),
            "max_grad_norm": number("max_grad_norm", float, 0, optional=True),
            "min_image_size": number("min_image_size", int, 1, optional=True),
            "condition_area": number("condition_area", int, 32 * 32, optional=True),
            "distill_steps": number("distill_steps", int, 1), "teacher_steps": number("teacher_steps", int, 2),
            "teacher_cfg": number("teacher_cfg", float, 1, optional=True), "teacher_noises": number("teacher_noises", int, 1),
        }  # fmt: skip
        if values["teacher_steps"] < 2 * values["distill_steps"]:
            raise ValueError(
                f"config teacher_steps = {values['teacher_steps']} must be at least twice distill_steps = "
                f"{values['distill_steps']}: the student learns to take the teacher's many small steps in few big ones."
            )
        if values["resolution"] % 32:
            raise ValueError(f"config resolution = {values['resolution']} must be a multiple of 32 (long side in pixels).")
        if self.optimizer not in (None, "adamw", "adamw8bit"):
            raise ValueError(f"config optimizer = {self.optimizer!r}: choose adamw8bit, adamw, or null (the profile's).")
        betas = tuple(float(b) for b in self.adam_betas)
        if len(betas) != 2 or not all(0 <= b < 1 for b in betas):
            raise ValueError(f"config adam_betas = {self.adam_betas!r} must be two numbers in [0, 1).")
        steps = {k: None if getattr(self, k) is None else tuple(int(i) for i in getattr(self, k)) for k in ("slow_steps", "fast_steps")}
        return dataclasses.replace(self, **values, adam_betas=betas, timesteps=_checked_timesteps(self.timesteps), **steps)

    def split(self, family):
        from .schedule import PhaseSplit

        default = family.default_split
        return PhaseSplit(self.slow_steps or default.slow, self.fast_steps or default.fast, default.dense_steps)

    def to_dict(self) -> dict:
        data = dataclasses.asdict(self)
        return {k: list(v) if isinstance(v, tuple) else v for k, v in data.items()}


def _int_if_whole(value: float):
    return int(value) if float(value).is_integer() else value


def _checked_timesteps(value):
    """'consistent' | 'reference' | [t, ...] (one phase) | {slow: [...], fast: [...]}, each t in (0, 1000]."""
    if isinstance(value, str):
        if value not in TIMESTEP_MODES:
            raise ValueError(f"config timesteps = {value!r}: choose consistent, reference, a list, or {{slow: [...], fast: [...]}}.")
        return value

    def as_list(items, where):
        try:
            ts = [float(t) for t in items]
        except (TypeError, ValueError):
            raise ValueError(f"config {where} must be a list of numbers (0..1000), got {items!r}.") from None
        if not ts or not all(0 < t <= 1000 for t in ts):
            raise ValueError(f"config {where} = {items!r}: give at least one timestep, each in (0, 1000].")
        return ts

    if isinstance(value, dict):
        bad = [k for k in value if k not in PHASES]
        if bad:
            raise ValueError(f"config timesteps has unknown phase(s) {bad}: use slow and/or fast.")
        return {k: as_list(v, f"timesteps.{k}") for k, v in value.items()}
    return as_list(value, "timesteps")


def read_config_file(path: str | Path) -> dict:
    """The `TrainConfig` settings of a YAML file (see `load_config_file`)."""
    return load_config_file(path).settings


def load_config_file(path: str | Path) -> "ConfigFile":
    """A YAML mapping of config keys (see `TrainConfig`; `python -m glance_lite.train --print-config`), or an official
    Glance training config, recognised by its keys and translated (`translate_official_config`)."""
    import yaml

    path = Path(path)
    text = read_text_file(path, "config file", ConfigFileError)
    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        raise ConfigFileError(f"{path}: not valid YAML: {yaml_error_text(exc)}.") from None
    if not isinstance(data, dict):
        raise ConfigFileError(f"{path}: a training config must be a YAML mapping of key: value.")
    if any(key in _OFFICIAL_ONLY_KEYS for key in data):
        return translate_official_config(data, source=path.name)
    # YAML 1.1 reads 3e-4 as a string; numbers written that way are meant as numbers.
    return ConfigFile({k: _yaml_number(v) for k, v in data.items()})


def _yaml_number(value):
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return value
    return value


def parse_set_options(items: list[str]) -> dict:
    """`--set KEY=VALUE` options as a dict of YAML-typed values (shared with benchmarks/bench_train.py)."""
    import yaml

    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"--set expects KEY=VALUE, got {item!r}.")
        try:
            out[key.strip()] = _yaml_number(yaml.safe_load(value))
        except yaml.YAMLError as exc:
            raise ValueError(
                f"--set {item}: the value is not valid YAML ({yaml_error_text(exc)}); write numbers and words as they are, "
                "lists as [a, b], and put quotes around text holding [ ] { } or a colon."
            ) from None
    return out


# ==== the official Glance trainer's YAML ===========================================================================
# CSU-JPG/Glance train_configs/Glance_qwen.yaml and Glance_flux.yaml, as its train_Glance_qwen.py / train_Glance_flux.py
# read them. Every key becomes a TrainConfig key or a run argument (RUN_KEYS), or is not used, for the reason given.
RUN_KEYS = ("model", "data", "output", "phase")
OFFICIAL_RENAMES = {
    "pretrained_model_name_or_path": "model",
    "data_config.img_dir": "data",  # relative paths: to the working directory, as in the reference
    "output_dir": "output",
    "data_config.img_size": "resolution",  # both: long side to img_size, then each side down to a multiple of 32
    "data_config.caption_dropout_rate": "caption_dropout",
    "caption_dropout_rate": "caption_dropout",
    "max_train_steps": "steps",
    "learning_rate": "learning_rate",
    "adam_epsilon": "adam_epsilon",
    "max_grad_norm": "max_grad_norm",
    "checkpointing_steps": "checkpoint_every",
    "checkpoints_total_limit": "keep_checkpoints",
}
_CACHED = "text embeddings and latents are always cached on disk (OUTPUT/cache)"
_LOGS = "the loss goes to OUTPUT/<phase>_loss.csv and .png"
_NO_PREVIEWS = "no preview images while training; the command that generates with the adapters is printed at the end"
_ONE_SAMPLE = "one sample per step and process (several GPUs: accelerate launch)"
OFFICIAL_UNUSED = {
    "quantize": "the profile's training.base_quantization decides",
    "mixed_precision": "the profile's training.dtype and mixed_precision decide",
    "train_batch_size": _ONE_SAMPLE,
    "data_config.train_batch_size": _ONE_SAMPLE,
    "gradient_accumulation_steps": "one optimizer step per training step",
    "data_config.num_workers": "samples are encoded once and cached; there is no data loader",
    "data_config.random_ratio": "images keep their aspect ratio (no random crops)",
    "data_config.caption_type": "captions are the images' same-name .txt files",
    "resume_from_checkpoint": "a run always resumes from the newest checkpoint in its output folder (--restart starts over)",
    "precompute_text_embeddings": _CACHED, "precompute_image_embeddings": _CACHED, "save_cache_on_disk": _CACHED,
    "report_to": _LOGS, "logging_dir": _LOGS, "tracker_project_name": _LOGS,
    "double_blocks": "the reference's FLUX trainer does not read it either",
    "disable_sampling": _NO_PREVIEWS, "sample_every": _NO_PREVIEWS, "sample_width": _NO_PREVIEWS,
    "sample_height": _NO_PREVIEWS, "sample_steps": _NO_PREVIEWS,
}  # fmt: skip
# Keys read together with others, by `translate_official_config`.
OFFICIAL_COMBINED = ("rank", "adam_beta1", "adam_beta2", "adam_weight_decay", "adam8bit", "lr_scheduler", "lr_warmup_steps", "Slow_LoRA", "Fast_LoRA")
REFERENCE_ALPHA_PER_RANK = 4  # the reference trains every LoRA at lora_alpha = 4 x rank


@dataclass(frozen=True)
class ConfigNote:
    """One line of the translation: how one key (or a group read together) was mapped, or why it is not used."""

    text: str
    targets: tuple[str, ...] = ()  # the glance_lite keys it sets (a command-line flag or --set for one wins)


@dataclass(frozen=True)
class ConfigFile:
    """A training config file as read: `settings` (TrainConfig keys), and from an official Glance config the run
    arguments it names (`run`: model, data, output, phase) and one note per key."""

    settings: dict
    run: dict = field(default_factory=dict)
    notes: tuple[ConfigNote, ...] = ()
    source: str | None = None
    alpha_follows_rank: bool = False  # official config without an alpha: alpha = 4 x rank, whoever sets the rank

    def resolve(self, flags: dict, overrides: dict) -> tuple[dict, dict, list[str]]:
        """(run arguments, settings, printable notes) with command-line flags and `--set` overrides winning over the
        file. A `--set rank=R` on an official config keeps the reference's alpha = 4 x R unless alpha is set too."""
        settings = {**self.settings, **overrides}
        if self.alpha_follows_rank and isinstance(overrides.get("rank"), int) and "alpha" not in overrides:
            settings["alpha"] = REFERENCE_ALPHA_PER_RANK * overrides["rank"]
        run = {**self.run, **{k: v for k, v in flags.items() if v is not None}}
        given = {k for k, v in flags.items() if v is not None} | set(overrides)
        lines = [f"{self.source} is an official Glance training config; read as:"] if self.notes else []
        for note in self.notes:
            won = [t for t in note.targets if t in given]
            lines.append(f"  {note.text}" + (f"  [the command line's {', '.join(won)} wins]" if won else ""))
        return run, settings, lines


def translate_official_config(data: dict, source: str = "the config") -> ConfigFile:
    """An official Glance YAML (nested `data_config` included) as glance_lite settings and run arguments, with one
    note per key in the file's order. glance_lite keys found in the same file are used as they are."""
    flat = _flatten(data)
    settings, run, notes, done = {}, {}, [], set()

    def note(keys, text, **mapped):
        for target, value in mapped.items():
            (run if target in RUN_KEYS else settings)[target] = value
        shown = ", ".join(f"{k}: {_show(flat[k])}" for k in keys)
        notes.append(ConfigNote(f"{shown} -> {text}", tuple(mapped)))
        done.update(keys)

    def mapped_text(**mapped):
        return ", ".join(f"{k}: {_show(v)}" for k, v in mapped.items())

    known = {f.name for f in dataclasses.fields(TrainConfig)}
    for key, value in flat.items():
        if key in done:
            continue
        if key in OFFICIAL_RENAMES:
            target = OFFICIAL_RENAMES[key]
            note([key], mapped_text(**{target: value}), **{target: value})
        elif key in OFFICIAL_UNUSED:
            note([key], f"not used: {OFFICIAL_UNUSED[key]}")
        elif key in OFFICIAL_COMBINED:
            _translate_combined(key, flat, note, mapped_text)
        elif key in known:
            note([key], f"{mapped_text(**{key: value})} (a glance_lite key)", **{key: value})
        else:
            note([key], "not used: neither a key of the official Glance configs nor a glance_lite key")
    return ConfigFile(settings, run, tuple(notes), source, alpha_follows_rank="alpha" not in flat)


def _translate_combined(key: str, flat: dict, note, mapped_text) -> None:
    """The official keys whose meaning depends on another key."""
    if key == "rank":
        rank = flat["rank"]
        if "alpha" in flat or not isinstance(rank, int):  # a glance_lite alpha in the file wins; a bad rank fails later
            note(["rank"], mapped_text(rank=rank), rank=rank)
        else:
            alpha = REFERENCE_ALPHA_PER_RANK * rank
            why = "the reference trains at alpha = 4 x rank; a --set rank keeps that"
            note(["rank"], f"{mapped_text(rank=rank, alpha=alpha)} ({why})", rank=rank, alpha=alpha)
    elif key in ("adam_beta1", "adam_beta2"):
        betas = (flat.get("adam_beta1", 0.9), flat.get("adam_beta2", 0.999))
        note([k for k in ("adam_beta1", "adam_beta2") if k in flat], mapped_text(adam_betas=list(betas)), adam_betas=betas)
    elif key == "adam_weight_decay":
        if flat.get("adam8bit"):
            note([key], f"{mapped_text(weight_decay=0)} (the reference's 8-bit Adam, adam8bit: true, ignores adam_weight_decay)", weight_decay=0)
        else:
            note([key], mapped_text(weight_decay=flat[key]), weight_decay=flat[key])
    elif key == "adam8bit":
        optimizer = "adamw8bit" if flat[key] else "adamw"
        note([key], mapped_text(optimizer=optimizer), optimizer=optimizer)
    elif key in ("lr_scheduler", "lr_warmup_steps"):
        scheduler = flat.get("lr_scheduler")
        if scheduler == "constant":  # diffusers' get_scheduler("constant") takes no warmup
            keys = [k for k in ("lr_scheduler", "lr_warmup_steps") if k in flat]
            note(keys, f"{mapped_text(warmup_steps=0)} (the reference's 'constant' schedule ignores lr_warmup_steps)", warmup_steps=0)
        elif key == "lr_scheduler" and scheduler != "constant_with_warmup":
            note([key], "not used: glance_lite's learning rate is constant after a linear warmup")
        elif key == "lr_scheduler":
            note([key], "glance_lite's schedule: constant after a linear warmup of warmup_steps")
        else:
            note([key], mapped_text(warmup_steps=flat[key]), warmup_steps=flat[key])
    else:  # Slow_LoRA / Fast_LoRA: which adapter the run trains
        slow, fast = bool(flat.get("Slow_LoRA")), bool(flat.get("Fast_LoRA"))
        keys = [k for k in ("Slow_LoRA", "Fast_LoRA") if k in flat]
        if slow and fast:
            note(keys, f"{mapped_text(phase='both')} (the reference refuses both; glance_lite trains slow, then fast)", phase="both")
        elif slow or fast:
            phase = "slow" if slow else "fast"
            note(keys, mapped_text(phase=phase), phase=phase)
        else:
            note(keys, "not used: neither phase is chosen; --phase decides (default both)")


def _flatten(data: dict) -> dict:
    """`data_config: {img_size: 1024}` -> {'data_config.img_size': 1024}; numbers written as 3e-4 become numbers."""
    flat = {}
    for key, value in data.items():
        if key == "data_config" and isinstance(value, dict):
            flat.update({f"data_config.{k}": _yaml_number(v) for k, v in value.items()})
        else:
            flat[key] = _yaml_number(value)
    return flat


def _show(value) -> str:
    if isinstance(value, bool) or value is None:
        return {True: "true", False: "false", None: "null"}[value]
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_show(v) for v in value) + "]"
    return str(value)


_OFFICIAL_ONLY_KEYS = {k.split(".")[0] for k in (*OFFICIAL_RENAMES, *OFFICIAL_UNUSED, *OFFICIAL_COMBINED)} - {
    f.name for f in dataclasses.fields(TrainConfig)
}
