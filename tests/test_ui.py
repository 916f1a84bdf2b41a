"""The browser UI as a person uses it: `python -m glance_lite.ui` on a free localhost port, driven by a real headless
Chromium (Debian's chromium + chromedriver under Selenium), on the embedded pocket model at 64x64 with the cpu profile.

One server for the whole module; each test opens the page afresh (a new session), as a new visitor would.
"""

import io
import re
import signal
from contextlib import contextmanager
from pathlib import Path

import psutil
import pytest
from PIL import Image

pytest.importorskip("gradio", reason="the UI extra is not installed: pip install -c constraints.txt -e '.[ui]'")
pytest.importorskip("selenium", reason="the browser driver is not installed: pip install -c constraints.txt -e '.[test]'")

from glance_lite.data import file_digest  # noqa: E402
from glance_lite.png_settings import read_png_settings  # noqa: E402
from glance_lite.pocket import checker, world  # noqa: E402
from glance_lite.ui import browser  # noqa: E402
from glance_lite.ui.training import LOG_FILE, checkpoint_steps  # noqa: E402

if browser.missing_browser():
    pytest.skip(f"browser tests need Chromium: {browser.missing_browser()}", allow_module_level=True)

RED = "a red circle on a blue background, top left"
YELLOW = "a yellow square on a black background, bottom right"


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    return tmp_path_factory.mktemp("ui")


@pytest.fixture(scope="module")
def server(workdir):
    with browser.serve(workdir) as url:
        yield url


@pytest.fixture(scope="module")
def downloads(tmp_path_factory):
    return tmp_path_factory.mktemp("downloads")


@pytest.fixture(scope="module")
def driver(downloads):
    chromium = browser.chromium(downloads)
    yield chromium
    chromium.quit()


@pytest.fixture
def page(server, driver):
    page = browser.Page(driver, server)
    page.pick("profile", "cpu")
    return page


def generated_png(page, elem_id="gen-image", other_than=None) -> tuple[bytes, str]:
    url = page.wait_for_image(elem_id, other_than=other_than)
    return page.download(url), url


def training_process(run: Path) -> psutil.Process | None:
    """The server's training child for `run` (the process writing the run's log), or None before it starts."""
    me = psutil.Process()
    servers = {p.pid for p in me.children()}
    for process in me.children(recursive=True):
        try:
            if process.pid not in servers and any(Path(f.path) == run / LOG_FILE for f in process.open_files()):
                return process
        except psutil.Error:  # it ended meanwhile, or is not ours to read
            continue
    return None


def sigterm_pending(process: psutil.Process) -> bool:
    """Whether a SIGTERM waits for this stopped process (Stop has reached it), or it is gone already."""
    try:
        status = Path(f"/proc/{process.pid}/status").read_text()
    except FileNotFoundError:
        return True
    fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
    pending = int(fields["SigPnd"], 16) | int(fields["ShdPnd"], 16)
    return fields["State"].strip().startswith(("Z", "X")) or bool(pending >> (signal.SIGTERM - 1) & 1)


@contextmanager
def paused(process: psutil.Process):
    """The process stopped (SIGSTOP) for the block, so it gets no further meanwhile; continued (SIGCONT) after it."""
    process.suspend()
    try:
        yield
    finally:
        try:
            process.resume()
        except psutil.NoSuchProcess:
            pass


def test_generate_draws_the_prompted_colour_at_64x64_and_reuses_the_loaded_model(page, downloads):
    previous = None
    for prompt in (RED, YELLOW):
        page.fill("prompt", prompt)
        page.click("generate")
        png, previous = generated_png(page, other_than=previous)
        image = Image.open(io.BytesIO(png))
        assert image.size == (64, 64)
        assert checker.read_image(image.convert("RGB")).colour == world.Scene.parse(prompt).colour
        settings = read_png_settings(page.download_by_click("gen-download", downloads))  # the download keeps its settings
        assert (settings["prompt"], settings["seed"], settings["model"], settings["profile"]) == (prompt, 0, "pocket/qwen-image", "cpu")
        assert (settings["height"], settings["width"], settings["base_steps"]) == (64, 64, None)
    assert "transformer loaded 1x, 2 run(s)" in page.text("loaded-models")


