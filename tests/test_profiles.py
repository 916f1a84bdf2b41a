"""Hardware profiles: the built-in ones are valid and say what their hardware needs; a broken profile file is
refused with a message naming the file and the field; `auto` picks the right profile for a machine."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import yaml

from glance_lite.autoselect import Hardware, select_profile
from glance_lite.profiles import (
    COMPONENT_ROLES,
    Profile,
    ProfileError,
    list_profiles,
    load_profile,
)

GiB = 2**30
BUILTIN = {"4090", "3090", "16gb", "12gb", "8gb", "v100-32gb", "v100-16gb", "multi-gpu", "a100-80gb", "cpu"}
PROFILES_DIR = Path(__file__).resolve().parent.parent / "profiles"


def write_profile(tmp_path, edit, base="4090", name="foo.yaml") -> Path:
    """A copy of a built-in profile with `edit(data)` applied, saved as a user file."""
    data = yaml.safe_load((PROFILES_DIR / f"{base}.yaml").read_text())
    edit(data)
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data))
    return path


# ---- the built-in profiles ---------------------------------------------------------------------------------------
def test_every_builtin_profile_loads_and_is_named_after_its_file():
    assert set(list_profiles()) == BUILTIN
    for name in list_profiles():
        profile = load_profile(name)
        assert profile.name == name
        assert set(profile.components) == set(COMPONENT_ROLES)
        assert profile.description and "\n" not in profile.description


def test_profiles_are_frozen_plain_data():
    profile = load_profile("4090")
    with pytest.raises(dataclasses.FrozenInstanceError):
        profile.gpu_memory_gb = 80
    with pytest.raises(TypeError):
        profile.components["transformer"] = profile.components["vae"]
    assert profile.component("text_encoder_2") == profile.components["text_encoder"]  # FLUX's T5 follows the TE policy
    assert load_profile("4090") == profile
    assert dataclasses.replace(profile, gpu_memory_gb=12).gpu_memory_bytes == 12 * GiB


def test_v100_profiles_compute_in_float32_because_sm70_has_no_bfloat16_and_qwen_overflows_float16():
    """sm_70 has no bfloat16 and Qwen-Image's transformer and text encoder overflow float16: weights stay small
    (int8 / nf4) and everything computes in float32, training included (no fp16 autocast)."""
    for name in ("v100-32gb", "v100-16gb"):
        profile = load_profile(name)
        assert profile.compute_dtype == "float16" and profile.min_compute_capability == 7.0  # no bfloat16 on the card
        assert profile.training.mixed_precision == "no" and profile.training.base_quantization == "quanto-qint8"
        assert {role: policy.dtype for role, policy in profile.components.items()} == {
            "text_encoder": "float32", "transformer": "float32", "vae": "float32"}  # fmt: skip
        assert {profile.component("text_encoder").quantization, profile.component("transformer").quantization} == {"bnb-nf4", "torchao-int8"}


def test_a100_keeps_everything_resident_in_bf16_and_cpu_quantizes_nothing():
    a100 = load_profile("a100-80gb")
    assert all(p.placement == "resident" and p.quantization == "none" and p.dtype == "bfloat16" for p in a100.components.values())
    cpu = load_profile("cpu")
    assert cpu.device == "cpu" and cpu.gpu_memory_gb is None and cpu.num_gpus == 0
    assert all(p.placement == "cpu" and p.quantization == "none" and p.dtype == "float32" for p in cpu.components.values())


def test_multi_gpu_shards_the_transformer_and_puts_the_text_encoder_on_another_gpu():
    profile = load_profile("multi-gpu")
    assert profile.num_gpus >= 2
    assert profile.components["transformer"].placement == "sharded"
    assert profile.components["text_encoder"].gpu == 1


def test_a_profile_file_given_by_path_loads(tmp_path):
    path = write_profile(tmp_path, lambda d: d.update(name="my-card", gpu_memory_gb=20))
    profile = load_profile(str(path))
    assert profile.name == "my-card" and profile.gpu_memory_gb == 20.0 and profile.source == str(path)


# ---- strict validation -------------------------------------------------------------------------------------------
def test_unknown_key_names_the_file_the_dotted_field_and_a_suggestion(tmp_path):
    def typo(d):
        d["components"]["transformer"]["placment"] = d["components"]["transformer"].pop("placement")

    path = write_profile(tmp_path, typo)
    with pytest.raises(ProfileError) as err:
        load_profile(str(path))
    message = str(err.value)
    assert f"{path}: unknown key 'components.transformer.placment' (did you mean 'placement'?)" in message
    assert "missing required key 'components.transformer.placement'" in message


def test_bad_value_lists_the_allowed_values(tmp_path):
    path = write_profile(tmp_path, lambda d: d["components"]["transformer"].update(quantization="int3"))
    with pytest.raises(ProfileError, match=r"components\.transformer\.quantization = 'int3' is not one of none, torchao-int8, torchao-float8, bnb-nf4, "):
        load_profile(str(path))


@pytest.mark.parametrize(
    "edit, expected",
    [
        (lambda d: d.update(gpu_memory_gb="24"), r"gpu_memory_gb = '24' has the wrong type: expected an integer or a number"),
        (lambda d: d.update(batch_cfg="yes"), r"batch_cfg = 'yes' has the wrong type: expected true/false"),
        (lambda d: d["training"].update(block_offload=1), r"training\.block_offload = 1 has the wrong type"),
        (lambda d: d.update(num_gpus=True), r"num_gpus = True has the wrong type: expected an integer"),
        (lambda d: d["components"].update(vae="resident"), r"components\.vae = 'resident' has the wrong type: expected a mapping"),
    ],
)
def test_wrong_type_names_the_field(tmp_path, edit, expected):
    with pytest.raises(ProfileError, match=expected):
        load_profile(str(write_profile(tmp_path, edit)))


def test_bitsandbytes_on_a_cpu_profile_is_one_error_for_its_field(tmp_path):
    cpu_bnb = lambda d: d["components"]["text_encoder"].update(quantization="bnb-int8")  # noqa: E731
    with pytest.raises(ProfileError) as err:
        load_profile(str(write_profile(tmp_path, cpu_bnb, base="cpu")))
    assert str(err.value).count("components.text_encoder") == 1, str(err.value)
    assert "'bnb-int8' needs a CUDA GPU" in str(err.value)


@pytest.mark.parametrize("text, expected", [("", r"empty\.yaml is empty: a profile is a YAML mapping"),
                                             ("- 4090\n", r"must be a YAML mapping of settings .* got a list")])
def test_an_empty_or_non_mapping_profile_file_says_what_a_profile_is(tmp_path, text, expected):
    path = tmp_path / "empty.yaml"
    path.write_text(text)
    with pytest.raises(ProfileError, match=expected):
        load_profile(str(path))


def test_missing_required_key_is_reported(tmp_path):
    path = write_profile(tmp_path, lambda d: d.pop("system_ram_gb"))
    with pytest.raises(ProfileError, match=r"foo\.yaml: missing required key 'system_ram_gb'"):
        load_profile(str(path))
    path = write_profile(tmp_path, lambda d: d["components"].pop("vae"), name="bar.yaml")
    with pytest.raises(ProfileError, match=r"missing required key 'components\.vae'"):
        load_profile(str(path))


@pytest.mark.parametrize(
    "base, edit, expected",
    [
        ("4090", lambda d: d.update(min_compute_capability=7.0), r"bfloat16 needs compute capability >= 8"),
        ("4090", lambda d: d["components"]["transformer"].pop("blocks_per_group"), r"blocks_per_group is required when placement is group_offload"),
        ("4090", lambda d: d["components"]["text_encoder"].update(blocks_per_group=2), r"components\.text_encoder\.blocks_per_group only applies to placement group_offload"),
        ("4090", lambda d: d["components"]["transformer"].update(placement="sharded"), r"'sharded' needs num_gpus >= 2"),
        ("4090", lambda d: d["components"]["text_encoder"].update(tiling=True), r"components\.text_encoder\.tiling only applies to the vae"),
        ("4090", lambda d: d["training"].pop("blocks_per_group"), r"training\.blocks_per_group is required"),
        ("cpu", lambda d: d["components"]["transformer"].update(quantization="bnb-nf4"), r"needs a CUDA GPU"),
        ("cpu", lambda d: d["components"]["vae"].update(placement="resident"), r"not possible on device cpu"),
        ("cpu", lambda d: d["components"]["transformer"].update(quantization="quanto-qint8"), r"fuse_lora needs unquantized transformer weights .*'quanto-qint8'.*set fuse_lora: false"),
        ("4090", lambda d: d.update(fuse_lora=True), r"fuse_lora needs transformer weights that stay in place .*'group_offload'"),
        ("multi-gpu", lambda d: d["components"]["text_encoder"].update(gpu=2), r"components\.text_encoder\.gpu = 2 but the profile has num_gpus = 2"),
    ],
)
def test_inconsistent_settings_are_refused_before_anything_loads(tmp_path, base, edit, expected):
    with pytest.raises(ProfileError, match=expected):
        load_profile(str(write_profile(tmp_path, edit, base=base)))


@pytest.mark.parametrize(
    "base, edit, expected",
    [
        ("4090", lambda d: d["components"]["transformer"].update(quantization="quanto-qfloat8"),
         r"'quanto-qfloat8' with placement 'group_offload' is refused: .*diffusers#12610.*use torchao-int8"),
        ("multi-gpu", lambda d: d["components"]["text_encoder"].update(quantization="bnb-int8"),
         r"'bnb-int8' with placement 'model_offload' is refused: .*do not move bitsandbytes 8-bit models"),
        ("4090", lambda d: d["components"]["transformer"].update(quantization="bnb-nf4"),
         r"'bnb-nf4' with placement 'group_offload' is refused: diffusers group offloading has no bitsandbytes path"),
        ("4090", lambda d: d["training"].update(base_quantization="bnb-nf4"), r"with training\.block_offload is refused"),
        ("4090", lambda d: d["training"].update(base_quantization="torchao-int8"), r"base_quantization = 'torchao-int8' is not one of"),
    ],
)  # fmt: skip
def test_a_pairing_known_to_break_upstream_is_refused_with_the_alternative(tmp_path, base, edit, expected):
    with pytest.raises(ProfileError, match=expected):
        load_profile(str(write_profile(tmp_path, edit, base=base)))


def test_no_shipped_profile_pairs_storage_and_placement_the_pinned_libraries_cannot_run():
    from glance_lite.pairings import placement_problem, training_problem

    for name in list_profiles():
        profile = load_profile(name)
        for policy in profile.components.values():
            assert placement_problem(policy.quantization, policy.placement) is None, name
            assert not policy.quantization.startswith("quanto-") or profile.device == "cpu"  # quanto: CPU and training only
        assert training_problem(profile.training.base_quantization, profile.training.block_offload) is None


def test_a_broken_user_profile_is_one_error_line_from_the_cli(tmp_path, capsys):
    from glance_lite.generate import main

    path = write_profile(tmp_path, lambda d: d["components"]["transformer"].update(quantization="quanto-qint8"))
    assert main(["--model", "tiny/qwen-image", "--profile", str(path), "--prompt", "a cube", "--out", str(tmp_path / "a.png")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and "torchao-int8" in err[0] and "Traceback" not in err[0]
    assert not (tmp_path / "a.png").exists()


def test_unknown_profile_name_lists_the_builtin_ones_and_mentions_yaml_paths():
    with pytest.raises(ProfileError) as err:
        load_profile("4080")
    message = str(err.value)
    assert "Unknown profile '4080'" in message
    assert all(name in message for name in BUILTIN)
    assert "path to a YAML file" in message
    with pytest.raises(ProfileError, match="does not exist"):
        load_profile("no/such/profile.yaml")


# ---- auto selection ----------------------------------------------------------------------------------------------
def gpus(*cards, ram_gb=64):
    """Fake hardware: cards are (GiB, compute capability); each has 0.5 GiB taken by a desktop."""
    return Hardware(
        gpu_names=tuple(f"GPU{i}" for i in range(len(cards))),
        gpu_total_bytes=tuple(int(gb * GiB) for gb, _ in cards),
        gpu_free_bytes=tuple(int((gb - 0.5) * GiB) for gb, _ in cards),
        compute_capabilities=tuple(cc for _, cc in cards),
        system_ram_bytes=int(ram_gb * GiB),
    )


@pytest.mark.parametrize(
    "hardware, expected",
    [
        (gpus((24, 8.9)), {"4090"}),
        (gpus((24, 8.6), ram_gb=32), {"3090"}),  # Ampere: no fp8, so the int8 twin of the 4090 profile
        (gpus((16, 7.0)), {"v100-16gb"}),
        (gpus((32, 7.0)), {"v100-32gb"}),
        (gpus((16, 8.9)), {"16gb"}),
        (gpus((12, 8.6)), {"12gb"}),
        (gpus((8, 8.6)), {"8gb"}),
        (gpus((24, 8.9), (24, 8.9)), {"multi-gpu", "4090"}),
        (gpus((80, 8.0)), {"a100-80gb"}),
        (gpus((40, 8.0)), {"3090"}),  # bf16-capable: the fp16 V100 profile is not picked although it fits
        (Hardware(system_ram_bytes=16 * GiB), {"cpu"}),
    ],
)
def test_auto_picks_the_fastest_profile_that_fits(hardware, expected):
    profile, reason = select_profile("Qwen/Qwen-Image", 1024, 1024, hardware=hardware)
    assert isinstance(profile, Profile)
    assert profile.name in expected, reason
    assert profile.name in reason


def test_auto_says_plainly_when_nothing_fits():
    profile, reason = select_profile("Qwen/Qwen-Image", 1024, 1024, hardware=gpus((4, 8.6)))
    assert "No profile fits" in reason and profile.name == "8gb"
    profile, reason = select_profile("Qwen/Qwen-Image", 1024, 1024, hardware=gpus((11, 6.1)))
    assert profile.name == "cpu" and "compute capability" in reason


def test_hardware_detection_without_a_gpu_selects_the_cpu_profile():
    if __import__("torch").cuda.is_available():
        pytest.skip("this machine has a GPU")
    hardware = Hardware.detect()
    assert hardware.num_gpus == 0 and hardware.system_ram_bytes > 0
    profile, reason = select_profile("tiny/qwen-image", 64, 64)
    assert profile.name == "cpu" and "No CUDA GPU" in reason
