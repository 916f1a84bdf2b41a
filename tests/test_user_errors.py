"""A user's mistake is one line that names it, exit status 2, and nothing written; a quiet and quick start; training
that stops on NaN/inf; a corrupt checkpoint skipped, kept, and resumed past (issue #15).

Most commands run in-process (`main([...])`, as `python -m` runs them, through the same boundary); a few run in a
fresh process where the claim is about one: warnings at start-up and imports (wall time: benchmarks/startup_time.py).
"""

import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

import glance_lite
from glance_lite import cli
from glance_lite.checkpoint import UNREADABLE_SUFFIX, check_checkpoint, list_checkpoints
from glance_lite.families.qwen_image import QwenImageFamily
from glance_lite.generate import main as generate_main
from glance_lite.lora import LoraFileError, read_lora_file
from glance_lite.plan.__main__ import main as plan_main
from glance_lite.train import DivergenceCheck, TrainConfig, _divergence_message
from glance_lite.train import main as train_main

from test_train import make_dataset

REPO = Path(__file__).resolve().parent.parent
SIZE = 64
TRAIN_SETTINGS = ["--set", f"resolution={SIZE}", "--set", f"min_image_size={SIZE}", "--set", "steps=4", "--set", "checkpoint_every=2",
                  "--set", "learning_rate=5e-3"]  # fmt: skip


def refused(capsys, code: int, *messages: str) -> str:
    """The boundary's answer to a mistake: status 2, one `error:` line on stderr naming it, nothing on stdout."""
    out, err = capsys.readouterr()
    assert code == 2, err
    assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err, err
    assert out == "", out
    for message in messages:
        assert message in err, err
    return err


