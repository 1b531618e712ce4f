// soundctm studio page: plain JavaScript, no build step. It uses only the JSON API
// (docs/studio.md, /openapi.json): /api/info, /api/takes, /api/generate, /api/refine,
// /api/vary, /api/uploads, /api/jobs/{id}, /api/queue and the files under /api/files.
"use strict";

const $ = (id) => document.getElementById(id);
let info = null;
let queueTimer = null;

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === undefined || v === null || v === false) continue;
    if (k === "class") node.className = v;
    else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else node.setAttribute(k, v === true ? "" : v);
  }
  for (const c of children) {
    if (c === false || c === null || c === undefined) continue;
    node.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return node;
}

function showError(text) {
  const m = $("message");
  m.textContent = text;
  m.hidden = !text;
}

function showNotice(text) {
  const m = $("notice");
  m.textContent = text;
  m.hidden = !text;
}

async function api(path, options = {}) {
  const response = await fetch(path, options);
  let body = null;
  try { body = await response.json(); } catch (e) { body = null; }
  if (!response.ok) {
    throw new Error((body && body.error) || `${response.status} ${response.statusText}`);
  }
  return body;
}

const postJSON = (path, body) => api(path, {
  method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body),
});

function numberOrNull(id) {
  const v = $(id).value.trim();
  return v === "" ? null : Number(v);
}

// The sampling settings as the API names them; empty fields are left to the model's defaults.
function sampling() {
  const out = {};
  for (const key of ["steps", "gamma", "nu", "omega", "seconds"]) {
    const v = numberOrNull(key);
    if (v !== null) out[key] = v;
  }
  out.normalize = $("normalize").value || null;
  out.format = $("format").value || null;
  const negative = $("negative").value.trim();
  if (negative) out.negative_prompt = negative;
  return out;
}

// "0.5:1.2, 2:2.5" -> [[0.5, 1.2], [2, 2.5]] (the server checks the spans)
function mask() {
  const text = $("mask").value.trim();
  if (!text) return [];
  return text.split(/[\s,;]+/).filter(Boolean).map((span) => span.split(":").map(Number));
}

// ------------------------------------------------------------------ jobs and the queue
function jobRow(job) {
  const pct = Math.round((job.progress || 0) * 100);
  const where = job.status === "queued" ? `queued #${job.position}` : job.status;
  const detail = job.status === "failed" ? job.error
    : job.status === "done" ? `${job.takes.length} take(s) in ${(job.elapsed || 0).toFixed(2)} s`
    : job.steps ? `${pct}% of ${job.steps} step(s)` : `${pct}%`;
  const warn = job.warnings && job.warnings.length ? ` (${job.warnings.length} warning(s))` : "";
  return el("div", { class: `job ${job.status}`, "data-job": job.id, title: (job.warnings || []).join("\n") },
    el("span", {}, `${job.kind} · ${where}`),
    el("div", { class: "bar" }, el("div", { style: `width:${pct}%` })),
    el("span", { class: "muted" }, `${job.summary} — ${detail}${warn}`));
}

async function refreshQueue() {
  clearTimeout(queueTimer);
  let q = null;
  try { q = await api("/api/queue"); } catch (e) { queueTimer = setTimeout(refreshQueue, 3000); return; }
  const active = [q.running, ...q.queued].filter(Boolean);
  $("jobs").replaceChildren(...active.map(jobRow));
  const state = $("queue-state");
  state.textContent = active.length ? `${q.running ? "running" : "idle"} · ${q.queued.length} queued` : "idle";
  state.classList.toggle("busy", active.length > 0);
  queueTimer = setTimeout(refreshQueue, active.length ? 500 : 4000);
}

