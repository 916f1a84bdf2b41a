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
  reference trainer does. On a CUDA card only qint8 is kept: on compute capability >= 8 quanto stores qfloat8
  weights as `MarlinF8QBytesTensor` and qint4 ones as AWQ / TinyGemm tensors
  (optimum/quanto/tensor/weights/qbytes.py `WeightQBytesTensor.create`, qbits.py `WeightQBitsTensor.create`), again
  on every `.to(device)`. Those need quanto's `quanto_cuda` extension, compiled with nvcc at first use (minutes,
  silent; it fails without a CUDA toolkit), their GEMMs take only bf16/fp16 input, while CUDA autocast hands
  them fp32 after `layer_norm`, and the Marlin FP8 linear never adds the layer's bias
  (tensor/weights/marlin/fp8/qbits.py `MarlinF8QBytesLinearFunction.forward`). qint8 weights take `qbytes_mm`'s plain path on every card (sm_70 to sm_90): the
  activation is cast to the scale's dtype, the weight dequantized, one matmul (optimum/quanto/library/qbytes_mm.py).
"""

from __future__ import annotations

TORCHAO = ("torchao-int8", "torchao-float8")
BITSANDBYTES = ("bnb-nf4", "bnb-int8")
QUANTO = ("quanto-qfloat8", "quanto-qint8", "quanto-qint4")
QUANTIZATIONS = ("none",) + TORCHAO + BITSANDBYTES + QUANTO
# The trainer's frozen base: peft trains LoRA on top of quanto (streamed by streaming.py) and bitsandbytes (QLoRA).
TRAINING_QUANTIZATIONS = ("none",) + QUANTO + BITSANDBYTES

# quanto storages that select a compiled CUDA kernel on compute capability >= 8 (see the module docstring).
QUANTO_CUDA_KERNELS = {"quanto-qfloat8": "Marlin FP8", "quanto-qint4": "AWQ / TinyGemm int4"}

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


def cuda_quanto_problem(quantization: str, field: str) -> str | None:
    """Why a quanto storage cannot be used on a CUDA card (it would pick a kernel that compiles at run time and
    refuses fp32 input); None if fine."""
    kernel = QUANTO_CUDA_KERNELS.get(quantization)
    if kernel is None:
        return None
    return (
        f"{field} {quantization!r} is refused on a CUDA GPU: on compute capability >= 8 optimum-quanto stores it for "
        f"its {kernel} kernel, which needs quanto's CUDA extension compiled with nvcc at first use and takes only "
        "bf16/fp16 input (CUDA autocast gives it fp32 after layer_norm; Marlin FP8 also drops the layer's bias); use "
        "quanto-qint8, which runs the same dequantize-and-matmul on every card"
    )


def training_problem(base_quantization: str, block_offload: bool) -> str | None:
    """Why the trainer cannot hold its frozen base this way; None if fine. (A storage outside
    TRAINING_QUANTIZATIONS is refused by the profile's field check before this is asked.)"""
    if block_offload and backend(base_quantization) == "bnb":
        return (
            f"training.base_quantization {base_quantization!r} with training.block_offload is refused: bitsandbytes "
            "weights cannot be moved block by block; use quanto-qint8 with block_offload, or "
            "block_offload: false for bitsandbytes"
        )
    return None
