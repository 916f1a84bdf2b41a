"""LoRA files that travel: glance_lite's files load at the trained scale in glance_lite, plain diffusers and
per-layer-alpha readers (ComfyUI); `python -m glance_lite.lora info|convert` on files laid out as the official ones."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from peft.utils import get_peft_model_state_dict
from safetensors import safe_open
from safetensors.torch import save_file

import glance_lite
from glance_lite.lora import (
    LoraSource,
    describe_lora_file,
    diffusers_dropped_layers,
    load_lora,
    main,
    read_lora_file,
    read_lora_layout,
)
from glance_lite.models import component_class, resolve_model
from glance_lite.schedule import PhaseSplit

from conftest import make_official_lora, make_random_lora, transformer_with_random_lora

REPO = Path(__file__).resolve().parent.parent
MODELS = ["tiny/qwen-image", "tiny/flux"]
SLOW_ONLY = PhaseSplit((0, 1, 2), (), 3)  # three slow steps: the adapter acts on every step


def fresh_transformer(model):
    source = resolve_model(model)
    return source.family, component_class(source, "transformer").from_pretrained(source.location, subfolder="transformer")


def transformer_inputs(model):
    g = torch.Generator().manual_seed(0)
    x, text = torch.randn(1, 16, 64, generator=g), torch.randn(1, 5, 32, generator=g)
    if model == "tiny/flux":
        return dict(hidden_states=x, encoder_hidden_states=text, pooled_projections=torch.randn(1, 32, generator=g),
                    timestep=torch.tensor([0.5]), img_ids=torch.zeros(16, 3), txt_ids=torch.zeros(5, 3),
                    guidance=torch.tensor([3.5]), return_dict=False)  # fmt: skip
    return dict(hidden_states=x, encoder_hidden_states=text, timestep=torch.tensor([0.5]), img_shapes=[[(1, 4, 4)]], return_dict=False)


@torch.no_grad()
def predict(transformer, model):
    return transformer(**transformer_inputs(model))[0]


def glance_latents(model, lora, compat):
    glance = glance_lite.load(model, slow_lora=str(lora), profile="cpu", lora_compat=compat, split=SLOW_ONLY)
    result = glance.generate("a red circle", height=64, width=64, seed=3, output_type="latent", progress=False)
    return result.latents[0], glance.lora_reports[0]


# ---- the layout glance_lite writes ------------------------------------------------------------------------------
@pytest.mark.parametrize("model", MODELS)
def test_written_files_hold_lora_a_b_and_one_alpha_per_layer_under_the_family_prefix_and_no_metadata(model, tmp_path):
    path = make_random_lora(model, tmp_path / "a.safetensors", seed=1, rank=4, alpha=16)
    family = resolve_model(model).family
    with safe_open(str(path), framework="pt") as f:
        keys, metadata = list(f.keys()), f.metadata()
        alphas = {k: f.get_tensor(k) for k in keys if k.endswith(".alpha")}
    assert family.lora_key_prefix == {"tiny/qwen-image": "diffusion_model.", "tiny/flux": "transformer."}[model]
    assert all(k.startswith(family.lora_key_prefix) for k in keys)
    layers = {k.rsplit(".", 2)[0] for k in keys if k.endswith((".lora_A.weight", ".lora_B.weight"))}
    assert {k.removesuffix(".alpha") for k in alphas} == layers and len(keys) == 3 * len(layers)
    assert all(a.shape == () and a.dtype == torch.float32 and float(a) == 16.0 for a in alphas.values())
    assert "lora_adapter_metadata" not in metadata and metadata["glance_lite.family"] == family.name


@pytest.mark.parametrize(("model", "rank", "alpha"), [(m, 4, 16) for m in MODELS] + [(m, 3, 7) for m in MODELS])
def test_plain_diffusers_load_lora_weights_applies_the_trained_scale(model, rank, alpha, tmp_path):
    """Bit-identical at the Glance recipe's scale (4, a power of two) for both families; at a scale like 7/3,
    diffusers' Qwen-Image path folds alpha/rank into lora_A, which rounds: within 1e-6 of glance_lite."""
    path = make_random_lora(model, tmp_path / "a.safetensors", seed=2, rank=rank, alpha=alpha)
    family, transformer = fresh_transformer(model)
    report = load_lora(transformer, family, LoraSource(str(path)), "a")
    assert report.scale == pytest.approx(alpha / rank, rel=1e-6)
    ours = predict(transformer, model)

    source = resolve_model(model)
    pipe = family.pipeline_class.from_pretrained(source.location)
    pipe.load_lora_weights(str(path), adapter_name="a")
    theirs = predict(pipe.transformer, model)
    if model == "tiny/flux" or alpha / rank == 4:
        assert torch.equal(ours, theirs)
    else:
        assert (ours - theirs).abs().max() <= 1e-6

    _, plain = fresh_transformer(model)
    assert not torch.allclose(predict(plain, model), ours)  # the LoRA does change the prediction


