"""Public API: `load()` a model once with its Slow/Fast LoRAs, then `.generate()` as often as you like.

One `generate()` call, end to end:
  inputs validated -> phase plan (schedule.py) -> text_encode stage (manager.py: encode all prompts, evict the
  text encoder) -> denoise stage (sampler.py: slow phase with the slow adapter, fast phase with the fast
  adapter, same transformer) -> vae_decode stage -> images.
Everything that can be checked without weights (prompt, size, schedule, LoRA files against the
architecture built on the meta device) is checked before anything heavy is loaded.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from . import __version__, gpus
from .checks import SIZE_MULTIPLE, check_prompts, check_size
from .families import conditioning_to
from .lora import LoraCompat, LoraReport, LoraSource, check_lora_fits, load_lora, read_lora_file
from .manager import ComponentManager
from .memory import StageRecord
from .models import ModelSource, meta_component, resolve_model
from .sampler import sample
from .methods import FEWSTEP, Method, MethodError, parse_method
from .schedule import SCHEDULE_MODES, PhasePlan, PhaseSplit

logger = logging.getLogger("glance_lite")
DEFAULT_MODEL = "tiny/qwen-image"
OUTPUT_TYPES = ("pil", "np", "latent")


@dataclass
class GenerationResult:
    """Images (or latents) plus what a user or benchmark wants to know about how they were made."""

    images: list
    latents: list[torch.Tensor]
    plan: PhasePlan
    stages: list[StageRecord] = field(default_factory=list)
    phase_seconds: dict[str, float] = field(default_factory=dict)
    switch_seconds: dict[str, float] = field(default_factory=dict)
    lora_reports: list[LoraReport] = field(default_factory=list)
    noise: list[torch.Tensor] = field(default_factory=list)  # the latents each image started from (pass as latents=)
    settings: list[dict] = field(default_factory=list)  # per image, what made it (written into PNGs; --from-png)
    method: Method | None = None
    transformer_calls: int = 0  # transformer forwards per image (a batched CFG pair is one)

    @property
    def image(self):
        return self.images[0]

    def to_dict(self) -> dict:
        return {
            "method": self.method.to_dict() if self.method else None,
            "sigmas": plan_sigmas(self.plan),
            "transformer_calls": self.transformer_calls,
            "schedule": self.plan.to_dict(),
            "stage_seconds": {r.stage: r.seconds for r in self.stages},
            "phase_seconds": self.phase_seconds,
            "adapter_switch_seconds": self.switch_seconds,
            "peak_memory_bytes": {r.stage: r.peak_bytes for r in self.stages},
            "loras": [r.to_dict() for r in self.lora_reports],
        }


# ---- input validation (cheap, before any weights; prompts and size: glance_lite.checks) ------------------------
def _condition_image(image):
    from PIL import Image

    if image is None:
        raise ValueError("This is an image-editing model: pass the input image (image=path or PIL image, --image PATH).")
    if isinstance(image, Image.Image):
        return image.convert("RGB")
    path = Path(image)
    try:
        with Image.open(path) as img:
            return img.convert("RGB")
    except (OSError, ValueError) as exc:
        raise ValueError(f"Cannot read the input image {path}: {exc}. Pass a PNG/JPEG/WEBP file.") from None


def resolve_profile(profile, model: str, height: int, width: int):
    """A Profile from a Profile, a built-in name, a YAML path, or "auto" (the planner picks; it says why)."""
    from .autoselect import select_profile
    from .profiles import Profile, load_profile

    if isinstance(profile, Profile):
        return profile
    if profile in (None, "auto"):
        gpus.claim_gpu_for_auto()  # under accelerate launch: this process's GPU is the one auto reads
        chosen, why = select_profile(model, height, width)
        logger.info("profile auto -> %s: %s", chosen.name, why)
        return chosen
    return load_profile(profile)


def plan_sigmas(plan: PhasePlan) -> list[float]:
    """The noise levels a run visits, the final one included (0: the clean image)."""
    return [step.sigma for step in plan.steps] + [plan.steps[-1].sigma_next] if plan.steps else []


def _lora_source(lora, weight_name: str | None) -> LoraSource | None:
    if lora is None or isinstance(lora, LoraSource):
        return lora
    return LoraSource(str(lora), weight_name)


class Glance:
    """A loaded model: one transformer with its adapters ('slow' and 'fast' for Glance, 'fewstep' for a few-step LoRA),
    reused by every `generate()`, whichever sampling method it runs (`glance_lite.methods`)."""

    def __init__(self, source: ModelSource, profile, loras: dict[str, LoraSource], lora_compat: LoraCompat, split: PhaseSplit,
                 manager: ComponentManager | None = None, *, device: str | None = None, rank: int = 0,
                 method: Method | str = "glance"):  # fmt: skip
        self.source = source
        self.family = source.family
        self.profile = profile
        self.loras = loras
        self.lora_compat = lora_compat
        self.split = split
        self.method = parse_method(method)
        self.lora_reports: list[LoraReport] = []
        self._lora_files: list[dict] | None = None
        # benchmarks pass a manager that builds random weights
        self.manager = manager or ComponentManager(source, profile, device=device, rank=rank)
        self.manager.on_load("transformer", self._attach_adapters)

    def _attach_adapters(self, transformer) -> None:
        """Every adapter, by name; a few-step LoRA at the scale its publisher's pipeline applies."""
        self.lora_reports = [
            load_lora(transformer, self.family, src, name, "published" if name == FEWSTEP else self.lora_compat)
            for name, src in self.loras.items()
        ]

    @property
    def device(self) -> torch.device:
        return self.manager.device

    @property
    def compute_dtype(self) -> torch.dtype:
        """The dtype the transformer computes in: latents and prompt embeddings are cast to it, whatever dtype the
        text encoder returned (a V100's fp16 embeddings would otherwise run the fp32 transformer's first layers, and
        torchao's int8 matmuls, in fp16)."""
        from .quantize import torch_dtype

        return torch_dtype(self.manager.placement("transformer", "denoise").dtype)

    def lora_files(self) -> list[dict]:
        """The adapter files with their sha256 (computed once): part of what makes an image."""
        if self._lora_files is None:
            self._lora_files = [{"phase": phase, "source": str(src), **file_entry(src.resolve())} for phase, src in self.loras.items()]
        return self._lora_files

    def plan(self, height: int, width: int, mode: str = "consistent", split: PhaseSplit | None = None, base_steps: int | None = None,
             method: Method | str | None = None) -> PhasePlan:  # fmt: skip
        """The steps a `generate()` with these arguments will take (no model work)."""
        if mode not in SCHEDULE_MODES:
            raise ValueError(f"Unknown schedule mode {mode!r}: choose one of {', '.join(SCHEDULE_MODES)}.")
        method = self.resolve_method(method, base_steps)
        seq_len = self.family.seq_len(self.manager.pipe, height, width)
        return method.plan(self.manager.pipe.scheduler.config, seq_len, split or self.split, mode)

    def resolve_method(self, method: Method | str | None = None, base_steps: int | None = None) -> Method:
        """The method a call runs: `base_steps=N` is the base model, else the one given, else the one loaded for;
        a few-step method needs its LoRA loaded."""
        method = parse_method(f"base-{base_steps}") if base_steps is not None else parse_method(method or self.method)
        if method.adapter and method.adapter not in self.loras:
            raise MethodError(
                f"{method.name} samples with a few-step LoRA and none is loaded: pass fewstep_lora= to load() "
                "(--lora FILE), or use a preset such as lightning-8 for its published file."
            )
        return method

    @torch.no_grad()
    def generate(
        self,
        prompt: str | Sequence[str],
        *,
        negative_prompt: str = " ",
        height: int = 1024,
        width: int = 1024,
        seed: int = 0,
        true_cfg_scale: float | None = None,
        mode: str = "consistent",
        split: PhaseSplit | None = None,
        base_steps: int | None = None,
        output_type: str = "pil",
        image=None,
        progress: bool = True,
        latents=None,
        generator_device: str = "cpu",
        method: Method | str | None = None,
    ) -> GenerationResult:
        """Generate one image per prompt (prompt i uses seed + i) with a sampling method: `method` ("glance",
        "base-50", "fewstep-8", "lightning-8", ...; default: the one `load()` was given), `base_steps=N` for the
        plain base model. A few-step method runs without guidance unless `true_cfg_scale` says otherwise.

        `mode` is "consistent" (the latent follows the schedule, lands on the clean image) or "reference"
        (reproduces the official Glance sampler). `image` is the input image for Qwen-Image-Edit models.
        The starting noise is drawn from `seed` by a generator on `generator_device` ("cpu", the default, draws the
        same noise on every machine; "cuda" draws what `torch.Generator("cuda").manual_seed(seed)` draws, as the
        official inference script does, and needs a GPU), or given as `latents`: a tensor or a .pt / .safetensors
        file in the pipeline's packed layout ([1, tokens, channels], what `result.noise` holds), one per prompt.
        """
        prompts = check_prompts(prompt)
        check_size(height, width, max(SIZE_MULTIPLE, self.family.vae_scale_factor(self.manager.pipe) * 2))
        if output_type not in OUTPUT_TYPES:
            raise ValueError(f"output_type must be one of {', '.join(OUTPUT_TYPES)}, got {output_type!r}.")
        condition = _condition_image(image) if self.family.needs_condition_image else None
        given = read_latents(latents, len(prompts)) if latents is not None else None
        _check_generator_device(generator_device, self.device)
        method = self.resolve_method(method, base_steps)
        default_scale = self.family.default_true_cfg_scale if method.guidance else 1.0
        scale = default_scale if true_cfg_scale is None else float(true_cfg_scale)
        plan = self.plan(height, width, mode, split, method=method)
        adapters = {phase: (phase if phase in self.loras else None) for phase in plan.phases}

        manager, family, device, dtype = self.manager, self.family, self.device, self.compute_dtype
        manager.image_size = (height, width)
        first_record = len(manager.tracker.records)
        text = manager.text_components()
        text_device = manager.device_of(text[0]) if text else device  # the prompt is encoded where its encoder is
        with manager.stage("text_encode", text) as pipe:
            conds = [conditioning_to(family.encode_prompt(pipe, p, text_device, condition), device, dtype) for p in prompts]
            uncond = conditioning_to(family.encode_prompt(pipe, negative_prompt, text_device, condition), device, dtype) if scale > 1 else None

        denoise_components = tuple(c for c in family.denoise_components if c in manager.components)
        latents, noise, settings, phase_seconds, switch_seconds = [], [], [], {}, {}
        shared_settings = {  # what every prompt's image records alike (files hashed once)
            "negative_prompt": negative_prompt, "height": height, "width": width, "mode": mode,
            "method": method.name, "base_steps": method.steps if method.kind == "base" else None,
            "sigmas": plan_sigmas(plan), "true_cfg_scale": scale,
            "split": {p: list(getattr(split or self.split, p)) for p in ("slow", "fast")} if method.kind == "glance" else None,
            "generator_device": generator_device, "latents": "given" if given is not None else None,
            "image": file_entry(image) if isinstance(image, (str, Path)) else None, **self._model_settings(),
        }  # fmt: skip
        with manager.stage("denoise", denoise_components) as pipe:
            for i, cond in enumerate(conds):
                generator = torch.Generator(generator_device).manual_seed(seed + i)
                state = family.prepare_latents(pipe, height, width, generator, dtype, device, condition)
                if given is not None:
                    state.latents = _given_latents(given[i], state.latents)
                noise.append(state.latents.detach().cpu())
                settings.append({"prompt": prompts[i], "seed": seed + i, **shared_settings})
                run = sample(
                    pipe.transformer, family, plan, state, cond, uncond, scale, adapters,
                    batch_cfg=bool(getattr(self.profile, "batch_cfg", False)),
                    fuse_adapters=bool(getattr(self.profile, "fuse_lora", False)), progress=progress,
                )  # fmt: skip
                latents.append(run.latents)
                settings[-1]["transformer_calls"] = calls = run.transformer_calls
                for phase, seconds in run.phase_seconds.items():
                    phase_seconds[phase] = phase_seconds.get(phase, 0.0) + seconds
                switch_seconds = run.switch_seconds

        images = []
        if output_type != "latent":
            with manager.stage("vae_decode", ("vae",)) as pipe:
                for lat in latents:
                    images.extend(family.decode(pipe, lat, height, width, output_type=output_type))
        return GenerationResult(
            images, latents, plan, manager.tracker.records[first_record:], phase_seconds, switch_seconds, self.lora_reports,
            noise, settings, method, calls,
        )

    def _model_settings(self) -> dict:
        """What a `load()` decided, as settings: model, profile, device, adapters."""
        location = Path(self.source.model_id)
        profile = self.profile.source
        return {
            "model": str(location.resolve()) if location.is_dir() else self.source.model_id,
            "profile": self.profile.name if profile.startswith("profiles/") or not profile else str(Path(profile).resolve()),
            "device": self.manager.device_override, "lora_compat": self.lora_compat, "loras": self.lora_files(),
            "glance_lite_version": __version__,
        }


