// The official `openai` SDK against a real `dsv4 serve` (demo model). Scripted outputs
// (x-dsv4-test-script) make thinking / tool-call streaming deterministic; the rest samples for real.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { startServer, script, toolCallText, health, withTimeout, EOS, API_KEY } from './helpers.mjs';

let srv;
let client;
before(async () => {
  srv = await startServer();
  client = srv.openai();
});
after(async () => {
  if (srv) await srv.stop();
});

const TOOLS = [{
  type: 'function',
  function: {
    name: 'get_weather',
    description: 'Weather for a city',
    parameters: { type: 'object', properties: { city: { type: 'string' }, days: { type: 'integer' } }, required: ['city'] },
  },
}];

async function collect(stream) {
  const chunks = [];
  for await (const c of stream) chunks.push(c);
  return chunks;
}

test('non-streaming chat (thinking off via deepseek-chat), usage fields', async () => {
  const r = await client.chat.completions.create({
    model: 'deepseek-chat', messages: [{ role: 'user', content: 'Hello' }], max_tokens: 8, temperature: 0.7, seed: 1,
  });
  assert.equal(r.object, 'chat.completion');
  assert.equal(r.model, 'deepseek-v4-flash');
  assert.ok(r.system_fingerprint);
  const ch = r.choices[0];
  assert.equal(ch.message.role, 'assistant');
  assert.equal(typeof ch.message.content, 'string');
  assert.equal(ch.message.reasoning_content, undefined);
  assert.ok(['stop', 'length'].includes(ch.finish_reason));
  const u = r.usage;
  assert.ok(u.prompt_tokens > 0 && u.completion_tokens > 0 && u.completion_tokens <= 8);
  assert.equal(u.total_tokens, u.prompt_tokens + u.completion_tokens);
  assert.equal(u.prompt_cache_hit_tokens + u.prompt_cache_miss_tokens, u.prompt_tokens);
  assert.equal(u.prompt_tokens_details.cached_tokens, u.prompt_cache_hit_tokens);
});

test('streaming with thinking: first chunk shape, reasoning_content deltas, usage on finish chunk', async () => {
  const stream = await client.chat.completions.create(
    { model: 'deepseek-v4-flash', messages: [{ role: 'user', content: 'Hi' }], stream: true, stream_options: { include_usage: true } },
    { headers: { 'x-dsv4-test-script': script('Let me think about it.</think>Hello there!' + EOS) } });
  const chunks = await collect(stream);
  assert.deepEqual(chunks[0].choices[0].delta, { role: 'assistant', content: null, reasoning_content: '' });
  let reasoning = '', content = '';
  for (const c of chunks) {
    assert.equal(c.object, 'chat.completion.chunk');
    assert.ok(c.system_fingerprint);
    const d = c.choices[0]?.delta ?? {};
    reasoning += d.reasoning_content ?? '';
    content += d.content ?? '';
  }
  assert.equal(reasoning, 'Let me think about it.');
  assert.equal(content, 'Hello there!');
  const last = chunks.at(-1);
  assert.equal(last.choices[0].finish_reason, 'stop');
  assert.ok(last.usage.completion_tokens_details.reasoning_tokens > 0);
  assert.ok(last.usage.completion_tokens_details.reasoning_tokens < last.usage.completion_tokens);
  for (const c of chunks.slice(0, -1)) assert.equal(c.usage, null);
});

test('thinking disabled with thinking:{type:disabled}: no reasoning key, real sampling', async () => {
  const stream = await client.chat.completions.create({
    model: 'deepseek-v4-flash', messages: [{ role: 'user', content: 'Count to three' }], stream: true, max_tokens: 6,
    thinking: { type: 'disabled' },
  });
  const chunks = await collect(stream);
  assert.deepEqual(chunks[0].choices[0].delta, { role: 'assistant', content: '' });
  for (const c of chunks) assert.ok(!('reasoning_content' in (c.choices[0]?.delta ?? {})));
  assert.ok(['stop', 'length'].includes(chunks.at(-1).choices[0].finish_reason));
});

