// End-to-end test of the chat page against the real wshub binary, in headless Chromium.
//
//   cd tests/e2e && npm ci && node chat.e2e.mjs
//
// Environment: WSHUB_BIN (default <repo>/target/debug/wshub), CHROMIUM_BIN (default /usr/bin/chromium).
// Writes a screenshot to <repo>/target/e2e-chat.png. Prints `e2e: N passed, M failed` last.
//
// Besides the page's features, it checks recovery (SPEC §11) as a user meets it: connections cut
// from outside by a TCP proxy while messages keep coming, then a restart that loses history.
// wshub.js's own logic is unit-tested without a browser in wshub.test.mjs.

import { spawn } from 'node:child_process';
import { createHmac } from 'node:crypto';
import { existsSync } from 'node:fs';
import { mkdir, mkdtemp, rm } from 'node:fs/promises';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', '..');
const WSHUB_BIN = process.env.WSHUB_BIN
  ? path.resolve(process.env.WSHUB_BIN)
  : path.join(ROOT, 'target', 'debug', 'wshub');
const CHROMIUM_BIN = process.env.CHROMIUM_BIN || '/usr/bin/chromium';
const SCREENSHOT = path.join(ROOT, 'target', 'e2e-chat.png');
const ROOM = 'e2e-room';
const RECOVERY_ROOM = 'e2e-recovery';
const API_KEY = 'e2e-api-key';
/** Pause between two messages published while the pages are cut off; the ones missed must fit
 * in the server's history (--history-size, default 100) for recovery to be possible. */
const FLOW_INTERVAL_MS = 100;
/** How long the proxy refuses connections after cutting them, so that messages are missed. */
const CUT_MS = 1_000;

const STEP_TIMEOUT_MS = 10_000;
const HEALTH_TIMEOUT_MS = 15_000;
const SERVER_EXIT_TIMEOUT_MS = 10_000;
/** Covers the page's backoff ceiling (10 s) plus the restart itself. */
const RECONNECT_TIMEOUT_MS = 25_000;
const TOTAL_TIMEOUT_MS = 180_000;

const CHROMIUM_ARGS = [
  '--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
  '--disable-background-networking', '--disable-component-update', '--disable-sync',
];

// ------------------------------------------------------------------ tiny harness

let passed = 0;
let failed = 0;

class StepFailed extends Error {}

/** Runs one named check; the flow is a story, so the first failure ends it. */
async function step(name, fn) {
  const started = Date.now();
  try {
    await fn();
    passed += 1;
    console.log(`ok   ${name} (${Date.now() - started} ms)`);
  } catch (err) {
    failed += 1;
    console.log(`FAIL ${name}: ${err?.message?.split('\n')[0] ?? err}`);
    throw new StepFailed(name, { cause: err });
  }
}

