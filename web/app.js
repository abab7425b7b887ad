// The browser client: join form, local preview, a tile per remote participant, mute,
// chat, participant list, leave. Plain ES modules, no build step.

import { Signaling, signalingUrl } from './signaling.js';

const $ = (id) => document.getElementById(id);

const state = {
  signaling: null,
  me: null,
  room: null,
  iceServers: [],
  subscriber: null,
  publisher: null,
  chat: null,
  localStream: null,
  // participant id -> { name, tracks: Map(trackId -> {kind, muted}), stream: MediaStream, tile }
  people: new Map(),
  left: false,
};

function setStatus(text) {
  $('status').textContent = text;
}

let toastTimer = null;
function toast(text) {
  const el = $('toast');
  el.textContent = text;
  el.hidden = false;
  clearTimeout(toastTimer);
  toastTimer = setTimeout(() => { el.hidden = true; }, 6000);
}

function initials(name) {
  return name.split(/\s+/).filter(Boolean).slice(0, 2).map((w) => w[0].toUpperCase()).join('') || '?';
}

// ---- People and tiles ----

function addPerson(info, tracks = []) {
  if (state.people.has(info.id)) return state.people.get(info.id);
  const tile = document.createElement('figure');
  tile.className = 'tile remote video-off';
  tile.dataset.participantId = info.id;
  const video = document.createElement('video');
  video.autoplay = true;
  video.playsInline = true;
  const placeholder = document.createElement('div');
  placeholder.className = 'placeholder';
  placeholder.textContent = initials(info.name);
  const caption = document.createElement('figcaption');
  const name = document.createElement('span');
  name.className = 'name';
  name.textContent = info.name;
  const badges = document.createElement('span');
  badges.className = 'badges';
  caption.append(name, badges);
  tile.append(video, placeholder, caption);
  $('tiles').append(tile);
  const person = { name: info.name, tracks: new Map(), stream: new MediaStream(), tile, video, badges };
  video.srcObject = person.stream;
  state.people.set(info.id, person);
  for (const t of tracks) person.tracks.set(t.id, { kind: t.kind, muted: t.muted });
  renderPerson(info.id);
  renderPeople();
  return person;
}

function removePerson(id) {
  const person = state.people.get(id);
  if (!person) return;
  person.video.srcObject = null;
  person.tile.remove();
  state.people.delete(id);
  renderPeople();
}

function renderPerson(id) {
  const person = state.people.get(id);
  if (!person) return;
  const tracks = [...person.tracks.values()];
  const video = tracks.find((t) => t.kind === 'video');
  const audio = tracks.find((t) => t.kind === 'audio');
  const hasLiveVideo = person.stream.getVideoTracks().length > 0 && video && !video.muted;
  person.tile.classList.toggle('video-off', !hasLiveVideo);
  person.badges.replaceChildren();
  if (!audio || audio.muted) person.badges.append(badge(audio ? 'mic muted' : 'no mic', 'mic'));
  if (!video || video.muted) person.badges.append(badge(video ? 'camera off' : 'no camera', 'cam'));
}

function badge(text, kind) {
  const b = document.createElement('span');
  b.className = `badge ${kind}`;
  b.textContent = text;
  return b;
}

function renderPeople() {
  const list = $('people');
  list.replaceChildren();
  const me = document.createElement('li');
  me.textContent = `${state.me ? state.me.name : ''} (you)`;
  list.append(me);
  for (const [id, person] of state.people) {
    const li = document.createElement('li');
    li.dataset.participantId = id;
    li.textContent = person.name;
    list.append(li);
  }
  $('people-count').textContent = String(state.people.size + 1);
}

// ---- Chat ----

function appendChat({ from, text, ts, mine = false, system = false }) {
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
    body.textContent = text;
    const time = document.createElement('time');
    time.className = 'time';
    time.textContent = new Date(ts || Date.now()).toLocaleTimeString([], { hour: '2-digit', minute: '2-digit' });
    li.append(who, body, time);
  }
  const log = $('chat-log');
  log.append(li);
  log.scrollTop = log.scrollHeight;
}

function setupChat(channel) {
  state.chat = channel;
  channel.onmessage = (event) => {
    let message;
    try { message = JSON.parse(event.data); } catch { return; }
    if (message.type === 'chat') appendChat(message);
    else if (message.type === 'error') toast(`Chat: ${message.message}`);
  };
}

// ---- Peer connections ----

function newPeerConnection(kind) {
  const pc = new RTCPeerConnection({ iceServers: state.iceServers });
  pc.onicecandidate = (event) => {
    state.signaling.send({ type: 'candidate', pc: kind, candidate: event.candidate ? event.candidate.toJSON() : null });
  };
  pc.onconnectionstatechange = () => {
    if (pc.connectionState === 'failed') toast(`Media connection (${kind}) failed`);
  };
  return pc;
}

