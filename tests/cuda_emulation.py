"""CUDA behaviour a CPU run never reaches, imitated so the CPU test suite can see it.

Each imitation names the CUDA behaviour it copies and where the library writes it down; the tests that use them
(test_cuda_emulation.py) fail on code that would crash or misbehave on a card, although the same code passes every
plain CPU test.

- `CudaAutocast`: CUDA autocast's op lists (ATen's `AT_FORALL_LOWER_PRECISION_FP` / `AT_FORALL_FP32`, read from
  torch's own `include/ATen/autocast_mode.h`): inside an autocast region, matmul-like ops run in the autocast dtype
  and `layer_norm`, `rms_norm`, `softmax`, `exp`, ... run in float32. CPU autocast's lists differ (it leaves
  `layer_norm` in the input dtype), so code relying on an op's output dtype behaves differently on the two devices.
- `EmulatedGpus`: `torch.cuda` as a machine with these cards reports it (count, names, memory, compute capability,
  the torch build's arch list) and records what a run asks of it (current device, streams, free-memory queries).
- `quanto_layout_on_card`: the tensor class optimum-quanto gives a weight once it is moved to a card of a given
  compute capability (`WeightQBytesTensor.create`, optimum/quanto/tensor/weights/qbytes.py; `WeightQBitsTensor.create`,
  qbits.py), decided by quanto's own code on a fake CUDA tensor; building quanto's CUDA extension (nvcc, at first use
  of a Marlin / AWQ kernel) is refused loudly instead of attempted.
- `pinned_by_group_offloading`: the host allocations diffusers group offloading makes when it is applied with streams
  (hooks/group_offloading.py `ModuleGroup._to_cpu`: every streamed tensor pinned, a torchao weight's inner tensors one
  by one), each rounded up to a power of two as torch's CachingHostAllocator does (ATen/core/CachingHostAllocator.h,
  `c10::llvm::PowerOf2Ceil`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import re
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from unittest import mock

import torch
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode

# ---- CUDA autocast -------------------------------------------------------------------------------------------------
AUTOCAST_HEADER = Path(torch.__file__).parent / "include" / "ATen" / "autocast_mode.h"
# Python spellings of the ATen ops in the lists (Tensor dunders reach the same kernels).
_PYTHON_SPELLINGS = {"__matmul__": "matmul", "__rmatmul__": "matmul", "__pow__": "pow", "__rpow__": "pow"}


@functools.lru_cache(maxsize=1)
def cuda_autocast_lists() -> tuple[frozenset[str], frozenset[str]]:
    """(ops CUDA autocast runs in the lower-precision dtype, ops it runs in float32), from torch's header."""
    text = AUTOCAST_HEADER.read_text()

    def ops(macro: str) -> frozenset[str]:
        body = re.search(rf"#define {macro}\(_\)(.*?)\n\n", text, re.S).group(1)
        return frozenset(re.findall(r"_\((\w+)", body))

    return ops("AT_FORALL_LOWER_PRECISION_FP"), ops("AT_FORALL_FP32") | ops("AT_FORALL_FP32_SET_OPT_DTYPE")


def _has_own_torch_function(value) -> bool:
    """A tensor subclass that intercepts ops itself (quanto and torchao weights): on CUDA its `__torch_function__`
    runs before the autocast dispatch key, so autocast never casts that call's inputs."""
    if not isinstance(value, torch.Tensor):
        return False
    handler = type(value).__torch_function__
    return getattr(handler, "__func__", handler) not in _PLAIN_TORCH_FUNCTION


_PLAIN_TORCH_FUNCTION = (torch.Tensor.__torch_function__.__func__, torch._C._disabled_torch_function_impl)


