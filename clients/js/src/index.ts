// @edgehub/client: one subscribe call over WebSocket, Server-Sent Events or polling, with the
// hub's guarantees carried to the application: each event at most once and in order per
// channel, none lost across reconnects and transport changes (resumed from the stream cursor,
// deduplicated by id), and real gaps reported. No runtime dependencies. The wire contract is
// docs/API.md of the edgehub repository.

/** A way to reach the hub. `auto` tries them in this order. */
export type Transport = 'ws' | 'sse' | 'poll';

/** A token, or a function that returns one (called again before it expires and after a 401). */
export type TokenSource = string | (() => string | Promise<string>);

export interface HubOptions {
  /** The hub's origin, e.g. `https://hub.example.com` (a path prefix is kept). */
  url: string;
  /** Without one, only public channels can be read. */
  token?: TokenSource;
  /** `auto` (default): WebSocket, stepping down to SSE, then polling, and back up later. */
  transport?: 'auto' | Transport;
  /** A WebSocket constructor where the runtime has none (Node 20: the `ws` package). */
  WebSocket?: unknown;
  /** The `fetch` to use (default: the global one). */
  fetch?: typeof fetch;
  /** Milliseconds between polls when nothing is new (default 1000). */
  pollInterval?: number;
  /** Milliseconds a transport may take to open before it counts as failed (default 10000). */
  connectTimeout?: number;
  /** The hub's `HEARTBEAT_SECONDS` (default 15): an SSE stream silent for 3 × this is stalled. */
  heartbeat?: number;
  /** Milliseconds on a lower transport before `auto` tries the better one again (default 60000). */
  retryBetter?: number;
  /** Reconnect back-off bounds in milliseconds, with jitter (default [500, 15000]). */
  backoff?: [number, number];
}

/** An event, as every transport delivers it. */
export interface HubEvent {
  id: number;
  channel: string;
  type: string;
  data: unknown;
  time: string;
  topics?: string[];
}

/** Events after `requested` were pruned by retention; `earliest` is the first one left. */
export interface Gap {
  channel: string;
  requested: number;
  earliest: number;
}

export interface Member {
  sub: string;
  info: unknown;
}

/**
 * `sync`: every member (`members`), on (re)connect; `join` / `leave`: one `member`; `diff`:
 * several changes batched by the hub (`leaves` to remove, `joins` to add).
 */
export interface PresenceEvent {
  action: 'sync' | 'join' | 'leave' | 'diff';
  channel: string;
  member?: Member;
  members?: Member[];
  joins?: Member[];
  leaves?: Member[];
}

export type State = 'connecting' | 'open' | 'retrying' | 'closed';

export interface StateChange {
  state: State;
  /** The transport in use or being tried. */
  transport: Transport;
  /** Failed attempts in a row. */
  attempt: number;
  /** Why the subscription stopped (`closed`) or the last attempt failed (`retrying`). */
  error?: Error;
}

/** Where to start: a stream cursor (`"a=12,b=7"`), positions by channel, or one id for all. */
export type Since = number | string | Record<string, number>;

export interface SubscribeOptions {
  /** This subscription's transport, instead of the hub's `transport` option. */
  transport?: 'auto' | Transport;
  /** Without it, each channel starts from now on; `0` is everything retained. */
  since?: Since;
  /** Enter the channels' presence (the token needs a `sub`). */
  presence?: boolean;
  /** Only events with one of these topics (exact). */
  topics?: string[];
  /** Only events with a topic that one of these URL patterns matches. */
  topicPatterns?: string[];
  onEvent?(event: HubEvent): void;
  onGap?(gap: Gap): void;
  /** A presence event, and the channel's members after it. */
  onPresence?(event: PresenceEvent, members: Member[]): void;
  onState?(change: StateChange): void;
}

export interface Subscription extends AsyncIterable<HubEvent> {
  /** The stream cursor (`a=12,b=7`) of every channel whose position is known: pass it as `since`. */
  readonly cursor: string;
  /** The last id delivered (or the starting position) of each channel. */
  readonly positions: Record<string, number>;
  readonly state: State;
  /** The transport in use or being tried. */
  readonly transport: Transport;
  /** A channel's presence members as last seen. */
  members(channel: string): Member[];
  /** Stops for good; an iteration over the subscription ends. */
  close(): void;
}

export interface PublishEvent {
  type?: string;
  data: unknown;
  topics?: string[];
}