function ensureSubscriber() {
  if (state.subscriber) return state.subscriber;
  const pc = newPeerConnection('subscriber');
  pc.ontrack = (event) => {
    const stream = event.streams[0];
    const participantId = stream ? stream.id : null;
    const person = participantId && state.people.get(participantId);
    if (!person) return;
    const track = event.track;
    person.stream.addTrack(track);
    const forget = () => {
      person.stream.removeTrack(track);
      renderPerson(participantId);
    };
    track.onended = forget;
    if (stream) stream.onremovetrack = (e) => { if (e.track === track) forget(); };
    renderPerson(participantId);
    person.video.play().catch(() => {});
  };
  pc.ondatachannel = (event) => {
    if (event.channel.label === 'chat') setupChat(event.channel);
  };
  state.subscriber = pc;
  return pc;
}

async function onSubscriberOffer(sdp) {
  const pc = ensureSubscriber();
  await pc.setRemoteDescription({ type: 'offer', sdp });
  const answer = await pc.createAnswer();
  await pc.setLocalDescription(answer);
  state.signaling.send({ type: 'answer', pc: 'subscriber', sdp: pc.localDescription.sdp });
}

async function getLocalMedia() {
  const attempts = [{ audio: true, video: true }, { audio: true }, { video: true }];
  let lastError = null;
  for (const constraints of attempts) {
    try {
      return await navigator.mediaDevices.getUserMedia(constraints);
    } catch (err) {
      lastError = err;
    }
  }
  throw lastError || new Error('no media devices');
}

async function publish() {
  let stream;
  try {
    if (!navigator.mediaDevices || !navigator.mediaDevices.getUserMedia) throw new Error('this page has no access to media devices');
    stream = await getLocalMedia();
  } catch (err) {
    toast(`No camera or microphone (${err.message || err.name}); you can still watch and chat.`);
    updateLocalControls();
    return;
  }
  state.localStream = stream;
  $('local-video').srcObject = stream;
  const pc = newPeerConnection('publisher');
  state.publisher = pc;
  for (const track of stream.getTracks()) {
    pc.addTransceiver(track, { direction: 'sendonly', streams: [stream] });
  }
  const offer = await pc.createOffer();
  await pc.setLocalDescription(offer);
  state.signaling.send({ type: 'offer', pc: 'publisher', sdp: pc.localDescription.sdp });
  updateLocalControls();
}

function localTrack(kind) {
  return state.localStream ? state.localStream.getTracks().find((t) => t.kind === kind) : null;
}

function updateLocalControls() {
  const mic = localTrack('audio');
  const cam = localTrack('video');
  for (const [btn, track, on, off] of [[$('mic-btn'), mic, 'Mute mic', 'Unmute mic'], [$('cam-btn'), cam, 'Camera off', 'Camera on']]) {
    btn.disabled = !track;
    const muted = !track || !track.enabled;
    btn.setAttribute('aria-pressed', String(Boolean(track) && muted));
    btn.textContent = track && muted ? off : on;
  }
  $('local-tile').classList.toggle('video-off', !cam || !cam.enabled);
  const badges = $('local-badges');
  badges.replaceChildren();
  if (!mic || !mic.enabled) badges.append(badge(mic ? 'mic muted' : 'no mic', 'mic'));
  if (!cam || !cam.enabled) badges.append(badge(cam ? 'camera off' : 'no camera', 'cam'));
}

function toggle(kind) {
  const track = localTrack(kind);
  if (!track) return;
  track.enabled = !track.enabled;
  state.signaling.send({ type: 'mute', track_id: track.id, muted: !track.enabled });
  updateLocalControls();
}

// ---- Signaling ----

