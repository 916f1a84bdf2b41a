"""The UI served on a free localhost port and driven by a real headless Chromium: for the tests and the screenshots.

Uses Debian's `chromium` and `chromedriver` (`apt-get install chromium chromium-driver`) through Selenium (the
`test` extra), pointed at those binaries, so nothing is downloaded. `serve()` starts `python -m glance_lite.ui` as
its own process (the command a user runs) from this checkout; `Page` types, clicks and waits the way a person would.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path

from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.common.exceptions import StaleElementReferenceException
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.support import expected_conditions as ec
from selenium.webdriver.support.ui import WebDriverWait

CHROMIUM_NAMES = ("chromium", "chromium-browser")
DRIVER_NAMES = ("chromedriver",)
SERVER_LOG = "server.log"
REDRAW_SECONDS = 10.0  # how long a page action is retried while Gradio keeps redrawing its element


def _which(names) -> str | None:
    return next((path for path in map(shutil.which, names) if path), None)


def missing_browser() -> str | None:
    """Why a browser test cannot run here, or None."""
    if not _which(CHROMIUM_NAMES):
        return "no chromium on PATH (apt-get install chromium chromium-driver)"
    if not _which(DRIVER_NAMES):
        return "no chromedriver on PATH (apt-get install chromium-driver)"
    return None


class PortTaken(OSError):
    """The server could not bind its port: another process holds it."""


# What `python -m glance_lite.ui` prints once its server listens (Gradio's launch), and what it says when the port it
# was given is taken (Gradio's start_server, for uvicorn's EADDRINUSE).
_LISTENING = re.compile(r"Running on local URL:\s+(https?://[^\s/]+:(\d+))")
_PORT_TAKEN = ("Cannot find empty port", "address already in use")


def _candidate_port() -> int:
    """A port nothing listens on at this instant: only a candidate. The server binds it itself, and `serve` starts
    it again on another candidate if some other process took the port meanwhile."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def serve(workdir: Path, port: int | None = None, timeout: float = 180.0, attempts: int = 5):
    """Run `python -m glance_lite.ui` until the block ends; yields its URL. Output: workdir/server.log.

    With `port`, the server listens there (PortTaken if another process holds it). Without, on a free port: the
    server binds a candidate itself, and on a taken one (EADDRINUSE) it is started again on another, up to
    `attempts` times. Gradio's launch cannot take port 0 (it checks its own URL, ":0", before serving).
    """
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    for attempt in range(1, attempts + 1):
        server, log, url = _start(workdir, port or _candidate_port(), timeout)
        if url is not None:
            break
        if port is not None or attempt == attempts:
            raise PortTaken(f"The UI server found its port taken {attempt} time(s):\n{_log_tail(workdir)}")
    try:
        yield url
    finally:
        _stop(server, log)


def _start(workdir: Path, port: int, timeout: float):
    """Start the server on `port`; (process, log file, URL) once it answers, or URL None if the port was taken."""
    checkout = str(Path(__file__).resolve().parents[2])  # run THIS checkout's code, whatever is installed
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([checkout, os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep),
           "HF_HUB_OFFLINE": "1", "GRADIO_ANALYTICS_ENABLED": "False", "PYTHONUNBUFFERED": "1"}  # fmt: skip
    log = open(workdir / SERVER_LOG, "w")  # noqa: SIM115 - closed by _stop, after the server
    server = subprocess.Popen(
        [sys.executable, "-m", "glance_lite.ui", "--port", str(port), "--workdir", str(workdir)],
        stdout=log, stderr=subprocess.STDOUT, env=env, cwd=workdir,
    )  # fmt: skip
    try:
        url = _wait_until_up(server, timeout, workdir)
    except BaseException:
        _stop(server, log)
        raise
    if url is None:
        _stop(server, log)
    return server, log, url


def _stop(server: subprocess.Popen, log) -> None:
    server.terminate()
    try:
        server.wait(timeout=20)
    except subprocess.TimeoutExpired:
        server.kill()
        server.wait(timeout=20)
    log.close()


