"""Which weight storage may be combined with which placement: only pairings the ecosystem maintains.

A profile picks, per component, a storage (a quantization backend) and a placement (how the weights reach the
GPU). Some combinations are known to break upstream, and a run that tries one fails after minutes of loading, or
worse, silently produces garbage. They are refused when the profile is read, with the reason and what works
instead. The table is the project's reading of the pinned versions (diffusers 0.42, transformers 5, optimum-quanto
0.2.7, bitsandbytes 0.50, torchao 0.18):

- torchao (int8 / float8 weight-only, `diffusers.TorchAoConfig`): diffusers group offloading moves torchao tensors,
  streams included (`hooks/group_offloading.py`: `_swap_torchao_tensor`, diffusers PR #13276), device maps are
  tested upstream (`test_torchao_device_map`), and `Module.to` swaps them. Any placement.
- bitsandbytes (nf4 / LLM.int8): loaded straight onto a GPU and left there. diffusers and transformers do not move
  8-bit models between devices (`enable_model_cpu_offload` warns and skips them), and group offloading has no
  bitsandbytes path, so a bitsandbytes component must sit whole on its GPU for its stage (resident,
  evict_after_use) or be sharded over GPUs by a device map (tested upstream).
- optimum-quanto: no release since 0.2.7 (2025-03); its weights break under diffusers group offloading (device
  mismatch for every model, huggingface/diffusers#12610, open). Quanto is kept where it has a working path: whole
  components, and the trainer's frozen base, which the project's own block streamer moves (`streaming.py`), as the
  reference trainer does.
"""

from __future__ import annotations

TORCHAO = ("torchao-int8", "torchao-float8")
BITSANDBYTES = ("bnb-nf4", "bnb-int8")
QUANTO = ("quanto-qfloat8", "quanto-qint8", "quanto-qint4")
QUANTIZATIONS = ("none",) + TORCHAO + BITSANDBYTES + QUANTO
# The trainer's frozen base: peft trains LoRA on top of quanto (streamed by streaming.py) and bitsandbytes (QLoRA).
TRAINING_QUANTIZATIONS = ("none",) + QUANTO + BITSANDBYTES

# What to use instead, by backend.
_INSTEAD = {
    "quanto": "use torchao-int8 (or torchao-float8 on cards with fp8, compute capability >= 8.9), which group "
    "offloading moves, or keep the component whole (placement resident / evict_after_use)",
    "bnb": "use torchao-int8 for a streamed or offloaded component, or placement resident / evict_after_use for "
    "bitsandbytes",
}
# (backend, placement) -> why the pairing fails upstream.
_BROKEN = {
    ("quanto", "group_offload"): "optimum-quanto weights break under diffusers group offloading (device mismatch "
    "for every model, huggingface/diffusers#12610, open; quanto has had no release since 2025-03)",
    ("bnb", "group_offload"): "diffusers group offloading has no bitsandbytes path (it moves plain and torchao "
    "tensors only)",
    ("bnb", "model_offload"): "diffusers and transformers do not move bitsandbytes 8-bit models between devices "
    "(model offloading warns and leaves them in place), so parking them in RAM fails",
    ("bnb", "cpu"): "bitsandbytes components load onto a CUDA GPU and stay there",
}


def backend(quantization: str) -> str:
    """'torchao', 'bnb', 'quanto' or 'none'."""
    return quantization.split("-", 1)[0] if quantization != "none" else "none"


def placement_problem(quantization: str, placement: str) -> str | None:
    """Why storing weights as `quantization` cannot go with `placement`, and what works instead; None if fine."""
    kind = backend(quantization)
    reason = _BROKEN.get((kind, placement))
    if reason is None:
        return None
    return f"quantization {quantization!r} with placement {placement!r} is refused: {reason}; {_INSTEAD[kind]}"


def training_problem(base_quantization: str, block_offload: bool) -> str | None:
    """Why the trainer cannot hold its frozen base this way; None if fine. (A storage outside
    TRAINING_QUANTIZATIONS is refused by the profile's field check before this is asked.)"""
    if block_offload and backend(base_quantization) == "bnb":
        return (
            f"training.base_quantization {base_quantization!r} with training.block_offload is refused: bitsandbytes "
            "weights cannot be moved block by block; use quanto-qfloat8 / quanto-qint8 with block_offload, or "
            "block_offload: false for bitsandbytes"
        )
    return None
