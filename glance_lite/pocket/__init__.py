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
_ASSETS = Path(__file__).resolve().parent.parent / "assets"
_FOLDERS = {"pocket/qwen-image": _ASSETS / "pocket_qwen_image"}
# Few-step LoRAs distilled from a pocket model (`--phase distill`), shipped beside it: fewstep-N.safetensors is the
# default LoRA of `--method fewstep-N` on that model (assets/pocket_qwen_image_fewstep/README.md: how they were made).
_FEWSTEP_FOLDERS = {"pocket/qwen-image": _ASSETS / "pocket_qwen_image_fewstep"}


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


def bundled_fewstep_steps(model_id: str) -> list[int]:
    """The step counts `model_id` ships a distilled few-step LoRA for (none for other models)."""
    folder = _FEWSTEP_FOLDERS.get(model_id)
    if folder is None or not folder.is_dir():
        return []
    return sorted(int(p.stem.removeprefix("fewstep-")) for p in folder.glob("fewstep-*.safetensors") if p.stem.removeprefix("fewstep-").isdigit())


def shipped_fewstep_note(model_id: str) -> str:
    """' (MODEL ships its own for fewstep-4, fewstep-2)' for a model that ships few-step LoRAs, else ''."""
    shipped = bundled_fewstep_steps(model_id)
    return f" ({model_id} ships its own for {', '.join(f'fewstep-{n}' for n in reversed(shipped))})" if shipped else ""


def bundled_fewstep_lora(model_id: str, steps: int) -> Path | None:
    """The shipped few-step LoRA of `model_id` for `steps` steps, or None."""
    if steps not in bundled_fewstep_steps(model_id):
        return None
    return _FEWSTEP_FOLDERS[model_id] / f"fewstep-{steps}.safetensors"
