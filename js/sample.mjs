#!/usr/bin/env node
// Generate a clip from an exported soundctm model with onnxruntime-node (README.md here).
//
//   node sample.mjs --model EXPORTED --prompt "a dog barks" --out dog.wav
//        [--noise noise.npy | --seed N] [--steps N] [--gamma G] [--nu NU] [--omega W]
//        [--seconds S] [--out-npy audio.npy] [--threads N] [--repeat N]
//   node sample.mjs --model EXPORTED --tokens --prompt A [--prompt B ...]   (token ids only)
//
// Prints one JSON line: the settings, the timings (ms) and where the audio went.
import { readFile, rename, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { parseArgs } from 'node:util';

import { Tokenizer } from '@huggingface/tokenizers';
import * as ort from 'onnxruntime-node';

import {
  encodeNpy,
  encodeWav,
  generate,
  givenNoise,
  latentShape,
  loadModel,
  parseNpy,
  resolve,
  seededNormal,
  tokenIds,
} from './soundctm.mjs';

const number = (v) => (v === undefined ? undefined : Number(v));

function fail(message) {
  process.stderr.write(`error: ${message.replace(/\s*\n\s*/g, ' ')}\n`); // one line
  process.exit(2);
}

async function writeAtomic(file, bytes) {
  const tmp = `${file}.tmp-${process.pid}`;
  await writeFile(tmp, bytes);
  await rename(tmp, file);
}

export async function loadFolder(dir, threads, graphs = true) {
  const where = (name) => path.join(dir, name);
  const io = {
    readJSON: async (name) => JSON.parse(await readFile(where(name), 'utf8')),
    readBytes: (name) => readFile(where(name)),
    // onnxruntime-node reads each graph's external data (*.onnx.data) from beside it
    session: (info) =>
      ort.InferenceSession.create(where(info.file), {
        intraOpNumThreads: threads,
        interOpNumThreads: 1,
        graphOptimizationLevel: 'all',
        logSeverityLevel: 3,
      }),
  };
  return loadModel(io, Tokenizer, { graphs });
}

async function main() {
  let args;
  try {
    args = parseArgs({
      options: {
        model: { type: 'string' },
        prompt: { type: 'string', multiple: true, default: [''] },
        out: { type: 'string' },
        'out-npy': { type: 'string' },
        noise: { type: 'string' },
        seed: { type: 'string', default: '0' },
        steps: { type: 'string' },
        gamma: { type: 'string' },
        nu: { type: 'string' },
        omega: { type: 'string' },
        seconds: { type: 'string' },
        threads: { type: 'string', default: '0' },
        repeat: { type: 'string', default: '1' },
        tokens: { type: 'boolean', default: false },
      },
    }).values;
  } catch (e) {
    fail(`${e.message}; see the usage at the top of sample.mjs`);
  }
  if (!args.model) fail('give the exported folder with --model (made by `soundctm export`)');
  let model;
  try {
    model = await loadFolder(args.model, Number(args.threads), !args.tokens);
  } catch (e) {
    fail(`cannot load the exported model ${args.model}: ${e.message.split('\n')[0]}`);
  }
  if (args.tokens) {
    // the token ids of each --prompt, one JSON line each (the tests compare them with Python's)
    const t = model.spec.text;
    for (const prompt of args.prompt) {
      const ids = tokenIds(model.tokenizer, prompt, t.max_length, t.fallback_token_id);
      process.stdout.write(`${JSON.stringify(ids)}\n`);
    }
    return;
  }
  if (args.prompt.length > 1) fail('give one --prompt (several only with --tokens)');
  const options = {
    prompt: args.prompt[0],
    steps: number(args.steps),
    gamma: number(args.gamma),
    nu: number(args.nu),
    omega: number(args.omega),
    seconds: number(args.seconds),
  };
  let plan;
  try {
    plan = resolve(model, options);
  } catch (e) {
    fail(e.message);
  }
  let npy = null;
  if (args.noise) {
    try {
      npy = parseNpy(await readFile(args.noise));
      givenNoise(npy, latentShape(model.spec, plan.seconds)); // checks the shape up front
    } catch (e) {
      fail(`${args.noise}: ${e.message}`);
    }
  }
  if (!npy) {
    try {
      seededNormal(args.seed);
    } catch (e) {
      fail(e.message);
    }
  }
  const runs = [];
  let result;
  for (let r = 0; r < Math.max(1, Number(args.repeat)); r++) {
    const noise = npy ? givenNoise(npy, latentShape(model.spec, plan.seconds)) : seededNormal(args.seed);
    const start = performance.now();
    result = await generate(model, ort, { ...options, noise });
    runs.push(performance.now() - start);
  }
  if (args.out) await writeAtomic(args.out, encodeWav(result.audio, result.sampleRate));
  if (args['out-npy']) await writeAtomic(args['out-npy'], encodeNpy(result.audio, [result.audio.length]));
  const sorted = [...runs].sort((a, b) => a - b);
  process.stdout.write(
    `${JSON.stringify({
      ...result.plan,
      prompt: args.prompt[0],
      noise: args.noise ?? `seededNormal(${args.seed})`,
      samples: result.audio.length,
      sample_rate: result.sampleRate,
      out: args.out ?? null,
      runs_ms: runs,
      median_ms: sorted[Math.floor(sorted.length / 2)],
      last_timings_ms: result.timings,
    })}\n`,
  );
}

await main();
