"""The one placement truth: for a profile, a component, a stage and a process rank, where the component is.

The planner prices it, the manager carries it out, the trainer asks it how the frozen base is held: all three call
`placement()`, so what is predicted is what happens. A run is a sequence of stages; in each, a component is in
one of four states:

    run     it computes in this stage, on `device` (`mode`: whole, streamed block by block, or sharded)
    keep    it stays loaded on its GPU, idle (resident and sharded components)
    park    it waits in CPU RAM (model_offload; group_offload between its stages; a VAE that is evicted after use
            is parked instead: it is small and the next image needs it again; everything on a CPU)
    evict   it is not in memory at all: the next stage that runs it loads it from disk again

"idle" is the state between runs (after the last stage). Under `accelerate launch` each process owns its GPUs:
process `rank` uses GPUs rank * num_gpus ... rank * num_gpus + num_gpus - 1. `device="cpu"` runs any profile's
choices on the CPU: every device becomes the CPU and moving weights between devices becomes a no-op, while the
storage, the states and the streaming stay what the profile says.
"""

from __future__ import annotations

from dataclasses import dataclass

STAGES = ("text_encode", "vae_encode", "denoise", "vae_decode", "train_step", "idle")
STATES = ("run", "keep", "park", "evict")
MODES = ("whole", "streamed", "sharded")


@dataclass(frozen=True)
class Placement:
    """Where one component is during one stage, and how its weights are stored and computed."""

    component: str
    stage: str
    state: str  # STATES
    device: str  # "cuda:N" or "cpu": where it computes (run) or is held (keep / park); "" when evicted
    dtype: str  # dtype of the unquantized parameters, which is also the compute dtype of its activations
    quantization: str  # storage of the quantized weights ("none": plain `dtype`)
    mode: str = "whole"  # MODES: how the weights are laid out while it runs (or is kept, for sharded ones)


def stage_components(stage: str, family=None) -> tuple[str, ...]:
    """The components that compute in a stage. The family says which text encoders it has and whether its
    denoiser needs the VAE too (an edit model encodes the input image inside the denoise stage)."""
    text = family.text_encoders if family is not None else ("text_encoder", "text_encoder_2")
    denoise = family.denoise_components if family is not None else ("transformer",)
    return {
        "text_encode": tuple(text),
        "vae_encode": ("vae",),
        "denoise": tuple(denoise),
        "vae_decode": ("vae",),
        "train_step": ("transformer",),
        "idle": (),
    }[stage]


def gpu_index(profile, component: str, rank: int = 0) -> int:
    """The CUDA device index a component uses in process `rank` (its `gpu:` within the process's share)."""
    return rank * max(profile.num_gpus, 1) + profile.component(component).gpu


def placement(profile, component: str, stage: str, rank: int = 0, *, family=None, device: str | None = None) -> Placement:
    """Where `component` is during `stage` (see the module docstring). `device="cpu"` emulates the profile on the CPU."""
    if stage not in STAGES:
        raise ValueError(f"Unknown stage {stage!r}: one of {', '.join(STAGES)}.")
    policy = profile.component(component)
    dtype, quantization, placement_kind = policy.dtype, policy.quantization, policy.placement
    if stage == "train_step" and component == "transformer":  # the frozen base as the training policy holds it
        training = profile.training
        dtype, quantization = training.dtype, training.base_quantization
        placement_kind = "group_offload" if training.block_offload else "resident"
    on_cpu = device == "cpu" or profile.device == "cpu" or placement_kind == "cpu"
    home = "cpu" if on_cpu else f"cuda:{gpu_index(profile, component, rank)}"

    def at(state: str, where: str) -> Placement:
        streamed = state == "run" and placement_kind == "group_offload"
        mode = "streamed" if streamed else "sharded" if placement_kind == "sharded" and state != "park" else "whole"
        return Placement(component, stage, state, where, dtype, quantization, mode)

    if component in stage_components(stage, family):
        return at("run", home)
    if stage == "train_step":  # the trainer encodes everything first and frees the encoders before it loads
        return at("evict", "")
    return at(*_idle_state(component, placement_kind, home))


def _idle_state(component: str, placement_kind: str, home: str) -> tuple[str, str]:
    """What a component does while another one works. The VAE is parked, never evicted: it is small and every
    image needs it again."""
    if placement_kind == "evict_after_use" and component != "vae":
        return "evict", ""
    if home == "cpu":
        return "park", "cpu"
    if placement_kind in ("resident", "sharded"):
        return "keep", home
    return "park", "cpu"  # model_offload, group_offload (its resident blocks leave the GPU), a parked VAE
