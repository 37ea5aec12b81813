#!/usr/bin/env node
// Runs the hub locally WITHOUT wrangler dev's proxy: one workerd process (through Miniflare, the
// exact version wrangler 4.86.0 pins) serving the Worker straight on the chosen loopback port.
// Prototype for issue 18 ("idle subscribers by the thousand"): under `wrangler dev` every client
// connection passes a second workerd (wrangler's ProxyWorker) that holds ~2 fds per SSE stream
// and ~6 per WebSocket; here a client costs the runtime the one socket it is connected on.
//
// The Worker is the same as `wrangler dev` runs, read from the same config by wrangler's own
// `unstable_getMiniflareWorkerOptions`: the Durable Object bindings (SQLite storage per the
// config's [[migrations]]), D1, [vars] with `.dev.vars` (beside the config) over them, the
// compatibility date and module rules. Persistence uses wrangler's layout, `<persist>/v3/{d1,do}`,
// so `wrangler d1 execute DB --local --persist-to <persist>` and a later `wrangler dev
// --persist-to <persist>` see the same data. D1 migrations are applied before the port opens,
// the way `wrangler d1 migrations apply DB --local` applies them (same `d1_migrations` table).
//
// Like wrangler dev, a request body the Worker left unread is drained after its answer (its
// ensure-req-body-drained middleware; without it workerd drops such a keep-alive connection and
// a pooled client's next request fails). What it does not do (wrangler dev does): bundle with
// esbuild (the Worker's modules run as they are), its JSON error middleware, `[build]`, watch and
// reload, the inspector proxy (--inspector-port opens workerd's own inspector), `request.cf`
// download (Miniflare's placeholder object is used).
//
// The open-file limit (issue 18). At its limit workerd exits (`accept: Too many open files` is
// fatal in kj, not configurable), dropping every connection. So by default the port is this
// process's: a plain TCP front (`listenFront`) relays each connection to workerd on a private
// loopback port, 2 fds per connection here and 1 in workerd, and caps them under the limit this
// process runs with (the soft "Max open files" of /proc/self/limits, which workerd inherits):
// streams (SSE, WebSocket, Mercure subscriptions) past the cap are answered 503, other requests
// (publish, poll, /healthz) have a reserve of their own beyond it, and past Node's own limit
// libuv accepts and closes what it cannot hold. Everyone connected stays served, and new
// connections are taken again as soon as others close: workerd never reaches its limit, so it
// is never restarted. Under the usual 20,000 that is 9,244 streams + 256 other connections.
// --max-connections N sets the stream cap by hand (reserve 256); --max-connections 0 or
// --no-front serves workerd straight on the port (1 fd per connection, about twice as many
// streams, and workerd exits at its limit). If workerd ever exits, this process exits 1, or
// with --restart (`make dev`) starts it again on the same persist dir (the state survives, the
// connections it held do not).
//
// Usage: node scripts/serve.mjs [--config wrangler.toml] [--ip 127.0.0.1] [--port 8787]
//          [--persist-to .wrangler/state] [--var NAME:VALUE]... [--inspector-port P]
//          [--log-level debug|info|log|warn|error|none] [--no-migrate] [--no-dev-vars]
//          [--max-connections auto|N|0] [--no-front] [--restart] [--no-drain]
// The flags `wrangler dev` takes for these (--ip --port --persist-to --var --inspector-port
// --log-level --config, and --show-interactive-dev-session, ignored) are accepted as they are.
// Prints `edgehub: ready on http://IP:PORT (...)` once it serves, with the front's caps and the
// open-file limit they come from; SIGTERM/SIGINT stop it (workerd included) and it exits 0.

import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import net from 'node:net';
import { createRequire } from 'node:module';
import path from 'node:path';

const require = createRequire(import.meta.url);
// Resolve Miniflare from wrangler's own location, so it is the version wrangler pins.
const wranglerMain = require.resolve('wrangler');
const wrangler = require(wranglerMain);
const { Miniflare, Log, LogLevel } = createRequire(wranglerMain)('miniflare');

