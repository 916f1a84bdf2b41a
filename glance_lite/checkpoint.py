"""Training checkpoints that lose nothing: atomic on disk, rotated, and enough to resume bit for bit.

A Glance run is short (60 steps), but on a small GPU each step can take many seconds and a run can die at
any time (OOM-killer, preempted node, kill -9). Re-running the same command must continue where the last
checkpoint left off and end with exactly the adapter an uninterrupted run would have produced. So a
checkpoint holds everything that decides the next step:

    <checkpoints>/<phase>/step-000020/
        adapter.safetensors   the LoRA so far: a normal glance_lite/diffusers LoRA file (try it with generate)
        trainer_state.pt      step, optimizer and LR-scheduler state, every RNG state (python, numpy, torch CPU,
                              CUDA, and each process's data/timestep sampling generator), the run's config digest

Atomicity: a checkpoint is written into a hidden temporary folder, each file fsync'ed, then the folder is renamed
to its final name (rename is atomic on POSIX) and the parent folder fsync'ed. A reader therefore sees a complete
checkpoint or none; a crash mid-write leaves only a temporary folder, which the next run deletes. Rotation deletes
the oldest complete checkpoints only after the new one exists.

What the atomic write cannot prevent -- a disk that lost data, a file cut short by a copy, a folder of another tool
named step-NNNNNN -- is found before a run resumes (`check_checkpoint`): such a checkpoint is skipped for the
newest one that reads (`newest_readable_checkpoint`) and renamed to `step-NNNNNN.unreadable` (`set_aside`), kept
for inspection and never read or rotated again. A checkpoint of a different run is not skipped: resuming it
needs the user's decision (`CheckpointMismatchError`).
"""

from __future__ import annotations

import os
import random
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .errors import UserError, library_reason

STEP_PREFIX = "step-"
_STEP_DIR = re.compile(r"^step-(\d+)$")
_TEMP_PREFIX = ".tmp-"
ADAPTER_FILE = "adapter.safetensors"
STATE_FILE = "trainer_state.pt"
UNREADABLE_SUFFIX = ".unreadable"
# What every trainer state holds (see `save_training_checkpoint`).
STATE_KEYS = ("step", "run_digest", "optimizer", "lr_scheduler", "rng", "sampler")


class CheckpointMismatchError(UserError, RuntimeError):
    """The output folder holds checkpoints of a different run (other config, data or model)."""


class UnreadableCheckpointError(RuntimeError):
    """A checkpoint folder whose files cannot be read as a glance_lite training checkpoint (cut short, or foreign)."""


@dataclass(frozen=True)
class Checkpoint:
    """A complete checkpoint folder and the step it was taken after."""

    path: Path
    step: int

    @property
    def adapter_path(self) -> Path:
        return self.path / ADAPTER_FILE

    def read_state(self) -> dict[str, Any]:
        """The trainer state; `weights_only` loading, so a checkpoint cannot run code when read."""
        return torch.load(self.path / STATE_FILE, map_location="cpu", weights_only=True)


def _reason(exc: BaseException) -> str:
    """The first sentence of a library's error, e.g. 'PytorchStreamReader failed reading zip archive: failed finding
    central directory'."""
    return library_reason(exc).split(". ")[0].rstrip(".") or type(exc).__name__


