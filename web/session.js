// Sessions: one signaling socket and its two PCs; a reconnect is a new session, started after
// a backoff. Joining and leaving the call.

import { resetViews } from './views.js';
import { Signaling, signalingUrl } from './signaling.js';
import { state, meter } from './state.js';
import { $, setStatus, toast, initials } from './ui.js';
import { addPerson, removePerson, clearPeople, renderPerson } from './tiles.js';
import { renderPeople } from './people.js';
import { scheduleLayout } from './stage.js';
import { setLocalStream, acquireMedia, removeLocalScreenTile } from './localmedia.js';
import { addRemoteCandidate, dropRemoteTrack, onSubscriberOffer, publish, scheduleMuteRetry, setActiveLayers } from './peers.js';
import { appendChat, chatNote } from './chatpanel.js';
import { renderPanels, updateCallControls } from './controls.js';
import { showLobby } from './lobby.js';

const RECONNECT_DELAYS = [300, 700, 1500, 2500, 4000];

let sessionSeq = 0;

export function current(session) {
  return session && session === state.session && !session.closed;
}

export function mirror(session) {
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
export function sessionFailed(session, reason) {
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
  resetViews();
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
  on('layers', (m) => {
    setActiveLayers(session, m.track_id, m.active);
  });
  on('speakers', (m) => {
    // The server hears every publisher's audio level: its word wins over the page's own
    // meters from now on.
    state.serverSpeakers = new Map(m.speakers.map((s) => [s.participant_id, s.level]));
  });
  on('quality', (m) => {
    // The server sees both directions of everyone's connection; the page's own reading of
    // what it receives stays as the fallback for those it has not rated.
    if (!state.serverQuality) state.serverQuality = new Map();
    state.serverQuality.set(m.participant_id, m.quality);
  });
  on('track_paused', (m) => {
    // The server paused a track this page receives: the link cannot carry even its lowest
    // layer. The tile says so rather than freeze.
    const person = state.people.get(m.participant_id);
    if (!person) return;
    const track = person.tracks.get(m.track_id);
    if (track) track.paused = m.paused;
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

// ---- Joining and leaving ----

export function enterCall(room, name, { scripted = false } = {}) {
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
  removeLocalScreenTile();
  meter.remove('local');
  clearPeople();
  state.localStream = null;
  state.mediaReady = null;
  state.me = null;
  state.pinned = null;
  state.activeSpeaker = null;
  state.serverSpeakers = null;
  state.serverQuality = null;
  state.audioBlocked = false;
  $('audio-prompt').hidden = true;
  $('banner').hidden = true;
  $('stage').classList.remove('stale');
  $('local-video').srcObject = null;
  $('chat-log').replaceChildren();
  chatNote('', false);
}

export function leave() {
  state.left = true;
  closeSession(state.session, { leave: true });
  teardown();
  showLobby();
  setStatus('You left the room');
}

/** Says goodbye when the page goes; reconnects at once when the network is back. */
export function wireSession() {
  window.addEventListener('beforeunload', () => {
    if (state.session) state.session.signaling.send({ type: 'leave' });
  });
  window.addEventListener('online', () => {
    if (state.phase === 'reconnecting') {
      clearTimeout(state.reconnectTimer);
      startSession();
    }
  });
}
