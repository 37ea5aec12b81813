// The demo page at `/` in a real Chromium against a real `wrangler dev`: it loads clean, an
// event published from its form reaches all three panes, all three panes ride out a restart of
// the hub by themselves, and tokens behave (a private channel works, an expired token is shown).
// Run: `make -s build && node --test tests/browser/` (needs playwright-core and /usr/bin/chromium).

import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { after, before, test } from 'node:test';
import { chromium } from 'playwright-core';
import { Hub, ROOT, mint, publish } from './hub.mjs';

const CHROMIUM = '/usr/bin/chromium';
const ARTIFACTS = path.join(ROOT, 'tests/artifacts');
const PANES = ['poll', 'sse', 'ws'];
/** Playwright's bound for each action and wait, unless a wait names its own. */
const ACTION_TIMEOUT_MS = 20_000;
/** Long enough for the slowest pane: polling every 2 s, WebSocket backoff up to 8 s. */
const DELIVERY_TIMEOUT_MS = 30_000;
/** The hub's clock-skew leeway: a token is accepted until `exp` + 30 s. */
const SKEW_S = 30;

let hub;
let context;
let userDataDir;
let failed = false;

before(async () => {
  hub = await Hub.start();
  userDataDir = path.join(ROOT, 'target/browser-tmp', `chromium-${process.pid}-${Date.now()}`);
  fs.mkdirSync(userDataDir, { recursive: true });
  context = await chromium.launchPersistentContext(userDataDir, {
    executablePath: CHROMIUM,
    headless: true,
    timeout: 60_000,
    viewport: { width: 1400, height: 900 },
    // `--user-data-dir` is the first argument of launchPersistentContext: Playwright refuses it here.
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
      '--disable-background-networking', '--disable-component-update', '--disable-sync'],
  });
  context.setDefaultTimeout(ACTION_TIMEOUT_MS);
});

after(async () => {
  await context?.close().catch(() => {});
  if (userDataDir) fs.rmSync(userDataDir, { recursive: true, force: true });
  // A failed run keeps the hub's persist dir and its wrangler.log for a look.
  await hub?.cleanup({ keep: failed });
});

/** A test whose failure message carries the hub's log tail. */
function it(name, options, fn) {
  test(name, options, async (t) => {
    try {
      await fn(t);
    } catch (e) {
      failed = true;
      e.message += `\n--- hub log (${hub.dir}) ---\n${hub.logTail()}`;
      throw e;
    }
  });
}

/** A fresh tab on the hub's page, recording every console error, page error and failed request. */
async function openPage() {
  const page = await context.newPage();
  const problems = [];
  page.on('console', (m) => m.type() === 'error' && problems.push(`console: ${m.text()}`));
  page.on('pageerror', (e) => problems.push(`page error: ${e.message}`));
  page.on('requestfailed', (r) => problems.push(`failed: ${r.method()} ${r.url()} ${r.failure()?.errorText}`));
  page.on('response', (r) => r.status() >= 400 && problems.push(`HTTP ${r.status()}: ${r.request().method()} ${r.url()}`));
  const res = await page.goto(`${hub.base}/`);
  assert.equal(res.status(), 200);
  return { page, problems };
}

/** Fills the channel (and the token, when given), clicks Connect, waits for three open panes. */
async function connect(page, channel, token) {
  await page.fill('#channel', channel);
  if (token !== undefined) await page.fill('#token', token);
  await page.click('#connect button[type=submit]');
  await waitStates(page, 'open');
}

async function waitStates(page, state, timeout = DELIVERY_TIMEOUT_MS) {
  try {
    await page.waitForFunction(
      ({ panes, state }) => panes.every((n) => document.getElementById(n).dataset.state === state),
      { panes: PANES, state }, { timeout });
  } catch (e) {
    throw new Error(`panes not all ${state}: ${JSON.stringify(await paneStates(page))} (${e.message})`);
  }
}

/** Each pane's state, meta line and reconnect count, and the status line. */
function paneStates(page) {
  return page.evaluate((panes) => ({
    status: document.getElementById('status').textContent,
    ...Object.fromEntries(panes.map((n) => {
      const el = document.getElementById(n);
      return [n, { state: el.dataset.state, reconnects: Number(el.dataset.reconnects), meta: el.querySelector('.meta').textContent }];
    })),
  }), PANES);
}

