"""The official Glance training configs work as they are: `--config Glance_qwen.yaml` / `Glance_flux.yaml` is
recognised, every key is mapped to glance_lite's settings or listed as not used with the reason, and the command line
still wins."""

from pathlib import Path

import pytest
import yaml

from glance_lite.lora import read_lora_file
from glance_lite.models import resolve_model
from glance_lite.train import main
from glance_lite.train_config import TrainConfig, load_config_file

from test_train import SIZE, make_dataset

# The layouts of CSU-JPG/Glance train_configs/Glance_qwen.yaml and Glance_flux.yaml (keys, nesting and the reference's
# values, written out here; numbers like 3e-4 stay unquoted, as there: YAML 1.1 reads them as strings).
COMMON = """\
pretrained_model_name_or_path: {model}
data_config:
  train_batch_size: 1
  num_workers: 4
  img_size: 1024
  caption_dropout_rate: {dropout}
  img_dir: {data}
  random_ratio: false
  caption_type: txt
report_to: null
train_batch_size: 1
output_dir: {output}
max_train_steps: 60
learning_rate: {lr}
lr_scheduler: constant
lr_warmup_steps: 10
adam_beta1: 0.9
adam_beta2: 0.999
adam_weight_decay: 0.01
adam_epsilon: 1e-8
max_grad_norm: 1.0
logging_dir: logs
mixed_precision: "bf16"
checkpointing_steps: 60
checkpoints_total_limit: 10
tracker_project_name: lora_test
resume_from_checkpoint: latest
gradient_accumulation_steps: 1
rank: {rank}
"""
QWEN_TAIL = """\
precompute_text_embeddings: true
precompute_image_embeddings: true
quantize: true
adam8bit: true
save_cache_on_disk: true
Slow_LoRA: true
Fast_LoRA: false
"""
FLUX_TAIL = """\
double_blocks: null
disable_sampling: false
sample_every: 250
sample_width: 1024
sample_height: 1024
sample_steps: 20
Slow_LoRA: false
Fast_LoRA: true
"""
LAYOUTS = {
    "qwen": (dict(model="Qwen/Qwen-Image", dropout=0.1, lr="3e-4", rank=32), QWEN_TAIL),
    "flux": (dict(model="black-forest-labs/FLUX.1-dev", dropout=0, lr="5e-4", rank=16), FLUX_TAIL),
}


def official_yaml(folder: Path, layout: str, model=None, data="./your_sample", output="./lora_saves") -> Path:
    values, tail = LAYOUTS[layout]
    path = folder / f"Glance_{layout}.yaml"
    path.write_text(COMMON.format(**{**values, "model": model or values["model"]}, data=data, output=output) + tail)
    return path


@pytest.mark.parametrize("layout", ["qwen", "flux"])
def test_both_official_layouts_are_mapped_key_by_key(layout, tmp_path):
    path = official_yaml(tmp_path, layout)
    config = load_config_file(path)
    qwen = layout == "qwen"
    assert config.run == {"model": LAYOUTS[layout][0]["model"], "data": "./your_sample", "output": "./lora_saves", "phase": "slow" if qwen else "fast"}
    assert config.settings == {
        "resolution": 1024, "caption_dropout": 0.1 if qwen else 0, "steps": 60, "learning_rate": 3e-4 if qwen else 5e-4,
        "warmup_steps": 0, "adam_betas": (0.9, 0.999), "weight_decay": 0 if qwen else 0.01, "adam_epsilon": 1e-8,
        "max_grad_norm": 1.0, "checkpoint_every": 60, "keep_checkpoints": 10, "rank": 32 if qwen else 16,
        "alpha": 128 if qwen else 64, **({"optimizer": "adamw8bit"} if qwen else {}),
    }  # fmt: skip
    family = resolve_model("tiny/qwen-image" if qwen else "tiny/flux").family
    TrainConfig.for_family(family, config.settings)  # every mapped value is a valid glance_lite setting

    run, settings, lines = config.resolve({}, {})
    text = "\n".join(lines)
    assert lines[0] == f"Glance_{layout}.yaml is an official Glance training config; read as:"
    top = [k for k in yaml.safe_load(path.read_text()) if k != "data_config"]
    nested = [f"data_config.{k}" for k in yaml.safe_load(path.read_text())["data_config"]]
    for key in top + nested:  # one line per key (keys read together share one), in the file's order
        assert sum(line.startswith(f"  {key}: ") or f", {key}: " in line.split(" -> ")[0] for line in lines) == 1, key
    assert len(lines) - 1 == len(top) + len(nested) - 3  # lr_*, adam_beta*, Slow/Fast_LoRA: pairs on one line
    assert "  max_train_steps: 60 -> steps: 60" in lines
    assert "  data_config.img_size: 1024 -> resolution: 1024" in lines
    assert "  lr_scheduler: constant, lr_warmup_steps: 10 -> warmup_steps: 0 (the reference's 'constant' schedule ignores lr_warmup_steps)" in lines
    assert "  mixed_precision: bf16 -> not used: the profile's training.dtype and mixed_precision decide" in lines
    if qwen:
        assert "  quantize: true -> not used: the profile's training.base_quantization decides" in lines
        assert "  adam8bit: true -> optimizer: adamw8bit" in lines
        assert "  Slow_LoRA: true, Fast_LoRA: false -> phase: slow" in lines
        assert "  rank: 32 -> rank: 32, alpha: 128 (the reference trains at alpha = 4 x rank; a --set rank keeps that)" in lines
    else:
        assert "  sample_every: 250 -> not used: no preview images while training" in text
        assert "  Slow_LoRA: false, Fast_LoRA: true -> phase: fast" in lines


