"""Memory planner: how many bytes each stage of a run puts on each device, before any weight is loaded.

    python -m glance_lite.plan --model Qwen/Qwen-Image --profile 4090 --height 1024 --width 1024 [--json] [--strict]

The architectures are built on the meta device from their configs (`accelerate.init_empty_weights`), so a
20B-parameter plan takes well under a second after the imports and needs neither weights nor a network. Every
parameter is counted by walking the real module tree, and quantization is applied to exactly the layers that
optimum-quanto / bitsandbytes replace, so weight bytes are exact; activations are estimates from the shapes
(formulas and their constants are below, in one place, to be tuned against GPU measurements).

Stages run one after another and the manager frees what a stage no longer needs, so the peak of a run is the
MAX over stages, never their sum:

    text_encode   text encoder(s): prompt and negative prompt
    slow_phase    transformer with both adapters loaded (slow active); edit models also hold the VAE
    fast_phase    the same weights, fast adapter active
    vae_decode    VAE: latents -> pixels
    train_step    one LoRA training step (frozen base, cached text embeddings and latents)

Per stage and device: peak = weights held there + group-offload window in flight + activations + overhead
(CUDA context on a GPU; Python/torch baseline and one checkpoint shard being read on the CPU).
"""

from __future__ import annotations

import argparse
import functools
import inspect
import json
import math
import re
import sys
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from .profiles import ComponentPolicy, Profile, load_profile, list_profiles

# =====================================================================================================================
# Tunable constants: every number the estimates rest on. Calibrate these against GPU measurements.
# =====================================================================================================================
GiB = 2**30
DTYPE_BYTES = {"bfloat16": 2, "float16": 2, "float32": 4}

# Memory the CUDA runtime takes on each GPU before any tensor (context, cuBLAS/cuDNN handles and workspaces).
CUDA_CONTEXT_BYTES = int(0.5 * GiB)
# Resident memory of the Python process with torch, diffusers and transformers imported (and CUDA initialised).
RAM_BASELINE_BYTES = {"cuda": 3 * GiB, "cpu": int(1.5 * GiB)}
# A checkpoint is read one safetensors shard at a time (hub shards are <= 5 GB); quantizing while loading keeps
# at most one shard in RAM on top of what is already held.
LOAD_SHARD_BYTES = 5 * GiB
# Groups on the GPU at once under group offloading: the one computing plus the one being prefetched on a side
# stream; without streams the next group is loaded only when the previous one is done.
GROUP_OFFLOAD_IN_FLIGHT = {True: 2, False: 1}
# Copies of a group-offloaded model in RAM. diffusers 0.42 pins a copy of every weight when offloading is applied
# (use_stream=True) and the unpinned original lives until the first forward (2 copies) UNLESS the weights are
# pinned in place beforehand (`p.data = p.data.pin_memory()`; `pin_memory()` of a pinned tensor is a no-op), which
# the manager is expected to do: 1 copy.
GROUP_OFFLOAD_RAM_COPIES = 1
# The caching allocator rounds and fragments: activations (many short-lived tensors) get this much headroom.
ACTIVATION_SLACK = 1.10

# Transformer activations, in units of one hidden-state tensor [batch, tokens, hidden] (attention through SDPA
# flash / memory-efficient kernels: no tokens^2 score matrix). Counted by reading the diffusers 0.42 block forwards.
#   Inference, attention moment: the block input (held by the caller), normed + modulated inputs (block locals),
#   and inside the processor q/k/v per stream, their joint concatenations, the attention output, its contiguous
#   slice and projection: 3 + 9 units.
INFER_ATTENTION_UNITS = 12.0
#   Inference, MLP moment: 7 units of block locals (input, normed/modulated x2, attention output, residual sum)
#   plus the MLP hidden (mlp_ratio units) twice while the GELU runs.
INFER_MLP_BASE_UNITS = 7.0
INFER_MLP_COPIES = 2.0
#   Outside the blocks: embedded latents, text states, the output, RoPE tables, CFG combination.
INFER_OUTSIDE_UNITS = 3.0
#   A padding mask (Qwen-Image when two prompts of different lengths share a batch) makes SDPA expand it to a
#   [batch, heads, tokens, tokens] bias in the compute dtype for every attention call (torch 2.x mem-efficient
#   kernel; flash cannot take a mask). Counted when `FamilyShapes.masked_batched_attention` and batch > 1.
#   Training, one block re-run with autograd during backward (gradient checkpointing): tensors saved for backward
#   (modulated inputs, q/k before and after the norm, fp32 RoPE operands, joint q/k/v, attention output, gates,
#   norm inputs ~ 16 units) plus the MLP input to GELU and its output (2 x mlp_ratio), plus gradients in flight.
TRAIN_BLOCK_SAVED_UNITS = 16.0
TRAIN_MLP_SAVED_COPIES = 2.0
TRAIN_GRAD_UNITS = 6.0
#   Checkpointed training keeps each block's input (image + text hidden states) until backward reaches it.
TRAIN_CHECKPOINT_UNITS_PER_BLOCK = 1.0
#   Outside the blocks: embedded latents and text, the prediction, target and loss, and their gradients.
TRAIN_OUTSIDE_UNITS = 3.0
#   Trainable LoRA weights are kept in fp32 under mixed precision, and so are their gradients.
LORA_TRAIN_PARAM_BYTES = 4
LORA_GRAD_BYTES = 4
OPTIMIZER_STATE_BYTES = {"adamw8bit": 2, "adamw": 8}  # per trainable parameter (two moments)

# Text encoder forward, per prompt token: all hidden states are returned (output_hidden_states), plus attention
# and MLP temporaries of one layer and, for a causal LM head, the logits.
TEXT_LIVE_HIDDEN = 6.0
TEXT_LIVE_MLP = 3.0

# VAE, elements held at the peak per output pixel and per channel of the full-resolution stage (Qwen-Image:
# `base_dim` 96, FLUX: `block_out_channels[0]` 128), times the dtype size. Measured as the peak RSS above the
# loaded model while decoding 1024x1024 on CPU in fp32 with random weights (diffusers 0.42.1): Qwen-Image
# 8371 MiB (2093 elements per pixel; 2250 at 512^2), FLUX 3866 MiB (966; 1049 at 512^2). The Qwen-Image VAE
# caches the input of every causal conv (feat_cache) while it decodes: twice the FLUX VAE per pixel. Encoding
# 512x512: Qwen-Image 1277, FLUX 652 per pixel (about 0.57x / 0.62x of decoding at that size).
# cuDNN workspaces are not included.
VAE_ELEMENTS_PER_PIXEL_PER_CHANNEL = {
    "AutoencoderKLQwenImage": {"decode": 2100.0 / 96, "encode": 1200.0 / 96},
    "AutoencoderKL": {"decode": 1000.0 / 128, "encode": 620.0 / 128},
}
# Tiled decoding: one tile in flight costs more per pixel than a big image (fixed per-conv overhead: Qwen-Image
# 2737 elements per pixel at 256^2 vs 2093 at 1024^2), and every decoded (overlapping) tile plus the blended
# result are kept. Measured: Qwen-Image, 1024^2 in 256^2 tiles, fp32 on CPU: 874 MiB (this model: 862 MiB).
VAE_TILE_OVERHEAD = 1.55
VAE_TILED_OUTPUT_ELEMENTS_PER_PIXEL = 12.0

