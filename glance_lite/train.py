"""Train Glance's Slow-LoRA and Fast-LoRA: `python -m glance_lite.train` and `glance_lite.train(...)`.

    python -m glance_lite.train --profile 4090 --model Qwen/Qwen-Image --data DIR --phase both --output OUT
    python -m glance_lite.train --model tiny/qwen-image --data DIR --output OUT --profile cpu --config my.yaml
    python -m glance_lite.train --model black-forest-labs/FLUX.1-dev --print-config   # the keys and defaults
    accelerate launch -m glance_lite.train ...                                        # several GPUs (DDP)
    python -m glance_lite.train --model pocket/qwen-image --phase distill --data captions.txt --output OUT --profile cpu

Glance trains each adapter on ONE image–caption pair, only at the timesteps its phase samples at: the Slow-LoRA
at the 5 early timesteps, the Fast-LoRA at the 5 late ones (reference notes §1, §4). A run, end to end:

  1. checks (no model loaded yet): the config, then the dataset -- every problem listed at once;
  2. encode: text embeddings (caption and empty caption) and VAE latents, cached on disk keyed by content and
     model, so re-runs and the second phase load no text encoder or VAE at all; both are evicted afterwards;
  3. the transformer is loaded once, frozen, quantized as the profile's `training.base_quantization` says,
     with gradient checkpointing and, if `training.block_offload`, block streaming (`streaming.py`); one LoRA per
     phase is added before placement, each from its own seed (the fast one does not depend on the slow run);
  4. `train_phase` per phase: the loop below; atomic checkpoints every `checkpoint_every` steps, so re-running the
     same command after a crash or kill -9 resumes where the last checkpoint left off, bit for bit;
  5. OUT/slow.safetensors and OUT/fast.safetensors: LoRA files with one `.alpha` key per layer (`lora.py`), loaded at
     the trained scale by `glance_lite.load(..., slow_lora=, fast_lora=)`, by `pipe.load_lora_weights` and by ComfyUI.

Timesteps: by default (`timesteps: consistent`) each phase trains at the TRUE schedule timesteps of the training
resolution, the ones `glance_lite.generate` samples at in its default consistent mode. The reference trainer
hard-codes the 1024x1024 values rounded to bfloat16 whatever the resolution (`timesteps: reference`, matching the
`--mode reference` sampler); at 1024x1024 both agree to within bf16 rounding. An explicit list also works.

Several processes (`accelerate launch`, torchrun): accelerate places each process on its GPU and DDP averages the
LoRA gradients (each process draws its own timesteps and noise: an effective batch of N); only the main process
writes files. Checkpoints hold every process's sampler state, so a resume needs the same number of processes.

`--phase distill` trains, in the same loop and with the same checkpoints, a few-step student LoRA on captions alone
(`glance_lite.distill`): OUT/distill.safetensors, sampled with `--method fewstep-N --lora OUT/distill.safetensors`.

Output folder: slow.safetensors, fast.safetensors (final adapters), {phase}_loss.csv / .png (loss log and curve),
train_config.yaml (the resolved config), checkpoints/{phase}/step-NNNNNN/, cache/ (embeddings, latents).
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import math
import os
import shlex
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import _make_callable, cli
from .data import (
    DEFAULT_MIN_SIZE,
    EmbeddingCache,
    Sample,
    file_digest,
    validate_dataset,
)
from .errors import UserError
from .families import conditioning_to
from .loss_log import LossLog, plot_loss_curve, read_loss_csv
from .models import family_of
from .train_config import DISTILL, PHASES, RUN_KEYS, ConfigFile, TrainConfig, load_config_file, parse_set_options, read_config_file

if TYPE_CHECKING:  # torch is imported where a run starts: `--help` and refusals answer before it loads
    import torch

# Config keys that do not change what is trained (a resumed run may change them).
_BOOKKEEPING_KEYS = ("checkpoint_every", "keep_checkpoints", "cache_dir")
# Config keys only a distillation run reads (a Glance phase's checkpoints do not depend on them).
_DISTILL_KEYS = ("distill_steps", "teacher_steps", "teacher_cfg", "teacher_noises")
ADAPTERS = (*PHASES, DISTILL)  # every adapter a run can train, each its own file OUT/<name>.safetensors
# Added to the seed so each phase's LoRA init and step sampling differ, and do not depend on which phases run.
_PHASE_SEED = {"slow": 0, "fast": 1_000_003, DISTILL: 2_000_006}
_EVAL_SEED = 7_777


# ==== results ======================================================================================================
@dataclass
class PhaseResult:
    """What one adapter's training did. `eval_loss_*`: the flow-matching loss at every phase timestep with fixed
    noise (a noise-free measure of progress, unlike the per-step loss of one random timestep)."""

    phase: str
    adapter: Path
    steps: int
    timesteps: list[float]
    losses: list[float]
    resumed_from: int = 0
    already_done: bool = False
    eval_loss_before: float | None = None
    eval_loss_after: float | None = None
    seconds: float = 0.0


@dataclass
class TrainResult:
    model: str
    output: Path
    profile: str
    config: TrainConfig
    phases: dict[str, PhaseResult]
    captions: list[str]
    sizes: list[tuple[int, int]]  # (height, width) of each sample
    targets: list[torch.Tensor]  # each sample's clean packed latent, as the transformer sees it
    control_images: list[Path | None] = field(default_factory=list)
    stages: list = field(default_factory=list)  # memory.StageRecord per stage (encode, train_slow, ...)

    @property
    def adapters(self) -> dict[str, Path]:
        """Every adapter file present in the output folder (also ones from an earlier run of the other phase)."""
        return {p: self.output / f"{p}.safetensors" for p in ADAPTERS if (self.output / f"{p}.safetensors").is_file()}

    def generate_command(self) -> str:
        """The `python -m glance_lite.generate` call that samples the first training caption with these adapters."""
        if DISTILL in self.phases:
            from .distill import generate_command

            return generate_command(self)
        height, width = self.sizes[0]
        parts = ["python", "-m", "glance_lite.generate", "--model", self.model]
        for phase, path in self.adapters.items():
            parts += [f"--{phase}-lora", str(path)] if phase in PHASES else []
        parts += ["--prompt", self.captions[0], "--height", str(height), "--width", str(width), "--profile", self.profile]
        if self.control_images and self.control_images[0] is not None:
            parts += ["--image", str(self.control_images[0])]
        if self.config.timesteps == "reference":
            parts += ["--mode", "reference"]
        return shlex.join(parts + ["--out", "glance.png"])


# ==== the training run ============================================================================================
@dataclass
class TrainingExample:
    """One sample, encoded: what every training step of it needs, already on the training device."""

    caption: str
    image_path: Path
    control_path: Path | None
    height: int
    width: int
    latents: torch.Tensor  # clean packed latent, float32
    cond: dict
    empty_cond: dict  # the empty caption: caption dropout
    condition: tuple | None = None  # edit: (packed control latents, (height, width))
    state: Any = None  # family LatentState, once the transformer is loaded
    timesteps: dict[str, list[float]] = field(default_factory=dict)


@dataclass
class Run:
    """What the phases of one `train()` call share."""

    model: str
    config: TrainConfig
    family: Any
    profile: Any
    accelerator: Any
    manager: Any
    output: Path
    examples: list[TrainingExample]
    fingerprint: str
    data_digest: str
    progress: bool
    verbose: bool
    transformer: Any = None
    resume: dict = field(default_factory=dict)  # phase -> the checkpoint.Checkpoint to resume from, or None
    cache: EmbeddingCache | None = None  # encodings and, for distillation, the teacher's latents

    @property
    def dtype(self) -> torch.dtype:
        from .quantize import torch_dtype

        return torch_dtype(self.profile.training.dtype)

    @property
    def optimizer_name(self) -> str:
        return self.config.optimizer or self.profile.training.optimizer

    def adapter_path(self, phase: str) -> Path:
        return self.output / f"{phase}.safetensors"

    def checkpoints(self, phase: str) -> Path:
        return self.output / "checkpoints" / phase

    def describe(self, phase: str) -> dict:
        """What decides the trained weights of `phase`; a checkpoint resumes only under the same description."""
        unused = _BOOKKEEPING_KEYS + (() if phase == DISTILL else _DISTILL_KEYS)
        config = {k: v for k, v in self.config.to_dict().items() if k not in unused}
        training = dataclasses.asdict(self.profile.training)
        return {"phase": phase, "model": self.fingerprint, "data": self.data_digest, "optimizer": self.optimizer_name,
                "processes": self.accelerator.num_processes, "timesteps": [e.timesteps[phase] for e in self.examples],
                **{f"config.{k}": v for k, v in config.items()}, **{f"profile.training.{k}": v for k, v in training.items()}}  # fmt: skip

    def digest(self, phase: str) -> str:
        return hashlib.sha256(json.dumps(self.describe(phase), sort_keys=True, default=str).encode()).hexdigest()

    def say(self, text: str) -> None:
        if self.verbose and self.accelerator.is_main_process:
            print(text, flush=True)

    def warn(self, text: str) -> None:
        """A line the user must see (a checkpoint skipped), on stderr, whatever `verbose` says."""
        if self.accelerator.is_main_process:
            print(f"warning: {text}", file=sys.stderr, flush=True)


def train(
    model: str,
    data: str | Path,
    output: str | Path,
    phase: str = "both",
    profile="auto",
    config: str | Path | dict | None = None,
    *,
    restart: bool = False,
    progress: bool = True,
    verbose: bool = True,
    device: str | None = None,
    **overrides,
) -> TrainResult:
    """Train the Slow-LoRA, the Fast-LoRA or both (slow first) on the image–caption pairs in `data`; or, with
    `phase="distill"`, a few-step student LoRA on the captions in `data` (a text file or a dataset folder).

    `config`: a YAML file or dict of `TrainConfig` keys; keyword `overrides` win over it. Re-running the same call
    resumes from the newest checkpoint (a finished phase is not retrained); `restart=True` discards checkpoints.
    Nothing heavy happens before the config and the dataset have been checked. `progress`: tqdm bars; `verbose`:
    one-line messages (resuming, skipping a finished phase, the summary with the generate command). `device="cpu"`
    runs the profile's training choices (quantized frozen base, block streaming, optimizer) on the CPU.
    """
    phases = _phases(phase)
    family = family_of(model)
    settings = read_config_file(config) if isinstance(config, (str, Path)) else dict(config or {})
    cfg = TrainConfig.for_family(family, {**settings, **overrides}, phase)
    if isinstance(cfg.timesteps, list) and len(phases) > 1:
        raise ValueError("A plain list of timesteps applies to one phase: train one --phase, or give {slow: [...], fast: [...]}.")
    if cfg.condition_area is not None and hasattr(family, "condition_area"):
        family.condition_area = cfg.condition_area
    check_output_folder(Path(output), phases, restart)
    if phase == DISTILL:
        from .distill import check_family, read_captions

        check_family(family, model)
        samples = read_captions(data)
    else:
        min_size = cfg.min_image_size or min(DEFAULT_MIN_SIZE, cfg.resolution)
        samples = validate_dataset(data, edit=family.needs_condition_image, min_size=min_size)

    run = _start_run(model, family, cfg, samples, Path(output), profile, progress, verbose, restart, phases, device)
    try:
        results = _train_phases(run, phases)
    finally:
        run.manager.tracker.close()
    profile_label = profile if isinstance(profile, str) and profile != "auto" else run.profile.name
    result = TrainResult(
        model, run.output, profile_label, cfg, results,
        [e.caption for e in run.examples], [(e.height, e.width) for e in run.examples],
        [e.latents.detach().cpu() for e in run.examples if e.latents is not None], [e.control_path for e in run.examples], list(run.manager.tracker.records),
    )  # fmt: skip
    run.say(_summary(result))
    return result


def _train_phases(run: Run, phases) -> dict[str, PhaseResult]:
    """Load the transformer once (only if some phase still needs training), then train each phase in order."""
    todo = [p for p in phases if not _phase_done(run, p)]
    if todo:
        run.manager.on_load("transformer", lambda module: _prepare_transformer(module, run, todo))
        run.transformer = run.manager.bring("transformer", "train_step")
        if DISTILL in todo:
            _run_teacher(run)
        for e in run.examples:
            e.state = run.family.training_state(run.manager.pipe, e.latents.to(run.dtype), e.height, e.width, e.condition)
    results = {}
    for phase in phases:
        if phase in todo:
            with run.manager.tracker.stage(f"train_{phase}"):
                results[phase] = train_phase(run, phase)
        else:
            results[phase] = _finished_phase(run, phase)
    return results


def _run_teacher(run: Run) -> None:
    """Distillation: the teacher's latents for every example (cached; the main process samples, the others read)."""
    from .distill import attach_teacher_points

    with run.manager.tracker.stage("teacher"), run.accelerator.main_process_first():
        attach_teacher_points(run, run.cache)


