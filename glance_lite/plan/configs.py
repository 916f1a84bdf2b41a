"""Model id -> the configs of its components, without weights and without a network.

The official hub models' configs ship with the package (`glance_lite/configs/`), so the planner answers for
`Qwen/Qwen-Image` on a machine that never downloaded it. Every other id (an embedded model, a local folder, a
model in the local Hugging Face cache) is resolved by `models.resolve_model`, exactly as loading it would be.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from pathlib import Path

from ..errors import UserError

CONFIGS_DIR = Path(__file__).resolve().parent.parent / "configs"
# Hub ids whose configs ship with the package (glance_lite/configs/<folder>/<component>_config.json).
SHIPPED_MODELS = {
    "Qwen/Qwen-Image": ("qwen-image", "QwenImagePipeline"),
    "Qwen/Qwen-Image-Edit": ("qwen-image", "QwenImageEditPipeline"),
    "black-forest-labs/FLUX.1-dev": ("flux1-dev", "FluxPipeline"),
}
_COMPONENT_NAMES = ("text_encoder", "text_encoder_2", "transformer", "vae")


class PlanError(UserError, ValueError):
    """The planner cannot describe this model (unknown id, missing configs) or these settings."""


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


def _canonical(config: dict) -> str:
    return json.dumps(config, sort_keys=True)


def _library_of(class_name: str) -> str:
    """Which library exports a class. `dir()` of the lazy top-level modules lists their exports without importing
    them all (hasattr would import every submodule in search of the name: seconds)."""
    import diffusers
    import transformers

    for library in (diffusers, transformers):
        if class_name in dir(library):
            return library.__name__
    raise PlanError(f"Neither diffusers nor transformers has a class named {class_name!r}.")


def _shipped_configs(model: str) -> ModelConfigs:
    folder, pipeline_class = SHIPPED_MODELS[model]
    components = []
    for name in _COMPONENT_NAMES:
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


def _resolved_configs(model: str) -> ModelConfigs:
    from ..models import read_model_file, resolve_model

    try:
        source = resolve_model(model, download=False)
    except (ValueError, FileNotFoundError) as exc:
        raise PlanError(
            f"Cannot plan for {model!r}: {exc} The planner never downloads; models whose configs ship with "
            f"glance_lite: {', '.join(SHIPPED_MODELS)}."
        ) from None
    components = []
    for name, (library, class_name) in source.components.items():
        if library not in ("diffusers", "transformers") or not _is_module_class(library, class_name):
            continue
        text = read_model_file(source, f"{name}/config.json")
        if text is None:
            raise PlanError(f"{model}: component {name} has no {name}/config.json.")
        components.append(ComponentConfig(name, library, class_name, _canonical(json.loads(text))))
    scheduler = read_model_file(source, "scheduler/scheduler_config.json")
    return ModelConfigs(model, source.pipeline_class_name, tuple(components), _canonical(json.loads(scheduler or "{}")))


@functools.lru_cache(maxsize=32)
def model_configs(model: str) -> ModelConfigs:
    """Component configs of a model id: the shipped configs of the official models, else whatever
    `models.resolve_model` finds (embedded models, local folders, the local hub cache). Never downloads."""
    if model in SHIPPED_MODELS:
        return _shipped_configs(model)
    return _resolved_configs(model)
