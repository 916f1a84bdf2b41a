"""Activation memory of each stage: formulas from the shapes, with every constant in one place.

Units are tensors the size of one hidden state [batch, tokens, hidden] in the compute dtype; the counts come from
reading the diffusers / transformers forwards (attention through fused SDPA kernels: no tokens x tokens score
matrix). `graph_memory` measures the same stages on the real graph (meta device), and `plan --simulate` puts the
two side by side; the constants here are kept in agreement with those measurements.
"""

from __future__ import annotations

from dataclasses import dataclass

from .inventory import Inventory
from .storage import DTYPE_BYTES

GiB = 2**30
# The caching allocator rounds and fragments: activations (many short-lived tensors) get this much headroom.
ACTIVATION_SLACK = 1.10

# Transformer activations, in units of one hidden-state tensor [batch, tokens, hidden] (attention through SDPA
# flash / memory-efficient kernels: no tokens^2 score matrix). Counted by reading the diffusers 0.42 block forwards.
#   Inference, attention moment: the block input (held by the caller), normed + modulated inputs (block locals),
#   and inside the processor q/k/v per stream, their joint concatenations, the attention output, its contiguous
#   slice and projection: 3 + 9 units.
INFER_ATTENTION_UNITS = 12.0
#   Inference, MLP moment: 7 units of block locals (input, normed/modulated x2, attention output, residual sum)
#   plus the MLP hidden (mlp_ratio units) twice while the GELU runs.
INFER_MLP_BASE_UNITS = 7.0
INFER_MLP_COPIES = 2.0
#   Outside the blocks: embedded latents, text states, the output, RoPE tables, CFG combination.
INFER_OUTSIDE_UNITS = 3.0
#   A padding mask (Qwen-Image when two prompts of different lengths share a batch) makes SDPA expand it to a
#   [batch, heads, tokens, tokens] bias in the compute dtype for every attention call (torch 2.x mem-efficient
#   kernel; flash cannot take a mask). Counted when `FamilyShapes.masked_batched_attention` and batch > 1.
#   Training, one block re-run with autograd during backward (gradient checkpointing): tensors saved for backward
#   (modulated inputs, q/k before and after the norm, fp32 RoPE operands, joint q/k/v, attention output, gates,
#   norm inputs ~ 16 units) plus the MLP input to GELU and its output (2 x mlp_ratio), plus gradients in flight.
TRAIN_BLOCK_SAVED_UNITS = 16.0
TRAIN_MLP_SAVED_COPIES = 2.0
TRAIN_GRAD_UNITS = 6.0
#   Checkpointed training keeps each block's input (image + text hidden states) until backward reaches it.
TRAIN_CHECKPOINT_UNITS_PER_BLOCK = 1.0
#   Outside the blocks: embedded latents and text, the prediction, target and loss, and their gradients.
TRAIN_OUTSIDE_UNITS = 3.0
#   Trainable LoRA weights are kept in fp32 under mixed precision, and so are their gradients.
LORA_TRAIN_PARAM_BYTES = 4
LORA_GRAD_BYTES = 4
OPTIMIZER_STATE_BYTES = {"adamw8bit": 2, "adamw": 8}  # per trainable parameter (two moments)

# Text encoder forward, per prompt token: all hidden states are returned (output_hidden_states), plus attention
# and MLP temporaries of one layer and, for a causal LM head, the logits.
TEXT_LIVE_HIDDEN = 6.0
TEXT_LIVE_MLP = 3.0

# VAE, elements held at the peak per output pixel and per channel of the full-resolution stage (Qwen-Image:
# `base_dim` 96, FLUX: `block_out_channels[0]` 128), times the dtype size. Measured as the peak RSS above the
# loaded model while decoding 1024x1024 on CPU in fp32 with random weights (diffusers 0.42.1): Qwen-Image
# 8371 MiB (2093 elements per pixel; 2250 at 512^2), FLUX 3866 MiB (966; 1049 at 512^2). The Qwen-Image VAE
# caches the input of every causal conv (feat_cache) while it decodes: twice the FLUX VAE per pixel. Encoding
# 512x512: Qwen-Image 1277, FLUX 652 per pixel (about 0.57x / 0.62x of decoding at that size).
# cuDNN workspaces are not included.
VAE_ELEMENTS_PER_PIXEL_PER_CHANNEL = {
    "AutoencoderKLQwenImage": {"decode": 2100.0 / 96, "encode": 1200.0 / 96},
    "AutoencoderKL": {"decode": 1000.0 / 128, "encode": 620.0 / 128},
}
# Tiled decoding: one tile in flight costs more per pixel than a big image (fixed per-conv overhead: Qwen-Image
# 2737 elements per pixel at 256^2 vs 2093 at 1024^2), and every decoded (overlapping) tile plus the blended
# result are kept. Measured: Qwen-Image, 1024^2 in 256^2 tiles, fp32 on CPU: 874 MiB (this model: 862 MiB).
VAE_TILE_OVERHEAD = 1.55
VAE_TILED_OUTPUT_ELEMENTS_PER_PIXEL = 12.0


@dataclass(frozen=True)
class Tokens:
    image: int
    text: int
    condition: int = 0

    @property
    def total(self) -> int:
        return self.image + self.text + self.condition


def transformer_hidden_size(inv: Inventory) -> int:
    config = inv.config
    return int(config["num_attention_heads"]) * int(config["attention_head_dim"])


