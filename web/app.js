// The browser client: pre-join screen, the call (grid and speaker views, screen share, active
// speaker, connection quality), chat and people, reconnecting by itself. Plain ES modules, no
// build step. The wire protocol is docs/protocol.md.

import { Signaling, signalingUrl } from './signaling.js';
import { computeLayout } from './layout.js';
import { MAX_CHAT_BYTES, utf8Length, renderText } from './chat.js';
import { getLocalMedia, getTrack, listDevices, canPickSpeaker, LevelMeter, qualityOf, readInbound } from './media.js';

const $ = (id) => document.getElementById(id);

/** Screen-share tracks are published under this track id prefix, so others can tell them apart. */
const SCREEN_PREFIX = 'screen-';
const RECONNECT_DELAYS = [300, 700, 1500, 2500, 4000];
const SPEAKING_LEVEL = 0.04;
const SPEAKING_HOLD_MS = 1200;
const STALL_MS = 2500;

const prefs = loadPrefs();

const state = {
  phase: 'lobby', // lobby | joining | connected | reconnecting | left
  room: null,
  name: null,
  token: null,
  me: null,
  session: null,
  // The current session's objects, mirrored here for tests and debugging.
  signaling: null,
  subscriber: null,
  publisher: null,
  chat: null,
  iceServers: [],
  localStream: null,
  mediaReady: null,
  screenTrack: null,
  micOn: prefs.micOn !== false,
  camOn: prefs.camOn !== false,
  speakerId: prefs.speakerId || '',
  // participant id -> person (see addPerson)
  people: new Map(),
  view: 'grid',
  pinned: null,
  activeSpeaker: null,
  localSpeaking: false,
  unread: 0,
  chatFollow: true,
  panel: null, // phone drawer: 'chat' | 'people' | null
  sidebarOpen: true,
  audioBlocked: false,
  attempt: 0,
  left: false,
  preview: null,
};

const meter = new LevelMeter();
let sessionSeq = 0;

// ---- Small helpers ----

function loadPrefs() {
  try {
    return JSON.parse(localStorage.getItem('switchboard.prefs') || '{}') || {};
  } catch {
    return {};
  }
}

function savePrefs(patch) {
  Object.assign(prefs, patch);
  try {
    localStorage.setItem('switchboard.prefs', JSON.stringify(prefs));
  } catch {
    // private mode: preferences are not kept
  }
}

function setStatus(text, bad = false) {
  const el = $('status');
  el.textContent = text;
  el.classList.toggle('bad', bad);
}

let toastTimer = null;
function toast(text, { info = false } = {}) {
  const el = $('toast');
  el.textContent = text;
  el.classList.toggle('info', info);
  el.hidden = false;
  clearTimeout(toastTimer);
  toastTimer = setTimeout(() => { el.hidden = true; }, 6000);
}

/** "Zoë (Firefox)" → "ZF": the first letter or digit of the first two words that have one. */
function initials(name) {
  const words = (name || '').split(/\s+/).filter(Boolean);
  const letters = words.map((w) => w.match(/[\p{L}\p{N}]/u)).filter(Boolean).map((m) => m[0]);
  if (letters.length) return letters.slice(0, 2).join('').toUpperCase();
  return words.length ? [...words[0]][0] : '?';
}

function svgIcon(name, extraClass = '') {
  const ns = 'http://www.w3.org/2000/svg';
  const svg = document.createElementNS(ns, 'svg');
  svg.setAttribute('class', `icon ${extraClass}`.trim());
  svg.setAttribute('aria-hidden', 'true');
  const use = document.createElementNS(ns, 'use');
  use.setAttribute('href', `#i-${name}`);
  svg.append(use);
  return svg;
}

function badge(text, kind) {
  const b = document.createElement('span');
  b.className = `badge ${kind}`;
  b.textContent = text;
  return b;
}

function isPhone() {
  return window.matchMedia('(max-width: 720px)').matches;
}

function inviteLink() {
  const url = new URL(window.location.href);
  url.search = '';
  url.hash = '';
  if (state.room || $('room-input').value.trim()) url.searchParams.set('room', state.room || $('room-input').value.trim());
  if (state.token) url.searchParams.set('token', state.token);
  return url.href;
}

async function copyInvite(button) {
  const link = inviteLink();
  let ok = false;
  try {
    await navigator.clipboard.writeText(link);
    ok = true;
  } catch {
    ok = false;
  }
  if (ok) {
    toast('Invite link copied. Anyone with it can join this room.', { info: true });
  } else {
    // No clipboard access: show the link so it can be copied by hand.
    window.prompt('Copy this invite link', link);
  }
  if (button) {
    button.dataset.copied = ok ? 'true' : 'false';
  }
  return link;
}

// ---- Tiles ----

function makeTile({ key, name, remote, screen = false, local = false }) {
  const tile = document.createElement('figure');
  tile.className = `tile${remote ? ' remote' : ''}${screen ? ' screen' : ''}${local ? ' local' : ''} video-off`;
  tile.dataset.key = key;
  const video = document.createElement('video');
  video.autoplay = true;
  video.playsInline = true;
  video.muted = true; // sound plays through the participant's <audio> element
  const placeholder = document.createElement('div');
  placeholder.className = 'placeholder';
  const avatar = document.createElement('span');
  avatar.className = 'avatar';
  avatar.textContent = screen ? '▣' : initials(name);
  avatar.setAttribute('aria-hidden', 'true');
  placeholder.append(avatar);
  const caption = document.createElement('figcaption');
  const nameEl = document.createElement('span');
  nameEl.className = 'name';
  nameEl.textContent = name;
  const badges = document.createElement('span');
  badges.className = 'badges';
  caption.append(nameEl, badges);
  const quality = document.createElement('div');
  quality.className = 'quality unknown';
  quality.setAttribute('role', 'img');
  quality.append(document.createElement('i'), document.createElement('i'), document.createElement('i'));
  const problem = document.createElement('div');
  problem.className = 'problem-mark';
  problem.textContent = 'Connection problem';
  const actions = document.createElement('div');
  actions.className = 'tile-actions';
  const label = screen ? `${name}` : name;
  const pin = document.createElement('button');
  pin.type = 'button';
  pin.className = 'tile-btn pin-btn';
  pin.setAttribute('aria-pressed', 'false');
  pin.setAttribute('aria-label', `Pin ${label}`);
  pin.append(svgIcon('pin'));
  const fs = document.createElement('button');
  fs.type = 'button';
  fs.className = 'tile-btn fs-btn';
  fs.setAttribute('aria-label', `Show ${label} full screen`);
  fs.append(svgIcon('fullscreen'));
  actions.append(pin, fs);
  tile.append(video, placeholder, caption, quality, problem, actions);
  wireTileActions(tile, key);
  $('stage').append(tile);
  return { tile, video, nameEl, badges, quality, avatar };
}

function wireTileActions(tile, key) {
  tile.querySelector('.pin-btn').addEventListener('click', () => togglePin(key));
  tile.querySelector('.fs-btn').addEventListener('click', () => {
    if (document.fullscreenElement === tile) document.exitFullscreen().catch(() => {});
    else if (tile.requestFullscreen) tile.requestFullscreen().catch((err) => toast(`Full screen refused: ${err.message}`));
  });
  tile.addEventListener('dblclick', () => togglePin(key));
}

function addPerson(info, tracks = []) {
  if (state.people.has(info.id)) return state.people.get(info.id);
  const parts = makeTile({ key: info.id, name: info.name, remote: true });
  parts.tile.dataset.participantId = info.id;
  const audio = document.createElement('audio');
  audio.autoplay = true;
  audio.dataset.participantId = info.id;
  $('audio-sinks').append(audio);
  applySink(audio);
  const person = {
    id: info.id,
    name: info.name,
    tracks: new Map(), // track id -> { kind, muted }
    cam: null, // { track, trackId, mid, since }
    screen: null, // { track, trackId, mid, since, tile, video }
    audioTrack: null,
    audio,
    ...parts,
    level: 0,
    lastLoud: 0,
    joinedAt: Date.now(),
    stats: new Map(), // mid -> last sample
    problem: false,
  };
  for (const t of tracks) person.tracks.set(t.id, { kind: t.kind, muted: t.muted });
  state.people.set(info.id, person);
  renderPerson(info.id);
  renderPeople();
  scheduleLayout();
  return person;
}

function removePerson(id) {
  const person = state.people.get(id);
  if (!person) return;
  person.video.srcObject = null;
  person.audio.srcObject = null;
  person.audio.remove();
  person.tile.remove();
  if (person.screen && person.screen.tile) person.screen.tile.remove();
  meter.remove(id);
  state.people.delete(id);
  if (state.activeSpeaker === id) state.activeSpeaker = null;
  if (state.pinned === id || state.pinned === `${id}:screen`) state.pinned = null;
  renderPeople();
  updateAutoView();
  scheduleLayout();
}

