"""The pocket base model: a small Qwen-Image-architecture pipeline trained here with the flow-matching objective.

Components are the real model's classes with the size knobs turned down:
  transformer   QwenImageTransformer2DModel, 5 layers, 4 heads x 32, joint dim 64 (the text width)
  vae           the pocket VAE (vae.py): 8 latent channels at 1/4 resolution -> 64 packed tokens at 64x64
  text_encoder  a frozen, randomly initialised 2-layer, 64-wide Qwen2_5_VLForConditionalGeneration (fixed seed):
                the transformer learns to read its hidden states; 64 wide so different captions differ clearly
  tokenizer     the pocket tokenizer (tokenizer.py)
  scheduler     FlowMatchEulerDiscreteScheduler with the real Qwen-Image config

Training (`train_base`): images of training scenes only, VAE posterior mode normalised with the VAE's
latents_mean/std, x_t = (1 - s) x0 + s noise, target noise - x0, timestep s (the pipeline passes t / 1000), s from a
logit-normal, 10% of captions replaced by the negative prompt " " (so true CFG has an unconditional branch to
contrast), AdamW with warm-up + cosine, EMA weights (decay warmed up
to 0.999) are what ships.
"""

from __future__ import annotations

import copy
import math
import time

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import FlowMatchEulerDiscreteScheduler, QwenImagePipeline, QwenImageTransformer2DModel
from transformers import Qwen2_5_VLForConditionalGeneration

from ..tiny import _from_real_config
from . import world
from .vae import single_frame_convs

TEXT_WIDTH = 64
TEXT_ENCODER_SEED = 11
TRANSFORMER_SEED = 12
NEGATIVE_PROMPT = " "
TRANSFORMER_SIZE = dict(
    num_layers=5, num_attention_heads=4, attention_head_dim=32, axes_dims_rope=(8, 12, 12), joint_attention_dim=TEXT_WIDTH
)


def build_text_encoder(tokenizer) -> Qwen2_5_VLForConditionalGeneration:
    """Frozen random Qwen2.5-VL text model, 2 layers x 64 wide (4 heads x 16), from a fixed seed."""
    from ..tiny import small_qwen_vl_config

    config = small_qwen_vl_config(tokenizer, width=TEXT_WIDTH, heads=4, kv_heads=2)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(TEXT_ENCODER_SEED)
        model = Qwen2_5_VLForConditionalGeneration(config).eval().requires_grad_(False)
    # Round to fp16 values now: the pipeline ships in fp16, so training sees exactly the shipped encoder.
    # (parameters only: non-persistent buffers such as RoPE frequencies are recomputed in fp32 on load).
    with torch.no_grad():
        for param in model.parameters():
            param.copy_(param.half().float())
    return model


def build_transformer(z_dim: int) -> QwenImageTransformer2DModel:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(TRANSFORMER_SEED)
        return _from_real_config(
            QwenImageTransformer2DModel, "qwen-image", "transformer", in_channels=4 * z_dim, out_channels=z_dim, **TRANSFORMER_SIZE
        )


def build_pipeline(vae, tokenizer, transformer=None) -> QwenImagePipeline:
    """The pocket QwenImagePipeline around a trained VAE (a fresh transformer unless one is given)."""
    scheduler = _from_real_config(FlowMatchEulerDiscreteScheduler, "qwen-image", "scheduler")
    return QwenImagePipeline(
        scheduler=scheduler,
        vae=vae,
        text_encoder=build_text_encoder(tokenizer),
        tokenizer=tokenizer,
        transformer=transformer if transformer is not None else build_transformer(vae.config.z_dim),
    )


