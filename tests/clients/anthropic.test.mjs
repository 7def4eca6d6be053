// The official `@anthropic-ai/sdk` against a real `dsv4 serve` (demo model): the Messages event
// sequence with thinking + tool_use, a tool_result round trip, count_tokens, errors.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { startServer, script, toolCallText, EOS, API_KEY } from './helpers.mjs';

let srv;
let client;
before(async () => {
  srv = await startServer();
  client = srv.anthropic();
});
after(async () => {
  if (srv) await srv.stop();
});

const TOOLS = [{
  name: 'get_weather', description: 'Weather for a city',
  input_schema: { type: 'object', properties: { city: { type: 'string' }, days: { type: 'integer' } }, required: ['city'] },
}];

test('non-streaming message with thinking; x-anthropic- system blocks dropped; claude-* alias', async () => {
  const r = await client.messages.create({
    model: 'claude-sonnet-4-5', max_tokens: 64,
    system: [{ type: 'text', text: 'x-anthropic-billing-header: cc_version=1' }, { type: 'text', text: 'Be brief.' }],
    messages: [{ role: 'user', content: 'Hi' }],
  }, { headers: { 'x-dsv4-test-script': script('Greet back.</think>Hello!' + EOS) } });
  assert.equal(r.type, 'message');
  assert.match(r.id, /^msg_/);
  assert.equal(r.model, 'claude-sonnet-4-5');
  assert.deepEqual(r.content, [{ type: 'thinking', thinking: 'Greet back.', signature: '' }, { type: 'text', text: 'Hello!' }]);
  assert.equal(r.stop_reason, 'end_turn');
  assert.ok(r.usage.input_tokens > 0 && r.usage.output_tokens > 0);
  assert.equal(r.usage.cache_creation_input_tokens, 0);
  // Same prompt without the volatile block renders identically.
  const n1 = await client.messages.countTokens({
    model: 'claude-sonnet-4-5', system: [{ type: 'text', text: 'x-anthropic-billing-header: 2' }, { type: 'text', text: 'Be brief.' }],
    messages: [{ role: 'user', content: 'Hi' }],
  });
  const n2 = await client.messages.countTokens({ model: 'claude-sonnet-4-5', system: 'Be brief.', messages: [{ role: 'user', content: 'Hi' }] });
  assert.ok(n1.input_tokens > 0);
  assert.equal(n1.input_tokens, n2.input_tokens);
});

test('streaming thinking + tool_use: exact event sequence, then a tool_result round trip with cache reads', async () => {
  const messages = [{ role: 'user', content: 'Weather in Paris for 3 days?' }];
  const stream = await client.messages.create({
    model: 'deepseek-v4-flash', max_tokens: 512, tools: TOOLS, messages, stream: true,
  }, { headers: { 'x-dsv4-test-script': script('Need the tool.</think>Checking.' + toolCallText([{ name: 'get_weather', args: { city: 'Paris', days: '3' } }])) } });
  const events = [];
  for await (const e of stream) events.push(e);
  const kinds = events.map((e) => e.type === 'content_block_delta' ? `delta:${e.delta.type}` : e.type)
    .filter((k, i, a) => !(k.startsWith('delta:') && k !== 'delta:signature_delta' && a[i - 1] === k));
  assert.deepEqual(kinds, [
    'message_start',
    'content_block_start', 'delta:thinking_delta', 'delta:signature_delta', 'content_block_stop',
    'content_block_start', 'delta:text_delta', 'content_block_stop',
    'content_block_start', 'delta:input_json_delta', 'content_block_stop',
    'message_delta', 'message_stop']);
  const starts = events.filter((e) => e.type === 'content_block_start');
  assert.deepEqual(starts.map((e) => e.index), [0, 1, 2]);
  assert.deepEqual(starts[0].content_block, { type: 'thinking', thinking: '', signature: '' });
  const tu = starts[2].content_block;
  assert.equal(tu.type, 'tool_use');
  assert.match(tu.id, /^toolu_[A-Za-z0-9]{24}$/);
  assert.equal(tu.name, 'get_weather');
  const json = events.filter((e) => e.type === 'content_block_delta' && e.delta.type === 'input_json_delta').map((e) => e.delta.partial_json).join('');
  assert.deepEqual(JSON.parse(json), { city: 'Paris', days: 3 });
  const thinking = events.filter((e) => e.delta?.type === 'thinking_delta').map((e) => e.delta.thinking).join('');
  assert.equal(thinking, 'Need the tool.');
  const md = events.find((e) => e.type === 'message_delta');
  assert.equal(md.delta.stop_reason, 'tool_use');
  assert.ok(md.usage.output_tokens > 0);

  // Round trip: thinking with a signature, a redacted_thinking block (dropped), tool_use, tool_result.
  messages.push({ role: 'assistant', content: [
    { type: 'thinking', thinking, signature: '' },
    { type: 'redacted_thinking', data: 'opaque' },
    { type: 'text', text: 'Checking.' },
    { type: 'tool_use', id: tu.id, name: tu.name, input: JSON.parse(json) }] });
  messages.push({ role: 'user', content: [
    { type: 'tool_result', tool_use_id: tu.id, content: [{ type: 'text', text: 'Sunny' }] },
    { type: 'text', text: 'Thanks' }] });
  const r = await client.messages.stream({ model: 'deepseek-v4-flash', max_tokens: 256, tools: TOOLS, messages },
    { headers: { 'x-dsv4-test-script': script('Sunny it is.</think>It is sunny in Paris.' + EOS) } }).finalMessage();
  assert.equal(r.stop_reason, 'end_turn');
  assert.equal(r.content.at(-1).text, 'It is sunny in Paris.');
  assert.ok(r.usage.cache_read_input_tokens > 0, `expected cache reads: ${JSON.stringify(r.usage)}`);
});

