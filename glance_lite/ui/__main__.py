"""`python -m glance_lite.ui [--port N]`: serve the browser UI on localhost (needs `pip install -e ".[ui]"`).

    python -m glance_lite.ui                      # http://127.0.0.1:7860, the pocket model, files in ./glance_ui/
    python -m glance_lite.ui --port 8000 --workdir /data/glance_ui

Offline by default: the embedded pocket model needs no download, Gradio's usage analytics are off and the page
uses system fonts. Generated PNGs go to WORKDIR/images/, training runs to WORKDIR/train/<run name>/.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
from pathlib import Path

from .. import cli
from ..errors import SetupError


def build_parser() -> argparse.ArgumentParser:
    p = cli.ArgumentParser(prog="python -m glance_lite.ui", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--port", type=int, default=7860, help="port to serve on (default: 7860)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1, this machine only)")
    p.add_argument("--workdir", type=Path, default=Path("glance_ui"), help="where images and training runs go (default: ./glance_ui)")
    p.add_argument("--keep-models", type=int, default=1, help="loaded models kept at once (default: 1, what a small GPU holds)")
    p.add_argument("--threads", type=int, default=1,
                   help="torch CPU threads for model work, training included (default: 1; the embedded models' small "
                        "tensors only lose from more on a shared CPU, as in the demo; raise it for big models on the cpu profile)")
    return p


@cli.command
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # before gradio is imported: no calls home
    cli.show_notes()  # the auto profile's reason, LoRA reports, and tracebacks of unexpected errors
    try:
        from .app import CSS, build_app, theme
    except ModuleNotFoundError as exc:
        if exc.name not in ("gradio", "pandas"):
            raise
        raise SetupError(f"the UI needs its extra ({exc}): pip install -e \".[ui]\"") from None
    signal.signal(signal.SIGTERM, _stop_with_children)
    args.workdir.mkdir(parents=True, exist_ok=True)
    page, _ = build_app(args.workdir, args.keep_models, args.threads)
    page.queue()
    page.launch(server_name=args.host, server_port=args.port, theme=theme(), css=CSS, show_error=False)
    return 0


def _stop_with_children(signum, frame) -> None:
    """SIGTERM: stop a running training child too (it would otherwise train on, orphaned), then exit at once."""
    import multiprocessing

    for child in multiprocessing.active_children():
        child.terminate()
    os._exit(0)


if __name__ == "__main__":
    sys.exit(main())