# bitsandbytes 4-bit: blocks of 64 weights share one fp32 absmax (no double quantization), plus the 16-entry
# fp32 NF4 code table per layer. LLM.int8: one fp32 scale per output row.
BNB_4BIT_BLOCKSIZE = 64
BNB_4BIT_CODE_BYTES = 16 * 4
# Relative cost of work done on the CPU instead of the GPU, used only to rank profiles (auto selection).
CPU_PLACEMENT_TRAFFIC_FACTOR = 10

# =====================================================================================================================
# Families: what the planner needs beyond the configs. LoRA targets, default rank and CFG come from
# glance_lite.families (single source of truth).
# =====================================================================================================================


@dataclass(frozen=True)
class FamilyShapes:
    """Token counts the configs do not say.

    `generate_text_tokens`: text tokens the transformer sees per prompt at generation. Qwen-Image trims the padding
    (a typical prompt is well under 128 tokens); FLUX pads T5 to 512. `train_text_tokens`: the training recipe's
    max_sequence_length. `condition_image_area`: edit models append the input image's latents (the stock pipeline
    resizes it to ~1024x1024 whatever the output size) and the vision-language encoder adds its vision tokens.
    """

    generate_text_tokens: int
    train_text_tokens: int
    mlp_ratio: float = 4.0
    condition_image_area: int = 0
    vision_tokens: int = 0
    masked_batched_attention: bool = False


FAMILY_SHAPES = {
    # Prompt and negative prompt have different lengths: batching them needs a padding mask.
    "qwen-image": FamilyShapes(generate_text_tokens=128, train_text_tokens=1024, masked_batched_attention=True),
    # 1024x1024 condition -> Qwen2-VL processor (28 px per merged token): 37 x 37 vision tokens.
    "qwen-image-edit": FamilyShapes(
        128, 1024, condition_image_area=1024 * 1024, vision_tokens=37 * 37, masked_batched_attention=True
    ),
    # T5 is padded to 512 and attended without a mask.
    "flux": FamilyShapes(generate_text_tokens=512, train_text_tokens=512),
}

# Hub ids whose configs ship with the package (glance_lite/configs/<folder>/<component>_config.json).
SHIPPED_MODELS = {
    "Qwen/Qwen-Image": ("qwen-image", "QwenImagePipeline"),
    "Qwen/Qwen-Image-Edit": ("qwen-image", "QwenImageEditPipeline"),
    "black-forest-labs/FLUX.1-dev": ("flux1-dev", "FluxPipeline"),
}
CONFIGS_DIR = Path(__file__).resolve().parent / "configs"
STAGES = ("text_encode", "slow_phase", "fast_phase", "vae_decode", "train_step")
GENERATION_STEPS_DEFAULT = 10  # 5 slow + 5 fast


class PlanError(ValueError):
    """The planner cannot describe this model (unknown id, missing configs)."""


# =====================================================================================================================
# Model -> component configs (no weights, no downloads)
# =====================================================================================================================


@dataclass(frozen=True)
class ComponentConfig:
    name: str  # pipeline attribute: text_encoder, text_encoder_2, transformer, vae
    library: str  # diffusers | transformers
    class_name: str
    config_json: str  # the config as canonical JSON text (hashable, cache key)


@dataclass(frozen=True)
class ModelConfigs:
    model: str
    pipeline_class: str
    components: tuple[ComponentConfig, ...]
    scheduler_config_json: str

    def component(self, name: str) -> ComponentConfig | None:
        return next((c for c in self.components if c.name == name), None)


def _library_of(class_name: str) -> str:
    """Which library exports a class. `dir()` of the lazy top-level modules lists their exports without importing
    them all (hasattr would import every submodule in search of the name: seconds)."""
    import diffusers
    import transformers

    for library in (diffusers, transformers):
        if class_name in dir(library):
            return library.__name__
    raise PlanError(f"Neither diffusers nor transformers has a class named {class_name!r}.")


def _canonical(config: dict) -> str:
    return json.dumps(config, sort_keys=True)


def _shipped_configs(model: str) -> ModelConfigs:
    folder, pipeline_class = SHIPPED_MODELS[model]
    components = []
    for name in ("text_encoder", "text_encoder_2", "transformer", "vae"):
        path = CONFIGS_DIR / folder / f"{name}_config.json"
        if path.is_file():
            config = json.loads(path.read_text())
            class_name = config.get("_class_name") or config["architectures"][0]
            components.append(ComponentConfig(name, _library_of(class_name), class_name, _canonical(config)))
    scheduler = (CONFIGS_DIR / folder / "scheduler_config.json").read_text()
    return ModelConfigs(model, pipeline_class, tuple(components), _canonical(json.loads(scheduler)))


def _is_module_class(library: str, class_name: str) -> bool:
    import importlib

    import torch

    cls = getattr(importlib.import_module(library), class_name, None)
    return isinstance(cls, type) and issubclass(cls, torch.nn.Module)


def _configs_from_reader(model: str, read) -> ModelConfigs:
    """`read(relative_path) -> text | None` over a diffusers pipeline layout (folder or hub cache)."""
    index_text = read("model_index.json")
    if index_text is None:
        raise PlanError(f"{model}: no model_index.json (not a diffusers pipeline).")
    index = json.loads(index_text)
    components = []
    for name, entry in index.items():
        if name.startswith("_") or not isinstance(entry, list) or len(entry) != 2 or entry[0] is None:
            continue
        library, class_name = entry
        if library not in ("diffusers", "transformers") or not _is_module_class(library, class_name):
            continue
        text = read(f"{name}/config.json")
        if text is None:
            raise PlanError(f"{model}: component {name} has no {name}/config.json.")
        components.append(ComponentConfig(name, library, class_name, _canonical(json.loads(text))))
    scheduler = read("scheduler/scheduler_config.json")
    return ModelConfigs(model, index["_class_name"], tuple(components), _canonical(json.loads(scheduler or "{}")))


def _folder_reader(folder: Path):
    def read(relative: str) -> str | None:
        path = folder / relative
        return path.read_text() if path.is_file() else None

    return read


def _hub_cache_reader(repo_id: str):
    from huggingface_hub import try_to_load_from_cache

    def read(relative: str) -> str | None:
        found = try_to_load_from_cache(repo_id, relative)
        return Path(found).read_text() if isinstance(found, str) else None

    return read


@functools.lru_cache(maxsize=32)
def model_configs(model: str) -> ModelConfigs:
    """Component configs of a model id, from (in order) the shipped configs, the tiny models, a local folder or the
    local Hugging Face cache. Never downloads."""
    if model in SHIPPED_MODELS:
        return _shipped_configs(model)
    if model.startswith("tiny/"):
        from .tiny import tiny_model_path

        return _configs_from_reader(model, _folder_reader(tiny_model_path(model)))
    folder = Path(model).expanduser()
    if folder.is_dir():
        return _configs_from_reader(model, _folder_reader(folder))
    reader = _hub_cache_reader(model) if model.count("/") == 1 else None
    if reader is not None and reader("model_index.json") is not None:
        return _configs_from_reader(model, reader)
    raise PlanError(
        f"Cannot plan for {model!r}: it is not one of the models whose configs ship with glance_lite "
        f"({', '.join(SHIPPED_MODELS)}), not a tiny model (tiny/qwen-image, tiny/flux, tiny/qwen-image-edit), not a "
        "local pipeline folder, and its configs are not in the local Hugging Face cache. The planner never downloads: "
        "pass a folder or download the model first (`hf download <id> --local-dir DIR`)."
    )


