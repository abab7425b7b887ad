// The state the client's modules share: one `state` object (also `window.switchboard`, for
// tests and debugging), the saved preferences and the audio level meter.

import { LevelMeter } from './media.js';

/** Screen-share tracks are published under this track id prefix, so others can tell them apart. */
export const SCREEN_PREFIX = 'screen-';

export const prefs = loadPrefs();

export const state = {
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
  // Who speaks, as the server says (participant id → level); null until it first says.
  serverSpeakers: null,
  /** participant id -> the server's word for its connection ('excellent'...'lost'). */
  serverQuality: null,
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

export const meter = new LevelMeter();

function loadPrefs() {
  try {
    return JSON.parse(localStorage.getItem('switchboard.prefs') || '{}') || {};
  } catch {
    return {};
  }
}

export function savePrefs(patch) {
  Object.assign(prefs, patch);
  try {
    localStorage.setItem('switchboard.prefs', JSON.stringify(prefs));
  } catch {
    // private mode: preferences are not kept
  }
}
