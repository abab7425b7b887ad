// The browser client: pre-join screen, the call (grid and speaker views, screen share, active
// speaker, connection quality), chat and people, reconnecting by itself. Plain ES modules, no
// build step. The wire protocol is docs/protocol.md.
//
// This is the entry point: it wires the modules' handlers, starts the timers and then joins or
// shows the pre-join screen. What the modules share is in state.js.

import { prefs, state, meter } from './state.js';
import { $ } from './ui.js';
import { wireStage } from './stage.js';
import { updateLocalControls } from './localmedia.js';
import { enterCall, wireSession } from './session.js';
import { wireChat } from './chatpanel.js';
import { tickLevels, tickStats } from './stats.js';
import { tickViews } from './views.js';
import { wireControls } from './controls.js';
import { startPreview, showLobby, wireLobby } from './lobby.js';

// ---- Wiring ----

wireLobby();
wireControls();
wireChat();
wireSession();
wireStage();

setInterval(tickLevels, 100);
setInterval(() => { tickStats(); }, 1000);
setInterval(tickViews, 500);
document.addEventListener('visibilitychange', tickViews);
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
