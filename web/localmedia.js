// Your own media: camera and microphone (the call's controls for them, mute, switching
// devices) and the screen share.

import { getLocalMedia, getTrack } from './media.js';
import { prefs, state, meter, savePrefs } from './state.js';
import { $, toast, badge } from './ui.js';
import { makeTile, playVideo } from './tiles.js';
import { renderPeople } from './people.js';
import { scheduleLayout } from './stage.js';
import { publish, negotiate, sendMute } from './peers.js';

export function localTrack(kind) {
  return state.localStream ? state.localStream.getTracks().find((t) => t.kind === kind) || null : null;
}

// Your screen share's tile: stage.js reads it, only this module sets it.
export let localScreenTile = null;

export function updateLocalControls() {
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

export function setLocalStream(stream) {
  state.localStream = stream;
  const mic = localTrack('audio');
  const cam = localTrack('video');
  if (mic) mic.enabled = state.micOn;
  if (cam) cam.enabled = state.camOn;
  $('local-video').srcObject = cam ? new MediaStream([cam]) : null;
  meter.set('local', mic);
  updateLocalControls();
}

export function acquireMedia() {
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

export function toggle(kind) {
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

export async function switchDevice(kind, deviceId) {
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

export async function startShare() {
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

export async function stopShare() {
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

/** Teardown: your screen share's tile goes (the track is stopped by then). */
export function removeLocalScreenTile() {
  if (localScreenTile) {
    localScreenTile.tile.remove();
    localScreenTile = null;
  }
}
