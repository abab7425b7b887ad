// Starts a real switchboard server, headless Chromium (Playwright) and headless Firefox
// (puppeteer-core over WebDriver BiDi), both with fake camera and microphone.

import { spawn } from 'node:child_process';
import { mkdtempSync, mkdirSync, rmSync, readFileSync, existsSync, readdirSync } from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { chromium } from 'playwright-core';
import puppeteer from 'puppeteer-core';

const root = resolve(import.meta.dirname, '..', '..');
export const artifacts = process.env.SWITCHBOARD_ARTIFACTS || join(root, 'artifacts');
mkdirSync(artifacts, { recursive: true });

/** A TCP port that was free a moment ago, for a server that must come back on the same one. */
export function freePort() {
  return new Promise((resolvePromise, reject) => {
    const srv = createServer();
    srv.once('error', reject);
    srv.listen(0, '127.0.0.1', () => {
      const { port } = srv.address();
      srv.close(() => resolvePromise(port));
    });
  });
}

/**
 * Starts the server; resolves with its base URL and a stop(). With `port` it listens there
 * (so a test can stop it and start another on the same address), else on an ephemeral port.
 */
export function startServer({ port = 0 } = {}) {
  const bin = process.env.SWITCHBOARD_BIN || join(root, 'target', 'debug', 'switchboard');
  const child = spawn(bin, ['serve', '--listen', `127.0.0.1:${port}`], {
    env: { ...process.env, RUST_LOG: process.env.RUST_LOG || 'warn' },
    stdio: ['ignore', 'pipe', 'inherit'],
  });
  return new Promise((resolvePromise, reject) => {
    const timer = setTimeout(() => reject(new Error('server did not start in 20 s')), 20_000);
    let out = '';
    let started = false;
    child.stdout.on('data', (chunk) => {
      out += chunk;
      const m = out.match(/listening on (http:\/\/[^\s]+)/);
      if (m && !started) {
        started = true;
        clearTimeout(timer);
        resolvePromise({
          url: m[1],
          stop: () => new Promise((done) => {
            if (child.exitCode !== null || child.signalCode !== null) return done();
            child.once('exit', done);
            child.kill('SIGINT');
          }),
        });
      }
    });
    child.once('exit', (code) => {
      clearTimeout(timer);
      if (!started) reject(new Error(`server exited with ${code}`));
    });
    child.once('error', (err) => {
      clearTimeout(timer);
      reject(new Error(`cannot start ${bin}: ${err.message}`));
    });
  });
}

// Every file of the web client, read from web/ itself so a new module needs no change here.
const WEB_FILES = readdirSync(join(root, 'web')).filter((f) => /\.(js|css|html)$/.test(f));

/** The web/ file (path and content type) a client URL stands for, or null. */
function webFileFor(href) {
  const url = new URL(href);
  const file = url.pathname === '/' ? 'index.html' : url.pathname.slice(1);
  if (!WEB_FILES.includes(file)) return null;
  const path = join(root, 'web', file);
  if (!existsSync(path)) return null;
  const type = file.endsWith('.js') ? 'text/javascript' : file.endsWith('.css') ? 'text/css' : 'text/html';
  return { path, type: `${type}; charset=utf-8` };
}

/**
 * Headless Chromium as the CI machine has it (Debian's package).
 *   autoplay: false leaves Chromium's own autoplay policy in force (sound needs a user gesture)
 *   fakeUi: false leaves camera and microphone unpermitted (no fake prompt answer)
 * SWITCHBOARD_WEB_FROM_DISK=1 serves web/ from the work tree instead of the binary, to try
 * client changes without rebuilding the server.
 */
export async function launchBrowser({ autoplay = true, fakeUi = true, viewport = { width: 1280, height: 720 }, args = [] } = {}) {
  const userDataDir = mkdtempSync(join(tmpdir(), 'switchboard-chromium-'));
  const context = await chromium.launchPersistentContext(userDataDir, {
    executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
    headless: true,
    viewport,
    permissions: fakeUi ? ['camera', 'microphone'] : [],
    args: [
      '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
      '--use-fake-device-for-media-stream',
      ...(fakeUi ? ['--use-fake-ui-for-media-stream', '--auto-select-desktop-capture-source=Entire screen'] : []),
      '--disable-background-networking', '--disable-component-update', '--disable-sync',
      ...(autoplay ? ['--autoplay-policy=no-user-gesture-required'] : []),
      // Pages served from disk have no address of their own; let them reach the local server.
      ...(process.env.SWITCHBOARD_WEB_FROM_DISK ? ['--disable-features=LocalNetworkAccessChecks'] : []),
      ...args,
    ],
  });
  if (process.env.SWITCHBOARD_WEB_FROM_DISK) {
    await context.route(/\/[a-z]+\.js$|\/style\.css$|\/(\?.*)?$/, (route) => {
      const file = webFileFor(route.request().url());
      if (!file) return route.continue();
      return route.fulfill({ body: readFileSync(file.path), contentType: file.type });
    });
  }
  return {
    context,
    close: async () => {
      await context.close();
      rmSync(userDataDir, { recursive: true, force: true });
    },
  };
}

