"""The GPUs a run uses: whether the cards in this machine can run a profile, and which card is this process's.

Asked before anything loads (generation, training and the UI all call `check_profile_runs_here`), so a mismatch is one
line naming what is wrong and the profile that fits, not a kernel error minutes later:

- the torch build must carry kernels for the card (`torch.cuda.get_arch_list()`): CUDA 13 builds of torch dropped
  Volta, and since torch 2.11 only the CUDA 12.6 build still has sm_70 kernels, so a V100 needs that build;
- the profile's GPUs must exist (under `accelerate launch`, process `rank` uses its own share of them);
- each of them must have the profile's compute capability (`min_compute_capability`: bfloat16 needs sm_80,
  float8 weights sm_89) and the memory of the card the profile is for (`gpu_memory_gb`).

Under `accelerate launch` every process first makes its own GPU the current CUDA device (`claim_gpu`): CUDA streams
(diffusers' offload stream), contexts and memory queries otherwise all land on cuda:0. Only this process's GPUs are
ever queried for free memory (`mem_get_info` opens a context on the card it asks about).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch

from .errors import SetupError
from .placement import gpu_index
from .profiles import BF16_MIN_COMPUTE_CAPABILITY, CARD_SIZE_TOLERANCE_GB

# Volta: the last torch builds with its kernels are the CUDA 12.6 ones (torch 2.11 dropped it from cu128 too).
VOLTA_WHEEL_INDEX = "https://download.pytorch.org/whl/cu126"
FP8_MIN_COMPUTE_CAPABILITY = 8.9


class ProfileCardMismatchError(SetupError):
    """The profile asks for more than this machine's GPU (capability, memory, count) or torch build offers."""


@dataclass(frozen=True)
class Card:
    """One CUDA device as torch reports it (no context is opened to read this)."""

    index: int
    name: str
    total_bytes: int
    capability: tuple[int, int]

    @property
    def cc(self) -> float:
        return self.capability[0] + self.capability[1] / 10

    @property
    def sm(self) -> str:
        return f"sm_{self.capability[0]}{self.capability[1]}"

    def describe(self) -> str:
        return f"GPU {self.index} ({self.name}, {self.sm}, {self.total_bytes / 2**30:.1f} GiB)"


def read_card(index: int) -> Card:
    props = torch.cuda.get_device_properties(index)
    return Card(index, props.name, int(props.total_memory), (props.major, props.minor))


def launched_processes() -> int:
    """How many processes `accelerate launch` / torchrun started (1 otherwise)."""
    return int(os.environ.get("WORLD_SIZE", 1))


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", 0))


def visible_gpus() -> tuple[int, ...] | None:
    """The GPUs this process may query: under `accelerate launch` only its own (one per process when the profile is
    not known yet, as for `--profile auto`); None means every GPU."""
    return (local_rank(),) if launched_processes() > 1 else None


def claim_gpu(index: int) -> None:
    """Make `index` the current CUDA device of this process, before any stream, context or memory query."""
    if torch.cuda.is_available() and index < torch.cuda.device_count():
        torch.cuda.set_device(index)


def claim_gpu_for_auto() -> None:
    """`--profile auto` under `accelerate launch`: this process's GPU is current before auto selection reads it."""
    own = visible_gpus()
    if own is not None:
        claim_gpu(own[0])


def profile_gpus(profile, family, device: str | None = None, rank: int = 0) -> list[int]:
    """The CUDA device indices a profile's components use in process `rank` (none on a CPU run)."""
    if device == "cpu" or profile.device == "cpu":
        return []
    components = (*family.text_encoders, "transformer", "vae")
    used = {gpu_index(profile, c, rank) for c in components if profile.component(c).placement != "cpu"}
    if profile.component("transformer").placement == "sharded":
        used |= {rank * profile.num_gpus + g for g in range(profile.num_gpus)}
    return sorted(used)


def check_profile_runs_here(profile, family, device: str | None = None, rank: int = 0) -> None:
    """Refuse, before anything loads, a profile this machine's GPUs or torch build cannot run (`device="cpu"` runs
    any profile's choices on the CPU and needs no GPU)."""
    if device not in (None, "cpu"):
        raise ValueError(f"device must be 'cpu' (run the profile's choices on the CPU) or left out, got {device!r}.")
    wanted = profile_gpus(profile, family, device, rank)
    if not wanted:
        return
    available = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if available == 0:
        raise SetupError(
            f"Profile '{profile.name}' runs on a CUDA GPU and this machine has none usable by torch "
            f"(torch {torch.__version__}). Use --profile cpu (or auto), or --device cpu to run this profile's "
            "choices on the CPU."
        )
    if wanted[-1] >= available:
        raise ProfileCardMismatchError(
            f"Profile '{profile.name}' uses GPU {wanted[-1]} and this machine has {available} GPU(s). "
            "Choose a profile for this machine (--profile auto picks one)."
        )
    for card in (read_card(i) for i in wanted):
        check_torch_build_runs(card)
        problem = card_problem(profile, card)
        if problem:
            raise ProfileCardMismatchError(f"{problem}: {_instead(card, profile.num_gpus)}")


