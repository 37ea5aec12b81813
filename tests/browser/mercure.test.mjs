// The Mercure face (`/.well-known/mercure`) in a real Chromium against a real `wrangler dev`,
// driven the way Mercure's own conformance suite and its browser clients drive a hub: a page on
// the hub's origin (`GET /`) opens `new EventSource('/.well-known/mercure?…')`, waits for `open`,
// publishes with `fetch` POST, a form body and a Bearer token signed with Mercure's development
// key, and checks what arrives. Both protocol versions (0.x `topic=`, 1.0 `match…=`), both token
// profiles, private updates over the cookie, raw multi-line data, event types, and resuming.
// Run: `cargo build -q -p edgehub-launch --bin edgehub-launch && node --test tests/browser/mercure.test.mjs`
// (needs build/ current, playwright-core and /usr/bin/chromium).
//
// Non-delivery is proven without sleeping: after the update that must not arrive, the test
// publishes a sentinel the subscriber does select. Updates reach a subscriber in publish order
// (one channel, one object), so once the sentinel is in, anything wrongly let through would be too.

import assert from 'node:assert/strict';
import { createHmac, randomBytes } from 'node:crypto';
import { after, before, test } from 'node:test';
import { chromium } from 'playwright-core';
import { Hub, MERCURE } from './hub.mjs';

const CHROMIUM = '/usr/bin/chromium';
const KEY = MERCURE.MERCURE_PUBLISHER_JWT_KEY;
const DETAIL_TYPE = 'https://mercure.rocks/authorization-detail';
/** Bound for an EventSource to open and for an update to arrive (a cold `wrangler dev` is slow). */
const WAIT_MS = 20_000;
const TEST_TIMEOUT_MS = 120_000;
/** The conformance suite's publisher tokens, verbatim (0.x: no exp; 1.0: at+jwt, exp in 2100). */
const SUITE_0X = 'eyJhbGciOiJIUzI1NiJ9.eyJtZXJjdXJlIjp7InB1Ymxpc2giOlsiKiJdLCJzdWJzY3JpYmUiOlsiKiJdfX0.bVXdlWXwfw9ySx7-iV5OpUSHo34RkjUdVzDLBcc6l_g';
const SUITE_1X = 'eyJhbGciOiJIUzI1NiIsInR5cCI6ImF0K2p3dCJ9.eyJhdWQiOiJodHRwczovL2xvY2FsaG9zdC8ud2VsbC1rbm93bi9tZXJjdXJlIiwiaXNzIjoiaHR0cHM6Ly9sb2NhbGhvc3QiLCJhdXRob3JpemF0aW9uX2RldGFpbHMiOlt7InR5cGUiOiJodHRwczovL21lcmN1cmUucm9ja3MvYXV0aG9yaXphdGlvbi1kZXRhaWwiLCJhY3Rpb25zIjpbInB1Ymxpc2giXSwidG9waWNzIjpbeyJtYXRjaCI6IioifV19LHsidHlwZSI6Imh0dHBzOi8vbWVyY3VyZS5yb2Nrcy9hdXRob3JpemF0aW9uLWRldGFpbCIsImFjdGlvbnMiOlsic3Vic2NyaWJlIl0sInRvcGljcyI6W3sibWF0Y2giOiIqIn1dfV0sImV4cCI6NDEwMjQ0NDgwMH0.z_S8IP5WZsCK8h3pcq0PB5zvJE0OdTrGA70khAYJQy4';
const UUID_URN = /^urn:uuid:[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/;

/** What differs between the two protocol versions, for tests that run on both. */
const VERSIONS = [
  { name: '0.x', param: 'topic', lastEventId: 'lastEventID', header: 'Last-Event-ID', token: SUITE_0X },
  { name: '1.0', param: 'match', lastEventId: 'last_event_id', header: 'Mercure-Last-Event-ID', token: SUITE_1X },
];

let hub;
let browser;
let failed = false;

before(async () => {
  hub = await Hub.start();
  browser = await chromium.launch({
    executablePath: CHROMIUM,
    headless: true,
    timeout: 60_000,
    args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
      '--disable-background-networking', '--disable-component-update', '--disable-sync'],
  });
});

after(async () => {
  await browser?.close().catch(() => {});
  // A failed run keeps the hub's persist dir and its wrangler.log for a look.
  await hub?.cleanup({ keep: failed });
});