def transformer_inference_activations(
    inv: Inventory, tokens: Tokens, batch: int, dtype: str, mlp_ratio: float, attention_mask: bool = False
) -> int:
    """Peak activation bytes of one no-grad transformer forward; only one block's temporaries live at a time.

    unit = batch x tokens x hidden x dtype
    bytes = max(INFER_ATTENTION_UNITS x unit + mask, (INFER_MLP_BASE_UNITS + INFER_MLP_COPIES x mlp_ratio) x unit)
            + INFER_OUTSIDE_UNITS x unit,     mask = batch x heads x tokens^2 x dtype if attention_mask else 0
    """
    dtype_bytes = DTYPE_BYTES[dtype]
    unit = batch * tokens.total * transformer_hidden_size(inv) * dtype_bytes
    mask = batch * int(inv.config["num_attention_heads"]) * tokens.total**2 * dtype_bytes if attention_mask else 0
    attention = INFER_ATTENTION_UNITS * unit + mask
    mlp = (INFER_MLP_BASE_UNITS + INFER_MLP_COPIES * mlp_ratio) * unit
    return int(max(attention, mlp) + INFER_OUTSIDE_UNITS * unit)


def transformer_training_activations(
    inv: Inventory, tokens: Tokens, batch: int, dtype: str, mlp_ratio: float, checkpointing: bool
) -> int:
    """Peak activation bytes of one training step (forward + backward).

    With gradient checkpointing: every block's input is kept (TRAIN_CHECKPOINT_UNITS_PER_BLOCK x blocks) and one
    block at a time is re-run with autograd (TRAIN_BLOCK_SAVED_UNITS + TRAIN_MLP_SAVED_COPIES x mlp_ratio) while
    gradients flow (TRAIN_GRAD_UNITS). Without it every block keeps its saved tensors.
    """
    unit = batch * tokens.total * transformer_hidden_size(inv) * DTYPE_BYTES[dtype]
    block = TRAIN_BLOCK_SAVED_UNITS + TRAIN_MLP_SAVED_COPIES * mlp_ratio
    blocks = len(inv.blocks)
    if checkpointing:
        units = TRAIN_CHECKPOINT_UNITS_PER_BLOCK * blocks + block + TRAIN_GRAD_UNITS
    else:
        units = block * blocks + TRAIN_GRAD_UNITS
    return int(unit * (units + TRAIN_OUTSIDE_UNITS))


def _text_dims(inv: Inventory) -> tuple[int, int, int, int]:
    """(hidden, intermediate, layers, vocab) of a transformers text encoder's language model."""
    config = inv.config.get("text_config", inv.config)
    hidden = config.get("hidden_size") or config.get("d_model") or inv.config.get("hidden_size") or inv.config["d_model"]
    inter = config.get("intermediate_size") or config.get("d_ff") or inv.config.get("intermediate_size") or inv.config["d_ff"]
    layers = config.get("num_hidden_layers") or config.get("num_layers") or inv.config.get("num_hidden_layers") or 1
    vocab = config.get("vocab_size") or inv.config.get("vocab_size") or 0
    return int(hidden), int(inter), int(layers), int(vocab)


def text_encoder_activations(inv: Inventory, tokens: int, dtype: str) -> int:
    """Bytes of one prompt's forward: all hidden states kept + one layer's attention/MLP temporaries + the logits
    of a causal-LM head. tokens x (hidden x (layers + 1 + TEXT_LIVE_HIDDEN) + inter x TEXT_LIVE_MLP + vocab)."""
    hidden, inter, layers, vocab = _text_dims(inv)
    per_token = hidden * (layers + 1 + TEXT_LIVE_HIDDEN) + inter * TEXT_LIVE_MLP + (vocab if inv.has_lm_head else 0)
    return int(tokens * per_token * DTYPE_BYTES[dtype])


def vae_tile_side(inv: Inventory) -> int:
    """Output pixels per tile side when tiling: fixed 256 in AutoencoderKLQwenImage, `sample_size` in AutoencoderKL
    (1024 in FLUX.1-dev's config, so FLUX only tiles above 1024 px)."""
    if inv.class_name == "AutoencoderKLQwenImage":
        return 256
    return int(inv.config.get("sample_size", 1024))


def vae_width(inv: Inventory) -> int:
    """Channels of the VAE's full-resolution stage, which its activations scale with."""
    config = inv.config
    if "base_dim" in config:
        return int(config["base_dim"]) * int(config.get("dim_mult", [1])[0])
    return int(config.get("block_out_channels", [128])[0])


def vae_activations(inv: Inventory, height: int, width: int, dtype: str, tiling: bool, direction: str) -> int:
    """Bytes of a VAE decode/encode: measured elements per pixel and channel (VAE_ELEMENTS_PER_PIXEL_PER_CHANNEL)
    x full-resolution channels x pixels x dtype. With tiling, one tile is in flight (at VAE_TILE_OVERHEAD) plus
    the decoded tiles and the blended output."""
    table = VAE_ELEMENTS_PER_PIXEL_PER_CHANNEL.get(inv.class_name, VAE_ELEMENTS_PER_PIXEL_PER_CHANNEL["AutoencoderKLQwenImage"])
    per_pixel = table[direction] * vae_width(inv)
    pixels = height * width
    side = vae_tile_side(inv)
    if not tiling or pixels <= side * side:  # small enough: the VAE does not tile
        return int(per_pixel * pixels * DTYPE_BYTES[dtype])
    elements = per_pixel * VAE_TILE_OVERHEAD * side * side + VAE_TILED_OUTPUT_ELEMENTS_PER_PIXEL * pixels
    return int(elements * DTYPE_BYTES[dtype])
