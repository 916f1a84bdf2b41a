"""Runs `python -m glance_lite.train` commands in child processes that the test kills with a real SIGKILL.

Test code only: the stopping points below are installed from here, by wrapping the trainer's own functions in the
child process before `glance_lite.train.main(argv)` runs; the production code carries no test hook.

    python tests/kill_runner.py        (PYTHONPATH = the repository; started by tests/test_train.py)

It imports torch, diffusers and glance_lite.train once, says `ready`, then reads one JSON command per line on
stdin: {"argv": [...train arguments...], "log": path for the run's stdout and stderr, "stop": null | [point, n]}.
For each command it forks a child that is exactly what `python -m glance_lite.train ARGV` would be after its
imports (forking saves the ~10 s of imports per run; nothing has computed anything before the fork, so the child
starts from the same state as a fresh process: its adapters are bit for bit those of `python -m glance_lite.train`
with the same OMP_NUM_THREADS), and waits for it. Events, one line each on stdout:

    ready                              the runner has imported everything and takes commands
    started PID                        a child began `main(argv)`
    training PHASE from STEP           the child's training loop of PHASE begins (model loaded, samples encoded)
    logged PHASE STEP                  the child finished training step STEP and logged its loss
    checkpoint PHASE STEP              the child's checkpoint of step STEP is complete (renamed into place)
    teacher N                          (--phase distill) the child cached its N-th teacher trajectory
    stopped PID WHAT                   the child reached its stopping point and waits there to be killed
    exit PID CODE                      the child ended: its exit status, or -N after signal N (-9: SIGKILL)

Stopping points (`stop`: [point, n], n counting from 1 within the child; the child stops and waits, up to
STOP_TIMEOUT_S, for the test to SIGKILL it, then exits with status STOP_NOT_KILLED):

    ["step", n]         inside the n-th training step: forward and backward done, before the optimizer step
                        updates the weights (and before the step's loss is logged or checkpointed)
    ["state_file", n]   inside the n-th checkpoint write: adapter.safetensors written in the temporary folder,
                        trainer_state.pt written half (flushed to disk), the folder not renamed into place
    ["rename", n]       inside the n-th checkpoint write: every file written to the temporary folder, just
                        before it is synced and renamed into place
    ["teacher", n]      (--phase distill) just after the n-th teacher trajectory was written to the cache

`TrainRunner` is the test's side: it starts this file, sends commands, and reads the events, each wait with a
timeout that fails the test with what the child did so far and the end of its output.
"""

from __future__ import annotations

import importlib
import io
import json
import os
import select
import signal
import subprocess
import sys
import threading
import time
import traceback
from pathlib import Path

STOP_TIMEOUT_S = 300
STOP_NOT_KILLED = 97


def emit(fd: int, line: str) -> None:
    os.write(fd, (line + "\n").encode())  # one write of a short line on a pipe: never interleaved with another


