"""`--phase distill`: a few-step student LoRA learns the base model's many-step samples from captions alone, samples
through the few-step method, survives kill -9 (teacher trajectories included), and bad input fails before any model
loads."""

import signal
from pathlib import Path

import pytest
import torch

import glance_lite
from glance_lite import distill
from glance_lite.distill import DistillError
from glance_lite.generate import main as generate_main
from glance_lite.train import TrainConfig, main, read_loss_csv, train
from kill_runner import TrainRunner

MODEL = "tiny/qwen-image"
SIZE = 64
CAPTIONS = ["a red circle on a blue background", "a green square on a white background", "a black triangle"]
# Teacher: base-8 with true CFG; student: 2 steps, no guidance. Enough push for the tiny random model in 40 steps.
DISTILL = dict(resolution=SIZE, teacher_steps=8, distill_steps=2, steps=40, learning_rate=5e-3, warmup_steps=0, rank=8, alpha=8)
KILL_SETTINGS = dict(DISTILL, steps=6, checkpoint_every=2, keep_checkpoints=1)
KILL_TIMEOUT_S = 300


def captions_file(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "captions.txt"
    path.write_text("\n".join(CAPTIONS) + "\n\n", encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def distilled(tmp_path_factory):
    root = tmp_path_factory.mktemp("distill")
    result = train(MODEL, captions_file(root), root / "out", "distill", "cpu", DISTILL, progress=False)
    return root, result


def latents(glance, caption: str, seed: int, method: str) -> torch.Tensor:
    return glance.generate(caption, height=SIZE, width=SIZE, seed=seed, output_type="latent", progress=False, method=method).latents[0].float()


def test_the_student_lands_closer_to_the_teacher_in_two_unguided_steps(distilled):
    root, result = distilled
    cfg = TrainConfig.for_family(glance_lite.load(MODEL, profile="cpu").family, DISTILL, "distill")
    p = result.phases["distill"]
    assert len(p.losses) == DISTILL["steps"] and p.eval_loss_after < 0.7 * p.eval_loss_before
    assert [r["step"] for r in read_loss_csv(result.output / "distill_loss.csv")] == list(range(1, DISTILL["steps"] + 1))

    plain = glance_lite.load(MODEL, profile="cpu", height=SIZE, width=SIZE)
    student = glance_lite.load(MODEL, profile="cpu", height=SIZE, width=SIZE, method="fewstep-2", fewstep_lora=result.adapters["distill"])
    for i, caption in enumerate(CAPTIONS):
        seed = distill.noise_seed(cfg, i)
        teacher = latents(plain, caption, seed, "base-8")
        # The teacher's trajectory ends where generate's base-8 from the same noise does.
        assert torch.allclose(result.targets[i].float(), teacher, atol=1e-5)
        base_2 = latents(plain, caption, seed, "base-2")  # what 2 steps give without the student (true CFG)
        ours = latents(student, caption, seed, "fewstep-2")
        before, after = (float(((x - teacher) ** 2).mean()) for x in (base_2, ours))
        assert after < 0.5 * before, f"{caption!r}: latent MSE to the teacher {before:.4f} (base-2) -> {after:.4f} (student)"


def test_the_distilled_file_samples_through_the_generate_command(distilled, tmp_path, capsys):
    root, result = distilled
    out = tmp_path / "fewstep.png"
    assert "--method fewstep-2 --lora" in result.generate_command()
    code = generate_main([
        "--model", MODEL, "--method", "fewstep-2", "--lora", str(result.adapters["distill"]), "--prompt", CAPTIONS[0],
        "--height", str(SIZE), "--width", str(SIZE), "--profile", "cpu", "--out", str(out), "--no-progress",
    ])  # fmt: skip
    assert code == 0 and out.is_file()
    from glance_lite.png_settings import read_png_settings

    settings = read_png_settings(out)
    assert settings["method"] == "fewstep-2" and settings["transformer_calls"] == 2
    assert [entry["phase"] for entry in settings["loras"]] == ["fewstep"]


# ---- resumable, teacher included --------------------------------------------------------------------------------
def kill_command(data: Path, out: Path) -> list[str]:
    args = ["--model", MODEL, "--phase", "distill", "--data", str(data), "--output", str(out), "--profile", "cpu", "--no-progress"]
    return args + [f"--set={k}={v}" for k, v in KILL_SETTINGS.items()]


def test_sigkill_while_the_teacher_samples_and_while_training_then_the_same_command_resumes_bit_for_bit(tmp_path):
    from safetensors.torch import load_file

    data = captions_file(tmp_path / "data")
    runner = TrainRunner(tmp_path / "runner", KILL_TIMEOUT_S)
    try:
        reference = runner.start(kill_command(data, tmp_path / "reference"))
        assert reference.wait() == 0, reference.report()
        out = tmp_path / "out"
        args = kill_command(data, out)

        child = runner.start(args, stop=("teacher", 2))  # two trajectories cached, the third never started
        assert "teacher trajectory 2" in child.stopped(), child.report()
        assert child.kill() == -signal.SIGKILL, child.report()
        assert len(list((out / "cache").glob("teacher-*.safetensors"))) == 2

        child = runner.start(args, stop=("step", 3))  # samples only the third trajectory, then dies inside step 3
        assert child.stopped().startswith("inside distill step 3"), child.report()
        assert child.kill() == -signal.SIGKILL, child.report()
        assert [e for e in child.events if e.startswith("teacher ")] == ["teacher 1"]

        child = runner.start(args)
        assert child.wait() == 0, child.report()
        assert not [e for e in child.events if e.startswith("teacher ")], "the cached teacher was sampled again"
        assert "Resuming the distill phase" in child.log.read_text() and "(step 2 of 6)" in child.log.read_text()
    finally:
        runner.close()
    ours, theirs = load_file(out / "distill.safetensors"), load_file(tmp_path / "reference" / "distill.safetensors")
    assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in theirs)
    rows = [(r["step"], r["loss"]) for r in read_loss_csv(out / "distill_loss.csv")]
    assert rows == [(r["step"], r["loss"]) for r in read_loss_csv(tmp_path / "reference" / "distill_loss.csv")]


# ---- failing early -----------------------------------------------------------------------------------------------
def test_bad_input_is_refused_before_any_model_loads(tmp_path, monkeypatch, capsys):
    import diffusers

    def no_loading(*args, **kwargs):
        raise AssertionError("a model was loaded before the input was checked")

    monkeypatch.setattr(diffusers.DiffusionPipeline, "from_pretrained", no_loading)
    monkeypatch.setattr(diffusers.ModelMixin, "from_pretrained", no_loading)
    empty, latin1, images_only = tmp_path / "empty.txt", tmp_path / "latin1.txt", tmp_path / "images"
    empty.write_text("\n  \n")
    latin1.write_bytes("un cercle rouge, très rond\n".encode("latin-1"))
    images_only.mkdir()
    (images_only / "a.png").write_bytes(b"")

    def refusal(data, model=MODEL, **settings) -> str:
        argv = ["--model", model, "--phase", "distill", "--data", str(data), "--output", str(tmp_path / "out"), "--profile", "cpu"]
        assert main(argv + [f"--set={k}={v}" for k, v in {"resolution": SIZE, **settings}.items()]) == 2
        return capsys.readouterr().err

    assert "holds no captions: write one caption per line" in refusal(empty)
    assert "UTF-8" in refusal(latin1)
    assert "does not exist" in refusal(tmp_path / "nowhere.txt")
    assert "a.png" in refusal(images_only)  # a dataset folder whose image has no caption
    assert "image-editing model" in refusal(captions_file(tmp_path / "ok"), model="tiny/qwen-image-edit")
    assert "teacher_steps = 6 must be at least twice distill_steps = 4" in refusal(captions_file(tmp_path / "ok"), teacher_steps=6, distill_steps=4)
    assert "distill_steps = 0 must lie in" in refusal(captions_file(tmp_path / "ok"), distill_steps=0)
    assert not (tmp_path / "out" / "distill.safetensors").exists()


def test_captions_come_from_a_text_file_or_a_dataset_folder(tmp_path):
    from PIL import Image

    (tmp_path / "list.txt").write_text("a red circle\n\na blue square  \na red circle\n", encoding="utf-8")
    assert distill.read_captions(tmp_path / "list.txt") == ["a red circle", "a blue square"]  # blank lines and repeats go
    folder = tmp_path / "data"
    folder.mkdir()
    for name, caption in (("one", "a red circle"), ("two", "a green square")):
        Image.new("RGB", (8, 8)).save(folder / f"{name}.png")
        (folder / f"{name}.txt").write_text(caption)
    assert distill.read_captions(folder) == ["a red circle", "a green square"]
    with pytest.raises(DistillError, match="not usable"):
        (folder / "three.png").write_bytes(b"")
        distill.read_captions(folder)


def test_print_config_shows_the_distillation_defaults(capsys):
    assert main(["--model", "tiny/qwen-image", "--phase", "distill", "--print-config"]) == 0
    text = capsys.readouterr().out
    for line in ("steps: 1500", "caption_dropout: 0.0", "distill_steps: 4", "teacher_steps: 50", "teacher_cfg: 5.0"):
        assert line in text, line
    assert main(["--model", "tiny/qwen-image", "--print-config"]) == 0
    assert "steps: 60" in capsys.readouterr().out  # the Glance phases keep the family's recipe
