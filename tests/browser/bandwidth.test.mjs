// Who speaks, measured in real Chromium pages: three pages, one of which has a loud tone as
// its microphone and two silence (wav files made here with ffmpeg); the others are told by the
// server (`speakers`) that the loud one speaks, and show it; when it mutes, the server stops
// naming it. Every figure measured is printed (`# ...` lines).

import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { startServer, launchBrowser, shot, sleep } from './harness.mjs';

const work = mkdtempSync(join(tmpdir(), 'switchboard-bwe-'));
after(() => rmSync(work, { recursive: true, force: true }));

/**
 * What a test must undo when it ends, pass or fail: run last first (pages and browsers before
 * the server, namespaces last), so the next test has the machine to itself.
 */
function cleanupsOf(t) {
  const list = [];
  t.after(async () => {
    for (const fn of list.reverse()) {
      try { await fn(); } catch (err) { console.error(`# cleanup: ${err.message}`); }
    }
  });
  return list;
}

const log = (line) => console.log(`# ${line}`);
const ms = (t) => `${Math.round(t)} ms`;

function wav(name, source) {
  const path = join(work, name);
  execFileSync('ffmpeg', ['-hide_banner', '-loglevel', 'error', '-y', '-f', 'lavfi', '-i', source, '-t', '90', '-ar', '48000', '-ac', '1', path]);
  return path;
}

/**
 * Opens the client in room `room` as `name` (which joins at once), recording every message the
 * page receives on its signaling socket as { at, m } in page.received.
 */
async function openTracked(context, baseUrl, room, name, { noDevices = false } = {}) {
  const page = await context.newPage();
  page.label = name;
  page.errors = [];
  page.received = [];
  page.on('pageerror', (err) => {
    page.errors.push(err.message);
    console.error(`[${name}] page error: ${err.message}`);
  });
  page.responses = [];
  page.on('response', (response) => page.responses.push(`${response.status()} ${new URL(response.url()).pathname}`));
  page.on('requestfailed', (request) => console.error(`[${name}] request failed: ${request.url()} ${request.failure()?.errorText}`));
  page.on('console', (msg) => { if (msg.type() === 'error') console.error(`[${name}] console: ${msg.text()}`); });
  page.on('websocket', (ws) => {
    ws.on('framereceived', ({ payload }) => {
      try {
        page.received.push({ at: Date.now(), m: JSON.parse(String(payload)) });
      } catch { /* not JSON */ }
    });
  });
  if (noDevices) {
    await page.addInitScript(() => {
      navigator.mediaDevices.getUserMedia = () => Promise.reject(new DOMException('Requested device not found', 'NotFoundError'));
    });
  }
  page.openedAt = Date.now();
  await page.goto(`${baseUrl}/?room=${encodeURIComponent(room)}&name=${encodeURIComponent(name)}`);
  return page;
}

/** The `joined` message the page received: { at, id }. */
async function joinedOf(page, timeout = 20_000) {
  const deadline = Date.now() + timeout;
  for (;;) {
    const hit = page.received.find((r) => r.m.type === 'joined');
    if (hit) return { at: hit.at, id: hit.m.participant.id };
    if (Date.now() > deadline) {
      const seen = await page.evaluate(() => `phase ${window.switchboard && window.switchboard.phase}, status "${document.getElementById('status')?.textContent}"`).catch((err) => err.message);
      await shot(page, `bandwidth-${page.label}-not-joined`).catch(() => {});
      throw new Error(`${page.label}: no joined message in ${timeout} ms (${seen}; ${page.received.length} messages received; responses: ${page.responses.join(', ')})`);
    }
    await sleep(100);
  }
}

const speakersMessages = (page) => page.received.filter((r) => r.m.type === 'speakers');

/** Resolves with the first received message (index >= from) that pred accepts. */
async function waitForMessage(page, pred, { from = 0, timeout = 15_000, what = 'message' } = {}) {
  const deadline = Date.now() + timeout;
  for (;;) {
    const hit = page.received.slice(from).find(pred);
    if (hit) return hit;
    if (Date.now() > deadline) {
      const seen = speakersMessages(page).slice(-5).map((r) => JSON.stringify(r.m.speakers));
      throw new Error(`${page.label}: no ${what} in ${timeout} ms (last speakers: ${seen.join(' ')})`);
    }
    await sleep(100);
  }
}