export interface PublishOptions {
  /** Makes retries store the event once (default: a random key per call). */
  idempotencyKey?: string;
  /** Retries after a network error or a 5xx (default 5). */
  retries?: number;
}

export interface PollOptions {
  since?: Since;
  limit?: number;
  topics?: string[];
  topicPatterns?: string[];
}

export interface PollPage {
  events: HubEvent[];
  /** The stream cursor to poll with next. */
  next: string;
  /** A page was cut at `limit`: poll again at once. */
  more: boolean;
  gaps: Gap[];
}

export interface PresenceList {
  channel: string;
  count: number;
  members: (Member & { connections: number; since: string })[];
}

/** A refusal from the hub (its problem document), or a transport that could not be used. */
export class HubError extends Error {
  constructor(
    readonly status: number,
    readonly code = '',
    detail = '',
  ) {
    super(detail || code || `status ${status}`);
    this.name = 'HubError';
  }
}

type Json = any;
type Positions = Map<string, number | undefined>;

const TRANSPORTS: Transport[] = ['ws', 'sse', 'poll'];
/** The longest `exp - iat` the hub takes in a URL (`QUERY_TOKEN_MAX_SECONDS`' default). */
const QUERY_TTL = 300;
const enc = encodeURIComponent;
const now = () => Date.now();
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** `exp` and `iat` of a JWT, without checking it (the hub does). */
function claims(token: string): { exp?: number; iat?: number } {
  try {
    return JSON.parse(atob(token.split('.')[1].replace(/-/g, '+').replace(/_/g, '/')));
  } catch {
    return {};
  }
}

function parseCursor(cursor: string): Map<string, number> {
  const m = new Map<string, number>();
  for (const pair of cursor.split(',')) {
    const i = pair.lastIndexOf('=');
    if (i > 0) m.set(pair.slice(0, i), +pair.slice(i + 1));
  }
  return m;
}

/** The query of a subscription or poll; `single`: a v1 route, the channel in the path, `since` one id. */
function query(channels: string[], pos: Positions | null, o: { topics?: string[]; topicPatterns?: string[] }, single = false) {
  let q = single ? '' : channels.map((c) => '&channel=' + enc(c)).join('');
  const since = pos && (single ? pos.get(channels[0]) : cursorOf(pos));
  if (since !== null && since !== undefined && since !== '') q += '&since=' + enc(since);
  for (const t of o.topics || []) q += '&topic=' + enc(t);
  for (const t of o.topicPatterns || []) q += '&topic_pattern=' + enc(t);
  return q.slice(1);
}

function cursorOf(pos: Positions) {
  return [...pos]
    .filter(([, id]) => id !== undefined)
    .map(([c, id]) => c + '=' + id)
    .join(',');
}

function startPositions(channels: string[], since: Since | undefined): Positions {
  const given =
    typeof since === 'number'
      ? null
      : typeof since === 'string'
        ? /^\d+$/.test(since)
          ? null
          : parseCursor(since)
        : new Map(Object.entries(since || {}));
  return new Map(channels.map((c) => [c, given ? given.get(c) : since === undefined ? undefined : +since]));
}

async function problem(res: Response): Promise<HubError> {
  let p: Json = {};
  try {
    p = await res.json();
  } catch {}
  return new HubError(res.status, p.code || (p.type || '').replace(/.*:/, ''), p.detail);
}

export class EdgeHub {
  readonly url: string;
  #o: HubOptions;
  #token?: string;
  #exp = 0;
  #fresh?: Promise<string | undefined>;
  #minted = new Map<string, [string, number]>();
  /** The lifetime of tokens sent in URLs: the hub's default `QUERY_TOKEN_MAX_SECONDS`, 60 s once the hub refused that. */
  #queryTtl = QUERY_TTL;

  constructor(options: HubOptions) {
    this.#o = options;
    this.url = options.url.replace(/\/+$/, '');
  }