const USAGE = 'usage: node scripts/serve.mjs [--config FILE] [--ip IP] [--port PORT] [--persist-to DIR] '
  + '[--var NAME:VALUE]... [--inspector-port PORT] [--log-level LEVEL] [--no-migrate] [--no-dev-vars] '
  + '[--max-connections auto|N|0] [--no-front] [--restart] [--no-drain]';

function parseArgs(argv) {
  const opts = {
    config: 'wrangler.toml',
    ip: '127.0.0.1',
    port: 8787,
    persistTo: '.wrangler/state',
    vars: [],
    inspectorPort: undefined,
    logLevel: 'log',
    migrate: true,
    devVars: true,
    maxConnections: 'auto',
    restart: false,
    drain: !process.env.WRANGLER_DISABLE_REQUEST_BODY_DRAINING,
  };
  for (let i = 0; i < argv.length; i++) {
    let [flag, inline] = argv[i].split(/=(.*)/s, 2);
    const value = () => {
      if (inline !== undefined) return inline;
      if (i + 1 >= argv.length) throw new Error(`${flag} needs a value`);
      return argv[++i];
    };
    switch (flag) {
      case '--config': case '-c': opts.config = value(); break;
      case '--ip': opts.ip = value(); break;
      case '--port': opts.port = Number(value()); break;
      case '--persist-to': case '--persist': opts.persistTo = value(); break;
      case '--inspector-port': opts.inspectorPort = Number(value()); break;
      case '--log-level': opts.logLevel = value(); break;
      case '--no-migrate': opts.migrate = false; break;
      case '--no-dev-vars': opts.devVars = false; break;
      case '--max-connections': {
        const v = value();
        opts.maxConnections = v === 'auto' ? v : Number(v);
        break;
      }
      case '--no-front': opts.maxConnections = 0; break;
      case '--restart': opts.restart = true; break;
      case '--no-drain': opts.drain = false; break;
      case '--var': {
        // wrangler dev's form is NAME:VALUE; NAME=VALUE is accepted too.
        const v = value();
        const m = v.match(/^([^:=]+)[:=](.*)$/s);
        if (!m) throw new Error(`--var ${v}: want NAME:VALUE`);
        opts.vars.push([m[1], m[2]]);
        break;
      }
      // Accepted and ignored, so a `wrangler dev` command line can be pointed here unchanged.
      case '--show-interactive-dev-session': if (inline === undefined && /^(true|false)$/.test(argv[i + 1] ?? '')) i++; break;
      case '--local': break;
      case '--help': case '-h': console.log(USAGE); process.exit(0); break;
      default: throw new Error(`unknown argument ${argv[i]}\n${USAGE}`);
    }
  }
  if (!Number.isInteger(opts.port) || opts.port < 0 || opts.port > 65535) throw new Error(`bad --port`);
  if (opts.inspectorPort !== undefined && !Number.isInteger(opts.inspectorPort)) throw new Error(`bad --inspector-port`);
  if (opts.maxConnections !== 'auto' && !(Number.isInteger(opts.maxConnections) && opts.maxConnections >= 0)) {
    throw new Error(`bad --max-connections: want auto, 0 (no front) or a count`);
  }
  return opts;
}

const LEVELS = { none: LogLevel.NONE, error: LogLevel.ERROR, warn: LogLevel.WARN, info: LogLevel.INFO, log: LogLevel.INFO, debug: LogLevel.DEBUG };
const RANK = { none: 0, error: 1, warn: 2, info: 3, log: 3, debug: 5 };

/** `wrangler d1 migrations apply <binding> --local`, for every D1 binding with migrations. */
async function applyMigrations(mf, config, log) {
  for (const db of config.d1_databases ?? []) {
    const dir = path.resolve(path.dirname(config.configPath), db.migrations_dir ?? 'migrations');
    if (!fs.existsSync(dir)) continue;
    const table = db.migrations_table ?? 'd1_migrations';
    const d1 = await mf.getD1Database(db.binding);
    const run = (sql) => d1.batch(wrangler.unstable_splitSqlQuery(sql).map((q) => d1.prepare(q)));
    await run(`CREATE TABLE IF NOT EXISTS ${table}(
		id         INTEGER PRIMARY KEY AUTOINCREMENT,
		name       TEXT UNIQUE,
		applied_at TIMESTAMP DEFAULT CURRENT_TIMESTAMP NOT NULL
);`);
    const applied = new Set((await d1.prepare(`SELECT name FROM ${table} ORDER BY id`).all()).results.map((r) => r.name));
    const names = fs.readdirSync(dir).filter((n) => n.endsWith('.sql')).sort()
      .filter((n) => !applied.has(n))
      .sort((a, b) => parseInt(a.split('_')[0]) - parseInt(b.split('_')[0]));
    for (const name of names) {
      const sql = fs.readFileSync(path.join(dir, name), 'utf8') + `\nINSERT INTO ${table} (name) values ('${name}');\n`;
      await run(sql);
      log(`edgehub: applied D1 migration ${db.binding}/${name}`);
    }
  }
}

