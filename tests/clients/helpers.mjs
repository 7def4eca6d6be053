// Shared by the client tests: starts a real `dsv4 serve` on 127.0.0.1 with a free port, loads the
// official SDKs from tools/node, and builds x-dsv4-test-script headers.
import { spawn } from 'node:child_process';
import { createRequire } from 'node:module';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const here = path.dirname(fileURLToPath(import.meta.url));
export const repoRoot = path.resolve(here, '..', '..');
// ESM ignores NODE_PATH: resolve the SDKs from tools/node explicitly (override: DSV4_NODE_MODULES).
const nodeDir = process.env.DSV4_NODE_MODULES
  ? path.dirname(process.env.DSV4_NODE_MODULES)
  : path.join(repoRoot, 'tools', 'node');
const require = createRequire(path.join(nodeDir, 'package.json'));
export const OpenAI = require('openai').default ?? require('openai');
export const Anthropic = require('@anthropic-ai/sdk').default ?? require('@anthropic-ai/sdk');

export const API_KEY = 'sk-test-dsv4';
export const EOS = '<｜end▁of▁sentence｜>';
export const DSML = '｜DSML｜';

// Header values must be ASCII: send the script as a JSON string literal with \u escapes.
export function script(text) {
  return JSON.stringify(text).replace(/[\u007f-\uffff]/g, (c) => '\\u' + c.charCodeAt(0).toString(16).padStart(4, '0'));
}

export function toolCallText(calls) {
  let s = `\n\n<${DSML}tool_calls>\n`;
  for (const c of calls) {
    s += `<${DSML}invoke name="${c.name}">\n`;
    for (const [k, v] of Object.entries(c.args)) {
      const isStr = typeof v === 'string';
      s += `<${DSML}parameter name="${k}" string="${isStr}">${isStr ? v : JSON.stringify(v)}</${DSML}parameter>\n`;
    }
    s += `</${DSML}invoke>\n`;
  }
  return s + `</${DSML}tool_calls>` + EOS;
}

// The timer is cleared once `p` settles, so a pending timeout never keeps the test process alive.
export function withTimeout(p, ms, what) {
  let timer;
  const t = new Promise((_, rej) => { timer = setTimeout(() => rej(new Error(`timeout: ${what}`)), ms); });
  return Promise.race([p, t]).finally(() => clearTimeout(timer));
}

export async function startServer(extraArgs = []) {
  const bin = process.env.DSV4_BIN || path.join(repoRoot, 'build', 'dsv4');
  const args = ['serve', '--host', '127.0.0.1', '--port', '0', '--api-key', API_KEY, '--test-script-tokens',
    '--threads', '2', ...extraArgs];
  const proc = spawn(bin, args, { stdio: ['ignore', 'pipe', 'pipe'] });
  let stderr = '';
  proc.stderr.on('data', (d) => { stderr += d.toString(); });
  const base = await withTimeout(new Promise((resolve, reject) => {
    let out = '';
    proc.stdout.on('data', (d) => {
      out += d.toString();
      const m = out.match(/listening on (http:\/\/[0-9.:]+)/);
      if (m) resolve(m[1]);
    });
    proc.on('exit', (code) => reject(new Error(`dsv4 serve exited (${code}): ${stderr}`)));
  }), 120000, 'server start');
  const exited = new Promise((resolve) => proc.on('exit', (code, signal) => resolve({ code, signal })));
  return {
    base,
    proc,
    exited,
    log: () => stderr,
    openai: (opts = {}) => new OpenAI({ apiKey: API_KEY, baseURL: base + '/v1', maxRetries: 0, timeout: 60000, ...opts }),
    anthropic: (opts = {}) => new Anthropic({ apiKey: API_KEY, baseURL: base, maxRetries: 0, timeout: 60000, ...opts }),
    async stop() {
      if (proc.exitCode === null && proc.signalCode === null) proc.kill('SIGTERM');
      return withTimeout(exited, 20000, 'server stop');
    },
  };
}

export async function health(base) {
  const r = await fetch(base + '/health');
  return r.json();
}
