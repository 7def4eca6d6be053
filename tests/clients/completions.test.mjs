// FIM / text completions with the official `openai` SDK (`client.completions.create`) against a
// real `dsv4 serve` (demo model): scripted outputs make the text deterministic, the rest samples.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { startServer, script, EOS, API_KEY } from './helpers.mjs';

let srv;
let client;
before(async () => {
  srv = await startServer();
  client = srv.openai();
});
after(async () => {
  if (srv) await srv.stop();
});

test('FIM non-streaming: text_completion object, usage (sampled)', async () => {
  const r = await client.completions.create({
    model: 'deepseek-v4-flash', prompt: 'def add(a, b):\n    ', suffix: '\n    return c\n', max_tokens: 6, temperature: 0.5, seed: 3,
  });
  assert.equal(r.object, 'text_completion');
  assert.equal(r.model, 'deepseek-v4-flash');
  assert.ok(r.id.startsWith('cmpl-'));
  assert.ok(r.system_fingerprint);
  assert.equal(r.choices.length, 1);
  const ch = r.choices[0];
  assert.equal(ch.index, 0);
  assert.equal(typeof ch.text, 'string');
  assert.equal(ch.logprobs, null);
  assert.ok(['stop', 'length'].includes(ch.finish_reason));
  const u = r.usage;
  assert.ok(u.prompt_tokens > 0 && u.completion_tokens > 0 && u.completion_tokens <= 6);
  assert.equal(u.total_tokens, u.prompt_tokens + u.completion_tokens);
  assert.equal(u.prompt_cache_hit_tokens + u.prompt_cache_miss_tokens, u.prompt_tokens);
});

test('FIM scripted: EOS ends with stop, stop strings are not returned, echo', async () => {
  const headers = { 'x-dsv4-test-script': script('c = a + b' + EOS) };
  let r = await client.completions.create({ model: 'deepseek-chat', prompt: 'def add(a, b):\n    ', suffix: '\n    return c', max_tokens: 50 }, { headers });
  assert.equal(r.choices[0].text, 'c = a + b');
  assert.equal(r.choices[0].finish_reason, 'stop');
  assert.equal(r.usage.completion_tokens, 6);  // 5 text tokens + EOS

  r = await client.completions.create({ model: 'deepseek-v4-flash', prompt: 'x', suffix: 'y', stop: [' +'], max_tokens: 50 }, { headers });
  assert.equal(r.choices[0].text, 'c = a');
  assert.equal(r.choices[0].finish_reason, 'stop');

  r = await client.completions.create({ model: 'deepseek-v4-flash', prompt: 'def add(a, b):\n    ', echo: true, max_tokens: 50 }, { headers });
  assert.equal(r.choices[0].text, 'def add(a, b):\n    c = a + b');

  // Cut off by max_tokens: length.
  r = await client.completions.create({ model: 'deepseek-v4-flash', prompt: 'x', suffix: '', max_tokens: 2 }, { headers });
  assert.equal(r.choices[0].finish_reason, 'length');
  assert.equal(r.usage.completion_tokens, 2);
});

test('FIM streaming: text chunks, finish chunk with usage, [DONE]', async () => {
  const stream = await client.completions.create(
    { model: 'deepseek-v4-flash', prompt: 'for i in ', suffix: ':\n    pass', stream: true, stream_options: { include_usage: true }, max_tokens: 50 },
    { headers: { 'x-dsv4-test-script': script('range(10)' + EOS) } });
  const chunks = [];
  for await (const c of stream) chunks.push(c);
  let text = '';
  for (const c of chunks) {
    assert.equal(c.object, 'text_completion');
    assert.ok(c.system_fingerprint);
    text += c.choices[0].text;
  }
  assert.equal(text, 'range(10)');
  const last = chunks.at(-1);
  assert.equal(last.choices[0].finish_reason, 'stop');
  assert.equal(last.choices[0].text, '');
  assert.ok(last.usage.prompt_tokens > 0);
  assert.equal(last.usage.completion_tokens, 5);
  for (const c of chunks.slice(0, -1)) {
    assert.equal(c.choices[0].finish_reason, null);
    assert.equal(c.usage, null);
  }
});

