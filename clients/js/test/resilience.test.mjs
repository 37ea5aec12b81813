// The client when things go wrong, against a real hub (`wrangler dev`):
// - the hub killed and started again (same port, same storage) while events keep being published:
//   ws, sse, poll and auto subscriptions, one channel and two, each end with every event once;
// - `auto` behind a local proxy that refuses WebSocket upgrades settles on sse, and behind one
//   that buffers whole answers steps down to poll; in both it tries the better transport again
//   after `retryBetter`, steps back down, and loses nothing; once the proxy carries WebSockets
//   and streams again, it goes back up to ws for good;
// - `publish` through a proxy that loses the answer (the event is stored, the client sees a
//   network error) or answers 503: retried with the same idempotency key, stored once, and the
//   id returned is the stored one; a 4xx is not retried.
// Every delivery is compared with what /poll says is stored.
// Run: `node clients/js/build.mjs && node --test clients/js/test/*.test.mjs` (this file alone:
// `node --test clients/js/test/resilience.test.mjs`).

import assert from 'node:assert/strict';
import { after, before, describe } from 'node:test';
import {
  ADMIN, Cleanup, Hub, WebSocket, bindIt, expectDelivered, loadClient, mint, opened, publishMany, record, startProxy,
  stateLine, storedCount, uniq, until, sleep,
} from './helpers.mjs';

let hub;
let EdgeHub;
let HubError;
const it = bindIt(() => hub);

before(async () => {
  ({ EdgeHub, HubError } = await loadClient());
  hub = await Hub.start();
});

after(async () => {
  await hub?.cleanup();
});

function publishAll(pub, channels, n, start) {
  return Promise.all(channels.map((c) => publishMany(pub, c, n, { start })));
}

/** How many state changes match `state/transport`. */
const count = (rec, state, transport) => rec.states.filter((s) => s.state === state && s.transport === transport).length;

it('the hub killed and started again mid-stream: every subscription ends with every event once', { timeout: 240_000 }, async () => {
  const clean = new Cleanup();
  try {
    const channels = [uniq('restart-a'), uniq('restart-b')];
    const pub = new EdgeHub({ url: hub.base, token: ADMIN(), backoff: [200, 1000] });
    const options = { url: hub.base, token: ADMIN(), WebSocket, pollInterval: 200, heartbeat: 2, backoff: [200, 2000] };
    await publishAll(pub, channels, 3, 1);
    const recs = {};
    const subscribed = {};
    for (const transport of ['ws', 'sse', 'poll', 'auto']) {
      const c = new EdgeHub({ ...options, transport });
      for (const on of transport === 'auto' ? [channels] : [channels, [channels[0]]]) {
        const name = `${transport}, ${on.length} channel(s)`;
        recs[name] = clean.add(record(c, on.length === 1 ? on[0] : on, { since: 0 }));
        subscribed[name] = on;
      }
    }
    await Promise.all(Object.values(recs).map((r) => opened(r)));

    // One event per channel every ~100 ms, each publish retried through the outage.
    let n = 3;
    let stop = false;
    const errors = [];
    const publisher = (async () => {
      for (let round = 0; round < 1000 && !stop; round++) {
        n++;
        for (const c of channels) await pub.publish(c, { type: 'test', data: { n } }, { retries: 40 });
        await sleep(100);
      }
    })().catch((e) => errors.push(e));

    await until(() => n >= 8, { what: 'five rounds published before the stop' });
    const stoppedAt = Date.now();
    await hub.stop();
    const noticed = (r) => r.states.some((s) => s.at >= stoppedAt && s.state === 'retrying');
    await until(() => Object.values(recs).every(noticed), {
      timeout: 30_000, what: 'every subscription to notice the hub is gone',
      details: () => Object.entries(recs).map(([k, r]) => `${k}: ${stateLine(r.states)}`).join('\n'),
    });
    const resumedAt = n;
    await hub.start();
    await until(() => n >= resumedAt + 10 || errors.length, { timeout: 90_000, what: 'ten rounds published after the restart' });
    stop = true;
    await publisher;
    assert.deepEqual(errors, [], 'the publisher rode out the restart');

    const all = await storedCount(hub.base, channels, n);
    assert.deepEqual(Object.values(all).map((l) => l.map((e) => e.data.n)), channels.map(() => Array.from({ length: n }, (_, i) => i + 1)),
      'each publish stored once (retried with its idempotency key), in order');
    for (const [name, rec] of Object.entries(recs)) {
      const want = Object.fromEntries(subscribed[name].map((c) => [c, all[c]]));
      await expectDelivered(rec, want, { label: name, timeout: 60_000 });
      await until(() => rec.sub.state === 'open', { what: `${name} open again`, details: rec.describe });
      assert.ok(rec.states.filter((s) => s.state === 'open').length >= 2, `${name} reconnected: ${stateLine(rec.states)}`);
    }
  } finally {
    await clean.run();
  }
});

