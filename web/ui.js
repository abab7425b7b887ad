// Small page helpers: element lookup, the status line and toasts, initials, icons and badges,
// the phone-width test, the invite link.

import { state } from './state.js';

export const $ = (id) => document.getElementById(id);

export function setStatus(text, bad = false) {
  const el = $('status');
  el.textContent = text;
  el.classList.toggle('bad', bad);
}

let toastTimer = null;
export function toast(text, { info = false } = {}) {
  const el = $('toast');
  el.textContent = text;
  el.classList.toggle('info', info);
  el.hidden = false;
  clearTimeout(toastTimer);
  toastTimer = setTimeout(() => { el.hidden = true; }, 6000);
}

/** "Zoë (Firefox)" → "ZF": the first letter or digit of the first two words that have one. */
export function initials(name) {
  const words = (name || '').split(/\s+/).filter(Boolean);
  const letters = words.map((w) => w.match(/[\p{L}\p{N}]/u)).filter(Boolean).map((m) => m[0]);
  if (letters.length) return letters.slice(0, 2).join('').toUpperCase();
  return words.length ? [...words[0]][0] : '?';
}

export function svgIcon(name, extraClass = '') {
  const ns = 'http://www.w3.org/2000/svg';
  const svg = document.createElementNS(ns, 'svg');
  svg.setAttribute('class', `icon ${extraClass}`.trim());
  svg.setAttribute('aria-hidden', 'true');
  const use = document.createElementNS(ns, 'use');
  use.setAttribute('href', `#i-${name}`);
  svg.append(use);
  return svg;
}

export function badge(text, kind) {
  const b = document.createElement('span');
  b.className = `badge ${kind}`;
  b.textContent = text;
  return b;
}

export function isPhone() {
  return window.matchMedia('(max-width: 720px)').matches;
}

export function inviteLink() {
  const url = new URL(window.location.href);
  url.search = '';
  url.hash = '';
  if (state.room || $('room-input').value.trim()) url.searchParams.set('room', state.room || $('room-input').value.trim());
  if (state.token) url.searchParams.set('token', state.token);
  return url.href;
}

export async function copyInvite(button) {
  const link = inviteLink();
  let ok = false;
  try {
    await navigator.clipboard.writeText(link);
    ok = true;
  } catch {
    ok = false;
  }
  if (ok) {
    toast('Invite link copied. Anyone with it can join this room.', { info: true });
  } else {
    // No clipboard access: show the link so it can be copied by hand.
    window.prompt('Copy this invite link', link);
  }
  if (button) {
    button.dataset.copied = ok ? 'true' : 'false';
  }
  return link;
}