GENERATOR_DEVICES = ("cpu", "cuda")


def _check_generator_device(generator_device: str, device: torch.device) -> None:
    if generator_device not in GENERATOR_DEVICES:
        raise ValueError(f"generator_device must be one of {', '.join(GENERATOR_DEVICES)}, got {generator_device!r}.")
    if generator_device == "cuda" and (device.type != "cuda" or not torch.cuda.is_available()):
        raise ValueError(
            "generator_device='cuda' draws the noise the official script draws on a GPU, and this run has none. "
            "On a CPU, pass that noise as latents= (a tensor or a .pt / .safetensors file) instead."
        )


def read_latents(latents, count: int) -> list[torch.Tensor]:
    """Initial latents from a tensor or a .pt / .safetensors file (a single tensor, or one stored as "latents"):
    one [1, tokens, channels] latent per prompt, or a batch [count, tokens, channels]."""
    if isinstance(latents, (str, Path)):
        path = Path(latents)
        if not path.is_file():
            raise FileNotFoundError(f"Latents file {path} does not exist.")
        try:
            if path.suffix == ".safetensors":
                from safetensors.torch import load_file

                tensors = load_file(str(path))
            else:
                tensors = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # any unreadable file means the same thing to the user
            raise ValueError(f"Cannot read latents from {path}: {exc}. Save a tensor with torch.save or safetensors.") from None
        if isinstance(tensors, dict):
            if "latents" not in tensors and len(tensors) != 1:
                raise ValueError(f"{path} holds {len(tensors)} tensors and none is named 'latents'.")
            tensors = tensors.get("latents", next(iter(tensors.values())))
        latents = tensors
    if not isinstance(latents, torch.Tensor) or latents.dim() != 3:
        raise ValueError("latents must be a [batch, tokens, channels] tensor: the pipeline's packed layout (result.noise).")
    if latents.shape[0] != count:
        raise ValueError(f"latents hold {latents.shape[0]} starting points for {count} prompts: give one per prompt.")
    return list(latents.split(1))