# =====================================================================================================================
# Component inventory: every parameter-holding module of the meta-built architecture
# =====================================================================================================================


@dataclass(frozen=True)
class Layer:
    """One module that directly owns parameters. `weight_shape` is set for Linear / Conv2d (quantizable) layers."""

    name: str
    kind: str  # linear | conv2d | other
    weight_shape: tuple[int, ...] | None
    weight_numel: int
    other_numel: int  # bias, norm weights, embeddings, non-quantizable convs
    block: int | None  # index into Inventory.blocks when the layer lives in a repeated block
    keep_fp32: bool  # listed in the class's _keep_in_fp32_modules (kept in fp32 when loading in fp16)
    bnb_skip: bool  # transformers keeps it unquantized under bitsandbytes (output embeddings, tied weights)

    @property
    def numel(self) -> int:
        return self.weight_numel + self.other_numel


@dataclass(frozen=True)
class Inventory:
    """The parameter layout of one component, extracted once from the meta module and then pure data."""

    name: str
    class_name: str
    library: str
    config: dict = field(compare=False, hash=False)
    layers: tuple[Layer, ...] = ()
    blocks: tuple[str, ...] = ()  # module names of repeated blocks, in execution order
    has_lm_head: bool = False

    @property
    def num_params(self) -> int:
        return sum(layer.numel for layer in self.layers)

    def block_layers(self, index: int) -> list[Layer]:
        return [layer for layer in self.layers if layer.block == index]


def _config_for_module(library: str, class_name: str, config: dict):
    """(class, config object or filtered dict) ready to build on the meta device."""
    import importlib

    cls = getattr(importlib.import_module(library), class_name)
    clean = {k: v for k, v in config.items() if not k.startswith("_")}
    if library == "diffusers":
        accepted = inspect.signature(cls.__init__).parameters
        return cls, {k: v for k, v in clean.items() if k in accepted}
    return cls, cls.config_class.from_dict(clean)


def _matches(name: str, patterns: Iterable[str]) -> bool:
    return any(re.search(rf"(^|\.){re.escape(p)}(\.|$)", name) for p in patterns)


def _repeated_blocks(module) -> list[str]:
    """Names of the blocks diffusers' block-level group offloading streams: items of top-level ModuleLists."""
    import torch

    names = []
    for child_name, child in module.named_children():
        if isinstance(child, (torch.nn.ModuleList, torch.nn.Sequential)):
            names += [f"{child_name}.{i}" for i in range(len(child))]
    return names


def _bnb_skipped(module, library: str) -> list[str]:
    if library != "transformers":
        return []
    from transformers.quantizers.base import get_keys_to_not_convert

    return list(get_keys_to_not_convert(module))


@functools.lru_cache(maxsize=64)
def _inventory(name: str, library: str, class_name: str, config_json: str) -> Inventory:
    import torch
    from accelerate import init_empty_weights

    config = json.loads(config_json)
    cls, cfg = _config_for_module(library, class_name, config)
    with init_empty_weights():
        module = cls.from_config(cfg) if library == "diffusers" else cls(cfg)
    if library == "transformers":
        module.tie_weights()  # not applied under init_empty_weights; from_pretrained ties (T5: shared = embed_tokens)
    blocks = _repeated_blocks(module)
    block_index = {block: i for i, block in enumerate(blocks)}
    keep_fp32 = list(getattr(module, "_keep_in_fp32_modules", None) or [])
    bnb_skip = _bnb_skipped(module, library)
    seen: set[int] = set()
    layers = []
    for module_name, sub in module.named_modules():
        params = [p for p in sub.parameters(recurse=False) if id(p) not in seen]
        if not params:
            continue
        seen.update(id(p) for p in params)
        kind = "linear" if isinstance(sub, torch.nn.Linear) else "conv2d" if isinstance(sub, torch.nn.Conv2d) else "other"
        weight = getattr(sub, "weight", None) if kind != "other" else None
        if weight is not None and id(weight) not in {id(p) for p in params}:
            weight = None  # a tied weight counted elsewhere
        weight_numel = weight.numel() if weight is not None else 0
        owner = next((b for b in _prefixes(module_name) if b in block_index), None)
        layers.append(
            Layer(
                name=module_name,
                kind=kind if weight is not None else "other",
                weight_shape=tuple(weight.shape) if weight is not None else None,
                weight_numel=weight_numel,
                other_numel=sum(p.numel() for p in params) - weight_numel,
                block=block_index.get(owner) if owner else None,
                keep_fp32=_matches(module_name, keep_fp32),
                bnb_skip=_matches(module_name, bnb_skip),
            )
        )
    has_lm_head = library == "transformers" and module.get_output_embeddings() is not None
    return Inventory(name, class_name, library, config, tuple(layers), tuple(blocks), has_lm_head)


def _prefixes(name: str) -> list[str]:
    parts = name.split(".")
    return [".".join(parts[:i]) for i in range(len(parts), 0, -1)]


def inventory(component: ComponentConfig) -> Inventory:
    """The parameter layout of a component (cached per config)."""
    return _inventory(component.name, component.library, component.class_name, component.config_json)


# =====================================================================================================================
# Bytes: dtype and quantization rules, exactly as optimum-quanto / bitsandbytes store weights
# =====================================================================================================================


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
    components we quantize have no Conv2d). bitsandbytes (transformers / diffusers `BitsAndBytesConfig`) replaces
    nn.Linear except the modules transformers keeps in full precision (output embeddings, `_keep_in_fp32_modules`).
    Embeddings, norms and biases are never quantized.
    """
    if quantization == "none" or layer.weight_shape is None:
        return False
    if quantization.startswith("quanto-"):
        return layer.kind in ("linear", "conv2d")
    return layer.kind == "linear" and not layer.bnb_skip and not layer.keep_fp32


def quantized_weight_bytes(shape: tuple[int, ...], quantization: str, dtype_bytes: int) -> int:
    """Bytes of one quantized weight with its scales, as the library stores it (see the tests for the check).

    quanto 8-bit (qint8, qfloat8): 1 byte per weight + one scale per output channel (weight dtype) + the module's
    input/output scale scalars. quanto qint4: 4-bit packed + scale and shift per group of input features.
    bnb-nf4: 4-bit packed + fp32 absmax per 64 weights + the code table. bnb-int8: 1 byte + fp32 scale per row.
    """
    out_features = shape[0]
    numel = math.prod(shape)
    in_features = numel // out_features
    if quantization in ("quanto-qfloat8", "quanto-qint8"):
        return numel + out_features * dtype_bytes + 2 * dtype_bytes
    if quantization == "quanto-qint4":
        group = _quanto_int4_group_size(in_features)
        scales = numel // group if group else out_features
        return numel // 2 + 2 * scales * dtype_bytes + 2 * dtype_bytes
    if quantization == "bnb-nf4":
        return math.ceil(numel / 2) + math.ceil(numel / BNB_4BIT_BLOCKSIZE) * 4 + BNB_4BIT_CODE_BYTES
    if quantization == "bnb-int8":
        return numel + out_features * 4
    raise ValueError(f"unknown quantization {quantization!r}")


def layer_bytes(layer: Layer, dtype: str, quantization: str = "none") -> int:
    """Bytes of one layer's parameters under a dtype and quantization (fp16 loads keep `_keep_in_fp32_modules`)."""
    dtype_bytes = 4 if (layer.keep_fp32 and dtype == "float16") else DTYPE_BYTES[dtype]
    if quantizes(layer, quantization):
        return quantized_weight_bytes(layer.weight_shape, quantization, dtype_bytes) + layer.other_numel * dtype_bytes
    return layer.numel * dtype_bytes