  /** The current token: the cached one while it has a quarter of its life (at most 30 s) left. */
  async token(refresh = false): Promise<string | undefined> {
    const t = this.#o.token;
    if (typeof t !== 'function') return t;
    if (!refresh && this.#token && now() < this.#exp) return this.#token;
    this.#fresh ??= (async () => {
      // First a turn of the event loop: `finally` must run after `#fresh` holds this promise,
      // even when `t` throws at once.
      await 0;
      try {
        const token = await t();
        const { exp, iat } = claims(token);
        const life = exp ? exp - (iat || now() / 1000) : 3600;
        this.#token = token;
        this.#exp = exp ? (exp - Math.min(30, life / 4)) * 1000 : Infinity;
        return token;
      } finally {
        this.#fresh = undefined;
      }
    })();
    return this.#fresh;
  }

  /** When the current token should be replaced (ms since the epoch; Infinity for none). */
  get tokenRefreshAt() {
    return typeof this.#o.token === 'function' ? this.#exp : Infinity;
  }

  /** A fetch to the hub with the bearer token; a 401 refreshes a token function once. */
  async request(method: string, path: string, body?: unknown, headers: Record<string, string> = {}, signal?: AbortSignal): Promise<Response> {
    for (let refresh = false; ; refresh = true) {
      const token = await this.token(refresh);
      const h = { ...headers };
      if (token) h.authorization = 'Bearer ' + token;
      if (body !== undefined) h['content-type'] = 'application/json';
      const res = await (this.#o.fetch || fetch)(this.url + path, { method, headers: h, body: body === undefined ? undefined : JSON.stringify(body), signal });
      if (res.status !== 401 || refresh || typeof this.#o.token !== 'function') return res;
      await res.body?.cancel();
    }
  }

  async #json(method: string, path: string, body?: unknown, headers?: Record<string, string>): Promise<Json> {
    const res = await this.request(method, path, body, headers);
    if (!res.ok) throw await problem(res);
    return res.json();
  }

  /**
   * Publishes one event (returns its id) or a batch (returns their ids). Network errors and 5xx
   * answers are retried with the same idempotency key, so the event is stored once.
   */
  publish(channel: string, event: PublishEvent, options?: PublishOptions): Promise<number>;
  publish(channel: string, events: PublishEvent[], options?: PublishOptions): Promise<number[]>;
  async publish(channel: string, event: PublishEvent | PublishEvent[], options: PublishOptions = {}): Promise<number | number[]> {
    const key = options.idempotencyKey || randomKey();
    const retries = options.retries ?? 5;
    for (let attempt = 0; ; attempt++) {
      try {
        const r = await this.#json('POST', `/channels/${enc(channel)}/events`, event, { 'idempotency-key': key });
        const ids = r.events.map((e: Json) => e.id);
        return Array.isArray(event) ? ids : ids[0];
      } catch (e) {
        if (attempt >= retries || (e instanceof HubError && e.status < 500)) throw e;
        await sleep(this.delay(attempt));
      }
    }
  }

  /** One page over one or more channels, from the hub's read model (no connection kept). */
  async poll(channels: string | string[], options: PollOptions = {}): Promise<PollPage> {
    const list = [channels].flat();
    let q = query(list, startPositions(list, options.since), options);
    if (options.limit) q += '&limit=' + options.limit;
    const r = await this.#json('GET', '/poll?' + q);
    return { events: r.events, next: r.next, more: r.more, gaps: r.gaps || [] };
  }

  /** Who is on a channel. */
  presence(channel: string): Promise<PresenceList> {
    return this.#json('GET', `/channels/${enc(channel)}/presence`);
  }

  /** Opens a subscription over one or more channels; it reconnects by itself until closed. */
  subscribe(channels: string | string[], options: SubscribeOptions = {}): Subscription {
    return new Sub(this, [channels].flat(), options, this.#o);
  }

  /** A reconnect delay: exponential within `backoff`, with jitter. */
  delay(attempt: number) {
    const [min, max] = this.#o.backoff || [500, 15000];
    return Math.min(max, min * 2 ** attempt) * (0.5 + Math.random() / 2);
  }

  /** The hub refused a URL token as too long-lived: mint shorter ones (false if they already are). */
  shortenQueryTokens() {
    if (this.#queryTtl <= 60) return false;
    this.#queryTtl = 60;
    this.#minted.clear();
    return true;
  }

  /** A token that may travel in a URL (WebSocket): the token itself when short-lived, else one minted from it. */
  async queryToken(channels: string[]): Promise<[string | undefined, number]> {
    const token = await this.token();
    if (!token) return [undefined, Infinity];
    const { exp = 0, iat } = claims(token);
    if (iat !== undefined && exp - iat <= this.#queryTtl) return [token, this.tokenRefreshAt];
    const key = token + ' ' + channels;
    const cached = this.#minted.get(key);
    if (cached && now() < cached[1]) return [cached[0], cached[1]];
    const m = await this.#json('POST', '/tokens', { subscribe: channels, ttl: this.#queryTtl });
    const until = Math.min(this.tokenRefreshAt, Date.parse(m.expires_at) - 30_000);
    this.#minted.clear();
    this.#minted.set(key, [m.token, until]);
    return [m.token, until];
  }
}

function randomKey() {
  return [...crypto.getRandomValues(new Uint8Array(16))].map((b) => b.toString(16).padStart(2, '0')).join('');
}

/** How one connection ended. */
interface Ended {
  /** It delivered its start (ready, the stream's first block, a first page): the transport works here. */
  opened?: boolean;
  /** Reconnect at once with a fresh token (its expiry is near or passed, a 401). */
  refresh?: boolean;
  /** Go back to the best transport (`auto` after `retryBetter` on a lower one). */
  upgrade?: boolean;
  error?: Error;
}

/** A connection attempt in progress: `stop` ends it early. */
interface Conn {
  done: Promise<Ended>;
  stop(e?: Ended): void;
}

/** Where the runtime opens client WebSockets with `fetch` (Workers). */
const FETCH_UPGRADE = {};

/** Errors of status 0 say this transport cannot work here: `auto` steps down on them. */
const unusable = (code: string, detail: string) => new HubError(0, code, detail);

class Sub implements Subscription {
  #hub: EdgeHub;
  #channels: string[];
  #o: SubscribeOptions;
  #opts: HubOptions;
  #pos: Positions;
  #gaps = new Set<string>();
  #members = new Map<string, Map<string, Member>>();
  #queue: HubEvent[] = [];
  #wake?: () => void;
  #iterating = false;
  #error?: Error;
  #conn?: Conn;
  #level: number;
  #best: number;
  #auto: boolean;
  #onOpen?: () => void;
  state: State = 'connecting';
  transport: Transport;

  constructor(hub: EdgeHub, channels: string[], o: SubscribeOptions, opts: HubOptions) {
    this.#hub = hub;
    this.#channels = channels;
    this.#o = o;
    this.#opts = opts;
    this.#pos = startPositions(channels, o.since);
    const t = o.transport || opts.transport || 'auto';
    this.#auto = t === 'auto';
    this.#best = this.#level = t === 'auto' ? (this.#WS() ? 0 : 1) : TRANSPORTS.indexOf(t);
    this.transport = TRANSPORTS[this.#level];
    this.#run();
  }

  get cursor() {
    return cursorOf(this.#pos);
  }

  get positions() {
    return Object.fromEntries([...this.#pos].filter(([, id]) => id !== undefined)) as Record<string, number>;
  }

  members(channel: string) {
    return [...(this.#members.get(channel)?.values() || [])];
  }

  close() {
    if (this.state === 'closed') return;
    this.#set('closed', 0);
    this.#conn?.stop();
    this.#wake?.();
  }

  async *[Symbol.asyncIterator](): AsyncIterator<HubEvent> {
    this.#iterating = true;
    try {
      for (;;) {
        const e = this.#queue.shift();
        if (e) yield e;
        else if (this.state === 'closed') {
          if (this.#error) throw this.#error;
          return;
        } else await new Promise<void>((r) => (this.#wake = r));
      }
    } finally {
      // Leaving the loop (break, return, a throw) ends the subscription.
      this.#iterating = false;
      this.close();
    }
  }

  #closed() {
    return this.state === 'closed';
  }

  #WS(): Json {
    const g = globalThis as Json;
    return this.#opts.WebSocket || (g.WebSocketPair ? FETCH_UPGRADE : g.WebSocket);
  }

  #set(state: State, attempt: number, error?: Error) {
    this.state = state;
    try {
      this.#o.onState?.({ state, transport: this.transport, attempt, error });
    } catch (e) {
      // The application's error is reported as an uncaught one would be, and the reconnect
      // loop goes on.
      const g = globalThis as Json;
      g.reportError ? g.reportError(e) : console.error(e);
    }
  }

  async #run() {
    let attempt = 0;
    let refresh = false;
    let downAt = 0;
    while (!this.#closed()) {
      this.transport = TRANSPORTS[this.#level];
      this.#set('connecting', attempt);
      const started = now();
      const refreshed = refresh;
      let ended: Ended;
      let upgrade: any;
      try {
        if (refresh) await this.#hub.token(true);
        const t = this.transport;
        // A lower transport that works gives way to the better one after a while.
        this.#onOpen = () => {
          if (this.#level > this.#best) upgrade = setTimeout(() => this.#conn?.stop({ opened: true, upgrade: true }), Math.max(0, downAt + (this.#opts.retryBetter ?? 60000) - now()));
        };
        const conn = (this.#conn = await (t === 'ws' ? this.#ws() : t === 'sse' ? this.#sse() : this.#poll()));
        if (this.#closed()) conn.stop();
        ended = await conn.done;
      } catch (e) {
        ended = { error: e as Error };
      }
      clearTimeout(upgrade);
      if (this.#closed()) return;
      const { opened, error } = ended;
      refresh = !!ended.refresh;
      // This hub takes shorter tokens in URLs than its default: mint those.
      if (error instanceof HubError && error.code === 'query_token_too_long_lived' && this.#hub.shortenQueryTokens()) continue;
      if (error instanceof HubError && error.status >= 400 && error.status < 500 && error.status !== 408 && error.status !== 429) {
        // A refusal stops the subscription, except a 401 that a fresh token may mend.
        if (error.status !== 401 || refreshed || typeof this.#opts.token !== 'function') {
          this.#error = error;
          this.#set('closed', attempt, error);
          this.#wake?.();
          return;
        }
        refresh = true;
      }
      if (ended.upgrade) this.#level = this.#best;
      else if (this.#auto && !opened && error instanceof HubError && !error.status && this.#level < 2) {
        // This transport cannot work here (a proxy refusing upgrades, one buffering streams).
        this.#level++;
        downAt = now();
        continue;
      }
      if (opened) attempt = 0;
      if (ended.upgrade || (refresh && !refreshed) || (opened && !error && now() - started > 1000)) continue;
      this.#set('retrying', attempt, error);
      await sleep(this.#hub.delay(attempt++));
    }
  }

  /** Delivers an event once, in order: anything at or below the channel's position is a repeat. */
  #event(e: HubEvent) {
    const at = this.#pos.get(e.channel);
    if (!this.#pos.has(e.channel) || (at !== undefined && e.id <= at)) return;
    this.#pos.set(e.channel, e.id);
    if (this.#iterating || !this.#o.onEvent) this.#queue.push(e), this.#wake?.();
    this.#o.onEvent?.(e);
  }

  #gap(g: Gap) {
    const key = `${g.channel} ${g.requested} ${g.earliest}`;
    if (this.#gaps.has(key)) return;
    this.#gaps.add(key);
    this.#o.onGap?.(g);
  }

  #presence(p: PresenceEvent) {
    let m = this.#members.get(p.channel);
    if (!m || p.action === 'sync') this.#members.set(p.channel, (m = new Map()));
    const gone = p.action === 'leave' ? [p.member!] : p.leaves || [];
    for (const x of gone) m.delete(x.sub);
    for (const x of p.members || p.joins || (p.action === 'join' ? [p.member!] : [])) m.set(x.sub, x);
    this.#o.onPresence?.(p, [...m.values()]);
  }

  /**
   * Positions learnt from the hub: where a channel that started "from now on" starts (a
   * stream's start cursor, a ready's heads), or, with `skip`, ids a filtered poll examined.
   */
  #learn(heads: Map<string, number> | Record<string, number>, skip = false) {
    for (const [c, id] of heads instanceof Map ? heads : Object.entries(heads)) {
      const at = this.#pos.get(c);
      if (this.#pos.has(c) && (at === undefined || (skip && id > at))) this.#pos.set(c, id);
    }
  }

  #query(single = false) {
    return query(this.#channels, this.#pos, this.#o, single) + (this.#o.presence ? '&presence=1' : '');
  }

  /**
   * One connection: `open` starts it with `opened` (call once it has started) and `end` (call
   * when it is over; the first call counts) and returns its closer. It fails if it has not
   * started within `connectTimeout`, and ends to renew its token at `until`.
   */
  #start(open: (end: (e: Ended) => void, opened: () => void) => () => void, until = Infinity): Conn {
    let finish!: (e: Ended) => void;
    let started = false;
    let over = false;
    const done = new Promise<Ended>((r) => (finish = r));
    const timers: any[] = [];
    let close = () => {};
    const end = (e: Ended) => {
      if (over) return;
      over = true;
      timers.forEach(clearTimeout);
      close();
      finish({ ...e, opened: started || e.opened });
    };
    const opened = () => {
      if (!started && !over) (started = true), this.#set('open', 0), this.#onOpen?.();
    };
    timers.push(setTimeout(() => started || end({ error: unusable('timeout', 'the transport did not open in time') }), this.#opts.connectTimeout ?? 10000));
    // A token that will be replaced (a token function's, or one minted for the URL): renew first.
    if (until > now() && until < Infinity) timers.push(setTimeout(() => end({ opened: true, refresh: true }), Math.min(2 ** 31 - 1, until - now())));
    close = open(end, opened);
    if (over) close();
    return { done, stop: (e = { opened: true }) => end(e) };
  }

  async #ws(): Promise<Conn> {
    const WS = this.#WS();
    if (!WS) throw unusable('no_websocket', 'no WebSocket in this runtime: pass one as the WebSocket option');
    // Workers (workerd) open a client WebSocket with fetch, which also carries the token in a header.
    const viaFetch = WS === FETCH_UPGRADE;
    const [token, until] = viaFetch ? [undefined, this.#hub.tokenRefreshAt] : await this.#hub.queryToken(this.#channels);
    const one = this.#channels.length === 1;
    const path = (one ? `/ws/${enc(this.#channels[0])}?` : '/ws?') + this.#query(one) + (token ? '&token=' + enc(token) : '');
    return this.#start((end, opened) => {
      let ws: Json;
      let dead = false;
      let live = false;
      let heard = now();
      let pinged = 0;
      let heartbeat = 15;
      let window = 1 << 20;
      let unconfirmed = 0;
      const confirm = new Set<string>();
      // Pings at a third of the heartbeat keep a presence member in, and their pongs tell a stall.
      const timer = setInterval(() => {
        if (ws?.readyState !== 1) return;
        if (now() - heard > Math.max(3 * heartbeat, 10) * 1000) end({ error: unusable('stalled', 'the WebSocket went silent') });
        else if (now() - pinged >= (heartbeat * 1000) / 3) (pinged = now()), ws.send('ping');
      }, 250);
      const message = (m: Json) => {
        heard = now();
        if (dead || typeof m.data !== 'string' || m.data === 'pong') return;
        let f: Json;
        try {
          f = JSON.parse(m.data);
        } catch {
          return;
        }
        const channel = f.channel || this.#channels[0];
        const op = f.op;
        delete f.op;
        if (op === 'ready') {
          heartbeat = f.heartbeat || heartbeat;
          window = f.window || window;
          this.#learn(f.heads || { [channel]: f.head });
          live = true;
          opened();
        } else if (op === 'event') {
          this.#event({ ...f, channel });
          unconfirmed += m.data.length;
          confirm.add(channel);
          // Flow control: confirm what was read every quarter window.
          if (unconfirmed >= window / 4) {
            for (const c of confirm) ws.send(JSON.stringify(one ? { op: 'cursor', id: this.#pos.get(c) } : { op: 'cursor', channel: c, id: this.#pos.get(c) }));
            confirm.clear();
            unconfirmed = 0;
          }
        } else if (op === 'gap') this.#gap({ ...f, channel });
        else if (op === 'presence') this.#presence({ ...f, channel });
        else if (op === 'error' && (f.status === 401 || f.status === 403)) end({ opened: true, error: new HubError(f.status, f.code, f.detail) });
      };
      const close = async (c: Json) => {
        if (dead) return;
        // 4101: the token expired; others after `ready`: reconnect from the cursor.
        if (c.code === 4101) end({ opened: true, refresh: true });
        else if (live) end({ opened: true });
        else end({ error: await this.#probe(path) });
      };
      (async () => {
        if (viaFetch) {
          const res: Json = await this.#hub.request('GET', path, undefined, { upgrade: 'websocket' });
          if (!res.webSocket) return end({ error: res.status >= 400 ? await problem(res) : unusable('ws_refused', 'the WebSocket upgrade failed') });
          ws = res.webSocket;
          ws.accept();
        } else ws = new WS(this.#hub.url.replace(/^http/, 'ws') + path);
        ws.addEventListener('message', message);
        ws.addEventListener('close', close);
        ws.addEventListener('error', () => {});
      })().catch((e) => end({ error: e }));
      return () => {
        dead = true;
        clearInterval(timer);
        try {
          ws?.close(1000);
        } catch {}
      };
    }, until);
  }

  /**
   * Why a WebSocket did not open: the same URL as a plain GET answers 401, 403 or 400 as the
   * upgrade did (the hub checks them before the upgrade), or 426 when only the upgrade failed
   * on the way (the transport cannot work here); no answer: the hub is down.
   */
  async #probe(path: string): Promise<Error> {
    let res: Response;
    try {
      res = await (this.#opts.fetch || fetch)(this.#hub.url + path);
    } catch (e) {
      return e as Error;
    }
    if (res.status >= 400 && res.status !== 426) return problem(res);
    await res.body?.cancel();
    return unusable('ws_refused', 'the WebSocket upgrade failed on the way');
  }

  async #sse(): Promise<Conn> {
    const ctrl = new AbortController();
    await this.#hub.token();
    return this.#start((end, opened) => {
      let timer: any;
      let live = false;
      const silent = () => {
        clearTimeout(timer);
        timer = setTimeout(() => end({ error: unusable('stalled', 'the stream went silent') }), (this.#opts.heartbeat || 15) * 3000);
      };
      (async () => {
        const res = await this.#hub.request('GET', '/sse?' + this.#query(), undefined, { accept: 'text/event-stream' }, ctrl.signal);
        if (!res.ok) return end({ error: await problem(res) });
        // A runtime whose fetch cannot stream a response: `auto` goes on to polling.
        if (!res.body || typeof TextDecoderStream === 'undefined') return end({ error: unusable('no_streaming', 'fetch cannot stream here') });
        silent();
        const reader = res.body.pipeThrough(new TextDecoderStream()).getReader();
        let buf = '';
        let block: Record<string, string> = {};
        for (;;) {
          const { value, done } = await reader.read();
          // The hub ends streams (their lifetime, a token's expiry, a restart): resume.
          if (done) return end({ error: live ? undefined : unusable('ended', 'the stream ended before it started') });
          silent();
          buf += value;
          let i;
          while ((i = buf.search(/\r\n|\r|\n/)) >= 0) {
            const line = buf.slice(0, i);
            buf = buf.slice(i + (buf.startsWith('\r\n', i) ? 2 : 1));
            if (line) {
              const j = line.indexOf(':');
              const field = j < 0 ? line : line.slice(0, j);
              const v = j < 0 ? '' : line.slice(j + (line[j + 1] === ' ' ? 2 : 1));
              if (j) block[field] = field === 'data' && 'data' in block ? block.data + '\n' + v : v;
              continue;
            }
            const b = block;
            block = {};
            if (!('data' in b)) {
              // The stream's start: a block with only the starting cursor.
              if ('id' in b) this.#learn(parseCursor(b.id)), opened(), (live = true);
              continue;
            }
            const d = JSON.parse(b.data);
            if (b.event === 'gap') this.#gap(d);
            else if (b.event === 'presence') this.#presence(d);
            else this.#event(d);
          }
        }
      })().catch((e) => end({ error: e }));
      return () => {
        clearTimeout(timer);
        ctrl.abort();
      };
    }, this.#hub.tokenRefreshAt);
  }

  async #poll(): Promise<Conn> {
    return this.#start((end, opened) => {
      let stopped = false;
      (async () => {
        let etag = '';
        let url = '';
        while (!stopped) {
          const next = '/poll?' + query(this.#channels, this.#pos, this.#o);
          if (next !== url) (url = next), (etag = '');
          // A poll the network holds for too long is given up and the next one tried.
          const res = await this.#hub.request('GET', url, undefined, etag ? { 'if-none-match': etag } : {}, AbortSignal.timeout(30000));
          if (stopped) return;
          if (res.status === 304) await res.arrayBuffer(), opened();
          else if (!res.ok) return end({ error: await problem(res) });
          else {
            etag = res.headers.get('etag') || '';
            const page = await res.json();
            if (stopped) return;
            opened();
            for (const g of page.gaps || []) this.#gap(g);
            for (const e of page.events) this.#event(e);
            this.#learn(parseCursor(page.next), true);
            if (page.more) continue;
          }
          await sleep(this.#opts.pollInterval ?? 1000);
        }
      })().catch((e) => end({ error: e }));
      return () => {
        stopped = true;
      };
    });
  }
}
