"""Bytes per device in each stage, from where `glance_lite.placement` puts every component.

Per stage and device: peak = weights held there + streamed blocks in flight + activations + overhead (CUDA context
on a GPU; the Python/torch baseline and whatever is being loaded on the CPU). A component that runs streamed keeps
its resident blocks and the modules outside the blocks on the GPU, a window of streamed blocks in flight, and a
(pinned) copy of the streamed blocks in RAM. How many blocks stay resident is chosen here
(`choose_resident_blocks`): as many as the profile's VRAM target leaves room for, streamed ones spread evenly so
each transfer overlaps the compute of the resident blocks before it.
"""

from __future__ import annotations

from collections.abc import Iterable
import dataclasses
from dataclasses import dataclass, field

from ..placement import Placement, gpu_index, placement
from ..profiles import Profile
from .activations import GiB
from .inventory import Inventory
from .report import ComponentPlan, StagePlan
from .storage import component_bytes, component_host_bytes

# Memory the CUDA runtime takes on each GPU before any tensor (context, cuBLAS/cuDNN handles and workspaces).
CUDA_CONTEXT_BYTES = int(0.5 * GiB)
# Resident memory of the Python process with torch, diffusers and transformers imported (and CUDA initialised).
RAM_BASELINE_BYTES = {"cuda": 3 * GiB, "cpu": int(1.5 * GiB)}
# A checkpoint is read one safetensors shard at a time (hub shards are <= 5 GB); quantizing while loading keeps
# at most one shard in RAM on top of what is already held.
LOAD_SHARD_BYTES = 5 * GiB
# Groups on the GPU at once under diffusers group offloading: the one computing plus the one being prefetched on a
# side stream; without streams the next group is loaded only when the previous one is done. The trainer's block
# streamer holds one group at a time.
GROUP_OFFLOAD_IN_FLIGHT = {True: 2, False: 1}
TRAINING_STREAM_IN_FLIGHT = 1
# Relative cost of work done on the CPU instead of the GPU, used only to rank profiles (auto selection).
CPU_PLACEMENT_TRAFFIC_FACTOR = 10


@dataclass(frozen=True)
class StreamedWeights:
    """A block-streamed component in one stage: per-block bytes, the bytes outside the blocks, which blocks stay."""

    block_bytes: tuple[int, ...]
    outside_bytes: int
    resident: tuple[int, ...]
    blocks_per_group: int
    in_flight: int  # groups on the device at once
    host_bytes: tuple[int, ...] = ()  # per block: its CPU copy as the allocator holds it (pinned: rounded); default exact

    @property
    def streamed(self) -> tuple[int, ...]:
        return tuple(i for i in range(len(self.block_bytes)) if i not in set(self.resident))

    @property
    def resident_bytes(self) -> int:
        return sum(self.block_bytes[i] for i in self.resident)

    @property
    def streamed_bytes(self) -> int:
        return sum(self.block_bytes[i] for i in self.streamed)

    @property
    def streamed_host_bytes(self) -> int:
        """RAM the streamed blocks' CPU copies take (pinned ones rounded up tensor by tensor)."""
        host = self.host_bytes or self.block_bytes
        return sum(host[i] for i in self.streamed)

    @property
    def window_bytes(self) -> int:
        """Blocks in flight: groups at once x blocks per group x the largest streamed block."""
        streamed = self.streamed
        if not streamed:
            return 0
        largest = max(self.block_bytes[i] for i in streamed)
        return self.in_flight * min(self.blocks_per_group, len(streamed)) * largest

    def with_resident(self, resident: Iterable[int]) -> "StreamedWeights":
        return dataclasses.replace(self, resident=tuple(sorted(resident)))


