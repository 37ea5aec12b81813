// The client's subscriptions on every transport against a real hub (`wrangler dev`): forced
// `ws`, `sse` and `poll`, and `auto`, over one channel and over three. Each test compares what
// the client delivered with what /poll says is stored: every event exactly once, in order per
// channel, nothing missing. Also: "from now on" starts, `since` forms, resuming a new
// subscription from `sub.cursor` (on the same and on another transport), async iteration ending
// on `close()`, topic filters on each transport, and `hub.poll()`.
// Run: `node clients/js/build.mjs && node --test clients/js/test/*.test.mjs` (this file alone:
// `node --test clients/js/test/transports.test.mjs`); needs the Worker bundle (`make -s build`)
// and `target/debug/edgehub-launch`.

import assert from 'node:assert/strict';
import { after, before, describe } from 'node:test';
import {
  ADMIN, Cleanup, Hub, WebSocket, after as cut, bindIt, expectDelivered, loadClient, opened, publishMany, record,
  stateLine, storedCount, stored, summary, uniq, until, sleep,
} from './helpers.mjs';

const TRANSPORTS = ['ws', 'sse', 'poll', 'auto'];
const TIMEOUT = 90_000;

let hub;
let EdgeHub;
const it = bindIt(() => hub);

before(async () => {
  ({ EdgeHub } = await loadClient());
  hub = await Hub.start();
});

after(async () => {
  await hub?.cleanup();
});

/** A client on the hub with every right, over `transport`, quick to poll and to retry. */
function client(transport, extra = {}) {
  return new EdgeHub({ url: hub.base, token: ADMIN(), transport, WebSocket, pollInterval: 200, heartbeat: 2, backoff: [100, 1000], ...extra });
}

/** Publishes `n` events to each channel (one batch each), all channels at once. */
function publishAll(pub, channels, n, start) {
  return Promise.all(channels.map((c) => publishMany(pub, c, n, { start })));
}