/** An entry module that re-exports `entry` with its fetch() draining unread request bodies. */
function drainingEntry(entry) {
  const from = JSON.stringify(`./${entry}`);
  return `import ENTRY from ${from};
export * from ${from};
async function drain(request) {
  try {
    if (request.body !== null && !request.bodyUsed) {
      const reader = request.body.getReader();
      while (!(await reader.read()).done) {}
    }
  } catch (e) {
    console.error("Failed to drain the unused request body.", e);
  }
}
let WRAPPED = ENTRY;
if (typeof ENTRY === "function" && typeof ENTRY.prototype?.fetch === "function") {
  WRAPPED = class extends ENTRY {
    async fetch(request) {
      try {
        return await super.fetch(request);
      } finally {
        await drain(request);
      }
    }
  };
} else if (ENTRY && typeof ENTRY === "object" && typeof ENTRY.fetch === "function") {
  WRAPPED = {
    ...ENTRY,
    async fetch(request, env, ctx) {
      try {
        return await ENTRY.fetch(request, env, ctx);
      } finally {
        await drain(request);
      }
    },
  };
}
export default WRAPPED;
`;
}

/** `type` of the package.json nearest above `file`'s folder. */
function packageType(file) {
  for (let dir = path.dirname(file); ; dir = path.dirname(dir)) {
    const pkg = path.join(dir, 'package.json');
    if (fs.existsSync(pkg)) {
      try {
        return JSON.parse(fs.readFileSync(pkg, 'utf8')).type;
      } catch {
        return undefined;
      }
    }
    if (path.dirname(dir) === dir) return undefined;
  }
}

/** The workerd child of this process, from /proc (Miniflare does not expose it). */
function workerdPid() {
  try {
    for (const task of fs.readdirSync(`/proc/${process.pid}/task`)) {
      const kids = fs.readFileSync(`/proc/${process.pid}/task/${task}/children`, 'utf8').trim().split(/\s+/).filter(Boolean);
      for (const kid of kids) {
        const comm = fs.readFileSync(`/proc/${kid}/comm`, 'utf8').trim();
        if (comm === 'workerd') return Number(kid);
      }
    }
  } catch {}
  return undefined;
}

/** Whether `pid` still runs: signal 0, which needs no fd (at the open-file limit a read of
 *  /proc would fail and look like a death). Node reaps its children, so no zombie lingers. */
function alive(pid) {
  try {
    process.kill(pid, 0);
    return true;
  } catch (e) {
    return e.code !== 'ESRCH';
  }
}