def train_phase(run: Run, phase: str) -> PhaseResult:
    """The training loop of one adapter: flow-matching MSE at the phase's timesteps, checkpointed, resumable."""
    import torch.nn.functional as F

    cfg, family, accelerator = run.config, run.family, run.accelerator
    params = _activate_adapter(run.transformer, phase)
    optimizer = accelerator.prepare_optimizer(_build_optimizer(params, cfg, run.optimizer_name), device_placement=False)
    lr_scheduler = _build_lr_scheduler(optimizer, cfg)
    model = accelerator.prepare_model(_only_trainable_for_ddp(run.transformer, accelerator), device_placement=False)
    sampler = _step_sampler(run, phase, seed=cfg.seed + _PHASE_SEED[phase] + accelerator.process_index)
    start, eval_before = _resume(run, phase, optimizer, lr_scheduler, sampler)
    if start == 0:
        eval_before = _eval_loss(run, phase)
    log = LossLog(run.output / f"{phase}_loss.csv", start, enabled=accelerator.is_main_process)
    started = time.perf_counter()
    bar = _progress(run, phase, start)
    divergence = DivergenceCheck(scaled=getattr(accelerator, "scaler", None) is not None)
    for step in range(start, cfg.steps):
        draw = sampler.draw()
        noisy = draw.noisy.to(run.dtype)
        velocity = family.velocity(model, draw.example.state, noisy, family.timestep_tensor(draw.timestep, noisy), draw.cond)
        loss = F.mse_loss(velocity.float(), draw.target.float())
        accelerator.backward(loss)
        grad_norm = accelerator.clip_grad_norm_(params, cfg.max_grad_norm) if cfg.max_grad_norm else _gradient_norm(params)
        loss_value = loss.item()  # one device sync per step, read before the optimizer step
        if divergence.check(loss_value, float(grad_norm)):
            bar.close()
            raise TrainingDivergedError(_divergence_message(run, phase, step + 1, divergence.what))
        lr = optimizer.param_groups[0]["lr"]
        optimizer.step()
        lr_scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        log.record(step + 1, loss_value, lr, draw.timestep)
        bar.set_postfix(loss=f"{loss_value:.4f}")
        bar.update()
        if (step + 1) % cfg.checkpoint_every == 0 or step + 1 == cfg.steps:
            _save_checkpoint(run, phase, step + 1, optimizer, lr_scheduler, sampler, eval_before)
    bar.close()
    accelerator.unwrap_model(model, keep_fp32_wrapper=False)
    accelerator.free_memory()
    return _finish_phase(run, phase, log, start, eval_before, time.perf_counter() - started)


