// Starts a real switchboard server and headless Chromium with fake camera and microphone.

import { spawn } from 'node:child_process';
import { mkdtempSync, mkdirSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { chromium } from 'playwright-core';

const root = resolve(import.meta.dirname, '..', '..');
export const artifacts = process.env.SWITCHBOARD_ARTIFACTS || join(root, 'artifacts');
mkdirSync(artifacts, { recursive: true });

/** Starts the server on an ephemeral port; resolves with its base URL and a stop(). */
export function startServer() {
  const bin = process.env.SWITCHBOARD_BIN || join(root, 'target', 'debug', 'switchboard');
  const child = spawn(bin, ['serve', '--listen', '127.0.0.1:0'], {
    env: { ...process.env, RUST_LOG: process.env.RUST_LOG || 'warn' },
    stdio: ['ignore', 'pipe', 'inherit'],
  });
  return new Promise((resolvePromise, reject) => {
    const timer = setTimeout(() => reject(new Error('server did not start in 20 s')), 20_000);
    let out = '';
    child.stdout.on('data', (chunk) => {
      out += chunk;
      const m = out.match(/listening on (http:\/\/[^\s]+)/);
      if (m) {
        clearTimeout(timer);
        resolvePromise({
          url: m[1],
          stop: () => new Promise((done) => {
            if (child.exitCode !== null) return done();
            child.once('exit', done);
            child.kill('SIGINT');
          }),
        });
      }
    });
    child.once('exit', (code) => {
      clearTimeout(timer);
      reject(new Error(`server exited with ${code}`));
    });
    child.once('error', (err) => {
      clearTimeout(timer);
      reject(new Error(`cannot start ${bin}: ${err.message}`));
    });
  });
}

/** Headless Chromium as the CI machine has it (Debian's package). */
export async function launchBrowser() {
  const userDataDir = mkdtempSync(join(tmpdir(), 'switchboard-chromium-'));
  const context = await chromium.launchPersistentContext(userDataDir, {
    executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
    headless: true,
    viewport: { width: 1280, height: 720 },
    permissions: ['camera', 'microphone'],
    args: [
      '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
      '--use-fake-device-for-media-stream', '--use-fake-ui-for-media-stream',
      '--disable-background-networking', '--disable-component-update', '--disable-sync',
      '--autoplay-policy=no-user-gesture-required',
    ],
  });
  return {
    context,
    close: async () => {
      await context.close();
      rmSync(userDataDir, { recursive: true, force: true });
    },
  };
}

/** Opens the client at /?room=R&name=N; `noCamera` makes getUserMedia fail as with no devices. */
export async function openPage(context, baseUrl, room, name, { noCamera = false } = {}) {
  const page = await context.newPage();
  page.on('pageerror', (err) => console.error(`[${name}] page error: ${err.message}`));
  if (noCamera) {
    await page.addInitScript(() => {
      navigator.mediaDevices.getUserMedia = () =>
        Promise.reject(new DOMException('Requested device not found', 'NotFoundError'));
    });
  }
  await page.goto(`${baseUrl}/?room=${encodeURIComponent(room)}&name=${encodeURIComponent(name)}`);
  return page;
}

/** Names on the remote tiles of a page. */
export function remoteNames(page) {
  return page.$$eval('.tile.remote .name', (els) => els.map((e) => e.textContent).sort());
}

/** Inbound RTP counters of the page's subscriber PC. */
export function inboundStats(page) {
  return page.evaluate(async () => {
    const pc = window.switchboard.subscriber;
    if (!pc) return [];
    const stats = await pc.getStats();
    const out = [];
    stats.forEach((r) => {
      if (r.type === 'inbound-rtp') {
        out.push({ id: r.id, kind: r.kind, framesDecoded: r.framesDecoded || 0, totalSamplesReceived: r.totalSamplesReceived || 0 });
      }
    });
    return out;
  });
}

export async function waitForChatOpen(page) {
  await page.waitForFunction(() => window.switchboard.chat && window.switchboard.chat.readyState === 'open', null, { timeout: 20_000 });
}

export async function rooms(baseUrl) {
  const res = await fetch(`${baseUrl}/api/rooms`);
  return (await res.json()).rooms;
}

export const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
