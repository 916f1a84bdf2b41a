"""What a Generate and a Compare click do on the worker: get the loaded model, generate, write PNGs with settings.

Compare renders Glance and the base model with the SAME loaded model and seed (so the same initial noise): the base
run is `generate(..., base_steps=N)`, which leaves the adapters off. PSNR is `glance_lite.demo.psnr`, the grid
`glance_lite.demo.side_by_side`.
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
    glance: Rendered
    base: Rendered
    psnr: float
    grid: Path


def glance_label(loaded: LoadedModel) -> str:
    """What a Glance run is: with adapters, or only the Glance schedule (a model without LoRAs, e.g. the pocket one)."""
    return "Glance" if loaded.loras else "Glance schedule, no LoRAs"


def _render(cache: ModelCache, loaded: LoadedModel, request: GenerationRequest, job: Job, label: str, folder: Path, base_steps: int | None) -> Rendered:
    started = time.perf_counter()
    result = cache.generate(loaded, request, job, label, base_steps)
    seconds = time.perf_counter() - started
    settings = result.settings[0]  # the library's own record, the same the CLI writes (generate --from-png reads it)
    name = f"{time.strftime('%Y%m%d-%H%M%S')}-{job.id:04d}-{'base' if base_steps else 'glance'}-seed{request.seed}.png"
    path = save_png(result.image, folder / name, settings)
    return Rendered(label, path, result, settings, job.progress.transformer_calls, seconds)


def generate_job(cache: ModelCache, request: GenerationRequest, profile, folder: Path):
    """The worker's part of a Generate click: one image as the sampler field says."""

    def run(job: Job) -> Rendered:
        loaded = cache.get(request, profile)
        base_steps = request.base_steps if request.base_only else None
        label = f"base model, {base_steps} steps" if base_steps else glance_label(loaded)
        return _render(cache, loaded, request, job, label, folder, base_steps)

    return run


def compare_job(cache: ModelCache, request: GenerationRequest, profile, folder: Path):
    """The worker's part of a Compare click: Glance, then the base with `request.base_steps`, from the same noise."""

    def run(job: Job) -> Comparison:
        from ..demo import psnr, side_by_side

        loaded = cache.get(request, profile)
        glance = _render(cache, loaded, request, job, glance_label(loaded), folder, None)
        base = _render(cache, loaded, request, job, f"base model, {request.base_steps} steps", folder, request.base_steps)
        distance = psnr(glance.result.image, base.result.image)
        panels = [[(f"{r.label}\n{r.transformer_calls} transformer calls", r.result.image) for r in (glance, base)]]
        grid_path = base.path.with_name(base.path.stem.replace("-base", "-compare") + ".png")
        grid = side_by_side(panels, grid_path, settings={"panels": {"glance": glance.settings, "base": base.settings}, "psnr_db": distance})
        return Comparison(glance, base, distance, grid)

    return run
