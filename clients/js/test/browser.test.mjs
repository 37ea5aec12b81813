// The same client in headless Chromium (playwright-core, /usr/bin/chromium): a page served by a
// small local static server (its own origin, which the hub admits with `CORS_ORIGINS`) imports
// dist/index.js and, on each transport (ws, sse, poll, auto: the browser's own WebSocket and
// fetch), publishes and subscribes over two channels: `since: 0` replay, then live events, a
// cursor resuming a second subscription, with a string token (minted into a query token by
// the client for ws) and with a token function. What the page received is compared with what
// /poll says is stored; the page must log no errors and no failed request.
// Run: `node clients/js/build.mjs && node --test clients/js/test/*.test.mjs` (this file alone:
// `node --test clients/js/test/browser.test.mjs`); needs playwright-core and /usr/bin/chromium.

import assert from 'node:assert/strict';
import fs from 'node:fs';
import http from 'node:http';
import { after, before, describe } from 'node:test';
import { chromium } from 'playwright-core';
import { DIST, Hub, bindIt, checkDist, expectDelivered, mint, stateLine, storedCount, uniq } from './helpers.mjs';

const CHROMIUM = '/usr/bin/chromium';
const PAGE = `<!doctype html><meta charset="utf-8"><title>edgehub client test</title><link rel="icon" href="data:,">
<script type="module">import * as client from '/index.js'; window.edgehub = client; document.title = 'ready';</script>`;

let hub;
let server;
let origin;
let browser;
const it = bindIt(() => hub);

before(async () => {
  checkDist();
  // The page's origin first: the hub must know it (CORS_ORIGINS) when it starts.
  server = http.createServer((req, res) => {
    if (req.url === '/') res.writeHead(200, { 'content-type': 'text/html' }).end(PAGE);
    else if (req.url === '/index.js') res.writeHead(200, { 'content-type': 'text/javascript' }).end(fs.readFileSync(DIST));
    else res.writeHead(404).end();
  });
  await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve));
  origin = `http://127.0.0.1:${server.address().port}`;
  hub = await Hub.start({ vars: { CORS_ORIGINS: origin } });
  browser = await chromium.launch({
    executablePath: CHROMIUM,
    headless: true,
    timeout: 60_000,
    args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking',
      '--disable-component-update', '--disable-sync'],
  });
});

after(async () => {
  await browser?.close().catch(() => {});
  server?.closeAllConnections();
  await new Promise((r) => (server ? server.close(() => r()) : r()));
  await hub?.cleanup();
});

/** A fresh page on the static origin with the client loaded, recording every error and failed request. */
async function openPage() {
  const page = await browser.newPage();
  page.setDefaultTimeout(30_000);
  const problems = [];
  page.on('console', (m) => m.type() === 'error' && problems.push(`console: ${m.text()}`));
  page.on('pageerror', (e) => problems.push(`page error: ${e.message}`));
  page.on('requestfailed', (r) => {
    // A stream the client itself stops (close(), a poll superseded) is aborted on purpose.
    if (r.failure()?.errorText !== 'net::ERR_ABORTED') problems.push(`failed: ${r.method()} ${r.url()} ${r.failure()?.errorText}`);
  });
  page.on('response', (r) => r.status() >= 400 && problems.push(`HTTP ${r.status()}: ${r.request().method()} ${r.url()}`));
  await page.goto(`${origin}/`);
  await page.waitForFunction(() => document.title === 'ready');
  return { page, problems };
}

/**
 * In the page: publishes 3 events per channel, subscribes `since: 0`, publishes 3 more once open,
 * waits (at most 20 s) for all 6 per channel; then resumes a second subscription from the first
 * one's cursor after 2 more. Returns both subscriptions' events, states and cursors.
 */
function scenario(page, { base, transport, channels, token, tokenFunction }) {
  return page.evaluate(async ({ base, transport, channels, token, tokenFunction }) => {
    const { EdgeHub } = window.edgehub;
    const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
    const waitFor = async (cond, what) => {
      for (const end = Date.now() + 20_000; !cond(); await sleep(50)) if (Date.now() > end) throw new Error(`page: timed out waiting for ${what}`);
    };
    let calls = 0;
    const hub = new EdgeHub({
      url: base, transport, pollInterval: 200, heartbeat: 2, backoff: [100, 1000],
      token: tokenFunction ? async () => (calls++, token) : token,
    });
    const batch = (start, n) => Array.from({ length: n }, (_, i) => ({ type: 'test', data: { n: start + i, from: 'page' } }));
    const publish = (start, n) => Promise.all(channels.map((c) => hub.publish(c, batch(start, n))));
    const watch = (since) => {
      const r = { events: [], states: [] };
      r.sub = hub.subscribe(channels, {
        since,
        onEvent: (e) => r.events.push(e),
        onState: (s) => r.states.push({ state: s.state, transport: s.transport, error: s.error && `${s.error.name}: ${s.error.message}` }),
      });
      return r;
    };
    const out = (r) => ({ events: r.events, states: r.states, cursor: r.sub.cursor, transport: r.sub.transport });

    await publish(1, 3);
    const first = watch(0);
    await waitFor(() => first.sub.state === 'open', 'the first subscription open');
    await publish(4, 3);
    await waitFor(() => first.events.length >= 6 * channels.length, 'six events per channel');
    first.sub.close();
    await publish(7, 2);
    const second = watch(first.sub.cursor);
    await waitFor(() => second.events.length >= 2 * channels.length, 'two more events per channel');
    await sleep(300);
    second.sub.close();
    return { first: out(first), second: out(second), calls };
  }, { base, transport, channels, token, tokenFunction });
}

describe('in Chromium', { concurrency: true }, () => {
  for (const transport of ['ws', 'sse', 'poll', 'auto']) {
    for (const kind of ['string token', 'token function']) {
      it(`${transport}, ${kind}: replay, live events and a resumed cursor, each event once`, { timeout: 90_000 }, async () => {
        const { page, problems } = await openPage();
        try {
          const channels = [uniq(`page-${transport}-a`), uniq(`page-${transport}-b`)];
          // A string token living an hour: for ws the client mints a query token from it.
          const ttl = kind === 'string token' ? 3600 : 120;
          const token = mint({ publish: channels, subscribe: channels, ttl });
          const got = await scenario(page, { base: hub.base, transport, channels, token, tokenFunction: kind === 'token function' });
          const all = await storedCount(hub.base, channels, 8);
          const asRec = (r) => ({ events: r.events, describe: () => `states ${stateLine(r.states)}; cursor ${r.cursor}` });
          const firstWant = Object.fromEntries(channels.map((c) => [c, all[c].filter((e) => e.id <= 6)]));
          await expectDelivered(asRec(got.first), firstWant, { label: `page ${transport}: first subscription`, timeout: 1000 });
          const secondWant = Object.fromEntries(channels.map((c) => [c, all[c].filter((e) => e.id > 6)]));
          await expectDelivered(asRec(got.second), secondWant, { label: `page ${transport}: resumed subscription`, timeout: 1000 });
          assert.equal(got.first.transport, transport === 'auto' ? 'ws' : transport, stateLine(got.first.states));
          assert.equal(got.first.cursor, channels.map((c) => `${c}=6`).join(','));
          if (kind === 'token function') assert.ok(got.calls >= 1);
          assert.deepEqual(problems, [], 'the page logged no error and no request failed');
        } finally {
          await page.close();
        }
      });
    }
  }
});
