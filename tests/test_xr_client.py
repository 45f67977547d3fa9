"""The WebXR page in a real browser: Debian's chromium, driven by Playwright (no browser download).
It loads from the bridge, connects, receives the scene, renders it with three.js (WebGL through
SwiftShader), and the canvas changes after the NextStep button."""

from __future__ import annotations

import io
import json
import shutil

import pytest

sync_api = pytest.importorskip("playwright.sync_api")
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ARGS = ["--no-sandbox", "--disable-background-networking", "--disable-component-update", "--disable-sync",
        "--no-first-run", "--use-angle=swiftshader", "--enable-unsafe-swiftshader"]
pytestmark = pytest.mark.skipif(not shutil.which("chromium"), reason="Debian chromium is not installed (make install)")
TOKEN = "page-t0ken-K3"
SCRIPT = [[".", json.dumps({"action": "Final Answer", "action_input": "Hello from the assistant."})]]


@pytest.fixture(scope="module")
def bridge():
    from lathe.xr_bridge import assets
    from lathe.xr_bridge.bridge import BridgeConfig, BridgeServer, XRBridge

    if assets.missing():
        pytest.skip(f"three.js not vendored ({assets.missing()[0]}); run make install")
    cfg = BridgeConfig.model_validate({"lego": {"llm": {"backend": "scripted", "script": SCRIPT},
                                                "manual_steps": 8}})
    srv = BridgeServer(XRBridge(cfg, token=TOKEN)).start()
    yield srv
    srv.stop()


def _canvas_stats(png: bytes) -> tuple[float, "object"]:
    import numpy as np
    from PIL import Image

    img = np.asarray(Image.open(io.BytesIO(png)).convert("RGB")).astype(np.int16)
    background = np.array([0xF3, 0xF3, 0xF6])
    differs = (np.abs(img - background).sum(axis=2) > 40).mean()  # share of pixels that are not background
    return float(differs), img


def test_page_renders_scene_and_next_step_changes_it(bridge):
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
        try:
            page = browser.new_page(viewport={"width": 900, "height": 600})
            errors: list[str] = []
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto(f"{bridge.url}/xr/#token={TOKEN}")
            page.wait_for_function("window.latheXR && window.latheXR.scenes >= 1 && window.latheXR.bricks > 0",
                                   timeout=60_000)
            page.wait_for_timeout(500)  # a few animation frames
            canvas = page.locator("#view canvas")
            share1, img1 = _canvas_stats(canvas.screenshot())
            assert share1 > 0.01, f"the canvas looks blank ({share1:.4f} of pixels differ from the background)"
            first = page.evaluate("window.latheXR.bricks")
            page.click("button[data-tool=NextStep]")
            page.wait_for_function("window.latheXR.step && window.latheXR.step.current_step === 2", timeout=30_000)
            page.wait_for_timeout(500)
            share2, img2 = _canvas_stats(canvas.screenshot())
            assert page.evaluate("window.latheXR.bricks") > first
            changed = (abs(img1 - img2).sum(axis=2) > 40).mean()
            assert changed > 0.001, "the canvas did not change after NextStep"
            # chat: a human turn gets the assistant's answer in the log
            page.fill("#say", "hello there")
            page.press("#say", "Enter")
            page.wait_for_function("window.latheXR.lastText === 'Hello from the assistant.'", timeout=30_000)
            assert not errors, errors
        finally:
            browser.close()


def test_page_without_token_is_refused(bridge):
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
        try:
            page = browser.new_page()
            page.goto(f"{bridge.url}/xr/")
            page.wait_for_function("document.getElementById('status').textContent.startsWith('refused')",
                                   timeout=30_000)
            assert page.evaluate("window.latheXR.scenes") == 0
        finally:
            browser.close()