class TrainingDivergedError(UserError, RuntimeError):
    """The loss or the LoRA gradients became NaN/inf: training stopped before the step could damage the adapter."""


@dataclass
class DivergenceCheck:
    """Is a step's loss or gradient NaN/inf? Checked after backward (DDP has then averaged the gradients, so every
    process sees a NaN any of them produced and all stop together) and before the optimizer step, so the adapter
    and every checkpoint keep the last finite weights. With fp16 loss scaling (`scaled`), an overflowing gradient
    is the scaler's business (it skips the step and lowers the scale) unless it happens `max_skipped` steps in a
    row; a non-finite loss always stops."""

    scaled: bool = False
    max_skipped: int = 8
    skipped: int = 0
    what: str = ""

    def check(self, loss: float, grad_norm: float) -> bool:
        if not math.isfinite(loss):
            self.what = f"the loss is {loss}"
            return True
        if math.isfinite(grad_norm):
            self.skipped = 0
            return False
        self.skipped += 1
        if self.scaled and self.skipped < self.max_skipped:
            return False
        self.what = f"the LoRA gradients are {grad_norm} (loss {loss:.4g})"
        if self.scaled:
            self.what += f", {self.skipped} steps in a row despite fp16 loss scaling"
        return True


def _gradient_norm(params) -> float:
    import torch

    grads = [p.grad for p in params if p.grad is not None]
    return float(torch.nn.utils.get_total_norm(grads)) if grads else 0.0


