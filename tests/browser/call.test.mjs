// In the call: the speaker highlight follows who talks, a screen share reaches the others as a
// second video of its sharer and is shown large, a participant whose media stops is marked.

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import {
  startServer, launchBrowser, openPage, waitForTiles, waitForVideo, shot, sleep,
} from './harness.mjs';

let server;
let browser;
const pages = {};
const names = ['alice', 'bob', 'carol'];

before(async () => {
  server = await startServer();
  browser = await launchBrowser();
  for (const name of names) pages[name] = await openPage(browser.context, server.url, 'meeting', name);
  for (const name of names) await waitForTiles(pages[name], names.filter((n) => n !== name));
  for (const name of names) await waitForVideo(pages[name], 2);
});

after(async () => {
  for (const page of Object.values(pages)) await page.close().catch(() => {});
  if (browser) await browser.close();
  if (server) await server.stop();
  for (const name of names) assert.deepEqual(pages[name].errors, [], `${name}: no page errors`);
});

/** Names of the remote tiles a page marks as speaking. */
function speaking(page) {
  return page.$$eval('.tile.remote.speaking .name', (els) => els.map((e) => e.textContent).sort());
}

async function waitForSpeaker(page, who, timeout = 10_000) {
  const deadline = Date.now() + timeout;
  let got = [];
  let active = null;
  while (Date.now() < deadline) {
    got = await speaking(page);
    active = await page.$eval('.tile.remote.active-speaker .name', (e) => e.textContent).catch(() => null);
    if (JSON.stringify(got) === JSON.stringify(who ? [who] : []) && (!who || active === who)) return;
    await sleep(150);
  }
  assert.fail(`speaking: got ${JSON.stringify(got)} (active ${active}), want ${who}`);
}

test('the speaker highlight follows the one who talks while the others are muted', async () => {
  // Every fake microphone beeps; the silent ones are muted.
  await pages.bob.click('#mic-btn');
  await pages.carol.click('#mic-btn');
  await waitForSpeaker(pages.bob, 'alice');
  await waitForSpeaker(pages.carol, 'alice');
  // The people list marks the speaker too.
  await pages.bob.waitForSelector('#people li.speaking:has-text("alice")');

  // Alice stops, bob talks: the highlight moves.
  await pages.alice.click('#mic-btn');
  await pages.bob.click('#mic-btn');
  await waitForSpeaker(pages.alice, 'bob');
  await waitForSpeaker(pages.carol, 'bob');

  // In speaker view the active speaker takes the spotlight.
  await pages.carol.click('#layout-btn');
  await pages.carol.waitForFunction(() => document.querySelector('.tile.spot .name')?.textContent === 'bob', null, { timeout: 5_000 });
  await shot(pages.carol, 'speaker-view-bob-talking');
  await pages.carol.click('#layout-btn');
  await pages.bob.click('#mic-btn');
});

test('a screen share is decoded by the others as a second video of the sharer, shown large', async () => {
  const aliceId = await pages.alice.evaluate(() => window.switchboard.me.id);
  await pages.alice.click('#share-btn');
  for (const name of ['bob', 'carol']) {
    const page = pages[name];
    await page.waitForFunction((id) => {
      const tile = document.querySelector(`.tile.screen[data-participant-id="${id}"]`);
      const video = tile && tile.querySelector('video');
      return video && video.videoWidth > 0;
    }, aliceId, { timeout: 20_000 });
    // The share came as its own track of alice's, next to her camera, and frames keep coming.
    const frames = () => page.evaluate(async (id) => {
      const person = window.switchboard.people.get(id);
      const stats = await window.switchboard.subscriber.getStats();
      const byMid = {};
      stats.forEach((r) => { if (r.type === 'inbound-rtp' && r.kind === 'video') byMid[r.mid] = r.framesDecoded; });
      return { camera: byMid[person.cam.mid], screen: byMid[person.screen.mid], screenId: person.screen.trackId, cameraId: person.cam.trackId };
    }, aliceId);
    const first = await frames();
    await sleep(1500);
    const second = await frames();
    assert.ok(second.screen > first.screen, `${name}: alice's screen frames are decoded (${first.screen} → ${second.screen})`);
    assert.ok(second.camera > first.camera, `${name}: alice's camera frames still decoded`);
    assert.notEqual(second.screenId, second.cameraId);
    // Shown large: the others switch to speaker view with the share in the spotlight.
    const share = await page.evaluate((id) => {
      const tile = document.querySelector(`.tile.screen[data-participant-id="${id}"]`);
      const r = tile.getBoundingClientRect();
      const s = document.getElementById('stage').getBoundingClientRect();
      return { spot: tile.classList.contains('spot'), fraction: (r.width * r.height) / (s.width * s.height) };
    }, aliceId);
    assert.ok(share.spot, `${name}: the share is in the spotlight`);
    assert.ok(share.fraction > 0.5, `${name}: the share covers ${(share.fraction * 100).toFixed(0)} % of the stage`);
  }
  await pages.bob.bringToFront();
  await sleep(300);
  await shot(pages.bob, 'screen-share-seen-by-bob');

  // Stopping the share removes it everywhere and the grid comes back.
  await pages.alice.click('#share-btn');
  for (const name of ['bob', 'carol']) {
    await pages[name].waitForFunction(() => !document.querySelector('.tile.screen') && !document.body.classList.contains('view-speaker'), null, { timeout: 10_000 });
  }
});

