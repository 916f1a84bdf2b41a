"""Generation settings inside the PNG itself, so an image can always say how it was made.

Layout: ONE PNG tEXt chunk with the keyword `glance_lite` whose text is a JSON object of the settings, written with
`ensure_ascii=True` (tEXt is Latin-1 only; JSON escapes keep any prompt, Chinese included, exact). One JSON chunk
rather than one chunk per key, so every value round-trips with its type (seed stays an int, loras a list of
{"phase", "name", "sha256"} objects, an unset true_cfg_scale stays null). Read it with `read_png_settings`, with
PIL (`Image.open(p).text["glance_lite"]`) or with any PNG tool (`exiftool`, `identify -verbose`).

Usual keys (the writer decides; nothing here is required): prompt, negative_prompt, seed, height, width, model,
loras, method ("glance", "base-50", "fewstep-8", "lightning-8", ...), sigmas (every noise level the run visited, the
final one included), transformer_calls, split ({"slow": [...], "fast": [...]} or null), mode, profile,
true_cfg_scale, base_steps.
"""

from __future__ import annotations

import json
from pathlib import Path

CHUNK_KEYWORD = "glance_lite"


def save_png(image, path: str | Path, settings: dict) -> Path:
    """Write `image` (a PIL image) as a PNG at `path` with `settings` in its `glance_lite` tEXt chunk."""
    from PIL.PngImagePlugin import PngInfo

    info = PngInfo()
    info.add_text(CHUNK_KEYWORD, json.dumps(settings, ensure_ascii=True, sort_keys=True))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, format="PNG", pnginfo=info)
    return path


def read_png_settings(path) -> dict:
    """The settings `save_png` wrote into the PNG at `path` (a path or a binary file object); {} if it has none.

    Raises ValueError when the file is not a readable image or its `glance_lite` chunk is not a JSON object.
    """
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            image.load()  # text chunks after the image data are read only once the pixels are
            text = getattr(image, "text", {}).get(CHUNK_KEYWORD)
    except (UnidentifiedImageError, OSError) as exc:
        raise ValueError(f"Cannot read settings from {path}: not a readable image ({exc}).") from None
    if text is None:
        return {}
    try:
        settings = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"The {CHUNK_KEYWORD!r} chunk of {path} is not valid JSON ({exc}).") from None
    if not isinstance(settings, dict):
        raise ValueError(f"The {CHUNK_KEYWORD!r} chunk of {path} is not a JSON object of settings.")
    return settings