def _given_latents(given: torch.Tensor, drawn: torch.Tensor) -> torch.Tensor:
    if given.shape != drawn.shape:
        raise ValueError(
            f"latents have shape {tuple(given.shape)}, but this model at this size starts from {tuple(drawn.shape)} "
            "(height and width decide the number of tokens)."
        )
    return given.to(drawn.device, drawn.dtype)


def file_entry(path) -> dict:
    """A file as settings record it: its absolute path and the sha256 of its bytes."""
    from .data import file_digest

    return {"name": str(Path(path).resolve()), "sha256": file_digest(Path(path))}


def _official_loras(family, model: str) -> dict[str, LoraSource]:
    """The published Glance LoRAs of an official base model, found (local hub cache, else a download) before the
    architecture is built: a machine without them is told at once what is missing and how to go on."""
    repo, slow_file, fast_file = family.official_loras
    loras = {"slow": LoraSource(repo, slow_file), "fast": LoraSource(repo, fast_file)}
    missing = []
    for src in loras.values():
        try:
            src.resolve()
        except FileNotFoundError as exc:
            missing.append((src.weight_name, exc.__context__ or exc))
    if missing:
        from huggingface_hub import constants

        names = " and ".join(name for name, _ in missing)
        raise FileNotFoundError(
            f"{model} runs with the published Glance LoRAs unless told otherwise, and {names} of {repo} "
            f"{'is' if len(missing) == 1 else 'are'} not in the local Hugging Face cache ({constants.HF_HUB_CACHE}) "
            f"and could not be downloaded ({type(missing[0][1]).__name__}). Download them "
            f"(`hf download {repo} {slow_file} {fast_file}`), pass your own (--slow-lora/--fast-lora, "
            "slow_lora=/fast_lora=), or run the base model without them "
            "(--no-official-loras, use_official_loras=False)."
        )
    return loras


