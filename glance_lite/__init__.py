"""glance_lite: Glance (Slow-LoRA + Fast-LoRA, ~5x fewer transformer calls) for big diffusion transformers on small GPUs.

Public API: `load`, `generate`, `train`, `plan`. Imports are lazy so that light commands (dataset validation,
memory planning) start without importing diffusers.
"""

from __future__ import annotations

__version__ = "0.1.0"
__all__ = ["generate", "load", "plan", "train"]


def __getattr__(name: str):
    if name in ("generate", "load"):
        from . import api

        return getattr(api, name)
    if name == "plan":
        from .plan import plan

        return plan
    if name == "train":
        from .train import train

        return train
    raise AttributeError(f"module 'glance_lite' has no attribute {name!r}")