test('a participant whose media stops is marked with a connection problem, and unmarked when it resumes', async () => {
  // Alice's outgoing media stops without any signaling (as when her network freezes).
  await pages.alice.evaluate(() => {
    window.savedTracks = window.switchboard.publisher.getSenders().map((s) => [s, s.track]);
    return Promise.all(window.savedTracks.map(([s]) => s.replaceTrack(null)));
  });
  for (const name of ['bob', 'carol']) {
    await pages[name].waitForFunction(() => {
      const tile = [...document.querySelectorAll('.tile.remote')].find((t) => t.querySelector('.name').textContent === 'alice');
      return tile && tile.classList.contains('problem') && getComputedStyle(tile.querySelector('.problem-mark')).display !== 'none';
    }, null, { timeout: 10_000 });
  }
  await shot(pages.bob, 'connection-problem-mark');
  await pages.alice.evaluate(() => Promise.all(window.savedTracks.map(([s, t]) => s.replaceTrack(t))));
  for (const name of ['bob', 'carol']) {
    await pages[name].waitForFunction(() => {
      const tile = [...document.querySelectorAll('.tile.remote')].find((t) => t.querySelector('.name').textContent === 'alice');
      return tile && !tile.classList.contains('problem');
    }, null, { timeout: 10_000 });
  }
});

test('pin and full screen on a tile; devices switch in the call without a new offer', async () => {
  const carol = pages.carol;
  await carol.bringToFront();
  await carol.hover('.tile.remote:has(.name:text-is("alice"))');
  await carol.click('.tile.remote:has(.name:text-is("alice")) .pin-btn');
  await carol.waitForFunction(() => document.querySelector('.tile.spot .name')?.textContent === 'alice', null, { timeout: 5_000 });
  assert.equal(await carol.getAttribute('.tile.remote:has(.name:text-is("alice")) .pin-btn', 'aria-pressed'), 'true');
  await shot(carol, 'alice-pinned-by-carol');
  await carol.click('.tile.remote:has(.name:text-is("alice")) .fs-btn');
  await carol.waitForFunction(() => document.fullscreenElement?.querySelector('.name')?.textContent === 'alice', null, { timeout: 5_000 });
  await carol.evaluate(() => document.exitFullscreen());
  await carol.click('.tile.remote:has(.name:text-is("alice")) .pin-btn');
  await carol.click('#layout-btn');

  // Bob picks another microphone and speaker in the settings dialog.
  const bob = pages.bob;
  const offerBefore = await bob.evaluate(() => window.switchboard.publisher.localDescription.sdp);
  await bob.click('#settings-btn');
  const mic = await bob.$eval('#mic-select', (s) => [...s.options].find((o) => o.textContent === 'Fake Audio Input 1').value);
  await bob.selectOption('#mic-select', mic);
  await bob.waitForFunction(() => window.switchboard.publisher.getSenders().some((s) => s.track && s.track.label === 'Fake Audio Input 1'), null, { timeout: 5_000 });
  const speaker = await bob.$eval('#speaker-select', (s) => [...s.options].find((o) => o.textContent === 'Fake Audio Output 1')?.value);
  if (speaker) {
    await bob.selectOption('#speaker-select', speaker);
    await bob.waitForFunction((id) => [...document.querySelectorAll('#audio-sinks audio')].every((a) => a.sinkId === id), speaker, { timeout: 5_000 });
  }
  await bob.click('#settings-dialog button[type="submit"]');
  assert.equal(await bob.evaluate(() => window.switchboard.publisher.localDescription.sdp), offerBefore, 'no renegotiation for a device switch');
  // Alice still hears bob: his audio keeps arriving.
  const bobId = await bob.evaluate(() => window.switchboard.me.id);
  const samples = () => pages.alice.evaluate(async (id) => {
    const person = window.switchboard.people.get(id);
    let n = 0;
    (await window.switchboard.subscriber.getStats()).forEach((r) => { if (r.type === 'inbound-rtp' && r.mid === person.audioTrack.mid) n = r.totalSamplesReceived; });
    return n;
  }, bobId);
  const before = await samples();
  await sleep(1000);
  assert.ok(await samples() > before, 'bob\'s audio keeps arriving after the switch');
});