def _log_tail(workdir: Path) -> str:
    return (Path(workdir) / SERVER_LOG).read_text(errors="replace")[-3000:]


def _wait_until_up(server: subprocess.Popen, timeout: float, workdir: Path) -> str | None:
    """The server's URL once it says where it listens (the port it bound) and that URL answers; None if it exited
    because its port was taken."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            if any(words in _log_tail(workdir) for words in _PORT_TAKEN):
                return None
            raise RuntimeError(f"The UI server exited with code {server.returncode}:\n{_log_tail(workdir)}")
        listening = _LISTENING.search((workdir / SERVER_LOG).read_text(errors="replace"))
        if listening:
            url = listening.group(1).replace("0.0.0.0", "127.0.0.1") + "/"
            try:
                with urllib.request.urlopen(url, timeout=2) as response:
                    if response.status == 200:
                        return url
            except OSError:
                pass
        time.sleep(0.2)
    raise TimeoutError(f"The UI server did not answer within {timeout:.0f} s:\n{_log_tail(workdir)}")


def until(condition, timeout: float, what: str, poll: float = 0.05):
    """Call `condition()` every `poll` seconds until it returns something true, and return that; TimeoutError naming
    `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise TimeoutError(f"Waited {timeout:.0f} s for {what}.")
        time.sleep(poll)


def chromium(downloads: Path | None = None, width: int = 1280, height: int = 1800) -> webdriver.Chrome:
    """A headless Chromium (Debian's binary and driver) under Selenium; files it downloads go to `downloads`."""
    options = webdriver.ChromeOptions()
    options.binary_location = _which(CHROMIUM_NAMES)
    if downloads is not None:
        options.add_experimental_option("prefs", {"download.default_directory": str(downloads), "download.prompt_for_download": False})
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu", f"--window-size={width},{height}"):
        options.add_argument(flag)
    return webdriver.Chrome(service=Service(_which(DRIVER_NAMES)), options=options)


def _again_if_redrawn(action):
    """Retry a page action whose element was redrawn meanwhile (Gradio re-renders a component it updates)."""

    def retried(self, *args, **kwargs):  # each try looks the element up afresh (Page.element waits for it)
        deadline = time.monotonic() + REDRAW_SECONDS
        while True:
            try:
                return action(self, *args, **kwargs)
            except StaleElementReferenceException:
                if time.monotonic() >= deadline:
                    raise
                time.sleep(0.1)

    return retried


class Page:
    """The UI page in a browser, addressed by the elem_ids `app.py` gives its components."""

    def __init__(self, driver: webdriver.Chrome, url: str, timeout: float = 60.0):
        self.driver, self.url, self.timeout = driver, url, timeout
        driver.get(url)
        self.element("prompt")

    def _until(self, condition, timeout: float | None = None):
        return WebDriverWait(self.driver, timeout or self.timeout, poll_frequency=0.1).until(condition)

    def _reveal(self, element):
        self.driver.execute_script("arguments[0].scrollIntoView({block: 'center'});", element)
        return element

    def element(self, elem_id: str, css: str = "", timeout: float | None = None):
        """The element with this elem_id, or the elements matching `css` (comma-separated) inside it."""
        selector = ", ".join(f"#{elem_id} {part.strip()}" for part in css.split(",")) if css else f"#{elem_id}"
        return self._until(ec.presence_of_element_located((By.CSS_SELECTOR, selector)), timeout)

    @_again_if_redrawn
    def fill(self, elem_id: str, value) -> None:
        """Replace the text of a textbox or number field, as typing would."""
        field = self._reveal(self.element(elem_id, "textarea, input"))
        field.send_keys(Keys.CONTROL, "a")
        field.send_keys(Keys.DELETE)
        field.send_keys(str(value))
        self.driver.execute_script("arguments[0].blur();", field)  # number fields commit their value on blur

    @_again_if_redrawn
    def pick(self, elem_id: str, value: str) -> None:
        """Choose `value` in a dropdown: type it, then click the matching option (or confirm a custom value)."""
        field = self._reveal(self.element(elem_id, "input"))
        field.click()
        field.send_keys(Keys.CONTROL, "a")
        field.send_keys(Keys.DELETE)
        field.send_keys(value)
        options = [o for o in self.driver.find_elements(By.CSS_SELECTOR, '[role="option"]') if o.get_attribute("aria-label") == value]
        if options:
            options[0].click()
        else:
            field.send_keys(Keys.ENTER)
        self.driver.execute_script("arguments[0].blur();", field)

    @_again_if_redrawn
    def choose(self, elem_id: str, label: str) -> None:
        """Click the radio button labelled `label`."""
        options = self.element(elem_id).find_elements(By.CSS_SELECTOR, "label")
        self._reveal(next(e for e in options if e.text.strip() == label)).click()

    @_again_if_redrawn
    def click(self, elem_id: str, css: str = "") -> None:
        self._reveal(self.element(elem_id, css)).click()

    def tab(self, tab_id: str) -> None:
        """Switch to the tab with this id (generate, compare, train)."""
        self._until(ec.element_to_be_clickable((By.CSS_SELECTOR, f'button[role="tab"][data-tab-id="{tab_id}"]'))).click()

    def open_settings(self, opened: bool = True) -> None:
        """Open (or close) the 'Sampler and LoRAs' accordion, closed when the page loads."""
        if bool(self.driver.find_elements(By.CSS_SELECTOR, "#base-steps")) != opened:
            self.click("sampler-settings", "button.label-wrap")
        if opened:
            self.element("base-steps")

    def text(self, elem_id: str) -> str:
        return self.element(elem_id).text

    def wait_for_text(self, elem_id: str, *needles: str, timeout: float | None = None) -> str:
        """Wait until the element's text contains any of `needles`; returns the text."""
        self._until(lambda d: any(n in self.text(elem_id) for n in needles), timeout)
        return self.text(elem_id)

    def wait_for_value(self, elem_id: str, value: str, timeout: float | None = None) -> str:
        """Wait until the field (a dropdown's or textbox's input) holds `value`."""
        self._until(lambda d: self.element(elem_id, "input, textarea").get_attribute("value") == value, timeout)
        return value

    def wait_for_pattern(self, elem_id: str, pattern: str, timeout: float | None = None) -> str:
        """Wait until the element's text matches the regular expression `pattern`; returns the text."""
        self._until(lambda d: re.search(pattern, self.text(elem_id)), timeout)
        return self.text(elem_id)

    def wait_for_image(self, elem_id: str, other_than: str | None = None, timeout: float | None = None) -> str:
        """Wait for the image component to show a picture (a different one than `other_than`); returns its URL."""

        def src(driver):
            images = driver.find_elements(By.CSS_SELECTOR, f"#{elem_id} img")
            url = images[0].get_attribute("src") if images else None
            return url if url and url != other_than else False

        return self._until(src, timeout)

    def download_by_click(self, elem_id: str, folder: Path, timeout: float | None = None) -> Path:
        """Click a download button and wait for the file it saves into `folder` (the browser's download folder)."""
        before = set(Path(folder).iterdir())

        def new_file(driver):  # Chromium writes hidden or .crdownload files first, then renames them
            done = [p for p in Path(folder).iterdir() if p not in before and not p.name.startswith(".") and p.suffix != ".crdownload"]
            return done[0] if done else False

        self.click(elem_id)
        return self._until(new_file, timeout)

    def download(self, url: str) -> bytes:
        with urllib.request.urlopen(url, timeout=30) as response:
            return response.read()

    def screenshot(self, path: Path) -> Path:
        """The whole page as a PNG (the window grows to the page's height first)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        width = self.driver.get_window_size()["width"]
        height = self.driver.execute_script("return document.documentElement.scrollHeight")
        self.driver.set_window_size(width, height + 120)  # + the window's own frame
        self.driver.execute_script("window.scrollTo(0, 0);")
        self.driver.save_screenshot(str(path))
        return path
