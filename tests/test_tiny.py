"""The tiny offline pipelines behave like downloaded ones: stock loading, stock sampling, real prompt templates."""

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
import torch
from diffusers import DiffusionPipeline, FluxPipeline, QwenImageEditPipeline, QwenImagePipeline
from diffusers.pipelines.qwenimage import pipeline_qwenimage_edit

from glance_lite import tiny
from glance_lite.processors import load_qwen2vl_processor

REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def home(tmp_path, monkeypatch):
    """A fresh GLANCE_LITE_HOME, so every test builds its own tiny models."""
    monkeypatch.setenv("GLANCE_LITE_HOME", str(tmp_path))
    return tmp_path


def weights_digest(pipeline) -> str:
    digest = hashlib.sha256()
    for name, component in sorted(pipeline.components.items()):
        if isinstance(component, torch.nn.Module):
            for key, tensor in sorted(component.state_dict().items()):
                digest.update(f"{name}.{key}".encode())
                digest.update(tensor.contiguous().numpy().tobytes())
    return digest.hexdigest()


def small_image() -> PIL.Image.Image:
    pixels = np.random.RandomState(0).randint(0, 256, size=(40, 56, 3), dtype=np.uint8)
    return PIL.Image.fromarray(pixels)


def assert_stock_call_draws(pipe, size: int, **call_kwargs) -> None:
    """Two steps of the stock diffusers call give a size x size picture that is neither blank nor NaN."""
    generator = torch.Generator().manual_seed(0)
    image = pipe(height=size, width=size, num_inference_steps=2, output_type="np", generator=generator, **call_kwargs).images
    assert image.shape == (1, size, size, 3)
    assert np.isfinite(image).all() and image.std() > 0.01


@pytest.mark.parametrize(
    "model_id, pipeline_class, call_kwargs",
    [
        ("tiny/qwen-image", QwenImagePipeline, {"negative_prompt": " ", "true_cfg_scale": 4.0}),
        ("tiny/flux", FluxPipeline, {"guidance_scale": 3.5, "max_sequence_length": 32}),
    ],
)
def test_saved_tiny_pipeline_loads_like_a_hub_folder_and_generates(home, model_id, pipeline_class, call_kwargs):
    folder = tiny.tiny_model_path(model_id)
    assert folder == home / "tiny" / f"{model_id.removeprefix('tiny/')}-v{tiny.VERSION}"

    pipe = DiffusionPipeline.from_pretrained(folder)

    assert type(pipe) is pipeline_class
    assert not pipe.transformer.training
    assert_stock_call_draws(pipe, 128, prompt="a red cat on a mat", **call_kwargs)


def test_tiny_edit_pipeline_loads_with_the_torchvision_free_processor_and_edits(home, monkeypatch):
    folder = tiny.tiny_model_path("tiny/qwen-image-edit")
    pipe = QwenImageEditPipeline.from_pretrained(folder, processor=load_qwen2vl_processor(folder))
    # The stock call VAE-encodes the condition at ~1024x1024; a 64x64 condition keeps the test quick.
    monkeypatch.setattr(pipeline_qwenimage_edit, "calculate_dimensions", lambda area, ratio: (64, 64, None))

    assert_stock_call_draws(pipe, 64, image=small_image(), prompt="make the cat blue", negative_prompt=" ", true_cfg_scale=4.0)


def test_edit_prompt_embeddings_keep_the_image_tokens_and_drop_only_the_template():
    pipe = tiny.build_tiny_pipeline("tiny/qwen-image-edit")
    with_image, _ = pipe.encode_prompt("make it blue", image=small_image().resize((64, 64)))
    grid = pipe.processor.image_processor(small_image().resize((64, 64)))["image_grid_thw"][0]
    image_tokens = int(grid.prod()) // pipe.processor.image_processor.merge_size**2
    prompt_tokens = len(pipe.tokenizer("make it blue<|im_end|>\n<|im_start|>assistant\n")["input_ids"])

    # <|vision_start|>, the image pads, <|vision_end|>, then the prompt and the closing template.
    assert with_image.shape[1] == 2 + image_tokens + prompt_tokens


@pytest.mark.parametrize("model_id", ["tiny/qwen-image", "tiny/qwen-image-edit"])
def test_qwen_tokenizer_encodes_the_template_prefix_to_exactly_the_dropped_tokens(model_id):
    pipe = tiny.build_tiny_pipeline(model_id)
    template, drop = pipe.prompt_template_encode, pipe.prompt_template_encode_start_idx
    # Qwen-Image-Edit keeps the vision tokens: only the part before them is dropped.
    prefix = template.split("{}")[0].split("<|vision_start|>")[0]
    assert drop == {"tiny/qwen-image": 34, "tiny/qwen-image-edit": 64}[model_id]

    assert len(pipe.tokenizer(prefix)["input_ids"]) == drop
    kept = pipe.tokenizer(template.format("a cat"))["input_ids"][drop:]
    assert pipe.tokenizer.decode(kept) == template[len(prefix) :].format("a cat")


