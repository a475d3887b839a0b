// Unit tests of assets/wshub.js in node, against a scripted fake WebSocket and mocked timers:
// the wire it writes, what it delivers, recovery, heartbeats and backoff, without a browser.
//
//   node --test tests/e2e/wshub.test.mjs

import assert from 'node:assert/strict';
import { afterEach, beforeEach, describe, mock, test } from 'node:test';

/** A WebSocket whose every event the test drives; `sent` holds what the client wrote. */
class FakeSocket {
  static CONNECTING = 0;
  static OPEN = 1;
  static CLOSING = 2;
  static CLOSED = 3;
  /** Every socket created, newest last. */
  static all = [];

  constructor(url, protocols) {
    this.url = url;
    this.protocols = protocols;
    this.readyState = FakeSocket.CONNECTING;
    this.sent = [];
    this.closedWith = null;
    FakeSocket.all.push(this);
  }

  send(data) {
    assert.equal(this.readyState, FakeSocket.OPEN, 'send on a socket that is not open');
    this.sent.push(data);
  }

  close(code) {
    this.readyState = FakeSocket.CLOSED;
    this.closedWith = code;
  }

  // ---- driven by the test

  open() {
    this.readyState = FakeSocket.OPEN;
    this.onopen?.();
  }

  receive(event) {
    this.onmessage?.({ data: typeof event === 'string' ? event : JSON.stringify(event) });
  }

  drop(code = 1006) {
    this.readyState = FakeSocket.CLOSED;
    this.onclose?.({ code, reason: '' });
  }

  /** The JSON requests sent, parsed. */
  get requests() {
    return this.sent.map((data) => JSON.parse(data));
  }

  /** The last request sent with this event name. */
  last(event) {
    return this.requests.filter((r) => r.event === event).at(-1);
  }
}

globalThis.WebSocket = FakeSocket;
globalThis.location = { href: 'http://chat.test:8080/app/?user=ignored' };
const { connect, HubError } = await import('../../assets/wshub.js');

/** Lets the hub's start-up microtask run. */
const settle = () => new Promise((resolve) => setImmediate(resolve));

/** Records every event of `hub` as [name, detail]. */
function record(hub) {
  const seen = [];
  for (const name of ['state', 'protocol', 'message', 'direct', 'presence', 'join', 'gap', 'raw', 'error']) {
    hub.on(name, (detail) => seen.push([name, detail]));
  }
  seen.of = (name) => seen.filter(([n]) => n === name).map(([, d]) => d);
  return seen;
}

/** A connected hub in `rooms`, each joined with the given reply data. */
async function joined(rooms, options = { user: 'alice' }) {
  const hub = connect(options);
  const seen = record(hub);
  const replies = Object.keys(rooms).map((room) => hub.join(room));
  await settle();
  const ws = FakeSocket.all.at(-1);
  ws.open();
  for (const [room, data] of Object.entries(rooms)) {
    const request = ws.requests.find((r) => r.event === 'join' && r.room === room);
    ws.receive({ event: 'join', id: request.id, code: 0, room, data });
  }
  await Promise.all(replies);
  return { hub, seen, ws };
}

const message = (room, offset, text) => ({ event: 'message', room, from: 'bob', data: text, ts: 1, offset });

beforeEach(() => {
  FakeSocket.all = [];
  mock.timers.enable({ apis: ['setTimeout', 'setInterval', 'Date'] });
  mock.method(Math, 'random', () => 0);
});

afterEach(() => {
  mock.timers.reset();
  mock.restoreAll();
});

describe('connecting', () => {
  test('the url is the page host\'s /ws with ?user=, and no subprotocol without a token', async () => {
    const hub = connect({ user: 'alice' });
    await settle();
    assert.equal(FakeSocket.all.length, 1);
    assert.equal(FakeSocket.all[0].url, 'ws://chat.test:8080/ws?user=alice');
    assert.equal(FakeSocket.all[0].protocols, undefined);
    hub.close();
  });

  test('a relative url resolves against the page; a token travels as subprotocols, not in the url', async () => {
    const hub = connect({ url: 'ws', token: 'a.b.c', user: 'ignored' });
    await settle();
    assert.equal(FakeSocket.all[0].url, 'ws://chat.test:8080/app/ws');
    assert.deepEqual(FakeSocket.all[0].protocols, ['wshub', 'bearer.a.b.c']);
    hub.close();
  });

  test('listeners added right after connect() see the first state', async () => {
    const hub = connect({ user: 'alice' });
    const seen = record(hub);
    await settle();
    FakeSocket.all[0].open();
    assert.deepEqual(seen.of('state').map((s) => s.state), ['connecting', 'open']);
    hub.close();
  });
});