async function main() {
  const opts = parseArgs(process.argv.slice(2));
  const level = opts.logLevel in LEVELS ? opts.logLevel : 'log';
  const say = (msg) => { if (RANK[level] >= RANK.info) console.log(msg); };
  const configPath = path.resolve(opts.config);
  const config = wrangler.unstable_readConfig({ config: configPath });
  const persistRoot = path.join(path.resolve(opts.persistTo), 'v3');

  // The same worker options wrangler dev derives from the config (and .dev.vars beside it).
  const { workerOptions, main, externalWorkers } = wrangler.unstable_getMiniflareWorkerOptions(
    config, undefined, opts.devVars ? undefined : { envFiles: [] });
  if (!opts.devVars) {
    // envFiles: [] skips .env files but not .dev.vars: drop what .dev.vars added over [vars].
    for (const name of Object.keys(workerOptions.bindings ?? {})) {
      if (!(name in (config.vars ?? {}))) delete workerOptions.bindings[name];
      else workerOptions.bindings[name] = config.vars[name];
    }
  }
  for (const [name, value] of opts.vars) (workerOptions.bindings ??= {})[name] = value;
  if (!main || !fs.existsSync(main)) throw new Error(`the Worker's entry ${main} is missing: run \`make build\``);

  // The Worker's own module graph, unbundled (shim.mjs imports ../index.js, which imports the
  // wasm): rooted at the entry's grandparent so that `..` stays inside it.
  const modulesRoot = path.dirname(path.dirname(main));
  // `.js` files are ES modules where the nearest package.json says `"type": "module"` (as
  // esbuild reads them under wrangler dev; worker-build's build/package.json does).
  const esm = { type: 'ESModule', include: ['**/*.mjs'] };
  if (packageType(main) === 'module') esm.include.push('**/*.js');
  // The entry of a modules-format Worker is an ES module whatever its package says (wrangler's
  // esbuild reads it as one): the no-op Worker of the benchmark has no package.json.
  esm.include.push(path.relative(modulesRoot, main));
  const worker = {
    name: config.name,
    modules: true,
    scriptPath: main,
    modulesRoot,
    ...workerOptions,
    modulesRules: [esm, ...(workerOptions.modulesRules ?? [])],
  };
  if (opts.drain) {
    // The entry, wrapped as wrangler dev wraps it (its ensure-req-body-drained middleware): a
    // request body the Worker left unread is read to its end after the handler, so the client's
    // keep-alive connection stays usable. Without it workerd closes such a connection after the
    // answer, and a pooled client's next request on it fails with no answer.
    worker.script = drainingEntry(path.basename(main));
    worker.scriptPath = path.join(path.dirname(main), '__edgehub_serve_entry.mjs');
  }

  const shared = {
    host: opts.ip,
    port: opts.port,
    inspectorPort: opts.inspectorPort,
    inspectorHost: opts.inspectorPort === undefined ? undefined : opts.ip,
    defaultPersistRoot: persistRoot,
    cf: false, // no request.cf download; Miniflare's fallback object
    log: new Log(LEVELS[level], { prefix: 'edgehub' }),
    logRequests: false,
    liveReload: false,
    telemetry: { enabled: false },
    handleStructuredLogs: ({ level: l, message }) => {
      if (l === 'error' || l === 'warn') {
        if (RANK[level] >= RANK[l]) process.stderr.write(`${message}\n`);
      } else if (RANK[level] >= RANK.info) {
        process.stdout.write(`${message}\n`);
      }
    },
  };

  // 1. Migrations first, on a private port, so nothing is served before the schema is there
  //    (wrangler's migrations apply is a separate run too).
  if (opts.migrate && (config.d1_databases ?? []).length) {
    const pre = new Miniflare({ ...shared, port: 0, inspectorPort: undefined, workers: [worker, ...externalWorkers] });
    try {
      await pre.ready;
      await applyMigrations(pre, config, say);
    } finally {
      await pre.dispose();
    }
  }

  // 2. The hub itself: workerd on a private port behind this process's own TCP front (see
  //    `listenFront`), or, with --max-connections 0, on the chosen port.
  const limit = openFileLimit();
  const caps = frontCaps(opts.maxConnections, limit);
  const front = caps ? await listenFront(opts, caps) : undefined;
  const hubOptions = { ...shared, workers: [worker, ...externalWorkers] };
  if (front) Object.assign(hubOptions, { host: '127.0.0.1', port: 0 });
  let mf = new Miniflare(hubOptions);
  let stopping = false;
  const stop = async (signal) => {
    if (stopping) process.exit(1);
    stopping = true;
    say(`edgehub: ${signal}, stopping`);
    try {
      front?.server.close();
      front?.destroyAll();
      await mf.dispose();
    } finally {
      process.exit(0);
    }
  };
  // Miniflare's own exit hook would exit 143/130 at once: ours disposes (workerd included) and
  // exits 0. Its `exit` hook stays, the last resort that kills workerd whatever happens.
  for (const sig of ['SIGTERM', 'SIGINT', 'SIGHUP']) {
    process.removeAllListeners(sig);
    process.on(sig, () => void stop(sig));
  }

  let url = await mf.ready;
  let pid = workerdPid();
  if (front) front.upstream = { host: url.hostname, port: Number(url.port) };
  const origin = front ? `http://${opts.ip}:${front.server.address().port}` : url.origin;
  console.log(`edgehub: ready on ${origin} (workerd pid ${pid ?? '?'}, node pid ${process.pid}, persist ${path.dirname(persistRoot)}`
    + `, ${front ? `front: at most ${caps.streams} streams + ${caps.reserve} other connections, workerd at ${url.host}` : 'no front'}`
    + `, open-file limit ${limit ?? '?'}`
    + `${opts.inspectorPort !== undefined ? `, inspector ${opts.ip}:${opts.inspectorPort}` : ''})`);

  // Miniflare does not notice workerd dying on its own (it exits at its open-file limit:
  // `accept: Too many open files` is fatal to it). Exit so a supervisor sees it, or, with
  // --restart, start it again on the same port and persist dir: every connection it held is
  // gone (clients reconnect and resume from their cursor), the stored state is not.
  let restarting = false;
  setInterval(async () => {
    if (stopping || restarting || !pid || alive(pid)) return;
    console.error(`edgehub: workerd (pid ${pid}) exited unexpectedly`);
    if (!opts.restart) process.exit(1);
    restarting = true;
    try {
      await mf.dispose();
      mf = new Miniflare(front ? hubOptions : { ...hubOptions, port: url.port ? Number(url.port) : opts.port });
      url = await mf.ready;
      pid = workerdPid();
      if (front) front.upstream = { host: url.hostname, port: Number(url.port) };
      console.error(`edgehub: workerd restarted (pid ${pid ?? '?'}) on ${url.origin}`);
    } catch (e) {
      console.error(`edgehub: restarting workerd failed: ${e?.stack ?? e}`);
      process.exit(1);
    } finally {
      restarting = false;
    }
  }, 1000);
}

