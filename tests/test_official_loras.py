"""The README's default: on an official base model (Qwen/Qwen-Image) with no LoRAs given, glance_lite uses the
published Glance LoRAs (CSU-JPG/Glance); `--no-official-loras` / `use_official_loras=False` skips them; a machine
without them is told so in one line.

All offline: a fake local Hugging Face cache, laid out as huggingface_hub 2.x lays it out
(`models--ORG--NAME/{refs/main, snapshots/<commit>/<file> -> ../../blobs/<sha256>}`), holds the tiny Qwen-Image
pipeline under the id Qwen/Qwen-Image (so loading goes through the real `from_pretrained(hub id)` path) and random
LoRAs in the official file layout under the family's official repo and file names. In-process the cache is pointed
to by `huggingface_hub.constants.HF_HUB_CACHE` (read on each call); command lines get `HF_HUB_CACHE`.
"""

import hashlib
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from huggingface_hub import constants
from PIL import Image

import glance_lite.api as api
from glance_lite.api import load
from glance_lite.families import family_by_name
from glance_lite.lora import LoraSource, read_lora_file
from glance_lite.png_settings import read_png_settings
from glance_lite.schedule import PhaseSplit
from glance_lite.tiny import tiny_model_path

from conftest import make_official_lora

REPO = Path(__file__).resolve().parent.parent
MODEL = "Qwen/Qwen-Image"
GLANCE_REPO, SLOW_FILE, FAST_FILE = "CSU-JPG/Glance", "glance_qwen_slow.safetensors", "glance_qwen_fast.safetensors"
SLOW_SOURCE, FAST_SOURCE = f"{GLANCE_REPO}::{SLOW_FILE}", f"{GLANCE_REPO}::{FAST_FILE}"
SPLIT = PhaseSplit(slow=(0, 2), fast=(10, 49))  # 2 + 2 steps: enough for the adapters to change the latents
RUN = dict(height=64, width=64, seed=4, split=SPLIT, output_type="latent", progress=False)
CLI_RUN = ["--model", MODEL, "--prompt", "a red cube", "--height", "64", "--width", "64", "--seed", "4",
           "--slow-steps", "0,2", "--fast-steps", "10,49", "--profile", "cpu", "--no-progress"]  # fmt: skip


def sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def put_in_hub_cache(hub: Path, repo_id: str, files: dict[str, Path]) -> Path:
    """Store `files` (name in the repo -> file) as a download would: blobs named by content, snapshot entries that
    link to them, refs/main naming the commit. Returns the snapshot folder."""
    repo = hub / f"models--{repo_id.replace('/', '--')}"
    commit = hashlib.sha1(repo_id.encode()).hexdigest()
    snapshot = repo / "snapshots" / commit
    for name, source in files.items():
        blob = repo / "blobs" / sha256(source)
        blob.parent.mkdir(parents=True, exist_ok=True)
        blob.write_bytes(source.read_bytes())
        entry = snapshot / name
        entry.parent.mkdir(parents=True, exist_ok=True)
        entry.symlink_to(os.path.relpath(blob, entry.parent))
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    (repo / "refs" / "main").write_text(commit)
    return snapshot


@pytest.fixture(scope="module")
def hubs(tmp_path_factory):
    """Three caches holding Qwen/Qwen-Image (the tiny pipeline): `full` with both official LoRAs, `slow_only`
    with the slow one, `bare` without CSU-JPG/Glance. `slow` / `fast`: the LoRA files as the full cache holds them."""
    root = tmp_path_factory.mktemp("hf_caches")
    folder = tiny_model_path("tiny/qwen-image")
    model_files = {p.relative_to(folder).as_posix(): p for p in sorted(folder.rglob("*")) if p.is_file()}
    made = root / "made"
    slow = make_official_lora("tiny/qwen-image", made / SLOW_FILE, seed=11)
    fast = make_official_lora("tiny/qwen-image", made / FAST_FILE, seed=12)
    caches = {name: root / name for name in ("full", "slow_only", "bare")}
    for hub in caches.values():
        put_in_hub_cache(hub, MODEL, model_files)
    glance = put_in_hub_cache(caches["full"], GLANCE_REPO, {SLOW_FILE: slow, FAST_FILE: fast})
    put_in_hub_cache(caches["slow_only"], GLANCE_REPO, {SLOW_FILE: slow})
    return SimpleNamespace(**caches, slow=glance / SLOW_FILE, fast=glance / FAST_FILE)


