"""The pocket tokenizer: the shipped tiny Qwen BPE retrained so every caption word is one token.

Same construction as `tools/build_qwen_tokenizer.py` (a plain BPE loop, ties broken lexicographically, so it is
deterministic in every process, unlike `tokenizers`' trainer), over the Qwen-Image template words plus the
pocket-world vocabulary. Every word of the corpus ends as a single token, so the Qwen-Image template prefix still
encodes to exactly 34 tokens and "red", " circle", " background" are one token each.
"""

from __future__ import annotations

import collections
import inspect
import json
import re
import tempfile
from pathlib import Path

from .world import ALL_SCENES

SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|object_ref_start|>", "<|object_ref_end|>",
            "<|box_start|>", "<|box_end|>", "<|quad_start|>", "<|quad_end|>", "<|vision_start|>",
            "<|vision_end|>", "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>"]  # fmt: skip
TEMPLATE_PREFIX_TOKENS = 34


def _pre_tokenizer():
    from tokenizers import Regex, pre_tokenizers
    from transformers.models.qwen2.tokenization_qwen2 import PRETOKENIZE_REGEX

    return pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(PRETOKENIZE_REGEX), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])  # fmt: skip


def qwen_image_template() -> str:
    from diffusers import QwenImagePipeline

    src = inspect.getsource(QwenImagePipeline.__init__)
    return re.search(r'self.prompt_template_encode = "(.*)"\n', src).group(1).encode().decode("unicode_escape")


def _corpus() -> collections.Counter:
    pretok = _pre_tokenizer()
    words = collections.Counter()
    texts = re.split(r"<\|[a-z_]+\|>", qwen_image_template().replace("{}", ""))
    texts += [scene.caption for scene in ALL_SCENES] + [" "]
    for text in texts:
        words.update(w for w, _ in pretok.pre_tokenize_str(text))
    return words


def write_pocket_tokenizer(out: str | Path) -> Path:
    """vocab.json, merges.txt and tokenizer_config.json of the pocket tokenizer in `out`."""
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    words = _corpus()
    vocab = {s: i for i, s in enumerate(bytes_to_unicode().values())}
    merges, segs = [], {w: list(w) for w in words}
    while True:
        pairs = collections.Counter()
        for w, s in segs.items():
            for a, b in zip(s, s[1:]):
                pairs[(a, b)] += words[w]
        if not pairs:
            break
        best = min(pairs, key=lambda p: (-pairs[p], p))
        merges.append(best)
        vocab[best[0] + best[1]] = len(vocab)
        for w, s in segs.items():
            merged, i = [], 0
            while i < len(s):
                if i + 1 < len(s) and (s[i], s[i + 1]) == best:
                    merged.append(s[i] + s[i + 1])
                    i += 2
                else:
                    merged.append(s[i])
                    i += 1
            segs[w] = merged
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False) + "\n", encoding="utf-8")
    (out / "merges.txt").write_text("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges), encoding="utf-8")
    added = {str(len(vocab) + i): {"content": t, "lstrip": False, "normalized": False, "rstrip": False,
                                   "single_word": False, "special": True} for i, t in enumerate(SPECIALS)}  # fmt: skip
    config = {"tokenizer_class": "Qwen2Tokenizer", "added_tokens_decoder": added, "bos_token": None,
              "eos_token": "<|im_end|>", "pad_token": "<|endoftext|>", "unk_token": None, "errors": "replace",
              "add_prefix_space": False, "clean_up_tokenization_spaces": False, "split_special_tokens": False,
              "model_max_length": 131072}  # fmt: skip
    (out / "tokenizer_config.json").write_text(json.dumps(config, indent=1) + "\n", encoding="utf-8")
    return out


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
    if len(tokenizer(caption)["input_ids"]) != len(_pre_tokenizer().pre_tokenize_str(caption)):
        raise RuntimeError("Pocket tokenizer splits a caption word into several tokens.")
    return tokenizer
