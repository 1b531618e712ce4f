// The sampler of docs/onnx.md ("The whole sampler in numpy") for Node.js and the browser.
//
// Nothing here imports a runtime: the caller hands in onnxruntime (onnxruntime-node or
// onnxruntime-web), the Tokenizer class of @huggingface/tokenizers and a way to read the files
// of an exported folder, so the same code runs in both (sample.mjs: Node; web/app.mjs: browser).
//
// What it reproduces: CTM gamma-sampling (Kim et al. 2024, algorithm 2; docs/method.md section
// 5) with nu-guidance on the host, the graphs of export.json for the text encoder, g(x, t, s)
// and the decoder. The initial noise and the noise of each later step are GIVEN (a .npy written
// by Python, see writeNoise in soundctm/export/noise.py) to get soundctm's exact audio; without
// them a seeded JavaScript generator draws them: deterministic, but not torch's numbers.

/** Karras noise levels of `steps` jumps: steps + 1 levels from sigma_max to sigma_min
 * (Karras et al. 2022, eq. 5; docs/method.md section 1), exact end points, float64. */
export function karrasGrid(steps, sigmaMin, sigmaMax, rho) {
  const lo = sigmaMin ** (1 / rho);
  const hi = sigmaMax ** (1 / rho);
  const sig = [];
  for (let i = 0; i <= steps; i++) sig.push((hi + (i / steps) * (lo - hi)) ** rho);
  sig[0] = sigmaMax;
  sig[steps] = sigmaMin;
  return sig;
}

/** gamma-sampling's target of a jump: s = sqrt(1 - gamma^2) (sigma_next - sigma_min) + sigma_min
 * (method.md section 5). */
export function gammaTarget(next, sigmaMin, gamma) {
  return Math.sqrt(1 - gamma * gamma) * (next - sigmaMin) + sigmaMin;
}

// ---------------------------------------------------------------------------- noise
/** A seeded standard-normal source (xoshiro128** + Box-Muller, float32). Deterministic in
 * every JavaScript engine, but NOT torch's generator: the same seed gives another sound than
 * `soundctm sample --seed`. For soundctm's exact noise pass a noise file instead. */
export function seededNormal(seed) {
  let big;
  try {
    big = BigInt(seed);
  } catch {
    big = -1n;
  }
  if (big < 0n || big > 2n ** 63n - 1n) throw new Error(`seed must be an integer in [0, 2**63 - 1], got ${seed}`);
  const lo = Number(big & 0xffffffffn);
  const hi = Number(big >> 32n);
  const s = [0x9e3779b9 ^ hi, 0x243f6a88, 0xb7e15162, lo ^ 0x5851f42d];
  const rotl = (x, k) => (x << k) | (x >>> (32 - k));
  const next = () => {
    const r = Math.imul(rotl(Math.imul(s[1], 5), 7), 9) >>> 0;
    const t = s[1] << 9;
    s[2] ^= s[0];
    s[3] ^= s[1];
    s[1] ^= s[2];
    s[0] ^= s[3];
    s[2] ^= t;
    s[3] = rotl(s[3], 11);
    return r;
  };
  for (let i = 0; i < 16; i++) next(); // mix the seed in
  let spare = null;
  const normal = () => {
    if (spare !== null) {
      const v = spare;
      spare = null;
      return v;
    }
    const u = (next() + 1) / 4294967297; // (0, 1)
    const v = next() / 4294967296;
    const r = Math.sqrt(-2 * Math.log(u));
    spare = r * Math.sin(2 * Math.PI * v);
    return r * Math.cos(2 * Math.PI * v);
  };
  return (size) => Float32Array.from({ length: size }, normal);
}

/** A noise source from a stack of draws [draws, ...latent shape] (a .npy written by Python):
 * draw 0 is the initial noise, draw i the fresh noise after jump i (gamma > 0). */
export function givenNoise(npy, latentShape) {
  const per = latentShape.reduce((a, b) => a * b, 1);
  const tail = npy.shape.slice(1);
  if (tail.length !== latentShape.length || tail.some((n, i) => n !== latentShape[i])) {
    throw new Error(
      `the noise file has the shape [${npy.shape}] but this clip's latent is ` +
        `[${latentShape}]: write it for the same model and --seconds`,
    );
  }
  let used = 0;
  return (size) => {
    if (size !== per) throw new Error(`noise of ${size} values asked, a draw has ${per}`);
    if (used >= npy.shape[0]) {
      throw new Error(`the noise file holds ${npy.shape[0]} draws; this run needs more (steps)`);
    }
    return npy.data.slice(used * per, ++used * per);
  };
}