describe('requests and replies', () => {
  test('replies are matched by id; a refusal rejects with the server\'s code', async () => {
    const { hub, ws } = await joined({});
    const online = hub.online('lobby');
    const direct = hub.direct('carol', { text: 'hi' });
    const [o, d] = [ws.last('online'), ws.last('direct')];
    assert.notEqual(o.id, d.id);
    ws.receive({ event: 'direct', id: d.id, code: 404, error: 'user is offline' });
    ws.receive({ event: 'online', id: o.id, code: 0, room: 'lobby', data: { count: 1, users: ['alice'] } });
    assert.deepEqual((await online).data.users, ['alice']);
    await assert.rejects(direct, (err) => err instanceof HubError && err.code === 404 && err.request.to === 'carol');
    hub.close();
  });

  test('a refused message becomes an error event naming the message', async () => {
    const { hub, seen, ws } = await joined({});
    assert.equal(hub.send('secret', { text: 'x' }), true);
    ws.receive({ event: 'message', id: ws.last('message').id, code: 403, error: 'not a member' });
    const [error] = seen.of('error');
    assert.equal(error.code, 403);
    assert.deepEqual(error.request, { event: 'message', room: 'secret', data: { text: 'x' } });
    hub.close();
  });

  test('requests pending when the socket drops reject, and nothing is sent while offline', async () => {
    const { hub, ws } = await joined({});
    const ping = hub.ping();
    ws.drop();
    await assert.rejects(ping, (err) => err.code === 'closed');
    await assert.rejects(hub.online(), (err) => err.code === 'offline');
    assert.equal(hub.send('lobby', 'x'), false);
    hub.close();
  });

  test('a join refused with 403 rejects and the room is not rejoined', async () => {
    const hub = connect({ user: 'alice' });
    const seen = record(hub);
    const join = hub.join('secret');
    await settle();
    const ws = FakeSocket.all[0];
    ws.open();
    ws.receive({ event: 'join', id: ws.last('join').id, code: 403, error: 'not allowed to join this room' });
    await assert.rejects(join, (err) => err.code === 403);
    assert.deepEqual(hub.rooms, []);
    assert.deepEqual(seen.of('error'), [], 'the promise got the refusal, not an error event');
    hub.close();
  });
});

describe('rooms across reconnects', () => {
  test('each room message is delivered once: duplicates (offset at or below the last) are dropped', async () => {
    const { hub, seen, ws } = await joined({ r: { count: 1, epoch: 'E', offset: 2 } });
    for (const offset of [3, 4, 4, 2, 5]) ws.receive(message('r', offset, `m${offset}`));
    assert.deepEqual(seen.of('message').map((m) => m.offset), [3, 4, 5]);
    assert.deepEqual(hub.position('r'), { epoch: 'E', offset: 5 });
    hub.close();
  });

  test('a rejoin asks for what came after the last offset; the replay is delivered, no gap', async () => {
    const { hub, seen, ws } = await joined({ r: { count: 1, epoch: 'E', offset: 0 }, quiet: { count: 1 } });
    ws.receive(message('r', 1, 'one'));
    ws.drop();
    assert.equal(seen.of('state').at(-1).state, 'reconnecting');
    mock.timers.tick(500);
    const next = FakeSocket.all.at(-1);
    assert.notEqual(next, ws);
    next.open();
    const rejoin = next.requests.filter((r) => r.event === 'join');
    assert.deepEqual(rejoin.map(({ id, ...r }) => r), [
      { event: 'join', room: 'r', since: { epoch: 'E', offset: 1 } },
      { event: 'join', room: 'quiet' }, // no epoch (history off): nothing to ask for
    ]);
    next.receive({ event: 'join', id: rejoin[0].id, code: 0, room: 'r', data: { count: 1, epoch: 'E', offset: 3, recovered: true } });
    for (const offset of [2, 3, 3, 4]) next.receive(message('r', offset, `m${offset}`));
    assert.deepEqual(seen.of('message').map((m) => m.offset), [1, 2, 3, 4]);
    assert.deepEqual(seen.of('gap'), []);
    const rejoined = seen.of('join').at(-1);
    assert.equal(rejoined.rejoin, true);
    assert.equal(rejoined.recovered, true);
    hub.close();
  });

  test('a rejoin that cannot recover reports a gap and continues from the server\'s position', async () => {
    const { hub, seen, ws } = await joined({ r: { count: 1, epoch: 'E', offset: 7 } });
    ws.drop();
    mock.timers.tick(500);
    const next = FakeSocket.all.at(-1);
    next.open();
    next.receive({ event: 'join', id: next.last('join').id, code: 0, room: 'r', data: { count: 1, epoch: 'F', offset: 2, recovered: false } });
    assert.deepEqual(seen.of('gap'), [{ room: 'r', reason: 'history restarted', epoch: 'F', offset: 2 }]);
    assert.deepEqual(hub.position('r'), { epoch: 'F', offset: 2 });
    next.receive(message('r', 3, 'new'));
    assert.deepEqual(seen.of('message').map((m) => m.offset), [3]);
    hub.close();
  });

  test('without offsets (history off) every message is delivered and no since is sent', async () => {
    const { hub, seen, ws } = await joined({ r: { count: 1 } });
    ws.receive({ event: 'message', room: 'r', from: 'bob', data: 'a', ts: 1 });
    ws.receive({ event: 'message', room: 'r', from: 'bob', data: 'a', ts: 1 });
    ws.receive({ event: 'message', from: 'bob', data: 'everyone', ts: 1 });
    assert.equal(seen.of('message').length, 3);
    ws.drop();
    mock.timers.tick(500);
    const next = FakeSocket.all.at(-1);
    next.open();
    assert.equal(next.last('join').since, undefined);
    next.receive({ event: 'join', id: next.last('join').id, code: 0, room: 'r', data: { count: 1 } });
    assert.deepEqual(seen.of('gap'), []);
    hub.close();
  });

  test('offsets that start over at 1 (history lost while connected) are new messages', async () => {
    const { hub, seen, ws } = await joined({ r: { count: 1, epoch: 'E', offset: 40 } });
    ws.receive(message('r', 1, 'first of a new epoch'));
    ws.receive(message('r', 2, 'second'));
    assert.deepEqual(seen.of('message').map((m) => m.offset), [1, 2]);
    assert.deepEqual(hub.position('r'), { epoch: '', offset: 2 });
    // The epoch was never told: a rejoin cannot recover and says so.
    ws.drop();
    mock.timers.tick(500);
    const next = FakeSocket.all.at(-1);
    next.open();
    assert.deepEqual(next.last('join').since, { epoch: '', offset: 2 });
    hub.close();
  });

  test('a room joined while offline is joined on connect; quit forgets it', async () => {
    const hub = connect({ user: 'alice' });
    const join = hub.join('later');
    await settle();
    const ws = FakeSocket.all[0];
    assert.equal(ws.sent.length, 0);
    ws.open();
    ws.receive({ event: 'join', id: ws.last('join').id, code: 0, room: 'later', data: { count: 1 } });
    assert.equal((await join).room, 'later');
    const quit = hub.quit('later');
    ws.receive({ event: 'quit', id: ws.last('quit').id, code: 0, room: 'later' });
    await quit;
    assert.deepEqual(hub.rooms, []);
    hub.close();
  });
});

