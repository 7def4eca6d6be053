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
