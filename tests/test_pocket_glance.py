"""Glance on the pocket model (`pocket/qwen-image`): a Slow/Fast LoRA pair trained for a few steps on ONE pocket
picture (the demo's one-sample dataset). benchmarks/eval_pocket.py measures the pair on unseen prompts,
benchmarks/eval_pocket_own_caption.py on its own caption (results/pocket-own-caption.md).

Measured finding (a table, not a test: benchmarks/results/pocket-own-caption.md): on this base the LoRAs do NOT move the caption's 10-step output
toward the base model's 50-step output from the same noise; they move it away (PSNR to base-50, seeds 0-2, CFG 5:
21.7 -> 19.7 dB with this recipe). The slow LoRA does the pulling (18.3 dB alone at seed 0; the fast LoRA alone
20.0). Training on the base model's own 50-step picture instead of the render (a distillation sample), or with the
demo's 100-step recipe, moves it away too: see the table for all four pairs, slow/fast alone and CFG 1.
"""

import importlib
import sys
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch

from glance_lite.demo import CAPTION_FILE, demo_image, write_demo_dataset
from glance_lite.pocket import checker, world

MODEL = "pocket/qwen-image"
SEEDS = (0, 1, 2)


def few_steps_recipe() -> dict:
    """The recipe benchmarks/eval_pocket_own_caption.py measures as "few steps" (one definition for both)."""
    benchmarks = str(Path(__file__).resolve().parent.parent / "benchmarks")
    sys.path.insert(0, benchmarks)
    try:
        return dict(importlib.import_module("eval_pocket_own_caption").FEW_STEPS)
    finally:
        sys.path.remove(benchmarks)


def _pixels(model, caption, **kwargs):
    """Decoded images in [0, 1], one per seed (pixel space, where eval_pocket*.py measure fidelity)."""
    out = []
    for seed in SEEDS:
        result = model.generate(caption, height=64, width=64, seed=seed, progress=False, output_type="np", **kwargs)
        out.append(torch.from_numpy(result.images[0]).float())
    return torch.stack(out)


@contextmanager
def one_thread():
    """One intra-op thread, as the demo trains (the pocket model's small tensors gain nothing from more on a shared
    CPU); the thread count is restored afterwards, so the tests after this module run with their own."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def pocket_glance(tmp_path_factory):
    import glance_lite
    from glance_lite.train import train

    tmp = tmp_path_factory.mktemp("pocket_glance")
    data = write_demo_dataset(tmp / "data", 64)
    caption = CAPTION_FILE.read_text().strip()
    settings = dict(few_steps_recipe(), resolution=64, min_image_size=64, checkpoint_every=1000)
    with one_thread():
        trained = train(MODEL, data, tmp / "train", "both", "cpu", settings, progress=False)
        plain = glance_lite.load(MODEL, profile="cpu", height=64, width=64)
        glance = glance_lite.load(MODEL, trained.adapters["slow"], trained.adapters["fast"], profile="cpu", height=64, width=64)
        return {
            "trained": trained,
            "before": _pixels(plain, caption),  # the Glance 5+5 schedule without LoRAs
            "after": _pixels(glance, caption),
        }


def test_demo_sample_is_a_training_scene_of_the_pocket_world():
    caption = CAPTION_FILE.read_text().strip()
    assert caption in world.TRAIN_CAPTIONS and caption not in world.HELD_OUT_CAPTIONS
    reading = checker.read_image(demo_image(64))
    scene = world.Scene.parse(caption)
    assert (reading.background, reading.colour, reading.position) == (scene.background, scene.colour, scene.position)


def test_a_few_steps_train_the_slow_lora_and_the_pair_changes_the_10_step_output(pocket_glance):
    slow = pocket_glance["trained"].phases["slow"]
    assert slow.eval_loss_after < 0.9 * slow.eval_loss_before, (slow.eval_loss_before, slow.eval_loss_after)
    change = float(((pocket_glance["after"] - pocket_glance["before"]) ** 2).mean())
    assert change > 1e-3, change  # the adapters are live at sampling time, not a no-op


def test_the_few_step_report_and_the_readme_quote_the_committed_measurements(tmp_path):
    """benchmarks/results/pocket-fewstep.md is what its script writes from the committed JSON (numbers included),
    and every few-step figure the README quotes is that JSON's, rounded."""
    import json

    root = Path(__file__).resolve().parent.parent
    benchmarks = str(root / "benchmarks")
    sys.path.insert(0, benchmarks)
    try:
        script = importlib.import_module("eval_pocket_fewstep")
    finally:
        sys.path.remove(benchmarks)
    info = json.loads((root / "benchmarks" / "results" / "pocket-fewstep.json").read_text())
    written = script.write_markdown(info, tmp_path / "pocket-fewstep.md").read_text()
    committed = (root / "benchmarks" / "results" / "pocket-fewstep.md").read_text()
    assert committed.startswith(written)  # then the hand-written section
    readme, m = (root / "README.md").read_text(), info["methods"]
    for key in ("glance2+2", "base4", "sched2+2", "fewstep4", "fewstep2", "base2"):
        quoted = f"{m[key]['psnr_mean']:.1f} dB / {100 * m[key]['adherence']['all']:.1f} %"
        assert quoted in readme, f"README lacks {m[key]['label']}: {quoted}"
