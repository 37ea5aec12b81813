// Shared pieces of the client's end-to-end tests: the hub launcher of the browser tests, tokens,
// a recorder around `subscribe`, what the hub has stored (read over /poll with plain fetch, not
// with the client under test), the exactly-once comparison, bounded waits, and a small local
// proxy (refusing or tunnelling WebSocket upgrades, buffering whole answers, losing or failing
// publishes). Everything here talks to 127.0.0.1 only, and every wait has a deadline.

import assert from 'node:assert/strict';
import { createHmac, randomBytes } from 'node:crypto';
import fs from 'node:fs';
import http from 'node:http';
import net from 'node:net';
import path from 'node:path';
import { test } from 'node:test';
import { fileURLToPath } from 'node:url';
import WebSocket from 'ws';
import { Hub, SECRET, mint, ROOT } from '../../../tests/browser/hub.mjs';

export { Hub, SECRET, mint, ROOT, WebSocket };

const HERE = path.dirname(fileURLToPath(import.meta.url));
export const DIST = path.join(HERE, '../dist/index.js');
const SRC = path.join(HERE, '../src/index.ts');

/** The built client must exist and be at least as new as its source (else the tests test old code). */
export function checkDist() {
  if (!fs.existsSync(DIST)) throw new Error(`no ${DIST}: run \`node clients/js/build.mjs\``);
  if (fs.statSync(SRC).mtimeMs > fs.statSync(DIST).mtimeMs) {
    throw new Error('clients/js/src/index.ts is newer than dist/index.js: run `node clients/js/build.mjs` first');
  }
}

/** The client under test, imported once the check above passed. */
export async function loadClient() {
  checkDist();
  return import('../dist/index.js');
}

export const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/** A channel name no other test uses: `prefix-<random>`. */
export function uniq(prefix = 'c') {
  return `${prefix}-${randomBytes(4).toString('hex')}`;
}

/** A token with every right on every channel (a header token: ttl over the query limit is fine). */
export const ADMIN = () => mint({ publish: ['*'], subscribe: ['*'], ttl: 3600 });

/** An HS256 JWT signed with the hubs' `SECRET`, for claims `mint` cannot make (`edgehub.info`). */
export function sign(claims) {
  const b64 = (v) => Buffer.from(JSON.stringify(v)).toString('base64url');
  const signed = `${b64({ alg: 'HS256', typ: 'JWT' })}.${b64(claims)}`;
  return `${signed}.${createHmac('sha256', SECRET).update(signed).digest('base64url')}`;
}

/** A token for a presence member: its `sub`, its `info`, rights on `channels`. */
export function memberToken(sub, channels, { info, ttl = 300 } = {}) {
  const iat = Math.floor(Date.now() / 1000);
  const edgehub = { publish: channels, subscribe: channels };
  if (info !== undefined) edgehub.info = info;
  return sign({ iat, exp: iat + ttl, sub, edgehub });
}

/**
 * Waits until `cond()` is truthy, checking every `every` ms, for at most `timeout` ms; then
 * fails with `what` and, when given, `details()` (what was received, the states …).
 */
export async function until(cond, { timeout = 20_000, every = 50, what = 'a condition', details } = {}) {
  const deadline = Date.now() + timeout;
  for (;;) {
    if (await cond()) return;
    if (Date.now() > deadline) {
      throw new Error(`timed out after ${timeout} ms waiting for ${what}${details ? `\n${details()}` : ''}`);
    }
    await sleep(every);
  }
}

/**
 * Everything the hub has stored on `channels`, read from /poll with plain fetch (following
 * `more`, at most 50 pages): `{channel: [envelope…]}`, each channel's events in id order.
 */
