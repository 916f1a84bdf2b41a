"""The phase plan: official timesteps, the reference sampler's trajectory, and a consistent alternative."""

import json
from pathlib import Path

import pytest
import torch

from glance_lite.sampler import euler_step
from glance_lite.schedule import PhaseSplit, base_plan, glance_plan, image_seq_len

CONFIGS = Path(__file__).resolve().parent.parent / "glance_lite" / "configs"
SEQ_1024 = image_seq_len(1024, 1024)

# Reference notes §1: the true 1024x1024 schedule values at the Glance indices.
TABLES = {
    "qwen-image": ([1000.0, 979.1915, 957.5157, 934.9171, 911.3354], [886.7053, 745.0728, 562.9505, 320.0802, 20.0]),
    "flux1-dev": ([1000.0, 986.9786, 973.2042, 958.6094, 943.1188], [926.6473, 825.7017, 677.9868, 441.1997, 60.5503]),
}


def scheduler_config(family: str) -> dict:
    return json.loads((CONFIGS / family / "scheduler_config.json").read_text())


@pytest.mark.parametrize("family", sorted(TABLES))
def test_1024_timesteps_equal_the_official_tables(family):
    plan = glance_plan(scheduler_config(family), SEQ_1024, mode="consistent")
    slow, fast = TABLES[family]
    assert [s.timestep for s in plan.phase("slow")] == pytest.approx(slow, abs=1e-3)
    assert [s.timestep for s in plan.phase("fast")] == pytest.approx(fast, abs=1e-3)


def test_reference_mode_tells_the_model_bf16_rounded_1024_timesteps_at_every_size():
    for height, width in ((1024, 1024), (512, 512), (768, 1344)):
        plan = glance_plan(scheduler_config("qwen-image"), image_seq_len(height, width), mode="reference")
        assert [s.timestep for s in plan.phase("slow")] == [1000, 980, 956, 936, 912]
        assert [s.timestep for s in plan.phase("fast")] == [888, 744, 564, 320, 20]


def run_with_oracle(plan):
    """Follow the plan with the perfect velocity v = noise - x0; return x0, noise and the latents after each phase."""
    gen = torch.Generator().manual_seed(0)
    x0, noise = torch.randn(1, 16, 64, generator=gen), torch.randn(1, 16, 64, generator=gen)
    x, after = noise.clone(), {}
    for step in plan.steps:
        x = euler_step(x, noise - x0, step)
        after[step.phase] = x
    return x0, noise, after


def sigma_of(x, x0, noise) -> float:
    """x = x0 + sigma * (noise - x0) -> sigma (least squares)."""
    d = noise - x0
    return float(((x - x0) * d).sum() / (d * d).sum())


def test_reference_mode_reproduces_the_official_trajectory_at_1024():
    plan = glance_plan(scheduler_config("qwen-image"), SEQ_1024, mode="reference")
    x0, noise, after = run_with_oracle(plan)
    assert sigma_of(after["slow"], x0, noise) == pytest.approx(0.946335, abs=1e-5)
    assert sigma_of(after["fast"], x0, noise) == pytest.approx(-0.053665, abs=1e-5)
    assert plan.final_sigma == pytest.approx(-0.053665, abs=1e-5)
    # The fast phase restarts from sigma 1 on a fresh 5-step schedule, as the official sampler does.
    assert [round(s.sigma, 4) for s in plan.phase("fast")] == [1.0, 0.8367, 0.6326, 0.3701, 0.02]


def test_consistent_mode_lands_on_the_clean_image_under_the_oracle():
    plan = glance_plan(scheduler_config("qwen-image"), SEQ_1024, mode="consistent")
    x0, noise, after = run_with_oracle(plan)
    assert torch.allclose(after["fast"], x0, atol=1e-5)
    # Each step starts where the previous one ended: the latent really is at sigma(t_i) when told t_i.
    for a, b in zip(plan.steps, plan.steps[1:]):
        assert a.sigma_next == b.sigma
        assert b.timestep == pytest.approx(b.sigma * 1000, rel=1e-6)


def test_phase_split_is_data_a_4_plus_4_plan_has_8_steps():
    split = PhaseSplit(slow=(0, 2, 4, 6), fast=(10, 25, 40, 49))
    plan = glance_plan(scheduler_config("qwen-image"), SEQ_1024, split, mode="consistent")
    assert len(plan.phase("slow")) == 4 and len(plan.phase("fast")) == 4
    assert plan.final_sigma == pytest.approx(0.0, abs=1e-6)


def test_base_plan_is_the_stock_n_step_schedule():
    plan = base_plan(scheduler_config("qwen-image"), SEQ_1024, 50)
    assert len(plan.steps) == 50 and plan.phases == ("base",)
    assert plan.steps[10].timestep == pytest.approx(886.7053, abs=1e-3)
    assert plan.final_sigma == pytest.approx(0.0, abs=1e-6)


@pytest.mark.parametrize(
    "slow, fast, message",
    [
        ((0, 2, 4), (10, 50), "out of range"),
        ((0, 2, -1), (10, 20), "out of range"),
        ((0, 4, 2), (10, 20), "strictly increasing"),
        ((0, 2, 12), (10, 20), "strictly increasing"),
        ((), (), "no steps"),
    ],
)
def test_bad_schedule_indices_are_refused_with_a_fix(slow, fast, message):
    with pytest.raises(ValueError, match=message):
        PhaseSplit(slow=slow, fast=fast)


def test_cli_style_index_strings_parse_or_fail_clearly():
    assert PhaseSplit.parse("0,2,4,6", "10,20,30,49").slow == (0, 2, 4, 6)
    with pytest.raises(ValueError, match="comma-separated integers"):
        PhaseSplit.parse("0,two", None)


def test_the_small_numeric_helpers_equal_the_diffusers_functions_they_stand_in_for():
    """glance_lite computes the shift and the edit condition size itself, so that importing the schedule and the
    families does not import two whole pipelines; the numbers must stay the stock pipelines'."""
    from diffusers.pipelines.qwenimage.pipeline_qwenimage import calculate_shift as stock_shift
    from diffusers.pipelines.qwenimage.pipeline_qwenimage_edit import calculate_dimensions as stock_dimensions

    from glance_lite.families.qwen_image_edit import calculate_dimensions
    from glance_lite.schedule import calculate_shift

    for family in sorted(TABLES):
        config = scheduler_config(family)
        keys = ("base_image_seq_len", "max_image_seq_len", "base_shift", "max_shift")
        args = [config[k] for k in keys if k in config]
        for seq_len in (16, 256, 1024, 4096, 6144, 8192):
            assert calculate_shift(seq_len, *args) == stock_shift(seq_len, *args)
    for area in (64 * 64, 512 * 512, 1024 * 1024):
        for ratio in (1.0, 4 / 3, 3 / 4, 16 / 9, 0.37, 2.71):
            assert calculate_dimensions(area, ratio) == stock_dimensions(area, ratio)[:2]