/** A test whose failure message carries the hub's log tail. */
function it(name, fn) {
  test(name, { timeout: TEST_TIMEOUT_MS }, async (t) => {
    try {
      await fn(t);
    } catch (e) {
      failed = true;
      e.message += `\n--- hub log (${hub.dir}) ---\n${hub.logTail()}`;
      throw e;
    }
  });
}

// ---- tokens -------------------------------------------------------------------------------

/** An HS256 JWS over exactly these header and claims, signed with Mercure's development key. */
function sign(header, claims) {
  const b64 = (value) => Buffer.from(JSON.stringify(value)).toString('base64url');
  const input = `${b64(header)}.${b64(claims)}`;
  return `${input}.${createHmac('sha256', KEY).update(input).digest('base64url')}`;
}

/** 0.x profile: a `mercure` claim of selector lists, no exp, aud or iss. */
function token0x({ publish = [], subscribe = [] } = {}) {
  return sign({ alg: 'HS256' }, { mercure: { publish, subscribe } });
}

/** 1.0 profile: an RFC 9068 access token for this hub; a topic is `match` text or `{match, match_type}`. */
function token1({ publish = [], subscribe = [], ttl = 600 } = {}) {
  const detail = (action, topics) => ({
    type: DETAIL_TYPE,
    actions: [action],
    topics: topics.map((t) => (typeof t === 'string' ? { match: t } : t)),
  });
  const details = [];
  if (publish.length) details.push(detail('publish', publish));
  if (subscribe.length) details.push(detail('subscribe', subscribe));
  return sign({ alg: 'HS256', typ: 'at+jwt' }, {
    aud: MERCURE.MERCURE_AUDIENCE,
    iss: MERCURE.MERCURE_ISSUER,
    exp: Math.floor(Date.now() / 1000) + ttl,
    authorization_details: details,
  });
}

// ---- updates ------------------------------------------------------------------------------

/** A fresh random string: every test's topics and ids are its own on the shared channel. */
const fresh = () => randomBytes(8).toString('hex');

/** The suite's data: a line, an empty line, then 8 leading spaces and the test's name. */
const suiteData = (name) => `data for\n\n        ${name}`;

/** The suite's update id: `id-` and the topics as JSON (it holds `"`, `[`, `]`, `:` and `/`). */
const suiteId = (topics) => `id-${JSON.stringify(topics)}`;

/** A publish form body as name/value pairs (topics repeat). `id: undefined` lets the hub make one. */
function form({ topics, data, id, type, private: isPrivate = false }) {
  const pairs = topics.map((t) => ['topic', t]);
  if (data !== undefined) pairs.push(['data', data]);
  if (id !== undefined) pairs.push(['id', id]);
  if (type !== undefined) pairs.push(['type', type]);
  if (isPrivate) pairs.push(['private', 'on']);
  return pairs;
}

// ---- the page -----------------------------------------------------------------------------

/**
 * Runs in the page: `window.mercureTest`, which opens named EventSources on the hub (recording
 * every `message` event and every event of the types asked for), closes them, publishes the way
 * the suite does, and reads a subscribe response's headers.
 */
function installPageHelpers() {
  const streams = new Map();
  const hubUrl = (query) => {
    const url = new URL('/.well-known/mercure', window.origin);
    for (const [name, value] of query) url.searchParams.append(name, value);
    return url;
  };
  window.mercureTest = {
    open(name, query, types, timeoutMs) {
      return new Promise((resolve, reject) => {
        const url = hubUrl(query);
        const es = new EventSource(url);
        const got = [];
        const record = (e) => got.push({ type: e.type, data: e.data, id: e.lastEventId });
        for (const type of ['message', ...types]) es.addEventListener(type, record);
        streams.set(name, { es, got });
        const timer = setTimeout(() => {
          es.close();
          reject(new Error(`${name}: not open after ${timeoutMs} ms (${url.search})`));
        }, timeoutMs);
        es.onopen = () => {
          clearTimeout(timer);
          resolve();
        };
        // A refusal (not 200 text/event-stream) fails the EventSource for good: CLOSED.
        es.onerror = () => {
          if (es.readyState !== EventSource.CLOSED) return;
          clearTimeout(timer);
          reject(new Error(`${name}: refused (${url.search})`));
        };
      });
    },
    received(name) {
      return streams.get(name).got;
    },
    close(name) {
      streams.get(name).es.close();
    },
    async publish(token, pairs) {
      const res = await fetch('/.well-known/mercure', {
        method: 'POST',
        headers: { Authorization: `Bearer ${token}` },
        body: new URLSearchParams(pairs),
      });
      return { status: res.status, contentType: res.headers.get('content-type'), body: await res.text() };
    },
    /** A subscribe request's status and the named response headers; the stream is then dropped. */
    async headers(query, names, timeoutMs) {
      const abort = new AbortController();
      const timer = setTimeout(() => abort.abort(), timeoutMs);
      try {
        const res = await fetch(hubUrl(query), { signal: abort.signal, headers: { accept: 'text/event-stream' } });
        return { status: res.status, ...Object.fromEntries(names.map((n) => [n, res.headers.get(n)])) };
      } finally {
        clearTimeout(timer);
        abort.abort();
      }
    },
  };
}