/**
 * Preferences that keep headless Firefox quiet and offline (no updates, telemetry, safe
 * browsing, captive-portal or connectivity probes, remote settings), on top of the ones
 * puppeteer-core writes into every profile, plus fake camera and microphone without a prompt.
 * Nothing here touches ICE: Firefox keeps its default of no loopback candidates unless a test
 * passes media.peerconnection.ice.loopback itself.
 */
export const FIREFOX_PREFS = {
  'media.navigator.streams.fake': true,
  'media.navigator.permission.disabled': true,
  // The fake devices count as a granted, capturing camera and microphone, as real ones do.
  // Without this Firefox treats the page as not capturing: its autoplay policy refuses sound
  // (the client then shows its enable-audio prompt) and ICE hides host addresses behind mDNS.
  'media.navigator.permission.fake': true,
  'app.update.enabled': false,
  'app.update.auto': false,
  'app.update.service.enabled': false,
  'app.normandy.enabled': false,
  'browser.safebrowsing.provider.google.updateURL': '',
  'browser.safebrowsing.provider.google4.updateURL': '',
  'browser.safebrowsing.provider.mozilla.updateURL': '',
  'browser.safebrowsing.update.enabled': false,
  'browser.region.network.url': '',
  'browser.region.update.enabled': false,
  'browser.ping-centre.telemetry': false,
  'browser.newtabpage.activity-stream.telemetry': false,
  'browser.newtabpage.activity-stream.feeds.telemetry': false,
  'browser.newtabpage.activity-stream.feeds.snippets': false,
  'browser.discovery.enabled': false,
  'captivedetect.canonicalURL': '',
  'network.captive-portal-service.enabled': false,
  'network.connectivity-service.enabled': false,
  'network.dns.disablePrefetch': true,
  'network.predictor.enabled': false,
  'network.prefetch-next': false,
  'network.trr.mode': 5,
  'datareporting.policy.dataSubmissionEnabled': false,
  'datareporting.healthreport.uploadEnabled': false,
  'toolkit.telemetry.enabled': false,
  'toolkit.telemetry.unified': false,
  'toolkit.telemetry.archive.enabled': false,
  'toolkit.telemetry.server': '',
  'toolkit.coverage.opt-out': true,
  'extensions.blocklist.enabled': false,
  'extensions.getAddons.showPane': false,
  'security.OCSP.enabled': 0,
  'security.remote_settings.crlite_filters.enabled': false,
  'media.gmp-manager.url': '',
  'media.gmp-gmpopenh264.autoupdate': false,
  'media.gmp-widevinecdm.enabled': false,
  'identity.fxaccounts.enabled': false,
  'dom.push.connection.enabled': false,
  'dom.push.serverURL': '',
  'geo.enabled': false,
  'browser.aboutwelcome.enabled': false,
  'trailhead.firstrun.didSeeAboutWelcome': true,
};

/**
 * Headless Firefox as the CI machine has it (Debian's firefox-esr), driven by puppeteer-core
 * over WebDriver BiDi, with a fresh profile. `prefs` are added to FIREFOX_PREFS. Its pages
 * are Puppeteer pages: evaluate, $$eval, click, locator().fill and screenshot work as on a
 * Playwright page; waitForFunction does not take the same arguments (use `until`).
 */
export async function launchFirefox({ prefs = {}, viewport = { width: 1280, height: 720 } } = {}) {
  const userDataDir = mkdtempSync(join(tmpdir(), 'switchboard-firefox-'));
  const browser = await puppeteer.launch({
    browser: 'firefox',
    protocol: 'webDriverBiDi',
    executablePath: process.env.FIREFOX || '/usr/bin/firefox-esr',
    headless: true,
    userDataDir,
    defaultViewport: viewport,
    extraPrefsFirefox: { ...FIREFOX_PREFS, ...prefs },
    // Firefox's content sandbox needs user namespaces the CI container may not give it.
    env: { ...process.env, MOZ_DISABLE_CONTENT_SANDBOX: '1', MOZ_CRASHREPORTER_DISABLE: '1' },
    handleSIGINT: false,
    handleSIGTERM: false,
    handleSIGHUP: false,
    timeout: 30_000,
  });
  return {
    browser,
    /** A new page; with SWITCHBOARD_WEB_FROM_DISK its client files come from web/. */
    newPage: async () => {
      const page = await browser.newPage();
      if (process.env.SWITCHBOARD_WEB_FROM_DISK) {
        await page.setRequestInterception(true);
        page.on('request', (request) => {
          const file = webFileFor(request.url());
          if (!file) return request.continue();
          return request.respond({ status: 200, contentType: file.type, body: readFileSync(file.path) });
        });
      }
      return page;
    },
    close: async () => {
      await browser.close().catch(() => {});
      rmSync(userDataDir, { recursive: true, force: true });
    },
  };
}

