"""Offline stand-ins for Qwen-Image, FLUX.1-dev and Qwen-Image-Edit: tiny ones, and real-width ones.

Tests, CI and CPU demos need the real code paths (the same diffusers and transformers classes, prompt templates,
latent packing and LoRA target names) without tens of gigabytes of weights or a network. Each tiny pipeline keeps
the real model's configuration with its size knobs turned down (2-layer transformers, 32-wide text encoders,
16-channel VAEs that still downsample 8x), takes random weights from a fixed seed, is saved once under the cache
directory and is then loaded like any downloaded pipeline:

    QwenImagePipeline.from_pretrained(tiny_model_path("tiny/qwen-image"))

The Qwen tokenizer is shipped in `assets/qwen_tokenizer/`: all 256 byte-level symbols plus merges that make every
word of the pipelines' prompt templates a single token, so the template prefixes encode to 34 (Qwen-Image) and 64
(Qwen-Image-Edit) tokens as with the real tokenizer, and the pipelines drop exactly the template. The merges were
learned once by a plain BPE loop over the template words (ties broken alphabetically) and shipped as files, so no
run depends on a training step (`tokenizers`' BPE trainer is not deterministic across processes). CLIP and T5 get
character-level vocabularies built here; they need no particular token counts.

The real-width models (`realwidth/qwen-image`, `realwidth/flux`, `realwidth/qwen-image-edit`) keep every layer
width of the real models -- transformer hidden and joint-attention sizes, the full VAE, text encoders at their real
hidden size -- with one or two transformer blocks, one text-encoder layer and the small vocabularies above, saved in
bfloat16 as the real checkpoints are (~1-2.5 GB each, built on first use). They run every profile's quantization,
residency and placement choices on a CPU at the sizes the GPU would see, per layer.

Changing anything a model is built from (the sizes here, the seeds, the tokenizer files, `configs/*`) changes its
weights: bump VERSION so that cached folders are rebuilt. diffusers and transformers are imported by the builders
only: resolving an embedded id (`models.py`) must not import every pipeline and image processor.
"""

from __future__ import annotations

import inspect
import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

TINY_MODEL_IDS = ("tiny/qwen-image", "tiny/flux", "tiny/qwen-image-edit")
REAL_WIDTH_MODEL_IDS = ("realwidth/qwen-image", "realwidth/flux", "realwidth/qwen-image-edit")
EMBEDDED_MODEL_IDS = TINY_MODEL_IDS + REAL_WIDTH_MODEL_IDS

# Cached folders are keyed by it (see the module docstring).
VERSION = 2
# One seed per component, so resizing one component leaves the others' weights unchanged.
_SEEDS = {"vae": 1, "text_encoder": 2, "transformer": 3, "text_encoder_2": 4}

_PACKAGE = Path(__file__).parent
_CONFIGS = _PACKAGE / "configs"
_QWEN_TOKENIZER = _PACKAGE / "assets" / "qwen_tokenizer"

_CLIP_MAX_LENGTH = 77


@dataclass(frozen=True)
class Sizes:
    """The size knobs of one scale. Transformer overrides apply on top of the real configs in `configs/`."""

    qwen_transformer: dict
    flux_transformer: dict
    qwen_vae: dict
    flux_vae: dict
    qwen_text: dict  # small_qwen_vl_config arguments
    clip: dict  # CLIPTextConfig sizes
    t5: dict  # T5Config sizes


# Tiny: transformer attention is 2 heads x 16, RoPE axes (frame, height, width) sum to the head dim, 32-wide text.
_TINY_ATTENTION = dict(num_attention_heads=2, attention_head_dim=16, axes_dims_rope=(4, 6, 6), joint_attention_dim=32)
SIZES = {
    "tiny": Sizes(
        qwen_transformer=dict(num_layers=2, **_TINY_ATTENTION),
        flux_transformer=dict(num_layers=1, num_single_layers=1, pooled_projection_dim=32, **_TINY_ATTENTION),
        qwen_vae=dict(base_dim=8, num_res_blocks=1),
        flux_vae=dict(block_out_channels=(16, 16, 16, 16), down_block_types=("DownEncoderBlock2D",) * 4,
                      up_block_types=("UpDecoderBlock2D",) * 4, layers_per_block=1, norm_num_groups=8),
        qwen_text=dict(width=32, heads=2, kv_heads=1),
        clip=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2, projection_dim=32),
        t5=dict(d_model=32, d_kv=16, d_ff=64, num_layers=1, num_heads=2, relative_attention_num_buckets=8),
    ),
    # Real widths (reference notes §6, configs/*): 2 Qwen-Image blocks, 1 + 1 FLUX blocks, the full VAEs, one
    # text-encoder layer at the real hidden size (Qwen2.5-VL 3584 with a 1-block 1280-wide vision tower, CLIP-L 768,
    # T5-XXL 4096).
    "real-width": Sizes(
        qwen_transformer=dict(num_layers=2),
        flux_transformer=dict(num_layers=1, num_single_layers=1),
        qwen_vae={},
        flux_vae={},
        qwen_text=dict(width=3584, heads=28, kv_heads=4, intermediate=18944, layers=1, mrope_section=(16, 24, 24),
                       vision=dict(hidden_size=1280, intermediate_size=3420, num_heads=16)),
        clip=dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=1, num_attention_heads=12, projection_dim=768),
        t5=dict(d_model=4096, d_kv=64, d_ff=10240, num_layers=1, num_heads=64, relative_attention_num_buckets=32),
    ),
}  # fmt: skip