/** A tab on the hub's page (`GET /`) in `context`, with the helpers above installed. */
class Tab {
  static async open(context) {
    const page = await context.newPage();
    const res = await page.goto(`${hub.base}/`);
    assert.equal(res.status(), 200, 'the page at / of the hub origin');
    await page.evaluate(installPageHelpers);
    return new Tab(page);
  }

  constructor(page) {
    this.page = page;
  }

  /** Opens EventSource `name` on `query` (name/value pairs) and resolves once it is open. */
  subscribe(name, query, types = []) {
    return this.page.evaluate(([n, q, t, ms]) => window.mercureTest.open(n, q, t, ms), [name, query, types, WAIT_MS]);
  }

  close(name) {
    return this.page.evaluate((n) => window.mercureTest.close(n), name);
  }

  received(name) {
    return this.page.evaluate((n) => window.mercureTest.received(n), name);
  }

  /** Waits (bounded) until stream `name` has received an event with SSE id `id`; returns all it received. */
  async waitFor(name, id) {
    try {
      await this.page.waitForFunction(([n, i]) => window.mercureTest.received(n).some((e) => e.id === i),
        [name, id], { timeout: WAIT_MS, polling: 50 });
    } catch {
      assert.fail(`${name}: no event with id ${id} within ${WAIT_MS} ms; got ${JSON.stringify(await this.received(name))}`);
    }
    return this.received(name);
  }

  /** Publishes from the page, as the suite does; asserts the 200 `text/plain` answer; returns the update's id. */
  async publish(token, update) {
    const answer = await this.page.evaluate(([t, p]) => window.mercureTest.publish(t, p), [token, form(update)]);
    assert.equal(answer.status, 200, `publish ${JSON.stringify(update)}: ${answer.status} ${answer.body}`);
    assert.match(answer.contentType ?? '', /^text\/plain(?:$|;.*)/);
    if (update.id !== undefined) assert.equal(answer.body, update.id, 'the answer body is the publisher\'s id');
    else assert.match(answer.body, UUID_URN, 'the answer body is the id the hub made');
    return answer.body;
  }

  headers(query, names) {
    return this.page.evaluate(([q, n, ms]) => window.mercureTest.headers(q, n, ms), [query, names, WAIT_MS]);
  }
}

/** A fresh browser context (its own cookie jar), with `cookies` (name → value) set for the hub's origin. */
async function newContext(cookies = {}) {
  const context = await browser.newContext();
  context.setDefaultTimeout(WAIT_MS);
  const list = Object.entries(cookies).map(([name, value]) => ({ name, value, url: hub.base }));
  if (list.length) await context.addCookies(list);
  return context;
}

/** Runs `fn(tab)` in a fresh anonymous context, closed afterwards. */
async function withTab(fn) {
  const context = await newContext();
  try {
    return await fn(await Tab.open(context));
  } finally {
    await context.close().catch(() => {});
  }
}

// ---- the conformance suite's cases --------------------------------------------------------

/**
 * One publish/subscribe case as the suite runs it: an anonymous EventSource on `query`, one
 * update (the suite's data, the suite's id unless `hubId`), published with `token`. In the
 * topics, query and sentinel, `$` is this run's random string and `$ORIGIN` the hub's origin.
 * A delivered update arrives as `message` with exactly the data and the id the POST answered;
 * one that must not arrive is followed by a public `sentinel` update the subscriber does select.
 */