// Wait for a job by long polling: each answer comes as soon as the job changes.
async function follow(job) {
  let version = job.version;
  while (job.status !== "done" && job.status !== "failed") {
    job = await api(`/api/jobs/${encodeURIComponent(job.id)}?wait=10&after=${version}`);
    version = job.version;
    const row = document.querySelector(`[data-job="${job.id}"]`);
    if (row) row.replaceWith(jobRow(job));
    else $("jobs").append(jobRow(job));
  }
  refreshQueue();
  if (job.status === "failed") throw new Error(job.error);
  return job;
}

// Queue a job (the button is off only while the request is sent, so more can be queued
// behind it), follow it, then show the new takes.
async function run(button, path, body) {
  showError("");
  showNotice("");
  button.disabled = true;
  let job = null;
  try {
    job = await postJSON(path, body);
  } catch (e) {
    showError(e.message);
    return;
  } finally {
    button.disabled = false;
  }
  try {
    refreshQueue();
    const done = await follow(job);
    if (done.warnings && done.warnings.length) showNotice(done.warnings.join("; "));
    await loadTakes();
  } catch (e) {
    showError(e.message);
  }
}

// ------------------------------------------------------------------ takes
function takeView(t, label) {
  const name = t.audio.split("/").pop();
  const node = el("div", { class: `take ${t.kind === "refine" ? "refined" : ""}`, "data-take": t.id },
    el("div", { class: "label" },
      el("b", {}, label),
      el("span", {}, `seed ${t.seed} · ${t.steps} step${t.steps === 1 ? "" : "s"}`
        + (t.strength !== null && t.strength !== undefined ? ` · strength ${t.strength}` : "")
        + (t.gain_db ? ` · ${t.gain_db > 0 ? "+" : ""}${t.gain_db.toFixed(1)} dB` : ""))),
    el("img", { src: t.spectrogram, alt: `spectrogram of ${t.id}`, loading: "lazy" }),
    el("audio", { controls: true, preload: "metadata", src: t.audio }),
    el("div", { class: "actions" },
      t.kind !== "refine" && el("button", {
        class: "refine", title: "Same seed, more steps, gamma 0", disabled: !t.same_model,
        onclick: (ev) => run(ev.currentTarget, "/api/refine", {
          take: t.id, steps: numberOrNull("refine-steps") || info.defaults.refine_steps,
          gamma: 0,
        }),
      }, "Refine"),
      info.features.vary && el("button", {
        class: "vary", title: "Variations of this take at the strength above",
        onclick: (ev) => run(ev.currentTarget, "/api/vary", {
          ...sampling(), take: t.id, prompt: $("prompt").value.trim() || t.prompt,
          strength: Number($("strength").value), n: numberOrNull("n") || info.defaults.takes,
          mask: mask(),
        }),
      }, "Vary"),
      el("a", { class: "download-audio", href: t.audio, download: name },
        name.split(".").pop().toUpperCase()),
      el("a", { class: "download-json", href: t.sidecar, download: `${t.id}.json` }, "sidecar")));
  return node;
}

// Originals (sample or vary) each get a card; their refines sit beside them for A/B.
function groups(takes) {
  const byId = new Map(takes.map((t) => [t.id, t]));
  const children = new Map();
  const roots = [];
  for (const t of takes) {
    if (t.kind === "refine" && t.refined_from && byId.has(t.refined_from)) {
      if (!children.has(t.refined_from)) children.set(t.refined_from, []);
      children.get(t.refined_from).push(t);
    } else {
      roots.push(t);
    }
  }
  return roots.map((t) => ({ take: t, refines: (children.get(t.id) || []).reverse() }));
}

// Takes never change once written, so their nodes are kept and reused: a refresh adds the new
// ones without reloading the pictures and players already on the page.
const takeNodes = new Map();

function takeNode(t, label) {
  const key = `${t.id}\n${label}`;
  if (!takeNodes.has(key)) takeNodes.set(key, takeView(t, label));
  return takeNodes.get(key);
}

