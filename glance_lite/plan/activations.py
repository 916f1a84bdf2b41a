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


@dataclass(frozen=True)
class ActivationTerms:
    """A component's activation bytes in a stage, as named terms: the formula's live tensors (what the graph
    simulation measures), the largest dequantizing temporary of quantized weights (not in the graph), and the
    allocator's rounding and fragmentation headroom (not in the graph either)."""

    formula: int
    dequant: int = 0
    slack: float = ACTIVATION_SLACK

    def total(self, live: int | None = None) -> int:
        """The stage's activation bytes, with `live` (e.g. a simulated figure) in place of the formula."""
        return int(((self.formula if live is None else live) + self.dequant) * self.slack)

# Transformer activations, in units of one hidden-state tensor [batch, tokens, hidden] (attention through SDPA
# flash / memory-efficient kernels: no tokens^2 score matrix). The units were first counted by reading the diffusers
# 0.42 block forwards, then set to what the real graph holds (glance_lite.graph_memory on the meta device, 1024^2;
# benchmarks/results/graph-memory-measurements.md): Qwen-Image's forward peaks at 14.8 units (its image-only MLP
# step), FLUX.1-dev's at 17.2 (a single block), so 16 units serve both within 8 %.
#   Inference, attention moment: the block input (held by the caller), normed + modulated inputs (block locals),
#   and inside the processor q/k/v per stream, their joint concatenations, the attention output, its contiguous
#   slice and projection: 3 + 9 units.
INFER_ATTENTION_UNITS = 12.0
#   Inference, MLP moment: 7 units of block locals (input, normed/modulated x2, attention output, residual sum)
#   plus the MLP hidden (mlp_ratio units) twice while the GELU runs.
INFER_MLP_BASE_UNITS = 7.0
INFER_MLP_COPIES = 2.0
#   Outside the blocks: embedded latents, text states, the output, RoPE tables, CFG combination.
INFER_OUTSIDE_UNITS = 1.0
#   A padding mask (Qwen-Image when two prompts of different lengths share a batch) costs nothing extra: SDPA turns
#   the boolean [B, 1, 1, L] mask into an additive one of that shape and the memory-efficient kernel reads it as a
#   broadcast view (graph_memory's docstring has the reading of the code; a GPU check confirms it).
#   Training, one block re-run with autograd during backward (gradient checkpointing): tensors saved for backward
#   (modulated inputs, q/k, RoPE operands, joint q/k/v, attention output, gates, norm inputs) plus the MLP input to
#   GELU and its output (2 x mlp_ratio), plus gradients in flight. Measured on the graph (full precision, no
#   autocast): 24 units above the block inputs for Qwen-Image.
TRAIN_BLOCK_SAVED_UNITS = 12.0
TRAIN_MLP_SAVED_COPIES = 2.0
TRAIN_GRAD_UNITS = 3.0
#   Checkpointed training keeps each block's input (image + text hidden states) until backward reaches it.
TRAIN_CHECKPOINT_UNITS_PER_BLOCK = 1.0
#   Outside the blocks: embedded latents and text, the prediction, target and loss, and their gradients.
TRAIN_OUTSIDE_UNITS = 1.0
#   Mixed precision: autocast's copies (fp32 norms and softmax inputs, half-precision casts of the LoRA path) kept for
#   backward in the block being recomputed: 22 units on the graph (Qwen-Image 22.3, FLUX.1-dev 21.1).
TRAIN_AUTOCAST_UNITS = 22.0
#   Trainable LoRA weights are kept in fp32 under mixed precision, and so are their gradients.
LORA_TRAIN_PARAM_BYTES = 4
LORA_GRAD_BYTES = 4
OPTIMIZER_STATE_BYTES = {"adamw8bit": 2, "adamw": 8}  # per trainable parameter (two moments)

# Text encoder forward, per prompt token: the hidden states it returns (every layer's when the pipeline asks for
# them, as Qwen-Image does with its Qwen2.5-VL; the last one otherwise), one layer's attention and MLP temporaries,
# the logits of a causal-LM head, and for T5-style encoders (relative position bias: eager attention) the score
# matrices [heads, tokens, tokens].
TEXT_LIVE_HIDDEN = 2.0
TEXT_LIVE_MLP = 2.0
TEXT_SCORE_COPIES = 2.0