test('tool-call round trip: streamed call, tool result, cache hit on the second turn', async () => {
  const messages = [{ role: 'user', content: 'What is the weather in Paris for 3 days? Also Rome.' }];
  const stream = await client.chat.completions.create(
    { model: 'deepseek-v4-flash', messages, tools: TOOLS, stream: true },
    { headers: { 'x-dsv4-test-script': script('I should call the tool.</think>' + toolCallText([
      { name: 'get_weather', args: { city: 'Paris', days: '3' } },
      { name: 'get_weather', args: { city: 'Rome', days: 2 } }])) } });
  const chunks = await collect(stream);
  const calls = [];
  let reasoning = '';
  for (const c of chunks) {
    const d = c.choices[0]?.delta ?? {};
    reasoning += d.reasoning_content ?? '';
    for (const tc of d.tool_calls ?? []) {
      if (tc.id) {
        // id + name come first, before any argument fragment.
        assert.equal(calls[tc.index], undefined);
        assert.equal(tc.type, 'function');
        calls[tc.index] = { id: tc.id, name: tc.function.name, args: tc.function.arguments ?? '' };
      } else {
        calls[tc.index].args += tc.function.arguments;
      }
    }
  }
  assert.equal(calls.length, 2);
  assert.match(calls[0].id, /^call_00_[A-Za-z0-9]{24}$/);
  assert.match(calls[1].id, /^call_01_/);
  assert.notEqual(calls[0].id, calls[1].id);
  assert.equal(calls[0].name, 'get_weather');
  // "3" was written as a string; the schema says integer, so it is coerced.
  assert.deepEqual(JSON.parse(calls[0].args), { city: 'Paris', days: 3 });
  assert.deepEqual(JSON.parse(calls[1].args), { city: 'Rome', days: 2 });
  assert.equal(chunks.at(-1).choices[0].finish_reason, 'tool_calls');
  const first = chunks.at(-1).usage;

  messages.push({
    role: 'assistant', content: '', reasoning_content: reasoning,
    tool_calls: calls.map((c) => ({ id: c.id, type: 'function', function: { name: c.name, arguments: c.args } })),
  });
  messages.push({ role: 'tool', tool_call_id: calls[0].id, content: 'Sunny, 24C' });
  messages.push({ role: 'tool', tool_call_id: calls[1].id, content: 'Rain, 18C' });
  const r = await client.chat.completions.create(
    { model: 'deepseek-v4-flash', messages, tools: TOOLS },
    { headers: { 'x-dsv4-test-script': script('Both known.</think>Paris is sunny, Rome is rainy.' + EOS) } });
  assert.equal(r.choices[0].message.content, 'Paris is sunny, Rome is rainy.');
  assert.equal(r.choices[0].message.reasoning_content, 'Both known.');
  assert.equal(r.choices[0].finish_reason, 'stop');
  assert.ok(r.usage.prompt_tokens > first.prompt_tokens);
  assert.ok(r.usage.prompt_cache_hit_tokens > 0, `expected a prefix-cache hit, got ${JSON.stringify(r.usage)}`);
  assert.equal(r.usage.prompt_cache_hit_tokens + r.usage.prompt_cache_miss_tokens, r.usage.prompt_tokens);
});

test('non-streaming tool call and reasoning_content omitted in history is accepted', async () => {
  const r = await client.chat.completions.create(
    { model: 'deepseek-reasoner', messages: [{ role: 'user', content: 'weather?' }], tools: TOOLS, tool_choice: 'auto' },
    { headers: { 'x-dsv4-test-script': script('Call.</think>' + toolCallText([{ name: 'get_weather', args: { city: 'Oslo' } }])) } });
  const tc = r.choices[0].message.tool_calls;
  assert.equal(r.choices[0].finish_reason, 'tool_calls');
  assert.equal(tc.length, 1);
  assert.deepEqual(JSON.parse(tc[0].function.arguments), { city: 'Oslo' });
  const r2 = await client.chat.completions.create(
    { model: 'deepseek-v4-flash', tools: TOOLS, messages: [{ role: 'user', content: 'weather?' },
      { role: 'assistant', content: null, tool_calls: tc }, { role: 'tool', tool_call_id: tc[0].id, content: 'cold' }] },
    { headers: { 'x-dsv4-test-script': script('ok</think>Cold.' + EOS) } });
  assert.equal(r2.choices[0].message.content, 'Cold.');
});

