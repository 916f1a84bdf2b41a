"""Memory planner: how many bytes each stage of a run puts on each device, before any weight is loaded.

    python -m glance_lite.plan --model Qwen/Qwen-Image --profile 4090 --height 1024 --width 1024 [--json] [--strict]

The architectures are built on the meta device from their configs, so a 20B-parameter plan takes well under a
second after the imports and needs neither weights nor a network. Every parameter is counted by walking the real
module tree and quantization is applied to exactly the layers the libraries replace, so weight bytes are exact;
activations come from formulas checked against the real graph (`glance_lite.graph_memory`).

Stages run one after another and `glance_lite.placement` says where every component is in each, so the peak of a
run is the MAX over stages, never their sum:

    text_encode   text encoder(s): prompt and negative prompt
    slow_phase    transformer with both adapters loaded (slow active); edit models also hold the VAE
    fast_phase    the same weights, fast adapter active
    vae_decode    VAE: latents -> pixels
    train_step    one LoRA training step (frozen base, cached text embeddings and latents)

The package, in the order a plan is made: `configs` (model id -> component configs), `inventory` (the parameter
layout of each component), `storage` (bytes per dtype and quantization), `activations` (formulas),
`stages` (bytes per device per stage, resident blocks, PCIe traffic), `report` (the plan, its verdict, table
and JSON).
"""

from __future__ import annotations

import dataclasses
import json
import math

from ..placement import placement
from ..profiles import Profile, load_profile
from .activations import (
    ActivationTerms,
    LORA_GRAD_BYTES,
    LORA_TRAIN_PARAM_BYTES,
    OPTIMIZER_STATE_BYTES,
    GiB,
    Tokens,
    text_encoder_activations,
    text_encoder_tokens,
    transformer_inference_activations,
    transformer_training_activations,
    vae_activations,
)
from .configs import SHIPPED_MODELS, ModelConfigs, PlanError, model_configs
from .inventory import (
    Inventory,
    inventory,
    lora_block_params,
    lora_param_count,
    lora_target_layers,
    lora_wrapped_weight_params,
)
from .report import ComponentPlan, MemoryPlan, Pcie, StagePlan
from .stages import (
    CUDA_CONTEXT_BYTES,
    TRAINING_STREAM_IN_FLIGHT,
    StageContext,
    StreamedWeights,
    build_stage,
    choose_resident_blocks,
    frozen_base_bytes,
    frozen_base_host_bytes,
    inference_streaming,
    overheads,
    pcie_per_image,
    pcie_per_train_step,
    shard_blocks,
    shard_plan,
)
from .storage import (
    DTYPE_BYTES,
    component_bytes,
    component_host_bytes,
    largest_quantized_weight,
    pinned_allocation_bytes,
    quantized_weight_bytes,
)

STAGES = ("text_encode", "slow_phase", "fast_phase", "vae_decode", "train_step")
GENERATION_STEPS_DEFAULT = 10  # 5 slow + 5 fast

__all__ = [
    "CUDA_CONTEXT_BYTES", "ComponentPlan", "DTYPE_BYTES", "GiB", "MemoryPlan", "ModelConfigs", "PlanError", "Pcie",
    "SHIPPED_MODELS", "STAGES", "StagePlan", "component_bytes", "inventory", "lora_param_count",
    "lora_target_layers", "model_configs", "plan", "quantized_weight_bytes", "shard_blocks",
]  # fmt: skip