async function runCase(c, token) {
  const r = fresh();
  const fill = (s) => s.replaceAll('$ORIGIN', hub.base).replaceAll('$', r);
  const topics = c.topics.map(fill);
  const query = c.query.map(([name, value]) => [name, fill(value)]);
  const data = suiteData(c.name);
  await withTab(async (tab) => {
    await tab.subscribe('s', query);
    const id = await tab.publish(token, { topics, data, id: c.hubId ? undefined : suiteId(topics), private: c.private });
    const want = [];
    let last = id;
    if (c.received) {
      want.push({ type: 'message', data, id });
    } else {
      const sentinel = { topics: [fill(c.sentinel)], data: 'sentinel', id: `sentinel-${r}` };
      last = await tab.publish(token, sentinel);
      want.push({ type: 'message', data: 'sentinel', id: last });
    }
    let got = await tab.waitFor('s', last);
    // A wildcard subscriber also sees whatever else the channel carries: keep this case's own.
    if (query.some(([, value]) => value === '*')) got = got.filter((e) => e.id === id || e.id === last);
    assert.deepEqual(got, want, `${c.name}: subscribed ${JSON.stringify(query)}, published ${JSON.stringify(topics)}`);
  });
}

// ---- private updates over the cookie -------------------------------------------------------

/** One tab per cookie jar, each subscribed on `query`; a private update on `topic`, then a public one. */
async function privateDelivery({ query, cookies, publisher, topic, r }) {
  const contexts = [];
  try {
    const tabs = {};
    for (const [who, jar] of Object.entries(cookies)) {
      const context = await newContext(jar);
      contexts.push(context);
      tabs[who] = await Tab.open(context);
      await tabs[who].subscribe('s', query);
    }
    const data = suiteData('private');
    const secret = await tabs.anonymous.publish(publisher, { topics: [topic], data, id: `private-${r}`, private: true });
    const sentinel = await tabs.anonymous.publish(publisher, { topics: [topic], data: 'public', id: `public-${r}` });
    const privateEvent = { type: 'message', data, id: secret };
    const publicEvent = { type: 'message', data: 'public', id: sentinel };
    assert.deepEqual(await tabs.allowed.waitFor('s', sentinel), [privateEvent, publicEvent], 'allowed');
    assert.deepEqual(await tabs.other.waitFor('s', sentinel), [publicEvent], 'selectors that do not match');
    assert.deepEqual(await tabs.anonymous.waitFor('s', sentinel), [publicEvent], 'anonymous');
  } finally {
    for (const context of contexts) await context.close().catch(() => {});
  }
}

// ---- the case tables -----------------------------------------------------------------------

const topic = (value) => ['topic', value];
const match = (value) => ['match', value];
const matchExact = (value) => ['match_exact', value];
const matchPattern = (value) => ['match_urlpattern', value];

