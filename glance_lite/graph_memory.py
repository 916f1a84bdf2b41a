"""Memory of the real graph, measured without a GPU: run the real modules on the `meta` device and count live bytes.

The planner (`plan.py`) predicts activations with formulas. This module measures them instead: it builds the real
diffusers / transformers class from its config on the `meta` device (parameters, buffers and the tensors modules make
in `__init__`, such as RoPE tables, all on meta: nothing is allocated), feeds meta inputs at the plan's shapes, and
counts the bytes of every tensor the forward (and backward) creates for as long as it is alive. A full-size
Qwen-Image forward takes seconds on one CPU core.

    with LiveBytesCounter() as counter, attention_policy("fused"):
        transformer(**inputs)
    counter.peak_bytes          # activations at their worst moment (weights and inputs are not counted)

Stage simulations (`simulate_transformer_forward`, `simulate_training_step` and its fast linear extrapolation
`simulate_training_step_from_blocks`, `simulate_text_encoder`, `simulate_vae_decode`) wrap this for the stages of
a Glance run and return a small dataclass (`StageSimulation`, `TrainingStepSimulation`). `optimizer_state_bytes`
gives a term the graph itself does not contain; the dequantizing temporary is the planner's
(`plan.storage.largest_quantized_weight`).

How bytes are counted
    A storage is counted when it first appears as the output of an op and is not one of the op's inputs (so views,
    in-place ops and `.to()` no-ops add nothing), and uncounted when the storage itself is freed: a weakref
    finalizer on the storage's Python object, which torch keeps alive exactly as long as the storage (autograd's
    saved tensors hold storages through tensors the dispatcher never sees, so counting tensors would free them too
    early). Tensors that existed before counting started (weights, inputs) are not counted.
    Meta and real CPU tensors take the same path, so one graph gives the same bytes on both (tests prove it, and
    check the real run against the profiler's allocator events).

Attention (`attention_policy`)
    On `meta`, `F.scaled_dot_product_attention` takes the math path and materialises the [B, H, L, L] scores, which
    no fused GPU kernel allocates. Both diffusers (`dispatch_attention_fn` -> native backend) and transformers
    (`sdpa_attention_forward`) call `torch.nn.functional.scaled_dot_product_attention` by attribute at call time, as
    do the VAEs' attention blocks, so the policy replaces that one function (meta and real runs see the same
    stand-in):
    - "fused" allocates what torch's CUDA kernels allocate: the output, laid out [B, L, H, D] (flash and
      memory-efficient both write that layout and return a transposed view), plus the float32 log-sum-exp
      [B, H, L] that flash always returns (memory-efficient only when a gradient is needed, padded to 32 rows).
      Backward allocates dq, dk, dv like q, k, v plus the fused kernels' float32 scratch: a dq accumulator
      [B, L, H, D] and the softmax row sums [B, H, L] (FlashAttention-2 `dq_accum` / `softmax_d`; the
      memory-efficient kernel's workspace is the same size). Kernel choice: flash when there is no mask, the
      dtype is fp16/bf16 and head_dim <= 256; memory-efficient otherwise (fp32, masks, wide VAE heads).
      On real tensors the stand-in also computes the true result (outside the count), so outputs stay right.
    - "math" is what meta's SDPA does: `aten._scaled_dot_product_attention_math`, scores and all.

The padding mask, settled by reading the code
    (diffusers 0.42.1 as installed; torch's C++ is not in the CPU wheel, so `attention.cpp`, `cuda/sdp_utils.cpp` and
    the CUTLASS memory-efficient kernel were read in recent pytorch sources, not byte for byte those of 2.13.)
    With batched CFG and prompts of different lengths, `QwenDoubleStreamAttnProcessor2_0` builds a *boolean* mask
    [B, 1, 1, L] (text mask + ones for the image tokens) and the native backend hands it to SDPA as it is. Flash
    cannot take a mask, so torch picks the memory-efficient kernel (or cuDNN, first choice on sm90/sm100 with
    cuDNN > 9.15, which takes masks too). SDPA first converts the bool mask to an additive one of the *same* shape
    in the query dtype (`convert_boolean_attn_mask`: [B, 1, 1, L], 17 KB at 1024^2); `preprocess_mask` pads that
    small tensor only if its strides are not 8-aligned and then `expand`s it to [B, H, L, L], a stride-0 view; the
    kernel reads the bias through its strides (`bias_strideB/H/M`; only the last dim must be contiguous). So no
    [B, H, L, L] bias is allocated. An older `attention.cpp` (pytorch 008887dc) expanded first and then padded, or
    copied, the expanded view whenever L % 16 != 0 (most prompt lengths): [B, H, L, L] in the compute dtype, 1.6 GiB
    at 1024^2, the "attention bias" the planner expects. The stand-in allocates the converted [B, 1, 1, L] mask;
    `AttentionPolicy(materialize_mask_bias=True)` models the older behaviour for a GPU check to compare. cuDNN's
    handling of a broadcast bias was not read: check it on a GPU.

Mixed precision (training)
    The trainer runs the forward under accelerate's bf16 autocast (CUDA autocast rules: matmuls in bf16, LayerNorm,
    softmax, sums ... in fp32, with weight casts cached for the forward). Autocast does not act on meta tensors, so
    `MixedPrecision` applies the same rules one level above autograd (a TorchFunctionMode, where autocast sits),
    with the same caching and re-entered for gradient-checkpoint recomputation. Its op lists mirror torch's
    (`autocast_mode.cpp`, `torch.testing._internal.autocast_test_lists`); with the CPU lists it reproduces real
    `torch.autocast("cpu")` byte for byte on real tensors (tested).

What the simulation cannot see (keep these as named, separate terms)
    - weights: not counted here; the planner counts them exactly. Quantized weights add the largest dequantizing
      temporary (the planner's `largest_quantized_weight`), which the bf16 graph run here does not contain;
    - the CUDA context (~0.5 GB) and cuBLAS / cuDNN workspaces and handles;
    - caching-allocator rounding (512-byte blocks, 2 MiB segments) and fragmentation (`max_memory_reserved` is above
      `max_memory_allocated`);
    - scratch that kernels allocate for themselves beyond what the stand-in models (e.g. cuDNN convolution
      workspaces in the VAE), NCCL buffers when several GPUs talk;
    - anything outside the counted call (the pipeline's own copies between stages).
Approximations to check on a GPU: the fused stand-in's allocations (cuDNN attention, torch's first choice on
H100/H200, is modelled like flash), the transcribed autocast op lists, and ops whose kernels differ by device (CPU's
`mse_loss` keeps a full-size storage under its 0-dim loss; meta's does not: the tests assert that difference).
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import json
import math
import time
import weakref
from dataclasses import dataclass, fields, replace
from pathlib import Path

import torch
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode, _disable_current_modes
from torch.utils._pytree import tree_leaves, tree_map

DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}


def _dtype(dtype) -> torch.dtype:
    return DTYPES[dtype] if isinstance(dtype, str) else dtype


def _tensors(tree) -> list[torch.Tensor]:
    return [x for x in tree_leaves(tree) if isinstance(x, torch.Tensor)]


# =====================================================================================================================
# Counting live bytes
# =====================================================================================================================


class LiveBytesCounter(TorchDispatchMode):
    """Live bytes of the storages created while this mode is active: `current_bytes`, `peak_bytes`, `peak_op`.

    A storage counts from the op that allocated it until the storage is freed (see the module docstring for why
    storages and not tensors). The counter keeps uncounting storages freed after it exits, so `current_bytes` stays honest if outputs outlive the block.
    """

    def __init__(self):
        super().__init__()
        self.current_bytes = 0
        self.peak_bytes = 0
        self.peak_op = ""
        self._live: dict[int, int] = {}  # storage identity -> bytes

    def reset_peak(self) -> None:
        self.peak_bytes, self.peak_op = self.current_bytes, ""

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        inputs = {t.untyped_storage()._cdata for t in _tensors((args, kwargs))}
        for tensor in _tensors(out):
            storage = tensor.untyped_storage()
            if storage._cdata not in inputs:
                self._allocated(storage, func)
        return out

    def _allocated(self, storage, op) -> None:
        key = storage._cdata
        if key in self._live:
            return
        self._live[key] = storage.nbytes()
        finalizer = weakref.finalize(storage, self._freed, key)
        finalizer.atexit = False
        self._change(self._live[key], op)

    def _freed(self, key: int) -> None:
        nbytes = self._live.pop(key, None)
        if nbytes is not None:
            self._change(-nbytes, "free")

    def _change(self, delta: int, op) -> None:
        self.current_bytes += delta
        if self.current_bytes > self.peak_bytes:
            self.peak_bytes, self.peak_op = self.current_bytes, str(op)


# =====================================================================================================================
# Attention: what the GPU's fused kernels allocate, on any device
# =====================================================================================================================


@dataclass(frozen=True)
class AttentionPolicy:
    """How attention is accounted. `kind`: "fused" (what CUDA's flash / memory-efficient kernels allocate) or "math"
    (the [B, H, L, L] scores, as meta's SDPA). `flash`: whether the GPU has flash attention (sm80+; not a V100).
    `compute`: on real tensors, fill the fused outputs with the true result (computed outside the count); False
    fills zeros, so the run allocates nothing the counter cannot see (used to compare with the allocator).
    `materialize_mask_bias`: model an older torch that copied a padding mask to a full [B, H, L, L] bias."""

    kind: str = "fused"
    flash: bool = True
    compute: bool = True
    materialize_mask_bias: bool = False

    def describe(self, kernels: set[str]) -> str:
        if self.kind == "math":
            return "math (materialised [B, H, L, L] scores, as meta SDPA)"
        return "fused (" + ", ".join(sorted(kernels) or ["no attention call"]) + "): output + fp32 log-sum-exp"


_ORIGINAL_SDPA = torch.nn.functional.scaled_dot_product_attention
_KERNELS_USED: set[str] = set()


@contextlib.contextmanager
def attention_policy(policy: AttentionPolicy | str = "fused"):
    """Replace `torch.nn.functional.scaled_dot_product_attention` for the duration; yields the set of fused kernels
    used (filled as attention runs)."""
    policy = AttentionPolicy(policy) if isinstance(policy, str) else policy
    if policy.kind not in ("fused", "math"):
        raise ValueError(f"attention policy must be 'fused' or 'math', got {policy.kind!r}")
    previous = torch.nn.functional.scaled_dot_product_attention
    _KERNELS_USED.clear()
    torch.nn.functional.scaled_dot_product_attention = functools.partial(_attention, policy=policy)
    try:
        yield _KERNELS_USED
    finally:
        torch.nn.functional.scaled_dot_product_attention = previous


def _attention(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, enable_gqa=False, *,
               policy):  # fmt: skip
    query, key, value = _autocast_attention_inputs(query, key, value)
    if policy.kind == "math":
        return torch.ops.aten._scaled_dot_product_attention_math(
            query, key, value, attn_mask, dropout_p, is_causal, scale=scale, enable_gqa=enable_gqa
        )[0]
    bias = None
    if attn_mask is not None:
        bias = _additive_mask(attn_mask, query, key, policy.materialize_mask_bias)
    flash = policy.flash and bias is None and query.dtype in (torch.float16, torch.bfloat16) and query.shape[-1] <= 256
    kernel = "flash" if flash else "memory-efficient"
    _KERNELS_USED.add(kernel)
    return _FusedAttention.apply(query, key, value, bias, is_causal, scale, kernel, policy.compute, attn_mask)


def _additive_mask(mask: torch.Tensor, query: torch.Tensor, key: torch.Tensor, materialize: bool) -> torch.Tensor:
    """What SDPA hands the memory-efficient kernel for a mask: a bool mask becomes an additive one of the same shape
    (`convert_boolean_attn_mask`), padded only when its strides are not 8-aligned, then a stride-0 `expand`."""
    if mask.dtype == torch.bool:
        mask = torch.where(mask, 0.0, torch.scalar_tensor(-math.inf, dtype=query.dtype, device=mask.device))
    if mask.stride(-1) != 1 or any(stride % 8 for stride in mask.stride()[:-1]):
        mask = torch.nn.functional.pad(mask, (0, 8 - mask.shape[-1] % 8))[..., : mask.shape[-1]]
    bias = mask.expand(query.shape[0], query.shape[1], query.shape[2], key.shape[2])
    return bias.contiguous() if materialize else bias


class _FusedAttention(torch.autograd.Function):
    """Allocates exactly what the fused CUDA kernels allocate (see the module docstring); on real tensors the true
    values are computed with torch's own SDPA with counting paused and copied in place."""

    @staticmethod
    def forward(ctx, query, key, value, bias, is_causal, scale, kernel, compute, original_mask):
        batch, heads, length, _ = query.shape
        out = torch.empty((batch, length, heads, value.shape[-1]), dtype=query.dtype, device=query.device)
        out = out.transpose(1, 2)
        needs_grad = any(t.requires_grad for t in (query, key, value))
        if kernel == "flash":
            lse = torch.empty((batch, heads, length), dtype=torch.float32, device=query.device)
        else:  # memory-efficient: log-sum-exp only for backward, rows padded to a multiple of 32
            rows = -(-length // 32) * 32 if needs_grad else 0
            lse = torch.empty((batch, heads, rows), dtype=torch.float32, device=query.device)
        if query.device.type != "meta":
            if compute:
                with _disable_current_modes():
                    true = _ORIGINAL_SDPA(query, key, value, attn_mask=original_mask, is_causal=is_causal, scale=scale,
                                          enable_gqa=key.shape[1] != heads)  # fmt: skip
                out.copy_(true)
            else:
                out.zero_()
        ctx.save_for_backward(query, key, value, out, lse, bias)  # the memory-efficient backward re-reads the bias
        ctx.attention = (is_causal, scale, compute, original_mask)
        return out

    @staticmethod
    def backward(ctx, grad_out):
        query, key, value = ctx.saved_tensors[:3]
        is_causal, scale, compute, original_mask = ctx.attention
        batch, heads, length, head_dim = query.shape
        dq_accum = torch.empty((batch, length, heads, head_dim), dtype=torch.float32, device=query.device)
        softmax_d = torch.empty((batch, heads, length), dtype=torch.float32, device=query.device)
        grads = [torch.empty_like(t) for t in (query, key, value)]
        if query.device.type != "meta":
            if compute:
                with _disable_current_modes(), torch.enable_grad():
                    leaves = [t.detach().requires_grad_() for t in (query, key, value)]
                    true = _ORIGINAL_SDPA(*leaves, attn_mask=original_mask, is_causal=is_causal, scale=scale,
                                          enable_gqa=key.shape[1] != heads)  # fmt: skip
                    values = torch.autograd.grad(true, leaves, grad_out)
                for grad, v in zip(grads, values):
                    grad.copy_(v)
            else:
                for grad in grads:
                    grad.zero_()
        del dq_accum, softmax_d  # the kernel's scratch lives while the gradients are written
        return (*grads, None, None, None, None, None, None)


# =====================================================================================================================
# Mixed precision: CUDA autocast's rules, applied where autocast applies them (above autograd), on any device
# =====================================================================================================================

# Op names (torch functions, Tensor methods, torch.nn.functional) per autocast policy, as torch registers them for
# CUDA in aten/src/ATen/autocast_mode.cpp (the same lists as torch.testing._internal.autocast_test_lists).
CUDA_AUTOCAST = {
    "lower": frozenset(
        "conv1d conv2d conv3d conv_tbc conv_transpose1d conv_transpose2d conv_transpose3d convolution _convolution "
        "prelu addmm addmv addr matmul __matmul__ __rmatmul__ einsum mm mv linalg_vecdot linear addbmm baddbmm bmm "
        "chain_matmul linalg_multi_dot lstm_cell gru_cell rnn_tanh_cell rnn_relu_cell "
        "scaled_dot_product_attention".split()
    ),
    "fp32": frozenset(
        "acos asin cosh erfinv exp expm1 log log10 log2 log1p reciprocal rsqrt sinh tan pow __pow__ __rpow__ softplus "
        "layer_norm group_norm rms_norm frobenius_norm nuclear_norm cosine_similarity poisson_nll_loss "
        "cosine_embedding_loss nll_loss hinge_embedding_loss kl_div l1_loss smooth_l1_loss huber_loss mse_loss "
        "margin_ranking_loss multilabel_margin_loss soft_margin_loss triplet_margin_loss multi_margin_loss "
        "binary_cross_entropy_with_logits dist pdist cdist renorm logsumexp prod softmax log_softmax cumprod cumsum "
        "sum norm linalg_vector_norm linalg_matrix_norm".split()
    ),
    "promote": frozenset(
        "addcdiv addcmul atan2 bilinear cross dot vdot grid_sampler index_put tensordot scatter_add cat stack".split()
    ),
}
# CPU autocast's lists (same source), for the test that compares this emulation with real torch.autocast("cpu").
CPU_AUTOCAST = {
    "lower": frozenset(
        "conv1d conv2d conv3d bmm mm linalg_vecdot baddbmm addmm addbmm linear _convolution matmul __matmul__ "
        "__rmatmul__ conv_tbc conv_transpose1d conv_transpose2d conv_transpose3d prelu "
        "scaled_dot_product_attention".split()
    ),
    "fp32": frozenset(
        "avg_pool3d binary_cross_entropy grid_sampler polar prod quantile nanquantile stft cdist trace view_as_complex "
        "mse_loss cosine_embedding_loss nll_loss nll_loss2d hinge_embedding_loss poisson_nll_loss smooth_l1_loss "
        "cross_entropy l1_loss huber_loss margin_ranking_loss soft_margin_loss triplet_margin_loss multi_margin_loss "
        "ctc_loss kl_div multilabel_margin_loss binary_cross_entropy_with_logits".split()
    ),
    "promote": frozenset("stack cat index_copy".split()),
}
_OPTIONAL_DTYPE_OPS = frozenset("prod softmax log_softmax cumprod cumsum sum".split())  # fp32 only without dtype=
_MIXED_PRECISION_STACK: list[MixedPrecision] = []


class MixedPrecision(TorchFunctionMode):
    """Autocast's casting rules for meta tensors (autocast itself skips them): `lower` ops run in `dtype`, `fp32` ops
    in float32, `promote` ops in their widest input type. Casts of leaf tensors that require grad (trainable
    weights) are cached until the outermost context exits, as autocast does. Float64 is never cast."""

    def __init__(self, dtype=torch.bfloat16, rules: dict = CUDA_AUTOCAST):
        super().__init__()
        self.dtype, self.rules = _dtype(dtype), rules
        self._cache: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}

    def __enter__(self):
        _MIXED_PRECISION_STACK.append(self)
        return super().__enter__()

    def __exit__(self, *exc):
        _MIXED_PRECISION_STACK.remove(self)
        self._cache.clear()
        return super().__exit__(*exc)

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = getattr(func, "__name__", "")
        if name in self.rules["lower"]:
            args, kwargs = self.cast((args, kwargs), self.dtype)
        elif name in self.rules["fp32"] and not (name in _OPTIONAL_DTYPE_OPS and kwargs.get("dtype") is not None):
            args, kwargs = self.cast((args, kwargs), torch.float32)
        elif name in self.rules["promote"]:
            floats = [t.dtype for t in _tensors((args, kwargs)) if t.is_floating_point() and t.dtype != torch.float64]
            if floats:
                args, kwargs = self.cast((args, kwargs), functools.reduce(torch.promote_types, floats))
        return func(*args, **kwargs)

    def cast(self, tree, dtype: torch.dtype):
        def one(t):
            if not isinstance(t, torch.Tensor) or not t.is_floating_point() or t.dtype in (dtype, torch.float64):
                return t
            if not (t.is_leaf and t.requires_grad):
                return t.to(dtype)
            cached = self._cache.get(id(t))
            if cached is None or cached[0] is not t or cached[1].dtype != dtype:
                cached = self._cache[id(t)] = (t, t.to(dtype))
            return cached[1]

        return tree_map(one, tree)


def _autocast_attention_inputs(query, key, value):
    """SDPA is a lower-precision op under autocast; the stand-in applies that cast itself (real or emulated)."""
    device = query.device.type
    if _MIXED_PRECISION_STACK:
        return _MIXED_PRECISION_STACK[-1].cast((query, key, value), _MIXED_PRECISION_STACK[-1].dtype)
    if torch.amp.is_autocast_available(device) and torch.is_autocast_enabled(device):
        dtype = torch.get_autocast_dtype(device)
        return tuple(t.to(dtype) if t.is_floating_point() and t.dtype != torch.float64 else t
                     for t in (query, key, value))  # fmt: skip
    return query, key, value


def checkpoint_function(block, *args):
    """Gradient checkpointing as diffusers does it (non-reentrant) for `enable_gradient_checkpointing(...)`, with the
    active `MixedPrecision` re-entered during recomputation (torch re-enters real autocast the same way). RNG state
    is not preserved: these models have no dropout, and it saves only a few KB per block."""
    active = _MIXED_PRECISION_STACK[-1] if _MIXED_PRECISION_STACK else None

    def contexts():
        recompute = MixedPrecision(active.dtype, active.rules) if active else contextlib.nullcontext()
        return contextlib.nullcontext(), recompute

    return torch.utils.checkpoint.checkpoint(
        block.__call__, *args, use_reentrant=False, preserve_rng_state=False, context_fn=contexts
    )


# =====================================================================================================================
# Building real modules on the meta device
# =====================================================================================================================


def read_config(path: str | Path) -> dict:
    """A component config: a diffusers / transformers `config.json` or a shipped `<component>_config.json`."""
    return json.loads(Path(path).read_text())


def module_class(config: dict):
    """The diffusers or transformers class a config names (`_class_name`, else `architectures[0]`)."""
    import importlib

    from .plan.configs import _library_of

    name = config.get("_class_name") or config["architectures"][0]
    return getattr(importlib.import_module(_library_of(name)), name)


def build_module(config: dict, dtype="bfloat16", device="meta", **overrides) -> torch.nn.Module:
    """The real class from `config` (+ `overrides`, e.g. num_layers=2), frozen, in eval mode, in `dtype` as
    `from_pretrained(torch_dtype=dtype)` would load it (modules the class keeps in float32 stay float32). On
    `device="meta"` (the default) every parameter, buffer and tensor made in `__init__` (RoPE tables) is on meta
    and nothing is allocated; another device builds it there with random weights (tiny models, for tests)."""
    cls = module_class(config)
    clean = {k: v for k, v in config.items() if not k.startswith("_")} | overrides
    with torch.device(device):
        if hasattr(cls, "config_class") and hasattr(cls.config_class, "from_dict"):  # transformers
            cfg = cls.config_class.from_dict(clean)
            cfg._attn_implementation = "sdpa"
            module = cls(cfg)
        else:
            accepted = inspect.signature(cls.__init__).parameters
            module = cls.from_config({k: v for k, v in clean.items() if k in accepted})
    _load_dtype(module, _dtype(dtype))
    return module.eval().requires_grad_(False)


def _load_dtype(module: torch.nn.Module, dtype: torch.dtype) -> None:
    """Cast like from_pretrained: transformers keeps `_keep_in_fp32_modules` in fp32 for fp16 loads and
    `_keep_in_fp32_modules_strict` for fp16 and bf16; diffusers keeps `_keep_in_fp32_modules` for any half dtype."""
    torch.nn.Module.to(module, dtype)  # (diffusers' own `.to` warns about keep-in-fp32 modules on every cast)
    if dtype == torch.float32:
        return
    keep = set(getattr(module, "_keep_in_fp32_modules_strict", None) or [])
    if dtype == torch.float16 or "diffusers" in type(module).__module__:
        keep |= set(getattr(module, "_keep_in_fp32_modules", None) or [])
    for name, sub in module.named_modules():
        if keep and any(part in keep for part in name.split(".")):
            sub.to(torch.float32)


# =====================================================================================================================
# Stage simulations
# =====================================================================================================================


@dataclass(frozen=True)
class StageSimulation:
    """One simulated stage. `peak_bytes`: live bytes the stage's own tensors reach at their worst moment (weights and
    inputs excluded); `seconds`: wall time of the simulation itself."""

    stage: str
    peak_bytes: int
    seconds: float
    attention: str
    peak_op: str = ""
    notes: tuple[str, ...] = ()


@dataclass(frozen=True)
class TrainingStepSimulation(StageSimulation):
    """One LoRA step. `peak_bytes` is forward + backward (activations, saved tensors, gradients as they accumulate,
    the LoRA weights' bf16 casts); `forward_peak_bytes` the forward's share and `kept_for_backward_bytes` what the
    forward leaves alive for backward (with checkpointing: every block's inputs). The rest are persistent or
    optimizer-phase terms, counted from the real objects: `lora_weight_bytes` (fp32 LoRA), `lora_grad_bytes`,
    `optimizer_state_bytes` (after the first step), and `optimizer_step_bytes` (peak the optimizer step allocates:
    its state on the first step plus temporaries)."""

    forward_peak_bytes: int = 0
    kept_for_backward_bytes: int = 0
    lora_params: int = 0
    lora_weight_bytes: int = 0
    lora_grad_bytes: int = 0
    optimizer_state_bytes: int = 0
    optimizer_step_bytes: int = 0

    @property
    def step_peak_bytes(self) -> int:
        """Bytes above the frozen base at the step's worst moment: LoRA weights + optimizer state, plus the larger of
        forward/backward (grads included) and the optimizer phase (grads + its temporaries)."""
        optimizer_temporaries = max(self.optimizer_step_bytes - self.optimizer_state_bytes, 0)
        return (self.lora_weight_bytes + self.optimizer_state_bytes
                + max(self.peak_bytes, self.lora_grad_bytes + optimizer_temporaries))  # fmt: skip


def _family(family):
    from .families import ModelFamily, family_by_name

    return family if isinstance(family, ModelFamily) else family_by_name(family)


def _measure(stage: str, policy: AttentionPolicy | str, run, notes=()) -> StageSimulation:
    """Run `run()` under a counter and the attention policy; no gradients unless `run` enables them."""
    policy = AttentionPolicy(policy) if isinstance(policy, str) else policy
    started = time.perf_counter()
    region = torch.profiler.record_function(f"graph_memory.{stage}")  # lets a profiler find the counted part
    with attention_policy(policy) as kernels, LiveBytesCounter() as counter, region:
        run()
    return StageSimulation(stage, counter.peak_bytes, time.perf_counter() - started, policy.describe(kernels),
                           counter.peak_op, tuple(notes))  # fmt: skip


def simulate_transformer_forward(
    family, transformer_config: dict, *, batch: int, height: int = 1024, width: int = 1024, text_tokens: int,
    dtype="bfloat16", padding_mask: bool = False, attention: AttentionPolicy | str = "fused", device="meta",
    **config_overrides,
) -> StageSimulation:  # fmt: skip
    """One no-grad transformer call as the sampler makes it (`family.velocity`): batch 2 is batched CFG, 1 a single
    pass. `padding_mask`: the two prompts differ in length (Qwen-Image). `device="cpu"` runs the same graph on real
    tensors (tiny models only)."""
    family = _family(family)
    dtype = _dtype(dtype)
    transformer = build_module(transformer_config, dtype, device, **config_overrides)
    inputs = family.simulation_inputs(transformer_config | config_overrides, batch, height, width, text_tokens,
                                      dtype, torch.device(device), padding_mask)  # fmt: skip

    def run():
        with torch.no_grad():
            family.velocity(transformer, *inputs)

    tokens = inputs[1].shape[1]
    notes = (f"batch {batch}, {tokens} image + {text_tokens} text tokens, {dtype}", f"padding mask: {padding_mask}")
    return _measure("transformer_forward", attention, run, notes)


def add_training_lora(transformer: torch.nn.Module, family, rank: int) -> list[torch.nn.Parameter]:
    """A trainable LoRA as the trainer adds it: peft on the family's targets, float32 weights over the frozen base
    (built on the transformer's device, so nothing is allocated on meta). Returns the trainable parameters."""
    from peft import LoraConfig

    family = _family(family)
    device = next(transformer.parameters()).device
    targets = list(family.lora_target_modules)
    config = LoraConfig(r=rank, lora_alpha=4 * rank, init_lora_weights="gaussian", target_modules=targets)
    with torch.device(device):
        transformer.add_adapter(config, adapter_name="simulated")
    params = []
    for name, param in transformer.named_parameters():
        if "lora_" in name:
            param.data = param.data.float()
            params.append(param)
    return params


def optimizer_state_bytes(params: list[torch.nn.Parameter], optimizer: str) -> tuple[int, int]:
    """(state bytes after the first step, peak bytes the first step allocates), counted from the optimizer's own code
    on meta copies of `params` (gradients present, as after backward).

    adamw: torch.optim.AdamW with foreach=True, what the trainer gets on a GPU: two fp32 moments, plus the foreach
    temporaries of the step itself (e.g. the square roots of the second moments, all at once). adamw8bit:
    bitsandbytes' own `init_state` (uint8 moments, an fp32 absmax per 256-value block, fp32 moments for tensors
    under `min_8bit_size`, the shared quantile maps); its step is one fused kernel per tensor, without temporaries.
    """
    shadows = []
    for param in params:
        shadow = torch.nn.Parameter(torch.empty_like(param, device="meta"))
        shadow.grad = torch.empty_like(shadow)
        shadows.append(shadow)
    with LiveBytesCounter() as counter:
        if optimizer == "adamw":
            opt = torch.optim.AdamW(shadows, lr=1e-4, weight_decay=0.01, foreach=True)
            opt.step()
        elif optimizer == "adamw8bit":
            import bitsandbytes as bnb

            opt = bnb.optim.AdamW8bit(shadows, lr=1e-4)
            for gindex, group in enumerate(opt.param_groups):
                for pindex, shadow in enumerate(group["params"]):
                    opt.init_state(group, shadow, gindex, pindex)
        else:
            raise ValueError(f"unknown optimizer {optimizer!r} (adamw, adamw8bit)")
        state_bytes = counter.current_bytes  # read while `opt` still holds its state
    return state_bytes, counter.peak_bytes


def simulate_training_step(
    family, transformer_config: dict, *, height: int = 1024, width: int = 1024, text_tokens: int,
    rank: int | None = None, batch: int = 1, dtype="bfloat16", optimizer: str | None = None,
    gradient_checkpointing: bool = True, mixed_precision=True, max_grad_norm: float | None = 1.0,
    attention: AttentionPolicy | str = "fused", device="meta", **config_overrides,
) -> TrainingStepSimulation:  # fmt: skip
    """One LoRA training step as `train.py` runs it: frozen base in `dtype`, fp32 LoRA of `rank` (default: the
    family's recipe) on the family's targets, gradient checkpointing, the forward under autocast to `dtype` (CUDA
    rules, `MixedPrecision`) when `mixed_precision` is True and `dtype` a half type (or under the context
    `mixed_precision()` returns, e.g. a real `torch.autocast`), MSE to a target, backward, gradient clipping; then
    the optimizer (default: the recipe's) on its own (`optimizer_state_bytes`). The stage's activation figure is
    `peak_bytes`; `step_peak_bytes` adds the LoRA weights, optimizer state and the optimizer phase."""
    family = _family(family)
    dtype = _dtype(dtype)
    rank = rank or family.recipe.rank
    optimizer = optimizer or family.recipe.optimizer
    started = time.perf_counter()
    transformer = build_module(transformer_config, dtype, device, **config_overrides)
    params = add_training_lora(transformer, family, rank)
    if gradient_checkpointing:
        transformer.enable_gradient_checkpointing(checkpoint_function)
    state, latents, timestep, cond = family.simulation_inputs(
        transformer_config | config_overrides, batch, height, width, text_tokens, dtype, torch.device(device), False
    )
    target = torch.randn(latents.shape, dtype=torch.float32, device=device)
    if callable(mixed_precision):
        autocast = mixed_precision()
    else:
        autocast = MixedPrecision(dtype) if mixed_precision and dtype != torch.float32 else contextlib.nullcontext()
    policy = AttentionPolicy(attention) if isinstance(attention, str) else attention
    with attention_policy(policy) as kernels, LiveBytesCounter() as counter, torch.enable_grad(), \
            torch.profiler.record_function("graph_memory.train_step"):  # fmt: skip
        with autocast:
            velocity = family.velocity(transformer, state, latents, timestep, cond)
        forward_peak, kept_for_backward = counter.peak_bytes, counter.current_bytes
        loss = torch.nn.functional.mse_loss(velocity.float(), target)
        loss.backward()
        del velocity, loss
        if max_grad_norm:
            torch.nn.utils.clip_grad_norm_(params, max_grad_norm)
    grad_bytes = sum(p.grad.untyped_storage().nbytes() for p in params if p.grad is not None)
    state_bytes, step_bytes = optimizer_state_bytes(params, optimizer)
    notes = (
        f"batch {batch}, {latents.shape[1]} image + {text_tokens} text tokens, base {dtype}, LoRA rank {rank} fp32",
        f"gradient checkpointing: {gradient_checkpointing}; forward under {type(autocast).__name__}",
        f"optimizer {optimizer}",
    )
    return TrainingStepSimulation(
        "train_step", counter.peak_bytes, time.perf_counter() - started, policy.describe(kernels), counter.peak_op,
        notes, lora_params=sum(p.numel() for p in params),
        lora_weight_bytes=sum(p.untyped_storage().nbytes() for p in params),
        lora_grad_bytes=grad_bytes, optimizer_state_bytes=state_bytes, optimizer_step_bytes=step_bytes,
        forward_peak_bytes=forward_peak, kept_for_backward_bytes=kept_for_backward,
    )  # fmt: skip


BLOCK_COUNT_KEYS = ("num_layers", "num_single_layers")  # repeated blocks in the Qwen-Image / FLUX transformer configs


def simulate_training_step_from_blocks(
    family, transformer_config: dict, *, blocks: int = 2, **kwargs
) -> TrainingStepSimulation:
    """`simulate_training_step` on `blocks` repeated blocks, then again with each kind of block doubled, extrapolated
    linearly to the config's block counts: seconds instead of a minute. Every term is linear in the blocks because
    the checkpointed step peaks in the first block's recomputation with one block input per block kept (exact at
    1024^2 for Qwen-Image and FLUX.1-dev: benchmarks/results/graph-memory-measurements.md; tested on the tiny
    models). Keep `blocks` >= 2: the last block is not like the others (Qwen-Image's last text-stream MLP never
    reaches the loss), so a one-block run does not scale."""
    keys = [key for key in BLOCK_COUNT_KEYS if key in transformer_config]
    base = simulate_training_step(family, transformer_config, **kwargs, **dict.fromkeys(keys, blocks))
    values = {f.name: getattr(base, f.name) for f in fields(base) if f.type in ("int", int)}
    seconds = base.seconds
    for key in keys:
        counts = dict.fromkeys(keys, blocks) | {key: 2 * blocks}
        doubled = simulate_training_step(family, transformer_config, **kwargs, **counts)
        seconds += doubled.seconds
        for name in values:
            per_block = (getattr(doubled, name) - getattr(base, name)) / blocks
            values[name] += round(per_block * (transformer_config[key] - blocks))
    note = f"extrapolated from {blocks} and {2 * blocks} blocks of each kind ({', '.join(keys)})"
    return replace(base, **values, seconds=seconds, notes=(*base.notes, note))


def simulate_text_encoder(
    config: dict, *, tokens: int, dtype="bfloat16", output_hidden_states: bool | None = None,
    attention: AttentionPolicy | str = "fused", device="meta", **config_overrides,
) -> StageSimulation:  # fmt: skip
    """One prompt through a text encoder as the pipelines call it: Qwen2.5-VL (Qwen-Image) returns every hidden state
    and its LM head's logits (`output_hidden_states=True`, the default for that class); CLIP and T5 (FLUX) do not.
    No attention mask is passed: for one prompt the pipeline's mask is all ones, which transformers drops for SDPA."""
    encoder = build_module(config, dtype, device, **config_overrides)
    if output_hidden_states is None:
        output_hidden_states = type(encoder).__name__.startswith("Qwen2_5_VL")
    input_ids = torch.zeros(1, tokens, dtype=torch.long, device=device)

    def run():
        with torch.no_grad():
            encoder(input_ids=input_ids, output_hidden_states=output_hidden_states)

    notes = (f"{type(encoder).__name__}, {tokens} tokens, {_dtype(dtype)}, "
             f"output_hidden_states={output_hidden_states}",)  # fmt: skip
    return _measure("text_encode", attention, run, notes)


def simulate_vae_decode(
    config: dict, *, height: int = 1024, width: int = 1024, dtype="bfloat16", tiled: bool = False,
    attention: AttentionPolicy | str = "fused", device="meta", **config_overrides,
) -> StageSimulation:  # fmt: skip
    """`vae.decode` of one latent to a height x width image, tiled (`enable_tiling()`, the VAE's own tile sizes) or
    not. Qwen-Image's VAE is a video VAE: its latent has one frame. AutoencoderKL tiles at its config's
    `sample_size` (diffusers' default 32 when the config omits it; FLUX.1-dev's hub config says 1024)."""
    vae = build_module(config, dtype, device, **config_overrides)
    if tiled:
        vae.enable_tiling()
    if "temperal_downsample" in config:  # AutoencoderKLQwenImage: [B, C, frames, H, W]
        factor = 2 ** len(config["temperal_downsample"])
        shape = (1, config["z_dim"], 1, height // factor, width // factor)
    else:
        factor = 2 ** (len(config["block_out_channels"]) - 1)
        shape = (1, config["latent_channels"], height // factor, width // factor)
    latents = torch.randn(shape, dtype=_dtype(dtype), device=device)

    def run():
        with torch.no_grad():
            vae.decode(latents, return_dict=False)

    notes = (f"{type(vae).__name__}, {width}x{height}, {_dtype(dtype)}, tiled={tiled}",)
    return _measure("vae_decode", attention, run, notes)