def _component_plan(inv: Inventory, policy, lora: dict, adapters: int, fused_copy: dict, lora_pinned: dict) -> ComponentPlan:
    """Sizes of one component under its policy; `lora` = adapter parameters per block, `adapters` = how many,
    `fused_copy` = weight elements per block kept a second time by fuse_lora, `lora_pinned` = one adapter's pinned
    bytes per block."""
    dtype_bytes = DTYPE_BYTES[policy.dtype]
    extra = {block: adapters * lora.get(block, 0) + fused_copy.get(block, 0) for block in {*lora, *fused_copy}}
    per_block = [
        component_bytes(inv, policy.dtype, policy.quantization, block=i) + extra.get(i, 0) * dtype_bytes
        for i in range(len(inv.blocks))
    ]
    pinned = [
        component_host_bytes(inv, policy.dtype, policy.quantization, block=i) + adapters * lora_pinned.get(i, 0)
        for i in range(len(inv.blocks))
    ]
    adapter_params = adapters * sum(lora.values())
    fused_copy_bytes = sum(fused_copy.values()) * dtype_bytes
    return ComponentPlan(
        name=inv.name,
        params=inv.num_params,
        dtype=policy.dtype,
        quantization=policy.quantization,
        placement=policy.placement,
        bytes=component_bytes(inv, policy.dtype, policy.quantization),
        full_precision_bytes=component_bytes(inv, policy.dtype, "none"),
        blocks=len(inv.blocks),
        largest_block_bytes=max(per_block, default=0),
        outside_blocks_bytes=component_bytes(inv, policy.dtype, policy.quantization, block=None)
        + extra.get(None, 0) * dtype_bytes,
        adapter_bytes=adapter_params * dtype_bytes + fused_copy_bytes,
        adapter_params=adapter_params,
        fused_copy_bytes=fused_copy_bytes,
        block_bytes=tuple(per_block),
        block_pinned_bytes=tuple(pinned),
    )


def lora_block_pinned_bytes(inv: Inventory, target_modules, rank: int, dtype: str) -> dict[int | None, int]:
    """One adapter's pinned bytes per block: every lora_A (rank x in) and lora_B (out x rank) its own allocation."""
    per_block: dict[int | None, int] = {}
    for layer in lora_target_layers(inv, target_modules):
        out_features, in_features = layer.weight_shape[0], layer.weight_shape[1]
        pinned = sum(pinned_allocation_bytes(n * DTYPE_BYTES[dtype]) for n in (rank * in_features, out_features * rank))
        per_block[layer.block] = per_block.get(layer.block, 0) + pinned
    return per_block


def _dequant_transient(inv: Inventory, dtype: str, quantization: str) -> int:
    """A dequantizing matmul materialises the largest quantized weight in the compute dtype."""
    return largest_quantized_weight(inv, quantization) * DTYPE_BYTES[dtype]


def _phase_plan(configs: ModelConfigs, height: int, width: int, mode: str) -> dict:
    from ..schedule import PhaseSplit, glance_plan, image_seq_len

    scheduler = json.loads(configs.scheduler_config_json)
    if not scheduler:
        return {}
    return glance_plan(scheduler, image_seq_len(height, width), PhaseSplit(), mode).to_dict()


def _denoise_streaming(ctx: StageContext, denoise_acts: dict, notes) -> StreamedWeights | None:
    """The streamed transformer of the denoise stage, with as many blocks resident as the VRAM target allows
    (computed for the profile's card even when emulated on the CPU, so the CPU run splits the blocks the same way)."""
    if ctx.place("transformer", "denoise").mode != "streamed":
        return None
    gpu_ctx = ctx.on_card()
    streaming = inference_streaming(gpu_ctx, "transformer")

    def peak(candidate: StreamedWeights) -> int:
        stage = build_stage(gpu_ctx, "slow_phase", "denoise", denoise_acts, notes, {"transformer": candidate})
        return max((stage.peak(d) for d in gpu_ctx.gpus()), default=0)

    setting = ctx.profile.component("transformer").resident_blocks
    return streaming.with_resident(choose_resident_blocks(streaming, peak, gpu_ctx.target(), setting))


def _training_terms(ctx: StageContext, inv: Inventory, tokens: Tokens, batch: int) -> ActivationTerms:
    """The training step's activations: the checkpointed forward and backward of the frozen base in its dtype."""
    training = ctx.profile.training
    where = ctx.place("transformer", "train_step")
    formula = transformer_training_activations(inv, tokens, batch, where.dtype, ctx.family.mlp_ratio,
                                               training.gradient_checkpointing, training.mixed_precision != "no")  # fmt: skip
    return ActivationTerms(formula, _dequant_transient(inv, where.dtype, where.quantization))


