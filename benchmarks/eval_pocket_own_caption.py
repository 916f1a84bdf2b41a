"""Glance on the pocket model, on the LoRAs' OWN caption: does a Slow/Fast pair trained on one picture move that
caption's 10-step output toward the base model's 50-step output from the same noise?

    python benchmarks/eval_pocket_own_caption.py          # writes benchmarks/results/pocket-own-caption.*

eval_pocket.py asks the question on unseen prompts; this asks it where it should be easiest, on the training caption
itself (`glance_lite/assets/demo/red_circle.txt`), and takes the pair apart:
- training picture: the demo's render of the caption, or the base model's own 50-step picture of it (noise seed 0,
  true CFG 5), a distillation sample whose target IS the base-50 output for seed 0;
- recipe: "few steps" (`FEW_STEPS`, the recipe of tests/test_pocket_glance.py) or the demo's
  (`glance_lite/assets/demo/train.yaml`);
- LoRAs at sampling: none (the Glance 5+5 schedule alone), slow only, fast only, the pair;
- guidance: true CFG 5 (the default) and 1 (no guidance: the sampler follows exactly what the LoRAs were trained on).
Fidelity: PSNR of the decoded 64x64 image to the base-50 image from the same noise and CFG. Higher after than
before means the LoRAs moved the output toward base-50.

Writes <out>/<stem>.md (table), <stem>.json (every number), <stem>.png (seed 0, CFG 5; a row per trained pair).
"""

from __future__ import annotations

import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from eval_pocket import MODEL, evaluation_parser  # noqa: E402

# A LoRA pair trained "for a few steps" (tests/test_pocket_glance.py trains with exactly these settings).
FEW_STEPS = dict(rank=8, alpha=32, steps=10, learning_rate=3e-4, warmup_steps=2, caption_dropout=0.0)
GUIDANCE = (5.0, 1.0)
LORA_USES = {"none": (False, False), "slow only": (True, False), "fast only": (False, True), "pair": (True, True)}


def _generate(model, caption: str, seed: int, cfg: float, **kwargs) -> Image.Image:
    result = model.generate(caption, height=64, width=64, seed=seed, true_cfg_scale=cfg, progress=False, **kwargs)
    return result.images[0].convert("RGB")


def _train_pair(work: Path, name: str, picture: Image.Image, caption: str, settings: dict):
    from glance_lite.train import train

    data = work / name / "data"
    data.mkdir(parents=True, exist_ok=True)
    picture.save(data / "sample.png")
    (data / "sample.txt").write_text(caption + "\n", encoding="utf-8")
    return train(MODEL, data, work / name / "train", "both", "cpu", settings, progress=False, verbose=False)


def run(args) -> dict:
    import glance_lite
    from glance_lite.demo import CAPTION_FILE, CONFIG_FILE, demo_image, psnr, side_by_side
    from glance_lite.train import read_config_file

    started = time.perf_counter()
    work = args.work or Path(tempfile.mkdtemp(prefix="eval_pocket_own_"))
    caption = CAPTION_FILE.read_text(encoding="utf-8").strip()
    seeds = list(range(args.seeds))
    plain = glance_lite.load(MODEL, profile="cpu", height=64, width=64)
    base50 = {(s, cfg): _generate(plain, caption, s, cfg, base_steps=50) for s in seeds for cfg in GUIDANCE}
    before = {(s, cfg): _generate(plain, caption, s, cfg) for s in seeds for cfg in GUIDANCE}

    resolution = dict(resolution=64, min_image_size=64, checkpoint_every=1000)
    recipes = {"few steps": {**FEW_STEPS, **resolution}, "demo recipe": {**read_config_file(CONFIG_FILE), **resolution}}
    pictures = {"render": demo_image(64), "base-50 picture (seed 0, CFG 5)": base50[(0, 5.0)]}
    rows, grid = [], []
    for picture_name, picture in pictures.items():
        for recipe_name, settings in recipes.items():
            t = time.perf_counter()
            trained = _train_pair(work, f"{len(rows) // len(LORA_USES)}", picture, caption, settings)
            train_seconds = time.perf_counter() - t
            grid_row = [(f"trained on {picture_name.split(' (')[0]}\n{recipe_name}", picture), ("base 50 steps", base50[(0, 5.0)])]
            for use, (slow, fast) in LORA_USES.items():
                if use == "none":
                    images = before
                else:
                    model = glance_lite.load(MODEL, trained.adapters["slow"] if slow else None,
                                             trained.adapters["fast"] if fast else None, profile="cpu", height=64, width=64)  # fmt: skip
                    images = {(s, cfg): _generate(model, caption, s, cfg) for s in seeds for cfg in GUIDANCE}
                fidelity = {
                    str(cfg): [round(psnr(images[(s, cfg)], base50[(s, cfg)]), 2) for s in seeds]
                    for cfg in GUIDANCE
                }
                rows.append({"picture": picture_name, "recipe": recipe_name, "loras": use, "psnr": fidelity,
                             "train_seconds": round(train_seconds, 1)})  # fmt: skip
                grid_row.append((f"Glance 10, {use}", images[(0, 5.0)]))
            grid.append(grid_row)

    args.out.mkdir(parents=True, exist_ok=True)
    picture_path = side_by_side(grid, args.out / f"{args.stem}.png", panel=128)
    info = {
        "model": MODEL, "caption": caption, "seeds": seeds, "guidance": list(GUIDANCE),
        "command": " ".join(["python", "benchmarks/eval_pocket_own_caption.py", *args.argv]),
        "recipes": recipes, "platform": f"{platform.machine()}, torch {torch.__version__}, {torch.get_num_threads()} thread(s)",
        "rows": rows, "grid": picture_path.name, "seconds_total": round(time.perf_counter() - started, 1),
    }  # fmt: skip
    (args.out / f"{args.stem}.json").write_text(json.dumps(info, indent=2) + "\n")
    return info


