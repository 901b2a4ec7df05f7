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
        page.wait_for_url(url + "/", wait_until="networkidle", timeout=60_000)
        page.locator("#input-image input[type=file]").set_input_files(str(photo))
        page.locator("#prompt textarea").fill("cat. dog")
        page.locator("#segment-button").click()
        overlay = page.locator("#overlay img")
        overlay.wait_for(state="visible", timeout=60_000)
        assert overlay.get_attribute("src")
        expect(page.locator("#detections")).to_contain_text(re.compile("cat|dog"), timeout=30_000)
        page.screenshot(path=str(tmp_path / "page.png"), full_page=True)
        page.close()