def is_tiny_model_id(model_id: str) -> bool:
    """True for the models built here, tiny or real-width (a misspelt id is not one: `tiny_model_path` says so)."""
    return model_id in EMBEDDED_MODEL_IDS


def family_name(model_id: str) -> str:
    """'qwen-image', 'flux' or 'qwen-image-edit': the family a model built here belongs to."""
    return _tiny_name(model_id)[0]


def tiny_model_path(model_id: str, cache_dir: str | os.PathLike | None = None) -> Path:
    """Folder holding the saved tiny pipeline `model_id`, building it on first use.

    The folder is `<cache_dir>/tiny/<name>-v<VERSION>/`; `cache_dir` defaults to `$GLANCE_LITE_HOME` or
    `~/.cache/glance_lite`. It is written into a temporary sibling and renamed into place, so readers never see a
    half-written folder, and a concurrent builder that renamed first simply wins.
    """
    name, scale = _tiny_name(model_id)
    folder = _cache_root(cache_dir) / "tiny" / f"{name}{'' if scale == 'tiny' else '-' + scale}-v{VERSION}"
    if (folder / "model_index.json").is_file():
        return folder
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = tempfile.mkdtemp(prefix=f".{folder.name}-", dir=folder.parent)
    try:
        with _quiet_saving():
            build_tiny_pipeline(model_id).save_pretrained(staging)
        os.rename(staging, folder)
    except OSError:
        if not (folder / "model_index.json").is_file():
            raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return folder


@contextmanager
def _quiet_saving():
    """Building a model here is not the user's business: no "Writing model shards" bars or dtype advice."""
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    levels = diffusers_logging.get_verbosity(), transformers_logging.get_verbosity()
    bars = diffusers_logging.is_progress_bar_enabled(), transformers_logging.is_progress_bar_enabled()
    diffusers_logging.set_verbosity_error()
    transformers_logging.set_verbosity_error()
    diffusers_logging.disable_progress_bar()
    transformers_logging.disable_progress_bar()
    try:
        yield
    finally:
        diffusers_logging.set_verbosity(levels[0])
        transformers_logging.set_verbosity(levels[1])
        if bars[0]:  # as they were: --no-progress keeps them off
            diffusers_logging.enable_progress_bar()
        if bars[1]:
            transformers_logging.enable_progress_bar()


def build_tiny_pipeline(model_id: str) -> DiffusionPipeline:
    """The tiny pipeline `model_id` in memory (fp32, eval mode): what `tiny_model_path` saves.

    Every component is built from its own fixed seed, so the weights are identical in every process and on every
    CPU. Note for tiny/qwen-image-edit: the stock `QwenImageEditPipeline.__call__` VAE-encodes the condition image
    at ~1024x1024 whatever the output size (`calculate_dimensions(1024 * 1024, ratio)` is hard-coded), so every
    transformer call carries ~4k condition tokens and a 2-step call takes seconds instead of milliseconds; callers
    that want speed choose the condition size themselves. The processor caps what reaches the vision tower at
    224x224 pixels (64 vision tokens).
    """
    import torch

    builders = {"qwen-image": _qwen_image, "flux": _flux, "qwen-image-edit": _qwen_image_edit}
    name, scale = _tiny_name(model_id)
    pipeline = builders[name](SIZES[scale])
    for component in pipeline.components.values():
        if isinstance(component, torch.nn.Module):
            component.eval()
            if scale != "tiny":
                component.to(torch.bfloat16)  # as the real checkpoints are stored
    return pipeline