def use_profile_gpus(profile, family, device: str | None = None, rank: int = 0) -> None:
    """Refuse what this machine cannot run (`check_profile_runs_here`), then make the GPU this process's transformer
    computes on its current CUDA device."""
    check_profile_runs_here(profile, family, device, rank)
    if profile_gpus(profile, family, device, rank):
        claim_gpu(gpu_index(profile, "transformer", rank))


def check_training_launch(profile, device: str | None = None, rank: int = 0) -> None:
    """Under `accelerate launch` every training process trains on one GPU, cuda:rank (accelerate sets it and builds
    DDP on it); a profile giving each process several GPUs would hold the frozen base on another one."""
    if launched_processes() <= 1 or device == "cpu" or profile.device == "cpu":
        return
    if gpu_index(profile, "transformer", rank) != rank:
        raise ProfileCardMismatchError(
            f"Profile '{profile.name}' gives each process {profile.num_gpus} GPUs, and accelerate launch trains with one GPU "
            f"per process (process {rank} on cuda:{rank}): train with a single-GPU profile, one process per GPU."
        )


def check_torch_build_runs(card: Card) -> None:
    """The installed torch must have kernels for the card: a cubin of the same major architecture and no newer minor,
    or PTX of an older architecture that the driver compiles."""
    arches = torch.cuda.get_arch_list()
    major, minor = card.capability
    for arch in arches:
        kind, _, number = arch.partition("_")
        if not number.isdigit():
            continue
        arch_major, arch_minor = int(number[:-1]), int(number[-1])
        if kind == "sm" and arch_major == major and arch_minor <= minor:
            return
        if kind == "compute" and (arch_major, arch_minor) <= (major, minor):
            return
    build = f"torch {torch.__version__} (CUDA {torch.version.cuda})"
    if major == 7 and minor < 5:
        fix = (
            f"a Volta card needs torch's CUDA 12.6 build, the last with {card.sm} kernels: pip install "
            f"torch=={torch.__version__.split('+')[0]} --index-url {VOLTA_WHEEL_INDEX}"
        )
    else:
        fix = "install a torch build for this card (https://pytorch.org/get-started/locally/)"
    raise ProfileCardMismatchError(
        f"{build} has no kernels for {card.describe()}: it was built for {' '.join(arches) or 'no CUDA architecture'}; {fix}."
    )


def card_problem(profile, card: Card) -> str | None:
    """Why `card` cannot run `profile` (compute capability, memory), or None."""
    needed = profile.min_compute_capability
    if needed is not None and card.cc < needed:
        return f"Profile '{profile.name}' needs compute capability {needed:g} ({_what_needs(profile)}); {card.describe()} is {card.cc:g}"
    if profile.gpu_memory_gb is not None and card.total_bytes / 2**30 + CARD_SIZE_TOLERANCE_GB < profile.gpu_memory_gb:
        return f"Profile '{profile.name}' is for a {profile.gpu_memory_gb:g} GB card; {card.describe()} is smaller"
    return None


def _what_needs(profile) -> str:
    storages = {profile.component(c).quantization for c in profile.components}
    if "torchao-float8" in storages:
        return "float8 weights"
    dtypes = {profile.compute_dtype, profile.training.dtype, *(profile.component(c).dtype for c in profile.components)}
    return "bfloat16" if "bfloat16" in dtypes else "its kernels"


def fitting_profile(card: Card, gpus: int = 1):
    """The built-in profile made for this card: the biggest card size it fits among those its capability runs
    (bfloat16 ones first where the card has bfloat16; then the one needing the most of the card, e.g. fp8), or None."""
    from .profiles import list_profiles, load_profile

    fitting = []
    for name in list_profiles():
        profile = load_profile(name)
        if profile.device != "cuda" or profile.num_gpus > gpus or card_problem(profile, card):
            continue
        needless_fp16 = card.cc >= BF16_MIN_COMPUTE_CAPABILITY and profile.compute_dtype == "float16"
        made_for = (-(profile.gpu_memory_gb or 0), -profile.num_gpus, -(profile.min_compute_capability or 0))
        fitting.append((needless_fp16, *made_for, profile.name, profile))
    return min(fitting, key=lambda entry: entry[:-1])[-1] if fitting else None


def _instead(card: Card, gpus: int) -> str:
    profile = fitting_profile(card, gpus)
    if profile is None:
        return "no built-in GPU profile runs on it; use --device cpu to run a profile's choices on the CPU."
    return f"use --profile {profile.name} (made for this card), or --profile auto."
