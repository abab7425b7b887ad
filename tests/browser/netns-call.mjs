// Runs inside the network namespace that firefox.test.mjs makes (`ip netns exec NS node
// netns-call.mjs`): the server, headless Chromium and headless Firefox with its DEFAULT ICE
// settings (no loopback candidates), all in the namespace, whose only non-loopback address is
// the veth's 192.0.2.x. Prints one line `RESULT {json}` and exits 0, or prints the failure and
// exits 1. Not a test file itself (the runner does not pick it up).

import { networkInterfaces } from 'node:os';
import { startServer, launchBrowser, launchFirefox } from './harness.mjs';
import { chromiumFirefoxCall } from './crossbrowser.mjs';

const shotName = process.argv[2] || 'firefox-chromium-call-netns';
let server;
let chromium;
let firefox;
let code = 0;
try {
  const own = Object.values(networkInterfaces()).flat().filter((a) => a.family === 'IPv4' && !a.internal).map((a) => a.address);
  if (!own.length || !own.every((a) => a.startsWith('192.0.2.'))) {
    throw new Error(`not in the test namespace: non-loopback IPv4 addresses ${JSON.stringify(own)}`);
  }
  server = await startServer();
  [chromium, firefox] = await Promise.all([launchBrowser(), launchFirefox()]);
  const result = await chromiumFirefoxCall({
    url: server.url,
    room: 'netns',
    chromium,
    openFirefox: () => firefox.newPage(),
    shotName,
  });
  console.log(`RESULT ${JSON.stringify({ ...result, addresses: own })}`);
} catch (err) {
  console.error(err && err.stack ? err.stack : String(err));
  code = 1;
} finally {
  if (firefox) await firefox.close();
  if (chromium) await chromium.close();
  if (server) await server.stop();
}
process.exit(code);
