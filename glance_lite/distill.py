"""Few-step distillation: `python -m glance_lite.train --phase distill --data captions.txt` trains ONE student LoRA
that samples in `distill_steps` steps, without guidance, what the base model samples in `teacher_steps` steps with
true CFG, from the same noise: the peer users pick instead of Glance (what Qwen-Image-Lightning is for Qwen-Image).

No images are needed, only captions: a UTF-8 text file with one caption per line, or a dataset folder (its .txt
captions). The objective is trajectory distillation, segment by segment:

  1. the teacher: for each caption (and `teacher_noises` noise seeds), the plain base model (adapters off) samples
     its `teacher_steps`-step trajectory with true CFG at scale `teacher_cfg`, exactly as `generate(method="base-50")`
     does; the latents at the student's sigmas are kept (the teacher's Euler path is linear in sigma within each of
     its steps, so interpolating there is exact) and cached on disk, so a resumed run does not sample them again;
  2. the student: at step k of its N-step schedule (the few-step method's, `glance_lite.methods`) it sees the
     teacher's latent x(sigma_k) and is trained, with the flow-matching MSE, to predict the velocity that lands one
     Euler step later on the teacher's x(sigma_k+1): (x(sigma_k+1) - x(sigma_k)) / (sigma_k+1 - sigma_k). With the
     conditional prompt only: guidance is distilled into the LoRA, so sampling costs one forward per step.

The loop, checkpoints, resume and LoRA file are the Glance phases' (`glance_lite.train`); this module supplies what
differs: the captions, the teacher's latents, and what one step trains on (`DistillSampler`). The result,
OUT/distill.safetensors, samples with `--method fewstep-N --lora OUT/distill.safetensors`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .data import DatasetError, discover_samples
from .errors import InputFileError, UserError, read_text_file
from .families import conditioning_to
from .train_config import DISTILL

if TYPE_CHECKING:
    import torch

NEGATIVE_PROMPT = " "  # generate()'s default negative prompt: the teacher is generate's base-N run
_NOISE_SEED = 500_000  # teacher noise seeds start here (generate's seeds 0, 1, ... stay free for evaluation)
_EVAL_EXAMPLES = 8  # the eval loss covers the first examples' every segment


class DistillError(UserError, ValueError):
    """A distillation run that cannot start as asked (no captions, an image-editing model, ...)."""


# ==== captions ======================================================================================================
def read_captions(data: str | Path) -> list[str]:
    """The captions to distil over: one per non-empty line of a UTF-8 text file, or a dataset folder's captions
    (its images are not needed). Duplicates are kept once, in first-seen order."""
    path = Path(data).expanduser()
    if path.is_dir():
        try:
            captions = [s.caption for s in discover_samples(path)]
        except DatasetError as exc:
            raise DistillError(
                f"--data {path}: distillation reads captions, from a text file (one per line) or a dataset folder; "
                f"this folder is not usable:\n" + "\n".join(f"  - {p}" for p in exc.problems)
            ) from None
    elif path.exists():
        captions = [line.strip() for line in read_text_file(path, "--data", InputFileError).splitlines() if line.strip()]
        if not captions:
            raise DistillError(f"--data {path} holds no captions: write one caption per line (UTF-8 text).")
    else:
        raise DistillError(f"--data {path} does not exist: give a UTF-8 text file with one caption per line, or a dataset folder.")
    return list(dict.fromkeys(captions))


def check_family(family, model: str) -> None:
    if family.needs_condition_image:
        raise DistillError(
            f"--phase distill trains on captions alone; {model} is an image-editing model whose samples also need an "
            "input image. Distil its text-to-image base instead, or train the Glance phases (--phase slow|fast|both)."
        )


def data_digest(captions: list[str]) -> str:
    import hashlib
    import json

    return hashlib.sha256(json.dumps(captions).encode()).hexdigest()[:16]


# ==== examples: one caption and one noise seed =====================================================================
@dataclass
class DistillExample:
    """One teacher trajectory to imitate: a caption, its noise seed and, once the teacher ran, its latents at the
    student's sigmas (`points`, [N + 1, tokens, channels], on the CPU: a full-size run holds hundreds of them)."""

    caption: str
    noise_seed: int
    height: int
    width: int
    cond: dict
    empty_cond: dict  # the negative prompt: the teacher's CFG
    state: Any = None
    points: torch.Tensor | None = None
    timesteps: dict[str, list[float]] = field(default_factory=dict)
    image_path: Path | None = None  # the Glance examples' fields the trainer reads: none for a caption
    control_path: Path | None = None
    condition: None = None

    @property
    def latents(self) -> torch.Tensor:
        """The teacher's final latent (its image, [1, tokens, channels]), what the student's last step lands on; None
        before the teacher ran."""
        return None if self.points is None else self.points[-1:]


