// The people list: you and everyone else in the call, with microphone, camera and screen-share
// state and who is speaking.

import { state } from './state.js';
import { $, initials, svgIcon } from './ui.js';
import { trackInfo } from './tiles.js';
import { localTrack } from './localmedia.js';
import { isSpeaking } from './stats.js';

export function renderPeople() {
  const list = $('people');
  const items = [];
  const me = document.createElement('li');
  me.dataset.participantId = state.me ? state.me.id : '';
  me.classList.toggle('speaking', state.localSpeaking);
  items.push(personItem(me, state.me ? state.me.name : state.name || '', true, {
    micMuted: !localTrack('audio') ? null : !state.micOn,
    camOff: !localTrack('video') ? null : !state.camOn,
  }));
  for (const [id, person] of state.people) {
    const li = document.createElement('li');
    li.dataset.participantId = id;
    li.classList.toggle('speaking', state.activeSpeaker === id && isSpeaking(person));
    const audio = trackInfo(person, 'audio');
    const video = trackInfo(person, 'video');
    items.push(personItem(li, person.name, false, {
      micMuted: audio ? audio.muted : null,
      camOff: video ? video.muted : null,
      screen: Boolean(person.screen),
    }));
  }
  list.replaceChildren(...items);
  const count = String(state.people.size + 1);
  $('people-count').textContent = `(${count})`;
  $('people-btn').title = `People: ${count} in the call (P)`;
}

function personItem(li, name, you, { micMuted, camOff, screen = false }) {
  const avatar = document.createElement('span');
  avatar.className = 'mini-avatar';
  avatar.setAttribute('aria-hidden', 'true');
  avatar.textContent = initials(name);
  const label = document.createElement('span');
  label.className = 'pname';
  label.textContent = name;
  if (you) {
    const y = document.createElement('span');
    y.className = 'you';
    y.textContent = ' (you)';
    label.append(y);
  }
  const st = document.createElement('span');
  st.className = 'state';
  const micIcon = svgIcon(micMuted === false ? 'mic' : 'mic-off', micMuted === false ? '' : 'off');
  micIcon.setAttribute('role', 'img');
  micIcon.removeAttribute('aria-hidden');
  micIcon.setAttribute('aria-label', micMuted === null ? 'no microphone' : micMuted ? 'microphone muted' : 'microphone on');
  const camIcon = svgIcon(camOff === false ? 'cam' : 'cam-off', camOff === false ? '' : 'off');
  camIcon.setAttribute('role', 'img');
  camIcon.removeAttribute('aria-hidden');
  camIcon.setAttribute('aria-label', camOff === null ? 'no camera' : camOff ? 'camera off' : 'camera on');
  st.append(micIcon, camIcon);
  if (screen) {
    const s = svgIcon('screen');
    s.setAttribute('role', 'img');
    s.removeAttribute('aria-hidden');
    s.setAttribute('aria-label', 'sharing the screen');
    st.append(s);
  }
  li.append(avatar, label, st);
  return li;
}