/** The soft open-file limit of this process, which workerd inherits: /proc/self/limits, else
 *  `ulimit -n` (a child shell has ours). Infinity when unlimited, undefined when unknown. */
function openFileLimit() {
  let soft;
  try {
    const line = fs.readFileSync('/proc/self/limits', 'utf8').split('\n').find((l) => l.startsWith('Max open files'));
    soft = line?.slice('Max open files'.length).trim().split(/\s+/)[0];
  } catch {
    try {
      soft = execFileSync('sh', ['-c', 'ulimit -n'], { encoding: 'utf8' }).trim();
    } catch {}
  }
  if (soft === 'unlimited') return Infinity;
  const n = Number(soft);
  return Number.isInteger(n) && n > 0 ? n : undefined;
}

/**
 * The front's caps: `streams` (GET /sse…, /ws…, /.well-known/mercure, any Upgrade) and
 * `reserve`, the other connections beyond them (publish, poll, /healthz), so that a hub full of
 * streams still takes publishes. `auto` derives them from the open-file limit: the front holds 2
 * fds per connection (the client's and workerd's) and keeps `spare` for its own (about 25) and
 * for connections being refused; workerd holds 1 per connection plus its own (storage, about 30
 * at start), so it stays about half a limit below its own and never reaches it. undefined: no
 * front.
 */
const RESERVE = 256;
const UNKNOWN_LIMIT = 1024; // the usual default soft limit, when /proc and sh cannot say
const UNLIMITED = 1 << 20; // Linux's default nr_open, the most a process may open
function frontCaps(max, limit) {
  if (max === 0) return undefined;
  const files = limit === Infinity ? UNLIMITED : (limit ?? UNKNOWN_LIMIT);
  if (max !== 'auto') {
    const need = 2 * (max + RESERVE) + 64;
    if (need > files) {
      console.error(`edgehub: warning: --max-connections ${max} wants about ${need} open files and the limit is ${files}:`
        + ' connections past it are closed unanswered, not answered 503');
    }
    return { streams: max, reserve: RESERVE };
  }
  const spare = Math.min(1024, Math.max(64, Math.floor(files / 20)));
  const connections = Math.floor((files - spare) / 2);
  const reserve = Math.min(RESERVE, Math.floor(connections / 4));
  if (connections - reserve < 1) throw new Error(`an open-file limit of ${files} leaves no room for a connection`);
  return { streams: connections - reserve, reserve };
}

