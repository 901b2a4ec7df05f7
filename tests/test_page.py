"""The web page in a real headless Chromium (Debian's), driven by Playwright."""

import os
import re
import shutil

import numpy as np
import pytest
from PIL import Image

from tests.serving import TOKEN, server

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.fixture(scope="module")
def browser():
    if not CHROMIUM:
        if os.environ.get("CI"):
            pytest.fail("CI needs Debian's chromium for the browser test (.ci/run installs it)")
        pytest.skip("no chromium on this machine (apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(
            executable_path=CHROMIUM,
            headless=True,
            args=["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"],
        )  # fmt: skip
        yield b
        b.close()


def test_sign_in_upload_prompt_segment_shows_overlay_and_table(browser, models, tmp_path):
    from playwright.sync_api import expect

    photo = tmp_path / "photo.png"
    arr = np.random.default_rng(0).integers(0, 255, (120, 160, 3), dtype=np.uint8)
    Image.fromarray(arr).save(photo)
    with server(models, "--token", TOKEN) as url:
        page = browser.new_page()
        page.goto(url + "/", timeout=60_000)  # the token's form first, then the page
        page.locator("#token").fill(TOKEN)
        page.locator("#sign-in").click()
        page.wait_for_url(url + "/", timeout=60_000)
        page.locator("#segment-button").wait_for(timeout=60_000)  # (the page's heartbeat
        # stream stays open, so the network is never idle)
        page.locator("#input-image input[type=file]").set_input_files(str(photo))
        page.locator("#prompt textarea").fill("cat. dog")
        page.locator("#segment-button").click()
        overlay = page.locator("#overlay img")
        overlay.wait_for(state="visible", timeout=60_000)
        assert overlay.get_attribute("src")
        expect(page.locator("#detections")).to_contain_text(re.compile("cat|dog"), timeout=30_000)
        page.screenshot(path=str(tmp_path / "page.png"), full_page=True)
        page.close()


def test_clicks_on_the_overlay_segment_without_encoding_again(browser, models, tmp_path):
    """SAM's demo, on the page: each click adds a point and SAM answers on the embedding it
    has (the server's /healthz counts the image encoder's runs)."""
    import httpx
    from playwright.sync_api import expect

    photo = tmp_path / "photo.png"
    arr = np.random.default_rng(1).integers(0, 255, (120, 160, 3), dtype=np.uint8)
    arr[30:90, 40:120] = (220, 40, 40)
    Image.fromarray(arr).save(photo)
    with server(models) as url:

        def encodings():
            return sum(httpx.get(url + "/healthz").json()["image_encodings"].values())

        page = browser.new_page()
        page.goto(url + "/", timeout=60_000)
        page.locator("#segment-button").wait_for(timeout=60_000)
        page.locator("#input-image input[type=file]").set_input_files(str(photo))
        overlay = page.locator("#overlay img")
        overlay.wait_for(state="visible", timeout=60_000)  # the upload, shown to be clicked
        before = encodings()
        overlay.click(position={"x": 10, "y": 10})
        expect(page.locator("#detections")).to_contain_text("object", timeout=60_000)
        first = overlay.get_attribute("src")
        assert encodings() == before + 1  # the first click encodes the image
        page.locator("#click-kind").get_by_text("background").click()
        overlay.click(position={"x": 30, "y": 20})
        expect(overlay).not_to_have_attribute("src", first, timeout=60_000)  # a new overlay
        assert encodings() == before + 1  # ... on the same embedding
        page.close()
