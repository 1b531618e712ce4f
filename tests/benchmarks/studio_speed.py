"""How fast four takes appear in ``soundctm studio`` on the default model, against a bare
``Pipeline.generate`` of four in the same run (the machine may be shared: read the ratio).

    .venv/bin/python tests/benchmarks/studio_speed.py --runs 7 [--screenshot docs/studio.png]

Measured, each a median over ``--runs`` (interleaved, so load changes hit every side alike):

- ``bare``: ``Pipeline.generate`` of 4 takes (1 step), the model already loaded and warm;
- ``api``: ``POST /api/generate?wait=30`` of 4 takes until its answer: the job queued, run,
  the 4 WAV + sidecar files written and their spectrograms rendered;
- ``browser``: in headless Chromium, from the click on Generate until the 4 new takes are on
  the page with their spectrogram pictures loaded and their players ready (metadata loaded);
- ``picture``: rendering one spectrogram PNG of a 3-second take (numpy STFT + PNG).

``--screenshot PATH`` then clears the out folder, generates 4 takes of a prompt, refines the
first and saves a PNG of the page (the picture in docs/ and the README).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))  # tests/browser.py

PROMPT = "a high-pitched beep repeating three times"

WAIT_FOR_NEW_TAKES = """
async (before) => {
  const t0 = performance.now();
  document.getElementById("generate").click();
  const known = new Set(before);
  for (;;) {
    const fresh = [...document.querySelectorAll("#takes .take")]
      .filter((n) => !known.has(n.dataset.take));
    const ready = fresh.filter((n) => {
      const img = n.querySelector("img"), audio = n.querySelector("audio");
      return img.complete && img.naturalWidth > 0 && audio.readyState >= 1;
    });
    if (ready.length >= 4) return performance.now() - t0;
    if (performance.now() - t0 > 60000) throw new Error("no takes after 60 s");
    await new Promise((r) => setTimeout(r, 5));
  }
}
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--screenshot", type=Path, default=None)
    args = parser.parse_args()

    import httpx
    from browser import launch_chromium, serve_app

    from soundctm.studio.api import create_app
    from soundctm.studio.service import Studio

    out = Path(tempfile.mkdtemp(prefix="studio-speed-")) / "outputs"
    started = time.perf_counter()
    studio = Studio.load(None, out, device="cpu")
    studio.warm_up()
    print(f"model loaded and warm in {time.perf_counter() - started:.1f} s; out {out}")
    pipe = studio.pipe
    times: dict[str, list[float]] = {"bare": [], "api": [], "browser": [], "picture": []}
    try:
        with serve_app(create_app(studio)) as url, launch_chromium() as browser:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.goto(url)
            page.wait_for_selector("body[data-ready='1']")
            page.fill("#prompt", PROMPT)
            with httpx.Client(base_url=url, timeout=60) as client:
                for run in range(args.runs):
                    seeds = [1000 * run + i for i in range(4)]
                    t = time.perf_counter()
                    pipe.generate([PROMPT] * 4, seeds=seeds)
                    times["bare"].append(time.perf_counter() - t)

                    t = time.perf_counter()
                    r = client.post(
                        "/api/generate?wait=30", json={"prompt": PROMPT, "n": 4, "seed": seeds[0]}
                    )
                    times["api"].append(time.perf_counter() - t)
                    assert r.status_code == 200 and len(r.json()["takes"]) == 4, r.text
                    take = r.json()["takes"][0]
                    studio._pictures.clear()
                    t = time.perf_counter()
                    studio.picture(take)
                    times["picture"].append(time.perf_counter() - t)

                    page.fill("#seed", str(seeds[0] + 500))
                    before = page.eval_on_selector_all(
                        "#takes .take", "nodes => nodes.map(n => n.dataset.take)"
                    )
                    times["browser"].append(page.evaluate(WAIT_FOR_NEW_TAKES, before) / 1000)
                    print(
                        f"run {run + 1}: bare {times['bare'][-1]:.3f} s, api "
                        f"{times['api'][-1]:.3f} s, browser {times['browser'][-1]:.3f} s, "
                        f"picture {1000 * times['picture'][-1]:.1f} ms",
                        flush=True,
                    )
            if args.screenshot is not None:
                screenshot(page, out, args.screenshot)
    finally:
        studio.close()
    if not args.runs:
        return
    med = {k: statistics.median(v) for k, v in times.items()}
    print(
        f"median of {args.runs}: bare generate of 4 {med['bare']:.3f} s; API request -> 4 "
        f"takes' files ready {med['api']:.3f} s ({med['api'] / med['bare']:.2f}x bare); browser "
        f"click -> 4 takes shown {med['browser']:.3f} s ({med['browser'] / med['bare']:.2f}x "
        f"bare); one spectrogram picture {1000 * med['picture']:.1f} ms"
    )


def screenshot(page: object, out: Path, path: Path) -> None:
    """Four takes of PROMPT, the first refined at 16 steps, as a PNG of the page."""
    for f in out.iterdir():
        if f.is_file():
            f.unlink()
    page.set_viewport_size({"width": 1600, "height": 520})  # type: ignore[attr-defined]
    page.reload()  # type: ignore[attr-defined]
    page.wait_for_selector("body[data-ready='1']")  # type: ignore[attr-defined]
    page.fill("#prompt", PROMPT)  # type: ignore[attr-defined]
    page.fill("#seed", "42")  # type: ignore[attr-defined]
    page.click("#generate")  # type: ignore[attr-defined]
    page.wait_for_function("document.querySelectorAll('#takes .take').length === 4")  # type: ignore[attr-defined]
    page.locator("#takes .group").first.locator("button.refine").click()  # type: ignore[attr-defined]
    page.locator(".take.refined").wait_for()  # type: ignore[attr-defined]
    page.wait_for_function(  # type: ignore[attr-defined]
        "[...document.querySelectorAll('#takes img')].every(i => i.complete && i.naturalWidth)"
    )
    page.wait_for_timeout(600)  # type: ignore[attr-defined]  # the queue pill settles
    path.parent.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(path), full_page=True)  # type: ignore[attr-defined]
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