// ---------------------------------------------------------------------------- files
/** Parse a little-endian float32 C-order .npy (version 1-3). */
export function parseNpy(bytes) {
  const b = bytes instanceof Uint8Array ? bytes : new Uint8Array(bytes);
  const magic = String.fromCharCode(...b.subarray(1, 6));
  if (b[0] !== 0x93 || magic !== 'NUMPY') throw new Error('not a .npy file');
  const view = new DataView(b.buffer, b.byteOffset, b.byteLength);
  const major = b[6];
  const headerLen = major === 1 ? view.getUint16(8, true) : view.getUint32(8, true);
  const start = major === 1 ? 10 : 12;
  const header = new TextDecoder().decode(b.subarray(start, start + headerLen));
  const descr = /'descr':\s*'([^']+)'/.exec(header)?.[1];
  const fortran = /'fortran_order':\s*True/.test(header);
  const shape = (/'shape':\s*\(([^)]*)\)/.exec(header)?.[1] ?? '')
    .split(',')
    .map((x) => x.trim())
    .filter(Boolean)
    .map(Number);
  if (descr !== '<f4' || fortran) {
    throw new Error(`the .npy must hold little-endian float32 in C order, it has ${descr}`);
  }
  const offset = start + headerLen;
  const count = shape.reduce((a, c) => a * c, 1);
  if (b.length < offset + 4 * count) throw new Error('the .npy file is truncated');
  const data = new Float32Array(count); // a copy: Node's Buffer may share a pool, unaligned
  new Uint8Array(data.buffer).set(b.subarray(offset, offset + 4 * count));
  return { shape, data };
}

/** A float32 .npy of `data` with `shape`. */
export function encodeNpy(data, shape) {
  let header = `{'descr': '<f4', 'fortran_order': False, 'shape': (${shape.join(', ')}${shape.length === 1 ? ',' : ''}), }`;
  const pad = 64 - ((10 + header.length + 1) % 64);
  header += ' '.repeat(pad % 64) + '\n';
  const out = new Uint8Array(10 + header.length + data.length * 4);
  out.set([0x93, 0x4e, 0x55, 0x4d, 0x50, 0x59, 1, 0]);
  new DataView(out.buffer).setUint16(8, header.length, true);
  out.set(new TextEncoder().encode(header), 10);
  out.set(new Uint8Array(data.buffer, data.byteOffset, data.length * 4), 10 + header.length);
  return out;
}

/** A mono 16-bit PCM WAV of `audio` (clipped to [-1, 1], scaled by 32767 as `soundctm sample`
 * writes it through libsndfile). */
export function encodeWav(audio, sampleRate) {
  const out = new Uint8Array(44 + audio.length * 2);
  const v = new DataView(out.buffer);
  const text = (at, s) => [...s].forEach((c, i) => v.setUint8(at + i, c.charCodeAt(0)));
  text(0, 'RIFF');
  v.setUint32(4, 36 + audio.length * 2, true);
  text(8, 'WAVEfmt ');
  v.setUint32(16, 16, true);
  v.setUint16(20, 1, true); // PCM
  v.setUint16(22, 1, true); // mono
  v.setUint32(24, sampleRate, true);
  v.setUint32(28, sampleRate * 2, true);
  v.setUint16(32, 2, true);
  v.setUint16(34, 16, true);
  text(36, 'data');
  v.setUint32(40, audio.length * 2, true);
  for (let i = 0; i < audio.length; i++) {
    const x = Math.max(-1, Math.min(1, audio[i]));
    v.setInt16(44 + 2 * i, Math.round(x * 32767), true);
  }
  return out;
}

// ---------------------------------------------------------------------------- tokenizer
/** Token ids of `text` as the Python runtime makes them: special tokens added, truncated to
 * `maxLength` (the content is cut, the special tokens kept, as Hugging Face's
 * `truncation=True, max_length=...` does), `[fallbackId]` when there are none. */
