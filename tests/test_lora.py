"""LoRA files: the official mixed layout in both compat modes, round trips, and files that do not fit."""

import pytest
import torch

from glance_lite.lora import LoraMismatchError, LoraSource, layer_alphas, load_lora, read_lora_file, save_lora
from glance_lite.models import component_class, resolve_model

from conftest import make_official_lora, make_random_lora

ATTENTION = ("to_q", "to_k", "to_v", "to_out.0")


def fresh_transformer(model_id="tiny/qwen-image"):
    source = resolve_model(model_id)
    return source.family, component_class(source, "transformer").from_pretrained(source.location, subfolder="transformer")


@pytest.fixture(scope="module")
def official_file(tmp_path_factory):
    path = make_official_lora("tiny/qwen-image", tmp_path_factory.mktemp("official") / "glance_qwen_slow.safetensors", seed=3)
    tensors, metadata = read_lora_file(path)
    assert metadata is None and not any(k.endswith(".alpha") for k in tensors)
    assert next(iter(tensors)).endswith("add_k_proj.lora_A.weight")  # the first key, the one diffusers looks at
    assert {k.split(".attn.")[1].split(".lora.")[0] for k in tensors if ".lora.down." in k} == set(ATTENTION)
    return path


def test_diffusers_compat_drops_attention_keys_and_loads_at_scale_one_as_diffusers_does(official_file):
    family, transformer = fresh_transformer()
    report = load_lora(transformer, family, LoraSource(str(official_file)), "slow", compat="diffusers")
    dropped_kinds = {name.rsplit(".attn.", 1)[1] for name in report.dropped}
    assert dropped_kinds == set(ATTENTION)
    assert report.applied and all(".attn.to_" not in name or "to_add_out" in name for name in report.applied)
    assert report.scale == 1.0  # no alpha in the file: diffusers falls back to alpha = r
    assert "NOT applied" in report.summary()


def test_trained_compat_applies_every_key_at_the_trained_scale(official_file):
    family, transformer = fresh_transformer()
    report = load_lora(transformer, family, LoraSource(str(official_file)), "slow", compat="trained")
    assert report.dropped == []
    assert len(report.applied) == len(read_lora_file(official_file)[0]) // 2
    assert report.scale == family.recipe.alpha / family.recipe.rank == 4.0


def test_the_two_compat_modes_give_different_predictions(official_file):
    outputs = []
    for compat in ("diffusers", "trained"):
        family, transformer = fresh_transformer()
        load_lora(transformer, family, LoraSource(str(official_file)), "slow", compat=compat)
        gen = torch.Generator().manual_seed(0)
        x = torch.randn(1, 16, 64, generator=gen)
        text = torch.randn(1, 5, 32, generator=gen)
        with torch.no_grad():
            outputs.append(transformer(hidden_states=x, encoder_hidden_states=text, timestep=torch.tensor([0.5]), img_shapes=[[(1, 4, 4)]], return_dict=False)[0])
    assert not torch.allclose(outputs[0], outputs[1])


def test_files_written_by_glance_lite_round_trip_exactly_with_their_alpha(tmp_path):
    path = make_random_lora("tiny/qwen-image", tmp_path / "a.safetensors", seed=5, rank=4, alpha=16)
    family, transformer = fresh_transformer()
    report = load_lora(transformer, family, LoraSource(str(path)), "slow", compat="trained")
    assert report.rank == 4 and report.alpha == 16 and report.dropped == []
    again = save_lora(transformer, family, "slow", tmp_path / "b.safetensors")
    first, second = read_lora_file(path)[0], read_lora_file(again)[0]
    assert set(layer_alphas(first).values()) == set(layer_alphas(second).values()) == {16.0}
    assert first.keys() == second.keys()
    assert all(torch.equal(first[k], second[k]) for k in first)


def test_a_flux_lora_is_refused_on_qwen_image_naming_its_origin(tmp_path):
    flux_file = make_random_lora("tiny/flux", tmp_path / "flux.safetensors", seed=6)
    family, transformer = fresh_transformer()
    with pytest.raises(LoraMismatchError, match="does not fit this qwen-image model.*LoRA for flux"):
        load_lora(transformer, family, LoraSource(str(flux_file)), "slow")


def test_a_missing_lora_file_names_the_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.safetensors"):
        LoraSource(str(tmp_path / "nope.safetensors")).resolve()
