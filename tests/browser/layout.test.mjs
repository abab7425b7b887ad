// The call fits the window: tiles use the stage, controls and the chat box stay on screen,
// the page itself never scrolls; chat counts its limit in bytes. Extra participants are signaling-only bots (tiles without
// media), so a dozen people cost no video decoding.

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import {
  startServer, launchBrowser, openPage, addBots, waitForTiles, waitForChatOpen, shot, sleep,
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

const DESKTOP = [{ width: 1280, height: 720 }, { width: 1920, height: 1080 }];
const PHONE = { width: 390, height: 844 };
const NAMES = ['Ada', 'Grace', 'Linus', 'Margaret', 'Ken', 'Barbara', 'Dennis', 'Frances', 'Edsger', 'Radia', 'Alan'];

/** Waits for the layout to settle (tiles animate to their places), then measures. */
async function measure(page) {
  await page.bringToFront();
  await sleep(450);
  // On a busy machine the tiles may still be moving: measure until two looks agree.
  let last = await measureNow(page);
  for (let i = 0; i < 20; i += 1) {
    await sleep(150);
    const now = await measureNow(page);
    if (Math.round(now.tileArea) === Math.round(last.tileArea) && now.tiles === last.tiles) return now;
    last = now;
  }
  return last;
}

function measureNow(page) {
  return page.evaluate(() => {
    const stage = document.getElementById('stage').getBoundingClientRect();
    const clip = (r) => {
      const w = Math.max(0, Math.min(r.right, stage.right) - Math.max(r.left, stage.left));
      const h = Math.max(0, Math.min(r.bottom, stage.bottom) - Math.max(r.top, stage.top));
      return w * h;
    };
    const tiles = [...document.querySelectorAll('#stage .tile')].filter((t) => !t.hidden);
    const controls = [...document.querySelectorAll('.controls button')].map((b) => b.getBoundingClientRect());
    const inView = (r) => r.top >= 0 && r.left >= 0 && r.bottom <= innerHeight + 0.5 && r.right <= innerWidth + 0.5 && r.width > 0;
    return {
      tiles: tiles.length,
      tileArea: tiles.reduce((sum, t) => sum + clip(t.getBoundingClientRect()), 0),
      stageArea: stage.width * stage.height,
      controlsInView: controls.length > 0 && controls.every(inView),
      pageScrolls: document.scrollingElement.scrollHeight > innerHeight + 1 || document.scrollingElement.scrollWidth > innerWidth + 1,
      overflow: !document.getElementById('overflow-tile').hidden,
    };
  });
}

test('tiles cover at least half of the stage for 2, 4 and 9 people at 1280×720 and 1920×1080', async () => {
  const host = await openPage(browser.context, server.url, 'grid', 'host');
  const guest = await openPage(browser.context, server.url, 'grid', 'guest');
  await waitForTiles(host, ['guest']);
  let bots = null;
  for (const people of [2, 4, 9]) {
    if (bots) await bots.close();
    const names = NAMES.slice(0, people - 2);
    bots = names.length ? await addBots(browser.context, server.url, 'grid', names) : null;
    await waitForTiles(host, ['guest', ...names]);
    for (const size of DESKTOP) {
      await host.setViewportSize(size);
      const m = await measure(host);
      const share = m.tileArea / m.stageArea;
      console.log(`${people} people at ${size.width}×${size.height}: tiles cover ${(share * 100).toFixed(0)} % of the stage`);
      assert.equal(m.tiles, people, `${people} tiles shown at ${size.width}×${size.height}`);
      assert.ok(share >= 0.5, `${people} people at ${size.width}×${size.height}: tiles cover ${(share * 100).toFixed(0)} % of the stage`);
      assert.ok(m.controlsInView, 'controls inside the viewport');
      assert.ok(!m.pageScrolls, 'the page does not scroll');
    }
  }
  await shot(host, 'grid-9-people-1920x1080');
  await bots.close();
  await guest.close();
  await host.close();
  assert.deepEqual([...host.errors, ...guest.errors], [], 'no page errors');
});

test('controls and chat box stay on screen with 12 people and 50 chat messages, desktop and phone', async () => {
  const host = await openPage(browser.context, server.url, 'crowd', 'host', { viewport: PHONE });
  const talker = await openPage(browser.context, server.url, 'crowd', 'talker');
  const bots = await addBots(browser.context, server.url, 'crowd', NAMES.slice(0, 10));
  await waitForTiles(host, ['talker', ...NAMES.slice(0, 10)]);
  await waitForChatOpen(host);
  await waitForChatOpen(talker);

  // Fifty messages, some long, one a long unbroken word, typed and sent as a person would.
  for (let i = 1; i <= 50; i += 1) {
    const text = i === 25 ? `https://example.org/${'x'.repeat(300)}` : i % 10 === 0 ? `message ${i}: ${'lorem ipsum dolor sit amet '.repeat(8)}` : `message ${i}`;
    await talker.fill('#chat-input', text);
    await talker.press('#chat-input', 'Enter');
    await sleep(25);
  }
  await host.waitForFunction(() => document.querySelectorAll('#chat-log li:not(.system)').length === 50, null, { timeout: 10_000 });

  // The limit is the server's, in UTF-8 bytes: 3000 Cyrillic letters (6000 bytes) are refused
  // before sending, 2000 (4000 bytes) go through whole.
  await talker.fill('#chat-input', 'ж'.repeat(3000));
  assert.equal(await talker.isDisabled('#chat-send'), true, 'send is disabled over the limit');
  await talker.press('#chat-input', 'Enter');
  assert.match(await talker.textContent('#chat-note'), /4096 bytes/);
  assert.equal(await talker.$$eval('#chat-log li.mine', (els) => els.length), 50, 'the long message is not shown as sent');
  await talker.fill('#chat-input', 'ж'.repeat(2000));
  await talker.press('#chat-input', 'Enter');
  await host.waitForFunction(() => [...document.querySelectorAll('#chat-log li .text')].some((e) => e.textContent === 'ж'.repeat(2000)), null, { timeout: 10_000 });

  // Phone, drawer closed: the call fits, controls on screen, an unread count on the chat button.
  let m = await measure(host);
  assert.ok(m.controlsInView, 'phone: controls inside the viewport with 12 people');
  assert.ok(!m.pageScrolls, 'phone: the page does not scroll');
  assert.equal(await host.textContent('#unread-badge'), '51', 'phone: 51 unread messages on the chat button');
  // The chat drawer: the newest message and the input are on screen.
  await host.click('#chat-btn');
  const drawer = await chatOnScreen(host);
  assert.ok(drawer.lastVisible, 'phone: the newest message is visible in the drawer');
  assert.ok(drawer.inputInView, 'phone: the chat input is on screen');
  assert.ok(!drawer.pageScrolls, 'phone: the page does not scroll with the drawer open');
  assert.equal(await host.isVisible('#unread-badge'), false, 'phone: opening the chat clears the unread count');
  await shot(host, 'phone-chat-drawer-12-people');
  await host.click('#chat-panel .drawer-close');

  // Desktop sizes: both pages, sender and receiver.
  for (const size of [...DESKTOP, PHONE]) {
    for (const page of [host, talker]) {
      await page.setViewportSize(size);
      m = await measure(page);
      assert.ok(m.controlsInView, `${size.width}×${size.height}: controls inside the viewport`);
      assert.ok(!m.pageScrolls, `${size.width}×${size.height}: the page does not scroll`);
      if (size.width > 720) {
        const chat = await chatOnScreen(page);
        assert.ok(chat.lastVisible, `${size.width}×${size.height}: the newest message is visible`);
        assert.ok(chat.inputInView, `${size.width}×${size.height}: the chat input is on screen`);
        assert.ok(chat.noHorizontalOverflow, `${size.width}×${size.height}: long words wrap inside the chat`);
      }
    }
  }
  await host.setViewportSize(DESKTOP[0]);
  await sleep(300);
  await shot(host, 'twelve-people-50-messages-1280x720');
  await bots.close();
  await talker.close();
  await host.close();
  assert.deepEqual([...host.errors, ...talker.errors], [], 'no page errors');
});

async function chatOnScreen(page) {
  await page.bringToFront();
  await sleep(300);
  return page.evaluate(() => {
    const log = document.getElementById('chat-log');
    const box = log.getBoundingClientRect();
    const last = log.lastElementChild.getBoundingClientRect();
    const input = document.getElementById('chat-input').getBoundingClientRect();
    return {
      // Scrolled to the end, the newest message's last line in view.
      lastVisible: box.height > 0 && last.bottom <= box.bottom + 1 && last.bottom > box.top
        && log.scrollHeight - log.scrollTop - log.clientHeight < 2,
      inputInView: input.top >= 0 && input.bottom <= innerHeight && input.right <= innerWidth && input.height > 0,
      pageScrolls: document.scrollingElement.scrollHeight > innerHeight + 1,
      noHorizontalOverflow: log.scrollWidth <= log.clientWidth + 1,
    };
  });
}
