"""The GPU profiles' code paths at the real layer widths, on a CPU: `realwidth/*` models (every width of the real
models, two Qwen-Image blocks / one + one FLUX block, the real VAEs, one text-encoder layer at the real hidden
size) loaded through the ordinary `from_pretrained` path, each profile's choices run with `device="cpu"`.

CI runs a representative subset; `python -m pytest -m slow tests/test_real_width.py` runs every shipped profile.
Measured on this CPU (2 cores; 64x64, 2 base steps with true CFG, seed 0; PSNR of each profile's picture against the
unquantized float32 run): a100-80gb 51.2 dB, 3090 / multi-gpu 50.7, 4090 49.0, 16gb 51.0, 12gb 50.7,
v100-16gb / v100-32gb 56.2 dB (random weights: the drift is quantization's, not a quality figure). The floor
asserted is 45 dB.
"""

from __future__ import annotations

import pytest
import torch

from conftest import make_official_lora, profile_variant
from glance_lite.profiles import list_profiles

QWEN = "realwidth/qwen-image"
PSNR_FLOOR_DB = 45.0
GENERATE = dict(height=64, width=64, base_steps=2, output_type="pil", progress=False, seed=0)
GPU_PROFILES = [name for name in list_profiles() if name != "cpu"]
CI_PROFILES = {"4090"}  # fp8 (torchao) transformer, streamed with resident blocks, bf16 text encoder and VAE


@pytest.fixture(scope="module")
def qwen_real_width():
    from glance_lite.tiny import tiny_model_path

    return tiny_model_path(QWEN)


@pytest.fixture(scope="module")
def unquantized_picture(qwen_real_width):
    from glance_lite.api import load

    return load(QWEN, profile="cpu", height=64, width=64).generate("a red cube", **GENERATE).image


def _tensor_bytes(tensor: torch.Tensor) -> int:
    """Bytes of a parameter as stored: a torchao tensor's inner data and scales, or a plain tensor's elements."""
    names = list(getattr(type(tensor), "tensor_data_names", ()))
    names += [n for n in getattr(type(tensor), "optional_tensor_data_names", ()) if getattr(tensor, n, None) is not None]
    if names:
        return sum(getattr(tensor, n).numel() * getattr(tensor, n).element_size() for n in names)
    return tensor.numel() * tensor.element_size()


@pytest.mark.parametrize("quantization", ["none", "torchao-int8", "torchao-float8"])
def test_planned_bytes_equal_the_loaded_real_width_transformer(qwen_real_width, quantization):
    from diffusers import QwenImageTransformer2DModel

    from glance_lite.plan import component_bytes, inventory, model_configs
    from glance_lite.quantize import loading_kwargs

    kwargs = loading_kwargs(QwenImageTransformer2DModel, quantization, "bfloat16", torch.device("cpu"))
    module = QwenImageTransformer2DModel.from_pretrained(qwen_real_width, subfolder="transformer", dtype=torch.bfloat16, **kwargs)
    assert module.config.num_attention_heads * module.config.attention_head_dim == 3072  # the real width
    loaded = sum(_tensor_bytes(p) for p in module.parameters())
    assert component_bytes(inventory(model_configs(QWEN).component("transformer")), "bfloat16", quantization) == loaded


@pytest.mark.parametrize(
    "profile_name", [pytest.param(n, marks=() if n in CI_PROFILES else pytest.mark.slow) for n in GPU_PROFILES]
)
def test_each_gpu_profile_generates_on_the_cpu_close_to_the_unquantized_picture(profile_name, unquantized_picture, tmp_path):
    """Profiles that stream keep one of the two blocks resident and stream the other (the plan would keep both on the
    card at this size), so the streamed path runs beside the resident one."""
    from glance_lite.api import load
    from glance_lite.demo import psnr
    from glance_lite.profiles import load_profile
    from glance_lite.residency import streamed_blocks

    streams = load_profile(profile_name).component("transformer").placement == "group_offload"
    profile = profile_variant(tmp_path, profile_name, f"{profile_name}-one-streamed", transformer={"resident_blocks": 1}) if streams else profile_name
    glance = load(QWEN, profile=profile, device="cpu", height=64, width=64)
    picture = glance.generate("a red cube", **GENERATE).image
    assert picture.size == (64, 64)
    if streams:
        assert streamed_blocks(glance.manager.pipe.transformer) == [1]
    assert psnr(picture, unquantized_picture) >= PSNR_FLOOR_DB


def test_rank_32_official_layout_loras_report_what_each_compat_mode_applies(qwen_real_width, tmp_path):
    """The official files' mixed layout at the recipe's rank on the real widths: diffusers' loading drops the four
    attention projections of every block, the trained mode applies all 12 targets of both blocks."""
    from glance_lite.lora import LoraSource, load_lora
    from glance_lite.models import component_class, resolve_model

    source = resolve_model(QWEN)
    official = make_official_lora(QWEN, tmp_path / "glance_qwen_slow.safetensors", seed=5, rank=32, std=0.01)
    reports = {}
    for compat in ("diffusers", "trained"):
        transformer = component_class(source, "transformer").from_pretrained(source.location, subfolder="transformer")
        reports[compat] = load_lora(transformer, source.family, LoraSource(str(official)), "slow", compat=compat)
    assert (len(reports["trained"].applied), len(reports["trained"].dropped), reports["trained"].rank) == (24, 0, 32)
    assert (len(reports["diffusers"].applied), len(reports["diffusers"].dropped)) == (16, 8)
    assert reports["trained"].scale == 4.0 and reports["diffusers"].scale == 1.0


