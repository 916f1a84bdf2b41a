"""Which phase LoRA the transformer computes with: switched by name, or fused into the weights for a phase.

Switched (every GPU profile): both adapters stay peft LoRA layers and the phase picks one by name. Nothing moves,
but each wrapped Linear runs its LoRA branch (two small matmuls) on every call: by FLOP count 1-2 % of a
full-size model's step, yet half a step on the tiny CPU models, where every extra module call costs as much as
a matmul.

Fused (profile `fuse_lora: true`, the cpu profile): as a phase starts, peft merges its adapter into the wrapped
weights, so a step costs what a base-model step costs. Undoing a merge by subtraction drifts by rounding, so the
first fusion keeps a copy of the weights the LoRAs wrap and every unfusion copies them back: fused phases leave no
trace, at the price of that copy (the planner counts it). Needs plain weights that stay where they are: no
quantization, no offload hooks moving them.

The sampler fuses for the length of one `sample()` call and restores the base weights when it ends, so outside
it the transformer always holds its own weights.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass
class _AdapterState:
    """What the transformer computes with now; kept on the transformer (`_glance_adapters`)."""

    enabled: bool | None = None  # peft's LoRA layers switched on (None: not known yet)
    active: str | None = None  # the adapter peft's flags select (None: not known yet)
    fused: str | None = None  # the adapter merged into the weights
    layers_for: tuple = ()  # adapter names `layers` was listed for
    layers: list = field(default_factory=list)  # peft LoRA layers
    originals: dict = field(default_factory=dict)  # LoRA layer -> [(base parameter, untouched copy of it)]


def _state(transformer) -> _AdapterState:
    state = getattr(transformer, "_glance_adapters", None)
    if state is None:
        state = _AdapterState()
        transformer._glance_adapters = state
    return state


def _lora_layers(transformer, state: _AdapterState) -> list:
    from peft.tuners.tuners_utils import BaseTunerLayer

    names = tuple(transformer.peft_config)
    if state.layers_for != names:  # adapters were added since: list the wrapped layers again
        state.layers = [m for m in transformer.modules() if isinstance(m, BaseTunerLayer)]
        state.layers_for = names
        state.enabled = state.active = None  # loading an adapter may have changed peft's flags
    return state.layers


def use_adapter(transformer, adapter: str | None, fuse: bool = False) -> None:
    """Make `adapter` the only active LoRA (None: the plain base model); `fuse` also merges it into the weights."""
    if not getattr(transformer, "peft_config", None):
        if adapter is not None:
            raise ValueError(f"Adapter {adapter!r} was requested but the transformer has no adapters loaded.")
        return
    if adapter is not None and adapter not in transformer.peft_config:
        raise ValueError(f"No adapter named {adapter!r}: the transformer holds {', '.join(transformer.peft_config)}.")
    state = _state(transformer)
    if fuse and adapter is not None and state.fused == adapter:
        return
    restore_base_weights(transformer)
    if fuse and adapter is not None:
        _fuse(transformer, state, adapter)
    else:
        _set_flags(transformer, state, adapter)


def _enable(layers, state: _AdapterState, enabled: bool) -> None:
    if state.enabled is not enabled:
        for layer in layers:
            layer.enable_adapters(enabled)
        state.enabled = enabled


def _set_flags(transformer, state: _AdapterState, adapter: str | None) -> None:
    """peft's per-layer switches, flipped on the cached layer list (the model-level calls walk every module)."""
    layers = _lora_layers(transformer, state)
    if adapter is not None and state.active != adapter:
        for layer in layers:
            layer.set_adapter([adapter])
        state.active = adapter
    _enable(layers, state, adapter is not None)


def _fuse(transformer, state: _AdapterState, adapter: str) -> None:
    """Merge `adapter` into the weights. A merged layer ignores which adapter is active, but a disabled one
    unmerges itself on its next call, so the layers are switched on first."""
    layers = _lora_layers(transformer, state)
    _enable(layers, state, True)
    with torch.no_grad():
        for layer in layers:
            if adapter not in layer.lora_A:
                continue
            if layer not in state.originals:
                state.originals[layer] = _merged_parameters(layer)
            layer.merge(adapter_names=[adapter])
    state.fused = adapter


def _merged_parameters(layer) -> list[tuple[torch.nn.Parameter, torch.Tensor]]:
    """What a merge can change, each with a copy: the weight, and the bias when an adapter carries one (lora_bias)."""
    base = layer.get_base_layer()
    params = [base.weight] + ([base.bias] if base.bias is not None and any(layer.lora_bias.values()) else [])
    return [(param, param.detach().clone()) for param in params]


def restore_base_weights(transformer) -> None:
    """Undo a fusion exactly: copy the kept weights back (peft's flags then decide again what computes)."""
    state = getattr(transformer, "_glance_adapters", None)
    if state is None or state.fused is None:
        return
    with torch.no_grad():
        for layer, originals in state.originals.items():
            for param, original in originals:
                param.copy_(original)
            layer.merged_adapters.clear()
    state.fused = None