class CudaAutocast(TorchFunctionMode):
    """While CPU autocast is on (the trainer's mixed-precision region), cast as CUDA autocast would instead."""

    def __init__(self):
        super().__init__()
        self.lower, self.fp32 = cuda_autocast_lists()

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if not torch.is_autocast_enabled("cpu"):
            return func(*args, **kwargs)
        name = getattr(func, "__name__", "")
        name = _PYTHON_SPELLINGS.get(name, name)
        leaves = [*args, *kwargs.values()]
        if name in self.fp32:
            target = torch.float32
        elif name in self.lower and not any(_has_own_torch_function(a) for a in leaves):
            target = torch.get_autocast_dtype("cpu")
        else:
            return func(*args, **kwargs)

        def cast(value):
            if isinstance(value, torch.Tensor) and value.is_floating_point() and not _has_own_torch_function(value):
                return value.to(target)
            if isinstance(value, (list, tuple)):
                return type(value)(cast(v) for v in value)
            return value

        with torch.autocast("cpu", enabled=False):
            return func(*cast(args), **{k: cast(v) for k, v in kwargs.items()})


@contextlib.contextmanager
def cuda_autocast():
    """`CudaAutocast` for the forward, and for gradient checkpointing's recomputation inside backward as well: torch
    function modes do not reach that recomputation, so the checkpoint is handed the mode as its recompute context
    (diffusers' blocks call `torch.utils.checkpoint.checkpoint(..., use_reentrant=False)`)."""
    import torch.utils.checkpoint as checkpointing

    checkpoint = checkpointing.checkpoint

    def recompute_under_the_mode(function, *args, use_reentrant=None, context_fn=checkpointing.noop_context_fn, **kwargs):
        if use_reentrant is False and context_fn is checkpointing.noop_context_fn:
            context_fn = lambda: (contextlib.nullcontext(), CudaAutocast())  # noqa: E731
        return checkpoint(function, *args, use_reentrant=use_reentrant, context_fn=context_fn, **kwargs)

    with mock.patch.object(checkpointing, "checkpoint", recompute_under_the_mode), CudaAutocast():
        yield


# ---- the cards -----------------------------------------------------------------------------------------------------
# What `torch.cuda.get_arch_list()` says on the builds users install (pytorch RELEASE.md support matrix, 2.11).
ARCH_LISTS = {
    "cu126": ["sm_50", "sm_60", "sm_70", "sm_75", "sm_80", "sm_86", "sm_90"],
    "cu130": ["sm_75", "sm_80", "sm_86", "sm_90", "sm_100", "sm_120", "compute_120"],
}
CARDS = {
    "V100-16": ("Tesla V100-SXM2-16GB", 16_945_512_448, (7, 0)),
    "V100-32": ("Tesla V100-SXM2-32GB", 34_089_730_048, (7, 0)),
    "3060": ("NVIDIA GeForce RTX 3060", 12_622_168_064, (8, 6)),
    "3090": ("NVIDIA GeForce RTX 3090", 25_438_126_080, (8, 6)),
    "4090": ("NVIDIA GeForce RTX 4090", 25_393_692_672, (8, 9)),
    "H100": ("NVIDIA H100 80GB HBM3", 85_045_149_696, (9, 0)),
}


