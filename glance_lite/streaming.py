"""Block streaming that survives backward: train a LoRA on a transformer bigger than the GPU.

Why not diffusers group offloading (what inference uses)? Its hook moves a block's weights back to the CPU right
after the block's forward. Backward (and the recomputation gradient checkpointing does inside backward) needs those
weights again *after* that forward: the weights autograd saved would then sit on the CPU while the gradients are on
the GPU. So training streams blocks differently, with one rule:

    a block's frozen weights are brought to the GPU when the block starts a forward (first pass or the
    recomputation inside backward), and sent back only when ANOTHER block starts one.

With gradient checkpointing, backward handles one block at a time: it recomputes block i's forward (block i comes
in, the previous one leaves), runs block i's backward, then moves to block i-1. So the block whose weights autograd
uses is always the resident one. Gradient checkpointing is therefore required (the trainer turns it on).

Only frozen base weights travel; the LoRA weights, their gradients and the optimizer state stay on the GPU, and so
do the small modules outside the blocks (embeddings, norms, projections) and the blocks the plan keeps resident
(`MemoryPlan.resident_blocks["train_step"]`: as many as the card's budget allows, musubi-tuner's blocks-to-swap).
Each streamed tensor keeps a CPU master copy, so sending a block back costs nothing: its GPU copies are dropped.
Plain tensors' masters are pinned when the target is a GPU; quantized weights (optimum-quanto tensors, which
serve `pin_memory` by dequantizing) are left as they are. Copies are synchronous per block (no prefetch).
"""

from __future__ import annotations

import torch

# Where resident=False weights point. Tests set "meta": any use of a parked block then fails loudly.
PARK_DEVICE = "cpu"


def transformer_blocks(transformer) -> list[torch.nn.Module]:
    """The repeated blocks, as the model class declares them (`_repeated_blocks`), in execution order."""
    names = set(getattr(transformer, "_repeated_blocks", None) or getattr(transformer, "_no_split_modules", None) or ())
    blocks = [m for m in transformer.modules() if type(m).__name__ in names]
    if not blocks:
        raise ValueError(f"{type(transformer).__name__} declares no repeated blocks (_repeated_blocks); cannot stream it.")
    return blocks


def _is_adapter(module_name: str) -> bool:
    return "lora_" in module_name


class BlockStreamer:
    """Keeps at most one group of `blocks_per_group` consecutive streamed blocks' frozen weights on `device`; the
    blocks in `resident` (indices in execution order) stay there for good."""

    def __init__(self, transformer, device, blocks_per_group: int = 1, resident: set[int] = frozenset()):
        self.device = torch.device(device)
        self.park = torch.device(PARK_DEVICE)
        streamed = [block for i, block in enumerate(transformer_blocks(transformer)) if i not in resident]
        in_streamed = {id(m) for block in streamed for m in block.modules()}
        self.groups: list[list[tuple]] = []
        for start in range(0, len(streamed), blocks_per_group):
            slots = []
            for block in streamed[start : start + blocks_per_group]:
                for name, module in block.named_modules():
                    if _is_adapter(name):
                        module.to(self.device)  # adapters stay resident: the optimizer holds their parameters
                        continue
                    slots += [(module, "param", key, self._master(p)) for key, p in module._parameters.items() if p is not None]
                    slots += [(module, "buffer", key, self._master(b)) for key, b in module._buffers.items() if b is not None]
            self.groups.append(slots)
        trainable_in_slots = [key for group in self.groups for (m, kind, key, _) in group if kind == "param" and m._parameters[key].requires_grad]
        if trainable_in_slots:
            raise ValueError(f"Only adapter weights may be trainable when streaming blocks; found trainable {trainable_in_slots[:3]}.")
        for module in transformer.modules():  # everything else (resident blocks included) lives on the device
            if id(module) not in in_streamed:
                module._apply(lambda t: t.to(self.device), recurse=False)
        self.resident: int | None = None
        for index, group in enumerate(self.groups):
            self._place(group, onload=False)
            for block in streamed[index * blocks_per_group : (index + 1) * blocks_per_group]:
                block.register_forward_pre_hook(lambda module, args, index=index: self.bring(index))

    def _master(self, tensor: torch.Tensor) -> torch.Tensor:
        master = tensor.detach().to("cpu")
        if self.device.type == "cuda" and type(master) is torch.Tensor:  # plain tensors only (see the docstring)
            master = master.pin_memory()
        return master

    def bring(self, index: int) -> None:
        """Group `index` onto the device; the group that was there goes back (see the module docstring)."""
        if self.resident == index:
            return
        if self.resident is not None:
            self._place(self.groups[self.resident], onload=False)
        self._place(self.groups[index], onload=True)
        self.resident = index

    def _place(self, slots, onload: bool) -> None:
        for module, kind, key, master in slots:
            if onload:
                tensor = master.to(self.device, non_blocking=True)
            else:
                tensor = master if self.park.type == "cpu" else master.to(self.park)
            if kind == "param":
                module._parameters[key] = torch.nn.Parameter(tensor, requires_grad=False)
            else:
                module._buffers[key] = tensor


def stream_blocks(transformer, device, blocks_per_group: int = 1, resident: set[int] = frozenset()) -> BlockStreamer:
    """Stream `transformer`'s frozen block weights to `device` one group at a time, keeping the `resident` blocks
    there (call after adding adapters)."""
    streamer = BlockStreamer(transformer, device, blocks_per_group, resident)
    transformer._glance_block_streamer = streamer  # keeps it alive as long as the model
    return streamer
