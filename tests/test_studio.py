"""soundctm studio: the JSON API (FastAPI's TestClient) on the tiny toy model, the job queue, the
history, the limits, path traversal and uploads."""

from __future__ import annotations

import io
import json
import os
import signal
import socket
import struct
import subprocess
import sys
import threading
import zlib

import httpx
import numpy as np
import pytest
import soundfile as sf
from fastapi.testclient import TestClient

from soundctm.engine.audio import read_audio
from soundctm.engine.audio_io import params_from_record, save_sample
from soundctm.engine.pipeline import Pipeline
from soundctm.events import GenerationStarted, SolverStep
from soundctm.studio.api import create_app
from soundctm.studio.jobs import JobQueue, QueueFullError
from soundctm.studio.schemas import Limits
from soundctm.studio.service import Studio
from soundctm.studio.spectrogram import png_bytes, row_edges, spectrogram_rgb
from soundctm.studio.takes import safe_file


@pytest.fixture
def pipe(student_dir):
    return Pipeline.load(student_dir)


@pytest.fixture
def out(tmp_path):
    return tmp_path / "out"


@pytest.fixture
def studio(pipe, student_dir, out):
    s = Studio(pipe, student_dir, out, limits=Limits(max_takes=6, max_upload_bytes=200_000))
    yield s
    s.close()


@pytest.fixture
def client(studio):
    with TestClient(create_app(studio)) as c:
        yield c


def generate(client, **body):
    r = client.post("/api/generate?wait=30", json={"prompt": "a beep", "n": 4, **body})
    assert r.status_code == 200, r.text
    job = r.json()
    assert job["status"] == "done", job
    return job


