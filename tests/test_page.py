"""The web page in a real headless Chromium (Debian's), driven by Playwright."""

import json
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


def red_square(folder, seed: int):
    """A 160x120 noise photo with a red rectangle at (40, 30)-(120, 90)."""
    arr = np.random.default_rng(seed).integers(0, 255, (120, 160, 3), dtype=np.uint8)
    arr[30:90, 40:120] = (220, 40, 40)
    Image.fromarray(arr).save(folder / "photo.png")
    return folder / "photo.png"


def open_upload(browser, url: str, photo):
    """The page with `photo` uploaded: (page, the overlay image, shown to be clicked)."""
    page = browser.new_page()
    page.goto(url + "/", timeout=60_000)
    page.locator("#segment-button").wait_for(timeout=60_000)
    page.locator("#input-image input[type=file]").set_input_files(str(photo))
    overlay = page.locator("#overlay img")
    overlay.wait_for(state="visible", timeout=60_000)
    return page, overlay


def encodings(url: str) -> int:
    """How many times the server's segmenters ran their image encoder (its /healthz)."""
    import httpx

    return sum(httpx.get(url + "/healthz").json()["image_encodings"].values())


def test_clicks_on_the_overlay_segment_without_encoding_again(browser, models, tmp_path):
    """SAM's demo, on the page: each click adds a point and SAM answers on the embedding it
    has (the server's /healthz counts the image encoder's runs)."""
    from playwright.sync_api import expect

    photo = red_square(tmp_path, seed=1)
    with server(models) as url:
        page, overlay = open_upload(browser, url, photo)
        before = encodings(url)
        overlay.click(position={"x": 10, "y": 10})
        expect(page.locator("#detections")).to_contain_text("object", timeout=60_000)
        first = overlay.get_attribute("src")
        assert encodings(url) == before + 1  # the first click encodes the image
        page.locator("#click-kind").get_by_text("background").click()
        overlay.click(position={"x": 30, "y": 20})
        expect(overlay).not_to_have_attribute("src", first, timeout=60_000)  # a new overlay
        assert encodings(url) == before + 1  # ... on the same embedding
        page.close()


def test_drag_a_box_then_click_and_find_more_like_it(browser, models, tmp_path):
    """A drag on the overlay is a box for SAM, a click then refines it on the same embedding
    (shift-click: background); 'Find more like the box' uses it as an OWLv2 exemplar; the
    class map and per-class thresholds reach the detector."""
    from playwright.sync_api import expect

    photo = red_square(tmp_path, seed=2)
    with server(models) as url:
        page, overlay = open_upload(browser, url, photo)
        before = encodings(url)
        area = overlay.bounding_box()
        scale = area["width"] / 160  # shown at this many screen pixels per image pixel

        def at(x, y):
            return area["x"] + x * scale, area["y"] + y * scale

        page.mouse.move(*at(40, 30))
        page.mouse.down()
        page.mouse.move(*at(80, 60), steps=5)
        page.mouse.move(*at(120, 90), steps=5)
        page.mouse.up()
        rows = page.locator("#detections")

        def cell(text):  # a detection's label ('box' is a column's name too)
            return rows.get_by_role("gridcell", name=text, exact=True)

        expect(cell("box")).to_be_visible(timeout=60_000)
        expect(cell("40,30,120,90")).to_be_visible()  # the drag, in image pixels
        assert encodings(url) == before + 1
        first = overlay.get_attribute("src")
        page.keyboard.down("Shift")
        page.mouse.click(*at(10, 10))  # background, by the shift key
        page.keyboard.up("Shift")
        expect(cell("object")).to_be_visible(timeout=60_000)
        expect(overlay).not_to_have_attribute("src", first, timeout=60_000)
        assert encodings(url) == before + 1  # the box and the click: one encoding
        said = json.loads(page.locator("#gesture textarea").input_value())
        assert [g.get("point", [0, 0, None])[2] for g in said] == [None, 0]  # a box, a background click
        assert said[1]["point"][:2] == pytest.approx([10, 10], abs=1)

        page.locator("#exemplar-label textarea").fill("red thing")
        page.locator("#detector input").click()
        page.get_by_role("option", name=models["owlv2"]).click()
        page.locator("#box-threshold input[type=number]").fill("0")
        page.locator("#like-box").click()
        expect(cell("red thing").first).to_be_visible(timeout=60_000)

        page.get_by_text("Classes and per-class thresholds").click()
        page.locator("#classes textarea").fill("pet: [cat, dog]")
        page.locator("#class-thresholds textarea").fill("pet=0")
        page.locator("#segment-button").click()
        expect(cell("pet").first).to_be_visible(timeout=60_000)
        page.close()


def test_gestures_read_back_as_clicks_and_the_last_box():
    from vitsam.errors import VitsamError
    from vitsam.serve.page import page_thresholds, read_gestures

    said = json.dumps([{"box": [1, 2, 30, 40]}, {"point": [5.6, 7.2, 1]}, {"point": [9, 9, 0]},
                       {"box": [2, 3, 50, 60]}])  # fmt: skip
    assert read_gestures(said) == ([[5, 7, 1], [9, 9, 0]], [2.0, 3.0, 50.0, 60.0])
    assert read_gestures(said, background=True)[0] == [[5, 7, 0], [9, 9, 0]]
    assert read_gestures("") == ([], None)
    with pytest.raises(VitsamError, match="reload it"):
        read_gestures('[{"point": 3}]')
    assert page_thresholds("cat=0.5, dog = 0.3\n") == {"cat": 0.5, "dog": 0.3}
    with pytest.raises(VitsamError, match="has no class"):
        page_thresholds("0.5")