test('stop_sequences -> stop_reason stop_sequence; thinking disabled', async () => {
  const r = await client.messages.create({
    model: 'deepseek-v4-flash', max_tokens: 64, thinking: { type: 'disabled' }, stop_sequences: ['###'],
    messages: [{ role: 'user', content: 'x' }],
  }, { headers: { 'x-dsv4-test-script': script('alpha ### beta' + EOS) } });
  assert.deepEqual(r.content, [{ type: 'text', text: 'alpha ' }]);
  assert.equal(r.stop_reason, 'stop_sequence');
  assert.equal(r.stop_sequence, '###');
});

test('real sampling, thinking enabled with budget_tokens, max_tokens stop', async () => {
  const r = await client.messages.create({
    model: 'claude-opus-4', max_tokens: 5, thinking: { type: 'enabled', budget_tokens: 1024 }, temperature: 0.5, top_k: 40,
    metadata: { user_id: 'u1' }, messages: [{ role: 'user', content: 'Hello' }],
  });
  assert.ok(['max_tokens', 'end_turn'].includes(r.stop_reason));
  assert.ok(r.usage.output_tokens <= 5);
});

test('errors: image block 400, bad key 401 (x-api-key and Bearer), unknown non-claude model 404', async () => {
  await assert.rejects(client.messages.create({ model: 'claude-sonnet-4', max_tokens: 8, messages: [{ role: 'user', content: [
    { type: 'image', source: { type: 'base64', media_type: 'image/png', data: 'iVBORw0KGgo=' } }] }] }),
  (e) => e.status === 400 && e.error?.error?.type === 'invalid_request_error' && /image/.test(e.message));
  const bad = srv.anthropic({ apiKey: 'nope' });
  await assert.rejects(bad.messages.create({ model: 'claude-sonnet-4', max_tokens: 8, messages: [{ role: 'user', content: 'x' }] }),
    (e) => e.status === 401 && e.error?.error?.type === 'authentication_error');
  const bearer = srv.anthropic({ apiKey: null, authToken: API_KEY });
  const ok = await bearer.messages.create({ model: 'claude-haiku-4', max_tokens: 2, messages: [{ role: 'user', content: 'x' }] });
  assert.equal(ok.type, 'message');
  await assert.rejects(client.messages.create({ model: 'gpt-4o', max_tokens: 8, messages: [{ role: 'user', content: 'x' }] }),
    (e) => e.status === 404 && e.error?.error?.type === 'not_found_error');
  const q = await fetch(srv.base + '/v1/messages?beta=true', {
    method: 'POST', headers: { 'x-api-key': API_KEY, 'content-type': 'application/json' }, body: 'not json' });
  assert.equal(q.status, 400);
  assert.equal((await q.json()).type, 'error');
});

test('tool_choice any / tool are enforced by decoding (demo model, sampled)', async () => {
  const ping = { name: 'ping', description: 'No arguments', input_schema: { type: 'object', properties: {} } };
  for (const tool_choice of [{ type: 'any' }, { type: 'tool', name: 'ping' }]) {
    const r = await client.messages.create({
      model: 'claude-haiku-4-5', max_tokens: 64, thinking: { type: 'disabled' }, tools: [ping], tool_choice,
      messages: [{ role: 'user', content: 'ping' }],
    });
    assert.equal(r.stop_reason, 'tool_use', JSON.stringify(tool_choice));
    const uses = r.content.filter((b) => b.type === 'tool_use');
    assert.equal(uses.length, 1);
    assert.equal(uses[0].name, 'ping');
    assert.deepEqual(uses[0].input, {});
    assert.match(uses[0].id, /^toolu_/);
  }
});