def _preset_lora(family, method: Method, model: str) -> LoraSource:
    """A preset's published few-step LoRA for this model's family, found (local hub cache, else a download) before
    anything loads."""
    published = family.few_step_loras.get(method.preset)
    if published is None:
        raise MethodError(
            f"{method.preset} runs Qwen-Image-Lightning, published for Qwen-Image and Qwen-Image-Edit; {model} is a "
            f"{family.name} model: pass a few-step LoRA made for it with --lora FILE (fewstep_lora=) and --method fewstep-N."
        )
    repo, file = published
    lora = LoraSource(repo, file)
    try:
        lora.resolve()
    except FileNotFoundError:
        raise FileNotFoundError(
            f"{method.preset} runs with {file} of {repo}, which is not in the local Hugging Face cache and could not "
            f"be downloaded: download it (`hf download {repo} {file}`), or pass the file with --lora FILE (fewstep_lora=)."
        ) from None
    return lora


def _bundled_lora(model: str, method: Method) -> LoraSource:
    """The few-step LoRA an embedded model ships for this step count (`pocket.bundled_fewstep_lora`), else a refusal
    that says what to pass."""
    from .pocket import bundled_fewstep_lora, shipped_fewstep_note

    path = bundled_fewstep_lora(model, method.steps)
    if path is not None:
        return LoraSource(str(path))
    raise MethodError(f"{method.name} samples with a few-step LoRA: pass it with --lora FILE (fewstep_lora=){shipped_fewstep_note(model)}.")