/**
 * The connection front: a plain TCP relay in this (Node) process, in place of wrangler's proxy.
 * It relays bytes (half-closes included) and parses nothing past the first request's head, so
 * it costs 2 fds per connection here and 1 in workerd, for HTTP, SSE and WebSocket alike
 * (wrangler's proxy: 2 per SSE, 6 per WS). A connection whose first request is a stream counts
 * against `caps.streams`; past it, it is answered 503 and closed; so is any connection past
 * `caps.streams + caps.reserve`. Node survives its own open-file limit (libuv accepts and
 * closes what it cannot hold, and keeps listening; a connect to workerd that finds no fd left
 * becomes a 503), so over-limit clients are refused while everyone connected stays served, and
 * workerd, behind it, holds at most streams + reserve client connections. A slot is free again
 * once both sockets of its connection are closed.
 */
const STREAM_LINE = /^GET \/(sse|ws)(\/|\?|\s)|^GET \/\.well-known\/mercure/;
/** A connection that sends nothing for this long is closed (kj's own header timeout is 15 s). */
const FIRST_BYTES_TIMEOUT = 30_000;
/** Once one side has closed, how long the other may take to take what is left for it. */
const LINGER = 30_000;
/** How often a refusal is logged at most. */
const REFUSAL_LOG_EVERY = 10_000;

async function listenFront(opts, caps) {
  const live = new Set();
  let streams = 0;
  const front = { upstream: undefined, live, destroyAll: () => { for (const s of live) s.destroy(); } };
  const BODY = '{"type":"about:blank","title":"Too many connections to the local hub","status":503}';
  const BUSY = 'HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/problem+json\r\n'
    + `Retry-After: 5\r\nConnection: close\r\nContent-Length: ${BODY.length}\r\n\r\n${BODY}`;
  let refused = 0;
  let lastRefusalLog = 0;
  const refuse = (client, why) => {
    refused++;
    if (why && Date.now() - lastRefusalLog > REFUSAL_LOG_EVERY) {
      lastRefusalLog = Date.now();
      console.error(`edgehub: front: refusing connections (503): ${why}; ${refused} refused so far, `
        + `${streams} streams and ${live.size} connections held`);
    }
    client.end(BUSY);
    client.resume();
    setTimeout(() => client.destroy(), 1000).unref();
  };
  const server = net.createServer({ noDelay: true, pauseOnConnect: true, allowHalfOpen: true }, (client) => {
    client.on('error', () => {});
    if (!front.upstream) return refuse(client); // workerd is not up yet
    if (live.size >= caps.streams + caps.reserve) return refuse(client, `${live.size} connections held`);
    live.add(client);
    let stream = false;
    let up;
    const release = () => {
      if (!client.destroyed || (up && !up.destroyed)) return;
      if (live.delete(client) && stream) streams--;
    };
    client.on('close', (hadError) => {
      // workerd sees the client go as it would directly: at once (an SSE stream ends, its
      // subscriber leaves), after what the client sent if some is still on its way.
      if (up && (hadError || !up.writableLength)) up.destroy();
      else if (up) finish(up);
      release();
    });
    client.setTimeout(FIRST_BYTES_TIMEOUT, () => client.destroy());
    // Gone before it asked anything (and was not answered a 503 it should still get).
    client.once('end', () => { if (!up && !client.writableEnded) client.destroy(); });
    client.once('data', (first) => {
      client.setTimeout(0);
      client.pause();
      const head = first.subarray(0, 2048).toString('latin1');
      stream = STREAM_LINE.test(head) || /\r\nupgrade:/i.test(head);
      if (stream && streams >= caps.streams) {
        stream = false;
        live.delete(client);
        return refuse(client, `${streams} streams held`);
      }
      if (stream) streams++;
      up = net.connect({ ...front.upstream, noDelay: true, allowHalfOpen: true });
      let connected = false;
      up.on('error', () => {
        if (!connected) {
          // workerd unreachable (restarting), or no fd left here for it: a 503, not a reset.
          if (live.delete(client) && stream) streams--;
          stream = false;
          up.destroy();
          return refuse(client, 'workerd unreachable');
        }
        // workerd reset the connection: the client gets what workerd answered, then the end;
        // a reset if nothing came.
        if (up.bytesRead) finish(client);
        else client.resetAndDestroy();
      });
      // workerd is done with the connection: the client has LINGER to take the rest and go.
      up.once('end', () => setTimeout(() => client.destroy(), LINGER).unref());
      up.on('close', () => {
        finish(client);
        release();
      });
      up.on('connect', () => {
        connected = true;
        up.pipe(client); // workerd's end becomes the client's, after what workerd sent
        toWorkerd(client, up, first, stream ? undefined : firstRequestEnd(first));
      });
    });
    client.resume();
  });
  await new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen({ host: opts.ip, port: opts.port, backlog: 4096 }, () => { server.off('error', reject); resolve(); });
  });
  // EMFILE in accept does not come here: libuv accepts and closes the connections it cannot
  // hold (its reserved-fd trick) and keeps listening. Anything else that does is logged.
  let lastError = 0;
  server.on('error', (e) => {
    if (Date.now() - lastError > REFUSAL_LOG_EVERY) console.error(`edgehub: front: ${e.code ?? e.message}`);
    lastError = Date.now();
  });
  front.server = server;
  front.counts = () => ({ connections: live.size, streams });
  return front;
}