test('tool_choice none drops DSML from the output', async () => {
  const r = await client.chat.completions.create(
    { model: 'deepseek-v4-flash', messages: [{ role: 'user', content: 'x' }], tools: TOOLS, tool_choice: 'none' },
    { headers: { 'x-dsv4-test-script': script('r</think>Text' + toolCallText([{ name: 'get_weather', args: { city: 'A' } }])) } });
  assert.equal(r.choices[0].message.content, 'Text');
  assert.equal(r.choices[0].message.tool_calls, undefined);
  assert.equal(r.choices[0].finish_reason, 'stop');
});

test('stop strings apply to content only', async () => {
  const r = await client.chat.completions.create(
    { model: 'deepseek-v4-flash', messages: [{ role: 'user', content: 'x' }], stop: ['END'] },
    { headers: { 'x-dsv4-test-script': script('reasoning with END inside</think>answer END more' + EOS) } });
  assert.equal(r.choices[0].message.reasoning_content, 'reasoning with END inside');
  assert.equal(r.choices[0].message.content, 'answer ');
  assert.equal(r.choices[0].finish_reason, 'stop');
});

test('errors: bad key 401, unknown model 404, invalid JSON 400, image part 400, range 422, context 400', async () => {
  const bad = srv.openai({ apiKey: 'wrong' });
  await assert.rejects(bad.chat.completions.create({ model: 'deepseek-chat', messages: [{ role: 'user', content: 'x' }] }),
    (e) => e.status === 401 && e.error?.type === 'authentication_error');
  await assert.rejects(client.chat.completions.create({ model: 'gpt-4o', messages: [{ role: 'user', content: 'x' }] }),
    (e) => e.status === 404 && /gpt-4o/.test(e.message));
  await assert.rejects(client.chat.completions.create({
    model: 'deepseek-chat', messages: [{ role: 'user', content: [{ type: 'image_url', image_url: { url: 'data:,' } }] }],
  }), (e) => e.status === 400);
  await assert.rejects(client.chat.completions.create({ model: 'deepseek-chat', messages: [{ role: 'user', content: 'x' }], temperature: 5 }),
    (e) => e.status === 422 && e.param === 'temperature');
  await assert.rejects(client.chat.completions.create({ model: 'deepseek-chat', messages: [] }), (e) => e.status === 400);
  await assert.rejects(client.chat.completions.create({ model: 'deepseek-chat', messages: [{ role: 'user', content: 'x' }], max_tokens: 'a' }),
    (e) => e.status === 400);
  const raw = await fetch(srv.base + '/v1/chat/completions', {
    method: 'POST', headers: { 'content-type': 'application/json', authorization: `Bearer ${API_KEY}` }, body: '{"model": ',
  });
  assert.equal(raw.status, 400);
  const body = await raw.json();
  assert.equal(body.error.type, 'invalid_request_error');
  const nf = await fetch(srv.base + '/v1/nothing', { headers: { authorization: `Bearer ${API_KEY}` } });
  assert.equal(nf.status, 404);
  assert.ok((await nf.json()).error.message);
});

test('models list', async () => {
  const ids = [];
  for await (const m of client.models.list()) ids.push(m.id);
  assert.deepEqual(ids.sort(), ['deepseek-chat', 'deepseek-reasoner', 'deepseek-v4-flash']);
  const m = await client.models.retrieve('deepseek-chat');
  assert.equal(m.id, 'deepseek-chat');
});

test('concurrent requests all complete', async () => {
  const reqs = [0, 1, 2, 3].map((i) => client.chat.completions.create({
    model: 'deepseek-chat', messages: [{ role: 'user', content: `Request ${i}` }], max_tokens: 4,
  }));
  const rs = await withTimeout(Promise.all(reqs), 120000, 'concurrent requests');
  for (const r of rs) assert.ok(r.usage.completion_tokens >= 1);
  assert.equal(new Set(rs.map((r) => r.id)).size, 4);
});

