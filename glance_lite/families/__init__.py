"""Model families: one small module per model, found by the pipeline class a model folder declares."""

from __future__ import annotations

from .base import Conditioning, LatentState, ModelFamily, TrainingRecipe, conditioning_to
from .flux import FluxFamily
from .qwen_image import QwenImageFamily
from .qwen_image_edit import QwenImageEditFamily

FAMILIES: dict[str, type[ModelFamily]] = {
    cls.pipeline_class_name: cls for cls in (QwenImageFamily, FluxFamily, QwenImageEditFamily)
}


def family_for_pipeline_class(class_name: str) -> ModelFamily:
    """The family for a `model_index.json` `_class_name`, or a clear error naming what is supported."""
    try:
        return FAMILIES[class_name]()
    except KeyError:
        supported = ", ".join(f"{name} ({cls.name})" for name, cls in FAMILIES.items())
        raise ValueError(
            f"glance_lite does not support pipelines of class {class_name!r}. Supported: {supported}."
        ) from None


def family_by_name(name: str) -> ModelFamily:
    for cls in FAMILIES.values():
        if cls.name == name:
            return cls()
    raise ValueError(f"Unknown model family {name!r}: choose one of {', '.join(c.name for c in FAMILIES.values())}.")


__all__ = [
    "Conditioning",
    "FAMILIES",
    "FluxFamily",
    "LatentState",
    "ModelFamily",
    "QwenImageEditFamily",
    "QwenImageFamily",
    "TrainingRecipe",
    "conditioning_to",
    "family_by_name",
    "family_for_pipeline_class",
]
