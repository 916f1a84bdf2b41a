"""What every model family must tell the toolkit, and the parts that are the same for all of them.

A family module (qwen_image.py, flux.py, qwen_image_edit.py) is the ONE place that knows a model's
component names, LoRA targets, prompt encoding, latent packing, how the stock transformer is called and how
latents become pixels. The sampler, trainer and manager only talk to this interface, so adding a model
family means adding one small module, not `if` chains elsewhere.

Conditioning is a plain `dict[str, Tensor]` (what the text encoder produced), so it can be cached on disk
by the trainer and kept after the text encoder is evicted.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

from ..schedule import PhaseSplit, image_seq_len

if TYPE_CHECKING:  # torch is imported where tensors are made: a dataset check needs the family, not torch
    import torch

Conditioning = dict[str, "torch.Tensor"]


def conditioning_to(cond: Conditioning, device, dtype) -> Conditioning:
    """`cond` on `device`, its floating tensors in `dtype` (the one the transformer computes in); masks and ids keep
    their integer or bool dtype."""
    return {k: v.to(device, dtype) if v.is_floating_point() else v.to(device) for k, v in cond.items()}


@dataclass(frozen=True)
class TrainingRecipe:
    """The reference training defaults of a family (reference notes §4); a config file may override any field."""

    rank: int
    alpha: int
    learning_rate: float
    warmup_steps: int
    steps: int = 60
    optimizer: str = "adamw"
    caption_dropout: float = 0.1
    resolution: int = 1024


@dataclass
class LatentState:
    """Per-run latent bookkeeping that the transformer call needs besides the noisy latent itself."""

    latents: torch.Tensor
    height: int
    width: int
    extra: dict[str, Any] = field(default_factory=dict)


class ModelFamily:
    """Interface + shared helpers. Subclasses set the class attributes and implement the hooks."""

    name: ClassVar[str]
    pipeline_class_name: ClassVar[str]
    # Official Glance adapters for this family's base model, if published: (repo id, slow file, fast file).
    official_loras: ClassVar[tuple[str, str, str] | None] = None
    official_base_models: ClassVar[tuple[str, ...]] = ()
    # Published few-step LoRAs for this family's base model, by preset name (methods.PRESETS): (repo id, file).
    few_step_loras: ClassVar[dict[str, tuple[str, str]]] = {}
    lora_target_modules: ClassVar[tuple[str, ...]]
    recipe: ClassVar[TrainingRecipe]
    default_split: ClassVar[PhaseSplit] = PhaseSplit()
    default_true_cfg_scale: ClassVar[float] = 5.0
    needs_condition_image: ClassVar[bool] = False
    # Parameter-name fragments that only exist in this family's transformer (used to name a LoRA file's origin).
    signature_modules: ClassVar[tuple[str, ...]] = ()
    # Pipeline components that encode the prompt, and the ones the denoise stage computes with.
    text_encoders: ClassVar[tuple[str, ...]] = ("text_encoder",)
    denoise_components: ClassVar[tuple[str, ...]] = ("transformer",)
    # Shapes the memory planner needs beyond the configs: text tokens the transformer sees per prompt at generation
    # (a typical prompt) and in training (the recipe's max_sequence_length), the transformer's MLP width ratio, and
    # for edit models the input image's area and the vision tokens it adds to the prompt.
    generate_text_tokens: ClassVar[int] = 128
    train_text_tokens: ClassVar[int] = 1024
    mlp_ratio: ClassVar[float] = 4.0
    condition_image_area: ClassVar[int] = 0
    vision_tokens: ClassVar[int] = 0
    # Batched CFG pads the prompt and the negative prompt to one length and masks the padding in attention.
    masks_batched_prompts: ClassVar[bool] = False
    # The pipeline asks its text encoder for every layer's hidden states (they stay alive through the forward).
    text_encoder_hidden_states: ClassVar[bool] = False
    # Key prefix of the LoRA files glance_lite writes: one that plain diffusers and ComfyUI both read together with
    # per-layer `.alpha` keys for this family (lora.py, README "LoRA files").
    lora_key_prefix: ClassVar[str] = "transformer."
    # Prefixes ComfyUI maps to this family's model for diffusers-named LoRA keys (comfy/lora.py, model_lora_keys_unet).
    comfyui_lora_prefixes: ClassVar[tuple[str, ...]] = ("transformer.",)

    # ---- loading -------------------------------------------------------------------------------
    @property
    def pipeline_class(self):
        import diffusers

        return getattr(diffusers, self.pipeline_class_name)

    def extra_load_kwargs(self, path: str, **hub_kwargs) -> dict:
        """Components that plain `from_pretrained` cannot build here (e.g. a processor without torchvision)."""
        return {}

    # ---- geometry ------------------------------------------------------------------------------
    def vae_scale_factor(self, pipe) -> int:
        return pipe.vae_scale_factor

    def seq_len(self, pipe, height: int, width: int) -> int:
        """Packed image tokens at this size: drives the resolution-dependent schedule shift."""
        return image_seq_len(height, width, self.vae_scale_factor(pipe))

    # ---- hooks every family implements ---------------------------------------------------------
    def encode_prompt(self, pipe, prompt: str, device, image=None) -> Conditioning:
        raise NotImplementedError

    def prepare_latents(self, pipe, height, width, generator, dtype, device, image=None) -> LatentState:
        raise NotImplementedError

    def velocity(self, transformer, state: LatentState, latents, timestep, cond: Conditioning) -> torch.Tensor:
        raise NotImplementedError

    def combine_guidance(self, cond_v: torch.Tensor, uncond_v: torch.Tensor, scale: float) -> torch.Tensor:
        """True CFG as the stock pipeline of this family does it (no rescale unless overridden)."""
        return uncond_v + scale * (cond_v - uncond_v)

    def decode(self, pipe, latents: torch.Tensor, height: int, width: int, output_type: str = "pil"):
        raise NotImplementedError

    # ---- batched CFG (optional: a family that cannot batch its two conditionings returns None) ---
    def batch_conditions(self, cond: Conditioning, uncond: Conditioning) -> Conditioning | None:
        return None

    def batched_state(self, state: LatentState) -> LatentState:
        """The LatentState for a batch holding the conditional and unconditional copies of one latent."""
        raise NotImplementedError

    # ---- the input image of edit families ------------------------------------------------------
    def condition_size(self, image) -> tuple[int, int]:
        """(width, height) the input image is resized to before it conditions the model."""
        raise ValueError(f"{self.name} models take no input image.")

    def condition_pixels(self, pipe, image) -> tuple[torch.Tensor, tuple[int, int]]:
        """The input image as the pipeline feeds it to the VAE: ([1, 3, H, W] in [-1, 1], (W, H))."""
        raise ValueError(f"{self.name} models take no input image.")

    def encode_image_latents(self, pipe, pixels: torch.Tensor, generator=None) -> torch.Tensor:
        """Clean training latents, packed as the transformer consumes them ([B, tokens, channels])."""
        raise NotImplementedError

    def training_state(self, pipe, latents: torch.Tensor, height: int, width: int, condition=None) -> LatentState:
        """The LatentState the trainer passes to `velocity` for a batch of packed latents."""
        raise NotImplementedError

    # ---- shared helpers ------------------------------------------------------------------------
    @staticmethod
    def timestep_tensor(timestep: float, latents: torch.Tensor) -> torch.Tensor:
        """The model input for a 0..1000 timestep, built with the same ops as the stock pipelines (bit-exact)."""
        import torch

        t = torch.tensor(timestep, dtype=torch.float32, device=latents.device)
        return t.expand(latents.shape[0]).to(latents.dtype) / 1000

    def describe_lora_origin(self, module_names) -> str | None:
        """'qwen-image' etc. if these module names look like this family's transformer."""
        names = list(module_names)
        if any(sig in n for n in names for sig in self.signature_modules):
            return self.name
        return None
