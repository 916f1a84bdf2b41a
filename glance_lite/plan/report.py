"""The plan as data a caller can rely on, and as the text and JSON a user reads.

`MemoryPlan` holds, per stage and device, the bytes of weights, streamed blocks, activations and overheads, the
verdict against the card and RAM, the transformer blocks kept resident while the rest stream, and the weight bytes
that cross PCIe per image and per training step.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..profiles import Profile, list_profiles, load_profile
from .activations import GiB, Tokens


@dataclass(frozen=True)
class ComponentPlan:
    """Sizes of one component under its inference policy."""

    name: str
    params: int
    dtype: str
    quantization: str
    placement: str
    bytes: int  # all weights under the policy (adapters excluded)
    full_precision_bytes: int  # same dtype, no quantization
    blocks: int
    largest_block_bytes: int  # including the adapters inside it
    outside_blocks_bytes: int
    adapter_bytes: int = 0  # LoRA adapters loaded for generation (transformer only), fused_copy_bytes included
    adapter_params: int = 0
    fused_copy_bytes: int = 0  # fuse_lora: the kept copy of the weights the LoRAs wrap
    block_bytes: tuple[int, ...] = field(default=(), repr=False)  # per repeated block, adapters included
    # per repeated block: its CPU copy pinned tensor by tensor (group offloading with streams), as the pinned-memory
    # allocator holds it (each tensor rounded up to a power of two: storage.pinned_allocation_bytes)
    block_pinned_bytes: tuple[int, ...] = field(default=(), repr=False)

    @property
    def total_bytes(self) -> int:
        return self.bytes + self.adapter_bytes


@dataclass(frozen=True)
class StagePlan:
    """Bytes per device during one stage. Devices are "cuda:0", "cuda:1", ..., and "cpu" (system RAM)."""

    name: str
    components: tuple[str, ...]
    weights: dict[str, int]
    streamed: dict[str, int]
    activations: dict[str, int]
    overhead: dict[str, int]
    budget: dict[str, int]
    notes: tuple[str, ...] = ()
    placements: dict = field(default_factory=dict)  # component -> the placement.Placement these bytes price

    @property
    def devices(self) -> list[str]:
        names = set(self.weights) | set(self.streamed) | set(self.activations) | set(self.overhead)
        return sorted(names, key=lambda d: (d == "cpu", d))

    def peak(self, device: str) -> int:
        return sum(part.get(device, 0) for part in (self.weights, self.streamed, self.activations, self.overhead))

    @property
    def peaks(self) -> dict[str, int]:
        return {device: self.peak(device) for device in self.devices}

    @property
    def peak_bytes(self) -> int:
        """Largest predicted peak on any GPU (system RAM on a CPU-only plan)."""
        gpus = [self.peak(d) for d in self.devices if d != "cpu"]
        return max(gpus) if gpus else self.peak("cpu")

    @property
    def ram_bytes(self) -> int:
        return self.peak("cpu")

    def fits_on(self, device: str) -> bool:
        return self.peak(device) <= self.budget.get(device, 0)

    @property
    def fits(self) -> bool:
        return all(self.fits_on(device) for device in self.devices)

    def to_dict(self) -> dict:
        return {
            "components": list(self.components),
            "weights": self.weights,
            "streamed": self.streamed,
            "activations": self.activations,
            "overhead": self.overhead,
            "peak": self.peaks,
            "budget": self.budget,
            "fits": {device: self.fits_on(device) for device in self.devices},
            "peak_bytes": self.peak_bytes,
            "notes": list(self.notes),
            "placements": {name: dict(vars(where)) for name, where in self.placements.items()},
        }


@dataclass(frozen=True)
class Pcie:
    """Weight bytes that cross PCIe (host to device and back) in steady state, and the same with every
    transformer block streamed (the cost residency saves)."""

    per_image: int
    per_image_all_streamed: int
    per_train_step: int
    per_train_step_all_streamed: int

    def to_dict(self) -> dict:
        return dict(vars(self))


@dataclass(frozen=True)
class MemoryPlan:
    """Per-stage predictions for one model, profile and image size. What callers rely on: `stages[name].peak_bytes`
    / `.fits` / `.peak(device)`, `fits`, `peak_gpu_bytes`, `verdict()`, `leaner_profile_hint()`, `to_dict()`
    (every number, JSON-ready), `resident_blocks[stage]` (the transformer blocks kept on the GPU while the others
    stream, in "denoise" and "train_step"), `pcie`, and for a sharded transformer `device_map` (module name ->
    GPU index, accelerate's format: pass it to `from_pretrained(device_map=...)`)."""

    model: str
    family: str
    profile: Profile
    height: int
    width: int
    lora_rank: int
    batch: int
    tokens: dict[str, Tokens]
    components: dict[str, ComponentPlan]
    stages: dict[str, StagePlan]
    transformer_forwards: int
    device_map: dict[str, int]
    phase_plan: dict
    resident_blocks: dict[str, tuple[int, ...]]
    pcie: Pcie
    device: str | None = None  # "cpu" when the profile's choices are emulated on the CPU
    activation_terms: dict = field(default_factory=dict)  # stage -> component -> activations.ActivationTerms
    simulation: list | None = None  # simulation.StageCheck per stage, with plan(simulate=True)
    options: dict = field(default_factory=dict)

    # ---- verdict -----------------------------------------------------------------------------------------------
    @property
    def fits(self) -> bool:
        return all(stage.fits for stage in self.stages.values())

    @property
    def peak_gpu_bytes(self) -> int:
        return max(stage.peak_bytes for stage in self.stages.values())

    @property
    def peak_ram_bytes(self) -> int:
        return max(stage.ram_bytes for stage in self.stages.values())

    @property
    def on_cpu(self) -> bool:
        return self.profile.device == "cpu" or self.device == "cpu"

    def failures(self) -> list[tuple[str, str, int, int]]:
        """(stage, device, predicted, available) for every device that does not fit."""
        return [
            (stage.name, device, stage.peak(device), stage.budget.get(device, 0))
            for stage in self.stages.values()
            for device in stage.devices
            if not stage.fits_on(device)
        ]

    def verdict(self) -> str:
        if self.fits:
            worst = max(self.stages.values(), key=lambda s: s.peak_bytes)
            ram = max(self.stages.values(), key=lambda s: s.ram_bytes)
            if self.on_cpu:
                return f"fits: peak {_gib(ram.ram_bytes)} RAM in {ram.name}."
            return f"fits: peak {_gib(worst.peak_bytes)} GPU in {worst.name}, {_gib(ram.ram_bytes)} RAM in {ram.name}."
        lines = []
        for stage, device, predicted, available in self.failures():
            what = "system RAM" if device == "cpu" else device
            lines.append(f"{stage} needs {_gib(predicted)} on {what} ({_gib(available)} available)")
        hint = self.leaner_profile_hint()
        advice = f" Try the leaner profile '{hint}' (--profile {hint})." if hint else " No leaner built-in profile exists."
        return "does NOT fit: " + "; ".join(lines) + "." + advice

    def leaner_profile_hint(self) -> str | None:
        """The next smaller built-in profile for the same kind of GPU: the one with the largest predicted GPU peak
        still below this plan's (same compute dtype, no higher compute capability, no more GPUs)."""
        from . import plan

        here = self.profile
        best = None
        for name in list_profiles():
            other = load_profile(name)
            if other.name == here.name or other.device != here.device or other.compute_dtype != here.compute_dtype:
                continue
            if (other.min_compute_capability or 0) > (here.min_compute_capability or 0) or other.num_gpus > here.num_gpus:
                continue
            options = dict(self.options, num_gpus=None)  # the candidate uses its own GPU count
            configs = options.pop("configs", self.model)
            candidate = plan(configs, other, self.height, self.width, **options)
            if candidate.peak_gpu_bytes >= self.peak_gpu_bytes:
                continue
            key = (candidate.peak_gpu_bytes, other.gpu_memory_gb or 0)
            if best is None or key > best[0]:
                best = (key, other.name)
        return best[1] if best else None

    # ---- ranking (auto selection) ------------------------------------------------------------------------------
    @property
    def traffic_bytes_per_image(self) -> int:
        """What offloading costs in time, as bytes: the PCIe bytes per image, plus work the profile leaves on the
        CPU (counted CPU_PLACEMENT_TRAFFIC_FACTOR times its weights) and evicted components read from disk again."""
        from .stages import CPU_PLACEMENT_TRAFFIC_FACTOR

        total = self.pcie.per_image
        for comp in self.components.values():
            if comp.placement == "cpu" and self.profile.device != "cpu":
                total += comp.total_bytes * CPU_PLACEMENT_TRAFFIC_FACTOR
        return total

    @property
    def quantization_loss_bytes(self) -> int:
        """Bytes given up to quantization across components (0 when nothing is quantized)."""
        return sum(c.full_precision_bytes - c.bytes for c in self.components.values())

    # ---- output ------------------------------------------------------------------------------------------------
    def to_dict(self) -> dict:
        return {
            "model": self.model,
            "family": self.family,
            "profile": self.profile.name,
            "device": self.device,
            "height": self.height,
            "width": self.width,
            "lora_rank": self.lora_rank,
            "batch": self.batch,
            "tokens": {k: {"image": t.image, "text": t.text, "condition": t.condition} for k, t in self.tokens.items()},
            "transformer_forwards": self.transformer_forwards,
            "gpu_memory_bytes": self.profile.gpu_memory_bytes,
            "vram_target_bytes": self.profile.vram_target_bytes,
            "system_ram_bytes": self.profile.system_ram_bytes,
            "components": {name: vars(c).copy() for name, c in self.components.items()},
            "stages": {name: stage.to_dict() for name, stage in self.stages.items()},
            "peak_gpu_bytes": self.peak_gpu_bytes,
            "peak_ram_bytes": self.peak_ram_bytes,
            "fits": self.fits,
            "verdict": self.verdict(),
            "leaner_profile": None if self.fits else self.leaner_profile_hint(),
            "resident_blocks": {stage: list(blocks) for stage, blocks in self.resident_blocks.items()},
            "pcie_bytes": self.pcie.to_dict(),
            "traffic_bytes_per_image": self.traffic_bytes_per_image,
            "device_map": self.device_map,
            "phase_plan": self.phase_plan,
            "activation_terms": {stage: {name: dict(vars(t)) for name, t in parts.items()}
                                 for stage, parts in self.activation_terms.items()},  # fmt: skip
            "simulation": None if self.simulation is None else [self._simulated(c) for c in self.simulation],
        }

    def _simulated(self, check) -> dict:
        from .simulation import simulated_peak

        stage = self.stages[check.stage]
        return {**check.to_dict(), "planned_peak": stage.peak(check.device),
                "simulated_peak": simulated_peak(stage, self.simulation, self.activation_terms, check.device)}

    def table(self) -> str:
        p = self.profile
        card = "CPU only" if p.device == "cpu" else f"{p.gpu_memory_gb:g} GiB GPU x{p.num_gpus}"
        emulated = " -- emulated on the CPU (--device cpu)" if self.device == "cpu" and p.device != "cpu" else ""
        lines = [
            f"Memory plan: {self.model} ({self.family}) at {self.width}x{self.height}, profile '{p.name}' "
            f"({card}, {p.system_ram_gb:g} GiB RAM){emulated}",
        ]
        for c in self.components.values():
            adapters = f" + adapters {_gib(c.adapter_bytes - c.fused_copy_bytes)}" if c.adapter_bytes else ""
            if c.fused_copy_bytes:
                adapters += f" + fuse_lora copy {_gib(c.fused_copy_bytes)}"
            lines.append(
                f"  {c.name:<15} {c.params:>15,} params  {c.dtype:<8} {c.quantization:<14} {c.placement:<16} "
                f"{_gib(c.bytes)}{adapters}"
            )
        header = f"{'stage':<12} {'device':<7} {'weights':>10} {'streamed':>10} {'activations':>12} {'overhead':>10} {'peak':>10} {'budget':>10}  fits"
        lines += ["", header, "-" * len(header)]
        for stage in self.stages.values():
            for i, device in enumerate(stage.devices):
                lines.append(
                    f"{stage.name if i == 0 else '':<12} {device:<7} {_gib(stage.weights.get(device, 0)):>10} "
                    f"{_gib(stage.streamed.get(device, 0)):>10} {_gib(stage.activations.get(device, 0)):>12} "
                    f"{_gib(stage.overhead.get(device, 0)):>10} {_gib(stage.peak(device)):>10} "
                    f"{_gib(stage.budget.get(device, 0)):>10}  {'yes' if stage.fits_on(device) else 'NO'}"
                )
        notes: dict[str, list[str]] = {}
        for stage in self.stages.values():
            for note in stage.notes:
                notes.setdefault(note, []).append(stage.name)
        if notes:
            lines += ["", "Notes:"] + [f"  {'/'.join(stages)}: {note}" for note, stages in notes.items()]
        if self.simulation is not None:
            from .simulation import table

            lines += table(self, self.simulation)
        lines += ["", *self._traffic_lines()]
        gpu_peak = "" if self.on_cpu else f"{_gib(self.peak_gpu_bytes)} per GPU, "
        lines += [f"Peak over the run (max over stages, never the sum): {gpu_peak}{_gib(self.peak_ram_bytes)} RAM.",
                  "Verdict: " + self.verdict()]  # fmt: skip
        phases = self.phase_plan.get("phases", {})
        if phases:
            lines.append(
                "Timesteps: " + "; ".join(f"{name} " + ", ".join(f"{t:.1f}" for t in ts) for name, ts in phases.items())
            )
        return "\n".join(lines)

    def _traffic_lines(self) -> list[str]:
        lines = []
        for stage, blocks in self.resident_blocks.items():
            total = self.components["transformer"].blocks
            lines.append(f"Transformer blocks resident in {stage}: {len(blocks)} of {total} (the rest stream).")
        pcie = self.pcie
        for what, stage, value, every in (("image", "denoise", pcie.per_image, pcie.per_image_all_streamed),
                                          ("training step", "train_step", pcie.per_train_step, pcie.per_train_step_all_streamed)):  # fmt: skip
            if stage in self.resident_blocks and every:
                share = f" ({value / every:.0%} of streaming every block: {_gib(every)})"
            elif value:
                share = " (no transformer block streams: components brought to their GPU for their stage and back)"
            else:
                share = ""
            lines.append(f"PCIe weight traffic per {what}: {_gib(value)}{share}.")
        return lines


def _gib(n: int) -> str:
    return f"{n / GiB:.2f} GiB"
