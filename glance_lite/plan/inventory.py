"""What a component is made of: every parameter-holding module of its architecture, built on the meta device.

The architecture is built from its config under `accelerate.init_empty_weights` (a 20B transformer in well under a
second, no weights), walked once, and kept as plain data (`Inventory`: layers with their shapes, the repeated
blocks that offloading streams, which layers the quantization libraries leave alone). Byte counts
(`plan.storage`) and LoRA sizes are pure functions of it.
"""

from __future__ import annotations

import functools
import inspect
import json
import re
from collections.abc import Iterable
from dataclasses import dataclass, field

from .configs import ComponentConfig


@dataclass(frozen=True)
class Layer:
    """One module that directly owns parameters. `weight_shape` is set for Linear / Conv2d (quantizable) layers."""

    name: str
    kind: str  # linear | conv2d | other
    weight_shape: tuple[int, ...] | None
    weight_numel: int
    other_numels: tuple[int, ...]  # bias, norm weights, embeddings, non-quantizable convs: one entry per tensor
    block: int | None  # index into Inventory.blocks when the layer lives in a repeated block
    keep_fp32: bool  # listed in the class's _keep_in_fp32_modules (kept in fp32 when loading in fp16)
    bnb_skip: bool  # transformers keeps it unquantized under bitsandbytes (output embeddings, tied weights)

    @property
    def other_numel(self) -> int:
        """Elements outside the quantizable weight (each tensor of `other_numels` is its own pinned allocation)."""
        return sum(self.other_numels)

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
    """Names of the blocks diffusers' block-level group offloading streams, numbered as the manager numbers them
    (`residency.repeated_blocks`): the plan's resident block i is the manager's block i."""
    from ..residency import repeated_blocks

    return [f"{name}.{i}" for name, blocks in repeated_blocks(module) for i in range(len(blocks))]


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
                other_numels=tuple(p.numel() for p in params if p is not weight),
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
