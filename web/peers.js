// The two peer connections of a session: ICE candidates, the subscriber PC (the server's
// offers, remote tracks mapped to people by MID) and the publisher PC (your tracks, its offers,
// their mute state).

import { SCREEN_PREFIX, state } from './state.js';
import { toast } from './ui.js';
import { renderPerson, setCameraTrack, setScreenTrack, setAudioTrack } from './tiles.js';
import { localTrack } from './localmedia.js';
import { current, mirror, sessionFailed } from './session.js';
import { setupChat } from './chatpanel.js';

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
export function addRemoteCandidate(session, kind, candidate) {
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

export function dropRemoteTrack(person, trackId, track = null) {
  if (!state.people.has(person.id)) return;
  const matches = (e) => e && (e.trackId === trackId || (track && e.track === track));
  if (matches(person.audioTrack)) setAudioTrack(person, null);
  if (matches(person.cam)) setCameraTrack(person, null);
  if (matches(person.screen)) setScreenTrack(person, null);
  renderPerson(person.id);
}

export async function onSubscriberOffer(session, sdp) {
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
 * Simulcast layers, lowest first (rid q, h, f: a quarter, half and full size), with the
 * bitrates a viewer expects of each. A screen is sent sharp first: both its layers at full size,
 * the lower one at a few frames a second.
 */
const CAMERA_LAYERS = [
  { rid: 'q', scaleResolutionDownBy: 4, maxBitrate: 150_000, maxFramerate: 15 },
  { rid: 'h', scaleResolutionDownBy: 2, maxBitrate: 450_000, maxFramerate: 24 },
  { rid: 'f', scaleResolutionDownBy: 1, maxBitrate: 1_300_000, maxFramerate: 30 },
];
const SCREEN_LAYERS = [
  { rid: 'h', scaleResolutionDownBy: 1, maxBitrate: 500_000, maxFramerate: 5 },
  { rid: 'f', scaleResolutionDownBy: 1, maxBitrate: 2_500_000, maxFramerate: 15 },
];

function sendEncodings(slotName) {
  if (slotName === 'video') return CAMERA_LAYERS.map((l) => ({ ...l }));
  if (slotName === 'screen') return SCREEN_LAYERS.map((l) => ({ ...l }));
  return undefined;
}

/**
 * Publishes the local tracks on this session: a transceiver per track (microphone, camera,
 * screen), one offer for all that are new. Called after joining and whenever a track is added.
 */
export async function publish(session) {
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
    if (slotName === 'screen' && 'contentHint' in track) track.contentHint = 'detail';
    const init = { direction: 'sendonly', streams: [stream] };
    const encodings = sendEncodings(slotName);
    if (encodings) init.sendEncodings = encodings;
    const transceiver = session.pub.pc.addTransceiver(track, init);
    session.pub.slots.set(slotName, { transceiver, publishedId: null });
    added = true;
  }
  if (added) await negotiate(session);
}

/** One publisher offer/answer at a time; resolves when the answer is applied. */
export function negotiate(session) {
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
export function sendMute(session, kind, { force = false } = {}) {
  if (!current(session) || !session.pub) return;
  const slot = session.pub.slots.get(kind);
  if (!slot || !slot.publishedId) return;
  const muted = kind === 'audio' ? !state.micOn : !state.camOn;
  if (!force && slot.sentMuted === undefined && !muted) return; // published unmuted already
  if (slot.sentMuted === muted && !force) return;
  slot.sentMuted = muted;
  session.signaling.send({ type: 'mute', track_id: slot.publishedId, muted });
}

export function scheduleMuteRetry(session) {
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

/**
 * The server says which simulcast layers of a track anyone needs (`layers`): the others stop
 * being encoded and sent until a later `layers` asks for them again.
 */
export async function setActiveLayers(session, trackId, active) {
  if (!current(session) || !session.pub) return;
  for (const slot of session.pub.slots.values()) {
    if (slot.publishedId !== trackId) continue;
    const sender = slot.transceiver.sender;
    const params = sender.getParameters();
    if (!params.encodings || params.encodings.length < 2) return;
    let changed = false;
    for (const encoding of params.encodings) {
      const on = active.includes(encoding.rid);
      if (encoding.active !== on) {
        encoding.active = on;
        changed = true;
      }
    }
    if (changed) {
      try {
        await sender.setParameters(params);
      } catch (err) {
        // A renegotiation in flight may refuse it; the next `layers` tries again.
        console.warn('setting the active layers', err);
      }
    }
  }
}
