"""Model ids -> something `from_pretrained` can open, and the family that knows how to drive it.

Three kinds of id take the same loading path: an embedded model (`tiny/qwen-image`, built offline once into a
cache folder; `pocket/qwen-image`, shipped), a local folder saved with `save_pretrained`, or a hub id such as
`Qwen/Qwen-Image` (from the local Hugging Face cache or a download). Resolution reads only `model_index.json`, so a
wrong id fails in milliseconds, before any weights are touched. The memory planner resolves ids the same way with
`download=False`: it reads configs from folders and the local hub cache, never from the network.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

from .families import ModelFamily, family_for_pipeline_class


@dataclass(frozen=True)
class ModelSource:
    """A resolved model: what the user asked for, where it loads from, and its family."""

    model_id: str
    location: str  # local folder or hub id, passed to from_pretrained
    pipeline_class_name: str
    components: dict[str, tuple[str, str]]  # name -> (library, class name), from model_index.json

    @cached_property
    def family(self) -> ModelFamily:
        """One family instance per source, shared by the manager, sampler and trainer."""
        return family_for_pipeline_class(self.pipeline_class_name)

    @property
    def is_official_base(self) -> bool:
        return self.model_id in self.family.official_base_models


def _read_model_index(model_id: str, download: bool = True) -> tuple[str, dict]:
    from .pocket import is_pocket_model_id, pocket_model_path
    from .tiny import is_tiny_model_id, tiny_model_path

    if is_tiny_model_id(model_id) or is_pocket_model_id(model_id):
        folder = tiny_model_path(model_id) if is_tiny_model_id(model_id) else pocket_model_path(model_id)
        return str(folder), json.loads((folder / "model_index.json").read_text())
    folder = Path(model_id).expanduser()
    if folder.is_dir():
        index = folder / "model_index.json"
        if not index.is_file():
            raise FileNotFoundError(
                f"{folder} is not a diffusers pipeline folder (no model_index.json). Save one with "
                "`pipeline.save_pretrained(folder)` or download a full model repo."
            )
        return str(folder), json.loads(index.read_text())
    if model_id.startswith(("tiny/", "pocket/", "realwidth/")):
        raise ValueError(f"Unknown embedded model {model_id!r}. Embedded models: {_embedded_model_ids()}.")
    if not download:
        cached = _hub_cached_file(model_id, "model_index.json")
        if cached is None:
            raise ValueError(
                f"Model {model_id!r} is not a local folder, not an embedded model ({_embedded_model_ids()}), and its "
                "model_index.json is not in the local Hugging Face cache. Nothing is downloaded here: pass a folder "
                "or download the model first (`hf download <id> --local-dir DIR`)."
            )
        return model_id, json.loads(cached)
    return model_id, _hub_model_index(model_id)


def _hub_cached_file(repo_id: str, relative: str) -> str | None:
    """A file of a hub repo from the local cache only (None when it is not there)."""
    if repo_id.count("/") != 1:
        return None
    from huggingface_hub import try_to_load_from_cache

    found = try_to_load_from_cache(repo_id, relative)
    return Path(found).read_text() if isinstance(found, str) else None


def read_model_file(source: "ModelSource", relative: str) -> str | None:
    """A text file of a resolved model (e.g. "transformer/config.json") from its folder or the local hub cache;
    None when it is not there. Never downloads."""
    folder = Path(source.location)
    if folder.is_dir():
        path = folder / relative
        return path.read_text() if path.is_file() else None
    return _hub_cached_file(source.location, relative)


def _hub_model_index(model_id: str) -> dict:
    from huggingface_hub import hf_hub_download

    try:
        return json.loads(Path(hf_hub_download(model_id, "model_index.json")).read_text())
    except Exception as exc:  # offline, unknown repo, gated repo: the user must act in every case
        raise ValueError(
            f"Cannot open model {model_id!r}: it is not a local folder, not an embedded model ({_embedded_model_ids()}), "
            f"and the hub could not provide it ({type(exc).__name__}). "
            "If this machine is offline, download the model elsewhere (`hf download <id> --local-dir DIR`) and "
            "pass the folder; check the spelling of the id otherwise."
        ) from None


def _embedded_model_ids() -> str:
    from .pocket import POCKET_MODEL_IDS
    from .tiny import EMBEDDED_MODEL_IDS

    return ", ".join(EMBEDDED_MODEL_IDS + tuple(POCKET_MODEL_IDS))


def family_of(model_id: str):
    """The model's family from its id or its model_index.json alone: nothing is built or loaded (an embedded tiny id
    is named after its family; building it on first use would be loading a model), so inputs can be checked first."""
    from .families import family_by_name
    from .tiny import family_name, is_tiny_model_id

    return family_by_name(family_name(model_id)) if is_tiny_model_id(model_id) else resolve_model(model_id).family


def resolve_model(model_id: str, download: bool = True) -> ModelSource:
    """Find the model's pipeline class and components without loading any weights (`download=False`: from folders
    and the local hub cache only)."""
    if not model_id or not str(model_id).strip():
        raise ValueError("No model given: pass a hub id (Qwen/Qwen-Image), a local folder, or tiny/qwen-image.")
    location, index = _read_model_index(str(model_id), download)
    components = {k: tuple(v) for k, v in index.items() if not k.startswith("_") and isinstance(v, list) and v[0]}
    source = ModelSource(str(model_id), location, index["_class_name"], components)
    source.family  # unsupported pipeline classes fail here, before loading
    return source


def component_class(source: ModelSource, name: str):
    """The class `model_index.json` declares for a component (e.g. transformers.Qwen2_5_VLForConditionalGeneration)."""
    import importlib

    library, class_name = source.components[name]
    return getattr(importlib.import_module(library), class_name)


def meta_component(source: ModelSource, name: str = "transformer"):
    """A component's architecture without weights (meta device): for fit checks and device maps in milliseconds."""
    from accelerate import init_empty_weights

    cls = component_class(source, name)
    with init_empty_weights():
        return cls.from_config(cls.load_config(source.location, subfolder=name))
