"""The pocket world: a tiny text-to-image model (Qwen-Image architecture) that glance_lite trains itself.

`world` makes the data (64x64 shapes with captions from a small grammar, a held-out caption set), `checker` reads
pictures back, `vae` and `base` train the pocket VAE and base transformer, `build` runs everything
(`python -m glance_lite.pocket train-all --out DIR`). The trained pipeline ships in
`assets/pocket_qwen_image/` and loads as `pocket/qwen-image`, through the same `from_pretrained` path as any
downloaded model. This module imports nothing heavy.
"""

from __future__ import annotations

from pathlib import Path

POCKET_MODEL_IDS = ("pocket/qwen-image",)
_FOLDERS = {"pocket/qwen-image": Path(__file__).resolve().parent.parent / "assets" / "pocket_qwen_image"}


def is_pocket_model_id(model_id: str) -> bool:
    return model_id in POCKET_MODEL_IDS


def pocket_model_path(model_id: str) -> Path:
    """The shipped pipeline folder of `model_id` (a diffusers `save_pretrained` folder)."""
    if model_id not in _FOLDERS:
        raise ValueError(f"Unknown pocket model {model_id!r}. Pocket models: {', '.join(POCKET_MODEL_IDS)}.")
    folder = _FOLDERS[model_id]
    if not (folder / "model_index.json").is_file():
        raise FileNotFoundError(f"The pocket model files are missing from {folder} (a broken install?).")
    return folder
