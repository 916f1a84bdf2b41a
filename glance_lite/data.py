"""Training data for Glance: find image–caption pairs, check them, and cache their encodings.

Why this module exists:

* Glance trains on one (or a handful of) image–caption pairs, so a single bad file ruins the run.
  ``validate_dataset`` opens every image and caption *before* any model is loaded and reports every
  problem at once, each with the file it concerns and how to fix it.
* The trainer encodes each caption and image once, stores the result in an ``EmbeddingCache`` and
  then evicts the text encoder and VAE before loading the transformer, so the big models never
  share memory. Cache keys hash the model fingerprint and the exact content (caption text, image
  bytes, resolution), so a stale entry can never be picked up.

Dataset layouts (image extensions .png .jpg .jpeg .webp, any case; captions are UTF-8 ``.txt``)::

    plain (Qwen-Image, FLUX.1-dev)      edit (Qwen-Image-Edit, ``edit=True``)
    data/foo.png                        data/image/foo.png     target image
    data/foo.txt                        data/image/foo.txt     caption, beside the *target*
                                        data/control/foo.jpg   input image, same stem

Captions of edit datasets live only beside the target image: one place to look, no question which of
two differing captions wins. A caption found in ``control/`` is reported with a hint to move it.
Files whose names start with ``.`` (e.g. macOS ``._foo.png``) and files with other extensions are
ignored.

CLI: ``python -m glance_lite.data validate PATH [--edit] [--min-size N]``.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import sys
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterable, NamedTuple, Sequence

from PIL import Image, ImageOps

from . import cli
from .errors import UserError, existing_file

if TYPE_CHECKING:  # torch, numpy and safetensors are imported where tensors are made: validation needs only PIL
    import torch

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp")
CAPTION_EXTENSION = ".txt"
EDIT_IMAGE_DIR = "image"
EDIT_CONTROL_DIR = "control"
# Shorter side, in pixels. Real training resizes to 1024 on the long side; anything under 256 would
# be upscaled 4x or more and teach the LoRA blur. Tiny test models pass a smaller value.
DEFAULT_MIN_SIZE = 256
# Bump when the cache file layout changes so old entries stop matching.
CACHE_FORMAT_VERSION = "1"

_UNREADABLE_IMAGE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError)


@dataclass(frozen=True)
class Sample:
    """One training pair. ``control_path`` is the edit input image; ``None`` for plain datasets."""

    image_path: Path
    caption: str
    control_path: Path | None = None


class DatasetError(UserError, ValueError):
    """A dataset cannot be used; ``problems`` lists every problem found, one line each."""

    def __init__(self, root: Path | str, problems: Sequence[str]):
        self.root = Path(root)
        self.problems = list(problems)
        count = f"{len(self.problems)} problem" + ("" if len(self.problems) == 1 else "s")
        lines = "\n".join(f"  - {problem}" for problem in self.problems)
        super().__init__(f"dataset {self.root} is not usable ({count}):\n{lines}")


# ---------------------------------------------------------------------------------------------
# Discovery: pair files by name. Cheap: reads captions, never decodes images.
# ---------------------------------------------------------------------------------------------


def discover_samples(root: Path | str, edit: bool = False) -> list[Sample]:
    """Pair every image with its caption (and control image when ``edit``), sorted by path.

    Checks only the layout (names and caption text), not the image files. Raises ``DatasetError``
    listing every layout problem; use ``validate_dataset`` to also decode and size-check images.
    """
    samples, problems = _scan_layout(Path(root), edit)
    if problems:
        raise DatasetError(root, problems)
    return samples


def validate_dataset(root: Path | str, edit: bool = False, min_size: int = DEFAULT_MIN_SIZE) -> list[Sample]:
    """Return the samples if every file is usable; otherwise raise ``DatasetError`` with ALL problems.

    On top of ``discover_samples`` this decodes every image fully (catching truncated files and
    non-images with an image extension) and rejects images whose shorter side is below ``min_size``.
    """
    root = Path(root)
    samples, problems = _scan_layout(root, edit)
    for path in _image_files_to_check(root, edit):
        problems.extend(_image_problems(path, min_size))
    if problems:
        raise DatasetError(root, sorted(problems))
    return samples


def _scan_layout(root: Path, edit: bool) -> tuple[list[Sample], list[str]]:
    if not root.exists():
        return [], [f"{root}: folder does not exist. Fix: check the path."]
    if not root.is_dir():
        return [], [f"{root}: is a file, not a folder. Fix: pass the folder that holds the images and captions."]
    if edit:
        samples, problems = _scan_edit_layout(root)
    else:
        samples, problems = _scan_plain_layout(root)
    if not samples and not problems:
        problems.append(_no_samples_problem(root, edit))
    return samples, sorted(problems)


def _scan_plain_layout(root: Path) -> tuple[list[Sample], list[str]]:
    listing = _list_folder(root)
    samples, problems = [], list(listing.problems)
    for stem, image_path in sorted(listing.images.items()):
        caption, caption_problems = _read_caption(listing.captions.get(stem), image_path)
        problems.extend(caption_problems)
        if caption is not None:
            samples.append(Sample(image_path=image_path, caption=caption, control_path=None))
    problems.extend(_orphan_caption_problems(listing))
    return samples, problems


def _scan_edit_layout(root: Path) -> tuple[list[Sample], list[str]]:
    image_dir, control_dir = root / EDIT_IMAGE_DIR, root / EDIT_CONTROL_DIR
    missing = [d for d in (image_dir, control_dir) if not d.is_dir()]
    if missing:
        return [], [
            f"{d}: folder missing. Fix: an edit dataset needs {EDIT_IMAGE_DIR}/ (target images + captions) "
            f"and {EDIT_CONTROL_DIR}/ (input images with the same names)."
            for d in missing
        ]
    targets, controls = _list_folder(image_dir), _list_folder(control_dir)
    samples, problems = [], targets.problems + controls.problems
    for stem, image_path in sorted(targets.images.items()):
        caption_path = targets.captions.get(stem)
        caption, caption_problems = _read_caption(caption_path, image_path)
        if caption_path is None and stem in controls.captions:
            caption_problems = [_misplaced_caption_problem(controls.captions[stem], image_dir)]
        problems.extend(caption_problems)
        control_path = controls.images.get(stem)
        if control_path is None and stem not in controls.ambiguous:
            problems.append(
                f"{image_path}: no control (input) image. "
                f"Fix: add {control_dir / stem}.png (or .jpg/.jpeg/.webp) with the same name."
            )
        if caption is not None and control_path is not None:
            samples.append(Sample(image_path=image_path, caption=caption, control_path=control_path))

    has_target = set(targets.images) | targets.ambiguous
    problems.extend(_orphan_caption_problems(targets))
    problems.extend(
        f"{path}: control image without a target. Fix: add {image_dir / stem}.png and its caption, or delete it."
        for stem, path in sorted(controls.images.items())
        if stem not in has_target
    )
    problems.extend(
        _misplaced_caption_problem(path, image_dir)
        for stem, path in sorted(controls.captions.items())
        if stem not in targets.images or stem in targets.captions
    )
    return samples, problems


class _FolderListing(NamedTuple):
    images: dict[str, Path]  # stem -> the one image with that stem
    captions: dict[str, Path]  # stem -> caption file
    ambiguous: set[str]  # stems shared by several images (already reported)
    problems: list[str]


def _list_folder(folder: Path) -> _FolderListing:
    """Index a folder's images and captions by stem; report stems with several images."""
    images: dict[str, list[Path]] = {}
    captions: dict[str, Path] = {}
    for path in sorted(folder.iterdir()):
        if path.name.startswith(".") or not path.is_file():
            continue
        suffix = path.suffix.lower()
        if suffix in IMAGE_EXTENSIONS:
            images.setdefault(path.stem, []).append(path)
        elif suffix == CAPTION_EXTENSION:
            captions[path.stem] = path
    ambiguous = {stem for stem, paths in images.items() if len(paths) > 1}
    problems = [
        f"{folder / stem}.*: several images share this name ({', '.join(p.name for p in images[stem])}), "
        "so it is unclear which one the caption belongs to. Fix: rename or remove all but one."
        for stem in sorted(ambiguous)
    ]
    unique = {stem: paths[0] for stem, paths in images.items() if stem not in ambiguous}
    return _FolderListing(unique, captions, ambiguous, problems)


