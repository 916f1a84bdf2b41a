"""The pocket VAE: a small stock `AutoencoderKLQwenImage` trained as an autoencoder on pocket-world pictures.

Shape: base_dim 16, z_dim 8, dim_mult [1, 2, 4], one res block per stage, temporal downsampling [False, True]:
1.83 M parameters, 4x spatial downsampling (64x64 -> 8 x 16x16 latents, 64 packed image tokens). 8x downsampling
sat on a two-colour plateau in trials; 4x learns the palette in a few hundred steps.

Training (what worked on 1-2 CPU cores): batch 16, Adam lr 5e-4, betas (0.9, 0.99), 30-step warm-up then cosine,
grad-clip 1.0, loss MSE + 0.5 L1 + 1e-5 KL on [-1, 1] pixels, the posterior *mode* as latent, and the decoder
called without the output clamp that `decode()` applies (the clamp stops gradients at saturated pixels). Causal
Conv3d layers run as Conv2d with the kernel's last time slice while training (`single_frame_convs`): identical for
single frames and ~1.5-2x faster. The saved model is the stock class, loaded by the stock pipeline.

The gate: before any transformer training, the checker must read >= 95% of held-out reconstructions right
(`ceiling`). `latents_mean`/`latents_std` in the config are set from the trained encoder's latent statistics, so
the transformer sees roughly unit-variance latents.
"""

from __future__ import annotations

import contextlib
import math
import time

import torch
import torch.nn.functional as F
from diffusers import AutoencoderKLQwenImage
from diffusers.models.autoencoders.autoencoder_kl_qwenimage import QwenImageCausalConv3d

from . import checker, world

VAE_CONFIG = dict(
    base_dim=16, z_dim=8, dim_mult=[1, 2, 4], num_res_blocks=1, attn_scales=[], temperal_downsample=[False, True]
)
CEILING_GATE = 0.95


def build_vae(seed: int) -> AutoencoderKLQwenImage:
    """An untrained pocket VAE, weights from `seed`."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return AutoencoderKLQwenImage(**VAE_CONFIG, latents_mean=[0.0] * 8, latents_std=[1.0] * 8)


@contextlib.contextmanager
def single_frame_convs(vae: AutoencoderKLQwenImage):
    """Run every causal Conv3d as a Conv2d on single frames (same result, faster); restores the stock forward."""
    convs = [m for m in vae.modules() if isinstance(m, QwenImageCausalConv3d)]

    def fast_forward(conv, x, cache_x=None):
        if x.shape[2] != 1 or cache_x is not None:
            return QwenImageCausalConv3d.forward(conv, x, cache_x)
        pad_w0, pad_w1, pad_h0, pad_h1 = conv._padding[:4]
        x2 = F.pad(x[:, :, 0], (pad_w0, pad_w1, pad_h0, pad_h1))
        out = F.conv2d(x2, conv.weight[:, :, -1], conv.bias, conv.stride[1:], 0, conv.dilation[1:], conv.groups)
        return out.unsqueeze(2)

    for conv in convs:
        conv.forward = fast_forward.__get__(conv)
    try:
        yield vae
    finally:
        for conv in convs:
            del conv.forward


def _posterior(vae, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean, logvar) of the posterior for [B, 3, H, W] pixels."""
    h = vae._encode(pixels.unsqueeze(2))
    mean, logvar = h.chunk(2, dim=1)
    return mean, logvar.clamp(-30.0, 20.0)


def _decode_unclamped(vae, z: torch.Tensor) -> torch.Tensor:
    """`vae.decode` without its final clamp to [-1, 1] (which blocks gradients); [B, 3, H, W]."""
    vae.clear_cache()
    x = vae.post_quant_conv(z)
    out = vae.decoder(x[:, :, :1], feat_cache=vae._feat_map, feat_idx=[0])
    vae.clear_cache()
    return out[:, :, 0]


def train_vae(seed: int, steps: int, batch: int = 16, lr: float = 5e-4, warmup: int = 30, check_every: int = 50, check_from: int = 150, log=print) -> AutoencoderKLQwenImage:
    """Train a pocket VAE from `seed` for at most `steps` steps on freshly rendered training-scene pictures.

    From step `check_from` on, every `check_every` steps the checker reads reconstructions of *training-scene*
    validation pictures; training stops early once every judgement is right on all of them (the held-out
    ceiling is measured afterwards, on pictures the stopping rule never saw).
    """
    val_images, val_scenes = world.make_batch(64, seed=999_983)
    vae = build_vae(seed).train()
    optimizer = torch.optim.Adam(vae.parameters(), lr=lr, betas=(0.9, 0.99))

    def lr_at(step):
        if step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, steps - warmup)))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_at)
    start = time.time()
    with single_frame_convs(vae):
        for step in range(steps):
            images, _ = world.make_batch(batch, seed=seed * 1_000_003 + step)
            pixels = world.to_model_pixels(images)
            mean, logvar = _posterior(vae, pixels)
            recon = _decode_unclamped(vae, mean)
            kl = 0.5 * (mean.pow(2) + logvar.exp() - 1 - logvar).mean()
            loss = F.mse_loss(recon, pixels) + 0.5 * F.l1_loss(recon, pixels) + 1e-5 * kl
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
            optimizer.step()
            scheduler.step()
            if step % 25 == 0 or step == steps - 1:
                log(f"vae seed {seed} step {step} loss {loss.item():.4f} {time.time() - start:.0f}s")
            if step >= check_from and (step + 1) % check_every == 0:
                vae.eval()
                val = checker.score(reconstruct(vae, val_images), val_scenes)
                vae.train()
                log(f"vae seed {seed} step {step + 1} validation {val}")
                if val["all"] == 1.0:
                    break
    vae.trained_steps = step + 1  # read by build.py's report
    return vae.eval()


@torch.no_grad()
def reconstruct(vae: AutoencoderKLQwenImage, images):
    """uint8 pictures -> uint8 reconstructions through the stock encode (posterior mode) and decode."""
    pixels = world.to_model_pixels(images).unsqueeze(2)
    z = vae.encode(pixels).latent_dist.mode()
    return world.from_model_pixels(vae.decode(z).sample[:, :, 0])


def held_out_set(renders_per_scene: int = 4):
    """uint8 pictures and scenes of every held-out caption (fixed render seeds): the evaluation set."""
    import numpy as np

    scenes = [s for s in world.HELD_OUT for _ in range(renders_per_scene)]
    images = np.stack([world.render(s, 10_000 + i) for i, s in enumerate(scenes)])
    return images, scenes


def ceiling(vae: AutoencoderKLQwenImage) -> dict[str, float]:
    """Checker score on reconstructions of held-out pictures: the best a model decoding through this VAE can get."""
    images, scenes = held_out_set()
    return checker.score(reconstruct(vae, images), scenes)


@torch.no_grad()
def set_latent_statistics(vae: AutoencoderKLQwenImage, count: int = 512, seed: int = 7) -> None:
    """Write per-channel mean/std of the latents of `count` training pictures into the VAE config."""
    images, _ = world.make_batch(count, seed=seed)
    chunks = [images[i : i + 64] for i in range(0, count, 64)]
    z = torch.cat([vae.encode(world.to_model_pixels(c).unsqueeze(2)).latent_dist.mode() for c in chunks])
    dims = (0, 2, 3, 4)
    vae.register_to_config(
        latents_mean=[round(v, 5) for v in z.mean(dims).tolist()],
        latents_std=[round(v, 5) for v in z.std(dims).tolist()],
    )
