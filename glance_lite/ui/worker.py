"""The ONE thread that does model work (generation and training), its queue, and each job's progress.

Why one thread: a small GPU holds one model, so two users clicking at once must not load two. Every request
becomes a `Job` in a first-in, first-out queue; the page shows how many jobs are ahead of it and follows its
`Progress` while it runs. Cancelling a queued job drops it; cancelling a running one sets a flag the job checks
(generation: before every transformer call, `models.py`; training: while it waits on its child process) and raises
`Cancelled`, which leaves the worker ready for the next job.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .library import describe_error

QUEUED, RUNNING, DONE, FAILED, CANCELLED = "queued", "running", "done", "failed", "cancelled"


class Cancelled(Exception):
    """Raised inside a job once its user cancelled it."""


@dataclass
class Progress:
    """What a running job has got to, written by the worker thread and read by the page (plain attributes)."""

    label: str = ""  # which run of the job (compare: "Glance", "base")
    stage_names: tuple[str, ...] = ()  # the stages this run goes through, in order
    stage_records: list = field(default_factory=list)  # the manager's StageRecord list (grows as stages finish)
    first_record: int = 0  # records before this index belong to earlier runs
    step: int = 0
    total_steps: int = 0
    phase: str = ""
    phase_ends: dict[str, int] = field(default_factory=dict)  # phase -> number of steps done when it ends
    transformer_calls: int = 0
    note: str = ""  # free text (training: the trainer's last message)
    last_timestep: float | None = None

    def start_run(self, label: str, stage_names: tuple[str, ...], records: list, total_steps: int, phase_ends: dict[str, int]) -> None:
        """Reset the counters for the next run of this job (a compare job has two)."""
        self.label, self.stage_names, self.stage_records = label, stage_names, records
        self.first_record, self.step, self.total_steps, self.phase_ends = len(records), 0, total_steps, phase_ends
        self.transformer_calls, self.last_timestep, self.phase = 0, None, next(iter(phase_ends), "")

    def stages_done(self) -> list:
        return self.stage_records[self.first_record :]

    def count_call(self, timestep: float | None) -> None:
        """One transformer forward; a new timestep starts a new denoising step (CFG's second pass does not)."""
        self.transformer_calls += 1
        if timestep is None or timestep != self.last_timestep:
            self.step += 1
            self.last_timestep = timestep
            self.phase = next((p for p, end in self.phase_ends.items() if self.step <= end), self.phase)


_ids = itertools.count(1)


@dataclass
class Job:
    """One request for model work. `run(job)` does it on the worker thread; its return value becomes `result`."""

    kind: str
    run: Callable[["Job"], Any]
    id: int = field(default_factory=lambda: next(_ids))
    state: str = QUEUED
    result: Any = None
    error: str | None = None
    progress: Progress = field(default_factory=Progress)
    started: float | None = None
    finished_at: float | None = None
    _cancel: threading.Event = field(default_factory=threading.Event, repr=False)
    _done: threading.Event = field(default_factory=threading.Event, repr=False)

    def cancel(self) -> None:
        self._cancel.set()

    @property
    def cancelled(self) -> bool:
        return self._cancel.is_set()

    def check_cancelled(self) -> None:
        if self._cancel.is_set():
            raise Cancelled()

    @property
    def finished(self) -> bool:
        return self._done.is_set()

    def wait(self, timeout: float | None = None) -> bool:
        return self._done.wait(timeout)

    @property
    def seconds(self) -> float:
        if self.started is None:
            return 0.0
        return (self.finished_at or time.perf_counter()) - self.started


class Worker:
    """A daemon thread running queued jobs one at a time, in the order they were submitted."""

    def __init__(self):
        self._queue: deque[Job] = deque()
        self._running: Job | None = None
        self._lock = threading.Condition()
        self._thread = threading.Thread(target=self._loop, name="glance-ui-worker", daemon=True)
        self._thread.start()

    def submit(self, kind: str, run: Callable[[Job], Any]) -> Job:
        job = Job(kind, run)
        with self._lock:
            self._queue.append(job)
            self._lock.notify()
        return job

    def jobs_ahead(self, job: Job) -> int:
        """How many jobs run before `job` starts (the running one included); 0 once it runs."""
        with self._lock:
            if job.state != QUEUED:
                return 0
            waiting = list(self._queue)
            ahead = waiting.index(job) if job in waiting else 0
            return ahead + (self._running is not None)

    def _loop(self) -> None:
        while True:
            with self._lock:
                while not self._queue:
                    self._lock.wait()
                job = self._queue.popleft()
                self._running = job
            try:
                self._run(job)
            finally:
                with self._lock:
                    self._running = None

    @staticmethod
    def _run(job: Job) -> None:
        job.started = time.perf_counter()
        try:
            job.check_cancelled()  # cancelled while it waited: never start it
            job.state = RUNNING
            job.result = job.run(job)
            job.state = DONE
        except Cancelled:
            job.state = CANCELLED
        except Exception as exc:  # the worker must survive anything a job raises
            job.error = describe_error(exc)
            job.state = FAILED
        finally:
            job.finished_at = time.perf_counter()
            job._done.set()
