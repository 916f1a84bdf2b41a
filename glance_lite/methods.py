"""Sampling methods, chosen by name: Glance, the plain base model, and a few-step LoRA (what users pick instead).

    glance          the slow and fast LoRAs over 5 + 5 steps of the dense 50-step schedule, true CFG (the default)
    base, base-N    the plain base model, N steps (default 50), true CFG: what Glance is measured against
    fewstep-N       one distilled LoRA (e.g. Qwen-Image-Lightning), N steps, guidance off (one transformer call per
                    step), with that LoRA's own scheduler settings
    lightning-8/4   fewstep-8 / fewstep-4 with Qwen-Image-Lightning's published file as the default LoRA

A method is data (`Method`): which adapter runs at which step and with what guidance. `plan()` turns it into the
`PhasePlan` the one sampler runs (`glance_lite.sampler`); the memory planner prices it by its transformer calls.

Qwen-Image-Lightning samples with `FlowMatchEulerDiscreteScheduler` settings of its own ("we use shift=3 in
distillation"): `base_shift = max_shift = ln 3` with dynamic shifting, so mu = ln 3 at every size and the sigmas of
an N-step run are 3s / (1 + 2s) for s = 1, ..., 1/N (ModelTC/Qwen-Image-Lightning `generate_with_diffusers.py`,
repeated in nunchaku's `examples/v1/qwen-image-lightning.py`). They are the default of every few-step method and
can be overridden key by key.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

from .errors import UserError

KINDS = ("glance", "base", "fewstep")
FEWSTEP = "fewstep"  # the adapter name a few-step LoRA is loaded under (Glance's are "slow" and "fast")
DEFAULT_BASE_STEPS = 50
# Qwen-Image-Lightning's scheduler config (see the module docstring).
LIGHTNING_SCHEDULER = {
    "base_image_seq_len": 256,
    "base_shift": math.log(3),
    "invert_sigmas": False,
    "max_image_seq_len": 8192,
    "max_shift": math.log(3),
    "num_train_timesteps": 1000,
    "shift": 1.0,
    "shift_terminal": None,
    "stochastic_sampling": False,
    "time_shift_type": "exponential",
    "use_beta_sigmas": False,
    "use_dynamic_shifting": True,
    "use_exponential_sigmas": False,
    "use_karras_sigmas": False,
}
PRESETS = {"lightning-8": 8, "lightning-4": 4}  # name -> steps; the file comes from the model's family
_NAME = re.compile(r"^(?P<kind>glance|base|fewstep)(?:-(?P<steps>\d+))?$")


class MethodError(UserError, ValueError):
    """A sampling method that cannot run as asked (unknown name, no LoRA for a few-step method, ...)."""


@dataclass(frozen=True)
class Method:
    """How one image is sampled: `kind` (glance | base | fewstep), its step count, the preset it came from, and
    scheduler settings that differ from the model's own (a few-step LoRA's)."""

    kind: str
    steps: int | None = None
    preset: str | None = None
    scheduler: dict = field(default_factory=dict, compare=False)

    @property
    def name(self) -> str:
        if self.preset:
            return self.preset
        return self.kind if self.kind == "glance" else f"{self.kind}-{self.steps}"

    @property
    def guidance(self) -> bool:
        """True CFG (two passes per step) for glance and base; a distilled few-step LoRA samples without it."""
        return self.kind != "fewstep"

    @property
    def adapter(self) -> str | None:
        """The adapter name the few-step LoRA is loaded under (glance switches between 'slow' and 'fast')."""
        return FEWSTEP if self.kind == "fewstep" else None

    def plan(self, scheduler_config: dict, seq_len: int, split=None, mode: str = "consistent"):
        """The steps this method takes at this image size (`schedule.PhasePlan`)."""
        from .schedule import PhaseSplit, base_plan, glance_plan

        if self.kind == "glance":
            return glance_plan(scheduler_config, seq_len, split or PhaseSplit(), mode)
        if self.kind == "base":
            return base_plan(scheduler_config, seq_len, self.steps)
        return base_plan({**scheduler_config, **self.scheduler}, seq_len, self.steps, phase="fewstep")

    def to_dict(self) -> dict:
        return {"name": self.name, "kind": self.kind, "steps": self.steps, "guidance": self.guidance,
                **({"scheduler": self.scheduler} if self.scheduler else {})}  # fmt: skip


def parse_method(name: str | Method, steps: int | None = None, scheduler: dict | None = None) -> Method:
    """A Method from its name ('glance', 'base', 'base-50', 'fewstep', 'fewstep-8', 'lightning-8', 'lightning-4');
    `steps` gives the count a bare 'base' / 'fewstep' lacks, `scheduler` overrides a few-step method's settings."""
    if isinstance(name, Method):
        return name
    text = str(name).strip().lower()
    if text in PRESETS:
        if steps is not None and steps != PRESETS[text]:
            raise MethodError(f"{text} samples {PRESETS[text]} steps (its LoRA was distilled for them); use fewstep-{steps} with your own --lora for {steps}.")
        return Method("fewstep", PRESETS[text], text, {**LIGHTNING_SCHEDULER, **(scheduler or {})})
    match = _NAME.match(text)
    if not match:
        raise MethodError(
            f"unknown sampling method {name!r}: use glance, base-N, fewstep-N (with a LoRA), or a preset "
            f"({', '.join(PRESETS)})."
        )
    kind = match["kind"]
    named = int(match["steps"]) if match["steps"] else None
    if named is not None and steps is not None and named != steps:
        raise MethodError(f"{text} names {named} steps but {steps} were asked for: give the count once.")
    count = named if named is not None else steps
    if kind == "glance":
        if count is not None:
            raise MethodError("glance takes its steps from the phase split (--slow-steps / --fast-steps), not a count.")
        if scheduler:
            raise MethodError("scheduler settings apply to a few-step method (fewstep-N, lightning-*), not glance.")
        return Method("glance")
    if kind == "base":
        count = DEFAULT_BASE_STEPS if count is None else count
        if scheduler:
            raise MethodError("scheduler settings apply to a few-step method (fewstep-N, lightning-*), not base.")
    elif count is None:
        raise MethodError("fewstep needs a step count: fewstep-8, or --steps 8.")
    if count < 1:
        raise MethodError(f"{kind} needs at least 1 step, got {count}.")
    return Method(kind, count, None, {**LIGHTNING_SCHEDULER, **(scheduler or {})} if kind == "fewstep" else {})


def parse_scheduler_options(options: list[str]) -> dict:
    """`--scheduler KEY=VALUE` (repeatable) into a dict of YAML-typed values: `--scheduler base_shift=1.0986`."""
    import yaml

    out = {}
    for option in options or ():
        key, sep, value = option.partition("=")
        if not sep or not key.strip():
            raise MethodError(f"--scheduler {option!r}: write KEY=VALUE, e.g. --scheduler base_shift=1.0986.")
        if key.strip() not in LIGHTNING_SCHEDULER:
            raise MethodError(f"--scheduler {key.strip()}: not a FlowMatchEulerDiscreteScheduler setting ({', '.join(LIGHTNING_SCHEDULER)}).")
        try:
            out[key.strip()] = yaml.safe_load(value)
        except yaml.YAMLError:
            raise MethodError(f"--scheduler {option!r}: {value!r} is not a value (a number, true/false or null).") from None
    return out
