// Tiles: a participant's tile and <audio> element, their camera, screen and microphone tracks,
// the pin and full-screen buttons, and playing the call's sound (the enable-audio prompt, the
// chosen speaker).

import { canPickSpeaker } from './media.js';
import { SCREEN_PREFIX, state, meter } from './state.js';
import { $, toast, initials, svgIcon, badge } from './ui.js';
import { renderPeople } from './people.js';
import { scheduleLayout, updateAutoView, togglePin } from './stage.js';

export function makeTile({ key, name, remote, screen = false, local = false }) {
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

export function wireTileActions(tile, key) {
  tile.querySelector('.pin-btn').addEventListener('click', () => togglePin(key));
  tile.querySelector('.fs-btn').addEventListener('click', () => {
    if (document.fullscreenElement === tile) document.exitFullscreen().catch(() => {});
    else if (tile.requestFullscreen) tile.requestFullscreen().catch((err) => toast(`Full screen refused: ${err.message}`));
  });
  tile.addEventListener('dblclick', () => togglePin(key));
}

export function addPerson(info, tracks = []) {
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

export function removePerson(id) {
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

export function clearPeople() {
  for (const id of [...state.people.keys()]) removePerson(id);
}

export function trackInfo(person, kind, screen = false) {
  for (const [id, t] of person.tracks) {
    if (t.kind === kind && id.startsWith(SCREEN_PREFIX) === screen) return { id, ...t };
  }
  return null;
}

export function renderPerson(id) {
  const person = state.people.get(id);
  if (!person) return;
  const video = trackInfo(person, 'video');
  const audio = trackInfo(person, 'audio');
  const hasLiveVideo = Boolean(person.cam && video && !video.muted);
  person.tile.classList.toggle('video-off', !hasLiveVideo);
  person.badges.replaceChildren();
  if (!audio || audio.muted) person.badges.append(badge(audio ? 'mic muted' : 'no mic', 'mic'));
  if (!video || video.muted) person.badges.append(badge(video ? 'camera off' : 'no camera', 'cam'));
  if (video && !video.muted && video.paused) person.badges.append(badge('paused: low bandwidth', 'bandwidth'));
  if (person.screen && person.screen.tile) {
    person.screen.tile.classList.toggle('video-off', !person.screen.track);
  }
  renderPeople();
}

export function setCameraTrack(person, entry) {
  person.cam = entry;
  person.video.srcObject = entry ? new MediaStream([entry.track]) : null;
  if (entry) playVideo(person.video);
  renderPerson(person.id);
}

export function setScreenTrack(person, entry) {
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

export function setAudioTrack(person, entry) {
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

export function playVideo(video) {
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

export function enableAudio() {
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

export function applySink(el) {
  if (!canPickSpeaker || !state.speakerId || !el.setSinkId) return;
  el.setSinkId(state.speakerId).catch(() => {});
}
