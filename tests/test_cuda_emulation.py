"""What a CUDA card does that no CPU run reaches, imitated on the CPU (`cuda_emulation.py` says where each behaviour is
written in the library): the kernels quanto picks per compute capability, the dtypes CUDA autocast hands to them, the
dtype every layer of a V100's fp32 transformer computes in, the pinned RAM group offloading really takes, the current
device of each process under `accelerate launch`, and the refusal of a profile the card or the torch build cannot run.

The real-width training step under CUDA autocast is in test_real_width.py (it observes the whole training recipe).
"""

from __future__ import annotations

import pytest
import torch

from conftest import profile_variant
from cuda_emulation import (
    ARCH_LISTS,
    CudaAutocast,
    EmulatedGpus,
    QUANTO_KERNEL_INPUTS,
    quanto_layout_on_card,
    pinned_by_group_offloading,
)
from glance_lite.profiles import ProfileError, list_profiles, load_profile

GPU_PROFILES = [name for name in list_profiles() if load_profile(name).device == "cuda"]
CARDS_BY_CAPABILITY = {(7, 0): "V100", (8, 0): "A100", (8, 6): "RTX 3090", (8, 9): "RTX 4090", (9, 0): "H100"}


def _quantized_linear(quantization: str, dtype: torch.dtype, width: int = 3072) -> torch.nn.Linear:
    """A real-width Linear quantized by the project's own `quantize_built`, as the trainer's frozen base is."""
    from glance_lite.quantize import quantize_built

    layer = torch.nn.Sequential(torch.nn.Linear(width, width, bias=True)).to(dtype)
    return quantize_built(layer, quantization)[0]


# ---- row 1: the trainer's frozen base on every card ------------------------------------------------------------------
@pytest.mark.parametrize("capability", list(CARDS_BY_CAPABILITY), ids=list(CARDS_BY_CAPABILITY.values()))
def test_no_shipped_training_base_takes_a_kernel_that_compiles_or_refuses_fp32_on_any_card(capability):
    """Every block the trainer's streamer brings to the card is re-created there by quanto: on sm_70 to sm_90 the
    shipped frozen bases must stay on quanto's plain dequantize-and-matmul, which needs no nvcc and takes any float
    input (CUDA autocast hands it fp32 after layer_norm)."""
    for name in GPU_PROFILES:
        profile = load_profile(name)
        if profile.training.base_quantization == "none" or (profile.min_compute_capability or 0) > capability[0] + capability[1] / 10:
            continue
        layer = _quantized_linear(profile.training.base_quantization, torch.float32 if profile.training.dtype == "float32" else torch.bfloat16)
        layout = quanto_layout_on_card(layer.weight, capability)
        assert layout == "WeightQBytesTensor", (name, capability, layout)
        assert torch.float32 in QUANTO_KERNEL_INPUTS[layout]


def test_the_emulation_sees_quantos_marlin_branch_where_a_card_takes_it():
    """The same check is not vacuous: qfloat8 weights become Marlin FP8 tensors on compute capability >= 8 (and that
    kernel takes no fp32), not on a V100."""
    layer = _quantized_linear("quanto-qfloat8", torch.bfloat16)
    assert quanto_layout_on_card(layer.weight, (8, 9)) == "MarlinF8QBytesTensor"
    assert torch.float32 not in QUANTO_KERNEL_INPUTS["MarlinF8QBytesTensor"]
    assert quanto_layout_on_card(layer.weight, (7, 0)) == "WeightQBytesTensor"


@pytest.mark.parametrize("field", ["training.base_quantization", "components.text_encoder.quantization"])
def test_a_quanto_storage_that_compiles_a_cuda_kernel_is_refused_when_the_profile_is_read(tmp_path, field):
    with pytest.raises(ProfileError, match=r"'quanto-qfloat8' is refused on a CUDA GPU: .*Marlin FP8.*use quanto-qint8"):
        if field.startswith("training"):
            profile_variant(tmp_path, "4090", "fp8-base", training={"base_quantization": "quanto-qfloat8"})
        else:
            profile_variant(tmp_path, "4090", "fp8-text", text_encoder={"quantization": "quanto-qfloat8", "placement": "resident"})
    cpu = profile_variant(tmp_path, "cpu", "cpu-fp8", training={"base_quantization": "quanto-qfloat8"})
    assert cpu.training.base_quantization == "quanto-qfloat8"  # no CUDA kernel on a CPU profile


