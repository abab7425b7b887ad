// The stage: where each tile goes (layout.js computes the geometry), the order of the tiles,
// grid or speaker view, the spotlight and pins.

import { computeLayout } from './layout.js';
import { state } from './state.js';
import { $, isPhone } from './ui.js';
import { wireTileActions } from './tiles.js';
import { localScreenTile } from './localmedia.js';

let layoutQueued = false;
export function scheduleLayout() {
  if (layoutQueued) return;
  layoutQueued = true;
  // A timer, not requestAnimationFrame: a page in a background tab still lays out its tiles.
  setTimeout(() => {
    layoutQueued = false;
    layout();
  }, 0);
}

function tileElement(key) {
  if (key === 'local') return $('local-tile');
  if (key === 'local:screen') return localScreenTile ? localScreenTile.tile : null;
  if (key.endsWith(':screen')) {
    const person = state.people.get(key.slice(0, -7));
    return person && person.screen ? person.screen.tile : null;
  }
  const person = state.people.get(key);
  return person ? person.tile : null;
}

/** Tile keys in display order: screens first, then people in join order, recent speakers pulled forward. */
function tileKeys() {
  const keys = [];
  for (const [id, person] of state.people) if (person.screen) keys.push(`${id}:screen`);
  if (localScreenTile) keys.push('local:screen');
  keys.push('local');
  for (const id of remoteOrder()) keys.push(id);
  return keys;
}

// Remote people in display order: join order, except that someone who speaks while out of
// view is moved to the front.
let order = [];
function remoteOrder() {
  order = order.filter((id) => state.people.has(id));
  for (const id of state.people.keys()) if (!order.includes(id)) order.push(id);
  return order;
}

export function bringIntoView(id) {
  const el = tileElement(id);
  if (el && !el.hidden) return;
  order = [id, ...order.filter((x) => x !== id)];
  scheduleLayout();
}

function spotlightKey(keys) {
  if (state.pinned && keys.includes(state.pinned)) return state.pinned;
  const screens = keys.filter((k) => k.endsWith(':screen') && k !== 'local:screen');
  if (screens.length) return screens[0];
  if (state.activeSpeaker && keys.includes(state.activeSpeaker)) return state.activeSpeaker;
  const remote = keys.find((k) => state.people.has(k));
  return remote || keys.find((k) => k === 'local:screen') || 'local';
}

function layout() {
  const stage = $('stage');
  const rect = stage.getBoundingClientRect();
  const keys = tileKeys();
  const spot = spotlightKey(keys);
  const phone = isPhone();
  const result = computeLayout({
    width: rect.width,
    height: rect.height,
    keys,
    view: state.view,
    spotlight: spot,
    gap: phone ? 6 : 8,
    minTileWidth: phone ? 96 : 140,
    phone,
  });
  const shown = new Set();
  for (const [key, r] of result.rects) {
    const el = tileElement(key);
    if (!el) continue;
    shown.add(el);
    el.hidden = false;
    el.style.width = `${r.w}px`;
    el.style.height = `${r.h}px`;
    el.style.transform = `translate(${r.x}px, ${r.y}px)`;
    el.classList.toggle('spot', result.view === 'speaker' && key === spot);
    el.classList.toggle('pinned', state.pinned === key);
    const pin = el.querySelector('.pin-btn');
    if (pin) pin.setAttribute('aria-pressed', String(state.pinned === key));
  }
  for (const key of keys) {
    const el = tileElement(key);
    if (el && !shown.has(el)) el.hidden = true;
  }
  const overflow = $('overflow-tile');
  if (result.overflow && result.overflow.rect) {
    const r = result.overflow.rect;
    overflow.hidden = false;
    overflow.textContent = `+${result.overflow.count} more`;
    overflow.setAttribute('aria-label', `${result.overflow.count} more people: show the people list`);
    overflow.style.width = `${r.w}px`;
    overflow.style.height = `${r.h}px`;
    overflow.style.transform = `translate(${r.x}px, ${r.y}px)`;
  } else {
    overflow.hidden = true;
  }
  document.body.classList.toggle('view-speaker', result.view === 'speaker');
  $('alone-hint').hidden = !(state.phase === 'connected' && state.people.size === 0);
  const layoutBtn = $('layout-btn');
  layoutBtn.setAttribute('aria-pressed', String(result.view === 'speaker'));
  layoutBtn.title = result.view === 'speaker' ? 'Back to the grid (L)' : 'Speaker view: the active speaker large (L)';
}

export function setView(view) {
  state.view = view;
  autoSpeaker = false;
  scheduleLayout();
}

// A new remote screen share switches to speaker view with the share in the spotlight; when the
// last share ends the previous view comes back, unless the user picked a view meanwhile.
let autoSpeaker = false;
let viewBeforeShare = 'grid';
let sharesSeen = 0;
export function updateAutoView() {
  const shares = [...state.people.values()].filter((p) => p.screen).length;
  if (shares > sharesSeen) {
    if (!autoSpeaker) viewBeforeShare = state.view;
    autoSpeaker = true;
    state.view = 'speaker';
  } else if (shares === 0 && autoSpeaker) {
    autoSpeaker = false;
    state.view = viewBeforeShare;
  }
  sharesSeen = shares;
}

export function togglePin(key) {
  state.pinned = state.pinned === key ? null : key;
  if (state.pinned) state.view = 'speaker';
  scheduleLayout();
}

/** Lays the stage out again when its size changes; the pin and full-screen buttons of your own tile. */
export function wireStage() {
  new ResizeObserver(() => scheduleLayout()).observe($('stage'));
  wireTileActions($('local-tile'), 'local');
}