test('aborting a stream cancels generation promptly', async () => {
  const controller = new AbortController();
  // A long scripted answer (no EOS) keeps the engine busy for tens of seconds unless cancelled.
  const long = ' w'.repeat(1500);  // ~1500 tokens; headers stay under the server's 8 KiB line limit
  const stream = await client.chat.completions.create({
    model: 'deepseek-chat', messages: [{ role: 'user', content: 'Write a very long story.' }], stream: true, max_tokens: 1500,
  }, { signal: controller.signal, headers: { 'x-dsv4-test-script': script(long) } });
  let n = 0;
  try {
    for await (const c of stream) {
      if (c.choices[0]?.delta?.content) n++;
      if (n >= 3) {
        controller.abort();  // the SDK ends the iteration quietly on abort
        break;
      }
    }
  } catch (e) {
    if (e.name !== 'AbortError' && !/abort/i.test(String(e))) throw e;
  }
  assert.equal(n, 3);
  // 1500 tokens take ~30 s on the demo model; cancellation frees the engine in seconds.
  const t0 = Date.now();
  let h;
  do {
    await new Promise((r) => setTimeout(r, 200));
    h = await health(srv.base);
  } while ((h.busy || h.queued > 0) && Date.now() - t0 < 10000);
  assert.equal(h.busy, false, 'engine still busy 10 s after the client aborted');
  assert.match(srv.log(), /499 .*client disconnected/);
});

// tool_choice enforcement: the DSML opening (and the named invoke) is forced during decoding.
const PING = [{ type: 'function', function: { name: 'ping', description: 'No arguments', parameters: { type: 'object', properties: {} } } }];

test('tool_choice required on the demo model (sampled) yields a tool call', async () => {
  // One parameterless tool: `{}` is its only valid call, so the whole call is forced.
  const r = await client.chat.completions.create({
    model: 'deepseek-chat', messages: [{ role: 'user', content: 'ping it' }], tools: PING, tool_choice: 'required', max_tokens: 64,
  });
  assert.equal(r.choices[0].finish_reason, 'tool_calls');
  const tc = r.choices[0].message.tool_calls;
  assert.equal(tc.length, 1);
  assert.equal(tc[0].function.name, 'ping');
  assert.equal(tc[0].function.arguments, '{}');
  assert.match(tc[0].id, /^call_00_/);
  assert.equal(r.choices[0].message.content, '');
});

test('named tool_choice with thinking: forced after </think>, the model writes the arguments (streamed)', async () => {
  // Scripted: reasoning, then (after the forced opening) only the parameters and the closers.
  const args = `<${'｜DSML｜'}parameter name="city" string="true">Paris</${'｜DSML｜'}parameter>\n</${'｜DSML｜'}invoke>\n</${'｜DSML｜'}tool_calls>` + EOS;
  const stream = await client.chat.completions.create(
    { model: 'deepseek-reasoner', messages: [{ role: 'user', content: 'weather?' }], tools: [...TOOLS, ...PING],
      tool_choice: { type: 'function', function: { name: 'get_weather' } }, stream: true },
    { headers: { 'x-dsv4-test-script': script('I must call it.</think>' + args) } });
  let reasoning = '', content = '', name = '', argText = '', finish = null;
  for await (const c of stream) {
    const d = c.choices[0]?.delta ?? {};
    reasoning += d.reasoning_content ?? '';
    content += d.content ?? '';
    for (const t of d.tool_calls ?? []) {
      name += t.function?.name ?? '';
      argText += t.function?.arguments ?? '';
    }
    if (c.choices[0]?.finish_reason) finish = c.choices[0].finish_reason;
  }
  assert.equal(reasoning, 'I must call it.');
  assert.equal(content, '');
  assert.equal(name, 'get_weather');
  assert.deepEqual(JSON.parse(argText), { city: 'Paris' });
  assert.equal(finish, 'tool_calls');
});

test('tool_choice required: EOS inside reasoning still leads to the forced call', async () => {
  const r = await client.chat.completions.create(
    { model: 'deepseek-reasoner', messages: [{ role: 'user', content: 'x' }], tools: PING, tool_choice: 'required' },
    { headers: { 'x-dsv4-test-script': script('Done thinking' + EOS) } });
  assert.equal(r.choices[0].message.reasoning_content, 'Done thinking');
  assert.equal(r.choices[0].finish_reason, 'tool_calls');
  assert.equal(r.choices[0].message.tool_calls[0].function.name, 'ping');
});