/** The events a pane shows, in order: `{id, type, data}` with `data` parsed. */
function events(page, pane) {
  return page.$$eval(`#${pane} li[data-id]`, (items) => items.map((li) => ({
    id: Number(li.dataset.id),
    type: li.querySelector('.type').textContent,
    data: JSON.parse(li.querySelector('.data').textContent),
  })));
}

/** Waits until every pane shows exactly `ids`, in order, then checks it. */
async function waitIds(page, ids, timeout = DELIVERY_TIMEOUT_MS) {
  await page.waitForFunction(
    ({ panes, want }) => panes.every((n) => [...document.querySelectorAll(`#${n} li[data-id]`)]
      .map((li) => li.dataset.id).join() === want),
    { panes: PANES, want: ids.join() }, { timeout },
  ).catch(() => {});
  for (const pane of PANES) {
    assert.deepEqual((await events(page, pane)).map((e) => e.id), ids, `${pane} pane: ${JSON.stringify(await paneStates(page))}`);
  }
}

/** Publishes from the page's own form; returns the id the status line reports. */
async function publishFromForm(page, type, data) {
  const before = await page.textContent('#status');
  await page.fill('#type', type);
  await page.fill('#data', JSON.stringify(data));
  await page.click('#publish button[type=submit]');
  await page.waitForFunction((before) => {
    const s = document.getElementById('status');
    return s.textContent !== before && /^Published #\d+\.$|refused|failed/.test(s.textContent);
  }, before);
  const status = await page.textContent('#status');
  const id = /^Published #(\d+)\.$/.exec(status);
  assert.ok(id, `publish from the form: ${status}`);
  return Number(id[1]);
}

/** Saves the page under tests/artifacts/ (git-ignored). */
async function screenshot(page, name) {
  fs.mkdirSync(ARTIFACTS, { recursive: true });
  await page.screenshot({ path: path.join(ARTIFACTS, name), fullPage: true });
}

function decodeClaims(token) {
  return JSON.parse(Buffer.from(token.split('.')[1], 'base64url').toString());
}

it('1. the page loads clean, with the development token filled in', { timeout: 120_000 }, async () => {
  const { page, problems } = await openPage();
  assert.equal(await page.inputValue('#channel'), 'public:demo');
  const token = await page.inputValue('#token');
  assert.match(token, /^[\w-]+\.[\w-]+\.[\w-]+$/, 'a JWT in the token field');
  const claims = decodeClaims(token);
  assert.deepEqual(claims.edgehub, { publish: ['*'], subscribe: ['*'] });
  assert.ok(claims.exp > Date.now() / 1000 + 60, `the development token is not about to expire: ${claims.exp}`);
  assert.match(await page.textContent('#status'), /development token/);
  assert.equal(await page.getAttribute('#status', 'class'), 'ok');
  // And connecting on the default channel, with that token, is clean too.
  await connect(page, 'public:demo');
  await page.waitForTimeout(2500); // one more poll round, a heartbeat
  await waitStates(page, 'open');
  assert.deepEqual(problems, []);
  await page.close();
});

it('2. an event published from the form shows in all three panes with the same id', { timeout: 120_000 }, async () => {
  const { page, problems } = await openPage();
  await connect(page, 'public:form');
  const sent = [
    ['greeting', { text: 'hello from the form' }],
    ['message', { n: 2, tags: ['a', 'b'] }],
    ['order.created', { order: 7, total: 19.5, currency: 'EUR' }],
  ];
  const ids = [];
  for (const [type, data] of sent) {
    const id = await publishFromForm(page, type, data);
    ids.push(id);
    await page.waitForFunction(
      ({ panes, id }) => panes.every((n) => document.querySelector(`#${n} li[data-id="${id}"]`)),
      { panes: PANES, id }, { timeout: DELIVERY_TIMEOUT_MS });
  }
  assert.deepEqual(ids, [1, 2, 3]);
  await waitIds(page, ids);
  const want = sent.map(([type, data], i) => ({ id: ids[i], type, data }));
  for (const pane of PANES) assert.deepEqual(await events(page, pane), want, `${pane} pane`);
  assert.deepEqual(problems, []);
  await screenshot(page, 'demo.png');
  await page.close();
});

