"""The distribute/free manager: profiles really applied, evicted modules really freed, failures explained."""

import gc
import os
import weakref

import pytest
import torch
import yaml

from glance_lite.api import load
from glance_lite.generate import main as generate_main
from glance_lite.manager import StageOutOfMemoryError
from glance_lite.profiles import load_profile
from glance_lite.sampler import NonFiniteLatentsError

SMALL = dict(height=64, width=64, output_type="latent", progress=False)


def cpu_profile_with(tmp_path, fuse_lora=True, **components):
    """The built-in cpu profile with some component policies changed, written and loaded as a user's YAML file."""
    data = load_profile("cpu").to_dict()
    data["fuse_lora"] = fuse_lora  # quantized or streamed weights cannot hold a fused LoRA
    for name, changes in components.items():
        data["components"][name].update(changes)
    data["name"] = "cpu-custom"
    path = tmp_path / "custom.yaml"
    path.write_text(yaml.safe_dump(data))
    return load_profile(str(path))


def test_quanto_quantization_is_really_applied_and_generation_still_runs(tmp_path):
    from optimum.quanto import QTensor

    profile = cpu_profile_with(
        tmp_path, fuse_lora=False, transformer={"quantization": "quanto-qint8"}, text_encoder={"quantization": "quanto-qint8"}
    )
    glance = load("tiny/qwen-image", profile=profile)
    quantized = glance.generate("a red cube", **SMALL)
    plain = load("tiny/qwen-image", profile="cpu").generate("a red cube", **SMALL)
    transformer = glance.manager.pipe.transformer
    assert isinstance(transformer.transformer_blocks[0].attn.to_q.weight, QTensor)
    assert isinstance(glance.manager.pipe.text_encoder.model.language_model.layers[0].mlp.up_proj.weight, QTensor)
    assert torch.isfinite(quantized.latents[0]).all()
    assert not torch.equal(quantized.latents[0], plain.latents[0])  # int8 weights change the numbers a little
    assert torch.nn.functional.cosine_similarity(quantized.latents[0].flatten(), plain.latents[0].flatten(), dim=0) > 0.9


def test_an_evicted_text_encoder_is_really_freed(tmp_path):
    """Evicted means gone: nothing keeps the module or any of its weights alive (checked by weak references, not by
    the process's RSS, which depends on the allocator and on whatever else runs on the machine)."""
    profile = cpu_profile_with(tmp_path, text_encoder={"placement": "evict_after_use"})
    glance = load("tiny/qwen-image", profile=profile)
    manager, evictions = glance.manager, []
    evict = manager.evict

    def watched_evict(component):  # the manager's own evict, plus weak references to the weights it drops
        module = getattr(manager.pipe, component, None)
        weights = [weakref.ref(t) for t in (*module.parameters(), *module.buffers())] if module is not None else []
        del module
        ref = evict(component)  # a weakref to the module, the manager's proof that it died
        if ref is not None:
            evictions.append((component, ref, weights))
        return ref

    manager.evict = watched_evict
    glance.generate("a red cube", **SMALL)
    gc.collect()
    assert manager.pipe.text_encoder is None
    [(component, module_ref, weights)] = evictions
    assert component == "text_encoder" and weights
    assert module_ref() is None, "something still holds the evicted text encoder"
    assert [w for w in weights if w() is not None] == [], "something still holds some of the evicted text encoder's weights"
    glance.generate("a red cube", **SMALL)  # brought back for the next call
    assert manager.load_counts == {"text_encoder": 2, "transformer": 1}


def test_non_finite_latents_stop_the_run_with_an_explanation(tmp_path):
    glance = load("tiny/qwen-image", profile="cpu")
    glance.generate("warm up", **SMALL)
    glance.manager.pipe.transformer.register_forward_hook(lambda module, args, output: (output[0] * float("inf"),))
    with pytest.raises(NonFiniteLatentsError, match="slow phase, step 0.*float16.*No image was written"):
        glance.generate("a red cube", height=64, width=64, progress=False)


def test_cuda_out_of_memory_becomes_a_message_naming_the_stage_and_a_leaner_profile(monkeypatch):
    glance = load("tiny/qwen-image", profile="cpu")

    def out_of_memory(*args, **kwargs):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(glance.family, "velocity", out_of_memory)
    with pytest.raises(StageOutOfMemoryError, match="stage 'denoise' with profile 'cpu'.*predicted.*(leaner profile|reduce height/width)"):
        glance.generate("a red cube", **SMALL)


def test_accelerate_launch_processes_split_the_prompts(tmp_path, monkeypatch):
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    args = ["--model", "tiny/qwen-image", "--profile", "cpu", "--height", "64", "--width", "64", "--no-progress",
            "--prompt", "a", "--prompt", "b", "--prompt", "c", "--out-dir", str(tmp_path)]  # fmt: skip
    assert generate_main(args) == 0
    assert sorted(os.listdir(tmp_path)) == ["001.png"]  # process 1 of 2 takes prompts 1, 3, 5, ...


def test_sharded_placement_spreads_whole_blocks_over_the_gpus():
    """The multi-gpu profile's device map (planned on the meta device; no GPU needed to compute it)."""
    from glance_lite.manager import ComponentManager
    from glance_lite.models import meta_component, resolve_model

    source = resolve_model("tiny/qwen-image")
    manager = ComponentManager(source, load_profile("multi-gpu"))
    total = sum(p.numel() * 2 for p in meta_component(source).parameters())  # bf16 bytes
    device_map = manager.shard_map("transformer", {0: int(0.6 * total), 1: 2 * total})
    assert set(device_map.values()) == {0, 1}
    block_entries = [name for name in device_map if name.startswith("transformer_blocks")]
    assert all(name.count(".") <= 1 for name in block_entries), "a transformer block was split across GPUs"
