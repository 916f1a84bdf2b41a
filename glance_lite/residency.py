"""Stream some transformer blocks, keep the others on the GPU: budgeted residency on top of diffusers group offloading.

A card with room to spare should not stream every block every step (what musubi-tuner's blocks-to-swap and Wan2GP's
budgets avoid too). The planner decides which blocks stay (`MemoryPlan.resident_blocks["denoise"]`, streamed
ones spread evenly so each transfer overlaps the compute of resident blocks); this module carries it out:

- streamed blocks: diffusers' block-level group offloading, unchanged (streams, prefetch, pinned copies, torchao
  tensors). It streams every block of a model's ModuleLists, so it is handed the model with those lists holding
  only the streamed blocks while it builds its groups; its hooks live on the block modules themselves, so once the
  lists are restored the streamed blocks stream and the others run as plain modules.
- resident blocks: brought to the GPU when the denoise stage starts and parked between denoise stages (another
  stage may need the room: the text encoder of the next prompt). Each tensor keeps its loaded CPU copy, so parking
  is free and only bringing them back crosses PCIe. torchao tensors are swapped whole (`torch.utils.swap_tensors`,
  as diffusers does for them), plain ones through `.data`.

On a CPU run every move is a no-op: the same split, with both devices the CPU.
"""

from __future__ import annotations

import torch


def repeated_blocks(module: torch.nn.Module) -> list[tuple[str, torch.nn.ModuleList]]:
    """The module's top-level ModuleLists (what diffusers' block-level offloading streams), in order: block i of
    the planner is the i-th block across them."""
    return [(name, child) for name, child in module.named_children() if isinstance(child, (torch.nn.ModuleList, torch.nn.Sequential))]


def streamed_blocks(module: torch.nn.Module) -> list[int]:
    """Indices (across `repeated_blocks`) of the blocks diffusers' group offloading streams: what happened, read off
    the hooks it installed, not what a plan asked for."""
    from diffusers.hooks import HookRegistry

    blocks = [block for _, blocks in repeated_blocks(module) for block in blocks]
    return [
        i for i, block in enumerate(blocks)
        if getattr(block, "_diffusers_hook", None) is not None
        and HookRegistry.check_if_exists_or_initialize(block).get_hook("group_offloading") is not None
    ]  # fmt: skip


def _is_wrapper_subclass(tensor: torch.Tensor) -> bool:
    return type(tensor) not in (torch.Tensor, torch.nn.Parameter)


class ResidentBlocks:
    """Blocks that stay on `device` while their component runs, and wait in CPU RAM (their loaded copy) otherwise."""

    def __init__(self, blocks: list[torch.nn.Module], device: torch.device):
        self.device = torch.device(device)
        self.tensors = [t for block in blocks for t in (*block.parameters(), *block.buffers())]
        self._cpu: dict[int, torch.Tensor] = {}  # id(tensor) -> what holds its CPU content while it is on the device
        self.on_device = False

    def bring(self) -> None:
        """Onto the device (a copy; the CPU content stays for the next park)."""
        if self.on_device or self.device.type == "cpu":
            self.on_device = True
            return
        with torch.no_grad():
            for tensor in self.tensors:
                if _is_wrapper_subclass(tensor.data):  # torchao: swap the whole tensor, its inner data included
                    moved = tensor.to(self.device)
                    torch.utils.swap_tensors(tensor, moved)
                    self._cpu[id(tensor)] = moved  # now holds the CPU content
                else:
                    self._cpu[id(tensor)] = tensor.data
                    tensor.data = tensor.data.to(self.device)
        self.on_device = True

    def park(self) -> None:
        """Back to the CPU content kept by `bring`: frees the device copy, copies nothing."""
        if not self.on_device or self.device.type == "cpu":
            self.on_device = False
            return
        with torch.no_grad():
            for tensor in self.tensors:
                held = self._cpu.pop(id(tensor))
                if _is_wrapper_subclass(tensor.data):
                    torch.utils.swap_tensors(tensor, held)  # `held` now holds the device copy, dropped here
                else:
                    tensor.data = held
        self.on_device = False


def stream_blocks(
    module: torch.nn.Module,
    device: torch.device,
    resident: set[int],
    blocks_per_group: int = 1,
    use_stream: bool = False,
) -> ResidentBlocks:
    """Apply group offloading to every block not in `resident` (indices across `repeated_blocks`); return the
    resident blocks, parked in CPU RAM until `bring()`.

    With every block resident nothing is streamed: the whole module then behaves as resident (its modules outside
    the blocks move with the resident blocks).
    """
    from diffusers.hooks import apply_group_offloading

    lists = repeated_blocks(module)
    all_blocks = [block for _, blocks in lists for block in blocks]
    kept = [block for i, block in enumerate(all_blocks) if i in resident]
    if len(kept) == len(all_blocks):
        return ResidentBlocks([module], device)
    index, streamed_lists = 0, {}
    for name, blocks in lists:
        streamed_lists[name] = torch.nn.ModuleList(b for i, b in enumerate(blocks, start=index) if i not in resident)
        index += len(blocks)
    try:
        for name, streamed in streamed_lists.items():
            setattr(module, name, streamed)
        apply_group_offloading(
            module,
            onload_device=device,
            offload_device=torch.device("cpu"),
            offload_type="block_level",
            num_blocks_per_group=blocks_per_group,
            use_stream=use_stream,
        )
    finally:
        for name, blocks in lists:
            setattr(module, name, blocks)
    return ResidentBlocks(kept, device)