@torch.no_grad()
def encode_captions(pipe: QwenImagePipeline, captions: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """Prompt embeddings [N, L, 64] (zero-padded to the longest) and masks [N, L], as the pipeline encodes them."""
    embeds = [pipe.encode_prompt(prompt=c, device="cpu", max_sequence_length=512)[0][0] for c in captions]
    length = max(e.shape[0] for e in embeds)
    mask = torch.zeros(len(embeds), length, dtype=torch.long)
    padded = torch.zeros(len(embeds), length, embeds[0].shape[-1])
    for i, e in enumerate(embeds):
        padded[i, : e.shape[0]] = e
        mask[i, : e.shape[0]] = 1
    return padded, mask


@torch.no_grad()
def encode_pictures(pipe: QwenImagePipeline, images: np.ndarray, chunk: int = 64) -> torch.Tensor:
    """uint8 [N, 64, 64, 3] -> normalised, packed latents [N, 64, 4 * z_dim] (the space the transformer denoises)."""
    vae = pipe.vae
    z_dim = vae.config.z_dim
    mean = torch.tensor(vae.config.latents_mean).view(1, z_dim, 1, 1, 1)
    std = torch.tensor(vae.config.latents_std).view(1, z_dim, 1, 1, 1)
    out = []
    with single_frame_convs(vae):
        for i in range(0, len(images), chunk):
            z = vae.encode(world.to_model_pixels(images[i : i + chunk]).unsqueeze(2)).latent_dist.mode()
            z = (z - mean) / std
            b, c, _, h, w = z.shape
            out.append(pipe._pack_latents(z, b, c, h, w))
    return torch.cat(out)


def train_base(
    pipe: QwenImagePipeline,
    steps: int,
    images: int = 4096,
    batch: int = 64,
    lr: float = 1e-3,
    warmup: int = 50,
    caption_dropout: float = 0.1,
    ema_decay: float = 0.999,
    seed: int = 0,
    log=print,
) -> tuple[QwenImageTransformer2DModel, dict]:
    """Train pipe.transformer on `images` rendered training-scene pictures; returns the EMA transformer and stats."""
    start = time.time()
    pictures, scenes = world.make_batch(images, seed=seed + 1)
    captions = sorted(world.TRAIN_CAPTIONS)
    caption_index = {c: i for i, c in enumerate(captions)}
    embeds, masks = encode_captions(pipe, captions + [NEGATIVE_PROMPT])
    negative = len(captions)
    labels = torch.tensor([caption_index[s.caption] for s in scenes])
    latents = encode_pictures(pipe, pictures)
    side = world.IMAGE_SIZE // pipe.vae_scale_factor // 2
    log(f"base: {images} pictures, {len(captions)} captions encoded in {time.time() - start:.0f}s; latents std {latents.std():.3f}")

    transformer = pipe.transformer.train()
    ema = copy.deepcopy(transformer).eval().requires_grad_(False)
    optimizer = torch.optim.AdamW(transformer.parameters(), lr=lr, betas=(0.9, 0.99), weight_decay=0.0)
    lr_at = lambda step: (step + 1) / warmup if step < warmup else 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, steps - warmup)))  # noqa: E731
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_at)
    gen = torch.Generator().manual_seed(seed)
    img_shapes = [[(1, side, side)]] * batch
    smoothed, history = None, []
    for step in range(steps):
        idx = torch.randint(0, images, (batch,), generator=gen)
        x0 = latents[idx]
        text = torch.where(torch.rand(batch, generator=gen) < caption_dropout, negative, labels[idx])
        sigma = torch.sigmoid(torch.randn(batch, generator=gen))
        noise = torch.randn(x0.shape, generator=gen)
        s = sigma.view(-1, 1, 1)
        x_t = (1 - s) * x0 + s * noise
        pred = transformer(
            hidden_states=x_t,
            timestep=sigma,
            encoder_hidden_states=embeds[text],
            encoder_hidden_states_mask=masks[text],
            img_shapes=img_shapes,
            return_dict=False,
        )[0]
        loss = F.mse_loss(pred, noise - x0)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(transformer.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        with torch.no_grad():
            decay = min(ema_decay, (1 + step) / (10 + step))  # warm-up: early weights must not linger
            for p_ema, p in zip(ema.parameters(), transformer.parameters()):
                p_ema.lerp_(p, 1 - decay)
        smoothed = loss.item() if smoothed is None else 0.98 * smoothed + 0.02 * loss.item()
        if step % 50 == 0 or step == steps - 1:
            history.append((step, round(smoothed, 4)))
            log(f"base step {step} loss {smoothed:.4f} lr {scheduler.get_last_lr()[0]:.2e} {time.time() - start:.0f}s")
    stats = {"steps": steps, "batch": batch, "pictures": images, "train_seconds": round(time.time() - start, 1),
             "final_loss_smoothed": round(smoothed, 4), "loss_history": history}  # fmt: skip
    return ema, stats