function wireSignaling(signaling) {
  signaling.addEventListener('joined', (e) => {
    const m = e.detail;
    state.me = m.participant;
    state.room = m.room;
    state.iceServers = m.ice_servers || [];
    $('local-name').textContent = `${m.participant.name} (you)`;
    $('room-label').textContent = `# ${m.room}`;
    $('room-label').hidden = false;
    for (const p of m.participants) addPerson(p, p.tracks);
    renderPeople();
    setStatus('Connected');
    appendChat({ system: true, text: `You joined ${m.room}.` });
    publish().catch((err) => toast(`Publishing failed: ${err.message}`));
  });
  signaling.addEventListener('offer', (e) => {
    if (e.detail.pc === 'subscriber') onSubscriberOffer(e.detail.sdp).catch((err) => toast(`Negotiation failed: ${err.message}`));
  });
  signaling.addEventListener('answer', (e) => {
    if (e.detail.pc === 'publisher' && state.publisher) {
      state.publisher.setRemoteDescription({ type: 'answer', sdp: e.detail.sdp }).catch((err) => toast(`Publishing failed: ${err.message}`));
    }
  });
  signaling.addEventListener('candidate', (e) => {
    const pc = e.detail.pc === 'subscriber' ? state.subscriber : state.publisher;
    if (pc && e.detail.candidate) pc.addIceCandidate(e.detail.candidate).catch(() => {});
  });
  signaling.addEventListener('participant_joined', (e) => {
    addPerson(e.detail.participant);
    appendChat({ system: true, text: `${e.detail.participant.name} joined.` });
  });
  signaling.addEventListener('participant_left', (e) => {
    const person = state.people.get(e.detail.participant_id);
    if (person) appendChat({ system: true, text: `${person.name} left.` });
    removePerson(e.detail.participant_id);
  });
  signaling.addEventListener('track_published', (e) => {
    const person = state.people.get(e.detail.participant_id);
    if (!person) return;
    person.tracks.set(e.detail.track.id, { kind: e.detail.track.kind, muted: e.detail.track.muted });
    renderPerson(e.detail.participant_id);
  });
  signaling.addEventListener('track_unpublished', (e) => {
    const person = state.people.get(e.detail.participant_id);
    if (!person) return;
    person.tracks.delete(e.detail.track_id);
    for (const t of person.stream.getTracks()) {
      if (t.id === e.detail.track_id) person.stream.removeTrack(t);
    }
    renderPerson(e.detail.participant_id);
  });
  signaling.addEventListener('track_muted', (e) => {
    const person = state.people.get(e.detail.participant_id);
    if (!person) return;
    const track = person.tracks.get(e.detail.track_id);
    if (track) track.muted = e.detail.muted;
    renderPerson(e.detail.participant_id);
  });
  signaling.addEventListener('error', (e) => {
    const m = e.detail;
    toast(`Server: ${m.message} (${m.code})`);
    if (!state.me && ['invalid_room', 'invalid_name', 'room_full', 'unauthorized'].includes(m.code)) showLobby();
  });
  signaling.addEventListener('close', (e) => {
    if (!state.left) {
      setStatus('Disconnected');
      toast(`Connection to the server closed${e.detail.reason ? `: ${e.detail.reason}` : ''}.`);
    }
  });
}

async function join(room, name) {
  $('lobby').hidden = true;
  $('call').hidden = false;
  setStatus('Connecting…');
  const url = new URL(window.location.href);
  url.searchParams.set('room', room);
  url.searchParams.set('name', name);
  window.history.replaceState(null, '', url);
  const signaling = new Signaling(signalingUrl(window.location));
  state.signaling = signaling;
  state.left = false;
  wireSignaling(signaling);
  try {
    await signaling.connect();
  } catch (err) {
    setStatus('Offline');
    toast(err.message);
    showLobby();
    return;
  }
  const token = url.searchParams.get('token');
  signaling.send(token ? { type: 'join', room, name, token } : { type: 'join', room, name });
}

function teardown() {
  for (const pc of [state.subscriber, state.publisher]) if (pc) pc.close();
  if (state.localStream) for (const t of state.localStream.getTracks()) t.stop();
  for (const id of [...state.people.keys()]) removePerson(id);
  Object.assign(state, { subscriber: null, publisher: null, chat: null, localStream: null, me: null });
  $('local-video').srcObject = null;
  $('chat-log').replaceChildren();
}

function showLobby() {
  $('call').hidden = true;
  $('lobby').hidden = false;
  $('room-label').hidden = true;
}

function leave() {
  state.left = true;
  if (state.signaling) {
    state.signaling.send({ type: 'leave' });
    state.signaling.close();
  }
  teardown();
  showLobby();
  setStatus('You left the room');
}

// ---- Wiring ----

$('join-form').addEventListener('submit', (e) => {
  e.preventDefault();
  join($('room-input').value.trim(), $('name-input').value.trim());
});
$('mic-btn').addEventListener('click', () => toggle('audio'));
$('cam-btn').addEventListener('click', () => toggle('video'));
$('leave-btn').addEventListener('click', leave);
$('chat-form').addEventListener('submit', (e) => {
  e.preventDefault();
  const input = $('chat-input');
  const text = input.value.trim();
  if (!text) return;
  if (!state.chat || state.chat.readyState !== 'open') {
    toast('Chat is not connected yet');
    return;
  }
  state.chat.send(JSON.stringify({ text }));
  appendChat({ text, mine: true, ts: Date.now() });
  input.value = '';
});
window.addEventListener('beforeunload', () => { if (state.signaling) state.signaling.send({ type: 'leave' }); });

const params = new URLSearchParams(window.location.search);
if (params.get('room')) $('room-input').value = params.get('room');
if (params.get('name')) $('name-input').value = params.get('name');
if (params.get('room') && params.get('name')) join(params.get('room'), params.get('name'));
updateLocalControls();

// For tests and debugging: the live state, read-only by convention.
window.switchboard = state;
