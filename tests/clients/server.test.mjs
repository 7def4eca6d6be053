// Server lifecycle: health, keep-alive reuse, graceful shutdown with a stream in flight.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { startServer, script, API_KEY } from './helpers.mjs';

test('SIGTERM ends an in-flight stream cleanly and exits 0', async () => {
  const srv = await startServer();
  try {
    const h = await (await fetch(srv.base + '/health')).json();
    assert.equal(h.status, 'ok');
    const res = await fetch(srv.base + '/v1/chat/completions', {
      method: 'POST',
      headers: { 'content-type': 'application/json', authorization: `Bearer ${API_KEY}`, 'x-dsv4-test-script': script(' w'.repeat(1500)) },
      body: JSON.stringify({ model: 'deepseek-chat', stream: true, max_tokens: 1500, messages: [{ role: 'user', content: 'go' }] }),
    });
    assert.equal(res.status, 200);
    assert.match(res.headers.get('content-type'), /text\/event-stream/);
    const reader = res.body.getReader();
    let text = '';
    let signalled = false;
    const deadline = Date.now() + 30000;
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      text += Buffer.from(value).toString();
      if (!signalled && (text.match(/data: /g) || []).length > 3) {
        signalled = true;
        srv.proc.kill('SIGTERM');
      }
      assert.ok(Date.now() < deadline, 'stream did not end after SIGTERM');
    }
    assert.ok(signalled);
    assert.match(text, /"finish_reason":"(length|stop)"/);
    assert.ok(text.trimEnd().endsWith('data: [DONE]'));
    const { code } = await srv.exited;
    assert.equal(code, 0);
  } finally {
    await srv.stop();
  }
});

test('context overflow is a clear 400 (context_length_exceeded)', async () => {
  const srv = await startServer(['--ctx', '64']);
  try {
    const client = srv.openai();
    await assert.rejects(client.chat.completions.create({
      model: 'deepseek-chat', messages: [{ role: 'user', content: 'hello '.repeat(100) }],
    }), (e) => e.status === 400 && e.code === 'context_length_exceeded' && /context size is 64 tokens/.test(e.message));
    await assert.rejects(client.chat.completions.create({
      model: 'deepseek-chat', max_tokens: 60, messages: [{ role: 'user', content: 'hello' }],
    }), (e) => e.status === 400 && e.code === 'context_length_exceeded');
    // Without max_tokens the default is clamped to what fits.
    const r = await client.chat.completions.create({ model: 'deepseek-chat', messages: [{ role: 'user', content: 'hello' }] },
      { headers: { 'x-dsv4-test-script': script('ok<｜end▁of▁sentence｜>') } });
    assert.equal(r.choices[0].message.content, 'ok');
  } finally {
    await srv.stop();
  }
});

// A scripted chat stream of 1500 tokens (~30 s unless `controller` aborts it), returned once its
// first content delta arrived, i.e. once it is generating: its body's reader.
async function startLongStream(srv, controller) {
  const a = await fetch(srv.base + '/v1/chat/completions', {
    method: 'POST', signal: controller.signal,
    headers: { 'content-type': 'application/json', authorization: `Bearer ${API_KEY}`,
      'x-dsv4-test-script': script(' w'.repeat(1500)) },
    body: JSON.stringify({ model: 'deepseek-chat', stream: true, max_tokens: 1500, messages: [{ role: 'user', content: 'go' }] }),
  });
  assert.equal(a.status, 200);
  const reader = a.body.getReader();
  let text = '';
  while (!text.includes('" w"')) {
    const { value, done } = await reader.read();
    assert.ok(!done, 'the long stream ended early');
    text += Buffer.from(value).toString();
  }
  return reader;
}

