// Tokens and presence through the client, against a real hub (`wrangler dev`, HEARTBEAT_SECONDS=2):
// - a token function handing out short-lived tokens is called again before each one expires,
//   while sse, ws and poll subscriptions keep delivering every event once;
// - a token function whose first token is refused (expired, bad signature) gets its 401, is
//   called again, and the subscription works; one that throws once is called again too;
// - a plain string token that is refused (401, 403) ends the subscription: state `closed` with a
//   HubError, and `for await` throws it;
// - presence over ws and sse: sync, join, leave (and the hub's batched `diff`), `members()` and
//   `hub.presence()` agree; a ws member stays in well past 3 × HEARTBEAT_SECONDS (the client pings).
// Run: `node clients/js/build.mjs && node --test clients/js/test/*.test.mjs` (this file alone:
// `node --test clients/js/test/auth-presence.test.mjs`).

import assert from 'node:assert/strict';
import { after, before, describe } from 'node:test';
import {
  ADMIN, Cleanup, Hub, WebSocket, bindIt, expectDelivered, loadClient, memberToken, mint, opened, publishMany, record,
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

const nowS = () => Math.floor(Date.now() / 1000);
const claims = (t) => JSON.parse(Buffer.from(t.split('.')[1], 'base64url').toString());

/** A token function over `make(call)` that records each call: when, and the token it returned. */
function tokenFunction(make) {
  const calls = [];
  const fn = async () => {
    await sleep(10); // a backend round trip
    const token = make(calls.length);
    calls.push({ at: Date.now(), token, exp: claims(token).exp ?? Infinity });
    return token;
  };
  fn.calls = calls;
  return fn;
}

describe('token functions', { concurrency: true }, () => {
  for (const ttl of [10, 6]) {
    it(`tokens living ${ttl} s: each is replaced before it expires, and sse, ws and poll lose nothing`, { timeout: 90_000 }, async () => {
      const clean = new Cleanup();
      try {
        const ch = uniq(`ttl${ttl}`);
        const pub = new EdgeHub({ url: hub.base, token: ADMIN() });
        const subs = {};
        for (const transport of ['sse', 'ws', 'poll']) {
          const token = tokenFunction(() => mint({ subscribe: [ch], ttl }));
          const c = new EdgeHub({ url: hub.base, token, transport, WebSocket, heartbeat: 2, pollInterval: 300, backoff: [100, 1000] });
          subs[transport] = { token, rec: clean.add(record(c, ch, { since: 0 })) };
        }
        await Promise.all(Object.values(subs).map((s) => opened(s.rec)));
        // Three lifetimes, an event every 250 ms.
        const end = Date.now() + 3 * ttl * 1000;
        let n = 0;
        while (Date.now() < end && n < 1000) {
          await publishMany(pub, ch, 1, { start: ++n });
          await sleep(250);
        }
        const all = await storedCount(hub.base, [ch], n);
        for (const [transport, { token, rec }] of Object.entries(subs)) {
          await expectDelivered(rec, all, { label: `${transport} with ${ttl}-s tokens` });
          const calls = token.calls;
          const late = calls.slice(1).filter((c, i) => c.at >= calls[i].exp * 1000);
          assert.ok(calls.length >= 3, `${transport}: the token function was called ${calls.length} time(s) in ${3 * ttl} s of ${ttl}-s tokens ` +
            `(a token is due for renewal with a quarter of its life left); states ${stateLine(rec.states)}`);
          assert.deepEqual(late.map((c) => new Date(c.at).toISOString()), [],
            `${transport}: tokens replaced only after they expired (calls at ${calls.map((c) => new Date(c.at).toISOString())}, exps ${calls.map((c) => c.exp)})`);
          assert.ok(!rec.states.some((s) => s.error instanceof HubError), `${transport}: a refusal on the way: ${stateLine(rec.states)}`);
        }
      } finally {
        await clean.run();
      }
    });
  }

  for (const transport of ['ws', 'sse', 'poll', 'auto']) {
    for (const first of ['expired', 'badly signed']) {
      it(`${transport}: a token function whose first token is ${first} gets its 401, is called again, and works`, { timeout: 60_000 }, async () => {
        const clean = new Cleanup();
        try {
          const ch = uniq(`first-${transport}`);
          const pub = new EdgeHub({ url: hub.base, token: ADMIN() });
          await publishMany(pub, ch, 2);
          const token = tokenFunction((call) => {
            if (call > 0) return mint({ subscribe: [ch], ttl: 120 });
            if (first === 'expired') return mint({ subscribe: [ch], iat: nowS() - 200, ttl: 60 });
            const good = mint({ subscribe: [ch], ttl: 120 });
            return good.slice(0, -4) + (good.endsWith('AAAA') ? 'BBBB' : 'AAAA');
          });
          const c = new EdgeHub({ url: hub.base, token, transport, WebSocket, heartbeat: 2, pollInterval: 200, backoff: [100, 1000] });
          const rec = clean.add(record(c, ch, { since: 0 }));
          await opened(rec);
          await publishMany(pub, ch, 1, { start: 3 });
          await expectDelivered(rec, await storedCount(hub.base, [ch], 3), { label: `${transport} after a refused first token` });
          assert.ok(token.calls.length >= 2, `called ${token.calls.length} times`);
          assert.equal(rec.sub.transport, transport === 'auto' ? 'ws' : transport, `no step-down on a 401: ${stateLine(rec.states)}`);
        } finally {
          await clean.run();
        }
      });
    }
  }

  it('a token function that throws once (its backend down) is called again, and the subscription works', { timeout: 60_000 }, async () => {
    const clean = new Cleanup();
    try {
      const ch = uniq('throws');
      let calls = 0;
      // Not async: it throws as it is called, as a plain function may.
      const token = () => {
        if (calls++ === 0) throw new Error('the token backend is down');
        return mint({ subscribe: [ch], ttl: 120 });
      };
      const c = new EdgeHub({ url: hub.base, token, transport: 'sse', heartbeat: 2, backoff: [100, 500] });
      const rec = clean.add(record(c, ch, { since: 0 }));
      await until(() => rec.sub.state === 'open', {
        timeout: 15_000, what: 'the subscription open once the token function works again',
        details: () => `token function called ${calls} times; states ${stateLine(rec.states.slice(0, 6))} … (${rec.states.length} changes)`,
      });
      assert.ok(calls >= 2);
    } finally {
      await clean.run();
    }
  });
});

describe('refused string tokens end the subscription', { concurrency: true }, () => {
  const CASES = {
    401: (ch) => mint({ subscribe: [ch], iat: nowS() - 200, ttl: 60 }),
    403: () => mint({ subscribe: ['someone-else'], ttl: 3600 }),
  };
  for (const transport of ['ws', 'sse', 'poll', 'auto']) {
    for (const [status, make] of Object.entries(CASES)) {
      it(`${transport}: a string token refused with ${status} closes the subscription with a HubError, and for await throws it`, { timeout: 60_000 }, async () => {
        const ch = uniq(`refused-${transport}`);
        const c = new EdgeHub({ url: hub.base, token: make(ch), transport, WebSocket, heartbeat: 2, backoff: [100, 1000] });
        const rec = record(c, [ch]);
        try {
          let thrown;
          const loop = (async () => {
            try {
              for await (const e of rec.sub) assert.fail(`an event: ${JSON.stringify(e)}`);
            } catch (e) {
              thrown = e;
            }
          })();
          await Promise.race([loop, sleep(20_000)]);
          assert.equal(rec.sub.state, 'closed', `state: ${stateLine(rec.states)}`);
          const last = rec.states.at(-1);
          assert.equal(last.state, 'closed');
          assert.ok(last.error instanceof HubError, `the closed state carries a HubError: ${stateLine(rec.states)}`);
          assert.equal(last.error.status, Number(status), stateLine(rec.states));
          assert.equal(last.error.code, status === '401' ? 'token_expired' : 'forbidden', stateLine(rec.states));
          assert.equal(thrown, last.error, 'for await throws the same HubError');
          assert.ok(!rec.states.some((s) => s.state === 'open'), stateLine(rec.states));
          if (transport === 'auto') assert.equal(rec.sub.transport, 'ws', `a refusal is not a reason to step down: ${stateLine(rec.states)}`);
        } finally {
          rec.sub.close();
        }
      });
    }
  }
});

describe('presence', { concurrency: true }, () => {
  const INFO = { ada: { name: 'Ada' }, bo: { name: 'Bo' }, cy: { name: 'Cy' }, di: { name: 'Di' } };

  /**
   * A presence member's client: its own token (with `sub` and `info`) and transport. Bo's token
   * lives an hour, so over ws the client exchanges it for a query token (`POST /tokens`), which
   * must keep its `sub` and `info`.
   */
  function member(sub, channels, transport) {
    const token = memberToken(sub, channels, { info: INFO[sub], ttl: sub === 'bo' ? 3600 : 300 });
    return new EdgeHub({ url: hub.base, token, transport, WebSocket, heartbeat: 2, backoff: [100, 1000] });
  }
  const subs = (members) => members.map((m) => m.sub).sort();
  const listed = async (c, ch) => (await c.presence(ch)).members.map((m) => m.sub);

  for (const transport of ['ws', 'sse']) {
    it(`${transport}: sync, join and leave reach onPresence; members() and hub.presence() agree`, { timeout: 60_000 }, async () => {
      const clean = new Cleanup();
      try {
        const ch = uniq(`room-${transport}`);
        const ada = member('ada', [ch], transport);
        const a = clean.add(record(ada, ch, { presence: true }));
        await until(() => a.presence.some((p) => p.event.action === 'sync'), { what: 'ada\'s sync', details: a.describe });
        assert.deepEqual(a.presence[0].event, { action: 'sync', channel: ch, members: [{ sub: 'ada', info: INFO.ada }] });
        assert.deepEqual(a.sub.members(ch), [{ sub: 'ada', info: INFO.ada }]);

        const b = clean.add(record(member('bo', [ch], transport), ch, { presence: true }));
        await until(() => subs(a.sub.members(ch)).join() === 'ada,bo', { what: 'bo in ada\'s members', details: () => JSON.stringify(a.presence) });
        const join = a.presence.find((p) => p.event.action === 'join');
        assert.deepEqual(join?.event, { action: 'join', channel: ch, member: { sub: 'bo', info: INFO.bo } }, JSON.stringify(a.presence));
        assert.deepEqual(a.sub.members(ch).find((m) => m.sub === 'bo'), { sub: 'bo', info: INFO.bo });
        await until(() => subs(b.sub.members(ch)).join() === 'ada,bo', { what: 'bo\'s own sync', details: () => JSON.stringify(b.presence) });
        assert.deepEqual(await listed(ada, ch), ['ada', 'bo']);

        b.sub.close();
        await until(() => subs(a.sub.members(ch)).join() === 'ada', { timeout: 20_000, what: 'bo gone from ada\'s members', details: () => JSON.stringify(a.presence) });
        assert.deepEqual(a.presence.at(-1).event, { action: 'leave', channel: ch, member: { sub: 'bo', info: INFO.bo } });
        await until(async () => (await listed(ada, ch)).join() === 'ada', { timeout: 20_000, what: 'hub.presence() without bo' });
        // Presence events are no log events: nothing in /poll, no event delivered.
        assert.deepEqual(a.events, []);
      } finally {
        await clean.run();
      }
    });
  }

  it('ws: several members joining and leaving at once (the hub batches them as a diff) keep members() right', { timeout: 60_000 }, async (t) => {
    const clean = new Cleanup();
    try {
      const ch = uniq('crowd');
      const ada = member('ada', [ch], 'ws');
      const a = clean.add(record(ada, ch, { presence: true }));
      await until(() => a.presence.length > 0, { what: 'ada\'s sync' });
      const others = ['bo', 'cy', 'di'].map((s) => record(member(s, [ch], 'ws'), ch, { presence: true }));
      others.forEach((o) => clean.add(o));
      const want = ['ada', 'bo', 'cy', 'di'];
      const history = () => JSON.stringify(a.presence.map((p) => p.event));
      await until(async () => (await listed(ada, ch)).join() === want.join(), { what: 'four members listed by the hub' });
      await until(() => subs(a.sub.members(ch)).join() === want.join(), { timeout: 10_000, what: `ada's members() to be ${want}`, details: history });
      assert.deepEqual(a.sub.members(ch).find((m) => m.sub === 'di'), { sub: 'di', info: INFO.di }, history());
      for (const o of others) o.sub.close();
      await until(() => subs(a.sub.members(ch)).join() === 'ada', { timeout: 10_000, what: 'ada alone again in members()', details: history });
      t.diagnostic(`presence events seen by ada: ${a.presence.map((p) => p.event.action).join(', ')}`);
    } finally {
      await clean.run();
    }
  });

  it('ws members (one and two channels) stay in well past 3 × HEARTBEAT_SECONDS: the client pings', { timeout: 60_000 }, async () => {
    const clean = new Cleanup();
    try {
      const [c1, c2] = [uniq('stay-1'), uniq('stay-2')];
      const one = clean.add(record(member('ada', [c1], 'ws'), c1, { presence: true }));
      const two = clean.add(record(member('bo', [c1, c2], 'ws'), [c1, c2], { presence: true }));
      const admin = new EdgeHub({ url: hub.base, token: ADMIN() });
      await Promise.all([opened(one), opened(two)]);
      await until(async () => (await listed(admin, c1)).join() === 'ada,bo', { what: 'both members listed' });
      const before = (await admin.presence(c1)).members;
      await sleep(8_000); // 4 × HEARTBEAT_SECONDS: a silent socket is closed (4002) after 2 and swept within 3
      for (const ch of [c1, c2]) {
        const now = await admin.presence(ch);
        const want = ch === c1 ? ['ada', 'bo'] : ['bo'];
        assert.deepEqual(now.members.map((m) => [m.sub, m.connections]), want.map((s) => [s, 1]), `${ch}: ${JSON.stringify(now)}`);
      }
      assert.deepEqual((await admin.presence(c1)).members.map((m) => m.since), before.map((m) => m.since), 'the same connections, never rejoined');
      for (const r of [one, two]) {
        assert.equal(r.states.filter((s) => s.state === 'open').length, 1, `one connection: ${stateLine(r.states)}`);
        assert.equal(r.presence.filter((p) => p.event.action === 'sync').length, r === one ? 1 : 2, `one sync per channel, no reconnect: ${JSON.stringify(r.presence)}`);
      }
    } finally {
      await clean.run();
    }
  });

  for (const transport of ['ws', 'sse']) {
    it(`${transport}: presence with a token without a sub ends the subscription with a 400`, { timeout: 60_000 }, async () => {
      const ch = uniq(`nosub-${transport}`);
      const c = new EdgeHub({ url: hub.base, token: mint({ subscribe: [ch], ttl: 120 }), transport, WebSocket, heartbeat: 2, backoff: [100, 1000] });
      const rec = record(c, ch, { presence: true });
      try {
        await until(() => rec.sub.state === 'closed', { timeout: 20_000, what: 'the subscription closed', details: rec.describe });
        const last = rec.states.at(-1);
        assert.ok(last.error instanceof HubError && last.error.status === 400 && last.error.code === 'bad_request', stateLine(rec.states));
      } finally {
        rec.sub.close();
      }
    });
  }
});