function clearPeople() {
  for (const id of [...state.people.keys()]) removePerson(id);
}

function trackInfo(person, kind, screen = false) {
  for (const [id, t] of person.tracks) {
    if (t.kind === kind && id.startsWith(SCREEN_PREFIX) === screen) return { id, ...t };
  }
  return null;
}

function renderPerson(id) {
  const person = state.people.get(id);
  if (!person) return;
  const video = trackInfo(person, 'video');
  const audio = trackInfo(person, 'audio');
  const hasLiveVideo = Boolean(person.cam && video && !video.muted);
  person.tile.classList.toggle('video-off', !hasLiveVideo);
  person.badges.replaceChildren();
  if (!audio || audio.muted) person.badges.append(badge(audio ? 'mic muted' : 'no mic', 'mic'));
  if (!video || video.muted) person.badges.append(badge(video ? 'camera off' : 'no camera', 'cam'));
  if (person.screen && person.screen.tile) {
    person.screen.tile.classList.toggle('video-off', !person.screen.track);
  }
  renderPeople();
}

function setCameraTrack(person, entry) {
  person.cam = entry;
  person.video.srcObject = entry ? new MediaStream([entry.track]) : null;
  if (entry) playVideo(person.video);
  renderPerson(person.id);
}

function setScreenTrack(person, entry) {
  if (person.screen && person.screen.tile) {
    person.screen.video.srcObject = null;
    person.screen.tile.remove();
  }
  person.screen = null;
  if (entry) {
    const parts = makeTile({ key: `${person.id}:screen`, name: `${person.name} (screen)`, remote: false, screen: true });
    parts.tile.dataset.participantId = person.id;
    parts.tile.classList.remove('video-off');
    parts.video.srcObject = new MediaStream([entry.track]);
    playVideo(parts.video);
    person.screen = { ...entry, tile: parts.tile, video: parts.video, quality: parts.quality };
  } else if (state.pinned === `${person.id}:screen`) {
    state.pinned = null;
  }
  updateAutoView();
  scheduleLayout();
}

function setAudioTrack(person, entry) {
  person.audioTrack = entry;
  person.audio.srcObject = entry ? new MediaStream([entry.track]) : null;
  if (entry) {
    meter.set(person.id, entry.track);
    playAudio(person.audio);
  } else {
    meter.remove(person.id);
  }
  renderPerson(person.id);
}

function playVideo(video) {
  const p = video.play();
  if (p) p.catch(() => {});
}

function playAudio(audio) {
  const p = audio.play();
  if (!p) return;
  p.catch((err) => {
    if (!err || err.name !== 'NotAllowedError') return;
    // Firefox lets a page play sound once it captures: a track that arrives while the camera
    // and microphone are still being opened is refused. Try again once they are; only a
    // second refusal needs the user's click.
    const opening = state.mediaReady;
    if (!opening) {
      showAudioPrompt();
      return;
    }
    opening
      .then(() => (audio.srcObject ? audio.play() : null))
      .catch((again) => {
        if (again && again.name === 'NotAllowedError') showAudioPrompt();
      });
  });
}

function showAudioPrompt() {
  if (state.audioBlocked) return;
  state.audioBlocked = true;
  $('audio-prompt').hidden = false;
  console.info('switchboard: the browser blocked audio playback; showing the enable-audio prompt');
}

function enableAudio() {
  state.audioBlocked = false;
  $('audio-prompt').hidden = true;
  meter.resume();
  for (const el of document.querySelectorAll('#audio-sinks audio, #stage video')) {
    if (el.srcObject) {
      const p = el.play();
      if (p) p.catch((err) => { if (el.tagName === 'AUDIO' && err.name === 'NotAllowedError') showAudioPrompt(); });
    }
  }
}

function applySink(el) {
  if (!canPickSpeaker || !state.speakerId || !el.setSinkId) return;
  el.setSinkId(state.speakerId).catch(() => {});
}

// ---- People list ----

function renderPeople() {
  const list = $('people');
  const items = [];
  const me = document.createElement('li');
  me.dataset.participantId = state.me ? state.me.id : '';
  me.classList.toggle('speaking', state.localSpeaking);
  items.push(personItem(me, state.me ? state.me.name : state.name || '', true, {
    micMuted: !localTrack('audio') ? null : !state.micOn,
    camOff: !localTrack('video') ? null : !state.camOn,
  }));
  for (const [id, person] of state.people) {
    const li = document.createElement('li');
    li.dataset.participantId = id;
    li.classList.toggle('speaking', state.activeSpeaker === id && isSpeaking(person));
    const audio = trackInfo(person, 'audio');
    const video = trackInfo(person, 'video');
    items.push(personItem(li, person.name, false, {
      micMuted: audio ? audio.muted : null,
      camOff: video ? video.muted : null,
      screen: Boolean(person.screen),
    }));
  }
  list.replaceChildren(...items);
  const count = String(state.people.size + 1);
  $('people-count').textContent = `(${count})`;
  $('people-btn').title = `People: ${count} in the call (P)`;
}

function personItem(li, name, you, { micMuted, camOff, screen = false }) {
  const avatar = document.createElement('span');
  avatar.className = 'mini-avatar';
  avatar.setAttribute('aria-hidden', 'true');
  avatar.textContent = initials(name);
  const label = document.createElement('span');
  label.className = 'pname';
  label.textContent = name;
  if (you) {
    const y = document.createElement('span');
    y.className = 'you';
    y.textContent = ' (you)';
    label.append(y);
  }
  const st = document.createElement('span');
  st.className = 'state';
  const micIcon = svgIcon(micMuted === false ? 'mic' : 'mic-off', micMuted === false ? '' : 'off');
  micIcon.setAttribute('role', 'img');
  micIcon.removeAttribute('aria-hidden');
  micIcon.setAttribute('aria-label', micMuted === null ? 'no microphone' : micMuted ? 'microphone muted' : 'microphone on');
  const camIcon = svgIcon(camOff === false ? 'cam' : 'cam-off', camOff === false ? '' : 'off');
  camIcon.setAttribute('role', 'img');
  camIcon.removeAttribute('aria-hidden');
  camIcon.setAttribute('aria-label', camOff === null ? 'no camera' : camOff ? 'camera off' : 'camera on');
  st.append(micIcon, camIcon);
  if (screen) {
    const s = svgIcon('screen');
    s.setAttribute('role', 'img');
    s.removeAttribute('aria-hidden');
    s.setAttribute('aria-label', 'sharing the screen');
    st.append(s);
  }
  li.append(avatar, label, st);
  return li;
}

// ---- Layout ----

let layoutQueued = false;
function scheduleLayout() {
  if (layoutQueued) return;
  layoutQueued = true;
  // A timer, not requestAnimationFrame: a page in a background tab still lays out its tiles.
  setTimeout(() => {
    layoutQueued = false;
    layout();
  }, 0);
}

function tileElement(key) {
  if (key === 'local') return $('local-tile');
  if (key === 'local:screen') return localScreenTile ? localScreenTile.tile : null;
  if (key.endsWith(':screen')) {
    const person = state.people.get(key.slice(0, -7));
    return person && person.screen ? person.screen.tile : null;
  }
  const person = state.people.get(key);
  return person ? person.tile : null;
}

/** Tile keys in display order: screens first, then people in join order, recent speakers pulled forward. */
function tileKeys() {
  const keys = [];
  for (const [id, person] of state.people) if (person.screen) keys.push(`${id}:screen`);
  if (localScreenTile) keys.push('local:screen');
  keys.push('local');
  for (const id of remoteOrder()) keys.push(id);
  return keys;
}

// Remote people in display order: join order, except that someone who speaks while out of
// view is moved to the front.
let order = [];
function remoteOrder() {
  order = order.filter((id) => state.people.has(id));
  for (const id of state.people.keys()) if (!order.includes(id)) order.push(id);
  return order;
}

function bringIntoView(id) {
  const el = tileElement(id);
  if (el && !el.hidden) return;
  order = [id, ...order.filter((x) => x !== id)];
  scheduleLayout();
}

function spotlightKey(keys) {
  if (state.pinned && keys.includes(state.pinned)) return state.pinned;
  const screens = keys.filter((k) => k.endsWith(':screen') && k !== 'local:screen');
  if (screens.length) return screens[0];
  if (state.activeSpeaker && keys.includes(state.activeSpeaker)) return state.activeSpeaker;
  const remote = keys.find((k) => state.people.has(k));
  return remote || keys.find((k) => k === 'local:screen') || 'local';
}

