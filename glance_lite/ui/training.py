"""Training from the page: one image and its caption -> `glance_lite.train.train` in a child process.

Why a child process: `train()` has no stop button, but it resumes from its last checkpoint when called again with the
same arguments (the CLI's answer to a crash or kill -9). So Stop terminates the child, and Train with the same
settings resumes. The worker thread waits on the child, so generation requests queue behind a training run and
never load a second model; the loaded generation models are released first, because the trainer loads its own
transformer. The loss curve is read live from the trainer's `{phase}_loss.csv`; its messages go to `ui-train.log`.

Runs live in `<workdir>/train/<run name>/` (the trainer's output folder, with the one-sample dataset in `data/`);
every folder there with an adapter is a trained run the Generate tab can use.
"""

from __future__ import annotations

import multiprocessing
import re
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from ..errors import UserError
from ..loss_log import read_loss_csv
from ..train_config import PHASES
from .library import describe_error
from .models import ModelCache
from .worker import Cancelled, Job

LOG_FILE = "ui-train.log"
# Checkpoint at least this often, so Stop loses at most this many steps (a bookkeeping key: resuming ignores it).
CHECKPOINT_EVERY = 10
_RUN_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
_POLL_SECONDS = 0.3
_STOP_GRACE_SECONDS = 30.0  # a stopped training child gets this long to exit before it is killed


@dataclass(frozen=True)
class TrainingRequest:
    model: str
    profile: str  # a profile name or YAML path (auto is resolved before)
    phase: str  # slow | fast | both
    steps: int
    run_name: str
    image: str
    caption: str
    restart: bool = False

    def __post_init__(self):
        if not _RUN_NAME.match(self.run_name or ""):
            raise ValueError(f"Run name {self.run_name!r} is not a simple folder name: use letters, digits, '.', '-' or '_'.")
        if not self.image:
            raise ValueError("No training image: upload one, or press 'Use the bundled sample'.")
        if not (self.caption or "").strip():
            raise ValueError("The caption is empty: describe the training image in one sentence.")
        if self.phase not in ("slow", "fast", "both"):
            raise ValueError(f"phase must be slow, fast or both, got {self.phase!r}.")
        if self.steps < 1:
            raise ValueError(f"steps must be at least 1, got {self.steps}.")

    @property
    def phases(self) -> tuple[str, ...]:
        return PHASES if self.phase == "both" else (self.phase,)


@dataclass(frozen=True)
class TrainedRun:
    name: str
    folder: Path
    model: str
    adapters: dict[str, Path]

    @property
    def label(self) -> str:
        return f"trained: {self.name} ({self.model}; {' + '.join(self.adapters)})"


def runs_folder(workdir: Path) -> Path:
    return Path(workdir) / "train"


def trained_runs(folder: Path) -> list[TrainedRun]:
    """Every run folder with at least one adapter, newest first."""
    runs = []
    for child in sorted(Path(folder).glob("*/"), key=lambda p: p.stat().st_mtime, reverse=True):
        adapters = {p: child / f"{p}.safetensors" for p in PHASES if (child / f"{p}.safetensors").is_file()}
        if adapters:
            runs.append(TrainedRun(child.name, child, _run_model(child), adapters))
    return runs


def trained_run(folder: Path, name: str) -> TrainedRun:
    for run in trained_runs(folder):
        if run.name == name:
            return run
    raise FileNotFoundError(f"No trained adapters in run {name!r} (folder {Path(folder) / name}): train it first.")


def _run_model(folder: Path) -> str:
    import yaml

    config = folder / "train_config.yaml"
    try:
        return str(yaml.safe_load(config.read_text())["model"])
    except (OSError, KeyError, TypeError, yaml.YAMLError):
        return "unknown model"


def loss_rows(folder: Path) -> list[dict]:
    """Every logged step of the run's phases: {"phase", "step", "loss"}."""
    return [{"phase": phase, "step": r["step"], "loss": r["loss"]} for phase in PHASES for r in read_loss_csv(Path(folder) / f"{phase}_loss.csv")]


def checkpoint_steps(folder: Path) -> dict[str, int]:
    """The step of each phase's newest checkpoint: where Train resumes after Stop."""
    from ..checkpoint import list_checkpoints

    steps = {}
    for phase in PHASES:
        found = list_checkpoints(Path(folder) / "checkpoints" / phase)
        if found:
            steps[phase] = found[-1].step
    return steps


def log_tail(folder: Path, lines: int = 12) -> str:
    path = Path(folder) / LOG_FILE
    return "\n".join(path.read_text(encoding="utf-8", errors="replace").splitlines()[-lines:]) if path.is_file() else ""


def _write_dataset(request: TrainingRequest, folder: Path) -> Path:
    """data/sample.<ext> + sample.txt: the one-sample dataset in the layout `train` expects (the same bytes each
    time, so a resume sees the same data)."""
    data = folder / "data"
    if data.exists():
        shutil.rmtree(data)
    data.mkdir(parents=True)
    source = Path(request.image)
    shutil.copyfile(source, data / f"sample{source.suffix.lower() or '.png'}")
    (data / "sample.txt").write_text(request.caption.strip() + "\n", encoding="utf-8")
    return data


