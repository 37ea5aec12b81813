// Why publishes fail when the local runtime is swamped (docs/benchmarks.md#dropped-publishes).
// Starts a hub (tests/browser/hub.mjs), opens N subscribers on one channel (half SSE, half
// WebSocket), then publishes P events at R a second, and prints how many publishes failed and
// why, when each failed (its send time + how long it waited, ms), and the delivery latencies.
//
//   node bench/repro/dropped-publishes.mjs [proxy|direct] [keepalive|fresh] [N] [P] [R]
//
// `proxy` publishes through wrangler's proxy (what every client of `make dev` sees); `direct`
// goes to the worker process's own port, around the proxy. `keepalive` publishes with fetch
// (pooled, kept-alive connections); `fresh` opens a new connection per publish. Needs the Worker
// bundle (`make -s build`) and `target/debug/edgehub-launch`. Bounded: N ≤ 2,000, P ≤ 1,000.

import { execSync } from 'node:child_process';
import http from 'node:http';
import WebSocket from 'ws';
import { Hub, mint } from '../../tests/browser/hub.mjs';

const [via = 'proxy', conn = 'keepalive', n = '1000', count = '200', rate = '20'] = process.argv.slice(2);
const N = Math.min(+n, 2000);
const P = Math.min(+count, 1000);
const R = +rate;
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const quantile = (a, p) => [...a].sort((x, y) => x - y)[Math.floor((a.length - 1) * p)];

/** POST on a connection of its own (no agent: no keep-alive reuse). */
function postFresh(url, headers, body) {
  return new Promise((resolve, reject) => {
    const req = http.request(url, { method: 'POST', headers, agent: false }, (res) => {
      let text = '';
      res.on('data', (d) => (text += d));
      res.on('end', () => resolve({ status: res.statusCode, text }));
      res.on('error', reject);
    });
    req.on('error', reject);
    req.setTimeout(60_000, () => req.destroy(new Error('no answer in 60 s')));
    req.end(body);
  });
}

async function postPooled(url, headers, body) {
  const res = await fetch(url, { method: 'POST', headers, body, signal: AbortSignal.timeout(60_000) });
  return { status: res.status, text: await res.text() };
}

/** The worker process's own port: the other workerd's listener that answers /healthz. */
async function workerPort(hub) {
  const ports = execSync('ss -ltnp').toString().split('\n')
    .filter((l) => l.includes('"workerd"'))
    .map((l) => Number(/127\.0\.0\.1:(\d+)/.exec(l)?.[1]))
    .filter((p) => p && p !== hub.port);
  for (const p of ports) {
    try {
      const res = await fetch(`http://127.0.0.1:${p}/healthz`, { signal: AbortSignal.timeout(2000) });
      if (res.status === 200 && (await res.text()).includes('ok')) return p;
    } catch {}
  }
  throw new Error(`no worker port among ${ports}`);
}

const hub = await Hub.start({ vars: { HEARTBEAT_SECONDS: '15' } });
const sockets = [];
try {
  const base = via === 'direct' ? `http://127.0.0.1:${await workerPort(hub)}` : hub.base;
  const token = mint({ publish: ['*'], subscribe: ['*'], ttl: 3000 });
  const urlToken = mint({ subscribe: ['*'], ttl: 290 });
  const channel = `drop-${Math.random().toString(36).slice(2, 8)}`;
  let delivered = 0;
  const latencies = [];
  const got = (data) => {
    delivered++;
    latencies.push(Date.now() - data.t);
  };
  for (let i = 0; i < N; i += 50) {
    await Promise.all(Array.from({ length: Math.min(50, N - i) }, async (_, k) => {
      if ((i + k) % 2) {
        const ws = new WebSocket(`${base.replace('http', 'ws')}/ws/${channel}?token=${urlToken}`);
        sockets.push(ws);
        ws.on('error', () => {});
        await new Promise((resolve, reject) => {
          const t = setTimeout(() => reject(new Error('no ready in 30 s')), 30_000);
          ws.on('message', (m) => {
            const f = JSON.parse(String(m));
            if (f.op === 'ready') clearTimeout(t), resolve();
            if (f.op === 'event') got(f.data);
          });
        });
      } else {
        const ctrl = new AbortController();
        sockets.push({ close: () => ctrl.abort() });
        const res = await fetch(`${base}/sse/${channel}`, { headers: { authorization: `Bearer ${token}` }, signal: ctrl.signal });
        const reader = res.body.pipeThrough(new TextDecoderStream()).getReader();
        (async () => {
          let buf = '';
          for (;;) {
            const { value, done } = await reader.read();
            if (done) return;
            buf += value;
            let at;
            while ((at = buf.indexOf('\n\n')) >= 0) {
              const data = buf.slice(0, at).split('\n').find((l) => l.startsWith('data: '));
              buf = buf.slice(at + 2);
              if (data) got(JSON.parse(data.slice(6)));
            }
          }
        })().catch(() => {});
      }
    }));
  }
  console.log(`${N} subscribers on ${channel}; publishing ${P} at ${R}/s via ${via}, ${conn} connections, to ${base}`);
  const post = conn === 'fresh' ? postFresh : postPooled;
  const headers = { authorization: `Bearer ${token}`, 'content-type': 'application/json' };
  const failed = [];
  const reasons = {};
  const answered = [];
  const tasks = [];
  const start = Date.now();
  for (let i = 0; i < P; i++) {
    await sleep(start + (i * 1000) / R - Date.now());
    tasks.push((async () => {
      const sent = Date.now();
      let why = null;
      try {
        const r = await post(`${base}/channels/${channel}/events`, headers, JSON.stringify({ data: { t: sent, i } }));
        if (r.status !== 201) why = `${r.status} ${r.text.slice(0, 50)}`;
      } catch (e) {
        why = String(e.cause || e);
      }
      if (why) {
        failed.push(`${sent - start}+${Date.now() - sent}`);
        reasons[why] = (reasons[why] || 0) + 1;
      } else answered.push(Date.now() - sent);
    })());
  }
  await Promise.all(tasks);
  const want = answered.length * N;
  for (let i = 0; i < 300 && delivered < want; i++) await sleep(100);
  console.log(JSON.stringify({
    failed: failed.length, reasons, failedAt: failed,
    delivered, want,
    deliverP50: quantile(latencies, 0.5), deliverP99: quantile(latencies, 0.99),
    answeredP50: quantile(answered, 0.5), answeredP99: quantile(answered, 0.99),
  }, null, 1));
} finally {
  for (const s of sockets) try { s.close(); } catch {}
  await hub.cleanup();
}
process.exit(0);
