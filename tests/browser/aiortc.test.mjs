// An aiortc participant (Python, tests/aiortc/chat_peer.py) and a Chromium page in one call:
// they decode each other, and chat goes both ways under the right names, each message once,
// in milliseconds. Chat delivery is timed from the sender's own clock to the receiver's (one
// machine, one wall clock) and printed; the bound is generous, so this is not a timing test,
// but it fails where chat waits for a timer (seconds).

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { createInterface } from 'node:readline';
import { existsSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { startServer, launchBrowser, openPage, until, sleep, waitForChatOpen } from './harness.mjs';

const root = resolve(import.meta.dirname, '..', '..');
const python = process.env.AIORTC_PYTHON || join(root, 'target', 'aiortc-venv', 'bin', 'python');
const MESSAGES = 20;
const MAX_CHAT_MS = 1000;

let server;
let chromium;

before(async () => {
  server = await startServer();
  chromium = await launchBrowser();
});

after(async () => {
  if (chromium) await chromium.close();
  if (server) await server.stop();
});

/** The aiortc participant: its events as they come, and a way to talk to it. */
function startAiortc(wsUrl, room, index) {
  const child = spawn(python, [join(root, 'tests', 'aiortc', 'chat_peer.py'), wsUrl, room, String(index)], {
    stdio: ['pipe', 'pipe', 'inherit'],
  });
  const events = [];
  createInterface({ input: child.stdout }).on('line', (line) => {
    try {
      events.push(JSON.parse(line));
    } catch {
      console.error(`[aiortc] ${line}`);
    }
  });
  const exited = new Promise((done) => child.once('exit', done));
  return {
    events,
    say: (text) => child.stdin.write(`${JSON.stringify({ say: text })}\n`),
    async waitFor(pred, what, timeout = 20_000) {
      const deadline = Date.now() + timeout;
      for (;;) {
        const found = events.find(pred);
        if (found) return found;
        if (child.exitCode !== null) throw new Error(`aiortc exited (${child.exitCode}) waiting for ${what}`);
        if (Date.now() > deadline) throw new Error(`timed out waiting for aiortc: ${what} (events: ${JSON.stringify(events.slice(-5))})`);
        await sleep(20);
      }
    },
    async stop() {
      child.stdin.end(`${JSON.stringify({ quit: true })}\n`);
      const timer = setTimeout(() => child.kill('SIGKILL'), 5000);
      await exited;
      clearTimeout(timer);
    },
  };
}

function percentiles(values) {
  const sorted = [...values].sort((a, b) => a - b);
  const at = (q) => sorted[Math.min(sorted.length - 1, Math.floor(sorted.length * q))];
  return { n: sorted.length, p50: +at(0.5).toFixed(1), p99: +at(0.99).toFixed(1), max: +sorted[sorted.length - 1].toFixed(1) };
}

test('an aiortc peer and a Chromium page decode each other and chat both ways in milliseconds', { skip: !existsSync(python) && !process.env.CI ? `no aiortc at ${python} (scripts/aiortc-venv.sh makes it)` : false }, async () => {
  assert.ok(existsSync(python), `CI must run the aiortc chat test: no ${python}`);
  const room = 'aiortc-chat';
  const wsUrl = `${server.url.replace('http', 'ws')}/ws`;
  const page = await openPage(chromium.context, server.url, room, 'Ada (Chromium)');
  const aiortc = startAiortc(wsUrl, room, 1);
  try {
    const joined = await aiortc.waitFor((e) => e.event === 'joined', 'joined');
    await aiortc.waitFor((e) => e.event === 'chat_open', 'its chat channel open');
    await waitForChatOpen(page);
    // Media both ways: the page decodes p1's video, p1 decodes the page's audio and video.
    await until(page, () => {
      const v = [...document.querySelectorAll('.tile.remote video')];
      return v.length === 1 && v[0].videoWidth > 0;
    }, null, { what: 'the page decoding the aiortc video' });
    await aiortc.waitFor((e) => e.event === 'decoded' && e.from === 'Ada (Chromium)' && e.audio > 50 && e.video > 10, 'aiortc decoding the page');
    const pageId = await page.evaluate(() => window.switchboard.me?.id ?? null);
    assert.ok(pageId, 'the page knows its participant id');

    // The page listens beside the client's own handler, stamping each message on arrival.
    await page.evaluate(() => {
      window.chatArrivals = [];
      window.switchboard.chat.addEventListener('message', (e) => window.chatArrivals.push({ t: Date.now(), data: e.data }));
    });

    // Page -> aiortc, typed and sent through the client's own chat box.
    const fromPage = [];
    for (let i = 0; i < MESSAGES; i++) {
      const text = `from the page #${i} · ünïcödé`;
      await page.locator('#chat-input').fill(text);
      const sentAt = await page.evaluate(() => { const t = Date.now(); document.getElementById('chat-send').click(); return t; });
      fromPage.push({ text, sentAt });
      await sleep(50);
    }
    // aiortc -> page.
    for (let i = 0; i < MESSAGES; i++) {
      aiortc.say(`from aiortc #${i} · héllo`);
      await sleep(50);
    }
    await aiortc.waitFor((e) => e.event === 'chat' && e.message.text === fromPage[MESSAGES - 1].text, 'the last message from the page');
    await until(page, (n) => window.chatArrivals.length >= n, MESSAGES, { what: `${MESSAGES} messages from aiortc` });
    await sleep(500); // anything sent twice would be here by now

    const toAiortc = [];
    for (const { text, sentAt } of fromPage) {
      const got = aiortc.events.filter((e) => e.event === 'chat' && e.message.text === text);
      assert.equal(got.length, 1, `aiortc received "${text}" once`);
      const m = got[0].message;
      assert.equal(m.type, 'chat');
      assert.equal(m.from.name, 'Ada (Chromium)', 'from is the page, named by the server');
      assert.equal(m.from.id, pageId);
      toAiortc.push(got[0].t_ms - sentAt);
    }
    const arrivals = await page.evaluate(() => window.chatArrivals);
    const toPage = [];
    for (let i = 0; i < MESSAGES; i++) {
      const text = `from aiortc #${i} · héllo`;
      const sent = aiortc.events.find((e) => e.event === 'sent' && e.text === text);
      assert.ok(sent, `aiortc sent "${text}"`);
      const got = arrivals.filter((a) => JSON.parse(a.data).text === text);
      assert.equal(got.length, 1, `the page received "${text}" once`);
      const m = JSON.parse(got[0].data);
      assert.deepEqual(m.from, { id: joined.id, name: 'p1' }, 'from is the aiortc participant, as the server names it');
      toPage.push(got[0].t - sent.t_ms);
    }
    // The page shows them in its chat log under the sender's name.
    const shown = await page.evaluate(() => [...document.querySelectorAll('#chat-log li')]
      .filter((li) => li.querySelector('.from')?.textContent === 'p1' && li.querySelector('.text')?.textContent.startsWith('from aiortc #')).length);
    assert.equal(shown, MESSAGES, 'the page shows every message from p1');

    const stats = { pageToAiortc: percentiles(toAiortc), aiortcToPage: percentiles(toPage) };
    console.log(`# chat delivery (ms, send to receipt): ${JSON.stringify(stats)}`);
    for (const [way, s] of Object.entries(stats)) assert.ok(s.max < MAX_CHAT_MS, `${way}: ${JSON.stringify(s)}`);
  } finally {
    await aiortc.stop();
    await page.close();
  }
});
