// End-to-end test of the chat page against the real wshub binary, in headless Chromium.
//
//   cd tests/e2e && npm ci && node chat.e2e.mjs
//
// Environment: WSHUB_BIN (default <repo>/target/debug/wshub), CHROMIUM_BIN (default /usr/bin/chromium).
// Writes a screenshot to <repo>/target/e2e-chat.png. Prints `e2e: N passed, M failed` last.

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

const STEP_TIMEOUT_MS = 10_000;
const HEALTH_TIMEOUT_MS = 15_000;
const SERVER_EXIT_TIMEOUT_MS = 10_000;
/** Covers the page's backoff ceiling (10 s) plus the restart itself. */
const RECONNECT_TIMEOUT_MS = 25_000;
const TOTAL_TIMEOUT_MS = 150_000;

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

// ------------------------------------------------------------------ page helpers

/** Page errors from every tab; any of them fails the run at the end. */
const pageErrors = [];

async function openChat(context, base, urlPath = '/') {
  const page = await context.newPage();
  page.on('pageerror', (err) => pageErrors.push(`${page.url()}: ${err.message}`));
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
    for (const [urlPath, type] of [['/', 'text/html'], ['/assets/app.js', 'javascript'], ['/assets/style.css', 'text/css']]) {
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

  await step('wshub restarts on the same port', async () => {
    // The old socket may linger briefly; a fresh bind is retried a few times.
    for (let attempt = 1; ; attempt++) {
      try {
        await server.start();
        return;
      } catch (err) {
        if (attempt >= 5 || !server.exit) throw err;
        await sleep(500);
      }
    }
  });

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

  await step('no uncaught errors in any page', async () => {
    assert(pageErrors.length === 0, pageErrors.join('; '));
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

const cleanup = { server: null, authed: null, context: null, userDataDir: null };
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
  if (cleanup.server?.logTail.length) {
    console.log('--- wshub output (last lines) ---');
    console.log(cleanup.server.logTail.join('\n'));
    console.log('---');
  }
} finally {
  clearTimeout(watchdog);
  cleanup.server?.kill();
  cleanup.authed?.kill();
  if (cleanup.context) {
    await Promise.race([cleanup.context.close().catch(() => {}), sleep(10_000)]);
  }
  if (cleanup.userDataDir) await rm(cleanup.userDataDir, { recursive: true, force: true }).catch(() => {});
}

if (failed === 0 && passed === 0) failed = 1;
console.log(`e2e: ${passed} passed, ${failed} failed`);
process.exit(failed === 0 ? 0 : 1);
