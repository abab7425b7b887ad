// The web client proven in a real browser: three headless Chromium pages in one call.

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { join } from 'node:path';
import {
  artifacts, startServer, launchBrowser, openPage, remoteNames, inboundStats,
  waitForChatOpen, rooms, sleep,
} from './harness.mjs';

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

/** Waits until a page shows exactly these remote names. */
async function waitForTiles(page, names, timeout = 20_000) {
  const want = [...names].sort();
  const deadline = Date.now() + timeout;
  let got = [];
  while (Date.now() < deadline) {
    got = await remoteNames(page);
    if (JSON.stringify(got) === JSON.stringify(want)) return;
    await sleep(200);
  }
  assert.deepEqual(got, want, 'remote tiles');
}

/** Every remote tile's video has dimensions, and media counters rise between two samples. */
async function assertMediaFlows(page, label, remotes) {
  await page.waitForFunction(
    (n) => {
      const videos = [...document.querySelectorAll('.tile.remote video')];
      return videos.length === n && videos.every((v) => v.videoWidth > 0);
    },
    remotes,
    { timeout: 20_000 },
  );
  const first = await inboundStats(page);
  await sleep(1500);
  const second = await inboundStats(page);
  const rising = (kind, field) => second.filter((s) => {
    const before = first.find((f) => f.id === s.id);
    return s.kind === kind && before && s[field] > before[field];
  }).length;
  assert.equal(rising('video', 'framesDecoded'), remotes, `${label}: framesDecoded rising on ${remotes} video streams`);
  assert.equal(rising('audio', 'totalSamplesReceived'), remotes, `${label}: audio samples rising on ${remotes} streams`);
}

test('three participants see and hear each other, chat, mute, and leave', async () => {
  const names = ['alice', 'bob', 'carol'];
  const pages = {};
  for (const name of names) pages[name] = await openPage(browser.context, server.url, 'standup', name);

  for (const name of names) {
    await waitForTiles(pages[name], names.filter((n) => n !== name));
  }
  for (const name of names) await assertMediaFlows(pages[name], name, 2);
  await pages.bob.screenshot({ path: join(artifacts, 'three-party-call.png') });

  // Chat typed into alice's box reaches bob and carol under alice's name.
  for (const name of names) await waitForChatOpen(pages[name]);
  await pages.alice.fill('#chat-input', 'Morning, all!');
  await pages.alice.click('#chat-send');
  for (const name of ['bob', 'carol']) {
    await pages[name].waitForFunction(
      () => [...document.querySelectorAll('#chat-log li')].some((li) =>
        li.querySelector('.from')?.textContent === 'alice' && li.querySelector('.text')?.textContent === 'Morning, all!'),
      null, { timeout: 10_000 },
    );
  }
  const aliceLog = await pages.alice.$$eval('#chat-log li .from', (els) => els.map((e) => e.textContent));
  assert.deepEqual(aliceLog, ['You'], 'alice sees her own message once, as You');

  // Alice turns her camera off: the others show it.
  await pages.alice.click('#cam-btn');
  for (const name of ['bob', 'carol']) {
    await pages[name].waitForFunction(
      () => [...document.querySelectorAll('.tile.remote')].some((t) =>
        t.querySelector('.name').textContent === 'alice' && t.querySelector('.badge.cam')?.textContent === 'camera off'),
      null, { timeout: 10_000 },
    );
  }

  // Someone in another room sees nobody from this one, and nobody here sees them.
  const dave = await openPage(browser.context, server.url, 'elsewhere', 'dave');
  await dave.waitForFunction(() => window.switchboard.me !== null, null, { timeout: 10_000 });
  await sleep(1500);
  assert.deepEqual(await remoteNames(dave), [], 'dave sees nobody');
  assert.deepEqual(await remoteNames(pages.alice), ['bob', 'carol'], 'alice does not see dave');

  // Bob leaves with the button; carol's tab dies.
  await pages.bob.click('#leave-btn');
  await pages.carol.close({ runBeforeUnload: false });
  await waitForTiles(pages.alice, [], 8_000);
  const standup = (await rooms(server.url)).find((r) => r.name === 'standup');
  assert.ok(standup, 'the room still exists with alice in it');
  assert.deepEqual(standup.participants.map((p) => p.name), ['alice']);
  assert.equal(await pages.bob.isVisible('#join-form'), true, 'bob is back at the join form');

  await pages.alice.close();
  await dave.close();
  await pages.bob.close();
  const deadline = Date.now() + 10_000;
  while ((await rooms(server.url)).length > 0 && Date.now() < deadline) await sleep(200);
  assert.deepEqual(await rooms(server.url), [], 'every room is gone once everyone left');
});

test('a participant without camera or microphone still joins, watches and chats', async () => {
  const host = await openPage(browser.context, server.url, 'nocam', 'host');
  const viewer = await openPage(browser.context, server.url, 'nocam', 'viewer', { noCamera: true });
  await waitForTiles(viewer, ['host']);
  await waitForTiles(host, ['viewer']);
  await assertMediaFlows(viewer, 'viewer', 1);
  // The host sees the viewer's tile marked as having no camera.
  await host.waitForFunction(
    () => document.querySelector('.tile.remote .badge.cam')?.textContent === 'no camera',
    null, { timeout: 10_000 },
  );
  await viewer.waitForFunction(() => !document.querySelector('#toast').hidden, null, { timeout: 5_000 });
  await waitForChatOpen(viewer);
  await waitForChatOpen(host);
  await viewer.fill('#chat-input', 'Watching from the back row');
  await viewer.click('#chat-send');
  await host.waitForFunction(
    () => [...document.querySelectorAll('#chat-log li .text')].some((e) => e.textContent === 'Watching from the back row'),
    null, { timeout: 10_000 },
  );
  await host.fill('#chat-input', 'Welcome!');
  await host.click('#chat-send');
  await viewer.waitForFunction(
    () => [...document.querySelectorAll('#chat-log li')].some((li) =>
      li.querySelector('.from')?.textContent === 'host' && li.querySelector('.text')?.textContent === 'Welcome!'),
    null, { timeout: 10_000 },
  );
  await host.close();
  await viewer.close();
});

test('signaling errors are shown to the user, not swallowed', async () => {
  const page = await openPage(browser.context, server.url, 'no spaces allowed!', 'eve');
  await page.waitForFunction(() => !document.querySelector('#toast').hidden, null, { timeout: 10_000 });
  const toast = await page.textContent('#toast');
  assert.match(toast, /invalid_room/);
  assert.equal(await page.isVisible('#join-form'), true, 'back at the join form to fix the room name');
  await page.close();
});
