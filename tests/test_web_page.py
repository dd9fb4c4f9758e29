"""The browser page at `/`, in a real headless Chromium with a fake microphone.

Chromium plays a test recording as its microphone (`--use-file-for-fake-audio-capture`, looped),
so the page's whole path runs for real: getUserMedia, the AudioWorklet's resampling to 16 kHz
s16le, the WebSocket stream and the rendering of its results; then the upload path and the error
messages. `.ci/run` installs Debian's `chromium` and `chromium-driver`; only where they are missing
(a developer's machine) are the browser tests skipped.
"""

from __future__ import annotations

import re
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import httpx
import numpy as np
import pytest
import soundfile
import soxr
import trio
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support.ui import WebDriverWait
from trio_websocket import ConnectionRejected, open_websocket_url

from amira.client import open_stream_client
from amira.settings import Settings, SettingsError
from amira.testing.recordings import DATA, read_recording
from amira.testing.servers import embedded_settings, start_server
from amira.testing.ws_protocol import expect_complete, read_until_closed

RECORDING = DATA / "cards" / "005.wav"
REFERENCE = "eight of spades four of clubs seven of hearts"
FAKE_MIC_RATE = 48_000  # what a real microphone delivers; the worklet must resample it
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
needs_browser = pytest.mark.skipif(
    CHROMIUM is None or CHROMEDRIVER is None,
    reason="Debian's chromium and chromium-driver are not installed (.ci/run installs them)",
)
T = TypeVar("T")


def fake_microphone_file(path: Path) -> Path:
    """The recording with 1 s of silence either side, at 48 kHz, 16-bit PCM: Chromium loops it."""
    samples = read_recording(RECORDING)
    silence = np.zeros(16_000, dtype=np.float32)
    padded = np.concatenate([silence, samples, silence])
    soundfile.write(path, soxr.resample(padded, 16_000, FAKE_MIC_RATE), FAKE_MIC_RATE, subtype="PCM_16")
    return path


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[WebDriver]:
    """One headless Chromium for the module; its microphone plays `fake_microphone_file`."""
    root = tmp_path_factory.mktemp("chromium")
    microphone = fake_microphone_file(root / "microphone.wav")
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-extensions",
        "--autoplay-policy=no-user-gesture-required",
        "--use-fake-ui-for-media-stream",
        "--use-fake-device-for-media-stream",
        f"--use-file-for-fake-audio-capture={microphone}",
        f"--user-data-dir={root / 'profile'}",
    ):
        options.add_argument(flag)
    driver = webdriver.Chrome(options=options, service=Service(executable_path=str(CHROMEDRIVER)))
    try:
        yield driver
    finally:
        driver.quit()


async def in_browser(work: Callable[[], T]) -> T:
    """Selenium blocks: drive the browser from a thread while the server serves in this one."""
    return await trio.to_thread.run_sync(work)


def by_testid(driver: WebDriver, testid: str) -> object:
    return driver.find_element(By.CSS_SELECTOR, f'[data-testid="{testid}"]')


def text_of(driver: WebDriver, testid: str) -> str:
    return " ".join(by_testid(driver, testid).text.split())


def final_lines(driver: WebDriver) -> list[str]:
    lines = driver.find_elements(By.CSS_SELECTOR, '[data-testid="transcript"] [data-testid="final"]')
    return [" ".join(line.text.split()) for line in lines]


def open_page(driver: WebDriver, base: str, with_models: bool = True) -> None:
    driver.get(f"{base}/")
    wait = WebDriverWait(driver, 20)
    wait.until(lambda d: d.execute_script("return document.body.dataset.ready === 'true'"))
    if with_models:
        wait.until(
            lambda d: d.find_elements(By.CSS_SELECTOR, '[data-testid="model"] option[value="default"]')
        )