it('3. every pane reconnects by itself across a restart of the hub and loses nothing', { timeout: 240_000 }, async () => {
  const channel = 'public:restart';
  const { page } = await openPage();
  await connect(page, channel);
  // The SSE pane's subscription: the client itself must carry it across the restart.
  await page.evaluate(() => { window.firstSubscription = live.sse; });
  const ids = [];
  for (let n = 1; n <= 3; n++) ids.push(await publish(hub.base, channel, { n, when: 'before the stop' }));
  await waitIds(page, ids);
  const before = await paneStates(page);

  await hub.stop();
  // Down long enough for every pane to notice, the poll included (it asks every 2 s).
  await waitStates(page, 'reconnecting');
  await hub.start();

  for (let n = 4; n <= 6; n++) ids.push(await publish(hub.base, channel, { n, when: 'after the restart' }));
  await waitStates(page, 'open', 60_000);
  ids.push(await publishFromForm(page, 'message', { n: 7, when: 'after the restart, from the form' }));
  assert.deepEqual(ids, [1, 2, 3, 4, 5, 6, 7]);
  await waitIds(page, ids, 60_000);
  // Nothing turns up twice later: one more poll round and heartbeat.
  await page.waitForTimeout(2500);
  await waitIds(page, ids);

  const now = await paneStates(page);
  for (const pane of PANES) {
    assert.ok(now[pane].reconnects > before[pane].reconnects, `${pane} reconnected: ${JSON.stringify({ before, now })}`);
  }
  assert.ok(await page.evaluate(() => live.sse === window.firstSubscription),
    'the SSE subscription reconnected by itself (the page did not replace it)');
  const sse = await events(page, 'sse');
  assert.deepEqual(sse.map((e) => e.data.n), [1, 2, 3, 4, 5, 6, 7]);
  await screenshot(page, 'demo-restart.png');
  await page.close();
});

it('4a. a private channel works with a short-lived token typed into the token field', { timeout: 120_000 }, async () => {
  const channel = 'private:room';
  const token = mint({ publish: [channel], subscribe: [channel], ttl: 120 });
  const { page, problems } = await openPage();
  await connect(page, channel, token);
  const id = await publishFromForm(page, 'note', { secret: 'for the room only' });
  await waitIds(page, [id]);
  for (const pane of PANES) assert.deepEqual(await events(page, pane), [{ id, type: 'note', data: { secret: 'for the room only' } }]);
  assert.deepEqual(problems, []);
  await page.close();
});

it('4b. an expired token is shown as an error, not as an empty page', { timeout: 120_000 }, async () => {
  const channel = 'private:room';
  const token = mint({ publish: [channel], subscribe: [channel], iat: Math.floor(Date.now() / 1000) - 600, ttl: 300 });
  const { page } = await openPage();
  await page.fill('#channel', channel);
  await page.fill('#token', token);
  await page.click('#connect button[type=submit]');
  await waitStates(page, 'error');
  const status = await page.textContent('#status');
  assert.match(status, /Cannot subscribe to private:room: 401 token_expired/);
  assert.equal(await page.getAttribute('#status', 'class'), 'error');
  const states = await paneStates(page);
  for (const pane of PANES) assert.match(states[pane].meta, /^401 token_expired/, pane);
  // Publishing with it is refused in plain words too.
  await page.click('#publish button[type=submit]');
  await page.waitForFunction(() => /Publish refused/.test(document.getElementById('status').textContent));
  assert.match(await page.textContent('#status'), /Publish refused: 401 token_expired/);
  for (const pane of PANES) assert.deepEqual(await events(page, pane), [], pane);
  await screenshot(page, 'demo-expired.png');
  await page.close();
});

