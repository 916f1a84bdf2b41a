"""Qwen-Image-Edit: Qwen-Image plus an input image that conditions both the text encoder and the transformer.

Differences from Qwen-Image, and nothing else: the prompt is encoded together with the input image (a
vision-language prompt), the input image's VAE latents are appended to the noisy tokens at every step, and
the output keeps only the noisy tokens. The stock pipeline conditions at a ~1024x1024 area whatever the
output size; `condition_area` makes that choice explicit (tests use a small area to stay fast).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from .base import Conditioning, LatentState
from .qwen_image import QwenImageFamily

if TYPE_CHECKING:
    import torch

STOCK_CONDITION_AREA = 1024 * 1024


def calculate_dimensions(target_area: int, ratio: float) -> tuple[int, int]:
    """(width, height) of about `target_area` pixels at aspect `ratio` (width / height), each side rounded to a
    multiple of 32: the stock edit pipeline's arithmetic (diffusers' `calculate_dimensions`, checked equal in
    tests/test_schedule.py; importing it would import the whole edit pipeline)."""
    width = math.sqrt(target_area * ratio)
    height = width / ratio
    return round(width / 32) * 32, round(height / 32) * 32


class QwenImageEditFamily(QwenImageFamily):
    name = "qwen-image-edit"
    pipeline_class_name = "QwenImageEditPipeline"
    official_loras = None
    official_base_models = ("Qwen/Qwen-Image-Edit",)
    few_step_loras = {  # the Lightning files for the first Qwen-Image-Edit (V1.0); the 2509 / 2511 ones are other bases
        "lightning-8": ("lightx2v/Qwen-Image-Lightning", "Qwen-Image-Edit-Lightning-8steps-V1.0.safetensors"),
        "lightning-4": ("lightx2v/Qwen-Image-Lightning", "Qwen-Image-Edit-Lightning-4steps-V1.0.safetensors"),
    }
    needs_condition_image = True
    denoise_components = ("transformer", "vae")  # the input image is VAE-encoded inside the denoise stage
    condition_image_area = STOCK_CONDITION_AREA
    vision_tokens = 37 * 37  # a 1024x1024 input through the Qwen2-VL processor (28 px per merged token)

    def __init__(self, condition_area: int = STOCK_CONDITION_AREA):
        self.condition_area = condition_area

    def extra_load_kwargs(self, path: str, **hub_kwargs) -> dict:
        from ..processors import load_qwen2vl_processor

        return {"processor": load_qwen2vl_processor(path, **hub_kwargs)}

    def condition_size(self, image) -> tuple[int, int]:
        """(width, height) the input image is resized to, as the stock pipeline computes it."""
        return calculate_dimensions(self.condition_area, image.size[0] / image.size[1])

    def _resized(self, pipe, image):
        width, height = self.condition_size(image)
        return pipe.image_processor.resize(image, height, width), width, height

    def condition_pixels(self, pipe, image) -> tuple[torch.Tensor, tuple[int, int]]:
        """The input image resized and normalized as the stock pipeline does: ([1, 3, H, W] in [-1, 1], (W, H))."""
        resized, width, height = self._resized(pipe, image)
        return pipe.image_processor.preprocess(resized, height, width), (width, height)

    def encode_prompt(self, pipe, prompt: str, device, image=None) -> Conditioning:
        if image is None:
            raise ValueError("Qwen-Image-Edit needs an input image: pass image=<PIL image or path>.")
        resized, _, _ = self._resized(pipe, image)
        embeds, mask = pipe.encode_prompt(image=resized, prompt=prompt, device=device)
        cond = {"prompt_embeds": embeds}
        if mask is not None:
            cond["prompt_embeds_mask"] = mask
        return cond

    def _img_shapes(self, pipe, height, width, batch, cond_height=None, cond_width=None):
        scale = self.vae_scale_factor(pipe) * 2
        return [[(1, height // scale, width // scale), (1, cond_height // scale, cond_width // scale)]] * batch

    def prepare_latents(self, pipe, height, width, generator, dtype, device, image=None) -> LatentState:
        if image is None:
            raise ValueError("Qwen-Image-Edit needs an input image: pass image=<PIL image or path>.")
        pixels, (cond_w, cond_h) = self.condition_pixels(pipe, image)
        channels = pipe.transformer.config.in_channels // 4
        latents, image_latents = pipe.prepare_latents(
            pixels.unsqueeze(2), 1, channels, height, width, dtype, device, generator
        )
        shapes = self._img_shapes(pipe, height, width, 1, cond_h, cond_w)
        return LatentState(latents, height, width, {"img_shapes": shapes, "image_latents": image_latents})

    def training_state(self, pipe, latents, height, width, condition=None) -> LatentState:
        """condition: packed control-image latents [B, tokens, C] and their pixel size (height, width)."""
        image_latents, (cond_h, cond_w) = condition
        shapes = self._img_shapes(pipe, height, width, latents.shape[0], cond_h, cond_w)
        return LatentState(latents, height, width, {"img_shapes": shapes, "image_latents": image_latents})

    def velocity(self, transformer, state: LatentState, latents, timestep, cond: Conditioning) -> torch.Tensor:
        """The input image's tokens ride along after the noisy ones; only the noisy tokens' velocity is kept."""
        import torch

        model_input = torch.cat([latents, state.extra["image_latents"]], dim=1)
        return super().velocity(transformer, state, model_input, timestep, cond)[:, : latents.size(1)]

    # ---- memory simulation ---------------------------------------------------------------------
    def simulation_inputs(self, transformer_config, batch, height, width, text_tokens, dtype, device, padding_mask):
        """Qwen-Image's inputs plus the condition image's latent tokens, at `condition_area` as the stock pipeline.
        `text_tokens` should include the vision tokens the VL prompt adds."""
        import torch

        state, latents, timestep, cond = super().simulation_inputs(
            transformer_config, batch, height, width, text_tokens, dtype, device, padding_mask
        )
        cond_width, cond_height = calculate_dimensions(self.condition_area, width / height)
        shape = (1, cond_height // 16, cond_width // 16)
        image_latents = torch.randn(batch, shape[1] * shape[2], latents.shape[-1], dtype=dtype, device=device)
        state.extra["img_shapes"] = [[*shapes, shape] for shapes in state.extra["img_shapes"]]
        state.extra["image_latents"] = image_latents
        return state, latents, timestep, cond