async function loadTakes() {
  const data = await api("/api/takes?limit=200");
  const cards = groups(data.takes).map(({ take, refines }) => {
    const title = take.kind === "vary"
      ? `${take.prompt} (variation of ${take.varied_from || take.vary_input})`
      : take.prompt;
    const versions = [takeNode(take, take.kind === "vary" ? "variation" : "original"),
      ...refines.map((r) => takeNode(r, `refined (${r.steps} steps)`))];
    return el("article", { class: `group ${refines.length ? "ab" : ""}`, "data-group": take.id },
      el("h3", { title }, title), el("div", { class: "versions" }, ...versions));
  });
  $("takes").replaceChildren(...cards);
  $("take-count").textContent = data.total ? `(${data.total})` : "";
  $("empty").hidden = data.total > 0;
}

// ------------------------------------------------------------------ actions
function generate() {
  const prompt = $("prompt").value.trim();
  if (!prompt) { showError("type a prompt first"); return; }
  const body = { ...sampling(), prompt, n: numberOrNull("n") || info.defaults.takes };
  const seed = numberOrNull("seed");
  if (seed !== null) body.seed = seed;
  run($("generate"), "/api/generate", body);
}

async function varyUpload() {
  const file = $("upload").files[0];
  if (!file) { showError("choose an audio file to vary first"); return; }
  const prompt = $("prompt").value.trim();
  if (!prompt) { showError("type a prompt for the variations first"); return; }
  const button = $("vary-upload");
  showError("");
  button.disabled = true;
  try {
    const form = new FormData();
    form.append("file", file);
    const upload = await api("/api/uploads", { method: "POST", body: form });
    $("vary-note").textContent = `${upload.name || "upload"}: ${upload.seconds.toFixed(2)} s`;
    button.disabled = false;
    await run(button, "/api/vary", {
      ...sampling(), upload: upload.id, prompt, strength: Number($("strength").value),
      n: numberOrNull("n") || info.defaults.takes, mask: mask(),
    });
  } catch (e) {
    showError(e.message);
    button.disabled = false;
  }
}

async function start() {
  try {
    info = await api("/api/info");
  } catch (e) {
    showError(`cannot reach the studio API: ${e.message}`);
    return;
  }
  const m = info.model;
  $("model").textContent = `${m.name || "model"} · ${m.kind} · ${m.sample_rate} Hz · `
    + `up to ${m.max_seconds} s · out: ${info.out}`;
  const d = info.defaults;
  for (const key of ["steps", "gamma", "nu", "omega", "seconds"]) $(key).value = d[key];
  $("n").value = d.takes;
  $("n").max = info.limits.max_takes;
  $("steps").max = info.limits.max_steps;
  $("refine-steps").value = d.refine_steps;
  $("refine-steps").max = info.limits.max_steps;
  $("seconds").max = m.max_seconds;
  $("prompt").maxLength = info.limits.max_prompt_chars;
  $("normalize").replaceChildren(...info.features.normalize.map((mode) =>
    el("option", { value: mode, selected: mode === d.normalize }, mode)));
  $("format").replaceChildren(...info.features.formats.map((f) =>
    el("option", { value: f, selected: f === d.format }, f)));
  $("mask-label").hidden = !info.features.mask;
  $("negative-label").hidden = !info.features.negative_prompt;
  if (!info.features.vary) {
    for (const id of ["strength", "upload", "vary-upload", "mask"]) $(id).disabled = true;
    $("vary-note").textContent = "vary is not available in this build";
  }
  $("strength").value = d.strength;
  $("strength-value").textContent = Number(d.strength).toFixed(2);
  $("strength").addEventListener("input", () => {
    $("strength-value").textContent = Number($("strength").value).toFixed(2);
  });
  $("generate").addEventListener("click", generate);
  $("vary-upload").addEventListener("click", varyUpload);
  $("prompt").addEventListener("keydown", (ev) => {
    if (ev.key === "Enter" && !ev.shiftKey) { ev.preventDefault(); generate(); }
  });
  await loadTakes().catch((e) => showError(e.message));
  refreshQueue();
  document.body.dataset.ready = "1";
}

start();
