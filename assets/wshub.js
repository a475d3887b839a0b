// wshub.js: a small browser client for wshub's `events` protocol. An ES module with no
// dependencies and no build step; wshub serves it at /assets/wshub.js.
//
//   import { connect } from '/assets/wshub.js';
//   const hub = connect({ user: 'alice' });           // or { token: JWT }
//   hub.on('message', (m) => show(m.room, m.from, m.data));
//   hub.on('gap', ({ room }) => warn(`messages may be missing in ${room}`));
//   await hub.join('lobby');
//   hub.send('lobby', { text: 'hello' });
//
// What it does for the app: heartbeats and dead-socket detection, reconnection with backoff
// and jitter, request/reply matching by `id`, and rooms that survive reconnects. With history on
// (the server numbers room messages with `offset` under an `epoch`), a rejoin asks for what was
// missed (`since`), every room message reaches the app exactly once, and a room where recovery
// failed is reported as a `gap`. Without offsets it works the same, minus recovery.

/** @typedef {'connecting'|'open'|'reconnecting'|'offline'|'closed'} HubState */

/**
 * @typedef {object} HubOptions
 * @property {string|(() => string)} [url] WebSocket URL, or a function called before every
 *   connect; relative URLs and http(s) are resolved against the page. Default `/ws` on the
 *   page's host (ws: or wss: by the page's protocol).
 * @property {string} [token] A JWT, offered as the subprotocols `wshub, bearer.<token>` so that
 *   it stays out of URLs (and proxy logs).
 * @property {string} [user] Without a token: the user id, sent as `?user=`.
 * @property {number} [heartbeatMs=25000] How often a `ping` is sent.
 * @property {number} [heartbeatTimeoutMs=10000] A ping unanswered (no frame at all) this long
 *   means the socket is dead even if the browser has not noticed: it is closed and replaced.
 * @property {number} [connectTimeoutMs=10000] A handshake that hangs this long is abandoned.
 * @property {number} [backoffMinMs=500] Shortest wait before a reconnect.
 * @property {number} [backoffMaxMs=10000] Longest wait before a reconnect.
 * @property {'half'|'full'} [jitter='half'] Half jitter waits between half and all of the
 *   exponential delay; full jitter anywhere from `backoffMinMs` to it.
 * @property {number} [stableMs=5000] A connection that lived this long resets the backoff.
 */

const DEFAULTS = {
  heartbeatMs: 25_000,
  heartbeatTimeoutMs: 10_000,
  connectTimeoutMs: 10_000,
  backoffMinMs: 500,
  backoffMaxMs: 10_000,
  jitter: 'half',
  stableMs: 5_000,
};

/** Wait before a join refused with 429 (the server's `--command-rate`) is sent again. */
const RATE_LIMITED_RETRY_MS = 1_000;

/** Fire-and-forget requests remembered so that an error reply can name what failed. */
const SENT_REMEMBERED = 100;

/** Request names a client sends: seeing one echoed back unanswered means a `raw` server. */
const REQUEST_EVENTS = new Set(['ping', 'join', 'quit', 'message', 'direct', 'online']);

/**
 * A refused request (`code` is the server's: 400, 403, 404, 413, 429), or one that cannot be
 * answered any more (`code` is 'offline', 'closed', 'quit' or 'raw').
 */
export class HubError extends Error {
  constructor(message, code, event, request, reply) {
    super(message);
    this.name = 'HubError';
    /** @type {number|string} */
    this.code = code;
    /** The request's event name (`join`, `message`, …). */
    this.event = event;
    /** The request as sent, when known. */
    this.request = request;
    /** The server's error reply, when there is one. */
    this.reply = reply;
  }
}

/**
 * Starts a hub client; it connects right after the current task, so listeners added
 * synchronously see every event.
 * @param {HubOptions} [options]
 * @returns {Hub}
 */
export function connect(options = {}) {
  return new Hub(options);
}

/**
 * One logical connection to wshub: a WebSocket replaced whenever it dies, until `close()`.
 *
 * Events (`hub.on(name, fn)`):
 * - `state` `{state, reason?, delay?, attempt}`: `connecting`, `open`, `reconnecting` (after
 *   `delay` ms), `offline` (waiting for the browser's `online` event), `closed`;
 * - `protocol` `'events'|'raw'`: the server turned out to speak `--protocol raw`;
 * - `message` the wire event (room or everyone), each room message once;
 * - `direct`, `presence` the wire event;
 * - `join` `{room, data, rejoin, recovered, reply}` for every accepted join, reconnects included;
 * - `gap` `{room, reason, epoch, offset}`: a rejoin could not recover what was missed;
 * - `raw` `{data}` a frame of a raw server (text; binary frames decoded as UTF-8);
 * - `error` a {@link HubError} that no promise received (a refused message, a refused rejoin).
 */
