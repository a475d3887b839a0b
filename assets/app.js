// wshub chat client: plain JS, no build step.
//
// Speaks the `events` protocol (SPEC §5) and falls back to a plain-text chat
// when the server runs `--protocol raw`. All user-provided text is rendered
// with textContent; nothing from the wire ever reaches innerHTML.
'use strict';

(() => {
  const HEARTBEAT_MS = 25_000;
  /** A handshake that hangs (e.g. a black-holed SYN) is abandoned and retried after this long. */
  const CONNECT_TIMEOUT_MS = 10_000;
  /** A ping unanswered for this long means the socket is dead even if the browser has not noticed. */
  const HEARTBEAT_REPLY_MS = 10_000;
  const BACKOFF_MIN_MS = 500;
  const BACKOFF_MAX_MS = 10_000;
  /** A connection that lived at least this long resets the backoff; shorter ones keep growing it. */
  const STABLE_CONNECTION_MS = 5_000;
  const HISTORY_PER_ROOM = 500;
  const NOTICE_MS = 8_000;
  const DEFAULT_ROOM = 'lobby';
  const NAME_KEY = 'wshub.name';
  /** Request names a client sends; seeing one echoed back unanswered means the server is in raw mode. */
  const REQUEST_EVENTS = new Set(['ping', 'join', 'quit', 'message', 'direct', 'online']);

  const $ = (id) => document.getElementById(id);
  const el = {
    identity: $('identity'), name: $('name'), connect: $('connect'), status: $('status'),
    joinForm: $('join-form'), roomInput: $('room-input'), rooms: $('rooms'),
    online: $('online'), onlineCount: $('online-count'),
    roomTitle: $('room-title'), log: $('log'), notice: $('notice'),
    composer: $('composer'), message: $('message'),
  };

  const params = new URLSearchParams(location.search);
  const token = params.get('token');
  // Relative to the page, so the page also works under a reverse-proxy prefix (/chat/ → /chat/ws).
  const wsPath = params.get('ws') || 'ws';

  const state = {
    /** The identity we connect as; with a token it is only our best guess (the JWT `sub`). */
    me: '',
    /** room name → { joined, users: Set, log: [], unread }. Insertion order is the sidebar order. */
    rooms: new Map(),
    /** Room whose log and online list are shown; null when in no room. */
    current: null,
    /** Broadcasts and direct messages received while in no room. */
    looseLog: [],
    ws: null,
    nextId: 1,
    /** id → the request, so a reply (or error) can be tied back to what we asked. */
    pending: new Map(),
    rawMode: false,
    /** The default room is joined on the first connection only; later ones rejoin what the user kept. */
    connectedOnce: false,
    attempt: 0,
    openedAt: 0,
    reconnectTimer: null,
    connectTimer: null,
    countdownTimer: null,
    heartbeatTimer: null,
    heartbeatDeadline: null,
    noticeTimer: null,
  };

  // ---------------------------------------------------------------- identity

  function decodeJwtPayload(jwt) {
    try {
      const part = jwt.split('.')[1].replace(/-/g, '+').replace(/_/g, '/');
      const json = decodeURIComponent(Array.from(atob(part),
        (c) => '%' + c.charCodeAt(0).toString(16).padStart(2, '0')).join(''));
      return JSON.parse(json);
    } catch {
      return null;
    }
  }

  function initialName() {
    const fromUrl = params.get('user');
    if (fromUrl) return fromUrl;
    let stored = null;
    try { stored = localStorage.getItem(NAME_KEY); } catch { /* storage disabled */ }
    if (stored) return stored;
    const generated = 'guest-' + String(Math.floor(1000 + Math.random() * 9000));
    rememberName(generated);
    return generated;
  }

  function rememberName(name) {
    try { localStorage.setItem(NAME_KEY, name); } catch { /* storage disabled */ }
  }

  // ---------------------------------------------------------------- connection

  function socketUrl() {
    const url = new URL(wsPath, location.href);
    url.protocol = location.protocol === 'https:' ? 'wss:' : 'ws:';
    url.search = '';
    url.hash = '';
    // The token never goes into the URL (proxy logs); it travels as a subprotocol.
    if (!token) url.searchParams.set('user', state.me);
    return url.href;
  }

  function connect() {
    clearTimeout(state.reconnectTimer);
    clearInterval(state.countdownTimer);
    state.reconnectTimer = null;
    discardSocket();
    if (state.rawMode) {
      state.rawMode = false;
      document.body.classList.remove('raw-mode');
      renderLog();
    }
    setStatus('connecting', state.attempt ? `connecting (attempt ${state.attempt + 1})…` : 'connecting…');

    let ws;
    try {
      ws = token ? new WebSocket(socketUrl(), ['wshub', 'bearer.' + token]) : new WebSocket(socketUrl());
    } catch (err) {
      showNotice(`cannot connect: ${err.message}`);
      scheduleReconnect();
      return;
    }
    state.ws = ws;
    state.connectTimer = setTimeout(() => {
      if (state.ws === ws && ws.readyState === WebSocket.CONNECTING) dropped('connection timed out');
    }, CONNECT_TIMEOUT_MS);
    ws.onopen = () => onOpen(ws);
    ws.onmessage = (ev) => onFrame(ev.data);
    ws.onclose = (ev) => onClose(ws, ev);
  }

  /**
   * Forget the current socket without triggering a reconnect (its handlers are
   * detached first). Room memberships and online lists die with it: they are
   * stale until the next connection rejoins.
   */
  function discardSocket() {
    const ws = state.ws;
    state.ws = null;
    clearTimeout(state.connectTimer);
    stopHeartbeat();
    state.pending.clear();
    for (const room of state.rooms.values()) {
      room.joined = false;
      room.users.clear();
    }
    renderRooms();
    renderOnline();
    if (!ws) return;
    ws.onopen = ws.onmessage = ws.onclose = null;
    try { ws.close(1000); } catch { /* already closing */ }
  }

  function onOpen(ws) {
    if (ws !== state.ws) return;
    clearTimeout(state.connectTimer);
    state.openedAt = Date.now();
    setStatus('online', `online as ${state.me}`);
    if (!state.connectedOnce) {
      state.connectedOnce = true;
      if (state.rooms.size === 0) addRoom(DEFAULT_ROOM);
    }
    for (const room of state.rooms.keys()) send({ event: 'join', room });
    if (!state.current) switchRoom(state.rooms.keys().next().value);
    startHeartbeat();
  }

  function onClose(ws, ev) {
    if (ws !== state.ws) return;
    dropped(ev.code === 1000 || ev.code === 1001 ? 'server closed the connection'
      : ev.code === 1006 ? 'connection lost' : `closed (${ev.code}${ev.reason ? ': ' + ev.reason : ''})`);
  }

  /** The socket is gone (closed, or silent past the heartbeat deadline): mark rooms stale and retry. */
  function dropped(why) {
    const lived = state.openedAt ? Date.now() - state.openedAt : 0;
    state.openedAt = 0;
    if (lived >= STABLE_CONNECTION_MS) state.attempt = 0;
    discardSocket();
    if (why) showNotice(why);
    scheduleReconnect();
  }

  function scheduleReconnect() {
    if (!navigator.onLine) {
      setStatus('offline', 'offline — waiting for the network');
      return;
    }
    const base = Math.min(BACKOFF_MAX_MS, BACKOFF_MIN_MS * 2 ** state.attempt);
    const delay = Math.round(base / 2 + Math.random() * base / 2); // "equal jitter"
    state.attempt += 1;
    const due = Date.now() + delay;
    const tick = () => {
      const secs = Math.max(0, Math.ceil((due - Date.now()) / 1000));
      setStatus('reconnecting', `reconnecting in ${secs}s`);
    };
    tick();
    clearInterval(state.countdownTimer);
    state.countdownTimer = setInterval(tick, 250);
    clearTimeout(state.reconnectTimer);
    state.reconnectTimer = setTimeout(connect, delay);
  }

  function startHeartbeat() {
    stopHeartbeat();
    state.heartbeatTimer = setInterval(() => {
      if (state.rawMode) return; // a raw server would broadcast our ping to everyone
      send({ event: 'ping' });
      if (!state.heartbeatDeadline) {
        state.heartbeatDeadline = setTimeout(() => dropped('no answer to ping'), HEARTBEAT_REPLY_MS);
      }
    }, HEARTBEAT_MS);
  }

  function stopHeartbeat() {
    clearInterval(state.heartbeatTimer);
    clearTimeout(state.heartbeatDeadline);
    state.heartbeatTimer = null;
    state.heartbeatDeadline = null;
  }

  /** Sends a request with a fresh id; returns false when there is no open socket. */
  function send(request) {
    const ws = state.ws;
    if (!ws || ws.readyState !== WebSocket.OPEN) return false;
    const id = state.nextId++;
    state.pending.set(id, request);
    ws.send(JSON.stringify({ ...request, id }));
    return true;
  }

  // ---------------------------------------------------------------- incoming frames

  function onFrame(data) {
    clearTimeout(state.heartbeatDeadline);
    state.heartbeatDeadline = null;
    if (typeof data !== 'string') {
      // Binary frames only exist in raw mode; show their bytes as best-effort text.
      data.arrayBuffer?.().then((buf) => rawLine(new TextDecoder().decode(buf)));
      return;
    }
    let msg;
    try { msg = JSON.parse(data); } catch { msg = undefined; }
    if (!msg || typeof msg !== 'object' || Array.isArray(msg) || typeof msg.event !== 'string') {
      rawLine(data);
      return;
    }
    if (looksLikeRequest(msg)) {
      // The events server never sends a request back unanswered: this is a raw
      // server relaying another client's (or our own) request verbatim.
      enterRawMode();
      return;
    }
    handleEvent(msg);
  }

  function looksLikeRequest(msg) {
    return REQUEST_EVENTS.has(msg.event) && !('code' in msg) && !('ts' in msg) && !('from' in msg);
  }

  function enterRawMode() {
    if (state.rawMode) return;
    state.rawMode = true;
    document.body.classList.add('raw-mode');
    setStatus('online', `online (raw protocol) as ${state.me}`);
    showNotice('The server runs the raw protocol: messages go to everyone as plain text.', 'info');
    renderLog();
  }

  function rawLine(text) {
    enterRawMode();
    appendEntry(state.current, { kind: 'raw', text, ts: Date.now() });
  }

  function handleEvent(msg) {
    const request = msg.id != null ? state.pending.get(msg.id) : undefined;
    if (msg.id != null) state.pending.delete(msg.id);

    if (typeof msg.code === 'number' && msg.code !== 0) {
      onError(msg, request);
      return;
    }
    switch (msg.event) {
      case 'join': onJoined(msg.room ?? request?.room); break;
      case 'quit': forgetRoom(msg.room ?? request?.room); break;
      case 'online': onOnline(msg); break;
      case 'presence': onPresence(msg); break;
      case 'message': onMessage(msg); break;
      case 'direct': if ('code' in msg) onDirectSent(request); else onDirect(msg); break;
      case 'ping': break;
      default: break; // unknown server events are ignored, not fatal
    }
  }

  function onError(msg, request) {
    const text = msg.error || `error ${msg.code}`;
    const what = msg.event === 'direct' && request?.to ? `message to ${request.to}`
      : request?.room ? `${msg.event} ${request.room}` : msg.event;
    showNotice(`${what}: ${text}`);
    if (msg.event === 'join' && request?.room && !state.rooms.get(request.room)?.joined) {
      forgetRoom(request.room); // refused (e.g. 403): do not keep retrying it on every reconnect
    } else if (msg.event === 'quit' && request?.room) {
      forgetRoom(request.room); // 404: we were not in it anyway
    }
  }

  function onJoined(name) {
    if (!name) return;
    const room = state.rooms.get(name) || addRoom(name);
    room.joined = true;
    renderRooms();
    send({ event: 'online', room: name });
    if (state.current === name) renderOnline();
  }

  function userId(u) {
    if (typeof u === 'string') return u;
    if (u && typeof u === 'object') return String(u.user ?? u.id ?? u.name ?? JSON.stringify(u));
    return String(u);
  }

  function onOnline(msg) {
    const room = msg.room != null ? state.rooms.get(msg.room) : null;
    if (!room) return;
    const users = Array.isArray(msg.data?.users) ? msg.data.users.map(userId) : [];
    room.users = new Set(users);
    if (state.current === msg.room) renderOnline();
  }

  function onPresence(msg) {
    const room = state.rooms.get(msg.room);
    const user = msg.data?.user != null ? userId(msg.data.user) : null;
    if (!room || !user) return;
    if (msg.data.state === 'join') {
      if (room.users.has(user)) return;
      room.users.add(user);
      appendEntry(msg.room, { kind: 'system', text: `${user} joined`, ts: Date.now() });
    } else if (msg.data.state === 'leave') {
      if (!room.users.delete(user)) return;
      appendEntry(msg.room, { kind: 'system', text: `${user} left`, ts: Date.now() });
    }
    if (state.current === msg.room) renderOnline();
  }

  function onMessage(msg) {
    const entry = { kind: 'message', from: msg.from ?? null, text: renderData(msg.data), ts: msg.ts };
    if (msg.room == null) {
      appendEntry(state.current, { ...entry, kind: 'broadcast' });
    } else if (state.rooms.has(msg.room)) {
      appendEntry(msg.room, entry);
    }
  }

  function onDirect(msg) {
    appendEntry(state.current, { kind: 'direct', from: msg.from ?? null, to: state.me, text: renderData(msg.data), ts: msg.ts });
  }

  /** The server accepted our direct message (the recipient is online): show it in our log. */
  function onDirectSent(request) {
    if (!request || request.event !== 'direct') return;
    appendEntry(state.current, { kind: 'direct', from: state.me, to: request.to, text: renderData(request.data), ts: Date.now() });
  }

  /** `data` may be any JSON: `{text}` from this page, a plain string from the HTTP API, or anything else. */
  function renderData(data) {
    if (data && typeof data === 'object' && 'text' in data) return String(data.text);
    if (typeof data === 'string') return data;
    return JSON.stringify(data);
  }

  // ---------------------------------------------------------------- rooms

  function addRoom(name) {
    let room = state.rooms.get(name);
    if (!room) {
      room = { joined: false, users: new Set(), log: [], unread: 0 };
      state.rooms.set(name, room);
      renderRooms();
    }
    return room;
  }

  function joinRoom(name) {
    name = name.trim();
    if (!name) return;
    const known = state.rooms.get(name);
    addRoom(name);
    if (!known || !known.joined) send({ event: 'join', room: name });
    switchRoom(name);
  }

  function leaveRoom(name) {
    if (!state.rooms.has(name)) return;
    // Offline there is nothing to tell the server: just stop rejoining it.
    if (state.rawMode || !send({ event: 'quit', room: name })) forgetRoom(name);
  }

  function forgetRoom(name) {
    if (!name || !state.rooms.delete(name)) return;
    if (state.current === name) switchRoom(state.rooms.keys().next().value ?? null);
    else renderRooms();
  }

  function switchRoom(name) {
    state.current = name ?? null;
    const room = name != null ? state.rooms.get(name) : null;
    if (room) room.unread = 0;
    renderRooms();
    renderOnline();
    renderLog();
  }

  // ---------------------------------------------------------------- log

  function appendEntry(roomName, entry) {
    const room = roomName != null ? state.rooms.get(roomName) : null;
    const log = room ? room.log : state.looseLog;
    log.push(entry);
    if (log.length > HISTORY_PER_ROOM) log.splice(0, log.length - HISTORY_PER_ROOM);
    if ((roomName ?? null) === state.current) {
      const stick = el.log.scrollHeight - el.log.scrollTop - el.log.clientHeight < 40;
      el.log.append(entryNode(entry));
      while (el.log.childElementCount > HISTORY_PER_ROOM) el.log.firstElementChild.remove();
      if (stick || entry.from === state.me) el.log.scrollTop = el.log.scrollHeight;
    } else if (room && entry.kind !== 'system') {
      room.unread += 1;
      renderRooms();
    }
  }

  function entryNode(entry) {
    const li = document.createElement('li');
    li.className = `entry entry-${entry.kind}`;
    li.dataset.kind = entry.kind;
    li.dataset.from = entry.from ?? '';
    if (entry.from != null && entry.from === state.me && entry.kind !== 'direct') li.classList.add('mine');

    const time = document.createElement('time');
    const when = new Date(typeof entry.ts === 'number' ? entry.ts : Date.now());
    time.dateTime = when.toISOString();
    time.textContent = when.toLocaleTimeString([], { hour: '2-digit', minute: '2-digit' });
    li.append(time);

    const label = {
      message: entry.from ?? 'server',
      broadcast: `${entry.from ?? 'server'} → everyone`,
      direct: `${entry.from ?? 'server'} → ${entry.to === state.me ? 'you' : entry.to}`,
      raw: null,
      system: null,
    }[entry.kind];
    if (label) {
      const from = document.createElement('span');
      from.className = 'from';
      from.textContent = label;
      li.append(from);
    }
    if (entry.kind === 'broadcast' || entry.kind === 'direct') {
      const tag = document.createElement('span');
      tag.className = 'tag';
      tag.textContent = entry.kind === 'broadcast' ? 'broadcast' : 'direct';
      li.append(tag);
    }
    const text = document.createElement('span');
    text.className = 'text';
    text.textContent = entry.text;
    li.append(text);
    return li;
  }

  function renderLog() {
    const room = state.current != null ? state.rooms.get(state.current) : null;
    if (state.rawMode) {
      el.roomTitle.textContent = 'Everyone (raw protocol)';
      el.message.placeholder = 'Message everyone (plain text)';
    } else {
      el.roomTitle.textContent = room ? `# ${state.current}` : 'No room';
      el.message.placeholder = room
        ? `Message #${state.current} — /msg user text · /all text · /join room · /leave`
        : 'Message everyone — /join room to enter a room';
    }
    el.log.replaceChildren(...(room ? room.log : state.looseLog).map(entryNode));
    el.log.scrollTop = el.log.scrollHeight;
  }

  // ---------------------------------------------------------------- sidebar

  function renderRooms() {
    const items = [];
    for (const [name, room] of state.rooms) {
      const li = document.createElement('li');
      li.dataset.room = name;
      li.dataset.joined = String(room.joined);
      li.className = 'room' + (name === state.current ? ' current' : '') + (room.joined ? '' : ' pending');

      const open = document.createElement('button');
      open.type = 'button';
      open.className = 'room-open';
      open.textContent = '# ' + name;
      if (name === state.current) open.setAttribute('aria-current', 'true');
      if (!room.joined) open.title = 'joining…';
      open.addEventListener('click', () => switchRoom(name));
      li.append(open);

      if (room.unread > 0) {
        const badge = document.createElement('span');
        badge.className = 'badge';
        badge.textContent = String(room.unread);
        badge.setAttribute('aria-label', `${room.unread} unread`);
        li.append(badge);
      }

      const leave = document.createElement('button');
      leave.type = 'button';
      leave.className = 'room-leave';
      leave.textContent = '×';
      leave.dataset.testid = 'leave-' + name;
      leave.setAttribute('aria-label', `Leave ${name}`);
      leave.title = `Leave ${name}`;
      leave.addEventListener('click', () => leaveRoom(name));
      li.append(leave);
      items.push(li);
    }
    el.rooms.replaceChildren(...items);
  }

  function renderOnline() {
    const room = state.current != null ? state.rooms.get(state.current) : null;
    const users = room ? [...room.users].sort((a, b) => a.localeCompare(b)) : [];
    el.onlineCount.textContent = room && room.joined ? String(users.length) : '';
    el.online.replaceChildren(...users.map((user) => {
      const li = document.createElement('li');
      li.dataset.user = user;
      const button = document.createElement('button');
      button.type = 'button';
      button.className = 'user';
      button.textContent = user;
      if (user === state.me) {
        li.classList.add('me');
        const you = document.createElement('span');
        you.className = 'you';
        you.textContent = ' (you)';
        button.append(you);
      }
      button.setAttribute('aria-label', `Send a direct message to ${user}`);
      button.addEventListener('click', () => {
        el.message.value = `/msg ${user} `;
        el.message.focus();
      });
      li.append(button);
      return li;
    }));
  }

  // ---------------------------------------------------------------- status line

  function setStatus(kind, text) {
    el.status.dataset.state = kind;
    el.status.textContent = text;
  }

  function showNotice(text, tone = 'error') {
    el.notice.dataset.tone = tone;
    el.notice.textContent = text;
    clearTimeout(state.noticeTimer);
    state.noticeTimer = setTimeout(() => { el.notice.textContent = ''; }, NOTICE_MS);
  }

  // ---------------------------------------------------------------- user input

  function submitMessage(input) {
    const line = input.trim();
    if (!line) return true;
    if (state.rawMode) {
      if (!state.ws || state.ws.readyState !== WebSocket.OPEN) return offline();
      state.ws.send(line);
      return true;
    }

    const command = /^\/(\w+)\s*(.*)$/s.exec(line);
    if (command) {
      const [, name, rest] = command;
      switch (name.toLowerCase()) {
        case 'msg': case 'dm': case 'w': {
          const m = /^(\S+)\s+(.+)$/s.exec(rest);
          if (!m) { showNotice('usage: /msg user text'); return false; }
          const [, to, text] = m;
          // Shown once the server acknowledges it (an offline recipient gets a 404 notice instead).
          return send({ event: 'direct', to, data: { text } }) || offline();
        }
        case 'all': case 'broadcast':
          if (!rest) { showNotice('usage: /all text'); return false; }
          return send({ event: 'message', data: { text: rest } }) || offline();
        case 'join':
          if (!rest) { showNotice('usage: /join room'); return false; }
          joinRoom(rest);
          return true;
        case 'leave': case 'quit': case 'part':
          leaveRoom(rest || state.current);
          return true;
        case 'help':
          showNotice('/msg user text · /all text · /join room · /leave [room]', 'info');
          return true;
        default:
          break; // not a command we know: send the text as it is
      }
    }
    if (state.current == null) {
      showNotice('join a room first (or /all text to message everyone)');
      return false;
    }
    return send({ event: 'message', room: state.current, data: { text: line } }) || offline();
  }

  function offline() {
    showNotice('not connected — the message was not sent');
    return false;
  }

  el.composer.addEventListener('submit', (ev) => {
    ev.preventDefault();
    if (submitMessage(el.message.value)) el.message.value = '';
    el.message.focus();
  });

  el.joinForm.addEventListener('submit', (ev) => {
    ev.preventDefault();
    joinRoom(el.roomInput.value);
    el.roomInput.value = '';
  });

  el.identity.addEventListener('submit', (ev) => {
    ev.preventDefault();
    const name = el.name.value.trim();
    if (!name) return;
    if (!token) {
      state.me = name;
      rememberName(name);
    }
    state.attempt = 0;
    connect();
  });

  window.addEventListener('online', () => {
    if (!state.ws) { state.attempt = 0; connect(); }
  });
  window.addEventListener('offline', () => {
    if (!state.ws) setStatus('offline', 'offline — waiting for the network');
  });

  // ---------------------------------------------------------------- start

  const claims = token ? decodeJwtPayload(token) : null;
  if (token) {
    state.me = String(claims?.sub ?? 'token user');
    el.name.value = claims?.name ? `${claims.name} (${state.me})` : state.me;
    el.name.disabled = true;
    el.name.title = 'Signed in with a token';
  } else {
    state.me = initialName();
    el.name.value = state.me;
  }
  renderRooms();
  renderOnline();
  renderLog();
  connect();
})();