function layout() {
  const stage = $('stage');
  const rect = stage.getBoundingClientRect();
  const keys = tileKeys();
  const spot = spotlightKey(keys);
  const phone = isPhone();
  const result = computeLayout({
    width: rect.width,
    height: rect.height,
    keys,
    view: state.view,
    spotlight: spot,
    gap: phone ? 6 : 8,
    minTileWidth: phone ? 96 : 140,
    phone,
  });
  const shown = new Set();
  for (const [key, r] of result.rects) {
    const el = tileElement(key);
    if (!el) continue;
    shown.add(el);
    el.hidden = false;
    el.style.width = `${r.w}px`;
    el.style.height = `${r.h}px`;
    el.style.transform = `translate(${r.x}px, ${r.y}px)`;
    el.classList.toggle('spot', result.view === 'speaker' && key === spot);
    el.classList.toggle('pinned', state.pinned === key);
    const pin = el.querySelector('.pin-btn');
    if (pin) pin.setAttribute('aria-pressed', String(state.pinned === key));
  }
  for (const key of keys) {
    const el = tileElement(key);
    if (el && !shown.has(el)) el.hidden = true;
  }
  const overflow = $('overflow-tile');
  if (result.overflow && result.overflow.rect) {
    const r = result.overflow.rect;
    overflow.hidden = false;
    overflow.textContent = `+${result.overflow.count} more`;
    overflow.setAttribute('aria-label', `${result.overflow.count} more people: show the people list`);
    overflow.style.width = `${r.w}px`;
    overflow.style.height = `${r.h}px`;
    overflow.style.transform = `translate(${r.x}px, ${r.y}px)`;
  } else {
    overflow.hidden = true;
  }
  document.body.classList.toggle('view-speaker', result.view === 'speaker');
  $('alone-hint').hidden = !(state.phase === 'connected' && state.people.size === 0);
  const layoutBtn = $('layout-btn');
  layoutBtn.setAttribute('aria-pressed', String(result.view === 'speaker'));
  layoutBtn.title = result.view === 'speaker' ? 'Back to the grid (L)' : 'Speaker view: the active speaker large (L)';
}

function setView(view) {
  state.view = view;
  autoSpeaker = false;
  scheduleLayout();
}

// A new remote screen share switches to speaker view with the share in the spotlight; when the
// last share ends the previous view comes back, unless the user picked a view meanwhile.
let autoSpeaker = false;
let viewBeforeShare = 'grid';
let sharesSeen = 0;
function updateAutoView() {
  const shares = [...state.people.values()].filter((p) => p.screen).length;
  if (shares > sharesSeen) {
    if (!autoSpeaker) viewBeforeShare = state.view;
    autoSpeaker = true;
    state.view = 'speaker';
  } else if (shares === 0 && autoSpeaker) {
    autoSpeaker = false;
    state.view = viewBeforeShare;
  }
  sharesSeen = shares;
}

function togglePin(key) {
  state.pinned = state.pinned === key ? null : key;
  if (state.pinned) state.view = 'speaker';
  scheduleLayout();
}

// ---- Local media ----

function localTrack(kind) {
  return state.localStream ? state.localStream.getTracks().find((t) => t.kind === kind) || null : null;
}

let localScreenTile = null;

function updateLocalControls() {
  const mic = localTrack('audio');
  const cam = localTrack('video');
  const connected = state.phase === 'connected';
  const micBtn = $('mic-btn');
  const camBtn = $('cam-btn');
  // Stable labels ("Mute", "Stop video") with aria-pressed for the state; the title says what a click does.
  for (const [btn, track, on, what, key] of [[micBtn, mic, state.micOn, 'microphone', 'M'], [camBtn, cam, state.camOn, 'camera', 'V']]) {
    btn.disabled = !track || !connected;
    btn.classList.toggle('muted', !track || !on);
    btn.setAttribute('aria-pressed', String(!track || !on));
    const action = !track ? `No ${what}` : what === 'microphone' ? (on ? 'Mute the microphone' : 'Unmute the microphone') : (on ? 'Turn the camera off' : 'Turn the camera on');
    btn.title = `${action} (${key})`;
  }
  const share = $('share-btn');
  share.disabled = !connected || !(navigator.mediaDevices && navigator.mediaDevices.getDisplayMedia);
  share.setAttribute('aria-pressed', String(Boolean(state.screenTrack)));
  share.title = state.screenTrack ? 'Stop sharing the screen (S)' : 'Share the screen (S)';
  $('local-tile').classList.toggle('video-off', !cam || !state.camOn);
  const badges = $('local-badges');
  badges.replaceChildren();
  if (!mic || !state.micOn) badges.append(badge(mic ? 'mic muted' : 'no mic', 'mic'));
  if (!cam || !state.camOn) badges.append(badge(cam ? 'camera off' : 'no camera', 'cam'));
  renderPeople();
}

function setLocalStream(stream) {
  state.localStream = stream;
  const mic = localTrack('audio');
  const cam = localTrack('video');
  if (mic) mic.enabled = state.micOn;
  if (cam) cam.enabled = state.camOn;
  $('local-video').srcObject = cam ? new MediaStream([cam]) : null;
  meter.set('local', mic);
  updateLocalControls();
}

function acquireMedia() {
  if (state.localStream) return Promise.resolve(state.localStream);
  const call = state.callId;
  return getLocalMedia({ micId: prefs.micId, cameraId: prefs.cameraId }).then(({ stream, error }) => {
    if (call !== state.callId || state.left) {
      // The call ended while the browser was asking: do not leave the camera on.
      if (stream) for (const t of stream.getTracks()) t.stop();
      return null;
    }
    if (!stream) {
      toast(`No camera or microphone (${error.message || error.name}); you can still watch and chat.`);
      updateLocalControls();
      return null;
    }
    setLocalStream(stream);
    return stream;
  });
}

function toggle(kind) {
  if (state.phase !== 'connected') return;
  const track = localTrack(kind);
  if (!track) return;
  if (kind === 'audio') state.micOn = !state.micOn;
  else state.camOn = !state.camOn;
  track.enabled = kind === 'audio' ? state.micOn : state.camOn;
  savePrefs({ micOn: state.micOn, camOn: state.camOn });
  sendMute(state.session, kind);
  updateLocalControls();
}

async function switchDevice(kind, deviceId) {
  const old = localTrack(kind);
  let track;
  try {
    track = await getTrack(kind, deviceId);
  } catch (err) {
    toast(`Cannot use that ${kind === 'audio' ? 'microphone' : 'camera'}: ${err.message || err.name}`);
    return;
  }
  track.enabled = kind === 'audio' ? state.micOn : state.camOn;
  if (!state.localStream) state.localStream = new MediaStream();
  if (old) {
    state.localStream.removeTrack(old);
    old.stop();
  }
  state.localStream.addTrack(track);
  savePrefs(kind === 'audio' ? { micId: deviceId } : { cameraId: deviceId });
  if (kind === 'video') $('local-video').srcObject = new MediaStream([track]);
  else meter.set('local', track);
  const session = state.session;
  const slot = session && session.pub && session.pub.slots.get(kind);
  if (slot) {
    await slot.transceiver.sender.replaceTrack(track);
  } else if (session && state.phase === 'connected') {
    // A device where there was none: a new track, a new publisher offer.
    await publish(session);
  }
  updateLocalControls();
}

// ---- Screen share ----

async function startShare() {
  if (state.screenTrack || state.phase !== 'connected') return;
  let stream;
  try {
    stream = await navigator.mediaDevices.getDisplayMedia({ video: { frameRate: { ideal: 15, max: 30 } }, audio: false });
  } catch (err) {
    if (err && err.name !== 'NotAllowedError') toast(`Screen share failed: ${err.message || err.name}`);
    return;
  }
  const track = stream.getVideoTracks()[0];
  if (!track) return;
  if ('contentHint' in track) track.contentHint = 'detail';
  state.screenTrack = track;
  track.addEventListener('ended', () => stopShare());
  const parts = makeTile({ key: 'local:screen', name: 'Your screen', remote: false, screen: true, local: true });
  parts.tile.classList.remove('video-off');
  parts.video.srcObject = new MediaStream([track]);
  playVideo(parts.video);
  localScreenTile = parts;
  updateLocalControls();
  scheduleLayout();
  await publish(state.session);
}

