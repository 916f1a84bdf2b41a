"""Images keep the settings that made them: glance_lite.png_settings writes them into the PNG and reads them back."""

import pytest
from PIL import Image

from glance_lite.png_settings import CHUNK_KEYWORD, read_png_settings, save_png

SETTINGS = {
    "prompt": "一只红色的狐狸 in snow, \"quoted\"", "negative_prompt": " ", "seed": 7, "height": 64, "width": 64,
    "model": "pocket/qwen-image", "loras": [{"phase": "slow", "name": "slow.safetensors", "sha256": "ab" * 32}],
    "split": {"slow": [0, 2, 4, 6, 8], "fast": [10, 20, 30, 40, 49]}, "mode": "consistent", "profile": "cpu",
    "true_cfg_scale": None, "base_steps": None,
}  # fmt: skip


def test_settings_round_trip_with_their_types_and_any_prompt(tmp_path):
    path = save_png(Image.new("RGB", (64, 64), (30, 60, 220)), tmp_path / "sub" / "a.png", SETTINGS)
    assert read_png_settings(path) == SETTINGS
    with Image.open(path) as image:
        assert image.format == "PNG" and image.size == (64, 64)
        assert CHUNK_KEYWORD in image.text  # plain PNG text: any PNG tool can show it


def test_a_png_without_settings_reads_as_empty_and_a_non_image_is_refused(tmp_path):
    Image.new("RGB", (8, 8)).save(tmp_path / "plain.png")
    assert read_png_settings(tmp_path / "plain.png") == {}
    (tmp_path / "junk.png").write_bytes(b"not a png at all")
    with pytest.raises(ValueError, match="not a readable image"):
        read_png_settings(tmp_path / "junk.png")
