// Joining: the invite link, the pre-join screen (join muted), leaving for good, the sound
// prompt when the browser blocks autoplay, and an accessibility check of lobby and call.

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import {
  startServer, launchBrowser, openPage, openUrl, waitForTiles, waitForVideo, waitForChatOpen, rooms, shot, sleep,
} from './harness.mjs';

const require = createRequire(import.meta.url);
const AXE = readFileSync(require.resolve('axe-core/axe.min.js'), 'utf8');

let server;
let browser;

before(async () => {
  server = await startServer();
  browser = await launchBrowser();
});

after(async () => {
  if (browser) await browser.close();
  if (server) await server.stop();
});

async function roomNames(room) {
  const r = (await rooms(server.url)).find((x) => x.name === room);
  return r ? r.participants.map((p) => p.name).sort() : [];
}

async function waitForRoom(room, names, timeout = 10_000) {
  const want = JSON.stringify([...names].sort());
  const deadline = Date.now() + timeout;
  let got = [];
  while (Date.now() < deadline) {
    got = await roomNames(room);
    if (JSON.stringify(got) === want) return;
    await sleep(200);
  }
  assert.deepEqual(got, [...names].sort(), `people in ${room}`);
}

test('the invite link opens the pre-join screen; a guest joins muted; leaving does not rejoin on reload', async () => {
  await browser.context.grantPermissions(['clipboard-read', 'clipboard-write'], { origin: server.url });
  const host = await openPage(browser.context, server.url, 'invite', 'Hostname');
  await host.waitForFunction(() => window.switchboard.me !== null, null, { timeout: 10_000 });
  const address = new URL(host.url());
  assert.equal(address.searchParams.get('name'), null, 'the name is gone from the address bar');
  assert.equal(address.searchParams.get('room'), 'invite');
  assert.equal(await host.title(), 'invite · switchboard', 'the room name is in the tab title');

  await host.click('#invite-btn');
  const link = await host.evaluate(() => navigator.clipboard.readText());
  assert.equal(link, `${server.url}/?room=invite`, 'the copied link is the room without a name');

  // The guest opens the link: the pre-join screen, not a call under someone else's name.
  const guest = await openUrl(browser.context, link, 'guest');
  await guest.waitForSelector('#join-form', { state: 'visible' });
  assert.equal(await guest.isVisible('#call'), false, 'not in the call yet');
  assert.equal(await guest.inputValue('#room-input'), 'invite');
  assert.match(await guest.textContent('#join-title'), /invite/);
  await guest.waitForFunction(() => document.getElementById('preview-video').videoWidth > 0, null, { timeout: 10_000 });
  await sleep(500);
  assert.deepEqual(await roomNames('invite'), ['Hostname'], 'opening the link joined nobody');
  await shot(guest, 'invite-link-prejoin');

  // Join with microphone and camera off: the host sees both muted once the guest publishes.
  await guest.fill('#name-input', 'Guest');
  await guest.click('#pre-mic-btn');
  await guest.click('#pre-cam-btn');
  assert.equal(await guest.getAttribute('#pre-mic-btn', 'aria-pressed'), 'true');
  await guest.click('#join-btn');
  await waitForTiles(host, ['Guest']);
  await host.waitForFunction(() => {
    const tile = [...document.querySelectorAll('.tile.remote')].find((t) => t.querySelector('.name').textContent === 'Guest');
    return tile && tile.querySelector('.badge.mic')?.textContent === 'mic muted' && tile.querySelector('.badge.cam')?.textContent === 'camera off';
  }, null, { timeout: 15_000 });
  assert.equal(await guest.getAttribute('#mic-btn', 'aria-pressed'), 'true', 'the guest\'s mic button shows muted');
  // The M shortcut unmutes; the host sees it.
  await guest.locator('body').press('m');
  await host.waitForFunction(() => {
    const tile = [...document.querySelectorAll('.tile.remote')].find((t) => t.querySelector('.name').textContent === 'Guest');
    return tile && !tile.querySelector('.badge.mic');
  }, null, { timeout: 10_000 });

  // Leave, then reload: the lobby, not the call again.
  await host.click('#leave-btn');
  await host.waitForSelector('#join-form', { state: 'visible' });
  await host.reload();
  await host.waitForSelector('#join-form', { state: 'visible' });
  await sleep(1000);
  assert.equal(await host.isVisible('#call'), false, 'a reload after leaving shows the lobby');
  await waitForRoom('invite', ['Guest']);

  await guest.close();
  await host.close();
  assert.deepEqual([...host.errors, ...guest.errors], [], 'no page errors');
});

