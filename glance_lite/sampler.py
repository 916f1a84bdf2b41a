"""The one sampling loop: for each phase, switch to its adapter, then take Euler steps (true CFG when it is on).

The loop knows nothing about a particular model: the family calls the stock transformer forward and combines
guidance as its stock pipeline does; the phase plan says which timestep the model sees and how far each step
moves the latent. One transformer serves every phase: adapters are switched by name (or fused into the weights for
the phase, see `adapters`), never reloaded.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import torch
from tqdm.auto import tqdm

from .adapters import restore_base_weights, use_adapter
from .errors import UserError
from .families import Conditioning, LatentState, ModelFamily
from .schedule import PhasePlan, Step


class NonFiniteLatentsError(UserError, RuntimeError):
    """The latent became NaN/inf: stop instead of decoding a black image."""


@dataclass
class SamplingResult:
    latents: torch.Tensor
    phase_seconds: dict[str, float] = field(default_factory=dict)
    switch_seconds: dict[str, float] = field(default_factory=dict)
    transformer_calls: int = 0  # forwards run (a batched CFG pair is one; each costs a pass over the weights)


def euler_step(latents: torch.Tensor, velocity: torch.Tensor, step: Step) -> torch.Tensor:
    """x <- x + (sigma_next - sigma) * v, with the same ops and dtypes as FlowMatchEulerDiscreteScheduler.step."""
    sigma = torch.tensor(step.sigma, dtype=torch.float32)
    sigma_next = torch.tensor(step.sigma_next, dtype=torch.float32)
    return (latents.to(torch.float32) + (sigma_next - sigma) * velocity).to(velocity.dtype)


def predict_velocity(
    transformer,
    family: ModelFamily,
    state: LatentState,
    latents: torch.Tensor,
    step: Step,
    cond: Conditioning,
    uncond: Conditioning | None,
    true_cfg_scale: float,
    batch_cfg: bool = False,
) -> tuple[torch.Tensor, int]:
    """The guided velocity at one step, and how many transformer forwards it took: the conditional pass, plus the
    unconditional one when CFG is on.

    With `batch_cfg` both passes run as one batch of two (one forward: half the weight traffic when weights stream
    from CPU RAM); the family decides whether its conditionings can be batched.
    """
    timestep = family.timestep_tensor(step.timestep, latents)
    if uncond is None:
        return family.velocity(transformer, state, latents, timestep, cond), 1
    if batch_cfg:
        both = family.batch_conditions(cond, uncond)
        if both is not None:
            doubled = torch.cat([latents, latents])
            v = family.velocity(transformer, family.batched_state(state), doubled, timestep.repeat(2), both)
            cond_v, uncond_v = v.chunk(2)
            return family.combine_guidance(cond_v, uncond_v, true_cfg_scale), 1
    cond_v = family.velocity(transformer, state, latents, timestep, cond)
    uncond_v = family.velocity(transformer, state, latents, timestep, uncond)
    return family.combine_guidance(cond_v, uncond_v, true_cfg_scale), 2


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def sample(
    transformer,
    family: ModelFamily,
    plan: PhasePlan,
    state: LatentState,
    cond: Conditioning,
    uncond: Conditioning | None,
    true_cfg_scale: float,
    adapters: Mapping[str, str | None],
    batch_cfg: bool = False,
    fuse_adapters: bool = False,
    progress: bool = True,
    on_phase_end: Callable[[str], None] | None = None,
    on_step: Callable[[Step, torch.Tensor], None] | None = None,
) -> SamplingResult:
    """Run every phase of `plan` from `state.latents`; returns the final latents and per-phase wall times.

    `fuse_adapters` merges each phase's adapter into the weights while it runs; the base weights are back when
    this returns, whatever happens. `on_step(step, latents)` sees the latent after every step (a distillation
    teacher's trajectory).
    """
    latents = state.latents
    device = latents.device
    result = SamplingResult(latents)
    bar = tqdm(total=len(plan.steps), disable=not progress, desc="denoise", unit="step")
    try:
        with torch.no_grad():
            for phase in plan.phases:
                start = time.perf_counter()
                use_adapter(transformer, adapters.get(phase), fuse=fuse_adapters)
                result.switch_seconds[phase] = time.perf_counter() - start
                bar.set_description(f"{phase} ({adapters.get(phase) or 'base'})")
                start = time.perf_counter()
                for index, step in enumerate(plan.phase(phase)):
                    v, calls = predict_velocity(transformer, family, state, latents, step, cond, uncond, true_cfg_scale, batch_cfg)
                    result.transformer_calls += calls
                    latents = euler_step(latents, v, step)
                    if not torch.isfinite(latents).all():
                        raise NonFiniteLatentsError(
                            f"The latent became NaN/inf in the {phase} phase, step {index} (t={step.timestep:.1f}), "
                            f"computing in {v.dtype}. Qwen-Image overflows in pure float16; use a bfloat16 profile, "
                            "or a V100 profile that computes the overflowing layers in float32. No image was written."
                        )
                    if on_step is not None:
                        on_step(step, latents)
                    bar.update()
                _synchronize(device)
                result.phase_seconds[phase] = time.perf_counter() - start
                if on_phase_end is not None:
                    on_phase_end(phase)
    finally:
        restore_base_weights(transformer)
    bar.close()
    result.latents = latents
    return result
