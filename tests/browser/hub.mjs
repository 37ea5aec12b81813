// The runtime under the browser tests: a real `wrangler dev` (workerd) with D1 and SQLite-backed
// Durable Objects persisted to a fresh directory under `target/browser-tmp/`, started the way the
// Rust tests and the bench start theirs (tests/launch). `restart()` keeps the port, so a page left
// open on the hub's origin can reconnect by itself. Every wait here is bounded.

import { spawn } from 'node:child_process';
import { createHmac } from 'node:crypto';
import fs from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

export const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');
/** The HS256 secret the hubs under test are started with (`--var AUTH_SECRET:…`). */
export const SECRET = 'edgehub-browser-secret-not-for-production';
/** `PUBLIC_CHANNELS` of the hubs under test. */
export const PUBLIC_CHANNELS = 'public:*';

const WRANGLER = path.join(ROOT, 'node_modules/.bin/wrangler');
const BUNDLE = path.join(ROOT, 'build/worker/shim.mjs');
const READY_TIMEOUT_MS = 180_000;
const READY_PAUSE_MS = 200;
const MIGRATE_TIMEOUT_MS = 120_000;
const STOP_GRACE_MS = 15_000;
const KILL_GRACE_MS = 10_000;
const PORT_FREE_TIMEOUT_MS = 30_000;
const LOG_TAIL_LINES = 60;
/** Lines after which `wrangler dev` stays up but will never serve: give up at once. */
const FATAL_LOG_LINES = [
  'The Workers runtime failed to start',
  'Custom build failed',
  'Command failed with exit code',
  'Address already in use',
];

/**
 * Runs the hub's command in the background and holds it on `read` from our stdin pipe: when the
 * test process dies, the pipe closes and the watchdog takes the whole process group down (TERM,
 * then KILL), so no workerd outlives the suite. `$EXIT_FILE` records an early exit.
 */
const WATCHDOG = `( "$@"; echo "$?" > "$EXIT_FILE" ) >>"$LOG_FILE" 2>&1 </dev/null &
read _line
trap '' TERM
kill -TERM 0
sleep 5
kill -KILL 0
`;

/** Environment for every wrangler run: never prompt, never phone home. */
const QUIET_ENV = {
  CI: 'true',
  WRANGLER_SEND_METRICS: 'false',
  CLOUDFLARE_CF_FETCH_ENABLED: 'false',
  WRANGLER_HIDE_BANNER: 'true',
  NO_COLOR: '1',
  FORCE_COLOR: '0',
};

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/** A running (or stopped) hub and the persist directory it owns. */
export class Hub {
  /** Makes a fresh persist dir, applies the D1 migrations to it and starts the hub. */
  static async start({ vars = {} } = {}) {
    checkBundle();
    const hub = new Hub(freshDir(), {
      AUTH_SECRET: SECRET,
      PUBLIC_CHANNELS,
      EDGEHUB_DEV: '1',
      HEARTBEAT_SECONDS: '2',
      ...vars,
    });
    await migrate(hub.dir);
    const [port] = await freePorts(1);
    hub.port = port;
    await hub.#launch();
    return hub;
  }

  constructor(dir, vars) {
    this.dir = dir;
    this.vars = vars;
    this.port = 0;
    this.running = null;
    this.log = path.join(dir, 'wrangler.log');
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
    if (this.running) return;
    await waitPortFree(this.port);
    await this.#launch();
  }

  /** SIGTERM to the whole process group, then SIGKILL to what is left after a grace period. */
  async stop() {
    const run = this.running;
    if (!run) return;
    this.running = null;
    signalGroup(run.pgid, 'SIGTERM');
    if (!(await waitGroupGone(run.pgid, STOP_GRACE_MS))) {
      signalGroup(run.pgid, 'SIGKILL');
      await waitGroupGone(run.pgid, KILL_GRACE_MS);
    }
    run.child.stdin?.destroy();
  }

  /** Stops the hub and deletes its persist dir, unless EDGEHUB_BROWSER_KEEP is set or `keep`. */
  async cleanup({ keep = false } = {}) {
    await this.stop();
    if (!keep && !process.env.EDGEHUB_BROWSER_KEEP) fs.rmSync(this.dir, { recursive: true, force: true });
  }

