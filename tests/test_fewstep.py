"""The few-step peers as a sampling method: a distilled LoRA (Qwen-Image-Lightning) run with its own scheduler, no
guidance, in every key layout its files ship in, at the scale diffusers applies; the same memory story as Glance."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from glance_lite.lora import KOHYA_PREFIX, LoraSource, load_lora, write_lora_file
from glance_lite.methods import LIGHTNING_SCHEDULER, MethodError, parse_method
from glance_lite.models import component_class, resolve_model

QWEN = "tiny/qwen-image"
SMALL = dict(height=64, width=64, output_type="latent", progress=False)
# The layouts Qwen-Image-Lightning and kohya-trained Qwen-Image LoRAs ship in: (key prefix, factor names, alpha keys).
LAYOUTS = {
    "diffusers-peft": ("transformer.", "lora_A", False),
    "diffusion_model-down-up-alpha": ("diffusion_model.", "lora_down", True),
    "kohya": (KOHYA_PREFIX, "lora_down", True),
}


def _random_modules(model_id: str, rank: int, seed: int, std: float = 0.05) -> dict:
    """{module: {'A': down, 'B': up}} on every Glance target of the model's transformer, random (B = 0 is a no-op)."""
    from glance_lite.models import meta_component

    source = resolve_model(model_id)
    transformer = meta_component(source)  # shapes only
    generator = torch.Generator().manual_seed(seed)
    modules = {}
    for name, module in transformer.named_modules():
        if isinstance(module, torch.nn.Linear) and any(name == t or name.endswith("." + t) for t in source.family.lora_target_modules):
            modules[name] = {"A": torch.randn(rank, module.in_features, generator=generator) * std,
                             "B": torch.randn(module.out_features, rank, generator=generator) * std}  # fmt: skip
    return modules


def write_layout(path, modules: dict, layout: str, alpha_per_rank: float = 0.5):
    """A LoRA file in one of LAYOUTS; with alpha keys every layer says alpha = alpha_per_rank x rank."""
    prefix, factors, has_alpha = LAYOUTS[layout]
    alphas = {m: alpha_per_rank * pair["A"].shape[0] for m, pair in modules.items()} if has_alpha else None
    return write_lora_file(path, modules, alphas, prefix, factors=factors)


def _effective_deltas(transformer, adapter: str) -> dict[str, torch.Tensor]:
    """scaling x B @ A of every layer the adapter wraps: what it adds to the weights, whatever the loader folded."""
    deltas = {}
    for name, module in transformer.named_modules():
        if hasattr(module, "lora_A") and adapter in module.lora_A:
            deltas[name] = module.scaling[adapter] * (module.lora_B[adapter].weight @ module.lora_A[adapter].weight)
    return deltas


def _deltas_via(model_id: str, path, loader: str) -> dict[str, torch.Tensor]:
    source = resolve_model(model_id)
    transformer = component_class(source, "transformer").from_pretrained(source.location, subfolder="transformer")
    if loader == "glance_lite":
        load_lora(transformer, source.family, LoraSource(str(path)), "fewstep", compat="published")
        return _effective_deltas(transformer, "fewstep")
    # what `QwenImagePipeline.load_lora_weights(path)` does to the pipeline's transformer: its own key conversion, then
    # its own loading into the transformer (the pipeline's text encoder and VAE play no part)
    mixin = source.family.pipeline_class
    mixin.load_lora_into_transformer(mixin.lora_state_dict(str(path)), transformer=transformer, adapter_name="lightning")
    return _effective_deltas(transformer, "lightning")


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_each_lightning_layout_loads_the_same_layers_at_the_same_scale_as_diffusers(tmp_path, layout):
    modules = _random_modules(QWEN, rank=4, seed=3)
    path = write_layout(tmp_path / f"{layout}.safetensors", modules, layout)
    ours, theirs = _deltas_via(QWEN, path, "glance_lite"), _deltas_via(QWEN, path, "diffusers")
    assert set(ours) == set(theirs) == set(modules)  # every layer of the file, no more, no fewer
    for name in modules:
        torch.testing.assert_close(ours[name], theirs[name], rtol=1e-5, atol=1e-7)
    scale = 0.5 if LAYOUTS[layout][2] else 1.0  # alpha keys say 0.5 x rank; without them diffusers applies 1.0
    name = next(iter(modules))
    torch.testing.assert_close(ours[name], scale * modules[name]["B"] @ modules[name]["A"])


