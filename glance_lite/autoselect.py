"""`--profile auto`: the fastest built-in profile whose memory plan fits the machine this runs on.

Its own module because it needs both sides: the profiles (plain data) and the planner that prices them. The
hardware is read once (`Hardware.detect`, or a fake one in tests), every compatible built-in profile is planned
against what is free, and the ranking prefers, among the profiles that fit, the one moving the fewest weight
bytes per image.
"""

from __future__ import annotations

from dataclasses import dataclass

from .profiles import BF16_MIN_COMPUTE_CAPABILITY, CARD_SIZE_TOLERANCE_GB, Profile, list_profiles, load_profile


# ---- auto selection -----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Hardware:
    """What the machine offers: one entry per GPU (in torch device order), plus system RAM."""

    gpu_names: tuple[str, ...] = ()
    gpu_total_bytes: tuple[int, ...] = ()
    gpu_free_bytes: tuple[int, ...] = ()
    compute_capabilities: tuple[float, ...] = ()
    system_ram_bytes: int = 0

    @property
    def num_gpus(self) -> int:
        return len(self.gpu_names)

    @classmethod
    def detect(cls) -> "Hardware":
        """Read torch.cuda and psutil; on a machine without a usable GPU the GPU tuples are empty. Under
        `accelerate launch` only this process's GPU is read (`gpus.visible_gpus`): asking a card for its free
        memory opens a CUDA context on it."""
        import psutil
        import torch

        from .gpus import visible_gpus

        ram = int(psutil.virtual_memory().available)
        if not torch.cuda.is_available():
            return cls(system_ram_bytes=ram)
        names, totals, frees, ccs = [], [], [], []
        for index in visible_gpus() or range(torch.cuda.device_count()):
            props = torch.cuda.get_device_properties(index)
            free, total = torch.cuda.mem_get_info(index)
            names.append(props.name)
            totals.append(int(total))
            frees.append(int(free))
            ccs.append(props.major + props.minor / 10)
        return cls(tuple(names), tuple(totals), tuple(frees), tuple(ccs), ram)

    def describe(self) -> str:
        if not self.gpu_names:
            return f"no CUDA GPU, {self.system_ram_bytes / 2**30:.0f} GiB RAM available"
        gpus = ", ".join(
            f"{name} ({free / 2**30:.1f} of {total / 2**30:.1f} GiB free, sm_{cc * 10:.0f})"
            for name, total, free, cc in zip(
                self.gpu_names, self.gpu_total_bytes, self.gpu_free_bytes, self.compute_capabilities
            )
        )
        return f"{gpus}; {self.system_ram_bytes / 2**30:.0f} GiB RAM available"


def _compatible(profile: Profile, hardware: Hardware) -> str | None:
    """Why a profile cannot run on this hardware at all (GPU count, compute capability), or None."""
    if profile.device == "cpu":
        return None
    if hardware.num_gpus < profile.num_gpus:
        return f"needs {profile.num_gpus} GPUs"
    ccs = hardware.compute_capabilities[: profile.num_gpus]
    if profile.min_compute_capability is not None and min(ccs) < profile.min_compute_capability:
        return f"needs compute capability {profile.min_compute_capability:g} (this GPU is {min(ccs):g})"
    return None


def select_profile(
    model: str = "Qwen/Qwen-Image", height: int = 1024, width: int = 1024, hardware: Hardware | None = None
) -> tuple[Profile, str]:
    """The fastest built-in profile whose memory plan fits this machine, and a sentence saying why.

    Candidates are the GPU profiles when a GPU is present (the cpu profile otherwise) that the GPUs can run
    (count, compute capability). Each is planned for `model` at `height` x `width` against the detected free VRAM
    (per GPU) and available RAM. Among those that fit, profiles made for this card size or smaller come first
    (float16 profiles last on GPUs that can run bfloat16), then the one moving the fewest weight bytes per image
    (streamed + reloaded bytes), then the one losing the fewest bytes to quantization, then the one made for the
    biggest card. If none fits, the leanest compatible profile is returned and the sentence says it will not fit.
    """
    from .plan import plan as make_plan

    hardware = hardware or Hardware.detect()
    profiles = [load_profile(name) for name in list_profiles()]
    if hardware.num_gpus == 0:
        cpu = next(p for p in profiles if p.device == "cpu")
        return cpu, f"No CUDA GPU found ({hardware.describe()}): using '{cpu.name}' ({cpu.description})."
    candidates, rejected = [], []
    for profile in (p for p in profiles if p.device == "cuda"):
        reason = _compatible(profile, hardware)
        if reason:
            rejected.append(f"{profile.name}: {reason}")
            continue
        used = max(profile.num_gpus, 1) if profile.num_gpus < 2 else hardware.num_gpus
        free_gb = min(hardware.gpu_free_bytes[:used]) / 2**30
        mp = make_plan(
            model, profile, height, width,
            gpu_memory_gb=free_gb, system_ram_gb=hardware.system_ram_bytes / 2**30, num_gpus=used,
        )  # fmt: skip
        candidates.append((profile, mp))
    fitting = [(p, mp) for p, mp in candidates if mp.fits]
    bf16_capable = min(hardware.compute_capabilities) >= BF16_MIN_COMPUTE_CAPABILITY

    def rank(candidate):
        profile, mp = candidate
        needless_fp16 = bf16_capable and profile.compute_dtype == "float16"  # fp16 overflows where bf16 would not
        card_gb = min(hardware.gpu_total_bytes[: max(profile.num_gpus, 1)]) / 2**30
        for_bigger_card = (profile.gpu_memory_gb or 0) > card_gb + CARD_SIZE_TOLERANCE_GB
        return (needless_fp16, for_bigger_card, mp.traffic_bytes_per_image, mp.quantization_loss_bytes,
                -(profile.gpu_memory_gb or 0), profile.name)  # fmt: skip

    if fitting:
        profile, mp = min(fitting, key=rank)
        others = len(fitting) - 1
        return profile, (
            f"Picked '{profile.name}' ({profile.description}) for {hardware.describe()}: its plan for {model} at "
            f"{width}x{height} peaks at {mp.peak_gpu_bytes / 2**30:.1f} GiB per GPU and "
            f"{mp.peak_ram_bytes / 2**30:.1f} GiB RAM and it moves {mp.traffic_bytes_per_image / 2**30:.0f} GiB of "
            "weights per image"
            + (f", the fastest of the {others + 1} profiles that fit." if others else "; it is the only profile that fits.")
        )
    if not candidates:
        cpu = next(p for p in profiles if p.device == "cpu")
        return cpu, (
            f"No GPU profile can run on {hardware.describe()} ({'; '.join(rejected)}): using '{cpu.name}', "
            "which is only practical for tiny models."
        )
    profile, mp = min(candidates, key=lambda c: (c[1].peak_gpu_bytes, c[0].gpu_memory_gb or 0))
    return profile, (
        f"No profile fits {hardware.describe()} for {model} at {width}x{height}. The leanest, '{profile.name}', "
        f"needs {mp.peak_gpu_bytes / 2**30:.1f} GiB per GPU and {mp.peak_ram_bytes / 2**30:.1f} GiB RAM: "
        f"{mp.verdict()}"
    )