export async function stored(base, channels, { token = ADMIN(), topics = [], topicPatterns = [] } = {}) {
  const list = [channels].flat();
  const out = Object.fromEntries(list.map((c) => [c, []]));
  let since = '0';
  for (let page = 0; page < 50; page++) {
    const q = new URLSearchParams();
    for (const c of list) q.append('channel', c);
    q.set('since', since);
    q.set('limit', '1000');
    for (const t of topics) q.append('topic', t);
    for (const t of topicPatterns) q.append('topic_pattern', t);
    const res = await fetch(`${base}/poll?${q}`, { headers: { authorization: `Bearer ${token}` }, signal: AbortSignal.timeout(15_000) });
    const body = await res.text();
    if (res.status !== 200) throw new Error(`poll ${q}: ${res.status} ${body}`);
    const p = JSON.parse(body);
    for (const e of p.events) out[e.channel].push(e);
    since = p.next;
    if (!p.more) return out;
  }
  throw new Error(`poll of ${list} never ended`);
}

/**
 * Waits until /poll shows `count` events on each channel (a publish is answered before the
 * mirror has it), then returns them as `stored` does.
 */
export async function storedCount(base, channels, count, options = {}) {
  let s;
  await until(async () => {
    s = await stored(base, channels, options);
    return Object.values(s).every((events) => events.length >= count);
  }, { timeout: 20_000, every: 100, what: `${count} events stored on each of ${channels}`, details: () => summary(s) });
  return s;
}

/** `{channel: [ids…]}` of a list of envelopes or of a `stored` answer, for messages. */
export function ids(events) {
  const by = {};
  if (Array.isArray(events)) for (const e of events) (by[e.channel] ??= []).push(e.id);
  else for (const [c, list] of Object.entries(events || {})) by[c] = list.map((e) => e.id);
  return by;
}

export function summary(events) {
  return JSON.stringify(ids(events));
}

/** State changes in a line: `connecting/ws → retrying/ws (why) → open/sse`… */
export function stateLine(states) {
  const why = (e) => (typeof e === 'string' ? e : `${e.name}: ${e.message}`);
  return states.map((s) => `${s.state}/${s.transport}${s.error ? ` (${why(s.error)})` : ''}`).join(' → ');
}

/**
 * Subscribes through `client` and records everything the subscription reports: `events` (in
 * arrival order), `states`, `gaps`, `presence`. Extra options are passed through.
 */
export function record(client, channels, options = {}) {
  const rec = { events: [], states: [], gaps: [], presence: [] };
  rec.sub = client.subscribe(channels, {
    ...options,
    onEvent: (e) => {
      rec.events.push(e);
      options.onEvent?.(e);
    },
    onState: (s) => {
      rec.states.push({ ...s, at: Date.now() });
      options.onState?.(s);
    },
    onGap: (g) => {
      rec.gaps.push(g);
      options.onGap?.(g);
    },
    onPresence: (p, members) => {
      rec.presence.push({ event: p, members: members.map((m) => m.sub).sort() });
      options.onPresence?.(p, members);
    },
  });
  rec.describe = () => `received ${summary(rec.events)}; states ${stateLine(rec.states)}; gaps ${JSON.stringify(rec.gaps)}; cursor ${rec.sub.cursor}`;
  return rec;
}

/** Waits until the subscription's state is `open` (over `transport`, when given). */
export function opened(rec, { transport, timeout = 20_000 } = {}) {
  return until(() => rec.sub.state === 'open' && (!transport || rec.sub.transport === transport), {
    timeout,
    what: `the subscription open${transport ? ` over ${transport}` : ''}`,
    details: rec.describe,
  });
}

/**
 * Waits until `rec` has received, on every channel of `want` (a `stored` answer, maybe cut to a
 * suffix), at least as many events as `want` holds, then checks that what it received is
 * exactly `want`: each event once, in order per channel, nothing missing, same envelopes.
 */
