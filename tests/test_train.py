"""Training Slow/Fast LoRAs: they learn the one sample, load anywhere, survive kill -9 at any moment, and bad input
fails early."""

import os
import random
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from PIL import Image, ImageDraw

import glance_lite
from glance_lite.checkpoint import latest_checkpoint, list_checkpoints, newest_readable_checkpoint, write_checkpoint
from glance_lite.data import DatasetError
from glance_lite.lora import layer_alphas, read_lora_file
from glance_lite.models import resolve_model
from glance_lite.schedule import PhaseSplit
from glance_lite.train import TrainConfig, main, read_loss_csv, train
from kill_runner import TrainRunner

REPO = Path(__file__).resolve().parent.parent
SIZE = 64
CAPTION = "a red circle on a blue background"
EDIT_CAPTION = "paint the circle red"
# Enough push for the tiny random models to learn their one sample in a few dozen steps.
TRAIN = dict(resolution=SIZE, steps=30, learning_rate=5e-3, warmup_steps=2, min_image_size=SIZE, condition_area=SIZE * SIZE)
FAMILIES = ["tiny/qwen-image", "tiny/flux", "tiny/qwen-image-edit"]


def circle(color=(215, 35, 35), size=SIZE) -> Image.Image:
    image = Image.new("RGB", (size, size), (40, 70, 190))
    ImageDraw.Draw(image).ellipse((size // 4, size // 4, 3 * size // 4 - 1, 3 * size // 4 - 1), fill=color)
    return image


def make_dataset(folder: Path, edit: bool = False) -> Path:
    if edit:
        (folder / "image").mkdir(parents=True)
        (folder / "control").mkdir()
        circle().save(folder / "image" / "circle.png")
        (folder / "image" / "circle.txt").write_text(EDIT_CAPTION)
        circle(color=(40, 200, 60)).save(folder / "control" / "circle.png")
    else:
        folder.mkdir(parents=True)
        circle().save(folder / "circle.png")
        (folder / "circle.txt").write_text(CAPTION)
    return folder


def is_edit(model: str) -> bool:
    return model.endswith("-edit")


def load_glance(model, slow=None, fast=None, split=None):
    glance = glance_lite.load(model, slow, fast, profile="cpu", split=split)
    if is_edit(model):
        glance.family.condition_area = SIZE * SIZE
    return glance


def realign(module) -> None:
    """Copy every parameter into freshly allocated memory. CPU GEMM kernels choose their accumulation order by the
    operands' address alignment, and tensors read straight from a safetensors file sit at arbitrary offsets: two
    bit-identical weights can give results 1e-7 apart. Comparisons should measure weights, not addresses."""
    for param in module.parameters():
        param.data = param.data.clone()


def generate_kwargs(model, data: Path, **extra):
    kwargs = dict(height=SIZE, width=SIZE, seed=11, output_type="latent", progress=False, **extra)
    if is_edit(model):
        kwargs["image"] = data / "control" / "circle.png"
    return kwargs


@pytest.fixture(scope="module", params=FAMILIES)
def trained(request, tmp_path_factory):
    """Each tiny family trained once, both phases, with the test recipe: (model, data folder, TrainResult)."""
    model = request.param
    root = tmp_path_factory.mktemp(model.replace("/", "_"))
    data = make_dataset(root / "data", edit=is_edit(model))
    result = train(model, data, root / "out", "both", "cpu", TRAIN, progress=False)
    return model, data, result


# ---- it learns ---------------------------------------------------------------------------------------------------
def test_training_lowers_the_loss_and_pulls_glance_samples_toward_the_training_image(trained):
    model, data, result = trained
    for phase in ("slow", "fast"):
        p = result.phases[phase]
        assert len(p.losses) == TRAIN["steps"] and all(map(torch.isfinite, torch.tensor(p.losses)))
        first, last = sum(p.losses[:8]) / 8, sum(p.losses[-8:]) / 8
        assert last < 0.95 * first, f"{model} {phase}: per-step loss {first:.4f} -> {last:.4f}"
        assert p.eval_loss_after < 0.9 * p.eval_loss_before, f"{model} {phase}: fixed-noise loss did not fall"
        assert (result.output / f"{phase}_loss.png").stat().st_size > 0
        assert [r["step"] for r in read_loss_csv(result.output / f"{phase}_loss.csv")] == list(range(1, TRAIN["steps"] + 1))

    target = result.targets[0]
    caption = result.captions[0]
    kwargs = generate_kwargs(model, data, true_cfg_scale=1.0)
    before = load_glance(model).generate(caption, **kwargs).latents[0]
    after = load_glance(model, result.adapters["slow"], result.adapters["fast"]).generate(caption, **kwargs).latents[0]
    mse_before, mse_after = (float(((x.float() - target) ** 2).mean()) for x in (before, after))
    assert mse_after < 0.9 * mse_before, f"{model}: latent MSE to the training latent {mse_before:.4f} -> {mse_after:.4f}"


# ---- the files load anywhere, at the trained scale -------------------------------------------------------------
@pytest.mark.parametrize("phase", ["slow", "fast"])
def test_a_trained_adapter_gives_identical_samples_in_glance_lite_and_in_plain_diffusers(trained, phase, monkeypatch):
    model, data, result = trained
    path = result.adapters[phase]
    tensors, metadata = read_lora_file(path)
    family = resolve_model(model).family
    # The trained scale travels with every layer: lora_A, lora_B and an `.alpha` key, under the family's key prefix.
    assert metadata is None and all(k.startswith(family.lora_key_prefix) for k in tensors)
    assert list(layer_alphas(tensors).values()) == [family.recipe.alpha] * (len(tensors) // 3)
    assert {t.shape[0] for k, t in tensors.items() if k.endswith(".lora_A.weight")} == {family.recipe.rank}

    steps = 3
    only_this_phase = {"slow": PhaseSplit(tuple(range(steps)), (), steps), "fast": PhaseSplit((), tuple(range(steps)), steps)}[phase]
    glance = load_glance(model, **{phase: path}, split=only_this_phase)
    realign(glance.manager.bring("transformer"))
    scale = glance.family.default_true_cfg_scale
    ours = glance.generate(result.captions[0], **generate_kwargs(model, data)).latents[0]

    source = resolve_model(model)
    stock_kwargs = {"true_cfg_scale": scale, "negative_prompt": " "} if scale > 1 else {}
    if is_edit(model):
        from diffusers.pipelines.qwenimage import pipeline_qwenimage_edit

        from glance_lite.processors import load_qwen2vl_processor

        monkeypatch.setattr(pipeline_qwenimage_edit, "calculate_dimensions", lambda area, ratio: (SIZE, SIZE, None))
        pipe = source.family.pipeline_class.from_pretrained(source.location, processor=load_qwen2vl_processor(source.location))
        stock_kwargs["image"] = Image.open(data / "control" / "circle.png").convert("RGB")
    else:
        pipe = source.family.pipeline_class.from_pretrained(source.location)
    pipe.load_lora_weights(str(path), adapter_name=phase)
    assert glance.profile.fuse_lora  # the cpu profile merges the phase's LoRA while it runs: so does fuse_lora()
    pipe.fuse_lora(adapter_names=[phase])
    realign(pipe.transformer)
    stock = pipe(prompt=result.captions[0], height=SIZE, width=SIZE, num_inference_steps=steps, output_type="latent",
                 generator=torch.Generator().manual_seed(11), **stock_kwargs).images  # fmt: skip
    assert torch.equal(ours, stock)


# ---- kill -9 at any moment, then resume --------------------------------------------------------------------------
# Each run is `python -m glance_lite.train` in a child process (tests/kill_runner.py forks it after the imports),
# killed with a real SIGKILL from here at a point the test chooses; re-running the same command must end with the
# adapter tensors of one uninterrupted run, bit for bit, and loss logs with each of its steps and losses once.
# Stopping points are installed by the runner, from test code: the trainer has no test hook.
KILL_SETTINGS = dict(TRAIN, steps=4, checkpoint_every=2, keep_checkpoints=1)
KILL_TIMEOUT_S = 300  # a child that does not reach its stopping point (or the end) in this time fails the test
RANDOM_KILL_SEED = 0  # its moments fall (on the machines tried) while loading, between steps, finishing a phase, in a step


@pytest.fixture(scope="module")
def train_runner(tmp_path_factory):
    runner = TrainRunner(tmp_path_factory.mktemp("kill_runner"), KILL_TIMEOUT_S)
    yield runner
    runner.close()


@pytest.fixture(scope="module")
def uninterrupted(train_runner, tmp_path_factory):
    """One run of the kill tests' command, never killed: (data folder, output folder, seconds it ran)."""
    root = tmp_path_factory.mktemp("uninterrupted")
    data = make_dataset(root / "data")
    resolve_model("tiny/qwen-image")  # built here if this session has not yet: its duration is the run's alone
    child = train_runner.start(kill_command(data, root / "out"))
    assert child.wait() == 0, child.report()
    return data, root / "out", time.monotonic() - child.started


def kill_command(data: Path, out: Path) -> list[str]:
    args = ["--model", "tiny/qwen-image", "--data", str(data), "--output", str(out), "--profile", "cpu", "--no-progress"]
    return args + [f"--set={k}={v}" for k, v in KILL_SETTINGS.items()]


def checkpoint_steps(out: Path, phase: str) -> list[int]:
    return [c.step for c in list_checkpoints(out / "checkpoints" / phase)]


def logged_steps(out: Path, phase: str) -> list[int]:
    return [r["step"] for r in read_loss_csv(out / f"{phase}_loss.csv")]


def resumed_at(child, phase: str) -> int | None:
    """The step the child's run said it resumed `phase` from."""
    found = re.search(rf"Resuming the {phase} phase from \S+ \(step (\d+) of", child.log.read_text())
    return int(found.group(1)) if found else None


def interrupted_writes(out: Path) -> list[Path]:
    return sorted(p for p in (out / "checkpoints").glob("*/.tmp-*"))


def assert_same_as_uninterrupted(out: Path, reference: Path) -> None:
    """Both adapters bit for bit those of the uninterrupted run, and each loss log holds every step once, with
    the uninterrupted run's losses."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    for phase in ("slow", "fast"):
        ours, theirs = (folder / f"{phase}.safetensors" for folder in (out, reference))
        tensors, expected = load_file(ours), load_file(theirs)
        assert tensors.keys() == expected.keys()
        differ = [k for k in tensors if tensors[k].dtype != expected[k].dtype or not torch.equal(tensors[k], expected[k])]
        assert not differ, f"{phase} adapter differs from the uninterrupted run's after resume, e.g. {differ[0]}"
        # The same metadata, though not the same bytes: safetensors writes its header's metadata in hash order.
        assert safe_open(ours, "pt").metadata() == safe_open(theirs, "pt").metadata()
        rows = [(r["step"], r["loss"], r["lr"], r["timestep"]) for r in read_loss_csv(out / f"{phase}_loss.csv")]
        assert [r[0] for r in rows] == list(range(1, KILL_SETTINGS["steps"] + 1)), f"{phase}_loss.csv: each step once"
        assert rows == [(r["step"], r["loss"], r["lr"], r["timestep"]) for r in read_loss_csv(reference / f"{phase}_loss.csv")]
    assert not interrupted_writes(out)


def test_sigkill_inside_a_training_step_then_the_same_command_resumes_bit_for_bit(train_runner, uninterrupted, tmp_path):
    data, reference, _ = uninterrupted
    out = tmp_path / "out"
    args = kill_command(data, out)

    # Killed inside slow step 3 (forward and backward done, weights not yet updated): resume from step 2.
    child = train_runner.start(args, stop=("step", 3))
    assert child.stopped().startswith("inside slow step 3"), child.report()
    assert child.kill() == -signal.SIGKILL, child.report()
    assert checkpoint_steps(out, "slow") == [2] and logged_steps(out, "slow") == [1, 2]
    assert not (out / "slow.safetensors").exists()

    # The same command resumes at slow step 2 and is killed inside its 5th step: fast step 3 (slow is finished).
    child = train_runner.start(args, stop=("step", 5))
    assert child.stopped().startswith("inside fast step 3"), child.report()
    assert child.kill() == -signal.SIGKILL, child.report()
    assert resumed_at(child, "slow") == 2
    assert (out / "slow.safetensors").is_file() and not (out / "fast.safetensors").exists()
    assert checkpoint_steps(out, "fast") == [2] and logged_steps(out, "fast") == [1, 2]

    child = train_runner.start(args)
    assert child.wait() == 0, child.report()
    assert "slow phase is already trained" in child.log.read_text() and resumed_at(child, "fast") == 2
    assert checkpoint_steps(out, "fast") == [4]  # rotation keeps the newest one
    assert_same_as_uninterrupted(out, reference)


def test_sigkill_inside_a_checkpoint_write_then_the_same_command_resumes_bit_for_bit(train_runner, uninterrupted, tmp_path):
    data, reference, _ = uninterrupted
    out = tmp_path / "out"
    args = kill_command(data, out)

    # Killed writing the 2nd checkpoint (slow step 4): its adapter file written, its trainer state half written.
    child = train_runner.start(args, stop=("state_file", 2))
    assert "trainer_state.pt" in child.stopped(), child.report()
    assert child.kill() == -signal.SIGKILL, child.report()
    [partial] = interrupted_writes(out)
    assert partial.parent.name == "slow" and {p.name for p in partial.iterdir()} == {"adapter.safetensors", "trainer_state.pt"}
    with pytest.raises(Exception):  # cut short
        torch.load(partial / "trainer_state.pt", weights_only=True)
    assert checkpoint_steps(out, "slow") == [2] and logged_steps(out, "slow") == [1, 2, 3, 4]

    # The same command resumes at slow step 2 (the loss log's steps 3 and 4 are trained and logged again) and is
    # killed in its 3rd checkpoint write, fast step 4, with every file written, before the rename.
    child = train_runner.start(args, stop=("rename", 3))
    assert "step-000004" in child.stopped(), child.report()
    assert child.kill() == -signal.SIGKILL, child.report()
    assert resumed_at(child, "slow") == 2
    [complete] = interrupted_writes(out)
    assert complete.parent.name == "fast" and torch.load(complete / "trainer_state.pt", weights_only=True)["step"] == 4
    assert checkpoint_steps(out, "fast") == [2] and not (out / "fast.safetensors").exists()

    # Step 4's files were complete but never renamed into place: the run resumes from step 2.
    child = train_runner.start(args)
    assert child.wait() == 0, child.report()
    assert resumed_at(child, "fast") == 2
    assert_same_as_uninterrupted(out, reference)


def test_sigkill_at_random_moments_then_the_same_command_resumes_bit_for_bit(train_runner, uninterrupted, tmp_path):
    """Kills at moments drawn by a seeded RNG, over the uninterrupted run's duration: they land wherever the run is
    (loading, encoding, a step, a checkpoint or adapter write, between phases); the run after each one resumes, and
    the last one ends with the uninterrupted run's adapters. A resumed run skips what is done and can outpace the
    drawn moments on a busy machine: then the series starts over in a new folder with moments half as late."""
    data, reference, seconds = uninterrupted
    rng = random.Random(RANDOM_KILL_SEED)
    for series in range(3):
        out = tmp_path / f"out{series}"
        args = kill_command(data, out)
        kills = []
        for _ in range(4):
            delay = rng.uniform(0.05, 0.6) * seconds / 2**series
            child = train_runner.start(args)
            code = child.kill() if child.wait(timeout=delay) is None else child.code
            assert code in (0, -signal.SIGKILL), child.report()
            if code == 0:  # it ended before the moment came
                break
            kills.append(f"after {delay:.2f} s, at '{[e for e in child.events if not e.startswith('exit')][-1]}'")
        else:
            child = train_runner.start(args)
            assert child.wait() == 0, child.report()
        assert_same_as_uninterrupted(out, reference)
        if len(kills) >= 2:
            break
    assert len(kills) >= 2, f"only {len(kills)} of the random kills landed before the run ended: {kills}"


def test_two_processes_train_data_parallel_and_checkpoint_every_process_sampler(tmp_path):
    """What `accelerate launch` / torchrun do on several GPUs, here with two CPU processes (gloo)."""
    data = make_dataset(tmp_path / "data")
    out = tmp_path / "ddp"
    env = dict(os.environ, PYTHONPATH=str(REPO))
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "-m", "glance_lite.train",
               "--model", "tiny/qwen-image", "--data", str(data), "--output", str(out), "--profile", "cpu", "--phase", "slow",
               "--no-progress", "--set", f"resolution={SIZE}", "--set", f"min_image_size={SIZE}", "--set", "steps=2"]  # fmt: skip
    proc = subprocess.run(command, capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    state = latest_checkpoint(out / "checkpoints" / "slow").read_state()
    assert state["run"]["processes"] == 2 and len(state["sampler"]) == 2
    assert proc.stdout.count("Trained tiny/qwen-image") == 1  # only the main process reports and writes
    assert (out / "slow.safetensors").is_file()


def test_an_interrupted_checkpoint_write_is_ignored_and_cleaned_up(tmp_path):
    def write(folder):
        (folder / "adapter.safetensors").write_bytes(b"x")
        (folder / "trainer_state.pt").write_bytes(b"x")

    for step in (1, 2, 3):
        write_checkpoint(tmp_path, step, write, keep=2)
    leftover = tmp_path / ".tmp-step-000004-999"
    leftover.mkdir()
    (leftover / "adapter.safetensors").write_bytes(b"half")
    assert latest_checkpoint(tmp_path).step == 3
    assert not leftover.exists()
    assert [c.step for c in list_checkpoints(tmp_path)] == [2, 3]
    leftover.mkdir()  # the trainer's resume path (newest_readable_checkpoint) cleans up the same way
    newest_readable_checkpoint(tmp_path)
    assert not leftover.exists()


def test_resuming_with_a_different_config_is_refused(tmp_path):
    data = make_dataset(tmp_path / "data")
    settings = dict(TRAIN, steps=4, checkpoint_every=2)
    train("tiny/qwen-image", data, tmp_path / "out", "slow", "cpu", settings, progress=False)
    with pytest.raises(RuntimeError, match=r"different training run .*learning_rate"):
        train("tiny/qwen-image", data, tmp_path / "out", "slow", "cpu", dict(settings, learning_rate=1e-3), progress=False)


# ---- memory: cache, eviction, the reference recipe's memory savers ------------------------------------------------
def test_encodings_are_cached_and_text_encoder_and_vae_are_gone_before_the_transformer_loads(tmp_path, monkeypatch):
    from glance_lite.manager import ComponentManager

    seen = []
    original = ComponentManager.bring

    def bring(self, component, stage="denoise"):
        if component == "transformer":
            seen.append({name: getattr(self.pipe, name, None) is not None for name in ("text_encoder", "vae")})
            assert stage == "train_step"
        return original(self, component, stage)

    monkeypatch.setattr(ComponentManager, "bring", bring)
    data = make_dataset(tmp_path / "data")
    settings = dict(TRAIN, steps=2)
    first = train("tiny/qwen-image", data, tmp_path / "out", "slow", "cpu", settings, progress=False)
    # The package-level API, called after `glance_lite.train` (the module) has been imported.
    second = glance_lite.train("tiny/qwen-image", data, tmp_path / "out", "fast", "cpu", settings, progress=False)

    assert seen == [{"text_encoder": False, "vae": False}] * 2
    assert {"text_encode", "vae_encode"} <= {r.stage for r in first.stages}
    assert not {"text_encode", "vae_encode"} & {r.stage for r in second.stages}  # the fast phase read the cache
    assert torch.equal(first.targets[0], second.targets[0])
    assert set(second.adapters) == {"slow", "fast"}
    assert "--slow-lora" in second.generate_command() and "--fast-lora" in second.generate_command()


def test_quantized_frozen_base_with_8bit_adam_trains_at_the_reference_timesteps(tmp_path):
    profile = tmp_path / "cpu-qfloat8.yaml"
    text = (REPO / "profiles" / "cpu.yaml").read_text()
    text = text.replace("optimizer: adamw", "optimizer: adamw8bit").replace("base_quantization: none", "base_quantization: quanto-qfloat8")
    profile.write_text(text.replace('name: "cpu"', 'name: "cpu-qfloat8"'))
    data = make_dataset(tmp_path / "data")
    result = train("tiny/qwen-image", data, tmp_path / "out", "slow", str(profile), dict(TRAIN, steps=12, timesteps="reference"), progress=False)
    slow = result.phases["slow"]
    assert slow.timesteps == [1000, 980, 956, 936, 912]  # the reference's bf16 1024x1024 values
    assert slow.eval_loss_after < slow.eval_loss_before
    assert "optimizer_used: adamw8bit" in (result.output / "train_config.yaml").read_text()


@pytest.mark.parametrize("model", ["tiny/qwen-image", "tiny/flux"])
def test_block_streaming_trains_the_same_weights_and_never_touches_a_parked_block(model, tmp_path, monkeypatch):
    from glance_lite import streaming

    # Parked weights point at the meta device: computing with a block that is not resident would raise.
    monkeypatch.setattr(streaming, "PARK_DEVICE", "meta")
    profile = tmp_path / "cpu-streamed.yaml"
    text = (REPO / "profiles" / "cpu.yaml").read_text().replace('name: "cpu"', 'name: "cpu-streamed"')
    profile.write_text(text.replace("block_offload: false", "block_offload: true\n  blocks_per_group: 1"))
    data = make_dataset(tmp_path / "data")
    settings = dict(TRAIN, steps=3)
    streamed = train(model, data, tmp_path / "streamed", "slow", str(profile), settings, progress=False)
    resident = train(model, data, tmp_path / "resident", "slow", "cpu", settings, progress=False)
    assert streamed.phases["slow"].losses == resident.phases["slow"].losses
    ours, theirs = read_lora_file(streamed.adapters["slow"])[0], read_lora_file(resident.adapters["slow"])[0]
    assert all(torch.equal(ours[k], theirs[k]) for k in theirs)


# ---- failing early -----------------------------------------------------------------------------------------------
def test_bad_data_is_refused_before_any_model_loads_with_every_problem_listed(tmp_path, monkeypatch, capsys):
    import diffusers

    from glance_lite import models, tiny

    def no_loading(*args, **kwargs):
        raise AssertionError("a model was loaded before the dataset was checked")

    for target, name in ((models, "resolve_model"), (tiny, "tiny_model_path"), (tiny, "build_tiny_pipeline")):
        monkeypatch.setattr(target, name, no_loading)
    monkeypatch.setattr(diffusers.DiffusionPipeline, "from_pretrained", no_loading)
    monkeypatch.setattr(diffusers.ModelMixin, "from_pretrained", no_loading)

    data = tmp_path / "data"
    data.mkdir()
    circle().save(data / "no_caption.png")
    circle().save(data / "empty.png")
    (data / "empty.txt").write_text("   ")
    (data / "truncated.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 20)
    (data / "truncated.txt").write_text("broken")
    (data / "orphan.txt").write_text("no image here")
    circle(size=32).save(data / "small.png")
    (data / "small.txt").write_text("too small")

    with pytest.raises(DatasetError) as error:
        train("tiny/qwen-image", data, tmp_path / "out", "both", "cpu", TRAIN, progress=False)
    problems = "\n".join(error.value.problems)
    for name in ("no_caption.png", "empty.txt", "truncated.png", "orphan.txt", "small.png"):
        assert name in problems
    assert not (tmp_path / "out").exists()

    code = main(["--model", "tiny/qwen-image", "--data", str(data), "--output", str(tmp_path / "out"), "--profile", "cpu",
                 "--set", f"resolution={SIZE}", "--set", f"min_image_size={SIZE}"])  # fmt: skip
    assert code == 2
    assert "5 problems" in capsys.readouterr().err


def test_config_mistakes_are_named_before_any_work():
    family = resolve_model("tiny/qwen-image").family
    with pytest.raises(ValueError, match="'lr' .*did you mean 'learning_rate'"):
        TrainConfig.for_family(family, {"lr": 1e-4})
    with pytest.raises(ValueError, match="resolution = 100 must be a multiple of 32"):
        TrainConfig.for_family(family, {"resolution": 100})
    with pytest.raises(ValueError, match="plain list of timesteps applies to one phase"):
        train("tiny/qwen-image", "unused", "unused", "both", "cpu", {"timesteps": [900, 800]})
    defaults = TrainConfig.for_family(family)
    assert (defaults.rank, defaults.alpha, defaults.learning_rate, defaults.steps, defaults.caption_dropout) == (32, 128, 3e-4, 60, 0.1)
    flux = TrainConfig.for_family(resolve_model("tiny/flux").family)
    assert (flux.rank, flux.alpha, flux.learning_rate, flux.warmup_steps) == (16, 64, 5e-4, 0)


def test_print_config_shows_the_family_defaults(capsys):
    assert main(["--model", "tiny/flux", "--print-config", "--set", "steps=90"]) == 0
    text = capsys.readouterr().out
    assert "rank: 16" in text and "alpha: 64" in text and "steps: 90" in text and "timesteps: consistent" in text