def _divergence_message(run: Run, phase: str, step: int, what: str) -> str:
    """One line: which step, what went non-finite, the dtype the frozen base computes in, what is intact, what to try."""
    from .checkpoint import list_checkpoints

    cfg, training, profile = run.config, run.profile.training, run.profile
    kept = list_checkpoints(run.checkpoints(phase))
    intact = (
        f"the last checkpoint, {kept[-1].path} (step {kept[-1].step}), is intact and nothing was saved after it"
        if kept else "no checkpoint of this phase had been written, and nothing was saved"
    )  # fmt: skip
    lower_lr = f"a lower learning rate (--set learning_rate={cfg.learning_rate / 10:g})"
    fp32 = 'training.mixed_precision: "no" in a copy of the profile (float32 compute; on a V100 the fp32-compute recipe)'
    if training.dtype == "float16":
        tries = f"a bfloat16 profile (Ampere or newer GPUs), {fp32}, or {lower_lr}"
    elif training.dtype == "bfloat16":
        tries = f"{lower_lr}, or {fp32}"
    else:
        tries = lower_lr + ("" if cfg.max_grad_norm else ", or gradient clipping (--set max_grad_norm=1)")
    return (
        f"training stopped at {phase} step {step} of {cfg.steps}: {what}. The frozen base computes in {training.dtype} "
        f"(profile '{profile.name}', training.mixed_precision: {training.mixed_precision}); {intact}. "
        f"Try {tries}, with --restart (changed settings make a new run)."
    )


# ==== run setup: checks, profile, encoding ==========================================================================
def _phases(phase: str) -> tuple[str, ...]:
    if phase == "both":
        return PHASES
    if phase in ADAPTERS:
        return (phase,)
    raise ValueError(f"phase must be slow, fast, both or distill, got {phase!r}.")


def check_output_folder(output: Path, phases, restart: bool) -> None:
    """Refuse, before anything is read or written, an output folder a run cannot use: a file, not writable, or
    holding files of the user's that the run would replace -- an adapter no run in it made (a run writes its last
    checkpoint before the adapter; `restart` replaces it) or a train_config.yaml that is not a run's resolved config."""
    from .checks import OutputPathError, check_writable_folder

    if output.exists() and not output.is_dir():
        raise OutputPathError(f"output {output} is a file; give a folder for the adapters, logs and checkpoints (it is created if missing).")
    check_writable_folder(output, "output")
    for phase in phases:
        adapter = output / f"{phase}.safetensors"
        made_here = (output / "checkpoints" / phase).is_dir()
        if adapter.exists() and not made_here and not restart:
            raise OutputPathError(
                f"{adapter} exists and no training run in {output} made it (no checkpoints/{phase}/): pass --restart "
                "(restart=True) to replace it, or choose another output folder."
            )
    config = output / "train_config.yaml"
    if config.exists() and not _written_by_a_run(config):
        raise OutputPathError(
            f"{config} exists and is not the resolved config a run writes there; a run would replace it: move it, "
            "or choose another output folder."
        )


def _written_by_a_run(path: Path) -> bool:
    """True for the train_config.yaml `_write_resolved_config` writes (it records the optimizer used)."""
    import yaml

    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, yaml.YAMLError):
        return False
    return isinstance(data, dict) and "optimizer_used" in data and "model" in data


def _start_run(model, family, cfg, samples, output, profile, progress, verbose, restart, phases, device) -> Run:
    """Profile, accelerator, light pipeline, and every sample encoded (from the cache when possible)."""
    from . import gpus
    from .manager import ComponentManager
    from .memory import MemoryTracker
    from .models import resolve_model
    from .quantize import torch_dtype

    source = resolve_model(model)
    resolved = _resolve_profile(profile, model, cfg.resolution)
    gpus.use_profile_gpus(resolved, family, device, gpus.local_rank())  # the API's own check
    gpus.check_training_launch(resolved, device, gpus.local_rank())
    accelerator = _make_accelerator(resolved, device)
    tracker = MemoryTracker(accelerator.device, interval=0.05)
    manager = ComponentManager(source, resolved, tracker=tracker, device=device, rank=accelerator.local_process_index)
    manager.image_size = (cfg.resolution, cfg.resolution)  # the plan's residency for the training step
    output.mkdir(parents=True, exist_ok=True)
    if restart and accelerator.is_main_process:
        _discard_previous(output, phases)
    fingerprint = model_fingerprint(source, resolved)
    cache = EmbeddingCache(Path(cfg.cache_dir) if cfg.cache_dir else output / "cache", fingerprint)
    with accelerator.main_process_first():  # one process encodes, the others read its cache entries
        if DISTILL in phases:  # captions: text embeddings only, no images
            from .distill import NEGATIVE_PROMPT, data_digest, make_examples

            texts = encode_texts(manager, family, cache, [*samples, NEGATIVE_PROMPT], run_dtype=torch_dtype(resolved.training.dtype))
            examples, digest = make_examples(samples, texts, cfg), data_digest(samples)
        else:
            examples = encode_examples(manager, family, samples, cfg, cache, run_dtype=torch_dtype(resolved.training.dtype))
            digest = _data_digest(samples)
    run = Run(model, cfg, family, resolved, accelerator, manager, output, examples, fingerprint, digest, progress, verbose)
    run.cache = cache
    student = distill_timesteps(run) if DISTILL in phases else None  # one schedule: every caption at one size
    for example in examples:
        if student is not None:
            example.timesteps = {DISTILL: student}
        else:
            example.timesteps = {p: phase_timesteps(run, p, example.height, example.width) for p in PHASES}
    with accelerator.main_process_first():  # the main process sets unreadable checkpoints aside, the others see that
        _check_checkpoints(run, phases)
    if accelerator.is_main_process:
        _write_resolved_config(run)
    return run


def _resolve_profile(profile, model: str, resolution: int):
    from .api import resolve_profile

    return resolve_profile(profile, model=model, height=resolution, width=resolution)


