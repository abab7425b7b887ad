// The pre-join screen: camera preview and its toggles, the device pickers (the settings
// dialog's too), the invite link box.

import { getLocalMedia, getTrack, listDevices, canPickSpeaker } from './media.js';
import { prefs, state, meter, savePrefs } from './state.js';
import { $, toast, inviteLink, copyInvite } from './ui.js';
import { localTrack } from './localmedia.js';
import { enterCall } from './session.js';

export async function startPreview() {
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

export async function fillDeviceSelects() {
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

export function showLobby() {
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

/** The join form, the preview's toggles and device pickers, the invite box. */
export function wireLobby() {
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
}