def use_hub(monkeypatch, hub: Path) -> None:
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(hub))
    monkeypatch.setenv("HF_HUB_CACHE", str(hub))


def test_the_fake_cache_is_what_the_family_publishes_and_nothing_is_downloaded():
    family = family_by_name("qwen-image")
    assert family.official_loras == (GLANCE_REPO, SLOW_FILE, FAST_FILE)  # the README's default
    assert MODEL in family.official_base_models
    assert constants.HF_HUB_OFFLINE  # conftest: whatever these tests resolve comes from the fake cache


@pytest.fixture(scope="module")
def runs(hubs):
    """The same 64x64 run on Qwen/Qwen-Image from the full cache: with no LoRAs given (the default), with
    use_official_loras=False, and with the cached official files passed explicitly."""
    with pytest.MonkeyPatch.context() as mp:
        use_hub(mp, hubs.full)
        default = load(MODEL, profile="cpu")
        without = load(MODEL, profile="cpu", use_official_loras=False)
        explicit = load(MODEL, str(hubs.slow), str(hubs.fast), profile="cpu")
        yield SimpleNamespace(
            **{name: (glance, glance.generate("a red cube", **RUN)) for name, glance in
               (("default", default), ("without", without), ("explicit", explicit))}
        )  # fmt: skip