@pytest.mark.parametrize("model", MODELS)
def test_the_per_layer_alpha_rule_of_comfyui_applied_by_hand_gives_glance_lite_bit_for_bit(model, tmp_path):
    """ComfyUI cannot run here, so its documented rule is applied by hand: for each layer key x it maps,
    W += (alpha / rank) * up @ down with alpha from `x.alpha` (scale 1.0 without), metadata ignored."""
    path = make_random_lora(model, tmp_path / "a.safetensors", seed=3, rank=4, alpha=16)
    tensors, _ = read_lora_file(path)
    family, by_hand = fresh_transformer(model)
    layers = dict(by_hand.named_modules())
    comfy_prefix = {"tiny/qwen-image": "diffusion_model.", "tiny/flux": "transformer."}[model]  # what its key map reads
    with torch.no_grad():
        for key in [k for k in tensors if k.endswith(".lora_B.weight")]:
            x = key.removesuffix(".lora_B.weight")
            up, down, alpha = tensors[key], tensors[f"{x}.lora_A.weight"], tensors.get(f"{x}.alpha")
            scale = alpha.item() / down.shape[0] if alpha is not None else 1.0
            weight = layers[x.removeprefix(comfy_prefix)].weight
            weight += (scale * torch.mm(up.flatten(1), down.flatten(1))).to(weight.dtype)

    family, transformer = fresh_transformer(model)
    load_lora(transformer, family, LoraSource(str(path)), "a")
    transformer.fuse_lora(adapter_names=["a"])  # merged like ComfyUI's patch (and glance_lite's cpu profile)
    assert torch.equal(predict(by_hand, model), predict(transformer, model))


def test_older_glance_lite_files_with_the_alpha_in_metadata_still_load_at_their_trained_scale(tmp_path):
    """Files from before per-layer alphas: `transformer.` keys, alpha only in the diffusers adapter metadata."""
    source, transformer = transformer_with_random_lora("tiny/qwen-image", seed=4, rank=4, alpha=16, std=0.05)
    config = transformer.peft_config["random"].to_dict()
    config = {k: sorted(v) if isinstance(v, set) else v for k, v in config.items()}
    source.family.pipeline_class.save_lora_weights(
        tmp_path, get_peft_model_state_dict(transformer, adapter_name="random"), weight_name="old.safetensors",
        transformer_lora_adapter_metadata=config,
    )  # fmt: skip
    old = tmp_path / "old.safetensors"
    family, fresh = fresh_transformer("tiny/qwen-image")
    report = load_lora(fresh, family, LoraSource(str(old)), "a")
    assert (report.rank, report.alpha, report.dropped) == (4, 16, [])
    info = describe_lora_file(old, "tiny/qwen-image").to_dict()
    scales = [entry["scale"] for entry in info["loaders"].values()]  # trained, few-step, plain diffusers, per-layer .alpha
    assert scales == [4, 4, 4, 1]  # ComfyUI ignores metadata: convert such files


# ---- info and convert on files laid out as the official ones -------------------------------------------------------
@pytest.fixture(scope="module", params=MODELS)
def official(request, tmp_path_factory):
    model = request.param
    return model, make_official_lora(model, tmp_path_factory.mktemp("official") / "glance_slow.safetensors", seed=5)


def test_info_names_family_layout_and_the_scale_and_dropped_layers_of_each_loader(official):
    model, path = official
    info = describe_lora_file(path, model).to_dict()
    family = resolve_model(model).family
    assert info["fits"] == [family.name] and info["ranks"] == {4: info["layers"]}
    assert info["key_prefixes"] == {"transformer.": 2 * info["layers"]} and info["alpha_keys"] == 0
    attention = [m for m in read_lora_layout(path).modules if m.rsplit(".attn.", 1)[-1] in ("to_q", "to_k", "to_v", "to_out.0")]
    trained, fewstep, diffusers, per_layer = info["loaders"].values()
    assert (trained["scale"], fewstep["scale"], diffusers["scale"], per_layer["scale"]) == (4, 1, 1, 1)
    assert fewstep["layers"] == info["layers"]  # as a few-step LoRA every layer loads, at diffusers' scale
    if model == "tiny/qwen-image":  # the mixed layout: diffusers reads the first key (lora_A) and drops lora.down/up
        assert info["key_styles"] == {"lora_A/lora_B": info["layers"] - len(attention), "lora.down/lora.up": len(attention)}
        assert diffusers["dropped"] == sorted(attention) and diffusers["layers"] == info["layers"] - len(attention)
    else:  # FLUX trains attention only: every key is lora.down/up, and diffusers converts them all
        assert info["key_styles"] == {"lora.down/lora.up": info["layers"]} and diffusers["dropped"] == []

    # The drop list is worked out from the keys; a real diffusers load into the model drops the same layers.
    family, transformer = fresh_transformer(model)
    report = load_lora(transformer, family, LoraSource(str(path)), "a", compat="diffusers")
    assert report.dropped == diffusers_dropped_layers(path, family, read_lora_layout(path).modules) == diffusers["dropped"]