def component_bytes(inv: Inventory, dtype: str, quantization: str = "none", block: int | None = -1) -> int:
    """Bytes of a whole component (block=-1), of one repeated block (block=i) or of everything outside the blocks
    (block=None)."""
    layers = inv.layers if block == -1 else [layer for layer in inv.layers if layer.block == block]
    return sum(layer_bytes(layer, dtype, quantization) for layer in layers)


def largest_quantized_weight(inv: Inventory, quantization: str) -> int:
    """Elements of the biggest weight that is quantized: dequantized whole into the compute dtype while it runs."""
    return max((layer.weight_numel for layer in inv.layers if quantizes(layer, quantization)), default=0)


# =====================================================================================================================
# LoRA
# =====================================================================================================================


def lora_target_layers(inv: Inventory, target_modules: Iterable[str]) -> list[Layer]:
    """Linear layers peft wraps for these target names (a name matches itself or a `.`-suffix, as in peft)."""
    targets = tuple(target_modules)
    return [
        layer
        for layer in inv.layers
        if layer.kind == "linear" and any(layer.name == t or layer.name.endswith("." + t) for t in targets)
    ]


def lora_param_count(inv: Inventory, target_modules: Iterable[str], rank: int) -> int:
    """Parameters of one LoRA adapter: rank x (in + out) per wrapped Linear (A: r x in, B: out x r, no bias).

    Qwen-Image, rank 32 on the Glance targets: 720 layers, 235,929,600 parameters.
    """
    return sum(rank * (layer.weight_shape[0] + layer.weight_shape[1]) for layer in lora_target_layers(inv, target_modules))


def lora_block_params(inv: Inventory, target_modules: Iterable[str], rank: int) -> dict[int | None, int]:
    """LoRA parameters per repeated block (None: outside the blocks): they travel with their block when streamed."""
    per_block: dict[int | None, int] = {}
    for layer in lora_target_layers(inv, target_modules):
        per_block[layer.block] = per_block.get(layer.block, 0) + rank * (layer.weight_shape[0] + layer.weight_shape[1])
    return per_block


def lora_wrapped_weight_params(inv: Inventory, target_modules: Iterable[str]) -> dict[int | None, int]:
    """Weight elements of the Linears the LoRAs wrap, per block: what `fuse_lora` keeps a second copy of."""
    per_block: dict[int | None, int] = {}
    for layer in lora_target_layers(inv, target_modules):
        per_block[layer.block] = per_block.get(layer.block, 0) + layer.weight_numel
    return per_block


# =====================================================================================================================
# Activations
# =====================================================================================================================


@dataclass(frozen=True)
class Tokens:
    image: int
    text: int
    condition: int = 0

    @property
    def total(self) -> int:
        return self.image + self.text + self.condition


def transformer_hidden_size(inv: Inventory) -> int:
    config = inv.config
    return int(config["num_attention_heads"]) * int(config["attention_head_dim"])


def transformer_inference_activations(
    inv: Inventory, tokens: Tokens, batch: int, dtype: str, mlp_ratio: float, attention_mask: bool = False
) -> int:
    """Peak activation bytes of one no-grad transformer forward; only one block's temporaries live at a time.

    unit = batch x tokens x hidden x dtype
    bytes = max(INFER_ATTENTION_UNITS x unit + mask, (INFER_MLP_BASE_UNITS + INFER_MLP_COPIES x mlp_ratio) x unit)
            + INFER_OUTSIDE_UNITS x unit,     mask = batch x heads x tokens^2 x dtype if attention_mask else 0
    """
    dtype_bytes = DTYPE_BYTES[dtype]
    unit = batch * tokens.total * transformer_hidden_size(inv) * dtype_bytes
    mask = batch * int(inv.config["num_attention_heads"]) * tokens.total**2 * dtype_bytes if attention_mask else 0
    attention = INFER_ATTENTION_UNITS * unit + mask
    mlp = (INFER_MLP_BASE_UNITS + INFER_MLP_COPIES * mlp_ratio) * unit
    return int(max(attention, mlp) + INFER_OUTSIDE_UNITS * unit)


def transformer_training_activations(
    inv: Inventory, tokens: Tokens, batch: int, dtype: str, mlp_ratio: float, checkpointing: bool
) -> int:
    """Peak activation bytes of one training step (forward + backward).

    With gradient checkpointing: every block's input is kept (TRAIN_CHECKPOINT_UNITS_PER_BLOCK x blocks) and one
    block at a time is re-run with autograd (TRAIN_BLOCK_SAVED_UNITS + TRAIN_MLP_SAVED_COPIES x mlp_ratio) while
    gradients flow (TRAIN_GRAD_UNITS). Without it every block keeps its saved tensors.
    """
    unit = batch * tokens.total * transformer_hidden_size(inv) * DTYPE_BYTES[dtype]
    block = TRAIN_BLOCK_SAVED_UNITS + TRAIN_MLP_SAVED_COPIES * mlp_ratio
    blocks = len(inv.blocks)
    if checkpointing:
        units = TRAIN_CHECKPOINT_UNITS_PER_BLOCK * blocks + block + TRAIN_GRAD_UNITS
    else:
        units = block * blocks + TRAIN_GRAD_UNITS
    return int(unit * (units + TRAIN_OUTSIDE_UNITS))


def _text_dims(inv: Inventory) -> tuple[int, int, int, int]:
    """(hidden, intermediate, layers, vocab) of a transformers text encoder's language model."""
    config = inv.config.get("text_config", inv.config)
    hidden = config.get("hidden_size") or config.get("d_model") or inv.config.get("hidden_size") or inv.config["d_model"]
    inter = config.get("intermediate_size") or config.get("d_ff") or inv.config.get("intermediate_size") or inv.config["d_ff"]
    layers = config.get("num_hidden_layers") or config.get("num_layers") or inv.config.get("num_hidden_layers") or 1
    vocab = config.get("vocab_size") or inv.config.get("vocab_size") or 0
    return int(hidden), int(inter), int(layers), int(vocab)


