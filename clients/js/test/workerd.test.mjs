// The client inside the Workers runtime: a Worker (clients/js/test/workerd/worker.mjs) that
// imports dist/index.js runs under its own `wrangler dev` (workerd) and subscribes to a real hub
// on every transport, `auto` included, over one channel and two. In workerd a client WebSocket
// opens by `fetch` (there is no client constructor), with the token in a header; SSE and polls
// use its `fetch` as elsewhere. What the Worker received is compared with the hub's /poll.
// Run: `node --test clients/js/test/workerd.test.mjs`; needs the Worker bundle
// (`make -s build`) and `target/debug/edgehub-launch`.

import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { after, before } from 'node:test';
import { ADMIN, Hub, ROOT, bindIt, checkDist, sleep, storedCount, uniq } from './helpers.mjs';

const WRANGLER = path.join(ROOT, 'node_modules/.bin/wrangler');
const CONFIG = path.join(ROOT, 'clients/js/test/workerd/wrangler.toml');
const START_TIMEOUT_MS = 120_000;
const STOP_GRACE_MS = 5_000;

let hub;
let worker;
const it = bindIt(() => hub);

/** A free loopback port (the kernel's pick, released at once). */
function freePort() {
  return new Promise((resolve, reject) => {
    const srv = net.createServer();
    srv.on('error', reject);
    srv.listen(0, '127.0.0.1', () => {
      const { port } = srv.address();
      srv.close(() => resolve(port));
    });
  });
}

/** `wrangler dev` on the test Worker, in a process group of its own, with a fresh persist dir. */
async function startWorker() {
  const port = await freePort();
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'edgehub-client-workerd-'));
  const child = spawn(WRANGLER, ['dev', '--config', CONFIG, '--ip', '127.0.0.1', '--port', String(port), '--persist-to', dir], {
    cwd: ROOT,
    detached: true,
    stdio: ['ignore', 'pipe', 'pipe'],
    env: { ...process.env, WRANGLER_SEND_METRICS: 'false', CLOUDFLARE_CF_FETCH_ENABLED: 'false' },
  });
  let log = '';
  child.stdout.on('data', (d) => (log += d));
  child.stderr.on('data', (d) => (log += d));
  const base = `http://127.0.0.1:${port}`;
  const deadline = Date.now() + START_TIMEOUT_MS;
  while (Date.now() < deadline) {
    if (child.exitCode !== null) break;
    try {
      const res = await fetch(`${base}/`, { signal: AbortSignal.timeout(2_000) });
      await res.arrayBuffer();
      return { child, base, dir, log: () => log };
    } catch {
      await sleep(500);
    }
  }
  stop({ child, dir });
  throw new Error(`the test Worker did not start within ${START_TIMEOUT_MS} ms:\n${log.slice(-3000)}`);
}

/** TERM to the whole group, KILL after a grace; the persist dir goes too. */
async function stop(w) {
  if (!w) return;
  const group = -w.child.pid;
  try {
    process.kill(group, 'SIGTERM');
  } catch {}
  const exited = new Promise((r) => w.child.once('exit', r));
  if (w.child.exitCode === null) await Promise.race([exited, sleep(STOP_GRACE_MS)]);
  try {
    process.kill(group, 'SIGKILL');
  } catch {}
  fs.rmSync(w.dir, { recursive: true, force: true });
}

before(async () => {
  checkDist();
  [hub, worker] = await Promise.all([Hub.start(), startWorker()]);
});

after(async () => {
  await stop(worker);
  await hub?.cleanup();
});

for (const transport of ['ws', 'sse', 'poll', 'auto']) {
  for (const width of [1, 2]) {
    it(`in workerd, ${transport} over ${width} channel(s): since 0 and live, each event once, in order`, { timeout: 90_000 }, async () => {
      const channels = Array.from({ length: width }, (_, i) => uniq(`workerd-${transport}-${i}`));
      const q = new URLSearchParams({ hub: hub.base, token: ADMIN(), transport });
      for (const c of channels) q.append('channel', c);
      const res = await fetch(`${worker.base}/run?${q}`, { signal: AbortSignal.timeout(60_000) });
      const text = await res.text();
      assert.equal(res.status, 200, `${text}\n--- worker log ---\n${worker.log().slice(-3000)}`);
      const ran = JSON.parse(text);
      const want = Object.values(await storedCount(hub.base, channels, 4)).flat();
      const key = (e) => `${e.channel}#${e.id}`;
      // Every stored event once, as stored, each channel's in id order.
      for (const c of channels) {
        assert.deepEqual(ran.got.filter((e) => e.channel === c), want.filter((e) => e.channel === c),
          `${c}: got ${ran.got.map(key)} (states ${ran.states})`);
      }
      assert.equal(ran.got.length, want.length);
      assert.equal(ran.cursor, channels.map((c) => `${c}=4`).join(','));
      assert.equal(ran.polled, width * 4);
      // `auto` starts on WebSocket here too, and stays there.
      const first = transport === 'auto' ? 'ws' : transport;
      assert.equal(ran.states[0], `connecting/${first}`, ran.states.join(', '));
      assert.equal(ran.states[1], `open/${first}`, ran.states.join(', '));
    });
  }
}
