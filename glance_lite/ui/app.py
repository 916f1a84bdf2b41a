"""The page: Gradio Blocks with the shared settings on top and three tabs, Generate, Compare and Train.

Every button's handler is an async generator that checks the fields, shows the memory plan, queues a job on the ONE
worker and follows it (~4 updates a second), so the page stays responsive and a second user's request says how many
are ahead of it. Stop cancels the session's job; the handler then reports it. Failures become one readable line in
the tab's status box (`library.describe_error`), never a traceback, and the server keeps running.
"""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path
from types import SimpleNamespace

import gradio as gr

from . import views
from .jobs import compare_job, generate_job
from ..pocket import bundled_fewstep_steps
from .library import DEFAULT_MODEL, choose_profile, default_size, describe_error, fewstep_steps_default, memory_plan, model_choices, profile_choices
from .models import ModelCache
from .request import (
    ADAPTERS_DEFAULT,
    ADAPTERS_NONE,
    ADAPTERS_UPLOADED,
    COMPARE_DEFAULT,
    FEWSTEP_SAMPLER,
    FIELDS,
    RUN_PREFIX,
    SAMPLERS,
    GenerationRequest,
)
from .training import TrainingRequest, checkpoint_steps, log_tail, loss_rows, runs_folder, trained_runs, training_job, warm_up
from .worker import CANCELLED, DONE, QUEUED, Job, Worker

POLL_SECONDS = 0.25
DEFAULT_PROMPT = "a red circle on a blue background, top left"
CSS = """
.glance-picture img { width: 100%; height: 100%; object-fit: contain; image-rendering: pixelated; }
.glance-progress progress { width: 60%; vertical-align: middle; }
.glance-progress span { display: inline-block; min-width: 22em; }
"""
# System fonts only: the page must render offline (the default theme fetches web fonts).
THEME_FONTS = dict(font=["ui-sans-serif", "system-ui", "sans-serif"], font_mono=["ui-monospace", "monospace"])