def test_the_real_width_kohya_layout_loads_like_diffusers(tmp_path):
    """The same at the real layer widths (3072-wide blocks, rank 32 as the published files)."""
    from glance_lite.tiny import tiny_model_path

    tiny_model_path("realwidth/qwen-image")
    modules = _random_modules("realwidth/qwen-image", rank=32, seed=4, std=0.01)
    path = write_layout(tmp_path / "kohya.safetensors", modules, "kohya")
    ours, theirs = _deltas_via("realwidth/qwen-image", path, "glance_lite"), _deltas_via("realwidth/qwen-image", path, "diffusers")
    assert set(ours) == set(theirs) == set(modules) and len(modules) == 24
    for name in modules:
        torch.testing.assert_close(ours[name], theirs[name], rtol=1e-5, atol=1e-7)


def test_a_key_that_matches_no_layer_is_named(tmp_path):
    from glance_lite.lora import LoraMismatchError

    modules = _random_modules(QWEN, rank=4, seed=5)
    modules["transformer_blocks.7.attn.to_q"] = {k: v.clone() for k, v in modules["transformer_blocks.0.attn.to_q"].items()}  # 2 blocks only
    path = write_layout(tmp_path / "extra.safetensors", modules, "kohya")
    source = resolve_model(QWEN)
    transformer = component_class(source, "transformer").from_pretrained(source.location, subfolder="transformer")
    with pytest.raises(LoraMismatchError, match=r"1 of \d+ LoRA layers name modules the transformer does not have .*transformer_blocks\.7\.attn\.to_q"):
        load_lora(transformer, source.family, LoraSource(str(path)), "fewstep", compat="published")