def spread_resident(num_blocks: int, resident_count: int) -> tuple[int, ...]:
    """Which blocks stay resident when `resident_count` of `num_blocks` do: the streamed ones spread evenly, so the
    prefetch of each streamed block overlaps the compute of the resident blocks before it."""
    streamed_count = num_blocks - max(0, min(resident_count, num_blocks))
    streamed = {int((j + 0.5) * num_blocks / streamed_count) for j in range(streamed_count)} if streamed_count else set()
    return tuple(i for i in range(num_blocks) if i not in streamed)


def choose_resident_blocks(streamed: StreamedWeights, peak_with, target: int | None, setting) -> tuple[int, ...]:
    """The resident blocks: `setting` blocks if it is a number, else ("auto") the most whose stage peak
    (`peak_with(StreamedWeights) -> bytes`) stays within `target`; none without a target (CPU runs)."""
    count = len(streamed.block_bytes)
    if setting != "auto":
        return spread_resident(count, int(setting))
    if target is None:
        return ()
    for resident_count in range(count, -1, -1):  # ~60 cheap evaluations
        resident = spread_resident(count, resident_count)
        if peak_with(streamed.with_resident(resident)) <= target:
            return resident
    return ()


def _add(target: dict[str, int], device: str, value: int) -> None:
    if value:
        target[device] = target.get(device, 0) + int(value)


@dataclass
class StageContext:
    """Everything the stage builders share for one plan() call."""

    profile: Profile
    family: object
    inventories: dict[str, Inventory]
    comps: dict[str, ComponentPlan]
    gpu_budget: int
    ram_budget: int
    num_gpus: int
    device: str | None = None  # "cpu": the profile's choices emulated on the CPU
    shard_of: dict[int, str] = field(default_factory=dict)  # transformer block -> device when sharded

    def place(self, component: str, stage: str) -> Placement:
        return placement(self.profile, component, stage, family=self.family, device=self.device)

    def on_card(self) -> StageContext:
        """The same plan on the profile's own card: what a CPU emulation sizes its residency for."""
        return self if self.device is None else dataclasses.replace(self, device=None)

    def gpus(self) -> list[str]:
        if self.profile.device == "cpu" or self.device == "cpu":
            return []
        return [f"cuda:{i}" for i in range(self.num_gpus)]

    def budget(self) -> dict[str, int]:
        budget = {gpu: self.gpu_budget for gpu in self.gpus()}
        budget["cpu"] = self.ram_budget
        return budget

    def target(self) -> int | None:
        """What resident blocks may fill up to on a GPU: the profile's VRAM target, never more than the budget."""
        if not self.gpus():
            return None
        target = self.profile.vram_target_bytes
        return min(target, self.gpu_budget) if target is not None else self.gpu_budget


def overheads(devices: Iterable[str], extra_ram: int = 0) -> dict[str, int]:
    """CUDA context on every GPU in use; the process baseline (+ what is being loaded) in RAM."""
    overhead = {d: CUDA_CONTEXT_BYTES for d in devices if d != "cpu"}
    overhead["cpu"] = RAM_BASELINE_BYTES["cuda" if overhead else "cpu"] + extra_ram
    return overhead


def add_sharded(ctx: StageContext, weights: dict[str, int], comp: ComponentPlan) -> None:
    """A sharded component: each block on the GPU the shard plan gave it, everything else on cuda:0."""
    for i, size in enumerate(comp.block_bytes):
        _add(weights, ctx.shard_of.get(i, "cuda:0"), size)
    _add(weights, "cuda:0", comp.outside_blocks_bytes)


def inference_streaming(ctx: StageContext, name: str) -> StreamedWeights:
    """Group offloading of a component: with streams (on a GPU) it pins a CPU copy of every streamed tensor when it
    is applied (diffusers hooks/group_offloading.py `ModuleGroup._to_cpu`, `low_cpu_mem_usage=False`), which the
    pinned-memory allocator rounds up tensor by tensor; without streams the loaded tensors are the CPU copy."""
    comp, policy = ctx.comps[name], ctx.profile.component(name)
    use_stream = bool(policy.use_stream) and ctx.device != "cpu"
    return StreamedWeights(comp.block_bytes, comp.outside_blocks_bytes, (), policy.blocks_per_group or 1,
                           GROUP_OFFLOAD_IN_FLIGHT[use_stream], comp.block_pinned_bytes if use_stream else ())  # fmt: skip


