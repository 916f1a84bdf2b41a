"""`python -m glance_lite.pocket ...`: reproduce the pocket model from scratch, or evaluate one.

    python -m glance_lite.pocket train-all --out DIR          # tokenizer, VAE (gated), base, export, evaluation
    python -m glance_lite.pocket train-vae --out DIR --seed 0 # one VAE candidate (writes DIR/vae-seed0/)
    python -m glance_lite.pocket evaluate --model pocket/qwen-image --steps 50
"""

from __future__ import annotations

import json
import sys

from .. import cli


@cli.command
def main(argv=None) -> int:
    parser = cli.ArgumentParser(prog="python -m glance_lite.pocket", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p_all = sub.add_parser("train-all", help="train everything from scratch into DIR (resumes finished stages)")
    p_all.add_argument("--out", required=True)
    p_all.add_argument("--threads", type=int, default=1)
    p_vae = sub.add_parser("train-vae", help="train and gate one VAE candidate")
    p_vae.add_argument("--out", required=True)
    p_vae.add_argument("--seed", type=int, default=0)
    p_vae.add_argument("--threads", type=int, default=1)
    p_eval = sub.add_parser("evaluate", help="checker adherence of a pocket pipeline on held-out prompts")
    p_eval.add_argument("--model", default="pocket/qwen-image")
    p_eval.add_argument("--steps", type=int, default=50)
    p_eval.add_argument("--renders", type=int, default=2, help="seeds per held-out prompt")
    p_eval.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)

    from . import build

    if args.command == "train-all":
        report = build.train_all(args.out)
    elif args.command == "train-vae":
        report = build.train_vae_candidate(args.out, args.seed)
    else:
        report = build.evaluate(args.model, steps=args.steps, renders=args.renders)
    print(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