def test_qwen_tokenizer_encodes_any_text_losslessly():
    tokenizer = tiny.build_tiny_pipeline("tiny/qwen-image").tokenizer
    text = "Ünïcode 日本語 emoji 🐱, tabs\tand\nnewlines"
    assert tokenizer.decode(tokenizer(text)["input_ids"]) == text


@pytest.mark.parametrize("model_id", tiny.TINY_MODEL_IDS)
def test_building_twice_gives_identical_weights_and_leaves_the_callers_rng_alone(model_id):
    with torch.random.fork_rng(devices=[]):  # the global RNG is this test's to set, not later tests'
        torch.manual_seed(123)
        expected = torch.rand(3)
        torch.manual_seed(123)

        first = tiny.build_tiny_pipeline(model_id)

        assert torch.equal(torch.rand(3), expected)
    assert weights_digest(first) == weights_digest(tiny.build_tiny_pipeline(model_id))


def test_another_process_saves_a_byte_identical_folder(home):
    folder = tiny.tiny_model_path("tiny/qwen-image")
    other_home = home / "other-process"
    env = os.environ | {"PYTHONPATH": str(REPO_ROOT), "GLANCE_LITE_HOME": str(other_home)}
    build = "from glance_lite.tiny import tiny_model_path; print(tiny_model_path('tiny/qwen-image'))"

    other = subprocess.run([sys.executable, "-c", build], env=env, capture_output=True, text=True, check=True)
    other_folder = Path(other.stdout.strip().splitlines()[-1])

    files = sorted(path.relative_to(folder) for path in folder.rglob("*") if path.is_file())
    assert files == sorted(path.relative_to(other_folder) for path in other_folder.rglob("*") if path.is_file())
    assert any(path.suffix == ".safetensors" for path in files)
    assert all((folder / path).read_bytes() == (other_folder / path).read_bytes() for path in files)


def test_second_call_reuses_the_saved_folder(home, monkeypatch):
    folder = tiny.tiny_model_path("tiny/flux")

    def no_rebuild(model_id):
        raise AssertionError("rebuilt a cached tiny model")

    monkeypatch.setattr(tiny, "build_tiny_pipeline", no_rebuild)
    assert tiny.tiny_model_path("tiny/flux") == folder
    assert tiny.tiny_model_path("tiny/flux", cache_dir=home) == folder


def test_a_concurrent_builder_that_finishes_first_wins(home, monkeypatch):
    build = tiny.build_tiny_pipeline

    def build_while_another_process_finishes(model_id):
        monkeypatch.setattr(tiny, "build_tiny_pipeline", build)
        tiny.tiny_model_path(model_id)  # the other builder renames its folder into place first
        return build(model_id)

    monkeypatch.setattr(tiny, "build_tiny_pipeline", build_while_another_process_finishes)
    folder = tiny.tiny_model_path("tiny/flux")

    assert json.loads((folder / "model_index.json").read_text())["_class_name"] == "FluxPipeline"
    assert [p.name for p in (home / "tiny").iterdir()] == [folder.name]  # no staging folder left behind


def test_unknown_tiny_id_names_the_known_ones(home):
    assert all(tiny.is_tiny_model_id(model_id) for model_id in tiny.TINY_MODEL_IDS)
    assert not tiny.is_tiny_model_id("tiny/qwen-imag") and not tiny.is_tiny_model_id("Qwen/Qwen-Image")
    with pytest.raises(ValueError) as error:
        tiny.tiny_model_path("tiny/qwen-imag")
    assert all(model_id in str(error.value) for model_id in tiny.TINY_MODEL_IDS)


def test_processor_loads_from_the_qwen_image_edit_repo_layout(tmp_path):
    """Qwen/Qwen-Image-Edit ships `processor/` with slow-tokenizer files and `preprocessor_config.json`."""
    processor_dir = tmp_path / "processor"
    shutil.copytree(Path(tiny.__file__).parent / "assets" / "qwen_tokenizer", processor_dir)
    preprocessor = {
        "min_pixels": 3136,
        "max_pixels": 12845056,
        "patch_size": 14,
        "temporal_patch_size": 2,
        "merge_size": 2,
        "image_mean": [0.48145466, 0.4578275, 0.40821073],
        "image_std": [0.26862954, 0.26130258, 0.27577711],
        "image_processor_type": "Qwen2VLImageProcessor",
        "processor_class": "Qwen2_5_VLProcessor",
    }
    (processor_dir / "preprocessor_config.json").write_text(json.dumps(preprocessor))

    processor = load_qwen2vl_processor(tmp_path)

    assert processor.image_processor.size.longest_edge == 12845056
    inputs = processor(text=["<|vision_start|><|image_pad|><|vision_end|>hi"], images=small_image(), return_tensors="pt")
    assert (inputs["input_ids"] == processor.image_token_id).sum() == inputs["image_grid_thw"].prod() // 4
