// How large the page shows each remote video, told to the server (`subscription`,
// docs/protocol.md): it sends no simulcast layer larger than that, and nothing for a video the
// page does not show (a hidden tab, a tile with no room).

import { state } from './state.js';

/** What was last told, per track id: "enabled:width:height". */
const told = new Map();

/** A new session knows nothing yet: tell it everything again. */
export function resetViews() {
  told.clear();
}

/** The videos shown now: [trackId, element]. */
function remoteVideos() {
  const out = [];
  for (const person of state.people.values()) {
    if (person.cam && person.cam.trackId) out.push([person.cam.trackId, person.video]);
    if (person.screen && person.screen.trackId && person.screen.video) out.push([person.screen.trackId, person.screen.video]);
  }
  return out;
}

/** Sizes in device pixels, rounded so that a pixel of layout jitter does not say anything. */
function sizeOf(element) {
  const rect = element.getBoundingClientRect();
  const dpr = window.devicePixelRatio || 1;
  const round = (v) => Math.round((v * dpr) / 16) * 16;
  return { width: round(rect.width), height: round(rect.height) };
}

/** Tells the server what changed since last time. Run on a timer and after layout changes. */
export function tickViews() {
  const session = state.session;
  if (!session || !session.joined || state.phase !== 'connected') return;
  const seen = new Set();
  for (const [trackId, element] of remoteVideos()) {
    seen.add(trackId);
    const { width, height } = sizeOf(element);
    const enabled = !document.hidden && element.isConnected && width > 0 && height > 0;
    const key = `${enabled}:${width}:${height}`;
    if (told.get(trackId) === key) continue;
    told.set(trackId, key);
    session.signaling.send({ type: 'subscription', track_id: trackId, enabled, width: enabled ? width : 0, height: enabled ? height : 0 });
  }
  for (const trackId of [...told.keys()]) if (!seen.has(trackId)) told.delete(trackId);
}
