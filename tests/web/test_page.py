"""The draw-a-digit page (server/web) in a real headless Chromium, served by a real
`python -m server --http-port 0` on the served repository: MNIST test digits drawn on the
pad with pointer events, a PNG opened through the file picker, the page's MNIST conversion
against client/images.py, a failing model's error, touch drawing, keyboard use and the
layout at phone width.

The browser is Debian's `chromium` (scripts/test.sh installs it when missing), or the one
$ZOO_CHROMIUM names, driven by Playwright through `executable_path` (Playwright's own browser
download is not used); the tests skip only when no browser can be found.

`ZOO_WEB_SCREENSHOT=docs/web.png pytest tests/web` saves the desktop screenshot that the
drawing test takes (the one in the README) to that path.
"""

from __future__ import annotations

import base64
import io
import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image
from playwright.sync_api import Browser, Page, expect, sync_playwright

from client import ZooClient
from client.images import to_tensor
from zoo.data import load_mnist

ROOT = Path(__file__).resolve().parents[2]
DIGIT_7 = ROOT / "docs" / "examples" / "digit_7.png"
DIGIT_2 = ROOT / "docs" / "examples" / "digit_2.png"
DESKTOP = {"width": 1280, "height": 900}
PHONE = {"width": 360, "height": 780}
# A round of answers from every model; generous for a busy 2-core machine.
ANSWER_TIMEOUT_MS = 30_000
# The page does client/images.py's arithmetic step for step (Pillow's fixed-point grayscale
# and Lanczos weights and pass order, float32 where numpy uses float32; Chromium lays
# transparent pixels on white exactly as Pillow does), so the tensors agree to float32
# rounding: every comparison below found them identical.
SAME_TENSOR_ATOL = 1e-6
# MNIST pixels drawn as pen strokes: those at least this bright.
INK_LEVEL = 128


def _chromium() -> str | None:
    named = os.environ.get("ZOO_CHROMIUM")
    if named:
        return named
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        found = shutil.which(name)
        if found:
            return found
    return None


@dataclass
class WebServer:
    url: str  # the page, http://127.0.0.1:PORT/
    address: str  # gRPC HOST:PORT
    models: list[str]  # the ready models, from the repository index over gRPC


@pytest.fixture(scope="module")
def web_server(
    request: pytest.FixtureRequest,
    served_repository: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[WebServer]:
    """One server for the module, with model control (to make a model fail on purpose)."""
    # launch_server lives in the root conftest, which importlib test mode cannot import by
    # name; pytest registers every conftest module as a plugin named by its path.
    conftest = request.config.pluginmanager.get_plugin(str(ROOT / "tests" / "conftest.py"))
    assert conftest is not None, "tests/conftest.py (launch_server) was not loaded"
    log_path = tmp_path_factory.mktemp("web_server") / "server.log"
    server = conftest.launch_server(served_repository, "--allow-model-control", log_path=log_path)
    try:
        assert server.http_port, f"the server announced no HTTP port:\n{server.log()}"
        with ZooClient(server.address) as client:
            models = sorted({m.name for m in client.list_models() if m.ready})
        yield WebServer(f"{server.http_url}/", server.address, models)
    finally:
        server.stop()


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    executable = _chromium()
    if executable is None:
        pytest.skip("no Chromium found (apt-get install chromium, or set ZOO_CHROMIUM)")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=executable)
        yield browser
        browser.close()


def open_page(browser: Browser, server: WebServer, **context: Any) -> tuple[Page, list[str]]:
    """The page in a fresh browser context, once it lists every served model, and the list
    that collects the errors its scripts raise."""
    page = browser.new_context(**context).new_page()
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    # Playwright asks Chromium to hand it file pickers when the first "filechooser" listener
    # appears, without waiting for the answer: a listener added here, long before any click,
    # makes sure a picker opened later reaches expect_file_chooser.
    page.on("filechooser", lambda chooser: None)
    page.goto(server.url)
    expect(page.locator("#models > li")).to_have_count(len(server.models))
    return page, errors


@pytest.fixture
def desktop(browser: Browser, web_server: WebServer) -> Iterator[Page]:
    page, errors = open_page(browser, web_server, viewport=DESKTOP)
    yield page
    page.context.close()
    assert errors == [], f"the page raised: {errors}"


@dataclass(frozen=True)
class Answer:
    state: str  # done, error, busy or idle
    prediction: str | None
    error: str


def answers(page: Page) -> dict[str, Answer]:
    """Each model's card once every model has answered the pad's current input."""
    version = page.locator("#pad").get_attribute("data-input-version")
    done = page.locator(f'#models[data-state="done"][data-input-version="{version}"]')
    expect(done).to_be_attached(timeout=ANSWER_TIMEOUT_MS)
    cards = page.locator("#models > li").evaluate_all(
        """cards => cards.map(card => [card.dataset.model, card.dataset.state,
            card.dataset.prediction ?? null, card.querySelector('.error').textContent])"""
    )
    return {name: Answer(state, prediction, error) for name, state, prediction, error in cards}


