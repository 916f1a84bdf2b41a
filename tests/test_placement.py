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
from glance_lite.residency import streamed_blocks

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
    split = profile_variant(tmp_path, "cpu", "split", top={"fuse_lora": False},
                            transformer={"placement": "group_offload", "blocks_per_group": 1, "resident_blocks": 1})  # fmt: skip
    whole = profile_variant(tmp_path, "cpu", "whole", top={"fuse_lora": False})
    streamed = load("tiny/qwen-image", *qwen_loras, profile=split)
    latents = streamed.generate("a red cube", **SMALL).latents[0]
    assert streamed_blocks(streamed.manager.pipe.transformer) == [1]  # exactly one block streams, one stays
    assert torch.equal(latents, load("tiny/qwen-image", *qwen_loras, profile=whole).generate("a red cube", **SMALL).latents[0])


def test_torchao_weights_stream_through_group_offloading_unchanged(tmp_path):
    streamed = profile_variant(tmp_path, "cpu", "ao-streamed", top={"fuse_lora": False},
                               transformer={"quantization": "torchao-int8", "placement": "group_offload", "blocks_per_group": 1,
                                            "resident_blocks": 1})  # fmt: skip
    whole = profile_variant(tmp_path, "cpu", "ao-whole", top={"fuse_lora": False}, transformer={"quantization": "torchao-int8"})
    glance = load("tiny/qwen-image", profile=streamed)
    a = glance.generate("a red cube", **SMALL).latents[0]
    assert streamed_blocks(glance.manager.pipe.transformer) == [1]
    b = load("tiny/qwen-image", profile=whole).generate("a red cube", **SMALL).latents[0]
    plain = load("tiny/qwen-image", profile="cpu").generate("a red cube", **SMALL).latents[0]
    assert torch.equal(a, b)
    assert not torch.equal(a, plain)  # int8 weights really computed


# ---- where every tensor is, stage by stage, with the meta device standing in for the GPU --------------------------
def _where(module) -> set[tuple[str, str]]:
    """(device, tensor type) of every parameter and buffer: 'meta' is on the GPU, 'cpu' in RAM."""
    return {(t.device.type, type(t).__name__) for t in (*module.parameters(), *module.buffers())}


def _devices(module) -> set[str]:
    return {device for device, _ in _where(module)}


def _expect(manager, component: str, stage: str) -> None:
    """The component's tensors are where its placement in `stage` says: on the card while it runs or is kept there,
    in RAM when parked, gone when evicted; a streamed component keeps its resident blocks and the modules outside
    its blocks on the card and its streamed blocks in RAM between their forwards."""
    where = manager.placement(component, stage)
    if where.state == "evict":
        assert not manager.is_loaded(component), (component, stage)
        return
    if not manager.is_loaded(component):  # not needed yet in this run: it loads when a stage first runs it
        assert manager.load_counts.get(component, 0) == 0, (component, stage)
        return
    module = getattr(manager.pipe, component)
    if where.state == "park":
        assert _devices(module) == {"cpu"}, (component, stage, _where(module))
    elif where.mode == "streamed":
        from glance_lite.residency import repeated_blocks

        blocks = [b for _, blocks in repeated_blocks(module) for b in blocks]
        streamed = set(streamed_blocks(module))
        assert streamed and len(streamed) < len(blocks), "a stand-in run needs a streamed and a resident block"
        for i, block in enumerate(blocks):
            assert _devices(block) == ({"cpu"} if i in streamed else {"meta"}), (component, stage, i, _where(block))
    else:
        assert _devices(module) == {"meta"}, (component, stage, _where(module))


STAND_IN_PROFILES = {  # GPU profiles whose components the tiny model can hold (bitsandbytes loads onto a real card only)
    "4090": dict(transformer={"resident_blocks": 1}),  # float8 transformer: one block resident, one streamed
    "4090-plain": dict(transformer={"resident_blocks": 1, "quantization": "none"}),  # the same with plain tensors
    "12gb-int8": dict(transformer={"resident_blocks": 1}, text_encoder={"quantization": "none"}),
    "a100-80gb": dict(),  # everything resident
}


@pytest.mark.parametrize("variant", list(STAND_IN_PROFILES))
def test_every_tensor_is_where_its_placement_says_in_every_stage(tmp_path, variant):
    """Looked at, not re-derived: with the meta device standing in for the card (tests/cuda_emulation.GpuStandIn),
    each stage finds the text encoder, the transformer's blocks (resident and streamed, plain and torchao tensors)
    and the VAE on the card or in RAM as the placement says, a streamed block reaches the card for its forward and
    leaves it after, and the resident blocks leave the card when denoising ends."""
    from cuda_emulation import GpuStandIn

    base = variant.split("-")[0] if variant != "a100-80gb" else variant
    profile = profile_variant(tmp_path, base, variant, **STAND_IN_PROFILES[variant])
    source = resolve_model("tiny/qwen-image")
    with GpuStandIn().installed():
        manager = ComponentManager(source, profile)
        manager.image_size = (64, 64)
        quantized = profile.component("transformer").quantization != "none"
        for stage, components in (("text_encode", manager.text_components()), ("denoise", ("transformer",)), ("vae_decode", ("vae",))):
            with manager.stage(stage, components):
                for component in manager.components:
                    _expect(manager, component, stage)
                if stage == "denoise":
                    _forward_on_the_card(manager, source.family, quantized)
            for component in manager.components:
                _expect(manager, component, "idle")


def _forward_on_the_card(manager, family, quantized: bool) -> None:
    """One transformer forward on the stand-in: every block is on the card while it computes (a leaf's pre-hook looks
    from inside the block, after group offloading brought it) and streamed ones are back in RAM afterwards."""
    transformer = manager.pipe.transformer
    seen = {}
    hooks = [block.attn.to_q.register_forward_pre_hook(lambda m, a, i=i, b=block: seen.__setitem__(i, _where(b)))
             for i, block in enumerate(transformer.transformer_blocks)]  # fmt: skip
    latents = torch.zeros(1, 16, 64, dtype=transformer.dtype, device="meta")
    cond = {"prompt_embeds": torch.zeros(1, 7, 32, dtype=transformer.dtype, device="meta")}
    state = family.training_state(manager.pipe, latents, 64, 64)
    velocity = family.velocity(transformer, state, latents, family.timestep_tensor(500.0, latents), cond)
    for hook in hooks:
        hook.remove()
    assert velocity.device.type == "meta"
    assert set(seen) == set(range(len(transformer.transformer_blocks)))
    for i, where in seen.items():
        assert {device for device, _ in where} == {"meta"}, (i, where)
        if quantized:
            assert {kind for _, kind in where} & {"Float8Tensor", "Int8Tensor"}, (i, where)  # torchao weights, moved whole
    for i in streamed_blocks(transformer):
        assert _devices(transformer.transformer_blocks[i]) == {"cpu"}, f"streamed block {i} stayed on the card"


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
