"""The one boundary every command line goes through: a user's mistake is one `error:` line and exit status 2.

    @cli.command
    def main(argv: list[str] | None = None) -> int:
        args = build_parser().parse_args(argv)    # build_parser() returns a cli.ArgumentParser
        ...

Which exceptions are the user's to fix (`is_user_error`):
  * every `glance_lite.errors.UserError` (profile, dataset, LoRA file, checkpoint, config problems, ...);
  * a `ValueError` or a file-not-found / is-a-folder / not-a-folder error raised by the project's own code: its
    refusals are written as messages for the user (`check_size`, `PhaseSplit`, `TrainConfig`, ...), and the
    library errors worth a line are translated where the I/O happens (`glance_lite.errors`);
  * an `OSError` that says the machine is in the way: permission denied, disk full, read-only file system.
Anything else (a `RuntimeError` deep in torch, a `KeyError`, a `ValueError` raised inside a library) is a bug to
report, and keeps its traceback. Ctrl-C prints one line and exits with status 130.

A `cli.ArgumentParser` answers a bad argument with the same one line (`error: argument --height: invalid int
value: 'abc' (see ... --help)`) instead of the usage text. Nothing here imports more than the standard library, so
`--help` and every refusal that needs no model answer before torch or diffusers are imported.
"""

from __future__ import annotations

import argparse
import functools
import sys
from pathlib import Path

from .errors import ENVIRONMENT_ERRNOS, UserError, one_line, os_error_reason

PACKAGE_DIR = Path(__file__).resolve().parent
EXIT_USER_ERROR = 2
EXIT_INTERRUPTED = 130


class UsageError(UserError):
    """A command-line argument argparse cannot take."""


class ArgumentParser(argparse.ArgumentParser):
    """argparse, but a bad argument is one line (`error: ... (see PROG --help)`), raised as `UsageError`."""

    def error(self, message: str):
        raise UsageError(f"{message} (see {self.prog} --help)")


def positive(kind=float):
    """An argparse `type` for a number that must be more than 0 (a GPU size, a rank, a token count)."""

    def parse(text: str):
        value = kind(text)  # a ValueError here reads "invalid positive int value: 'x'"
        if not value > 0:
            raise argparse.ArgumentTypeError(f"must be more than 0, got {text}")
        return value

    parse.__name__ = f"positive {kind.__name__}"
    return parse


def _raised_in(exc: BaseException, roots: tuple[Path, ...]) -> bool:
    """True if the innermost frame of the traceback (where it was raised) is a file under one of `roots`."""
    tb = exc.__traceback__
    if tb is None:
        return False
    while tb.tb_next is not None:
        tb = tb.tb_next
    filename = Path(tb.tb_frame.f_code.co_filename).resolve()
    return any(filename.is_relative_to(root) for root in roots)


def is_user_error(exc: BaseException, own_code: tuple[Path, ...] = ()) -> bool:
    """See the module docstring. `own_code`: folders besides the package whose refusals are messages (benchmarks)."""
    if isinstance(exc, UserError):
        return True
    if isinstance(exc, OSError) and exc.errno in ENVIRONMENT_ERRNOS:
        return True
    if isinstance(exc, (ValueError, FileNotFoundError, IsADirectoryError, NotADirectoryError, FileExistsError)):
        return _raised_in(exc, (PACKAGE_DIR, *own_code))
    return False


def error_text(exc: BaseException) -> str:
    """The `error: ...` text: the message as written (a `UserError` may list one problem per line), a library's
    multi-line message joined into one line, an OSError with its file."""
    if isinstance(exc, OSError) and not isinstance(exc, UserError) and exc.filename:
        text = f"{exc.filename}: {os_error_reason(exc)}."
    else:
        text = str(exc).strip() or type(exc).__name__
    if not isinstance(exc, UserError):
        text = one_line(text)
    return f"error: {text}"


def run(function, own_code: tuple[Path, ...] = ()) -> int:
    """`function()` behind the boundary: its int result (0 for None), 2 after a user error, 130 after Ctrl-C."""
    try:
        result = function()
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as exc:
        if not is_user_error(exc, tuple(Path(p).resolve() for p in own_code)):
            raise
        sys.stdout.flush()
        print(error_text(exc), file=sys.stderr)
        return EXIT_USER_ERROR
    return result if isinstance(result, int) else 0


def show_notes() -> None:
    """Print glance_lite's one-line notes (auto profile choice, LoRA reports) on stderr, without the libraries'."""
    import logging

    logger = logging.getLogger("glance_lite")
    if not logger.handlers:
        logger.addHandler(logging.StreamHandler(sys.stderr))
        logger.setLevel(logging.INFO)


def command(main):
    """Decorate a command's `main(argv) -> int` so that in-process calls (tests) and `python -m` see the same
    boundary."""

    @functools.wraps(main)
    def wrapped(argv: list[str] | None = None) -> int:
        return run(lambda: main(argv))

    return wrapped
