// The runtime under the browser tests: one hub started, restarted and stopped by the same
// launcher as the Rust tests and the bench (`tests/launch`, its `edgehub-launch` binary, which
// `make test` builds): a real `wrangler dev` (workerd) with D1 and SQLite-backed Durable Objects
// persisted to a fresh directory under `target/browser-tmp/`. `restart()` keeps the port, so a
// page left open on the hub's origin can reconnect by itself. Every wait here is bounded.

import { spawn } from 'node:child_process';
import { createHmac } from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import readline from 'node:readline';
import { fileURLToPath } from 'node:url';

export const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');
/** The HS256 secret the hubs under test are started with (`--var AUTH_SECRET=…`). */
export const SECRET = 'edgehub-browser-secret-not-for-production';
/** `PUBLIC_CHANNELS` of the hubs under test. */
export const PUBLIC_CHANNELS = 'public:*';
/** The Mercure face: Mercure's own development values, as `.dev.vars.example` has them. */
export const MERCURE = {
  MERCURE_PUBLISHER_JWT_KEY: '!ChangeThisMercureHubJWTSecretKey!',
  MERCURE_SUBSCRIBER_JWT_KEY: '!ChangeThisMercureHubJWTSecretKey!',
  MERCURE_ANONYMOUS: '1',
  MERCURE_AUDIENCE: 'https://localhost/.well-known/mercure',
  MERCURE_ISSUER: 'https://localhost',
};

const LAUNCHER = path.join(ROOT, 'target/debug/edgehub-launch');
const BUNDLE = path.join(ROOT, 'build/worker/shim.mjs');
/** A start takes wrangler's start-up, migrations and readiness; a stop its grace periods. */
const ANSWER_TIMEOUT_MS = 240_000;
const EXIT_TIMEOUT_MS = 60_000;
const LOG_TAIL_LINES = 60;

/** A running (or stopped) hub, held by an `edgehub-launch` process on our pipes. */
export class Hub {
  /** Makes a fresh persist dir, applies the D1 migrations to it and starts the hub. */
  static async start({ vars = {} } = {}) {
    checkBundle();
    const all = { AUTH_SECRET: SECRET, PUBLIC_CHANNELS, EDGEHUB_DEV: '1', HEARTBEAT_SECONDS: '2', ...MERCURE, ...vars };
    const args = ['--under', 'browser-tmp', '--label', 'hub'];
    for (const [k, v] of Object.entries(all)) args.push('--var', `${k}=${v}`);
    if (!fs.existsSync(LAUNCHER)) throw new Error(`no launcher at ${LAUNCHER}: run \`make test\` (it builds it)`);
    const child = spawn(LAUNCHER, args, { cwd: ROOT, stdio: ['pipe', 'pipe', 'inherit'] });
    const hub = new Hub(child);
    hub.#took(await hub.#answer());
    return hub;
  }

  constructor(child) {
    this.child = child;
    this.exited = new Promise((resolve) => child.on('exit', resolve));
    child.on('error', () => {});
    child.stdin.on('error', () => {});
    this.answers = readline.createInterface({ input: child.stdout })[Symbol.asyncIterator]();
    this.port = 0;
    this.dir = '';
    this.log = '';
  }

  /** `http://127.0.0.1:<port>`, no trailing slash. */
  get base() {
    return `http://127.0.0.1:${this.port}`;
  }

  /** Stops the hub and starts it again on the same port and persist dir. */
  async restart() {
    await this.stop();
    await this.start();
  }

  /** Starts a stopped hub again, on the same port (once that port is free) and persist dir. */
  async start() {
    this.#took(await this.#ask('start'));
  }

  /** SIGTERM to the hub's whole process group, then SIGKILL to what is left after a grace. */
  async stop() {
    await this.#ask('stop');
  }

  /** Stops the hub and deletes its persist dir, unless EDGEHUB_BROWSER_KEEP is set or `keep`. */
  async cleanup({ keep = false } = {}) {
    if (keep || process.env.EDGEHUB_BROWSER_KEEP) await this.#ask('keep');
    this.child.stdin.end();
    const timeout = new Promise((resolve) => setTimeout(resolve, EXIT_TIMEOUT_MS).unref());
    await Promise.race([this.exited, timeout]);
  }

  /** The last lines the hub wrote, for failure messages. */
  logTail() {
    try {
      return fs.readFileSync(this.log, 'utf8').split('\n').slice(-LOG_TAIL_LINES).join('\n');
    } catch (e) {
      return `(no log at ${this.log}: ${e.message})`;
    }
  }

  #took(answer) {
    this.port = answer.port;
    this.dir = answer.dir;
    this.log = answer.log;
  }

  async #ask(command) {
    this.child.stdin.write(`${command}\n`);
    return this.#answer();
  }

  /** The launcher's next answer line; its `error` becomes ours. */
  async #answer() {
    let timer;
    const timeout = new Promise((_, reject) => {
      timer = setTimeout(() => reject(new Error(`no answer from the launcher in ${ANSWER_TIMEOUT_MS} ms`)), ANSWER_TIMEOUT_MS);
    });
    try {
      const next = await Promise.race([this.answers.next(), timeout]);
      if (next.done) throw new Error('the launcher ended');
      const answer = JSON.parse(next.value);
      if (answer.error) throw new Error(`hub: ${answer.error}\n--- log tail ---\n${this.logTail()}`);
      return answer;
    } finally {
      clearTimeout(timer);
    }
  }
}

/** The Worker bundle must exist and be newer than the page it embeds. */
function checkBundle() {
  const page = path.join(ROOT, 'assets/demo.html');
  if (!fs.existsSync(BUNDLE)) throw new Error(`no Worker bundle at ${BUNDLE}: run \`make -s build\` first`);
  if (fs.statSync(BUNDLE).mtimeMs < fs.statSync(page).mtimeMs) {
    throw new Error('assets/demo.html is newer than the Worker bundle: run `make -s build` first');
  }
}

const b64url = (value) => Buffer.from(typeof value === 'string' ? value : JSON.stringify(value)).toString('base64url');

/**
 * An HS256 JWT signed with `SECRET`: rights `{publish, subscribe}` (pattern lists), living
 * `ttl` seconds from `iat` (default now). A negative `ttl` or an old `iat` makes an expired token.
 */
export function mint({ publish = [], subscribe = [], ttl = 300, iat = Math.floor(Date.now() / 1000), sub } = {}) {
  const claims = { exp: iat + ttl, iat, edgehub: { publish, subscribe } };
  if (sub) claims.sub = sub;
  const signed = `${b64url({ alg: 'HS256', typ: 'JWT' })}.${b64url(claims)}`;
  return `${signed}.${createHmac('sha256', SECRET).update(signed).digest('base64url')}`;
}

/** Publishes one event over HTTP with a bearer token; returns its id. */
export async function publish(base, channel, data, { type, token } = {}) {
  token ??= mint({ publish: [channel], ttl: 60 });
  const res = await fetch(`${base}/channels/${encodeURIComponent(channel)}/events`, {
    method: 'POST',
    headers: { authorization: `Bearer ${token}`, 'content-type': 'application/json' },
    body: JSON.stringify(type ? { type, data } : { data }),
    signal: AbortSignal.timeout(15_000),
  });
  const body = await res.text();
  if (res.status !== 201) throw new Error(`publish to ${channel}: ${res.status} ${body}`);
  return JSON.parse(body).events[0].id;
}
