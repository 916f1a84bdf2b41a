"""Weight storage backends: what `from_pretrained` is told so a component is quantized while it loads, and the
same storage applied to a module that is already built (random-weight benchmarks, transformers models quanto has
no loader for).

The backends are the ecosystem's own: torchao through diffusers' / transformers' `TorchAoConfig`, bitsandbytes
through `BitsAndBytesConfig`, optimum-quanto through diffusers' `QuantoConfig` or `optimum.quanto.quantize`.
Which storage may go with which placement is `glance_lite.pairings`.
"""

from __future__ import annotations

import torch

_TORCHAO_CONFIGS = {"torchao-int8": "Int8WeightOnlyConfig", "torchao-float8": "Float8WeightOnlyConfig"}
_QUANTO_WEIGHTS = {"quanto-qfloat8": "qfloat8", "quanto-qint8": "qint8", "quanto-qint4": "qint4"}
_QUANTO_CONFIG_WEIGHTS = {"quanto-qfloat8": "float8", "quanto-qint8": "int8", "quanto-qint4": "int4"}


def torch_dtype(name: str) -> torch.dtype:
    return {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}[name]


def _torchao_config(quantization: str):
    import torchao.quantization

    return getattr(torchao.quantization, _TORCHAO_CONFIGS[quantization])()


def loading_kwargs(cls, quantization: str, dtype: str, device: torch.device) -> dict:
    """`from_pretrained` kwargs that quantize while loading (module by module, so RAM never holds it all)."""
    if quantization == "none":
        return {}
    is_diffusers = cls.__module__.startswith("diffusers")
    if quantization in _TORCHAO_CONFIGS:
        import diffusers
        import transformers

        config_cls = diffusers.TorchAoConfig if is_diffusers else transformers.TorchAoConfig
        return {"quantization_config": config_cls(_torchao_config(quantization))}
    if quantization.startswith("bnb-"):
        if device.type != "cuda" and is_diffusers:
            raise RuntimeError(
                f"bitsandbytes quantization ({quantization}) of a diffusers model loads only onto a CUDA GPU; this run "
                f"is on {device}. Use torchao-int8, or a profile without bitsandbytes for this component."
            )
        import diffusers
        import transformers

        config_cls = diffusers.BitsAndBytesConfig if is_diffusers else transformers.BitsAndBytesConfig
        if quantization == "bnb-nf4":
            config = config_cls(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch_dtype(dtype))
        else:
            config = config_cls(load_in_8bit=True)
        return {"quantization_config": config}
    if quantization in _QUANTO_WEIGHTS and is_diffusers:
        from diffusers import QuantoConfig

        return {"quantization_config": QuantoConfig(weights_dtype=_QUANTO_CONFIG_WEIGHTS[quantization])}
    return {}  # transformers models are quantized with quanto after loading (see quantize_after_load)


def quantize_after_load(module, quantization: str) -> None:
    """optimum-quanto for modules whose library has no working quanto loader (transformers text encoders)."""
    if quantization not in _QUANTO_WEIGHTS or getattr(module, "_glance_quantized", False):
        return
    if module.__class__.__module__.startswith("diffusers"):
        return  # diffusers' QuantoConfig quantized it while loading
    quantize_built(module, quantization)


def quantize_built(module: torch.nn.Module, quantization: str, only: str | None = None) -> torch.nn.Module:
    """Quantize an already-built module in place, the layers the loaders would: torchao and bitsandbytes-style
    storage replace Linear weights, quanto Linear and Conv2d weights (then frozen). `only`: the name of the one
    submodule to quantize (quanto replaces layers in their parent, so a lone Linear is quantized through it)."""
    if quantization in _TORCHAO_CONFIGS:
        from torchao.quantization import quantize_

        if only is None:
            quantize_(module, _torchao_config(quantization))
        else:
            quantize_(module, _torchao_config(quantization), filter_fn=lambda m, fqn: fqn == only and isinstance(m, torch.nn.Linear))
    elif quantization in _QUANTO_WEIGHTS:
        from optimum import quanto

        quanto.quantize(module, weights=getattr(quanto, _QUANTO_WEIGHTS[quantization]), include=only)
        quanto.freeze(module if only is None else module.get_submodule(only))
    elif quantization != "none":
        raise ValueError(f"{quantization} quantizes only while loading a checkpoint (bitsandbytes), not a built module.")
    module._glance_quantized = quantization != "none"
    return module
