// The client against a hub with small limits (`SLOW_CONSUMER_BYTES=65536`, `RETAIN_EVENTS=100`,
// `SSE_MAX_SECONDS=4`):
// - flow control: a ws subscription `since: 0` over ~60 events of 8 KiB (about eight windows),
//   then 30 more live, gets each once over one connection: the client confirms what it read
//   with `cursor` frames, so the hub never drops it (a raw socket that does not confirm is
//   closed with 4001 here, which shows the limit is on);
// - gaps: a subscription `since` an id retention already pruned gets `onGap` once, naming its
//   channel, then exactly what is retained, on ws, sse and poll, one channel and two;
// - SSE streams the hub ends after their lifetime are resumed from the cursor, losing nothing.
// Run: `node clients/js/build.mjs && node --test clients/js/test/*.test.mjs` (this file alone:
// `node --test clients/js/test/limits.test.mjs`).

import assert from 'node:assert/strict';
import { after, before, describe } from 'node:test';
import {
  ADMIN, Cleanup, Hub, WebSocket, bindIt, expectDelivered, loadClient, mint, opened, publishMany, record,
  stateLine, stored, storedCount, uniq, until, sleep,
} from './helpers.mjs';

const WINDOW = 65536;
const RETAIN = 100;
const BIG = 8 * 1024;
const SSE_MAX = 4;

let hub;
let EdgeHub;
const it = bindIt(() => hub);

before(async () => {
  ({ EdgeHub } = await loadClient());
  hub = await Hub.start({ vars: { SLOW_CONSUMER_BYTES: String(WINDOW), RETAIN_EVENTS: String(RETAIN), SSE_MAX_SECONDS: String(SSE_MAX) } });
});

after(async () => {
  await hub?.cleanup();
});

function client(transport) {
  return new EdgeHub({ url: hub.base, token: ADMIN(), transport, WebSocket, heartbeat: 2, pollInterval: 200, backoff: [100, 1000] });
}

describe('flow control', { concurrency: true }, () => {
  it('the limit is on: a raw WebSocket that never confirms is closed with 4001', { timeout: 60_000 }, async () => {
    const ch = uniq('raw-slow');
    await publishMany(client('poll'), ch, 40, { size: BIG });
    const token = mint({ subscribe: [ch], ttl: 120 });
    const ws = new WebSocket(`${hub.base.replace('http', 'ws')}/ws/${ch}?since=0&token=${token}`);
    let frames = 0;
    ws.on('message', () => frames++);
    try {
      const code = await Promise.race([
        new Promise((r) => ws.on('close', (c) => r(c))),
        new Promise((r) => setTimeout(() => r('no close within 20 s'), 20_000)),
      ]);
      assert.equal(code, 4001, `after ${frames} frames`);
      assert.ok(frames < 41, `held at its window: ${frames} frames`);
    } finally {
      ws.terminate();
    }
  });

  for (const width of [1, 2]) {
    it(`ws, ${width} channel(s): since 0 over ~8 windows of 8-KiB events, then 30 live ones, over one connection`, { timeout: 90_000 }, async () => {
      const clean = new Cleanup();
      try {
        const channels = Array.from({ length: width }, (_, i) => uniq(`flow${width}-${i}`));
        const pub = client('poll');
        // ~60 events of 8 KiB in all (480 KiB, 7.5 windows), in batches the body limit takes.
        const per = width === 1 ? 60 : 30;
        for (const c of channels) {
          for (let start = 1; start <= per; start += 20) await publishMany(pub, c, 20, { start, size: BIG });
        }
        const rec = clean.add(record(client('ws'), width === 1 ? channels[0] : channels, { since: 0 }));
        const sse = clean.add(record(client('sse'), channels, { since: 0 }));
        await opened(rec);
        await expectDelivered(rec, await storedCount(hub.base, channels, per), { label: 'ws replay' });
        for (const c of channels) {
          for (let start = per + 1; start <= per + 30; start += 10) await publishMany(pub, c, 10, { start, size: BIG });
        }
        const all = await storedCount(hub.base, channels, per + 30);
        await expectDelivered(rec, all, { label: 'ws replay and live' });
        await expectDelivered(sse, all, { label: 'sse replay and live' });
        assert.deepEqual(rec.states.map((s) => `${s.state}/${s.transport}`), ['connecting/ws', 'open/ws'],
          `never dropped: ${stateLine(rec.states)}`);
      } finally {
        await clean.run();
      }
    });
  }
});