test('the speaker follows the page that plays sound, and stops when it mutes', async (t) => {
  const cleanups = cleanupsOf(t);
  const tone = wav('tone.wav', 'sine=frequency=440:duration=90');
  const silence = wav('silence.wav', 'anullsrc=r=48000:cl=mono');
  const server = await startServer();
  cleanups.push(() => server.stop());
  const mdnsOff = '--disable-features=WebRtcHideLocalIpsWithMdns';
  const browsers = await Promise.all([tone, silence, silence].map((file) => launchBrowser({
    args: [`--use-file-for-fake-audio-capture=${file}`, mdnsOff],
  })));
  for (const b of browsers) cleanups.push(() => b.close());
  const [a, b, c] = await Promise.all(['A', 'B', 'C'].map((name, i) => openTracked(browsers[i].context, server.url, 'speakers', name)));
  const [ja, jb, jc] = await Promise.all([a, b, c].map((p) => joinedOf(p)));
  log(`participant ids: A ${ja.id}, B ${jb.id}, C ${jc.id}`);

  // B and C are told that A speaks: A first in the list.
  const namesA = (r) => r.m.type === 'speakers' && r.m.speakers.length > 0 && r.m.speakers[0].participant_id === ja.id;
  const [fb, fc] = await Promise.all([
    waitForMessage(b, namesA, { timeout: 20_000, what: 'speakers naming A first' }),
    waitForMessage(c, namesA, { timeout: 20_000, what: 'speakers naming A first' }),
  ]);
  log(`first speakers naming A: at B ${ms(fb.at - ja.at)} after A joined (${ms(fb.at - jb.at)} after B joined), `
    + `at C ${ms(fc.at - ja.at)} after A joined (${ms(fc.at - jc.at)} after C joined): ${JSON.stringify(fb.m.speakers)}`);
  // Nobody silent is ever named.
  for (const p of [b, c]) {
    for (const r of speakersMessages(p)) {
      for (const s of r.m.speakers) assert.notEqual(s.participant_id, p === b ? jc.id : jb.id, `${p.label} was told a silent page speaks: ${JSON.stringify(r.m)}`);
    }
  }
  assert.ok(speakersMessages(a).every((r) => r.m.speakers.every((s) => s.participant_id === ja.id)), 'A is told of no other speaker');

  // B's page shows it: A's tile and A's entry in the people list are marked `speaking` (stats.js,
  // people.js), A's tile is the active speaker; C's tile is not marked.
  const shown = () => b.evaluate(({ aid, cid }) => ({
    tile: document.querySelector(`.tile.remote[data-participant-id="${aid}"]`)?.classList.contains('speaking') ?? null,
    active: document.querySelector(`.tile.remote[data-participant-id="${aid}"]`)?.classList.contains('active-speaker') ?? null,
    person: document.querySelector(`#people li[data-participant-id="${aid}"]`)?.classList.contains('speaking') ?? null,
    other: document.querySelector(`.tile.remote[data-participant-id="${cid}"]`)?.classList.contains('speaking') ?? null,
  }), { aid: ja.id, cid: jc.id });
  await b.waitForFunction((aid) => {
    const tile = document.querySelector(`.tile.remote[data-participant-id="${aid}"]`);
    const person = document.querySelector(`#people li[data-participant-id="${aid}"]`);
    return tile && tile.classList.contains('speaking') && tile.classList.contains('active-speaker') && person && person.classList.contains('speaking');
  }, ja.id, { timeout: 5_000 }).catch(() => {});
  const marks = await shown();
  log(`B's page: A's tile speaking=${marks.tile} active-speaker=${marks.active}, A in people list speaking=${marks.person}, C's tile speaking=${marks.other}`);
  assert.deepEqual(marks, { tile: true, active: true, person: true, other: false }, 'B shows A speaking, and only A');
  await shot(b, 'bandwidth-speaker-A-seen-by-B');

  // A mutes (its mic button): the server stops naming A.
  const fromB = b.received.length;
  const fromC = c.received.length;
  const mutedAt = Date.now();
  await a.click('#mic-btn');
  const noA = (r) => r.m.type === 'speakers' && !r.m.speakers.some((s) => s.participant_id === ja.id);
  const [sb, sc] = await Promise.all([
    waitForMessage(b, noA, { from: fromB, timeout: 5_000, what: 'speakers without A after A muted' }),
    waitForMessage(c, noA, { from: fromC, timeout: 5_000, what: 'speakers without A after A muted' }),
  ]);
  log(`after A muted: B told ${JSON.stringify(sb.m.speakers)} after ${ms(sb.at - mutedAt)}, C told ${JSON.stringify(sc.m.speakers)} after ${ms(sc.at - mutedAt)}`);
  await b.waitForFunction((aid) => !document.querySelector(`.tile.remote[data-participant-id="${aid}"]`)?.classList.contains('speaking'), ja.id, { timeout: 5_000 });
  // And stays so: nothing after that names A again.
  await sleep(2_000);
  for (const [p, s] of [[b, sb], [c, sc]]) {
    const later = p.received.filter((r) => r.at >= s.at && r.m.type === 'speakers' && r.m.speakers.some((x) => x.participant_id === ja.id));
    assert.deepEqual(later.map((r) => r.m.speakers), [], `${p.label}: A named again after muting`);
  }
  for (const p of [a, b, c]) assert.deepEqual(p.errors, [], `${p.label}: no page errors`);
});