def _read_caption(caption_path: Path | None, image_path: Path) -> tuple[str | None, list[str]]:
    if caption_path is None:
        expected = image_path.with_suffix(CAPTION_EXTENSION)
        return None, [f"{image_path}: caption missing. Fix: write its caption into {expected}."]
    try:
        text = caption_path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        return None, [f"{caption_path}: caption is not valid UTF-8 text. Fix: re-save it as UTF-8."]
    except OSError as error:
        return None, [f"{caption_path}: caption cannot be read ({error.strerror or error}). Fix: check its permissions."]
    caption = text.strip()
    if not caption:
        return None, [f"{caption_path}: caption is empty. Fix: describe {image_path.name} in this file."]
    return caption, []


def _orphan_caption_problems(listing: _FolderListing) -> list[str]:
    return [
        f"{path}: caption without an image. "
        f"Fix: add {path.with_suffix('.png').name} (or .jpg/.jpeg/.webp) beside it, or delete it."
        for stem, path in sorted(listing.captions.items())
        if stem not in listing.images and stem not in listing.ambiguous
    ]


def _misplaced_caption_problem(caption_path: Path, image_dir: Path) -> str:
    return (
        f"{caption_path}: captions of edit datasets are read from {EDIT_IMAGE_DIR}/, not {EDIT_CONTROL_DIR}/. "
        f"Fix: move it to {image_dir / caption_path.name} (or delete it if that file already exists)."
    )