describe('every transport', { concurrency: true }, () => {
  for (const transport of TRANSPORTS) {
    for (const width of [1, 3]) {
      it(`${transport}, ${width} channel(s): since 0 replays, live events follow, cursor resumes a new subscription`, { timeout: TIMEOUT }, async () => {
        const clean = new Cleanup();
        try {
          const channels = Array.from({ length: width }, (_, i) => uniq(`${transport}${width}-${i}`));
          const hubc = client(transport);
          // Three stored before, then four live, one at a time and as a batch.
          await publishAll(hubc, channels, 3, 1);
          const rec = clean.add(record(hubc, width === 1 ? channels[0] : channels, { since: 0 }));
          await opened(rec);
          for (const c of channels) await hubc.publish(c, { type: 'test', data: { n: 4 } });
          await publishAll(hubc, channels, 3, 5);
          const all = await storedCount(hub.base, channels, 7);
          await expectDelivered(rec, all, { label: `${transport} since 0` });
          assert.equal(rec.sub.transport, transport === 'auto' ? 'ws' : transport, `transport: ${stateLine(rec.states)}`);
          assert.equal(rec.sub.cursor, channels.map((c) => `${c}=7`).join(','));
          assert.deepEqual(rec.sub.positions, Object.fromEntries(channels.map((c) => [c, 7])));
          assert.equal(rec.states.filter((s) => s.state === 'open').length, 1, `one connection: ${stateLine(rec.states)}`);

          // Closed: nothing more arrives; a new subscription from its cursor gets exactly what followed.
          const cursor = rec.sub.cursor;
          rec.sub.close();
          assert.equal(rec.sub.state, 'closed');
          await publishAll(hubc, channels, 2, 8);
          const next = clean.add(record(hubc, channels, { since: cursor }));
          await opened(next);
          await publishAll(hubc, channels, 1, 10);
          const all2 = await storedCount(hub.base, channels, 10);
          await expectDelivered(next, cut(all2, Object.fromEntries(channels.map((c) => [c, 7]))), { label: `${transport} resumed from ${cursor}` });
          await sleep(400); // a poll round or two: nothing late
          assert.equal(rec.events.length, 7 * width, `the closed subscription stayed closed: ${rec.describe()}`);
          assert.equal(next.events.length, 3 * width, `no repeats after the end: ${next.describe()}`);
        } finally {
          await clean.run();
        }
      });
    }
  }

  for (const transport of ['ws', 'sse', 'poll']) {
    it(`${transport}: without since, a subscription starts from now on (single and multi-channel)`, { timeout: TIMEOUT }, async () => {
      const clean = new Cleanup();
      try {
        const [a, b] = [uniq(`now-${transport}-a`), uniq(`now-${transport}-b`)];
        const hubc = client(transport);
        await publishAll(hubc, [a, b], 2, 1);
        await storedCount(hub.base, [a, b], 2);
        const one = clean.add(record(hubc, a));
        const two = clean.add(record(hubc, [a, b]));
        await Promise.all([opened(one), opened(two)]);
        await publishAll(hubc, [a, b], 2, 3);
        const all = await storedCount(hub.base, [a, b], 4);
        await expectDelivered(one, cut({ [a]: all[a] }, { [a]: 2 }), { label: `${transport} single, from now on` });
        await expectDelivered(two, cut(all, { [a]: 2, [b]: 2 }), { label: `${transport} multi, from now on` });
      } finally {
        await clean.run();
      }
    });
  }

  it('since as positions by channel, as a stream cursor string and as a digit string', { timeout: TIMEOUT }, async () => {
    const clean = new Cleanup();
    try {
      const [a, b] = [uniq('since-a'), uniq('since-b')];
      const hubc = client('sse');
      await publishAll(hubc, [a, b], 4, 1);
      await storedCount(hub.base, [a, b], 4);
      // `a` from after 2; `b` left out: from now on.
      const byChannel = clean.add(record(hubc, [a, b], { since: { [a]: 2 } }));
      const cursorString = clean.add(record(client('ws'), [a, b], { since: `${a}=3,${b}=1` }));
      const digits = clean.add(record(client('poll'), [a, b], { since: '3' }));
      await Promise.all([opened(byChannel), opened(cursorString), opened(digits)]);
      await publishAll(hubc, [a, b], 1, 5);
      const all = await storedCount(hub.base, [a, b], 5);
      await expectDelivered(byChannel, cut(all, { [a]: 2, [b]: 4 }), { label: 'since {a: 2}' });
      await expectDelivered(cursorString, cut(all, { [a]: 3, [b]: 1 }), { label: `since "${a}=3,${b}=1"` });
      await expectDelivered(digits, cut(all, { [a]: 3, [b]: 3 }), { label: 'since "3"' });
    } finally {
      await clean.run();
    }
  });

  it('a cursor carries over from one transport to the next: ws → sse → poll → ws', { timeout: TIMEOUT }, async () => {
    const clean = new Cleanup();
    try {
      const channels = [uniq('chain-a'), uniq('chain-b')];
      const pub = client('poll');
      let since = 0;
      let delivered = 0;
      for (const transport of ['ws', 'sse', 'poll', 'ws']) {
        await publishAll(pub, channels, 2, delivered + 1);
        const rec = clean.add(record(client(transport), channels, { since }));
        await opened(rec);
        await publishAll(pub, channels, 1, delivered + 3);
        const all = await storedCount(hub.base, channels, delivered + 3);
        await expectDelivered(rec, cut(all, Object.fromEntries(channels.map((c) => [c, delivered]))), { label: `${transport} since ${since}` });
        delivered += 3;
        since = rec.sub.cursor;
        assert.equal(since, channels.map((c) => `${c}=${delivered}`).join(','));
        rec.sub.close();
      }
    } finally {
      await clean.run();
    }
  });

  for (const transport of ['ws', 'sse', 'poll']) {
    it(`${transport}: for await … of a subscription yields each event once (a slow loop body included) and ends on close()`, { timeout: TIMEOUT }, async () => {
      const channels = [uniq(`iter-${transport}-a`), uniq(`iter-${transport}-b`)];
      const hubc = client(transport);
      await publishAll(hubc, channels, 3, 1);
      const sub = hubc.subscribe(channels, { since: 0 });
      const got = [];
      let ended = false;
      const loop = (async () => {
        for await (const e of sub) {
          got.push(e);
          // Live events once the replay is in, arriving while this body is busy: buffered.
          if (got.length === 6) publishAll(hubc, channels, 2, 4).catch(() => {});
          await sleep(30);
        }
        ended = true;
      })();
      try {
        const all = await storedCount(hub.base, channels, 5);
        await until(() => got.length >= 10, { what: 'ten events through the iterator', details: () => summary(got) });
        await expectDelivered({ events: got, describe: () => summary(got) }, all, { label: `${transport} iterator` });
        // The iterator is waiting for more: close() ends it, without an error.
        await sleep(300);
        assert.equal(ended, false);
        sub.close();
        await Promise.race([loop, sleep(10_000).then(() => assert.fail('the for-await loop did not end within 10 s of close()'))]);
        assert.equal(ended, true);
        assert.equal(sub.state, 'closed');
      } finally {
        sub.close();
      }
    });
  }

  for (const transport of ['ws', 'sse', 'poll']) {
    it(`${transport}: without onEvent, events wait for a for-await loop started late; break closes the subscription`, { timeout: TIMEOUT }, async () => {
      const channels = [uniq(`late-${transport}-a`), uniq(`late-${transport}-b`)];
      const hubc = client(transport);
      await publishAll(hubc, channels, 2, 1);
      const states = [];
      const sub = hubc.subscribe(channels, { since: 0, onState: (s) => states.push(s) });
      try {
        const all = await storedCount(hub.base, channels, 2);
        // Everything is delivered before the loop exists: the cursor says so.
        await until(() => sub.cursor === channels.map((c) => `${c}=2`).join(','), {
          what: 'the replay delivered before any loop', details: () => `${sub.cursor} ${stateLine(states)}`,
        });
        const got = [];
        for await (const e of sub) {
          got.push(e);
          if (got.length === 4) break;
        }
        await expectDelivered({ events: got, describe: () => summary(got) }, all, { label: `${transport} late loop` });
        assert.equal(sub.state, 'closed', 'leaving the loop closed the subscription');
        assert.equal(states.at(-1).state, 'closed');
      } finally {
        sub.close();
      }
    });
  }

  it('an onState callback that throws does not stop the subscription: its error is reported', { timeout: TIMEOUT }, async () => {
    // Node 20 has no reportError: the client reports on console.error there.
    const thrown = [];
    const original = console.error;
    console.error = (e) => thrown.push(e);
    const ch = uniq('throwing-onstate');
    const hubc = client('sse');
    const got = [];
    const sub = hubc.subscribe(ch, {
      since: 0,
      onEvent: (e) => got.push(e),
      onState: () => {
        throw new Error('the application failed');
      },
    });
    try {
      await publishMany(hubc, ch, 3);
      const all = await storedCount(hub.base, [ch], 3);
      await expectDelivered({ events: got, describe: () => summary(got) }, all, { label: 'throwing onState' });
      assert.ok(thrown.length > 0 && thrown.every((e) => e.message === 'the application failed'), `reported: ${thrown}`);
    } finally {
      console.error = original;
      sub.close();
    }
  });

  for (const transport of ['ws', 'sse', 'poll']) {
    it(`${transport}: without a token, a public channel can be read`, { timeout: TIMEOUT }, async () => {
      const clean = new Cleanup();
      try {
        const ch = uniq('public:anon');
        const pub = client('poll');
        await publishMany(pub, ch, 2);
        const anon = new EdgeHub({ url: hub.base, transport, WebSocket, pollInterval: 200, heartbeat: 2 });
        const rec = clean.add(record(anon, ch, { since: 0 }));
        await opened(rec);
        await publishMany(pub, ch, 2, { start: 3 });
        await expectDelivered(rec, await storedCount(hub.base, [ch], 4), { label: `anonymous ${transport}` });
      } finally {
        await clean.run();
      }
    });
  }

  it('auto without a WebSocket constructor (Node 20 has none) starts on sse', { timeout: TIMEOUT }, async () => {
    const clean = new Cleanup();
    try {
      const ch = uniq('auto-nows');
      const hubc = new EdgeHub({ url: hub.base, token: ADMIN(), heartbeat: 2 });
      assert.equal(globalThis.WebSocket, undefined, 'this test assumes a runtime without a global WebSocket');
      const rec = clean.add(record(hubc, ch, { since: 0 }));
      await opened(rec, { transport: 'sse' });
      await hubc.publish(ch, { data: 'one' });
      await expectDelivered(rec, await storedCount(hub.base, [ch], 1), { label: 'auto without WebSocket' });
      assert.ok(rec.states.every((s) => s.transport === 'sse'), stateLine(rec.states));
    } finally {
      await clean.run();
    }
  });

  it('a subscription\'s own transport option wins over the hub\'s', { timeout: TIMEOUT }, async () => {
    const clean = new Cleanup();
    try {
      const ch = uniq('own-transport');
      const hubc = client('poll');
      const rec = clean.add(record(hubc, ch, { since: 0, transport: 'sse' }));
      await opened(rec);
      assert.equal(rec.sub.transport, 'sse', stateLine(rec.states));
    } finally {
      await clean.run();
    }
  });

  it('hub.poll() pages through what is stored, with next and more', { timeout: TIMEOUT }, async () => {
    const channels = [uniq('page-a'), uniq('page-b')];
    const hubc = client('poll');
    await publishAll(hubc, channels, 5, 1);
    const all = await storedCount(hub.base, channels, 5);
    const events = [];
    let since = 0;
    for (let i = 0; i < 20; i++) {
      const page = await hubc.poll(channels, { since, limit: 3 });
      events.push(...page.events);
      since = page.next;
      if (!page.more) break;
    }
    await expectDelivered({ events, describe: () => summary(events) }, all, { label: 'hub.poll pages' });
    assert.equal(since, channels.map((c) => `${c}=5`).join(','));
    const empty = await hubc.poll(channels, { since });
    assert.deepEqual([empty.events, empty.more, empty.gaps], [[], false, []]);
  });
});

