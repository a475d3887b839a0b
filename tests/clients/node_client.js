// wshub seen from the Node `ws` package (driven by tests/clients.rs).
//
//   node node_client.js SCENARIO URL [LIMIT]
//
// URL is the server's WebSocket URL without query (ws://127.0.0.1:PORT/ws). Scenarios:
//
// - events: join/message/presence/online/direct round trips with `id` echo (--protocol events)
// - fragmented: a text message sent as fragments arrives whole (--protocol events)
// - limits: a message of exactly LIMIT bytes is echoed, LIMIT + 1 closes with 1009 (--protocol echo)
// - ping_close: ping/pong, then a normal close echoed with 1000 (--protocol echo)
//
// Prints one `ok: CHECK` line per passed check and `done` at the end; any failure throws, so
// the exit code is non-zero and the message says what differed.
'use strict';

const assert = require('node:assert/strict');
const WebSocket = require('ws');

const TIMEOUT_MS = 10_000;

function ok(check) {
  console.log(`ok: ${check}`);
}

function withTimeout(promise, what) {
  let timer;
  const timeout = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`timed out waiting for ${what}`)), TIMEOUT_MS);
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}

/** A client whose incoming messages and close are queued so tests can await them in order. */
class Client {
  constructor(url) {
    this.ws = new WebSocket(url, { maxPayload: 16 * 1024 * 1024 });
    this.queue = [];
    this.waiters = [];
    this.closed = new Promise((resolve) => {
      this.ws.on('close', (code, reason) => resolve({ code, reason: reason.toString() }));
    });
    this.ws.on('message', (data, isBinary) => {
      const message = { data, isBinary };
      const waiter = this.waiters.shift();
      if (waiter) waiter(message);
      else this.queue.push(message);
    });
    this.ws.on('error', (err) => console.error(`ws error: ${err.message}`));
  }

  open() {
    return withTimeout(new Promise((resolve, reject) => {
      this.ws.once('open', resolve);
      this.ws.once('error', reject);
    }), 'open');
  }

  next(what = 'a message') {
    const queued = this.queue.shift();
    if (queued) return Promise.resolve(queued);
    const arrival = new Promise((resolve) => this.waiters.push(resolve));
    return withTimeout(Promise.race([
      arrival,
      this.closed.then((close) => { throw new Error(`closed with ${close.code} while waiting for ${what}`); }),
    ]), what);
  }

  async json(what) {
    const { data, isBinary } = await this.next(what);
    assert.equal(isBinary, false, `${what}: expected a text frame`);
    return JSON.parse(data.toString('utf8'));
  }

  send(value) {
    this.ws.send(typeof value === 'string' ? value : JSON.stringify(value));
  }
}

async function connect(url) {
  const client = new Client(url);
  await client.open();
  return client;
}

function withoutTs(event) {
  assert.equal(typeof event.ts, 'number', `no numeric ts in ${JSON.stringify(event)}`);
  const { ts, ...rest } = event;
  return rest;
}

async function events(url) {
  const alice = await connect(`${url}?user=alice`);
  const bob = await connect(`${url}?user=bob`);

  alice.send({ event: 'ping', id: 'p1' });
  assert.deepEqual(withoutTs(await alice.json('ping reply')), { event: 'ping', id: 'p1', code: 0 });
  ok('ping echoes id');

  alice.send({ event: 'join', room: 'lobby', id: 1 });
  const aliceJoin = await alice.json('alice join');
  // With history on (the default), the room's position (SPEC §11).
  const epoch = aliceJoin.data && aliceJoin.data.epoch;
  assert.equal(typeof epoch, 'string');
  assert.deepEqual(aliceJoin,
    { event: 'join', id: 1, code: 0, room: 'lobby', data: { count: 1, epoch, offset: 0 } });
  bob.send({ event: 'join', room: 'lobby', id: 'b1' });
  assert.deepEqual(await bob.json('bob join'),
    { event: 'join', id: 'b1', code: 0, room: 'lobby', data: { count: 2, epoch, offset: 0 } });
  assert.deepEqual(await alice.json('presence join'),
    { event: 'presence', room: 'lobby', data: { user: 'bob', state: 'join' } });
  ok('join and presence');

  bob.send({ event: 'online', room: 'lobby', id: { n: 7 } });
  assert.deepEqual(await bob.json('online'),
    { event: 'online', id: { n: 7 }, code: 0, room: 'lobby', data: { count: 2, users: ['alice', 'bob'] } });
  ok('online lists the room');

  const data = { text: 'hé ✓ 🦀', n: [1, 2.5, null, true] };
  alice.send({ event: 'message', room: 'lobby', data, id: 2 });
  for (const [name, client] of [['alice', alice], ['bob', bob]]) {
    assert.deepEqual(withoutTs(await client.json(`message to ${name}`)),
      { event: 'message', room: 'lobby', from: 'alice', data, offset: 1 });
  }
  ok('room message reaches every member, sender included');

  bob.send({ event: 'direct', to: 'alice', data: 'psst', id: 9 });
  assert.deepEqual(withoutTs(await alice.json('direct')), { event: 'direct', from: 'bob', data: 'psst' });
  assert.deepEqual(await bob.json('direct reply'), { event: 'direct', id: 9, code: 0 });
  bob.send({ event: 'direct', to: 'nobody', data: 1, id: 10 });
  const offline = await bob.json('direct to offline');
  assert.deepEqual([offline.event, offline.id, offline.code], ['direct', 10, 404]);
  ok('direct with id echo and 404 for an offline user');

  bob.ws.close(1000, 'bye');
  const close = await withTimeout(bob.closed, 'bob close');
  assert.equal(close.code, 1000);
  assert.deepEqual(await alice.json('presence leave'),
    { event: 'presence', room: 'lobby', data: { user: 'bob', state: 'leave' } });
  ok('close 1000 and presence leave');
  alice.ws.close(1000);
  await withTimeout(alice.closed, 'alice close');
}

