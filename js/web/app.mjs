// The browser page: loads an exported model with onnxruntime-web (WASM) and generates with the
// sampler of ../soundctm.mjs. ?model=URL picks the exported folder (default ../model/, as
// serve.mjs serves it); ?noise=URL runs on given noise (a .npy from soundctm.export.noise),
// else the seed feeds a JavaScript generator (deterministic, but not torch's noise).
import { Tokenizer } from '@huggingface/tokenizers';
import * as ort from 'onnxruntime-web';

import {
  encodeWav,
  externalDataFiles,
  generate,
  givenNoise,
  latentShape,
  loadModel,
  parseNpy,
  resolve,
  seededNormal,
} from '../soundctm.mjs';

const query = new URLSearchParams(location.search);
const base = new URL(query.get('model') ?? '../model/', location.href);
if (!base.pathname.endsWith('/')) base.pathname += '/';
ort.env.wasm.wasmPaths = new URL('../node_modules/onnxruntime-web/dist/', import.meta.url).href;
ort.env.wasm.numThreads = self.crossOriginIsolated ? Math.min(4, navigator.hardwareConcurrency) : 1;

const $ = (id) => document.getElementById(id);
const status = (text, error = false) => {
  $('status').textContent = text;
  $('status').className = error ? 'error' : '';
};

async function fetchOk(name) {
  const res = await fetch(new URL(name, base));
  if (!res.ok) throw new Error(`${new URL(name, base)}: HTTP ${res.status}`);
  return res;
}

const io = {
  readJSON: async (name) => (await fetchOk(name)).json(),
  readBytes: async (name) => new Uint8Array(await (await fetchOk(name)).arrayBuffer()),
  session: async (info, spec) => {
    // the graph and its external data (*.onnx.data), handed to onnxruntime-web as bytes
    const externalData = [];
    for (const path of externalDataFiles(spec, info.file)) {
      externalData.push({ path, data: await io.readBytes(path) });
    }
    return ort.InferenceSession.create(await io.readBytes(info.file), {
      executionProviders: ['wasm'],
      graphOptimizationLevel: 'all',
      externalData,
    });
  },
};

async function run(options) {
  const model = await ready;
  const plan = resolve(model, options);
  let noise;
  if (options.noise) {
    // given draws {shape: [draws, ...latent], data: numbers}, e.g. from a test
    const npy = { shape: options.noise.shape, data: Float32Array.from(options.noise.data) };
    noise = givenNoise(npy, latentShape(model.spec, plan.seconds));
  } else if (options.noiseUrl) {
    const res = await fetch(new URL(options.noiseUrl, location.href));
    if (!res.ok) throw new Error(`${options.noiseUrl}: HTTP ${res.status}`);
    noise = givenNoise(parseNpy(new Uint8Array(await res.arrayBuffer())), latentShape(model.spec, plan.seconds));
  } else {
    noise = seededNormal(options.seed ?? 0);
  }
  const start = performance.now();
  const out = await generate(model, ort, { ...options, noise });
  const ms = performance.now() - start;
  const wav = new Blob([encodeWav(out.audio, out.sampleRate)], { type: 'audio/wav' });
  const url = URL.createObjectURL(wav);
  $('player').src = url;
  $('download').href = url;
  $('download').hidden = false;
  return { ...out, ms };
}

const started = performance.now();
const ready = loadModel(io, Tokenizer);
// for scripts and tests: soundctm.ready, soundctm.generate({prompt, seed | noiseUrl | noise,
// steps, gamma, nu, omega, seconds}) -> {audio, sampleRate, plan, timings, ms}
window.soundctm = { ready, generate: run };

ready.then(
  (model) => {
    const d = model.card.defaults ?? {};
    for (const k of ['steps', 'gamma', 'nu', 'omega']) $(k).placeholder = d[k];
    $('go').disabled = false;
    status(`model loaded in ${Math.round(performance.now() - started)} ms (${model.card.sample_rate} Hz, ${model.card.seconds} s clips)`);
  },
  (e) => status(`cannot load the model from ${base}: ${e.message}`, true),
);

$('form').addEventListener('submit', async (event) => {
  event.preventDefault();
  const value = (id) => ($(id).value === '' ? undefined : Number($(id).value));
  $('go').disabled = true;
  status('generating...');
  try {
    const out = await run({
      prompt: $('prompt').value,
      seed: value('seed') ?? 0,
      steps: value('steps'),
      gamma: value('gamma'),
      nu: value('nu'),
      omega: value('omega'),
      noiseUrl: query.get('noise') ?? undefined,
    });
    const t = out.timings;
    status(
      `done: ${(out.audio.length / out.sampleRate).toFixed(2)} s of audio in ${Math.round(out.ms)} ms ` +
        `(text ${Math.round(t.text_ms)}, network ${Math.round(t.network_ms)}, decoder ${Math.round(t.decoder_ms)})`,
    );
  } catch (e) {
    status(`error: ${e.message}`, true);
  } finally {
    $('go').disabled = false;
  }
});
