"""`python -m glance_lite.demo`: the README's first command runs end to end and leaves its picture and report."""

import numpy as np
from PIL import Image

from glance_lite.demo import CAPTION_FILE, demo_image, main


def test_the_demo_trains_generates_and_writes_side_by_side_png_and_report(tmp_path, capsys):
    out = tmp_path / "glance_demo"
    assert main(["--out", str(out), "--quick", "--no-progress"]) == 0

    printed = capsys.readouterr().out
    report = (out / "report.md").read_text()
    assert report in printed
    for claim in ("## Training", "| slow |", "| fast |", "Glance (slow + fast LoRA) | 10 | 20", "base model", "peak MiB",
                  "unseen prompt", "pocket/qwen-image",
                  "python -m glance_lite.generate"):  # fmt: skip
        assert claim in report, claim

    picture = Image.open(out / "side_by_side.png")
    assert picture.width > 3 * picture.height / 2  # panels side by side, two rows
    assert np.asarray(picture).std() > 10  # drawn panels, not a blank sheet
    assert (out / "train" / "slow.safetensors").is_file() and (out / "train" / "fast.safetensors").is_file()
    assert (out / "data" / "red_circle.txt").read_text() == CAPTION_FILE.read_text()

    from glance_lite.png_settings import read_png_settings

    glance_png = read_png_settings(out / "images" / "train_glance.png")  # each picture remembers how it was made
    assert glance_png["prompt"] == CAPTION_FILE.read_text().strip() and glance_png["model"] == "pocket/qwen-image"
    assert [lora["phase"] for lora in glance_png["loras"]] == ["slow", "fast"] and len(glance_png["loras"][0]["sha256"]) == 64
    assert read_png_settings(out / "side_by_side.png")["panels"]["train_glance"] == glance_png
    fewstep_png = read_png_settings(out / "images" / "unseen_fewstep.png")  # the few-step regime: the shipped distilled LoRA
    assert (fewstep_png["method"], fewstep_png["transformer_calls"], fewstep_png["true_cfg_scale"]) == ("fewstep-4", 4, 1.0)
    assert "distilled few-step LoRA, 4 steps, no CFG (shipped) | 4 | 4 |" in report and "base model, 4 steps | 4 | 8 |" in report


def test_the_demo_image_is_drawn_identically_every_time():
    assert np.array_equal(np.asarray(demo_image(64)), np.asarray(demo_image(64)))
    pixels = np.asarray(demo_image(64))
    # the caption's pocket scene: a red circle in the top-left quadrant on a blue background
    assert tuple(pixels[16, 16]) == (220, 30, 30) and tuple(pixels[60, 60]) == (30, 60, 220)
