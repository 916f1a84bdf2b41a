"""Small deterministic byte-level BPE tokenizers in the Qwen2 format, built offline.

`tokenizers`' BPE trainer is not deterministic across processes, so the tiny and pocket models' tokenizers are
learned by a plain loop (ties broken lexicographically) and shipped as files. The corpus always contains the
Qwen-Image prompt templates, so every template word is one token and the template prefix encodes to 34 tokens
(64 for the edit template), as with the real Qwen2.5-VL tokenizer: the pipelines drop exactly that many.
"""

from __future__ import annotations

import collections
import inspect
import json
import re
from collections.abc import Iterable
from pathlib import Path

SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|object_ref_start|>", "<|object_ref_end|>",
            "<|box_start|>", "<|box_end|>", "<|quad_start|>", "<|quad_end|>", "<|vision_start|>",
            "<|vision_end|>", "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>"]  # fmt: skip


def pre_tokenizer():
    """Qwen2's own pre-tokenizer (regex split + byte-level), so words split exactly as the real tokenizer splits them."""
    from tokenizers import Regex, pre_tokenizers
    from transformers.models.qwen2.tokenization_qwen2 import PRETOKENIZE_REGEX

    return pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(PRETOKENIZE_REGEX), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])  # fmt: skip


def prompt_template(pipeline_class) -> str:
    """The prompt template a Qwen-Image pipeline class wraps every prompt in."""
    src = inspect.getsource(pipeline_class.__init__)
    return re.search(r'self.prompt_template_encode = "(.*)"\n', src).group(1).encode().decode("unicode_escape")


def word_counts(texts: Iterable[str]) -> collections.Counter:
    """Pre-tokenized words of `texts` (special tokens removed) with their counts: the BPE corpus."""
    pretok = pre_tokenizer()
    words = collections.Counter()
    for text in texts:
        for part in re.split(r"<\|[a-z_]+\|>", text.replace("{}", "")):
            words.update(w for w, _ in pretok.pre_tokenize_str(part))
    return words


def learn_bpe(words: collections.Counter) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """(vocab with all 256 byte symbols first, merges in order) from a plain BPE loop; same input, same output."""
    from transformers.convert_slow_tokenizer import bytes_to_unicode

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
    return vocab, merges


def write_qwen_tokenizer(out: str | Path, vocab: dict[str, int], merges: list[tuple[str, str]]) -> Path:
    """vocab.json, merges.txt and tokenizer_config.json that `Qwen2Tokenizer.from_pretrained(out)` loads."""
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
