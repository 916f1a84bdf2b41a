"""The pocket tokenizer: the shipped tiny Qwen BPE retrained so every caption word is one token.

Same construction as the tiny models' tokenizer (`glance_lite/bpe.py`: a plain BPE loop, ties broken lexicographically, so it is
deterministic in every process, unlike `tokenizers`' trainer), over the Qwen-Image template words plus the
pocket-world vocabulary. Every word of the corpus ends as a single token, so the Qwen-Image template prefix still
encodes to exactly 34 tokens and "red", " circle", " background" are one token each.
"""

from __future__ import annotations

import collections
import tempfile
from pathlib import Path

from ..bpe import learn_bpe, pre_tokenizer, prompt_template, word_counts, write_qwen_tokenizer
from .world import ALL_SCENES

TEMPLATE_PREFIX_TOKENS = 34


def qwen_image_template() -> str:
    from diffusers import QwenImagePipeline

    return prompt_template(QwenImagePipeline)


def _corpus() -> collections.Counter:
    return word_counts([qwen_image_template()] + [scene.caption for scene in ALL_SCENES] + [" "])


def write_pocket_tokenizer(out: str | Path) -> Path:
    """vocab.json, merges.txt and tokenizer_config.json of the pocket tokenizer in `out`."""
    return write_qwen_tokenizer(out, *learn_bpe(_corpus()))


def build_pocket_tokenizer():
    """The pocket tokenizer as a `Qwen2Tokenizer`, checked: template prefix = 34 tokens, caption words single."""
    from transformers import Qwen2Tokenizer

    with tempfile.TemporaryDirectory() as tmp:
        tokenizer = Qwen2Tokenizer.from_pretrained(write_pocket_tokenizer(tmp), local_files_only=True)
    prefix = qwen_image_template().split("{}")[0]
    count = len(tokenizer(prefix)["input_ids"])
    if count != TEMPLATE_PREFIX_TOKENS:
        raise RuntimeError(f"Pocket tokenizer encodes the Qwen-Image template prefix to {count} tokens, not 34.")
    caption = ALL_SCENES[0].caption
    if len(tokenizer(caption)["input_ids"]) != len(pre_tokenizer().pre_tokenize_str(caption)):
        raise RuntimeError("Pocket tokenizer splits a caption word into several tokens.")
    return tokenizer