/**
 * The other side of `socket` is gone: what it sends now goes nowhere (it is read and dropped, so
 * that its end is seen), and it is ended after what is queued on it, or destroyed if that takes
 * longer than LINGER.
 */
function finish(socket) {
  if (socket.destroyed) return;
  socket.unpipe();
  socket.removeAllListeners('data');
  socket.resume();
  socket.end();
  setTimeout(() => socket.destroy(), LINGER).unref();
}

/**
 * Where the connection's first request ends in its bytes (head, then the body its
 * Content-Length announces, or none), if `first` holds the whole head and nothing else frames
 * the body; undefined otherwise.
 */
function firstRequestEnd(first) {
  const end = first.indexOf('\r\n\r\n');
  if (end < 0) return undefined;
  const head = first.subarray(0, end).toString('latin1');
  if (/\r\n(transfer-encoding|upgrade):/i.test(head)) return undefined;
  const lengths = [...head.matchAll(/\r\ncontent-length:[ \t]*(\S*)[ \t]*(?=\r\n|$)/gi)].map((m) => m[1]);
  if (lengths.length > 1 || (lengths.length && !/^\d{1,15}$/.test(lengths[0]))) return undefined;
  return end + 4 + Number(lengths[0] ?? 0);
}

/**
 * Relays the client's bytes to workerd. Those past the connection's first request (from `end`)
 * wait until workerd has begun to answer it, and hold the client meanwhile. workerd reads bytes
 * past a request (garbage after a body, say) as the next request, answers that and closes with
 * the rest unread, which resets the connection; and once a write here meets that reset, Node
 * has lost the socket and with it the answer to the first request still unread in it, which the
 * client, connected directly, would have read. With `end` undefined, a plain pipe.
 */
function toWorkerd(client, up, first, end) {
  if (end === undefined) {
    up.write(first);
    client.pipe(up);
    return;
  }
  let sent = 0;
  let answered = false;
  let ended = false;
  let draining = false;
  const held = [];
  const take = (chunk) => {
    const part = chunk.subarray(0, Math.max(0, end - sent));
    sent += part.length;
    if (part.length && !up.write(part)) {
      draining = true;
      client.pause();
      up.once('drain', () => {
        draining = false;
        if (!answered && !held.length) client.resume();
      });
    }
    if (chunk.length > part.length) {
      held.push(chunk.subarray(part.length));
      client.pause();
    }
  };
  const onEnd = () => {
    ended = true;
    if (!held.length) up.end();
  };
  client.on('data', take);
  client.on('end', onEnd);
  up.once('data', () => {
    answered = true;
    client.off('data', take);
    client.off('end', onEnd);
    for (const chunk of held) up.write(chunk);
    if (!ended) client.pipe(up);
    else if (held.length) up.end();
  });
  take(first);
  if (!held.length && !draining) client.resume();
}

main().catch((e) => {
  console.error(`edgehub: ${e?.stack ?? e}`);
  process.exit(1);
});