def _make_accelerator(profile, device: str | None = None):
    """accelerate decides the device of this process (cuda:LOCAL_RANK under `accelerate launch`) and syncs gradients.
    The machine was checked for the profile's GPUs before (`gpus.check_profile_runs_here`)."""
    from accelerate import Accelerator
    from accelerate.utils import DistributedDataParallelKwargs

    on_cpu = profile.device == "cpu" or device == "cpu"

    # Frozen buffers are identical on every rank; not broadcasting them also lets block streaming swap them. Some
    # adapted layers never reach the loss (e.g. the last block's text-stream MLP in Qwen-Image): DDP must expect that.
    ddp = DistributedDataParallelKwargs(broadcast_buffers=False, find_unused_parameters=True)
    if int(os.environ.get("WORLD_SIZE", 1)) == 1:
        # accelerate keeps its precision for the life of the process; a second train() with another profile (the API
        # called twice, a notebook) would be refused. One process alone owns that state, so it is set afresh.
        from accelerate.state import AcceleratorState

        AcceleratorState._reset_state()
    return Accelerator(cpu=on_cpu, mixed_precision=profile.training.mixed_precision, kwargs_handlers=[ddp])


def model_fingerprint(source, profile) -> str:
    """Identifies what produced a cached embedding: the model (and its config files, for local folders) and the
    precision/quantization of the text encoder and VAE."""
    digest = hashlib.sha256()
    digest.update(json.dumps([source.family.name, source.location]).encode())
    folder = Path(source.location)
    encoders = (*source.family.text_encoders, "vae")
    for name in ("model_index.json", *(f"{component}/config.json" for component in encoders)):
        if (folder / name).is_file():
            digest.update(name.encode() + (folder / name).read_bytes())
    for component in ("text_encoder", "vae"):
        policy = profile.component(component)
        digest.update(f"{component}:{policy.dtype}:{policy.quantization}".encode())
    return digest.hexdigest()[:16]


def _data_digest(samples: list[Sample]) -> str:
    digest = hashlib.sha256()
    for s in samples:
        digest.update(json.dumps([file_digest(s.image_path), s.caption, s.control_path and file_digest(s.control_path)]).encode())
    return digest.hexdigest()[:16]


def encode_examples(manager, family, samples, cfg, cache: EmbeddingCache, run_dtype) -> list[TrainingExample]:
    """Text embeddings (caption and empty caption) and clean latents of every sample, computed once and cached.

    Only cache misses load the text encoder or use the VAE; both are evicted afterwards, so they never share
    memory with the transformer.
    """
    import torch

    from .data import image_to_tensor, load_image, read_image_size, training_resolution

    device = manager.device  # where the training step runs: embeddings and latents end up there
    specs = []
    for s in samples:
        width, height = training_resolution(read_image_size(s.image_path), cfg.resolution)
        control = load_image(s.control_path) if s.control_path else None
        cond_size = family.condition_size(control) if control is not None else None
        control_key = (file_digest(s.control_path), "%dx%d" % cond_size) if control is not None else ()
        specs.append({
            "sample": s, "size": (height, width), "control": control, "cond_size": cond_size,
            "text": cache.key("text", s.caption, *control_key), "empty": cache.key("text", "", *control_key),
            "latents": cache.key("latents", file_digest(s.image_path), f"{width}x{height}"),
            "control_latents": cache.key("control", *control_key) if control is not None else None,
        })  # fmt: skip
    found: dict[str, dict] = {}

    def missing(kind_keys):
        wanted = {k: job for k, job in kind_keys if k not in found}
        for key in list(wanted):
            entry = cache.get(key)
            if entry is not None:
                found[key] = entry
                del wanted[key]
        return wanted

    text_jobs = missing([(sp[k], (c, sp["control"])) for sp in specs for k, c in (("text", sp["sample"].caption), ("empty", ""))])
    _encode_text_jobs(manager, family, cache, text_jobs, found)

    latent_jobs = missing([(sp["latents"], ("target", sp)) for sp in specs] + [(sp["control_latents"], ("control", sp)) for sp in specs if sp["control"] is not None])
    if latent_jobs:
        with manager.stage("vae_encode", ("vae",)) as pipe, torch.no_grad():
            for key, (kind, sp) in latent_jobs.items():
                if kind == "target":
                    height, width = sp["size"]
                    pixels = image_to_tensor(load_image(sp["sample"].image_path, (width, height))).unsqueeze(0)
                else:  # the edit input image, resized and normalized exactly as the stock edit pipeline does
                    pixels, _ = family.condition_pixels(pipe, sp["control"])
                found[key] = {"latents": family.encode_image_latents(pipe, pixels)}
                cache.put(key, found[key])
    manager.evict("vae")

    examples = []
    for sp in specs:
        condition = None
        if sp["control"] is not None:
            width, height = sp["cond_size"]
            condition = (found[sp["control_latents"]]["latents"].to(device, run_dtype), (height, width))
        s = sp["sample"]
        examples.append(TrainingExample(
            s.caption, s.image_path, s.control_path, *sp["size"],
            latents=found[sp["latents"]]["latents"].to(device, torch.float32),
            cond=conditioning_to(found[sp["text"]], device, run_dtype), empty_cond=conditioning_to(found[sp["empty"]], device, run_dtype), condition=condition,
        ))  # fmt: skip
    return examples


def _encode_text_jobs(manager, family, cache: EmbeddingCache, jobs: dict, found: dict) -> None:
    """Encode each job (cache key -> (caption, input image or None)) into `found` and the cache, then evict the text
    encoder (loaded only if some job is left)."""
    import torch

    if jobs:
        text_device = manager.device_of(manager.text_components()[0])
        with manager.stage("text_encode", manager.text_components()) as pipe, torch.no_grad():
            for key, (caption, control) in jobs.items():
                found[key] = family.encode_prompt(pipe, caption, text_device, image=control)
                cache.put(key, found[key])
    for component in manager.text_components():
        manager.evict(component)


def encode_texts(manager, family, cache: EmbeddingCache, captions: list[str], run_dtype) -> dict[str, dict]:
    """Each caption's text embeddings (cached as `encode_examples` caches them), kept on the CPU in `run_dtype`."""
    keys = {caption: cache.key("text", caption) for caption in captions}
    found = {key: entry for key in keys.values() if (entry := cache.get(key)) is not None}
    _encode_text_jobs(manager, family, cache, {key: (caption, None) for caption, key in keys.items() if key not in found}, found)
    return {caption: conditioning_to(found[key], "cpu", run_dtype) for caption, key in keys.items()}


