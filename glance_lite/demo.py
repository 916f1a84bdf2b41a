"""`python -m glance_lite.demo`: the whole Glance story on a CPU in about a minute, with nothing to download.

    python -m glance_lite.demo                 # writes glance_demo/: side_by_side.png, report.md, the adapters
    python -m glance_lite.demo --out DIR --quick

1. a one-sample dataset: the package's caption (`assets/demo/red_circle.txt`, a pocket-world caption) and its
   picture, rendered here deterministically by `glance_lite.pocket.world` (so the package ships no binary);
2. `glance_lite.train` trains the Slow-LoRA and the Fast-LoRA on it (`assets/demo/train.yaml`), on the embedded
   pocket model (`pocket/qwen-image`: the real Qwen-Image architecture and code paths, trained by the project on
   64x64 pictures of one coloured shape on a plain background, `glance_lite.pocket`);
3. `glance_lite.load(...).generate` samples the caption with Glance (5 slow + 5 fast steps), with the base model
   (50 steps and 10 steps), all with true CFG, and once more with the Glance schedule but no LoRAs; the few-step
   regime beside them: the base model at 4 steps, and the few-step LoRA distilled from the pocket model (shipped,
   4 steps without guidance); then the same for a caption the pocket model never trained on
   (`pocket.world.HELD_OUT`), with the same adapters;
4. side_by_side.png shows them side by side (row 1: the training caption, row 2: the unseen one; images/ holds each
   picture alone, with the settings that made it in its PNG text chunk), report.md what
   each part cost (time, transformer calls, memory) and how far each image is from the 50-step one.

benchmarks/eval_pocket.py measures the same comparison over every held-out caption
(benchmarks/results/pocket-glance.md).
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

from . import cli
from .checks import OutputPathError, check_writable_folder

DEMO_MODEL = "pocket/qwen-image"
ASSETS = Path(__file__).resolve().parent / "assets" / "demo"
CAPTION_FILE = ASSETS / "red_circle.txt"
CONFIG_FILE = ASSETS / "train.yaml"
SEED = 1234
BASE_STEPS = 50
FEW_STEPS = 4  # the few-step regime beside the 10-step one: base-4 and the pocket model's distilled 4-step LoRA
# --quick: a smoke test of every stage (CI), not a result to look at.
QUICK_OVERRIDES = {"steps": 6, "checkpoint_every": 3}
QUICK_BASE_STEPS = 10


SCENE_SEED = 0  # the render seed of the training picture (shape size and jitter)
# The unseen caption of the second row: a held-out combination (pocket.world.HELD_OUT).
UNSEEN_CAPTION = "a green triangle on a black background, bottom right"


def demo_image(size: int = 64) -> Image.Image:
    """The demo's training picture: the caption's pocket-world scene, rendered the same on every machine."""
    from .pocket import world

    scene = world.Scene.parse(CAPTION_FILE.read_text(encoding="utf-8").strip())
    return Image.fromarray(world.render(scene, SCENE_SEED, size))


def write_demo_dataset(folder: Path, size: int) -> Path:
    """OUT/data/red_circle.png + red_circle.txt: the one-sample dataset in the layout `train` expects."""
    folder.mkdir(parents=True, exist_ok=True)
    demo_image(size).save(folder / "red_circle.png")
    (folder / "red_circle.txt").write_text(CAPTION_FILE.read_text(encoding="utf-8"), encoding="utf-8")
    return folder


# ---- pictures ------------------------------------------------------------------------------------------------
def side_by_side(rows: list[list[tuple[str, Image.Image]]], path: Path, panel: int = 192, settings: dict | None = None) -> Path:
    """A grid of labelled panels (one row per list), written as a PNG (with `settings` in its text chunk)."""
    from .png_settings import save_png

    label_height, pad = 34, 6
    columns = max(len(r) for r in rows)
    sheet = Image.new("RGB", (columns * (panel + pad) + pad, len(rows) * (panel + label_height + pad) + pad), "white")
    draw = ImageDraw.Draw(sheet)
    font = ImageFont.load_default()
    for r, row in enumerate(rows):
        for c, (label, image) in enumerate(row):
            x, y = pad + c * (panel + pad), pad + r * (panel + label_height + pad)
            for i, line in enumerate(label.split("\n")[:2]):
                draw.text((x, y + i * 15), line, fill="black", font=font)
            sheet.paste(image.convert("RGB").resize((panel, panel), Image.Resampling.NEAREST), (x, y + label_height))
    return save_png(sheet, path, settings or {})


# ---- the demo ------------------------------------------------------------------------------------------------
@dataclass
class DemoResult:
    out: Path
    comparison: Path
    report: Path
    report_text: str
    seconds: dict[str, float] = field(default_factory=dict)
    distances: dict[str, float] = field(default_factory=dict)


def psnr(a, b) -> float:
    """PSNR (dB) of two 8-bit RGB pictures, PIL images or uint8 arrays; 99 for identical ones."""
    import numpy as np

    mse = float(((np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)) ** 2).mean())
    return 99.0 if mse == 0 else 10 * math.log10(255.0**2 / mse)


def run_demo(out: Path, profile: str = "cpu", quick: bool = False, progress: bool = True) -> DemoResult:
    """Train, generate, compare, report; see the module docstring."""
    import glance_lite

    from .png_settings import save_png
    from .pocket import checker, world
    from .train import read_config_file, train

    started = time.perf_counter()
    out = Path(out)
    settings = read_config_file(CONFIG_FILE)
    if quick:
        settings.update(QUICK_OVERRIDES)
    size = int(settings["resolution"])
    data = write_demo_dataset(out / "data", size)
    caption = CAPTION_FILE.read_text(encoding="utf-8").strip()
    seconds = {}

    t = time.perf_counter()
    trained = train(DEMO_MODEL, data, out / "train", "both", profile, settings, progress=progress)
    seconds["train"] = time.perf_counter() - t
    target = trained.targets[0]
    height, width = trained.sizes[0]

    glance = glance_lite.load(DEMO_MODEL, trained.adapters["slow"], trained.adapters["fast"], profile=profile)
    plain = glance_lite.load(DEMO_MODEL, profile=profile)
    fewstep = glance_lite.load(DEMO_MODEL, profile=profile, method=f"fewstep-{FEW_STEPS}")  # the LoRA distilled from it
    base_steps = QUICK_BASE_STEPS if quick else BASE_STEPS
    for model in (glance, plain, fewstep):  # first calls pay one-off costs (allocation, kernel choice): keep them out of the timings
        model.generate(caption, height=height, width=width, seed=SEED, progress=False, output_type="latent")
    kinds = (
        ("glance", glance, {}),
        ("base", glance, {"base_steps": base_steps}),
        ("base10", glance, {"base_steps": QUICK_BASE_STEPS}),
        ("no_lora", plain, {}),
        ("base_few", plain, {"base_steps": FEW_STEPS}),
        ("fewstep", fewstep, {}),
    )
    order = tuple(k for k, *_ in kinds)
    runs, unseen = {}, {}
    for name, model, kwargs in kinds:
        t = time.perf_counter()
        runs[name] = model.generate(caption, height=height, width=width, seed=SEED, progress=progress, **kwargs)
        seconds[f"generate_{name}"] = time.perf_counter() - t
        unseen[name] = model.generate(UNSEEN_CAPTION, height=height, width=width, seed=SEED, progress=False, **kwargs)

    distances = {name: float(((r.latents[0].float().cpu() - target) ** 2).mean()) for name, r in runs.items()}
    fidelity = {
        "train": {n: psnr(runs[n].image, runs["base"].image) for n in order},
        "unseen": {n: psnr(unseen[n].image, unseen["base"].image) for n in order},
    }
    readings = {
        "train": {n: checker.judge(runs[n].image, world.Scene.parse(caption)) for n in order},
        "unseen": {n: checker.judge(unseen[n].image, world.Scene.parse(UNSEEN_CAPTION)) for n in order},
    }
    calls = {name: r.transformer_calls for name, r in runs.items()}
    labels = {
        "glance": f"Glance, 10 steps\n{calls['glance']} transformer calls",
        "base": f"base model, {base_steps} steps\n{calls['base']} transformer calls",
        "base10": f"base model, {QUICK_BASE_STEPS} steps\n{calls['base10']} transformer calls",
        "no_lora": "Glance schedule, no LoRAs\n(what the adapters add)",
        "base_few": f"base model, {FEW_STEPS} steps\n{calls['base_few']} transformer calls",
        "fewstep": f"distilled LoRA, {FEW_STEPS} steps\n{calls['fewstep']} calls, no CFG",
    }

    def caption_label(text: str, what: str) -> str:
        scene = world.Scene.parse(text)
        return f"{what}:\n{scene.colour} {scene.shape}/{scene.background}, {scene.position}"

    for name in order:  # each generated picture on its own, with how it was made (python -m glance_lite.generate --from-png)
        for row, result in (("train", runs[name]), ("unseen", unseen[name])):
            save_png(result.image, out / "images" / f"{row}_{name}.png", result.settings[0])
    comparison = side_by_side(
        [
            [(caption_label(caption, "training picture"), demo_image(size))] + [(labels[n], runs[n].image) for n in order],
            [(caption_label(UNSEEN_CAPTION, "unseen prompt"), Image.fromarray(world.render(world.Scene.parse(UNSEEN_CAPTION), SCENE_SEED, size)))]
            + [(f"{labels[n].splitlines()[0]}\nPSNR to base {fidelity['unseen'][n]:.1f} dB" if n != "base" else (labels[n].splitlines()[0] + "\n(reference)"), unseen[n].image) for n in order],
        ],
        out / "side_by_side.png",
        settings={"sheet": "python -m glance_lite.demo", "panels": {name: run.settings[0] for name, run in
                  [*((f"train_{n}", runs[n]) for n in order), *((f"unseen_{n}", unseen[n]) for n in order)]}},
    )  # fmt: skip
    decoded_target = glance.family.decode(glance.manager.pipe, target.to(glance.device), height, width)[0]
    decoded_target.save(out / "training_latent_decoded.png")
    seconds["total"] = time.perf_counter() - started
    text = _report(trained, runs, seconds, distances, calls, base_steps, quick, fidelity, readings)
    report = out / "report.md"
    report.write_text(text)
    return DemoResult(out, comparison, report, text, seconds, distances)


def _report(trained, runs, seconds, distances, calls, base_steps, quick, fidelity, readings) -> str:
    import platform

    import psutil
    import torch

    slow, fast = trained.phases["slow"], trained.phases["fast"]
    g, b = runs["glance"], runs["base"]
    g_denoise, b_denoise = sum(g.phase_seconds.values()), sum(b.phase_seconds.values())
    stages = {}
    for record in list(trained.stages) + list(g.stages) + list(b.stages):
        stages[record.stage] = max(stages.get(record.stage, 0), record.peak_bytes)

    def ok(reading) -> str:
        return "/".join("yes" if reading[k] else "no" for k in ("background", "colour", "position"))

    lines = [
        "# glance_lite demo" + (" (--quick: smoke test, not a result)" if quick else ""),
        "",
        f"Model `{trained.model}` (embedded pocket Qwen-Image, 64x64), profile `{trained.profile}`, "
        f"{psutil.cpu_count()} CPU cores, torch {torch.__version__}, {platform.machine()}.",
        f"One training pair: `{trained.captions[0]}` at {trained.sizes[0][1]}x{trained.sizes[0][0]}.",
        f"Unseen prompt (held out from the pocket model's training too): `{UNSEEN_CAPTION}`.",
        "",
        "## Training (one LoRA per phase)",
        "",
        "| phase | timesteps | steps | seconds | loss at its timesteps, before -> after |",
        "|---|---|---|---|---|",
    ]
    for p in (slow, fast):
        ts = ", ".join(f"{t:.0f}" for t in p.timesteps)
        before = "n/a" if p.eval_loss_before is None else f"{p.eval_loss_before:.4f}"
        after = "n/a" if p.eval_loss_after is None else f"{p.eval_loss_after:.4f}"
        lines.append(f"| {p.phase} | {ts} | {p.steps} | {p.seconds:.1f} | {before} -> {after} |")
    names = {
        "glance": "Glance (slow + fast LoRA)",
        "base": "base model",
        "base10": f"base model, {QUICK_BASE_STEPS} steps",
        "no_lora": "Glance schedule, no LoRAs",
        "base_few": f"base model, {FEW_STEPS} steps",
        "fewstep": f"distilled few-step LoRA, {FEW_STEPS} steps, no CFG (shipped)",
    }
    lines += [
        "",
        "## Generation (same seed and noise, true CFG)",
        "",
        "PSNR is to the base model's image from the same noise; the checker reads background / shape colour / "
        "position (`glance_lite.pocket.checker`).",
        "",
        "| run | steps | transformer calls | denoise seconds | call seconds | latent MSE to the training latent | "
        "training prompt: PSNR, checker | unseen prompt: PSNR, checker |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for n, r in runs.items():
        psnr_t = "reference" if n == "base" else f"{fidelity['train'][n]:.1f} dB"
        psnr_u = "reference" if n == "base" else f"{fidelity['unseen'][n]:.1f} dB"
        lines.append(
            f"| {names[n]} | {len(r.plan.steps)} | {calls[n]} | {sum(r.phase_seconds.values()):.2f} | "
            f"{seconds['generate_' + n]:.2f} | {distances[n]:.4f} | {psnr_t}, {ok(readings['train'][n])} | "
            f"{psnr_u}, {ok(readings['unseen'][n])} |"
        )
    lines += [
        "",
        f"Denoising speed-up of Glance over the {base_steps}-step base: {b_denoise / max(g_denoise, 1e-9):.1f}x "
        f"({calls['base']} / {calls['glance']} transformer calls).",
        "",
        "## Peak memory per stage (process RSS on CPU, allocated bytes on a GPU)",
        "",
        "| stage | peak MiB |",
        "|---|---|",
    ]
    lines += [f"| {stage} | {peak / 2**20:.0f} |" for stage, peak in stages.items()]
    lines += [
        "",
        f"Wall time: training {seconds['train']:.1f} s, whole demo {seconds['total']:.1f} s "
        "(plus Python start-up and imports).",
        "",
        "Over all 26 held-out prompts: benchmarks/results/pocket-glance.md (`python benchmarks/eval_pocket.py`).",
        "",
        "## Fewer steps",
        "",
        f"On the unseen prompt, PSNR to the {base_steps}-step image: base model at {FEW_STEPS} steps "
        f"{fidelity['unseen']['base_few']:.1f} dB ({calls['base_few']} transformer calls), the few-step LoRA distilled from "
        f"the pocket model ({FEW_STEPS} unguided calls, shipped in glance_lite/assets/pocket_qwen_image_fewstep/) "
        f"{fidelity['unseen']['fewstep']:.1f} dB. Over the 26 held-out prompts, Glance with one-picture LoRAs does not "
        "beat the base model at 4, 3 or 2 steps; its schedule alone does, and so does the distilled LoRA with half the "
        "calls: benchmarks/results/pocket-fewstep.md (`python benchmarks/eval_pocket_fewstep.py`).",
        "",
        "Generate again with the trained adapters:",
        "",
        f"    {trained.generate_command()}",
        "",
    ]
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    p = cli.ArgumentParser(prog="python -m glance_lite.demo", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=Path("glance_demo"), help="output folder (default: glance_demo/)")
    p.add_argument("--profile", default="cpu", help="hardware profile (default: cpu)")
    p.add_argument("--quick", action="store_true", help=f"a few training steps and a {QUICK_BASE_STEPS}-step base run: checks every stage, shows nothing")
    p.add_argument("--no-progress", action="store_true")
    return p


# What a demo run writes into its folder; a folder holding anything else is the user's, and is not written into.
DEMO_OUTPUTS = ("data", "train", "images", "side_by_side.png", "training_latent_decoded.png", "report.md")


def check_demo_folder(out: Path) -> None:
    """Refuse a folder the demo cannot write, or one holding files that are not a previous demo run's."""
    if out.exists() and not out.is_dir():
        raise OutputPathError(f"--out {out} is a file; give a new folder (or a previous demo's) for the demo's files.")
    check_writable_folder(out, "--out")
    foreign = sorted(p.name for p in out.iterdir() if p.name not in DEMO_OUTPUTS) if out.is_dir() else []
    if foreign:
        shown = ", ".join(foreign[:3]) + (f" and {len(foreign) - 3} more" if len(foreign) > 3 else "")
        raise OutputPathError(
            f"--out {out} holds files the demo did not write ({shown}); give a new folder (or a previous demo's): "
            f"the demo writes {', '.join(DEMO_OUTPUTS)} there."
        )


@cli.command
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from .quiet import set_progress

    set_progress(not args.no_progress)
    check_demo_folder(args.out)
    from .profiles import early_profile

    profile = early_profile(args.profile)
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the pocket model's small tensors gain nothing from intra-op threads on a shared CPU
    try:
        result = run_demo(args.out, profile=profile, quick=args.quick, progress=not args.no_progress)
    finally:
        torch.set_num_threads(threads)
    print(result.report_text)
    print(f"Wrote {result.comparison} and {result.report}.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
