"""The distribute/free manager: loads, quantizes, places and evicts components stage by stage.

It asks `glance_lite.placement` where every component belongs in each stage and makes it so, with the ecosystem's
tools (diffusers / transformers quantization configs, diffusers group offloading, accelerate device maps); the
planner prices the same answers. Stages run one after another, so the peak memory of a run is the max over stages,
not their sum:

    text_encode  text encoder(s)  -> encode every prompt and the negative prompt
    denoise      transformer (+ VAE for edit models) -> both phases, adapters switched in place
    vae_decode   VAE              -> pixels

When a stage starts, every loaded component not needed in it goes where the placement says (kept on its GPU,
parked in CPU RAM, or evicted); when it ends, the components it ran go to their idle state. A transformer that
streams keeps the planner's resident blocks on the GPU during denoise (`residency.py`).
"""

from __future__ import annotations

import gc
import logging
import weakref
from collections.abc import Callable
from contextlib import contextmanager

import torch

from .errors import SetupError, UserError
from .memory import MemoryTracker
from .models import ModelSource, component_class, meta_component
from .placement import Placement, gpu_index, placement
from .quantize import loading_kwargs, quantize_after_load, torch_dtype
from .quiet import apply_progress

logger = logging.getLogger("glance_lite")
# Manager stage -> the planner's name for its most demanding part.
PLAN_STAGE = {"denoise": "slow_phase"}
# Profile `attention` -> diffusers attention backend (set_attention_backend); sdpa is diffusers' default.
ATTENTION_BACKENDS = {"sdpa": "native", "xformers": "xformers"}


class StageOutOfMemoryError(UserError, RuntimeError):
    """A CUDA OOM translated into what to do about it."""


def cpu_emulation_note(profile) -> str:
    """The one line a `--device cpu` run of a GPU profile says about what a CPU cannot show."""
    return (
        f"--device cpu: running profile '{profile.name}' on the CPU with its quantization, residency and placement "
        "choices; GPU moves are no-ops, and CUDA streams, pinned memory, VRAM limits and GPU speed cannot be emulated."
    )


def attention_backend(profile) -> str:
    """The diffusers attention backend a profile asks for; a missing library is said before anything loads."""
    import importlib.util

    backend = ATTENTION_BACKENDS[profile.attention]
    if backend != "native" and importlib.util.find_spec(backend) is None:
        raise SetupError(
            f"Profile '{profile.name}' asks for attention: {profile.attention}, but {backend} is not installed: "
            'pip install -e ".[xformers]", or set attention: sdpa in the profile.'
        )
    return backend


def empty_pinned_cache() -> None:
    """Give RAM back: torch's pinned-memory allocator keeps the blocks of freed pinned tensors (a streamed component's
    copies) cached for reuse until asked to release them."""
    empty = getattr(torch._C, "_host_emptyCache", None)
    if empty is not None:
        empty()


def compute_device(profile, component: str, device: str | None = None, rank: int = 0) -> torch.device:
    """Where a component computes: its GPU (`gpu:` within process `rank`'s share), or the CPU."""
    if profile.device == "cpu" or device == "cpu" or profile.component(component).placement == "cpu":
        return torch.device("cpu")
    return torch.device("cuda", gpu_index(profile, component, rank))


