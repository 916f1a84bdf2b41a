"""Glance on the pocket model: does a Slow/Fast LoRA pair trained on ONE picture make 10 steps as good as 50 on
prompts it never saw?

    python benchmarks/eval_pocket.py                       # trains the LoRAs, writes benchmarks/results/pocket-glance.*
    python benchmarks/eval_pocket.py --slow-lora S --fast-lora F --seeds 1 --out /tmp/x

1. The one-sample dataset of the demo (`glance_lite.demo.write_demo_dataset`: one training scene of
   `glance_lite.pocket.world`, rendered deterministically at 64x64, with its caption) trains the Slow-LoRA and the
   Fast-LoRA through `glance_lite.train.train` with the demo's recipe (`glance_lite/assets/demo/train.yaml`).
2. Every held-out caption (`world.HELD_OUT`, 26 combinations no pocket model trained on) is sampled with `--seeds`
   noise seeds; prompt i of seed round r uses noise seed 1000*r + i for every method, so all methods start from the
   same noise.
3. Methods: base 50 steps (the reference), base 10 steps (uniform), Glance 5+5 in `consistent` and `reference` mode,
   two other 10-step splits with the same LoRAs (3+7 and 7+3, `consistent`), and the Glance 5+5 schedule without
   LoRAs (control).
4. Fidelity: PSNR of each decoded 64x64 image to the base-50 image from the same noise. Adherence: the pocket
   checker (background colour, shape colour, position; % right).

Writes <out>/<stem>.md (table + answers), <stem>.json (all numbers), <stem>.png (rows = prompts, columns = methods).
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

MODEL = "pocket/qwen-image"
SPLITS = {
    # name: (slow indices, fast indices) of the 50-step dense schedule
    "5+5": ((0, 2, 4, 6, 8), (10, 20, 30, 40, 49)),  # the paper's default
    "3+7": ((0, 2, 4), (6, 12, 20, 28, 36, 44, 49)),
    "7+3": ((0, 2, 4, 6, 8, 10, 12), (20, 35, 49)),
}


def methods(split_names=("3+7", "7+3")):
    """(key, label, needs LoRAs, generate kwargs) for every column of the table."""
    from glance_lite.schedule import PhaseSplit

    out = [
        ("base50", "base, 50 steps", False, {"base_steps": 50}),
        ("base10", "base, 10 steps (uniform)", False, {"base_steps": 10}),
        ("glance_ref", "Glance 5+5, reference", True, {"mode": "reference", "split": PhaseSplit(*SPLITS["5+5"])}),
        ("glance_con", "Glance 5+5, consistent", True, {"mode": "consistent", "split": PhaseSplit(*SPLITS["5+5"])}),
    ]
    for name in split_names:
        out.append((f"glance_{name}", f"Glance {name}, consistent", True, {"mode": "consistent", "split": PhaseSplit(*SPLITS[name])}))
    out.append(("no_lora", "Glance 5+5 schedule, no LoRAs", False, {"mode": "consistent", "split": PhaseSplit(*SPLITS["5+5"])}))
    return out


def train_loras(out: Path, steps: int | None = None, progress: bool = False):
    from glance_lite.demo import CONFIG_FILE, write_demo_dataset
    from glance_lite.train import read_config_file, train

    settings = read_config_file(CONFIG_FILE)
    if steps is not None:
        settings["steps"] = steps
    data = write_demo_dataset(out / "data", int(settings["resolution"]))
    result = train(MODEL, data, out / "train", "both", "cpu", settings, progress=progress)
    return result, settings


def run(args) -> dict:
    import glance_lite
    from glance_lite.demo import psnr, side_by_side
    from glance_lite.pocket import checker, world

    started = time.perf_counter()
    args.out.mkdir(parents=True, exist_ok=True)
    work = args.work or Path(tempfile.mkdtemp(prefix="eval_pocket_"))
    info: dict = {"model": MODEL, "command": " ".join(["python", "benchmarks/eval_pocket.py"] + args.argv)}
    if args.slow_lora and args.fast_lora:
        slow, fast = args.slow_lora, args.fast_lora
        info["training"] = {"slow_lora": str(slow), "fast_lora": str(fast)}
    else:
        t = time.perf_counter()
        trained, settings = train_loras(work, args.train_steps)
        slow, fast = trained.adapters["slow"], trained.adapters["fast"]
        info["training"] = {
            "caption": trained.captions[0],
            "settings": {k: v for k, v in settings.items()},
            "seconds": round(time.perf_counter() - t, 1),
            "phases": {
                p.phase: {"timesteps": [round(float(x), 1) for x in p.timesteps], "steps": p.steps,
                          "loss_before": p.eval_loss_before, "loss_after": p.eval_loss_after}
                for p in trained.phases.values()
            },
        }  # fmt: skip
        train_caption = trained.captions[0]
        assert train_caption not in world.HELD_OUT_CAPTIONS

    with_lora = glance_lite.load(MODEL, slow, fast, profile="cpu", height=64, width=64)
    plain = glance_lite.load(MODEL, profile="cpu", height=64, width=64)
    scenes = list(world.HELD_OUT)[: args.prompts] if args.prompts else list(world.HELD_OUT)
    captions = [s.caption for s in scenes]
    table = methods()
    images: dict[str, list] = {key: [] for key, *_ in table}
    seconds: dict[str, float] = {}
    for r in range(args.seeds):
        for key, _, lora, kwargs in table:
            model = with_lora if lora else plain
            t = time.perf_counter()
            result = model.generate(captions, height=64, width=64, seed=1000 * r, progress=False, **kwargs)
            seconds[key] = seconds.get(key, 0.0) + time.perf_counter() - t
            images[key] += result.images
    all_scenes = scenes * args.seeds
    arrays = {key: [np.asarray(im.convert("RGB")) for im in ims] for key, ims in images.items()}
    rows = {}
    for key, label, lora, kwargs in table:
        scores = checker.score(images[key], all_scenes)
        values = [psnr(a, b) for a, b in zip(arrays[key], arrays["base50"])]
        rows[key] = {
            "label": label,
            "steps": kwargs.get("base_steps") or len(kwargs["split"].slow + kwargs["split"].fast),
            "split": None if "split" not in kwargs else {"slow": list(kwargs["split"].slow), "fast": list(kwargs["split"].fast)},
            "mode": kwargs.get("mode"),
            "loras": lora,
            "psnr_mean": None if key == "base50" else round(float(np.mean(values)), 2),
            "psnr_median": None if key == "base50" else round(float(np.median(values)), 2),
            "adherence": {k: round(v, 4) for k, v in scores.items()},
            "seconds": round(seconds[key], 1),
        }
    # Per-prompt wins of Glance 5+5 (both modes) over base 10 on PSNR.
    for key in ("glance_con", "glance_ref"):
        wins = sum(psnr(g, b50) > psnr(b, b50) for g, b, b50 in zip(arrays[key], arrays["base10"], arrays["base50"]))
        rows[key]["psnr_wins_vs_base10"] = f"{wins}/{len(all_scenes)}"

    shown = scenes[: args.grid_rows]
    grid = []
    for i, s in enumerate(shown):
        row = []
        for key, label, *_ in table:
            title = label.replace(", ", "\n", 1) if key != "base50" else f"base 50 steps\n{s.colour} {s.shape}/{s.background}"
            row.append((title, images[key][i]))
        grid.append(row)
    picture = side_by_side(grid, args.out / f"{args.stem}.png", panel=128)

    info.update({
        "held_out_prompts": len(scenes), "seeds": args.seeds, "images_per_method": len(all_scenes),
        "platform": f"{platform.machine()}, torch {torch.__version__}, {torch.get_num_threads()} thread(s)",
        "methods": rows, "grid": str(picture.relative_to(ROOT) if picture.is_relative_to(ROOT) else picture),
        "grid_prompts": [s.caption for s in shown],
        "seconds_total": round(time.perf_counter() - started, 1),
    })  # fmt: skip
    (args.out / f"{args.stem}.json").write_text(json.dumps(info, indent=2) + "\n")
    return info


def markdown_table(info: dict) -> str:
    lines = [
        "| method | steps | LoRAs | PSNR to base-50 (dB), mean / median | background | shape colour | position | all | generate s |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for key, r in info["methods"].items():
        a = r["adherence"]
        p = "reference" if r["psnr_mean"] is None else f"{r['psnr_mean']:.2f} / {r['psnr_median']:.2f}"
        if "psnr_wins_vs_base10" in r:
            p += f" (beats base-10 on {r['psnr_wins_vs_base10']})"
        lines.append(
            f"| {r['label']} | {r['steps']} | {'yes' if r['loras'] else 'no'} | {p} | {a['background']:.1%} | "
            f"{a['colour']:.1%} | {a['position']:.1%} | {a['all']:.1%} | {r['seconds']:.1f} |"
        )
    return "\n".join(lines)


def answers(info: dict) -> str:
    """Plain comparisons read off the numbers (the interpretation is written under them by hand, if at all)."""
    m = info["methods"]

    def line(key: str) -> str:
        r = m[key]
        return f"{r['label']}: PSNR {r['psnr_mean']:.2f} dB, checker all {r['adherence']['all']:.1%}"

    g, b = m["glance_con"], m["base10"]
    verdict_f = "beats" if g["psnr_mean"] > b["psnr_mean"] else "does not beat"
    verdict_a = "beats" if g["adherence"]["all"] > b["adherence"]["all"] else "does not beat"
    splits = sorted(("glance_3+7", "glance_con", "glance_7+3"), key=lambda k: m[k]["psnr_mean"], reverse=True)
    return "\n".join([
        f"- Glance 5+5 (consistent) **{verdict_f}** uniform base-10 on fidelity and **{verdict_a}** it on adherence "
        f"for unseen prompts: {line('glance_con')} vs {line('base10')} (per image it beats base-10's PSNR on "
        f"{g['psnr_wins_vs_base10']}; reference mode on {m['glance_ref']['psnr_wins_vs_base10']}).",
        f"- Schedule mode: {line('glance_con')}; {line('glance_ref')}.",
        "- Split (same LoRAs, consistent mode), best PSNR first: " + "; ".join(line(k) for k in splits) + ".",
        f"- Control, {line('no_lora')}.",
    ])  # fmt: skip


def write_markdown(info: dict, path: Path) -> Path:
    t = info.get("training", {})
    split_lines = [
        f"| {r['label']} | {r['split']['slow'] if r['split'] else '-'} | {r['split']['fast'] if r['split'] else '-'} | {r['mode'] or 'stock'} |"
        for r in info["methods"].values()
    ]
    text = "\n".join([
        "# Glance on the pocket model: one-picture LoRAs, unseen prompts",
        "",
        "Made by (from the repository root):",
        "",
        f"    {info['command']}",
        "",
        f"Model `{info['model']}` (64x64), {info['platform']}. LoRAs trained on ONE picture: `{t.get('caption', '(given)')}` "
        f"(`glance_lite/assets/demo/`, rendered by `glance_lite.pocket.world`), with `glance_lite.train` and the "
        f"recipe in `glance_lite/assets/demo/train.yaml` ({t.get('settings', {})}); training {t.get('seconds', '-')} s.",
        "",
        f"Evaluated on {info['held_out_prompts']} held-out captions (`world.HELD_OUT`: no pocket model trained on them) "
        f"x {info['seeds']} noise seed(s) = {info['images_per_method']} images per method; every method starts from "
        "the same noise for the same prompt. PSNR: decoded image vs the base-50 image from the same noise. "
        "Adherence: `glance_lite.pocket.checker` (% right). True CFG 5 everywhere. Total "
        f"{info['seconds_total']} s.",
        "",
        markdown_table(info),
        "",
        "Schedules (0-based indices into the 50-step dense schedule; the 3+7 and 7+3 runs reuse the 5+5-trained LoRAs):",
        "",
        "| method | slow indices | fast indices | mode |",
        "|---|---|---|---|",
        *split_lines,
        "",
        f"Grid: `{Path(info['grid']).name}` (rows: the first {len(info['grid_prompts'])} held-out prompts, seed 0; columns: the methods above).",
        "",
        "## Answers (computed from the table)",
        "",
        answers(info),
        "",
    ])  # fmt: skip
    path.write_text(text)
    return path


def evaluation_parser(description: str, stem: str, held_out: bool = False) -> argparse.ArgumentParser:
    """The options every pocket evaluation script takes; `held_out`: those of one over the held-out captions."""
    from glance_lite import cli

    p = cli.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    p.add_argument("--stem", default=stem)
    p.add_argument("--work", type=Path, default=None, help="where the one-sample data and LoRAs go (default: a temporary folder)")
    p.add_argument("--threads", type=int, default=1)
    if held_out:
        p.add_argument("--seeds", type=int, default=2, help="noise seeds per held-out prompt (default 2)")
        p.add_argument("--prompts", type=int, default=0, help="only the first N held-out prompts (default all 26)")
        p.add_argument("--grid-rows", type=int, default=6)
        p.add_argument("--from-json", type=Path, default=None, help="only rewrite the markdown from a JSON this script wrote")
    return p


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    p = evaluation_parser(__doc__, "pocket-glance", held_out=True)
    p.add_argument("--slow-lora", type=Path, default=None)
    p.add_argument("--fast-lora", type=Path, default=None)
    p.add_argument("--train-steps", type=int, default=None, help="override the demo recipe's steps per phase")
    args = p.parse_args(argv)
    args.argv = argv
    torch.set_num_threads(args.threads)
    if args.from_json:
        info = json.loads(args.from_json.read_text())
    else:
        info = run(args)
    args.out.mkdir(parents=True, exist_ok=True)
    write_markdown(info, args.out / f"{args.stem}.md")
    print(markdown_table(info))
    print(json.dumps({k: v for k, v in info.items() if k != "methods"}, indent=2))
    return 0


if __name__ == "__main__":
    from glance_lite import cli

    sys.exit(cli.run(main, own_code=(Path(__file__).resolve().parent,)))
