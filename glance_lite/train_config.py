"""The trainer's settings: `TrainConfig` (the family's reference recipe plus a user's overrides, each checked with
a message that names the key) and the YAML file a run can read them from (`--config`, `--set key=value`)."""

from __future__ import annotations

import dataclasses
import difflib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

PHASES = ("slow", "fast")
TIMESTEP_MODES = ("consistent", "reference")


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

    @classmethod
    def for_family(cls, family, overrides: dict | None = None) -> "TrainConfig":
        """The family's recipe with `overrides` applied; unknown keys and bad values fail with a clear message."""
        recipe = dataclasses.asdict(family.recipe)
        recipe.pop("optimizer")  # the profile picks the optimizer (memory), a config may override it
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
        return dataclasses.replace(config, slow_steps=split.slow, fast_steps=split.fast)

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
        }  # fmt: skip
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
    """A YAML mapping of config keys (see `TrainConfig`; `python -m glance_lite.train --print-config`)."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"Config file {path} does not exist.")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ValueError(f"{path}: not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: a training config must be a YAML mapping of key: value.")
    # YAML 1.1 reads 3e-4 as a string; numbers written that way are meant as numbers.
    return {k: _yaml_number(v) for k, v in data.items()}


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
        out[key.strip()] = _yaml_number(yaml.safe_load(value))
    return out
