"""End to end in a real headless Chromium: the studio page on the toy model. Type a prompt, get
4 takes, refine one (shown beside the original), download the refined WAV and decode it.

Runs in CI (.ci/run installs chromium; the test fails there rather than skip without it)."""

from __future__ import annotations

import soundfile as sf
from browser import launch_chromium, require_browser, serve_app

from soundctm.engine.pipeline import Pipeline
from soundctm.studio.api import create_app
from soundctm.studio.service import Studio


def test_page_generates_refines_and_downloads(student_dir, tmp_path):
    require_browser()
    studio = Studio(Pipeline.load(student_dir), student_dir, tmp_path / "out")
    errors: list[str] = []
    try:
        with serve_app(create_app(studio)) as url, launch_chromium() as browser:
            page = browser.new_page(accept_downloads=True)
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            page.goto(url)
            page.wait_for_selector("body[data-ready='1']", timeout=20_000)
            assert page.locator("#steps").input_value() == "1"  # settings shown
            page.fill("#prompt", "a high-pitched beep")
            page.click("#generate")
            page.wait_for_function(
                "document.querySelectorAll('#takes .take img').length === 4 && "
                "[...document.querySelectorAll('#takes .take img')]"
                ".every(i => i.complete && i.naturalWidth > 0)",
                timeout=30_000,
            )
            seeds = page.locator(".take .label span").all_inner_texts()
            assert len({s.split(" · ")[0] for s in seeds}) == 4  # four seeds shown

            first = page.locator("#takes .group").first
            take_id = first.get_attribute("data-group")
            first.locator("button.refine").click()
            refined = page.locator(f".group[data-group='{take_id}'] .take.refined")
            refined.wait_for(timeout=30_000)
            group = page.locator(f".group[data-group='{take_id}'] .take")
            assert group.count() == 2  # the original and the refined take, side by side
            assert "refined (16 steps)" in refined.inner_text()

            with page.expect_download() as download:
                refined.locator("a.download-audio").click()
            path = tmp_path / download.value.suggested_filename
            download.value.save_as(path)
    finally:
        studio.close()
    audio, rate = sf.read(path, dtype="float32")
    assert path.name == f"{take_id}.refined-16.wav"
    assert rate == 8000 and audio.shape == (2000,) and abs(audio).max() > 0
    assert not errors, errors