describe('gaps', { concurrency: true }, () => {
  let pruned;
  let other;
  let before130;

  before(async () => {
    // 130 events on a channel keeping 100: ids 1-30 are gone, `earliest` is 31.
    pruned = uniq('pruned');
    other = uniq('kept');
    const pub = client('poll');
    await publishMany(pub, pruned, 100);
    await publishMany(pub, pruned, 30, { start: 101 });
    await publishMany(pub, other, 3);
    await until(async () => (await stored(hub.base, [pruned]))[pruned][0]?.id === 31, { what: 'retention to prune ids 1-30' });
    before130 = await storedCount(hub.base, [pruned, other], 3);
    assert.equal(before130[pruned].length, RETAIN);
  });

  for (const transport of ['ws', 'sse', 'poll']) {
    for (const width of [1, 2]) {
      for (const since of [10, 0]) {
        it(`${transport}, ${width} channel(s), since ${since}: onGap once with the channel, then every retained event once`, { timeout: 60_000 }, async () => {
          const clean = new Cleanup();
          try {
            const channels = width === 1 ? [pruned] : [pruned, other];
            const rec = clean.add(record(client(transport), width === 1 ? pruned : channels, { since: width === 1 ? since : { [pruned]: since, [other]: 0 } }));
            await opened(rec);
            const want = Object.fromEntries(channels.map((c) => [c, before130[c]]));
            await expectDelivered(rec, want, { label: `${transport} after a gap` });
            assert.deepEqual(rec.gaps, [{ channel: pruned, requested: since, earliest: 31 }], rec.describe());
          } finally {
            await clean.run();
          }
        });
      }
    }
  }

  it('hub.poll() reports the gap too', { timeout: 30_000 }, async () => {
    const page = await client('poll').poll([pruned, other], { since: { [pruned]: 5, [other]: 0 }, limit: 1 });
    assert.deepEqual(page.gaps, [{ channel: pruned, requested: 5, earliest: 31 }]);
    assert.deepEqual(page.events.map((e) => [e.channel, e.id]), [[pruned, 31]]);
  });
});

it(`sse streams the hub ends every ${SSE_MAX} s are resumed from the cursor, each event once`, { timeout: 60_000 }, async () => {
  const clean = new Cleanup();
  try {
    const channels = [uniq('lifetime-a'), uniq('lifetime-b')];
    const pub = client('poll');
    const one = clean.add(record(client('sse'), channels[0], { since: 0 }));
    const two = clean.add(record(client('sse'), channels, { since: 0 }));
    await Promise.all([opened(one), opened(two)]);
    // Events for 2.5 lifetimes, one per channel every 200 ms.
    let n = 0;
    for (const end = Date.now() + 2.5 * SSE_MAX * 1000; Date.now() < end && n < 500;) {
      n++;
      await Promise.all(channels.map((c) => publishMany(pub, c, 1, { start: n })));
      await sleep(200);
    }
    const all = await storedCount(hub.base, channels, n);
    await expectDelivered(one, { [channels[0]]: all[channels[0]] }, { label: 'sse, one channel, across stream ends' });
    await expectDelivered(two, all, { label: 'sse, two channels, across stream ends' });
    for (const r of [one, two]) {
      assert.ok(r.states.filter((s) => s.state === 'open').length >= 2, `the hub ended the stream and it was resumed: ${stateLine(r.states)}`);
      assert.ok(!r.states.some((s) => s.state === 'closed'), stateLine(r.states));
    }
  } finally {
    await clean.run();
  }
});