def _tiny_name(model_id: str) -> tuple[str, str]:
    """(family name, size) of a model built here."""
    if model_id not in EMBEDDED_MODEL_IDS:
        raise ValueError(f"Unknown embedded model {model_id!r}. Embedded models: {', '.join(EMBEDDED_MODEL_IDS)}.")
    scale, name = model_id.split("/", 1)
    return name, "tiny" if scale == "tiny" else "real-width"


def _cache_root(cache_dir: str | os.PathLike | None) -> Path:
    if cache_dir is None:
        cache_dir = os.environ.get("GLANCE_LITE_HOME") or Path.home() / ".cache" / "glance_lite"
    return Path(cache_dir).expanduser()


def _from_real_config(cls, family: str, component: str, **overrides):
    """`cls` built from the real model's config in `configs/<family>/` with the size knobs in `overrides`.

    Keys the installed class does not take (our `_class_name` / `_note`, stale hub keys) are dropped.
    """
    config = json.loads((_CONFIGS / family / f"{component}_config.json").read_text())
    accepted = inspect.signature(cls.__init__).parameters
    return cls(**{key: value for key, value in config.items() if key in accepted} | overrides)


def _seeded(component: str, build, *args, **kwargs):
    """`build(*args, **kwargs)` under the component's fixed seed, leaving the caller's RNG state untouched."""
    import torch

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(_SEEDS[component])
        return build(*args, **kwargs)


# ---- Qwen-Image family ---------------------------------------------------------------------------------------------


def _qwen_image(sizes: Sizes) -> QwenImagePipeline:
    from diffusers import QwenImagePipeline

    return QwenImagePipeline(**_qwen_components(_qwen_tokenizer(), sizes))


def _qwen_image_edit(sizes: Sizes) -> QwenImageEditPipeline:
    from diffusers import QwenImageEditPipeline

    tokenizer = _qwen_tokenizer()
    return QwenImageEditPipeline(**_qwen_components(tokenizer, sizes), processor=_qwen_processor(tokenizer))


def _qwen_components(tokenizer: Qwen2Tokenizer, sizes: Sizes) -> dict:
    """The components Qwen-Image and Qwen-Image-Edit share (as in the real models, with identical weights)."""
    from diffusers import AutoencoderKLQwenImage, QwenImageTransformer2DModel
    from transformers import Qwen2_5_VLForConditionalGeneration

    return dict(
        scheduler=_scheduler("qwen-image"),
        vae=_seeded("vae", _from_real_config, AutoencoderKLQwenImage, "qwen-image", "vae", **sizes.qwen_vae),
        text_encoder=_seeded("text_encoder", Qwen2_5_VLForConditionalGeneration, small_qwen_vl_config(tokenizer, **sizes.qwen_text)),
        tokenizer=tokenizer,
        transformer=_seeded("transformer", _from_real_config, QwenImageTransformer2DModel, "qwen-image", "transformer",
                            **_text_width(sizes.qwen_transformer, sizes.qwen_text["width"])),
    )  # fmt: skip


def _text_width(transformer: dict, width: int) -> dict:
    """The transformer reads the text encoder's hidden states: its joint-attention width follows the encoder's."""
    return {"joint_attention_dim": width, **transformer}


def _qwen_tokenizer() -> Qwen2Tokenizer:
    from transformers import Qwen2Tokenizer

    # `local_files_only` is recorded in the saved tokenizer_config.json: fixing it (rather than letting it follow
    # HF_HUB_OFFLINE) keeps the saved folder byte-identical in every environment.
    return Qwen2Tokenizer.from_pretrained(_QWEN_TOKENIZER, local_files_only=True)


def _qwen_processor(tokenizer: Qwen2Tokenizer) -> Qwen2VLProcessor:
    """Patch/merge sizes as Qwen2.5-VL; at most 224x224 pixels (64 vision tokens) reach the vision tower."""
    from transformers import Qwen2VLImageProcessorPil

    from .processors import build_qwen2vl_processor

    image_processor = Qwen2VLImageProcessorPil(min_pixels=56 * 56, max_pixels=224 * 224)
    return build_qwen2vl_processor(image_processor, tokenizer)