def _settings(request: TrainingRequest) -> dict:
    """The demo's scaled-down recipe for the pocket model (64x64, CPU); the family's recipe for any other model."""
    from ..demo import CONFIG_FILE
    from ..train_config import read_config_file

    settings = read_config_file(CONFIG_FILE) if request.model.startswith("pocket/") else {}
    return {**settings, "steps": request.steps, "checkpoint_every": min(CHECKPOINT_EVERY, request.steps)}


def _train_in_child(conn, kwargs: dict, log_path: str, threads: int | None) -> None:
    """The child process: `train(**kwargs)` with its messages in the run's log; the outcome goes back on `conn`."""
    sys.stdout = open(log_path, "a", buffering=1, encoding="utf-8")  # noqa: SIM115 - lives as long as the process
    try:
        import torch

        from glance_lite.train import train

        if threads:
            torch.set_num_threads(threads)

        train(**kwargs)
        conn.send(("done", ""))
    except Exception as exc:  # every failure goes back to the page; unexpected ones also to the server's stderr
        conn.send(("failed", describe_error(exc)))
    finally:
        conn.close()


def _update_progress(job: Job, folder: Path, started: float) -> None:
    """Phase and step from the loss CSV this run wrote last (an older run's CSV of another phase does not count)."""
    written = [(path.stat().st_mtime, phase, path) for phase in PHASES if (path := folder / f"{phase}_loss.csv").is_file()]
    fresh = [w for w in written if w[0] >= started - 1]
    if fresh:
        _, phase, path = max(fresh)
        rows = read_loss_csv(path)
        job.progress.phase, job.progress.step = phase, rows[-1]["step"] if rows else 0


def _process_context():
    """How the training child starts. With a CUDA GPU: spawn, a fresh interpreter (CUDA state must not be forked).
    Without one: a forkserver that imported the trainer once, so every Train (a resume after Stop too) starts at once
    instead of importing torch, diffusers and transformers again. Neither inherits the server's threads."""
    import torch

    if torch.cuda.is_available():
        return multiprocessing.get_context("spawn")
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(["glance_lite.api", "glance_lite.train", __name__])
    return context


def warm_up() -> None:
    """Start the trainer's forkserver now (CPU-only machines), so the first Train does not wait for its imports."""
    if _process_context().get_start_method() == "forkserver":
        from multiprocessing import forkserver

        forkserver.ensure_running()


def training_job(cache: ModelCache, request: TrainingRequest, workdir: Path, threads: int | None = None):
    """The worker's part of a Train click: release the loaded models, train in a child, follow it, stop it."""

    def run(job: Job) -> TrainedRun:
        cache.release_all()
        folder = runs_folder(workdir) / request.run_name
        folder.mkdir(parents=True, exist_ok=True)
        kwargs = dict(
            model=request.model, data=str(_write_dataset(request, folder)), output=str(folder), phase=request.phase,
            profile=request.profile, config=_settings(request), restart=request.restart, progress=False, verbose=True,
        )  # fmt: skip
        job.progress.total_steps = request.steps
        with (folder / LOG_FILE).open("a", encoding="utf-8") as log:  # the page shows this until the trainer speaks
            log.write(f"-- {time.strftime('%Y-%m-%d %H:%M:%S')}: training {request.phase} for {request.steps} steps --\n")
        started = time.time()
        context = _process_context()
        receive, send = context.Pipe(duplex=False)
        child = context.Process(target=_train_in_child, args=(send, kwargs, str(folder / LOG_FILE), threads), daemon=True)
        child.start()
        send.close()
        try:
            outcome = _follow(child, receive, job, folder, started)
        finally:
            _end(child)
        if outcome[0] != "done":
            raise UserError(outcome[1])  # already described for the page (`describe_error`), in the child
        return trained_run(runs_folder(workdir), request.run_name)

    return run


def _end(child, grace: float = _STOP_GRACE_SECONDS) -> None:
    """Terminate the child if it still runs and wait for it; kill it if it is still there after `grace` seconds (a
    child that hangs must not keep the worker, and so every request queued behind it, waiting forever)."""
    if child.is_alive():
        child.terminate()
    child.join(timeout=grace)
    if child.is_alive():
        child.kill()
        child.join(timeout=grace)


def _follow(child, receive, job: Job, folder: Path, started: float) -> tuple[str, str]:
    """Update the job's progress from the loss CSVs until the child reports; terminate it when the job is cancelled.
    A child that ends without a report (killed, crashed) closes its end of the pipe: that ends the wait too."""
    while True:
        _update_progress(job, folder, started)
        job.progress.note = log_tail(folder, 1)
        if job.cancelled:
            child.terminate()
            raise Cancelled()
        if receive.poll(_POLL_SECONDS):  # a report, or the end of the pipe
            try:
                return receive.recv()
            except EOFError:
                child.join(timeout=_STOP_GRACE_SECONDS)  # for its exit code
                return _no_result(child)
        if not child.is_alive() and not receive.poll(0):
            return _no_result(child)


def _no_result(child) -> tuple[str, str]:
    return ("failed", f"The training process ended without a result (exit code {child.exitcode}); see the server log.")