def check_checkpoint(checkpoint: Checkpoint) -> dict[str, Any]:
    """Check that both files of a checkpoint are what the trainer wrote, without reading their tensors into memory
    (the trainer state memory-mapped, the adapter's header against its size: both fail on a file cut short), and
    return the (memory-mapped) trainer state. `UnreadableCheckpointError` names the file and says why not."""
    from safetensors import safe_open

    state_path = checkpoint.path / STATE_FILE
    try:
        state = torch.load(state_path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as exc:  # torch.load raises many types for a cut-short or foreign file
        raise UnreadableCheckpointError(f"{state_path} cannot be read ({_reason(exc)})") from None
    missing = [k for k in STATE_KEYS if k not in state] if isinstance(state, dict) else list(STATE_KEYS)
    if missing:
        raise UnreadableCheckpointError(f"{state_path} is not a glance_lite trainer state (it has no {', '.join(missing)})")
    if state["step"] != checkpoint.step:
        raise UnreadableCheckpointError(f"{state_path} holds step {state['step']}, not the step {checkpoint.step} its folder names")
    try:
        with safe_open(str(checkpoint.adapter_path), framework="pt") as f:
            keys = list(f.keys())
    except Exception as exc:  # safetensors' header and truncation errors come in several types
        raise UnreadableCheckpointError(f"{checkpoint.adapter_path} cannot be read ({_reason(exc)})") from None
    if not any(".lora_" in key for key in keys):
        raise UnreadableCheckpointError(f"{checkpoint.adapter_path} holds no LoRA weights")
    return state


def newest_readable_checkpoint(folder: Path) -> tuple[Checkpoint | None, dict | None, list[tuple[Checkpoint, str]]]:
    """The newest checkpoint that passes `check_checkpoint` and its (memory-mapped) state, or None, None; and every
    newer one that did not, with why. Leftovers of interrupted writes are deleted first."""
    remove_interrupted_writes(folder)
    unreadable = []
    for checkpoint in reversed(list_checkpoints(folder)):
        try:
            return checkpoint, check_checkpoint(checkpoint), unreadable
        except UnreadableCheckpointError as exc:
            unreadable.append((checkpoint, str(exc)))
    return None, None, unreadable


def set_aside(checkpoint: Checkpoint) -> Path:
    """Rename an unreadable checkpoint to `step-NNNNNN.unreadable` (kept, with every file, for inspection): it is no
    longer listed, resumed from, rotated away, or replaced by the step a resumed run writes again."""
    target = checkpoint.path.with_name(checkpoint.path.name + UNREADABLE_SUFFIX)
    n = 1
    while target.exists():
        n += 1
        target = checkpoint.path.with_name(f"{checkpoint.path.name}{UNREADABLE_SUFFIX}-{n}")
    os.rename(checkpoint.path, target)
    return target


# ---- folders ---------------------------------------------------------------------------------------------------
def list_checkpoints(folder: Path) -> list[Checkpoint]:
    """Complete checkpoints in `folder`, oldest first (temporary folders of interrupted writes are skipped)."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    found = []
    for child in folder.iterdir():
        match = _STEP_DIR.match(child.name)
        if match and child.is_dir() and (child / STATE_FILE).is_file() and (child / ADAPTER_FILE).is_file():
            found.append(Checkpoint(child, int(match.group(1))))
    return sorted(found, key=lambda c: c.step)


def remove_interrupted_writes(folder: Path) -> None:
    """Delete the temporary folders of checkpoint writes that a crash interrupted."""
    folder = Path(folder)
    if folder.is_dir():
        for child in folder.iterdir():
            if child.name.startswith(_TEMP_PREFIX):
                shutil.rmtree(child, ignore_errors=True)


def latest_checkpoint(folder: Path) -> Checkpoint | None:
    """The newest complete checkpoint, after deleting leftovers of writes that a crash interrupted."""
    remove_interrupted_writes(folder)
    checkpoints = list_checkpoints(folder)
    return checkpoints[-1] if checkpoints else None


def write_checkpoint(folder: Path, step: int, write, keep: int) -> Checkpoint:
    """Create `folder/step-NNNNNN` atomically: `write(tmp_dir)` fills a temporary folder, which is then renamed.

    Afterwards only the newest `keep` checkpoints remain (the one just written always survives).
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    final = folder / f"{STEP_PREFIX}{step:06d}"
    tmp = folder / f"{_TEMP_PREFIX}{final.name}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        write(tmp)
        for file in tmp.iterdir():
            _fsync(file)
        if final.exists():  # a previous run died after writing this step but before training on: replace it
            shutil.rmtree(final)
        os.rename(tmp, final)
        _fsync(folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    for old in list_checkpoints(folder)[: -max(keep, 1)]:
        shutil.rmtree(old.path, ignore_errors=True)
    return Checkpoint(final, step)


def write_text_atomically(path: Path, text: str) -> None:
    """Replace a small file whole (temporary file, fsync, rename): a kill leaves the old content or the new one,
    never an empty or half-written file the next run would stumble on."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(text)
    _fsync(tmp)
    os.replace(tmp, path)


def _fsync(path: Path) -> None:
    """Flush a file or folder to disk, so a rename never exposes data still sitting in the page cache."""
    flags = os.O_RDONLY | (getattr(os, "O_DIRECTORY", 0) if path.is_dir() else 0)
    try:
        fd = os.open(path, flags)
    except OSError:  # some filesystems do not allow opening folders; the rename is still atomic
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


# ---- RNG states --------------------------------------------------------------------------------------------------
def capture_rng_state() -> dict[str, Any]:
    """Every global RNG a training step may touch, in a form `torch.load(weights_only=True)` accepts."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": {"kind": kind, "keys": keys.tolist(), "pos": int(pos), "has_gauss": int(has_gauss), "cached": float(cached)},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    random.setstate(_as_tuples(state["python"]))
    n = state["numpy"]
    np.random.set_state((n["kind"], np.array(n["keys"], dtype=np.uint32), n["pos"], n["has_gauss"], n["cached"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])


def _as_tuples(value):
    """random.setstate wants nested tuples; a save/load round trip may hand back lists."""
    return tuple(_as_tuples(v) for v in value) if isinstance(value, (list, tuple)) else value


# ---- the trainer's checkpoint ------------------------------------------------------------------------------------
def save_training_checkpoint(
    folder: Path,
    step: int,
    *,
    transformer,
    family,
    adapter_name: str,
    optimizer,
    lr_scheduler,
    sampler_states: list[torch.Tensor],
    run_digest: str,
    run_description: dict,
    keep: int,
    extra: dict | None = None,
) -> Checkpoint:
    """Write one checkpoint of `adapter_name` after `step` optimizer steps (see the module docstring)."""
    from .lora import save_lora

    state = {
        "step": step,
        "adapter": adapter_name,
        "run_digest": run_digest,
        "run": run_description,
        "optimizer": optimizer.state_dict(),
        "lr_scheduler": lr_scheduler.state_dict(),
        "rng": capture_rng_state(),
        "sampler": list(sampler_states),
        "extra": extra or {},
    }

    def write(tmp: Path) -> None:
        save_lora(transformer, family, adapter_name, tmp / ADAPTER_FILE)
        torch.save(state, tmp / STATE_FILE)

    return write_checkpoint(folder, step, write, keep)


def check_same_run(checkpoint: Checkpoint, state: dict, run_digest: str, run_description: dict) -> None:
    """Refuse to resume a checkpoint made by a different command (silently mixing two runs would be worse)."""
    if state.get("run_digest") == run_digest:
        return
    before = state.get("run", {})
    changed = sorted(k for k in set(before) | set(run_description) if before.get(k) != run_description.get(k))
    details = "; ".join(f"{k}: {before.get(k)!r} -> {run_description.get(k)!r}" for k in changed[:6]) or "unknown"
    raise CheckpointMismatchError(
        f"{checkpoint.path} was written by a different training run ({details}). "
        "Re-run with the same model, data and config to resume it, pass --restart (restart=True) to discard "
        "its checkpoints, or choose another --output folder."
    )


def restore_training_checkpoint(checkpoint: Checkpoint, state: dict, *, transformer, adapter_name: str, optimizer, lr_scheduler) -> list[torch.Tensor]:
    """Put the adapter weights, optimizer, LR scheduler and global RNGs back; returns the sampler states."""
    from peft.utils import set_peft_model_state_dict
    from safetensors.torch import load_file

    from .lora import peft_layers

    tensors = peft_layers(load_file(checkpoint.adapter_path))
    result = set_peft_model_state_dict(transformer, tensors, adapter_name=adapter_name)
    unexpected = [k for k in getattr(result, "unexpected_keys", []) if "lora_" in k]
    if unexpected:
        raise CheckpointMismatchError(f"{checkpoint.adapter_path} does not fit this model (e.g. {unexpected[0]}).")
    optimizer.load_state_dict(state["optimizer"])
    lr_scheduler.load_state_dict(state["lr_scheduler"])
    restore_rng_state(state["rng"])
    return state["sampler"]