def test_command_line_flags_and_set_win_over_the_official_config(tmp_path):
    config = load_config_file(official_yaml(tmp_path, "qwen"))
    run, settings, lines = config.resolve({"model": None, "data": Path("mine"), "output": None, "phase": "both"}, {"rank": 8, "steps": 5})
    assert run == {"model": "Qwen/Qwen-Image", "data": Path("mine"), "output": "./lora_saves", "phase": "both"}
    assert (settings["rank"], settings["alpha"], settings["steps"]) == (8, 32, 5)  # alpha still follows 4 x rank
    assert any(line.startswith("  data_config.img_dir:") and line.endswith("[the command line's data wins]") for line in lines)
    assert any(line.startswith("  max_train_steps:") and line.endswith("[the command line's steps wins]") for line in lines)
    run, settings, _ = config.resolve({}, {"rank": 8, "alpha": 8})
    assert (settings["rank"], settings["alpha"]) == (8, 8)


def test_native_glance_lite_configs_read_as_before(tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text("steps: 90\nlearning_rate: 3e-4\nrank: 8\ntimesteps: reference\n")
    config = load_config_file(path)
    assert config.settings == {"steps": 90, "learning_rate": 3e-4, "rank": 8, "timesteps": "reference"}
    assert config.resolve({}, {}) == ({}, config.settings, [])


def test_the_official_qwen_config_with_only_paths_changed_trains_on_the_tiny_model(tmp_path, capsys):
    data = make_dataset(tmp_path / "data")
    config = official_yaml(tmp_path, "qwen", model="tiny/qwen-image", data=tmp_path / "data", output=tmp_path / "out")
    fast = ["--set", "max_train_steps=1"]  # an official key given to --set is refused: glance_lite keys only
    assert main(["--config", str(config), "--profile", "cpu", "--no-progress", *fast]) == 2
    assert "unknown config key 'max_train_steps' (did you mean 'steps'?)" in capsys.readouterr().err

    small = ["--set", "steps=2", "--set", f"resolution={SIZE}", "--set", f"min_image_size={SIZE}"]
    assert main(["--config", str(config), "--profile", "cpu", "--no-progress", *small]) == 0
    out = capsys.readouterr().out
    assert "Glance_qwen.yaml is an official Glance training config; read as:" in out
    assert "  max_train_steps: 60 -> steps: 60  [the command line's steps wins]" in out
    assert "Trained tiny/qwen-image" in out
    assert (tmp_path / "out" / "slow.safetensors").is_file() and not (tmp_path / "out" / "fast.safetensors").exists()
    resolved = yaml.safe_load((tmp_path / "out" / "train_config.yaml").read_text())
    assert (resolved["rank"], resolved["alpha"], resolved["optimizer_used"], resolved["weight_decay"]) == (32, 128, "adamw8bit", 0)
    assert resolved["steps"] == 2 and resolved["warmup_steps"] == 0
    tensors, _ = read_lora_file(tmp_path / "out" / "slow.safetensors")
    assert {float(v) for k, v in tensors.items() if k.endswith(".alpha")} == {128.0}