/**
 * Polls `fn(arg)` in the page until it returns something truthy; works on Playwright and
 * Puppeteer pages alike. Fails with `what` and the last value after `timeout`.
 */
export async function until(page, fn, arg, { timeout = 20_000, what = 'condition', interval = 200 } = {}) {
  const deadline = Date.now() + timeout;
  let last;
  for (;;) {
    last = await page.evaluate(fn, arg);
    if (last) return last;
    if (Date.now() > deadline) throw new Error(`timed out after ${timeout} ms waiting for ${what}`);
    await sleep(interval);
  }
}

function watchErrors(page, name) {
  page.errors = [];
  page.on('pageerror', (err) => {
    page.errors.push(err.message);
    console.error(`[${name}] page error: ${err.message}`);
  });
}

/**
 * Opens the client at /?room=R&name=N (which joins at once); `noCamera` makes getUserMedia fail
 * as with no devices, `denied` as when the user refused.
 */
export async function openPage(context, baseUrl, room, name, { noCamera = false, denied = false, viewport = null } = {}) {
  const page = await context.newPage();
  watchErrors(page, name);
  if (viewport) await page.setViewportSize(viewport);
  if (noCamera || denied) {
    await page.addInitScript((errName) => {
      navigator.mediaDevices.getUserMedia = () =>
        Promise.reject(new DOMException(errName === 'NotAllowedError' ? 'Permission denied' : 'Requested device not found', errName));
    }, denied ? 'NotAllowedError' : 'NotFoundError');
  }
  await page.goto(`${baseUrl}/?room=${encodeURIComponent(room)}&name=${encodeURIComponent(name)}`);
  return page;
}

/** Opens any path of the client (the lobby, an invite link). */
export async function openUrl(context, url, label = 'page', { viewport = null } = {}) {
  const page = await context.newPage();
  watchErrors(page, label);
  if (viewport) await page.setViewportSize(viewport);
  await page.goto(url);
  return page;
}

/**
 * Participants that only join (signaling, no media): cheap extra people for layout tests.
 * Returns { close() }. They appear to everyone as tiles without camera or microphone.
 */
export async function addBots(context, baseUrl, room, names) {
  const page = await context.newPage();
  await page.goto(`${baseUrl}/healthz`);
  await page.evaluate(async ({ room, names }) => {
    window.bots = [];
    const url = `${location.protocol === 'https:' ? 'wss' : 'ws'}://${location.host}/ws`;
    await Promise.all(names.map((name) => new Promise((resolve, reject) => {
      const ws = new WebSocket(url);
      ws.onopen = () => ws.send(JSON.stringify({ type: 'join', room, name }));
      ws.onmessage = (e) => {
        const m = JSON.parse(e.data);
        if (m.type === 'joined') resolve();
        if (m.type === 'error') reject(new Error(`${name}: ${m.code}`));
      };
      ws.onerror = () => reject(new Error(`${name}: socket error`));
      window.bots.push(ws);
    })));
  }, { room, names });
  return {
    close: async () => {
      await page.evaluate(() => window.bots.forEach((ws) => ws.close())).catch(() => {});
      await page.close();
    },
  };
}

/** Names on the remote (camera) tiles of a page. */
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
        out.push({ id: r.id, mid: r.mid, kind: r.kind, framesDecoded: r.framesDecoded || 0, totalSamplesReceived: r.totalSamplesReceived || 0 });
      }
    });
    return out;
  });
}

export async function waitForChatOpen(page, timeout = 20_000) {
  await page.waitForFunction(() => window.switchboard.chat && window.switchboard.chat.readyState === 'open', null, { timeout });
}

export async function rooms(baseUrl) {
  const res = await fetch(`${baseUrl}/api/rooms`);
  return (await res.json()).rooms;
}

export function shot(page, name) {
  return page.screenshot({ path: join(artifacts, `${name}.png`) });
}

export const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/** Waits until a page shows exactly these remote names. */
export async function waitForTiles(page, names, timeout = 20_000) {
  const want = JSON.stringify([...names].sort());
  const deadline = Date.now() + timeout;
  let got = [];
  while (Date.now() < deadline) {
    got = await remoteNames(page);
    if (JSON.stringify(got) === want) return;
    await sleep(200);
  }
  throw new Error(`remote tiles: got ${JSON.stringify(got)}, want ${want}`);
}

/** Every remote camera tile shows decoded video, and frames keep coming on `n` streams. */
export async function waitForVideo(page, n, timeout = 20_000) {
  await page.waitForFunction(
    (count) => {
      const videos = [...document.querySelectorAll('.tile.remote video')];
      return videos.length === count && videos.every((v) => v.videoWidth > 0);
    },
    n,
    { timeout },
  );
}