def read_png(data: bytes) -> np.ndarray:
    """Decode an 8-bit RGB PNG without filters (what png_bytes writes)."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, chunks = 8, {}
    while pos < len(data):
        (n,) = struct.unpack(">I", data[pos : pos + 4])
        kind, body = data[pos + 4 : pos + 8], data[pos + 8 : pos + 8 + n]
        assert struct.unpack(">I", data[pos + 8 + n : pos + 12 + n])[0] == zlib.crc32(kind + body)
        chunks.setdefault(kind, b"")
        chunks[kind] += body
        pos += 12 + n
    w, h = struct.unpack(">II", chunks[b"IHDR"][:8])
    raw = np.frombuffer(zlib.decompress(chunks[b"IDAT"]), np.uint8).reshape(h, 1 + 3 * w)
    assert (raw[:, 0] == 0).all()
    return raw[:, 1:].reshape(h, w, 3)


def test_generate_writes_four_takes_that_match_the_library(client, pipe, out):
    job = generate(client, seed=10, normalize="none")
    assert len(job["takes"]) == 4 and job["progress"] == 1.0 and job["steps"] == 1
    takes = client.get("/api/takes").json()
    assert takes["total"] == 4
    by_seed = {t["seed"]: t for t in takes["takes"]}
    assert sorted(by_seed) == [10, 11, 12, 13]
    bare = pipe.generate(["a beep"] * 4, seeds=[10, 11, 12, 13])
    for i, seed in enumerate([10, 11, 12, 13]):
        t = by_seed[seed]
        assert t["kind"] == "sample" and t["steps"] == 1 and t["same_model"]
        wav = client.get(t["audio"])
        assert wav.status_code == 200
        audio, rate = sf.read(io.BytesIO(wav.content), dtype="float32")
        assert rate == pipe.sample_rate
        want = bare.audio[i].clamp(-1, 1).numpy()
        assert np.abs(audio - want).max() < 1.0 / 16000  # 16-bit rounding only
        side = client.get(t["sidecar"]).json()
        assert side["prompt"] == "a beep" and side["seed"] == seed
        assert side["normalize"] == "none" and side["gain_db"] == 0
        png = client.get(t["spectrogram"])
        assert png.headers["content-type"] == "image/png"
        assert read_png(png.content).shape[0] == 128
        assert (out / f"{t['id']}.wav").is_file()


def test_refine_reruns_the_take_from_its_seed_beside_the_original(client, pipe, studio):
    job = generate(client, seed=5, n=1)
    (take_id,) = job["takes"]
    r = client.post("/api/refine?wait=30", json={"take": take_id, "steps": 4})
    assert r.status_code == 200 and r.json()["status"] == "done", r.text
    (refined_id,) = r.json()["takes"]
    refined = client.get(f"/api/takes/{refined_id}").json()
    assert refined["kind"] == "refine" and refined["refined_from"] == take_id
    assert refined["seed"] == 5 and refined["steps"] == 4 and refined["gamma"] == 0
    record = studio.take(refined_id).record
    assert record["normalize"] == "peak"  # the take's level mode, the studio's default
    gain = 10 ** (record["gain_db"] / 20)
    params = params_from_record(studio.take(take_id).record)
    want = (pipe.refine(params, steps=4, gamma=0.0).audio[0] * gain).clamp(-1, 1).numpy()
    audio, _ = sf.read(studio.take(refined_id).audio, dtype="float32")
    assert np.abs(audio - want).max() < 1.0 / 16000
    peak = np.abs(audio).max()
    assert 10 ** (-20 / 20) - 1e-3 <= peak <= 10 ** (-1 / 20) + 1e-4  # within the peak window


def test_history_is_read_from_the_out_folder_and_survives_a_restart(pipe, student_dir, out):
    first = Studio(pipe, student_dir, out)
    with TestClient(create_app(first)) as c:
        ids = generate(c, seed=1, n=2)["takes"]
    first.close()
    # a take written by `soundctm sample`'s writer, and files that are not takes
    gen = pipe.generate(["a knock"], seeds=[99])
    save_sample(
        out / "a-knock-99.wav", gen.audio[0], gen.params[0], sample_rate=8000,
        model_path=student_dir, model_card_sha256=first.card_hash,
    )  # fmt: skip
    (out / "notes.json").write_text('{"not": "a sidecar"}')
    (out / "broken.json").write_text("{")
    again = Studio(pipe, student_dir, out)
    try:
        with TestClient(create_app(again)) as c:
            listed = c.get("/api/takes").json()
    finally:
        again.close()
    assert {t["id"] for t in listed["takes"]} == {*ids, "a-knock-99"}


def test_limits_are_clear_errors(client):
    cases = [
        ({"prompt": "x" * 501}, 400, "at most 500"),
        ({"prompt": "a beep", "n": 7}, 400, "at most 6 per request"),
        ({"prompt": "a beep", "steps": 65}, 400, "at most 64 steps"),
        ({"prompt": "a beep", "seconds": 5.0}, 400, "at most 1 s"),
        ({"prompt": "   "}, 400, "prompt is empty"),
        ({"prompt": "a beep", "gamma": 2}, 422, "gamma"),
        ({"prompt": "a beep", "n": 0}, 422, "n:"),
        ({"prompt": "a beep", "colour": "red"}, 422, "colour"),
    ]
    for body, status, text in cases:
        r = client.post("/api/generate", json=body)
        assert r.status_code == status, (body, r.text)
        assert text in r.json()["error"], (body, r.json())
    assert client.get("/api/takes").json()["total"] == 0  # nothing was queued or written
    r = client.post("/api/refine", json={"take": "nope"})
    assert r.status_code == 404 and "no take 'nope'" in r.json()["error"]
    assert client.get("/api/jobs/nope").status_code == 404


def test_files_are_served_from_the_out_folder_only(client, out, tmp_path):
    generate(client, seed=3, n=1)
    secret = tmp_path / "secret.json"
    secret.write_text('{"secret": 1}')
    (out / "link.json").symlink_to(secret)
    (out / ".a.wav.abcdefgh.tmp").write_bytes(b"half")
    (out / "script.sh").write_text("echo")
    take = client.get("/api/takes").json()["takes"][0]
    assert client.get(take["audio"]).status_code == 200
    for path in [
        "/api/files/../secret.json",
        "/api/files/%2e%2e/secret.json",
        "/api/files/..%2fsecret.json",
        "/api/files/%2Fetc%2Fpasswd",
        "/api/files//etc/passwd",
        f"/api/files/{secret}",
        "/api/files/link.json",
        "/api/files/.a.wav.abcdefgh.tmp",
        "/api/files/script.sh",
        "/api/files/uploads/../../secret.json",
        "/api/takes/..%2Fsecret/spectrogram.png",
        "/api/takes/..",
    ]:
        r = client.get(path)
        assert r.status_code == 404, (path, r.status_code)
        assert "secret" not in r.text or "no " in r.text
    for relative in ["../secret.json", str(secret), "link.json", "a/../../secret.json", ""]:
        assert safe_file(out, relative) is None


def test_a_take_of_another_model_is_not_refined(client, studio, out):
    job = generate(client, seed=2, n=1)
    side = out / f"{job['takes'][0]}.json"
    record = json.loads(side.read_text())
    record["model_card_sha256"] = "0" * 64
    side.write_text(json.dumps(record))
    r = client.post("/api/refine", json={"take": job["takes"][0]})
    assert r.status_code == 409 and "another model" in r.json()["error"]
    assert client.get("/api/takes").json()["takes"][0]["same_model"] is False


def wav_bytes(seconds: float = 0.5, rate: int = 8000) -> bytes:
    buf = io.BytesIO()
    t = np.arange(int(seconds * rate)) / rate
    sf.write(buf, 0.3 * np.sin(2 * np.pi * 440 * t), rate, format="WAV", subtype="PCM_16")
    return buf.getvalue()


def test_uploads_are_decoded_or_refused(client, out):
    good = wav_bytes()
    r = client.post("/api/uploads", files={"file": ("../../my take.wav", good, "audio/wav")})
    assert r.status_code == 201, r.text
    up = r.json()
    assert up["name"] == "my take.wav" and up["sample_rate"] == 8000
    assert abs(up["seconds"] - 0.5) < 1e-9
    assert (out / up["file"]).read_bytes() == good
    assert client.get(up["url"]).content == good
    refused = [
        (b"this is not audio at all", 415, "not audio"),
        (b"", 415, "empty"),
        (b"RIFF" + os.urandom(2000), 415, "not audio"),
        (wav_bytes(seconds=20.0), 413, "at most 200000"),
    ]
    for data, status, text in refused:
        r = client.post("/api/uploads", files={"file": ("x.wav", data, "audio/wav")})
        assert r.status_code == status, (status, r.text)
        assert text in r.json()["error"]
    assert sorted(p.name for p in (out / "uploads").iterdir()) == [up["file"].split("/")[1]]


def test_info_and_openapi_describe_the_api(client, pipe):
    info = client.get("/api/info").json()
    assert info["model"]["sample_rate"] == pipe.sample_rate
    assert info["defaults"]["takes"] == 4 and info["defaults"]["refine_steps"] == 16
    assert info["limits"]["max_takes"] == 6 and info["limits"]["max_seconds"] == 1.0
    schema = client.get("/openapi.json").json()
    for path in ["/api/generate", "/api/refine", "/api/vary", "/api/jobs/{job_id}", "/api/takes"]:
        assert path in schema["paths"], path
    assert "GenerateRequest" in schema["components"]["schemas"]
    page = client.get("/")
    assert page.status_code == 200 and "/static/app.js" in page.text
    assert client.get("/static/app.js").status_code == 200


def test_queue_runs_one_job_at_a_time_and_refuses_when_full():
    queue = JobQueue(max_queued=1)
    release = threading.Event()
    running = []

    def blocked(callback):
        running.append(len(running))
        callback(GenerationStarted(total=1, batch_size=1, steps=2, batches=1))
        callback(SolverStep(1, 2, 80.0, 1.0))
        release.wait(10)
        return ["a"]

    try:
        first = queue.submit("generate", "one", blocked)
        record = queue.wait(first.id, 5, after=1)  # until running with progress
        assert record["status"] == "running" and record["position"] == 0
        second = queue.submit("generate", "two", blocked)
        assert queue.view(second)["position"] == 1
        with pytest.raises(QueueFullError, match="queue is full"):
            queue.submit("generate", "three", blocked)
        snap = queue.snapshot()
        assert snap["running"]["id"] == first.id and [j["id"] for j in snap["queued"]] == [
            second.id
        ]
        assert len(running) == 1
        release.set()
        assert queue.wait(second.id, 10)["status"] == "done"
        assert queue.view(first)["takes"] == ["a"]
    finally:
        release.set()
        queue.close()


def test_a_failed_job_reports_one_line_and_the_worker_goes_on():
    queue = JobQueue()

    def bad(callback):
        raise ValueError("boom\nsecond line")

    try:
        failed = queue.submit("generate", "bad", bad)
        assert queue.wait(failed.id, 10)["error"] == "internal error: ValueError: boom\nsecond line"
        ok = queue.submit("generate", "ok", lambda cb: ["b"])
        assert queue.wait(ok.id, 10)["status"] == "done"
    finally:
        queue.close()


def test_vary_a_take_and_an_upload_then_refine_a_variation(client, studio, pipe):
    take = generate(client, seed=1, n=1)["takes"][0]
    r = client.post(
        "/api/vary?wait=30",
        json={"take": take, "strength": 0.4, "n": 2, "seed": 7, "normalize": "none"},
    )
    assert r.status_code == 200 and r.json()["status"] == "done", r.text
    varied = [client.get(f"/api/takes/{i}").json() for i in r.json()["takes"]]
    assert [v["seed"] for v in varied] == [7, 8]
    assert all(v["kind"] == "vary" and v["varied_from"] == take for v in varied)
    assert varied[0]["prompt"] == "a beep" and varied[0]["strength"] == 0.4
    source = studio.take(take).audio
    want = pipe.vary(
        read_audio(source, pipe.sample_rate), pipe.sample_rate, ["a beep"], seeds=[7],
        strength=0.4,
    ).audio[0].clamp(-1, 1).numpy()  # fmt: skip
    audio, _ = sf.read(studio.take(varied[0]["id"]).audio, dtype="float32")
    assert np.abs(audio - want).max() < 1.0 / 16000

    r = client.post("/api/refine?wait=30", json={"take": varied[0]["id"], "steps": 3})
    assert r.status_code == 200 and r.json()["status"] == "done", r.text
    refined = client.get(f"/api/takes/{r.json()['takes'][0]}").json()
    assert refined["kind"] == "refine" and refined["record"]["strength"] == 0.4

    up = client.post("/api/uploads", files={"file": ("tone.wav", wav_bytes(0.3), "audio/wav")})
    body = {"upload": up.json()["id"], "prompt": "a knock", "strength": 0.9, "n": 1}
    r = client.post("/api/vary?wait=30", json={**body, "mask": [[0.05, 0.1]]})
    assert r.status_code == 200 and r.json()["status"] == "done", r.text
    made = client.get(f"/api/takes/{r.json()['takes'][0]}").json()
    assert made["vary_input"] == up.json()["file"].split("/")[1] and made["mask"] == [[0.05, 0.1]]
    for bad, text in [
        ({"strength": 0.5}, "exactly one of take and upload"),
        ({"upload": "0123456789abcdef", "prompt": "x"}, "no upload"),
        ({"upload": up.json()["id"]}, "prompt is empty"),
        ({"take": take, "mask": [[0.2, 0.1]]}, "start < end"),
    ]:
        r = client.post("/api/vary", json=bad)
        assert r.status_code in (400, 404) and text in r.json()["error"], (bad, r.text)


def test_spectrogram_pictures_show_pitch_and_keep_quiet_takes_dark():
    rate = 8000
    t = np.arange(rate) / rate
    loud = spectrogram_rgb(np.sin(2 * np.pi * 1000 * t), rate)
    quiet = spectrogram_rgb(1e-4 * np.sin(2 * np.pi * 1000 * t), rate)
    high = spectrogram_rgb(np.sin(2 * np.pi * 3000 * t), rate)
    silent = spectrogram_rgb(np.zeros(rate), rate)
    assert loud.shape[0] == 128 and 350 <= loud.shape[1] <= 400 and loud.shape[2] == 3

    def brightest_row(picture):
        return int(np.argmax(picture.astype(int).sum(axis=(1, 2))))

    edges = row_edges(rate, 129, 128)  # 256-point FFT at 8 kHz: 129 bins of 31.25 Hz
    row = 127 - int(np.searchsorted(edges, 1000 / 31.25, side="right") - 1)
    assert abs(brightest_row(loud) - row) <= 1
    assert brightest_row(high) < brightest_row(loud)  # higher pitch, higher up
    assert loud.astype(int).sum() > quiet.astype(int).sum()
    assert (silent == silent[0, 0]).all() and loud.max() > silent.max()
    assert read_png(png_bytes(loud)).tolist() == loud.tolist()


def test_studio_command_safety(monkeypatch):
    from typer.testing import CliRunner

    from soundctm.cli.app import build_app
    from soundctm.cli.studio import bind, is_loopback
    from soundctm.errors import InvalidArgumentError

    assert is_loopback("127.0.0.1") and is_loopback("localhost") and is_loopback("::1")
    assert not is_loopback("0.0.0.0") and not is_loopback("192.168.1.4")
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen(1)
    try:
        with pytest.raises(InvalidArgumentError, match=r"cannot listen on 127\.0\.0\.1"):
            bind("127.0.0.1", taken.getsockname()[1])
    finally:
        taken.close()
    r = CliRunner().invoke(build_app(), ["studio", "--port", "70000"])
    assert r.exit_code == 2 and "--port" in r.output


def test_studio_command_warns_off_loopback(student_dir):
    from typer.testing import CliRunner

    from soundctm.cli.app import build_app

    # an address of no interface here: the warning, then a one-line error (no traffic)
    r = CliRunner().invoke(
        build_app(), ["studio", "--model", str(student_dir), "--host", "192.0.2.1"]
    )
    assert r.exit_code == 2
    assert "warning: listening on 192.0.2.1" in r.output and "no password" in r.output
    assert "error: cannot listen on 192.0.2.1" in r.output


@pytest.mark.slow
def test_studio_command_serves_until_ctrl_c(student_dir, tmp_path):
    free = socket.socket()
    free.bind(("127.0.0.1", 0))
    port = free.getsockname()[1]
    free.close()
    exe = [sys.executable, "-m", "soundctm", "studio", "--model", str(student_dir)]
    proc = subprocess.Popen(
        [*exe, "--port", str(port), "--out", str(tmp_path / "takes"), "--device", "cpu"],
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        line = proc.stderr.readline()  # printed once the model is loaded and warm
        assert f"soundctm studio: http://127.0.0.1:{port}/" in line, line
        info = httpx.get(f"http://127.0.0.1:{port}/api/info", timeout=10).json()
        assert info["model"]["path"] == str(student_dir.resolve())
        assert "warning" not in line
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(20)
    assert proc.returncode == 0


def test_a_job_is_followed_by_long_polling(client):
    r = client.post("/api/generate", json={"prompt": "a beep", "n": 2, "seed": 4})
    assert r.status_code == 202 and r.json()["status"] in ("queued", "running", "done")
    job, seen = r.json(), []
    while job["status"] not in ("done", "failed"):
        job = client.get(f"/api/jobs/{job['id']}?wait=10&after={job['version']}").json()
        seen.append(job["status"])
    assert job["status"] == "done" and len(job["takes"]) == 2 and job["progress"] == 1.0
    assert client.get(f"/api/jobs/{job['id']}").status_code == 200
    queue = client.get("/api/queue").json()
    assert queue["running"] is None and queue["queued"] == []
    assert queue["recent"][0]["id"] == job["id"]


def test_negative_prompt_is_recorded_and_vary_is_refused_where_missing(client, studio, monkeypatch):
    job = generate(client, seed=6, n=1, nu=2.0, negative_prompt="hiss")
    take = client.get(f"/api/takes/{job['takes'][0]}").json()
    assert take["negative_prompt"] == "hiss" and take["nu"] == 2.0
    monkeypatch.setattr(type(studio.pipe), "vary", None)  # a pipeline without vary
    assert client.get("/api/info").json()["features"]["vary"] is False
    r = client.post("/api/vary", json={"take": job["takes"][0]})
    assert r.status_code == 501 and "not available in this build" in r.json()["error"]