def text_encoder_activations(inv: Inventory, tokens: int, dtype: str) -> int:
    """Bytes of one prompt's forward: all hidden states kept + one layer's attention/MLP temporaries + the logits
    of a causal-LM head. tokens x (hidden x (layers + 1 + TEXT_LIVE_HIDDEN) + inter x TEXT_LIVE_MLP + vocab)."""
    hidden, inter, layers, vocab = _text_dims(inv)
    per_token = hidden * (layers + 1 + TEXT_LIVE_HIDDEN) + inter * TEXT_LIVE_MLP + (vocab if inv.has_lm_head else 0)
    return int(tokens * per_token * DTYPE_BYTES[dtype])


def vae_tile_side(inv: Inventory) -> int:
    """Output pixels per tile side when tiling: fixed 256 in AutoencoderKLQwenImage, `sample_size` in AutoencoderKL
    (1024 in FLUX.1-dev's config, so FLUX only tiles above 1024 px)."""
    if inv.class_name == "AutoencoderKLQwenImage":
        return 256
    return int(inv.config.get("sample_size", 1024))


def vae_width(inv: Inventory) -> int:
    """Channels of the VAE's full-resolution stage, which its activations scale with."""
    config = inv.config
    if "base_dim" in config:
        return int(config["base_dim"]) * int(config.get("dim_mult", [1])[0])
    return int(config.get("block_out_channels", [128])[0])


def vae_activations(inv: Inventory, height: int, width: int, dtype: str, tiling: bool, direction: str) -> int:
    """Bytes of a VAE decode/encode: measured elements per pixel and channel (VAE_ELEMENTS_PER_PIXEL_PER_CHANNEL)
    x full-resolution channels x pixels x dtype. With tiling, one tile is in flight (at VAE_TILE_OVERHEAD) plus
    the decoded tiles and the blended output."""
    table = VAE_ELEMENTS_PER_PIXEL_PER_CHANNEL.get(inv.class_name, VAE_ELEMENTS_PER_PIXEL_PER_CHANNEL["AutoencoderKLQwenImage"])
    per_pixel = table[direction] * vae_width(inv)
    pixels = height * width
    side = vae_tile_side(inv)
    if not tiling or pixels <= side * side:  # small enough: the VAE does not tile
        return int(per_pixel * pixels * DTYPE_BYTES[dtype])
    elements = per_pixel * VAE_TILE_OVERHEAD * side * side + VAE_TILED_OUTPUT_ELEMENTS_PER_PIXEL * pixels
    return int(elements * DTYPE_BYTES[dtype])


# =====================================================================================================================
# The plan
# =====================================================================================================================


@dataclass(frozen=True)
class ComponentPlan:
    """Sizes of one component under its policy."""

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
        """Largest predicted peak on any GPU (system RAM on a CPU-only profile)."""
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
        }