export function tokenIds(tokenizer, text, maxLength, fallbackId) {
  const full = tokenizer.encode(text, { add_special_tokens: true }).ids.map(Number);
  let ids = full;
  if (full.length > maxLength) {
    const bare = tokenizer.encode(text, { add_special_tokens: false }).ids.map(Number);
    const extra = full.length - bare.length; // the template's special tokens around the text
    let at = 0;
    while (at <= extra && !bare.every((id, i) => full[at + i] === id)) at++;
    if (at > extra || maxLength < extra) {
      throw new Error(`cannot truncate ${JSON.stringify(text)} to ${maxLength} tokens`);
    }
    ids = [...full.slice(0, at), ...bare.slice(0, maxLength - extra), ...full.slice(at + bare.length)];
  }
  if (ids.length === 0) {
    if (fallbackId === null || fallbackId === undefined) {
      throw new Error(`the tokenizer gives no tokens for ${JSON.stringify(text)}`);
    }
    ids = [fallbackId];
  }
  return ids;
}

// ---------------------------------------------------------------------------- the model
/**
 * Load an exported folder. `io.readJSON(name)` and `io.readBytes(name)` read the folder's files
 * (relative names); `io.session(info, spec)` creates the onnxruntime session of one graph of
 * export.json (`info.file`); `Tokenizer` is @huggingface/tokenizers' class. With
 * `graphs: false` only export.json and the tokenizer are read (token ids only).
 */
export async function loadModel(io, Tokenizer, { graphs = true } = {}) {
  const spec = await io.readJSON('export.json');
  if (spec.format !== 'soundctm-onnx') throw new Error('not an exported soundctm model (export.json)');
  if (spec.format_version !== 1) {
    throw new Error(`export.json format_version ${spec.format_version} is newer than this sampler`);
  }
  const card = graphs ? await io.readJSON('model.json') : null;
  const tok = spec.text.tokenizer;
  const tokenizer = new Tokenizer(
    await io.readJSON(`${tok}/tokenizer.json`),
    await io.readJSON(`${tok}/tokenizer_config.json`),
  );
  const sessions = {};
  for (const name of graphs ? ['text_encoder', 'network', 'decoder'] : []) {
    sessions[name] = await io.session(spec.graphs[name], spec);
  }
  return { spec, card, tokenizer, sessions, cache: new Map() };
}

/** The external-data files of one graph (the files export.json lists beside it). */
export function externalDataFiles(spec, graphFile) {
  return Object.keys(spec.files).filter((f) => f.startsWith(`${graphFile}.`));
}

/** The per-sample latent shape of a clip of `seconds` (`T = ceil(round(seconds * rate) / k)`). */
export function latentShape(spec, seconds) {
  const shape = [...spec.latent.shape];
  if (Math.abs(seconds - spec.seconds) < 1e-9) return shape;
  const k = spec.latent.samples_per_frame;
  if (!k) throw new Error(`this exported model only generates ${spec.seconds} s clips`);
  shape[spec.latent.frame_axes[0]] = Math.max(1, Math.ceil(Math.round(seconds * spec.sample_rate) / k));
  return shape;
}

async function encodeText(model, ort, text) {
  // token states [L, D] of one prompt, encoded alone and unpadded (text.exact)
  if (model.cache.has(text)) return model.cache.get(text);
  const t = model.spec.text;
  const ids = tokenIds(model.tokenizer, text, t.max_length, t.fallback_token_id);
  const dims = [1, ids.length];
  const feeds = {
    input_ids: new ort.Tensor('int64', BigInt64Array.from(ids, BigInt), dims),
    attention_mask: new ort.Tensor('int64', new BigInt64Array(ids.length).fill(1n), dims),
  };
  const out = await model.sessions.text_encoder.run(feeds);
  const tokens = out[model.sessions.text_encoder.outputNames[0]];
  const state = { length: tokens.dims[1], data: Float32Array.from(tokens.data) };
  model.cache.set(text, state);
  return state;
}

/** The settings of a run, card defaults filled in and checked (as `soundctm sample` does). */
export function resolve(model, options = {}) {
  const d = model.card.defaults ?? {};
  const pick = (k) => (options[k] === undefined || options[k] === null ? d[k] : options[k]);
  const plan = {
    steps: pick('steps') ?? 1,
    gamma: pick('gamma') ?? 0,
    nu: pick('nu') ?? 1,
    omega: pick('omega') ?? 0,
    seconds: options.seconds ?? model.card.seconds,
  };
  if (model.card.kind !== 'ctm') {
    throw new Error(`this sampler runs students (kind ctm); the model is a ${model.card.kind}`);
  }
  if (!Number.isInteger(plan.steps) || plan.steps < 1) throw new Error('steps must be an integer >= 1');
  if (!(plan.gamma >= 0 && plan.gamma <= 1)) throw new Error('gamma must be in [0, 1]');
  if (!(plan.nu >= 0)) throw new Error('nu must be >= 0');
  if (!(plan.seconds > 0 && plan.seconds <= model.card.max_seconds)) {
    throw new Error(`seconds must be in (0, ${model.card.max_seconds}]`);
  }
  return plan;
}

