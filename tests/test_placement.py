"""One placement truth: the planner prices exactly where the manager puts every component, in every stage of every
shipped profile and for every process under `accelerate launch`; a GPU profile's choices run on a CPU; streamed
blocks beside resident ones give the resident result."""

from __future__ import annotations

import pytest
import torch

from conftest import profile_variant
from glance_lite.api import load
from glance_lite.manager import ComponentManager
from glance_lite.models import resolve_model
from glance_lite.placement import placement
from glance_lite.plan import plan
from glance_lite.profiles import list_profiles, load_profile

SMALL = dict(height=64, width=64, output_type="latent", progress=False)
PLAN_TO_PLACEMENT = {"text_encode": "text_encode", "slow_phase": "denoise", "fast_phase": "denoise",
                     "vae_decode": "vae_decode", "train_step": "train_step"}  # fmt: skip


def shifted(device: str, by: int) -> str:
    return f"cuda:{int(device.split(':')[1]) + by}" if device.startswith("cuda") else device


@pytest.mark.parametrize("model_id", ["tiny/qwen-image", "tiny/flux"])
@pytest.mark.parametrize("profile_name", list_profiles())
def test_planner_and_manager_place_every_component_alike_in_every_stage(model_id, profile_name):
    """What the plan prices (its per-stage placements) is what the manager of process 0 does, and process 1 under
    `accelerate launch` does the same on its own GPUs."""
    profile = load_profile(profile_name)
    mp = plan(model_id, profile, 64, 64)
    source = resolve_model(model_id)
    managers = {rank: ComponentManager(source, profile, rank=rank) for rank in (0, 1)}
    assert set(managers[0].components) == set(mp.components)  # FLUX's second text encoder included
    for stage_name, stage in mp.stages.items():
        for component, priced in stage.placements.items():
            for rank, manager in managers.items():
                done = manager.placement(component, PLAN_TO_PLACEMENT[stage_name])
                offset = rank * max(profile.num_gpus, 1)
                assert (done.state, done.dtype, done.quantization, done.mode) == (priced.state, priced.dtype, priced.quantization, priced.mode)
                assert done.device == shifted(priced.device, offset), (stage_name, component, rank)
                if done.state == "run":
                    assert str(manager.device_of(component)) == done.device
                    # the planner put the running component's bytes on exactly that device
                    on = "cpu" if done.device == "cpu" else shifted(done.device, -offset)
                    assert stage.weights.get(on, 0) + stage.streamed.get(on, 0) > 0


def test_every_process_under_accelerate_launch_uses_its_own_gpus():
    source = resolve_model("tiny/qwen-image")
    single = ComponentManager(source, load_profile("4090"), rank=1)
    assert {str(single.device_of(c)) for c in single.components} == {"cuda:1"}
    multi = ComponentManager(source, load_profile("multi-gpu"), rank=1)
    assert str(multi.device_of("text_encoder")) == "cuda:3" and str(multi.device_of("transformer")) == "cuda:2"
    assert set(multi.shard_map("transformer").values()) == {2, 3}  # the planner's split, on this process's GPUs


def test_the_vae_is_parked_never_evicted_and_text_encoders_leave_before_training():
    for name in list_profiles():
        profile = load_profile(name)
        assert placement(profile, "vae", "text_encode").state in ("keep", "park")
        assert placement(profile, "text_encoder", "train_step").state == "evict"
        assert placement(profile, "transformer", "train_step").dtype == profile.training.dtype


def test_a_gpu_profile_runs_its_choices_on_the_cpu_and_says_what_it_cannot_emulate(caplog):
    """4090 on a CPU: the text encoder is evicted after its stage, the fp8 (torchao) transformer keeps its resident
    blocks only while it denoises and parks them afterwards, the VAE stays: the placement's states, observed."""
    import logging

    from torchao.quantization.quantize_.workflows.float8.float8_tensor import Float8Tensor

    with caplog.at_level(logging.INFO, logger="glance_lite"):
        glance = load("tiny/qwen-image", profile="4090", device="cpu", height=64, width=64)
    assert "--device cpu: running profile '4090'" in caplog.text and "cannot be emulated" in caplog.text
    manager, seen = glance.manager, {}
    velocity = glance.family.velocity

    def observe(*args, **kwargs):
        resident = manager._resident["transformer"]
        seen.update(text_encoder=manager.is_loaded("text_encoder"), resident_on_device=resident.on_device)
        return velocity(*args, **kwargs)

    glance.family.velocity = observe
    result = glance.generate("a red cube", **SMALL)
    assert torch.isfinite(result.latents[0]).all()
    assert seen == {"text_encoder": False, "resident_on_device": True}
    assert not manager.is_loaded("text_encoder") and not manager._resident["transformer"].on_device
    transformer = manager.pipe.transformer
    assert isinstance(transformer.transformer_blocks[0].attn.to_q.weight, Float8Tensor)
    assert transformer.dtype == torch.bfloat16 and manager.pipe.vae.dtype == torch.bfloat16