def test_no_loras_given_on_qwen_image_loads_the_official_slow_and_fast_files_from_the_cache(runs, hubs):
    glance, result = runs.default
    assert glance.source.location == MODEL  # the hub id itself went to from_pretrained, not a folder
    assert glance.loras == {"slow": LoraSource(GLANCE_REPO, SLOW_FILE), "fast": LoraSource(GLANCE_REPO, FAST_FILE)}
    # What was applied: both adapters, every layer of each file (trained compat), named after the official files.
    layers = {"slow": len(read_lora_file(hubs.slow)[0]) // 2, "fast": len(read_lora_file(hubs.fast)[0]) // 2}
    reports = {r.adapter_name: r for r in result.lora_reports}
    assert {name: r.source for name, r in reports.items()} == {"slow": SLOW_SOURCE, "fast": FAST_SOURCE}
    assert {name: len(r.applied) for name, r in reports.items()} == layers
    assert all(not r.dropped for r in reports.values())
    # What the image records: the two cached files, by name and by content.
    files = glance.lora_files()
    assert [(f["phase"], f["source"], f["sha256"]) for f in files] == [
        ("slow", SLOW_SOURCE, sha256(hubs.slow)), ("fast", FAST_SOURCE, sha256(hubs.fast))
    ]  # fmt: skip
    assert Path(files[0]["name"]).samefile(hubs.slow) and Path(files[1]["name"]).samefile(hubs.fast)
    assert result.settings[0]["loras"] == files
    assert result.settings[0]["model"] == MODEL


def test_the_official_loras_change_the_latents_exactly_as_the_same_files_given_explicitly(runs):
    (_, default), (without_glance, without), (_, explicit) = runs.default, runs.without, runs.explicit
    assert without_glance.loras == {} and without.lora_reports == [] and without.settings[0]["loras"] == []
    assert torch.equal(default.latents[0], explicit.latents[0])
    assert torch.equal(default.noise[0], without.noise[0])  # same start ...
    assert (default.latents[0] - without.latents[0]).abs().max() > 1e-3  # ... a different image


def test_a_cache_without_the_official_loras_is_refused_before_anything_loads_and_says_how_to_go_on(hubs, monkeypatch):
    use_hub(monkeypatch, hubs.bare)

    def must_not_run(*args, **kwargs):
        raise AssertionError("the model was touched before the missing LoRAs were reported")

    with monkeypatch.context() as mp:
        mp.setattr(api, "meta_component", must_not_run)
        mp.setattr(api, "ComponentManager", must_not_run)
        with pytest.raises(FileNotFoundError) as refused:
            load(MODEL, profile="cpu")
        message = str(refused.value)
        assert "\n" not in message
        for part in (MODEL, GLANCE_REPO, SLOW_FILE, FAST_FILE, str(hubs.bare), f"hf download {GLANCE_REPO}",
                     "--no-official-loras", "use_official_loras=False", "--slow-lora/--fast-lora"):  # fmt: skip
            assert part in message, part

        use_hub(mp, hubs.slow_only)  # only what is missing is named as missing
        with pytest.raises(FileNotFoundError, match=f"and {FAST_FILE} of {GLANCE_REPO} is not in") as refused:
            load(MODEL, profile="cpu")
        assert SLOW_FILE not in str(refused.value).split("Download")[0]

    # Each way out the message offers works on the bare cache.
    assert load(MODEL, profile="cpu", use_official_loras=False).loras == {}
    own = load(MODEL, slow_lora=str(hubs.slow), profile="cpu")
    assert own.loras == {"slow": LoraSource(str(hubs.slow))}  # your own LoRA replaces both official ones


# ---- the command line -------------------------------------------------------------------------------------------
def start_cli(hub: Path, *args: str) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=str(REPO), HF_HUB_CACHE=str(hub), HF_HUB_OFFLINE="1")
    return subprocess.Popen([sys.executable, "-m", "glance_lite.generate", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)  # fmt: skip


def finish(proc: subprocess.Popen, timeout: float = 300) -> SimpleNamespace:
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        raise
    return SimpleNamespace(returncode=proc.returncode, stdout=stdout, stderr=stderr)


def test_cli_records_the_official_loras_and_no_official_loras_skips_them(hubs, tmp_path):
    default_png, skipped_png = tmp_path / "default.png", tmp_path / "skipped.png"
    running = [start_cli(hubs.full, *CLI_RUN, "--out", str(default_png)),
               start_cli(hubs.full, *CLI_RUN, "--no-official-loras", "--out", str(skipped_png))]  # fmt: skip
    default, skipped = (finish(p) for p in running)
    assert default.returncode == 0, default.stderr
    assert skipped.returncode == 0, skipped.stderr

    recorded = read_png_settings(default_png)["loras"]
    assert [(e["phase"], e["source"], e["sha256"]) for e in recorded] == [
        ("slow", SLOW_SOURCE, sha256(hubs.slow)), ("fast", FAST_SOURCE, sha256(hubs.fast))
    ]  # fmt: skip
    assert f"LoRA layers applied from {SLOW_SOURCE}" in default.stderr
    assert f"LoRA layers applied from {FAST_SOURCE}" in default.stderr

    assert read_png_settings(skipped_png)["loras"] == []
    assert "LoRA layers applied" not in skipped.stderr
    assert not np.array_equal(np.asarray(Image.open(default_png)), np.asarray(Image.open(skipped_png)))


def test_cli_without_the_official_loras_in_the_cache_prints_one_error_line_and_exits_2(hubs, tmp_path):
    out = tmp_path / "never.png"
    proc = finish(start_cli(hubs.bare, *CLI_RUN, "--out", str(out)), timeout=120)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr  # no traceback, no library noise
    for part in (MODEL, GLANCE_REPO, SLOW_FILE, FAST_FILE, f"hf download {GLANCE_REPO}", "--no-official-loras",
                 "--slow-lora/--fast-lora"):  # fmt: skip
        assert part in lines[0], part
    assert proc.stdout == "" and not out.exists()