def build_stage(
    ctx: StageContext,
    name: str,
    stage: str,
    activations_by_component: dict[str, int],
    notes=(),
    streaming: dict[str, StreamedWeights] | None = None,
) -> StagePlan:
    """Bytes per device in `stage` (a placement stage; `name` is what the plan calls it, e.g. slow_phase):
    every component where `placement()` says it is, the running ones with their activations."""
    weights: dict[str, int] = {}
    streamed: dict[str, int] = {}
    activations: dict[str, int] = {}
    loading = 0
    running, placements = [], {}
    for component, comp in ctx.comps.items():
        where = placements[component] = ctx.place(component, stage)
        total = comp.total_bytes
        if where.state == "evict":
            continue
        if where.state == "park":
            _add(weights, "cpu", total)
            continue
        if where.mode == "sharded":
            add_sharded(ctx, weights, comp)
            targets = sorted(set(ctx.shard_of.values()) | {"cuda:0"})
        elif where.state == "run" and where.mode == "streamed" and where.device != "cpu":
            plan = (streaming or {}).get(component) or inference_streaming(ctx, component)
            _add(weights, where.device, plan.outside_bytes + plan.resident_bytes)
            _add(streamed, where.device, plan.window_bytes)
            # RAM keeps every block: the resident ones' CPU copies (so parking them is free) and group offloading's
            # pinned copies of the streamed ones (as the allocator rounds them), made while the loaded originals
            # still exist.
            _add(weights, "cpu", plan.resident_bytes + plan.streamed_host_bytes)
            loading = max(loading, plan.streamed_bytes)
            targets = [where.device]
        else:  # whole on its device (a GPU, or RAM on a CPU)
            _add(weights, where.device, total)
            targets = [where.device]
            reloaded = ctx.place(component, "idle").state == "evict"
            if where.state == "run" and reloaded and where.device != "cpu":
                loading = max(loading, min(LOAD_SHARD_BYTES, total))  # read from disk again, shard by shard
        if where.state == "run":
            running.append(component)
            for target in targets:
                activations[target] = max(activations.get(target, 0), activations_by_component.get(component, 0))
    used = set(ctx.gpus()) & (set(weights) | set(streamed) | set(activations))
    overhead = overheads(used or ctx.gpus()[:1], extra_ram=loading)
    return StagePlan(name, tuple(running), weights, streamed, activations, overhead, ctx.budget(), tuple(notes), placements)


def shard_blocks(block_bytes: list[int], budgets: list[int]) -> list[int]:
    """GPU index for each block, in order. Each GPU gets its budget minus an equal share of the spare room, so
    every GPU keeps the same headroom at its worst moment (what a device map built with those max_memory gives)."""
    total = sum(block_bytes)
    spare = (sum(budgets) - total) / max(len(budgets), 1)
    targets = [max(b - spare, 0) for b in budgets]
    assignment, gpu, used = [], 0, 0
    for size in block_bytes:
        while gpu < len(budgets) - 1 and used + size / 2 > targets[gpu]:
            gpu, used = gpu + 1, 0
        assignment.append(gpu)
        used += size
    return assignment


