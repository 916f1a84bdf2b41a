"""The pocket world: 64x64 pictures of one coloured shape on a plain background, with captions from a small grammar.

    "a red circle on a blue background, top left"

A caption is a `Scene` (shape x colour x background x position); a picture of it is rendered with numpy, its size
and exact placement drawn from a seed, so the same (scene, seed) always gives the same pixels. A fixed set of
caption combinations is held out (`HELD_OUT`): no pocket model trains on them, so evaluation on them measures
whether a model composes attributes rather than recalls pictures. Every single attribute value still appears in
training; only the combinations are new.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np

IMAGE_SIZE = 64
SHAPES = ("circle", "square", "triangle")
# Six colours far apart in RGB, so a colour judgement is unambiguous even on blurry samples.
PALETTE: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "green": (30, 180, 40),
    "blue": (30, 60, 220),
    "yellow": (240, 220, 30),
    "white": (245, 245, 245),
    "black": (15, 15, 15),
}
COLOURS = tuple(PALETTE)
POSITIONS = ("top left", "top right", "bottom left", "bottom right")


@dataclass(frozen=True, order=True)
class Scene:
    """What a caption says: one shape of one colour at one position on a background of another colour."""

    shape: str
    colour: str
    background: str
    position: str

    @property
    def caption(self) -> str:
        return f"a {self.colour} {self.shape} on a {self.background} background, {self.position}"

    @classmethod
    def parse(cls, caption: str) -> "Scene":
        """The inverse of `caption` (raises ValueError on text outside the grammar)."""
        words = caption.strip().removeprefix("a ").split(" ")
        try:
            colour, shape, on, a, background, bg_word, *position = words
            scene = cls(shape, colour, background, " ".join(position))
            ok = (on, a, bg_word) == ("on", "a", "background,")
        except ValueError:
            ok = False
        if not ok or scene not in set(ALL_SCENES):
            raise ValueError(f"Not a pocket-world caption: {caption!r}")
        return scene


def _all_scenes() -> tuple[Scene, ...]:
    return tuple(
        Scene(shape, colour, background, position)
        for shape, colour, background, position in itertools.product(SHAPES, COLOURS, COLOURS, POSITIONS)
        if colour != background
    )


ALL_SCENES = _all_scenes()  # 3 shapes x 6 colours x 5 other backgrounds x 4 positions = 360


def _is_held_out(scene: Scene) -> bool:
    # A fixed arithmetic rule (no RNG): one combination in ten, spread so every value of every attribute keeps
    # training examples and every attribute value is also held out somewhere.
    code = (
        SHAPES.index(scene.shape)
        + 3 * COLOURS.index(scene.colour)
        + 7 * COLOURS.index(scene.background)
        + 11 * POSITIONS.index(scene.position)
    )
    return code % 10 == 3


HELD_OUT: tuple[Scene, ...] = tuple(s for s in ALL_SCENES if _is_held_out(s))
TRAIN_SCENES: tuple[Scene, ...] = tuple(s for s in ALL_SCENES if not _is_held_out(s))
HELD_OUT_CAPTIONS = frozenset(s.caption for s in HELD_OUT)
TRAIN_CAPTIONS = frozenset(s.caption for s in TRAIN_SCENES)
# Every word a caption may use, for the pocket tokenizer.
VOCABULARY = tuple(sorted({w for s in ALL_SCENES for w in s.caption.replace(",", " ,").split()}))


def render(scene: Scene, seed: int, size: int = IMAGE_SIZE) -> np.ndarray:
    """uint8 [size, size, 3]: the scene with a shape of random size, jittered inside its quadrant (from `seed`)."""
    rng = np.random.default_rng(seed)
    half = size / 2
    radius = rng.uniform(0.25, 0.36) * half  # the shape stays inside its quadrant
    jitter = half / 2 - radius
    top = scene.position.startswith("top")
    left = scene.position.endswith("left")
    cy = (half / 2 if top else 3 * half / 2) + rng.uniform(-jitter, jitter)
    cx = (half / 2 if left else 3 * half / 2) + rng.uniform(-jitter, jitter)
    # Supersample 4x for smooth edges.
    ss = 4
    grid = (np.arange(size * ss) + 0.5) / ss
    y, x = np.meshgrid(grid, grid, indexing="ij")
    dy, dx = y - cy, x - cx
    if scene.shape == "circle":
        mask = dy**2 + dx**2 <= radius**2
    elif scene.shape == "square":
        side = radius * 0.9
        mask = (np.abs(dy) <= side) & (np.abs(dx) <= side)
    elif scene.shape == "triangle":  # pointing up, apex at cy - r, base at cy + r/2... centred on its box
        h = 1.8 * radius
        t = (dy + h / 2) / h  # 0 at apex, 1 at base
        mask = (t >= 0) & (t <= 1) & (np.abs(dx) <= t * radius * 1.1)
    else:
        raise ValueError(f"Unknown shape {scene.shape!r}")
    coverage = mask.reshape(size, ss, size, ss).mean(axis=(1, 3))[..., None]
    fg = np.array(PALETTE[scene.colour], dtype=np.float64)
    bg = np.array(PALETTE[scene.background], dtype=np.float64)
    return np.round(coverage * fg + (1 - coverage) * bg).astype(np.uint8)


def sample_scenes(count: int, seed: int, scenes: tuple[Scene, ...] = TRAIN_SCENES) -> list[tuple[Scene, int]]:
    """`count` (scene, render seed) pairs drawn uniformly from `scenes` (training scenes by default)."""
    rng = np.random.default_rng(seed)
    picks = rng.integers(0, len(scenes), size=count)
    render_seeds = rng.integers(0, 2**31 - 1, size=count)
    return [(scenes[int(i)], int(s)) for i, s in zip(picks, render_seeds)]


def make_batch(count: int, seed: int, scenes: tuple[Scene, ...] = TRAIN_SCENES) -> tuple[np.ndarray, list[Scene]]:
    """uint8 [count, 64, 64, 3] pictures and their scenes, deterministic from `seed`."""
    pairs = sample_scenes(count, seed, scenes)
    return np.stack([render(scene, s) for scene, s in pairs]), [scene for scene, _ in pairs]


def to_model_pixels(images: np.ndarray):
    """uint8 [B, H, W, 3] -> float32 torch [B, 3, H, W] in [-1, 1] (what the VAE sees)."""
    import torch

    return torch.from_numpy(images).permute(0, 3, 1, 2).float().div(127.5).sub(1.0)


def from_model_pixels(pixels) -> np.ndarray:
    """float torch [B, 3, H, W] in [-1, 1] -> uint8 [B, H, W, 3]."""
    return pixels.detach().float().clamp(-1, 1).add(1).mul(127.5).round().byte().permute(0, 2, 3, 1).cpu().numpy()