describe('auto steps down where a transport cannot work, and back up', { concurrency: true }, () => {
  it('a proxy refusing WebSocket upgrades: auto settles on sse, tries ws again after retryBetter, loses nothing', { timeout: 90_000 }, async () => {
    const clean = new Cleanup();
    const proxy = clean.add(await startProxy(hub.base, { upgrades: 'refuse' }));
    try {
      const channels = [uniq('noup-a'), uniq('noup-b')];
      const pub = new EdgeHub({ url: hub.base, token: ADMIN() });
      await publishAll(pub, channels, 3, 1);
      // A refused upgrade fails at once; the timeout only bounds how long sse may take to start.
      const c = new EdgeHub({ url: proxy.base, token: ADMIN(), WebSocket, heartbeat: 2, connectTimeout: 2500, retryBetter: 3000, backoff: [100, 1000] });
      const rec = clean.add(record(c, channels, { since: 0 }));
      await opened(rec, { transport: 'sse' });
      assert.deepEqual(rec.states.slice(0, 3).map((s) => `${s.state}/${s.transport}`), ['connecting/ws', 'connecting/sse', 'open/sse'], stateLine(rec.states));
      await publishAll(pub, channels, 2, 4);
      // After retryBetter it tries ws again, fails, and comes back to sse.
      await until(() => count(rec, 'connecting', 'ws') >= 2 && count(rec, 'open', 'sse') >= 2 && rec.sub.state === 'open', {
        timeout: 30_000, what: 'a second try of ws and a return to sse', details: rec.describe,
      });
      await publishAll(pub, channels, 2, 6);
      await expectDelivered(rec, await storedCount(hub.base, channels, 7), { label: 'auto behind a proxy without WebSockets' });
      assert.equal(count(rec, 'open', 'ws'), 0, stateLine(rec.states));
      assert.ok(proxy.log.upgrades.length >= 2, `upgrades the proxy refused: ${proxy.log.upgrades.length}`);
      assert.ok(!rec.states.some((s) => s.state === 'closed'), stateLine(rec.states));
    } finally {
      await clean.run();
    }
  });

  it('a proxy buffering whole answers: auto steps down to poll, tries ws and sse again after retryBetter, loses nothing', { timeout: 90_000 }, async () => {
    const clean = new Cleanup();
    const proxy = clean.add(await startProxy(hub.base, { upgrades: 'refuse', buffer: true }));
    try {
      const channels = [uniq('buf-a'), uniq('buf-b')];
      const pub = new EdgeHub({ url: hub.base, token: ADMIN() });
      await publishAll(pub, channels, 3, 1);
      // sse waits out connectTimeout behind this proxy; a first page comes well within it.
      const c = new EdgeHub({ url: proxy.base, token: ADMIN(), WebSocket, heartbeat: 2, pollInterval: 200, connectTimeout: 2000, retryBetter: 4000, backoff: [100, 1000] });
      const rec = clean.add(record(c, channels, { since: 0 }));
      await opened(rec, { transport: 'poll' });
      assert.deepEqual(rec.states.slice(0, 4).map((s) => `${s.state}/${s.transport}`), ['connecting/ws', 'connecting/sse', 'connecting/poll', 'open/poll'], stateLine(rec.states));
      await publishAll(pub, channels, 2, 4);
      await until(() => count(rec, 'connecting', 'ws') >= 2 && count(rec, 'connecting', 'sse') >= 2 && count(rec, 'open', 'poll') >= 2 && rec.sub.state === 'open', {
        timeout: 30_000, what: 'a second try of ws and sse and a return to poll', details: rec.describe,
      });
      await publishAll(pub, channels, 2, 6);
      await expectDelivered(rec, await storedCount(hub.base, channels, 7), { label: 'auto behind a buffering proxy' });
      assert.equal(count(rec, 'open', 'ws') + count(rec, 'open', 'sse'), 0, stateLine(rec.states));
      assert.ok(!rec.states.some((s) => s.state === 'closed'), stateLine(rec.states));
    } finally {
      await clean.run();
    }
  });

  it('a buffering proxy with connectTimeout ≥ retryBetter: auto still gets down to poll and delivers', { timeout: 60_000 }, async () => {
    // The retryBetter timer must not cut short a lower transport that is still connecting.
    const clean = new Cleanup();
    const proxy = clean.add(await startProxy(hub.base, { upgrades: 'refuse', buffer: true }));
    try {
      const ch = uniq('slow-start');
      const pub = new EdgeHub({ url: hub.base, token: ADMIN() });
      await publishMany(pub, ch, 2);
      const c = new EdgeHub({ url: proxy.base, token: ADMIN(), WebSocket, heartbeat: 2, pollInterval: 200, connectTimeout: 3000, retryBetter: 1500, backoff: [100, 1000] });
      const rec = clean.add(record(c, ch, { since: 0 }));
      await opened(rec, { transport: 'poll', timeout: 30_000 });
      await expectDelivered(rec, await storedCount(hub.base, [ch], 2), { label: 'auto, connectTimeout 3000, retryBetter 1500' });
    } finally {
      await clean.run();
    }
  });

  for (const [from, start] of [['sse', { upgrades: 'refuse' }], ['poll', { upgrades: 'refuse', buffer: true }]]) {
    it(`auto goes back up from ${from} to ws once the proxy carries WebSockets and streams again, losing nothing`, { timeout: 90_000 }, async () => {
      const clean = new Cleanup();
      const proxy = clean.add(await startProxy(hub.base, start));
      try {
        const channels = [uniq(`up-${from}-a`), uniq(`up-${from}-b`)];
        const pub = new EdgeHub({ url: hub.base, token: ADMIN() });
        await publishAll(pub, channels, 3, 1);
        const c = new EdgeHub({ url: proxy.base, token: ADMIN(), WebSocket, heartbeat: 2, pollInterval: 200, connectTimeout: 2000, retryBetter: 3000, backoff: [100, 1000] });
        const rec = clean.add(record(c, channels, { since: 0 }));
        await opened(rec, { transport: from });
        await publishAll(pub, channels, 2, 4);
        Object.assign(proxy.mode, { upgrades: 'pass', buffer: false });
        await publishAll(pub, channels, 2, 6);
        await opened(rec, { transport: 'ws', timeout: 30_000 });
        await publishAll(pub, channels, 2, 8);
        await expectDelivered(rec, await storedCount(hub.base, channels, 9), { label: `auto from ${from} up to ws` });
        // Up for good: no more tries after a few retryBetter periods.
        const settled = rec.states.length;
        await sleep(3000);
        assert.equal(rec.states.length, settled, `stays on ws: ${stateLine(rec.states)}`);
        assert.equal(rec.sub.transport, 'ws');
      } finally {
        await clean.run();
      }
    });
  }
});