def _no_samples_problem(root: Path, edit: bool) -> str:
    where = root / EDIT_IMAGE_DIR if edit else root
    hint = ""
    if not edit and (root / EDIT_IMAGE_DIR).is_dir() and (root / EDIT_CONTROL_DIR).is_dir():
        hint = f" It has {EDIT_IMAGE_DIR}/ and {EDIT_CONTROL_DIR}/ folders: pass --edit (edit=True)."
    return (
        f"{where}: no images found ({' '.join(IMAGE_EXTENSIONS)}). "
        f"Fix: add at least one image with a same-name .txt caption.{hint}"
    )


# ---------------------------------------------------------------------------------------------
# Image checks and loading
# ---------------------------------------------------------------------------------------------


def _image_files_to_check(root: Path, edit: bool) -> Iterable[Path]:
    folders = [root / EDIT_IMAGE_DIR, root / EDIT_CONTROL_DIR] if edit else [root]
    for folder in folders:
        if folder.is_dir():
            yield from (
                p
                for p in sorted(folder.iterdir())
                if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in IMAGE_EXTENSIONS
            )


def _image_problems(path: Path, min_size: int) -> list[str]:
    try:
        width, height = read_image_size(path)
    except _UNREADABLE_IMAGE_ERRORS as error:
        return [
            f"{path}: not a readable image, or truncated ({error}). "
            "Fix: re-export or re-download it, or remove it and its caption."
        ]
    if min(width, height) < min_size:
        return [
            f"{path}: image is {width}x{height}, its shorter side is below the minimum of {min_size}px. "
            f"Fix: use a larger image (or lower the limit with --min-size / min_size)."
        ]
    return []


class ImageFileError(UserError, ValueError):
    """An image the user named (an edit model's input image) that cannot be read."""


def check_image_file(path: Path | str, what: str = "the input image") -> tuple[int, int]:
    """(width, height) of an image the user named, decoded fully; `ImageFileError` in one line if it is missing, a
    folder, or not a readable image."""
    path = existing_file(path, what, ImageFileError)
    try:
        return read_image_size(path)
    except _UNREADABLE_IMAGE_ERRORS as error:
        raise ImageFileError(f"{what} {path} is not a readable image, or is truncated ({error}); pass a PNG, JPEG or WEBP file.") from None


def read_image_size(path: Path | str) -> tuple[int, int]:
    """(width, height) after EXIF rotation. Decodes the whole file, so truncated images raise."""
    with Image.open(path) as img:
        img.load()  # Image.open only reads the header; decoding finds truncation.
        width, height = img.size
        if img.getexif().get(0x0112) in (5, 6, 7, 8):  # EXIF orientations that rotate by 90 degrees
            width, height = height, width
    return width, height


