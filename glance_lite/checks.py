"""Checks of a run's inputs and outputs that need no model: prompts, image size, output paths.

They run before anything heavy is imported (a command line answers a mistake in well under a second) and before
anything is written: an output path that cannot be written, or would replace a file nobody asked to replace, is
refused before the first model loads, not after the images are made. The API (`glance_lite.api`) raises the same
errors.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from .errors import InputFileError, UserError, os_error_reason, read_text_file

SIZE_MULTIPLE = 16
# Images are written as PNG, with the settings that made them in a text chunk (`png_settings`).
IMAGE_OUTPUT_EXTENSIONS = (".png",)


class OutputPathError(UserError, ValueError):
    """An output path that cannot be used: a folder where a file is wanted, a wrong extension, not writable, or a
    file that exists and was not meant to be replaced."""


def check_prompts(prompt: str | Sequence[str]) -> list[str]:
    """The prompts as a list; none, or an empty one, is refused."""
    prompts = [prompt] if isinstance(prompt, str) else list(prompt)
    if not prompts:
        raise ValueError("No prompt given: pass a non-empty string or a non-empty list of strings.")
    for i, p in enumerate(prompts):
        if not isinstance(p, str) or not p.strip():
            where = "The prompt" if len(prompts) == 1 else f"Prompt #{i}"
            raise ValueError(f"{where} is empty: describe the image you want, e.g. 'a red cube on a table'.")
    return prompts


def check_size(height: int, width: int, multiple: int = SIZE_MULTIPLE) -> None:
    for name, value in (("height", height), ("width", width)):
        if not isinstance(value, int) or value <= 0:
            raise ValueError(f"{name} must be a positive integer number of pixels, got {value!r}.")
        if value % multiple:
            lower, upper = value // multiple * multiple, (value // multiple + 1) * multiple
            raise ValueError(
                f"{name}={value} is not a multiple of {multiple}: the model packs 2x2 latent patches. "
                f"Use {lower or upper} or {upper}."
            )


def read_prompts_file(path: str | Path, what: str = "--prompts-file") -> list[str]:
    """One prompt per non-empty line of a UTF-8 text file."""
    prompts = [line.strip() for line in read_text_file(path, what).splitlines() if line.strip()]
    if not prompts:
        raise InputFileError(f"{what} {path} holds no prompts: write one prompt per line.")
    return prompts


def check_writable_folder(folder: str | Path, what: str) -> None:
    """`folder` exists and can be written to, or can be created (its nearest existing parent is a writable folder).
    Tried for real, with a temporary file removed at once: permissions, read-only mounts and full disks all show."""
    import tempfile

    folder = Path(folder).expanduser()
    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise OutputPathError(f"{what}: cannot create the folder {folder}, because {existing} is a file.")
    try:
        fd, probe = tempfile.mkstemp(prefix=".glance_lite-write-check-", dir=existing)
    except OSError as exc:
        raise OutputPathError(f"{what}: cannot write in {existing} ({os_error_reason(exc)}); choose a folder you can write to.") from None
    os.close(fd)
    os.unlink(probe)


def check_output_file(
    path: str | Path, what: str = "--out", overwrite: bool = False, extensions: Sequence[str] = IMAGE_OUTPUT_EXTENSIONS,
    probe_folder: bool = True,
) -> Path:
    """A file to write: not a folder, one of `extensions` (default: a PNG image), a writable folder (`probe_folder`:
    tried here), and no existing file unless `overwrite`."""
    text = os.fspath(path)
    path = Path(text).expanduser()
    if text.endswith(("/", os.sep)) or path.is_dir():
        raise OutputPathError(f"{what} {text} is a folder; give the file to write, e.g. {path / ('output' + extensions[0])}.")
    if path.suffix.lower() not in extensions:
        found = f"the extension '{path.suffix}'" if path.suffix else "no extension"
        choices = extensions[0] if len(extensions) == 1 else f"{', '.join(extensions[:-1])} or {extensions[-1]}"
        why = " (images are written as PNG, with the settings that made them inside)" if tuple(extensions) == IMAGE_OUTPUT_EXTENSIONS else ""
        raise OutputPathError(f"{what} {text} has {found}; use {choices}{why}.")
    if path.exists() and not overwrite:
        raise OutputPathError(f"{what} {text} already exists; pass --overwrite to replace it, or choose another name.")
    if probe_folder:
        check_writable_folder(path.parent, what)
    return path


def check_output_files(paths: Sequence[Path], what: str, overwrite: bool = False) -> list[Path]:
    """Several images to write (e.g. OUT_DIR/000.png, ...): `check_output_file` for each, one message for all the
    files that exist already."""
    existing = [p for p in paths if Path(p).exists() and not Path(p).is_dir()]
    if existing and not overwrite:
        names = ", ".join(str(p) for p in existing[:3]) + (f" and {len(existing) - 3} more" if len(existing) > 3 else "")
        raise OutputPathError(f"{what}: {names} already exist; pass --overwrite to replace them, or choose another folder.")
    checked = [check_output_file(p, what, overwrite=True, probe_folder=False) for p in paths]
    for folder in dict.fromkeys(p.parent for p in checked):  # one write probe per folder, not per file
        check_writable_folder(folder, what)
    return checked