describe('liveness and backoff', () => {
  test('a ping every 25 s; one unanswered for 10 s closes the socket and reconnects', async () => {
    const { hub, seen, ws } = await joined({});
    mock.timers.tick(25_000);
    const ping = ws.last('ping');
    assert.ok(ping, 'no heartbeat ping');
    ws.receive({ event: 'ping', id: ping.id, code: 0, ts: 1 });
    mock.timers.tick(25_000);
    assert.equal(seen.of('state').at(-1).state, 'open');
    mock.timers.tick(10_000);
    assert.equal(ws.closedWith, 1000);
    assert.deepEqual(seen.of('state').at(-1), { state: 'reconnecting', attempt: 1, reason: 'no answer to ping', delay: 500 });
    hub.close();
  });

  test('the delay doubles up to 10 s, and a connection that lived 5 s resets it', async () => {
    mock.method(Math, 'random', () => 1); // the longest wait each time (half jitter: cap/2…cap)
    const hub = connect({ user: 'alice' });
    const seen = record(hub);
    await settle();
    const delays = [];
    for (let i = 0; i < 6; i++) {
      FakeSocket.all.at(-1).drop();
      delays.push(seen.of('state').at(-1).delay);
      mock.timers.tick(delays.at(-1));
    }
    assert.deepEqual(delays, [1000, 2000, 4000, 8000, 10000, 10000]);
    FakeSocket.all.at(-1).open();
    mock.timers.tick(5_000);
    FakeSocket.all.at(-1).drop();
    assert.equal(seen.of('state').at(-1).delay, 1000);
    hub.close();
  });

  test('a handshake that hangs is abandoned after 10 s', async () => {
    const hub = connect({ user: 'alice' });
    const seen = record(hub);
    await settle();
    mock.timers.tick(10_000);
    assert.equal(seen.of('state').at(-1).reason, 'connection timed out');
    hub.close();
  });

  test('close() stops for good: no reconnect, joins pending reject', async () => {
    const hub = connect({ user: 'alice' });
    const join = hub.join('r');
    await settle();
    hub.close();
    await assert.rejects(join, (err) => err.code === 'closed');
    mock.timers.tick(60_000);
    assert.equal(FakeSocket.all.length, 1);
    assert.equal(hub.state, 'closed');
  });
});

describe('raw protocol', () => {
  test('a request echoed back means a raw server: no more pings, frames come as raw', async () => {
    const hub = connect({ user: 'alice' });
    const seen = record(hub);
    hub.join('lobby').catch(() => {});
    await settle();
    const ws = FakeSocket.all[0];
    ws.open();
    ws.receive(ws.sent[0]); // the raw server relays our join to everyone, us included
    assert.equal(hub.protocol, 'raw');
    assert.deepEqual(seen.of('protocol'), ['raw']);
    ws.receive('hello from a plain client');
    assert.deepEqual(seen.of('raw'), [{ data: 'hello from a plain client' }]);
    const before = ws.sent.length;
    mock.timers.tick(60_000);
    assert.equal(ws.sent.length, before, 'a ping went to a raw server');
    assert.equal(hub.sendRaw('plain'), true);
    assert.equal(ws.sent.at(-1), 'plain');
    hub.close();
  });
});