def install_hooks(events: int, stop) -> None:
    """Progress events and the stopping point, by wrapping the trainer's functions in this (child) process."""
    import torch
    from torch.optim.optimizer import register_optimizer_step_pre_hook

    from glance_lite import checkpoint, data, loss_log

    pid = os.getpid()
    point, nth = stop if stop else (None, 0)
    where = {"phase": None, "step": 0}  # the phase being trained and its last logged step
    counts = {"step": 0, "state_file": 0, "rename": 0, "teacher": 0}

    def wait_to_be_killed(what: str) -> None:
        emit(events, f"stopped {pid} {what}")
        threading.Event().wait(STOP_TIMEOUT_S)  # the test kills us here; if it never does, leave no orphan behind
        os._exit(STOP_NOT_KILLED)

    def reached(name: str) -> bool:
        counts[name] += 1
        return point == name and counts[name] == nth

    log_init, log_record = loss_log.LossLog.__init__, loss_log.LossLog.record

    def init(self, path, start_step, enabled=True):
        log_init(self, path, start_step, enabled)
        where.update(phase=Path(path).name.split("_loss")[0], step=start_step)
        emit(events, f"training {where['phase']} from {start_step}")

    def record(self, step, *args, **kwargs):
        log_record(self, step, *args, **kwargs)
        where["step"] = step
        emit(events, f"logged {where['phase']} {step}")

    loss_log.LossLog.__init__, loss_log.LossLog.record = init, record

    def before_optimizer_step(optimizer, args, kwargs):
        if reached("step"):
            wait_to_be_killed(f"inside {where['phase']} step {where['step'] + 1}, before the optimizer step")

    register_optimizer_step_pre_hook(before_optimizer_step)

    torch_save = torch.save

    def save(obj, f, *args, **kwargs):
        if isinstance(f, (str, os.PathLike)) and Path(f).name == checkpoint.STATE_FILE and reached("state_file"):
            buffer = io.BytesIO()
            torch_save(obj, buffer, *args, **kwargs)
            data = buffer.getvalue()
            with open(f, "wb") as file:
                file.write(data[: len(data) // 2])
                file.flush()
                os.fsync(file.fileno())
            wait_to_be_killed(f"writing {f} ({len(data) // 2} of {len(data)} bytes written)")
        return torch_save(obj, f, *args, **kwargs)

    torch.save = save

    write_checkpoint = checkpoint.write_checkpoint

    def write_checkpoint_then_report(folder, step, write, keep):
        def write_files(tmp):
            write(tmp)
            if reached("rename"):
                wait_to_be_killed(f"in {tmp} with every file written, before the rename to step-{step:06d}")

        done = write_checkpoint(folder, step, write_files, keep)
        emit(events, f"checkpoint {Path(folder).name} {step}")
        return done

    checkpoint.write_checkpoint = write_checkpoint_then_report

    cache_put = data.EmbeddingCache.put

    def put_then_report(self, key, tensors):
        cache_put(self, key, tensors)
        if key.startswith("teacher-"):
            stop_here = reached("teacher")
            emit(events, f"teacher {counts['teacher']}")
            if stop_here:
                wait_to_be_killed(f"after writing teacher trajectory {counts['teacher']} to the cache")

    data.EmbeddingCache.put = put_then_report


def child(events: int, argv: list[str], log: str, stop) -> None:
    """The forked child: output to `log`, hooks in, then exactly what `python -m glance_lite.train ARGV` runs."""
    code = 1
    try:
        fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        for stream in (sys.stdout, sys.stderr):
            stream.reconfigure(line_buffering=True)  # what a run printed is in its log when it is killed
        sys.argv = ["python -m glance_lite.train", *argv]
        emit(events, f"started {os.getpid()}")
        install_hooks(events, stop)
        code = importlib.import_module("glance_lite.train").main(argv)
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    except BaseException:
        traceback.print_exc()
    finally:
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(code if isinstance(code, int) else 1)


def warm_up() -> None:
    """Import what a training run imports, without computing anything (a fork after a computation could inherit a
    thread pool that the child cannot use)."""
    import accelerate  # noqa: F401
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot  # noqa: F401
    import peft  # noqa: F401
    import torch  # noqa: F401

    importlib.import_module("glance_lite.train")
    from glance_lite.models import family_of

    for model in ("tiny/qwen-image",):
        family_of(model).pipeline_class  # diffusers imports the pipeline modules lazily


def serve() -> None:
    events = os.dup(1)
    os.dup2(2, 1)  # anything the imports print goes to stderr, never into the event stream
    warm_up()
    emit(events, "ready")
    for line in sys.stdin:
        if not line.strip():
            continue
        command = json.loads(line)
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:
            child(events, command["argv"], command["log"], command.get("stop"))
        _, status = os.waitpid(pid, 0)
        emit(events, f"exit {pid} {os.waitstatus_to_exitcode(status)}")
    os._exit(0)  # stdin closed: done (skipping the seconds an interpreter with torch loaded takes to tear down)


# ---- the test's side ---------------------------------------------------------------------------------------------
class TrainRunner:
    """Starts `python tests/kill_runner.py` and runs training commands through it, one child at a time."""

    def __init__(self, folder: Path, timeout: float):
        self.folder, self.timeout = Path(folder), timeout
        self.folder.mkdir(parents=True, exist_ok=True)
        self.stderr = self.folder / "runner.stderr"
        env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parent.parent))
        # One intra-op thread: the tiny model's tensors gain nothing from more, and on a busy CPU two OpenMP threads
        # waiting on each other made a run take 2 to 40 s. Every run here, the uninterrupted one too, uses the same.
        env["OMP_NUM_THREADS"] = "1"
        with open(self.stderr, "wb") as err:
            self.proc = subprocess.Popen([sys.executable, __file__], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=err, env=env)
        self.buffer = b""
        self.runs = 0
        self.child: TrainChild | None = None
        self.next_event("the runner to import torch, diffusers and glance_lite.train", lambda e: e == "ready")

    def start(self, argv: list[str], stop: tuple[str, int] | None = None) -> TrainChild:
        """Run `python -m glance_lite.train ARGV` in a new child (stopping at `stop`); returns once it started."""
        if self.child is not None and self.child.code is None:  # left running by a test that failed
            self.child.kill()
        self.runs += 1
        log = self.folder / f"run-{self.runs}.log"
        self.proc.stdin.write(json.dumps({"argv": [str(a) for a in argv], "log": str(log), "stop": stop}).encode() + b"\n")
        self.proc.stdin.flush()
        event = self.next_event(f"run {self.runs} to start", lambda e: e.startswith(("started ", "exit ")))
        assert event.startswith("started "), f"run {self.runs} ended before it started ({event})" + self.report() + f"\n--- {log}:\n{_tail(log)}"
        self.child = TrainChild(self, int(event.split()[1]), log, stop)
        self.child.events.append(event)
        return self.child

    def next_event(self, what: str, want, timeout: float | None = None, child: TrainChild | None = None) -> str | None:
        """The next event `want` accepts (each one on the way is given to `child`); `None` if `timeout` passes
        first. Without `timeout` (self.timeout then), running out of time fails the test."""
        deadline = time.monotonic() + (timeout if timeout is not None else self.timeout)
        while True:
            while b"\n" not in self.buffer:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    if timeout is not None:
                        return None
                    raise AssertionError(f"timed out after {self.timeout:.0f} s waiting for {what}" + (child.report() if child else self.report()))
                if select.select([self.proc.stdout], [], [], remaining)[0]:
                    chunk = os.read(self.proc.stdout.fileno(), 65536)
                    if not chunk:
                        raise AssertionError(f"the kill runner ended while waiting for {what}" + self.report())
                    self.buffer += chunk
            line, self.buffer = self.buffer.split(b"\n", 1)
            event = line.decode()
            if child is not None:
                child.events.append(event)
                if event.startswith("exit "):
                    child.code = int(event.split()[2])
            if want(event):
                return event

    def report(self) -> str:
        return f"\n--- end of {self.stderr}:\n{_tail(self.stderr)}"

    def close(self) -> None:
        if self.child is not None and self.child.code is None:
            _kill(self.child.pid)  # a child left stopped by a failed test: it is ours, and waits for exactly this
        self.proc.stdin.close()
        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


