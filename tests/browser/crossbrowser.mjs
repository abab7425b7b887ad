// A Chromium page (Playwright) and a Firefox page (puppeteer-core over WebDriver BiDi) in one
// call through the web client: each decodes the other's video and audio, chat goes both ways
// under the right names, Firefox's camera-off reaches Chromium. Shared by firefox.test.mjs and the run inside a network namespace
// (netns-call.mjs). Only page.evaluate, locator().fill, click and screenshot are used, which
// both drivers have.

import assert from 'node:assert/strict';
import { rmSync } from 'node:fs';
import { join } from 'node:path';
import { artifacts, until, sleep } from './harness.mjs';

export const CHROMIUM_NAME = 'Ada (Chromium)';
export const FIREFOX_NAME = 'Zoë (Firefox)';

/** Names on the page's remote camera tiles. */
function remoteNames(page) {
  return page.evaluate(() => [...document.querySelectorAll('.tile.remote .name')].map((e) => e.textContent).sort());
}

/**
 * What the page's subscriber PC receives (inbound-rtp by kind) and the ICE pair it uses. Field
 * names are the ones both browsers report; a field a browser leaves out is null, not 0.
 */
export function receiveStats(page) {
  return page.evaluate(async () => {
    const pc = window.switchboard.subscriber;
    if (!pc) return { inbound: [], pair: null };
    const report = await pc.getStats();
    const num = (v) => (typeof v === 'number' ? v : null);
    const inbound = [];
    let selectedId = null;
    report.forEach((r) => {
      if (r.type === 'transport' && r.selectedCandidatePairId) selectedId = r.selectedCandidatePairId;
    });
    let pair = null;
    report.forEach((r) => {
      if (r.type === 'inbound-rtp') {
        inbound.push({
          id: r.id,
          kind: r.kind,
          mid: r.mid ?? null,
          packetsReceived: num(r.packetsReceived),
          framesDecoded: num(r.framesDecoded),
          totalSamplesReceived: num(r.totalSamplesReceived),
        });
      }
      if (r.type === 'candidate-pair' && (r.id === selectedId || r.selected === true || (!selectedId && r.nominated && r.state === 'succeeded'))) {
        const local = report.get(r.localCandidateId);
        const remote = report.get(r.remoteCandidateId);
        const addr = (c) => c && `${c.address ?? c.ip}:${c.port}`;
        pair = { local: addr(local), remote: addr(remote), localType: local && local.candidateType };
      }
    });
    return { inbound, pair };
  });
}

/** Waits until the page shows exactly one remote tile, named `name`. */
async function waitForPeer(page, name, label) {
  try {
    await until(page, (want) => {
      const names = [...document.querySelectorAll('.tile.remote .name')].map((e) => e.textContent);
      return names.length === 1 && names[0] === want;
    }, name, { what: `${label} to show a tile for ${name}` });
  } catch (err) {
    err.message += ` (tiles: ${JSON.stringify(await remoteNames(page))})`;
    throw err;
  }
}

/**
 * The remote video has dimensions, its frames keep being decoded, and audio keeps arriving
 * and being decoded, between two samples 1.5 s apart. Returns the second sample.
 */
async function assertDecodes(page, label) {
  await until(page, () => {
    const videos = [...document.querySelectorAll('.tile.remote video')];
    return videos.length === 1 && videos[0].videoWidth > 0;
  }, null, { what: `${label}: remote video with dimensions` });
  // Audio is played, not blocked by an autoplay policy.
  await until(page, () => {
    const els = [...document.querySelectorAll('#audio-sinks audio')].filter((a) => a.srcObject);
    return els.length === 1 && !els[0].paused;
  }, null, { what: `${label}: remote audio playing`, timeout: 10_000 });
  const first = await receiveStats(page);
  await sleep(1500);
  const second = await receiveStats(page);
  const rising = (kind, field) => second.inbound.filter((s) => {
    const prev = first.inbound.find((f) => f.id === s.id);
    return s.kind === kind && prev && s[field] !== null && prev[field] !== null && s[field] > prev[field];
  }).length;
  const detail = JSON.stringify({ first: first.inbound, second: second.inbound });
  assert.equal(rising('video', 'framesDecoded'), 1, `${label}: framesDecoded rising on the one remote video ${detail}`);
  assert.equal(rising('audio', 'packetsReceived'), 1, `${label}: audio packets rising on the one remote audio ${detail}`);
  assert.equal(rising('audio', 'totalSamplesReceived'), 1, `${label}: audio samples rising on the one remote audio ${detail}`);
  const width = await page.evaluate(() => document.querySelector('.tile.remote video').videoWidth);
  assert.ok(width > 0, `${label}: remote video width`);
  return second;
}