def wait_for_error(driver: WebDriver, needle: str, timeout: float = 20) -> str:
    WebDriverWait(driver, timeout).until(
        lambda d: by_testid(d, "error").is_displayed() and needle in text_of(d, "error")
    )
    return text_of(driver, "error")


@needs_browser
async def test_the_microphone_streams_and_shows_the_reference_transcript(
    nursery: trio.Nursery, browser: WebDriver
) -> None:
    base = await start_server(nursery, embedded_settings())

    def speak() -> tuple[list[str], str, str]:
        open_page(browser, base)
        start = by_testid(browser, "start")
        assert start.text == "Start microphone"
        start.click()
        WebDriverWait(browser, 10).until(lambda d: by_testid(d, "start").text == "Stop")
        # Partials first: the open line fills while the looped recording plays.
        WebDriverWait(browser, 45).until(lambda d: REFERENCE in text_of(d, "transcript"))
        partial_seen = text_of(browser, "transcript")
        by_testid(browser, "start").click()
        WebDriverWait(browser, 30).until(
            lambda d: by_testid(d, "start").text == "Start microphone" and final_lines(d)
        )
        return final_lines(browser), partial_seen, text_of(browser, "status")

    finals, partial_seen, status = await in_browser(speak)
    assert REFERENCE in partial_seen
    # Final lines (one for the whole stream, or one per segment where the server sends segments),
    # each with its start and end times.
    assert any(REFERENCE in line for line in finals), finals
    assert all(re.match(r"\d+\.\d\d–\d+\.\d\d s ", line) for line in finals), finals
    assert status.startswith("Stream complete")
    assert not by_testid(browser, "error").is_displayed()


@needs_browser
async def test_an_uploaded_file_shows_its_transcript_words_and_srt(
    nursery: trio.Nursery, browser: WebDriver
) -> None:
    base = await start_server(nursery, embedded_settings())

    def upload() -> tuple[list[str], str, int]:
        open_page(browser, base)
        by_testid(browser, "file").send_keys(str(RECORDING.resolve()))
        WebDriverWait(browser, 30).until(lambda d: any(REFERENCE in line for line in final_lines(d)))
        rows = browser.find_elements(By.CSS_SELECTOR, '[data-testid="words"] tbody tr')
        return final_lines(browser), by_testid(browser, "srt").get_attribute("textContent"), len(rows)

    lines, srt, rows = await in_browser(upload)
    assert lines[-1].endswith("005.wav") and REFERENCE in lines[-1]
    assert rows == len(REFERENCE.split())
    cues = [cue.splitlines() for cue in srt.strip().split("\n\n")]
    assert cues[0][0] == "1" and " --> " in cues[0][1] and cues[0][1].startswith("00:00:0")
    assert " ".join(cue[2] for cue in cues) == REFERENCE


@needs_browser
async def test_a_wrong_api_key_shows_the_error(nursery: trio.Nursery, browser: WebDriver) -> None:
    base = await start_server(nursery, embedded_settings(api_keys=("right-key",)))

    def with_keys() -> tuple[str, str, str]:
        open_page(browser, base, with_models=False)  # the page itself needs no key
        without = wait_for_error(browser, "API key")
        key = by_testid(browser, "api-key")
        key.send_keys("wrong-key")
        browser.execute_script(
            "document.querySelector('[data-testid=\"error\"]').hidden = true;"
            "arguments[0].dispatchEvent(new Event('change'))",
            key,
        )
        wrong = wait_for_error(browser, "API key")
        by_testid(browser, "start").click()  # the stream is refused too, and the page says why
        streamed = wait_for_error(browser, "API key")
        key.clear()
        key.send_keys("right-key")
        browser.execute_script("arguments[0].dispatchEvent(new Event('change'))", key)
        WebDriverWait(browser, 20).until(
            lambda d: d.find_elements(By.CSS_SELECTOR, '[data-testid="model"] option[value="default"]')
        )
        assert not by_testid(browser, "error").is_displayed()
        browser.execute_script("sessionStorage.clear()")
        return without, wrong, streamed

    for message in await in_browser(with_keys):
        assert "refused the API key" in message and "unauthorized" in message