def small_qwen_vl_config(
    tokenizer, width: int, heads: int, kv_heads: int, vision_width: int = 32, intermediate: int | None = None,
    layers: int = 2, mrope_section=(2, 3, 3), vision: dict | None = None,
) -> Qwen2_5_VLConfig:
    """A Qwen2.5-VL text model `width` wide (`layers` layers) with a 1-block vision tower; token ids from `tokenizer`.

    Qwen-Image uses only the last hidden state; the vision tower serves Qwen-Image-Edit's condition image. Shared by
    the tiny, real-width and pocket models (glance_lite/pocket/base.py).
    """
    from transformers import Qwen2_5_VLConfig

    text = dict(
        vocab_size=len(tokenizer),
        hidden_size=width,
        intermediate_size=intermediate or 2 * width,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        max_position_embeddings=4096,
        rms_norm_eps=1e-6,
        # Multimodal RoPE: (temporal, height, width) sections sum to half the head dim.
        rope_parameters={"rope_type": "default", "rope_theta": 1e6, "mrope_section": list(mrope_section)},
        bos_token_id=tokenizer.convert_tokens_to_ids("<|endoftext|>"),
        eos_token_id=tokenizer.convert_tokens_to_ids("<|im_end|>"),
    )
    vision = vision or dict(hidden_size=vision_width, intermediate_size=2 * vision_width, num_heads=2)
    return Qwen2_5_VLConfig(
        text_config=text,
        vision_config=dict(depth=1, out_hidden_size=width, fullatt_block_indexes=[0], **vision),
        image_token_id=tokenizer.convert_tokens_to_ids("<|image_pad|>"),
        video_token_id=tokenizer.convert_tokens_to_ids("<|video_pad|>"),
        vision_start_token_id=tokenizer.convert_tokens_to_ids("<|vision_start|>"),
        vision_end_token_id=tokenizer.convert_tokens_to_ids("<|vision_end|>"),
    )


# ---- FLUX.1-dev ----------------------------------------------------------------------------------------------------


def _flux(sizes: Sizes) -> FluxPipeline:
    from diffusers import AutoencoderKL, FluxPipeline, FluxTransformer2DModel

    clip_tokenizer, t5_tokenizer = _clip_tokenizer(), _t5_tokenizer()
    transformer = {"pooled_projection_dim": sizes.clip["projection_dim"], **_text_width(sizes.flux_transformer, sizes.t5["d_model"])}
    return FluxPipeline(
        scheduler=_scheduler("flux1-dev"),
        vae=_seeded("vae", _from_real_config, AutoencoderKL, "flux1-dev", "vae", **sizes.flux_vae),
        text_encoder=_seeded("text_encoder", _clip_text_encoder, clip_tokenizer, sizes.clip),
        tokenizer=clip_tokenizer,
        text_encoder_2=_seeded("text_encoder_2", _t5_encoder, t5_tokenizer, sizes.t5),
        tokenizer_2=t5_tokenizer,
        transformer=_seeded("transformer", _from_real_config, FluxTransformer2DModel, "flux1-dev", "transformer", **transformer),
    )


def _clip_tokenizer() -> CLIPTokenizer:
    """Byte-level characters, each also with CLIP's end-of-word `</w>` suffix, and no merges: one token per char."""
    from tokenizers import pre_tokenizers
    from transformers import CLIPTokenizer

    symbols = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for symbol in symbols:
        vocab[symbol] = len(vocab)
        vocab[symbol + "</w>"] = len(vocab)
    return CLIPTokenizer(vocab=vocab, merges=[], model_max_length=_CLIP_MAX_LENGTH)


def _clip_text_encoder(tokenizer: CLIPTokenizer, sizes: dict) -> CLIPTextModel:
    from transformers import CLIPTextConfig, CLIPTextModel

    config = CLIPTextConfig(
        vocab_size=len(tokenizer),
        max_position_embeddings=_CLIP_MAX_LENGTH,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        **sizes,
    )
    return CLIPTextModel(config)


def _t5_tokenizer() -> T5Tokenizer:
    """Unigram over printable ASCII, each character with and without the word-start marker `▁`."""
    from transformers import T5Tokenizer

    specials = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("▁", -2.0)]
    chars = [chr(code) for code in range(33, 127)]
    vocab = specials + [(piece, -3.0) for char in chars for piece in ("▁" + char, char)]
    return T5Tokenizer(vocab=vocab, extra_ids=0, model_max_length=512)


def _t5_encoder(tokenizer: T5Tokenizer, sizes: dict) -> T5EncoderModel:
    from transformers import T5Config, T5EncoderModel

    config = T5Config(
        vocab_size=len(tokenizer),
        feed_forward_proj="gated-gelu",
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        decoder_start_token_id=tokenizer.pad_token_id,
        **sizes,
    )
    return T5EncoderModel(config)


def _scheduler(family: str) -> FlowMatchEulerDiscreteScheduler:
    from diffusers import FlowMatchEulerDiscreteScheduler

    return _from_real_config(FlowMatchEulerDiscreteScheduler, family, "scheduler")