test('streamed tool-call arguments: id + name + "" first, then several fragments that concatenate to the final JSON', async () => {
  const calls = [{ name: 'get_weather', args: { city: 'Paris, the capital of France', days: '3' } }];
  const stream = await client.chat.completions.create(
    { model: 'deepseek-chat', messages: [{ role: 'user', content: 'weather?' }], tools: TOOLS, stream: true },
    { headers: { 'x-dsv4-test-script': script(toolCallText(calls)) } });
  const deltas = [];
  for await (const c of stream) for (const t of c.choices[0]?.delta?.tool_calls ?? []) deltas.push(t);
  assert.ok(deltas.length > 3, `expected streamed fragments, got ${JSON.stringify(deltas)}`);
  assert.equal(deltas[0].index, 0);
  assert.match(deltas[0].id, /^call_00_/);
  assert.equal(deltas[0].type, 'function');
  assert.deepEqual(deltas[0].function, { name: 'get_weather', arguments: '' });
  for (const d of deltas.slice(1)) {
    assert.equal(d.id, undefined);
    assert.equal(d.index, 0);
  }
  const streamed = deltas.map((d) => d.function.arguments).join('');
  // The same request non-streaming gives the same (schema-repaired: days "3" -> 3) arguments.
  const r = await client.chat.completions.create(
    { model: 'deepseek-chat', messages: [{ role: 'user', content: 'weather?' }], tools: TOOLS },
    { headers: { 'x-dsv4-test-script': script(toolCallText(calls)) } });
  assert.equal(streamed, r.choices[0].message.tool_calls[0].function.arguments);
  assert.equal(streamed, '{"city": "Paris, the capital of France", "days": 3}');
});

test('response_format json_object: JSON.parse(content) gives an object, prose is rejected token by token', async () => {
  const ask = (model, text, extra = {}) => client.chat.completions.create(
    { model, max_tokens: 24, messages: [{ role: 'user', content: 'Reply in json with a field "answer".' }],
      response_format: { type: 'json_object' }, ...extra },
    { headers: { 'x-dsv4-test-script': script(text) } });
  // Scripted tokens are proposals in JSON mode: a valid object passes through unchanged.
  let r = await ask('deepseek-chat', '{"answer": 42, "tags": ["a", "\u00e9"]}' + EOS);
  assert.equal(r.choices[0].finish_reason, 'stop');
  assert.deepEqual(JSON.parse(r.choices[0].message.content), { answer: 42, tags: ['a', '\u00e9'] });
  // Thinking: the reasoning is free, the answer after </think> is the constrained object.
  r = await ask('deepseek-reasoner', 'Plain text, not JSON.</think>{"answer": true}' + EOS);
  assert.equal(r.choices[0].message.reasoning_content, 'Plain text, not JSON.');
  assert.deepEqual(JSON.parse(r.choices[0].message.content), { answer: true });
  // Prose is never emitted: the constraint replaces those tokens, so the content opens an object.
  r = await ask('deepseek-chat', 'Sure! Here is the JSON you asked for.' + EOS);
  assert.match(r.choices[0].message.content, /^\s*\{/);
  assert.ok(!r.choices[0].message.content.includes('Sure'));
  // Sampled for real (random weights rarely close an object within max_tokens: "length", and the
  // content is then an incomplete object, as the hosted API documents).
  for (const seed of [1, 2, 3]) {
    const s = await client.chat.completions.create({
      model: 'deepseek-chat', max_tokens: 16, temperature: 1, seed, response_format: { type: 'json_object' },
      messages: [{ role: 'user', content: 'Reply in json.' }] });
    assert.match(s.choices[0].message.content, /^\s*\{/);
    if (s.choices[0].finish_reason === 'stop') assert.equal(typeof JSON.parse(s.choices[0].message.content), 'object');
    else assert.equal(s.choices[0].finish_reason, 'length');
  }
});
