"""The graph simulator counts truly: the meta run of a graph gives the bytes the same graph allocates on real tensors,
and those match the allocator's own record (the profiler's allocation events). Tiny and pocket models, CPU only."""

import pytest
import torch
from torch._C._profiler import _EventType
from torch.profiler import ProfilerActivity, profile

from glance_lite import graph_memory as gm
from glance_lite.pocket import pocket_model_path
from glance_lite.tiny import tiny_model_path

NO_COMPUTE = gm.AttentionPolicy("fused", compute=False)  # real runs allocate nothing the counter cannot see


def _config(model_id: str, component: str = "transformer") -> dict:
    folder = tiny_model_path(model_id) if model_id.startswith("tiny/") else pocket_model_path(model_id)
    return gm.read_config(folder / component / "config.json")


TRANSFORMERS = {  # model -> (family, text tokens)
    "tiny/qwen-image": ("qwen-image", 12),
    "tiny/flux": ("flux", 16),
    "pocket/qwen-image": ("qwen-image", 10),
}


def _allocator_peak(prof, region: str) -> int:
    """Peak of the running sum of the CPU allocator's allocation events (profile_memory) inside the
    record_function `region`: an account kept by c10's allocator, independent of the dispatch-level counter."""
    nodes, allocations = list(prof.profiler.kineto_results.experimental_event_tree()), []
    window = None
    while nodes:
        node = nodes.pop()
        if node.name == region:
            window = (node.start_time_ns, node.end_time_ns)
        if node.tag == _EventType.Allocation:
            allocations.append(node)
        nodes.extend(node.children)
    assert window is not None, f"no {region} region in the profile"
    live = peak = 0
    for node in sorted(allocations, key=lambda n: n.start_time_ns):
        if window[0] <= node.start_time_ns <= window[1]:
            live += node.extra_fields.alloc_size
            peak = max(peak, live)
    return peak


# ---- the counter itself ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("device", ["cpu", "meta"])
def test_views_and_in_place_ops_add_nothing_and_freed_temporaries_are_subtracted(device):
    before = torch.ones(256, device=device)  # existed before counting: never counted
    with gm.LiveBytesCounter() as counter:
        a = torch.empty(1000, device=device)  # +4000
        views = [a.view(10, 100), a[::2], a.t(), a.detach(), before.view(16, 16)]
        a.add_(1)
        a.mul_(before[:1])
        before.add_(1)
        assert counter.current_bytes == 4000
        b = a * 2  # +4000
        c = b.view(-1)[:10]
        del b  # still alive through the view c
        assert counter.current_bytes == 8000
        del c  # the last tensor on b's storage
        d = before + 1  # +1024
    assert (counter.current_bytes, counter.peak_bytes) == (5024, 8000)
    del a, views
    assert counter.current_bytes == 1024  # frees after the block are still subtracted
    del d
    assert counter.current_bytes == 0


def test_storages_kept_by_autograd_stay_counted_until_backward_frees_them():
    x = torch.ones(1000, requires_grad=True)
    with gm.LiveBytesCounter() as counter:
        y = x.exp()  # exp saves its output for backward: the storage outlives the Python tensor
        loss = y.sum()
        del y
        assert counter.current_bytes == 4000 + 4
        loss.backward()  # seeds a 4-byte gradient, then exp's backward writes x.grad while y is still saved
        del loss
    assert counter.current_bytes == 4000  # x.grad
    assert counter.peak_bytes == 4000 + 4 + 4 + 4000


# ---- the attention stand-in ----------------------------------------------------------------------------------------


def test_fused_stand_in_computes_what_sdpa_computes_with_masks_and_grouped_heads():
    g = torch.Generator().manual_seed(0)
    q = torch.randn(2, 4, 9, 8, generator=g, requires_grad=True)
    k = torch.randn(2, 2, 9, 8, generator=g, requires_grad=True)
    v = torch.randn(2, 2, 9, 8, generator=g, requires_grad=True)
    mask = torch.ones(2, 1, 1, 9, dtype=torch.bool)
    mask[1, ..., 6:] = False
    expected = gm._ORIGINAL_SDPA(q, k, v, attn_mask=mask, enable_gqa=True)
    expected_grads = torch.autograd.grad(expected.square().sum(), (q, k, v))
    with gm.attention_policy("fused") as kernels:
        out = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=True)
    grads = torch.autograd.grad(out.square().sum(), (q, k, v))
    assert kernels == {"memory-efficient"}  # a mask rules flash out
    torch.testing.assert_close(out, expected)
    for grad, reference in zip(grads, expected_grads):
        torch.testing.assert_close(grad, reference)
    assert torch.nn.functional.scaled_dot_product_attention is gm._ORIGINAL_SDPA  # restored