def shard_plan(ctx: StageContext, activations: dict[str, int]) -> tuple[dict[int, str], dict[str, int]]:
    """Block -> GPU for a sharded transformer, and the matching accelerate device map.

    Each GPU's share is what is left after the CUDA context, the components kept on it, and its worst moment
    besides: the transformer's own activations, or another component's stage there (e.g. the text encoder
    brought onto GPU 1 for the prompts, or the VAE decoding on GPU 0). `activations` maps component -> bytes.
    """
    comp, inv = ctx.comps["transformer"], ctx.inventories["transformer"]
    gpus = ctx.gpus()
    budgets = []
    for index, gpu in enumerate(gpus):
        kept, worst = 0, activations.get("transformer", 0)
        for name, other in ctx.comps.items():
            if name == "transformer" or f"cuda:{gpu_index(ctx.profile, name)}" != gpu:
                continue
            if ctx.place(name, "idle").state == "keep":
                kept += other.bytes
                worst = max(worst, activations.get(name, 0))
            else:
                worst = max(worst, other.bytes + activations.get(name, 0))
        left = ctx.gpu_budget - CUDA_CONTEXT_BYTES - kept - worst
        budgets.append(left - (comp.outside_blocks_bytes if index == 0 else 0))
    assignment = shard_blocks(list(comp.block_bytes), budgets)
    shard_of = {i: gpus[g] for i, g in enumerate(assignment)}
    # accelerate's format (as infer_auto_device_map returns it): module name -> GPU index, covering every
    # parameter once; modules outside the repeated blocks go to GPU 0.
    outside = dict.fromkeys(layer.name.split(".")[0] for layer in inv.layers if layer.block is None)
    device_map = {name: 0 for name in outside}
    device_map.update({inv.blocks[i]: g for i, g in enumerate(assignment)})
    return shard_of, device_map


def pcie_per_image(ctx: StageContext, streaming: StreamedWeights | None, forwards: int) -> int:
    """Weight bytes crossing PCIe for one image once everything is loaded: components brought to the GPU for their
    stage (and sent back when parked), streamed blocks (and the modules outside the blocks) every forward, resident
    blocks brought back after they were parked for the other stages."""
    if not ctx.gpus():
        return 0
    total = 0
    for name, comp in ctx.comps.items():
        policy = ctx.profile.component(name)
        kind = policy.placement
        if kind in ("resident", "sharded", "cpu"):
            continue
        if ctx.place(name, "idle").state == "evict":
            total += comp.total_bytes  # loaded onto the GPU again for every image
        elif kind in ("model_offload", "evict_after_use"):
            total += 2 * comp.total_bytes  # in for its stage, back to RAM after it
        elif kind == "group_offload" and streaming is not None:
            # With streams every streamed group keeps a pinned CPU copy, so sending it back is free; without, it is
            # copied back. The modules outside the blocks move both ways every forward either way. Resident blocks
            # keep a CPU copy: they cross once per image, when they come back after being parked.
            both_ways = 1 if policy.use_stream else 2
            per_forward = both_ways * streaming.streamed_bytes + 2 * streaming.outside_bytes
            total += forwards * per_forward + streaming.resident_bytes
    return total


def pcie_per_train_step(streaming: StreamedWeights | None) -> int:
    """The trainer's block streamer brings each streamed block in for the forward and again for the recomputation
    in backward (gradient checkpointing); sending it back is free (its CPU master copy stays)."""
    return 0 if streaming is None else 2 * streaming.streamed_bytes


def frozen_base_bytes(inv: Inventory, dtype: str, quantization: str) -> tuple[tuple[int, ...], int]:
    """(bytes per block, bytes outside the blocks) of the trainer's frozen base."""
    blocks = tuple(component_bytes(inv, dtype, quantization, block=i) for i in range(len(inv.blocks)))
    return blocks, component_bytes(inv, dtype, quantization, block=None)


def frozen_base_host_bytes(inv: Inventory, dtype: str, quantization: str) -> tuple[int, ...]:
    """Per block, the trainer's CPU master copy when it streams to a GPU: plain tensors pinned (rounded up by the
    allocator), quanto weights kept as they are (`streaming.BlockStreamer._master`)."""
    return tuple(component_host_bytes(inv, dtype, quantization, block=i, pins_quantized=False) for i in range(len(inv.blocks)))
