"""generate(): reproducible images, the stock pipeline reproduced, adapters switched in place, fast failures."""

import dataclasses
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import glance_lite
import glance_lite.generate  # noqa: F401  (the CLI module must not shadow the glance_lite.generate() API)
from glance_lite.api import load
from glance_lite.models import resolve_model
from glance_lite.sampler import sample
from glance_lite.schedule import PhasePlan

from conftest import make_random_lora

REPO = Path(__file__).resolve().parent.parent
SIZE = dict(height=128, width=128)


def run_cli(*args, env_extra=None):
    env = dict(os.environ, PYTHONPATH=str(REPO), **(env_extra or {}))
    return subprocess.run([sys.executable, "-m", "glance_lite.generate", *args], capture_output=True, text=True, env=env, timeout=300)


@pytest.mark.parametrize("model", ["tiny/qwen-image", "tiny/flux"])
def test_cli_writes_a_png_that_is_bit_identical_in_a_new_process(model, tmp_path):
    outputs = []
    for run in range(2):
        out = tmp_path / f"{run}.png"
        proc = run_cli("--model", model, "--prompt", "a red cube", "--height", "128", "--width", "128", "--seed", "0",
                       "--profile", "cpu", "--out", str(out), "--no-progress")  # fmt: skip
        assert proc.returncode == 0, proc.stderr
        outputs.append(np.asarray(Image.open(out)))
    assert outputs[0].shape == (128, 128, 3)
    assert np.array_equal(outputs[0], outputs[1])
    assert outputs[0].std() > 0  # an image, not a constant


def test_cli_json_reports_timesteps_and_stage_times(tmp_path):
    import json

    proc = run_cli("--model", "tiny/qwen-image", "--prompt", "a cube", "--height", "64", "--width", "64",
                   "--profile", "cpu", "--out", str(tmp_path / "a.png"), "--json", "--no-progress", "--mode", "reference")  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)["runs"][0]
    assert report["schedule"]["phases"] == {"slow": [1000, 980, 956, 936, 912], "fast": [888, 744, 564, 320, 20]}
    assert set(report["stage_seconds"]) == {"text_encode", "denoise", "vae_decode"}
    assert set(report["phase_seconds"]) == {"slow", "fast"}


@pytest.mark.parametrize("model, cfg", [("tiny/qwen-image", 5.0), ("tiny/flux", 1.0)])
def test_base_steps_reproduce_the_stock_diffusers_pipeline_exactly(model, cfg):
    glance = load(model, profile="cpu")
    ours = glance.generate("a red cube", **SIZE, seed=3, base_steps=6, true_cfg_scale=cfg, output_type="latent", progress=False)
    source = resolve_model(model)
    pipe = source.family.pipeline_class.from_pretrained(source.location)
    extra = {"true_cfg_scale": cfg, "negative_prompt": " "} if cfg > 1 else {}
    stock = pipe("a red cube", **SIZE, num_inference_steps=6, generator=torch.Generator().manual_seed(3), output_type="latent", **extra)
    assert torch.equal(ours.latents[0], stock.images)


def test_switching_adapters_equals_pipelines_loaded_with_only_that_adapter(qwen_loras):
    slow_file, fast_file = qwen_loras
    both = load("tiny/qwen-image", slow_file, fast_file, profile="cpu")
    result = both.generate("a red cube", **SIZE, seed=1, output_type="latent", progress=False)
    plan = result.plan

    # The same run, phase by phase, on two separately loaded models that each hold one adapter.
    only_slow = load("tiny/qwen-image", slow_lora=slow_file, profile="cpu")
    only_fast = load("tiny/qwen-image", fast_lora=fast_file, profile="cpu")
    only_slow.generate("warm up", height=64, width=64, output_type="latent", progress=False)
    only_fast.generate("warm up", height=64, width=64, output_type="latent", progress=False)
    family, pipe = only_slow.family, only_slow.manager.pipe
    cond = family.encode_prompt(pipe, "a red cube", "cpu")
    uncond = family.encode_prompt(pipe, " ", "cpu")
    state = family.prepare_latents(pipe, 128, 128, torch.Generator().manual_seed(1), cond["prompt_embeds"].dtype, "cpu")
    for glance, phase in ((only_slow, "slow"), (only_fast, "fast")):
        sub_plan = PhasePlan(plan.phase(phase), plan.mode, plan.image_seq_len, plan.mu)
        state.latents = sample(
            glance.manager.pipe.transformer, family, sub_plan, state, cond, uncond, 5.0, {phase: phase},
            fuse_adapters=glance.profile.fuse_lora, progress=False,
        ).latents
    assert torch.equal(result.latents[0], state.latents)


