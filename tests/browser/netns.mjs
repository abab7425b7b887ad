// A network namespace with one veth address from 192.0.2.0/24 (TEST-NET-1), for running the
// server and the browsers where their only non-loopback address is that one. Needs root.
//
// Only the namespace end of the veth pair gets an address. The host end stays in the host's
// namespace, up (so the namespace end has carrier and the browsers list it as a network), but
// with no address and with forwarding off: nothing on the host's own network changes, which
// matters where the host's interface is itself in 192.0.2.0/24 (CI's is 192.0.2.2/24, its
// gateway 192.0.2.1). Traffic in the test stays inside the namespace: the server and both
// browsers run there and talk to the namespace's own 192.0.2.2 and 127.0.0.1.

import { execFileSync } from 'node:child_process';
import { existsSync, writeFileSync } from 'node:fs';

export const NS_ADDRESS = '192.0.2.2';
const PREFIX = 'sbff';

function ip(...args) {
  return execFileSync('ip', args, { stdio: ['ignore', 'pipe', 'pipe'], encoding: 'utf8' });
}

function quietly(fn) {
  try { fn(); } catch { /* already gone */ }
}

function alive(pid) {
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    return err.code === 'EPERM';
  }
}

/** Why namespaces cannot be made here, or null when they can. */
export function netnsUnavailable() {
  if (process.platform !== 'linux') return 'not Linux';
  if (process.getuid && process.getuid() !== 0) return 'ip netns needs root';
  try {
    ip('-V');
  } catch {
    return 'the ip command (iproute2) is missing';
  }
  return null;
}

/**
 * Kills what still runs in the namespace (all started by this test in it: a run cut short
 * leaves its server and browsers, which the namespace would outlive its deletion for).
 */
function killInside(name) {
  let pids = '';
  try { pids = ip('netns', 'pids', name); } catch { return; }
  for (const pid of pids.split(/\s+/).filter(Boolean).map(Number)) {
    if (pid !== process.pid) quietly(() => process.kill(pid, 'SIGKILL'));
  }
}

/** Deletes namespaces (and veth ends) that an earlier run killed midway left behind. */
function removeStale() {
  let list = '';
  try { list = ip('netns', 'list'); } catch { return; }
  for (const line of list.split('\n')) {
    const m = line.match(new RegExp(`^(${PREFIX}(\\d+))\\b`));
    if (m && !alive(Number(m[2]))) {
      killInside(m[1]);
      quietly(() => ip('netns', 'del', m[1]));
      quietly(() => ip('link', 'del', `${m[1]}h`));
    }
  }
}

/**
 * Creates the namespace and returns { name, address, command(argv) -> [file, args] that run
 * argv inside it, remove() }. remove() is safe to call more than once; deleting the namespace
 * deletes the veth pair with it.
 */
export function createNetns() {
  removeStale();
  const name = `${PREFIX}${process.pid}`;
  const hostEnd = `${name}h`;
  const nsEnd = `${name}n`;
  const remove = () => {
    killInside(name);
    quietly(() => ip('netns', 'del', name));
    quietly(() => ip('link', 'del', hostEnd));
  };
  try {
    ip('netns', 'add', name);
    ip('-n', name, 'link', 'set', 'lo', 'up');
    ip('link', 'add', hostEnd, 'type', 'veth', 'peer', 'name', nsEnd);
    ip('link', 'set', nsEnd, 'netns', name);
    const sysctl = (path, value) => { if (existsSync(path)) quietly(() => writeFileSync(path, value)); };
    sysctl(`/proc/sys/net/ipv4/conf/${hostEnd}/forwarding`, '0');
    sysctl(`/proc/sys/net/ipv6/conf/${hostEnd}/disable_ipv6`, '1');
    ip('link', 'set', hostEnd, 'up');
    ip('-n', name, 'addr', 'add', `${NS_ADDRESS}/24`, 'dev', nsEnd);
    ip('-n', name, 'link', 'set', nsEnd, 'up');
    // A default route, as any real machine has: Firefox gathers ICE candidates only on the
    // interface of the default route unless the page holds a camera or microphone permission
    // (fake devices by preference do not count). Nothing answers on the other end.
    ip('-n', name, 'route', 'add', 'default', 'dev', nsEnd);
  } catch (err) {
    remove();
    throw new Error(`creating network namespace ${name}: ${err.stderr || err.message}`);
  }
  return {
    name,
    address: NS_ADDRESS,
    command: (argv) => ['ip', ['netns', 'exec', name, ...argv]],
    remove,
  };
}