def test_cuda_autocast_runs_layer_norm_in_fp32_and_linear_in_the_autocast_dtype():
    """The imitation itself, against the behaviour documented for CUDA autocast (and unlike CPU autocast)."""
    x = torch.randn(2, 64)
    linear = torch.nn.Linear(64, 64)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert torch.nn.functional.layer_norm(x.bfloat16(), (64,)).dtype == torch.bfloat16  # CPU autocast
        with CudaAutocast():
            assert torch.nn.functional.layer_norm(x.bfloat16(), (64,)).dtype == torch.float32
            assert linear(x).dtype == torch.bfloat16
            assert torch.softmax(x.bfloat16(), -1).dtype == torch.float32
    with CudaAutocast():
        assert linear(x).dtype == torch.float32  # outside an autocast region nothing changes


# ---- row 2: the V100's fp32 transformer computes in fp32 -------------------------------------------------------------
@pytest.mark.parametrize("profile_name", GPU_PROFILES)
def test_every_linear_of_the_transformer_computes_in_the_profiles_transformer_dtype(profile_name, tmp_path):
    """Whatever dtype the text encoder returns, the latents and prompt embeddings reach every Linear of the
    transformer in the dtype it computes in: torchao's int8 matmul returns the activation's dtype and multiplies by
    the raw int8 weights first, so an fp16 input there overflows long before the fp32 result would. The text encoder
    runs in fp16 here (the V100 recipe before its fp32 one, or a user's profile), unquantized (bitsandbytes' 4-bit
    blocks are wider than the tiny model's layers; the real-width tests run it quantized)."""
    from glance_lite.api import load
    from glance_lite.placement import placement
    from glance_lite.quantize import torch_dtype

    profile = profile_variant(tmp_path, profile_name, profile_name, text_encoder={"quantization": "none", "dtype": "float16"})
    glance = load("tiny/qwen-image", profile=profile, device="cpu", height=64, width=64)
    expected = torch_dtype(placement(profile, "transformer", "denoise").dtype)
    assert expected == (torch.float32 if profile_name.startswith("v100") else torch.bfloat16)
    seen = {}

    def record(module, args):
        seen.setdefault(module._glance_name, set()).add(args[0].dtype)

    def observe(transformer):
        for name, module in transformer.named_modules():
            if isinstance(module, torch.nn.Linear) and "lora_" not in name:
                module._glance_name = name
                module.register_forward_pre_hook(record)

    glance.manager.on_load("transformer", observe)
    glance.generate("a red cube", height=64, width=64, base_steps=2, output_type="latent", progress=False)
    assert seen, "no Linear ran"
    wrong = {name: dtypes for name, dtypes in seen.items() if dtypes != {expected}}
    assert not wrong, f"{len(wrong)} of {len(seen)} Linears saw another dtype than {expected}: {sorted(wrong.items())[:4]}"


# ---- row 3: pinned RAM ------------------------------------------------------------------------------------------------
def test_the_plan_counts_the_pinned_ram_group_offloading_really_takes(qwen_loras):
    """With streams, group offloading pins every streamed tensor when it is applied (torchao's inner tensors one by
    one) and the pinned allocator rounds each up to a power of two: the plan's RAM for the streamed blocks is that
    sum, not the bytes of the weights."""
    from diffusers import QwenImageTransformer2DModel

    from glance_lite.lora import LoraSource, load_lora
    from glance_lite.models import resolve_model
    from glance_lite.plan import plan
    from glance_lite.quantize import loading_kwargs

    profile = load_profile("12gb")
    source = resolve_model("tiny/qwen-image")
    kwargs = loading_kwargs(QwenImageTransformer2DModel, "torchao-int8", "bfloat16", torch.device("cpu"))
    transformer = QwenImageTransformer2DModel.from_pretrained(source.location, subfolder="transformer", dtype=torch.bfloat16, **kwargs)
    for phase, path in zip(("slow", "fast"), qwen_loras):  # both adapters ride in the blocks, as when generating
        load_lora(transformer, source.family, LoraSource(str(path)), phase)
    allocations = pinned_by_group_offloading(transformer, resident={0})
    mp = plan("tiny/qwen-image", profile, 64, 64, lora_rank=4)
    transformer_plan = mp.components["transformer"]
    streamed = [i for i in range(transformer_plan.blocks) if i != 0]
    assert sum(allocations) == sum(transformer_plan.block_pinned_bytes[i] for i in streamed)
    assert sum(allocations) > sum(transformer_plan.block_bytes[i] for i in streamed)  # the rounding is real
    # and the plan's RAM for a denoise stage on the card holds the pinned copies, not the raw bytes
    full = plan("Qwen/Qwen-Image", profile)
    stage = full.stages["slow_phase"]
    streaming = full.components["transformer"]
    resident = set(full.resident_blocks["denoise"])
    pinned = sum(b for i, b in enumerate(streaming.block_pinned_bytes) if i not in resident)
    raw = sum(b for i, b in enumerate(streaming.block_bytes) if i not in resident)
    assert stage.weights["cpu"] == sum(b for i, b in enumerate(streaming.block_bytes) if i in resident) + pinned
    assert pinned > 1.5 * raw