test('queue full (--max-queue 1, --max-batch 1): 503 with Retry-After, OpenAI and Anthropic error shapes', async () => {
  const srv = await startServer(['--max-queue', '1', '--max-batch', '1']);  // (one generating, one waiting)
  const controller = new AbortController();
  const auth = { 'content-type': 'application/json', authorization: `Bearer ${API_KEY}` };
  try {
    // A: a long scripted stream keeps the engine busy, running (not queued).
    const reader = await startLongStream(srv, controller);
    // B waits in the queue (its one place).
    const b = fetch(srv.base + '/v1/completions', {
      method: 'POST', headers: auth, body: JSON.stringify({ model: 'deepseek-v4-flash', prompt: 'x', max_tokens: 2 }),
    });
    for (let i = 0; i < 100 && (await (await fetch(srv.base + '/health')).json()).queued < 1; ++i)
      await new Promise((r) => setTimeout(r, 50));
    // C: refused at once.
    const c = await fetch(srv.base + '/v1/chat/completions', {
      method: 'POST', headers: auth, body: JSON.stringify({ model: 'deepseek-chat', messages: [{ role: 'user', content: 'x' }] }),
    });
    assert.equal(c.status, 503);
    assert.ok(Number(c.headers.get('retry-after')) >= 1);
    const cj = await c.json();
    assert.equal(cj.error.code, 'server_overloaded');
    assert.equal(cj.error.type, 'server_error');
    const m = await fetch(srv.base + '/v1/messages', {
      method: 'POST', headers: { 'content-type': 'application/json', 'x-api-key': API_KEY },
      body: JSON.stringify({ model: 'claude-sonnet-4-5', max_tokens: 4, messages: [{ role: 'user', content: 'x' }] }),
    });
    assert.equal(m.status, 503);
    assert.ok(m.headers.get('retry-after'));
    assert.deepEqual((await m.json()).error.type, 'overloaded_error');
    // The SDK surfaces it as an APIError with status 503 (no retries configured).
    await assert.rejects(srv.openai().completions.create({ model: 'deepseek-v4-flash', prompt: 'x', max_tokens: 2 }),
      (e) => e.status === 503);
    controller.abort();
    const rb = await b;
    assert.equal(rb.status, 200);
    assert.equal((await rb.json()).object, 'text_completion');
  } finally {
    controller.abort();
    await srv.stop();
  }
});

test('continuous batching (default --max-batch 4): a second request completes while a long stream runs', async () => {
  const srv = await startServer();
  const controller = new AbortController();
  const auth = { 'content-type': 'application/json', authorization: `Bearer ${API_KEY}` };
  try {
    // A: a long scripted stream, running.
    const reader = await startLongStream(srv, controller);
    // B runs alongside A (one place in the batch), so it ends long before A would.
    const t0 = Date.now();
    const b = await fetch(srv.base + '/v1/chat/completions', {
      method: 'POST', headers: { ...auth, 'x-dsv4-test-script': script('done<｜end▁of▁sentence｜>') },
      body: JSON.stringify({ model: 'deepseek-chat', max_tokens: 8, messages: [{ role: 'user', content: 'x' }] }),
    });
    assert.equal(b.status, 200);
    const bj = await b.json();
    assert.equal(bj.choices[0].message.content, 'done');
    assert.equal(bj.choices[0].finish_reason, 'stop');
    assert.ok(Date.now() - t0 < 20000, 'B waited for A');
    // A is still streaming.
    const { done } = await reader.read();
    assert.ok(!done, 'stream A ended before B');
  } finally {
    controller.abort();
    await srv.stop();
  }
});

test('SSE keep-alives flow while a long prompt is prefilled (before the first token)', async () => {
  const srv = await startServer(['--sse-keepalive', '0.001']);
  try {
    const prompt = 'The quick brown fox jumps over the lazy dog. '.repeat(200);  // ~2K tokens: progress after every block of the chunk
    const post = (path, body, extra = {}) => fetch(srv.base + path, {
      method: 'POST',
      headers: { 'content-type': 'application/json', authorization: `Bearer ${API_KEY}`,
        'x-dsv4-test-script': script('ok<｜end▁of▁sentence｜>'), ...extra },
      body: JSON.stringify(body),
    });
    // OpenAI: SSE comment lines between the opening chunk and the first content delta.
    const o = await (await post('/v1/chat/completions', {
      model: 'deepseek-chat', stream: true, max_tokens: 8, messages: [{ role: 'user', content: prompt }],
    })).text();
    const firstContent = o.indexOf('"content":"ok"');
    assert.ok(firstContent > 0, o.slice(0, 500));
    const before = o.slice(0, firstContent);
    assert.ok((before.match(/^: keep-alive$/gm) || []).length >= 1, 'no keep-alive before the first token');
    assert.ok(o.trimEnd().endsWith('data: [DONE]'));
    // Anthropic: ping events before the first text delta. Another prompt: the same one would be
    // served from the prefix cache with next to no prefill.
    const prompt2 = 'Pack my box with five dozen liquor jugs, said the sphinx. '.repeat(200);
    const a = await (await post('/v1/messages', {
      model: 'deepseek-chat', stream: true, max_tokens: 8, messages: [{ role: 'user', content: prompt2 }],
    }, { 'anthropic-version': '2023-06-01' })).text();
    const firstDelta = a.indexOf('event: content_block_delta');
    assert.ok(firstDelta > 0, a.slice(0, 500));
    assert.ok((a.slice(0, firstDelta).match(/^event: ping$/gm) || []).length >= 1, 'no ping before the first delta');
  } finally {
    await srv.stop();
  }
});