def listing(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


def generate_args(tmp_path: Path, *extra: str) -> list[str]:
    return ["--model", "tiny/qwen-image", "--prompt", "a red cube", "--height", "64", "--width", "64", "--profile", "cpu",
            "--no-progress", "--out", str(tmp_path / "out" / "a.png"), *extra]  # fmt: skip


def train_args(tmp_path: Path, *extra: str, output: Path | None = None) -> list[str]:
    data = tmp_path / "data"
    if not data.exists():
        make_dataset(data)
    output = output or tmp_path / "out"
    return ["--model", "tiny/qwen-image", "--data", str(data), "--output", str(output), "--profile", "cpu", "--phase", "slow",
            "--no-progress", *TRAIN_SETTINGS, *extra]  # fmt: skip


# ---- every row of the table -------------------------------------------------------------------------------
def _junk_lora(tmp_path):
    (tmp_path / "junk.safetensors").write_bytes(os.urandom(256))
    return generate_main, generate_args(tmp_path, "--slow-lora", str(tmp_path / "junk.safetensors")), "junk.safetensors is not a safetensors file"


def _non_utf8_prompts(tmp_path):
    (tmp_path / "prompts.txt").write_bytes("a red cube\nun caf\xe9\n".encode("latin-1"))
    args = [a for a in generate_args(tmp_path, "--prompts-file", str(tmp_path / "prompts.txt")) if a != "a red cube"]
    args.remove("--prompt")
    return generate_main, args, "prompts.txt is not UTF-8 text (byte 0xe9 at position 17)"


def _bad_yaml_set(tmp_path):
    return train_main, train_args(tmp_path, "--set", "steps=["), "--set steps=[: the value is not valid YAML"


def _out_is_a_folder(tmp_path):
    (tmp_path / "some_dir").mkdir()
    return generate_main, generate_args(tmp_path, "--out", str(tmp_path / "some_dir") + "/"), "some_dir is a folder; give the file to write"


def _out_is_a_new_folder(tmp_path):
    return generate_main, generate_args(tmp_path, "--out", str(tmp_path / "new_dir") + "/"), "new_dir has no extension; use .png"


def _output_is_a_file(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    return train_main, train_args(tmp_path, output=tmp_path / "notes.txt"), "notes.txt is a file; give a folder"


def _config_is_a_folder(tmp_path):
    (tmp_path / "configs").mkdir()
    return train_main, train_args(tmp_path, "--config", str(tmp_path / "configs")), "configs is a folder; give the file itself"


def _plan_auto_on_a_gpu_machine(tmp_path):
    return plan_main, ["--model", "nobody/no-such-model", "--profile", "auto"], "Cannot plan for"


TABLE = {
    "a LoRA file that is not safetensors": _junk_lora,
    "a prompts file that is not UTF-8": _non_utf8_prompts,
    "--set with broken YAML": _bad_yaml_set,
    "--out naming a folder": _out_is_a_folder,
    "--out naming a new folder": _out_is_a_new_folder,
    "--output naming a file": _output_is_a_file,
    "--config naming a folder": _config_is_a_folder,
    "plan --profile auto on a GPU machine": _plan_auto_on_a_gpu_machine,
}


@pytest.fixture
def a_4090_machine(monkeypatch):
    """What `select_profile` sees on a machine with one RTX 4090 (it reads torch.cuda; this one has no GPU)."""
    from glance_lite import autoselect

    card = autoselect.Hardware(("NVIDIA GeForce RTX 4090",), (24 * 2**30,), (23 * 2**30,), (8.9,), 64 * 2**30)
    monkeypatch.setattr(autoselect.Hardware, "detect", classmethod(lambda cls: card))
    return card


@pytest.mark.parametrize("row", list(TABLE))
def test_every_row_of_the_table_is_one_line_exit_2_and_nothing_written(row, tmp_path, capsys, a_4090_machine):
    main, args, message = TABLE[row](tmp_path)
    before = listing(tmp_path)
    refused(capsys, main(args), message)
    assert listing(tmp_path) == before


def test_plan_auto_on_a_gpu_machine_picks_a_profile_for_it(capsys, a_4090_machine):
    assert plan_main(["--model", "Qwen/Qwen-Image", "--profile", "auto"]) == 0
    assert "Picked '" in capsys.readouterr().out


def test_the_api_raises_the_same_clear_errors(tmp_path):
    (tmp_path / "junk.safetensors").write_bytes(os.urandom(256))
    with pytest.raises(LoraFileError, match="junk.safetensors is not a safetensors file"):
        glance_lite.load("tiny/qwen-image", slow_lora=tmp_path / "junk.safetensors", profile="cpu")
    with pytest.raises(ValueError, match="is a file; give a folder"):
        glance_lite.train("tiny/qwen-image", tmp_path, tmp_path / "junk.safetensors", "slow", "cpu")
    with pytest.raises(ValueError, match="is a folder; give the file itself"):
        glance_lite.train("tiny/qwen-image", tmp_path, tmp_path / "out", "slow", "cpu", config=tmp_path)


# ---- more of what a new user tries --------------------------------------------------------------------------------
def test_more_mistakes_get_the_same_one_line_answer(tmp_path, capsys):
    from glance_lite.lora import main as lora_main

    out = tmp_path / "out"
    out.mkdir()
    (out / "a.png").write_bytes(b"the user's own picture")
    (tmp_path / "cat.txt").write_text("not an image")
    cases = [
        (generate_main, generate_args(tmp_path), "a.png already exists; pass --overwrite"),
        (generate_main, generate_args(tmp_path, "--height", "abc"), "argument --height: invalid int value: 'abc'"),
        (generate_main, generate_args(tmp_path, "--out", str(tmp_path / "a.jpg")), "has the extension '.jpg'; use .png"),
        (generate_main, generate_args(tmp_path, "--from-png", str(tmp_path)), "--from-png"),
        (generate_main, generate_args(tmp_path, "--latents", str(tmp_path / "noise.pt")), "--latents"),
        (generate_main, ["--prompt", "a", "--prompt", "b", "--out-dir", str(tmp_path / "cat.txt")], "--out-dir"),
        (generate_main, generate_args(tmp_path, "--image", str(tmp_path / "cat.txt")), "cat.txt is not a readable image"),
        (generate_main, generate_args(tmp_path, "--fast-steps", "30,20"), "strictly increasing"),
        (generate_main, generate_args(tmp_path, "--base-steps", "0"), "--base-steps 0: the base model needs at least 1 step"),
        (generate_main, generate_args(tmp_path, "--true-cfg-scale", "nan"), "--true-cfg-scale nan: give a finite number"),
        (generate_main, generate_args(tmp_path, "--model", "tiny/qwen-image-edit", "--out", str(tmp_path / "e.png")),
         "tiny/qwen-image-edit is an image-editing model: pass the input image with --image PATH"),
        (train_main, train_args(tmp_path, "--set", "steps=0"), "config steps = 0 must lie in [1, inf]"),
        (train_main, train_args(tmp_path, "--config", str(tmp_path / "cat.txt")), "a training config must be a YAML mapping"),
        (train_main, train_args(tmp_path, "--profile", "nope"), "Unknown profile 'nope'"),
        (plan_main, ["--height", "many"], "argument --height: invalid int value"),
        (plan_main, ["--gpu-memory-gb", "-3"], "argument --gpu-memory-gb: must be more than 0, got -3"),
        (lora_main, ["info", str(tmp_path)], "is a folder; give the LoRA .safetensors file itself"),
    ]
    if not torch.cuda.is_available():
        cases.append((generate_main, generate_args(tmp_path, "--profile", "4090", "--out", str(tmp_path / "b.png")), "runs on a CUDA GPU"))
    for main, args, message in cases:
        before = listing(tmp_path)
        refused(capsys, main(args), message)
        assert listing(tmp_path) == before, args


@pytest.mark.skipif(torch.cuda.is_available(), reason="the refusal is for a machine without a CUDA GPU")
def test_training_with_a_gpu_profile_on_a_machine_without_one_is_refused_before_anything_is_written(tmp_path, capsys):
    """Training asks the same question as loading for generation (`gpus.check_profile_runs_here`)."""
    code = train_main(train_args(tmp_path, "--profile", "12gb", "--phase", "slow"))
    refused(capsys, code, "Profile '12gb' runs on a CUDA GPU", "--device cpu")
    assert not (tmp_path / "out").exists()


def test_a_file_the_user_made_is_not_replaced_unless_asked(tmp_path, capsys):
    from glance_lite.lora import main as lora_main

    mine = tmp_path / "out" / "slow.safetensors"
    mine.parent.mkdir()
    mine.write_bytes(b"my own LoRA")
    refused(capsys, train_main(train_args(tmp_path)), "slow.safetensors exists and no training run in", "--restart")
    (tmp_path / "out" / "train_config.yaml").write_text("steps: 80  # my notes\n")
    refused(capsys, train_main(train_args(tmp_path, "--restart")), "train_config.yaml exists and is not the resolved config")
    refused(capsys, lora_main(["convert", str(mine), "--out", str(mine), "--scale", "as-trained"]), "already exists; pass --overwrite")
    assert mine.read_bytes() == b"my own LoRA"


def test_an_internal_error_keeps_its_traceback(tmp_path, monkeypatch):
    """Only the user's mistakes become one line; a bug (here: a RuntimeError out of loading) propagates as it is."""

    def broken(*args, **kwargs):
        raise RuntimeError("an internal failure")

    monkeypatch.setattr("glance_lite.api.load", broken)
    with pytest.raises(RuntimeError, match="an internal failure"):
        generate_main(generate_args(tmp_path))


def test_the_boundary_tells_a_users_mistake_from_a_bug():
    from glance_lite.checks import check_size

    def raised(function, *args):
        try:
            function(*args)
        except Exception as caught:
            return caught

    def throw(exc):
        raise exc

    assert cli.is_user_error(raised(check_size, 100, 64))  # a ValueError the project raises is a message for the user
    assert not cli.is_user_error(raised(throw, ValueError("x")))  # ... one raised elsewhere (here: this test) is not
    assert not cli.is_user_error(raised(torch.zeros(2).view, 3))  # nor one raised inside torch: a bug to report
    assert not cli.is_user_error(raised(throw, KeyError("x"))) and not cli.is_user_error(raised(throw, RuntimeError("x")))
    permission = raised(throw, PermissionError(13, "Permission denied", "/x"))  # the machine is in the way
    assert cli.is_user_error(permission) and cli.error_text(permission) == "error: /x: permission denied."


# ---- corrupt or foreign checkpoints -------------------------------------------------------------------------------
def test_a_cut_short_or_foreign_checkpoint_is_skipped_kept_and_training_resumes_from_the_newest_good_one(tmp_path, capsys):
    args = train_args(tmp_path)
    assert train_main(args) == 0
    uninterrupted = read_lora_file(tmp_path / "out" / "slow.safetensors")[0]
    folder = tmp_path / "out" / "checkpoints" / "slow"
    state = folder / "step-000004" / "trainer_state.pt"
    cut = state.read_bytes()[:300]
    state.write_bytes(cut)
    capsys.readouterr()

    assert train_main(args) == 0
    out, err = capsys.readouterr()
    assert f"warning: {state} cannot be read (" in err and f"kept as {folder / 'step-000004'}{UNREADABLE_SUFFIX}" in err
    assert f"Resuming the slow phase from {folder / 'step-000002'} (step 2 of 4)" in out
    assert (folder / f"step-000004{UNREADABLE_SUFFIX}" / "trainer_state.pt").read_bytes() == cut  # kept, not deleted
    assert sorted(p.name for p in folder.iterdir()) == ["step-000002", "step-000004", f"step-000004{UNREADABLE_SUFFIX}"]
    resumed = read_lora_file(tmp_path / "out" / "slow.safetensors")[0]
    assert all(torch.equal(resumed[k], uninterrupted[k]) for k in uninterrupted)

    # Nothing readable left: a state of another program, and an adapter cut short. The run says so and starts over.
    torch.save({"epoch": 3}, folder / "step-000004" / "trainer_state.pt")
    adapter = folder / "step-000002" / "adapter.safetensors"
    adapter.write_bytes(adapter.read_bytes()[:100])
    assert train_main(args) == 0
    out, err = capsys.readouterr()
    assert "step-000004/trainer_state.pt is not a glance_lite trainer state (it has no step" in err
    assert "step-000002/adapter.safetensors cannot be read (" in err
    assert "no readable checkpoint of the slow phase is left: it starts over from step 0" in err
    assert "Resuming" not in out
    assert {f"step-000004{UNREADABLE_SUFFIX}-2", f"step-000002{UNREADABLE_SUFFIX}"} <= {p.name for p in folder.iterdir()}
    again = read_lora_file(tmp_path / "out" / "slow.safetensors")[0]
    assert all(torch.equal(again[k], uninterrupted[k]) for k in uninterrupted)


def test_a_checkpoint_of_another_run_is_one_line_and_nothing_is_rewritten(tmp_path, capsys):
    assert train_main(train_args(tmp_path)) == 0
    before = {p: p.read_bytes() for p in (tmp_path / "out").rglob("*") if p.is_file()}
    capsys.readouterr()
    refused(capsys, train_main(train_args(tmp_path, "--set", "learning_rate=1e-3")), "was written by a different training run", "--restart")
    assert {p: p.read_bytes() for p in (tmp_path / "out").rglob("*") if p.is_file()} == before  # train_config.yaml too


# ---- NaN / inf in training ----------------------------------------------------------------------------------------
class _NanGradient(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        return x.clone()

    @staticmethod
    def backward(ctx, grad):
        return grad * float("nan")


@pytest.mark.parametrize("where", ["loss", "gradients"])
def test_training_stops_on_nan_naming_the_step_the_dtype_and_what_to_try(where, tmp_path, capsys, monkeypatch):
    velocity, training_calls = QwenImageFamily.velocity, []

    def diverging(self, *args, **kwargs):
        v = velocity(self, *args, **kwargs)
        if torch.is_grad_enabled():  # a training step (the eval loss runs without gradients)
            training_calls.append(1)
            if len(training_calls) >= 3:
                return v * float("nan") if where == "loss" else _NanGradient.apply(v)
        return v

    monkeypatch.setattr(QwenImageFamily, "velocity", diverging)
    err = refused(capsys, train_main(train_args(tmp_path)), "training stopped at slow step 3 of 4", "float32 (profile 'cpu'",
                  "learning_rate=0.0005", "step-000002 (step 2), is intact")  # fmt: skip
    assert ("the loss is nan" if where == "loss" else "the LoRA gradients are nan") in err
    folder = tmp_path / "out" / "checkpoints" / "slow"
    assert [p.name for p in folder.iterdir()] == ["step-000002"] and not (tmp_path / "out" / "slow.safetensors").exists()
    assert check_checkpoint(list_checkpoints(folder)[0])["step"] == 2  # the last good checkpoint reads
    assert (tmp_path / "out" / "slow_loss.csv").read_text().count("\n") == 3  # header, steps 1 and 2


def test_fp16_loss_scaling_may_skip_a_few_overflowing_steps_but_not_a_nan_loss():
    check = DivergenceCheck(scaled=True, max_skipped=3)
    assert not check.check(1.0, float("inf")) and not check.check(1.0, float("inf"))  # the scaler skips these
    assert not check.check(1.0, 2.0)  # a finite step resets the count
    assert not check.check(1.0, float("inf")) and not check.check(1.0, float("inf")) and check.check(1.0, float("inf"))
    assert check.check(float("nan"), 1.0) and "the loss is nan" in check.what
    assert DivergenceCheck(scaled=False).check(1.0, float("inf"))


def test_a_v100_float16_run_is_told_about_bfloat16_and_the_fp32_compute_recipe(tmp_path):
    """A user's V100 profile training in fp16 (the shipped V100 profiles train in fp32 for this reason)."""
    from conftest import profile_variant
    from glance_lite.families import family_by_name

    profile = profile_variant(tmp_path, "v100-16gb", "v100-fp16", training={"mixed_precision": "fp16"})
    run = SimpleNamespace(config=TrainConfig.for_family(family_by_name("qwen-image")), profile=profile,
                          checkpoints=lambda phase: tmp_path)  # fmt: skip
    text = _divergence_message(run, "fast", 7, "the loss is inf")
    assert text.startswith("training stopped at fast step 7 of 60: the loss is inf. The frozen base computes in float16")
    assert "a bfloat16 profile" in text and 'training.mixed_precision: "no"' in text and "learning_rate=3e-05" in text
    assert "no checkpoint of this phase had been written" in text


# ---- a quiet and quick start (fresh processes) ---------------------------------------------------------------------
def run_python(*args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(REPO), HF_HUB_OFFLINE="1")
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, env=env, timeout=timeout, cwd=REPO)


def test_a_generate_run_prints_no_third_party_warning(tmp_path, qwen_loras):
    """A torchao profile with two LoRAs, run on the CPU: torch, torchao, bitsandbytes, peft, diffusers and transformers
    all load, and stderr holds only glance_lite's own lines (what a CPU cannot emulate, what each LoRA applied)."""
    slow, fast = qwen_loras
    args = generate_args(tmp_path, "--profile", "4090", "--device", "cpu", "--slow-lora", str(slow), "--fast-lora", str(fast))
    proc = run_python("-m", "glance_lite.generate", *args)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout == f"wrote {tmp_path / 'out' / 'a.png'}\n"
    assert [line.split(":")[0] for line in proc.stderr.splitlines()] == ["--device cpu", "slow", "fast"], proc.stderr


def test_each_start_up_line_dropped_is_only_that_line():
    """The libraries' own loggers, with their own words (glance_lite.quiet); any other line of theirs gets through."""
    import logging

    noise = {
        "torchao": "Failed to load /site-packages/torchao/_C_mxfp8.cpython-310-x86_64-linux-gnu.so: Could not load this library",
        "torch.utils._pytree": "<enum 'KernelPreference'> is an Enum subclass and is now natively supported by torch.compile as an opaque value type.",
        "diffusers.quantizers.torchao.torchao_quantizer": "Unable to import `torchao` Tensor objects. This may affect loading checkpoints",
        "bitsandbytes.backends.cpu.ops": "Failed to load CPU gemm_4bit_forward from kernels-community: No module named 'kernels'.",
        "transformers.utils.import_utils": "`CLIPImageProcessor` requires torchvision (not installed); falling back to `CLIPImageProcessorPil`",
    }
    for name, message in noise.items():
        logger = logging.getLogger(name)
        seen = []
        handler = logging.Handler()
        handler.emit = lambda record: seen.append(record.getMessage())
        logger.addHandler(handler)
        try:
            logger.warning(message)
            logger.warning("a warning the user should see")
        finally:
            logger.removeHandler(handler)
        assert seen == ["a warning the user should see"], name


def test_the_libraries_python_warnings_dropped_are_only_those():
    import warnings

    import glance_lite.quiet

    with warnings.catch_warnings(record=True) as caught:
        warnings.resetwarnings()
        glance_lite.quiet.install_noise_filters()
        warnings.warn("`QuantoConfig` is deprecated and will be removed in version 1.0.0.", FutureWarning)
        warnings.warn("TorchaoLoraLinear was instantiated without `get_apply_tensor_subclass`. Forward and training will work", UserWarning)
        warnings.warn("TorchaoLoraLinear: a warning the user should see", UserWarning)
        warnings.warn("`QuantoConfig` is deprecated and will be removed in version 1.0.0.", UserWarning)
        # the `kernels` package under HF_HUB_OFFLINE=1, for bitsandbytes' optional kernels (kernels/utils.py)
        warnings.warn("Skipping publisher trust check for 'kernels-community/quantization-bitsandbytes' because Hugging Face Hub is in offline mode.", UserWarning)
        warnings.warn("Skipping nothing: a warning the user should see", UserWarning)
    assert [str(w.message) for w in caught] == ["TorchaoLoraLinear: a warning the user should see",
                                                "`QuantoConfig` is deprecated and will be removed in version 1.0.0.",
                                                "Skipping nothing: a warning the user should see"]  # fmt: skip


REFUSALS = {
    "size not a multiple of 16": (["--height", "100"], "height=100 is not a multiple of 16"),
    "empty prompt": (["--prompt", "   "], "is empty"),
    "missing LoRA file": (["--slow-lora", "/no/such/slow.safetensors"], "LoRA file not found"),
    "unknown profile": (["--profile", "4080"], "Unknown profile '4080'"),
}


def test_refusals_that_need_no_model_are_one_line_from_a_fresh_process_and_write_nothing(tmp_path):
    """How fast they answer is measured by benchmarks/startup_time.py (results/startup-*.md), not asserted here."""
    for name, (extra, message) in REFUSALS.items():
        proc = run_python("-m", "glance_lite.generate", *generate_args(tmp_path, *extra))
        assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and message in proc.stderr, (name, proc.stderr)
    assert not (tmp_path / "out").exists()


def test_help_and_refusals_answer_before_torch_or_diffusers_is_imported(tmp_path):
    script = f"""
import importlib
import sys
data, demo, generate, lora, train, plan = (importlib.import_module(f"glance_lite.{{name}}") for name in ("data", "demo", "generate", "lora", "train", "plan.__main__"))
for main, args in [
    (generate.main, ["--help"]), (train.main, ["--help"]), (plan.main, ["--help"]), (data.main, ["--help"]),
    (demo.main, ["--help"]), (lora.main, ["--help"]),
    *[(generate.main, ["--prompt", "x", "--out", "{tmp_path}/a.png", *extra]) for extra in {[e for e, _ in REFUSALS.values()]!r}],
    (train.main, ["--model", "tiny/qwen-image", "--data", "{tmp_path}/none", "--output", "{tmp_path}/out"]),
    (train.main, ["--model", "tiny/qwen-image", "--data", "{tmp_path}", "--output", "{tmp_path}/o", "--set", "lr=1"]),
    (demo.main, ["--profile", "4080", "--out", "{tmp_path}/demo"]), (lora.main, ["info", "{tmp_path}/none.safetensors"]),
]:
    try:
        code = main(args)
    except SystemExit as exit:
        code = exit.code
    assert code == (0 if args == ["--help"] else 2), (args, code)
print(sorted(m for m in ("torch", "diffusers", "transformers") if m in sys.modules))
"""
    proc = run_python("-c", script)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip().splitlines()[-1] == "[]", proc.stdout[-2000:]


def test_importing_the_api_loads_no_pipeline_model_library_or_quantizer():
    """Why `import glance_lite.api` is cheap (its time beside `import diffusers`: benchmarks/startup_time.py)."""
    heavy = ("diffusers", "transformers", "peft", "accelerate", "bitsandbytes", "torchao", "optimum", "safetensors", "PIL")
    proc = run_python("-c", f"import sys, glance_lite.api; print(sorted({{m.split('.')[0] for m in sys.modules}} & {set(heavy)!r}))")
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr[-2000:]
    assert proc.stdout.strip() == "[]", proc.stdout