class TrainChild:
    """One training run in a child process: its events so far and, once it ended, its exit code."""

    def __init__(self, runner: TrainRunner, pid: int, log: Path, stop):
        self.runner, self.pid, self.log, self.stop = runner, pid, log, stop
        self.started = time.monotonic()
        self.events: list[str] = []
        self.code: int | None = None

    def wait(self, timeout: float | None = None) -> int | None:
        """The exit code (-9 after SIGKILL); `None` if the child still runs after `timeout` seconds (no
        `timeout`: the runner's, and running out of it fails the test)."""
        if self.code is None:
            self.runner.next_event(f"run {self.runner.runs} to end", lambda e: e.startswith(f"exit {self.pid} "), timeout, self)
        return self.code

    def stopped(self) -> str:
        """Wait until the child reached its stopping point; what it was doing there. Fails the test if the child
        ends or the time runs out first."""
        what = f"run {self.runner.runs} to reach its stopping point {self.stop}"
        event = self.runner.next_event(what, lambda e: e.startswith((f"stopped {self.pid} ", f"exit {self.pid} ")), None, self)
        assert self.code is None, f"run {self.runner.runs} ended (status {self.code}) before its stopping point {self.stop}" + self.report()
        return event.split(" ", 2)[2]

    def kill(self) -> int:
        """SIGKILL from outside, then the exit code (-9; the child's own if it ended just before)."""
        _kill(self.pid)
        return self.wait()

    def report(self) -> str:
        return f"\n--- events: {self.events[-12:]}\n--- end of {self.log}:\n{_tail(self.log)}"


def _kill(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:  # it ended on its own just now; the runner reports how
        pass


def _tail(path: Path, size: int = 3000) -> str:
    try:
        return Path(path).read_text(errors="replace")[-size:]
    except OSError as exc:
        return f"({exc})"


if __name__ == "__main__":
    serve()