async function fragmented(url) {
  const client = await connect(`${url}?user=frag`);
  client.send({ event: 'join', room: 'r' });
  await client.json('join');
  const text = 'ünïcødé '.repeat(200);
  const body = Buffer.from(JSON.stringify({ event: 'message', room: 'r', id: 'f', data: { text } }));
  // Cut inside a multi-byte character on purpose: only the whole message must be valid UTF-8.
  const cut = body.indexOf(Buffer.from('ü')) + 1;
  const cuts = [0, 1, cut, Math.floor(body.length / 2), body.length - 1, body.length];
  for (let i = 0; i + 1 < cuts.length; i += 1) {
    const fin = i + 2 === cuts.length;
    // `binary: false` keeps the opcode text although the pieces are Buffers.
    client.ws.send(body.subarray(cuts[i], cuts[i + 1]), { fin, binary: false });
  }
  const got = await client.json('fragmented message');
  assert.deepEqual(got.data, { text });
  ok(`text message in ${cuts.length - 1} fragments (one split inside a character) arrives whole`);

  client.ws.send(Buffer.from([0, 1]), { fin: false, binary: true });
  client.ws.send(Buffer.alloc(300, 0xff), { fin: true, binary: true });
  const refused = await client.json('binary refusal');
  assert.deepEqual([refused.event, refused.code], ['error', 400]);
  ok('fragmented binary message is refused whole with one error');
  client.ws.close(1000);
  await withTimeout(client.closed, 'close');
}

async function limits(url, limit) {
  const client = await connect(url);
  const atLimit = 'x'.repeat(limit);
  client.send(atLimit);
  const echoed = await client.next('echo at the limit');
  assert.equal(echoed.isBinary, false);
  assert.equal(echoed.data.toString('utf8'), atLimit);
  ok(`${limit}-byte message is echoed`);
  const binary = Buffer.alloc(limit - 1, 1);
  client.ws.send(binary);
  const binaryEcho = await client.next('binary echo');
  assert.equal(binaryEcho.isBinary, true);
  assert.ok(binary.equals(binaryEcho.data));
  ok(`${limit - 1}-byte binary message is echoed`);

  client.send('y'.repeat(limit + 1));
  const close = await withTimeout(client.closed, 'close after an over-limit message');
  assert.equal(close.code, 1009);
  assert.equal(client.queue.length, 0, 'nothing echoed for the over-limit message');
  ok(`${limit + 1}-byte message closes with 1009`);
}

async function pingClose(url) {
  const client = await connect(url);
  const pong = withTimeout(new Promise((resolve) => client.ws.once('pong', resolve)), 'pong');
  client.ws.ping(Buffer.from('are you there'));
  assert.equal((await pong).toString(), 'are you there');
  ok('ping answered by a pong with the same payload');
  client.send('after ping');
  assert.equal((await client.next('echo')).data.toString(), 'after ping');
  client.ws.close(1000, 'bye');
  assert.equal((await withTimeout(client.closed, 'close')).code, 1000);
  ok('close 1000 is echoed');

  const other = await connect(url);
  other.ws.close(4001, 'app code');
  assert.equal((await withTimeout(other.closed, 'close')).code, 4001);
  ok('application close code 4001 is echoed');
}

async function main() {
  const [scenario, url, limit] = process.argv.slice(2);
  console.log(`ws ${require('ws/package.json').version}: ${scenario}`);
  const scenarios = { events, fragmented, limits: (u) => limits(u, Number(limit)), ping_close: pingClose };
  const run = scenarios[scenario];
  if (!run) throw new Error(`unknown scenario ${scenario}`);
  await run(url);
  console.log('done');
}

main().then(() => process.exit(0), (err) => {
  console.error(err && err.stack ? err.stack : err);
  process.exit(1);
});