describe('topics', { concurrency: true }, () => {
  const TOPIC_EVENTS = [
    { data: 1, topics: ['eu'] },
    { data: 2, topics: ['us'] },
    { data: 3, topics: ['https://shop.example/orders/7'] },
    { data: 4 },
    { data: 5, topics: ['https://shop.example/carts/7', 'eu'] },
    { data: 6, topics: ['https://shop.example/orders/8?lang=fr'] },
  ];
  const FILTERS = {
    topics: { topics: ['eu'] },
    topicPatterns: { topicPatterns: ['https://shop.example/orders/:id'] },
    both: { topics: ['us'], topicPatterns: ['https://shop.example/orders/:id'] },
  };

  for (const transport of ['ws', 'sse', 'poll']) {
    for (const width of [1, 2]) {
      it(`${transport}, ${width} channel(s): topics and topicPatterns filter the replay and the live events`, { timeout: TIMEOUT }, async () => {
        const clean = new Cleanup();
        try {
          const channels = Array.from({ length: width }, (_, i) => uniq(`topic-${transport}${width}-${i}`));
          const hubc = client(transport);
          for (const c of channels) await hubc.publish(c, TOPIC_EVENTS.slice(0, 3));
          const recs = Object.fromEntries(Object.entries(FILTERS).map(([name, f]) =>
            [name, clean.add(record(hubc, width === 1 ? channels[0] : channels, { since: 0, ...f }))]));
          await Promise.all(Object.values(recs).map((r) => opened(r)));
          for (const c of channels) await hubc.publish(c, TOPIC_EVENTS.slice(3));
          await storedCount(hub.base, channels, TOPIC_EVENTS.length);
          for (const [name, f] of Object.entries(FILTERS)) {
            const want = await stored(hub.base, channels, f);
            const n = Object.values(want)[0].map((e) => e.data);
            // The hub's own filter, as a check on the check.
            assert.deepEqual(n, { topics: [1, 5], topicPatterns: [3, 6], both: [2, 3, 6] }[name], `/poll's ${name} filter`);
            await expectDelivered(recs[name], want, { label: `${transport} ${name} filter` });
          }
        } finally {
          await clean.run();
        }
      });
    }
  }
});