@pytest.mark.parametrize(("scale", "compat"), [("as-diffusers", "diffusers"), ("as-trained", "trained")])
def test_a_converted_official_file_gives_the_latents_of_the_original_loaded_with_the_matching_compat(official, scale, compat, tmp_path):
    model, path = official
    out = tmp_path / "converted.safetensors"
    assert main(["convert", str(path), "--out", str(out), "--scale", scale, "--model", model]) == 0
    converted = read_lora_layout(out)
    assert converted.styles == {"lora_A/lora_B": len(converted.modules)} and set(converted.prefixes) == {resolve_model(model).family.lora_key_prefix}
    assert len(converted.alphas) == len(converted.modules) and converted.metadata is None

    original, original_report = glance_latents(model, path, compat)
    again, again_report = glance_latents(model, out, "trained")  # glance_lite's default: the file's own alphas
    assert torch.equal(original, again)
    assert (again_report.scale, len(again_report.applied)) == (original_report.scale, len(original_report.applied))
    assert again_report.dropped == []  # as-diffusers leaves out what diffusers drops: nothing left to drop


def test_convert_writes_the_chosen_prefix_and_info_warns_where_a_loader_would_not_read_it(tmp_path, capsys):
    path = make_official_lora("tiny/flux", tmp_path / "flux.safetensors", seed=6)
    out = tmp_path / "bare.safetensors"
    assert main(["convert", str(path), "--out", str(out), "--scale", "as-trained", "--prefix", "none", "--model", "tiny/flux"]) == 0
    text = capsys.readouterr().out
    assert read_lora_layout(out).prefixes == {"": 3 * 7}  # 7 layers: A, B and alpha each
    assert "plain diffusers load_lora_weights (= --lora-compat diffusers): applies nothing" in text
    assert "ComfyUI     does not map these keys for flux" in text


def test_the_lora_command_runs_as_a_module(tmp_path):
    path = make_official_lora("tiny/qwen-image", tmp_path / "glance_qwen_slow.safetensors", seed=7)
    env = dict(os.environ, PYTHONPATH=str(REPO))
    proc = subprocess.run([sys.executable, "-m", "glance_lite.lora", "info", str(path), "--model", "tiny/qwen-image", "--json"],
                          capture_output=True, text=True, env=env, timeout=300)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads(proc.stdout)["family"] == "qwen-image"


# ---- bad input: one line, exit code 2, nothing written ----------------------------------------------------------
def bad_inputs(folder: Path) -> dict[str, tuple[Path, str]]:
    (folder / "notes.safetensors").write_text("these are not tensors")
    save_file({"transformer.proj_out.weight": torch.zeros(2, 2)}, str(folder / "plain.safetensors"))
    # a kohya text-encoder LoRA: the transformer reads kohya's lora_unet_ keys, not lora_te_ ones
    save_file({"lora_te1_text_model_encoder_layers_0_mlp_fc1.lora_down.weight": torch.zeros(2, 2),
               "lora_te1_text_model_encoder_layers_0_mlp_fc1.lora_up.weight": torch.zeros(2, 2)}, str(folder / "text-encoder.safetensors"))  # fmt: skip
    return {
        "missing file": (folder / "nope.safetensors", "no such file"),
        "not safetensors": (folder / "notes.safetensors", "is not a safetensors file"),
        "no LoRA keys": (folder / "plain.safetensors", "holds no LoRA keys"),
        "unknown layout": (folder / "text-encoder.safetensors", "key layout glance_lite does not read"),
    }


@pytest.mark.parametrize("case", ["missing file", "not safetensors", "no LoRA keys", "unknown layout"])
def test_bad_input_is_one_line_on_stderr_exit_code_2_and_nothing_written(case, tmp_path, capsys):
    path, message = bad_inputs(tmp_path)[case]
    for command in (["info", str(path)], ["convert", str(path), "--out", str(tmp_path / "out.safetensors"), "--scale", "as-trained"]):
        assert main(command) == 2
        captured = capsys.readouterr()
        assert captured.out == "" and captured.err.count("\n") == 1 and message in captured.err
        assert captured.err.startswith("error: ")
    assert not (tmp_path / "out.safetensors").exists()


def test_bad_input_in_a_new_process_prints_no_traceback(tmp_path):
    path, message = bad_inputs(tmp_path)["not safetensors"]
    env = dict(os.environ, PYTHONPATH=str(REPO))
    proc = subprocess.run([sys.executable, "-m", "glance_lite.lora", "convert", str(path), "--out", str(tmp_path / "o.safetensors"),
                           "--scale", "as-diffusers"], capture_output=True, text=True, env=env, timeout=120)  # fmt: skip
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and proc.stdout == "" and not (tmp_path / "o.safetensors").exists()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], proc.stderr
