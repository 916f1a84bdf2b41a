"""Qwen-Image (20B MMDiT, Qwen2.5-VL text encoder, 3-D causal VAE): everything glance_lite needs to know.

Calls mirror `diffusers.QwenImagePipeline.__call__` (0.42) so a base-N run through the glance_lite sampler
reproduces the stock pipeline bit for bit; only the pipeline's own helpers and the stock transformer forward
are used.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .base import Conditioning, LatentState, ModelFamily, TrainingRecipe

if TYPE_CHECKING:
    import torch

# Stock `QwenImagePipeline.__call__` default; training uses the recipe's 1024 (reference notes §4).
GENERATION_MAX_SEQUENCE_LENGTH = 512


class QwenImageFamily(ModelFamily):
    name = "qwen-image"
    pipeline_class_name = "QwenImagePipeline"
    official_loras = ("CSU-JPG/Glance", "glance_qwen_slow.safetensors", "glance_qwen_fast.safetensors")
    official_base_models = ("Qwen/Qwen-Image",)
    few_step_loras = {  # ModelTC / lightx2v, V2.0 (2025-09)
        "lightning-8": ("lightx2v/Qwen-Image-Lightning", "Qwen-Image-Lightning-8steps-V2.0.safetensors"),
        "lightning-4": ("lightx2v/Qwen-Image-Lightning", "Qwen-Image-Lightning-4steps-V2.0.safetensors"),
    }
    lora_target_modules = (
        "to_q", "to_k", "to_v", "add_q_proj", "add_k_proj", "add_v_proj", "to_out.0", "to_add_out",
        "img_mlp.net.2", "img_mod.1", "txt_mlp.net.2", "txt_mod.1",
    )  # fmt: skip
    recipe = TrainingRecipe(rank=32, alpha=128, learning_rate=3e-4, warmup_steps=10, optimizer="adamw8bit")
    signature_modules = ("img_mod", "txt_mlp")
    # A typical prompt is well under 128 tokens (the pipeline trims the padding); the recipe trains with 1024.
    generate_text_tokens = 128
    train_text_tokens = 1024
    masks_batched_prompts = True  # prompt and negative prompt differ in length
    text_encoder_hidden_states = True  # encode_prompt reads the last of `output_hidden_states=True`
    # diffusers converts a Qwen-Image file with `.alpha` keys and prefixes every key with `transformer.` itself, so
    # `transformer.`-prefixed keys end up doubled and fail to load; `diffusion_model.` is stripped first.
    lora_key_prefix = "diffusion_model."
    comfyui_lora_prefixes = ("diffusion_model.", "transformer.", "")

    # ---- text ----------------------------------------------------------------------------------
    def encode_prompt(self, pipe, prompt: str, device, image=None) -> Conditioning:
        embeds, mask = pipe.encode_prompt(
            prompt=prompt, device=device, max_sequence_length=GENERATION_MAX_SEQUENCE_LENGTH
        )
        cond = {"prompt_embeds": embeds}
        if mask is not None:
            cond["prompt_embeds_mask"] = mask
        return cond

    # ---- latents -------------------------------------------------------------------------------
    def _img_shapes(self, pipe, height: int, width: int, batch: int):
        scale = self.vae_scale_factor(pipe) * 2
        return [[(1, height // scale, width // scale)]] * batch

    def prepare_latents(self, pipe, height, width, generator, dtype, device, image=None) -> LatentState:
        channels = pipe.transformer.config.in_channels // 4
        latents = pipe.prepare_latents(1, channels, height, width, dtype, device, generator)
        return LatentState(latents, height, width, {"img_shapes": self._img_shapes(pipe, height, width, 1)})

    def training_state(self, pipe, latents, height, width, condition=None) -> LatentState:
        return LatentState(latents, height, width, {"img_shapes": self._img_shapes(pipe, height, width, latents.shape[0])})

    # ---- transformer ---------------------------------------------------------------------------
    def velocity(self, transformer, state: LatentState, latents, timestep, cond: Conditioning) -> torch.Tensor:
        return transformer(
            hidden_states=latents,
            timestep=timestep,
            guidance=None,
            encoder_hidden_states_mask=cond.get("prompt_embeds_mask"),
            encoder_hidden_states=cond["prompt_embeds"],
            img_shapes=state.extra["img_shapes"],
            attention_kwargs={},
            return_dict=False,
        )[0]

    def batch_conditions(self, cond, uncond):
        """Pad both prompts to one length; the mask hides the padding from attention."""
        import torch

        length = max(cond["prompt_embeds"].shape[1], uncond["prompt_embeds"].shape[1])
        embeds, masks = [], []
        for c in (cond, uncond):
            e = c["prompt_embeds"]
            m = c.get("prompt_embeds_mask")
            m = torch.ones(e.shape[:2], dtype=torch.long, device=e.device) if m is None else m
            embeds.append(torch.nn.functional.pad(e, (0, 0, 0, length - e.shape[1])))
            masks.append(torch.nn.functional.pad(m, (0, length - m.shape[1])))
        mask = torch.cat(masks)
        batched = {"prompt_embeds": torch.cat(embeds)}
        if not mask.all():  # an all-ones mask would only make attention build a bias it does not need
            batched["prompt_embeds_mask"] = mask
        return batched

    def batched_state(self, state):
        import torch

        extra = dict(state.extra, img_shapes=state.extra["img_shapes"] * 2)
        if "image_latents" in extra:
            extra["image_latents"] = torch.cat([extra["image_latents"]] * 2)
        return LatentState(torch.cat([state.latents] * 2), state.height, state.width, extra)

    def combine_guidance(self, cond_v, uncond_v, scale):
        """Stock Qwen-Image true CFG: combine, then rescale each token to the conditional prediction's norm."""
        import torch

        comb = uncond_v + scale * (cond_v - uncond_v)
        cond_norm = torch.norm(cond_v, dim=-1, keepdim=True)
        comb_norm = torch.norm(comb, dim=-1, keepdim=True)
        return comb * (cond_norm / comb_norm)

    # ---- VAE -----------------------------------------------------------------------------------
    def _latent_stats(self, vae, like: torch.Tensor):
        import torch

        shape = (1, vae.config.z_dim, 1, 1, 1)
        mean = torch.tensor(vae.config.latents_mean).view(shape).to(like.device, like.dtype)
        std = torch.tensor(vae.config.latents_std).view(shape).to(like.device, like.dtype)
        return mean, std

    def decode(self, pipe, latents, height, width, output_type="pil"):
        vae = pipe.vae
        latents = pipe._unpack_latents(latents, height, width, self.vae_scale_factor(pipe))
        latents = latents.to(device=vae.device, dtype=vae.dtype)
        mean, std = self._latent_stats(vae, latents)
        latents = latents / (1.0 / std) + mean
        image = vae.decode(latents, return_dict=False)[0][:, :, 0]
        return pipe.image_processor.postprocess(image, output_type=output_type)

    def encode_image_latents(self, pipe, pixels, generator=None):
        """pixels: [B, 3, H, W] in [-1, 1] -> normalized, packed latents (the space the transformer denoises)."""
        vae = pipe.vae
        pixels = pixels.to(device=vae.device, dtype=vae.dtype).unsqueeze(2)
        latents = vae.encode(pixels).latent_dist.mode()
        mean, std = self._latent_stats(vae, latents)
        latents = (latents - mean) / std
        b, c, _, h, w = latents.shape  # [B, C, frames=1, H, W] packs like [B, C, H, W]
        return pipe._pack_latents(latents, b, c, h, w)

    # ---- memory simulation ---------------------------------------------------------------------
    def simulation_inputs(self, transformer_config, batch, height, width, text_tokens, dtype, device, padding_mask):
        """(state, latents, timestep, cond) for one `velocity` call at these shapes (graph_memory runs it on meta).

        `padding_mask`: batched CFG of two prompts of different lengths; the last prompt's final quarter is padding.
        """
        import torch

        side = 16  # pixels per packed token: VAE 8x, then 2x2 latent patches
        rows, cols = height // side, width // side
        latents = torch.randn(batch, rows * cols, transformer_config["in_channels"], dtype=dtype, device=device)
        embeds = torch.randn(batch, text_tokens, transformer_config["joint_attention_dim"], dtype=dtype, device=device)
        cond = {"prompt_embeds": embeds}
        if padding_mask:
            mask = torch.ones(batch, text_tokens, dtype=torch.long, device=device)
            mask[-1, text_tokens - text_tokens // 4 :] = 0
            cond["prompt_embeds_mask"] = mask
        state = LatentState(latents, height, width, {"img_shapes": [[(1, rows, cols)]] * batch})
        return state, latents, self.timestep_tensor(1000.0, latents), cond
