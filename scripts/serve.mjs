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
// At its open-file limit workerd exits (`accept: Too many open files` is fatal in kj): this
// process then exits 1, or with --restart starts workerd again on the same port and persist dir
// (the state survives, the connections do not). --max-connections N puts a plain TCP front in
// this process instead (2 fds per connection here, 1 in workerd): streams past N are answered
// 503, Node survives its own open-file limit, and workerd never holds more than N + 256.
//
// Usage: node scripts/serve.mjs [--config wrangler.toml] [--ip 127.0.0.1] [--port 8787]
//          [--persist-to .wrangler/state] [--var NAME:VALUE]... [--inspector-port P]
//          [--log-level debug|info|log|warn|error|none] [--no-migrate] [--no-dev-vars]
//          [--max-connections N] [--restart] [--no-drain]
// The flags `wrangler dev` takes for these (--ip --port --persist-to --var --inspector-port
// --log-level --config, and --show-interactive-dev-session, ignored) are accepted as they are.
// Prints `edgehub: ready on http://IP:PORT (...)` once it serves; SIGTERM/SIGINT stop it
// (workerd included) and it exits 0.

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
  + '[--max-connections N] [--restart] [--no-drain]';

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
    maxConnections: 0,
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
      case '--max-connections': opts.maxConnections = Number(value()); break;
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

  // 2. The hub itself: workerd on the chosen port, or, with --max-connections, on a private
  //    port behind this process's own TCP front (see `front`).
  const front = opts.maxConnections ? await listenFront(opts) : undefined;
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
    + `${front ? `, front: at most ${opts.maxConnections} streams + ${RESERVE} other connections, workerd at ${url.host}` : ''}`
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

/**
 * --max-connections N: a plain TCP front in this (Node) process, in place of wrangler's proxy.
 * It relays bytes and nothing else, so it costs 2 fds per connection here (client + workerd)
 * and 1 in workerd, for HTTP, SSE and WebSocket alike (wrangler's proxy: 2 per SSE, 6 per WS).
 * A connection whose first request is a stream (GET /sse…, /ws…, /.well-known/mercure, or any
 * Upgrade) counts against N; past N it is answered 503 and closed. Other connections (publish,
 * poll, /healthz) may use RESERVE more, so a full hub still takes publishes. Node survives its
 * own open-file limit (libuv drops what it cannot accept and keeps listening; a failed connect
 * to workerd becomes a 503), so over-limit clients are refused while everyone connected stays
 * served, and workerd, behind it, holds at most N + RESERVE client connections.
 */
const RESERVE = 256;
const STREAM_LINE = /^GET \/(sse|ws)(\/|\?|\s)|^GET \/\.well-known\/mercure/;

async function listenFront(opts) {
  const live = new Set();
  let streams = 0;
  const front = { upstream: undefined, live, destroyAll: () => { for (const s of live) s.destroy(); } };
  const BODY = '{"type":"about:blank","title":"Too many connections to the local hub","status":503}';
  const BUSY = 'HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/problem+json\r\n'
    + `Retry-After: 5\r\nConnection: close\r\nContent-Length: ${BODY.length}\r\n\r\n${BODY}`;
  const refuse = (client) => {
    client.end(BUSY);
    client.resume();
    setTimeout(() => client.destroy(), 1000).unref();
  };
  const server = net.createServer({ noDelay: true, pauseOnConnect: true }, (client) => {
    client.on('error', () => {});
    if (live.size >= opts.maxConnections + RESERVE || !front.upstream) return refuse(client);
    live.add(client);
    let stream = false;
    let up;
    const done = () => {
      if (!live.delete(client)) return;
      if (stream) streams--;
      client.destroy();
      up?.destroy();
    };
    client.on('close', done);
    client.once('data', (first) => {
      client.pause();
      const head = first.subarray(0, 2048).toString('latin1');
      stream = STREAM_LINE.test(head) || /\r\nupgrade:/i.test(head);
      if (stream && streams >= opts.maxConnections) {
        stream = false;
        live.delete(client);
        return refuse(client);
      }
      if (stream) streams++;
      up = net.connect({ ...front.upstream, noDelay: true });
      let connected = false;
      up.on('error', () => {
        // workerd unreachable (restarting), or no fd left here for it: a 503, not a reset.
        // Once connected, an error (workerd resetting a connection it will not read on) ends
        // the client's side after what workerd answered, or resets it if nothing came.
        if (connected) {
          if (live.delete(client) && stream) streams--;
          if (!up.bytesRead) return client.resetAndDestroy();
          client.end();
          client.resume();
          setTimeout(() => client.destroy(), 1000).unref();
          return;
        }
        if (stream) streams--;
        stream = false;
        live.delete(client);
        up.destroy();
        refuse(client);
      });
      up.on('close', done);
      up.on('connect', () => {
        connected = true;
        up.write(first);
        client.pipe(up);
        up.pipe(client);
        client.resume();
      });
    });
    client.resume();
  });
  // EMFILE in accept reaches us as an 'error' on the server; libuv has already dropped the
  // connection it could not take, and the server keeps listening.
  let lastError = 0;
  server.on('error', (e) => {
    if (Date.now() - lastError > 5000) console.error(`edgehub: front: ${e.code ?? e.message} (refusing connections while it lasts)`);
    lastError = Date.now();
  });
  await new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen({ host: opts.ip, port: opts.port, backlog: 4096 }, () => { server.off('error', reject); resolve(); });
  });
  front.server = server;
  front.counts = () => ({ connections: live.size, streams });
  return front;
}

main().catch((e) => {
  console.error(`edgehub: ${e?.stack ?? e}`);
  process.exit(1);
});
