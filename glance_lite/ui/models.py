"""The loaded models: one `Glance` per (model, profile, LoRA files, compat), reused by every request that matches.

`glance_lite.load` reads only configs and LoRA headers; the transformer loads at the first `generate()` and stays
(per its profile), so reusing the `Glance` is what keeps a second request from loading it again
(`glance.manager.load_counts["transformer"]` stays 1). At most `capacity` models are kept: a small GPU holds one,
so a request for another model lets the least recently used one go first.

Progress and cancellation ride on a forward pre-hook on the transformer: each call counts towards the running job's
progress (a new timestep is a new denoising step), and a cancelled job raises `Cancelled` before the next call. The
sampler restores the base weights on the way out and the manager releases the stage, so the model stays usable.
Only the worker thread loads, generates and releases; the page only reads `loaded()`.
"""

from __future__ import annotations

import gc
import threading
from collections import OrderedDict
from dataclasses import dataclass, field

from .request import GenerationRequest
from .worker import Job

# The stages of one `Glance.generate` call, in order (see glance_lite.api).
GENERATE_STAGES = ("text_encode", "denoise", "vae_decode")


@dataclass
class LoadedModel:
    key: tuple
    glance: object  # glance_lite.api.Glance
    loras: list[dict] = field(default_factory=list)  # {"phase", "name", "sha256"} per adapter, for the PNG settings
    runs: int = 0

    @property
    def transformer_loads(self) -> int:
        return self.glance.manager.load_counts.get("transformer", 0)

    def describe(self) -> str:
        adapters = ", ".join(f"{a['phase']}: {a['name']}" for a in self.loras) or "none (base weights)"
        return (f"{self.glance.source.model_id}, profile '{self.glance.profile.name}', LoRAs {adapters}: "
                f"transformer loaded {self.transformer_loads}x, {self.runs} run(s)")  # fmt: skip


class ModelCache:
    """The loaded models by key, least recently used first, and the hook that follows the running generation."""

    def __init__(self, capacity: int = 1):
        self.capacity = max(1, capacity)
        self._models: OrderedDict[tuple, LoadedModel] = OrderedDict()
        self._lock = threading.Lock()  # the page reads the list while the worker changes it
        self._active: Job | None = None

    def get(self, request: GenerationRequest, profile) -> LoadedModel:
        """The loaded model for this request: reused when the key matches, else loaded (after freeing room)."""
        key = request.load_key(profile.name)
        with self._lock:
            if key in self._models:
                self._models.move_to_end(key)
                return self._models[key]
        import glance_lite

        # load() checks everything and reads no transformer weights: a refused request costs the kept models nothing.
        glance = glance_lite.load(
            request.model, request.slow_lora, request.fast_lora, profile=profile, lora_compat=request.lora_compat,
            use_official_loras=request.use_official_loras, height=request.height, width=request.width,
            fewstep_lora=request.fewstep_lora,
        )  # fmt: skip
        glance.manager.on_load("transformer", self._watch)
        loras = glance.lora_files()
        while len(self._models) >= self.capacity:
            self._release(next(iter(self._models)))
        with self._lock:
            self._models[key] = LoadedModel(key, glance, loras)
        return self._models[key]

    def generate(self, loaded: LoadedModel, request: GenerationRequest, job: Job, label: str, sampler: str | None = None):
        """One `Glance.generate` for `job` with a sampler choice (default: the Generate tab's), its progress followed
        step by step; raises Cancelled if cancelled."""
        glance, kwargs = loaded.glance, request.generate_kwargs(sampler)
        plan = glance.plan(request.height, request.width, kwargs["mode"], kwargs["split"], method=kwargs["method"])
        phase_ends, done = {}, 0
        for phase in plan.phases:
            done += len(plan.phase(phase))
            phase_ends[phase] = done
        job.progress.start_run(label, GENERATE_STAGES, glance.manager.tracker.records, len(plan.steps), phase_ends)
        self._active = job
        try:
            result = glance.generate(request.prompt, progress=False, **kwargs)
        finally:
            self._active = None
        job.check_cancelled()
        loaded.runs += 1
        return result

    def loaded(self) -> list[LoadedModel]:
        with self._lock:
            return list(self._models.values())

    def release_all(self) -> None:
        """Free every loaded model (before training, which loads its own transformer)."""
        for key in list(self._models):
            self._release(key)

    def _release(self, key: tuple) -> None:
        with self._lock:
            loaded = self._models.pop(key)
        for component in ("transformer", "text_encoder", "text_encoder_2", "vae"):
            loaded.glance.manager.evict(component)
        del loaded
        gc.collect()

    # ---- progress and cancellation, from inside the transformer's forward -------------------------------------
    def _watch(self, transformer) -> None:
        transformer.register_forward_pre_hook(self._before_forward, with_kwargs=True)

    def _before_forward(self, module, args, kwargs):
        job = self._active
        if job is not None:
            job.check_cancelled()
            timestep = kwargs.get("timestep")
            job.progress.count_call(None if timestep is None else float(timestep.flatten()[0]))
        return None
