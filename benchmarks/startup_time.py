"""Start-up cost a user feels before any model loads (issue #15): `import glance_lite.api` against `import diffusers`,
and the wall time of refusals that need no model, Python start-up included. Each is its own fresh process, best of
`--repeats`, all measured in one run so the ratio compares like with like on the same (possibly busy) machine.

    python benchmarks/startup_time.py
    python benchmarks/startup_time.py --repeats 5 --out benchmarks/results

Targets (issue #15): the import at most 1.25x `import diffusers`; every refusal under 1.5 s. Writes
<out>/startup-<date>.md and .json; exits 1 when a target is missed, so the figure is checked here, not by a timed
unit test.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

IMPORT_RATIO_TARGET = 1.25
REFUSAL_SECONDS_TARGET = 1.5

# What a user gets wrong before any model is needed: (name, extra generate arguments, words the one line must hold).
REFUSALS = (
    ("size not a multiple of 16", ["--height", "100"], "not a multiple of 16"),
    ("empty prompt", ["--prompt", "   "], "is empty"),
    ("missing LoRA file", ["--slow-lora", "/no/such/slow.safetensors"], "LoRA file not found"),
    ("unknown profile", ["--profile", "4080"], "Unknown profile '4080'"),
)


def timed(args: list[str]) -> tuple[float, subprocess.CompletedProcess]:
    started = time.perf_counter()
    proc = subprocess.run([sys.executable, *args], capture_output=True, text=True)
    return time.perf_counter() - started, proc


def best_of(args: list[str], repeats: int, check) -> float:
    times = []
    for _ in range(repeats):
        seconds, proc = timed(args)
        check(proc)
        times.append(seconds)
    return min(times)


def imports_cleanly(statement: str):
    def check(proc: subprocess.CompletedProcess) -> None:
        if proc.returncode != 0:
            raise SystemExit(f"`python -c {statement!r}` failed:\n{proc.stderr[-2000:]}")

    return check


def refused_with(words: str):
    def check(proc: subprocess.CompletedProcess) -> None:
        if proc.returncode != 2 or words not in proc.stderr or proc.stderr.count("\n") != 1:
            raise SystemExit(f"expected one error line holding {words!r} and exit 2, got {proc.returncode}:\n{proc.stderr[-2000:]}")

    return check


def measure(repeats: int) -> dict:
    diffusers = best_of(["-c", "import diffusers"], repeats, imports_cleanly("import diffusers"))
    api = best_of(["-c", "import glance_lite.api"], repeats, imports_cleanly("import glance_lite.api"))
    refusals = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, extra, words in REFUSALS:
            args = ["-m", "glance_lite.generate", "--model", "tiny/qwen-image", "--prompt", "a red cube", "--out",
                    str(Path(tmp) / "a.png"), *extra]  # fmt: skip
            refusals[name] = best_of(args, repeats, refused_with(words))
        written = sorted(p.name for p in Path(tmp).iterdir())
    if written:
        raise SystemExit(f"a refusal wrote files: {written}")
    return {"import_diffusers_s": diffusers, "import_glance_lite_api_s": api, "import_ratio": api / diffusers,
            "refusals_s": refusals}  # fmt: skip


def markdown(command: str, result: dict) -> str:
    ok = lambda good: "yes" if good else "**no**"  # noqa: E731
    lines = [
        "# Start-up time before any model loads (issue #15)",
        "",
        f"Command: `{command}` ({result['repeats']} fresh processes each, best taken; load average at start: "
        f"{', '.join(f'{x:.1f}' for x in result['load_average'])}; Python {result['python']}).",
        "",
        "| what | seconds | target | met |",
        "|---|---:|---|---|",
        f"| `python -c \"import diffusers\"` | {result['import_diffusers_s']:.2f} | (reference) | |",
        f"| `python -c \"import glance_lite.api\"` | {result['import_glance_lite_api_s']:.2f} | "
        f"<= {IMPORT_RATIO_TARGET} x diffusers (ratio {result['import_ratio']:.2f}) | {ok(result['import_ratio'] <= IMPORT_RATIO_TARGET)} |",
    ]
    for name, seconds in result["refusals_s"].items():
        lines.append(f"| generate refuses: {name} | {seconds:.2f} | < {REFUSAL_SECONDS_TARGET} s | {ok(seconds < REFUSAL_SECONDS_TARGET)} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3, help="fresh processes per figure; the best is kept")
    parser.add_argument("--out", type=Path, default=None, help="folder for startup-<date>.md/.json (default: print only)")
    args = parser.parse_args(argv)
    if args.repeats < 1:
        parser.error("--repeats must be at least 1")
    command = "python benchmarks/startup_time.py " + " ".join(argv if argv is not None else sys.argv[1:])
    load = os.getloadavg()
    result = measure(args.repeats)
    result.update(command=command.strip(), repeats=args.repeats, load_average=load, python=sys.version.split()[0])
    text = markdown(result["command"], result)
    print(text, end="")
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        stem = args.out / f"startup-{date.today().isoformat()}"
        stem.with_suffix(".md").write_text(text)
        stem.with_suffix(".json").write_text(json.dumps(result, indent=1) + "\n")
    met = result["import_ratio"] <= IMPORT_RATIO_TARGET and all(s < REFUSAL_SECONDS_TARGET for s in result["refusals_s"].values())
    return 0 if met else 1


if __name__ == "__main__":
    sys.exit(main())
