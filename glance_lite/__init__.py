"""glance_lite: Glance (Slow-LoRA + Fast-LoRA, ~5x fewer transformer calls) for big diffusion transformers on small GPUs.

Public API: `load`, `generate`, `train`, `plan`. Imports are lazy so that light commands (dataset validation,
memory planning) start without importing diffusers.
"""

from __future__ import annotations

from .quiet import install_noise_filters as _install_noise_filters

__version__ = "0.1.0"
__all__ = ["generate", "load", "plan", "train"]

_install_noise_filters()  # the libraries' start-up lines that are not the user's business (see glance_lite.quiet)


def _make_callable(module_name: str, function) -> None:
    """Let `glance_lite.generate(...)` / `glance_lite.train(...)` work after their CLI modules were imported.

    `python -m glance_lite.generate` needs a module of that name, and importing it rebinds the package attribute
    from the API function to the module; calling the module then calls the function.
    """
    import sys

    class CallableModule(type(sys)):
        def __call__(self, *args, **kwargs):
            return function(*args, **kwargs)

    sys.modules[module_name].__class__ = CallableModule


def __getattr__(name: str):
    if name in ("generate", "load"):
        from . import api

        return getattr(api, name)  # `generate` resolves here until the CLI module is imported (see _make_callable)
    if name == "plan":
        from .plan import plan

        return plan
    if name == "train":
        from .train import train

        return train
    raise AttributeError(f"module 'glance_lite' has no attribute {name!r}")