async function sendChat(page, text) {
  await until(page, () => window.switchboard.chat && window.switchboard.chat.readyState === 'open', null, { what: 'chat channel open' });
  await page.locator('#chat-input').fill(text);
  await page.click('#chat-send');
}

function waitForChat(page, from, text, label) {
  return until(page, ({ from, text }) => [...document.querySelectorAll('#chat-log li')].some((li) =>
    li.querySelector('.from')?.textContent === from && li.querySelector('.text')?.textContent === text),
  { from, text }, { what: `${label}: chat "${text}" from ${from}`, timeout: 10_000 });
}

/**
 * Opens both pages in `room`, proves media and chat both ways, saves `${shotName}.png` (the
 * Firefox page) and closes both pages. Returns the ICE pairs each browser's subscriber PC uses.
 */
export async function chromiumFirefoxCall({ url, room, chromium, openFirefox, shotName }) {
  for (const stale of [`${shotName}-failed.png`, `${shotName}-failed-chromium.png`]) rmSync(join(artifacts, stale), { force: true });
  const target = `${url}/?room=${encodeURIComponent(room)}`;
  const chrome = await chromium.context.newPage();
  const errors = [];
  chrome.on('pageerror', (err) => errors.push(`chromium: ${err.message}`));
  await chrome.goto(`${target}&name=${encodeURIComponent(CHROMIUM_NAME)}`);
  const fox = await openFirefox();
  fox.on('pageerror', (err) => errors.push(`firefox: ${err.message}`));
  await fox.goto(`${target}&name=${encodeURIComponent(FIREFOX_NAME)}`);
  try {
    await waitForPeer(chrome, FIREFOX_NAME, 'chromium');
    await waitForPeer(fox, CHROMIUM_NAME, 'firefox');
    const foxStats = await assertDecodes(fox, 'firefox decoding chromium');
    const chromeStats = await assertDecodes(chrome, 'chromium decoding firefox');

    await sendChat(chrome, 'Hello from Chromium');
    await sendChat(fox, 'Grüße aus Firefox 🦊');
    await waitForChat(fox, CHROMIUM_NAME, 'Hello from Chromium', 'firefox');
    await waitForChat(chrome, FIREFOX_NAME, 'Grüße aus Firefox 🦊', 'chromium');
    for (const [page, label] of [[chrome, 'chromium'], [fox, 'firefox']]) {
      const own = await page.evaluate(() => [...document.querySelectorAll('#chat-log li .from')].filter((e) => e.textContent === 'You').length);
      assert.equal(own, 1, `${label} shows its own message once, as You`);
    }
    // Firefox turns its camera off (a `mute` for a track id Firefox made): Chromium shows it.
    await fox.click('#cam-btn');
    await until(chrome, (name) => [...document.querySelectorAll('.tile.remote')].some((t) =>
      t.querySelector('.name').textContent === name && t.querySelector('.badge.cam')?.textContent === 'camera off'),
    FIREFOX_NAME, { what: 'chromium: firefox camera off', timeout: 10_000 });
    await fox.click('#cam-btn');
    await until(chrome, () => {
      const v = document.querySelector('.tile.remote video');
      return v && v.videoWidth > 0 && !document.querySelector('.tile.remote .badge.cam');
    }, null, { what: 'chromium: firefox camera back on', timeout: 10_000 });
    await sleep(300);
    await fox.screenshot({ path: join(artifacts, `${shotName}.png`) });
    assert.deepEqual(errors, [], 'no page errors');
    const announced = await fox.evaluate(() => {
      const sdp = window.switchboard.subscriber.remoteDescription.sdp;
      return [...new Set([...sdp.matchAll(/a=candidate:\S+ \d+ \S+ \d+ (\S+) \d+ typ host/g)].map((m) => m[1]))];
    });
    return { firefoxPair: foxStats.pair, chromiumPair: chromeStats.pair, announced };
  } catch (err) {
    await fox.screenshot({ path: join(artifacts, `${shotName}-failed.png`) }).catch(() => {});
    await chrome.screenshot({ path: join(artifacts, `${shotName}-failed-chromium.png`) }).catch(() => {});
    throw err;
  } finally {
    await fox.close().catch(() => {});
    await chrome.close().catch(() => {});
  }
}
