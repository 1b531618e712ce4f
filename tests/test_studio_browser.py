"""End to end in a real headless Chromium: the studio page on the toy model. Type a prompt, get
4 takes, refine one (shown beside the original), download the refined WAV and decode it; then
vary a take at the slider's strength and vary an uploaded file.

Runs in CI (.ci/run installs chromium; the test fails there rather than skip without it)."""

from __future__ import annotations

import numpy as np
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

            # Vary: a take at the slider's strength, then an uploaded file
            page.fill("#n", "2")
            page.locator("#strength").fill("0.3")
            assert page.locator("#strength-value").inner_text() == "0.30"
            first.locator(".take").first.locator("button.vary").click()
            variations = page.locator(".take[data-take*='.vary-']")
            page.wait_for_function(
                "document.querySelectorAll(\".take[data-take*='.vary-']\").length === 2",
                timeout=30_000,
            )
            assert "strength 0.3" in variations.first.inner_text()
            sf.write(tmp_path / "mine.wav", 0.2 * np.ones(4000), 8000)
            page.set_input_files("#upload", str(tmp_path / "mine.wav"))
            page.click("#vary-upload")
            page.wait_for_function(
                "document.querySelectorAll(\".take[data-take^='upload-']\").length === 2",
                timeout=30_000,
            )
            assert "mine.wav" in page.locator("#vary-note").inner_text()
            assert page.locator("#message").is_hidden()
    finally:
        studio.close()
    audio, rate = sf.read(path, dtype="float32")
    assert path.name == f"{take_id}.refined-16.wav"
    assert rate == 8000 and audio.shape == (2000,) and abs(audio).max() > 0
    assert not errors, errors
