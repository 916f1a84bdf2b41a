"""Bytes of weights as the libraries store them: per dtype, and per quantization backend exactly as optimum-quanto,
bitsandbytes and torchao lay out their tensors (data, scales, shifts). The tests load and quantize real modules and
compare byte for byte."""

from __future__ import annotations

import math

from .inventory import Inventory, Layer

DTYPE_BYTES = {"bfloat16": 2, "float16": 2, "float32": 4}
# bitsandbytes 4-bit: blocks of 64 weights share one fp32 absmax (no double quantization), plus the 16-entry
# fp32 NF4 code table per layer. LLM.int8: one fp32 scale per output row.
BNB_4BIT_BLOCKSIZE = 64
BNB_4BIT_CODE_BYTES = 16 * 4


def _quanto_int4_group_size(in_features: int) -> int | None:
    """optimum-quanto 0.2.7 QModuleMixin: groups of 128 input features, shrunk by 32 until they divide, else per-axis."""
    group = 128
    if in_features <= group:
        return None
    while in_features % group != 0 and group > 32:
        group -= 32
    return group if in_features % group == 0 else None


def quantizes(layer: Layer, quantization: str) -> bool:
    """Whether this layer's weight is replaced by a quantized one.

    optimum-quanto's `quantize` replaces nn.Linear and nn.Conv2d (diffusers' QuantoConfig only nn.Linear; the
    components we quantize have no Conv2d). bitsandbytes and torchao (transformers / diffusers `BitsAndBytesConfig`,
    `TorchAoConfig`) replace nn.Linear weights except the modules kept in full precision (`_keep_in_fp32_modules`;
    transformers also keeps output embeddings). Embeddings, norms and biases are never quantized.
    """
    if quantization == "none" or layer.weight_shape is None:
        return False
    if quantization.startswith("quanto-"):
        return layer.kind in ("linear", "conv2d")
    return layer.kind == "linear" and not layer.bnb_skip and not layer.keep_fp32


def quantized_weight_bytes(shape: tuple[int, ...], quantization: str, dtype_bytes: int) -> int:
    """Bytes of one quantized weight with its scales, as the library stores it (see the tests for the check)."""
    return sum(quantized_weight_tensors(shape, quantization, dtype_bytes))


def quantized_weight_tensors(shape: tuple[int, ...], quantization: str, dtype_bytes: int) -> tuple[int, ...]:
    """Bytes of each tensor one quantized weight is stored as (each its own allocation):

    quanto 8-bit (qint8, qfloat8): 1 byte per weight + one scale per output channel (weight dtype) + the module's
    input/output scale scalars. quanto qint4: 4-bit packed + scale and shift per group of input features.
    bnb-nf4: 4-bit packed + fp32 absmax per 64 weights + the code table. bnb-int8: 1 byte + fp32 scale per row.
    torchao-int8 (Int8Tensor, weight-only per row): 1 byte + fp32 scale + int8 zero point per row; torchao-float8
    (Float8Tensor, per row): 1 byte + fp32 scale per row.
    """
    out_features = shape[0]
    numel = math.prod(shape)
    in_features = numel // out_features
    if quantization == "torchao-int8":
        return numel, out_features * 4, out_features  # qdata, scale, zero_point
    if quantization == "torchao-float8":
        return numel, out_features * 4  # qdata, scale
    if quantization in ("quanto-qfloat8", "quanto-qint8"):
        return numel, out_features * dtype_bytes, dtype_bytes, dtype_bytes  # data, scale, input/output scale
    if quantization == "quanto-qint4":
        group = _quanto_int4_group_size(in_features)
        scales = numel // group if group else out_features
        return numel // 2, scales * dtype_bytes, scales * dtype_bytes, dtype_bytes, dtype_bytes
    if quantization == "bnb-nf4":
        return math.ceil(numel / 2), math.ceil(numel / BNB_4BIT_BLOCKSIZE) * 4, BNB_4BIT_CODE_BYTES
    if quantization == "bnb-int8":
        return numel, out_features * 4
    raise ValueError(f"unknown quantization {quantization!r}")


def layer_bytes(layer: Layer, dtype: str, quantization: str = "none") -> int:
    """Bytes of one layer's parameters under a dtype and quantization (fp16 loads keep `_keep_in_fp32_modules`)."""
    dtype_bytes = 4 if (layer.keep_fp32 and dtype == "float16") else DTYPE_BYTES[dtype]
    if quantizes(layer, quantization):
        return quantized_weight_bytes(layer.weight_shape, quantization, dtype_bytes) + layer.other_numel * dtype_bytes
    return layer.numel * dtype_bytes


def pinned_allocation_bytes(nbytes: int) -> int:
    """What torch's pinned-memory allocator really takes for one pinned tensor: the request rounded up to a power
    of two (`CachingHostAllocator::allocate`, `c10::llvm::PowerOf2Ceil`, in ATen/core/CachingHostAllocator.h)."""
    return 0 if nbytes <= 0 else 1 << (nbytes - 1).bit_length()


def layer_host_bytes(layer: Layer, dtype: str, quantization: str = "none", pins_quantized: bool = True) -> int:
    """Bytes of one layer's CPU copy when the copy is pinned tensor by tensor (every weight, bias and norm weight
    its own power-of-two allocation). `pins_quantized`: diffusers group offloading pins a torchao weight's inner
    tensors too; the trainer's block streamer leaves quanto weights unpinned (exact bytes)."""
    dtype_bytes = 4 if (layer.keep_fp32 and dtype == "float16") else DTYPE_BYTES[dtype]
    total = sum(pinned_allocation_bytes(n * dtype_bytes) for n in layer.other_numels)
    if quantizes(layer, quantization):
        pieces = quantized_weight_tensors(layer.weight_shape, quantization, dtype_bytes)
        if pins_quantized or not quantization.startswith("quanto-"):
            return total + sum(pinned_allocation_bytes(b) for b in pieces)
        data_and_scale, module_scales = pieces[:-2], pieces[-2:]  # quanto's input/output scales are plain buffers
        return total + sum(data_and_scale) + sum(pinned_allocation_bytes(b) for b in module_scales)
    return total + pinned_allocation_bytes(layer.weight_numel * dtype_bytes)


def component_host_bytes(inv: Inventory, dtype: str, quantization: str = "none", block: int | None = -1,
                         pins_quantized: bool = True) -> int:  # fmt: skip
    """`layer_host_bytes` summed like `component_bytes`."""
    layers = inv.layers if block == -1 else [layer for layer in inv.layers if layer.block == block]
    return sum(layer_host_bytes(layer, dtype, quantization, pins_quantized) for layer in layers)


def component_bytes(inv: Inventory, dtype: str, quantization: str = "none", block: int | None = -1) -> int:
    """Bytes of a whole component (block=-1), of one repeated block (block=i) or of everything outside the blocks
    (block=None)."""
    layers = inv.layers if block == -1 else [layer for layer in inv.layers if layer.block == block]
    return sum(layer_bytes(layer, dtype, quantization) for layer in layers)


def largest_quantized_weight(inv: Inventory, quantization: str) -> int:
    """Elements of the biggest weight that is quantized: dequantized whole into the compute dtype while it runs."""
    return max((layer.weight_numel for layer in inv.layers if quantizes(layer, quantization)), default=0)
