"""Shared test setup: an isolated cache for the embedded tiny models, and LoRA files made on the fly."""

import os
from pathlib import Path

import pytest
import torch

# Before anything imports huggingface_hub (it reads this once): tests never touch the network.
os.environ["HF_HUB_OFFLINE"] = "1"


@pytest.fixture(scope="session", autouse=True)
def glance_home(tmp_path_factory):
    """Tiny models are built once per test session into a private cache (never the user's ~/.cache)."""
    home = os.environ.get("GLANCE_LITE_TEST_HOME") or str(tmp_path_factory.mktemp("glance_home"))
    os.environ["GLANCE_LITE_HOME"] = home
    return Path(home)


def transformer_with_random_lora(model_id: str, seed: int, rank: int, alpha: float, std: float):
    """(model source, its transformer with a LoRA named 'random' whose A and B are random: a default-initialized
    LoRA is a no-op)."""
    from peft import LoraConfig

    from glance_lite.models import component_class, resolve_model

    source = resolve_model(model_id)
    transformer = component_class(source, "transformer").from_pretrained(source.location, subfolder="transformer")
    config = LoraConfig(r=rank, lora_alpha=alpha, target_modules=list(source.family.lora_target_modules), init_lora_weights=False)
    transformer.add_adapter(config, adapter_name="random")
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in transformer.named_parameters():
            if "lora_" in name:
                param.copy_(torch.randn(param.shape, generator=gen) * std)
    return source, transformer


def make_random_lora(model_id: str, path: Path, seed: int, rank: int = 4, alpha: float | None = None, std: float = 0.05) -> Path:
    """A LoRA file for `model_id`'s transformer with random A and B, written by glance_lite (`save_lora`)."""
    from glance_lite.lora import save_lora

    source, transformer = transformer_with_random_lora(model_id, seed, rank, alpha or 4 * rank, std)
    return save_lora(transformer, source.family, "random", path)


def make_official_lora(model_id: str, path: Path, seed: int, rank: int = 4, std: float = 0.05) -> Path:
    """A random LoRA saved as the official Glance trainer saves its files (reference notes §5):
    `<Pipeline>.save_lora_weights(convert_state_dict_to_diffusers(get_peft_model_state_dict(...)))`, which gives
    `transformer.` keys, `lora.down`/`lora.up` for to_q/to_k/to_v/to_out.0 and `lora_A`/`lora_B` for the rest, and
    neither alpha nor metadata. It was trained at alpha = 4 rank."""
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft.utils import get_peft_model_state_dict

    source, transformer = transformer_with_random_lora(model_id, seed, rank, 4 * rank, std)
    layers = convert_state_dict_to_diffusers(get_peft_model_state_dict(transformer, adapter_name="random"))
    source.family.pipeline_class.save_lora_weights(path.parent, layers, weight_name=path.name, safe_serialization=True)
    return path


@pytest.fixture(scope="session")
def qwen_loras(tmp_path_factory):
    """(slow, fast) random LoRA files for tiny/qwen-image."""
    folder = tmp_path_factory.mktemp("loras")
    return make_random_lora("tiny/qwen-image", folder / "slow.safetensors", 1), make_random_lora(
        "tiny/qwen-image", folder / "fast.safetensors", 2
    )


def profile_variant(tmp_path: Path, base: str, name: str = "variant", top: dict | None = None, training: dict | None = None, **components):
    """A built-in profile with some settings changed, written and loaded as a user's YAML file (validated as one)."""
    import yaml

    from glance_lite.profiles import load_profile

    data = load_profile(base).to_dict()
    data.update(top or {}, name=name)
    data["training"].update(training or {})
    for component, changes in components.items():
        data["components"][component].update(changes)
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data))
    return load_profile(str(path))
