"""Time per step and peak memory of Glance LoRA training (the Slow-LoRA by default), per profile.

    python benchmarks/bench_train.py --model tiny/qwen-image --profile cpu
    python benchmarks/bench_train.py --model Qwen/Qwen-Image --profile 4090 --profile a100-80gb --steps 20
    python benchmarks/bench_train.py --model Qwen/Qwen-Image --profile 12gb --vram-cap 12

Each profile runs `glance_lite.train(...)` from scratch in a temporary folder on a one-image dataset (a drawn
picture, or `--data DIR`), with checkpoints only at the end so that no step pays for one. Per-step wall time comes
from the trainer's own loss log (`{phase}_loss.csv`, column `seconds`); the first `--warmup-steps` steps
(allocator warm-up, kernel selection, lazy init) are left out of the median. Peak memory per stage comes from the
trainer's MemoryTracker (`TrainResult.stages`): on CUDA max_memory_allocated / max_memory_reserved reset per stage,
on CPU the peak resident set size of the process.

Writes <out>/<stem>.json and <stem>.md (default stem <date>-<device>-<model>-train, folder benchmarks/results/).
"""

from __future__ import annotations

import argparse
import gc
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402

SCRIPT = "benchmarks/bench_train.py"
TINY_RESOLUTION = 128
CAPTION = "a red circle on a blue background"


