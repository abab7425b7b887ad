// The chat panel: the message log (following new messages, the unread count), the data
// channel, the message box and its byte limit.

import { MAX_CHAT_BYTES, utf8Length, renderText } from './chat.js';
import { state } from './state.js';
import { $, toast, isPhone } from './ui.js';
import { mirror } from './session.js';
import { updateCallControls } from './controls.js';

export function appendChat({ from, text, ts, mine = false, system = false }) {
  const log = $('chat-log');
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
    body.append(renderText(document, text));
    const time = document.createElement('time');
    time.className = 'time';
    const when = new Date(ts || Date.now());
    time.dateTime = when.toISOString();
    time.textContent = when.toLocaleTimeString([], { hour: '2-digit', minute: '2-digit' });
    li.append(who, body, time);
  }
  log.append(li);
  if (mine) state.chatFollow = true;
  if (state.chatFollow) {
    log.scrollTop = log.scrollHeight;
  } else {
    $('chat-jump').hidden = false;
  }
  if (!system && !mine && !chatVisible()) {
    state.unread += 1;
    renderUnread();
  }
  return li;
}

export function chatVisible() {
  if (isPhone()) return state.panel === 'chat';
  return state.sidebarOpen;
}

export function renderUnread() {
  const el = $('unread-badge');
  el.hidden = state.unread === 0;
  el.textContent = state.unread > 99 ? '99+' : String(state.unread);
  $('unread-text').textContent = state.unread ? `, ${state.unread} unread` : '';
  document.title = `${state.unread ? `(${state.unread}) ` : ''}${state.room ? `${state.room} · ` : ''}switchboard`;
}

export function setupChat(session, channel) {
  session.chat = channel;
  mirror(session);
  channel.onopen = () => updateCallControls();
  channel.onclose = () => updateCallControls();
  channel.onmessage = (event) => {
    let message;
    try { message = JSON.parse(event.data); } catch { return; }
    if (message.type === 'chat') {
      appendChat(message);
    } else if (message.type === 'error') {
      // The server refused our last message: say so on it.
      const mine = [...$('chat-log').querySelectorAll('li.mine:not(.failed)')].pop();
      if (mine) {
        mine.classList.add('failed');
        const note = document.createElement('span');
        note.className = 'failed-note';
        note.textContent = `not delivered: ${message.message}`;
        mine.append(note);
      }
      toast(`Chat: ${message.message}`);
    }
  };
  updateCallControls();
}

export function chatOpen() {
  return state.phase === 'connected' && state.chat && state.chat.readyState === 'open';
}

export function updateChatCounter() {
  const input = $('chat-input');
  const bytes = utf8Length(input.value.trim());
  const note = $('chat-note');
  if (bytes > MAX_CHAT_BYTES) {
    note.textContent = `Too long: ${bytes} of ${MAX_CHAT_BYTES} bytes. Shorten the message to send it.`;
    note.classList.add('bad');
  } else if (bytes > MAX_CHAT_BYTES * 0.8) {
    note.textContent = `${MAX_CHAT_BYTES - bytes} bytes left`;
    note.classList.remove('bad');
  } else if (!note.dataset.sticky) {
    note.textContent = '';
    note.classList.remove('bad');
  }
  $('chat-send').disabled = !chatOpen() || bytes === 0 || bytes > MAX_CHAT_BYTES;
  if (input.offsetParent) {
    input.style.height = 'auto';
    input.style.height = `${Math.min(input.scrollHeight + 2, 128)}px`;
  }
}

export function chatNote(text, bad = true) {
  const note = $('chat-note');
  note.textContent = text;
  note.classList.toggle('bad', bad);
  note.dataset.sticky = text ? '1' : '';
}

function sendChat() {
  const input = $('chat-input');
  const text = input.value.trim();
  if (!text) return;
  if (utf8Length(text) > MAX_CHAT_BYTES) {
    chatNote(`Not sent: the message is over ${MAX_CHAT_BYTES} bytes.`);
    return;
  }
  if (!chatOpen()) {
    chatNote('Not sent: you are not connected. The message stays here until you are back.');
    return;
  }
  try {
    state.chat.send(JSON.stringify({ text }));
  } catch (err) {
    chatNote(`Not sent: ${err.message}`);
    return;
  }
  chatNote('');
  appendChat({ text, mine: true, ts: Date.now() });
  input.value = '';
  updateChatCounter();
}

/** The message box (Enter sends, Shift+Enter is a new line) and the log that follows new messages. */
export function wireChat() {
  $('chat-form').addEventListener('submit', (e) => {
    e.preventDefault();
    sendChat();
  });
  $('chat-input').addEventListener('keydown', (e) => {
    if (e.key === 'Enter' && !e.shiftKey && !e.isComposing) {
      e.preventDefault();
      sendChat();
    }
  });
  $('chat-input').addEventListener('input', () => {
    if ($('chat-note').dataset.sticky) chatNote('', false);
    updateChatCounter();
  });
  // The chat follows new messages unless the reader scrolled up to read older ones.
  $('chat-log').addEventListener('scroll', () => {
    const log = $('chat-log');
    if (!log.clientHeight) return; // hidden (a closed drawer): keep following
    state.chatFollow = log.scrollHeight - log.scrollTop - log.clientHeight < 40;
    if (state.chatFollow) $('chat-jump').hidden = true;
  });
  $('chat-jump').addEventListener('click', () => {
    const log = $('chat-log');
    state.chatFollow = true;
    log.scrollTop = log.scrollHeight;
    $('chat-jump').hidden = true;
  });
  new ResizeObserver(() => {
    const log = $('chat-log');
    if (state.chatFollow && log.clientHeight) log.scrollTop = log.scrollHeight;
  }).observe($('chat-log'));
}
