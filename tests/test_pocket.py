"""The pocket world: deterministic data with a held-out caption set, a checker that reads pictures back, and a
shipped pocket base model that loads like any downloaded pipeline and follows its prompts."""

import numpy as np
import pytest
import torch

from glance_lite.pocket import POCKET_MODEL_IDS, checker, pocket_model_path, world


def test_checker_reads_every_ground_truth_render_right():
    images, scenes = world.make_batch(300, seed=5, scenes=world.ALL_SCENES)

    figures = checker.score(images, scenes)

    assert figures == {"background": 1.0, "colour": 1.0, "position": 1.0, "all": 1.0}


def test_checker_notices_a_wrong_picture():
    scene = world.Scene("circle", "red", "blue", "top left")
    other = world.Scene("circle", "yellow", "green", "bottom right")

    assert checker.judge(world.render(other, 0), scene) == {"background": False, "colour": False, "position": False}


def test_data_is_deterministic_from_its_seed():
    first, scenes_a = world.make_batch(16, seed=3)
    again, scenes_b = world.make_batch(16, seed=3)
    other, _ = world.make_batch(16, seed=4)

    assert np.array_equal(first, again) and scenes_a == scenes_b
    assert not np.array_equal(first, other)
    assert world.Scene.parse(scenes_a[0].caption) == scenes_a[0]


def test_held_out_captions_never_appear_in_training():
    assert world.HELD_OUT and not (world.HELD_OUT_CAPTIONS & world.TRAIN_CAPTIONS)
    assert len(world.HELD_OUT) + len(world.TRAIN_SCENES) == len(world.ALL_SCENES)
    _, drawn = world.make_batch(2000, seed=1)  # what the base trainer draws from by default
    assert not {s.caption for s in drawn} & world.HELD_OUT_CAPTIONS
    # Only combinations are new: every single attribute value is trained on.
    for attribute in ("shape", "colour", "background", "position"):
        assert {getattr(s, attribute) for s in world.HELD_OUT} <= {getattr(s, attribute) for s in world.TRAIN_SCENES}


def test_pocket_tokenizer_keeps_the_template_and_makes_caption_words_single_tokens():
    from transformers import AutoTokenizer

    from glance_lite.pocket.tokenizer import qwen_image_template

    tokenizer = AutoTokenizer.from_pretrained(pocket_model_path("pocket/qwen-image") / "tokenizer")
    prefix = qwen_image_template().split("{}")[0]

    assert len(tokenizer(prefix)["input_ids"]) == 34
    assert tokenizer.tokenize("a red circle on a blue background, top left") == [
        "a", "Ġred", "Ġcircle", "Ġon", "Ġa", "Ġblue", "Ġbackground", ",", "Ġtop", "Ġleft"
    ]  # fmt: skip


def test_pocket_model_id_loads_through_the_ordinary_from_pretrained_path():
    from diffusers import DiffusionPipeline, QwenImagePipeline

    from glance_lite.models import resolve_model

    source = resolve_model("pocket/qwen-image")
    pipe = DiffusionPipeline.from_pretrained(source.location)

    assert "pocket/qwen-image" in POCKET_MODEL_IDS
    assert source.location == str(pocket_model_path("pocket/qwen-image"))
    assert source.family.name == "qwen-image"
    assert type(pipe) is QwenImagePipeline
    assert pipe.vae_scale_factor == 4  # 64x64 pictures -> 16x16 latents -> 64 image tokens
    total = sum(f.stat().st_size for f in pocket_model_path("pocket/qwen-image").rglob("*") if f.is_file())
    assert total < 20 * 2**20


@pytest.fixture
def at_most_two_threads():
    """The pocket model's small tensors only lose from more intra-op threads on a shared CPU; the caller's thread count
    is restored afterwards, so no later test runs with this one's setting."""
    threads = torch.get_num_threads()
    torch.set_num_threads(min(threads, 2))
    yield
    torch.set_num_threads(threads)


def test_shipped_pocket_base_paints_the_background_a_held_out_prompt_asks_for(at_most_two_threads):
    import glance_lite

    by_background = {}
    for scene in world.HELD_OUT:
        by_background.setdefault(scene.background, scene)
    scenes = list(by_background.values())[:4]

    glance = glance_lite.load("pocket/qwen-image", profile="cpu", height=64, width=64)
    result = glance.generate([s.caption for s in scenes], base_steps=10, height=64, width=64, seed=0, progress=False)

    right = [checker.judge(image, scene)["background"] for image, scene in zip(result.images, scenes)]
    assert len(scenes) == 4 and sum(right) >= 3, right
