"""Screenshots of the browser UI after a pocket-model run: docs/ui-generate.png and docs/ui-compare.png.

    python docs/make_screenshots.py        # about a minute on 2 CPU cores

Needs `pip install -c constraints.txt -e ".[ui,test]"` and Debian's `chromium` + `chromium-driver`. Starts
`python -m glance_lite.ui` on a free localhost port (work folder in a temporary directory), then in a headless
Chromium: generates the default prompt on the pocket model with the cpu profile (Glance, 10 steps), and compares
Glance with the 10-step base model from the same seed. Nothing is downloaded.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # `python docs/make_screenshots.py` from a source checkout
    sys.path.insert(0, str(ROOT))

from glance_lite.ui import browser  # noqa: E402

BASE_STEPS = 10


def make_screenshots(out: Path) -> list[Path]:
    with tempfile.TemporaryDirectory() as tmp, browser.serve(Path(tmp) / "ui") as url:
        driver = browser.chromium(width=1280, height=1000)
        try:
            page = browser.Page(driver, url)
            page.pick("profile", "cpu")
            page.click("generate")
            page.wait_for_image("gen-image")
            page.wait_for_text("gen-status", "Done")
            shots = [page.screenshot(out / "ui-generate.png")]
            page.open_settings()
            page.fill("base-steps", BASE_STEPS)
            page.open_settings(False)
            page.tab("compare")
            page.click("compare")
            page.wait_for_image("cmp-glance")
            page.wait_for_image("cmp-base")
            page.wait_for_text("cmp-table", "PSNR")
            shots.append(page.screenshot(out / "ui-compare.png"))
            return shots
        finally:
            driver.quit()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=Path(__file__).resolve().parent, help="folder for the PNGs (default: docs/)")
    args = p.parse_args(argv)
    missing = browser.missing_browser()
    if missing:
        print(f"error: {missing}", file=sys.stderr)
        return 1
    for path in make_screenshots(args.out):
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