def build_parser() -> argparse.ArgumentParser:
    p = C.cli.ArgumentParser(prog=f"python {SCRIPT}", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="tiny/qwen-image", help="hub id, local pipeline folder or tiny/* (default: tiny/qwen-image)")
    p.add_argument("--profile", action="append", help="profile name or YAML (repeat or comma-separate; default: auto)")
    p.add_argument("--phase", choices=("slow", "fast"), default="slow", help="which adapter to train (default: slow)")
    p.add_argument("--steps", type=int, default=12, help="training steps per profile (default 12)")
    p.add_argument("--warmup-steps", type=int, default=2, help="first steps left out of the median (default 2)")
    p.add_argument("--resolution", type=int, help=f"training resolution, long side (default 1024; {TINY_RESOLUTION} for tiny models)")
    p.add_argument("--rank", type=int, help="LoRA rank (default: the family's recipe)")
    p.add_argument("--data", type=Path, help="dataset folder (default: one drawn image with its caption)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="any other training config key (repeatable)")
    p.add_argument("--vram-cap", type=float, metavar="GB", help="emulate a smaller card: cap this process's GPU memory")
    p.add_argument("--threads", type=int, help="torch CPU threads (default: 1 for tiny models, torch's choice otherwise)")
    p.add_argument("--out", type=Path, help="output folder (default benchmarks/results/)")
    p.add_argument("--name", help="file stem (default <date>-<device>-<model>-train)")
    p.add_argument("--quiet", action="store_true")
    return p


def write_dataset(folder: Path, size: int) -> Path:
    """One image (a red disc on blue, drawn the same everywhere) and its caption: the layout `train` expects."""
    from PIL import Image, ImageDraw

    folder.mkdir(parents=True, exist_ok=True)
    image = Image.new("RGB", (size, size), (40, 70, 190))
    margin = size // 4
    ImageDraw.Draw(image).ellipse((margin, margin, size - margin - 1, size - margin - 1), fill=(215, 35, 35))
    image.save(folder / "circle.png")
    (folder / "circle.txt").write_text(CAPTION, encoding="utf-8")
    return folder


def bench_profile(args, profile_name: str, data: Path, overrides: dict, say) -> dict:
    """One `train()` call from scratch under `profile_name`; per-step times from its loss log."""
    from glance_lite.api import resolve_profile
    from glance_lite.train import read_loss_csv, train  # not `glance_lite.train`: once imported, that is the module

    profile = resolve_profile(profile_name, args.model, args.resolution, args.resolution)
    device = C.device_for(profile)
    with tempfile.TemporaryDirectory(prefix="glance-bench-train-") as output:
        say(f"[{profile.name}] training the {args.phase} LoRA for {args.steps} steps ...")
        start = time.perf_counter()
        result = train(
            args.model, data, output, args.phase, profile, dict(overrides), restart=True, progress=not args.quiet
        )
        wall = time.perf_counter() - start
        rows = read_loss_csv(Path(output) / f"{args.phase}_loss.csv")
    phase = result.phases[args.phase]
    step_seconds = [r["seconds"] for r in rows]
    timed = step_seconds[args.warmup_steps :]
    stages = {r.stage: {"seconds": r.seconds, "peak_bytes": r.peak_bytes, "reserved_bytes": r.reserved_bytes} for r in result.stages}
    say(f"[{profile.name}] {C.fmt_seconds(C.median(timed))} per step (median of {len(timed)})")
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    training = profile.training
    return {
        "profile": profile.name,
        "profile_description": profile.description,
        "device": C.describe_device(device, args.vram_cap),
        "steps": len(step_seconds),
        "step_seconds": {
            "median": C.median(timed),
            "min": min(timed) if timed else None,
            "max": max(timed) if timed else None,
            "warmup_steps_excluded": args.warmup_steps,
            "all": step_seconds,
        },
        "phase_seconds": phase.seconds,
        "train_call_seconds": wall,
        "stages": stages,
        "training_policy": {
            "optimizer": result.config.optimizer or training.optimizer,
            "base_quantization": training.base_quantization,
            "gradient_checkpointing": training.gradient_checkpointing,
            "block_offload": training.block_offload,
            "mixed_precision": training.mixed_precision,
        },
        "config": {"rank": result.config.rank, "alpha": result.config.alpha, "resolution": result.config.resolution},
        "sizes": [list(s) for s in result.sizes],
    }


def markdown(report: dict) -> str:
    s = report["settings"]
    lines = [f"# Training benchmark: {report['model']}, {s['phase']}-LoRA", ""] + C.header_lines(
        report,
        f"{s['steps']} steps per profile at resolution {s['resolution']} (long side), batch 1; the first "
        f"{s['warmup_steps']} step(s) are left out of the median",
    )
    rows = []
    for name, p in report["profiles"].items():
        cuda = p["device"]["type"] == "cuda"
        train_stage = p["stages"].get(f"train_{s['phase']}", {})
        other = {k: v for k, v in p["stages"].items() if not k.startswith("train_")}
        encode_peak = max((v["peak_bytes"] for v in other.values()), default=None)
        policy = p["training_policy"]
        rows.append([
            f"`{name}`",
            C.fmt_seconds(p["step_seconds"]["median"]),
            f"{C.fmt_seconds(p['step_seconds']['min'])} – {C.fmt_seconds(p['step_seconds']['max'])}",
            _mem(train_stage, cuda),
            C.fmt_bytes(encode_peak),
            C.fmt_seconds(p["train_call_seconds"]),
            f"rank {p['config']['rank']}, {policy['optimizer']}, frozen base {policy['base_quantization']}, "
            f"mixed precision {policy['mixed_precision']}, "
            f"gradient checkpointing {'on' if policy['gradient_checkpointing'] else 'off'}"
            + (", block offload" if policy["block_offload"] else ""),
        ])  # fmt: skip
    mem = "peak allocated / reserved" if report["device"]["type"] == "cuda" else "peak RSS"
    lines += ["", C.markdown_table(
        ["profile", "s / step (median)", "min – max", f"training {mem}", "encode peak (text, VAE)", "whole train() call", "setup"], rows
    )]  # fmt: skip
    lines += ["", "Notes:"] + [f"- {n}" for n in report["notes"]]
    return "\n".join(lines) + "\n"


def _mem(record: dict, cuda: bool) -> str:
    if not record:
        return "–"
    text = C.fmt_bytes(record.get("peak_bytes"))
    if cuda and record.get("reserved_bytes") is not None:
        text += f" / {C.fmt_bytes(record['reserved_bytes'])}"
    return text


def main(argv: list[str] | None = None) -> dict:
    """Run the benchmark; returns the report (plus the written paths). Leaves torch's thread count and RNG as found."""
    return C.keeping_torch_state(_main, argv)


def _main(argv: list[str] | None) -> dict:
    args = build_parser().parse_args(argv)
    if args.steps < 1 or args.warmup_steps < 0 or args.warmup_steps >= args.steps:
        raise C.cli.UsageError("--steps must be >= 1 and --warmup-steps in [0, steps)")
    tiny = args.model.startswith(("tiny/", "pocket/"))  # the embedded CPU-sized models
    args.resolution = args.resolution or (TINY_RESOLUTION if tiny else 1024)
    say = (lambda *_: None) if args.quiet else (lambda text: print(text, flush=True))
    if args.threads is None and tiny:
        args.threads = 1  # tiny tensors gain nothing from intra-op threads; on a shared machine they cost a lot
    if args.threads:
        torch.set_num_threads(args.threads)
    from glance_lite.api import resolve_profile

    profile_names = list(dict.fromkeys(n.strip() for item in (args.profile or ["auto"]) for n in item.split(",") if n.strip()))
    first_device = C.device_for(resolve_profile(profile_names[0], args.model, args.resolution, args.resolution))
    C.set_vram_cap(args.vram_cap, first_device)
    from glance_lite.train_config import parse_set_options

    overrides = {**parse_set_options(args.set), "steps": args.steps, "checkpoint_every": args.steps, "resolution": args.resolution}
    if args.rank:
        overrides["rank"] = args.rank
    report = {
        "benchmark": "train",
        "command": C.command_line(argv, SCRIPT),
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "model": args.model,
        "device": C.describe_device(first_device, args.vram_cap),
        "vram_cap_gb": args.vram_cap,
        "environment": C.environment(),
        "settings": {"phase": args.phase, "steps": args.steps, "warmup_steps": args.warmup_steps,
                     "resolution": args.resolution, "config_overrides": overrides, "data": str(args.data or "drawn")},  # fmt: skip
        "profiles": {},
        "notes": [
            "Per-step time: the trainer's loss log (forward, backward, clipping, optimizer step, logging); checkpoints "
            "only after the last step, so no timed step includes one. Ratios of medians are not reported: profiles "
            "trade speed for memory on purpose.",
            "Peak memory: the trainer's own stage records (encode = text encoder + VAE, evicted before the "
            "transformer loads; train_<phase> = the training loop with the transformer loaded).",
        ],
    }
    if first_device.type == "cpu":
        report["notes"].append("CPU peak memory is the resident set size of the whole Python process, sampled every 50 ms.")
    else:
        report["notes"].append("CUDA peaks exclude the CUDA context (~0.5 GB): add it when comparing with a card's size.")
    if tiny:
        report["notes"].append("Tiny and pocket models: per-step times measure Python and framework overhead, not arithmetic.")
    with tempfile.TemporaryDirectory(prefix="glance-bench-data-") as tmp:
        data = args.data or write_dataset(Path(tmp) / "data", args.resolution)
        for name in profile_names:
            result = bench_profile(args, name, data, overrides, say)
            report["profiles"][result["profile"]] = result
    folder, stem = C.output_paths(args.out, args.name or C.result_stem("train", first_device, C.model_tag(args.model), args.vram_cap))
    text = markdown(report)
    report["files"] = {"json": f"{stem}.json", "markdown": f"{stem}.md"}
    C.write_json(folder / f"{stem}.json", report)
    C.write_text(folder / f"{stem}.md", text)
    if not args.quiet:
        print()
        print(text)
        print(f"wrote {folder / stem}.json, .md")
    report["paths"] = {"json": folder / f"{stem}.json", "markdown": folder / f"{stem}.md"}
    return report


if __name__ == "__main__":
    sys.exit(C.run_command_line(main))
