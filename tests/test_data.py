"""Dataset discovery/validation, image preparation and the embedding cache, as a user relies on them."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

from glance_lite import data
from glance_lite.data import (
    DatasetError,
    EmbeddingCache,
    Sample,
    discover_samples,
    file_digest,
    image_to_tensor,
    load_image,
    training_resolution,
    validate_dataset,
)

REPO_ROOT = Path(__file__).resolve().parents[1]


def write_image(path: Path, size=(64, 48), color=(200, 30, 30), fmt=None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, color).save(path, format=fmt)
    return path


def write_caption(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def write_truncated_png(path: Path) -> Path:
    """A real PNG with noisy content (so the data is large), cut in half."""
    noise = (torch.rand(96, 96, 3, generator=torch.Generator().manual_seed(0)) * 255).to(torch.uint8).numpy()
    Image.fromarray(noise).save(path)
    blob = path.read_bytes()
    path.write_bytes(blob[: len(blob) // 2])
    return path


def run_cli(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    return subprocess.run(
        [sys.executable, "-m", "glance_lite.data", *args], capture_output=True, text=True, env=env, timeout=120
    )


@pytest.fixture
def good_folder(tmp_path: Path) -> Path:
    root = tmp_path / "good"
    write_image(root / "cat.png", (96, 64))
    write_caption(root / "cat.txt", "  a red cat on a sofa\n")
    write_image(root / "dog.JPG", (64, 80), fmt="JPEG")
    write_caption(root / "dog.txt", "a dog")
    (root / "notes.md").write_text("ignored: not an image or caption")
    (root / "._cat.png").write_bytes(b"macOS resource fork, must be ignored")
    return root


@pytest.fixture
def bad_folder(tmp_path: Path) -> Path:
    """One distinct problem per file."""
    root = tmp_path / "bad"
    write_image(root / "ok.png", (64, 64))
    write_caption(root / "ok.txt", "fine")
    write_image(root / "nocaption.png", (64, 64))
    write_image(root / "empty.png", (64, 64))
    write_caption(root / "empty.txt", "  \n\t ")
    write_truncated_png(root / "truncated.png")
    write_caption(root / "truncated.txt", "cut short")
    write_caption(root / "fake.png", "this is text, not a PNG")
    write_caption(root / "fake.txt", "fake")
    write_image(root / "tiny.png", (20, 64))
    write_caption(root / "tiny.txt", "tiny")
    write_caption(root / "orphan.txt", "caption with no image")
    return root


# --- discovery and validation -------------------------------------------------------------------


def test_good_folder_validates_into_sorted_samples_with_stripped_captions(good_folder):
    samples = validate_dataset(good_folder, min_size=48)
    assert samples == [
        Sample(good_folder / "cat.png", "a red cat on a sofa", None),
        Sample(good_folder / "dog.JPG", "a dog", None),
    ]
    assert discover_samples(good_folder) == samples


def test_every_problem_is_reported_at_once_each_naming_its_file(bad_folder):
    with pytest.raises(DatasetError) as caught:
        validate_dataset(bad_folder, min_size=32)
    problems = caught.value.problems
    expected = {
        "nocaption.png": "caption missing",
        "empty.txt": "caption is empty",
        "truncated.png": "truncated",
        "fake.png": "not a readable image",
        "tiny.png": "20x64",
        "orphan.txt": "caption without an image",
    }
    for filename, what in expected.items():
        matching = [p for p in problems if str(bad_folder / filename) in p]
        assert len(matching) == 1, f"{filename}: expected one problem, got {matching}"
        assert what in matching[0] and "Fix:" in matching[0]
    assert len(problems) == len(expected)  # ok.png is fine and not mentioned
    assert all(p in str(caught.value) for p in problems)  # the message lists them, one per line
    assert str(caught.value).count("\n") == len(problems)


def test_discover_checks_layout_only_and_validate_adds_image_checks(bad_folder):
    with pytest.raises(DatasetError) as caught:
        discover_samples(bad_folder)
    layout_problems = caught.value.problems
    assert not any("truncated.png" in p or "fake.png" in p or "tiny.png" in p for p in layout_problems)
    assert any("nocaption.png" in p for p in layout_problems)


def test_min_size_is_the_shorter_side_and_can_be_lowered(tmp_path):
    write_image(tmp_path / "wide.png", (300, 100))
    write_caption(tmp_path / "wide.txt", "wide")
    with pytest.raises(DatasetError, match=r"wide.png: image is 300x100"):
        validate_dataset(tmp_path)  # default minimum is 256
    assert len(validate_dataset(tmp_path, min_size=100)) == 1


@pytest.mark.parametrize("setup, message", [
    (lambda root: root.mkdir(), "no images found"),
    (lambda root: None, "does not exist"),
    (lambda root: root.write_text("x"), "is a file, not a folder"),
])
def test_unusable_roots_are_explained(tmp_path, setup, message):
    root = tmp_path / "dataset"
    setup(root)
    with pytest.raises(DatasetError, match=message):
        validate_dataset(root)


def test_edit_folder_without_edit_flag_suggests_it(tmp_path):
    write_image(tmp_path / "image" / "a.png")
    write_image(tmp_path / "control" / "a.png")
    with pytest.raises(DatasetError, match="pass --edit"):
        validate_dataset(tmp_path, min_size=1)


def test_two_images_with_one_name_are_ambiguous(tmp_path):
    write_image(tmp_path / "a.png")
    write_image(tmp_path / "a.webp", fmt="WEBP")
    write_caption(tmp_path / "a.txt", "which one?")
    with pytest.raises(DatasetError) as caught:
        validate_dataset(tmp_path, min_size=1)
    assert len(caught.value.problems) == 1 and "several images share this name" in caught.value.problems[0]


# --- edit layout ----------------------------------------------------------------------------------


def test_edit_folder_pairs_target_caption_and_control(tmp_path):
    write_image(tmp_path / "image" / "a.png")
    write_caption(tmp_path / "image" / "a.txt", "make it blue")
    write_image(tmp_path / "control" / "a.jpeg", fmt="JPEG")
    assert validate_dataset(tmp_path, edit=True, min_size=32) == [
        Sample(tmp_path / "image" / "a.png", "make it blue", tmp_path / "control" / "a.jpeg")
    ]


def test_edit_folder_reports_missing_control_orphan_control_and_misplaced_caption(tmp_path):
    write_image(tmp_path / "image" / "nocontrol.png")
    write_caption(tmp_path / "image" / "nocontrol.txt", "x")
    write_image(tmp_path / "control" / "lonely.png")
    write_image(tmp_path / "image" / "misplaced.png")
    write_image(tmp_path / "control" / "misplaced.png")
    write_caption(tmp_path / "control" / "misplaced.txt", "caption in the wrong folder")
    write_image(tmp_path / "image" / "broken.png")
    write_caption(tmp_path / "image" / "broken.txt", "x")
    write_caption(tmp_path / "control" / "broken.png", "not an image")
    with pytest.raises(DatasetError) as caught:
        validate_dataset(tmp_path, edit=True, min_size=32)
    text = "\n".join(caught.value.problems)
    assert f"{tmp_path / 'image' / 'nocontrol.png'}: no control (input) image" in text
    assert f"{tmp_path / 'control' / 'lonely.png'}: control image without a target" in text
    assert f"{tmp_path / 'control' / 'misplaced.txt'}: captions of edit datasets are read from image/" in text
    assert f"{tmp_path / 'control' / 'broken.png'}: not a readable image" in text
    assert len(caught.value.problems) == 4


def test_edit_mode_needs_both_subfolders(tmp_path):
    write_image(tmp_path / "image" / "a.png")
    with pytest.raises(DatasetError, match=r"control: folder missing"):
        validate_dataset(tmp_path, edit=True)


# --- CLI ------------------------------------------------------------------------------------------


def test_cli_lists_every_problem_and_exits_nonzero(bad_folder):
    result = run_cli("validate", str(bad_folder), "--min-size", "32")
    assert result.returncode == 1
    for filename in ["nocaption.png", "empty.txt", "truncated.png", "fake.png", "tiny.png", "orphan.txt"]:
        assert str(bad_folder / filename) in result.stderr
    assert "6 problems" in result.stderr


def test_cli_reports_count_and_sizes_on_a_good_folder(good_folder):
    result = run_cli("validate", str(good_folder), "--min-size", "48")
    assert result.returncode == 0, result.stderr
    assert "OK: 2 samples" in result.stdout
    assert "cat.png  96x64" in result.stdout and "dog.JPG  64x80" in result.stdout


def test_cli_default_min_size_rejects_tiny_images(good_folder):
    assert run_cli("validate", str(good_folder)).returncode == 1


# --- image preparation ----------------------------------------------------------------------------


@pytest.mark.parametrize("size, long_side, expected", [
    ((1536, 1024), 1024, (1024, 672)),  # 1024 x 682.7 -> height floored to 672
    ((1024, 1536), 1024, (672, 1024)),  # (width, height) order is kept
    ((1024, 1024), 1024, (1024, 1024)),
    ((512, 300), 1024, (1024, 576)),    # small images are scaled up: 1024 x 600 -> 576
    ((1920, 1080), 1024, (1024, 576)),
    ((100, 75), 64, (64, 32)),          # tiny-model sizes: 64 x 48 -> 32
])
def test_training_resolution_follows_reference_recipe(size, long_side, expected):
    assert training_resolution(size, long_side) == expected


def test_training_resolution_rejects_images_too_thin_to_train_on():
    with pytest.raises(ValueError, match="too thin"):
        training_resolution((4000, 100), 1024)


def test_load_image_gives_rgb_at_requested_size_without_stretching(tmp_path):
    img = Image.new("RGBA", (300, 200), (0, 0, 255, 255))
    img.paste((255, 0, 0, 0), (0, 0, 150, 200))  # left half fully transparent
    img.save(tmp_path / "a.png")
    loaded = load_image(tmp_path / "a.png", training_resolution((300, 200), 128))
    assert loaded.mode == "RGB" and loaded.size == (128, 64)
    assert loaded.getpixel((5, 32)) == (255, 255, 255)  # transparency flattened onto white
    assert loaded.getpixel((120, 32)) == (0, 0, 255)
    assert load_image(tmp_path / "a.png", None).size == (300, 200)


def test_image_to_tensor_maps_pixels_to_minus_one_one():
    img = Image.new("RGB", (3, 2), (0, 255, 0))
    tensor = image_to_tensor(img)
    assert tensor.shape == (3, 2, 3) and tensor.dtype == torch.float32
    assert torch.equal(tensor[0], torch.full((2, 3), -1.0)) and torch.equal(tensor[1], torch.ones(2, 3))


# --- embedding cache ------------------------------------------------------------------------------


def test_cache_round_trips_tensors_bit_exactly(tmp_path):
    cache = EmbeddingCache(tmp_path, "qwen-image@abc")
    base = torch.randn(4, 6)
    tensors = {
        "prompt_embeds": torch.randn(1, 7, 16).to(torch.bfloat16),
        "prompt_mask": torch.tensor([[1, 1, 1, 0]], dtype=torch.int64),
        "latents": torch.randn(1, 16, 1, 8, 8, dtype=torch.float32),
        "view": base[:, 1:3],  # non-contiguous view
        "same_storage": base,
    }
    key = cache.key("text", "a cat")
    cache.put(key, tensors)
    loaded = EmbeddingCache(tmp_path, "qwen-image@abc").get(key)
    assert loaded.keys() == tensors.keys()
    for name, value in tensors.items():
        assert loaded[name].dtype == value.dtype and torch.equal(loaded[name], value), name


def test_cache_key_changes_with_caption_image_resolution_and_model(tmp_path):
    write_image(tmp_path / "a.png", color=(1, 2, 3))
    write_image(tmp_path / "b.png", color=(1, 2, 4))
    cache = EmbeddingCache(tmp_path / "cache", "model-A")
    other_model = EmbeddingCache(tmp_path / "cache", "model-B")
    a_digest = file_digest(tmp_path / "a.png")
    keys = {
        cache.key("text", "a cat"),
        cache.key("text", "a cat."),
        other_model.key("text", "a cat"),
        cache.key("latents", "a cat"),
        cache.key("latents", a_digest, "64x48"),
        cache.key("latents", a_digest, "32x32"),
        cache.key("latents", file_digest(tmp_path / "b.png"), "64x48"),
        cache.key("latents", "ab", "c"),
        cache.key("latents", "a", "bc"),
    }
    assert len(keys) == 9
    assert cache.key("text", "a cat") == EmbeddingCache(tmp_path / "cache", "model-A").key("text", "a cat")
    assert file_digest(tmp_path / "a.png") == a_digest


def test_get_or_compute_computes_once(tmp_path):
    calls = []

    def compute():
        calls.append(1)
        return {"x": torch.arange(5)}

    cache = EmbeddingCache(tmp_path, "m")
    key = cache.key("text", "hello")
    first = cache.get_or_compute(key, compute)
    second = cache.get_or_compute(key, compute)
    third = EmbeddingCache(tmp_path, "m").get_or_compute(key, compute)  # survives a restart
    assert len(calls) == 1
    assert torch.equal(first["x"], second["x"]) and torch.equal(second["x"], third["x"])


def test_interrupted_write_leaves_no_partial_entry(tmp_path, monkeypatch):
    cache = EmbeddingCache(tmp_path, "m")
    key = cache.key("latents", "img")

    def crash_midway(tensors, filename, metadata=None):
        Path(filename).write_bytes(b"half a safetensors fi")
        raise KeyboardInterrupt("power cut")

    monkeypatch.setattr(data, "save_file", crash_midway)
    with pytest.raises(KeyboardInterrupt):
        cache.put(key, {"x": torch.ones(3)})
    assert cache.get(key) is None
    assert list(tmp_path.iterdir()) == []  # neither the entry nor the temp file is left behind

    monkeypatch.undo()
    compute_calls = []
    cache.get_or_compute(key, lambda: compute_calls.append(1) or {"x": torch.ones(3)})
    assert compute_calls == [1] and torch.equal(cache.get(key)["x"], torch.ones(3))


def test_a_killed_writer_leaves_only_an_ignored_temp_file(tmp_path):
    """If the process dies hard (no cleanup), the temp file never has the entry's name."""
    cache = EmbeddingCache(tmp_path, "m")
    key = cache.key("text", "x")
    (tmp_path / f".{key}.abc123.partial").write_bytes(b"garbage")
    assert cache.get(key) is None


def test_corrupt_entry_is_treated_as_missing(tmp_path):
    cache = EmbeddingCache(tmp_path, "m")
    key = cache.key("text", "x")
    cache.path(key).write_bytes(b"not safetensors")
    with pytest.warns(UserWarning, match="recomputed"):
        assert cache.get(key) is None


def test_cache_rejects_non_tensor_values(tmp_path):
    cache = EmbeddingCache(tmp_path, "m")
    with pytest.raises(TypeError, match="torch.Tensor"):
        cache.put(cache.key("text", "x"), {"mask": [1, 1, 0]})