def test_the_transformer_is_loaded_once_per_load_and_adapters_switch_in_place(qwen_loras):
    glance = load("tiny/qwen-image", *qwen_loras, profile="cpu")
    first = glance.generate("a red cube", height=64, width=64, output_type="latent", progress=False)
    base = glance.generate("a red cube", height=64, width=64, base_steps=4, output_type="latent", progress=False)
    again = glance.generate("a red cube", height=64, width=64, output_type="latent", progress=False)
    assert glance.manager.load_counts["transformer"] == 1
    assert torch.equal(first.latents[0], again.latents[0])  # slow -> fast -> base -> slow leaves no trace
    assert not torch.equal(first.latents[0][:, :4], base.latents[0][:, :4])
    assert [r.adapter_name for r in first.lora_reports] == ["slow", "fast"]


def test_fused_phases_give_the_unfused_result_and_leave_the_base_weights_bit_identical(qwen_loras):
    fused = load("tiny/qwen-image", *qwen_loras, profile="cpu")
    assert fused.profile.fuse_lora
    transformer = fused.manager.bring("transformer")
    untouched = {k: v.clone() for k, v in transformer.state_dict().items()}
    fast = fused.generate("a red cube", height=64, width=64, output_type="latent", progress=False)
    assert all(torch.equal(untouched[k], v) for k, v in transformer.state_dict().items())

    unfused = load("tiny/qwen-image", *qwen_loras, profile=dataclasses.replace(fused.profile, fuse_lora=False))
    slow = unfused.generate("a red cube", height=64, width=64, output_type="latent", progress=False)
    plain = load("tiny/qwen-image", profile="cpu").generate("a red cube", height=64, width=64, output_type="latent", progress=False)
    assert torch.allclose(fast.latents[0], slow.latents[0], atol=1e-5)  # the same sums, rounded in another order
    assert not torch.allclose(fast.latents[0], plain.latents[0], atol=1e-2)  # and the LoRAs were applied


def test_loras_change_the_image_and_a_list_of_prompts_gives_one_image_each(qwen_loras):
    plain = load("tiny/qwen-image", profile="cpu").generate(["a red cube", "a blue ball"], height=64, width=64, progress=False)
    adapted = glance_lite.generate(["a red cube", "a blue ball"], "tiny/qwen-image", *qwen_loras, profile="cpu", height=64, width=64, progress=False)
    assert len(plain.images) == len(adapted.images) == 2
    assert not np.array_equal(np.asarray(plain.images[0]), np.asarray(adapted.images[0]))
    assert not np.array_equal(np.asarray(plain.images[0]), np.asarray(plain.images[1]))


def test_qwen_image_edit_generates_from_an_input_image(tmp_path):
    source = Image.fromarray((np.random.default_rng(0).random((48, 64, 3)) * 255).astype("uint8"))
    glance = load("tiny/qwen-image-edit", profile="cpu", condition_area=64 * 64)
    result = glance.generate("make it red", image=source, height=64, width=64, progress=False)
    assert result.image.size == (64, 64)
    with pytest.raises(ValueError, match="input image"):
        glance.generate("make it red", height=64, width=64, progress=False)


def test_batched_cfg_matches_two_passes():
    glance = load("tiny/qwen-image", profile="cpu")
    two = glance.generate("a red cube", height=64, width=64, output_type="latent", progress=False)
    glance.profile = type(glance.profile)(**{**glance.profile.__dict__, "batch_cfg": True})
    one = glance.generate("a red cube", height=64, width=64, output_type="latent", progress=False)
    assert torch.allclose(two.latents[0], one.latents[0], atol=1e-4)


# ---- bad input fails fast, with a message that says what to do --------------------------------
@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(height=100), "height=100 is not a multiple of 16.*Use 96 or 112"),
        (dict(width=130), "width=130 is not a multiple of 16"),
        (dict(prompt="   "), "prompt is empty"),
        (dict(prompt=[]), "No prompt given"),
        (dict(model="nobody/no-such-model"), "Cannot open model 'nobody/no-such-model'.*offline"),
        (dict(model="tiny/sdxl"), "Unknown embedded model.*tiny/qwen-image"),
        (dict(slow_lora="/no/such/slow.safetensors"), "LoRA file not found: /no/such/slow.safetensors"),
    ],
)
def test_bad_input_is_refused_with_a_clear_message(kwargs, message):
    kwargs = {"prompt": "a cube", "model": "tiny/qwen-image", "profile": "cpu", "height": 64, "width": 64, **kwargs}
    with pytest.raises((ValueError, FileNotFoundError), match=message):
        glance_lite.generate(kwargs.pop("prompt"), **kwargs)