@pytest.mark.parametrize("steps", [4, 8])
@pytest.mark.parametrize("size", [512, 1024])
def test_fewstep_sigmas_are_diffusers_scheduler_from_the_published_settings(steps, size):
    """What ModelTC's generate_with_diffusers.py runs: FlowMatchEulerDiscreteScheduler.from_config(their settings),
    sigmas linspace(1, 1/N, N) and mu as the Qwen-Image pipeline computes it (ln 3 at every size)."""
    from diffusers import FlowMatchEulerDiscreteScheduler
    from diffusers.pipelines.qwenimage.pipeline_qwenimage import calculate_shift

    model_config = json.loads((Path(resolve_model(QWEN).location) / "scheduler" / "scheduler_config.json").read_text())
    seq_len = (size // 16) ** 2
    plan = parse_method(f"fewstep-{steps}").plan(model_config, seq_len)
    scheduler = FlowMatchEulerDiscreteScheduler.from_config(LIGHTNING_SCHEDULER)
    config = scheduler.config
    mu = calculate_shift(seq_len, config["base_image_seq_len"], config["max_image_seq_len"], config["base_shift"], config["max_shift"])
    scheduler.set_timesteps(sigmas=np.linspace(1.0, 1 / steps, steps), mu=mu)
    assert math.isclose(mu, math.log(3))
    assert [s.sigma for s in plan.steps] + [plan.steps[-1].sigma_next] == pytest.approx(scheduler.sigmas.tolist(), abs=1e-7)
    assert [s.timestep for s in plan.steps] == pytest.approx(scheduler.timesteps.tolist(), abs=1e-4)
    assert {s.phase for s in plan.steps} == {"fewstep"}
    if steps == 8:
        assert [round(s.sigma, 4) for s in plan.steps] == [1.0, 0.9545, 0.9, 0.8333, 0.75, 0.6429, 0.5, 0.3]


def test_method_names_and_their_refusals():
    assert parse_method("glance").name == "glance" and parse_method("glance").guidance
    assert (parse_method("base").steps, parse_method("base-10").name) == (50, "base-10")
    lightning = parse_method("lightning-8")
    assert (lightning.kind, lightning.steps, lightning.guidance, lightning.adapter) == ("fewstep", 8, False, "fewstep")
    assert parse_method("fewstep", steps=6).name == "fewstep-6"
    assert parse_method("fewstep-4", scheduler={"base_shift": 1.0}).scheduler["base_shift"] == 1.0
    for bad, message in (("fewstep", "needs a step count"), ("turbo", "unknown sampling method"), ("base-0", "at least 1 step")):
        with pytest.raises(MethodError, match=message):
            parse_method(bad)
    with pytest.raises(MethodError, match="lightning-8 samples 8 steps"):
        parse_method("lightning-8", steps=4)


@pytest.fixture(scope="module")
def lightning_file(tmp_path_factory):
    """A random LoRA for the tiny Qwen-Image, in Qwen-Image-Lightning's key layout (a stand-in for the real file)."""
    return write_layout(tmp_path_factory.mktemp("lightning") / "my_lightning.safetensors", _random_modules(QWEN, rank=4, seed=7),
                        "diffusion_model-down-up-alpha")  # fmt: skip


def test_cfg_off_means_one_transformer_call_per_step_on_one_loaded_model_beside_glance(lightning_file, qwen_loras):
    """One transformer holds the slow, fast and few-step adapters; the few-step method runs 8 forwards of batch 1
    (guidance off), Glance its 20, and switching between them loads nothing again."""
    import glance_lite

    glance = glance_lite.load(QWEN, *qwen_loras, profile="cpu", fewstep_lora=lightning_file, height=64, width=64)
    forwards = []
    glance.manager.on_load("transformer", lambda t: t.register_forward_pre_hook(lambda m, a, k: forwards.append(k["hidden_states"].shape[0]), with_kwargs=True))
    fewstep = glance.generate("a red cube", method="lightning-8", **SMALL)
    assert forwards == [1] * 8 and fewstep.transformer_calls == 8
    assert fewstep.settings[0]["method"] == "lightning-8" and fewstep.settings[0]["true_cfg_scale"] == 1.0
    assert fewstep.settings[0]["sigmas"][:3] == pytest.approx([1.0, 0.9545, 0.9], abs=1e-4)
    forwards.clear()
    assert glance.generate("a red cube", **SMALL).transformer_calls == len(forwards) == 20  # glance: 10 steps x 2 passes
    assert glance.manager.load_counts["transformer"] == 1
    reports = {r.adapter_name: r for r in glance.lora_reports}
    assert (reports["fewstep"].compat, reports["fewstep"].scale, reports["slow"].scale) == ("published", 0.5, 4.0)


def test_the_cli_samples_a_few_step_lora_and_records_how(lightning_file, tmp_path, capsys):
    from glance_lite.generate import main as generate_main
    from glance_lite.png_settings import read_png_settings

    out = tmp_path / "f8.png"
    args = ["--model", QWEN, "--prompt", "a red cube", "--height", "64", "--width", "64", "--profile", "cpu", "--no-progress",
            "--method", "fewstep", "--lora", str(lightning_file), "--steps", "8", "--json", "--out", str(out)]  # fmt: skip
    assert generate_main(args) == 0
    captured = capsys.readouterr()
    run = json.loads(captured.out)["runs"][0]
    assert (run["method"]["name"], run["transformer_calls"], len(run["sigmas"])) == ("fewstep-8", 8, 9)
    settings = read_png_settings(out)
    assert (settings["method"], settings["transformer_calls"], settings["loras"][0]["phase"]) == ("fewstep-8", 8, "fewstep")
    assert "fewstep: 24 LoRA layers applied" in captured.err and "compat=published" in captured.err


def test_a_few_step_lora_for_another_base_or_a_preset_without_its_file_is_one_line(tmp_path, capsys):
    from glance_lite.generate import main as generate_main
    from test_user_errors import generate_args, refused

    flux = write_layout(tmp_path / "flux_lightning.safetensors", _random_modules("tiny/flux", rank=4, seed=1), "diffusion_model-down-up-alpha")
    refused(capsys, generate_main(generate_args(tmp_path, "--method", "fewstep-8", "--lora", str(flux))),
            "does not fit this qwen-image model", "It looks like a LoRA for flux")  # fmt: skip
    refused(capsys, generate_main(generate_args(tmp_path, "--method", "lightning-8")),
            "lightning-8 runs with Qwen-Image-Lightning-8steps-V2.0.safetensors of lightx2v/Qwen-Image-Lightning", "--lora FILE")  # fmt: skip
    refused(capsys, generate_main(generate_args(tmp_path, "--model", "tiny/flux", "--method", "lightning-4")),
            "published for Qwen-Image and Qwen-Image-Edit")  # fmt: skip
    refused(capsys, generate_main(generate_args(tmp_path, "--method", "fewstep-8")), "pass it with --lora FILE")
    refused(capsys, generate_main(generate_args(tmp_path, "--model", "pocket/qwen-image", "--method", "fewstep-3")),
            "pass it with --lora FILE (pocket/qwen-image ships its own for fewstep-4, fewstep-2)")  # fmt: skip


def test_the_pocket_model_samples_with_its_shipped_distilled_lora_when_none_is_given(tmp_path):
    """`--method fewstep-4` on the pocket model without --lora: the LoRA distilled from it (assets), 4 unguided calls;
    on unseen prompts its images are nearer the 50-step ones than the base model's in the same 4 steps."""
    import glance_lite
    from glance_lite.demo import psnr
    from glance_lite.generate import main as generate_main
    from glance_lite.png_settings import read_png_settings
    from glance_lite.pocket import bundled_fewstep_lora, world

    out = tmp_path / "fewstep.png"
    captions = [s.caption for s in world.HELD_OUT[:4]]  # no pocket model, and no LoRA, trained on them
    args = ["--model", "pocket/qwen-image", "--height", "64", "--width", "64", "--profile", "cpu", "--no-progress"]
    assert generate_main([*args, "--prompt", captions[0], "--method", "fewstep-4", "--out", str(out)]) == 0
    settings = read_png_settings(out)
    assert (settings["method"], settings["transformer_calls"], settings["true_cfg_scale"]) == ("fewstep-4", 4, 1.0)
    [lora] = settings["loras"]
    assert (lora["phase"], lora["name"]) == ("fewstep", str(bundled_fewstep_lora("pocket/qwen-image", 4)))

    pocket = glance_lite.load("pocket/qwen-image", profile="cpu", height=64, width=64)
    student = glance_lite.load("pocket/qwen-image", profile="cpu", height=64, width=64, method="fewstep-4")
    reference, base_4 = (pocket.generate(captions, height=64, width=64, progress=False, method=m).images for m in ("base-50", "base-4"))
    distilled = student.generate(captions, height=64, width=64, progress=False).images
    assert np.asarray(distilled[0]).tobytes() == np.asarray(Image.open(out).convert("RGB")).tobytes()
    ours, theirs = (np.mean([psnr(a, b) for a, b in zip(images, reference)]) for images in (distilled, base_4))
    assert ours > theirs + 1, f"PSNR to base-50: distilled 4 steps {ours:.2f} dB, base-4 {theirs:.2f} dB"


def test_the_planner_prices_a_few_step_method_by_its_passes():
    """One pass per step and no CFG batch: fewer forwards, batch 1, PCIe bytes for 8 forwards (the 12gb card streams)."""
    from glance_lite.plan import plan

    glance, lightning = plan("Qwen/Qwen-Image", "12gb", method="glance"), plan("Qwen/Qwen-Image", "12gb", method="lightning-8")
    assert (glance.transformer_forwards, glance.batch) == (10, 2)  # batched CFG: 10 forwards of two
    assert (lightning.transformer_forwards, lightning.batch) == (8, 1)
    streaming = lightning.components["transformer"]
    resident = set(lightning.resident_blocks["denoise"])
    streamed = sum(b for i, b in enumerate(streaming.block_bytes) if i not in resident)
    per_forward = streamed + 2 * streaming.outside_blocks_bytes  # streamed blocks in (pinned copies stay), the rest both ways
    four = plan("Qwen/Qwen-Image", "12gb", method="lightning-4")
    assert lightning.pcie.per_image - four.pcie.per_image == 4 * per_forward
    assert lightning.stages["slow_phase"].activations["cuda:0"] < glance.stages["slow_phase"].activations["cuda:0"]