def noise_seed(cfg, caption_index: int, noise_index: int = 0) -> int:
    """The `generate(seed=...)` whose starting noise the teacher samples caption i from (its j-th noise)."""
    return _NOISE_SEED + cfg.seed * 100_000 + caption_index * cfg.teacher_noises + noise_index


def make_examples(captions: list[str], texts: dict, cfg) -> list[DistillExample]:
    """`teacher_noises` examples per caption; their noise seeds follow from `cfg.seed`, so a run is reproducible."""
    return [
        DistillExample(caption, noise_seed(cfg, i, j), cfg.resolution, cfg.resolution, texts[caption], texts[NEGATIVE_PROMPT])
        for i, caption in enumerate(captions) for j in range(cfg.teacher_noises)
    ]  # fmt: skip


def student_plan(run):
    """The N-step schedule the student samples with: the few-step method's (`methods.Method("fewstep", N)`)."""
    from .methods import parse_method

    pipe, cfg = run.manager.pipe, run.config
    method = parse_method(f"fewstep-{cfg.distill_steps}")
    return method.plan(pipe.scheduler.config, run.family.seq_len(pipe, cfg.resolution, cfg.resolution))


def teacher_plan(run):
    from .methods import parse_method

    pipe, cfg = run.manager.pipe, run.config
    return parse_method(f"base-{cfg.teacher_steps}").plan(pipe.scheduler.config, run.family.seq_len(pipe, cfg.resolution, cfg.resolution))


# ==== the teacher =================================================================================================
def attach_teacher_points(run, cache) -> None:
    """Every example's teacher latents at the student's sigmas: from the cache (an entry made for another student
    serves if it holds these sigmas: the 2-step ones are among the 4-step ones), else sampled now with adapters off,
    each cached as soon as it is made, so a kill loses at most one trajectory."""
    import torch
    from tqdm.auto import tqdm

    from .adapters import use_adapter
    from .sampler import sample

    student, teacher = student_plan(run), teacher_plan(run)
    sigmas = [s.sigma for s in student.steps] + [student.steps[-1].sigma_next]
    cfg, family, pipe = run.config, run.family, run.manager.pipe
    what = ("teacher", f"{cfg.teacher_steps}", f"{cfg.teacher_cfg:g}", f"{cfg.resolution}", _transformer_identity(run))
    todo = []
    for e in run.examples:
        key = cache.key("teacher", e.caption, str(e.noise_seed), *what)
        entry = cache.get(key)
        kept = [] if entry is None else entry["sigmas"].tolist()
        rows = [_index_of(kept, s) for s in sigmas]
        if None not in rows:
            e.points = entry["points"][rows]
        else:  # sample it, keeping the points an earlier student needed too
            todo.append((e, key, sorted(set(kept) | set(sigmas), reverse=True)))
    if not todo:
        return
    device, batch_cfg = run.manager.device, bool(getattr(run.profile, "batch_cfg", False))
    bar = tqdm(todo, desc=f"teacher base-{cfg.teacher_steps}", unit="caption", disable=not (run.progress and run.accelerator.is_main_process))
    for e, key, keep in bar:
        state = family.prepare_latents(pipe, e.height, e.width, torch.Generator("cpu").manual_seed(e.noise_seed), run.dtype, device)
        trajectory = [(teacher.steps[0].sigma, state.latents.float().cpu())]

        def record(step, latents):
            trajectory.append((step.sigma_next, latents.float().cpu()))

        cond = conditioning_to(e.cond, device, run.dtype)
        uncond = conditioning_to(e.empty_cond, device, run.dtype) if cfg.teacher_cfg > 1 else None  # scale 1: no guidance, one pass
        sample(run.transformer, family, teacher, state, cond, uncond, cfg.teacher_cfg, {"base": None},
               batch_cfg=batch_cfg, progress=False, on_step=record)  # fmt: skip
        points = torch.stack([interpolate(trajectory, s) for s in keep]).squeeze(1)
        cache.put(key, {"sigmas": torch.tensor(keep, dtype=torch.float64), "points": points})
        e.points = points[[_index_of(keep, s) for s in sigmas]]
    use_adapter(run.transformer, DISTILL)  # the sampler switched LoRAs off for the teacher: the student's back on


