"""One-off: write glance_lite/assets/qwen_tokenizer/ (vocab.json, merges.txt, tokenizer_config.json).

A tiny byte-level BPE whose merges make every pre-token of the Qwen-Image and Qwen-Image-Edit prompt
templates a single token, so the template prefixes encode to 34 / 64 tokens as with the real Qwen2.5-VL
tokenizer. Merges are learned by a plain deterministic BPE loop (ties broken lexicographically).
"""
import collections, inspect, json, re, sys
from pathlib import Path
from tokenizers import Regex, pre_tokenizers
from transformers.models.qwen2.tokenization_qwen2 import PRETOKENIZE_REGEX
from transformers.convert_slow_tokenizer import bytes_to_unicode
from diffusers import QwenImageEditPipeline, QwenImagePipeline

OUT = Path(sys.argv[1])
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|object_ref_start|>", "<|object_ref_end|>",
            "<|box_start|>", "<|box_end|>", "<|quad_start|>", "<|quad_end|>", "<|vision_start|>",
            "<|vision_end|>", "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>"]

pretok = pre_tokenizers.Sequence([
    pre_tokenizers.Split(Regex(PRETOKENIZE_REGEX), behavior="isolated", invert=False),
    pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])

def template(cls):
    src = inspect.getsource(cls.__init__)
    return re.search(r'self.prompt_template_encode = "(.*)"\n', src).group(1).encode().decode("unicode_escape")

words = collections.Counter()
for cls in (QwenImagePipeline, QwenImageEditPipeline):
    for part in re.split(r"<\|[a-z_]+\|>", template(cls).replace("{}", "")):
        words.update(w for w, _ in pretok.pre_tokenize_str(part))

byte_symbols = list(bytes_to_unicode().values())
vocab = {s: i for i, s in enumerate(byte_symbols)}
merges = []
segs = {w: list(w) for w in words}
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
        out, i = [], 0
        while i < len(s):
            if i + 1 < len(s) and (s[i], s[i + 1]) == best:
                out.append(s[i] + s[i + 1]); i += 2
            else:
                out.append(s[i]); i += 1
        segs[w] = out

OUT.mkdir(parents=True, exist_ok=True)
(OUT / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False) + "\n", encoding="utf-8")
(OUT / "merges.txt").write_text("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges), encoding="utf-8")
added = {str(len(vocab) + i): {"content": t, "lstrip": False, "normalized": False, "rstrip": False,
                               "single_word": False, "special": True} for i, t in enumerate(SPECIALS)}
config = {"tokenizer_class": "Qwen2Tokenizer", "added_tokens_decoder": added, "bos_token": None,
          "eos_token": "<|im_end|>", "pad_token": "<|endoftext|>", "unk_token": None, "errors": "replace",
          "add_prefix_space": False, "clean_up_tokenization_spaces": False, "split_special_tokens": False,
          "model_max_length": 131072}
(OUT / "tokenizer_config.json").write_text(json.dumps(config, indent=1) + "\n", encoding="utf-8")
print(len(vocab), "bpe symbols,", len(merges), "merges,", len(SPECIALS), "specials")