def markdown_table(info: dict) -> str:
    cfgs = [str(c) for c in info["guidance"]]
    head = " | ".join(f"CFG {float(c):g}: seed 0 / mean (per seed)" for c in cfgs)
    lines = [f"| training picture | recipe | LoRAs | {head} |", "|---|---|---|" + "---|" * len(cfgs)]
    for r in info["rows"]:
        cells = []
        for c in cfgs:
            values = r["psnr"][c]
            cells.append(f"{values[0]:.1f} / {np.mean(values):.1f} ({', '.join(f'{v:.1f}' for v in values)})")
        lines.append(f"| {r['picture']} | {r['recipe']} | {r['loras']} | {' | '.join(cells)} |")
    return "\n".join(lines)


def verdicts(info: dict) -> str:
    """Per trained pair: did the pair raise PSNR to base-50 over the schedule alone (mean over seeds, CFG 5)?"""
    lines = []
    rows = info["rows"]
    for i in range(0, len(rows), len(LORA_USES)):
        group = {r["loras"]: r for r in rows[i : i + len(LORA_USES)]}
        none, pair = (float(np.mean(group[k]["psnr"]["5.0"])) for k in ("none", "pair"))
        seed0 = group["none"]["psnr"]["5.0"][0], group["pair"]["psnr"]["5.0"][0]
        word = "toward" if pair > none else "away from"
        lines.append(f"- {group['none']['picture']}, {group['none']['recipe']}: the pair moves the output **{word}** base-50 "
                     f"(CFG 5, mean {none:.1f} -> {pair:.1f} dB; seed 0 {seed0[0]:.1f} -> {seed0[1]:.1f} dB).")  # fmt: skip
    return "\n".join(lines)


def write_markdown(info: dict, path: Path) -> Path:
    recipes = "; ".join(f"{name}: {settings}" for name, settings in info["recipes"].items())
    text = "\n".join([
        "# Glance on the pocket model: the LoRAs' own caption",
        "",
        "Made by (from the repository root):",
        "",
        f"    {info['command']}",
        "",
        f"Model `{info['model']}` (64x64), {info['platform']}; caption `{info['caption']}`; noise seeds "
        f"{info['seeds']}; Glance 5+5, consistent mode. PSNR (dB) of each image to the base-50 image from the same "
        f"noise and CFG. Row `none` is the Glance schedule without LoRAs: the 'before' of every pair. Recipes: {recipes}. "
        f"Total {info['seconds_total']} s.",
        "",
        markdown_table(info),
        "",
        "## Verdicts (computed from the table)",
        "",
        verdicts(info),
        "",
        f"Grid: `{info['grid']}` (seed 0, CFG 5; a row per trained pair: its training picture, base 50 steps, then "
        "Glance 10 steps with none / slow / fast / both LoRAs).",
        "",
    ])  # fmt: skip
    path.write_text(text)
    return path


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    p = evaluation_parser(__doc__, "pocket-own-caption")
    p.add_argument("--seeds", type=int, default=3, help="noise seeds 0..N-1 (default 3, as the test)")
    args = p.parse_args(argv)
    args.argv = argv
    torch.set_num_threads(args.threads)
    info = run(args)
    write_markdown(info, args.out / f"{args.stem}.md")
    print(markdown_table(info))
    print(verdicts(info))
    return 0


if __name__ == "__main__":
    from glance_lite import cli

    sys.exit(cli.run(main, own_code=(Path(__file__).resolve().parent,)))