def test_streamed_blocks_beside_resident_ones_give_the_resident_result(tmp_path, qwen_loras):
    """One of two blocks resident, the other streamed by diffusers group offloading: same latents as all resident."""
    from diffusers.hooks import HookRegistry

    split = profile_variant(tmp_path, "cpu", "split", top={"fuse_lora": False},
                            transformer={"placement": "group_offload", "blocks_per_group": 1, "resident_blocks": 1})  # fmt: skip
    whole = profile_variant(tmp_path, "cpu", "whole", top={"fuse_lora": False})
    streamed = load("tiny/qwen-image", *qwen_loras, profile=split)
    latents = streamed.generate("a red cube", **SMALL).latents[0]
    blocks = streamed.manager.pipe.transformer.transformer_blocks
    hooked = [HookRegistry.check_if_exists_or_initialize(b).get_hook("group_offloading") is not None for b in blocks]
    assert sorted(hooked) == [False, True]  # exactly one block streams
    assert torch.equal(latents, load("tiny/qwen-image", *qwen_loras, profile=whole).generate("a red cube", **SMALL).latents[0])


def test_torchao_weights_stream_through_group_offloading_unchanged(tmp_path):
    streamed = profile_variant(tmp_path, "cpu", "ao-streamed", top={"fuse_lora": False},
                               transformer={"quantization": "torchao-int8", "placement": "group_offload", "blocks_per_group": 1})  # fmt: skip
    whole = profile_variant(tmp_path, "cpu", "ao-whole", top={"fuse_lora": False}, transformer={"quantization": "torchao-int8"})
    a = load("tiny/qwen-image", profile=streamed).generate("a red cube", **SMALL).latents[0]
    b = load("tiny/qwen-image", profile=whole).generate("a red cube", **SMALL).latents[0]
    plain = load("tiny/qwen-image", profile="cpu").generate("a red cube", **SMALL).latents[0]
    assert torch.equal(a, b)
    assert not torch.equal(a, plain)  # int8 weights really computed


def test_resident_blocks_park_and_come_back_bit_for_bit():
    """Parking keeps each tensor's CPU content, so a round trip through another device changes nothing (torchao
    tensors are swapped whole; the meta device stands in for the GPU here)."""
    from torchao.quantization import Float8WeightOnlyConfig, Int8WeightOnlyConfig, quantize_

    from glance_lite.residency import ResidentBlocks

    layers = torch.nn.Sequential(torch.nn.Linear(32, 32, bias=False), torch.nn.Linear(32, 32, bias=False)).to(torch.bfloat16)
    quantize_(layers[0], Int8WeightOnlyConfig())
    quantize_(layers[1], Float8WeightOnlyConfig())
    x = torch.randn(2, 32, dtype=torch.bfloat16)
    before = layers(x)
    resident = ResidentBlocks([layers], "meta")
    resident.bring()
    assert {p.qdata.device.type for p in layers.parameters()} == {"meta"}
    resident.park()
    assert {p.qdata.device.type for p in layers.parameters()} == {"cpu"}
    assert torch.equal(layers(x), before)


def test_a_missing_attention_library_is_said_before_anything_loads(tmp_path):
    profile = profile_variant(tmp_path, "cpu", "xformers-cpu", top={"attention": "xformers"})
    if __import__("importlib.util").util.find_spec("xformers") is not None:
        pytest.skip("xformers is installed here")
    with pytest.raises(RuntimeError, match=r"attention: xformers, but xformers is not installed: pip install"):
        load("tiny/qwen-image", profile=profile)
