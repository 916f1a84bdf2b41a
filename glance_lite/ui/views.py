"""What the page shows, as Markdown and HTML strings: the memory plan, progress bars, stage tables, loaded models.

Plain functions of plain values: the page's wording lives here, apart from the Gradio layout.
"""

from __future__ import annotations

import html

from .library import PlanOutcome, ProfileChoice
from .worker import CANCELLED, DONE, FAILED, Job

MiB = 2**20
GiB = 2**30


def _size(n: int) -> str:
    return f"{n / GiB:.2f} GiB" if n >= GiB else f"{n / MiB:.0f} MiB"


def plan_markdown(outcome: PlanOutcome, choice: ProfileChoice) -> str:
    """The profile and why, then the plan: verdict and peak per stage, or why there is no plan."""
    lines = [f"**Profile:** {choice.why}", ""]
    if outcome.plan is None:
        lines.append(f"**Memory plan unavailable** (generating without one): {outcome.unavailable}")
        return "\n".join(lines)
    plan = outcome.plan
    verdict = plan.verdict() if plan.fits else "(why: in the status below)"
    lines += [f"**Memory plan: {'fits' if plan.fits else 'does NOT fit'}.** {verdict}", "",
              "| stage | predicted peak |", "|---|---|"]  # fmt: skip
    lines += [f"| {name} | {_size(stage.peak_bytes)} |" for name, stage in plan.stages.items()]
    return "\n".join(lines)


def refusal(outcome: PlanOutcome) -> str:
    """The planner's reason, and the leaner profile it suggests (named once, whatever the verdict's wording)."""
    verdict = outcome.plan.verdict()
    leaner = f" Leaner profile: **{outcome.leaner}**." if outcome.leaner and outcome.leaner not in verdict else ""
    return error(f"Refused before loading any weights. The memory plan {verdict}{leaner}")


def error(text: str) -> str:
    return f"**Error:** {text}"


def waiting(ahead: int) -> str:
    return _bars(f"Waiting for the model worker: {ahead} request(s) ahead.", [])


def progress_html(job: Job) -> str:
    """Two bars while a generation runs: its stage (text_encode, denoise, vae_decode) and its denoising step."""
    p = job.progress
    if not p.stage_names:  # the worker is still reading configs and LoRA files (glance_lite.load)
        return _bars(f"Preparing the model ({job.seconds:.1f} s).", [])
    done = len(p.stages_done())
    total = len(p.stage_names) or 1
    current = p.stage_names[done] if done < len(p.stage_names) else "finishing"
    label = f"{p.label}: " if p.label else ""
    bars = [(f"{label}stage {min(done + 1, total)}/{total}: {current}", done, total)]
    if p.total_steps:
        phase = f" ({p.phase} phase)" if p.phase else ""
        bars.append((f"denoising step {min(p.step, p.total_steps)}/{p.total_steps}{phase}", min(p.step, p.total_steps), p.total_steps))
    return _bars(f"Running for {job.seconds:.1f} s.", bars)


def training_progress_html(job: Job, phases: tuple[str, ...]) -> str:
    p = job.progress
    bars = []
    if p.total_steps:
        index = phases.index(p.phase) if p.phase in phases else 0
        bars.append((f"phase {index + 1}/{len(phases)}: {p.phase or phases[0]}", index, len(phases)))
        bars.append((f"training step {p.step}/{p.total_steps}", p.step, p.total_steps))
    note = p.note or ("Preparing: encoding the caption and the image, loading the transformer." if not p.step else "")
    return _bars(f"Training for {job.seconds:.0f} s. {note}", bars)


def _bars(text: str, bars: list[tuple[str, int, int]]) -> str:
    rows = "".join(
        f'<div class="glance-bar"><span>{html.escape(label)}</span> <progress value="{value}" max="{maximum}"></progress></div>'
        for label, value, maximum in bars
    )
    return f'<div class="glance-progress"><div>{html.escape(text)}</div>{rows}</div>'


def finished(job: Job, what: str) -> str:
    """The status line once a job is over."""
    if job.state == DONE:
        return f"**Done:** {what} in {job.seconds:.1f} s."
    if job.state == CANCELLED or job.cancelled:  # also a job cancelled before it started
        return "**Cancelled.** The server is ready for the next request."
    if job.state == FAILED:
        return error(job.error or "failed")
    return ""


def run_table(rendered) -> str:
    """Per-stage time and peak memory, transformer calls and steps of one generated image."""
    r = rendered.result
    lines = [f"**{rendered.label}**: {len(r.plan.steps)} steps, {rendered.transformer_calls} transformer calls, "
             f"{rendered.seconds:.2f} s", "", "| stage | seconds | peak memory |", "|---|---|---|"]  # fmt: skip
    lines += [f"| {s.stage} | {s.seconds:.2f} | {_size(s.peak_bytes)} |" for s in r.stages]
    return "\n".join(lines)


def comparison_table(comparison) -> str:
    """The two methods side by side: per stage time and peak, transformer calls, and PSNR between the two images."""
    g, b = comparison.left, comparison.right
    g_stages, b_stages = {s.stage: s for s in g.result.stages}, {s.stage: s for s in b.result.stages}
    lines = [f"**PSNR between the two images: {comparison.psnr:.1f} dB** (same seed, same initial noise)", "",
             f"| | {g.label} | {b.label} |", "|---|---|---|",
             f"| steps | {len(g.result.plan.steps)} | {len(b.result.plan.steps)} |",
             f"| transformer calls | {g.transformer_calls} | {b.transformer_calls} |",
             f"| total seconds | {g.seconds:.2f} | {b.seconds:.2f} |"]  # fmt: skip
    for stage in dict.fromkeys([*g_stages, *b_stages]):
        gs, bs = g_stages.get(stage), b_stages.get(stage)
        lines.append(f"| {stage}: seconds | {_cell(gs, 'seconds')} | {_cell(bs, 'seconds')} |")
        lines.append(f"| {stage}: peak memory | {_cell(gs, 'peak_bytes')} | {_cell(bs, 'peak_bytes')} |")
    return "\n".join(lines)


def _cell(record, what: str) -> str:
    if record is None:
        return "-"
    return f"{record.seconds:.2f}" if what == "seconds" else _size(record.peak_bytes)


def loaded_models(models) -> str:
    if not models:
        return "**Loaded models:** none yet (the first Generate loads one; later ones with the same settings reuse it)."
    return "**Loaded models:**\n" + "\n".join(f"- {m.describe()}" for m in models)