export async function expectDelivered(rec, want, { label = 'subscription', timeout = 30_000 } = {}) {
  const got = () => {
    const by = Object.fromEntries(Object.keys(want).map((c) => [c, []]));
    for (const e of rec.events) (by[e.channel] ??= []).push(e);
    return by;
  };
  await until(() => Object.entries(want).every(([c, list]) => (got()[c] || []).length >= list.length), {
    timeout,
    what: `${label} to receive ${summary(want)}`,
    details: rec.describe,
  }).catch((e) => {
    throw new Error(`${e.message}\nexpected ${summary(want)}`);
  });
  const received = got();
  for (const [c, list] of Object.entries(want)) {
    const r = received[c].map((e) => e.id);
    const w = list.map((e) => e.id);
    const seen = new Set();
    const dups = r.filter((id) => seen.has(id) || !seen.add(id));
    assert.deepEqual(r, w, `${label}, channel ${c}: received ids ${JSON.stringify(r)}, stored ${JSON.stringify(w)}` +
      `${dups.length ? `; repeated ${dups}` : ''}; missing ${JSON.stringify(w.filter((id) => !r.includes(id)))}\n${rec.describe()}`);
    assert.deepEqual(received[c], list, `${label}, channel ${c}: the envelopes differ from /poll's`);
  }
  const extra = Object.keys(received).filter((c) => !(c in want));
  assert.deepEqual(extra, [], `${label}: events of channels not asked for`);
}

/** `stored` cut to the events after `after` (`{channel: id}`). */
export function after(all, positions) {
  return Object.fromEntries(Object.entries(all).map(([c, list]) => [c, list.filter((e) => e.id > (positions[c] ?? 0))]));
}

/**
 * `it(name, options, fn)` bound to a hub (a function returning it, since it starts in `before`):
 * a failure's message gets the hub's log tail (the hub's directory is removed in `after`; set
 * EDGEHUB_BROWSER_KEEP=1 to keep it).
 */
export function bindIt(getHub) {
  return (name, options, fn) =>
    test(name, options, async (t) => {
      try {
        await fn(t);
      } catch (e) {
        const hub = getHub();
        if (hub && e && typeof e === 'object') e.message += `\n--- hub log tail (${hub.dir}) ---\n${hub.logTail()}`;
        throw e;
      }
    });
}

/** Closes subscriptions (and anything with `close`) however the test ended. */
export class Cleanup {
  #items = [];
  add(x) {
    this.#items.push(x);
    return x;
  }
  async run() {
    for (const x of this.#items.splice(0).reverse()) {
      try {
        await (x.sub || x).close();
      } catch {}
    }
  }
}

/**
 * A local HTTP proxy in front of `target` (`http://127.0.0.1:port`), on a free 127.0.0.1 port.
 * Its `mode` may be changed while it runs:
 * - `upgrades: 'refuse'` (default): a WebSocket upgrade is answered 403 and the socket closed (a
 *   proxy that does not carry WebSockets); `'pass'`: the upgrade is tunnelled to the hub.
 * - `buffer: true`: each answer is held until it has ended, then sent whole with a length (a
 *   proxy that buffers, so a stream never starts).
 * Publishes can be made to fail (counted down, whatever the mode):
 * - `dropPosts: n`: the first n POSTs are forwarded, their answer read to its end, and then the
 *   client's connection is destroyed instead of answering (stored, but the client sees a network
 *   error).
 * - `failPosts: n`: the first n POSTs are answered 503 `unavailable` without reaching the hub.
 * Records `posts` (url, idempotency-key, what became of it) and `upgrades` (urls).
 */
