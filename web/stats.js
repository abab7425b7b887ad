// Speaking and connection quality: who is speaking (levels measured in the page and from the
// inbound stats), loss and round trip per tile, media that stalled.

import { qualityOf, readInbound } from './media.js';
import { state, meter } from './state.js';
import { $ } from './ui.js';
import { trackInfo } from './tiles.js';
import { renderPeople } from './people.js';
import { scheduleLayout, bringIntoView } from './stage.js';
import { current } from './session.js';

const SPEAKING_LEVEL = 0.04;
const SPEAKING_HOLD_MS = 1200;
const STALL_MS = 2500;

export function isSpeaking(person) {
  const audio = trackInfo(person, 'audio');
  if (!audio || audio.muted || !person.audioTrack) return false;
  return Date.now() - person.lastLoud < SPEAKING_HOLD_MS;
}

export function tickLevels() {
  if (state.phase !== 'connected') return;
  const levels = meter.running ? meter.sample() : new Map();
  const now = Date.now();
  let best = null;
  const fromServer = state.serverSpeakers;
  for (const [id, person] of state.people) {
    const audio = trackInfo(person, 'audio');
    if (fromServer) {
      // The server's speakers (it holds them over pauses itself).
      person.level = fromServer.get(id) || 0;
      if (fromServer.has(id)) person.lastLoud = now;
      else person.lastLoud = 0;
    } else {
      // No word from the server yet: the page's own meters.
      person.level = Math.max(levels.get(id) || 0, person.statsLevel || 0);
      if (person.level > SPEAKING_LEVEL && audio && !audio.muted) person.lastLoud = now;
    }
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

/** The server's words for a connection, as the tile's bars show them. */
const SERVER_LEVELS = { excellent: 'good', good: 'fair', poor: 'poor', lost: 'lost' };

export async function tickStats() {
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
    const rated = state.serverQuality && state.serverQuality.get(person.id);
    const local = stalled ? 'lost' : entries.length ? qualityOf(loss, rtt) : 'unknown';
    const level = stalled ? 'lost' : rated ? SERVER_LEVELS[rated] || local : local;
    const details = `loss ${(loss * 100).toFixed(1)} %, round trip ${Math.round(rtt * 1000)} ms`;
    const source = rated ? `server: ${rated}; here: ` : '';
    const label = stalled ? 'Connection problem: no media is arriving' : `Connection ${level} (${source}${details})`;
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