@needs_browser
async def test_capacity_and_unknown_model_errors_are_explained(
    nursery: trio.Nursery, browser: WebDriver
) -> None:
    base = await start_server(nursery, embedded_settings(max_concurrent_streams=1))
    url = base.replace("http://", "ws://") + "/v2/decode/stream/default"
    async with open_stream_client(url) as holder:  # takes the only stream slot
        await holder.keepalive()

        def refused() -> str:
            open_page(browser, base)
            by_testid(browser, "start").click()
            return wait_for_error(browser, "capacity")

        capacity = await in_browser(refused)
        await holder.end()
        expect_complete(await read_until_closed(holder.connection))
    assert "capacity_exceeded" in capacity

    def unknown() -> str:
        open_page(browser, base)
        browser.execute_script(
            "const s = document.querySelector('[data-testid=\"model\"]');"
            "s.add(new Option('nope', 'nope')); s.value = 'nope';"
        )
        by_testid(browser, "start").click()
        return wait_for_error(browser, "no model set")

    assert "unknown_model" in await in_browser(unknown)


async def test_the_page_is_open_but_the_api_is_not(nursery: trio.Nursery) -> None:
    base = await start_server(nursery, embedded_settings(api_keys=("right-key",)))
    async with httpx.AsyncClient(timeout=30) as http:
        page = await http.get(f"{base}/")
        assert page.status_code == 200 and 'data-testid="start"' in page.text
        assert "script-src 'self'" in page.headers["Content-Security-Policy"]
        for name, content_type in (("app.js", "text/javascript"), ("pcm-worklet.js", "text/javascript")):
            asset = await http.get(f"{base}/web/{name}")
            assert asset.status_code == 200 and asset.headers["Content-Type"].startswith(content_type)
        assert (await http.get(f"{base}/web/..%2Fsettings.py")).status_code in (401, 404)
        assert (await http.get(f"{base}/web/nothing.js")).status_code == 404
        assert (await http.get(f"{base}/v2/models")).status_code == 401


async def test_the_page_origin_may_open_streams_other_origins_may_not(nursery: trio.Nursery) -> None:
    """Browsers send `Origin` on every WebSocket: the server's own page is allowed without
    CORS_ALLOW_ORIGINS, another site's page is not."""
    base = await start_server(nursery, embedded_settings())
    url = base.replace("http://", "ws://") + "/v2/decode/stream/default"
    async with open_websocket_url(url, extra_headers=[("Origin", base)]) as connection:
        await connection.send_message(b"\x00")
        expect_complete(await read_until_closed(connection))
    with pytest.raises(ConnectionRejected) as rejected:
        async with open_websocket_url(url, extra_headers=[("Origin", "http://elsewhere.example:8057")]):
            pass
    assert rejected.value.status_code == 403


async def test_web_ui_false_serves_no_page(nursery: trio.Nursery) -> None:
    base = await start_server(nursery, embedded_settings(web_ui=False))
    async with httpx.AsyncClient(timeout=30) as http:
        assert (await http.get(f"{base}/")).status_code == 404
        assert (await http.get(f"{base}/web/app.js")).status_code == 404


def test_web_ui_setting() -> None:
    assert Settings.from_env({}).web_ui_enabled
    assert not Settings.from_env({"TRITON_ENDPOINT": "http://triton:8000"}).web_ui_enabled
    assert Settings.from_env({"TRITON_ENDPOINT": "http://triton:8000", "WEB_UI": "true"}).web_ui_enabled
    assert not Settings.from_env({"WEB_UI": "off"}).web_ui_enabled
    with pytest.raises(SettingsError, match="WEB_UI"):
        Settings.from_env({"WEB_UI": "maybe"})
