"""Read a pocket-world picture back: background colour, shape colour and position.

The judgements a pocket model is scored on. Shape kind is not judged (it is the hardest thing to see in 64x64
samples and the least robust to judge); the three judgements here are what "follows the prompt" means for the
pocket benchmarks. Colours are snapped to the nearest palette colour; the shape is the set of pixels clearly
unlike the background, its position the quadrant holding their centroid.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .world import COLOURS, PALETTE, Scene

JUDGEMENTS = ("background", "colour", "position")
_PALETTE = np.array([PALETTE[c] for c in COLOURS], dtype=np.float64)
# A pixel belongs to the shape when it is this far (RGB Euclidean) from the background colour.
_FOREGROUND_DISTANCE = 90.0
_MIN_SHAPE_PIXELS = 12


@dataclass(frozen=True)
class Reading:
    """What the checker sees; `colour`/`position` are None when no shape stands out from the background."""

    background: str
    colour: str | None
    position: str | None


def _nearest_colour(rgb: np.ndarray) -> str:
    return COLOURS[int(np.argmin(((_PALETTE - rgb) ** 2).sum(axis=1)))]


def read_image(image) -> Reading:
    """`image`: PIL image or uint8 array [H, W, 3]."""
    pixels = np.asarray(image.convert("RGB") if hasattr(image, "convert") else image, dtype=np.float64)
    h, w, _ = pixels.shape
    # The background is the commonest colour: the median over all pixels (the shape covers < 1/4 of the picture).
    bg_rgb = np.median(pixels.reshape(-1, 3), axis=0)
    background = _nearest_colour(bg_rgb)
    distance = np.sqrt(((pixels - bg_rgb) ** 2).sum(axis=-1))
    mask = distance > _FOREGROUND_DISTANCE
    if mask.sum() < _MIN_SHAPE_PIXELS:
        return Reading(background, None, None)
    colour = _nearest_colour(np.median(pixels[mask], axis=0))
    ys, xs = np.nonzero(mask)
    vertical = "top" if ys.mean() < h / 2 else "bottom"
    horizontal = "left" if xs.mean() < w / 2 else "right"
    return Reading(background, colour, f"{vertical} {horizontal}")


def judge(image, scene: Scene) -> dict[str, bool]:
    """One bool per judgement in JUDGEMENTS: did the picture get it right?"""
    reading = read_image(image)
    return {
        "background": reading.background == scene.background,
        "colour": reading.colour == scene.colour,
        "position": reading.position == scene.position,
    }


def score(images, scenes) -> dict[str, float]:
    """Fraction right per judgement, plus "all" (the mean of the three) over paired images and scenes."""
    results = [judge(image, scene) for image, scene in zip(images, scenes, strict=True)]
    fractions = {k: float(np.mean([r[k] for r in results])) for k in JUDGEMENTS}
    fractions["all"] = float(np.mean([fractions[k] for k in JUDGEMENTS]))
    return fractions