def assert_majority_reads(found: dict[str, Answer], server: WebServer, label: int) -> None:
    assert sorted(found) == server.models
    failed = {name: a.error for name, a in found.items() if a.state != "done"}
    assert failed == {}, f"models that did not answer: {failed}"
    right = [name for name, a in found.items() if a.prediction == str(label)]
    readings = {name: a.prediction for name, a in found.items()}
    assert len(right) > len(found) / 2, f"digit {label}: most models wrong: {readings}"


def assert_same_tensor(in_page: np.ndarray, expected: np.ndarray, what: str) -> None:
    np.testing.assert_allclose(
        in_page.reshape(-1), expected.reshape(-1), rtol=0, atol=SAME_TENSOR_ATOL, err_msg=what
    )


def page_input(page: Page) -> np.ndarray:
    """The last input the page sent, as [1, 1, 28, 28]."""
    data = page.evaluate("Array.from(window.zooPage.lastInput)")
    return np.asarray(data, dtype=np.float32).reshape(1, 1, 28, 28)


def pad_picture(page: Page) -> Image.Image:
    url = page.evaluate("document.getElementById('pad').toDataURL('image/png')")
    return Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1])))


def draw_mnist_digit(page: Page, image: np.ndarray) -> None:
    """Draw a 28 x 28 MNIST image on the pad: one pen stroke along each horizontal run of
    inked pixels, scaled to the pad."""
    box = page.locator("#pad").bounding_box()
    assert box is not None
    cell = box["width"] / 28
    mouse = page.mouse
    for row in range(28):
        inked = np.concatenate([[False], image[row] >= INK_LEVEL, [False]])
        edges = np.flatnonzero(np.diff(inked.astype(np.int8)))
        y = box["y"] + (row + 0.5) * cell
        for start, end in zip(edges[::2], edges[1::2], strict=True):
            mouse.move(box["x"] + (start + 0.5) * cell, y)
            mouse.down()
            mouse.move(box["x"] + (end - 0.5) * cell, y)
            mouse.up()


@pytest.fixture(scope="module")
def mnist_digits() -> list[tuple[int, np.ndarray]]:
    """The first MNIST test image of each class, 0 to 9."""
    test = load_mnist("test")
    return [(d, test.images[int(np.flatnonzero(test.labels == d)[0])]) for d in range(10)]


def test_drawn_mnist_digits_are_read_by_every_model(
    desktop: Page,
    web_server: WebServer,
    mnist_digits: list[tuple[int, np.ndarray]],
    tmp_path: Path,
) -> None:
    for label, image in mnist_digits:
        desktop.get_by_role("button", name="Clear").click()
        draw_mnist_digit(desktop, image)
        assert_majority_reads(answers(desktop), web_server, label)
        # What the page sent is what client/images.py makes of the pad's picture.
        expected = to_tensor(pad_picture(desktop))
        assert_same_tensor(page_input(desktop), expected, f"the drawn {label}")
    # Everything the page loaded or asked came from its own server: it works offline.
    fetched = desktop.evaluate("performance.getEntriesByType('resource').map((e) => e.name)")
    assert fetched and all(url.startswith(web_server.url) for url in fetched), fetched
    shot = tmp_path / "web.png"
    desktop.screenshot(path=shot, full_page=True)
    target = os.environ.get("ZOO_WEB_SCREENSHOT")
    if target:
        shutil.copyfile(shot, ROOT / target)


def test_an_opened_png_is_read_by_every_model(desktop: Page, web_server: WebServer) -> None:
    with desktop.expect_file_chooser() as chooser:
        desktop.get_by_role("button", name="Open a picture…").click()
    chooser.value.set_files(DIGIT_7)
    assert_majority_reads(answers(desktop), web_server, 7)
    assert_same_tensor(page_input(desktop), to_tensor(DIGIT_7), DIGIT_7.name)


def _pictures(tmp_path: Path, digit: np.ndarray) -> dict[str, Path]:
    """PNGs that take every branch of the recipe: light and dark backgrounds, noise,
    colour, transparency, wide and tall shapes, sizes that resample up and down."""
    ink = Image.fromarray(digit)
    dark_on_light = Image.fromarray(255 - digit).resize((196, 196), Image.Resampling.BICUBIC)
    noise = np.random.default_rng(0).integers(0, 24, size=(196, 196), dtype=np.uint8)
    noisy = np.clip(np.asarray(dark_on_light, np.int16) - noise, 0, 255).astype(np.uint8)
    blue = np.zeros((90, 150, 3), np.uint8)
    blue[:] = (250, 244, 228)  # cream paper
    mask = np.asarray(ink.resize((70, 70), Image.Resampling.BILINEAR)) > 100
    blue[10:80, 40:110][mask] = (20, 40, 160)  # blue ink
    transparent = np.zeros((61, 37, 4), np.uint8)
    transparent[..., :3] = (30, 60, 90)  # dark blue ink, its edges half transparent
    transparent[..., 3] = np.asarray(ink.resize((37, 61), Image.Resampling.BILINEAR))
    pictures = {
        "light on dark, 5x, grayscale": ink.resize((140, 140), Image.Resampling.NEAREST),
        "dark on light with noise": Image.fromarray(noisy),
        "blue ink on cream, wide RGB": Image.fromarray(blue),
        "ink on transparent, tall RGBA": Image.fromarray(transparent),
    }
    paths = {}
    for index, (name, picture) in enumerate(pictures.items()):
        paths[name] = tmp_path / f"picture{index}.png"
        picture.save(paths[name])
    return paths