it('4c. a token that expires while the page is open ends in a clear error', { timeout: 180_000 }, async () => {
  const channel = 'private:expiring';
  const ttl = 15;
  const token = mint({ publish: [channel], subscribe: [channel], ttl });
  const refusedAt = Date.now() + (ttl + SKEW_S) * 1000;
  const { page } = await openPage();
  await connect(page, channel, token);
  const id = await publishFromForm(page, 'message', { before: 'expiry' });
  await waitIds(page, [id]);
  // Bounded: past the leeway, each pane learns within its own retry delay (at most 8 s).
  await waitStates(page, 'error', refusedAt - Date.now() + 45_000);
  assert.equal(await page.getAttribute('#status', 'class'), 'error');
  assert.match(await page.textContent('#status'), /stopped: .*401 token_expired/);
  const states = await paneStates(page);
  for (const pane of PANES) assert.match(states[pane].meta, /401 token_expired/, pane);
  // What was received stays on the page.
  for (const pane of PANES) assert.deepEqual((await events(page, pane)).map((e) => e.id), [id], pane);
  await page.close();
});

it('5. several channels ride one request, one EventSource and one WebSocket', { timeout: 180_000 }, async () => {
  const { page, problems } = await openPage();
  const channels = ['public:multi-a', 'public:multi-b'];
  await connect(page, channels.join(', '));
  const sent = [];
  for (const [i, channel] of [channels[0], channels[1], channels[1], channels[0]].entries()) {
    await page.selectOption('#target', channel);
    // Two channels may answer the same id in a row: clear the line so each answer is new.
    await page.evaluate(() => { document.getElementById('status').textContent = ''; });
    const id = await publishFromForm(page, 'message', { n: i });
    sent.push(`${channel}#${id}`);
  }
  // Every pane shows all four, each channel's in id order (across channels, arrival order).
  const shown = (pane) => page.$$eval(`#${pane} li[data-id]`,
    (items) => items.map((li) => `${li.dataset.channel}#${li.dataset.id}`));
  await page.waitForFunction(
    ({ panes, n }) => panes.every((p) => document.querySelectorAll(`#${p} li[data-id]`).length >= n),
    { panes: PANES, n: sent.length }, { timeout: DELIVERY_TIMEOUT_MS },
  ).catch(() => {});
  for (const pane of PANES) {
    const got = await shown(pane);
    assert.deepEqual([...got].sort(), [...sent].sort(), `${pane}: ${JSON.stringify(await paneStates(page))}`);
    for (const channel of channels) {
      const ids = got.filter((x) => x.startsWith(channel + '#')).map((x) => Number(x.split('#')[1]));
      assert.deepEqual(ids, [...ids].sort((a, b) => a - b), `${pane}: ${channel} in order`);
    }
  }
  const states = await paneStates(page);
  assert.match(states.sse.meta, /\/sse\?channel=public%3Amulti-a&channel=public%3Amulti-b/);
  assert.deepEqual(problems, []);
  await screenshot(page, 'demo-multi.png');
  await page.close();
});

it('6. two tabs see each other in "Who is here", and a closed tab leaves', { timeout: 180_000 }, async () => {
  const channel = 'public:presence';
  const tabs = [];
  for (const name of ['Ada', 'Bo']) {
    const tab = await openPage();
    await tab.page.fill('#name', name);
    await connect(tab.page, channel);
    tabs.push(tab);
  }
  const who = (page) => page.$$eval('#who li', (items) => items.map((li) => li.textContent).sort());
  const waitWho = async (page, want) => {
    await page.waitForFunction((want) => [...document.querySelectorAll('#who li')].map((li) => li.textContent).sort().join() === want.join(),
      [...want].sort(), { timeout: DELIVERY_TIMEOUT_MS }).catch(() => {});
    assert.deepEqual(await who(page), [...want].sort());
  };
  await waitWho(tabs[0].page, ['Ada (you)', 'Bo']);
  await waitWho(tabs[1].page, ['Ada', 'Bo (you)']);
  // The WebSocket pane carries presence; its pings keep it there past a heartbeat.
  await tabs[0].page.waitForTimeout(4000);
  await waitWho(tabs[1].page, ['Ada', 'Bo (you)']);
  await screenshot(tabs[0].page, 'demo-presence.png');
  await tabs[1].page.close();
  await waitWho(tabs[0].page, ['Ada (you)']);
  const listing = await (await fetch(`${hub.base}/channels/${encodeURIComponent(channel)}/presence`)).json();
  assert.deepEqual(listing.members.map((m) => m.info), [{ name: 'Ada' }]);
  assert.deepEqual(tabs[0].problems, []);
  assert.deepEqual(tabs[1].problems, []);
  await tabs[0].page.close();
});