async function stopShare() {
  const track = state.screenTrack;
  if (!track) return;
  state.screenTrack = null;
  track.stop();
  if (localScreenTile) {
    localScreenTile.video.srcObject = null;
    localScreenTile.tile.remove();
    localScreenTile = null;
  }
  if (state.pinned === 'local:screen') state.pinned = null;
  updateLocalControls();
  scheduleLayout();
  const session = state.session;
  const slot = session && session.pub && session.pub.slots.get('screen');
  if (slot) {
    session.pub.slots.delete('screen');
    try {
      if (slot.transceiver.stop) slot.transceiver.stop();
      else session.pub.pc.removeTrack(slot.transceiver.sender);
    } catch {
      // already stopped
    }
    await negotiate(session);
  }
}

// ---- Sessions: one signaling socket and its two PCs; a reconnect is a new session ----

function current(session) {
  return session && session === state.session && !session.closed;
}

function mirror(session) {
  state.signaling = session ? session.signaling : null;
  state.subscriber = session ? session.subscriber : null;
  state.publisher = session ? session.pub && session.pub.pc : null;
  state.chat = session ? session.chat : null;
}

function startSession() {
  const session = {
    id: (sessionSeq += 1),
    signaling: new Signaling(signalingUrl(window.location)),
    subscriber: null,
    pub: null,
    chat: null,
    joined: false,
    closed: false,
    mids: new Map(), // subscriber mid -> { participantId, trackId }
    pendingCandidates: { subscriber: [], publisher: [] },
    muteRetries: 0,
    muteTimer: null,
    timers: [],
  };
  state.session = session;
  mirror(session);
  wireSignaling(session);
  session.signaling.connect().then(() => {
    if (!current(session)) return;
    const join = { type: 'join', room: state.room, name: state.name };
    if (state.token) join.token = state.token;
    session.signaling.send(join);
    // A server that accepts the socket but never answers is as good as down.
    session.timers.push(setTimeout(() => {
      if (current(session) && !session.joined) sessionFailed(session, 'the server did not answer the join');
    }, 10000));
  }).catch((err) => sessionFailed(session, err.message));
}

function closeSession(session, { leave = false } = {}) {
  if (!session || session.closed) return;
  session.closed = true;
  for (const t of session.timers) clearTimeout(t);
  clearTimeout(session.muteTimer);
  if (leave) session.signaling.send({ type: 'leave' });
  session.signaling.close();
  if (session.subscriber) session.subscriber.close();
  if (session.pub) session.pub.pc.close();
  if (session.chat) session.chat.onmessage = null;
}

/** The connection broke: say so, keep the local media, and try again with backoff. */
function sessionFailed(session, reason) {
  if (!current(session)) return;
  const wasJoined = session.joined;
  closeSession(session, { leave: true });
  if (state.left || state.phase === 'lobby') return;
  if (!wasJoined && state.phase === 'joining' && state.attempt === 0 && !state.everJoined) {
    // The very first attempt never got in: that is an error to show, not a reconnect.
    state.left = true;
    teardown();
    showLobby();
    setStatus('Offline', true);
    toast(reason || 'cannot reach the signaling server');
    return;
  }
  enterReconnecting(reason);
}

function enterReconnecting(reason) {
  state.phase = 'reconnecting';
  scheduleLayout();
  mirror(null);
  state.chat = null;
  const delay = RECONNECT_DELAYS[Math.min(state.attempt, RECONNECT_DELAYS.length - 1)] * (0.8 + Math.random() * 0.4);
  state.attempt += 1;
  setStatus('Reconnecting…', true);
  const banner = $('banner');
  banner.hidden = false;
  banner.textContent = `Reconnecting… (attempt ${state.attempt})`;
  $('stage').classList.add('stale');
  for (const person of state.people.values()) person.tile.classList.remove('speaking');
  updateCallControls();
  if (reason) console.info(`switchboard: reconnecting: ${reason}`);
  clearTimeout(state.reconnectTimer);
  state.reconnectTimer = setTimeout(() => {
    if (state.phase === 'reconnecting') startSession();
  }, delay);
}

function onJoined(session, m) {
  session.joined = true;
  const rejoin = state.everJoined;
  state.everJoined = true;
  state.phase = 'connected';
  state.me = m.participant;
  state.room = m.room;
  state.iceServers = m.ice_servers || [];
  document.title = `${m.room} · switchboard`;
  $('local-name').textContent = `${m.participant.name} (you)`;
  $('local-avatar').textContent = initials(m.participant.name);
  $('room-label').textContent = `# ${m.room}`;
  $('room-label').hidden = false;
  $('invite-btn').hidden = false;
  $('banner').hidden = true;
  $('stage').classList.remove('stale');
  // A rejoin starts from the server's view of the room: the old tiles go.
  clearPeople();
  for (const p of m.participants) addPerson(p, p.tracks);
  renderPeople();
  setStatus('Connected');
  scheduleLayout();
  appendChat({ system: true, text: rejoin ? `Reconnected to ${m.room}.` : `You joined ${m.room}.` });
  updateCallControls();
  (state.mediaReady || Promise.resolve()).then(() => {
    if (current(session)) return publish(session);
    return null;
  }).catch((err) => toast(`Publishing failed: ${err.message}`));
}

function wireSignaling(session) {
  const s = session.signaling;
  const on = (type, fn) => s.addEventListener(type, (e) => { if (current(session)) fn(e.detail); });
  on('joined', (m) => onJoined(session, m));
  on('offer', (m) => {
    if (m.pc === 'subscriber') onSubscriberOffer(session, m.sdp).catch((err) => toast(`Negotiation failed: ${err.message}`));
  });
  on('answer', (m) => {
    if (m.pc === 'publisher' && session.pub && session.pub.waiting) session.pub.waiting.resolve(m.sdp);
  });
  on('candidate', (m) => {
    if (m.candidate) addRemoteCandidate(session, m.pc, m.candidate);
  });
  on('participant_joined', (m) => {
    addPerson(m.participant);
    appendChat({ system: true, text: `${m.participant.name} joined.` });
  });
  on('participant_left', (m) => {
    const person = state.people.get(m.participant_id);
    if (person) appendChat({ system: true, text: `${person.name} left.` });
    removePerson(m.participant_id);
  });
  on('track_published', (m) => {
    const person = state.people.get(m.participant_id);
    if (!person) return;
    person.tracks.set(m.track.id, { kind: m.track.kind, muted: m.track.muted });
    renderPerson(m.participant_id);
  });
  on('track_unpublished', (m) => {
    const person = state.people.get(m.participant_id);
    if (!person) return;
    person.tracks.delete(m.track_id);
    dropRemoteTrack(person, m.track_id);
    renderPerson(m.participant_id);
  });
  on('track_muted', (m) => {
    const person = state.people.get(m.participant_id);
    if (!person) return;
    const track = person.tracks.get(m.track_id);
    if (track) track.muted = m.muted;
    renderPerson(m.participant_id);
  });
  on('error', (m) => {
    if (m.request_type === 'mute') {
      // The server may not know a track until its first packets: try again shortly.
      scheduleMuteRetry(session);
      return;
    }
    if (m.request_type === 'offer' && session.pub && session.pub.waiting) {
      session.pub.waiting.reject(new Error(`${m.message} (${m.code})`));
    }
    toast(`Server: ${m.message} (${m.code})`);
    if (!session.joined && ['invalid_room', 'invalid_name', 'room_full', 'unauthorized'].includes(m.code)) {
      state.left = true;
      closeSession(session);
      teardown();
      showLobby();
      setStatus('');
    }
  });
  on('close', (d) => {
    if (state.left) return;
    if (d.code === 4001) {
      state.left = true;
      toast('The server refused this room: wrong or missing token.');
      closeSession(session);
      teardown();
      showLobby();
      return;
    }
    sessionFailed(session, `the connection to the server closed${d.reason ? `: ${d.reason}` : ''}`);
  });
}

function newPeerConnection(session, kind) {
  const pc = new RTCPeerConnection({ iceServers: state.iceServers });
  pc.onicecandidate = (event) => {
    if (!current(session)) return;
    session.signaling.send({ type: 'candidate', pc: kind, candidate: event.candidate ? event.candidate.toJSON() : null });
  };
  let disconnectedTimer = null;
  pc.onconnectionstatechange = () => {
    if (!current(session)) return;
    const st = pc.connectionState;
    clearTimeout(disconnectedTimer);
    if (st === 'failed') {
      sessionFailed(session, `media connection (${kind}) failed`);
    } else if (st === 'disconnected') {
      // ICE may recover by itself; if it does not soon, start over.
      disconnectedTimer = setTimeout(() => {
        if (current(session) && pc.connectionState === 'disconnected') sessionFailed(session, `media connection (${kind}) lost`);
      }, 6000);
      session.timers.push(disconnectedTimer);
    } else if (st === 'connected' && kind === 'subscriber') {
      state.attempt = 0;
    }
  };
  return pc;
}