export class Hub {
  /** @type {HubOptions & typeof DEFAULTS} */
  #options;
  /** @type {Map<string, Set<Function>>} */
  #listeners = new Map();
  /** @type {WebSocket|null} */
  #ws = null;
  /** @type {HubState} */
  #state = 'connecting';
  #protocol = 'events';
  /** Set by close(): no reconnect until reconnect() is called. */
  #stopped = false;
  /** Failed connections in a row; drives the backoff. */
  #attempt = 0;
  #openedAt = 0;
  #nextId = 1;
  /** id → {request, resolve, reject} for requests that get a reply. */
  #pending = new Map();
  /** id → request for messages, which are answered only when refused. */
  #sent = new Map();
  /**
   * The rooms the app is in, kept across reconnects: name → {epoch, offset, joined, joining,
   * everJoined, waiters}. `epoch`/`offset` are the position of the last message delivered (or
   * of the join); `joining` is true while a join is unanswered, so that no second one is sent.
   */
  #rooms = new Map();
  #timers = { connect: 0, reconnect: 0, heartbeat: 0, deadline: 0 };
  #onBrowserOnline = () => {
    if (this.#state === 'reconnecting' || this.#state === 'offline') {
      this.#attempt = 0;
      this.#dial();
    }
  };

  /** @param {HubOptions} options */
  constructor(options = {}) {
    this.#options = { ...DEFAULTS, ...options };
    globalThis.addEventListener?.('online', this.#onBrowserOnline);
    queueMicrotask(() => { if (!this.#stopped && !this.#ws) this.#dial(); });
  }

  /** @returns {HubState} */
  get state() { return this.#state; }

  /** `'events'`, or `'raw'` once the server turned out to relay frames verbatim. */
  get protocol() { return this.#protocol; }

  /** The rooms the client is in or joining (rejoined after every reconnect). */
  get rooms() { return [...this.#rooms.keys()]; }

  /**
   * A room's position: the epoch and offset of the last message delivered (null before
   * the server numbered anything, or with history off).
   * @returns {{epoch: string|null, offset: number}|null}
   */
  position(room) {
    const r = this.#rooms.get(room);
    return r ? { epoch: r.epoch, offset: r.offset } : null;
  }

  /**
   * Listens to an event (see the class documentation).
   * @returns {() => void} removes the listener
   */
  on(event, listener) {
    if (!this.#listeners.has(event)) this.#listeners.set(event, new Set());
    this.#listeners.get(event).add(listener);
    return () => this.#listeners.get(event)?.delete(listener);
  }

  /**
   * Joins a room, now or as soon as connected, and stays in it across reconnects.
   * @returns {Promise<object>} the join reply; rejects when refused (the room is then
   *   forgotten), on quit() or on close()
   */
  join(room) {
    let entry = this.#rooms.get(room);
    if (!entry) {
      entry = { epoch: null, offset: 0, joined: false, joining: false, everJoined: false, waiters: [] };
      this.#rooms.set(room, entry);
    }
    const reply = new Promise((resolve, reject) => entry.waiters.push({ resolve, reject }));
    this.#sendJoin(room, entry);
    return reply;
  }

  /**
   * Leaves a room (forgotten at once: no rejoin, no position).
   * @returns {Promise<object|null>} the quit reply; null when not connected
   */
  quit(room) {
    const entry = this.#rooms.get(room);
    if (entry) {
      this.#rooms.delete(room);
      this.#settle(entry.waiters, null, new HubError(`left ${room}`, 'quit', 'join', { room }));
    }
    if (!this.#isOpen()) return Promise.resolve(null);
    return this.#request({ event: 'quit', room });
  }

  /** Who is online in `room` (everyone when omitted): the reply, `data.users` and `data.count`. */
  online(room) {
    return this.#request(room == null ? { event: 'online' } : { event: 'online', room });
  }

  /** Sends `data` to every connection of user `to`; rejects with code 404 when `to` is offline. */
  direct(to, data) {
    return this.#request({ event: 'direct', to, data });
  }

  /** A round trip to the server: the reply carries the server's `ts`. */
  ping() {
    return this.#request({ event: 'ping' });
  }

  /**
   * Sends a message to a room (null: everyone). No reply unless refused: a refusal arrives as
   * an `error` event whose `request` is this message.
   * @returns {boolean} false when not connected (nothing was sent)
   */
  send(room, data) {
    if (!this.#isOpen()) return false;
    const request = room == null ? { event: 'message', data } : { event: 'message', room, data };
    const id = this.#nextId++;
    this.#sent.set(id, request);
    if (this.#sent.size > SENT_REMEMBERED) this.#sent.delete(this.#sent.keys().next().value);
    this.#ws.send(JSON.stringify({ ...request, id }));
    return true;
  }

  /** Sends a frame as it is (for a `raw` server). @returns {boolean} false when not connected */
  sendRaw(data) {
    if (!this.#ws || this.#ws.readyState !== WebSocket.OPEN) return false;
    this.#ws.send(data);
    return true;
  }

  /**
   * Drops the current socket and connects again now, e.g. under another name. Rooms are kept.
   * @param {Partial<HubOptions>} [changes] options to change first (`user`, `token`, `url`)
   */
  reconnect(changes = {}) {
    Object.assign(this.#options, changes);
    this.#stopped = false;
    this.#attempt = 0;
    this.#discard();
    this.#dial();
  }

  /** Closes for good (until reconnect()): no more reconnects, pending promises reject. */
  close() {
    this.#stopped = true;
    this.#discard();
    for (const entry of this.#rooms.values()) {
      this.#settle(entry.waiters, null, new HubError('closed', 'closed', 'join'));
    }
    this.#setState('closed', {});
  }

  // ------------------------------------------------------------ connection

  #dial() {
    clearTimeout(this.#timers.reconnect);
    this.#setProtocol('events');
    this.#setState('connecting', {});
    const { token } = this.#options;
    let ws;
    try {
      ws = token ? new WebSocket(this.#url(), ['wshub', 'bearer.' + token]) : new WebSocket(this.#url());
    } catch (err) {
      this.#dropped(`cannot connect: ${err.message}`);
      return;
    }
    ws.binaryType = 'arraybuffer';
    this.#ws = ws;
    this.#timers.connect = setTimeout(() => {
      if (ws === this.#ws && ws.readyState === WebSocket.CONNECTING) this.#dropped('connection timed out');
    }, this.#options.connectTimeoutMs);
    ws.onopen = () => { if (ws === this.#ws) this.#opened(); };
    ws.onmessage = (ev) => { if (ws === this.#ws) this.#frame(ev.data); };
    ws.onclose = (ev) => { if (ws === this.#ws) this.#dropped(closeReason(ev)); };
  }

  #url() {
    const { url, user, token } = this.#options;
    const href = (typeof url === 'function' ? url() : url) ?? '/ws';
    const resolved = new URL(href, globalThis.location?.href);
    if (resolved.protocol === 'http:') resolved.protocol = 'ws:';
    if (resolved.protocol === 'https:') resolved.protocol = 'wss:';
    if (!token && user) resolved.searchParams.set('user', user);
    return resolved.href;
  }

  #opened() {
    clearTimeout(this.#timers.connect);
    this.#openedAt = Date.now();
    this.#setState('open', {});
    this.#timers.heartbeat = setInterval(() => this.#heartbeat(), this.#options.heartbeatMs);
    for (const [room, entry] of this.#rooms) this.#sendJoin(room, entry);
  }

  #heartbeat() {
    if (this.#protocol === 'raw') return; // a raw server would relay our ping to everyone
    this.#request({ event: 'ping' }).catch(() => {});
    if (!this.#timers.deadline) {
      this.#timers.deadline = setTimeout(() => this.#dropped('no answer to ping'),
        this.#options.heartbeatTimeoutMs);
    }
  }

  /** The socket is gone (closed, timed out or silent): retry after a backoff, unless stopped. */
  #dropped(reason) {
    if (this.#openedAt && Date.now() - this.#openedAt >= this.#options.stableMs) this.#attempt = 0;
    this.#discard();
    if (this.#stopped) return;
    if (globalThis.navigator?.onLine === false) {
      this.#setState('offline', { reason }); // #onBrowserOnline dials when the network is back
      return;
    }
    const { backoffMinMs, backoffMaxMs, jitter } = this.#options;
    const cap = Math.min(backoffMaxMs, backoffMinMs * 2 ** (this.#attempt + 1));
    const delay = Math.round(jitter === 'full'
      ? backoffMinMs + Math.random() * (cap - backoffMinMs)
      : cap / 2 + Math.random() * cap / 2);
    this.#attempt += 1;
    this.#setState('reconnecting', { reason, delay });
    this.#timers.reconnect = setTimeout(() => this.#dial(), delay);
  }

  /** Forgets the current socket without a reconnect; what waited on it fails. Rooms stay. */
  #discard() {
    const ws = this.#ws;
    this.#ws = null;
    this.#openedAt = 0;
    clearTimeout(this.#timers.connect);
    clearTimeout(this.#timers.reconnect);
    clearInterval(this.#timers.heartbeat);
    clearTimeout(this.#timers.deadline);
    this.#timers.deadline = 0;
    this.#failPending('closed', 'connection closed');
    this.#sent.clear();
    for (const entry of this.#rooms.values()) entry.joined = entry.joining = false;
    if (!ws) return;
    ws.onopen = ws.onmessage = ws.onclose = null;
    try { ws.close(1000); } catch { /* already closing */ }
  }

  #isOpen() {
    return this.#ws?.readyState === WebSocket.OPEN && this.#protocol === 'events';
  }

  // ------------------------------------------------------------ requests and replies

  #request(request, meta) {
    if (!this.#isOpen()) {
      return Promise.reject(new HubError('not connected', 'offline', request.event, request));
    }
    const id = this.#nextId++;
    this.#ws.send(JSON.stringify({ ...request, id }));
    return new Promise((resolve, reject) => this.#pending.set(id, { request, meta, resolve, reject }));
  }

  /**
   * Sends a join for `room` if connected and none is unanswered. A room not yet joined on this
   * socket asks for what it missed when its epoch is known; joining again (already in) does not.
   */
  #sendJoin(room, entry) {
    if (!this.#isOpen() || entry.joining) return;
    const request = { event: 'join', room };
    if (!entry.joined && entry.epoch != null) request.since = { epoch: entry.epoch, offset: entry.offset };
    entry.joining = true;
    // The reply (or refusal) is handled in #joined/#refused, which settle the room's waiters.
    this.#request(request, { entry, rejoin: entry.everJoined }).catch(() => {});
  }

  #frame(data) {
    clearTimeout(this.#timers.deadline); // any frame proves the socket alive
    this.#timers.deadline = 0;
    if (typeof data !== 'string') {
      this.#raw(new TextDecoder().decode(data)); // binary frames exist only in raw mode
      return;
    }
    let msg;
    try { msg = JSON.parse(data); } catch { msg = undefined; }
    if (!msg || typeof msg !== 'object' || Array.isArray(msg) || typeof msg.event !== 'string') {
      this.#raw(data);
    } else if (REQUEST_EVENTS.has(msg.event) && !('code' in msg) && !('ts' in msg) && !('from' in msg)) {
      // The events server never sends a request back: a raw server relays ours (or others').
      this.#enterRaw();
    } else if (this.#protocol === 'raw') {
      this.#emit('raw', { data });
    } else {
      this.#event(msg);
    }
  }

  #event(msg) {
    const pending = msg.id != null ? this.#pending.get(msg.id) : undefined;
    if (pending) this.#pending.delete(msg.id);
    if (typeof msg.code === 'number' && msg.code !== 0) {
      this.#refused(msg, pending);
      return;
    }
    switch (msg.event) {
      case 'join': if (pending?.meta) this.#joined(msg, pending); break;
      case 'message': this.#message(msg); break;
      case 'presence': this.#emit('presence', msg); break;
      case 'direct': if (!('code' in msg)) this.#emit('direct', msg); else pending?.resolve(msg); break;
      default: pending?.resolve(msg); break; // quit, online, ping; unknown events are ignored
    }
  }

  #refused(reply, pending) {
    const request = pending?.request ?? this.#sent.get(reply.id);
    const error = new HubError(reply.error || `error ${reply.code}`, reply.code,
      request?.event ?? reply.event, request, reply);
    if (request?.event !== 'join' || !pending?.meta) {
      if (pending) pending.reject(error);
      else this.#emit('error', error);
      return;
    }
    const entry = pending.meta.entry;
    if (this.#rooms.get(request.room) !== entry) return; // quit before the reply came
    entry.joining = false;
    if (reply.code === 429) {
      // --command-rate: many rooms rejoined at once. Try again rather than lose the room.
      setTimeout(() => {
        if (this.#rooms.get(request.room) === entry && !entry.joined) this.#sendJoin(request.room, entry);
      }, RATE_LIMITED_RETRY_MS);
      return;
    }
    this.#rooms.delete(request.room); // refused (e.g. 403): do not retry on every reconnect
    if (entry.waiters.length) this.#settle(entry.waiters, null, error);
    else this.#emit('error', error);
  }

  #joined(reply, { request, meta }) {
    const room = request.room;
    const entry = meta.entry;
    if (this.#rooms.get(room) !== entry) return; // quit before the reply came
    const data = reply.data ?? {};
    const epoch = typeof data.epoch === 'string' ? data.epoch : null;
    const last = Number.isSafeInteger(data.offset) ? data.offset : 0;
    const since = request.since;
    let recovered;
    if (since) {
      recovered = data.recovered === true && epoch === since.epoch;
      // Recovered: the missed messages since.offset+1…last follow; the position stays where it
      // is so that they are delivered. Otherwise they are lost: continue from the server's.
      if (!recovered) {
        entry.epoch = epoch;
        entry.offset = last;
      }
    } else if (epoch !== entry.epoch) {
      entry.epoch = epoch;
      entry.offset = last;
    } else {
      entry.offset = Math.max(entry.offset, last);
    }
    entry.joined = true;
    entry.joining = false;
    entry.everJoined = true;
    this.#settle(entry.waiters, reply, null);
    this.#emit('join', { room, data, rejoin: meta.rejoin, recovered, reply });
    if (since && !recovered) {
      const reason = epoch == null ? 'no history' : epoch !== since.epoch ? 'history restarted' : 'history trimmed';
      this.#emit('gap', { room, reason, epoch, offset: last });
    }
  }

  /** Delivers a message, once: a room message at or below the room's position is a duplicate. */
  #message(msg) {
    const entry = msg.room != null ? this.#rooms.get(msg.room) : undefined;
    if (entry && Number.isSafeInteger(msg.offset)) {
      if (msg.offset === 1 && entry.offset >= 1) {
        // Offsets started over under an epoch we have not been told (history lost while we
        // were connected). A replay never resends 1 to a client past it, so this is new. The
        // epoch is unknown: a rejoin asks with an empty one, which no room has, so that what
        // the disconnect missed is reported as a gap rather than skipped silently.
        entry.epoch = '';
      } else if (msg.offset <= entry.offset) {
        return;
      }
      entry.offset = msg.offset;
    }
    this.#emit('message', msg);
  }

  #raw(data) {
    this.#enterRaw();
    this.#emit('raw', { data });
  }

  #enterRaw() {
    if (this.#protocol === 'raw') return;
    this.#setProtocol('raw');
    this.#failPending('raw', 'the server speaks the raw protocol');
    for (const entry of this.#rooms.values()) entry.joining = false;
  }

  // ------------------------------------------------------------ helpers

  #failPending(code, text) {
    const pending = [...this.#pending.values()];
    this.#pending.clear();
    for (const { request, reject } of pending) reject(new HubError(text, code, request.event, request));
  }

  #settle(waiters, value, error) {
    for (const { resolve, reject } of waiters.splice(0)) {
      if (error) reject(error); else resolve(value);
    }
  }

  #setState(state, detail) {
    this.#state = state;
    if (state === 'closed') globalThis.removeEventListener?.('online', this.#onBrowserOnline);
    else if (state === 'connecting') globalThis.addEventListener?.('online', this.#onBrowserOnline);
    this.#emit('state', { state, attempt: this.#attempt, ...detail });
  }

  #setProtocol(protocol) {
    if (this.#protocol === protocol) return;
    this.#protocol = protocol;
    this.#emit('protocol', protocol);
  }

  /** Calls the listeners; one that throws is reported and does not stop the others. */
  #emit(event, detail) {
    for (const listener of [...(this.#listeners.get(event) ?? [])]) {
      try {
        listener(detail);
      } catch (err) {
        setTimeout(() => { throw err; });
      }
    }
  }
}

function closeReason(ev) {
  if (ev.code === 1000 || ev.code === 1001) return 'server closed the connection';
  if (ev.code === 1006) return 'connection lost';
  return `closed (${ev.code}${ev.reason ? ': ' + ev.reason : ''})`;
}