@dataclass
class EmulatedGpus:
    """`torch.cuda` of a machine with `cards` (keys of CARDS) under a torch build with `arch_list`; `calls` records
    ("set_device", i), ("stream", current device), ("mem_get_info", i) in order."""

    cards: list[str]
    arch_list: list[str] = field(default_factory=lambda: list(ARCH_LISTS["cu130"]))
    calls: list[tuple] = field(default_factory=list)
    current: int = 0

    def _props(self, index):
        index = self._index(index)
        name, total, (major, minor) = CARDS[self.cards[index]]
        return SimpleNamespace(name=name, total_memory=total, major=major, minor=minor, multi_processor_count=100)

    def _index(self, device) -> int:
        if device is None:
            return self.current
        if isinstance(device, (str, torch.device)):
            device = torch.device(device)
            return self.current if device.index is None else device.index
        return int(device)

    def _set_device(self, device):
        self.current = self._index(device)
        self.calls.append(("set_device", self.current))

    def _mem_get_info(self, device=None):
        index = self._index(device)
        self.calls.append(("mem_get_info", index))
        total = self._props(index).total_memory
        return total - 2**30, total

    def _stream_class(self):
        gpus = self

        class Stream:  # a class, as code annotates and isinstance-checks with torch.cuda.Stream
            def __init__(self, *args, **kwargs):
                gpus.calls.append(("stream", gpus.current))

            def synchronize(self):
                pass

            def wait_stream(self, other):
                pass

        return Stream

    @contextlib.contextmanager
    def installed(self):
        """The patches, plus the allocator and synchronisation calls a run makes, answered as an idle card would.
        The libraries are imported first, as a run imports them before it asks for a card (some pick CUDA helpers
        at import time when torch says CUDA is there)."""
        _import_libraries()
        cuda = torch.cuda
        stream = self._stream_class()
        patches = {
            "is_available": lambda: True,
            "device_count": lambda: len(self.cards),
            "get_device_properties": self._props,
            "get_device_capability": lambda device=None: (self._props(device).major, self._props(device).minor),
            "get_device_name": lambda device=None: self._props(device).name,
            "get_arch_list": lambda: list(self.arch_list),
            "mem_get_info": self._mem_get_info,
            "set_device": self._set_device,
            "current_device": lambda: self.current,
            "Stream": stream,
            "current_stream": lambda device=None: stream.__new__(stream),
            "synchronize": lambda device=None: None,
            "empty_cache": lambda: None,
            "reset_peak_memory_stats": lambda device=None: None,
            "memory_allocated": lambda device=None: 0,
            "memory_reserved": lambda device=None: 0,
            "max_memory_allocated": lambda device=None: 0,
            "max_memory_reserved": lambda device=None: 0,
        }
        with contextlib.ExitStack() as stack:
            for name, value in patches.items():
                stack.enter_context(mock.patch.object(cuda, name, value))
            stack.enter_context(mock.patch.object(torch.version, "cuda", "13.0" if "sm_70" not in self.arch_list else "12.6"))
            yield self


def _import_libraries() -> None:
    import bitsandbytes  # noqa: F401
    import diffusers
    import peft  # noqa: F401
    import transformers

    for name in ("QwenImagePipeline", "QwenImageEditPipeline", "FluxPipeline", "QwenImageTransformer2DModel", "AutoencoderKLQwenImage"):
        getattr(diffusers, name)
    import diffusers.loaders.lora_pipeline  # noqa: F401

    for name in ("Qwen2_5_VLForConditionalGeneration", "CLIPTextModel", "T5EncoderModel"):
        getattr(transformers, name)


# ---- optimum-quanto's kernel choice ----------------------------------------------------------------------------------
class QuantoExtensionBuild(AssertionError):
    """quanto would now compile its CUDA extension with nvcc (minutes at first use; fails without a toolkit)."""


