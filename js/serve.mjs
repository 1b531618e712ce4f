#!/usr/bin/env node
// A small static server for the browser page: this folder at /, an exported model at /model/.
//
//   node serve.mjs --model EXPORTED [--port 8000] [--host 127.0.0.1]
//
// then open http://127.0.0.1:8000/web/ . Prints one JSON line {"url": ...} once listening
// (--port 0 picks a free port). Everything is served from disk: no CDN, onnxruntime-web's .wasm
// files come from node_modules/.
import { createReadStream } from 'node:fs';
import { stat } from 'node:fs/promises';
import http from 'node:http';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';

const here = path.dirname(fileURLToPath(import.meta.url));
const TYPES = {
  '.html': 'text/html; charset=utf-8',
  '.js': 'text/javascript; charset=utf-8',
  '.mjs': 'text/javascript; charset=utf-8',
  '.json': 'application/json',
  '.wasm': 'application/wasm',
  '.css': 'text/css',
  '.npy': 'application/octet-stream',
};

const { values: args } = parseArgs({
  options: {
    model: { type: 'string' },
    port: { type: 'string', default: '8000' },
    host: { type: 'string', default: '127.0.0.1' },
  },
});
if (!args.model) {
  process.stderr.write('error: give the exported folder with --model (made by `soundctm export`)\n');
  process.exit(2);
}
const roots = [
  ['/model/', path.resolve(args.model)],
  ['/', here],
];

/** The file for a URL path, or null when it is outside the served folders. */
function resolveFile(urlPath) {
  const clean = decodeURIComponent(urlPath.split('?')[0]);
  for (const [prefix, root] of roots) {
    if (!clean.startsWith(prefix)) continue;
    const file = path.resolve(root, `.${clean.slice(prefix.length - 1)}`);
    return file === root || file.startsWith(root + path.sep) ? file : null;
  }
  return null;
}

const server = http.createServer(async (req, res) => {
  let file = resolveFile(req.url ?? '/');
  try {
    if (file && (await stat(file)).isDirectory()) file = path.join(file, 'index.html');
    if (!file || !(await stat(file)).isFile()) throw new Error('not found');
  } catch {
    res.writeHead(404, { 'content-type': 'text/plain' }).end('not found\n');
    return;
  }
  res.writeHead(200, {
    'content-type': TYPES[path.extname(file)] ?? 'application/octet-stream',
    'cache-control': 'no-store',
  });
  createReadStream(file).pipe(res);
});
server.listen(Number(args.port), args.host, () => {
  const { port } = server.address();
  process.stdout.write(`${JSON.stringify({ url: `http://${args.host}:${port}/web/` })}\n`);
});