def test_refusals_show_their_reason_on_the_page_and_the_server_keeps_serving(page, tmp_path):
    page.fill("height", 60)
    page.click("generate")
    assert "height=60 is not a multiple of 16" in page.wait_for_text("gen-status", "Error:")
    page.fill("height", 64)
    page.fill("prompt", "   ")
    page.click("generate")
    assert "The prompt is empty" in page.wait_for_text("gen-status", "prompt is empty")

    page.fill("prompt", RED)
    page.open_settings()
    page.pick("adapters", "uploaded files (right)")
    corrupt = tmp_path / "slow.safetensors"
    corrupt.write_bytes(b"\x00" * 64)
    page.element("slow-file", "input[type=file]").send_keys(str(corrupt))
    page.wait_for_text("slow-file", "64.0 B")  # the upload is listed with its size
    page.click("generate")
    status = page.wait_for_text("gen-status", "is not a safetensors file", "Unexpected error")
    assert "slow.safetensors is not a safetensors file" in status and "Traceback" not in status  # lora.py's own words

    page.pick("adapters", "none: the base weights only")
    page.click("generate")
    png, _ = generated_png(page)
    assert Image.open(io.BytesIO(png)).size == (64, 64)


def test_a_plan_that_cannot_fit_is_refused_with_the_planners_reason_before_any_weights_load(page):
    page.pick("model", "Qwen/Qwen-Image")  # the size follows the model: 1024x1024, planned on the cpu profile
    page.click("generate")
    status = page.wait_for_text("gen-status", "Refused", "Error", timeout=120)
    assert "Refused before loading any weights" in status and "does NOT fit" in status
    assert "NOT fit" in page.text("gen-plan") and "vae_decode" in page.text("gen-plan")
    assert "Qwen/Qwen-Image" not in page.text("loaded-models")


def test_compare_renders_glance_and_the_base_from_the_same_noise_side_by_side(page, downloads):
    page.open_settings()
    page.fill("base-steps", 10)
    page.tab("compare")
    page.click("compare")
    glance_png, _ = generated_png(page, "cmp-glance")
    base_png, _ = generated_png(page, "cmp-base")
    glance, base = read_png_settings(io.BytesIO(glance_png)), read_png_settings(io.BytesIO(base_png))
    assert (glance["base_steps"], base["base_steps"], glance["seed"]) == (None, 10, base["seed"])
    table = page.wait_for_text("cmp-table", "PSNR")
    assert re.search(r"PSNR between the two images: \d+\.\d dB", table)
    assert re.search(r"transformer calls\s+20\s+20", table)  # 10 steps x 2 CFG passes each
    grid = page.download_by_click("cmp-download", downloads)
    assert Image.open(grid).width > Image.open(grid).height
    assert set(read_png_settings(grid)["panels"]) == {"glance", "base-10"}  # the sheet names how each half was made


def test_compare_sets_glance_beside_a_few_step_lora_once_its_file_is_given(page, tmp_path):
    """A few-step LoRA (a random one in Qwen-Image-Lightning's key layout) uploaded: the page offers its sampler and
    Compare renders Glance beside it from the same noise; the few-step side runs without guidance, one call a step."""
    from test_fewstep import _random_modules, write_layout

    lightning = write_layout(tmp_path / "pocket-lightning.safetensors", _random_modules("pocket/qwen-image", rank=4, seed=9, std=0.01),
                             "diffusion_model-down-up-alpha")  # fmt: skip
    page.open_settings()
    page.fill("fewstep-steps", 4)
    page.element("fewstep-file", "input[type=file]").send_keys(str(lightning))
    page.wait_for_text("fewstep-file", "pocket-lightning")
    page.tab("compare")
    page.wait_for_value("cmp-right", "Few-step LoRA (file below), N steps")  # offered, and set against Glance
    page.click("compare")
    left_png, _ = generated_png(page, "cmp-glance")
    right_png, _ = generated_png(page, "cmp-base")
    left, right = read_png_settings(io.BytesIO(left_png)), read_png_settings(io.BytesIO(right_png))
    assert (left["method"], right["method"], left["seed"]) == ("glance", "fewstep-4", right["seed"])
    assert (right["transformer_calls"], right["true_cfg_scale"], [e["phase"] for e in right["loras"]]) == (4, 1.0, ["fewstep"])
    table = page.wait_for_text("cmp-table", "PSNR")
    assert re.search(r"transformer calls\s+20\s+4", table)


