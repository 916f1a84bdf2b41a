"""The memory planner: exact parameter and quantized byte counts, per-stage peaks that fit the cards the profiles
are for, a plain verdict when they do not, and the CLI."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from glance_lite.families import family_by_name
from glance_lite.plan import (
    CUDA_CONTEXT_BYTES,
    GiB,
    PlanError,
    component_bytes,
    inventory,
    lora_param_count,
    lora_target_layers,
    model_configs,
    plan,
    quantized_weight_bytes,
    shard_blocks,
)
from glance_lite.plan.__main__ import main
from glance_lite.profiles import load_profile

QWEN, FLUX, EDIT = "Qwen/Qwen-Image", "black-forest-labs/FLUX.1-dev", "Qwen/Qwen-Image-Edit"
GENERATION_STAGES = ("text_encode", "slow_phase", "fast_phase", "vae_decode")


def inv(model, component):
    return inventory(model_configs(model).component(component))


# ---- exact sizes ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "model, component, params",
    [
        (QWEN, "transformer", 20_430_401_088),
        (QWEN, "text_encoder", 8_292_166_656),
        (QWEN, "vae", 126_892_531),
        (EDIT, "text_encoder", 8_292_166_656),
        (FLUX, "transformer", 11_901_408_320),
        (FLUX, "text_encoder", 123_060_480),  # CLIP ViT-L/14 text tower
        (FLUX, "text_encoder_2", 4_762_310_656),  # T5 v1.1 XXL encoder (shared embedding counted once)
        (FLUX, "vae", 83_819_683),
    ],
)
def test_parameter_counts_match_the_real_models(model, component, params):
    assert inv(model, component).num_params == params


def test_largest_qwen_block_and_the_glance_adapter_size():
    transformer = inv(QWEN, "transformer")
    assert len(transformer.blocks) == 60
    assert max(sum(layer.numel for layer in transformer.block_layers(i)) for i in range(60)) == 339_831_296
    targets = family_by_name("qwen-image").lora_target_modules
    assert len(lora_target_layers(transformer, targets)) == 720
    assert lora_param_count(transformer, targets, 32) == 235_929_600
    assert lora_param_count(inv(FLUX, "transformer"), family_by_name("flux").lora_target_modules, 16) > 0


def test_quantized_sizes_follow_the_layers_that_really_get_quantized():
    transformer = inv(QWEN, "transformer")
    bf16 = component_bytes(transformer, "bfloat16")
    fp8 = component_bytes(transformer, "bfloat16", "quanto-qfloat8")
    nf4 = component_bytes(transformer, "bfloat16", "bnb-nf4")
    assert bf16 == 2 * 20_430_401_088
    assert 0.50 < fp8 / bf16 < 0.51  # 1 byte per Linear weight + per-channel scales; norms/biases stay bf16
    assert 0.28 < nf4 / bf16 < 0.29  # 0.5 byte + fp32 absmax per 64 weights
    text = inv(QWEN, "text_encoder")
    lm_head = 152_064 * 3584
    # bitsandbytes (transformers) keeps lm_head in bf16; optimum-quanto's quantize() does not skip it
    assert component_bytes(text, "bfloat16", "bnb-int8") - component_bytes(text, "bfloat16", "quanto-qint8") > lm_head


# ---- the profiles' plans at 1024x1024 -------------------------------------------------------------------------------
def test_4090_fits_every_stage_including_training_under_20_gib():
    mp = plan(QWEN, "4090", 1024, 1024)
    assert mp.fits, mp.verdict()
    for name in GENERATION_STAGES + ("train_step",):
        assert mp.stages[name].fits
        assert mp.stages[name].peak_bytes <= 20 * GiB, (name, mp.stages[name].peak_bytes / GiB)
    assert mp.stages["train_step"].streamed["cuda:0"] > 0  # the frozen base streams block by block
    assert mp.lora_rank == 32 and mp.batch == 2 and mp.transformer_forwards == 10


def test_4090_keeps_blocks_resident_within_20_gib_and_moves_under_40_percent_of_full_streaming():
    mp = plan(QWEN, "4090", 1024, 1024)
    assert mp.peak_gpu_bytes <= 20 * GiB
    resident = mp.resident_blocks["denoise"]
    assert 0 < len(resident) < 60
    assert mp.pcie.per_image <= 0.40 * mp.pcie.per_image_all_streamed
    assert mp.pcie.per_train_step < mp.pcie.per_train_step_all_streamed
    streamed = [i for i in range(60) if i not in resident]
    assert max(b - a for a, b in zip(streamed, streamed[1:])) <= 60 // len(streamed) + 1  # spread evenly
    slow = mp.stages["slow_phase"]
    assert slow.streamed["cuda:0"] == 2 * mp.components["transformer"].largest_block_bytes  # computing + prefetched


def test_the_v100_transformer_activations_are_planned_in_float32_as_it_computes():
    v100 = load_profile("v100-16gb")
    fp16 = dataclasses.replace(v100, components={**dict(v100.components), "transformer": dataclasses.replace(v100.component("transformer"), dtype="float16")})
    acts32 = plan(QWEN, v100, 1024, 1024, gpu_memory_gb=80).stages["slow_phase"].activations["cuda:0"]
    acts16 = plan(QWEN, fp16, 1024, 1024, gpu_memory_gb=80).stages["slow_phase"].activations["cuda:0"]
    assert acts32 == pytest.approx(2 * acts16, rel=0.01)


def test_embedded_and_real_width_models_plan_through_the_model_resolver(capsys):
    assert main(["--model", "pocket/qwen-image", "--profile", "4090", "--height", "64", "--width", "64"]) == 0
    assert "Verdict: fits" in capsys.readouterr().out
    assert plan("realwidth/flux", "cpu", 64, 64).components["transformer"].blocks == 2
    assert main(["--model", "4090-is-not-a-model/x/y", "--profile", "4090"]) == 2
    assert capsys.readouterr().err.startswith("error: Cannot plan for")


def test_the_cpu_override_plans_every_byte_in_ram_with_the_gpu_plans_resident_blocks():
    gpu, cpu = plan(QWEN, "12gb", 1024, 1024), plan(QWEN, "12gb", 1024, 1024, device="cpu")
    assert cpu.resident_blocks == gpu.resident_blocks  # the emulation splits the blocks as the card would
    assert all(set(stage.devices) == {"cpu"} for stage in cpu.stages.values())
    assert "emulated on the CPU" in cpu.table()


@pytest.mark.parametrize("name, gpu_limit_gb", [("8gb", 8), ("12gb", 11.5), ("16gb", 16), ("v100-16gb", 16), ("v100-32gb", 32)])
def test_smaller_profiles_fit_their_cards(name, gpu_limit_gb):
    mp = plan(QWEN, name, 1024, 1024)
    assert mp.fits, mp.verdict()
    assert mp.peak_gpu_bytes <= gpu_limit_gb * GiB
    assert mp.stages["train_step"].peak_bytes <= gpu_limit_gb * GiB


def test_multi_gpu_spreads_the_transformer_and_keeps_every_gpu_in_budget():
    mp = plan(QWEN, "multi-gpu", 1024, 1024)
    assert mp.fits, mp.verdict()
    slow = mp.stages["slow_phase"]
    assert {"cuda:0", "cuda:1"} <= set(slow.weights)
    assert set(mp.device_map.values()) == {0, 1}
    assert mp.device_map["transformer_blocks.0"] == 0 and mp.device_map["transformer_blocks.59"] == 1
    assert mp.device_map["img_in"] == 0 and mp.device_map["proj_out"] == 0
    # the map covers every parameter exactly once (what accelerate requires)
    names = [layer.name for layer in inventory(model_configs(QWEN).component("transformer")).layers]
    covered = [n for n in names if any(n == k or n.startswith(k + ".") for k in mp.device_map)]
    assert len(covered) == len(names)
    assert mp.stages["text_encode"].activations.get("cuda:1", 0) > 0  # the text encoder runs on GPU 1


def test_a100_profile_on_a_24_gb_card_does_not_fit_and_says_what_to_try():
    mp = plan(QWEN, "a100-80gb", 1024, 1024, gpu_memory_gb=24)
    assert not mp.fits
    assert not mp.stages["slow_phase"].fits and mp.stages["slow_phase"].peak_bytes > 24 * GiB
    verdict = mp.verdict()
    assert "does NOT fit" in verdict and "slow_phase" in verdict and "24.00 GiB available" in verdict
    hint = mp.leaner_profile_hint()
    assert hint is not None and hint != "a100-80gb"
    assert f"--profile {hint}" in verdict
    assert plan(QWEN, hint, 1024, 1024).peak_gpu_bytes < mp.peak_gpu_bytes


def test_peak_over_the_run_is_the_max_over_stages_not_the_sum():
    mp = plan(QWEN, "4090", 1024, 1024)
    peaks = [stage.peak_bytes for stage in mp.stages.values()]
    assert mp.peak_gpu_bytes == max(peaks) < sum(peaks)


def test_stage_peak_is_weights_plus_window_plus_activations_plus_context():
    mp = plan(QWEN, "4090", 1024, 1024)
    slow = mp.stages["slow_phase"]
    transformer = mp.components["transformer"]
    assert slow.streamed["cuda:0"] == 2 * transformer.largest_block_bytes  # one group computing, one prefetched
    assert slow.overhead["cuda:0"] == CUDA_CONTEXT_BYTES
    assert slow.peak("cuda:0") == sum(part.get("cuda:0", 0) for part in (slow.weights, slow.streamed, slow.activations, slow.overhead))
    # both adapters (slow + fast) are loaded for generation: 2 x 235,929,600 bf16 parameters
    assert transformer.adapter_bytes == 2 * 235_929_600 * 2


def test_resolution_and_batched_cfg_change_the_activations():
    big, small = plan(QWEN, "4090", 1024, 1024), plan(QWEN, "4090", 512, 512)
    assert small.stages["slow_phase"].activations["cuda:0"] < big.stages["slow_phase"].activations["cuda:0"]
    assert small.stages["vae_decode"].activations["cuda:0"] < big.stages["vae_decode"].activations["cuda:0"]
    unbatched = plan(QWEN, dataclasses.replace(load_profile("4090"), batch_cfg=False), 1024, 1024)
    assert unbatched.batch == 1 and unbatched.transformer_forwards == 20
    # with every block streamed, one batch of two moves each weight once per step instead of twice
    assert unbatched.pcie.per_image_all_streamed > big.pcie.per_image_all_streamed


def test_flux_and_edit_plans():
    flux = plan(FLUX, "4090", 1024, 1024)
    assert flux.lora_rank == 16 and flux.batch == 1  # guidance-distilled: no CFG pass by default
    assert set(flux.stages["text_encode"].components) == {"text_encoder", "text_encoder_2"}
    assert flux.fits, flux.verdict()
    edit = plan(EDIT, "4090", 1024, 1024)
    assert edit.tokens["generate"].condition == 4096 and "vae" in edit.stages["slow_phase"].components
    assert edit.stages["slow_phase"].activations["cuda:0"] > plan(QWEN, "4090", 1024, 1024).stages["slow_phase"].activations["cuda:0"]


def test_unknown_models_fail_clearly_without_downloading():
    with pytest.raises(PlanError, match="never downloads"):
        plan("someone/not-a-model-xyz", "4090")
    with pytest.raises(PlanError, match="multiples of 16"):
        plan(QWEN, "4090", 1000, 1024)


def test_local_folders_and_the_hub_cache_plan_like_the_embedded_model(tmp_path, monkeypatch):
    """A pipeline folder, or a model already in the Hugging Face cache, is planned from its configs alone."""
    import shutil

    import huggingface_hub.constants

    from glance_lite.tiny import tiny_model_path

    folder = tiny_model_path("tiny/qwen-image")
    expected = plan("tiny/qwen-image", "cpu", 64, 64).to_dict()["components"]
    assert plan(str(folder), "cpu", 64, 64).to_dict()["components"] == expected

    snapshot = tmp_path / "models--someone--cached-qwen" / "snapshots" / "abc123"
    for config in ["model_index.json", "scheduler/scheduler_config.json"] + [
        f"{c}/config.json" for c in ("text_encoder", "transformer", "vae")
    ]:
        (snapshot / config).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(folder / config, snapshot / config)
    (tmp_path / "models--someone--cached-qwen" / "refs").mkdir()
    (tmp_path / "models--someone--cached-qwen" / "refs" / "main").write_text("abc123")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))
    assert plan("someone/cached-qwen", "cpu", 64, 64).to_dict()["components"] == expected


def test_shard_blocks_leaves_equal_headroom():
    assert shard_blocks([10] * 10, [100, 100]) == [0] * 5 + [1] * 5
    assignment = shard_blocks([10] * 10, [100, 40])  # GPU 1 has another component beside it
    assert assignment.count(1) < assignment.count(0)


# ---- the CLI ----------------------------------------------------------------------------------------------------
def test_cli_json_has_every_number_and_the_phase_timesteps(capsys):
    assert main(["--model", QWEN, "--profile", "4090", "--height", "1024", "--width", "1024", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["fits"] is True and data["profile"] == "4090"
    assert set(data["stages"]) == set(GENERATION_STAGES) | {"train_step"}
    assert data["stages"]["slow_phase"]["peak"]["cuda:0"] == data["stages"]["slow_phase"]["peak_bytes"]
    assert data["components"]["transformer"]["params"] == 20_430_401_088
    slow = data["phase_plan"]["phases"]["slow"]
    assert slow[0] == pytest.approx(1000.0) and slow[-1] == pytest.approx(911.3354, abs=1e-3)


def test_cli_table_and_strict_exit_code(capsys):
    assert main(["--model", QWEN, "--profile", "8gb"]) == 0
    out = capsys.readouterr().out
    assert "slow_phase" in out and "Verdict: fits" in out
    assert main(["--model", QWEN, "--profile", "a100-80gb", "--gpu-memory-gb", "24"]) == 0
    assert "does NOT fit" in capsys.readouterr().out
    assert main(["--model", QWEN, "--profile", "a100-80gb", "--gpu-memory-gb", "24", "--strict"]) == 1


# ---- the planner's bytes are the bytes the libraries really allocate ------------------------------------------------
def _param_bytes(module: torch.nn.Module) -> int:
    return sum(p.numel() * p.element_size() for p in module.parameters())


@pytest.mark.parametrize("model_id", ["tiny/qwen-image", "tiny/flux", "tiny/qwen-image-edit"])
@pytest.mark.parametrize("dtype", ["float32", "bfloat16", "float16"])
def test_planned_bytes_equal_the_loaded_tiny_models(model_id, dtype):
    import importlib

    from glance_lite.tiny import tiny_model_path

    folder = tiny_model_path(model_id)
    for component in model_configs(model_id).components:
        cls = getattr(importlib.import_module(component.library), component.class_name)
        module = cls.from_pretrained(folder / component.name, torch_dtype=getattr(torch, dtype))
        # fp16 loads keep transformers' _keep_in_fp32_modules (T5's `wo`) in fp32: the planner must too
        assert component_bytes(inventory(component), dtype) == _param_bytes(module), (model_id, component.name, dtype)


def test_the_fuse_lora_copy_is_planned_at_the_size_the_sampler_keeps(qwen_loras):
    from glance_lite.api import load

    glance = load("tiny/qwen-image", *qwen_loras, profile="cpu")
    glance.generate("a red cube", height=64, width=64, output_type="latent", progress=False)
    originals = glance.manager.pipe.transformer._glance_adapters.originals
    kept = sum(t.numel() * t.element_size() for pairs in originals.values() for _, t in pairs)
    fused = plan("tiny/qwen-image", "cpu", 64, 64)
    unfused = plan("tiny/qwen-image", dataclasses.replace(load_profile("cpu"), fuse_lora=False), 64, 64)
    assert fused.components["transformer"].fused_copy_bytes == kept > 0
    assert unfused.components["transformer"].fused_copy_bytes == 0
    ram = fused.stages["slow_phase"].weights["cpu"] - unfused.stages["slow_phase"].weights["cpu"]
    assert ram == kept


@pytest.mark.parametrize("qtype", ["qfloat8", "qint8", "qint4"])
@pytest.mark.parametrize("model_id", ["tiny/qwen-image", "tiny/flux"])
def test_planned_bytes_equal_a_quanto_quantized_transformer(model_id, qtype):
    """Really quantize with optimum-quanto (quantize + freeze) and compare with the bytes of the module's state
    (quantized data, scales, shifts, biases, input/output scale scalars): exact, no tolerance needed."""
    import diffusers
    import optimum.quanto as quanto

    from glance_lite.tiny import tiny_model_path

    component = model_configs(model_id).component("transformer")
    cls = getattr(diffusers, component.class_name)
    module = cls.from_pretrained(tiny_model_path(model_id) / "transformer", torch_dtype=torch.bfloat16)
    quanto.quantize(module, weights=getattr(quanto, qtype))
    quanto.freeze(module)
    state_bytes = sum(t.numel() * t.element_size() for t in module.state_dict().values())
    assert component_bytes(inventory(component), "bfloat16", f"quanto-{qtype}") == state_bytes


@pytest.mark.parametrize("quantization", ["torchao-int8", "torchao-float8"])
@pytest.mark.parametrize("model_id", ["tiny/qwen-image", "tiny/flux"])
def test_planned_bytes_equal_a_torchao_quantized_transformer(model_id, quantization):
    """diffusers' TorchAoConfig while loading: int8 data + fp32 scale + int8 zero point per row, float8 data + fp32
    scale per row, every Linear except `_keep_in_fp32_modules`; biases and norms stay in the model dtype."""
    import diffusers

    from glance_lite.quantize import loading_kwargs
    from glance_lite.tiny import tiny_model_path

    component = model_configs(model_id).component("transformer")
    cls = getattr(diffusers, component.class_name)
    kwargs = loading_kwargs(cls, quantization, "bfloat16", torch.device("cpu"))
    module = cls.from_pretrained(tiny_model_path(model_id) / "transformer", torch_dtype=torch.bfloat16, **kwargs)
    stored = 0
    for param in module.parameters():
        names = (*getattr(type(param), "tensor_data_names", ()), *getattr(type(param), "optional_tensor_data_names", ()))
        inner = [getattr(param, n) for n in names if getattr(param, n, None) is not None] or [param]
        stored += sum(t.numel() * t.element_size() for t in inner)
    assert component_bytes(inventory(component), "bfloat16", quantization) == stored


@pytest.mark.parametrize("shape", [(128, 256), (64, 96)])
def test_bitsandbytes_layer_bytes_match_the_formula(shape):
    """bitsandbytes quantizes on CPU too. NF4 as `BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4")`
    sets it up (no double quantization): packed data + fp32 absmax per 64 weights + the code table. LLM.int8:
    int8 data + one fp32 scale per row."""
    bnb = pytest.importorskip("bitsandbytes")
    out_features, in_features = shape
    weight = bnb.nn.Params4bit(
        torch.randn(out_features, in_features, dtype=torch.bfloat16),
        requires_grad=False, quant_type="nf4", blocksize=64, compress_statistics=False,
    )._quantize("cpu")  # fmt: skip
    state = weight.quant_state
    real = sum(t.numel() * t.element_size() for t in (weight, state.absmax, state.code))
    assert quantized_weight_bytes(shape, "bnb-nf4", 2) == real
    int8 = bnb.nn.Int8Params(torch.randn(out_features, in_features, dtype=torch.float16), requires_grad=False)
    int8 = int8._quantize("cpu") if hasattr(int8, "_quantize") else int8.to("cpu")
    if getattr(int8, "SCB", None) is None:
        pytest.skip("this bitsandbytes build does not quantize int8 on CPU")
    assert quantized_weight_bytes(shape, "bnb-int8", 2) == int8.numel() * int8.element_size() + int8.SCB.numel() * 4


# ---- the formulas against the real graph (glance_lite.graph_memory) ------------------------------------------------
@pytest.mark.parametrize("model", [QWEN, FLUX])
def test_the_formulas_agree_with_the_real_graph_at_full_size(model):
    """`plan(simulate=True)` runs every stage's real modules on the meta device at 1024^2; the formulas the plan
    uses stay within 10 % of what the graph holds (benchmarks/results/graph-memory-measurements.md, every profile)."""
    mp = plan(model, "4090", 1024, 1024, simulate=True)
    assert {c.stage for c in mp.simulation} == {"text_encode", "slow_phase", "vae_decode", "train_step"}
    assert [(c.stage, round(c.ratio, 3)) for c in mp.simulation if c.flagged] == []
    rows = {row["stage"]: row for row in mp.to_dict()["simulation"]}
    assert rows["slow_phase"]["simulated_peak"] != rows["slow_phase"]["planned_peak"]  # the graph's figure, not the formula's


# Formula / simulation per stage on the tiny models, as measured when the formulas were set against the full-size
# graph. The tiny widths have other proportions (a 32-wide T5 is all attention scores), so the ratios are not 1;
# what must not happen is that they move: a change in the formulas, the models or the libraries shows up here.
TINY_RATIOS = {
    ("tiny/qwen-image", "cpu"): {"text_encode": 1.204, "slow_phase": 1.224, "vae_decode": 1.24, "train_step": 0.76},
    ("tiny/qwen-image", "4090"): {"text_encode": 1.204, "slow_phase": 1.223, "vae_decode": 1.24, "train_step": 0.81},
    ("tiny/flux", "cpu"): {"text_encode": 0.353, "slow_phase": 0.994, "vae_decode": 1.2, "train_step": 0.929},
    ("tiny/flux", "4090"): {"text_encode": 0.179, "slow_phase": 0.838, "vae_decode": 1.2, "train_step": 0.934},
}


@pytest.mark.parametrize("model, profile", list(TINY_RATIOS))
def test_the_planner_and_the_graph_do_not_drift_apart_on_the_tiny_models(model, profile):
    mp = plan(model, profile, 128, 128, simulate=True)
    ratios = {c.stage: c.ratio for c in mp.simulation}
    assert ratios == pytest.approx(TINY_RATIOS[(model, profile)], abs=0.05)


def test_cli_simulate_prints_formula_beside_graph_and_flags_gaps(capsys):
    assert main(["--model", "tiny/qwen-image", "--profile", "cpu", "--height", "128", "--width", "128", "--simulate"]) == 0
    out = capsys.readouterr().out
    assert "Graph simulation" in out and "differ by more than 10 %" in out  # the tiny Qwen-Image transformer: 1.22
    assert main(["--model", "tiny/qwen-image", "--profile", "cpu", "--height", "128", "--width", "128", "--simulate", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert {row["stage"] for row in data["simulation"]} == {"text_encode", "slow_phase", "vae_decode", "train_step"}
    assert all(row["planned_peak"] > 0 and row["simulated_bytes"] > 0 for row in data["simulation"])