# VAE, elements held at the peak per output pixel and per channel of the full-resolution stage (Qwen-Image:
# `base_dim` 96, FLUX: `block_out_channels[0]` 128), times the dtype size. Live tensors on the graph at 1024^2
# (graph_memory, diffusers 0.42.1): Qwen-Image 1730 elements per pixel, FLUX 768. The Qwen-Image VAE caches the
# input of every causal conv (feat_cache) while it decodes: twice the FLUX VAE per pixel. (A first measure, the
# peak RSS of a CPU decode, was 21 % / 30 % higher: CPU convolution scratch, which a GPU's cuDNN workspace replaces
# and the graph cannot see.) Encoding was measured as RSS only (512^2: Qwen-Image 1277, FLUX 652 per pixel) and
# is scaled by the same correction as decoding.
VAE_ELEMENTS_PER_PIXEL_PER_CHANNEL = {
    "AutoencoderKLQwenImage": {"decode": 1730.0 / 96, "encode": 990.0 / 96},
    "AutoencoderKL": {"decode": 768.0 / 128, "encode": 475.0 / 128},
}
# Tiled decoding: one tile in flight at about the full image's cost per pixel, plus every decoded (overlapping)
# tile and the blended result. On the graph: Qwen-Image, 1024^2 in 256^2 tiles, 118.7 M elements.
VAE_TILE_OVERHEAD = 0.94
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


def transformer_inference_activations(inv: Inventory, tokens: Tokens, batch: int, dtype: str, mlp_ratio: float) -> int:
    """Peak activation bytes of one no-grad transformer forward; only one block's temporaries live at a time.

    unit = batch x tokens x hidden x dtype
    bytes = (max(INFER_ATTENTION_UNITS, INFER_MLP_BASE_UNITS + INFER_MLP_COPIES x mlp_ratio) + INFER_OUTSIDE_UNITS) x unit
    """
    unit = batch * tokens.total * transformer_hidden_size(inv) * DTYPE_BYTES[dtype]
    mlp = INFER_MLP_BASE_UNITS + INFER_MLP_COPIES * mlp_ratio
    return int((max(INFER_ATTENTION_UNITS, mlp) + INFER_OUTSIDE_UNITS) * unit)


def transformer_training_activations(
    inv: Inventory, tokens: Tokens, batch: int, dtype: str, mlp_ratio: float, checkpointing: bool, mixed: bool = True
) -> int:
    """Peak activation bytes of one training step (forward + backward).

    With gradient checkpointing: every block's input is kept (TRAIN_CHECKPOINT_UNITS_PER_BLOCK x blocks) and one
    block at a time is re-run with autograd (TRAIN_BLOCK_SAVED_UNITS + TRAIN_MLP_SAVED_COPIES x mlp_ratio) while
    gradients flow (TRAIN_GRAD_UNITS), plus autocast's copies under mixed precision (TRAIN_AUTOCAST_UNITS). Without
    checkpointing every block keeps its saved tensors.
    """
    unit = batch * tokens.total * transformer_hidden_size(inv) * DTYPE_BYTES[dtype]
    block = TRAIN_BLOCK_SAVED_UNITS + TRAIN_MLP_SAVED_COPIES * mlp_ratio + (TRAIN_AUTOCAST_UNITS if mixed else 0.0)
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


def text_encoder_tokens(inv: Inventory, tokens: int) -> int:
    """The prompt tokens an encoder sees: CLIP stops at its 77 positions whatever the prompt's length."""
    config = inv.config.get("text_config", inv.config)
    limit = config.get("max_position_embeddings") or inv.config.get("max_position_embeddings")
    return min(tokens, int(limit)) if limit and limit < 1024 else tokens


def text_encoder_activations(inv: Inventory, tokens: int, dtype: str, all_hidden_states: bool = True) -> int:
    """Bytes of one prompt's forward: the returned hidden states (every layer's, or the last), one layer's
    attention and MLP temporaries, the logits of a causal-LM head, T5's score matrices (see the constants)."""
    hidden, inter, layers, vocab = _text_dims(inv)
    states = layers + 1 if all_hidden_states else 1
    per_token = hidden * (states + TEXT_LIVE_HIDDEN) + inter * TEXT_LIVE_MLP + (vocab if inv.has_lm_head else 0)
    if "relative_attention_num_buckets" in inv.config:  # T5: position bias added to materialised scores
        per_token += TEXT_SCORE_COPIES * int(inv.config.get("num_heads", 1)) * tokens
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