describe('publish retries store once', { concurrency: true }, () => {
  it('the answer lost on the way (stored, network error): retried with the same key, one event, the stored id', { timeout: 60_000 }, async () => {
    const proxy = await startProxy(hub.base, { dropPosts: 1 });
    try {
      const ch = uniq('lost-answer');
      const c = new EdgeHub({ url: proxy.base, token: ADMIN(), backoff: [50, 200] });
      const id = await c.publish(ch, { type: 'test', data: { once: true } });
      const all = await storedCount(hub.base, [ch], 1);
      assert.deepEqual(all[ch].map((e) => [e.id, e.data]), [[id, { once: true }]], `stored: ${JSON.stringify(all)}; proxy saw ${JSON.stringify(proxy.log.posts)}`);
      const posts = proxy.log.posts;
      assert.equal(posts.length, 2, JSON.stringify(posts));
      assert.deepEqual(posts.map((p) => [p.dropped, p.status]), [[true, 201], [false, 200]], 'stored by the first, replayed to the second');
      assert.ok(posts[0].key && posts[0].key === posts[1].key, `one idempotency key: ${JSON.stringify(posts)}`);
    } finally {
      await proxy.close();
    }
  });

  it('a batch with a caller\'s key, the answer lost twice: the ids returned are the stored ones', { timeout: 60_000 }, async () => {
    const proxy = await startProxy(hub.base, { dropPosts: 2 });
    try {
      const ch = uniq('lost-batch');
      const c = new EdgeHub({ url: proxy.base, token: ADMIN(), backoff: [50, 200] });
      const got = await c.publish(ch, [{ data: 'a' }, { data: 'b' }, { data: 'c' }], { idempotencyKey: `key-${ch}` });
      const all = await storedCount(hub.base, [ch], 3);
      assert.deepEqual(got, all[ch].map((e) => e.id));
      assert.deepEqual(all[ch].map((e) => e.data), ['a', 'b', 'c']);
      assert.deepEqual(proxy.log.posts.map((p) => p.key), Array(3).fill(`key-${ch}`), JSON.stringify(proxy.log.posts));
    } finally {
      await proxy.close();
    }
  });

  it('503 answers are retried; retries: 0 gives up at once; a 403 is not retried', { timeout: 60_000 }, async () => {
    const failing = await startProxy(hub.base, { failPosts: 2 });
    const dropping = await startProxy(hub.base, { dropPosts: 1 });
    const plain = await startProxy(hub.base);
    try {
      const ch = uniq('retry-kinds');
      const id = await new EdgeHub({ url: failing.base, token: ADMIN(), backoff: [50, 200] }).publish(ch, { data: 1 });
      assert.deepEqual(failing.log.posts.map((p) => p.status), [503, 503, 201]);
      assert.equal(new Set(failing.log.posts.map((p) => p.key)).size, 1);

      await assert.rejects(new EdgeHub({ url: dropping.base, token: ADMIN() }).publish(ch, { data: 2 }, { retries: 0 }),
        (e) => !(e instanceof HubError), 'a network error, as is');
      assert.equal(dropping.log.posts.length, 1);

      const readOnly = mint({ subscribe: ['*'], ttl: 300 });
      await assert.rejects(new EdgeHub({ url: plain.base, token: readOnly, backoff: [50, 200] }).publish(ch, { data: 3 }),
        (e) => e instanceof HubError && e.status === 403 && e.code === 'forbidden', 'a HubError 403 forbidden');
      assert.equal(plain.log.posts.length, 1, 'a 403 is not retried');

      const all = await storedCount(hub.base, [ch], 2);
      assert.deepEqual(all[ch].map((e) => [e.id, e.data]), [[id, 1], [id + 1, 2]]);
    } finally {
      await Promise.all([failing.close(), dropping.close(), plain.close()]);
    }
  });
});