CONVERT_IN_PAGE = """async (png) => {
    const bytes = Uint8Array.from(atob(png), (c) => c.charCodeAt(0));
    const { tensor } = await ZooMnist.fromBlob(new Blob([bytes], { type: "image/png" }));
    return Array.from(tensor);
}"""


def test_page_conversion_matches_client_images(
    desktop: Page, mnist_digits: list[tuple[int, np.ndarray]], tmp_path: Path
) -> None:
    for name, path in _pictures(tmp_path, mnist_digits[3][1]).items():
        png = base64.b64encode(path.read_bytes()).decode()
        in_page = np.asarray(desktop.evaluate(CONVERT_IN_PAGE, png), np.float32)
        expected = to_tensor(path).reshape(-1)
        assert expected.max() == 1.0, f"{name}: the recipe found no digit"
        assert_same_tensor(in_page, expected, name)


def test_a_failing_model_shows_its_error(desktop: Page, web_server: WebServer) -> None:
    victim = web_server.models[0]
    with ZooClient(web_server.address) as client:
        client.unload_model(victim)
        try:
            box = desktop.locator("#pad").bounding_box()
            assert box is not None
            desktop.mouse.move(box["x"] + 140, box["y"] + 40)
            desktop.mouse.down()
            desktop.mouse.move(box["x"] + 140, box["y"] + 240, steps=4)
            desktop.mouse.up()
            found = answers(desktop)
        finally:
            client.load_model(victim)
    assert found[victim].state == "error"
    assert victim in found[victim].error, found[victim]
    expect(desktop.locator(f'#models > li[data-model="{victim}"] .error')).to_be_visible()
    others = {name: a.state for name, a in found.items() if name != victim}
    assert set(others.values()) == {"done"}, others


def touch_stroke(page: Page, points: list[tuple[float, float]]) -> None:
    """One finger stroke through `points` (page coordinates), as a touch screen sends it."""
    session = page.context.new_cdp_session(page)
    kinds = ["touchStart"] + ["touchMove"] * (len(points) - 1)
    for kind, (x, y) in zip(kinds, points, strict=True):
        session.send("Input.dispatchTouchEvent", {"type": kind, "touchPoints": [{"x": x, "y": y}]})
    session.send("Input.dispatchTouchEvent", {"type": "touchEnd", "touchPoints": []})
    session.detach()


def test_phone_width_touch_and_keyboard(browser: Browser, web_server: WebServer) -> None:
    page, errors = open_page(browser, web_server, viewport=PHONE, has_touch=True, is_mobile=True)
    try:
        # A finger draws a "1" upwards: the pad draws instead of scrolling the page down.
        box = page.locator("#pad").bounding_box()
        assert box is not None
        x = box["x"] + box["width"] / 2
        top, bottom = box["y"] + box["height"] * 0.15, box["y"] + box["height"] * 0.85
        touch_stroke(page, [(x, bottom - (bottom - top) * i / 8) for i in range(9)])
        assert_majority_reads(answers(page), web_server, 1)
        assert page.evaluate("window.scrollY") == 0

        # Nothing wider than the screen, answers shown.
        overflow = page.evaluate(
            """() => [...document.querySelectorAll('body *')]
                .filter((e) => e.getBoundingClientRect().right > window.innerWidth + 0.5)
                .map((e) => e.id || e.className || e.tagName)"""
        )
        assert overflow == [], f"wider than {PHONE['width']} px: {overflow}"
        assert page.evaluate("document.documentElement.scrollWidth") <= PHONE["width"]

        # The buttons by keyboard: Tab reaches Clear first, its focus is visible, Enter
        # clears; the next Tab reaches the picture button, and Enter opens the file picker.
        page.keyboard.press("Tab")
        clear = page.get_by_role("button", name="Clear")
        expect(clear).to_be_focused()
        assert clear.evaluate("(b) => getComputedStyle(b).outlineStyle") != "none"
        page.keyboard.press("Enter")
        expect(page.locator("#models")).to_have_attribute("data-state", "idle")
        idle = page.locator('#models > li[data-state="idle"]')
        expect(idle).to_have_count(len(web_server.models))
        page.keyboard.press("Tab")
        expect(page.get_by_role("button", name="Open a picture…")).to_be_focused()
        with page.expect_file_chooser() as chooser:
            page.keyboard.press("Enter")
        chooser.value.set_files(DIGIT_2)
        assert_majority_reads(answers(page), web_server, 2)
        assert errors == [], f"the page raised: {errors}"
    finally:
        page.context.close()
