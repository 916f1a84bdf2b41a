"""Glance on the pocket model (`pocket/qwen-image`): a Slow/Fast LoRA pair trained for a few steps on ONE pocket
picture (the demo's one-sample dataset). benchmarks/eval_pocket.py measures the pair on unseen prompts.

Measured finding, kept as a strict xfail below: on this base the LoRAs do NOT move the caption's 10-step output
toward the base model's 50-step output from the same noise. The Glance schedule without LoRAs is already close to
base-50 (latent MSE ~0.03 on seeds 0-5), and the one-picture LoRAs pull it away (~0.06-0.2), in both schedule modes.
Training on the base model's own 50-step picture of the caption (a distillation sample) instead of the render, with
caption dropout 0-0.5, rank 8-16, 10-300 steps and lr 3e-4-3e-3, did not turn this around either (see the issue note).
"""

import pytest
import torch

from glance_lite.demo import CAPTION_FILE, demo_image, write_demo_dataset
from glance_lite.pocket import checker, world

MODEL = "pocket/qwen-image"
SEEDS = (0, 1, 2)


def _latents(model, caption, **kwargs):
    out = []
    for seed in SEEDS:
        result = model.generate(caption, height=64, width=64, seed=seed, progress=False, output_type="latent", **kwargs)
        out.append(result.latents[0].float().cpu())
    return torch.stack(out)


@pytest.fixture(scope="module")
def pocket_glance(tmp_path_factory):
    import glance_lite
    from glance_lite.train import train

    torch.set_num_threads(1)
    tmp = tmp_path_factory.mktemp("pocket_glance")
    data = write_demo_dataset(tmp / "data", 64)
    caption = CAPTION_FILE.read_text().strip()
    settings = dict(resolution=64, min_image_size=64, rank=8, alpha=32, steps=10, learning_rate=3e-4,
                    warmup_steps=2, caption_dropout=0.0, checkpoint_every=1000)  # fmt: skip
    trained = train(MODEL, data, tmp / "train", "both", "cpu", settings, progress=False)
    plain = glance_lite.load(MODEL, profile="cpu", height=64, width=64)
    glance = glance_lite.load(MODEL, trained.adapters["slow"], trained.adapters["fast"], profile="cpu", height=64, width=64)
    return {
        "trained": trained,
        "base50": _latents(plain, caption, base_steps=50),
        "before": _latents(plain, caption),  # the Glance 5+5 schedule without LoRAs
        "after": _latents(glance, caption),
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


@pytest.mark.xfail(strict=True, reason="measured: one-picture LoRAs pull the pocket model's 10-step output AWAY from base-50")
def test_the_pair_moves_the_10_step_output_toward_base_50(pocket_glance):
    base50 = pocket_glance["base50"]
    before = float(((pocket_glance["before"] - base50) ** 2).mean())
    after = float(((pocket_glance["after"] - base50) ** 2).mean())
    assert after < before, (before, after)