def test_the_pocket_model_offers_its_shipped_few_step_lora_without_any_file(page):
    """The pocket model ships LoRAs distilled from it: the few-step sampler is offered with no upload, at N = 4 (the
    most steps shipped), and samples with the shipped file, without guidance, one call a step."""
    page.open_settings()
    page.wait_for_value("fewstep-steps", "4")
    page.fill("prompt", YELLOW)
    page.choose("sampler", "Few-step LoRA (file below), N steps")
    page.click("generate")
    png, _ = generated_png(page)
    settings = read_png_settings(io.BytesIO(png))
    assert (settings["method"], settings["transformer_calls"], settings["true_cfg_scale"]) == ("fewstep-4", 4, 1.0)
    assert [Path(e["name"]).name for e in settings["loras"]] == ["fewstep-4.safetensors"]
    assert checker.read_image(Image.open(io.BytesIO(png)).convert("RGB")).colour == world.Scene.parse(YELLOW).colour


def test_a_cancelled_generation_frees_the_worker_for_the_next_user_who_waited_its_turn(page, server, driver):
    page.open_settings()
    page.choose("sampler", "Base model, N steps")
    page.fill("base-steps", 50000)  # 100,000 transformer calls: still running when Stop arrives, even on a fast CPU
    page.click("generate")
    page.wait_for_text("gen-progress", "denoising step")
    first_tab = driver.current_window_handle

    driver.switch_to.new_window("tab")  # a second visitor
    other = browser.Page(driver, server)
    other.pick("profile", "cpu")
    other.click("generate")
    assert "1 request(s) ahead" in other.wait_for_text("gen-progress", "ahead")

    driver.switch_to.window(first_tab)
    page.click("generate-stop")
    assert "Cancelled" in page.wait_for_text("gen-status", "Cancelled", "Error")
    driver.switch_to.window(other.driver.window_handles[-1])
    png, _ = generated_png(other)
    assert Image.open(io.BytesIO(png)).size == (64, 64)
    assert "transformer loaded 1x" in other.text("loaded-models")
    driver.close()
    driver.switch_to.window(first_tab)


@pytest.mark.skipif(not Path("/proc/self/status").is_file(), reason="pausing the trainer reads /proc (Linux)")
def test_stop_keeps_the_last_checkpoint_train_resumes_from_it_and_its_adapters_generate_at_once(page, workdir):
    run = workdir / "train" / "sample-run"
    page.tab("train")
    page.click("train-sample")
    page.wait_for_image("train-image")
    page.fill("train-steps", 20)
    page.fill("train-run", run.name)
    page.click("train")
    browser.until(lambda: checkpoint_steps(run), 180, "the first checkpoint (step 10 of 20)", poll=0.02)
    trainer = browser.until(lambda: training_process(run), 10, "the training process")
    with paused(trainer):  # however long Stop takes to arrive, the run cannot train on or finish meanwhile
        kept = checkpoint_steps(run)
        page.click("train-stop")
        browser.until(lambda: sigterm_pending(trainer), 60, "Stop to reach the training process")
    status = page.wait_for_text("train-status", "Stopped", "Error")
    assert "Stopped" in status and all(f"{phase} at step {step}" in status for phase, step in kept.items()), (status, kept)
    assert not (run / "fast.safetensors").exists()  # stopped before the end: the last phase has no adapter yet

    page.click("train")
    assert "Done" in page.wait_for_text("train-status", "Done", "Error", timeout=180)
    log = page.element("train-log", "textarea").get_attribute("value")
    assert f"Resuming the slow phase from {run / 'checkpoints' / 'slow'}" in log and f"(step {kept['slow']} of 20)" in log, log
    assert page.driver.find_elements("css selector", "#train-loss canvas, #train-loss svg")  # the loss curve is drawn

    page.tab("generate")
    page.click("generate")
    png, _ = generated_png(page)
    loras = {a["phase"]: a["sha256"] for a in read_png_settings(io.BytesIO(png))["loras"]}
    assert loras == {p: file_digest(run / f"{p}.safetensors") for p in ("slow", "fast")}