def load_image(path: Path | str, size: tuple[int, int] | None = None) -> Image.Image:
    """Open an image as RGB, upright per EXIF; transparency is flattened onto white.

    ``size`` is (width, height). The image is scaled (preserving aspect) to cover ``size`` and then
    centre-cropped to it, so a ``training_resolution`` size loses at most ``multiple - 1`` pixels per
    side and is never stretched. ``None`` keeps the original size.
    """
    with Image.open(path) as img:
        img = ImageOps.exif_transpose(img)
        rgb = _flatten_to_rgb(img)
    if size is not None and rgb.size != tuple(size):
        rgb = ImageOps.fit(rgb, tuple(size), method=Image.Resampling.LANCZOS)
    return rgb


def _flatten_to_rgb(img: Image.Image) -> Image.Image:
    if img.mode in ("RGBA", "LA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return img.convert("RGB")


def training_resolution(image_size: tuple[int, int], long_side: int, multiple: int = 32) -> tuple[int, int]:
    """(width, height) to train at: scale so the long side is ``long_side``, then floor each side
    to a multiple of ``multiple`` (the reference recipe). E.g. (1536, 1024), 1024 -> (1024, 672).

    ``image_size`` and the result are both (width, height), PIL's order. Raises ``ValueError`` when
    a side would round to zero (an extremely thin image).
    """
    width, height = image_size
    if width <= 0 or height <= 0:
        raise ValueError(f"image size must be positive, got {width}x{height}")
    if long_side < multiple:
        raise ValueError(f"long_side ({long_side}) must be at least multiple ({multiple})")
    scale = long_side / max(width, height)
    scaled = (round(width * scale), round(height * scale))
    result = tuple(side // multiple * multiple for side in scaled)
    if min(result) == 0:
        raise ValueError(
            f"image of {width}x{height} is too thin: scaled to a long side of {long_side}, its short side "
            f"is under {multiple}px. Crop it to a less extreme aspect ratio."
        )
    return result  # type: ignore[return-value]


def image_to_tensor(img: Image.Image) -> torch.Tensor:
    """[3, H, W] float32 in [-1, 1], the range diffusers VAEs expect."""
    import numpy as np
    import torch

    array = np.array(img.convert("RGB"), dtype=np.uint8)  # copy: PIL buffers are read-only
    return torch.from_numpy(array).permute(2, 0, 1).float().div_(127.5).sub_(1.0)


# ---------------------------------------------------------------------------------------------
# Embedding cache
# ---------------------------------------------------------------------------------------------


def file_digest(path: Path | str) -> str:
    """sha256 hex digest of the file's bytes (so a re-saved image gets a new cache key)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


class EmbeddingCache:
    """Precomputed text embeddings and VAE latents on disk, one safetensors file per key.

    Typical use in the trainer::

        cache = EmbeddingCache(out_dir / "cache", model_fingerprint=family.fingerprint)
        key = cache.key("latents", file_digest(sample.image_path), f"{width}x{height}")
        latents = cache.get_or_compute(key, lambda: {"latents": vae_encode(...)})

    Entries are written atomically (temp file in the same folder, then ``os.replace``), so a reader
    sees either no entry or a complete one, even if a write is interrupted.
    """

    def __init__(self, folder: Path | str, model_fingerprint: str):
        if not model_fingerprint:
            raise ValueError("model_fingerprint must be non-empty: it keeps one model's cache from serving another")
        self.folder = Path(folder)
        self.model_fingerprint = model_fingerprint
        self.folder.mkdir(parents=True, exist_ok=True)

    def key(self, kind: str, *content: bytes | str) -> str:
        """``"<kind>-<sha256>"`` over the format version, model fingerprint, kind and every content
        piece (length-prefixed, so ("ab", "c") and ("a", "bc") differ). ``kind`` names the file, so it
        may hold only letters, digits, ``_`` and ``-``."""
        if not kind or not all(c.isascii() and (c.isalnum() or c in "_-") for c in kind):
            raise ValueError(f"cache kind {kind!r} must be non-empty and use only letters, digits, '_' and '-'")
        digest = hashlib.sha256()
        for piece in (CACHE_FORMAT_VERSION, self.model_fingerprint, kind, *content):
            if isinstance(piece, str):
                data, tag = piece.encode("utf-8"), b"s"
            elif isinstance(piece, (bytes, bytearray, memoryview)):
                data, tag = bytes(piece), b"b"
            else:
                raise TypeError(f"cache key content must be bytes or str, got {type(piece).__name__}")
            digest.update(tag + len(data).to_bytes(8, "little") + data)
        return f"{kind}-{digest.hexdigest()}"

    def path(self, key: str) -> Path:
        return self.folder / f"{key}.safetensors"

    def get(self, key: str) -> dict[str, torch.Tensor] | None:
        """The stored tensors (on CPU), or ``None`` if absent. An unreadable entry counts as absent."""
        path = self.path(key)
        if not path.is_file():
            return None
        try:
            return load_file(path)
        except Exception as error:  # safetensors raises its own error type for corrupt files
            warnings.warn(f"ignoring unreadable cache entry {path} ({error}); it will be recomputed", stacklevel=2)
            return None

    def put(self, key: str, tensors: dict[str, torch.Tensor]) -> None:
        """Store ``tensors`` (copied to CPU, dtype kept) under ``key``, replacing any old entry."""
        cpu_tensors = _cpu_copies(tensors)
        final_path = self.path(key)
        fd, temp_name = tempfile.mkstemp(dir=self.folder, prefix=f".{key}.", suffix=".partial")
        os.close(fd)
        try:
            save_file(cpu_tensors, temp_name, metadata={"model_fingerprint": self.model_fingerprint, "key": key})
            with open(temp_name, "rb") as f:
                os.fsync(f.fileno())
            os.replace(temp_name, final_path)
        except BaseException:
            Path(temp_name).unlink(missing_ok=True)
            raise

    def get_or_compute(
        self, key: str, compute: Callable[[], dict[str, torch.Tensor]]
    ) -> dict[str, torch.Tensor]:
        """Cached tensors for ``key``; on a miss, call ``compute()`` once, store and return its result."""
        cached = self.get(key)
        if cached is not None:
            return cached
        tensors = compute()
        self.put(key, tensors)
        return tensors


def load_file(path) -> dict[str, torch.Tensor]:
    """safetensors' `load_file`, imported on first use (it imports torch; validating a dataset does not need it)."""
    from safetensors.torch import load_file as load

    return load(path)


def save_file(tensors: dict[str, torch.Tensor], filename, metadata: dict | None = None) -> None:
    """safetensors' `save_file`, imported on first use."""
    from safetensors.torch import save_file as save

    save(tensors, filename, metadata=metadata)


def _cpu_copies(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    import torch

    if not isinstance(tensors, dict) or not tensors:
        raise TypeError("cache entries must be a non-empty dict of name -> torch.Tensor")
    bad = [name for name, value in tensors.items() if not isinstance(name, str) or not isinstance(value, torch.Tensor)]
    if bad:
        raise TypeError(f"cache entries must map str -> torch.Tensor; bad entries: {bad}")
    # clone: safetensors refuses tensors that share storage (e.g. two views of one buffer).
    return {name: value.detach().to("cpu").contiguous().clone() for name, value in tensors.items()}


# ---------------------------------------------------------------------------------------------
# CLI
# ---------------------------------------------------------------------------------------------


def _cmd_validate(args: argparse.Namespace) -> int:
    try:
        samples = validate_dataset(args.path, edit=args.edit, min_size=args.min_size)
    except DatasetError as error:
        print(f"FAILED: {error}", file=sys.stderr)
        return 1
    print(f"OK: {len(samples)} sample{'s' if len(samples) != 1 else ''} in {args.path}")
    for sample in samples:
        width, height = read_image_size(sample.image_path)
        line = f"  {sample.image_path.relative_to(args.path)}  {width}x{height}"
        if sample.control_path is not None:
            cw, ch = read_image_size(sample.control_path)
            line += f"  (control {sample.control_path.relative_to(args.path)} {cw}x{ch})"
        print(line)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = cli.ArgumentParser(prog="python -m glance_lite.data", description="Glance training data tools.")
    commands = parser.add_subparsers(dest="command", required=True)
    validate = commands.add_parser(
        "validate", help="check a dataset folder and list every problem", description=validate_dataset.__doc__
    )
    validate.add_argument("path", type=Path, help="dataset folder (images + same-name .txt captions)")
    validate.add_argument("--edit", action="store_true", help=f"edit layout: {EDIT_IMAGE_DIR}/ and {EDIT_CONTROL_DIR}/")
    validate.add_argument(
        "--min-size", type=int, default=DEFAULT_MIN_SIZE, help=f"minimum shorter side in px (default {DEFAULT_MIN_SIZE})"
    )
    validate.set_defaults(run=_cmd_validate)
    return parser


@cli.command
def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
