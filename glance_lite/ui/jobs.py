"""What a Generate and a Compare click do on the worker: get the loaded model, generate, write PNGs with settings.

Compare renders two sampling methods (default Glance and the base model; a few-step LoRA once its file is given) with
the SAME loaded model and seed, so the same initial noise: one transformer holds every adapter and each run switches
to its own (`generate(..., method=...)`). PSNR is `glance_lite.demo.psnr`, the grid `glance_lite.demo.side_by_side`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from ..png_settings import save_png
from .models import LoadedModel, ModelCache
from .request import GenerationRequest
from .worker import Job


@dataclass
class Rendered:
    """One generated image: where its PNG is, how it was made and what it cost."""

    label: str
    path: Path
    result: object  # glance_lite.api.GenerationResult
    settings: dict
    transformer_calls: int
    seconds: float


@dataclass
class Comparison:
    left: Rendered
    right: Rendered
    psnr: float
    grid: Path


def label(loaded: LoadedModel, request: GenerationRequest, sampler: str) -> str:
    """What a run is, in words: Glance (or only its schedule, for a model without LoRAs, e.g. the pocket one), the
    base model with N steps, or the few-step LoRA with N steps."""
    if sampler == "base":
        return f"base model, {request.base_steps} steps"
    if sampler == "fewstep":
        return f"few-step LoRA, {request.fewstep_steps} steps"
    return "Glance" if {e["phase"] for e in loaded.loras} & {"slow", "fast"} else "Glance schedule, no LoRAs"


def _file_prefix(job: Job) -> str:
    """The start of the names of a job's PNGs: when, and which job."""
    return f"{time.strftime('%Y%m%d-%H%M%S')}-{job.id:04d}"


def _render(cache: ModelCache, loaded: LoadedModel, request: GenerationRequest, job: Job, folder: Path, sampler: str, prefix: str) -> Rendered:
    started = time.perf_counter()
    text = label(loaded, request, sampler)
    result = cache.generate(loaded, request, job, text, sampler)
    seconds = time.perf_counter() - started
    settings = result.settings[0]  # the library's own record, the same the CLI writes (generate --from-png reads it)
    path = save_png(result.image, folder / f"{prefix}-{settings['method']}-seed{request.seed}.png", settings)
    return Rendered(text, path, result, settings, result.transformer_calls, seconds)


def generate_job(cache: ModelCache, request: GenerationRequest, profile, folder: Path):
    """The worker's part of a Generate click: one image as the sampler field says."""

    def run(job: Job) -> Rendered:
        return _render(cache, cache.get(request, profile), request, job, folder, request.sampler, _file_prefix(job))

    return run


def compare_job(cache: ModelCache, request: GenerationRequest, profile, folder: Path):
    """The worker's part of a Compare click: the two chosen samplers, one after the other, from the same noise."""

    def run(job: Job) -> Comparison:
        from ..demo import psnr, side_by_side

        loaded, prefix = cache.get(request, profile), _file_prefix(job)
        # each side its own file, also when both run one method (Glance beside a custom split of it)
        left, right = (_render(cache, loaded, request, job, folder, sampler, f"{prefix}-{side}")
                       for sampler, side in zip(request.compare, ("left", "right")))  # fmt: skip
        distance = psnr(left.result.image, right.result.image)
        panels = [[(f"{r.label}\n{r.transformer_calls} transformer calls", r.result.image) for r in (left, right)]]
        methods = [r.settings["method"] for r in (left, right)]
        if methods[0] == methods[1]:
            methods = [f"{methods[0]} ({side})" for side in ("left", "right")]
        settings = {"panels": dict(zip(methods, (left.settings, right.settings))), "psnr_db": distance}
        grid_path = folder / f"{prefix}-compare-seed{request.seed}.png"
        return Comparison(left, right, distance, side_by_side(panels, grid_path, settings=settings))

    return run