# ---- rows 4 and 5: the card and the process --------------------------------------------------------------------------
@pytest.fixture
def two_process_launch(monkeypatch):
    """What `accelerate launch --num_processes 2` sets for the second process."""
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setenv("RANK", "1")


@pytest.mark.parametrize("profile", ["4090", "auto"])
def test_each_process_under_accelerate_launch_makes_its_own_gpu_current_before_anything_else(two_process_launch, profile):
    """Streams (diffusers' offload stream), contexts and memory queries use the current device: process 1 must set
    cuda:1 before any of them, and never ask GPU 0 for its free memory (that opens a context there)."""
    from glance_lite.api import load

    with EmulatedGpus(["4090", "4090"]).installed() as gpus:
        glance = load("tiny/qwen-image", profile=profile, height=64, width=64)
        torch.cuda.Stream()  # where a stream made from now on (group offloading's) lands
    assert gpus.calls[0] == ("set_device", 1), gpus.calls
    assert ("mem_get_info", 0) not in gpus.calls
    assert gpus.calls[-1] == ("stream", 1)
    assert str(glance.device) == "cuda:1"


@pytest.mark.parametrize(
    "card, arch, profile, message",
    [
        ("V100-16", "cu126", "16gb", "Profile '16gb' needs compute capability 8 (bfloat16); GPU 0 (Tesla V100-SXM2-16GB, sm_70, 15.8 GiB) is 7: use --profile v100-16gb (made for this card)"),
        ("3060", "cu130", "4090", "Profile '4090' needs compute capability 8.9 (float8 weights); GPU 0 (NVIDIA GeForce RTX 3060, sm_86, 11.8 GiB) is 8.6: use --profile 12gb"),
        ("4090", "cu130", "a100-80gb", "Profile 'a100-80gb' is for a 80 GB card; GPU 0 (NVIDIA GeForce RTX 4090, sm_89, 23.6 GiB) is smaller: use --profile 4090"),
        ("V100-32", "cu130", "v100-32gb", "has no kernels for GPU 0 (Tesla V100-SXM2-32GB, sm_70, 31.7 GiB): it was built for sm_75"),
        ("4090", "cu130", "multi-gpu", "Profile 'multi-gpu' uses GPU 1 and this machine has 1 GPU(s)"),
    ],
)
def test_a_profile_the_card_cannot_run_is_refused_in_one_line_before_anything_loads(monkeypatch, capsys, tmp_path, card, arch, profile, message):
    from glance_lite.generate import main as generate_main
    from glance_lite.manager import ComponentManager
    from test_user_errors import generate_args, refused

    def no_loading(self):
        raise AssertionError("a model was loaded before the refusal")

    monkeypatch.setattr(ComponentManager, "_load_light_pipeline", no_loading)
    with EmulatedGpus([card], arch_list=ARCH_LISTS[arch]).installed():
        code = generate_main(generate_args(tmp_path, "--profile", profile))
    err = refused(capsys, code, message)
    if card.startswith("V100") and arch == "cu130":
        assert "pip install torch==" in err and "--index-url https://download.pytorch.org/whl/cu126" in err


def test_a_cpu_run_on_a_machine_with_a_gpu_keeps_a_bitsandbytes_text_encoder_in_ram():
    """`--device cpu` runs a profile's choices on the CPU even where a GPU exists: transformers puts a bitsandbytes
    model loaded without a device map on the current GPU (quantizer_bnb_4bit.update_device_map), so the manager
    names the CPU."""
    from glance_lite.api import load

    with EmulatedGpus(["3060"]).installed():
        glance = load("tiny/qwen-image", profile="12gb", device="cpu", height=64, width=64)
        manager = glance.manager
        with manager.stage("text_encode", manager.text_components()) as pipe:
            devices = {t.device.type for t in pipe.text_encoder.parameters()}
            storage = {type(t).__name__ for t in pipe.text_encoder.parameters()}
    assert devices == {"cpu"} and "Params4bit" in storage


def test_accelerate_launch_training_with_several_gpus_per_process_is_refused_before_anything_loads(two_process_launch, tmp_path, capsys):
    """accelerate puts training process 1 on cuda:1 and builds DDP there; the multi-gpu profile would hold its frozen
    base on cuda:2: refused in one line instead of a device mismatch inside DDP."""
    from glance_lite.train import main as train_main
    from test_user_errors import refused, train_args

    with EmulatedGpus(["4090"] * 4).installed():
        code = train_main(train_args(tmp_path, "--profile", "multi-gpu"))
    refused(capsys, code, "Profile 'multi-gpu' gives each process 2 GPUs", "one GPU per process")
    assert not (tmp_path / "out").exists()