def distill_timesteps(run: Run) -> list[float]:
    """The 0..1000 timesteps the student trains at: its few-step schedule's."""
    from .distill import student_plan

    return [s.timestep for s in student_plan(run).steps]


def phase_timesteps(run: Run, phase: str, height: int, width: int) -> list[float]:
    """The 0..1000 timesteps `phase` trains at for a sample of this size (see the module docstring)."""
    from .schedule import glance_plan

    ts = run.config.timesteps
    if isinstance(ts, dict):
        if phase in ts:
            return list(ts[phase])
        ts = "consistent"
    elif isinstance(ts, list):
        return list(ts)
    pipe = run.manager.pipe
    plan = glance_plan(pipe.scheduler.config, run.family.seq_len(pipe, height, width), run.config.split(run.family), ts)
    steps = [s.timestep for s in plan.phase(phase)]
    if not steps:
        raise ValueError(f"The phase split gives the {phase} phase no steps: set {phase}_steps in the config.")
    return steps


# ==== the transformer and its adapters ===============================================================================
def _prepare_transformer(transformer, run: Run, phases) -> None:
    """Called by the manager right after loading the frozen base, before it is placed: one LoRA per phase to train
    (each from its own seed), gradient checkpointing, and block streaming with the plan's resident blocks."""
    cfg = run.config
    add_training_adapters(transformer, run.family, cfg.rank, cfg.alpha, {p: cfg.seed + _PHASE_SEED[p] for p in phases})
    streamed = run.manager.placement("transformer", "train_step").mode == "streamed"
    resident = set(run.manager.plan().resident_blocks.get("train_step", ())) if streamed else set()
    hold_frozen_base(transformer, run.profile.training, run.manager.device, streamed, resident)


def add_training_adapters(transformer, family, rank: int, alpha: float, seeds: dict[str, int]) -> None:
    """One trainable LoRA per name in `seeds` on the family's targets (gaussian init from that seed), kept in float32
    whatever the frozen base's dtype (mixed precision)."""
    import torch
    from peft import LoraConfig

    for name, seed in seeds.items():
        lora = LoraConfig(r=rank, lora_alpha=alpha, init_lora_weights="gaussian", target_modules=list(family.lora_target_modules))
        with torch.random.fork_rng(devices=[]), warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Already found a `peft_config`")  # one adapter per phase: intended
            torch.manual_seed(seed)
            transformer.add_adapter(lora, adapter_name=name)
    for name, param in transformer.named_parameters():
        if "lora_" in name:
            param.data = param.data.float()


def hold_frozen_base(transformer, training, device, streamed: bool, resident: set[int]) -> None:
    """Gradient checkpointing as the profile says (always when streaming: weights leave the GPU after use), and the
    frozen base streamed block by block except the `resident` blocks (`streaming.py`)."""
    if training.gradient_checkpointing or streamed:
        transformer.enable_gradient_checkpointing()
    if streamed:
        from .streaming import stream_blocks

        stream_blocks(transformer, device, training.blocks_per_group or 1, resident)


def _activate_adapter(transformer, phase: str) -> list[torch.nn.Parameter]:
    """Make `phase` the only active (and trainable) adapter; return its parameters."""
    transformer.set_adapter(phase)
    params = [p for n, p in transformer.named_parameters() if p.requires_grad]
    if not params or not all(f".{phase}." in n for n, p in transformer.named_parameters() if p.requires_grad):
        raise RuntimeError(f"Expected only the {phase!r} LoRA to be trainable; check the transformer's adapters.")
    return params


def _only_trainable_for_ddp(transformer, accelerator):
    """Several processes: DDP syncs the active LoRA only; frozen weights (some parked in CPU RAM by block
    streaming) and buffers are identical on every rank and are left out of its device checks and broadcasts."""
    if accelerator.num_processes > 1:
        from torch.nn.parallel import DistributedDataParallel

        frozen = [n for n, p in transformer.named_parameters() if not p.requires_grad] + [n for n, _ in transformer.named_buffers()]
        DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(transformer, frozen)
    return transformer


def _build_optimizer(params, cfg: TrainConfig, name: str):
    kwargs = dict(lr=cfg.learning_rate, betas=cfg.adam_betas, eps=cfg.adam_epsilon, weight_decay=cfg.weight_decay)
    if name == "adamw8bit":
        import bitsandbytes as bnb

        return bnb.optim.AdamW8bit(params, **kwargs)
    import torch

    return torch.optim.AdamW(params, **kwargs)


def _build_lr_scheduler(optimizer, cfg: TrainConfig):
    """Constant learning rate after a linear warmup (the reference recipe)."""
    from diffusers.optimization import get_constant_schedule_with_warmup

    return get_constant_schedule_with_warmup(optimizer, cfg.warmup_steps)


# ==== per-step sampling, logging, evaluation =========================================================================
@dataclass
class Draw:
    """What one training step computes: the transformer sees `noisy` at `timestep` with `cond` and is trained to
    predict `target` (a velocity)."""

    example: Any
    timestep: float
    noisy: torch.Tensor
    target: torch.Tensor
    cond: dict


def _step_sampler(run: Run, phase: str, seed: int):
    """A Glance phase draws (sample, phase timestep, noise); distillation draws a teacher trajectory's segment."""
    if phase == DISTILL:
        from .distill import DistillSampler, student_plan

        return DistillSampler(run.examples, student_plan(run), seed, run.dtype, run.manager.device)
    return StepSampler(run.examples, phase, run.config.caption_dropout, seed)