test('FIM streaming sampled on the demo model ends with [DONE]', async () => {
  const res = await fetch(srv.base + '/beta/completions', {
    method: 'POST',
    headers: { 'content-type': 'application/json', authorization: `Bearer ${API_KEY}` },
    body: JSON.stringify({ model: 'deepseek-v4-flash', prompt: 'int main() {', suffix: '}', max_tokens: 5, stream: true }),
  });
  assert.equal(res.status, 200);
  const body = await res.text();
  assert.ok(body.trimEnd().endsWith('data: [DONE]'));
  assert.match(body, /"finish_reason":"(stop|length)"/);
});

test('all three paths are served; validation errors are OpenAI-shaped', async () => {
  for (const p of ['/completions', '/v1/completions', '/beta/completions']) {
    const res = await fetch(srv.base + p, {
      method: 'POST',
      headers: { 'content-type': 'application/json', authorization: `Bearer ${API_KEY}`, 'x-dsv4-test-script': script('ok' + EOS) },
      body: JSON.stringify({ model: 'deepseek-v4-flash', prompt: 'a', suffix: 'b' }),
    });
    assert.equal(res.status, 200, p);
    assert.equal((await res.json()).choices[0].text, 'ok');
  }
  await assert.rejects(client.completions.create({ model: 'deepseek-v4-flash', max_tokens: 5 }),
    (e) => e.status === 400 && e.param === 'prompt');
  await assert.rejects(client.completions.create({ model: 'deepseek-v4-flash', prompt: 'x', logprobs: 2, echo: true }),
    (e) => e.status === 400 && e.param === 'logprobs' && /not supported/.test(e.message));
  await assert.rejects(client.completions.create({ model: 'deepseek-v4-flash', prompt: 'x', logprobs: 21 }),
    (e) => e.status === 422 && e.param === 'logprobs');
  await assert.rejects(client.completions.create({ model: 'deepseek-v4-flash', prompt: 'x', temperature: 9 }),
    (e) => e.status === 422);
  await assert.rejects(client.completions.create({ model: 'nope', prompt: 'x' }), (e) => e.status === 404);
  const res = await fetch(srv.base + '/v1/completions', {
    method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ model: 'deepseek-v4-flash', prompt: 'x' }),
  });
  assert.equal(res.status, 401);
});

test('FIM logprobs: legacy shape, streaming and not', async () => {
  const headers = { 'x-dsv4-test-script': script('c = a + b' + EOS) };
  const r = await client.completions.create({ model: 'deepseek-v4-flash', prompt: 'x', suffix: 'y', logprobs: 2, max_tokens: 20 }, { headers });
  const lp = r.choices[0].logprobs;
  assert.equal(lp.tokens.join(''), 'c = a + b');
  assert.equal(lp.token_logprobs.length, lp.tokens.length);
  assert.ok(lp.token_logprobs.every((v) => typeof v === 'number' && v <= 0));
  assert.ok(lp.top_logprobs.every((t) => Object.keys(t).length === 2));
  assert.equal(lp.text_offset[0], 0);
  for (let i = 1; i < lp.tokens.length; ++i) assert.equal(lp.text_offset[i], lp.text_offset[i - 1] + lp.tokens[i - 1].length);

  const stream = await client.completions.create(
    { model: 'deepseek-v4-flash', prompt: 'x', suffix: 'y', logprobs: 0, stream: true, max_tokens: 20 }, { headers });
  const toks = [];
  for await (const c of stream) {
    const l = c.choices[0].logprobs;
    if (l) {
      toks.push(...l.tokens);
      assert.ok(l.top_logprobs.every((t) => Object.keys(t).length === 0));
    }
  }
  assert.equal(toks.join(''), 'c = a + b');
});
