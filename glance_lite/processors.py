"""Qwen2-VL processor for the Qwen-Image-Edit pipelines, built without torchvision.

`QwenImageEditPipeline.from_pretrained` loads its `processor` component with `Qwen2VLProcessor.from_pretrained`,
which picks the torchvision-backed image and video processors and raises an ImportError where torchvision is not
usable (our CPU stack has no working build). The PIL image processor computes the same pixel values and grid, and
the pipeline never passes videos, so a plain `BaseVideoProcessor` is enough. Pass the result explicitly:

    QwenImageEditPipeline.from_pretrained(path, processor=load_qwen2vl_processor(path))
"""

from __future__ import annotations

import os

from transformers import AutoTokenizer, PreTrainedTokenizerBase, Qwen2VLImageProcessorPil, Qwen2VLProcessor
from transformers.video_processing_utils import BaseVideoProcessor


def load_qwen2vl_processor(folder_or_repo: str | os.PathLike, subfolder: str = "processor", **hub_kwargs) -> Qwen2VLProcessor:
    """Load the processor stored under `<folder_or_repo>/<subfolder>` (a local pipeline folder or a hub repo id).

    Reads the tokenizer and the image-processor settings (patch/merge size, min/max pixels, mean/std) from that
    subfolder, as laid out in the Qwen/Qwen-Image-Edit repo (`preprocessor_config.json`) or as written by
    `save_pretrained` (`processor_config.json`). `hub_kwargs` (revision, cache_dir, token, local_files_only...) go
    to both loaders.
    """
    folder_or_repo = os.fspath(folder_or_repo)
    tokenizer = AutoTokenizer.from_pretrained(folder_or_repo, subfolder=subfolder, **hub_kwargs)
    image_processor = Qwen2VLImageProcessorPil.from_pretrained(folder_or_repo, subfolder=subfolder, **hub_kwargs)
    return build_qwen2vl_processor(image_processor, tokenizer)


def build_qwen2vl_processor(
    image_processor: Qwen2VLImageProcessorPil, tokenizer: PreTrainedTokenizerBase
) -> Qwen2VLProcessor:
    """A `Qwen2VLProcessor` with a plain `BaseVideoProcessor`.

    `ProcessorMixin.__init__` checks each part against its base class, looked up by name; without torchvision the
    video one (`VideoProcessorMixin`) is gated away and the lookup fails with "AttributeError: type object
    'VIDEO_PROCESSOR_MAPPING' has no attribute '_extra_content'". That single check is skipped, on this instance only.
    """
    processor = Qwen2VLProcessor.__new__(Qwen2VLProcessor)
    check = processor.check_argument_for_proper_class
    processor.check_argument_for_proper_class = lambda name, part: (
        type(part) if name == "video_processor" else check(name, part)
    )
    processor.__init__(image_processor=image_processor, tokenizer=tokenizer, video_processor=BaseVideoProcessor())
    del processor.check_argument_for_proper_class
    return processor