def _activation_terms(ctx: StageContext, family, tokens, batch: int, height, width, side) -> dict:
    """Plan stage -> component -> ActivationTerms, in the dtype each component computes in (`placement`)."""
    inventories = ctx.inventories
    denoise = ctx.place("transformer", "denoise")
    transformer = inventories["transformer"]
    terms = {"text_encode": {}, "slow_phase": {}, "vae_decode": {}}
    for name in (n for n in family.text_encoders if n in inventories):
        where = ctx.place(name, "text_encode")
        inv = inventories[name]
        formula = text_encoder_activations(inv, text_encoder_tokens(inv, tokens["generate"].text), where.dtype,
                                           family.text_encoder_hidden_states)  # fmt: skip
        terms["text_encode"][name] = ActivationTerms(formula, _dequant_transient(inv, where.dtype, where.quantization))
    formula = transformer_inference_activations(transformer, tokens["generate"], batch, denoise.dtype, family.mlp_ratio)
    terms["slow_phase"]["transformer"] = ActivationTerms(formula, _dequant_transient(transformer, denoise.dtype, denoise.quantization))
    vae = ctx.place("vae", "vae_decode")
    tiling = ctx.profile.component("vae").tiling
    terms["vae_decode"]["vae"] = ActivationTerms(vae_activations(inventories["vae"], height, width, vae.dtype, tiling, "decode"))
    if "vae" in family.denoise_components:  # an edit model encodes its input image in the denoise stage
        terms["slow_phase"]["vae"] = ActivationTerms(vae_activations(inventories["vae"], side, side, vae.dtype, tiling, "encode"))
    terms["fast_phase"] = terms["slow_phase"]
    return terms


def _train_stage(ctx: StageContext, inv: Inventory, acts: int, lora_params: int) -> tuple[StagePlan, StreamedWeights | None]:
    """One LoRA step: frozen base (training quantization, block streaming with resident blocks), fp32 LoRA weights,
    gradients and optimizer state, checkpointed activations. Text embeddings and latents are cached beforehand,
    so neither the text encoder nor the VAE is loaded. Resident blocks are chosen for the profile's card, also when
    the run is emulated on the CPU."""
    training = ctx.profile.training
    where = ctx.place("transformer", "train_step")
    on_card = placement(ctx.profile, "transformer", "train_step", family=ctx.family)
    dtype = where.dtype
    block_bytes, outside = frozen_base_bytes(inv, dtype, where.quantization)
    trainable = lora_params * (LORA_TRAIN_PARAM_BYTES + LORA_GRAD_BYTES + OPTIMIZER_STATE_BYTES[training.optimizer])
    base = sum(block_bytes) + outside

    placements = {name: ctx.place(name, "train_step") for name in ctx.comps}

    def stage_with(streaming: StreamedWeights | None, device: str) -> StagePlan:
        on_gpu = device != "cpu"
        weights, streamed = {}, {}
        loading = base if on_gpu else 0  # the base is loaded (and quantized) in RAM, then placed
        if streaming is not None and on_gpu:
            weights[device] = outside + streaming.resident_bytes + trainable
            streamed[device] = streaming.window_bytes
            weights["cpu"] = streaming.streamed_host_bytes  # the streamer's CPU master copies (plain tensors pinned)
            loading -= streaming.streamed_bytes
        else:
            weights[device] = base + trainable
        overhead = overheads([device] if on_gpu else [], extra_ram=loading)
        notes = (
            f"{lora_params:,} trainable LoRA parameters: fp32 weights + grads + {training.optimizer} state = {trainable / GiB:.2f} GiB",
            f"frozen base {where.quantization} in {dtype}: {base / GiB:.2f} GiB"
            + (f", {len(streaming.resident)} of {len(block_bytes)} blocks resident, the rest streamed" if streaming else " resident"),
        )
        return StagePlan("train_step", ("transformer",), weights, streamed, {device: acts}, overhead, ctx.budget(), notes, placements)

    if where.mode != "streamed":
        return stage_with(None, where.device), None
    host = frozen_base_host_bytes(inv, dtype, where.quantization) if where.device != "cpu" else ()
    streaming = StreamedWeights(block_bytes, outside, (), training.blocks_per_group or 1, TRAINING_STREAM_IN_FLIGHT, host)
    target = ctx.on_card().target()
    if on_card.device != "cpu":
        peak = lambda s: stage_with(s, on_card.device).peak(on_card.device)  # noqa: E731
        streaming = streaming.with_resident(choose_resident_blocks(streaming, peak, target, training.resident_blocks))
    return stage_with(streaming, where.device), streaming