/** 0.x: `topic=` selectors, published with the suite's 0.x token. The comment says what each proves. */
const CASES_0X = [
  // A selector equal to the topic selects it.
  { name: 'raw string', topics: ['r-$'], query: [topic('r-$')], received: true },
  // An update is delivered when an alternate topic (not the first) matches.
  { name: 'multiple topics', topics: ['other-$', 'r-$'], query: [topic('r-$')], received: true },
  // Any one of several selectors is enough.
  { name: 'multiple topic selectors', topics: ['r-$'], query: [topic('foo-$'), topic('r-$')], received: true },
  // A URI topic, and an update without id gets the hub's urn:uuid as its SSE id.
  { name: 'URI', topics: ['https://example.net/$/foo/1'], query: [topic('https://example.net/$/foo/1')], received: true, hubId: true },
  // An RFC 6570 template selects its expansions.
  { name: 'URI template', topics: ['https://example.net/$/foo/42'], query: [topic('https://example.net/$/foo/{random}')], received: true },
  // A topic equal to the template text itself matches it (spec step 2: before expansion).
  { name: 'the template itself as a topic', topics: ['https://example.net/$/foo/{id}'], query: [topic('https://example.net/$/foo/{id}')], received: true },
  // `*` selects every topic.
  { name: 'wildcard', topics: ['https://example.net/$/any/thing'], query: [topic('*')], received: true },
  // The suite's nonmatching cases, stray `}` included.
  { name: 'nonmatching raw string', topics: ['will-not-match}-$'], query: [topic('another-name-$')], sentinel: 'another-name-$' },
  { name: 'nonmatching URI', topics: ['https://example.net/$/foo/will-not-match}'], query: [topic('https://example.net/$/foo/another-name')], sentinel: 'https://example.net/$/foo/another-name' },
  { name: 'nonmatching URI template', topics: ['https://example.net/$/foo/will-not-match}'], query: [topic('https://example.net/$/bar/{var}')], sentinel: 'https://example.net/$/bar/x' },
  // A simple `{var}` expansion holds no `/`.
  { name: 'a template variable does not cross a slash', topics: ['https://example.net/$/foo/a/b'], query: [topic('https://example.net/$/foo/{id}')], sentinel: 'https://example.net/$/foo/a' },
  // A private update never reaches an anonymous subscriber, however its selectors match.
  { name: 'private raw string', topics: ['r-$'], query: [topic('r-$')], private: true, sentinel: 'r-$' },
  { name: 'private URI', topics: ['https://example.net/$/foo/1'], query: [topic('https://example.net/$/foo/1')], private: true, sentinel: 'https://example.net/$/foo/1' },
  { name: 'private URI template', topics: ['https://example.net/$/foo/42'], query: [topic('https://example.net/$/foo/{random}')], private: true, sentinel: 'https://example.net/$/foo/42' },
];

/** 1.0: `match=`, `match_exact=`, `match_urlpattern=`, published with the suite's 1.0 token. */
const CASES_1X = [
  // The bare `match` is the exact matcher.
  { name: 'raw string', topics: ['r-$'], query: [match('r-$')], received: true },
  // Any one of several matchers is enough.
  { name: 'multiple topic selectors', topics: ['r-$'], query: [match('foo-$'), match('r-$')], received: true },
  // An update is delivered when an alternate topic matches (1.0 keeps alternate topics).
  { name: 'multiple topics', topics: ['other-$', 'r-$'], query: [match('r-$')], received: true },
  // A URI topic, and an update without id gets the hub's urn:uuid as its SSE id.
  { name: 'URI', topics: ['https://example.net/$/foo/1'], query: [match('https://example.net/$/foo/1')], received: true, hubId: true },
  // `match_exact` is the explicit spelling of `match`.
  { name: 'match_exact', topics: ['https://example.net/$/foo/1'], query: [matchExact('https://example.net/$/foo/1')], received: true },
  // An absolute URL pattern selects the topics it matches.
  { name: 'URL pattern', topics: ['https://example.net/$/foo/42'], query: [matchPattern('https://example.net/$/foo/:random')], received: true },
  // A relative pattern and a relative topic both resolve against the hub's URL.
  { name: 'relative URL pattern, relative topic', topics: ['/$/books/42'], query: [matchPattern('/$/books/:id')], received: true, hubId: true },
  // A relative pattern matches the absolute topic on the hub's own origin.
  { name: 'relative URL pattern, same-origin topic', topics: ['$ORIGIN/$/books/43'], query: [matchPattern('/$/books/:id')], received: true },
  // `*` selects every topic.
  { name: 'wildcard', topics: ['https://example.net/$/any/thing'], query: [match('*')], received: true },
  // The suite's nonmatching cases.
  { name: 'nonmatching raw string', topics: ['will-not-match-$'], query: [match('another-name-$')], sentinel: 'another-name-$' },
  { name: 'nonmatching URI', topics: ['https://example.net/$/foo/will-not-match'], query: [match('https://example.net/$/foo/another-name')], sentinel: 'https://example.net/$/foo/another-name' },
  { name: 'nonmatching URL pattern', topics: ['https://example.net/$/foo/will-not-match'], query: [matchPattern('https://example.net/$/bar/:var')], sentinel: 'https://example.net/$/bar/x' },
  // A relative pattern is the hub's origin: it does not match another host.
  { name: 'relative URL pattern, other host', topics: ['https://example.net/$/books/44'], query: [matchPattern('/$/books/:id')], sentinel: '/$/books/1' },
  // Exact matching compares bytes: it never resolves a relative matcher against the hub's URL.
  { name: 'exact does not resolve relative values', topics: ['$ORIGIN/$/page'], query: [match('/$/page')], sentinel: '/$/page' },
  // A private update never reaches an anonymous subscriber, however its matchers match.
  { name: 'private raw string', topics: ['r-$'], query: [match('r-$')], private: true, sentinel: 'r-$' },
  { name: 'private URI', topics: ['https://example.net/$/foo/1'], query: [match('https://example.net/$/foo/1')], private: true, sentinel: 'https://example.net/$/foo/1' },
  { name: 'private URL pattern', topics: ['https://example.net/$/foo/42'], query: [matchPattern('https://example.net/$/foo/:random')], private: true, sentinel: 'https://example.net/$/foo/42' },
];