def test_cli_refuses_bad_input_before_loading_and_says_why(tmp_path):
    flux_lora = make_random_lora("tiny/flux", tmp_path / "flux.safetensors", seed=9)
    cases = [
        (["--height", "100"], "multiple of 16"),
        (["--slow-lora", str(flux_lora)], "LoRA for flux"),
        (["--slow-steps", "0,2,60"], "out of range"),
        (["--fast-steps", "30,20"], "strictly increasing"),
        (["--model", "nobody/nothing"], "Cannot open model"),
    ]
    for extra, message in cases:
        proc = run_cli("--model", "tiny/qwen-image", "--prompt", "x", "--profile", "cpu", "--height", "64", "--width", "64",
                       "--out", str(tmp_path / "x.png"), *extra, env_extra={"HF_HUB_OFFLINE": "1"})  # fmt: skip
        assert proc.returncode != 0 and message in proc.stderr, (extra, proc.stderr[-500:])
        assert not (tmp_path / "x.png").exists()


# ---- the noise, and images that remember how they were made ---------------------------------------------------------
def test_given_latents_reproduce_a_seeded_run_exactly(tmp_path):
    from safetensors.torch import save_file

    glance = load("tiny/qwen-image", profile="cpu", height=64, width=64)
    seeded = glance.generate("a red cube", height=64, width=64, seed=3, output_type="latent", progress=False)
    again = glance.generate("a red cube", height=64, width=64, seed=999, latents=seeded.noise[0], output_type="latent", progress=False)
    assert torch.equal(again.latents[0], seeded.latents[0])
    torch.save(seeded.noise[0], tmp_path / "noise.pt")
    save_file({"latents": seeded.noise[0]}, str(tmp_path / "noise.safetensors"))
    for file in ("noise.pt", "noise.safetensors"):
        from_file = glance.generate("a red cube", height=64, width=64, latents=tmp_path / file, output_type="latent", progress=False)
        assert torch.equal(from_file.latents[0], seeded.latents[0])
    with pytest.raises(ValueError, match=r"latents have shape \(1, 16, 64\), but this model at this size starts from \(1, 64, 64\)"):
        glance.generate("a red cube", height=128, width=128, latents=seeded.noise[0], progress=False)
    with pytest.raises(ValueError, match="generator_device='cuda' draws the noise the official script draws on a GPU"):
        glance.generate("a red cube", height=64, width=64, generator_device="cuda", progress=False)


def test_a_png_remembers_its_settings_and_from_png_makes_it_again_bit_for_bit(tmp_path, qwen_loras, capsys):
    from glance_lite.generate import main
    from glance_lite.png_settings import read_png_settings

    slow, fast = qwen_loras
    first = tmp_path / "first.png"
    args = ["--model", "tiny/qwen-image", "--profile", "cpu", "--slow-lora", str(slow), "--fast-lora", str(fast),
            "--prompt", "a red cube", "--negative-prompt", "blurry", "--seed", "7", "--height", "64", "--width", "64",
            "--slow-steps", "0,3,6", "--fast-steps", "12,30,49", "--true-cfg-scale", "4", "--no-progress"]  # fmt: skip
    assert main([*args, "--out", str(first)]) == 0
    settings = read_png_settings(first)
    assert (settings["prompt"], settings["negative_prompt"], settings["seed"], settings["true_cfg_scale"]) == ("a red cube", "blurry", 7, 4.0)
    assert settings["split"] == {"slow": [0, 3, 6], "fast": [12, 30, 49]} and settings["profile"] == "cpu"
    assert [(lora["phase"], lora["name"]) for lora in settings["loras"]] == [("slow", str(slow)), ("fast", str(fast))]
    again = tmp_path / "again.png"
    assert main(["--from-png", str(first), "--out", str(again), "--no-progress"]) == 0
    assert again.read_bytes() == first.read_bytes()
    # a LoRA that changed since cannot make the same image: said, nothing written
    changed = tmp_path / "changed.safetensors"
    changed.write_bytes(slow.read_bytes())
    assert main([*args, "--slow-lora", str(changed), "--out", str(tmp_path / "made.png")]) == 0
    changed.write_bytes(fast.read_bytes())
    capsys.readouterr()
    assert main(["--from-png", str(tmp_path / "made.png"), "--out", str(tmp_path / "never.png"), "--no-progress"]) == 2
    assert "has changed since (sha256 differs)" in capsys.readouterr().err and not (tmp_path / "never.png").exists()