def quanto_layout_on_card(weight, capability: tuple[int, int]) -> str:
    """The class name quanto gives `weight` (a quanto weight tensor) once moved to a card of `capability`, decided by
    quanto's own `create` on a fake CUDA tensor, with quanto's CUDA extension registered as on a Linux CUDA build."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    from optimum.quanto.library.extensions.extension import Extension
    from optimum.quanto.tensor.weights import marlin, qbits, qbytes

    chosen = []

    def kernel_class(name):
        class Chosen:
            def __init__(self, *args, **kwargs):
                chosen.append(name)

        return Chosen

    def no_build(self):
        raise QuantoExtensionBuild(f"{self.name} would be compiled with nvcc at first use")

    with contextlib.ExitStack() as stack:
        stack.enter_context(mock.patch.object(torch.version, "cuda", "13.0"))
        stack.enter_context(mock.patch.object(torch.cuda, "get_device_capability", lambda device=None: capability))
        stack.enter_context(mock.patch.object(qbytes, "is_extension_available", lambda name: True))
        stack.enter_context(mock.patch.object(qbits, "is_extension_available", lambda name: True))
        stack.enter_context(mock.patch.object(Extension, "lib", property(no_build)))
        stack.enter_context(mock.patch.object(marlin, "MarlinF8QBytesTensor", kernel_class("MarlinF8QBytesTensor")))
        for name in ("AWQWeightQBitsTensor", "TinyGemmWeightQBitsTensor"):
            module = __import__(f"optimum.quanto.tensor.weights.{'awq' if name.startswith('AWQ') else 'tinygemm'}", fromlist=[name])
            stack.enter_context(mock.patch.object(module, name, kernel_class(name)))
        with FakeTensorMode(allow_non_fake_inputs=True):
            moved = _recreate_on_cuda(weight)
    return chosen[0] if chosen else type(moved).__name__


def _recreate_on_cuda(weight):
    """What `weight.to("cuda")` (the trainer's block streamer, every block it brings) makes quanto do: its `_to_copy`
    moves the inner tensors and calls `create` again (qbytes.py `WeightQBytesTensor.__torch_dispatch__`, qbits.py
    likewise); here the inner tensors are fake CUDA tensors, so no card is needed."""
    from optimum.quanto.tensor.weights.qbits import WeightQBitsTensor
    from optimum.quanto.tensor.weights.qbytes import WeightQBytesTensor

    def on_cuda(tensor):
        return torch.empty(tensor.shape, dtype=tensor.dtype, device="cuda")

    if isinstance(weight, WeightQBytesTensor):
        return WeightQBytesTensor.create(weight.qtype, weight.axis, weight.size(), weight.stride(), on_cuda(weight._data),
                                         on_cuda(weight._scale), activation_qtype=weight.activation_qtype)  # fmt: skip
    if isinstance(weight, WeightQBitsTensor):
        return WeightQBitsTensor.create(weight.qtype, weight.axis, weight._group_size, weight.size(), weight.stride(),
                                        on_cuda(weight._data.unpack() if hasattr(weight._data, "unpack") else weight._data),
                                        on_cuda(weight._scale), on_cuda(weight._shift))  # fmt: skip
    raise TypeError(f"not a quanto weight: {type(weight).__name__}")


# Input dtypes each quanto weight layout's CUDA matmul takes (a plain dequantize-and-matmul casts any float input).
QUANTO_KERNEL_INPUTS = {
    "MarlinF8QBytesTensor": {torch.bfloat16, torch.float16},  # fp8_marlin_gemm: "only supports bfloat16 and float16"
    "AWQWeightQBitsTensor": {torch.float16},
    "TinyGemmWeightQBitsTensor": {torch.bfloat16},
    "WeightQBytesTensor": {torch.float32, torch.bfloat16, torch.float16},  # qbytes_mm: casts to the scale's dtype
    "WeightQBitsTensor": {torch.float32, torch.bfloat16, torch.float16},
}


# ---- pinned host memory ----------------------------------------------------------------------------------------------
def caching_host_allocator_bytes(nbytes: int) -> int:
    """CachingHostAllocator::allocate: a pinned request is rounded up to the next power of two."""
    return 0 if nbytes <= 0 else 1 << (nbytes - 1).bit_length()


def pinned_by_group_offloading(module: torch.nn.Module, resident: set[int], blocks_per_group: int = 1) -> list[int]:
    """Apply glance_lite's streaming (`residency.stream_blocks`, diffusers group offloading with streams) to `module`
    for a CUDA card, and return the byte size of every host allocation the pinning makes, allocator-rounded."""
    from glance_lite.residency import stream_blocks

    allocations = []
    pin_memory = torch.Tensor.pin_memory

    def pin(tensor, *args, **kwargs):
        if type(tensor) not in (torch.Tensor, torch.nn.Parameter):  # torchao: pins each inner tensor (_pin_memory)
            return pin_memory(tensor, *args, **kwargs)
        allocations.append(caching_host_allocator_bytes(tensor.untyped_storage().nbytes()))
        return tensor.clone()

    with EmulatedGpus(["4090"]).installed(), mock.patch.object(torch.Tensor, "pin_memory", pin):
        with mock.patch.object(torch.Tensor, "is_pinned", lambda tensor, *a, **k: False):
            stream_blocks(module, torch.device("cuda", 0), resident, blocks_per_group, use_stream=True)
    return allocations


# ---- a GPU a CPU can have: the meta device, with the way back to RAM remembered ------------------------------------
class GpuStandIn:
    """Run a GPU profile's placements with the `meta` device in place of every CUDA device, so where each tensor is,
    stage by stage, can be looked at on a CPU: "meta" means on the GPU, "cpu" means in RAM. Everything the manager
    does is its own code (moves, parks, evictions, diffusers group offloading, resident blocks); only the device its
    placement names is swapped, and a copy from meta back to RAM returns what the tensor held before it went there
    (a meta tensor has no data; a real card keeps it), so a round trip loses nothing. Forwards run on meta: shapes,
    no numbers; a tensor left in RAM that a forward needs on the card fails as it would on a GPU (device mismatch)."""

    def __init__(self):
        self.mode = _RememberRam()

    @staticmethod
    def _on_stand_in(device):
        return "meta" if str(device).startswith("cuda") else device

    @contextlib.contextmanager
    def installed(self):
        from glance_lite import manager

        compute_device = manager.compute_device
        placement = manager.ComponentManager.placement

        def stand_in_device(*args, **kwargs):
            device = compute_device(*args, **kwargs)
            return torch.device("meta") if device.type == "cuda" else device

        def stand_in_placement(self, component, stage):
            where = placement(self, component, stage)
            return dataclasses.replace(where, device=GpuStandIn._on_stand_in(where.device))

        get_device_module = torch.get_device_module
        meta_module = SimpleNamespace(synchronize=lambda device=None: None, empty_cache=lambda: None)

        def device_module(device=None):  # diffusers' TorchDeviceBackend asks torch for the device's module
            return meta_module if str(device).startswith("meta") else get_device_module(device)

        with mock.patch.object(manager, "compute_device", stand_in_device), \
             mock.patch.object(manager.ComponentManager, "placement", stand_in_placement), \
             mock.patch.object(torch, "get_device_module", device_module), \
             mock.patch.object(torch.Tensor, "data", _DATA_ACROSS_DEVICES, create=True), self.mode:  # fmt: skip
            yield self


def _set_data(tensor, new):
    """`tensor.data = new` between RAM and the stand-in, as between RAM and a card (torch allows cpu <-> cuda but
    refuses cpu <-> meta): the tensor object takes the new data by a swap; same device kinds take the plain path."""
    if torch._has_compatible_shallow_copy_type(tensor, new):
        torch._C.TensorBase.data.__set__(tensor, new)
        return
    replacement = torch.nn.Parameter(new, requires_grad=tensor.requires_grad) if isinstance(tensor, torch.nn.Parameter) else new
    torch.utils.swap_tensors(tensor, replacement)


_DATA_ACROSS_DEVICES = property(torch._C.TensorBase.data.__get__, _set_data)


def _storage_key(tensor: torch.Tensor):
    return tensor.untyped_storage()._cdata, tensor.storage_offset(), tuple(tensor.shape)


def _first_inner(tensor: torch.Tensor) -> torch.Tensor:
    """A plain tensor standing for `tensor`: itself, or a wrapper subclass's first inner tensor (torchao's qdata)."""
    if type(tensor) in (torch.Tensor, torch.nn.Parameter) or not hasattr(tensor, "__tensor_flatten__"):
        return tensor
    names, _ = tensor.__tensor_flatten__()
    return _first_inner(getattr(tensor, names[0]))


class _RememberRam(TorchDispatchMode):
    """Remembers the RAM tensor behind every tensor copied to meta; a copy back returns it."""

    def __init__(self):
        super().__init__()
        self.held: dict = {}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is torch.ops.aten._to_copy.default and isinstance(args[0], torch.Tensor) and "device" in kwargs:
            source, target = args[0], torch.device(kwargs["device"])
            if target.type == "meta" and source.device.type == "cpu":
                out = func(*args, **kwargs)
                self.held[_storage_key(_first_inner(out))] = source
                return out
            if target.type == "cpu" and source.device.type == "meta":
                held = self.held.get(_storage_key(_first_inner(source)))
                if held is None:
                    raise AssertionError(f"a tensor made on the GPU stand-in ({tuple(source.shape)}) is copied to RAM: nothing to give back")
                dtype = kwargs.get("dtype")
                return held if dtype in (None, held.dtype) else held.to(dtype)
        return func(*args, **kwargs)
