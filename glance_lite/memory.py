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

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class MemoryTracker:
    """Collects StageRecords and a sampled timeline for one run. `interval=None` turns sampling off."""

    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    interval: float | None = 0.01
    records: list[StageRecord] = field(default_factory=list)
    timeline: list[tuple[float, int, str]] = field(default_factory=list)

    def __post_init__(self):
        self._t0 = time.perf_counter()
        self._stage = "idle"
        self._stage_peak = 0
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
        self.timeline.append((time.perf_counter() - self._t0, now, self._stage))

    def _sample_forever(self) -> None:
        while not self._stop.wait(self.interval):
            self._sample()

    @contextmanager
    def stage(self, name: str):
        """Measure one stage; nested use is not supported (stages follow one another)."""
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
        self._stage, self._stage_peak = name, 0
        self._sample()
        start = time.perf_counter()
        try:
            yield
        finally:
            if self.device.type == "cuda":
                torch.cuda.synchronize(self.device)
            seconds = time.perf_counter() - start
            self._sample()
            reserved = None
            if self.device.type == "cuda":
                peak = torch.cuda.max_memory_allocated(self.device)
                reserved = torch.cuda.max_memory_reserved(self.device)
            else:
                peak = self._stage_peak
            self.records.append(StageRecord(name, seconds, peak, reserved, str(self.device)))
            self._stage = "idle"

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def by_stage(self) -> dict[str, StageRecord]:
        return {r.stage: r for r in self.records}