class StepSampler:
    """Picks what one step trains on (sample, timestep, noise, caption dropout), all from ONE seeded CPU generator,
    so its state in a checkpoint is enough to replay the rest of the run exactly, on any device."""

    def __init__(self, examples: list[TrainingExample], phase: str, caption_dropout: float, seed: int):
        import torch

        self.examples, self.phase, self.caption_dropout = examples, phase, caption_dropout
        self.generator = torch.Generator("cpu").manual_seed(seed)

    def draw(self) -> Draw:
        import torch

        g = self.generator
        example = self.examples[int(torch.randint(len(self.examples), (1,), generator=g))]
        timesteps = example.timesteps[self.phase]
        timestep = timesteps[int(torch.randint(len(timesteps), (1,), generator=g))]
        dropped = float(torch.rand((), generator=g)) < self.caption_dropout
        noise = torch.randn(example.latents.shape, generator=g, dtype=torch.float32).to(example.latents.device)
        return self._draw(example, timestep, noise, example.empty_cond if dropped else example.cond)

    @staticmethod
    def _draw(example: TrainingExample, timestep: float, noise: torch.Tensor, cond: dict) -> Draw:
        """The flow-matching pair: x_sigma = (1 - sigma) x0 + sigma noise, velocity noise - x0."""
        sigma = timestep / 1000  # the trainer's sigma of a timestep (reference notes §4)
        return Draw(example, timestep, (1 - sigma) * example.latents + sigma * noise, noise - example.latents, cond)

    def eval_draws(self, seed: int = 0) -> list[Draw]:
        """Every sample x phase timestep, with fixed noise (from `seed`) per sample."""
        import torch

        generator = torch.Generator("cpu").manual_seed(seed)
        draws = []
        for example in self.examples:
            noise = torch.randn(example.latents.shape, generator=generator).to(example.latents.device)
            draws += [self._draw(example, t, noise, example.cond) for t in example.timesteps[self.phase]]
        return draws

    def get_state(self) -> torch.Tensor:
        return self.generator.get_state()

    def set_state(self, state: torch.Tensor) -> None:
        self.generator.set_state(state)


def _eval_loss(run: Run, phase: str) -> float:
    """Mean loss over fixed draws (every sample x phase timestep with fixed noise; for distillation, every segment
    of the first trajectories): comparable before and after training."""
    import torch
    import torch.nn.functional as F

    losses = []
    with torch.no_grad():
        for draw in _step_sampler(run, phase, 0).eval_draws(run.config.seed + _EVAL_SEED):
            noisy = draw.noisy.to(run.dtype)
            with run.accelerator.autocast():
                v = run.family.velocity(run.transformer, draw.example.state, noisy, run.family.timestep_tensor(draw.timestep, noisy), draw.cond)
            losses.append(F.mse_loss(v.float(), draw.target.float()).item())
    return sum(losses) / len(losses)


def _progress(run: Run, phase: str, start: int):
    from tqdm.auto import tqdm

    return tqdm(total=run.config.steps, initial=start, desc=f"train {phase}", unit="step",
                disable=not (run.progress and run.accelerator.is_main_process))  # fmt: skip


# ==== checkpoints, resume, finish ===================================================================================
def _save_checkpoint(run: Run, phase: str, step: int, optimizer, lr_scheduler, sampler, eval_before) -> None:
    from accelerate.utils import gather_object

    from .checkpoint import save_training_checkpoint

    sampler_states = gather_object([sampler.get_state()])  # every process's generator, in rank order
    if run.accelerator.is_main_process:
        save_training_checkpoint(
            run.checkpoints(phase), step, transformer=run.transformer, family=run.family, adapter_name=phase,
            optimizer=optimizer, lr_scheduler=lr_scheduler, sampler_states=sampler_states, run_digest=run.digest(phase),
            run_description=run.describe(phase), keep=run.config.keep_checkpoints, extra={"eval_loss_before": eval_before},
        )  # fmt: skip
    run.accelerator.wait_for_everyone()


def _resume(run: Run, phase: str, optimizer, lr_scheduler, sampler) -> tuple[int, float | None]:
    """Continue from the newest readable checkpoint of this phase if there is one (`_check_checkpoints`); returns
    (step, eval loss before)."""
    from .checkpoint import restore_training_checkpoint

    checkpoint = run.resume.get(phase)
    if checkpoint is None:
        return 0, None
    state = checkpoint.read_state()
    sampler_states = restore_training_checkpoint(
        checkpoint, state, transformer=run.transformer, adapter_name=phase, optimizer=optimizer, lr_scheduler=lr_scheduler
    )
    sampler.set_state(sampler_states[run.accelerator.process_index])
    run.say(f"Resuming the {phase} phase from {checkpoint.path} (step {checkpoint.step} of {run.config.steps}).")
    return checkpoint.step, state.get("extra", {}).get("eval_loss_before")


def _phase_done(run: Run, phase: str) -> bool:
    """True if this exact run already finished `phase` (final adapter written after the last checkpoint)."""
    checkpoint = run.resume.get(phase)
    if checkpoint is None or checkpoint.step != run.config.steps or not run.adapter_path(phase).is_file():
        return False
    run.say(f"The {phase} phase is already trained ({run.adapter_path(phase)}); pass --restart to train it again.")
    return True


def _finish_phase(run: Run, phase: str, log: LossLog, start: int, eval_before, seconds: float) -> PhaseResult:
    """Write the final adapter (atomically) and the loss curve; measure the loss at the phase timesteps again."""
    from .lora import save_lora

    eval_after = _eval_loss(run, phase)
    if run.accelerator.is_main_process:
        save_lora(run.transformer, run.family, phase, run.adapter_path(phase))
        plot_loss_curve(log.rows, run.output / f"{phase}_loss.png", f"{phase.capitalize()}-LoRA training loss")
    run.accelerator.wait_for_everyone()
    return PhaseResult(phase, run.adapter_path(phase), run.config.steps, run.examples[0].timesteps[phase], log.losses,
                       start, False, eval_before, eval_after, seconds)  # fmt: skip


