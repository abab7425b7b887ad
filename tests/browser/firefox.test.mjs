// Firefox in the call: headless firefox-esr (Debian's package, puppeteer-core over WebDriver
// BiDi, fake camera and microphone by preference) and headless Chromium decode each other's
// video and audio and chat both ways. Firefox keeps its default ICE settings, which gather no
// loopback candidates: the server also announces the machine's own non-loopback addresses.
// The second test proves it where the only such address is a veth in 192.0.2.0/24, with the
// server and both browsers in a network namespace (needs root and iproute2, as CI has).

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { networkInterfaces } from 'node:os';
import { join } from 'node:path';
import { startServer, launchBrowser, launchFirefox } from './harness.mjs';
import { chromiumFirefoxCall } from './crossbrowser.mjs';
import { createNetns, netnsUnavailable } from './netns.mjs';

const nonLoopback = Object.values(networkInterfaces()).flat()
  .filter((a) => a.family === 'IPv4' && !a.internal).map((a) => a.address);

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

test('a Firefox page and a Chromium page see and hear each other and chat', async () => {
  // Firefox's defaults need an address other than loopback; a machine with none at all only
  // gets a call with the loopback preference on.
  const prefs = nonLoopback.length ? {} : { 'media.peerconnection.ice.loopback': true };
  if (!nonLoopback.length) console.log('# no non-loopback IPv4 address here: Firefox runs with media.peerconnection.ice.loopback=true');
  const firefox = await launchFirefox({ prefs });
  try {
    const result = await chromiumFirefoxCall({
      url: server.url,
      room: 'firefox',
      chromium,
      openFirefox: () => firefox.newPage(),
      shotName: 'firefox-and-chromium',
    });
    console.log(`# ICE pairs: firefox ${result.firefoxPair?.local} -> ${result.firefoxPair?.remote}, chromium ${result.chromiumPair?.local} -> ${result.chromiumPair?.remote}`);
    if (nonLoopback.length) {
      assert.ok(result.announced.some((a) => nonLoopback.includes(a)), `server announces a non-loopback address: ${result.announced}`);
      const pair = result.firefoxPair;
      assert.ok(pair && nonLoopback.includes(pair.remote.split(':')[0]) && !pair.local.startsWith('127.'), `firefox reaches the server off loopback: ${JSON.stringify(pair)}`);
    }
  } finally {
    await firefox.close();
  }
});

/**
 * Runs `file args` to the end; resolves { code, stdout }. After `ms` it is killed and code is
 * 'timeout' (what it started in the namespace goes with the namespace).
 */
function run(file, args, ms) {
  return new Promise((resolvePromise, reject) => {
    const child = spawn(file, args, { stdio: ['ignore', 'pipe', 'pipe'], env: process.env });
    let stdout = '';
    let timedOut = false;
    child.stdout.on('data', (d) => { stdout += d; });
    child.stderr.on('data', (d) => { process.stderr.write(d); });
    const timer = setTimeout(() => { timedOut = true; child.kill('SIGKILL'); }, ms);
    child.once('error', (err) => { clearTimeout(timer); reject(err); });
    child.once('close', (code, signal) => {
      clearTimeout(timer);
      resolvePromise({ code: timedOut ? 'timeout' : code ?? signal, stdout });
    });
  });
}

const whyNot = netnsUnavailable();

test('Firefox with default ICE settings in a network namespace on 192.0.2.0/24', { skip: whyNot && !process.env.CI ? whyNot : false }, async () => {
  assert.equal(whyNot, null, `CI must run the namespace test: ${whyNot}`);
  const ns = createNetns();
  try {
    const [file, args] = ns.command([process.execPath, join(import.meta.dirname, 'netns-call.mjs'), 'firefox-and-chromium-netns']);
    const { code, stdout } = await run(file, args, 45_000);
    const line = stdout.split('\n').find((l) => l.startsWith('RESULT '));
    assert.equal(code, 0, `the call in the namespace failed (exit ${code}):\n${stdout}`);
    assert.ok(line, `no result from the namespace:\n${stdout}`);
    const result = JSON.parse(line.slice('RESULT '.length));
    console.log(`# in ${ns.name}: announced ${result.announced.join(', ')}; firefox ${result.firefoxPair?.local} -> ${result.firefoxPair?.remote}, chromium ${result.chromiumPair?.local} -> ${result.chromiumPair?.remote}`);
    assert.ok(result.announced.includes(ns.address), `the server announces ${ns.address}: ${result.announced}`);
    assert.ok(result.firefoxPair && result.firefoxPair.remote.startsWith(`${ns.address}:`), `firefox reaches the server on ${ns.address}: ${JSON.stringify(result.firefoxPair)}`);
    assert.ok(!result.firefoxPair.local.startsWith('127.'), `from a non-loopback candidate: ${JSON.stringify(result.firefoxPair)}`);
  } finally {
    ns.remove();
  }
});
