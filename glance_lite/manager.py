"""The distribute/free manager: loads, quantizes, places and evicts components stage by stage.

A profile says, per component, its dtype, quantization and placement; the manager carries that out with the
ecosystem's own tools (diffusers/quanto/bitsandbytes quantization configs, diffusers group offloading,
accelerate device maps) and nothing else. Stages run one after another, each bringing in what it needs and
releasing it according to its placement, so the peak memory of a run is the max over stages, not their sum:

    text_encode  text encoder(s)     -> encode every prompt and the negative prompt, then evict
    denoise      transformer (+ VAE for edit models) -> both phases, adapters switched in place
    decode       VAE                 -> pixels

Placements: resident (stays on the device), evict_after_use (deleted and freed after its stage),
model_offload (parked in CPU RAM between stages), group_offload (weights in CPU RAM, streamed to the GPU
block by block), sharded (blocks split across GPUs), cpu.
"""

from __future__ import annotations

import gc
import weakref
from collections.abc import Callable
from contextlib import contextmanager

import torch

from .memory import MemoryTracker
from .models import ModelSource, component_class, meta_component

TEXT_COMPONENTS = ("text_encoder", "text_encoder_2")  # FLUX has two; profiles call both "text_encoder"
HEAVY_COMPONENTS = TEXT_COMPONENTS + ("transformer",)
# Manager stage -> the planner's name for its most demanding part.
PLAN_STAGE = {"denoise": "slow_phase"}
_QUANTO_WEIGHTS = {"quanto-qfloat8": "float8", "quanto-qint8": "int8", "quanto-qint4": "int4"}


class StageOutOfMemoryError(RuntimeError):
    """A CUDA OOM translated into what to do about it."""


def _torch_dtype(name: str) -> torch.dtype:
    return {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}[name]


def quantization_kwargs(cls, policy, device: torch.device) -> dict:
    """`from_pretrained` kwargs that quantize while loading (module by module, so RAM never holds it all)."""
    q = policy.quantization
    if q == "none":
        return {}
    is_diffusers = cls.__module__.startswith("diffusers")
    if q.startswith("bnb-"):
        if device.type != "cuda":
            raise RuntimeError(
                f"bitsandbytes quantization ({q}) loads only onto a CUDA GPU; this run is on {device}. "
                "Use a quanto quantization or the cpu profile."
            )
        import diffusers
        import transformers

        config_cls = diffusers.BitsAndBytesConfig if is_diffusers else transformers.BitsAndBytesConfig
        if q == "bnb-nf4":
            config = config_cls(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=_torch_dtype(policy.dtype))
        else:
            config = config_cls(load_in_8bit=True)
        return {"quantization_config": config}
    if q in _QUANTO_WEIGHTS and is_diffusers:
        from diffusers import QuantoConfig

        return {"quantization_config": QuantoConfig(weights_dtype=_QUANTO_WEIGHTS[q])}
    return {}  # transformers models are quantized after loading (see quantize_after_load)


def quantize_after_load(module, policy) -> None:
    """optimum-quanto for modules whose library has no working quanto loader (transformers text encoders)."""
    if policy.quantization not in _QUANTO_WEIGHTS or getattr(module, "_glance_quantized", False):
        return
    if module.__class__.__module__.startswith("diffusers"):
        return
    from optimum.quanto import freeze, qfloat8, qint4, qint8, quantize

    weights = {"quanto-qfloat8": qfloat8, "quanto-qint8": qint8, "quanto-qint4": qint4}[policy.quantization]
    quantize(module, weights=weights)
    freeze(module)
    module._glance_quantized = True