def _finished_phase(run: Run, phase: str) -> PhaseResult:
    state = run.resume[phase].read_state()
    losses = [r["loss"] for r in read_loss_csv(run.output / f"{phase}_loss.csv")]
    return PhaseResult(phase, run.adapter_path(phase), run.config.steps, run.examples[0].timesteps[phase], losses,
                       run.config.steps, True, state.get("extra", {}).get("eval_loss_before"))  # fmt: skip


def _check_checkpoints(run: Run, phases) -> None:
    """Before anything is written: each phase's newest readable checkpoint, to resume from (`run.resume`). One of a
    different run is refused (`CheckpointMismatchError`); unreadable newer ones are set aside (kept, renamed) with a
    line naming each, and the run resumes from the one before them or starts over, saying so."""
    from .checkpoint import check_same_run, newest_readable_checkpoint, set_aside

    found = {}
    for phase in phases:
        checkpoint, state, unreadable = newest_readable_checkpoint(run.checkpoints(phase))
        if checkpoint is not None:
            check_same_run(checkpoint, state, run.digest(phase), run.describe(phase))
        found[phase] = checkpoint, unreadable
    for phase, (checkpoint, unreadable) in found.items():
        for skipped, why in unreadable:
            kept = set_aside(skipped) if run.accelerator.is_main_process else skipped.path
            run.warn(f"{why}: the checkpoint is skipped, and kept as {kept}.")
        if unreadable and checkpoint is None:
            run.warn(f"no readable checkpoint of the {phase} phase is left: it starts over from step 0.")
        run.resume[phase] = checkpoint


def _discard_previous(output: Path, phases) -> None:
    import shutil

    for phase in phases:
        shutil.rmtree(output / "checkpoints" / phase, ignore_errors=True)
        for name in (f"{phase}.safetensors", f"{phase}_loss.csv", f"{phase}_loss.png"):
            (output / name).unlink(missing_ok=True)


def _write_resolved_config(run: Run) -> None:
    import yaml

    from .checkpoint import write_text_atomically

    data = {"model": run.model, "profile": run.profile.name, "optimizer_used": run.optimizer_name, **run.config.to_dict()}
    write_text_atomically(run.output / "train_config.yaml", yaml.safe_dump(data, sort_keys=False))


def _summary(result: TrainResult) -> str:
    lines = [f"Trained {result.model} in {result.output} (profile {result.profile}):"]
    for p in result.phases.values():
        status = "already trained" if p.already_done else (f"resumed at step {p.resumed_from}, " if p.resumed_from else "") + f"{p.seconds:.1f} s"
        change = ""
        if p.eval_loss_before is not None and p.eval_loss_after is not None:
            change = f", loss at its timesteps {p.eval_loss_before:.4f} -> {p.eval_loss_after:.4f}"
        lines.append(f"  {p.phase}: {p.adapter} ({p.steps} steps, {status}{change})")
    lines += ["Generate with the trained adapters:", "  " + result.generate_command()]
    return "\n".join(lines)


# ==== command line ===================================================================================================
def build_parser() -> argparse.ArgumentParser:
    p = cli.ArgumentParser(prog="python -m glance_lite.train", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", help="hub id (Qwen/Qwen-Image, black-forest-labs/FLUX.1-dev, Qwen/Qwen-Image-Edit), local folder, or tiny/qwen-image | tiny/flux | tiny/qwen-image-edit")
    p.add_argument("--data", type=Path, help="dataset folder: image + same-name .txt caption (edit models: image/ and control/); --phase distill: a text file, one caption per line, or a dataset folder")
    p.add_argument("--output", type=Path, help="output folder (adapters, logs, checkpoints, cache)")
    p.add_argument("--phase", choices=("slow", "fast", "both", DISTILL), help="which adapter(s) to train (both: slow, then fast; default: an official config's Slow_LoRA/Fast_LoRA, else both); distill: a few-step student LoRA from captions alone (glance_lite.distill)")
    p.add_argument("--profile", default="auto", help="hardware profile name or YAML path (default: auto)")
    p.add_argument("--config", type=Path, help="YAML file of training settings (see --print-config), or an official Glance train_configs/*.yaml")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override one config key, e.g. --set steps=120 (repeatable)")
    p.add_argument("--restart", action="store_true", help="discard this output folder's checkpoints and train from scratch")
    p.add_argument("--print-config", action="store_true", help="print the resolved training config for --model and exit")
    p.add_argument("--device", choices=("cpu",), help="run the profile's training choices on the CPU (says what it cannot emulate)")
    p.add_argument("--no-progress", action="store_true")
    return p


@cli.command
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from .quiet import set_progress

    set_progress(not args.no_progress)
    overrides = parse_set_options(args.set)
    config = load_config_file(args.config) if args.config else ConfigFile({})
    run, settings, notes = config.resolve({k: getattr(args, k) for k in RUN_KEYS}, overrides)
    if args.print_config:
        if not run.get("model"):
            raise cli.UsageError("--print-config needs --model.")
        import yaml

        cfg = TrainConfig.for_family(family_of(run["model"]), settings, run.get("phase"))
        print("".join(f"# {line}\n" for line in notes) + yaml.safe_dump(cfg.to_dict(), sort_keys=False), end="")
        return 0
    for line in notes:
        print(line)
    missing = [name for name in ("model", "data", "output") if run.get(name) is None]
    if missing:
        raise cli.UsageError(f"missing {', '.join('--' + m for m in missing)}.")
    from .profiles import early_profile

    profile = early_profile(args.profile)  # an unknown or broken profile is refused before torch is imported
    train(run["model"], run["data"], run["output"], run.get("phase", "both"), profile, settings, restart=args.restart,
          progress=not args.no_progress, device=args.device)  # fmt: skip
    return 0


_make_callable(__name__, train)  # `glance_lite.train(...)` keeps working once this module is imported

if __name__ == "__main__":
    sys.exit(main())
