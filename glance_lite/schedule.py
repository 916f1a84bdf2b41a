"""Phase plan: which timesteps the model sees in each phase, and how far each step moves the latent.

Glance samples with two adapters over two slices of one dense 50-step flow-matching schedule: a *slow*
phase over early indices (0, 2, 4, 6, 8) and a *fast* phase over late ones (10, 20, 30, 40, 49). The split is
data (`PhaseSplit`), not code, so users can trade speed for quality (e.g. 4 + 4 steps).

Every step is `Step(phase, timestep, sigma, sigma_next)`: the transformer is told `timestep`, and the
sampler moves the latent by `(sigma_next - sigma) * velocity`. Two ways to fill those numbers:

- ``consistent``: the latent really travels sigma(t_i) -> sigma(t_{i+1}), the last step to 0, so a perfect
  velocity lands exactly on the clean image.
- ``reference``: reproduces the official Glance sampler (CSU-JPG/Glance) step for step: timesteps are the
  1024x1024 values rounded to bfloat16 whatever the resolution; the slow phase moves the latent along
  *consecutive* dense sigmas; the fast phase moves it along a fresh N-step schedule that starts again at
  sigma 1. Under a perfect velocity it ends at sigma = -0.0537 (Qwen-Image, 1024^2), past the clean image.

The dense schedule itself is computed by diffusers' `FlowMatchEulerDiscreteScheduler` with the model's own
scheduler config and the same resolution-dependent shift (`mu`, `calculate_shift`) as the stock pipelines, so
`base_plan(N)` reproduces a stock N-step run exactly. torch and diffusers are imported where the schedule is
computed: `PhaseSplit` checks a command line's `--slow-steps` before either is loaded.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Literal

ScheduleMode = Literal["consistent", "reference"]
SCHEDULE_MODES = ("consistent", "reference")

# The official sampler hard-codes the timesteps of a 1024x1024 image: 64 x 64 packed tokens.
REFERENCE_IMAGE_SEQ_LEN = 4096


@dataclass(frozen=True)
class PhaseSplit:
    """Which 0-based indices of the dense schedule each phase uses (paper default: 5 slow + 5 fast of 50)."""

    slow: tuple[int, ...] = (0, 2, 4, 6, 8)
    fast: tuple[int, ...] = (10, 20, 30, 40, 49)
    dense_steps: int = 50

    def __post_init__(self):
        object.__setattr__(self, "slow", tuple(int(i) for i in self.slow))
        object.__setattr__(self, "fast", tuple(int(i) for i in self.fast))
        self.validate()

    def validate(self) -> None:
        """Refuse splits that cannot describe a denoising run, before any model is loaded."""
        if self.dense_steps < 2:
            raise ValueError(f"dense_steps must be at least 2, got {self.dense_steps}.")
        if not self.slow and not self.fast:
            raise ValueError("The phase split has no steps: give at least one slow or fast index.")
        indices = self.slow + self.fast
        bad = [i for i in indices if not 0 <= i < self.dense_steps]
        if bad:
            raise ValueError(
                f"Schedule indices {bad} are out of range: indices are 0-based positions in the "
                f"{self.dense_steps}-step dense schedule, so they must lie in 0..{self.dense_steps - 1}."
            )
        if any(b <= a for a, b in zip(indices, indices[1:])):
            raise ValueError(
                f"Schedule indices must be strictly increasing across slow then fast phases, got "
                f"slow={list(self.slow)} fast={list(self.fast)}. Example: slow=0,2,4,6,8 fast=10,20,30,40,49."
            )

    @classmethod
    def parse(cls, slow: str | None, fast: str | None, dense_steps: int = 50) -> "PhaseSplit":
        """Build a split from comma-separated CLI strings such as "0,2,4,6"; None keeps the default."""
        default = cls()

        def _ints(text: str | None, fallback: tuple[int, ...]) -> tuple[int, ...]:
            if text is None:
                return fallback
            try:
                return tuple(int(x) for x in text.split(",") if x.strip() != "")
            except ValueError:
                raise ValueError(f"Schedule indices must be comma-separated integers, got {text!r}.") from None

        return cls(_ints(slow, default.slow), _ints(fast, default.fast), dense_steps)


@dataclass(frozen=True)
class Step:
    """One transformer call: the model is told `timestep` (0..1000); the latent moves sigma -> sigma_next."""

    phase: str
    timestep: float
    sigma: float
    sigma_next: float


@dataclass(frozen=True)
class PhasePlan:
    """The complete list of steps of one sampling run, in order, plus how it was derived."""

    steps: tuple[Step, ...]
    mode: str
    image_seq_len: int
    mu: float

    def phase(self, name: str) -> tuple[Step, ...]:
        return tuple(s for s in self.steps if s.phase == name)

    @property
    def phases(self) -> tuple[str, ...]:
        """Phase names in the order they run (e.g. ("slow", "fast") or ("base",))."""
        return tuple(dict.fromkeys(s.phase for s in self.steps))

    @property
    def final_sigma(self) -> float:
        """Where a perfect velocity would leave the latent: 0 is the clean image."""
        sigma = self.steps[0].sigma
        for step in self.steps:
            sigma += step.sigma_next - step.sigma
        return sigma

    def to_dict(self) -> dict:
        return {
            "mode": self.mode,
            "image_seq_len": self.image_seq_len,
            "mu": self.mu,
            "phases": {p: [s.timestep for s in self.phase(p)] for p in self.phases},
            "steps": [asdict(s) for s in self.steps],
            "final_sigma": self.final_sigma,
        }


def image_seq_len(height: int, width: int, vae_scale_factor: int = 8, patch_size: int = 2) -> int:
    """Number of packed image tokens, the quantity the resolution-dependent shift is computed from."""
    per_token = vae_scale_factor * patch_size
    return (height // per_token) * (width // per_token)


def calculate_shift(
    image_seq_len: int, base_seq_len: int = 256, max_seq_len: int = 4096, base_shift: float = 0.5, max_shift: float = 1.15
) -> float:
    """The stock pipelines' resolution-dependent shift `mu`: linear in the number of image tokens, `base_shift` at
    `base_seq_len` and `max_shift` at `max_seq_len` (the same arithmetic as diffusers' `calculate_shift`, which
    tests/test_schedule.py checks; importing it would import the whole Qwen-Image pipeline)."""
    m = (max_shift - base_shift) / (max_seq_len - base_seq_len)
    b = base_shift - m * base_seq_len
    return image_seq_len * m + b


def dense_schedule(scheduler_config: dict, seq_len: int, num_steps: int) -> tuple[torch.Tensor, torch.Tensor, float]:
    """(timesteps, sigmas incl. the terminal 0, mu) exactly as the stock Qwen-Image/FLUX pipelines set them."""
    import numpy as np
    from diffusers import FlowMatchEulerDiscreteScheduler

    scheduler = FlowMatchEulerDiscreteScheduler.from_config(scheduler_config)
    mu = calculate_shift(
        seq_len,
        scheduler.config.get("base_image_seq_len", 256),
        scheduler.config.get("max_image_seq_len", 4096),
        scheduler.config.get("base_shift", 0.5),
        scheduler.config.get("max_shift", 1.15),
    )
    scheduler.set_timesteps(sigmas=np.linspace(1.0, 1 / num_steps, num_steps), mu=mu, device="cpu")
    return scheduler.timesteps.clone(), scheduler.sigmas.clone(), float(mu)


def base_plan(scheduler_config: dict, seq_len: int, num_steps: int, phase: str = "base") -> PhasePlan:
    """The plain N-step schedule of the stock pipeline: what Glance is compared against (`phase="base"`, no adapter),
    or, with a few-step LoRA's scheduler settings, that LoRA's schedule (`phase="fewstep"`, see `methods`)."""
    if num_steps < 1:
        raise ValueError(f"The number of {phase} steps must be at least 1, got {num_steps}.")
    timesteps, sigmas, mu = dense_schedule(scheduler_config, seq_len, num_steps)
    steps = tuple(
        Step(phase, float(timesteps[i]), float(sigmas[i]), float(sigmas[i + 1])) for i in range(num_steps)
    )
    return PhasePlan(steps, phase, seq_len, mu)


def glance_plan(
    scheduler_config: dict,
    seq_len: int,
    split: PhaseSplit = PhaseSplit(),
    mode: ScheduleMode = "consistent",
) -> PhasePlan:
    """The slow + fast steps of a Glance run at this image size (see the module docstring for the modes)."""
    split.validate()
    if mode not in SCHEDULE_MODES:
        raise ValueError(f"Unknown schedule mode {mode!r}: choose one of {', '.join(SCHEDULE_MODES)}.")
    timesteps, sigmas, mu = dense_schedule(scheduler_config, seq_len, split.dense_steps)
    phases = [("slow", split.slow), ("fast", split.fast)]
    if mode == "consistent":
        order = split.slow + split.fast
        targets = [float(sigmas[i]) for i in order[1:]] + [0.0]
        names = ["slow"] * len(split.slow) + ["fast"] * len(split.fast)
        steps = tuple(
            Step(name, float(timesteps[i]), float(sigmas[i]), target) for name, i, target in zip(names, order, targets)
        )
        return PhasePlan(steps, mode, seq_len, mu)

    # reference: bf16-rounded 1024^2 timesteps; the latent follows the sampler's own sigma bookkeeping.
    import torch

    ref_timesteps, _, _ = dense_schedule(scheduler_config, REFERENCE_IMAGE_SEQ_LEN, split.dense_steps)
    steps: list[Step] = []
    for name, indices in phases:
        if not indices:
            continue
        told = ref_timesteps[list(indices)].to(torch.bfloat16).float()
        if name == "slow":
            moves = sigmas[: len(indices) + 1]
        else:
            _, moves, _ = dense_schedule(scheduler_config, seq_len, len(indices))
        steps += [
            Step(name, float(told[k]), float(moves[k]), float(moves[k + 1])) for k in range(len(indices))
        ]
    return PhasePlan(tuple(steps), mode, seq_len, mu)
