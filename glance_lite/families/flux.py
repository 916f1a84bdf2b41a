"""FLUX.1-dev (12B MMDiT, CLIP-L + T5-XXL, 16-channel VAE): everything glance_lite needs to know.

FLUX.1-dev is guidance-distilled: the transformer takes a guidance value (3.5 by default) instead of a
second, unconditional pass. The stock `FluxPipeline` therefore runs true CFG only when asked
(`true_cfg_scale > 1`), with a plain combination (no norm rescale); glance_lite keeps those defaults, so a
Glance run is 10 forwards against 50 for the base model.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .base import Conditioning, LatentState, ModelFamily, TrainingRecipe

if TYPE_CHECKING:
    import torch

GENERATION_MAX_SEQUENCE_LENGTH = 512
DISTILLED_GUIDANCE = 3.5


class FluxFamily(ModelFamily):
    name = "flux"
    pipeline_class_name = "FluxPipeline"
    official_base_models = ("black-forest-labs/FLUX.1-dev",)
    lora_target_modules = ("to_q", "to_k", "to_v", "to_out.0")
    recipe = TrainingRecipe(rank=16, alpha=64, learning_rate=5e-4, warmup_steps=0, optimizer="adamw")
    default_true_cfg_scale = 1.0
    signature_modules = ("single_transformer_blocks", "norm1_context")
    text_encoders = ("text_encoder", "text_encoder_2")  # CLIP-L (pooled) and T5-XXL
    generate_text_tokens = 512  # T5 is padded to 512 and attended without a mask
    train_text_tokens = 512

    def encode_prompt(self, pipe, prompt: str, device, image=None) -> Conditioning:
        embeds, pooled, text_ids = pipe.encode_prompt(
            prompt=prompt, prompt_2=None, device=device, max_sequence_length=GENERATION_MAX_SEQUENCE_LENGTH
        )
        return {"prompt_embeds": embeds, "pooled_prompt_embeds": pooled, "text_ids": text_ids}

    def _state(self, pipe, latents, height, width, img_ids) -> LatentState:
        import torch

        guidance = None
        if pipe.transformer.config.guidance_embeds:
            guidance = torch.full([1], DISTILLED_GUIDANCE, device=latents.device, dtype=torch.float32)
            guidance = guidance.expand(latents.shape[0])
        return LatentState(latents, height, width, {"img_ids": img_ids, "guidance": guidance})

    def prepare_latents(self, pipe, height, width, generator, dtype, device, image=None) -> LatentState:
        channels = pipe.transformer.config.in_channels // 4
        latents, img_ids = pipe.prepare_latents(1, channels, height, width, dtype, device, generator)
        return self._state(pipe, latents, height, width, img_ids)

    def training_state(self, pipe, latents, height, width, condition=None) -> LatentState:
        scale = self.vae_scale_factor(pipe) * 2
        img_ids = pipe._prepare_latent_image_ids(
            latents.shape[0], height // scale, width // scale, latents.device, latents.dtype
        )
        return self._state(pipe, latents, height, width, img_ids)

    def velocity(self, transformer, state: LatentState, latents, timestep, cond: Conditioning) -> torch.Tensor:
        return transformer(
            hidden_states=latents,
            timestep=timestep,
            guidance=state.extra["guidance"],
            pooled_projections=cond["pooled_prompt_embeds"],
            encoder_hidden_states=cond["prompt_embeds"],
            txt_ids=cond["text_ids"],
            img_ids=state.extra["img_ids"],
            joint_attention_kwargs={},
            return_dict=False,
        )[0]

    def batch_conditions(self, cond, uncond):
        """T5 embeddings are padded to a fixed length, so both conditionings stack as they are."""
        import torch

        if cond["prompt_embeds"].shape != uncond["prompt_embeds"].shape:
            return None
        return {
            "prompt_embeds": torch.cat([cond["prompt_embeds"], uncond["prompt_embeds"]]),
            "pooled_prompt_embeds": torch.cat([cond["pooled_prompt_embeds"], uncond["pooled_prompt_embeds"]]),
            "text_ids": cond["text_ids"],
        }

    def batched_state(self, state):
        import torch

        guidance = state.extra["guidance"]
        extra = dict(state.extra, guidance=None if guidance is None else guidance.repeat(2))
        return LatentState(torch.cat([state.latents] * 2), state.height, state.width, extra)

    def decode(self, pipe, latents, height, width, output_type="pil"):
        vae = pipe.vae
        latents = pipe._unpack_latents(latents, height, width, self.vae_scale_factor(pipe))
        latents = (latents / vae.config.scaling_factor) + vae.config.shift_factor
        image = vae.decode(latents.to(device=vae.device, dtype=vae.dtype), return_dict=False)[0]
        return pipe.image_processor.postprocess(image, output_type=output_type)

    def encode_image_latents(self, pipe, pixels, generator=None):
        vae = pipe.vae
        latents = vae.encode(pixels.to(device=vae.device, dtype=vae.dtype)).latent_dist.mode()
        latents = (latents - vae.config.shift_factor) * vae.config.scaling_factor
        b, c, h, w = latents.shape
        return pipe._pack_latents(latents, b, c, h, w)

    # ---- memory simulation ---------------------------------------------------------------------
    def simulation_inputs(self, transformer_config, batch, height, width, text_tokens, dtype, device, padding_mask):
        """(state, latents, timestep, cond) for one `velocity` call at these shapes (graph_memory runs it on meta)."""
        import torch
        from diffusers import FluxPipeline

        if padding_mask:
            raise ValueError("FLUX attends to its padded T5 tokens without a mask: padding_mask does not apply.")
        rows, cols = height // 16, width // 16  # VAE 8x, then 2x2 latent patches
        latents = torch.randn(batch, rows * cols, transformer_config["in_channels"], dtype=dtype, device=device)
        text_width = transformer_config["joint_attention_dim"]
        pooled_width = transformer_config["pooled_projection_dim"]
        cond = {
            "prompt_embeds": torch.randn(batch, text_tokens, text_width, dtype=dtype, device=device),
            "pooled_prompt_embeds": torch.randn(batch, pooled_width, dtype=dtype, device=device),
            "text_ids": torch.zeros(text_tokens, 3, dtype=dtype, device=device),
        }
        guidance = None
        if transformer_config.get("guidance_embeds"):
            guidance = torch.full([batch], DISTILLED_GUIDANCE, dtype=torch.float32, device=device)
        img_ids = FluxPipeline._prepare_latent_image_ids(batch, rows, cols, device, dtype)
        state = LatentState(latents, height, width, {"img_ids": img_ids, "guidance": guidance})
        return state, latents, self.timestep_tensor(1000.0, latents), cond