export async function startProxy(target, { upgrades = 'refuse', buffer = false, dropPosts = 0, failPosts = 0 } = {}) {
  const up = new URL(target);
  const mode = { upgrades, buffer };
  const sockets = new Set();
  const log = { posts: [], upgrades: [], requests: 0 };
  let drops = dropPosts;
  let fails = failPosts;
  const HOP = ['connection', 'keep-alive', 'transfer-encoding', 'upgrade', 'proxy-connection', 'te', 'trailer'];
  const strip = (h) => Object.fromEntries(Object.entries(h).filter(([k]) => !HOP.includes(k.toLowerCase())));

  const server = http.createServer((req, res) => {
    log.requests++;
    const fail = req.method === 'POST' && fails > 0 && fails--;
    const drop = !fail && req.method === 'POST' && drops > 0 && drops--;
    const post = req.method === 'POST' ? { url: req.url, key: req.headers['idempotency-key'], dropped: !!drop, failed: !!fail } : null;
    if (post) log.posts.push(post);
    if (fail) {
      post.status = 503;
      req.resume();
      const body = JSON.stringify({ type: 'urn:edgehub:problem:unavailable', title: 'Unavailable', status: 503, detail: 'the test proxy says no', code: 'unavailable' });
      res.writeHead(503, { 'content-type': 'application/problem+json', 'content-length': Buffer.byteLength(body) });
      res.end(body);
      return;
    }
    const out = http.request({
      host: up.hostname, port: up.port, method: req.method, path: req.url, agent: false,
      headers: { ...strip(req.headers), host: up.host },
    });
    req.pipe(out);
    out.on('error', () => res.destroy());
    res.on('close', () => out.destroy());
    out.on('response', (answer) => {
      if (post) post.status = answer.statusCode;
      if (drop) {
        // Let the hub finish (the event is stored), then drop the client without an answer.
        answer.resume();
        answer.on('end', () => req.socket.destroy());
        return;
      }
      if (mode.buffer) {
        const chunks = [];
        answer.on('data', (c) => chunks.push(c));
        answer.on('end', () => {
          const body = Buffer.concat(chunks);
          res.writeHead(answer.statusCode, { ...strip(answer.headers), 'content-length': body.length });
          res.end(body);
        });
        return;
      }
      res.writeHead(answer.statusCode, strip(answer.headers));
      res.flushHeaders();
      answer.pipe(res);
    });
  });
  server.on('connection', (s) => {
    sockets.add(s);
    s.on('close', () => sockets.delete(s));
  });
  server.on('upgrade', (req, socket, head) => {
    log.upgrades.push(req.url);
    if (mode.upgrades !== 'pass') {
      socket.end('HTTP/1.1 403 Forbidden\r\ncontent-length: 0\r\nconnection: close\r\n\r\n');
      return;
    }
    const tunnel = net.connect(Number(up.port), up.hostname, () => {
      const lines = [`${req.method} ${req.url} HTTP/1.1`];
      for (let i = 0; i < req.rawHeaders.length; i += 2) {
        lines.push(`${req.rawHeaders[i]}: ${req.rawHeaders[i].toLowerCase() === 'host' ? up.host : req.rawHeaders[i + 1]}`);
      }
      tunnel.write(`${lines.join('\r\n')}\r\n\r\n`);
      if (head.length) tunnel.write(head);
      tunnel.pipe(socket);
      socket.pipe(tunnel);
    });
    sockets.add(tunnel);
    tunnel.on('close', () => (sockets.delete(tunnel), socket.destroy()));
    tunnel.on('error', () => socket.destroy());
    socket.on('close', () => tunnel.destroy());
    socket.on('error', () => tunnel.destroy());
  });
  server.on('clientError', (_e, socket) => socket.destroy());
  await new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(0, '127.0.0.1', resolve);
  });
  const { port } = server.address();
  return {
    base: `http://127.0.0.1:${port}`,
    log,
    mode,
    close() {
      for (const s of sockets) s.destroy();
      return new Promise((r) => server.close(() => r()));
    },
  };
}

/** Publishes `n` events `{n: start…}` to `channel` in one batch through `client`; returns their ids. */
export function publishMany(client, channel, n, { start = 1, topics, size = 0 } = {}) {
  const pad = size ? 'x'.repeat(size) : undefined;
  const events = Array.from({ length: n }, (_, i) => {
    const e = { type: 'test', data: pad ? { n: start + i, pad } : { n: start + i } };
    if (topics) e.topics = topics;
    return e;
  });
  return client.publish(channel, events);
}
