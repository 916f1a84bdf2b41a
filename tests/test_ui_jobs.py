"""The UI's Compare job without a browser: what a click on Compare writes, on the embedded pocket model at 64x64.

The browser tests (test_ui.py) compare samplers that run different methods; here both sides run the Glance method,
once with the family's split and once with a custom one, the comparison a user makes to try a split.
"""

from pathlib import Path

from glance_lite.png_settings import read_png_settings
from glance_lite.profiles import load_profile
from glance_lite.ui.jobs import compare_job
from glance_lite.ui.models import ModelCache
from glance_lite.ui.request import FIELDS, GenerationRequest
from glance_lite.ui.worker import Job


def test_compare_of_glance_and_a_custom_split_keeps_both_pictures_each_with_its_own_split(tmp_path):
    fields = dict.fromkeys(FIELDS)
    fields.update(
        prompt="a red circle on a blue background, top left", height=64, width=64, seed=0, model="pocket/qwen-image",
        profile="cpu", sampler="Glance (slow + fast)", base_steps=10, slow_steps="0,5", fast_steps="10,30",
        mode="consistent", true_cfg_scale="", adapters="none", lora_compat="trained",
        compare_left="Glance (slow + fast)", compare_right="Custom split and mode",
    )  # fmt: skip
    request = GenerationRequest.from_page(fields, tmp_path / "runs")
    comparison = compare_job(ModelCache(), request, load_profile("cpu"), tmp_path / "out")(Job("compare", None))

    assert comparison.left.path != comparison.right.path  # same method, same second: still two files
    left, right = read_png_settings(comparison.left.path), read_png_settings(comparison.right.path)
    assert left["split"] == {"slow": [0, 2, 4, 6, 8], "fast": [10, 20, 30, 40, 49]}  # the family's split
    assert right["split"] == {"slow": [0, 5], "fast": [10, 30]}  # the custom side's, from the page's fields
    assert (left["transformer_calls"], right["transformer_calls"]) == (20, 8)
    panels = read_png_settings(comparison.grid)["panels"]
    assert panels == {"glance (left)": left, "glance (right)": right}
    assert sorted(p.name for p in Path(tmp_path / "out").iterdir()) == sorted(
        p.name for p in (comparison.left.path, comparison.right.path, comparison.grid)
    )