/**
 * A candidate from the server. One that arrives before its PC has the remote description
 * (the offer or answer is still being applied) waits for it instead of being dropped.
 */
function addRemoteCandidate(session, kind, candidate) {
  const pc = kind === 'subscriber' ? session.subscriber : session.pub && session.pub.pc;
  if (!pc || !pc.remoteDescription) {
    session.pendingCandidates[kind].push(candidate);
    return;
  }
  pc.addIceCandidate(candidate).catch(() => {});
}

function flushCandidates(session, kind) {
  const pc = kind === 'subscriber' ? session.subscriber : session.pub && session.pub.pc;
  const pending = session.pendingCandidates[kind];
  session.pendingCandidates[kind] = [];
  for (const candidate of pending) pc.addIceCandidate(candidate).catch(() => {});
}

// ---- Subscriber PC ----

/** mid -> msid "stream track" of every m-section in an SDP. */
function msidByMid(sdp) {
  const out = new Map();
  for (const section of sdp.split(/\r?\nm=/).slice(1)) {
    const mid = section.match(/\r?\na=mid:(\S+)/);
    const msid = section.match(/\r?\na=msid:(\S+) (\S+)/);
    if (mid && msid) out.set(mid[1], { streamId: msid[1], trackId: msid[2] });
  }
  return out;
}

function ensureSubscriber(session) {
  if (session.subscriber) return session.subscriber;
  const pc = newPeerConnection(session, 'subscriber');
  pc.ontrack = (event) => {
    if (!current(session)) return;
    const mid = event.transceiver && event.transceiver.mid;
    const ids = (mid && session.mids.get(mid)) || {
      streamId: event.streams[0] ? event.streams[0].id : null,
      trackId: event.track.id,
    };
    attachRemoteTrack(session, ids.streamId, ids.trackId, event.track, mid, event.streams[0]);
  };
  pc.ondatachannel = (event) => {
    if (event.channel.label === 'chat' && current(session)) setupChat(session, event.channel);
  };
  session.subscriber = pc;
  mirror(session);
  return pc;
}

function attachRemoteTrack(session, participantId, trackId, track, mid, stream) {
  const person = participantId && state.people.get(participantId);
  if (!person) return;
  const entry = { track, trackId, mid, since: Date.now() };
  const forget = () => {
    if (!current(session)) return;
    dropRemoteTrack(person, trackId, track);
  };
  track.addEventListener('ended', forget);
  if (stream) stream.addEventListener('removetrack', (e) => { if (e.track === track) forget(); });
  if (track.kind === 'audio') setAudioTrack(person, entry);
  else if (trackId.startsWith(SCREEN_PREFIX)) setScreenTrack(person, entry);
  else setCameraTrack(person, entry);
}

function dropRemoteTrack(person, trackId, track = null) {
  if (!state.people.has(person.id)) return;
  const matches = (e) => e && (e.trackId === trackId || (track && e.track === track));
  if (matches(person.audioTrack)) setAudioTrack(person, null);
  if (matches(person.cam)) setCameraTrack(person, null);
  if (matches(person.screen)) setScreenTrack(person, null);
  renderPerson(person.id);
}

async function onSubscriberOffer(session, sdp) {
  const pc = ensureSubscriber(session);
  for (const [mid, ids] of msidByMid(sdp)) session.mids.set(mid, ids);
  await pc.setRemoteDescription({ type: 'offer', sdp });
  flushCandidates(session, 'subscriber');
  const answer = await pc.createAnswer();
  await pc.setLocalDescription(answer);
  if (current(session)) session.signaling.send({ type: 'answer', pc: 'subscriber', sdp: pc.localDescription.sdp });
}

// ---- Publisher PC ----

/**
 * Publishes the local tracks on this session: a transceiver per track (microphone, camera,
 * screen), one offer for all that are new. Called after joining and whenever a track is added.
 */
async function publish(session) {
  if (!current(session)) return;
  const wanted = [];
  const mic = localTrack('audio');
  const cam = localTrack('video');
  if (mic) wanted.push(['audio', mic]);
  if (cam) wanted.push(['video', cam]);
  if (state.screenTrack) wanted.push(['screen', state.screenTrack]);
  if (!wanted.length) return;
  if (!session.pub) {
    session.pub = { pc: newPeerConnection(session, 'publisher'), slots: new Map(), chain: Promise.resolve(), waiting: null };
    mirror(session);
  }
  let added = false;
  for (const [slotName, track] of wanted) {
    const slot = session.pub.slots.get(slotName);
    if (slot) {
      if (slot.transceiver.sender.track !== track) await slot.transceiver.sender.replaceTrack(track);
      continue;
    }
    const stream = state.localStream || new MediaStream();
    const transceiver = session.pub.pc.addTransceiver(track, { direction: 'sendonly', streams: [stream] });
    session.pub.slots.set(slotName, { transceiver, publishedId: null });
    added = true;
  }
  if (added) await negotiate(session);
}

/** One publisher offer/answer at a time; resolves when the answer is applied. */
function negotiate(session) {
  const pub = session.pub;
  if (!pub) return Promise.resolve();
  pub.chain = pub.chain.then(() => offerOnce(session)).catch((err) => {
    if (!current(session)) return;
    if (err.timeout) sessionFailed(session, err.message);
    else toast(`Publishing failed: ${err.message}`);
  });
  return pub.chain;
}

async function offerOnce(session) {
  if (!current(session)) return;
  const { pc, slots } = session.pub;
  const offer = await pc.createOffer();
  await pc.setLocalDescription(offer);
  let sdp = pc.localDescription.sdp;
  // A screen track goes out under "screen-<id>" so everyone can tell it from a camera.
  const screen = slots.get('screen');
  const ids = msidByMid(sdp);
  if (screen && screen.transceiver.mid) {
    const id = ids.get(screen.transceiver.mid);
    if (id && !id.trackId.startsWith(SCREEN_PREFIX)) sdp = markScreenTrack(sdp, screen.transceiver.mid, id.trackId);
  }
  for (const slot of slots.values()) {
    const id = msidByMid(sdp).get(slot.transceiver.mid);
    if (id) slot.publishedId = id.trackId;
  }
  const answered = new Promise((resolve, reject) => { session.pub.waiting = { resolve, reject }; });
  const timeout = new Promise((_, reject) => {
    session.timers.push(setTimeout(() => reject(Object.assign(new Error('no answer to the publisher offer'), { timeout: true })), 15000));
  });
  session.signaling.send({ type: 'offer', pc: 'publisher', sdp });
  const answer = await Promise.race([answered, timeout]);
  session.pub.waiting = null;
  if (!current(session)) return;
  await pc.setRemoteDescription({ type: 'answer', sdp: answer });
  flushCandidates(session, 'publisher');
  // Mute state goes right after the publisher answer: join muted, or republish muted.
  sendMute(session, 'audio');
  sendMute(session, 'video');
}

function markScreenTrack(sdp, mid, trackId) {
  const sections = sdp.split(/(?=\r?\nm=)/);
  return sections.map((section) => {
    if (!new RegExp(`\\r?\\na=mid:${mid.replace(/[^\w-]/g, '\\$&')}(\\r?\\n|$)`).test(section)) return section;
    return section.split(` ${trackId}`).join(` ${SCREEN_PREFIX}${trackId}`);
  }).join('');
}

/** Tells the server the mute state of a published track (only a muted one after publishing). */
function sendMute(session, kind, { force = false } = {}) {
  if (!current(session) || !session.pub) return;
  const slot = session.pub.slots.get(kind);
  if (!slot || !slot.publishedId) return;
  const muted = kind === 'audio' ? !state.micOn : !state.camOn;
  if (!force && slot.sentMuted === undefined && !muted) return; // published unmuted already
  if (slot.sentMuted === muted && !force) return;
  slot.sentMuted = muted;
  session.signaling.send({ type: 'mute', track_id: slot.publishedId, muted });
}

function scheduleMuteRetry(session) {
  if (!current(session) || session.muteRetries >= 20) return;
  session.muteRetries += 1;
  clearTimeout(session.muteTimer);
  session.muteTimer = setTimeout(() => {
    if (!current(session) || !session.pub) return;
    for (const kind of ['audio', 'video']) {
      const slot = session.pub.slots.get(kind);
      if (slot && slot.sentMuted !== undefined) sendMute(session, kind, { force: true });
    }
  }, 500);
}

// ---- Chat ----

