"""The web page in a real browser: Debian's chromium, headless, driven by Playwright. It uploads
scikit-image's chelsea photo, submits, and waits for the boxes drawn over the image and the table;
the number of drawn boxes must equal the number of detections the API returned (at least one)."""

from __future__ import annotations

import shutil

import pytest

pytest.importorskip("fastapi", reason="the [serve] extra")
playwright = pytest.importorskip("playwright.sync_api", reason="test dependency playwright (in [dev])")
httpx = pytest.importorskip("httpx")

from serve_util import running  # noqa: E402

from gdino.infer.detector import Detector  # noqa: E402
from gdino.serve import ServeConfig, create_app  # noqa: E402

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"


@pytest.fixture(scope="module")
def browser():
    if not shutil.which("chromium"):
        pytest.skip("Debian's chromium is not installed (apt-get install chromium; .ci/run does it)")
    with playwright.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"], headless=True)
        yield b
        b.close()


def test_page_draws_boxes_and_table(browser, tiny_model, chelsea_jpg, tmp_path, one_thread):
    # box threshold 0 on the random tiny model: every query is a box, so the page has to draw
    app = create_app(ServeConfig(warmup=False), Detector(tiny_model, image_size=160, box_threshold=0.0))
    with running(app) as url:
        expected = httpx.post(
            url + "/v1/detect",
            files={"image": ("chelsea.jpg", chelsea_jpg.read_bytes())},
            data={"classes": "cat,remote control", "box_threshold": "0"},
        ).json()
        n = len(expected["results"][0]["detections"])
        assert n > 0
        page = browser.new_page(viewport={"width": 1200, "height": 800})
        errors: list[str] = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto(url + "/")
        page.wait_for_function("document.getElementById('model').textContent.includes('on cpu')")
        page.set_input_files("#file", str(chelsea_jpg))
        page.check("input[name=mode][value=classes]")
        page.fill("#text", "cat, remote control")
        page.eval_on_selector("#box", "(el) => { el.value = '0'; el.dispatchEvent(new Event('input')); }")
        assert page.input_value("#box") == "0"
        page.click("#submit")
        page.wait_for_selector("#table tbody tr", timeout=60_000)
        page.wait_for_function("document.querySelector('#photo').complete")
        boxes = page.locator("#overlay rect.box")
        assert boxes.count() == n
        assert page.locator("#table tbody tr").count() == n
        first = expected["results"][0]["detections"][0]
        assert page.locator("#table tbody tr").first.locator("td").nth(1).inner_text() == first["label"]
        assert float(boxes.first.get_attribute("x")) == pytest.approx(first["box"][0])
        # the boxes are really on screen, over the photo
        photo, overlay = page.locator("#photo").bounding_box(), page.locator("#overlay").bounding_box()
        assert photo["width"] > 100 and overlay == photo
        assert boxes.first.bounding_box()["width"] > 0
        assert "detection" in page.inner_text("#status") and not page.locator("#download").is_hidden()
        shot = tmp_path / "page.png"
        page.screenshot(path=str(shot), full_page=True)
        assert shot.stat().st_size > 10_000
        assert not errors, errors
        page.close()


def test_page_shows_server_errors(browser, tiny_model, tmp_path):
    app = create_app(ServeConfig(warmup=False), Detector(tiny_model, image_size=160))
    junk = tmp_path / "junk.jpg"
    junk.write_bytes(b"not an image at all")
    with running(app) as url:
        page = browser.new_page()
        page.goto(url + "/")
        page.set_input_files("#file", str(junk))
        page.fill("#text", "a cat")
        page.click("#submit")
        page.wait_for_selector("#status.error")
        assert "400" in page.inner_text("#status") and "not an image" in page.inner_text("#status")
        assert page.locator("#overlay rect").count() == 0
        page.close()


def test_page_draws_masks_decoded_from_rle(browser, tiny_model, chelsea_jpg):
    """The page's RLE decoder: the painted mask pixels are exactly the union of the API's masks."""
    import numpy as np
    import torch
    from conftest import randomize_

    from gdino.core.rle import decode_mask
    from gdino.segment.predictor import SamSegmenter
    from gdino.segment.sam_model import SAM_PRESETS, build_sam

    pytest.importorskip("segment_anything")
    torch.manual_seed(0)
    sam = SamSegmenter(randomize_(build_sam(SAM_PRESETS["sam-tiny"]), seed=2).eval(), name="sam-tiny")
    app = create_app(ServeConfig(warmup=False), Detector(tiny_model, image_size=160, box_threshold=0.99), sam)
    with running(app) as url:
        doc = httpx.post(
            url + "/v1/segment",
            files={"image": ("chelsea.jpg", chelsea_jpg.read_bytes())},
            data={"classes": "cat", "box_threshold": "0.99"},
            timeout=120,
        ).json()
        dets = doc["results"][0]["detections"]
        union = np.zeros((300, 451), dtype=bool)
        for d in dets:
            union |= decode_mask(d["mask"])
        assert len(dets) > 0 and 0 < union.sum() < union.size
        page = browser.new_page(viewport={"width": 1200, "height": 800})
        page.goto(url + "/")
        page.wait_for_selector("#seg-label:not([hidden])")
        page.set_input_files("#file", str(chelsea_jpg))
        page.check("input[name=mode][value=classes]")
        page.fill("#text", "cat")
        page.eval_on_selector("#box", "(el) => { el.value = '0.99'; el.dispatchEvent(new Event('input')); }")
        page.check("#segment")
        page.click("#submit")
        page.wait_for_selector("#table tbody tr", timeout=60_000)
        painted = page.evaluate("""() => {
            const c = document.getElementById('masks');
            const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
            let bits = ''; for (let i = 3; i < d.length; i += 4) bits += d[i] > 0 ? '1' : '0';
            return [c.width, c.height, bits];
        }""")
        assert painted[:2] == [451, 300]
        drawn = np.frombuffer(painted[2].encode(), dtype=np.uint8).reshape(300, 451) == ord("1")
        assert np.array_equal(drawn, union)  # pixel for pixel: row/column order of the RLE right
        assert page.locator("#overlay rect.box").count() == len(dets)
        page.close()
