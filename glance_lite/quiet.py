"""Start-up noise from the libraries glance_lite builds on, kept from the user; progress bars on or off in one place.

Importing the stack prints lines that concern neither the images nor the training a user asked for. Each one is
dropped by a filter on the logger that emits it (found in the installed sources), matched on its text, so every
other message of that logger, and of every other library, still gets through:

| logger | message | why it is not the user's business |
|---|---|---|
| torchao | Failed to load .../torchao/_C*.so | optional prebuilt kernels (mxfp8, sm_90 cutlass); torchao runs without them |
| torch.utils._pytree | <enum ...> is an Enum subclass ... register_constant() ... deprecated | torchao's import calls a deprecated torch API |
| diffusers.quantizers.torchao.torchao_quantizer | Unable to import `torchao` Tensor objects | concerns checkpoints saved with torchao tensors; glance_lite quantizes while loading |
| bitsandbytes.backends.cpu.ops | Failed to load CPU gemm_4bit_forward from kernels-community | an optional CPU kernel package; bitsandbytes falls back to its own |
| transformers.utils.import_utils | `...ImageProcessor` requires torchvision (not installed); falling back to `...Pil` | processors of pipeline parts glance_lite does not use (FLUX's IP-adapter encoder) |
| (Python warning, FutureWarning) | `QuantoConfig` / `QuantoQuantizer` is deprecated and will be removed in version 1.0.0 | diffusers' notice to developers; glance_lite pins diffusers < 0.43 and says where quanto is used (`pairings.py`) |
| (Python warning, UserWarning) | TorchaoLoraLinear was instantiated without `get_apply_tensor_subclass` ... `merge()` / `unmerge()` will raise | peft's note that a LoRA on torchao weights cannot be merged; glance_lite never merges into quantized weights (`fuse_lora` is refused with a quantized transformer, `profiles.py`) |
| (Python warning, UserWarning) | Skipping publisher trust check for 'kernels-community/...' because Hugging Face Hub is in offline mode | the `kernels` package (when installed) checking where bitsandbytes' optional kernels come from; with `HF_HUB_OFFLINE=1` (how people with local weights run) it can only say it did not look |

The filters are installed when `glance_lite` is imported (cheap: no library is imported here), so API users get the
same quiet start as the command lines. Progress bars: `set_progress(False)` (the commands' `--no-progress`) turns off
the hub's download bars and, once they are imported, diffusers' and transformers' "Loading ..." bars;
`apply_progress()` is called again right before the manager loads anything, when those libraries exist.
"""

from __future__ import annotations

import logging
import os
import re
import sys
import warnings

_NOISE: dict[str, re.Pattern] = {
    "torchao": re.compile(r"^Failed to load .*torchao.*_C\w*.*\.so"),
    "torch.utils._pytree": re.compile(r"is an Enum subclass and is now natively supported by torch\.compile"),
    "diffusers.quantizers.torchao.torchao_quantizer": re.compile(r"^Unable to import `torchao` Tensor objects"),
    "bitsandbytes.backends.cpu.ops": re.compile(r"^Failed to load CPU gemm_4bit_forward from kernels-community"),
    "transformers.utils.import_utils": re.compile(r"requires torchvision \(not installed\); falling back to `\w+Pil`"),
}


class _DropNoise(logging.Filter):
    def __init__(self, pattern: re.Pattern):
        super().__init__()
        self.pattern = pattern

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            return not self.pattern.search(record.getMessage())
        except Exception:  # a record that cannot be formatted is not ours to judge
            return True


_NOISY_WARNINGS = (
    (r"`Quanto(Config|Quantizer)` is deprecated and will be removed in version 1\.0\.0", FutureWarning),
    (r"TorchaoLoraLinear was instantiated without `get_apply_tensor_subclass`", UserWarning),
    (r"Skipping publisher trust check for '[^']*' because Hugging Face Hub is in offline mode", UserWarning),
)


def install_noise_filters() -> None:
    """Drop the start-up lines of the table in the module docstring (idempotent)."""
    for name, pattern in _NOISE.items():
        logger = logging.getLogger(name)
        if not any(isinstance(f, _DropNoise) for f in logger.filters):
            logger.addFilter(_DropNoise(pattern))
    for message, category in _NOISY_WARNINGS:
        warnings.filterwarnings("ignore", message=message, category=category)


_progress = True


def set_progress(enabled: bool) -> None:
    """Show (default) or hide every progress bar a run draws through the libraries: hub downloads, diffusers'
    "Loading pipeline components", transformers' "Loading weights". glance_lite's own bars follow `progress=`."""
    global _progress
    _progress = bool(enabled)
    if not enabled:
        os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"  # read when huggingface_hub (and transformers) import
    apply_progress()


def apply_progress() -> None:
    """Carry the setting to the libraries already imported (importing none: a refusal stays fast)."""
    if _progress:
        return
    if "huggingface_hub" in sys.modules:
        from huggingface_hub.utils import disable_progress_bars

        disable_progress_bars()
    if "diffusers.utils.logging" in sys.modules:
        from diffusers.utils import logging as diffusers_logging

        diffusers_logging.disable_progress_bar()
    if "transformers.utils.logging" in sys.modules:
        from transformers.utils import logging as transformers_logging

        transformers_logging.disable_progress_bar()