function assert(condition, message) {
  if (!condition) throw new Error(message);
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

// ------------------------------------------------------------------ the server under test

async function freePort() {
  return new Promise((resolve, reject) => {
    const probe = net.createServer();
    probe.unref();
    probe.on('error', reject);
    probe.listen(0, '127.0.0.1', () => {
      const { port } = probe.address();
      probe.close(() => resolve(port));
    });
  });
}

class WshubProcess {
  constructor(bin, port, extraArgs = []) {
    this.bin = bin;
    this.port = port;
    this.extraArgs = extraArgs;
    this.child = null;
    this.exit = null;
    /** Last lines of the server's output, printed when something fails. */
    this.logTail = [];
  }

  get base() { return `http://127.0.0.1:${this.port}`; }

  async start() {
    this.exit = null;
    const child = spawn(this.bin, ['--listen', `127.0.0.1:${this.port}`, ...this.extraArgs], {
      stdio: ['ignore', 'pipe', 'pipe'],
      env: { ...process.env, RUST_LOG: process.env.RUST_LOG || 'info' },
    });
    this.child = child;
    const remember = (chunk) => {
      for (const line of chunk.toString().split('\n')) {
        if (line.trim()) this.logTail.push(line);
      }
      if (this.logTail.length > 80) this.logTail.splice(0, this.logTail.length - 80);
    };
    child.stdout.on('data', remember);
    child.stderr.on('data', remember);
    this.exited = new Promise((resolve) => {
      child.on('exit', (code, signal) => { this.exit = { code, signal }; resolve(this.exit); });
      child.on('error', (err) => { this.exit = { code: null, signal: null, error: err }; resolve(this.exit); });
    });
    await this.waitHealthy();
  }

  async waitHealthy() {
    const deadline = Date.now() + HEALTH_TIMEOUT_MS;
    let last = 'no answer';
    while (Date.now() < deadline) {
      if (this.exit) {
        throw new Error(`wshub exited before it was healthy (${describeExit(this.exit)})`);
      }
      try {
        const res = await fetch(`${this.base}/healthz`, { signal: AbortSignal.timeout(1000) });
        const body = (await res.text()).trim();
        if (res.status === 200 && body === 'ok') return;
        last = `HTTP ${res.status} ${JSON.stringify(body.slice(0, 80))}`;
      } catch (err) {
        last = err.cause?.code || err.message;
      }
      await sleep(100);
    }
    throw new Error(`GET /healthz did not answer "ok" within ${HEALTH_TIMEOUT_MS} ms (last: ${last})`);
  }

  /** SIGTERM, then wait for a clean exit; SIGKILL if it hangs. Returns the exit status. */
  async stop() {
    if (!this.child || this.exit) return this.exit;
    this.child.kill('SIGTERM');
    const status = await Promise.race([this.exited, sleep(SERVER_EXIT_TIMEOUT_MS).then(() => null)]);
    if (status) return status;
    this.child.kill('SIGKILL');
    await this.exited;
    throw new Error(`wshub did not exit within ${SERVER_EXIT_TIMEOUT_MS} ms of SIGTERM (killed)`);
  }

  kill() {
    if (this.child && !this.exit) this.child.kill('SIGKILL');
  }
}

function describeExit(exit) {
  if (exit.error) return exit.error.message;
  return exit.signal ? `signal ${exit.signal}` : `exit code ${exit.code}`;
}

/**
 * A TCP proxy in front of wshub that can cut every connection through it, from outside, like a
 * network failure: the browser sees its WebSockets drop without a close handshake.
 */
class CuttableProxy {
  constructor(targetPort) {
    this.targetPort = targetPort;
    this.server = null;
    this.sockets = new Set();
    /** While true, new connections are closed at once (the network is still down). */
    this.refusing = false;
  }

  get port() { return this.server.address().port; }

  get base() { return `http://127.0.0.1:${this.port}`; }

  async start() {
    this.server = net.createServer((client) => {
      if (this.refusing) {
        client.destroy();
        return;
      }
      const upstream = net.connect(this.targetPort, '127.0.0.1');
      const pair = [client, upstream];
      const drop = () => {
        for (const socket of pair) {
          socket.destroy();
          this.sockets.delete(socket);
        }
      };
      for (const socket of pair) {
        this.sockets.add(socket);
        socket.on('error', drop);
        socket.on('close', drop);
      }
      client.pipe(upstream);
      upstream.pipe(client);
    });
    await new Promise((resolve, reject) => {
      this.server.once('error', reject);
      this.server.listen(0, '127.0.0.1', resolve);
    });
  }

  /** Destroys every connection through the proxy; returns how many there were. */
  cut() {
    const count = this.sockets.size;
    for (const socket of this.sockets) socket.destroy();
    this.sockets.clear();
    return count;
  }

  close() {
    this.cut();
    this.server?.close();
  }
}

/** POST /api/publish, answering the parsed body. */
async function publish(base, body) {
  const res = await fetch(`${base}/api/publish`, {
    method: 'POST',
    headers: { Authorization: `Bearer ${API_KEY}`, 'Content-Type': 'application/json' },
    body: JSON.stringify(body),
    signal: AbortSignal.timeout(STEP_TIMEOUT_MS),
  });
  const text = await res.text();
  assert(res.status === 200, `POST /api/publish: HTTP ${res.status} ${text.slice(0, 120)}`);
  return JSON.parse(text);
}

/** Starts `server` again on its port; the old socket may linger briefly, so a bind is retried. */
async function restart(server) {
  for (let attempt = 1; ; attempt++) {
    try {
      await server.start();
      return;
    } catch (err) {
      if (attempt >= 5 || !server.exit) throw err;
      await sleep(500);
    }
  }
}

// ------------------------------------------------------------------ page helpers

/** Page errors from every tab; any of them fails the run at the end. */
const pageErrors = [];

/** page → the JSON frames its WebSockets sent and received, parsed, in order. */
const wire = new WeakMap();

async function openChat(context, base, urlPath = '/') {
  const page = await context.newPage();
  page.on('pageerror', (err) => pageErrors.push(`${page.url()}: ${err.message}`));
  const frames = { sent: [], received: [] };
  const parse = (payload) => { try { return JSON.parse(payload); } catch { return payload; } };
  page.on('websocket', (ws) => {
    ws.on('framesent', ({ payload }) => frames.sent.push(parse(payload)));
    ws.on('framereceived', ({ payload }) => frames.received.push(parse(payload)));
  });
  wire.set(page, frames);
  await page.goto(base + urlPath, { waitUntil: 'domcontentloaded' });
  await waitOnline(page);
  return page;
}

async function waitOnline(page, timeout = STEP_TIMEOUT_MS) {
  await page.locator('#status[data-state="online"]').waitFor({ timeout });
}

async function setName(page, name) {
  await page.fill('#name', name);
  await page.click('#connect');
  await page.waitForFunction(
    (who) => {
      const status = document.getElementById('status');
      return status.dataset.state === 'online' && status.textContent.includes(who);
    },
    name,
    { timeout: STEP_TIMEOUT_MS },
  );
}

async function joinRoom(page, room) {
  await page.fill('#room-input', room);
  await page.click('#join');
  await page.locator(`#rooms li[data-room="${room}"][data-joined="true"].current`).waitFor();
}

/** The text of every room message in the shown log, in order. */
function messageTexts(page) {
  return page.$$eval('#log li[data-kind="message"] .text', (nodes) => nodes.map((node) => node.textContent));
}

/** Waits until the shown log holds a message with exactly `text`. */
async function waitForMessage(page, text, timeout = STEP_TIMEOUT_MS) {
  await page.waitForFunction(
    (wanted) => [...document.querySelectorAll('#log li[data-kind="message"] .text')]
      .some((node) => node.textContent === wanted),
    text,
    // Polled by time: a tab in the background gets no animation frames to poll with.
    { timeout, polling: 50 },
  );
}

/** Fails unless `actual` is exactly `expected`, naming the first duplicate, hole or swap. */
function assertSameSequence(who, actual, expected) {
  const seen = new Set();
  for (const text of actual) {
    assert(!seen.has(text), `${who} shows ${JSON.stringify(text)} twice`);
    seen.add(text);
  }
  const missing = expected.filter((text) => !seen.has(text));
  assert(missing.length === 0, `${who} misses ${missing.length} message(s): ${missing.slice(0, 5).join(', ')}…`);
  const index = actual.findIndex((text, i) => text !== expected[i]);
  assert(index === -1 && actual.length === expected.length,
    `${who} shows ${JSON.stringify(actual[index])} at position ${index}, expected ${JSON.stringify(expected[index])}`);
}

async function sendMessage(page, text) {
  await page.fill('#message', text);
  await page.click('#send');
}

function logEntry(page, from, text) {
  return page.locator(`#log li[data-from="${from}"]`).filter({ hasText: text });
}

function onlineUser(page, user) {
  return page.locator(`#online li[data-user="${user}"]`);
}

// ------------------------------------------------------------------ the story

async function run(cleanup) {
  assert(existsSync(WSHUB_BIN), `wshub binary not found at ${WSHUB_BIN} (build it with cargo build, or set WSHUB_BIN)`);
  assert(existsSync(CHROMIUM_BIN), `Chromium not found at ${CHROMIUM_BIN} (apt-get install chromium, or set CHROMIUM_BIN)`);

  const port = await freePort();
  const server = new WshubProcess(WSHUB_BIN, port);
  cleanup.server = server;
  const base = server.base;

  await step(`wshub starts on 127.0.0.1:${port} and /healthz answers ok`, () => server.start());

  await step('the page and its assets are served with the right content types', async () => {
    const files = [['/', 'text/html'], ['/assets/app.js', 'javascript'], ['/assets/wshub.js', 'javascript'], ['/assets/style.css', 'text/css']];
    for (const [urlPath, type] of files) {
      const res = await fetch(base + urlPath, { signal: AbortSignal.timeout(STEP_TIMEOUT_MS) });
      assert(res.status === 200, `GET ${urlPath}: HTTP ${res.status}`);
      const contentType = res.headers.get('content-type') || '';
      assert(contentType.includes(type), `GET ${urlPath}: Content-Type ${JSON.stringify(contentType)}, expected ${type}`);
      await res.arrayBuffer();
    }
  });

  const userDataDir = await mkdtemp(path.join(os.tmpdir(), 'wshub-e2e-chromium-'));
  cleanup.userDataDir = userDataDir;
  const context = await chromium.launchPersistentContext(userDataDir, {
    executablePath: CHROMIUM_BIN,
    headless: true,
    args: CHROMIUM_ARGS,
    viewport: { width: 1100, height: 680 },
    timeout: 30_000,
  });
  cleanup.context = context;
  context.setDefaultTimeout(STEP_TIMEOUT_MS);

  let alice;
  let bob;
  await step('alice connects, picks her name and joins the room', async () => {
    alice = await openChat(context, base);
    await closeBlankTabs(context, alice);
    await setName(alice, 'alice');
    await alice.locator('#rooms li[data-room="lobby"][data-joined="true"]').waitFor();
    await joinRoom(alice, ROOM);
    await onlineUser(alice, 'alice').waitFor();
  });

  await step('the name is remembered: a new tab starts as alice, bob renames it and joins', async () => {
    bob = await openChat(context, base);
    const remembered = await bob.inputValue('#name');
    assert(remembered === 'alice', `new tab's name field is ${JSON.stringify(remembered)}, expected "alice"`);
    await setName(bob, 'bob');
    await joinRoom(bob, ROOM);
  });

  await step('each sees the other in the online list', async () => {
    await onlineUser(alice, 'bob').waitFor();
    await onlineUser(bob, 'alice').waitFor();
    await onlineUser(bob, 'bob').waitFor();
  });

  await step('a message typed by alice appears for bob (and for alice)', async () => {
    await sendMessage(alice, 'hello bob, this is alice');
    await logEntry(bob, 'alice', 'hello bob, this is alice').waitFor();
    await logEntry(alice, 'alice', 'hello bob, this is alice').waitFor();
    assert(await alice.inputValue('#message') === '', 'the message box was not cleared after sending');
  });

  await step('bob answers with markup, which arrives as text, not HTML', async () => {
    const markup = 'hi alice <img src=x onerror="window.__pwned=1"> <b>bold?</b>';
    await sendMessage(bob, markup);
    await logEntry(alice, 'bob', 'hi alice <img src=x').waitFor();
    assert(await alice.locator('#log img, #log b').count() === 0, 'message markup was rendered as HTML');
    assert(await alice.evaluate(() => window.__pwned === undefined), 'injected script ran');
  });

  await step('bob sends alice a direct message from the online list', async () => {
    await onlineUser(bob, 'alice').locator('button').click();
    const prefilled = await bob.inputValue('#message');
    assert(prefilled === '/msg alice ', `clicking alice prefilled ${JSON.stringify(prefilled)}`);
    await bob.type('#message', 'psst, only for you');
    await bob.click('#send');
    await alice.locator('#log li[data-kind="direct"][data-from="bob"]').filter({ hasText: 'psst, only for you' }).waitFor();
  });

  await step(`screenshot saved to ${path.relative(ROOT, SCREENSHOT)}`, async () => {
    await mkdir(path.dirname(SCREENSHOT), { recursive: true });
    await alice.bringToFront();
    await alice.screenshot({ path: SCREENSHOT });
  });

  await step('closing bob\'s tab removes him from alice\'s online list', async () => {
    await bob.close();
    await onlineUser(alice, 'bob').waitFor({ state: 'detached' });
    await logEntry(alice, '', 'bob left').waitFor();
  });

  await step('wshub exits 0 on SIGTERM and alice\'s page notices the drop', async () => {
    const status = await server.stop();
    assert(status && status.code === 0, `wshub exited with ${status ? describeExit(status) : 'nothing'}`);
    await alice.locator('#status:not([data-state="online"])').waitFor();
    await alice.locator(`#rooms li[data-room="${ROOM}"][data-joined="false"]`).waitFor();
  });

  await step('wshub restarts on the same port', () => restart(server));

  await step('alice reconnects by herself and rejoins her rooms', async () => {
    await waitOnline(alice, RECONNECT_TIMEOUT_MS);
    await alice.locator(`#rooms li[data-room="${ROOM}"][data-joined="true"].current`).waitFor();
    await alice.locator('#rooms li[data-room="lobby"][data-joined="true"]').waitFor();
    await onlineUser(alice, 'alice').waitFor();
  });

  await step('a new tab (carol, named in the URL) joins; messages flow both ways after the restart', async () => {
    const carol = await openChat(context, base, '/?user=carol');
    await carol.waitForFunction(() => document.getElementById('status').textContent.includes('carol'));
    await joinRoom(carol, ROOM);
    await onlineUser(alice, 'carol').waitFor();
    await onlineUser(carol, 'alice').waitFor();
    await sendMessage(carol, 'carol here, after the restart');
    await logEntry(alice, 'carol', 'carol here, after the restart').waitFor();
    await sendMessage(alice, 'welcome back, carol');
    await logEntry(carol, 'alice', 'welcome back, carol').waitFor();
  });

  await step('with --jwt-secret, a page opened with ?token= signs in as the token\'s sub and keeps the token out of the WebSocket URL', async () => {
    const secret = 'e2e-secret';
    const authed = new WshubProcess(WSHUB_BIN, await freePort(), ['--jwt-secret', secret]);
    cleanup.authed = authed;
    await authed.start();
    const token = signJwt({ sub: 'dora', name: 'Dora', rooms: ['lobby', 'e2e-*'], exp: Math.floor(Date.now() / 1000) + 600 }, secret);
    const page = await context.newPage();
    const socketUrls = [];
    page.on('websocket', (ws) => socketUrls.push(ws.url()));
    page.on('pageerror', (err) => pageErrors.push(`${page.url()}: ${err.message}`));
    await page.goto(`${authed.base}/?token=${token}`, { waitUntil: 'domcontentloaded' });
    await waitOnline(page);
    await page.waitForFunction(() => document.getElementById('status').textContent.includes('dora'));
    await joinRoom(page, ROOM);
    await onlineUser(page, 'dora').waitFor();
    assert(socketUrls.length > 0, 'the page opened no WebSocket');
    for (const url of socketUrls) {
      assert(!url.includes(token.split('.')[2]), `the token leaked into the WebSocket URL ${url}`);
    }
    await page.close();
    await authed.stop();
  });

  await step('with --protocol raw, the page falls back to a plain-text chat with everyone', async () => {
    const raw = new WshubProcess(WSHUB_BIN, await freePort(), ['--protocol', 'raw']);
    cleanup.others.push(raw);
    await raw.start();
    const gina = await openChat(context, raw.base, '/?user=gina');
    const hank = await openChat(context, raw.base, '/?user=hank');
    for (const page of [gina, hank]) {
      await page.locator('body.raw-mode').waitFor();
      await page.waitForFunction(() => document.getElementById('status').textContent.includes('raw protocol'));
    }
    await sendMessage(gina, 'plain text for everyone <b>not bold</b>');
    for (const page of [gina, hank]) {
      await page.locator('#log li[data-kind="raw"]').filter({ hasText: 'plain text for everyone <b>not bold</b>' }).waitFor();
      assert(await page.locator('#log b').count() === 0, 'raw text was rendered as HTML');
    }
    await gina.close();
    await hank.close();
    await raw.stop();
  });

  await recoveryStory(context, cleanup);

  await step('with --history-size 0 the page sends no since after a restart and marks no gap', async () => {
    const server = new WshubProcess(WSHUB_BIN, await freePort(), ['--history-size', '0']);
    cleanup.others.push(server);
    await server.start();
    const ivan = await openChat(context, server.base, '/?user=ivan');
    await joinRoom(ivan, 'e2e-no-history');
    await sendMessage(ivan, 'no offsets here');
    await waitForMessage(ivan, 'no offsets here');
    await server.stop();
    await restart(server);
    await ivan.locator('#rooms li[data-room="e2e-no-history"][data-joined="true"]').waitFor({ timeout: RECONNECT_TIMEOUT_MS });
    await sendMessage(ivan, 'still chatting');
    await waitForMessage(ivan, 'still chatting');
    const frames = wire.get(ivan);
    const message = frames.received.find((f) => f?.event === 'message' && f.data?.text === 'no offsets here');
    assert(message && !('offset' in message), `history off, yet ${JSON.stringify(message)}`);
    const joins = frames.sent.filter((f) => f?.event === 'join');
    assert(joins.length >= 4 && joins.every((f) => !('since' in f)), `joins sent: ${JSON.stringify(joins)}`);
    assert(await ivan.locator('#log li.gap').count() === 0, 'a gap marker without history');
    await ivan.close();
    await server.stop();
  });

  await step('no uncaught errors in any page', async () => {
    assert(pageErrors.length === 0, pageErrors.join('; '));
  });
}

/**
 * History and recovery (SPEC §11) through wshub.js: two pages in a room behind a proxy that cuts
 * their connections while messages keep being published; then a restart, which loses history.
 */
async function recoveryStory(context, cleanup) {
  const server = new WshubProcess(WSHUB_BIN, await freePort(), ['--api-key', API_KEY]);
  cleanup.others.push(server);
  const proxy = new CuttableProxy(server.port);
  cleanup.others.push(proxy);
  let erin;
  let frank;
  const chat = [];

  await step('recovery: erin and frank chat in a room, through a proxy in front of a second wshub', async () => {
    await server.start();
    await proxy.start();
    erin = await openChat(context, proxy.base, '/?user=erin');
    frank = await openChat(context, proxy.base, '/?user=frank');
    for (const page of [erin, frank]) await joinRoom(page, RECOVERY_ROOM);
    await onlineUser(erin, 'frank').waitFor();
    for (const [page, text] of [[erin, 'erin: before the blip'], [frank, 'frank: me too']]) {
      await sendMessage(page, text);
      chat.push(text);
      for (const reader of [erin, frank]) await waitForMessage(reader, text);
    }
  });

  await step('recovery: connections cut while messages keep flowing; each page shows every message once, in order, without a gap marker', async () => {
    const published = [];
    let missedWhileCut = 0;
    let cutOff = false;
    let flowing = true;
    const flow = (async () => {
      for (let i = 1; flowing; i++) {
        const text = `flow ${i}`;
        const answer = await publish(server.base, { room: RECOVERY_ROOM, data: text });
        published.push(text);
        if (cutOff && answer.delivered === 0) missedWhileCut += 1;
        await sleep(FLOW_INTERVAL_MS);
      }
    })();
    const flowFailed = flow.then(() => null, (err) => err);
    try {
      await sleep(3 * FLOW_INTERVAL_MS);
      proxy.refusing = true;
      cutOff = true;
      const cut = proxy.cut();
      assert(cut > 0, 'the proxy had no connection to cut');
      for (const page of [erin, frank]) await page.locator('#status:not([data-state="online"])').waitFor();
      await sleep(CUT_MS);
      proxy.refusing = false;
      for (const page of [erin, frank]) {
        await waitOnline(page, RECONNECT_TIMEOUT_MS);
        await page.locator(`#rooms li[data-room="${RECOVERY_ROOM}"][data-joined="true"]`).waitFor({ timeout: RECONNECT_TIMEOUT_MS });
      }
      cutOff = false;
      await sleep(3 * FLOW_INTERVAL_MS);
    } finally {
      flowing = false;
    }
    const err = await flowFailed;
    if (err) throw err;
    assert(missedWhileCut > 0, 'no message was published while both pages were cut off');
    const expected = [...chat, ...published];
    for (const [who, page] of [['erin', erin], ['frank', frank]]) {
      await waitForMessage(page, published.at(-1));
      assertSameSequence(who, await messageTexts(page), expected);
      const gaps = await page.locator('#log li.gap').count();
      assert(gaps === 0, `${who} shows ${gaps} gap marker(s) although recovery was possible`);
      // And it was recovery: the rejoin asked for what came after its position, and got it.
      const frames = wire.get(page);
      const rejoin = frames.sent.filter((f) => f?.event === 'join' && f.room === RECOVERY_ROOM).at(-1);
      assert(typeof rejoin?.since?.epoch === 'string' && Number.isInteger(rejoin.since.offset),
        `${who} rejoined with ${JSON.stringify(rejoin)}, expected a since`);
      const reply = frames.received.find((f) => f?.event === 'join' && f.id === rejoin.id);
      assert(reply?.data?.recovered === true, `${who}'s rejoin was answered ${JSON.stringify(reply)}`);
    }
    chat.push(...published);
  });

  await step('recovery: after a wshub restart (history lost) each page marks a gap in the room, then chats on', async () => {
    const status = await server.stop();
    assert(status && status.code === 0, `wshub exited with ${status ? describeExit(status) : 'nothing'}`);
    await restart(server);
    for (const [who, page] of [['erin', erin], ['frank', frank]]) {
      await page.locator('#log li.gap').waitFor({ timeout: RECONNECT_TIMEOUT_MS });
      const frames = wire.get(page);
      const rejoin = frames.sent.filter((f) => f?.event === 'join' && f.room === RECOVERY_ROOM).at(-1);
      const reply = frames.received.find((f) => f?.event === 'join' && f.id === rejoin?.id);
      assert(rejoin?.since && reply?.data?.recovered === false,
        `${who} rejoined with ${JSON.stringify(rejoin)}, answered ${JSON.stringify(reply)}`);
      await page.locator(`#rooms li[data-room="${RECOVERY_ROOM}"][data-joined="true"]`).waitFor({ timeout: RECONNECT_TIMEOUT_MS });
    }
    const text = 'erin: after the restart';
    await sendMessage(erin, text);
    for (const [who, page] of [['erin', erin], ['frank', frank]]) {
      await waitForMessage(page, text);
      assertSameSequence(who, await messageTexts(page), [...chat, text]);
      const gaps = await page.locator('#log li.gap').count();
      assert(gaps === 1, `${who} shows ${gaps} gap markers, expected 1`);
    }
    await erin.close();
    await frank.close();
    proxy.close();
    await server.stop();
  });
}

/** An HS256 JWT, signed with node's crypto (the server verifies it with the same secret). */
function signJwt(claims, secret) {
  const encode = (value) => Buffer.from(JSON.stringify(value)).toString('base64url');
  const unsigned = `${encode({ alg: 'HS256', typ: 'JWT' })}.${encode(claims)}`;
  const signature = createHmac('sha256', secret).update(unsigned).digest('base64url');
  return `${unsigned}.${signature}`;
}

/** launchPersistentContext opens a blank tab; close it so only chat tabs remain. */
async function closeBlankTabs(context, keep) {
  for (const page of context.pages()) {
    if (page !== keep && page.url() === 'about:blank') await page.close();
  }
}

// ------------------------------------------------------------------ main

const cleanup = { server: null, authed: null, others: [], context: null, userDataDir: null };
let watchdog;
try {
  await Promise.race([
    run(cleanup),
    new Promise((_, reject) => {
      watchdog = setTimeout(() => reject(new Error(`e2e run exceeded ${TOTAL_TIMEOUT_MS} ms`)), TOTAL_TIMEOUT_MS);
    }),
  ]);
} catch (err) {
  if (!(err instanceof StepFailed)) {
    failed += 1;
    console.log(`FAIL ${err.message}`);
  } else if (err.cause?.stack) {
    console.log(String(err.cause.stack).split('\n').slice(0, 6).join('\n'));
  }
  for (const server of [cleanup.server, ...cleanup.others]) {
    if (!server?.logTail?.length) continue;
    console.log(`--- wshub :${server.port} output (last lines) ---`);
    console.log(server.logTail.join('\n'));
    console.log('---');
  }
} finally {
  clearTimeout(watchdog);
  cleanup.server?.kill();
  cleanup.authed?.kill();
  for (const other of cleanup.others) other instanceof CuttableProxy ? other.close() : other.kill();
  if (cleanup.context) {
    await Promise.race([cleanup.context.close().catch(() => {}), sleep(10_000)]);
  }
  if (cleanup.userDataDir) await rm(cleanup.userDataDir, { recursive: true, force: true }).catch(() => {});
}

if (failed === 0 && passed === 0) failed = 1;
console.log(`e2e: ${passed} passed, ${failed} failed`);
process.exit(failed === 0 ? 0 : 1);