class ComponentManager:
    """Owns every heavy module of one loaded model and where it lives. See the module docstring.

    `device="cpu"` runs a GPU profile's choices on the CPU; `rank` is the process index under `accelerate launch`
    (each process uses its own GPUs).
    """

    def __init__(self, source: ModelSource, profile, tracker: MemoryTracker | None = None, *, device: str | None = None, rank: int = 0):
        self.source = source
        self.family = source.family
        self.profile = profile
        self.device_override = device
        self.rank = rank
        self.attention = attention_backend(profile)
        self.device = self.device_of("transformer")
        self.tracker = tracker or MemoryTracker(self.device, interval=None)
        self.load_counts: dict[str, int] = {}
        self.image_size = (1024, 1024)  # (height, width) of the current run, for OOM messages and the plan
        self._on_load: dict[str, list[Callable]] = {}
        self._resident: dict[str, object] = {}  # component -> residency.ResidentBlocks of a streamed component
        # The components a profile places (tokenizers, scheduler and processor are light and stay where they are).
        self.components = tuple(c for c in (*self.family.text_encoders, "transformer", "vae") if c in source.components)
        if device == "cpu" and profile.device != "cpu":
            logger.info(cpu_emulation_note(profile))
        self.pipe = self._load_light_pipeline()

    # ---- where things go -----------------------------------------------------------------------
    def placement(self, component: str, stage: str) -> Placement:
        return placement(self.profile, component, stage, self.rank, family=self.family, device=self.device_override)

    def device_of(self, component: str) -> torch.device:
        """Where a component computes: its GPU (`gpu:` within this process's share), or the CPU."""
        return compute_device(self.profile, component, self.device_override, self.rank)

    def policy(self, component: str):
        return self.profile.component(component)

    def plan(self):
        """The memory plan of this model, profile and image size (residency and shard maps come from it)."""
        from .plan import plan as make_plan

        return make_plan(self.source.model_id, self.profile, *self.image_size, device=self.device_override)

    # ---- loading -------------------------------------------------------------------------------
    def _load_light_pipeline(self):
        """Tokenizers, scheduler, processor and the (small) VAE; the heavy modules come per stage."""
        heavy = set(self.family.text_encoders) | {"transformer"}
        skipped = {name: None for name in heavy if name in self.source.components}
        vae_dtype = torch_dtype(self.policy("vae").dtype)
        pipeline_class = self.family.pipeline_class
        apply_progress()  # --no-progress: no "Loading pipeline components" bar (diffusers is imported now)
        pipe = pipeline_class.from_pretrained(
            self.source.location, **skipped, dtype=vae_dtype, **self.family.extra_load_kwargs(self.source.location)
        )
        pipe.vae.eval().requires_grad_(False)
        if self.policy("vae").tiling and hasattr(pipe.vae, "enable_tiling"):
            pipe.vae.enable_tiling()
        return pipe

    def on_load(self, component: str, callback: Callable) -> None:
        """Run `callback(module)` right after a component is loaded, before it is placed (e.g. add adapters)."""
        self._on_load.setdefault(component, []).append(callback)

    def is_loaded(self, component: str) -> bool:
        return getattr(self.pipe, component, None) is not None

    def text_components(self) -> tuple[str, ...]:
        return tuple(c for c in self.family.text_encoders if c in self.source.components)

    def _load(self, component: str, stage: str):
        where = self.placement(component, stage)
        module = self._instantiate(component, where)
        module.eval().requires_grad_(False)
        quantize_after_load(module, where.quantization)
        self._set_attention(module)
        for callback in self._on_load.get(component, []):
            callback(module)
        self._place(component, module, where)
        self.load_counts[component] = self.load_counts.get(component, 0) + 1
        setattr(self.pipe, component, module)
        return module

    def _instantiate(self, component: str, where: Placement):
        """The component's module with its weights, quantized while loading where the placement says.

        The one place that reads weights; benchmarks override it to build random weights from a config.
        """
        cls = component_class(self.source, component)
        apply_progress()
        device = self.device_of(component)
        kwargs = {"subfolder": component, "dtype": torch_dtype(where.dtype)}
        kwargs.update(loading_kwargs(cls, where.quantization, where.dtype, device))
        if where.mode == "sharded" and device.type == "cuda":
            kwargs["device_map"] = self.shard_map(component)
        elif where.mode == "whole" and device.type == "cuda":
            kwargs["device_map"] = {"": str(device)}  # shard by shard straight to the GPU, not via CPU RAM
        elif where.quantization.startswith("bnb-"):
            # a CPU run (--device cpu) on a machine with a GPU: transformers would put a bitsandbytes model without a
            # device map on the current GPU (quantizer_bnb_4bit.update_device_map)
            kwargs["device_map"] = {"": "cpu"}
        return cls.from_pretrained(self.source.location, **kwargs)

    def _set_attention(self, module) -> None:
        """The profile's attention backend, through diffusers' attention-backend API (diffusers models only)."""
        if self.attention != "native" and hasattr(module, "set_attention_backend"):
            module.set_attention_backend(self.attention)

    def shard_map(self, component: str, gpu_bytes: dict[int, int] | None = None) -> dict[str, int]:
        """Whole blocks spread over the profile's GPUs (accelerate's device-map format).

        By default the memory planner's map, which balances head-room across GPUs for what else it put there
        (text encoder, VAE decode); with explicit `gpu_bytes`, accelerate's greedy fill on the meta model.
        """
        from accelerate import infer_auto_device_map

        if gpu_bytes is None:
            offset = gpu_index(self.profile, component, self.rank) - self.policy(component).gpu
            return {name: gpu + offset for name, gpu in self.plan().device_map.items()}
        meta = meta_component(self.source, component)
        return infer_auto_device_map(
            meta,
            max_memory=gpu_bytes,
            no_split_module_classes=list(getattr(meta, "_no_split_modules", None) or []),
            dtype=torch_dtype(self.policy(component).dtype),
        )

    def _place(self, component: str, module, where: Placement) -> None:
        """First placement after loading: streamed components get their resident blocks and group offloading."""
        if where.mode != "streamed" or where.stage == "train_step":
            return  # loaded onto their device or by their device map; the trainer streams its frozen base itself
        from .residency import stream_blocks

        resident = set(self.plan().resident_blocks.get("denoise", ()))
        policy = self.policy(component)
        use_stream = bool(policy.use_stream) and self.device_of(component).type == "cuda"
        self._resident[component] = stream_blocks(
            module, self.device_of(component), resident, policy.blocks_per_group or 1, use_stream
        )

    # ---- stage lifecycle -----------------------------------------------------------------------
    def _apply(self, component: str, where: Placement) -> None:
        """Make a loaded component be where `where` says."""
        module = getattr(self.pipe, component)
        resident = self._resident.get(component)
        if where.state == "evict":
            self.evict(component)
        elif where.state == "park":
            if resident is not None:
                resident.park()
            elif where.mode != "sharded":
                module.to("cpu")
        elif where.state == "run" and resident is not None:
            resident.bring()
        elif where.mode == "whole":
            module.to(self.device_of(component) if where.state == "run" else where.device)

    def bring(self, component: str, stage: str = "denoise"):
        """Make a component usable for `stage` on its device (loading it if needed)."""
        where = self.placement(component, stage)
        if not self.is_loaded(component):
            self._load(component, stage)
        self._apply(component, where)
        return getattr(self.pipe, component)

    def release(self, component: str) -> None:
        """After a stage: keep, park in CPU RAM, or evict and free, as the component's idle placement says."""
        if self.is_loaded(component):
            self._apply(component, self.placement(component, "idle"))

    def evict(self, component: str) -> weakref.ref | None:
        """Drop the manager's (the only) reference and free its memory; returns a weakref to prove it died."""
        module = getattr(self.pipe, component, None)
        if module is None:
            return None
        ref = weakref.ref(module)
        setattr(self.pipe, component, None)
        self._resident.pop(component, None)
        del module
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
            empty_pinned_cache()
        return ref

    @contextmanager
    def stage(self, name: str, components: tuple[str, ...]):
        """Make room (every other loaded component where the placement puts it during `name`), bring
        `components`, measure the stage, then send them to their idle state. A CUDA OOM becomes advice."""
        placement_stage = name if name in ("text_encode", "vae_encode", "denoise", "vae_decode", "train_step") else "idle"
        try:
            with self.tracker.stage(name):
                for other in self.components:
                    if other not in components and self.is_loaded(other):
                        self._apply(other, self.placement(other, placement_stage))
                for component in components:
                    self.bring(component, placement_stage)
                yield self.pipe
        except torch.cuda.OutOfMemoryError as exc:
            raise StageOutOfMemoryError(self._oom_message(name)) from exc
        finally:
            for component in components:
                self.release(component)

    def _oom_message(self, stage: str) -> str:
        free, total = torch.cuda.mem_get_info(self.device) if torch.cuda.is_available() else (0, 0)
        text = (
            f"Out of GPU memory in stage '{stage}' with profile '{self.profile.name}': "
            f"{free / 2**30:.1f} GiB free of {total / 2**30:.1f} GiB."
        )
        try:
            mp = self.plan()
            planned = mp.stages.get(PLAN_STAGE.get(stage, stage))
            if planned is not None:
                text += f" The plan predicted {planned.peak_bytes / 2**30:.1f} GiB for this stage."
            hint = mp.leaner_profile_hint()
            if hint:
                text += f" Try the leaner profile: --profile {hint}."
            else:
                text += " No built-in profile is leaner: reduce height/width, or free the GPU of other programs."
        except Exception:  # the message must never hide the OOM itself
            text += " Try a profile for a smaller card (e.g. --profile 12gb or 8gb)."
        return text