// ---- tests --------------------------------------------------------------------------------

// Our signer is the suite's: it reproduces both of its tokens byte for byte, so the tokens this
// file mints are what Mercure's own tooling would make.
test('0. the HS256 signer reproduces the conformance suite\'s tokens', () => {
  assert.equal(token0x({ publish: ['*'], subscribe: ['*'] }), SUITE_0X);
  const all = (action) => ({ type: DETAIL_TYPE, actions: [action], topics: [{ match: '*' }] });
  assert.equal(sign({ alg: 'HS256', typ: 'at+jwt' }, {
    aud: MERCURE.MERCURE_AUDIENCE,
    iss: MERCURE.MERCURE_ISSUER,
    authorization_details: [all('publish'), all('subscribe')],
    exp: 4102444800,
  }), SUITE_1X);
});

for (const c of CASES_0X) {
  it(`1. 0.x topic=: ${c.name} is ${c.received ? 'delivered' : 'not delivered'}`, () => runCase(c, SUITE_0X));
}

for (const c of CASES_1X) {
  it(`2. 1.0 match: ${c.name} is ${c.received ? 'delivered' : 'not delivered'}`, () => runCase(c, SUITE_1X));
}

// 0.x private updates: the `mercureAuthorization` cookie's `mercure.subscribe` selectors decide.
// A subscriber whose selectors match gets the update; one whose selectors do not, and an
// anonymous one, get only the public sentinel. Published with a 0.x token narrowed to a template.
it('3a. 0.x: a private update reaches the cookie subscriber whose selectors match, not the others', async () => {
  const r = fresh();
  const books = `https://example.net/${r}/books/{id}`;
  await privateDelivery({
    query: [['topic', books]],
    cookies: {
      allowed: { mercureAuthorization: token0x({ subscribe: [books] }) },
      other: { mercureAuthorization: token0x({ subscribe: [`https://example.net/${r}/books/2`] }) },
      anonymous: {},
    },
    publisher: token0x({ publish: [books] }),
    topic: `https://example.net/${r}/books/1`,
    r,
  });
});

// 1.0 private updates: the `mercure_access_token` cookie's subscribe authorization details
// decide, here a URL pattern. Published with a 1.0 access token narrowed to that pattern.
it('3b. 1.0: a private update reaches the cookie subscriber whose details match, not the others', async () => {
  const r = fresh();
  const books = { match: `https://example.net/${r}/books/:id`, match_type: 'urlpattern' };
  await privateDelivery({
    query: [['match_urlpattern', books.match]],
    cookies: {
      allowed: { mercure_access_token: token1({ subscribe: [books] }) },
      other: { mercure_access_token: token1({ subscribe: [`https://example.net/${r}/books/2`] }) },
      anonymous: {},
    },
    publisher: token1({ publish: [books] }),
    topic: `https://example.net/${r}/books/1`,
    r,
  });
});

