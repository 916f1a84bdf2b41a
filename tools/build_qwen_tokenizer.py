"""One-off: write glance_lite/assets/qwen_tokenizer/ (the tiny models' tokenizer) into the folder given.

    python tools/build_qwen_tokenizer.py glance_lite/assets/qwen_tokenizer

A byte-level BPE over the Qwen-Image and Qwen-Image-Edit prompt templates only (see glance_lite/bpe.py), so the
template prefixes encode to exactly 34 / 64 tokens. Running it again gives byte-identical files.
"""
import sys

from diffusers import QwenImageEditPipeline, QwenImagePipeline

from glance_lite.bpe import learn_bpe, prompt_template, word_counts, write_qwen_tokenizer

words = word_counts(prompt_template(cls) for cls in (QwenImagePipeline, QwenImageEditPipeline))
vocab, merges = learn_bpe(words)
write_qwen_tokenizer(sys.argv[1], vocab, merges)
print(len(vocab), "bpe symbols,", len(merges), "merges")