def load(
    model: str = DEFAULT_MODEL,
    slow_lora=None,
    fast_lora=None,
    *,
    slow_weight_name: str | None = None,
    fast_weight_name: str | None = None,
    profile="auto",
    lora_compat: LoraCompat = "trained",
    use_official_loras: bool = True,
    split: PhaseSplit | None = None,
    height: int = 1024,
    width: int = 1024,
    condition_area: int | None = None,
    device: str | None = None,
    rank: int | None = None,
    method: Method | str = "glance",
    fewstep_lora=None,
    fewstep_weight_name: str | None = None,
    scheduler: dict | None = None,
) -> Glance:
    """Resolve and check everything, then return a `Glance` whose `.generate()` reuses the loaded model.

    `method` is what `.generate()` samples with by default (`glance_lite.methods`: "glance", "base-N",
    "fewstep-N", "lightning-8", "lightning-4"); `scheduler` overrides a few-step method's scheduler settings.
    LoRAs: a local .safetensors file, a folder, or a hub repo id with `*_weight_name`. For the official base
    models with published Glance LoRAs (Qwen/Qwen-Image -> CSU-JPG/Glance) those are used by the glance method
    unless you pass your own or `use_official_loras=False`; with no LoRAs the Glance schedule runs on the plain base
    model. `fewstep_lora` is the few-step LoRA (e.g. a Qwen-Image-Lightning file); the lightning presets default to
    the published file for the model's family. Slow, fast and few-step LoRAs can all be loaded at once: one
    transformer, adapters switched by name.
    `condition_area` (edit models): pixel area the input image is resized to (stock: 1024*1024).
    `device="cpu"` runs the profile's choices (quantization, residency, placement) on the CPU; `rank` is this
    process's index under `accelerate launch` (default: $LOCAL_RANK), which picks its GPUs.
    """
    source = resolve_model(model)
    family = source.family
    if condition_area is not None:
        if not family.needs_condition_image:
            raise ValueError(f"condition_area applies to image-editing models; {model} is a {family.name} model.")
        family.condition_area = int(condition_area)
    split = split or family.default_split
    split.validate()
    rank = gpus.local_rank() if rank is None else rank
    resolved_profile = resolve_profile(profile, model, height, width)
    gpus.use_profile_gpus(resolved_profile, family, device, rank)  # before any LoRA file or weight is read
    method = parse_method(method, scheduler=scheduler)
    loras = {"slow": _lora_source(slow_lora, slow_weight_name), "fast": _lora_source(fast_lora, fast_weight_name)}
    if method.kind == "glance" and not any(loras.values()) and use_official_loras and source.is_official_base and family.official_loras:
        loras = _official_loras(family, model)
    loras[FEWSTEP] = _lora_source(fewstep_lora, fewstep_weight_name)
    if loras[FEWSTEP] is None and method.preset:
        loras[FEWSTEP] = _preset_lora(family, method, model)
    if loras[FEWSTEP] is None and method.kind == "fewstep":
        loras[FEWSTEP] = _bundled_lora(model, method)
    loras = {name: src for name, src in loras.items() if src is not None}
    if loras:
        meta = meta_component(source)
        for src in loras.values():
            check_lora_fits(read_lora_file(src.resolve())[0], meta, family, str(src))
    return Glance(source, resolved_profile, loras, lora_compat, split, device=device, rank=rank, method=method)


def generate(prompt: str | Sequence[str], model: str = DEFAULT_MODEL, slow_lora=None, fast_lora=None, *, profile="auto", lora_compat: LoraCompat = "trained", **generate_kwargs) -> GenerationResult:
    """One-shot: `load(...)` then `.generate(prompt, ...)`. Use `load()` directly to generate many times."""
    check_prompts(prompt)
    check_size(generate_kwargs.get("height", 1024), generate_kwargs.get("width", 1024))
    load_kwargs = {k: generate_kwargs.pop(k) for k in ("slow_weight_name", "fast_weight_name", "use_official_loras", "split", "condition_area",
                                                       "device", "rank", "fewstep_lora", "fewstep_weight_name", "scheduler") if k in generate_kwargs}  # fmt: skip
    if "method" in generate_kwargs:
        load_kwargs["method"] = generate_kwargs["method"]
    glance = load(
        model, slow_lora, fast_lora, profile=profile, lora_compat=lora_compat,
        height=generate_kwargs.get("height", 1024), width=generate_kwargs.get("width", 1024), **load_kwargs,
    )  # fmt: skip
    return glance.generate(prompt, **generate_kwargs)