for (const v of VERSIONS) {
  // Data travels raw: the suite's data (an empty line, 8 leading spaces), CR and CRLF line ends
  // (which SSE carries as LF), a trailing newline, lines that look like SSE fields, and empty
  // data all arrive in event.data exactly as a browser reassembles them.
  it(`4. ${v.name}: multi-line data arrives exactly as sent`, () => withTab(async (tab) => {
    const r = fresh();
    const topics = [`https://example.net/${r}/data`];
    await tab.subscribe('s', [[v.param, topics[0]]]);
    const sent = [
      [suiteData('raw data'), suiteData('raw data')],
      ['crlf\r\nand\rcr', 'crlf\nand\ncr'],
      ['trailing newline\n', 'trailing newline\n'],
      ['id: forged\nevent: forged\n\ndata: forged', 'id: forged\nevent: forged\n\ndata: forged'],
      ['', ''],
    ];
    const want = [];
    for (const [i, [data, seen]] of sent.entries()) {
      const id = await tab.publish(v.token, { topics, data, id: `data-${i}-${r}` });
      want.push({ type: 'message', data: seen, id });
    }
    assert.deepEqual(await tab.waitFor('s', want.at(-1).id), want);
  }));

  // `type` is the SSE event name: a typed update reaches addEventListener(type) and never
  // `message`; an untyped one arrives as `message`.
  it(`5. ${v.name}: an update with type arrives only to its listener, one without as message`, () => withTab(async (tab) => {
    const r = fresh();
    const topics = [`https://example.net/${r}/typed`];
    await tab.subscribe('s', [[v.param, topics[0]]], ['book.updated']);
    const data = suiteData('typed');
    const typed = await tab.publish(v.token, { topics, data, id: `typed-${r}`, type: 'book.updated' });
    const plain = await tab.publish(v.token, { topics, data, id: `plain-${r}` });
    assert.deepEqual(await tab.waitFor('s', plain), [
      { type: 'book.updated', data, id: typed },
      { type: 'message', data, id: plain },
    ]);
  }));

  // The suite reuses ids across cases: an id published twice is accepted (200, body = id) and
  // both updates are delivered with it.
  it(`6. ${v.name}: an id used twice is accepted and both updates are delivered`, () => withTab(async (tab) => {
    const r = fresh();
    const topics = [`https://example.net/${r}/again`];
    const id = suiteId(topics);
    await tab.subscribe('s', [[v.param, topics[0]]]);
    await tab.publish(v.token, { topics, data: 'first', id });
    await tab.publish(v.token, { topics, data: 'second', id });
    await tab.publish(v.token, { topics, data: 'sentinel', id: `sentinel-${r}` });
    assert.deepEqual(await tab.waitFor('s', `sentinel-${r}`), [
      { type: 'message', data: 'first', id },
      { type: 'message', data: 'second', id },
      { type: 'message', data: 'sentinel', id: `sentinel-${r}` },
    ]);
  }));

  // Resume: the page closes its EventSource, updates are published meanwhile (two on its topic,
  // one of them without id, plus one on another topic and one private), and a new EventSource
  // with the version's last-event-id parameter gets exactly the two, then live updates. The
  // response names the id it resumed after in the version's header.
  it(`7. ${v.name}: reopening with ${v.lastEventId}= gets exactly the updates published meanwhile`, () => withTab(async (tab) => {
    const r = fresh();
    const topic = `https://example.net/${r}/resume`;
    await tab.publish(v.token, { topics: [topic], data: 'before', id: `before-${r}` });
    await tab.subscribe('before', [[v.param, topic]]);
    const seen = await tab.publish(v.token, { topics: [topic], data: suiteData('seen'), id: `seen-${r}` });
    assert.deepEqual(await tab.waitFor('before', seen), [{ type: 'message', data: suiteData('seen'), id: seen }],
      'a new subscriber without a last event id gets live updates only');
    await tab.close('before');

    const missed = [];
    missed.push({ type: 'message', data: suiteData('missed 1'), id: await tab.publish(v.token, { topics: [topic], data: suiteData('missed 1'), id: `missed-1-${r}` }) });
    await tab.publish(v.token, { topics: [`https://example.net/${r}/elsewhere`], data: 'elsewhere', id: `elsewhere-${r}` });
    await tab.publish(v.token, { topics: [topic], data: 'private', id: `private-${r}`, private: true });
    missed.push({ type: 'message', data: 'missed 2', id: await tab.publish(v.token, { topics: [topic], data: 'missed 2' }) });

    const query = [[v.param, topic], [v.lastEventId, seen]];
    await tab.subscribe('after', query);
    const live = await tab.publish(v.token, { topics: [topic], data: 'live', id: `live-${r}` });
    assert.deepEqual(await tab.waitFor('after', live), [...missed, { type: 'message', data: 'live', id: live }]);

    const answer = await tab.headers(query, ['content-type', v.header]);
    assert.equal(answer.status, 200);
    assert.match(answer['content-type'], /^text\/event-stream/);
    assert.equal(answer[v.header], seen, `the ${v.header} response header`);
  }));
}
