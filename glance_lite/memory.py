"""Per-stage wall time and peak memory, and a memory timeline, measured the same way on CPU and GPU.

On CUDA the peak of a stage is the allocator's `max_memory_allocated` / `max_memory_reserved` after a reset
at the stage start (exact). On CPU it is the peak resident set size seen by a background sampler. The same
sampler records a (seconds, bytes, stage) timeline, which benchmarks draw as a PNG.
"""

from __future__ import annotations

import threading
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field

import psutil
import torch


@dataclass
class StageRecord:
    stage: str
    seconds: float
    peak_bytes: int
    reserved_bytes: int | None = None
    device: str = "cpu"
    cpu_seconds: float | None = None  # this process's CPU time (all threads): steadier than wall time on a busy machine

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class MemoryTracker:
    """Collects StageRecords and a sampled timeline for one run. `interval=None` turns sampling off.

    `split(part)` divides the running stage into named parts (e.g. the sampling phases of "denoise"); each part
    gets its own record in `parts` ("denoise/slow") and labels its timeline samples, while the stage's record still
    covers the whole stage.
    """

    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    interval: float | None = 0.01
    records: list[StageRecord] = field(default_factory=list)
    timeline: list[tuple[float, int, str]] = field(default_factory=list)
    parts: list[StageRecord] = field(default_factory=list)

    def __post_init__(self):
        self._t0 = time.perf_counter()
        self._stage = "idle"
        self._stage_peak = 0
        self._part: tuple[str, float, float] | None = None  # (label, wall start, CPU start) of the running part
        self._part_peak = 0
        self._carried = (0, 0)  # CUDA (allocated, reserved) peaks of the stage before the last reset by split()
        self._stop = threading.Event()
        self._thread = None
        if self.interval:
            self._thread = threading.Thread(target=self._sample_forever, daemon=True)
            self._thread.start()

    def current_bytes(self) -> int:
        if self.device.type == "cuda":
            return torch.cuda.memory_allocated(self.device)
        return psutil.Process().memory_info().rss

    def _sample(self) -> None:
        now = self.current_bytes()
        self._stage_peak = max(self._stage_peak, now)
        self._part_peak = max(self._part_peak, now)
        label = self._part[0] if self._part else self._stage
        self.timeline.append((time.perf_counter() - self._t0, now, label))

    def _sample_forever(self) -> None:
        while not self._stop.wait(self.interval):
            self._sample()

    @contextmanager
    def stage(self, name: str):
        """Measure one stage; nested use is not supported (stages follow one another)."""
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
        self._stage, self._stage_peak, self._part, self._carried = name, 0, None, (0, 0)
        self._sample()
        start, cpu_start = time.perf_counter(), time.process_time()
        try:
            yield
        finally:
            if self.device.type == "cuda":
                torch.cuda.synchronize(self.device)
            self._sample()
            self._end_part()  # before the stage's clock stops: the stage covers all of its parts
            seconds = time.perf_counter() - start
            reserved = None
            if self.device.type == "cuda":
                peak = max(torch.cuda.max_memory_allocated(self.device), self._carried[0])
                reserved = max(torch.cuda.max_memory_reserved(self.device), self._carried[1])
            else:
                peak = self._stage_peak
            cpu_seconds = time.process_time() - cpu_start
            self.records.append(StageRecord(name, seconds, peak, reserved, str(self.device), cpu_seconds))
            self._stage = "idle"

    def split(self, part: str) -> None:
        """End the running part of the current stage (if any) and start the part `part`."""
        if self._stage == "idle":
            raise RuntimeError("MemoryTracker.split() divides a stage: call it inside `with tracker.stage(...)`.")
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        self._sample()
        self._end_part()
        if self.device.type == "cuda":  # the part's peak is exact: reset, keeping the stage's peak so far
            self._carried = (
                max(self._carried[0], torch.cuda.max_memory_allocated(self.device)),
                max(self._carried[1], torch.cuda.max_memory_reserved(self.device)),
            )
            torch.cuda.reset_peak_memory_stats(self.device)
        self._part, self._part_peak = (f"{self._stage}/{part}", time.perf_counter(), time.process_time()), 0
        self._sample()

    def _end_part(self) -> None:
        if self._part is None:
            return
        label, start, cpu_start = self._part
        seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu_start
        reserved = None
        if self.device.type == "cuda":
            peak = torch.cuda.max_memory_allocated(self.device)
            reserved = torch.cuda.max_memory_reserved(self.device)
        else:
            peak = self._part_peak
        self.parts.append(StageRecord(label, seconds, peak, reserved, str(self.device), cpu_seconds))
        self._part = None

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def by_stage(self) -> dict[str, StageRecord]:
        return {r.stage: r for r in self.records}
