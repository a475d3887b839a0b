// wshub chat page: plain JS, no build step, on top of wshub.js (which owns the socket:
// heartbeats, reconnects, rejoins, recovery of missed room messages).
//
// Speaks the `events` protocol (SPEC §5) and falls back to a plain-text chat when the server
// runs `--protocol raw`. All text from the wire is rendered with textContent; nothing from the
// wire ever reaches innerHTML.

import { connect } from './wshub.js';

const HISTORY_PER_ROOM = 500;
const NOTICE_MS = 8_000;
const COUNTDOWN_TICK_MS = 250;
const DEFAULT_ROOM = 'lobby';
const NAME_KEY = 'wshub.name';

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
  rawMode: false,
  countdownTimer: null,
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

// ---------------------------------------------------------------- the connection

// The token never goes into the URL (proxy logs): wshub.js offers it as a subprotocol.
const hub = connect(token ? { url: wsPath, token } : { url: wsPath, user: state.me });

hub.on('state', ({ state: now, attempt, reason, delay }) => {
  clearInterval(state.countdownTimer);
  if (now !== 'open') markRoomsStale();
  if (reason) showNotice(reason);
  switch (now) {
    case 'connecting':
      setStatus('connecting', attempt ? `connecting (attempt ${attempt + 1})…` : 'connecting…');
      break;
    case 'open':
      setStatus('online', `online as ${state.me}`);
      if (!state.current) switchRoom(state.rooms.keys().next().value ?? null);
      break;
    case 'reconnecting': {
      const due = Date.now() + delay;
      const tick = () => {
        const secs = Math.max(0, Math.ceil((due - Date.now()) / 1000));
        setStatus('reconnecting', `reconnecting in ${secs}s`);
      };
      tick();
      state.countdownTimer = setInterval(tick, COUNTDOWN_TICK_MS);
      break;
    }
    case 'offline':
      setStatus('offline', 'offline — waiting for the network');
      break;
    default:
      setStatus('offline', 'offline');
  }
});

hub.on('protocol', (protocol) => {
  state.rawMode = protocol === 'raw';
  document.body.classList.toggle('raw-mode', state.rawMode);
  if (state.rawMode) {
    setStatus('online', `online (raw protocol) as ${state.me}`);
    showNotice('The server runs the raw protocol: messages go to everyone as plain text.', 'info');
  }
  renderLog();
});

hub.on('raw', ({ data }) => appendEntry(state.current, { kind: 'raw', text: data, ts: Date.now() }));
hub.on('join', ({ room }) => onJoined(room));
hub.on('gap', ({ room }) => {
  appendEntry(room, { kind: 'gap', text: 'some messages may be missing here (the server could not replay them)', ts: Date.now() });
});
hub.on('message', onMessage);
hub.on('direct', onDirect);
hub.on('presence', onPresence);
hub.on('error', (err) => {
  showNotice(describeError(err));
  if (err.event === 'join' && err.request?.room) forgetRoom(err.request.room); // refused on rejoin
});

/** Room memberships and online lists die with a socket: stale until the next one rejoins. */
function markRoomsStale() {
  for (const room of state.rooms.values()) {
    room.joined = false;
    room.users.clear();
  }
  renderRooms();
  renderOnline();
}

function describeError(err) {
  const request = err.request;
  const what = err.event === 'direct' && request?.to ? `message to ${request.to}`
    : request?.room ? `${err.event} ${request.room}` : err.event;
  return `${what}: ${err.message}`;
}

/** Reports a failed request, unless it failed only because the socket went (it is retried). */
function reportRefusal(err) {
  if (typeof err.code === 'number') showNotice(describeError(err));
}

// ---------------------------------------------------------------- incoming events

function onJoined(name) {
  const room = state.rooms.get(name) || addRoom(name);
  room.joined = true;
  renderRooms();
  hub.online(name).then(onOnline, reportRefusal);
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
  // wshub.js sends the join now or once connected, and again after every reconnect.
  if (!known || !known.joined) {
    hub.join(name).catch((err) => {
      if (typeof err.code !== 'number') return; // left, or closed: nothing to report
      showNotice(describeError(err));
      forgetRoom(name); // refused (e.g. 403): wshub.js does not retry it either
    });
  }
  switchRoom(name);
}

function leaveRoom(name) {
  if (!state.rooms.has(name)) return;
  // Offline there is nothing to tell the server: wshub.js just stops rejoining it.
  hub.quit(name).then(() => forgetRoom(name), (err) => {
    if (err.code !== 404) reportRefusal(err); // 404: we were not in it anyway
    forgetRoom(name);
  });
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
  } else if (room && entry.kind !== 'system' && entry.kind !== 'gap') {
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
  if (entry.kind === 'gap') li.classList.add('gap');

  const time = document.createElement('time');
  const when = new Date(typeof entry.ts === 'number' ? entry.ts : Date.now());
  time.dateTime = when.toISOString();
  time.textContent = when.toLocaleTimeString([], { hour: '2-digit', minute: '2-digit' });
  li.append(time);

  const label = {
    message: entry.from ?? 'server',
    broadcast: `${entry.from ?? 'server'} → everyone`,
    direct: `${entry.from ?? 'server'} → ${entry.to === state.me ? 'you' : entry.to}`,
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
  if (state.rawMode) return hub.sendRaw(line) || offline();

  const command = /^\/(\w+)\s*(.*)$/s.exec(line);
  if (command) {
    const [, name, rest] = command;
    switch (name.toLowerCase()) {
      case 'msg': case 'dm': case 'w': {
        const m = /^(\S+)\s+(.+)$/s.exec(rest);
        if (!m) { showNotice('usage: /msg user text'); return false; }
        const [, to, text] = m;
        if (hub.state !== 'open') return offline();
        // Shown once the server accepts it (an offline recipient gets a 404 notice instead).
        hub.direct(to, { text }).then(() => {
          appendEntry(state.current, { kind: 'direct', from: state.me, to, text, ts: Date.now() });
        }, reportRefusal);
        return true;
      }
      case 'all': case 'broadcast':
        if (!rest) { showNotice('usage: /all text'); return false; }
        return hub.send(null, { text: rest }) || offline();
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
  return hub.send(state.current, { text: line }) || offline();
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
  if (token) {
    hub.reconnect();
    return;
  }
  state.me = name;
  rememberName(name);
  hub.reconnect({ user: name });
});

// ---------------------------------------------------------------- start

renderRooms();
renderOnline();
joinRoom(DEFAULT_ROOM);