def _index_of(values: list[float], value: float) -> int | None:
    return next((i for i, v in enumerate(values) if abs(v - value) < 1e-9), None)


def _transformer_identity(run) -> str:
    """What else decides the teacher's latents: how the frozen base computes (the cache's fingerprint covers the
    model and its text encoder)."""
    training = run.profile.training
    return f"{training.dtype}:{training.base_quantization}"


def interpolate(trajectory: list[tuple[float, torch.Tensor]], sigma: float) -> torch.Tensor:
    """The latent at `sigma` on a piecewise-linear path given as (sigma, latent) points, sigma decreasing (an Euler
    sampler's path is exactly that)."""
    for (s0, x0), (s1, x1) in zip(trajectory, trajectory[1:]):
        if s1 <= sigma <= s0:
            w = 0.0 if s0 == s1 else (s0 - sigma) / (s0 - s1)
            return x0 + w * (x1 - x0)
    raise ValueError(f"sigma {sigma} lies outside the teacher's trajectory ({trajectory[0][0]} .. {trajectory[-1][0]}).")


# ==== what one step trains on ======================================================================================
class DistillSampler:
    """Picks one (example, segment k) per step from ONE seeded CPU generator (its state is checkpointed, as the
    Glance phases' `StepSampler`): the student sees the teacher's x(sigma_k) and learns the segment's velocity."""

    def __init__(self, examples: list[DistillExample], plan, seed: int, dtype, device):
        import torch

        self.examples, self.dtype, self.device = examples, dtype, device
        self.steps = plan.steps
        self.generator = torch.Generator("cpu").manual_seed(seed)

    def draw(self):
        import torch

        g = self.generator
        example = self.examples[int(torch.randint(len(self.examples), (1,), generator=g))]
        return self._draw(example, int(torch.randint(len(self.steps), (1,), generator=g)))

    def eval_draws(self, seed: int = 0):
        """Every segment of the first examples: a fixed measure of progress (no noise is drawn: `seed` is unused)."""
        return [self._draw(e, k) for e in self.examples[:_EVAL_EXAMPLES] for k in range(len(self.steps))]

    def _draw(self, example: DistillExample, k: int):
        from .train import Draw

        step = self.steps[k]
        x, x_next = example.points[k : k + 2].to(self.device)
        target = (x_next - x) / (step.sigma_next - step.sigma)
        cond = conditioning_to(example.cond, self.device, self.dtype)
        return Draw(example, step.timestep, x.unsqueeze(0), target.unsqueeze(0), cond)

    def get_state(self):
        return self.generator.get_state()

    def set_state(self, state) -> None:
        self.generator.set_state(state)


def generate_command(result) -> str:
    """The `python -m glance_lite.generate` call that samples the first caption with the distilled LoRA."""
    import shlex

    height, width = result.sizes[0]
    parts = ["python", "-m", "glance_lite.generate", "--model", result.model, "--method", f"fewstep-{result.config.distill_steps}",
             "--lora", str(result.output / f"{DISTILL}.safetensors"), "--prompt", result.captions[0],
             "--height", str(height), "--width", str(width), "--profile", result.profile, "--out", "fewstep.png"]  # fmt: skip
    return shlex.join(parts)