function appendChat({ from, text, ts, mine = false, system = false }) {
  const log = $('chat-log');
  const li = document.createElement('li');
  if (system) {
    li.className = 'system';
    li.textContent = text;
  } else {
    li.className = mine ? 'mine' : '';
    const who = document.createElement('span');
    who.className = 'from';
    who.textContent = mine ? 'You' : from.name;
    const body = document.createElement('span');
    body.className = 'text';
    body.append(renderText(document, text));
    const time = document.createElement('time');
    time.className = 'time';
    const when = new Date(ts || Date.now());
    time.dateTime = when.toISOString();
    time.textContent = when.toLocaleTimeString([], { hour: '2-digit', minute: '2-digit' });
    li.append(who, body, time);
  }
  log.append(li);
  if (mine) state.chatFollow = true;
  if (state.chatFollow) {
    log.scrollTop = log.scrollHeight;
  } else {
    $('chat-jump').hidden = false;
  }
  if (!system && !mine && !chatVisible()) {
    state.unread += 1;
    renderUnread();
  }
  return li;
}

function chatVisible() {
  if (isPhone()) return state.panel === 'chat';
  return state.sidebarOpen;
}

function renderUnread() {
  const el = $('unread-badge');
  el.hidden = state.unread === 0;
  el.textContent = state.unread > 99 ? '99+' : String(state.unread);
  $('unread-text').textContent = state.unread ? `, ${state.unread} unread` : '';
  document.title = `${state.unread ? `(${state.unread}) ` : ''}${state.room ? `${state.room} · ` : ''}switchboard`;
}

function setupChat(session, channel) {
  session.chat = channel;
  mirror(session);
  channel.onopen = () => updateCallControls();
  channel.onclose = () => updateCallControls();
  channel.onmessage = (event) => {
    let message;
    try { message = JSON.parse(event.data); } catch { return; }
    if (message.type === 'chat') {
      appendChat(message);
    } else if (message.type === 'error') {
      // The server refused our last message: say so on it.
      const mine = [...$('chat-log').querySelectorAll('li.mine:not(.failed)')].pop();
      if (mine) {
        mine.classList.add('failed');
        const note = document.createElement('span');
        note.className = 'failed-note';
        note.textContent = `not delivered: ${message.message}`;
        mine.append(note);
      }
      toast(`Chat: ${message.message}`);
    }
  };
  updateCallControls();
}

function chatOpen() {
  return state.phase === 'connected' && state.chat && state.chat.readyState === 'open';
}

function updateChatCounter() {
  const input = $('chat-input');
  const bytes = utf8Length(input.value.trim());
  const note = $('chat-note');
  if (bytes > MAX_CHAT_BYTES) {
    note.textContent = `Too long: ${bytes} of ${MAX_CHAT_BYTES} bytes. Shorten the message to send it.`;
    note.classList.add('bad');
  } else if (bytes > MAX_CHAT_BYTES * 0.8) {
    note.textContent = `${MAX_CHAT_BYTES - bytes} bytes left`;
    note.classList.remove('bad');
  } else if (!note.dataset.sticky) {
    note.textContent = '';
    note.classList.remove('bad');
  }
  $('chat-send').disabled = !chatOpen() || bytes === 0 || bytes > MAX_CHAT_BYTES;
  if (input.offsetParent) {
    input.style.height = 'auto';
    input.style.height = `${Math.min(input.scrollHeight + 2, 128)}px`;
  }
}

function chatNote(text, bad = true) {
  const note = $('chat-note');
  note.textContent = text;
  note.classList.toggle('bad', bad);
  note.dataset.sticky = text ? '1' : '';
}

function sendChat() {
  const input = $('chat-input');
  const text = input.value.trim();
  if (!text) return;
  if (utf8Length(text) > MAX_CHAT_BYTES) {
    chatNote(`Not sent: the message is over ${MAX_CHAT_BYTES} bytes.`);
    return;
  }
  if (!chatOpen()) {
    chatNote('Not sent: you are not connected. The message stays here until you are back.');
    return;
  }
  try {
    state.chat.send(JSON.stringify({ text }));
  } catch (err) {
    chatNote(`Not sent: ${err.message}`);
    return;
  }
  chatNote('');
  appendChat({ text, mine: true, ts: Date.now() });
  input.value = '';
  updateChatCounter();
}

// ---- Panels (sidebar on desktop, drawers on phones) ----

function togglePanel(which) {
  if (isPhone()) {
    state.panel = state.panel === which ? null : which;
  } else if (state.sidebarOpen && state.lastPanel === which) {
    state.sidebarOpen = false;
  } else {
    state.sidebarOpen = true;
  }
  state.lastPanel = which;
  renderPanels();
  if (chatVisible() && which === 'chat') {
    $('chat-input').focus();
    const log = $('chat-log');
    log.scrollTop = log.scrollHeight;
  }
}

function renderPanels() {
  const call = $('call');
  const phone = isPhone();
  call.classList.toggle('sidebar-closed', !phone && !state.sidebarOpen);
  call.classList.toggle('drawer-chat', phone && state.panel === 'chat');
  call.classList.toggle('drawer-people', phone && state.panel === 'people');
  const chatShown = chatVisible();
  const peopleShown = phone ? state.panel === 'people' : state.sidebarOpen;
  $('chat-btn').setAttribute('aria-expanded', String(chatShown));
  $('people-btn').setAttribute('aria-expanded', String(peopleShown));
  if (chatShown) {
    state.unread = 0;
    renderUnread();
  }
  scheduleLayout();
}

// ---- Speaking and connection quality ----

function isSpeaking(person) {
  const audio = trackInfo(person, 'audio');
  if (!audio || audio.muted || !person.audioTrack) return false;
  return Date.now() - person.lastLoud < SPEAKING_HOLD_MS;
}

function tickLevels() {
  if (state.phase !== 'connected') return;
  const levels = meter.running ? meter.sample() : new Map();
  const now = Date.now();
  let best = null;
  for (const [id, person] of state.people) {
    const level = Math.max(levels.get(id) || 0, person.statsLevel || 0);
    person.level = level;
    const audio = trackInfo(person, 'audio');
    if (level > SPEAKING_LEVEL && audio && !audio.muted) person.lastLoud = now;
    const speaking = isSpeaking(person);
    person.tile.classList.toggle('speaking', speaking);
    if (speaking && (!best || person.level > best.level)) best = person;
  }
  const localLevel = levels.get('local') || 0;
  const localSpeaking = state.micOn && localLevel > SPEAKING_LEVEL;
  if (localSpeaking) state.localLoud = now;
  const wasLocal = state.localSpeaking;
  state.localSpeaking = state.micOn && now - (state.localLoud || 0) < SPEAKING_HOLD_MS;
  $('local-tile').classList.toggle('speaking', state.localSpeaking);
  const active = state.activeSpeaker ? state.people.get(state.activeSpeaker) : null;
  if (best && best.id !== state.activeSpeaker && (!active || !isSpeaking(active) || best.level > active.level * 2)) {
    state.activeSpeaker = best.id;
    bringIntoView(best.id);
    if (state.view === 'speaker') scheduleLayout();
  }
  // The people list marks who is speaking now; redraw it only when that changes.
  const signature = `${state.localSpeaking}|${[...state.people.values()].filter((p) => state.activeSpeaker === p.id && isSpeaking(p)).map((p) => p.id).join(',')}`;
  if (signature !== state.speakingSignature || wasLocal !== state.localSpeaking) {
    state.speakingSignature = signature;
    renderPeople();
  }
  for (const [id, person] of state.people) person.tile.classList.toggle('active-speaker', id === state.activeSpeaker);
}

