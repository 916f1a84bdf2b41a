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
def test_each_gpu_profile_generates_on_the_cpu_close_to_the_unquantized_picture(profile_name, unquantized_picture):
    from glance_lite.api import load
    from glance_lite.demo import psnr

    glance = load(QWEN, profile=profile_name, device="cpu", height=64, width=64)
    picture = glance.generate("a red cube", **GENERATE).image
    assert picture.size == (64, 64)
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


@pytest.mark.parametrize(
    "profile_name", [pytest.param(n, marks=() if n == "4090" else pytest.mark.slow) for n in GPU_PROFILES if n != "a100-80gb"]
)
def test_two_training_steps_run_with_each_profiles_training_knobs(profile_name, qwen_real_width, tmp_path):
    """The profile's frozen-base storage, optimizer and mixed precision; one of the two blocks streamed by the
    trainer's block streamer (the real-width model is small enough to keep both resident otherwise)."""
    from PIL import Image

    from glance_lite.profiles import load_profile
    from glance_lite.train import train

    data = tmp_path / "data"
    data.mkdir()
    Image.new("RGB", (64, 64), (200, 30, 30)).save(data / "red.png")
    (data / "red.txt").write_text("a red square")
    training = {"resident_blocks": 1} if load_profile(profile_name).training.block_offload else {}
    profile = profile_variant(tmp_path, profile_name, f"{profile_name}-one-streamed", training=training)
    result = train(QWEN, data, tmp_path / "out", "slow", profile, device="cpu", progress=False, verbose=False,
                   steps=2, resolution=64, min_image_size=64, checkpoint_every=2)  # fmt: skip
    losses = result.phases["slow"].losses
    assert len(losses) == 2 and all(torch.isfinite(torch.tensor(losses)))
    assert (tmp_path / "out" / "slow.safetensors").is_file()
