"""Where few steps hurt: Glance and a distilled few-step LoRA on the pocket model at 4, 3 and 2 steps, on prompts
neither ever saw.

    python benchmarks/eval_pocket_fewstep.py --work /tmp/fewstep              # everything, ~40 min on 2 cores
    python benchmarks/eval_pocket_fewstep.py --work W --skip-sweep --fewstep-lora shipped   # reuse W's sweep

1. Glance recipes, chosen on the training caption only (`--skip-sweep` reuses the sweep's JSON): for every split in
   SPLITS (slow steps from the start of the dense 50-step schedule, fast steps jumping through the rest) and every
   recipe in RECIPES, a Slow/Fast LoRA pair is trained with `glance_lite.train` on the demo's ONE picture at exactly
   that split's timesteps, and scored by the PSNR of the training caption's samples (SWEEP_SEEDS noise seeds) to
   its base-50 samples. The best recipe per split goes on; the held-out captions play no part.
2. The distilled few-step LoRAs (`--phase distill`, over the 334 training captions: `world.TRAIN_CAPTIONS`) for 4
   and 2 steps: trained here into the work folder (`--fewstep-lora train`), or the ones the package ships
   (`--fewstep-lora shipped`, `glance_lite/assets/pocket_qwen_image_fewstep/`, made by this same training).
3. Every held-out caption (`world.HELD_OUT`, 26) x `--seeds` noise seeds; prompt i of seed round r uses noise seed
   1000 r + i for every method. Methods: base-50 (the reference); at each step count N: base-N (true CFG), each
   N-step split's Glance schedule without LoRAs, the same with its LoRAs, and the distilled LoRA (no guidance).
   PSNR of the decoded image to base-50's, and the pocket checker's judgements; a PNG grid.

Writes <out>/<stem>.md, .json, .png and, from step 1, <out>/<stem>-sweep.md and .json.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

MODEL = "pocket/qwen-image"
SIZE = 64
STEP_COUNTS = (4, 3, 2)
# name: (slow indices, fast indices) of the dense 50-step schedule. As in the paper's 5+5 (slow 0..8, fast 10..49):
# the slow steps share the first 10 indices, the fast ones jump from index 10 through the rest in equal strides.
SPLITS = {
    "2+2": ((0, 5), (10, 30)),
    "1+3": ((0,), (10, 23, 37)),
    "2+1": ((0, 5), (10,)),
    "1+2": ((0,), (10, 30)),
    "1+1": ((0,), (10,)),
}
# The recipe sweep: the demo recipe (glance_lite/assets/demo/train.yaml: rank 16, 100 steps, lr 3e-4) and its
# neighbours in rank, steps and learning rate; alpha stays 4 x rank, as in the reference.
RECIPES = {
    "r16-s100-lr3e-4": dict(rank=16, alpha=64, steps=100, learning_rate=3e-4),
    "r16-s30-lr3e-4": dict(rank=16, alpha=64, steps=30, learning_rate=3e-4),
    "r16-s100-lr1e-4": dict(rank=16, alpha=64, steps=100, learning_rate=1e-4),
    "r4-s100-lr3e-4": dict(rank=4, alpha=16, steps=100, learning_rate=3e-4),
    "r4-s30-lr3e-4": dict(rank=4, alpha=16, steps=30, learning_rate=3e-4),
    "r4-s100-lr1e-4": dict(rank=4, alpha=16, steps=100, learning_rate=1e-4),
}
SWEEP_SEEDS = (100, 101, 102, 103)  # noise seeds of the training caption's sweep samples (not the evaluation's)
DISTILL_STEPS = (4, 2)
# The distillation recipe the shipped LoRAs were trained with (assets/pocket_qwen_image_fewstep/README.md).
DISTILL_SETTINGS = {"resolution": SIZE}


def steps_of(split: str) -> int:
    slow, fast = SPLITS[split]
    return len(slow) + len(fast)


# ==== training ====================================================================================================
def train_glance(work: Path, split: str, recipe: str):
    """The Slow/Fast pair of one split and recipe, trained on the demo picture (a finished one is reused)."""
    from glance_lite.demo import CONFIG_FILE, write_demo_dataset
    from glance_lite.train import read_config_file, train

    slow, fast = SPLITS[split]
    settings = {**read_config_file(CONFIG_FILE), **RECIPES[recipe], "slow_steps": list(slow), "fast_steps": list(fast)}
    data = write_demo_dataset(work / "data", SIZE)
    return train(MODEL, data, work / "glance" / split / recipe, "both", "cpu", settings, progress=False, verbose=False)


def train_distilled(work: Path, steps: int, settings: dict | None = None):
    """The few-step student for `steps` steps over every training caption (teacher latents cached in work/cache)."""
    from glance_lite.pocket import world
    from glance_lite.train import train

    captions = work / "train_captions.txt"
    captions.write_text("\n".join(sorted(world.TRAIN_CAPTIONS)) + "\n", encoding="utf-8")
    config = {**DISTILL_SETTINGS, **(settings or {}), "distill_steps": steps, "cache_dir": str(work / "cache")}
    return train(MODEL, captions, work / "distill" / f"fewstep-{steps}", "distill", "cpu", config, progress=True)


# ==== sampling and scoring ========================================================================================
def sample(model, captions: list[str], seeds: int, **kwargs) -> tuple[list, float, int]:
    """Images of every caption for `seeds` rounds (prompt i of round r: noise seed 1000 r + i), the seconds, and the
    transformer calls per image."""
    images, started = [], time.perf_counter()
    for r in range(seeds):
        result = model.generate(captions, height=SIZE, width=SIZE, seed=1000 * r, progress=False, **kwargs)
        images += result.images
    return images, time.perf_counter() - started, result.transformer_calls


def psnrs(images, reference) -> list[float]:
    from glance_lite.demo import psnr

    return [psnr(np.asarray(a.convert("RGB")), np.asarray(b.convert("RGB"))) for a, b in zip(images, reference)]


def sweep(work: Path, splits, recipes, out: Path, stem: str) -> dict:
    """Step 1: every split x recipe, scored on the training caption only; the best recipe per split."""
    import glance_lite
    from glance_lite.demo import CAPTION_FILE
    from glance_lite.schedule import PhaseSplit

    caption = CAPTION_FILE.read_text(encoding="utf-8").strip()
    plain = glance_lite.load(MODEL, profile="cpu", height=SIZE, width=SIZE)
    reference = [plain.generate(caption, height=SIZE, width=SIZE, seed=s, progress=False, method="base-50").images[0] for s in SWEEP_SEEDS]
    rows, best = [], {}
    for split in splits:
        schedule = PhaseSplit(*SPLITS[split])
        alone = [plain.generate(caption, height=SIZE, width=SIZE, seed=s, progress=False, split=schedule).images[0] for s in SWEEP_SEEDS]
        rows.append({"split": split, "recipe": "(no LoRAs)", "psnr": round(float(np.mean(psnrs(alone, reference))), 2)})
        for recipe in recipes:
            t = time.perf_counter()
            trained = train_glance(work, split, recipe)
            seconds = time.perf_counter() - t
            model = glance_lite.load(MODEL, trained.adapters["slow"], trained.adapters["fast"], profile="cpu", height=SIZE, width=SIZE)
            images = [model.generate(caption, height=SIZE, width=SIZE, seed=s, progress=False, split=schedule).images[0] for s in SWEEP_SEEDS]
            score = round(float(np.mean(psnrs(images, reference))), 2)
            rows.append({"split": split, "recipe": recipe, "psnr": score, "train_seconds": round(seconds, 1)})
            print(f"sweep {split} {recipe}: PSNR to base-50 on the training caption {score:.2f} dB", flush=True)
            if split not in best or score > best[split]["psnr"]:
                best[split] = {"recipe": recipe, "psnr": score}
    info = {"caption": caption, "seeds": list(SWEEP_SEEDS), "rows": rows, "best": best, "recipes": {k: RECIPES[k] for k in recipes}}
    (out / f"{stem}-sweep.json").write_text(json.dumps(info, indent=2) + "\n")
    lines = [
        "# Glance recipes for few steps on the pocket model, chosen on the training caption only",
        "",
        f"Part of `{stem}.md` (same command). Each split's Slow/Fast LoRAs trained on the demo's one picture "
        f"(`{caption}`) with each recipe; score: mean PSNR (dB) of the training caption's samples (noise seeds "
        f"{', '.join(map(str, SWEEP_SEEDS))}) to its base-50 samples from the same noise. No held-out caption is used.",
        "",
        "| split | recipe | PSNR to base-50 (dB) | train s |",
        "|---|---|---|---|",
        *[f"| {r['split']} | {r['recipe']}{' **(chosen)**' if best.get(r['split'], {}).get('recipe') == r['recipe'] else ''} | "
          f"{r['psnr']:.2f} | {r.get('train_seconds', '-')} |" for r in rows],
        "",
        "Recipes: " + "; ".join(f"`{k}` = {v}" for k, v in info["recipes"].items()) + " (other keys: `glance_lite/assets/demo/train.yaml`).",
        "",
    ]  # fmt: skip
    (out / f"{stem}-sweep.md").write_text("\n".join(lines))
    return info


def methods(best: dict, fewstep: dict[int, Path]) -> list[dict]:
    """Every column: key, label, step count, how to sample it."""
    from glance_lite.schedule import PhaseSplit

    out = [{"key": "base50", "label": "base, 50 steps", "steps": 50, "kind": "base", "kwargs": {"method": "base-50"}}]
    for n in STEP_COUNTS:
        out.append({"key": f"base{n}", "label": f"base, {n} steps", "steps": n, "kind": "base", "kwargs": {"method": f"base-{n}"}})
        for split in (s for s in SPLITS if steps_of(s) == n and s in best):
            schedule = PhaseSplit(*SPLITS[split])
            out.append({"key": f"sched{split}", "label": f"Glance {split} schedule, no LoRAs", "steps": n, "kind": "schedule",
                        "split": split, "kwargs": {"split": schedule}})  # fmt: skip
            out.append({"key": f"glance{split}", "label": f"Glance {split} + LoRAs", "steps": n, "kind": "glance",
                        "split": split, "recipe": best[split]["recipe"], "kwargs": {"split": schedule}})  # fmt: skip
        if n in fewstep:
            out.append({"key": f"fewstep{n}", "label": f"distilled LoRA, {n} steps", "steps": n, "kind": "fewstep",
                        "lora": str(fewstep[n]), "kwargs": {"method": f"fewstep-{n}"}})  # fmt: skip
    return out


def evaluate(args, work: Path, best: dict, fewstep: dict[int, Path]) -> dict:
    """Step 3."""
    import glance_lite
    from glance_lite.demo import side_by_side
    from glance_lite.pocket import checker, world

    scenes = list(world.HELD_OUT)[: args.prompts] if args.prompts else list(world.HELD_OUT)
    captions, all_scenes = [s.caption for s in scenes], scenes * args.seeds
    plain = glance_lite.load(MODEL, profile="cpu", height=SIZE, width=SIZE)
    columns = methods(best, fewstep)
    images, rows = {}, {}
    for m in columns:
        if m["kind"] == "glance":
            trained = train_glance(work, m["split"], m["recipe"])
            model = glance_lite.load(MODEL, trained.adapters["slow"], trained.adapters["fast"], profile="cpu", height=SIZE, width=SIZE)
        elif m["kind"] == "fewstep":
            model = glance_lite.load(MODEL, profile="cpu", height=SIZE, width=SIZE, method=m["kwargs"]["method"], fewstep_lora=m["lora"])
        else:
            model = plain
        images[m["key"]], seconds, calls = sample(model, captions, args.seeds, **m["kwargs"])
        values = psnrs(images[m["key"]], images["base50"]) if m["key"] != "base50" else None
        rows[m["key"]] = {
            **{k: v for k, v in m.items() if k != "kwargs"},
            "transformer_calls": calls,
            "psnr_mean": None if values is None else round(float(np.mean(values)), 2),
            "psnr_median": None if values is None else round(float(np.median(values)), 2),
            "psnr": None if values is None else [round(v, 2) for v in values],
            "adherence": {k: round(v, 4) for k, v in checker.score(images[m["key"]], all_scenes).items()},
            "seconds": round(seconds, 1),
        }
        print(f"{m['label']}: PSNR {rows[m['key']]['psnr_mean']}, checker {rows[m['key']]['adherence']['all']:.1%}", flush=True)
    for key, r in rows.items():  # per-image wins over base-N at the same step count
        if r["kind"] in ("glance", "schedule", "fewstep"):
            base = rows[f"base{r['steps']}"]["psnr"]
            r["wins_vs_base"] = f"{sum(a > b for a, b in zip(r['psnr'], base))}/{len(base)}"

    shown = scenes[: args.grid_rows]
    grid = [[(m["label"].replace(", ", "\n", 1).replace(" + ", "\n+ ").replace(" schedule", "\nschedule"), images[m["key"]][i]) for m in columns]
            for i in range(len(shown))]  # fmt: skip
    picture = side_by_side(grid, args.out / f"{args.stem}.png", panel=96)
    return {
        "model": MODEL, "held_out_prompts": len(scenes), "seeds": args.seeds, "images_per_method": len(all_scenes),
        "methods": rows, "grid": picture.name, "grid_prompts": [s.caption for s in shown],
    }  # fmt: skip


# ==== report ======================================================================================================
def markdown_table(info: dict) -> str:
    lines = [
        "| steps | method | transformer calls | PSNR to base-50 (dB), mean / median | beats base-N's PSNR on | background | shape colour | position | all | generate s |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in info["methods"].values():
        a = r["adherence"]
        p = "reference" if r["psnr_mean"] is None else f"{r['psnr_mean']:.2f} / {r['psnr_median']:.2f}"
        lines.append(f"| {r['steps']} | {r['label']} | {r['transformer_calls']} | {p} | {r.get('wins_vs_base', '-')} | "
                     f"{a['background']:.1%} | {a['colour']:.1%} | {a['position']:.1%} | {a['all']:.1%} | {r['seconds']:.1f} |")  # fmt: skip
    return "\n".join(lines)


def answers(info: dict) -> str:
    """Comparisons read off the numbers, one per step count."""
    m, lines = info["methods"], []
    for n in STEP_COUNTS:
        base = m[f"base{n}"]
        parts = [f"base-{n} {base['psnr_mean']:.2f} dB / {base['adherence']['all']:.1%}"]
        for key, r in m.items():
            if r["steps"] == n and r["kind"] != "base":
                verdict = "beats" if r["psnr_mean"] > base["psnr_mean"] else "does not beat"
                parts.append(f"{r['label']} {r['psnr_mean']:.2f} dB / {r['adherence']['all']:.1%} ({verdict} base-{n} on PSNR, per image on {r['wins_vs_base']})")
        lines.append(f"- **{n} steps**: " + "; ".join(parts) + ".")
    return "\n".join(lines)


def write_markdown(info: dict, path: Path) -> Path:
    fewstep = {r["steps"]: r["lora"] for r in info["methods"].values() if r["kind"] == "fewstep"}
    text = "\n".join([
        "# Where few steps hurt: Glance and a distilled few-step LoRA on the pocket model, unseen prompts",
        "",
        "Made by (from the repository root):",
        "",
        f"    {info['command']}",
        "",
        f"Model `{info['model']}` ({SIZE}x{SIZE}), {info['platform']}. Evaluated on {info['held_out_prompts']} held-out "
        f"captions (`world.HELD_OUT`: no pocket model and no LoRA trained on them) x {info['seeds']} noise seeds = "
        f"{info['images_per_method']} images per method, every method from the same noise for the same prompt. "
        "PSNR: decoded image vs the base-50 image from the same noise; adherence: `glance_lite.pocket.checker` (% right). "
        "True CFG 5 for base and Glance (two transformer passes per step on the cpu profile); the distilled LoRA samples "
        "without guidance (one pass per step). 'beats base-N on': images whose PSNR is higher than base-N's. "
        f"Total {info['seconds_total']} s.",
        "",
        markdown_table(info),
        "",
        "Glance splits (0-based indices into the 50-step dense schedule) and the recipe the sweep chose for each, on "
        f"the training caption only (`{info['stem']}-sweep.md`):",
        "",
        "| split | slow | fast | recipe | its PSNR on the training caption (dB) |",
        "|---|---|---|---|---|",
        *[f"| {s} | {list(SPLITS[s][0])} | {list(SPLITS[s][1])} | `{b['recipe']}` | {b['psnr']:.2f} |" for s, b in info["best"].items()],
        "",
        "Distilled LoRAs: " + ", ".join(f"{n} steps `{p}`" for n, p in fewstep.items()) + f"; {info['distilled']}.",
        "",
        f"Grid: `{info['grid']}` (rows: the first {len(info['grid_prompts'])} held-out prompts, seed 0; columns: the methods above).",
        "",
        "## Answers (computed from the table)",
        "",
        answers(info),
        "",
    ])  # fmt: skip
    path.write_text(text)
    return path


def main(argv=None) -> int:
    from eval_pocket import evaluation_parser

    argv = list(sys.argv[1:] if argv is None else argv)
    p = evaluation_parser(__doc__, "pocket-fewstep", held_out=True)
    p.add_argument("--splits", default=",".join(SPLITS), help="comma-separated split names (default: all)")
    p.add_argument("--recipes", default=",".join(RECIPES), help="comma-separated recipe names (default: all)")
    p.add_argument("--skip-sweep", action="store_true", help="reuse <out>/<stem>-sweep.json (its LoRAs are retrained or reused from --work)")
    p.add_argument("--fewstep-lora", choices=("train", "shipped", "none"), default="train",
                   help="the distilled LoRAs: train them in --work (default), the package's shipped ones, or none")  # fmt: skip
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    if args.from_json:
        info = json.loads(args.from_json.read_text())
    else:
        started = time.perf_counter()
        work = args.work or Path(tempfile.mkdtemp(prefix="eval_pocket_fewstep_"))
        work.mkdir(parents=True, exist_ok=True)
        splits = [s for s in args.splits.split(",") if s]
        if args.skip_sweep:
            best = json.loads((args.out / f"{args.stem}-sweep.json").read_text())["best"]
        else:
            best = sweep(work, splits, [r for r in args.recipes.split(",") if r], args.out, args.stem)["best"]
        best = {s: b for s, b in best.items() if s in splits}
        fewstep: dict[int, Path] = {}
        if args.fewstep_lora == "train":
            for n in DISTILL_STEPS:
                fewstep[n] = train_distilled(work, n).adapters["distill"]
            distilled = "trained by this command with `--phase distill` over the 334 training captions"
        elif args.fewstep_lora == "shipped":
            from glance_lite.pocket import bundled_fewstep_lora

            fewstep = {n: bundled_fewstep_lora(MODEL, n) for n in DISTILL_STEPS if bundled_fewstep_lora(MODEL, n)}
            distilled = "the ones the package ships (the README beside them gives the command that made them)"
        else:
            distilled = "none"
        info = evaluate(args, work, best, fewstep)
        info.update({
            "command": " ".join(["python", "benchmarks/eval_pocket_fewstep.py", *argv]), "stem": args.stem, "best": best,
            "distilled": distilled, "seconds_total": round(time.perf_counter() - started, 1),
            "platform": f"{platform.machine()}, torch {torch.__version__}, {torch.get_num_threads()} thread(s)",
        })  # fmt: skip
        for r in info["methods"].values():
            if r.get("lora"):
                r["lora"] = str(Path(r["lora"]).relative_to(ROOT)) if Path(r["lora"]).is_relative_to(ROOT) else Path(r["lora"]).name
        (args.out / f"{args.stem}.json").write_text(json.dumps(info, indent=2) + "\n")
    write_markdown(info, args.out / f"{args.stem}.md")
    print(markdown_table(info))
    return 0


if __name__ == "__main__":
    from glance_lite import cli

    sys.exit(cli.run(main, own_code=(Path(__file__).resolve().parent,)))