async function tickStats() {
  const session = state.session;
  if (state.phase !== 'connected' || !session || !session.subscriber) return;
  let sample;
  try {
    sample = await readInbound(session.subscriber);
  } catch {
    return;
  }
  if (!current(session)) return;
  const now = Date.now();
  for (const person of state.people.values()) {
    const entries = [person.cam, person.audioTrack, person.screen].filter(Boolean);
    let lost = 0;
    let got = 0;
    let stalled = false;
    for (const entry of entries) {
      const s = sample.byMid.get(String(entry.mid));
      if (!s) continue;
      const prev = person.stats.get(entry.mid);
      person.stats.set(entry.mid, { ...s, at: now, lastProgress: prev ? prev.lastProgress : now });
      if (!prev) continue;
      const cur = person.stats.get(entry.mid);
      lost += Math.max(0, s.packetsLost - prev.packetsLost);
      got += Math.max(0, s.packetsReceived - prev.packetsReceived);
      const progressed = s.kind === 'video' ? s.framesDecoded > prev.framesDecoded : s.packetsReceived > prev.packetsReceived;
      if (progressed) cur.lastProgress = now;
      if (s.kind === 'audio' && entry === person.audioTrack) {
        const de = s.energy - prev.energy;
        const dd = s.duration - prev.duration;
        person.statsLevel = dd > 0 ? Math.sqrt(Math.max(0, de) / dd) : 0;
      }
      const info = entry === person.screen ? { muted: false } : trackInfo(person, s.kind);
      const muted = !info || info.muted;
      if (!muted && now - entry.since > 4000 && now - cur.lastProgress > STALL_MS) stalled = true;
    }
    const loss = lost + got > 0 ? lost / (lost + got) : 0;
    const rtt = sample.rtt || 0;
    const level = stalled ? 'lost' : entries.length ? qualityOf(loss, rtt) : 'unknown';
    const details = `loss ${(loss * 100).toFixed(1)} %, round trip ${Math.round(rtt * 1000)} ms`;
    const label = stalled ? 'Connection problem: no media is arriving' : `Connection ${level}: ${details}`;
    for (const q of [person.quality, person.screen && person.screen.quality].filter(Boolean)) {
      q.className = `quality ${level}`;
      q.setAttribute('aria-label', label);
      q.title = label;
    }
    if (person.problem !== stalled) {
      person.problem = stalled;
      person.tile.classList.toggle('problem', stalled);
      if (person.screen) person.screen.tile.classList.toggle('problem', stalled);
    }
  }
}

// ---- Call controls while connecting and reconnecting ----

function updateCallControls() {
  updateLocalControls();
  updateChatCounter();
  const connected = state.phase === 'connected';
  $('chat-input').setAttribute('aria-describedby', 'chat-note');
  if (connected && chatOpen() && $('chat-note').dataset.sticky && /not connected/.test($('chat-note').textContent)) chatNote('', false);
  if (!connected && state.phase === 'reconnecting' && !$('chat-note').dataset.sticky) $('chat-note').textContent = 'Reconnecting: chat is paused.';
}

// ---- Pre-join ----

async function startPreview() {
  stopPreview();
  const wantAudio = true;
  const wantVideo = true;
  $('preview-message').textContent = 'Starting camera…';
  $('preview-start').hidden = true;
  const { stream, error } = await getLocalMedia({ audio: wantAudio, video: wantVideo, micId: prefs.micId, cameraId: prefs.cameraId });
  if (state.phase !== 'lobby') {
    if (stream) for (const t of stream.getTracks()) t.stop();
    return;
  }
  if (!stream) {
    const denied = error && error.name === 'NotAllowedError';
    $('preview-message').textContent = denied
      ? 'Camera and microphone are blocked. You can still join to watch and chat.'
      : `No camera or microphone (${(error && (error.message || error.name)) || 'none found'}). You can still join to watch and chat.`;
    renderPreviewToggles();
    return;
  }
  state.preview = stream;
  const cam = stream.getVideoTracks()[0];
  const mic = stream.getAudioTracks()[0];
  if (cam) cam.enabled = state.camOn;
  if (mic) mic.enabled = state.micOn;
  $('preview-video').srcObject = cam ? new MediaStream([cam]) : null;
  meter.set('preview', mic || null);
  renderPreviewToggles();
  await fillDeviceSelects();
}

function stopPreview() {
  meter.remove('preview');
  if (state.preview) {
    for (const t of state.preview.getTracks()) t.stop();
    state.preview = null;
  }
  $('preview-video').srcObject = null;
}

function renderPreviewToggles() {
  const stream = state.preview;
  const cam = stream && stream.getVideoTracks()[0];
  const mic = stream && stream.getAudioTracks()[0];
  const micBtn = $('pre-mic-btn');
  const camBtn = $('pre-cam-btn');
  micBtn.setAttribute('aria-pressed', String(!state.micOn));
  micBtn.setAttribute('aria-label', state.micOn ? 'Join with the microphone on (press to mute)' : 'Join with the microphone muted (press to unmute)');
  camBtn.setAttribute('aria-pressed', String(!state.camOn));
  camBtn.setAttribute('aria-label', state.camOn ? 'Join with the camera on (press to turn off)' : 'Join with the camera off (press to turn on)');
  micBtn.disabled = Boolean(stream) && !mic;
  camBtn.disabled = Boolean(stream) && !cam;
  const showVideo = Boolean(cam && state.camOn);
  $('preview-off').hidden = showVideo;
  if (stream && !showVideo) $('preview-message').textContent = cam ? 'Camera is off' : 'No camera';
}

async function fillDeviceSelects() {
  const devices = await listDevices();
  for (const select of document.querySelectorAll('select[data-kind]')) {
    const kind = select.dataset.kind;
    const list = devices[kind] || [];
    const selected = kind === 'videoinput' ? currentDeviceId('video', prefs.cameraId) : kind === 'audioinput' ? currentDeviceId('audio', prefs.micId) : state.speakerId;
    select.replaceChildren(...list.map((d, i) => {
      const o = document.createElement('option');
      o.value = d.deviceId;
      o.textContent = d.label || `${kind === 'videoinput' ? 'Camera' : kind === 'audioinput' ? 'Microphone' : 'Speaker'} ${i + 1}`;
      if (d.deviceId === selected) o.selected = true;
      return o;
    }));
    if (!list.length) {
      const o = document.createElement('option');
      o.value = '';
      o.textContent = kind === 'audiooutput' ? 'System default' : 'None found';
      select.append(o);
    }
    select.disabled = !list.length;
  }
  for (const el of document.querySelectorAll('.speaker-pick')) el.hidden = !canPickSpeaker || !devices.audiooutput.length;
}

function currentDeviceId(kind, fallback) {
  const track = state.phase === 'lobby' ? state.preview && state.preview.getTracks().find((t) => t.kind === kind) : localTrack(kind);
  const settings = track && track.getSettings ? track.getSettings() : {};
  return settings.deviceId || fallback || '';
}

async function previewDeviceChanged(kind, deviceId) {
  savePrefs(kind === 'video' ? { cameraId: deviceId } : { micId: deviceId });
  if (!state.preview) return;
  try {
    const track = await getTrack(kind, deviceId);
    const old = state.preview.getTracks().find((t) => t.kind === kind);
    if (old) {
      state.preview.removeTrack(old);
      old.stop();
    }
    track.enabled = kind === 'audio' ? state.micOn : state.camOn;
    state.preview.addTrack(track);
    if (kind === 'video') $('preview-video').srcObject = new MediaStream([track]);
    else meter.set('preview', track);
  } catch (err) {
    toast(`Cannot use that device: ${err.message || err.name}`);
  }
}

function updateShareBox() {
  const room = $('room-input').value.trim();
  const valid = /^[A-Za-z0-9_-]{1,64}$/.test(room);
  $('share-box').hidden = !valid;
  if (valid) $('share-link').value = inviteLink();
  $('join-title').textContent = valid && new URLSearchParams(window.location.search).get('room') === room ? `Join ${room}` : 'Join a room';
}

function showLobby() {
  document.body.classList.remove('in-call');
  $('call').hidden = true;
  $('lobby').hidden = false;
  $('room-label').hidden = true;
  $('invite-btn').hidden = true;
  state.phase = 'lobby';
  const room = $('room-input').value.trim();
  document.title = room ? `Join ${room} · switchboard` : 'switchboard';
  updateShareBox();
  renderPreviewToggles();
  if (!state.preview) {
    $('preview-off').hidden = false;
    $('preview-message').textContent = state.left && state.everJoined ? `You left ${state.room || 'the room'}.` : 'Camera is off';
    $('preview-start').hidden = false;
  }
}

// ---- Joining and leaving ----

function enterCall(room, name, { scripted = false } = {}) {
  state.callId = (state.callId || 0) + 1;
  state.room = room;
  state.name = name;
  state.left = false;
  state.attempt = 0;
  state.everJoined = false;
  state.phase = 'joining';
  state.unread = 0;
  document.body.classList.add('in-call');
  $('lobby').hidden = true;
  $('call').hidden = false;
  $('chat-log').replaceChildren();
  $('local-name').textContent = `${name} (you)`;
  $('local-avatar').textContent = initials(name);
  setStatus('Connecting…');
  // The address bar keeps the room and drops the name: the URL is what people share.
  const url = new URL(window.location.href);
  url.searchParams.delete('name');
  url.searchParams.set('room', room);
  window.history.replaceState(null, '', url);
  document.title = `${room} · switchboard`;
  if (state.preview) {
    const stream = state.preview;
    state.preview = null;
    meter.remove('preview');
    $('preview-video').srcObject = null;
    setLocalStream(stream);
    state.mediaReady = Promise.resolve(stream);
  } else if (scripted || !state.localStream) {
    state.mediaReady = acquireMedia();
  }
  renderPanels();
  updateCallControls();
  startSession();
}

