// The call's controls: the buttons, the sidebar (drawers on phones), the settings dialog and
// the keyboard shortcuts.

import { state, meter, savePrefs } from './state.js';
import { $, isPhone, copyInvite } from './ui.js';
import { enableAudio, applySink } from './tiles.js';
import { scheduleLayout, setView } from './stage.js';
import { updateLocalControls, toggle, switchDevice, startShare, stopShare } from './localmedia.js';
import { leave } from './session.js';
import { chatVisible, renderUnread, chatOpen, updateChatCounter, chatNote } from './chatpanel.js';
import { fillDeviceSelects } from './lobby.js';

// ---- Panels (sidebar on desktop, drawers on phones) ----

function togglePanel(which) {
  if (isPhone()) {
    state.panel = state.panel === which ? null : which;
  } else if (state.sidebarOpen && state.lastPanel === which) {
    state.sidebarOpen = false;
  } else {
    state.sidebarOpen = true;
  }
  state.lastPanel = which;
  renderPanels();
  if (chatVisible() && which === 'chat') {
    $('chat-input').focus();
    const log = $('chat-log');
    log.scrollTop = log.scrollHeight;
  }
}

export function renderPanels() {
  const call = $('call');
  const phone = isPhone();
  call.classList.toggle('sidebar-closed', !phone && !state.sidebarOpen);
  call.classList.toggle('drawer-chat', phone && state.panel === 'chat');
  call.classList.toggle('drawer-people', phone && state.panel === 'people');
  const chatShown = chatVisible();
  const peopleShown = phone ? state.panel === 'people' : state.sidebarOpen;
  $('chat-btn').setAttribute('aria-expanded', String(chatShown));
  $('people-btn').setAttribute('aria-expanded', String(peopleShown));
  if (chatShown) {
    state.unread = 0;
    renderUnread();
  }
  scheduleLayout();
}

// ---- Call controls while connecting and reconnecting ----

export function updateCallControls() {
  updateLocalControls();
  updateChatCounter();
  const connected = state.phase === 'connected';
  $('chat-input').setAttribute('aria-describedby', 'chat-note');
  if (connected && chatOpen() && $('chat-note').dataset.sticky && /not connected/.test($('chat-note').textContent)) chatNote('', false);
  if (!connected && state.phase === 'reconnecting' && !$('chat-note').dataset.sticky) $('chat-note').textContent = 'Reconnecting: chat is paused.';
}

/** The call's buttons, invite links, settings dialog and keyboard shortcuts. */
export function wireControls() {
  $('invite-btn').addEventListener('click', (e) => copyInvite(e.currentTarget));
  $('people-invite').addEventListener('click', (e) => copyInvite(e.currentTarget));
  $('alone-invite').addEventListener('click', (e) => copyInvite(e.currentTarget));

  for (const id of ['pre-speaker-select', 'speaker-select']) {
    $(id).addEventListener('change', (e) => {
      state.speakerId = e.target.value;
      savePrefs({ speakerId: state.speakerId });
      for (const el of document.querySelectorAll('#audio-sinks audio')) applySink(el);
    });
  }
  $('camera-select').addEventListener('change', (e) => switchDevice('video', e.target.value));
  $('mic-select').addEventListener('change', (e) => switchDevice('audio', e.target.value));

  $('mic-btn').addEventListener('click', () => toggle('audio'));
  $('cam-btn').addEventListener('click', () => toggle('video'));
  $('share-btn').addEventListener('click', () => (state.screenTrack ? stopShare() : startShare()));
  $('layout-btn').addEventListener('click', () => {
    const next = state.view === 'grid' ? 'speaker' : 'grid';
    if (next === 'grid') state.pinned = null;
    setView(next);
  });
  $('chat-btn').addEventListener('click', () => togglePanel('chat'));
  $('people-btn').addEventListener('click', () => togglePanel('people'));
  for (const btn of document.querySelectorAll('.drawer-close')) {
    btn.addEventListener('click', () => {
      state.panel = null;
      renderPanels();
    });
  }
  $('settings-btn').addEventListener('click', async () => {
    await fillDeviceSelects();
    $('settings-dialog').showModal();
  });
  $('leave-btn').addEventListener('click', leave);
  $('overflow-tile').addEventListener('click', () => {
    if (isPhone()) state.panel = 'people';
    else state.sidebarOpen = true;
    renderPanels();
  });
  $('audio-enable').addEventListener('click', enableAudio);

  document.addEventListener('keydown', (e) => {
    if (e.ctrlKey || e.metaKey || e.altKey) return;
    const target = e.target;
    if (target && (target.closest('input, textarea, select, [contenteditable="true"]') || target.closest('dialog'))) {
      if (e.key === 'Escape' && target.id === 'chat-input' && isPhone()) {
        state.panel = null;
        renderPanels();
      }
      return;
    }
    if (state.phase === 'lobby') return;
    const key = e.key.toLowerCase();
    const actions = {
      m: () => toggle('audio'),
      v: () => toggle('video'),
      c: () => togglePanel('chat'),
      p: () => togglePanel('people'),
      s: () => (state.screenTrack ? stopShare() : startShare()),
      l: () => $('layout-btn').click(),
      '?': () => $('settings-btn').click(),
      escape: () => { if (state.panel) { state.panel = null; renderPanels(); } },
    };
    if (actions[key]) {
      e.preventDefault();
      actions[key]();
    }
  });
  // Any click counts as the user's go-ahead for sound.
  document.addEventListener('click', () => {
    meter.resume();
    if (state.audioBlocked) enableAudio();
  }, true);

  window.matchMedia('(max-width: 720px)').addEventListener('change', () => renderPanels());
  if (navigator.mediaDevices && navigator.mediaDevices.addEventListener) {
    navigator.mediaDevices.addEventListener('devicechange', () => fillDeviceSelects());
  }
}