CARD_CAPABILITY = {"4090": (8, 9), "v100-16gb": (7, 0), "v100-32gb": (7, 0)}  # the others: Ampere, sm_80


@pytest.mark.parametrize("profile_name", [pytest.param(n, marks=() if n == "4090" else pytest.mark.slow) for n in GPU_PROFILES])
def test_the_training_recipe_each_profile_names_is_what_runs_under_cuda_autocast(profile_name, qwen_real_width, tmp_path, monkeypatch):
    """Two real-width training steps under the profile's policy, with CUDA autocast's op lists imitated
    (cuda_emulation.CudaAutocast), observed while they run: the frozen base's weights are stored as the profile says
    (quanto int8, or plain), the optimizer built is the one it names with its state dtype (8-bit AdamW: uint8), the
    transformer runs under the mixed precision it names, and every quantized layer gets an input its CUDA kernel on
    the profile's card accepts. One of the two blocks is streamed by the trainer's block streamer where the profile
    streams (the real-width model is small enough to keep both resident otherwise)."""
    from PIL import Image
    from torch.optim.optimizer import register_optimizer_step_post_hook

    from cuda_emulation import QUANTO_KERNEL_INPUTS, cuda_autocast, quanto_layout_on_card
    from glance_lite import train as trainer
    from glance_lite.profiles import load_profile

    data = tmp_path / "data"
    data.mkdir()
    Image.new("RGB", (64, 64), (200, 30, 30)).save(data / "red.png")
    (data / "red.txt").write_text("a red square")
    policy = load_profile(profile_name).training
    profile = profile_variant(tmp_path, profile_name, f"{profile_name}-one-streamed",
                              training={"resident_blocks": 1} if policy.block_offload else {})  # fmt: skip
    seen = {"weights": set(), "autocast": set(), "quantized_inputs": {}, "linear_inputs": set(), "optimizers": []}

    def observe(transformer, run, phases):
        prepare(transformer, run, phases)
        for name, module in transformer.named_modules():
            if isinstance(module, torch.nn.Linear) and "lora_" not in name and ".base_layer" not in name[-11:]:
                module.register_forward_pre_hook(lambda m, args, name=name: _record(seen, name, m, args[0]))

    prepare = trainer._prepare_transformer
    monkeypatch.setattr(trainer, "_prepare_transformer", observe)
    hook = register_optimizer_step_post_hook(lambda optimizer, args, kwargs: seen["optimizers"].append(optimizer))
    try:
        with cuda_autocast():
            result = trainer.train(QWEN, data, tmp_path / "out", "slow", profile, device="cpu", progress=False, verbose=False,
                                   steps=2, resolution=64, min_image_size=64, checkpoint_every=2)  # fmt: skip
    finally:
        hook.remove()
    losses = result.phases["slow"].losses
    assert len(losses) == 2 and all(torch.isfinite(torch.tensor(losses)))
    assert (tmp_path / "out" / "slow.safetensors").is_file()

    expected_weight = "Parameter" if policy.base_quantization == "none" else "WeightQBytesTensor"  # quanto 8-bit, on a CPU
    assert seen["weights"] == {expected_weight}, seen["weights"]
    optimizer = next(o for o in seen["optimizers"] if type(o).__module__.split(".")[0] in ("bitsandbytes", "torch"))
    assert type(optimizer).__name__ == {"adamw8bit": "AdamW8bit", "adamw": "AdamW"}[policy.optimizer]
    states = {t.dtype for state in optimizer.state.values() for key, t in state.items() if key in ("state1", "exp_avg")}
    assert states == ({torch.uint8} if policy.optimizer == "adamw8bit" else {torch.float32}), states
    autocast = {"bf16": {(True, torch.bfloat16)}, "fp16": {(True, torch.float16)}, "no": {(False, None)}}[policy.mixed_precision]
    assert seen["autocast"] == autocast, seen["autocast"]
    capability = CARD_CAPABILITY.get(profile_name, (8, 0))
    refused = {name: dtype for name, (weight, dtype) in seen["quantized_inputs"].items()
               if dtype not in QUANTO_KERNEL_INPUTS[quanto_layout_on_card(weight, capability)]}  # fmt: skip
    assert not refused, f"{len(refused)} quantized layers get an input their CUDA kernel refuses: {sorted(refused.items())[:3]}"
    if policy.mixed_precision == "no":
        assert seen["linear_inputs"] == {torch.float32}, seen["linear_inputs"]


def _record(seen: dict, name: str, module, x) -> None:
    weight = module.weight
    seen["weights"].add(type(weight).__name__ if type(weight).__name__ != "Tensor" else "Parameter")
    enabled = torch.is_autocast_enabled("cpu")
    seen["autocast"].add((enabled, torch.get_autocast_dtype("cpu") if enabled else None))
    seen["linear_inputs"].add(x.dtype)
    if type(weight).__module__.startswith("optimum.quanto"):
        seen["quantized_inputs"][name] = (weight, x.dtype)