function teardown() {
  const session = state.session;
  state.session = null;
  closeSession(session);
  mirror(null);
  clearTimeout(state.reconnectTimer);
  if (state.localStream) for (const t of state.localStream.getTracks()) t.stop();
  if (state.screenTrack) {
    state.screenTrack.stop();
    state.screenTrack = null;
  }
  if (localScreenTile) {
    localScreenTile.tile.remove();
    localScreenTile = null;
  }
  meter.remove('local');
  clearPeople();
  state.localStream = null;
  state.mediaReady = null;
  state.me = null;
  state.pinned = null;
  state.activeSpeaker = null;
  state.audioBlocked = false;
  $('audio-prompt').hidden = true;
  $('banner').hidden = true;
  $('stage').classList.remove('stale');
  $('local-video').srcObject = null;
  $('chat-log').replaceChildren();
  chatNote('', false);
}

function leave() {
  state.left = true;
  closeSession(state.session, { leave: true });
  teardown();
  showLobby();
  setStatus('You left the room');
}

// ---- Wiring ----

$('join-form').addEventListener('submit', (e) => {
  e.preventDefault();
  const room = $('room-input').value.trim();
  const name = $('name-input').value.trim();
  const error = $('join-error');
  if (!/^[A-Za-z0-9_-]{1,64}$/.test(room)) {
    error.textContent = 'The room name is 1 to 64 letters, digits, "-" or "_".';
    error.hidden = false;
    $('room-input').focus();
    return;
  }
  if (!name) {
    error.textContent = 'Enter your name so the others know who joined.';
    error.hidden = false;
    $('name-input').focus();
    return;
  }
  error.hidden = true;
  savePrefs({ name });
  meter.resume();
  enterCall(room, name);
});
$('room-input').addEventListener('input', updateShareBox);
$('share-copy').addEventListener('click', (e) => copyInvite(e.currentTarget));
$('invite-btn').addEventListener('click', (e) => copyInvite(e.currentTarget));
$('people-invite').addEventListener('click', (e) => copyInvite(e.currentTarget));
$('alone-invite').addEventListener('click', (e) => copyInvite(e.currentTarget));
$('preview-start').addEventListener('click', () => startPreview());
$('pre-mic-btn').addEventListener('click', () => {
  state.micOn = !state.micOn;
  savePrefs({ micOn: state.micOn });
  const mic = state.preview && state.preview.getAudioTracks()[0];
  if (mic) mic.enabled = state.micOn;
  renderPreviewToggles();
});
$('pre-cam-btn').addEventListener('click', () => {
  state.camOn = !state.camOn;
  savePrefs({ camOn: state.camOn });
  const cam = state.preview && state.preview.getVideoTracks()[0];
  if (cam) cam.enabled = state.camOn;
  renderPreviewToggles();
});
$('pre-camera-select').addEventListener('change', (e) => previewDeviceChanged('video', e.target.value));
$('pre-mic-select').addEventListener('change', (e) => previewDeviceChanged('audio', e.target.value));
for (const id of ['pre-speaker-select', 'speaker-select']) {
  $(id).addEventListener('change', (e) => {
    state.speakerId = e.target.value;
    savePrefs({ speakerId: state.speakerId });
    for (const el of document.querySelectorAll('#audio-sinks audio')) applySink(el);
  });
}
$('camera-select').addEventListener('change', (e) => switchDevice('video', e.target.value));
$('mic-select').addEventListener('change', (e) => switchDevice('audio', e.target.value));

$('mic-btn').addEventListener('click', () => toggle('audio'));
$('cam-btn').addEventListener('click', () => toggle('video'));
$('share-btn').addEventListener('click', () => (state.screenTrack ? stopShare() : startShare()));
$('layout-btn').addEventListener('click', () => {
  const next = state.view === 'grid' ? 'speaker' : 'grid';
  if (next === 'grid') state.pinned = null;
  setView(next);
});
$('chat-btn').addEventListener('click', () => togglePanel('chat'));
$('people-btn').addEventListener('click', () => togglePanel('people'));
for (const btn of document.querySelectorAll('.drawer-close')) {
  btn.addEventListener('click', () => {
    state.panel = null;
    renderPanels();
  });
}
$('settings-btn').addEventListener('click', async () => {
  await fillDeviceSelects();
  $('settings-dialog').showModal();
});
$('leave-btn').addEventListener('click', leave);
$('overflow-tile').addEventListener('click', () => {
  if (isPhone()) state.panel = 'people';
  else state.sidebarOpen = true;
  renderPanels();
});
$('audio-enable').addEventListener('click', enableAudio);
$('chat-form').addEventListener('submit', (e) => {
  e.preventDefault();
  sendChat();
});
$('chat-input').addEventListener('keydown', (e) => {
  if (e.key === 'Enter' && !e.shiftKey && !e.isComposing) {
    e.preventDefault();
    sendChat();
  }
});
$('chat-input').addEventListener('input', () => {
  if ($('chat-note').dataset.sticky) chatNote('', false);
  updateChatCounter();
});
// The chat follows new messages unless the reader scrolled up to read older ones.
$('chat-log').addEventListener('scroll', () => {
  const log = $('chat-log');
  if (!log.clientHeight) return; // hidden (a closed drawer): keep following
  state.chatFollow = log.scrollHeight - log.scrollTop - log.clientHeight < 40;
  if (state.chatFollow) $('chat-jump').hidden = true;
});
$('chat-jump').addEventListener('click', () => {
  const log = $('chat-log');
  state.chatFollow = true;
  log.scrollTop = log.scrollHeight;
  $('chat-jump').hidden = true;
});
new ResizeObserver(() => {
  const log = $('chat-log');
  if (state.chatFollow && log.clientHeight) log.scrollTop = log.scrollHeight;
}).observe($('chat-log'));

document.addEventListener('keydown', (e) => {
  if (e.ctrlKey || e.metaKey || e.altKey) return;
  const target = e.target;
  if (target && (target.closest('input, textarea, select, [contenteditable="true"]') || target.closest('dialog'))) {
    if (e.key === 'Escape' && target.id === 'chat-input' && isPhone()) {
      state.panel = null;
      renderPanels();
    }
    return;
  }
  if (state.phase === 'lobby') return;
  const key = e.key.toLowerCase();
  const actions = {
    m: () => toggle('audio'),
    v: () => toggle('video'),
    c: () => togglePanel('chat'),
    p: () => togglePanel('people'),
    s: () => (state.screenTrack ? stopShare() : startShare()),
    l: () => $('layout-btn').click(),
    '?': () => $('settings-btn').click(),
    escape: () => { if (state.panel) { state.panel = null; renderPanels(); } },
  };
  if (actions[key]) {
    e.preventDefault();
    actions[key]();
  }
});
// Any click counts as the user's go-ahead for sound.
document.addEventListener('click', () => {
  meter.resume();
  if (state.audioBlocked) enableAudio();
}, true);
window.addEventListener('beforeunload', () => {
  if (state.session) state.session.signaling.send({ type: 'leave' });
});
window.addEventListener('online', () => {
  if (state.phase === 'reconnecting') {
    clearTimeout(state.reconnectTimer);
    startSession();
  }
});
new ResizeObserver(() => scheduleLayout()).observe($('stage'));
wireTileActions($('local-tile'), 'local');
window.matchMedia('(max-width: 720px)').addEventListener('change', () => renderPanels());
if (navigator.mediaDevices && navigator.mediaDevices.addEventListener) {
  navigator.mediaDevices.addEventListener('devicechange', () => fillDeviceSelects());
}
setInterval(tickLevels, 100);
setInterval(() => { tickStats(); }, 1000);
setInterval(() => {
  if (state.phase !== 'lobby') return;
  const levels = meter.sample();
  const level = levels.get('preview') || 0;
  $('preview-meter').style.width = `${Math.min(100, Math.round(level * 200))}%`;
}, 100);

// ---- Start ----

const params = new URLSearchParams(window.location.search);
state.token = params.get('token');
if (params.get('room')) $('room-input').value = params.get('room');
$('name-input').value = params.get('name') || prefs.name || '';
if (params.get('room') && params.get('name')) {
  // Scripts and tests: /?room=R&name=N joins at once, camera and microphone on.
  state.micOn = true;
  state.camOn = true;
  enterCall(params.get('room'), params.get('name').trim(), { scripted: true });
} else {
  showLobby();
  startPreview();
  if (params.get('room')) $('name-input').focus();
}
updateLocalControls();

// For tests and debugging: the live state, read-only by convention.
window.switchboard = state;
