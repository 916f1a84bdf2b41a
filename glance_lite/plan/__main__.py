"""`python -m glance_lite.plan`: per-stage GPU and RAM memory for a model and a profile, offline, without weights."""

from __future__ import annotations

import argparse
import json
import sys

from .. import cli


def build_parser() -> argparse.ArgumentParser:
    parser = cli.ArgumentParser(
        prog="python -m glance_lite.plan",
        description="Predict per-stage GPU and RAM memory for a model and a hardware profile, offline, without weights.",
    )
    parser.add_argument("--model", default="Qwen/Qwen-Image", help="hub id, local pipeline folder, tiny/<name> or pocket/qwen-image")
    parser.add_argument("--profile", default="auto", help="built-in profile name, path to a YAML file, or auto")
    parser.add_argument("--height", type=int, default=1024)
    parser.add_argument("--width", type=int, default=1024)
    parser.add_argument("--lora-rank", type=cli.positive(int), default=None, help="default: the family's training rank")
    parser.add_argument("--text-tokens", type=cli.positive(int), default=None, help="prompt tokens at generation")
    parser.add_argument("--gpu-memory-gb", type=cli.positive(float), default=None, help="plan against this GPU size instead")
    parser.add_argument("--system-ram-gb", type=cli.positive(float), default=None, help="plan against this much RAM instead")
    parser.add_argument("--mode", default="consistent", choices=("consistent", "reference"), help="phase schedule")
    parser.add_argument("--method", help="sampling method priced: glance (default), base-N, fewstep-N, lightning-8, lightning-4")
    parser.add_argument("--device", choices=("cpu",), default=None, help="plan the profile's choices run on the CPU")
    parser.add_argument("--simulate", action="store_true",
                        help="also measure every stage on the real graph (meta device) and flag formula/simulation gaps over 10%%")
    parser.add_argument("--json", action="store_true", help="print every number as JSON")
    parser.add_argument("--strict", action="store_true", help="exit with status 1 when the plan does not fit")
    return parser


@cli.command
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from ..checks import check_size
    from . import plan

    check_size(args.height, args.width)  # before `--profile auto` imports torch to look for GPUs
    if args.method:
        from ..methods import parse_method

        parse_method(args.method)
    reason = None
    profile = args.profile
    if profile == "auto":
        from ..autoselect import select_profile

        profile, reason = select_profile(args.model, args.height, args.width)
    result = plan(
        args.model, profile, args.height, args.width, lora_rank=args.lora_rank, text_tokens=args.text_tokens,
        gpu_memory_gb=args.gpu_memory_gb, system_ram_gb=args.system_ram_gb, mode=args.mode, device=args.device,
        simulate=args.simulate, method=args.method,
    )  # fmt: skip
    if args.json:
        data = result.to_dict()
        if reason:
            data["auto_reason"] = reason
        print(json.dumps(data, indent=2, default=str))
    else:
        if reason:
            print(reason + "\n")
        print(result.table())
    return 1 if (args.strict and not result.fits) else 0


if __name__ == "__main__":
    sys.exit(main())