def test_padding_mask_costs_a_broadcast_mask_not_a_full_attention_bias():
    config = _config("tiny/qwen-image")
    size, tokens = 256, 64  # long enough that a [B, H, L, L] bias would dominate the tiny model's activations

    def peak(padding_mask, policy):
        common = dict(batch=2, height=size, width=size, text_tokens=tokens, padding_mask=padding_mask)
        return gm.simulate_transformer_forward("qwen-image", config, attention=policy, **common).peak_bytes

    length = (size // 16) ** 2 + tokens
    full_bias = 2 * config["num_attention_heads"] * length * length * 2  # [B, H, L, L] in bf16
    unmasked = peak(False, "fused")
    assert 0 < peak(True, "fused") - unmasked < full_bias / 100
    assert peak(True, gm.AttentionPolicy(materialize_mask_bias=True)) - unmasked > full_bias / 2


# ---- meta == real tensors, and real tensors == the allocator -----------------------------------------------------


@pytest.mark.parametrize("model_id", TRANSFORMERS)
@pytest.mark.parametrize("policy", ["fused", "math"])
def test_transformer_forward_counts_the_same_bytes_on_meta_and_on_real_tensors(model_id, policy):
    family, tokens = TRANSFORMERS[model_id]
    config = _config(model_id)
    size = 64 if model_id.startswith("pocket/") else 128
    common = dict(batch=2, height=size, width=size, text_tokens=tokens, padding_mask=family == "qwen-image")
    meta = gm.simulate_transformer_forward(family, config, attention=policy, **common)
    real = gm.simulate_transformer_forward(family, config, attention=policy, device="cpu", **common)
    assert meta.peak_bytes > 0
    assert real.peak_bytes == meta.peak_bytes


def test_edit_forward_carries_the_condition_tokens_and_counts_the_same_on_meta_and_real_tensors():
    from glance_lite.families import QwenImageEditFamily, QwenImageFamily

    config = _config("tiny/qwen-image")  # the edit model's transformer is the same class and config
    edit = QwenImageEditFamily(condition_area=128 * 128)
    common = dict(batch=2, height=128, width=128, text_tokens=12, padding_mask=True)
    meta = gm.simulate_transformer_forward(edit, config, **common)
    real = gm.simulate_transformer_forward(edit, config, device="cpu", **common)
    plain = gm.simulate_transformer_forward(QwenImageFamily(), config, **common)
    assert real.peak_bytes == meta.peak_bytes > plain.peak_bytes


@pytest.mark.parametrize("model_id", ["tiny/qwen-image", "tiny/flux"])
def test_training_step_counts_the_same_bytes_on_meta_and_on_real_tensors(model_id):
    family, tokens = TRANSFORMERS[model_id]
    config = _config(model_id)
    common = dict(height=128, width=128, text_tokens=tokens, rank=4)
    meta = gm.simulate_training_step(family, config, **common)
    real = gm.simulate_training_step(family, config, device="cpu", **common)
    assert meta.peak_bytes > meta.lora_grad_bytes > 0
    # One op differs by device, not by graph: CPU's mse_loss returns its 0-dim loss on a storage the size of the
    # unreduced [B, tokens, channels] fp32 buffer (meta's holds 4 bytes), and the loss is alive at the peak.
    unreduced = (128 // 16) ** 2 * config["in_channels"] * 4
    assert real.peak_bytes - meta.peak_bytes == unreduced - 4
    assert real.lora_grad_bytes == meta.lora_grad_bytes
    assert real.lora_weight_bytes == meta.lora_weight_bytes == 4 * meta.lora_params


# The allocator comparisons run in float32: in bfloat16, CPU GEMMs (oneDNN) allocate packing buffers through the same
# allocator inside the kernel, scratch a dispatch-level count cannot see by design (on a GPU: cuBLAS's workspace).


@pytest.mark.parametrize(
    ("model_id", "blocks"),
    [("tiny/qwen-image", {"num_layers": 5}), ("tiny/flux", {"num_layers": 3, "num_single_layers": 5})],
)
def test_a_few_blocks_extrapolate_exactly_to_the_full_training_step(model_id, blocks):
    family, tokens = TRANSFORMERS[model_id]
    config = _config(model_id) | blocks
    common = dict(height=64, width=64, text_tokens=tokens, rank=2)
    full = gm.simulate_training_step(family, config, **common)
    scaled = gm.simulate_training_step_from_blocks(family, config, blocks=2, **common)
    for term in ("peak_bytes", "kept_for_backward_bytes", "lora_params", "lora_grad_bytes", "optimizer_state_bytes"):
        assert getattr(scaled, term) == getattr(full, term), term


def test_real_forward_matches_the_allocators_own_account():
    family, tokens = TRANSFORMERS["tiny/qwen-image"]
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        sim = gm.simulate_transformer_forward(family, _config("tiny/qwen-image"), batch=2, height=128, width=128,
                                              text_tokens=tokens, padding_mask=True, dtype="float32", device="cpu",
                                              attention=NO_COMPUTE)  # fmt: skip
    assert _allocator_peak(prof, "graph_memory.transformer_forward") == pytest.approx(sim.peak_bytes, rel=0.01)


@pytest.mark.parametrize("model_id", ["tiny/qwen-image", "tiny/flux"])
def test_real_training_step_matches_the_allocators_own_account(model_id):
    family, tokens = TRANSFORMERS[model_id]
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        sim = gm.simulate_training_step(family, _config(model_id), height=128, width=128, text_tokens=tokens, rank=4,
                                        dtype="float32", device="cpu", attention=NO_COMPUTE)  # fmt: skip
    assert _allocator_peak(prof, "graph_memory.train_step") == pytest.approx(sim.peak_bytes, rel=0.01)


@pytest.mark.parametrize("base_dtype", ["bfloat16", "float32"])
def test_mixed_precision_emulation_allocates_what_real_autocast_allocates(base_dtype):
    """With CPU autocast's op lists, the emulation used for CUDA rules reproduces torch.autocast("cpu") exactly,
    weight-cast caching and checkpoint recomputation included."""
    family, tokens = TRANSFORMERS["tiny/qwen-image"]
    common = dict(height=64, width=64, text_tokens=tokens, rank=4, dtype=base_dtype, device="cpu")
    config = _config("tiny/qwen-image")
    real_autocast = lambda: torch.autocast("cpu", dtype=torch.bfloat16)  # noqa: E731
    emulation = lambda: gm.MixedPrecision(torch.bfloat16, gm.CPU_AUTOCAST)  # noqa: E731
    real = gm.simulate_training_step(family, config, mixed_precision=real_autocast, **common)
    emulated = gm.simulate_training_step(family, config, mixed_precision=emulation, **common)
    plain = gm.simulate_training_step(family, config, mixed_precision=False, **common)
    assert emulated.peak_bytes == real.peak_bytes
    assert plain.peak_bytes != real.peak_bytes  # autocast changes the graph: the comparison can fail


@pytest.mark.parametrize(
    ("model_id", "component", "tokens"),
    [("tiny/qwen-image", "text_encoder", 20), ("tiny/flux", "text_encoder", 16), ("tiny/flux", "text_encoder_2", 16)],
)
def test_text_encoder_counts_the_same_bytes_on_meta_and_on_real_tensors(model_id, component, tokens):
    config = _config(model_id, component)
    meta = gm.simulate_text_encoder(config, tokens=tokens)
    real = gm.simulate_text_encoder(config, tokens=tokens, device="cpu")
    assert real.peak_bytes == meta.peak_bytes > 0


@pytest.mark.parametrize("model_id", ["tiny/qwen-image", "tiny/flux"])
@pytest.mark.parametrize("tiled", [False, True])
def test_vae_decode_counts_the_same_bytes_on_meta_and_on_real_tensors(model_id, tiled):
    config = _config(model_id, "vae")
    # Tiles: 256 px for Qwen-Image's VAE, `sample_size` (32 px in tiny/flux) for AutoencoderKL; 2x2 or 3x3 of them.
    size = {"tiny/qwen-image": 272, "tiny/flux": 64}[model_id] if tiled else 128
    meta = gm.simulate_vae_decode(config, height=size, width=size, dtype="float32", tiled=tiled)
    real = gm.simulate_vae_decode(config, height=size, width=size, dtype="float32", tiled=tiled, device="cpu")
    assert real.peak_bytes == meta.peak_bytes > 3 * size * size * 4  # at least the decoded image


def test_optimizer_state_is_counted_as_each_optimizer_stores_it():
    params = [torch.nn.Parameter(torch.empty(1000, 100, device="meta")) for _ in range(2)]
    params.append(torch.nn.Parameter(torch.empty(10, 100)))
    elements = 2 * 100_000 + 1000
    # torch AdamW (foreach): two fp32 moments; the step also holds one fp32 temporary per parameter (square roots).
    assert gm.optimizer_state_bytes(params, "adamw") == (8 * elements, 12 * elements)
    # bitsandbytes 8-bit: uint8 moments + an fp32 absmax per 256 values for tensors of >= 4096 values, fp32 moments for
    # smaller ones, and the two 256-entry fp32 quantile maps.
    eight_bit = 2 * (2 * 100_000 + 2 * 391 * 4) + 8 * 1000 + 2 * 256 * 4
    assert gm.optimizer_state_bytes(params, "adamw8bit") == (eight_bit, eight_bit)


def test_dequantize_temporary_is_the_largest_quantized_weight_in_the_compute_dtype():
    """The term the graph does not hold, as the planner adds it (`plan.storage.largest_quantized_weight`)."""
    from glance_lite.plan import model_configs
    from glance_lite.plan.inventory import inventory
    from glance_lite.plan.storage import DTYPE_BYTES, largest_quantized_weight

    transformer = gm.build_module(_config("tiny/qwen-image"))
    largest = max(m.weight.numel() for m in transformer.modules() if isinstance(m, torch.nn.Linear))
    inv = inventory(model_configs("tiny/qwen-image").component("transformer"))
    assert largest_quantized_weight(inv, "quanto-qfloat8") * DTYPE_BYTES["bfloat16"] == largest * 2
    assert largest_quantized_weight(inv, "none") * DTYPE_BYTES["bfloat16"] == 0