  /** The last lines the hub wrote, for failure messages. */
  logTail() {
    try {
      return fs.readFileSync(this.log, 'utf8').split('\n').slice(-LOG_TAIL_LINES).join('\n');
    } catch (e) {
      return `(no log at ${this.log}: ${e.message})`;
    }
  }

  async #launch() {
    const [inspector] = await freePorts(1, [this.port]);
    const logFrom = fileSize(this.log);
    const exitFile = path.join(this.dir, 'wrangler.exit');
    fs.rmSync(exitFile, { force: true });
    const config = configFor(this.dir);
    const args = [
      '-c', WATCHDOG, 'edgehub-browser-watchdog',
      WRANGLER, 'dev', '--ip', '127.0.0.1', '--config', config,
      '--port', String(this.port), '--inspector-port', String(inspector),
      '--persist-to', this.dir,
      '--log-level', 'warn', '--show-interactive-dev-session=false',
    ];
    for (const [k, v] of Object.entries(this.vars)) args.push('--var', `${k}:${v}`);
    const child = spawn('sh', args, {
      cwd: this.dir, // no .env of the working tree is read
      env: { ...process.env, ...QUIET_ENV, WRANGLER_LOG_PATH: this.dir, LOG_FILE: this.log, EXIT_FILE: exitFile },
      stdio: ['pipe', 'ignore', 'ignore'],
      detached: true, // its own process group, led by the watchdog
    });
    child.on('error', () => {});
    child.stdin.on('error', () => {});
    // Neither the child nor its pipe may keep the test process alive.
    child.unref();
    child.stdin.unref?.();
    this.running = { child, pgid: child.pid };
    try {
      await waitReady(this.base, exitFile, this.log, logFrom);
    } catch (e) {
      await this.stop();
      throw new Error(`hub at ${this.base} not ready: ${e.message}\n--- log tail ---\n${this.logTail()}`);
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

let seq = 0;
function freshDir() {
  const dir = path.join(ROOT, 'target/browser-tmp', `hub-${process.pid}-${Date.now()}-${seq++}`);
  fs.mkdirSync(dir, { recursive: true });
  return dir;
}

function fileSize(file) {
  try {
    return fs.statSync(file).size;
  } catch {
    return 0;
  }
}

/**
 * The hub's own copy of `wrangler.toml` in its persist dir: the same Worker, bindings and
 * settings, with absolute paths and without the `[build]` step, so a hub never rebuilds mid-run
 * and reads no `.dev.vars`: its settings are the `--var`s it is given.
 */
function configFor(dir) {
  const text = fs.readFileSync(path.join(ROOT, 'wrangler.toml'), 'utf8');
  const out = [];
  let inBuild = false;
  for (const line of text.split('\n')) {
    const trimmed = line.trim();
    if (trimmed.startsWith('[')) inBuild = trimmed === '[build]';
    if (inBuild) continue;
    if (trimmed.startsWith('main =')) out.push(`main = ${JSON.stringify(BUNDLE)}`);
    else if (trimmed.startsWith('migrations_dir =')) out.push(`migrations_dir = ${JSON.stringify(path.join(ROOT, 'migrations'))}`);
    else out.push(line);
  }
  const file = path.join(dir, 'wrangler.toml');
  fs.writeFileSync(file, out.join('\n'));
  return file;
}

/** `wrangler d1 migrations apply DB --local` into the hub's persist dir, bounded in time. */
function migrate(dir) {
  const config = configFor(dir);
  return new Promise((resolve, reject) => {
    const child = spawn(WRANGLER, ['d1', 'migrations', 'apply', 'DB', '--local', '--persist-to', dir, '--config', config], {
      cwd: dir,
      env: { ...process.env, ...QUIET_ENV, WRANGLER_LOG_PATH: dir },
      stdio: ['ignore', 'pipe', 'pipe'],
      detached: true,
    });
    let output = '';
    child.stdout.on('data', (d) => (output += d));
    child.stderr.on('data', (d) => (output += d));
    const timer = setTimeout(() => {
      signalGroup(child.pid, 'SIGKILL');
      reject(new Error(`d1 migrations apply took over ${MIGRATE_TIMEOUT_MS} ms:\n${output}`));
    }, MIGRATE_TIMEOUT_MS);
    child.on('error', (e) => {
      clearTimeout(timer);
      reject(new Error(`spawning wrangler d1 migrations apply: ${e.message}`));
    });
    child.on('close', (code) => {
      clearTimeout(timer);
      if (code === 0) resolve();
      else reject(new Error(`d1 migrations apply failed (exit ${code}):\n${output}`));
    });
  });
}

/** Polls `GET /healthz` until 200, the hub's process exits, or the time runs out. */
async function waitReady(base, exitFile, log, logFrom) {
  const started = Date.now();
  let last = 'no answer yet';
  while (Date.now() - started < READY_TIMEOUT_MS) {
    if (fs.existsSync(exitFile)) throw new Error(`wrangler dev exited with status ${fs.readFileSync(exitFile, 'utf8').trim()}`);
    const text = readFrom(log, logFrom);
    const fatal = FATAL_LOG_LINES.find((l) => text.includes(l));
    if (fatal) throw new Error(`wrangler dev logged ${JSON.stringify(fatal)}`);
    try {
      const res = await fetch(`${base}/healthz`, { signal: AbortSignal.timeout(5000) });
      if (res.status === 200) return;
      last = `GET /healthz answered ${res.status}`;
    } catch (e) {
      last = `GET /healthz: ${e.cause?.code || e.message}`;
    }
    await sleep(READY_PAUSE_MS);
  }
  throw new Error(`gave up after ${Date.now() - started} ms; last: ${last}`);
}

function readFrom(file, offset) {
  try {
    return fs.readFileSync(file).subarray(offset).toString('utf8');
  } catch {
    return '';
  }
}

/** `n` distinct free loopback ports, none of them in `avoid`: all listeners held until all are known. */
async function freePorts(n, avoid = []) {
  const servers = [];
  try {
    const ports = [];
    for (let tries = 0; ports.length < n && tries < 20; tries++) {
      const server = net.createServer();
      await new Promise((resolve, reject) => {
        server.once('error', reject);
        server.listen(0, '127.0.0.1', resolve);
      });
      servers.push(server);
      const { port } = server.address();
      if (!avoid.includes(port)) ports.push(port);
    }
    if (ports.length < n) throw new Error('could not find free loopback ports');
    return ports;
  } finally {
    await Promise.all(servers.map((s) => new Promise((r) => s.close(r))));
  }
}

/** True when 127.0.0.1:`port` can be bound right now. */
function portFree(port) {
  return new Promise((resolve) => {
    const server = net.createServer();
    server.once('error', () => resolve(false));
    server.listen(port, '127.0.0.1', () => server.close(() => resolve(true)));
  });
}

async function waitPortFree(port) {
  const started = Date.now();
  while (Date.now() - started < PORT_FREE_TIMEOUT_MS) {
    if (await portFree(port)) return;
    await sleep(200);
  }
  throw new Error(`port ${port} still taken after ${PORT_FREE_TIMEOUT_MS} ms`);
}

function signalGroup(pgid, signal) {
  try {
    process.kill(-pgid, signal);
  } catch {
    // Already gone.
  }
}

/** Waits until no live (non-zombie) process is left in the group. */
async function waitGroupGone(pgid, limitMs) {
  const started = Date.now();
  while (Date.now() - started <= limitMs) {
    if (!groupAlive(pgid)) return true;
    await sleep(100);
  }
  return !groupAlive(pgid);
}

/** Reads `/proc` so that zombies (orphans not reaped yet) do not count. */
function groupAlive(pgid) {
  let entries;
  try {
    entries = fs.readdirSync('/proc');
  } catch {
    try {
      process.kill(-pgid, 0);
      return true;
    } catch {
      return false;
    }
  }
  return entries.some((name) => {
    if (!/^\d+$/.test(name)) return false;
    let stat;
    try {
      stat = fs.readFileSync(`/proc/${name}/stat`, 'utf8');
    } catch {
      return false;
    }
    // Fields after the `(comm)`: state, ppid, pgrp, …
    const fields = stat.slice(stat.lastIndexOf(')') + 1).trim().split(/\s+/);
    return Number(fields[2]) === pgid && fields[0] !== 'Z' && fields[0] !== 'X';
  });
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