class ComponentManager:
    """Owns every heavy module of one loaded model and where it lives. See the module docstring."""

    def __init__(self, source: ModelSource, profile, tracker: MemoryTracker | None = None):
        self.source = source
        self.family = source.family
        self.profile = profile
        gpu = profile.component("transformer").gpu
        self.device = torch.device("cuda", gpu) if profile.device == "cuda" else torch.device(profile.device)
        self.tracker = tracker or MemoryTracker(self.device, interval=None)
        self.load_counts: dict[str, int] = {}
        self.image_size = (1024, 1024)  # (height, width) of the current run, for OOM messages
        self._on_load: dict[str, list[Callable]] = {}
        self.pipe = self._load_light_pipeline()

    # ---- loading -------------------------------------------------------------------------------
    def _load_light_pipeline(self):
        """Tokenizers, scheduler, processor and the (small) VAE; the heavy modules come per stage."""
        skipped = {name: None for name in HEAVY_COMPONENTS if name in self.source.components}
        vae_dtype = _torch_dtype(self.policy("vae").dtype)
        pipe = self.family.pipeline_class.from_pretrained(
            self.source.location, **skipped, dtype=vae_dtype, **self.family.extra_load_kwargs(self.source.location)
        )
        pipe.vae.eval().requires_grad_(False)
        if self.policy("vae").tiling and hasattr(pipe.vae, "enable_tiling"):
            pipe.vae.enable_tiling()
        return pipe

    def policy(self, component: str):
        return self.profile.component(component)

    def on_load(self, component: str, callback: Callable) -> None:
        """Run `callback(module)` right after a component is loaded, before it is placed (e.g. add adapters)."""
        self._on_load.setdefault(component, []).append(callback)

    def is_loaded(self, component: str) -> bool:
        return getattr(self.pipe, component, None) is not None

    def _load(self, component: str):
        policy = self.policy(component)
        module = self._instantiate(component, policy)
        module.eval().requires_grad_(False)
        quantize_after_load(module, policy)
        for callback in self._on_load.get(component, []):
            callback(module)
        self._place(module, policy)
        self.load_counts[component] = self.load_counts.get(component, 0) + 1
        setattr(self.pipe, component, module)
        return module

    def _instantiate(self, component: str, policy):
        """The component's module with its weights, quantized while loading where the policy says.

        The one place that reads weights; benchmarks override it to build random weights from a config.
        """
        cls = component_class(self.source, component)
        kwargs = {"subfolder": component, "dtype": _torch_dtype(policy.dtype)}
        kwargs.update(quantization_kwargs(cls, policy, self.device))
        if policy.placement == "sharded":
            kwargs["device_map"] = self.shard_map(component)
        elif policy.placement in ("resident", "evict_after_use") and self.device.type == "cuda":
            kwargs["device_map"] = {"": str(self.device)}  # shard by shard straight to the GPU, not via CPU RAM
        return cls.from_pretrained(self.source.location, **kwargs)

    def shard_map(self, component: str, gpu_bytes: dict[int, int] | None = None) -> dict[str, int]:
        """Whole blocks spread over the profile's GPUs (accelerate's device-map format).

        By default the memory planner's map, which balances head-room across GPUs for what else it put there
        (text encoder, VAE decode); with explicit `gpu_bytes`, accelerate's greedy fill on the meta model.
        """
        from accelerate import infer_auto_device_map

        if gpu_bytes is None:
            from .plan import plan as make_plan

            return make_plan(self.source.model_id, self.profile, *self.image_size).device_map
        policy = self.policy(component)
        meta = meta_component(self.source, component)
        return infer_auto_device_map(
            meta,
            max_memory=gpu_bytes,
            no_split_module_classes=list(getattr(meta, "_no_split_modules", None) or []),
            dtype=_torch_dtype(policy.dtype),
        )

    def _place(self, module, policy) -> None:
        placement = policy.placement
        if placement == "sharded":
            return  # placed by its device map while loading
        if placement in ("resident", "evict_after_use") or (placement == "model_offload" and self.device.type == "cpu"):
            module.to(self.device)
        elif placement == "group_offload":
            self._group_offload(module, policy)
        # model_offload waits in CPU RAM until its stage; cpu stays where it is.

    def _group_offload(self, module, policy) -> None:
        from diffusers.hooks import apply_group_offloading

        if policy.use_stream and self.device.type == "cuda":
            # Streams need pinned RAM; pin in place so diffusers does not keep a second, unpinned copy.
            with torch.no_grad():
                for param in module.parameters():
                    param.data = param.data.pin_memory()

        apply_group_offloading(
            module,
            onload_device=self.device,
            offload_device=torch.device("cpu"),
            offload_type="block_level",
            num_blocks_per_group=policy.blocks_per_group or 1,
            use_stream=bool(policy.use_stream) and self.device.type == "cuda",
        )

    # ---- stage lifecycle -----------------------------------------------------------------------
    def bring(self, component: str):
        """Make a component usable on the execution device (loading it if needed)."""
        module = getattr(self.pipe, component, None)
        if module is None:
            return self._load(component)
        if self.policy(component).placement in ("resident", "model_offload", "evict_after_use"):
            module.to(self.device)  # no-op when already there; the VAE starts in CPU RAM with the light pipeline
        return module

    def release(self, component: str) -> None:
        """After a stage: keep, park in CPU RAM, or evict and free, as the component's placement says."""
        placement = self.policy(component).placement
        if placement == "evict_after_use" and component != "vae":
            self.evict(component)
        elif placement in ("model_offload", "evict_after_use") and self.device.type != "cpu":
            getattr(self.pipe, component).to("cpu")

    def evict(self, component: str) -> weakref.ref | None:
        """Drop the manager's (the only) reference and free its memory; returns a weakref to prove it died."""
        module = getattr(self.pipe, component, None)
        if module is None:
            return None
        ref = weakref.ref(module)
        setattr(self.pipe, component, None)
        del module
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
        return ref

    @contextmanager
    def stage(self, name: str, components: tuple[str, ...]):
        """Bring `components`, measure the stage, release them; a CUDA OOM becomes an actionable message."""
        try:
            with self.tracker.stage(name):
                for component in components:
                    self.bring(component)
                yield self.pipe
        except torch.cuda.OutOfMemoryError as exc:
            raise StageOutOfMemoryError(self._oom_message(name)) from exc
        finally:
            for component in components:
                if self.is_loaded(component):
                    self.release(component)

    def text_components(self) -> tuple[str, ...]:
        return tuple(c for c in TEXT_COMPONENTS if c in self.source.components)

    def _oom_message(self, stage: str) -> str:
        free, total = torch.cuda.mem_get_info(self.device) if torch.cuda.is_available() else (0, 0)
        text = (
            f"Out of GPU memory in stage '{stage}' with profile '{self.profile.name}': "
            f"{free / 2**30:.1f} GiB free of {total / 2**30:.1f} GiB."
        )
        try:
            from .plan import plan as make_plan

            mp = make_plan(self.source.model_id, self.profile, *self.image_size)
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