def plan(
    model: str | ModelConfigs,
    profile: Profile | str,
    height: int = 1024,
    width: int = 1024,
    lora_rank: int | None = None,
    text_tokens: int | None = None,
    train_text_tokens: int | None = None,
    true_cfg_scale: float | None = None,
    steps: int = GENERATION_STEPS_DEFAULT,
    train_batch_size: int = 1,
    gpu_memory_gb: float | None = None,
    system_ram_gb: float | None = None,
    num_gpus: int | None = None,
    mode: str = "consistent",
    device: str | None = None,
    simulate: bool = False,
    method: str | None = None,
) -> MemoryPlan:
    """Predict the memory of every stage of generating (and training on) `model` with `profile`.

    Pure computation: reads configs, builds meta modules (cached), returns a `MemoryPlan`. `lora_rank` defaults to
    the family's training rank (32 Qwen-Image, 16 FLUX); `text_tokens` to the family's typical prompt length at
    generation; `gpu_memory_gb` / `system_ram_gb` / `num_gpus` override the profile's budgets (auto selection plans
    against the detected hardware this way); `device="cpu"` plans the profile's choices run on the CPU. `model` may
    also be a `ModelConfigs` (an architecture without a folder, e.g. the benchmarks' random-weight models).
    `simulate=True` also measures every stage on the real graph (`plan.simulation`: tens of seconds, not a fraction).
    `method` ("glance", "base-50", "lightning-8", ...; `glance_lite.methods`) sets the steps, whether CFG runs (a
    few-step method: one pass per step, no CFG batch) and the adapters held (glance: slow and fast; fewstep: one).
    """
    from ..families import family_for_pipeline_class
    from ..schedule import PhaseSplit, image_seq_len

    profile = load_profile(profile)
    if height % 16 or width % 16 or height <= 0 or width <= 0:
        raise PlanError(f"height and width must be positive multiples of 16, got {width}x{height}.")
    if device not in (None, "cpu"):
        raise PlanError(f"device must be 'cpu' (emulate the profile on the CPU) or left out, got {device!r}.")
    configs = model if isinstance(model, ModelConfigs) else model_configs(model)
    family = family_for_pipeline_class(configs.pipeline_class)
    rank = lora_rank or family.recipe.rank
    inventories = {c.name: inventory(c) for c in configs.components}
    transformer = inventories["transformer"]

    adapters = 2  # Glance's slow and fast LoRAs
    if method is not None:
        from ..methods import parse_method

        chosen = parse_method(method)
        adapters = {"glance": 2, "base": 0, "fewstep": 1}[chosen.kind]
        steps = chosen.steps or len(PhaseSplit().slow + PhaseSplit().fast)
        if not chosen.guidance and true_cfg_scale is None:
            true_cfg_scale = 1.0
    lora = lora_block_params(transformer, family.lora_target_modules, rank)
    fused_copy = lora_wrapped_weight_params(transformer, family.lora_target_modules) if profile.fuse_lora else {}
    lora_pinned = lora_block_pinned_bytes(transformer, family.lora_target_modules, rank, profile.component("transformer").dtype)
    comps = {
        name: _component_plan(inv, profile.component(name), lora if name == "transformer" else {},
                              adapters if name == "transformer" else 0, fused_copy if name == "transformer" else {},
                              lora_pinned if name == "transformer" else {})
        for name, inv in inventories.items()
    }  # fmt: skip
    gpus = profile.num_gpus if num_gpus is None else num_gpus
    ctx = StageContext(
        profile, family, inventories, comps,
        gpu_budget=int((gpu_memory_gb if gpu_memory_gb is not None else profile.gpu_memory_gb or 0) * GiB),
        ram_budget=int((system_ram_gb if system_ram_gb is not None else profile.system_ram_gb) * GiB),
        num_gpus=0 if profile.device == "cpu" else max(gpus, 1), device=device,
    )  # fmt: skip

    # ---- token counts and batch
    image_tokens = image_seq_len(height, width)
    side = int(math.sqrt(family.condition_image_area))
    condition = image_seq_len(side, side) if side else 0
    gen_text = (text_tokens or family.generate_text_tokens) + family.vision_tokens
    train_text = (train_text_tokens or family.train_text_tokens) + family.vision_tokens
    cfg_scale = family.default_true_cfg_scale if true_cfg_scale is None else true_cfg_scale
    passes = 2 if cfg_scale > 1 else 1
    batch = passes if profile.batch_cfg else 1
    forwards = steps * (1 if profile.batch_cfg else passes)
    tokens = {"generate": Tokens(image_tokens, gen_text, condition), "train": Tokens(image_tokens, train_text, condition)}
    masked = family.masks_batched_prompts and batch > 1

    # ---- activations per component (the largest moment of each), in the dtype each computes in
    terms = _activation_terms(ctx, family, tokens, batch, height, width, side)
    terms["train_step"] = {"transformer": _training_terms(ctx, transformer, tokens["train"], train_batch_size)}
    text_acts = {name: t.total() for name, t in terms["text_encode"].items()}
    denoise_acts = {name: t.total() for name, t in terms["slow_phase"].items()}
    vae_decode = terms["vae_decode"]["vae"].total()
    denoise_where = ctx.place("transformer", "denoise")

    # ---- sharding (multi-GPU): split the transformer blocks across GPUs by what each GPU has left
    device_map: dict[str, int] = {}
    if denoise_where.mode == "sharded":
        ctx.shard_of, device_map = shard_plan(ctx, {"transformer": denoise_acts["transformer"], "vae": vae_decode, **text_acts})

    # ---- stages
    notes = [f"{tokens['generate'].total} tokens x batch {batch}; {forwards} transformer forwards per image"
             + (f" ({method})" if method else "")]
    if masked:
        notes.append("batched CFG pads the two prompts to one length: the fused kernels read the padding mask as a "
                     "broadcast [B, 1, 1, L] bias, no [B, H, L, L] copy (graph_memory)")  # fmt: skip
    if "vae" in family.denoise_components:
        notes.append("edit: the VAE encodes the condition image in this stage")
    streaming = _denoise_streaming(ctx, denoise_acts, notes)
    denoise_streaming = {"transformer": streaming} if streaming is not None else None
    train_stage, train_streaming = _train_stage(
        ctx, transformer, terms["train_step"]["transformer"].total(), lora_param_count(transformer, family.lora_target_modules, rank)
    )
    stages = {
        "text_encode": build_stage(ctx, "text_encode", "text_encode", text_acts, [f"{gen_text} prompt tokens per prompt"]),
        "slow_phase": build_stage(ctx, "slow_phase", "denoise", denoise_acts, notes, denoise_streaming),
        "fast_phase": build_stage(ctx, "fast_phase", "denoise", denoise_acts, notes, denoise_streaming),
        "vae_decode": build_stage(ctx, "vae_decode", "vae_decode", {"vae": vae_decode}),
        "train_step": train_stage,
    }
    resident = {}
    if streaming is not None:
        resident["denoise"] = streaming.resident
    if train_streaming is not None:
        resident["train_step"] = train_streaming.resident
    pcie = Pcie(
        per_image=pcie_per_image(ctx, streaming, forwards),
        per_image_all_streamed=pcie_per_image(ctx, streaming and streaming.with_resident(()), forwards),
        per_train_step=pcie_per_train_step(train_streaming),
        per_train_step_all_streamed=pcie_per_train_step(train_streaming and train_streaming.with_resident(())),
    )
    options = dict(
        lora_rank=lora_rank, text_tokens=text_tokens, train_text_tokens=train_text_tokens, true_cfg_scale=true_cfg_scale,
        steps=steps, train_batch_size=train_batch_size, gpu_memory_gb=gpu_memory_gb, system_ram_gb=system_ram_gb,
        num_gpus=num_gpus, mode=mode, device=device, configs=configs, method=method,
    )  # fmt: skip
    result = MemoryPlan(
        model=configs.model, family=family.name, profile=profile, height=height, width=width, lora_rank=rank, batch=batch,
        tokens=tokens, components=comps, stages=stages, transformer_forwards=forwards, device_map=device_map,
        phase_plan=_phase_plan(configs, height, width, mode), resident_blocks=resident, pcie=pcie, device=device,
        activation_terms=terms,
        options=options,
    )  # fmt: skip
    if simulate:
        from . import simulation

        result = dataclasses.replace(result, simulation=simulation.simulate(result, ctx))
    return result


def _make_package_callable() -> None:
    from .. import _make_callable

    _make_callable(__name__, plan)  # `glance_lite.plan(...)` keeps working once this package is imported


_make_package_callable()