/**
 * Generate one clip: CTM gamma-sampling with nu-guidance (docs/onnx.md, the numpy sampler).
 * `options`: prompt, steps, gamma, nu, omega, seconds (card defaults where absent), and
 * `noise(size) -> Float32Array` (given noise or seededNormal). Returns {audio, sampleRate,
 * plan, timings}.
 */
export async function generate(model, ort, options) {
  const plan = resolve(model, options);
  const { card, spec, sessions } = model;
  const clock = () => (typeof performance !== 'undefined' ? performance.now() : Date.now());
  const timings = {};
  let t0 = clock();
  const states = [await encodeText(model, ort, options.prompt ?? '')];
  if (plan.nu !== 1) states.push(await encodeText(model, ort, '')); // conditional, unconditional
  const n = states.length;
  const dim = spec.text.dim;
  const length = Math.max(...states.map((h) => h.length));
  const tokens = new Float32Array(n * length * dim); // zero after each prompt's end
  const mask = new Uint8Array(n * length);
  states.forEach((h, r) => {
    tokens.set(h.data, r * length * dim);
    mask.fill(1, r * length, r * length + h.length);
  });
  timings.text_ms = clock() - t0;

  const shape = latentShape(spec, plan.seconds);
  const size = shape.reduce((a, b) => a * b, 1);
  const sig = karrasGrid(plan.steps, card.sigma_min, card.sigma_max, card.rho);
  const lo = card.sigma_min;
  const z = options.noise(size);
  let x = new Float32Array(size);
  for (let k = 0; k < size; k++) x[k] = z[k] * sig[0];
  const rows = (v) => new ort.Tensor('float32', new Float32Array(n).fill(v), [n]);
  const tokensT = new ort.Tensor('float32', tokens, [n, length, dim]);
  const maskT = new ort.Tensor('bool', mask, [n, length]);
  t0 = clock();
  for (let i = 0; i < plan.steps; i++) {
    const t = sig[i];
    const s = gammaTarget(sig[i + 1], lo, plan.gamma);
    const xs = new Float32Array(n * size);
    for (let r = 0; r < n; r++) xs.set(x, r * size);
    const feeds = {
      x: new ort.Tensor('float32', xs, [n, ...shape]),
      t: rows(t),
      s: rows(s),
      omega: rows(plan.omega),
      tokens: tokensT,
      mask: maskT,
    };
    const out = await sessions.network.run(feeds);
    const g = out[sessions.network.outputNames[0]].data;
    // G(x, t, s) = (s/t) x + (1 - s/t) g (CTM eq. 7), then nu-guidance on the jumps
    const a = s / t;
    const jump = new Float32Array(n * size);
    for (let k = 0; k < n * size; k++) jump[k] = a * xs[k] + (1 - a) * g[k];
    if (n === 2) {
      for (let k = 0; k < size; k++) x[k] = jump[size + k] + plan.nu * (jump[k] - jump[size + k]);
    } else {
      x = jump;
    }
    if (i < plan.steps - 1) {
      const spread = Math.sqrt(Math.max(sig[i + 1] ** 2 - s ** 2, 0));
      if (spread > 0) {
        const fresh = options.noise(size); // fresh noise back up to the next level
        for (let k = 0; k < size; k++) x[k] += spread * fresh[k];
      }
    }
  }
  timings.network_ms = clock() - t0;
  t0 = clock();
  const dec = await sessions.decoder.run({ latents: new ort.Tensor('float32', x, [1, ...shape]) });
  let audio = dec[sessions.decoder.outputNames[0]].data;
  if (spec.latent.crop_to_clip) audio = audio.slice(0, Math.round(plan.seconds * card.sample_rate));
  timings.decoder_ms = clock() - t0;
  return { audio: Float32Array.from(audio), sampleRate: card.sample_rate, plan, timings };
}