class GlanceApp:
    """The page's state: the worker, the loaded models, each session's running job, and where files go."""

    def __init__(self, workdir: Path, keep_models: int = 1, threads: int | None = None):
        self.workdir = Path(workdir)
        self.threads = threads
        if threads:
            import torch

            torch.set_num_threads(threads)
        self.images = self.workdir / "images"
        self.worker = Worker()
        self.models = ModelCache(keep_models)
        self.jobs: dict[tuple[str, str], Job] = {}  # (session, tab) -> its job, for Stop

    # ---- the page ----------------------------------------------------------------------------------------------
    def build(self) -> gr.Blocks:
        with gr.Blocks(title="glance_lite") as page:
            gr.Markdown("# glance_lite\nGlance (slow + fast LoRA) sampling, comparison and training. "
                        "Runs offline on the embedded pocket model (64x64 shapes).")  # fmt: skip
            self.fields = self._settings_panel()
            with gr.Tabs():
                with gr.Tab("Generate", id="generate"):
                    self.gen = self._generate_tab()
                with gr.Tab("Compare", id="compare"):
                    self.cmp = self._compare_tab()
                with gr.Tab("Train", id="train") as train_tab:
                    self.trn = self._train_tab()
            train_tab.select(self.on_train_tab, None, None, queue=False)
            self.models_md = gr.Markdown(views.loaded_models([]), elem_id="loaded-models")
            self._wire(page)
        return page

    def _settings_panel(self) -> SimpleNamespace:
        f = SimpleNamespace()
        with gr.Row():
            f.prompt = gr.Textbox(DEFAULT_PROMPT, label="Prompt", lines=2, scale=3, elem_id="prompt")
            f.negative_prompt = gr.Textbox("", label="Negative prompt", lines=2, scale=2, elem_id="negative-prompt")
        with gr.Row():
            f.model = gr.Dropdown(model_choices(), value=DEFAULT_MODEL, label="Model (embedded id, local folder or hub id)",
                                  allow_custom_value=True, elem_id="model")  # fmt: skip
            f.profile = gr.Dropdown(profile_choices(), value="auto", label="Profile", elem_id="profile")
            f.height = gr.Number(default_size(DEFAULT_MODEL), label="Height", precision=0, elem_id="height")
            f.width = gr.Number(default_size(DEFAULT_MODEL), label="Width", precision=0, elem_id="width")
            f.seed = gr.Number(0, label="Seed", precision=0, elem_id="seed")
        with gr.Accordion("Sampler and LoRAs", open=False, elem_id="sampler-settings"):
            with gr.Row():
                f.sampler = gr.Radio(self.sampler_choices(None, DEFAULT_MODEL), value=next(iter(SAMPLERS)), label="Sampler", elem_id="sampler")
                f.base_steps = gr.Number(50, label="Base steps (base sampler, and the base side of Compare)", precision=0, elem_id="base-steps")
                f.true_cfg_scale = gr.Textbox("", label="True CFG scale (empty: the model's default)", elem_id="cfg")
            with gr.Row():
                f.slow_steps = gr.Textbox("0,2,4,6,8", label="Custom split: slow indices (of 50)", elem_id="slow-steps")
                f.fast_steps = gr.Textbox("10,20,30,40,49", label="Custom split: fast indices", elem_id="fast-steps")
                f.mode = gr.Radio(["consistent", "reference"], value="consistent", label="Custom split: schedule mode", elem_id="mode")
            with gr.Row():
                f.adapters = gr.Dropdown(self.adapter_choices(), value=ADAPTERS_DEFAULT, label="LoRAs", elem_id="adapters")
                f.slow_file = gr.File(label="Slow-LoRA file (.safetensors)", file_types=[".safetensors"], type="filepath", elem_id="slow-file")
                f.fast_file = gr.File(label="Fast-LoRA file (.safetensors)", file_types=[".safetensors"], type="filepath", elem_id="fast-file")
                f.lora_compat = gr.Radio(["trained", "diffusers"], value="trained", label="LoRA compat", elem_id="lora-compat")
            with gr.Row():
                f.fewstep_file = gr.File(label="Few-step LoRA file (e.g. Qwen-Image-Lightning .safetensors): enables the few-step sampler "
                                         "(the pocket model ships its own distilled ones)", file_types=[".safetensors"], type="filepath",
                                         elem_id="fewstep-file")  # fmt: skip
                f.fewstep_steps = gr.Number(fewstep_steps_default(DEFAULT_MODEL), label="Few-step steps (no guidance)", precision=0, elem_id="fewstep-steps")
            f.image = gr.Image(label="Input image (Qwen-Image-Edit models only)", type="filepath", height=160, elem_id="edit-image")
        return f

    def _run_controls(self, action: str, button_id: str, prefix: str) -> SimpleNamespace:
        """The action and Stop buttons, then the plan, status and progress boxes a Generate-like tab shows."""
        o = SimpleNamespace()
        with gr.Row():
            o.go = gr.Button(action, variant="primary", elem_id=button_id)
            o.stop = gr.Button("Stop", elem_id=f"{button_id}-stop")
        o.plan = gr.Markdown("", elem_id=f"{prefix}-plan")
        o.status = gr.Markdown("", elem_id=f"{prefix}-status")
        o.progress = gr.HTML("", elem_id=f"{prefix}-progress")
        return o

    @staticmethod
    def _picture(label: str, elem_id: str, height: int) -> gr.Image:
        """An output image, served as the PNG the worker wrote (so a download keeps its settings)."""
        return gr.Image(label=label, type="filepath", format="png", height=height, interactive=False,
                        elem_id=elem_id, elem_classes="glance-picture")  # fmt: skip

    def _generate_tab(self) -> SimpleNamespace:
        o = self._run_controls("Generate", "generate", "gen")
        with gr.Row():
            o.image = self._picture("Image", "gen-image", 320)
            with gr.Column():
                o.stats = gr.Markdown("", elem_id="gen-stats")
                o.download = gr.DownloadButton("Download PNG (with its settings)", visible=False, elem_id="gen-download")
        return o

    def _compare_tab(self) -> SimpleNamespace:
        gr.Markdown("Renders two samplers from the same seed and noise with the prompt and settings above: by default "
                    "Glance against the base model (*Base steps*), the comparison Glance is about; a few-step LoRA is "
                    "offered once its file is given (*Sampler and LoRAs*).")  # fmt: skip
        with gr.Row():
            self.fields.compare_left = gr.Dropdown(self.sampler_choices(None, DEFAULT_MODEL), value=COMPARE_DEFAULT[0], label="Left", elem_id="cmp-left")
            self.fields.compare_right = gr.Dropdown(self.sampler_choices(None, DEFAULT_MODEL), value=COMPARE_DEFAULT[1], label="Right", elem_id="cmp-right")
        o = self._run_controls("Compare", "compare", "cmp")
        with gr.Row():
            o.glance_image = self._picture("Left", "cmp-glance", 256)
            o.base_image = self._picture("Right", "cmp-base", 256)
        o.table = gr.Markdown("", elem_id="cmp-table")
        o.download = gr.DownloadButton("Download the comparison (PNG grid)", visible=False, elem_id="cmp-download")
        return o

    def _train_tab(self) -> SimpleNamespace:
        o = SimpleNamespace()
        gr.Markdown("Trains the Slow- and/or Fast-LoRA on ONE image and its caption, for the model and profile above. "
                    "Stop keeps the last checkpoint; Train with the same settings resumes from it.")  # fmt: skip
        with gr.Row():
            o.image = gr.Image(label="Training image", type="filepath", height=200, elem_id="train-image", elem_classes="glance-picture")
            with gr.Column():
                o.caption = gr.Textbox("", label="Caption", lines=2, elem_id="train-caption")
                o.sample = gr.Button("Use the bundled sample", elem_id="train-sample")
                o.phase = gr.Radio(["both", "slow", "fast"], value="both", label="Phase(s)", elem_id="train-phase")
                with gr.Row():
                    o.steps = gr.Number(100, label="Steps per phase", precision=0, elem_id="train-steps")
                    o.run_name = gr.Textbox("my-run", label="Run name (its folder; the same name resumes)", elem_id="train-run")
                o.restart = gr.Checkbox(False, label="Start over (discard this run's checkpoints)", elem_id="train-restart")
        with gr.Row():
            o.go = gr.Button("Train / resume", variant="primary", elem_id="train")
            o.stop = gr.Button("Stop", elem_id="train-stop")
        o.status = gr.Markdown("", elem_id="train-status")
        o.progress = gr.HTML("", elem_id="train-progress")
        o.plot = gr.LinePlot(None, x="step", y="loss", color="phase", title="Training loss (one random phase timestep per step)",
                             height=260, elem_id="train-loss")  # fmt: skip
        o.log = gr.Textbox("", label="Trainer messages", lines=4, interactive=False, elem_id="train-log")
        return o

    def _wire(self, page: gr.Blocks) -> None:
        f, gen, cmp, trn = self.fields, self.gen, self.cmp, self.trn
        settings = {getattr(f, name) for name in FIELDS}
        gen_out = [gen.plan, gen.status, gen.progress, gen.image, gen.stats, gen.download, self.models_md]
        cmp_out = [cmp.plan, cmp.status, cmp.progress, cmp.glance_image, cmp.base_image, cmp.table, cmp.download, self.models_md]
        trn_out = [trn.status, trn.progress, trn.plot, trn.log, f.adapters, self.models_md]
        gen.go.click(self.on_generate, settings, gen_out, concurrency_limit=None, show_progress="hidden")
        cmp.go.click(self.on_compare, settings, cmp_out, concurrency_limit=None, show_progress="hidden")
        train_in = {trn.image, trn.caption, trn.phase, trn.steps, trn.run_name, trn.restart, f.model, f.profile}
        trn.go.click(self.on_train, train_in, trn_out, concurrency_limit=None, show_progress="hidden")
        for tab, box in (("generate", gen), ("compare", cmp), ("train", trn)):
            box.stop.click(self._stopper(tab), None, None, queue=False)
        trn.sample.click(self.on_sample, None, [trn.image, trn.caption])
        f.model.change(lambda m: (default_size(m or ""),) * 2, f.model, [f.height, f.width], queue=False)
        fewstep_in, fewstep_out = [f.fewstep_file, f.model, f.sampler, f.compare_left, f.compare_right], [f.sampler, f.compare_left, f.compare_right]
        f.fewstep_file.change(self.on_fewstep_file, fewstep_in, fewstep_out, queue=False)
        f.model.change(self.on_fewstep_file, fewstep_in, fewstep_out, queue=False)
        f.model.change(lambda m: fewstep_steps_default(m or ""), f.model, f.fewstep_steps, queue=False)
        page.load(self.on_load, None, [f.adapters, self.models_md], queue=False)

    # ---- shared steps ------------------------------------------------------------------------------------------
    def adapter_choices(self) -> list[tuple[str, str]]:
        runs = [(run.label, RUN_PREFIX + run.name) for run in trained_runs(runs_folder(self.workdir))]
        return [("default: the official Glance LoRAs for an official base, none otherwise", ADAPTERS_DEFAULT),
                ("none: the base weights only", ADAPTERS_NONE), ("uploaded files (right)", ADAPTERS_UPLOADED), *runs]  # fmt: skip

    @staticmethod
    def sampler_choices(fewstep_file, model: str | None) -> list[str]:
        """The samplers the page offers: the few-step one once its LoRA file is given, or for a model that ships one."""
        offered = bool(fewstep_file) or bool(bundled_fewstep_steps((model or "").strip()))
        return [label for label in SAMPLERS if label != FEWSTEP_SAMPLER or offered]

    def on_fewstep_file(self, fewstep_file, model, sampler, left, right):
        """A few-step LoRA given (or removed), or a model chosen: offer the few-step sampler where it can run, and
        Compare a given file against Glance."""
        choices = self.sampler_choices(fewstep_file, model)

        def keep(value, fallback):
            return value if value in choices else fallback

        if fewstep_file:
            left, right = COMPARE_DEFAULT[0], FEWSTEP_SAMPLER
        return (gr.update(choices=choices, value=keep(sampler, next(iter(SAMPLERS)))),
                gr.update(choices=choices, value=keep(left, COMPARE_DEFAULT[0])), gr.update(choices=choices, value=keep(right, COMPARE_DEFAULT[1])))  # fmt: skip

    def on_load(self):
        return gr.update(choices=self.adapter_choices()), views.loaded_models(self.models.loaded())

    def _stopper(self, tab: str):
        def stop(request: gr.Request):
            job = self.jobs.get((request.session_hash, tab))
            if job is not None:
                job.cancel()

        return stop

    async def _follow(self, job: Job, session: str, tab: str, show):
        """Yield `show(job)` (or the queue position) whenever it changes, until the job ends or is cancelled."""
        self.jobs[(session, tab)] = job
        shown = None
        try:
            while not job.finished and not (job.cancelled and job.state == QUEUED):
                ahead = self.worker.jobs_ahead(job)
                text = views.waiting(ahead) if ahead else show(job)
                if text != shown:
                    shown = text
                    yield text
                await asyncio.sleep(POLL_SECONDS)
        finally:
            if not job.finished:
                job.cancel()  # the page went away (or Stop was pressed while it waited): do not run it for nobody
            if self.jobs.get((session, tab)) is job:
                del self.jobs[(session, tab)]

    async def _checked_request(self, data: dict) -> tuple[GenerationRequest, object]:
        values = {name: data[getattr(self.fields, name)] for name in FIELDS}
        request = GenerationRequest.from_page(values, runs_folder(self.workdir))
        choice = await asyncio.to_thread(choose_profile, request.profile, request.model, request.height, request.width)
        return request, choice

    async def _render(self, data: dict, session: str, tab: str, out: SimpleNamespace, make_job, what: str, show):
        """Check, plan, queue and follow one Generate or Compare click; `show(result)` fills the page when it is done."""
        yield {out.status: "Checking the request and planning memory...", out.progress: ""}
        try:
            request, choice = await self._checked_request(data)
        except Exception as exc:  # a refusal: say it on the page and stop here
            yield {out.plan: "", out.status: views.error(describe_error(exc)), out.progress: ""}
            return
        outcome = await asyncio.to_thread(memory_plan, request.model, choice.profile, request.height, request.width)
        yield {out.plan: views.plan_markdown(outcome, choice), out.status: "", out.download: gr.update(visible=False)}
        if outcome.refuses:
            yield {out.status: views.refusal(outcome)}
            return
        job = self.worker.submit(tab, make_job(self.models, request, choice.profile, self.images))
        async for html in self._follow(job, session, tab, views.progress_html):
            yield {out.progress: html}
        final = {out.status: views.finished(job, what), out.progress: "", self.models_md: views.loaded_models(self.models.loaded())}
        if job.state == DONE:
            final.update(show(job.result))
        yield final

    # ---- handlers ----------------------------------------------------------------------------------------------
    async def on_generate(self, data: dict, request: gr.Request):
        out = self.gen

        def show(rendered) -> dict:
            return {out.image: str(rendered.path), out.stats: views.run_table(rendered),
                    out.download: gr.update(value=str(rendered.path), visible=True)}  # fmt: skip

        async for update in self._render(data, request.session_hash, "generate", out, generate_job, "image generated", show):
            yield update

    async def on_compare(self, data: dict, request: gr.Request):
        out = self.cmp

        def show(comparison) -> dict:
            return {out.glance_image: str(comparison.left.path), out.base_image: str(comparison.right.path),
                    out.table: views.comparison_table(comparison),
                    out.download: gr.update(value=str(comparison.grid), visible=True)}  # fmt: skip

        async for update in self._render(data, request.session_hash, "compare", out, compare_job, "both samplers rendered", show):
            yield update

    async def on_train(self, data: dict, request: gr.Request):
        out, f = self.trn, self.fields
        try:
            model = (data[f.model] or "").strip()
            size = default_size(model)
            choice = await asyncio.to_thread(choose_profile, data[f.profile], model, size, size)
            profile = choice.profile.name if data[f.profile] in (None, "", "auto") else data[f.profile]
            steps = int(data[out.steps]) if data[out.steps] not in (None, "") else 0
            job_request = TrainingRequest(model, profile, data[out.phase], steps, (data[out.run_name] or "").strip(),
                                          data[out.image], data[out.caption] or "", bool(data[out.restart]))  # fmt: skip
        except Exception as exc:
            yield {out.status: views.error(describe_error(exc)), out.progress: ""}
            return
        folder = runs_folder(self.workdir) / job_request.run_name
        yield {out.status: f"**Profile:** {choice.why}", out.log: ""}
        job = self.worker.submit("train", training_job(self.models, job_request, self.workdir, self.threads))
        rows_shown = -1
        async for html in self._follow(job, request.session_hash, "train",
                                       lambda j: views.training_progress_html(j, job_request.phases)):  # fmt: skip
            update = {out.progress: html}
            rows = loss_rows(folder)
            if len(rows) != rows_shown:
                rows_shown = len(rows)
                update.update({out.plot: _loss_frame(rows), out.log: log_tail(folder)})
            yield update
        final = {out.progress: "", out.plot: _loss_frame(loss_rows(folder)), out.log: log_tail(folder),
                 self.models_md: views.loaded_models(self.models.loaded())}  # fmt: skip
        if job.state == DONE:
            run = job.result
            final[out.status] = (f"**Done:** trained {' + '.join(run.adapters)} for {run.model} in {job.seconds:.0f} s. "
                                 f"The Generate tab's LoRAs now offer *{run.label}* (selected).")  # fmt: skip
            final[f.adapters] = gr.update(choices=self.adapter_choices(), value=RUN_PREFIX + run.name)
        elif job.state in (CANCELLED, QUEUED):  # QUEUED: stopped before it started
            saved = checkpoint_steps(folder)
            where = ", ".join(f"{phase} at step {step}" for phase, step in saved.items()) or "none yet"
            final[out.status] = (f"**Stopped.** Checkpoints kept: {where}. Press *Train / resume* with the same settings "
                                 "to continue from there.")  # fmt: skip
        else:
            final[out.status] = views.finished(job, "")
        yield final

    def on_train_tab(self):
        """Opening the Train tab readies the trainer's process in the background (see training.warm_up)."""
        threading.Thread(target=warm_up, name="glance-ui-trainer-warm-up", daemon=True).start()

    def on_sample(self):
        """The demo's training pair (a pocket-world picture and its caption), written into the work folder."""
        from ..demo import CAPTION_FILE, write_demo_dataset

        folder = write_demo_dataset(self.workdir / "sample", default_size(DEFAULT_MODEL))
        return str(folder / "red_circle.png"), CAPTION_FILE.read_text(encoding="utf-8").strip()


def _loss_frame(rows: list[dict]):
    import pandas as pd

    return pd.DataFrame(rows, columns=["phase", "step", "loss"])


def build_app(workdir: Path, keep_models: int = 1, threads: int | None = None) -> tuple[gr.Blocks, GlanceApp]:
    app = GlanceApp(workdir, keep_models, threads)
    return app.build(), app


def theme() -> gr.themes.Base:
    return gr.themes.Default(**THEME_FONTS)