test('a guest whose browser blocks autoplay gets a prompt, and after the click the call plays', async () => {
  const host = await openPage(browser.context, server.url, 'autoplay', 'host');
  await host.waitForFunction(() => window.switchboard.me !== null, null, { timeout: 10_000 });
  // Chromium's own autoplay policy, and no camera permission (so no capture that would allow sound).
  const strict = await launchBrowser({ autoplay: false, fakeUi: false });
  try {
    const guest = await strict.context.newPage();
    const consoleLines = [];
    const blocked = new Promise((resolve) => {
      guest.on('console', (m) => {
        consoleLines.push(m.text());
        if (m.text().includes('blocked audio playback')) resolve();
      });
    });
    guest.errors = [];
    guest.on('pageerror', (err) => guest.errors.push(err.message));
    // Nothing here may touch the page before the prompt shows: a script run by the test counts
    // as a user gesture and would let the sound play.
    await guest.goto(`${server.url}/?room=autoplay&name=guest`);
    await waitForTiles(host, ['guest']);
    await Promise.race([blocked, sleep(15_000).then(() => { throw new Error('no autoplay prompt in 15 s'); })]);
    assert.equal(await guest.isVisible('#audio-prompt'), true, 'the enable-audio prompt is shown');
    await shot(guest, 'autoplay-blocked-prompt');
    await guest.click('#audio-enable');
    const playing = () => guest.evaluate(() => {
      const els = [...document.querySelectorAll('#audio-sinks audio, .tile.remote video')];
      return {
        ok: els.length === 2 && els.every((el) => el.srcObject && !el.paused && el.readyState >= 2),
        els: els.map((el) => `${el.tagName} tracks=${el.srcObject ? el.srcObject.getTracks().length : 0} paused=${el.paused} readyState=${el.readyState}`),
      };
    });
    const deadline = Date.now() + 10_000;
    let state = await playing();
    while (!state.ok && Date.now() < deadline) {
      await sleep(200);
      state = await playing();
    }
    if (!state.ok) {
      const stats = await guest.evaluate(async () => {
        const out = [];
        const sb = window.switchboard;
        out.push(`session ${sb.session && sb.session.id} phase ${sb.phase} sub ${sb.subscriber && sb.subscriber.connectionState}`);
        if (sb.subscriber) {
          (await sb.subscriber.getStats()).forEach((r) => {
            if (r.type === 'inbound-rtp') out.push(`${r.kind} mid=${r.mid} packets=${r.packetsReceived} frames=${r.framesReceived} decoded=${r.framesDecoded} keyframes=${r.keyFramesDecoded} pli=${r.pliCount} nack=${r.nackCount}`);
          });
        }
        return out;
      });
      console.log([...stats, ...consoleLines].join('\n'));
    }
    assert.ok(state.ok, `remote media plays after the click: ${state.els.join('; ')}`);
    assert.equal(await guest.isVisible('#audio-prompt'), false, 'the prompt is gone');
    await waitForVideo(guest, 1);
    await guest.close();
    assert.deepEqual(guest.errors, [], 'no page errors');
  } finally {
    await strict.close();
  }
  await host.close();
});

async function axe(page, label) {
  // Evaluated, not added as a script tag: the server's Content-Security-Policy refuses inline
  // scripts, and evaluation through the browser's protocol is not subject to it.
  await page.evaluate(`${AXE}\n;void 0`);
  const result = await page.evaluate(() => window.axe.run(document, {
    runOnly: { type: 'tag', values: ['wcag2a', 'wcag2aa', 'wcag21a', 'wcag21aa', 'wcag22aa'] },
  }));
  const violations = result.violations.map((v) => `${label}: ${v.id} (${v.impact}): ${v.help} — ${v.nodes.map((n) => n.target.join(' ')).slice(0, 5).join(', ')}`);
  return violations;
}

test('axe finds no WCAG A/AA violation (contrast, labels, names) in the lobby or the call', async () => {
  const lobby = await openUrl(browser.context, `${server.url}/?room=axe`, 'lobby');
  await lobby.waitForFunction(() => document.getElementById('preview-video').videoWidth > 0, null, { timeout: 10_000 });
  await lobby.click('#device-details summary');
  const found = await axe(lobby, 'lobby');

  const a = await openPage(browser.context, server.url, 'axe', 'ann');
  const b = await openPage(browser.context, server.url, 'axe', 'ben');
  await waitForTiles(a, ['ben']);
  await waitForVideo(a, 1);
  await waitForChatOpen(a);
  await waitForChatOpen(b);
  await b.fill('#chat-input', 'see https://example.org/agenda for the agenda');
  await b.press('#chat-input', 'Enter');
  await a.waitForSelector('#chat-log a[href="https://example.org/agenda"]');
  // Markup in a message stays text; only http(s) links become links.
  const hostile = '<img src=x onerror="window.pwned=1"> javascript:alert(1) <a href="javascript:alert(2)">x</a>';
  await b.fill('#chat-input', hostile);
  await b.press('#chat-input', 'Enter');
  await a.waitForFunction((t) => [...document.querySelectorAll('#chat-log .text')].some((e) => e.textContent === t), hostile);
  assert.equal(await a.$$eval('#chat-log img', (els) => els.length), 0, 'no element from message text');
  assert.deepEqual(await a.$$eval('#chat-log a', (els) => els.map((e) => e.getAttribute('href'))), ['https://example.org/agenda']);
  assert.equal(await a.evaluate(() => window.pwned), undefined);
  await a.click('#mic-btn');
  found.push(...await axe(a, 'call'));
  await a.setViewportSize({ width: 390, height: 844 });
  await a.click('#chat-btn');
  found.push(...await axe(a, 'phone chat drawer'));
  await a.click('#chat-panel .drawer-close');
  await a.click('#settings-btn');
  found.push(...await axe(a, 'settings dialog'));
  assert.deepEqual(found, [], 'axe violations');
  await lobby.close();
  await a.close();
  await b.close();
});
