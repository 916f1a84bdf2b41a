"""`python -m glance_lite.generate`: sample images with Glance (or the plain base model) from the command line.

    python -m glance_lite.generate --model tiny/qwen-image --prompt "a red cube" --height 128 --width 128 --out a.png
    python -m glance_lite.generate --model Qwen/Qwen-Image --prompt "..." --profile 4090 --out a.png
    python -m glance_lite.generate --model Qwen/Qwen-Image --prompt "..." --base-steps 50 --out base.png
    accelerate launch -m glance_lite.generate --prompts-file prompts.txt --out-dir out/   # one process per GPU

Several prompts (repeated --prompt or --prompts-file) write out/000.png, 001.png, ... With `accelerate launch`
each process takes every N-th prompt, so N GPUs generate N images at a time.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from . import _make_callable


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m glance_lite.generate", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="tiny/qwen-image", help="hub id, local pipeline folder, or tiny/qwen-image | tiny/flux | tiny/qwen-image-edit")
    p.add_argument("--prompt", action="append", help="prompt (repeat for several)")
    p.add_argument("--prompts-file", type=Path, help="text file, one prompt per line")
    p.add_argument("--negative-prompt", default=" ")
    p.add_argument("--image", help="input image (Qwen-Image-Edit models)")
    p.add_argument("--slow-lora", help="Slow-LoRA: .safetensors file, folder, or hub repo id (with --slow-weight-name)")
    p.add_argument("--fast-lora", help="Fast-LoRA: .safetensors file, folder, or hub repo id (with --fast-weight-name)")
    p.add_argument("--slow-weight-name")
    p.add_argument("--fast-weight-name")
    p.add_argument("--no-official-loras", action="store_true", help="do not fetch the published Glance LoRAs for official base models")
    p.add_argument("--lora-compat", choices=("trained", "diffusers"), default="trained",
                   help="trained: every key at the trained scale; diffusers: load exactly as diffusers does (reproduces published images)")
    p.add_argument("--profile", default="auto", help="hardware profile name or YAML path (default: auto)")
    p.add_argument("--device", choices=("cpu",), help="run the profile's choices (quantization, residency, placement) on the CPU")
    p.add_argument("--height", type=int, default=1024)
    p.add_argument("--width", type=int, default=1024)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--true-cfg-scale", type=float, help="true CFG scale (default: the family's, 5 for Qwen-Image)")
    p.add_argument("--mode", choices=("consistent", "reference"), default="consistent", help="schedule mode (see README)")
    p.add_argument("--slow-steps", help="slow-phase indices into the 50-step schedule, e.g. 0,2,4,6,8")
    p.add_argument("--fast-steps", help="fast-phase indices, e.g. 10,20,30,40,49")
    p.add_argument("--base-steps", type=int, help="run the plain base model for N steps instead of Glance")
    p.add_argument("--out", type=Path, help="output PNG (single prompt)")
    p.add_argument("--out-dir", type=Path, help="output folder (several prompts)")
    p.add_argument("--json", action="store_true", help="print timesteps, per-stage wall time, memory and LoRA reports as JSON")
    p.add_argument("--no-progress", action="store_true")
    return p


def _prompts(args) -> list[str]:
    prompts = list(args.prompt or [])
    if args.prompts_file:
        if not args.prompts_file.is_file():
            raise SystemExit(f"error: --prompts-file {args.prompts_file} does not exist.")
        prompts += [line.strip() for line in args.prompts_file.read_text().splitlines() if line.strip()]
    if not prompts:
        raise SystemExit("error: give a prompt with --prompt TEXT (or --prompts-file FILE).")
    return prompts


def _outputs(args, n: int) -> list[Path]:
    if args.out and n == 1:
        return [args.out]
    if args.out and n > 1:
        raise SystemExit(f"error: {n} prompts need --out-dir DIR (one PNG each), not --out.")
    folder = args.out_dir or Path(".")
    return [folder / f"{i:03d}.png" for i in range(n)]


def _process_share(items: list) -> list[tuple[int, object]]:
    """Data parallel under `accelerate launch`: process r of N takes items r, r+N, ... (all items otherwise)."""
    rank, world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    return [(i, x) for i, x in enumerate(items) if i % world == rank]


def _log_to_stderr() -> None:
    """Show glance_lite's one-line notes (auto profile choice, LoRA reports) without the libraries' chatter."""
    import logging

    logger = logging.getLogger("glance_lite")
    if not logger.handlers:
        logger.addHandler(logging.StreamHandler(sys.stderr))
        logger.setLevel(logging.INFO)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _log_to_stderr()
    from .api import check_size, load
    from .schedule import PhaseSplit

    prompts = _prompts(args)
    outputs = _outputs(args, len(prompts))
    try:
        check_size(args.height, args.width)
        split = PhaseSplit.parse(args.slow_steps, args.fast_steps) if (args.slow_steps or args.fast_steps) else None
        glance = load(
            args.model, args.slow_lora, args.fast_lora,
            slow_weight_name=args.slow_weight_name, fast_weight_name=args.fast_weight_name,
            profile=args.profile, lora_compat=args.lora_compat, use_official_loras=not args.no_official_loras,
            split=split, height=args.height, width=args.width, device=args.device,
        )  # fmt: skip
        mine = _process_share(list(zip(prompts, outputs)))
        reports = []
        for index, (prompt, out) in mine:
            result = glance.generate(
                prompt, negative_prompt=args.negative_prompt, height=args.height, width=args.width,
                seed=args.seed + index, true_cfg_scale=args.true_cfg_scale, mode=args.mode,
                base_steps=args.base_steps, image=args.image, progress=not args.no_progress,
            )  # fmt: skip
            if not reports:
                for lora in result.lora_reports:
                    print(lora.summary(), file=sys.stderr)
            out.parent.mkdir(parents=True, exist_ok=True)
            result.image.save(out)
            reports.append({"prompt": prompt, "output": str(out), "seed": args.seed + index, **result.to_dict()})
            if not args.json:
                print(f"wrote {out}")
    except (ValueError, FileNotFoundError, RuntimeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps({"model": args.model, "profile": glance.profile.name, "runs": reports}, indent=2))
    return 0


def _generate(*args, **kwargs):
    from .api import generate

    return generate(*args, **kwargs)


_make_callable(__name__, _generate)  # `glance_lite.generate(...)` keeps working once this module is imported

if __name__ == "__main__":
    sys.exit(main())