@dataclass(frozen=True)
class MemoryPlan:
    """Per-stage predictions for one model, profile and image size. What callers rely on: `stages[name].peak_bytes`
    / `.fits` / `.peak(device)`, `fits`, `peak_gpu_bytes`, `verdict()`, `leaner_profile_hint()`, `to_dict()`
    (every number, JSON-ready) and, for a sharded transformer, `device_map` (module name -> GPU index, accelerate's
    format: pass it to `from_pretrained(device_map=...)` / `dispatch_model` to get exactly the planned split)."""

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
            if self.profile.device == "cpu":
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
        here = self.profile
        best = None
        for name in list_profiles():
            other = load_profile(name)
            if other.name == here.name or other.device != here.device or other.compute_dtype != here.compute_dtype:
                continue
            if (other.min_compute_capability or 0) > (here.min_compute_capability or 0) or other.num_gpus > here.num_gpus:
                continue
            options = dict(self.options, num_gpus=None)  # the candidate uses its own GPU count
            candidate = plan(self.model, other, self.height, self.width, **options)
            if candidate.peak_gpu_bytes >= self.peak_gpu_bytes:
                continue
            key = (candidate.peak_gpu_bytes, other.gpu_memory_gb or 0)
            if best is None or key > best[0]:
                best = (key, other.name)
        return best[1] if best else None

    # ---- ranking (auto selection) ------------------------------------------------------------------------------
    @property
    def traffic_bytes_per_image(self) -> int:
        """Weight bytes moved per generated image: a proxy for what offloading costs in time.

        group_offload streams its weights every transformer forward; model_offload moves them once per image;
        evict_after_use reads the checkpoint from disk again (its unquantized size, whatever the quantization);
        work placed on the CPU counts CPU_PLACEMENT_TRAFFIC_FACTOR times.
        """
        total = 0
        for comp in self.components.values():
            weights = comp.bytes + comp.adapter_bytes
            if comp.placement == "group_offload":
                total += weights * (self.transformer_forwards if comp.name == "transformer" else 1)
            elif comp.placement == "model_offload":
                total += weights
            elif comp.placement == "evict_after_use":
                total += comp.full_precision_bytes
            elif comp.placement == "cpu" and self.profile.device != "cpu":
                total += weights * CPU_PLACEMENT_TRAFFIC_FACTOR
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
            "height": self.height,
            "width": self.width,
            "lora_rank": self.lora_rank,
            "batch": self.batch,
            "tokens": {k: {"image": t.image, "text": t.text, "condition": t.condition} for k, t in self.tokens.items()},
            "transformer_forwards": self.transformer_forwards,
            "gpu_memory_bytes": self.profile.gpu_memory_bytes,
            "system_ram_bytes": self.profile.system_ram_bytes,
            "components": {name: vars(c).copy() for name, c in self.components.items()},
            "stages": {name: stage.to_dict() for name, stage in self.stages.items()},
            "peak_gpu_bytes": self.peak_gpu_bytes,
            "peak_ram_bytes": self.peak_ram_bytes,
            "fits": self.fits,
            "verdict": self.verdict(),
            "leaner_profile": None if self.fits else self.leaner_profile_hint(),
            "traffic_bytes_per_image": self.traffic_bytes_per_image,
            "device_map": self.device_map,
            "phase_plan": self.phase_plan,
        }

    def table(self) -> str:
        p = self.profile
        card = "CPU only" if p.device == "cpu" else f"{p.gpu_memory_gb:g} GiB GPU x{p.num_gpus}"
        lines = [
            f"Memory plan: {self.model} ({self.family}) at {self.width}x{self.height}, profile '{p.name}' "
            f"({card}, {p.system_ram_gb:g} GiB RAM)",
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
        gpu_peak = "" if p.device == "cpu" else f"{_gib(self.peak_gpu_bytes)} per GPU, "
        lines += ["", f"Peak over the run (max over stages, never the sum): {gpu_peak}{_gib(self.peak_ram_bytes)} RAM.",
                  "Verdict: " + self.verdict()]  # fmt: skip
        phases = self.phase_plan.get("phases", {})
        if phases:
            lines.append(
                "Timesteps: " + "; ".join(f"{name} " + ", ".join(f"{t:.1f}" for t in ts) for name, ts in phases.items())
            )
        return "\n".join(lines)


def _gib(n: int) -> str:
    return f"{n / GiB:.2f} GiB"


# ---- building blocks of plan() ----------------------------------------------------------------------------------


def _gpu(profile: Profile, policy: ComponentPolicy) -> str:
    return "cpu" if profile.device == "cpu" or policy.placement == "cpu" else f"cuda:{policy.gpu}"


def _family(pipeline_class: str):
    from .families import family_for_pipeline_class

    return family_for_pipeline_class(pipeline_class)


def _component_plan(
    inv: Inventory, policy: ComponentPolicy, lora: dict[int | None, int], adapters: int, fused_copy: dict[int | None, int]
) -> ComponentPlan:
    """Sizes of one component under its policy; `lora` = adapter parameters per block, `adapters` = how many,
    `fused_copy` = weight elements per block kept a second time by fuse_lora."""
    dtype_bytes = DTYPE_BYTES[policy.dtype]
    extra = {block: adapters * lora.get(block, 0) + fused_copy.get(block, 0) for block in {*lora, *fused_copy}}
    per_block = [
        component_bytes(inv, policy.dtype, policy.quantization, block=i) + extra.get(i, 0) * dtype_bytes
        for i in range(len(inv.blocks))
    ]
    adapter_params = adapters * sum(lora.values())
    fused_copy_bytes = sum(fused_copy.values()) * dtype_bytes
    return ComponentPlan(
        name=inv.name,
        params=inv.num_params,
        dtype=policy.dtype,
        quantization=policy.quantization,
        placement=policy.placement,
        bytes=component_bytes(inv, policy.dtype, policy.quantization),
        full_precision_bytes=component_bytes(inv, policy.dtype, "none"),
        blocks=len(inv.blocks),
        largest_block_bytes=max(per_block, default=0),
        outside_blocks_bytes=component_bytes(inv, policy.dtype, policy.quantization, block=None)
        + extra.get(None, 0) * dtype_bytes,
        adapter_bytes=adapter_params * dtype_bytes + fused_copy_bytes,
        adapter_params=adapter_params,
        fused_copy_bytes=fused_copy_bytes,
        block_bytes=tuple(per_block),
    )


def _group_window(comp: ComponentPlan, blocks_per_group: int, use_stream: bool) -> int:
    """Bytes of the blocks in flight under group offloading: groups in flight x blocks per group x largest block."""
    if comp.blocks == 0:  # no repeated blocks: the whole module is one group
        return comp.bytes + comp.adapter_bytes
    return GROUP_OFFLOAD_IN_FLIGHT[bool(use_stream)] * min(blocks_per_group, comp.blocks) * comp.largest_block_bytes


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


def _add(target: dict[str, int], device: str, value: int) -> None:
    if value:
        target[device] = target.get(device, 0) + int(value)


@dataclass
class _Ctx:
    """Everything the stage builders share for one plan() call."""

    profile: Profile
    inventories: dict[str, Inventory]
    comps: dict[str, ComponentPlan]
    gpu_budget: int
    ram_budget: int
    num_gpus: int
    shard_of: dict[int, str] = field(default_factory=dict)  # transformer block -> device when sharded

    def policy(self, name: str) -> ComponentPolicy:
        return self.profile.component(name)

    def gpus(self) -> list[str]:
        return [] if self.profile.device == "cpu" else [f"cuda:{i}" for i in range(self.num_gpus)]

    def budget(self) -> dict[str, int]:
        budget = {gpu: self.gpu_budget for gpu in self.gpus()}
        budget["cpu"] = self.ram_budget
        return budget


def _held_everywhere(ctx: _Ctx, weights: dict[str, int], ram: dict[str, int], active: tuple[str, ...]) -> None:
    """Weights that stay put whatever the stage: resident / sharded components on their GPUs, and whatever lives in
    system RAM (model_offload, group_offload, cpu; the manager also parks an evict_after_use VAE in RAM rather
    than reloading it). Components active in this stage are placed by `_active_weights`."""
    for name, comp in ctx.comps.items():
        policy = ctx.policy(name)
        total = comp.bytes + comp.adapter_bytes
        if name not in active and policy.placement == "resident":
            _add(weights, _gpu(ctx.profile, policy), total)
        elif name not in active and policy.placement == "sharded":
            _add_sharded(ctx, weights, comp)
        in_ram = policy.placement in ("model_offload", "group_offload", "cpu") or (
            name == "vae" and policy.placement == "evict_after_use"
        )
        if in_ram:
            copies = GROUP_OFFLOAD_RAM_COPIES if policy.placement == "group_offload" else 1
            _add(ram, "cpu", total * copies)


def _add_sharded(ctx: _Ctx, weights: dict[str, int], comp: ComponentPlan) -> None:
    """A sharded component: each block on the GPU the shard plan gave it, everything else on cuda:0."""
    for i, size in enumerate(comp.block_bytes):
        _add(weights, ctx.shard_of.get(i, "cuda:0"), size)
    _add(weights, "cuda:0", comp.outside_blocks_bytes)


def _active_weights(ctx: _Ctx, name: str, weights: dict[str, int], streamed: dict[str, int]) -> tuple[str, int]:
    """Place an active component's weights for its stage. Returns (device its computation runs on, RAM it needs
    transiently: a component loaded from disk for this stage passes through RAM one checkpoint shard at a time)."""
    comp, policy = ctx.comps[name], ctx.policy(name)
    device = _gpu(ctx.profile, policy)
    total = comp.bytes + comp.adapter_bytes
    if policy.placement == "sharded":
        _add_sharded(ctx, weights, comp)
        return "cuda:0", 0
    if policy.placement == "group_offload" and device != "cpu":
        _add(weights, device, comp.outside_blocks_bytes if comp.blocks else 0)
        _add(streamed, device, _group_window(comp, policy.blocks_per_group or 1, policy.use_stream))
        return device, 0
    if device != "cpu":  # resident / evict_after_use / model_offload: the whole component on its GPU
        _add(weights, device, total)
    # (a component placed on the CPU is already counted in RAM by _held_everywhere)
    reload = policy.placement == "evict_after_use" and name != "vae"
    return device, min(LOAD_SHARD_BYTES, total) if reload else 0


def _overheads(devices: Iterable[str], extra_ram: int = 0) -> dict[str, int]:
    """CUDA context on every GPU in use; the process baseline (+ a shard being loaded) in RAM."""
    overhead = {d: CUDA_CONTEXT_BYTES for d in devices if d != "cpu"}
    overhead["cpu"] = RAM_BASELINE_BYTES["cuda" if overhead else "cpu"] + extra_ram
    return overhead


def _dequant_transient(ctx: _Ctx, name: str, dtype: str, quantization: str) -> int:
    return largest_quantized_weight(ctx.inventories[name], quantization) * DTYPE_BYTES[dtype]


def _stage(ctx: _Ctx, name: str, active: tuple[str, ...], activations_by_component: dict[str, int], notes=()) -> StagePlan:
    """Bytes per device while `active` components work: what is held anyway + the active weights (or their
    streamed window) + the largest activation estimate on each device + context / baseline overhead."""
    weights: dict[str, int] = {}
    streamed: dict[str, int] = {}
    ram: dict[str, int] = {}
    activations: dict[str, int] = {}
    loading = 0
    _held_everywhere(ctx, weights, ram, active)
    for component in active:
        device, load = _active_weights(ctx, component, weights, streamed)
        loading = max(loading, load)
        acts = activations_by_component.get(component, 0)
        targets = sorted(set(ctx.shard_of.values()) | {"cuda:0"}) if ctx.policy(component).placement == "sharded" else [device]
        for target in targets:
            activations[target] = max(activations.get(target, 0), acts)
    for device, value in ram.items():
        _add(weights, device, value)
    used = set(ctx.gpus()) & (set(weights) | set(streamed) | set(activations))
    overhead = _overheads(used or ctx.gpus()[:1], extra_ram=loading)
    return StagePlan(name, active, weights, streamed, activations, overhead, ctx.budget(), tuple(notes))


def _train_stage(ctx: _Ctx, inv: Inventory, tokens: Tokens, lora_params: int, mlp_ratio: float, batch: int) -> StagePlan:
    """One LoRA step on GPU 0 (or the CPU): frozen base (training quantization, block offload), fp32 LoRA weights,
    gradients and optimizer state, checkpointed activations. Text embeddings and latents are cached beforehand,
    so neither the text encoder nor the VAE is loaded."""
    training = ctx.profile.training
    dtype = training.dtype
    device = "cpu" if ctx.profile.device == "cpu" else "cuda:0"
    base = component_bytes(inv, dtype, training.base_quantization)
    outside = component_bytes(inv, dtype, training.base_quantization, block=None)
    largest = max((component_bytes(inv, dtype, training.base_quantization, block=i) for i in range(len(inv.blocks))), default=0)
    weights: dict[str, int] = {}
    streamed: dict[str, int] = {}
    ram_held = 0
    if training.block_offload and device != "cpu":
        _add(weights, device, outside)
        _add(streamed, device, GROUP_OFFLOAD_IN_FLIGHT[True] * (training.blocks_per_group or 1) * largest)
        ram_held = base * GROUP_OFFLOAD_RAM_COPIES
    else:
        _add(weights, device, base)
    optimizer = OPTIMIZER_STATE_BYTES[training.optimizer]
    trainable = lora_params * (LORA_TRAIN_PARAM_BYTES + LORA_GRAD_BYTES + optimizer)
    _add(weights, device, trainable)
    acts = transformer_training_activations(inv, tokens, batch, dtype, mlp_ratio, training.gradient_checkpointing)
    acts += _dequant_transient(ctx, "transformer", dtype, training.base_quantization)
    activations = {device: int(acts * ACTIVATION_SLACK)}
    overhead = _overheads([device] if device != "cpu" else [], extra_ram=LOAD_SHARD_BYTES if device != "cpu" else 0)
    if ram_held:
        _add(weights, "cpu", ram_held)
    notes = (
        f"{lora_params:,} trainable LoRA parameters: fp32 weights + grads + {training.optimizer} state = {_gib(trainable)}",
        f"frozen base {training.base_quantization} in {dtype}: {_gib(base)}"
        + (" streamed block by block" if training.block_offload else " resident"),
    )
    return StagePlan("train_step", ("transformer",), weights, streamed, activations, overhead, ctx.budget(), notes)


def _phase_plan(configs: ModelConfigs, height: int, width: int, mode: str) -> dict:
    from .schedule import PhaseSplit, glance_plan, image_seq_len

    scheduler = json.loads(configs.scheduler_config_json)
    if not scheduler:
        return {}
    return glance_plan(scheduler, image_seq_len(height, width), PhaseSplit(), mode).to_dict()


def plan(
    model: str,
    profile: Profile | str,
    height: int = 1024,
    width: int = 1024,
    lora_rank: int | None = None,
    text_tokens: int | None = None,
    train_text_tokens: int | None = None,
    true_cfg_scale: float | None = None,
    steps: int = GENERATION_STEPS_DEFAULT,
    train_batch_size: int = 1,
    gpu_memory_gb: float | None = None,
    system_ram_gb: float | None = None,
    num_gpus: int | None = None,
    mode: str = "consistent",
) -> MemoryPlan:
    """Predict the memory of every stage of generating (and training on) `model` with `profile`.

    Pure computation: reads configs, builds meta modules (cached), returns a `MemoryPlan`. `lora_rank` defaults to
    the family's training rank (32 Qwen-Image, 16 FLUX); `text_tokens` to the family's typical prompt length at
    generation (`FAMILY_SHAPES`); `gpu_memory_gb` / `system_ram_gb` / `num_gpus` override the profile's budgets
    (auto selection plans against the detected hardware this way).
    """
    profile = load_profile(profile)
    if height % 16 or width % 16 or height <= 0 or width <= 0:
        raise PlanError(f"height and width must be positive multiples of 16, got {width}x{height}.")
    configs = model_configs(model)
    family = _family(configs.pipeline_class)
    shapes = FAMILY_SHAPES[family.name]
    rank = lora_rank or family.recipe.rank
    inventories = {c.name: inventory(c) for c in configs.components}
    transformer = inventories["transformer"]

    lora = lora_block_params(transformer, family.lora_target_modules, rank)
    fused_copy = lora_wrapped_weight_params(transformer, family.lora_target_modules) if profile.fuse_lora else {}
    comps = {
        name: _component_plan(inv, profile.component(name), lora, 2, fused_copy)
        if name == "transformer"
        else _component_plan(inv, profile.component(name), {}, 0, {})
        for name, inv in inventories.items()
    }
    gpus = profile.num_gpus if num_gpus is None else num_gpus
    ctx = _Ctx(
        profile, inventories, comps,
        gpu_budget=int((gpu_memory_gb if gpu_memory_gb is not None else profile.gpu_memory_gb or 0) * GiB),
        ram_budget=int((system_ram_gb if system_ram_gb is not None else profile.system_ram_gb) * GiB),
        num_gpus=0 if profile.device == "cpu" else max(gpus, 1),
    )  # fmt: skip

    # ---- token counts and batch
    from .schedule import image_seq_len

    image_tokens = image_seq_len(height, width)
    condition = image_seq_len(int(math.sqrt(shapes.condition_image_area)), int(math.sqrt(shapes.condition_image_area))) if shapes.condition_image_area else 0
    gen_text = (text_tokens or shapes.generate_text_tokens) + shapes.vision_tokens
    train_text = (train_text_tokens or shapes.train_text_tokens) + shapes.vision_tokens
    cfg_scale = family.default_true_cfg_scale if true_cfg_scale is None else true_cfg_scale
    passes = 2 if cfg_scale > 1 else 1
    batch = passes if profile.batch_cfg else 1
    forwards = steps * (1 if profile.batch_cfg else passes)
    tokens = {"generate": Tokens(image_tokens, gen_text, condition), "train": Tokens(image_tokens, train_text, condition)}

    # ---- activations per component (the largest moment of each)
    tpolicy = profile.component("transformer")
    compute = profile.compute_dtype
    transformer_acts = int(
        (transformer_inference_activations(transformer, tokens["generate"], batch, compute, shapes.mlp_ratio,
                                           attention_mask=shapes.masked_batched_attention and batch > 1)
         + _dequant_transient(ctx, "transformer", compute, tpolicy.quantization)) * ACTIVATION_SLACK
    )  # fmt: skip
    text_names = tuple(n for n in inventories if n.startswith("text_encoder"))
    text_acts = {
        n: int(
            (text_encoder_activations(inventories[n], gen_text, profile.component(n).dtype)
             + _dequant_transient(ctx, n, profile.component(n).dtype, profile.component(n).quantization)) * ACTIVATION_SLACK
        )
        for n in text_names
    }  # fmt: skip
    vae_policy = profile.component("vae")
    vae_decode = int(vae_activations(inventories["vae"], height, width, vae_policy.dtype, vae_policy.tiling, "decode") * ACTIVATION_SLACK)

    # ---- sharding (multi-GPU): split the transformer blocks across GPUs by what each GPU has left
    device_map: dict[str, int] = {}
    if tpolicy.placement == "sharded":
        ctx.shard_of, device_map = _shard_plan(ctx, {"transformer": transformer_acts, "vae": vae_decode, **text_acts})

    # ---- stages
    denoise = ("transformer",)
    denoise_acts = {"transformer": transformer_acts}
    notes = [f"{tokens['generate'].total} tokens x batch {batch}; {forwards} transformer forwards per image"]
    if shapes.masked_batched_attention and batch > 1:
        mask = batch * int(transformer.config["num_attention_heads"]) * tokens["generate"].total ** 2 * DTYPE_BYTES[compute]
        notes.append(
            f"batched CFG with a padding mask: SDPA expands it to a {_gib(mask)} attention bias per call "
            "(none when prompt and negative prompt have the same length, or with batch_cfg: false)"
        )
    if shapes.condition_image_area:
        side = int(math.sqrt(shapes.condition_image_area))
        denoise = ("transformer", "vae")
        denoise_acts["vae"] = int(vae_activations(inventories["vae"], side, side, vae_policy.dtype, vae_policy.tiling, "encode") * ACTIVATION_SLACK)
        notes.append("edit: the VAE encodes the condition image in this stage")
    stages = {
        "text_encode": _stage(ctx, "text_encode", text_names, text_acts, [f"{gen_text} prompt tokens per prompt"]),
        "slow_phase": _stage(ctx, "slow_phase", denoise, denoise_acts, notes),
        "fast_phase": _stage(ctx, "fast_phase", denoise, denoise_acts, notes),
        "vae_decode": _stage(ctx, "vae_decode", ("vae",), {"vae": vae_decode}),
        "train_step": _train_stage(
            ctx, transformer, tokens["train"], lora_param_count(transformer, family.lora_target_modules, rank),
            shapes.mlp_ratio, train_batch_size,
        ),
    }  # fmt: skip
    options = dict(
        lora_rank=lora_rank, text_tokens=text_tokens, train_text_tokens=train_text_tokens, true_cfg_scale=true_cfg_scale,
        steps=steps, train_batch_size=train_batch_size, gpu_memory_gb=gpu_memory_gb, system_ram_gb=system_ram_gb,
        num_gpus=num_gpus, mode=mode,
    )  # fmt: skip
    return MemoryPlan(
        model=model, family=family.name, profile=profile, height=height, width=width, lora_rank=rank, batch=batch,
        tokens=tokens, components=comps, stages=stages, transformer_forwards=forwards, device_map=device_map,
        phase_plan=_phase_plan(configs, height, width, mode), options=options,
    )  # fmt: skip


def _shard_plan(ctx: _Ctx, activations: dict[str, int]) -> tuple[dict[int, str], dict[str, int]]:
    """Block -> GPU for a sharded transformer, and the matching accelerate device map.

    Each GPU's share is what is left after the CUDA context, the components resident on it, and its worst moment
    besides: the transformer's own activations, or another component's stage there (e.g. the text encoder
    brought onto GPU 1 for the prompts, or the VAE decoding on GPU 0). `activations` maps component -> bytes.
    """
    comp, inv = ctx.comps["transformer"], ctx.inventories["transformer"]
    gpus = ctx.gpus()
    budgets = []
    for index, gpu in enumerate(gpus):
        resident, worst = 0, activations.get("transformer", 0)
        for name, other in ctx.comps.items():
            policy = ctx.policy(name)
            if name == "transformer" or _gpu(ctx.profile, policy) != gpu:
                continue
            if policy.placement == "resident":
                resident += other.bytes
                worst = max(worst, activations.get(name, 0))
            else:
                worst = max(worst, other.bytes + activations.get(name, 0))
        left = ctx.gpu_budget - CUDA_CONTEXT_BYTES - resident - worst
        budgets.append(left - (comp.outside_blocks_bytes if index == 0 else 0))
    assignment = shard_blocks(list(comp.block_bytes), budgets)
    shard_of = {i: gpus[g] for i, g in enumerate(assignment)}
    # accelerate's format (as infer_auto_device_map returns it): module name -> GPU index, covering every
    # parameter once; modules outside the repeated blocks go to GPU 0.
    outside = dict.fromkeys(layer.name.split(".")[0] for layer in inv.layers if layer.block is None)
    device_map = {name: 0 for name in outside}
    device_map.update({inv.blocks[i]: g for i, g in enumerate(assignment)})
    return shard_of, device_map


# =====================================================================================================================
# CLI
# =====================================================================================================================


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m glance_lite.plan",
        description="Predict per-stage GPU and RAM memory for a model and a hardware profile, offline, without weights.",
    )
    parser.add_argument("--model", default="Qwen/Qwen-Image", help="hub id, local pipeline folder or tiny/<name>")
    parser.add_argument("--profile", default="auto", help="built-in profile name, path to a YAML file, or auto")
    parser.add_argument("--height", type=int, default=1024)
    parser.add_argument("--width", type=int, default=1024)
    parser.add_argument("--lora-rank", type=int, default=None, help="default: the family's training rank")
    parser.add_argument("--text-tokens", type=int, default=None, help="prompt tokens at generation")
    parser.add_argument("--gpu-memory-gb", type=float, default=None, help="plan against this GPU size instead")
    parser.add_argument("--system-ram-gb", type=float, default=None, help="plan against this much RAM instead")
    parser.add_argument("--mode", default="consistent", choices=("consistent", "reference"), help="phase schedule")
    parser.add_argument("--json", action="store_true", help="print every number as JSON")
    parser.add_argument("--strict", action="store_true", help="exit with status 1 when the plan does not fit")
    args = parser.parse_args(argv)

    reason = None
    profile = args.profile
    if profile == "auto":
        from .profiles import select_profile

        profile, reason = select_profile(args.model, args.height, args.width)
    try:
        result = plan(
            args.model, profile, args.height, args.width, lora_rank=args.lora_rank, text_tokens=args.text_tokens,
            gpu_memory_gb=args.gpu_memory_gb, system_ram_gb=args.system_ram_gb, mode=args.mode,
        )  # fmt: skip
    except (PlanError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.json:
        data = result.to_dict()
        if reason:
            data["auto_reason"] = reason
        print(json.dumps(data, indent=2, default=str))
    else:
        if reason:
            print(reason + "\n")
        print(result.table())
    return 1 if (args.strict and not result.fits) else 0


if __name__ == "__main__":
    sys.exit(main())
