"""Errors that are the user's to fix, and the file reading that turns library errors into them.

A `UserError` says what is wrong and how to fix it, in one line (or one line per problem when it lists several,
each a complete sentence). The command lines print it as `error: ...` with exit status 2 (`glance_lite.cli`); the
API raises it as it is. The project's own refusals are also `ValueError`, `FileNotFoundError`, ... as their
meaning says, so `except ValueError` keeps working.

Library errors are translated where the I/O happens: `read_text_file` (prompt files, YAML configs, profiles) here,
LoRA files in `lora.py`, checkpoints in `checkpoint.py`, images in `data.py` / `api.py`. Nothing here imports more
than the standard library: a refusal must not wait for torch.
"""

from __future__ import annotations

import errno
from pathlib import Path


class UserError(Exception):
    """An input the user can fix; the message names it and says how (see the module docstring)."""


class InputFileError(UserError, ValueError):
    """A file the user named cannot be used as it is: missing, a folder, unreadable, or not UTF-8 text."""


class SetupError(UserError, RuntimeError):
    """The machine lacks what the run asks for: a CUDA GPU, enough GPUs, an optional package."""


def os_error_reason(exc: OSError) -> str:
    """'permission denied' rather than '[Errno 13] Permission denied: '/x''; the caller names the file."""
    reason = exc.strerror or str(exc) or type(exc).__name__
    return reason[:1].lower() + reason[1:]


def existing_file(path: str | Path, what: str, error: type[Exception] = InputFileError) -> Path:
    """The path of a file the user named (`what`: e.g. '--prompts-file'), or `error` saying it is a folder or missing."""
    path = Path(path).expanduser()
    if path.is_dir():
        raise error(f"{what} {path} is a folder; give the file itself.")
    if not path.exists():
        raise error(f"{what} {path} does not exist; check the path.")
    return path


def read_text_file(path: str | Path, what: str, error: type[Exception] = InputFileError) -> str:
    """The UTF-8 text of a file the user named, or `error` with one line saying why not: it does not exist, is a
    folder, cannot be read, or is not UTF-8 text."""
    path = existing_file(path, what, error)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise error(f"{what} {path} cannot be read ({os_error_reason(exc)}).") from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise error(
            f"{what} {path} is not UTF-8 text (byte 0x{data[exc.start]:02x} at position {exc.start}); "
            "save it as UTF-8 text, or check that it is the file you meant."
        ) from None


def library_reason(exc: BaseException, limit: int = 160) -> str:
    """The first line of a library's error (what follows is advice for its developers), or its type's name."""
    lines = str(exc).strip().splitlines()
    return (lines[0][:limit] if lines else "") or type(exc).__name__


def one_line(text: str) -> str:
    """A library's multi-line message (a YAML error with its context lines, ...) as one line."""
    return " ".join(line.strip() for line in str(text).splitlines() if line.strip())


def yaml_error_text(exc: Exception) -> str:
    """PyYAML's error as 'expected the node content, but found '<stream end>' (line 2, column 1)': its problem and
    where, without the context lines that point into "<unicode string>"."""
    problem, mark = getattr(exc, "problem", None), getattr(exc, "problem_mark", None)
    if not problem:
        return one_line(exc)
    return problem + (f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else "")


# errno values that mean the machine, not the program, is in the way: the run cannot write (or read) there.
ENVIRONMENT_ERRNOS = frozenset(
    getattr(errno, name) for name in ("EACCES", "EPERM", "ENOSPC", "EROFS", "EDQUOT") if hasattr(errno, name)
)
