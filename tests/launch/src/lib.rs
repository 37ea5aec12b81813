//! Starts and stops a local runtime for the end-to-end tests and the benchmark: workerd (with D1
//! and SQLite-backed Durable Objects) through `scripts/serve.mjs`, as `make dev` runs it, or
//! `wrangler dev` with `EDGEHUB_RUNTIME=wrangler` (`server`), on 127.0.0.1, persisting to a fresh
//! directory under `target/`. The Worker runs from a copy of its wrangler config without `[build]`
//! and with absolute paths, so it runs the bundle `make build` made and never rebuilds or reloads
//! mid-run, and no `.dev.vars` is read: its settings are the config's `[vars]` and the `--var`s
//! given here. Everything it starts is one process group, held by a watchdog on our stdin pipe,
//! so nothing outlives the caller. Every wait is bounded in tries and in time. `serve.mjs` runs
//! as `make dev` runs it, its connection front included; `Options` (or `EDGEHUB_SERVE_ARGS`, for
//! a run by hand) add flags to it, and `fd_limit` lowers the open-file limit it runs under.

use std::fs;
use std::io::Read;
use std::net::TcpListener;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

const READY_TIMEOUT: Duration = Duration::from_secs(180);
const READY_TRIES: u32 = 900;
const READY_PAUSE: Duration = Duration::from_millis(200);
const WRANGLER_TIMEOUT: Duration = Duration::from_secs(120);
const STOP_GRACE: Duration = Duration::from_secs(15);
const KILL_GRACE: Duration = Duration::from_secs(10);
/// Lines after which `wrangler dev` stays up but will never serve: give up at once.
const FATAL_LOG_LINES: &[&str] = &[
    "The Workers runtime failed to start",
    "Custom build failed",
    "Command failed with exit code",
    "Address already in use",
    // scripts/serve.mjs's connection front, when its port is taken (Node's words).
    "EADDRINUSE",
];
/// How long a restart on the same port waits for the port to be free again.
const PORT_FREE_TIMEOUT: Duration = Duration::from_secs(30);
/// Of `FATAL_LOG_LINES`, those after which a second try (on fresh ports, in a moment) may well
/// succeed: workerd failing to come up. On these shared machines that happened once in some
/// hundreds of starts, and wrangler said nothing at `--log-level warn` about why.
const RETRIED_LOG_LINES: &[&str] = &[
    "The Workers runtime failed to start",
    "Address already in use",
    "EADDRINUSE",
];
/// Starts tried in all before giving up.
const LAUNCH_TRIES: u32 = 3;

/// Runs the command in the background (under the open-file limit `$FD_LIMIT`, soft and hard,
/// when set) and holds it on `read` from our stdin pipe: when the caller's process dies, the pipe
/// closes, and the watchdog takes the whole process group down (TERM, then KILL). `$EXIT_FILE`
/// records an early exit.
const WATCHDOG: &str = r#"(
  if [ -n "$FD_LIMIT" ]; then ulimit -n "$FD_LIMIT" || exit 1; fi
  "$@"; echo "$?" > "$EXIT_FILE"
) >>"$LOG_FILE" 2>&1 </dev/null &
read _line
trap '' TERM
kill -TERM 0
sleep 5
kill -KILL 0
"#;

/// A Worker to run: its wrangler config and entry point (relative to the repository root),
/// whether its D1 migrations are applied first, and the path that answers 200 once it is up.
#[derive(Clone, Copy, Debug)]
pub struct Worker {
    pub config: &'static str,
    pub main: &'static str,
    pub migrate: bool,
    pub ready_path: &'static str,
}

/// The hub, as `make build` leaves it.
pub const HUB: Worker = Worker {
    config: "wrangler.toml",
    main: "build/worker/shim.mjs",
    migrate: true,
    ready_path: "/healthz",
};

/// The benchmark's no-op Worker (a fixed 200, and a no-op Durable Object).
pub const NOOP: Worker = Worker {
    config: "bench/noop/wrangler.toml",
    main: "bench/noop/index.js",
    migrate: false,
    ready_path: "/",
};

/// What to start and where.
#[derive(Clone, Debug)]
pub struct Options {
    pub worker: Worker,
    /// `--var NAME:VALUE` pairs, over the config's `[vars]`.
    pub vars: Vec<(String, String)>,
    /// The folder under `target/` for persist directories, e.g. `e2e-tmp`.
    pub under: &'static str,
    /// A word for directory names and messages, e.g. `hub`.
    pub label: &'static str,
    /// Keep the persist directory (and its `wrangler.log`) when the runtime fails to start.
    pub keep_failed: bool,
    /// More flags for `scripts/serve.mjs` (after the launcher's own and `EDGEHUB_SERVE_ARGS`),
    /// e.g. `--restart`; not given to `wrangler dev`.
    pub serve_args: Vec<String>,
    /// The open-file limit (soft and hard) to run the runtime under, lower than ours; `None`:
    /// ours, inherited.
    pub fd_limit: Option<u64>,
}

/// A running (or stopped) runtime and the persist directory it owns.
pub struct Runtime {
    opts: Options,
    dir: PathBuf,
    config: PathBuf,
    base: String,
    port: u16,
    running: Option<Running>,
}

struct Running {
    /// The watchdog shell; its pid is the process group of everything it starts.
    child: Child,
    /// Held open so the watchdog stays up; dropping it asks the watchdog to stop the group.
    _stdin: Option<ChildStdin>,
    pgid: u32,
}

impl Runtime {
    /// Makes a fresh persist dir, copies the config into it, applies the D1 migrations if the
    /// Worker has them, and starts the runtime; returns once it answers `ready_path`.
    pub async fn start(opts: Options) -> Result<Runtime, String> {
        let main = root().join(opts.worker.main);
        if !main.exists() {
            return Err(format!("{} is missing: run `make build`", main.display()));
        }
        let dir = fresh_dir(opts.under, opts.label)?;
        let config = config_copy(&opts.worker, &dir)?;
        let mut rt = Runtime {
            opts,
            dir,
            config,
            base: String::new(),
            port: 0,
            running: None,
        };
        let started = match rt.opts.worker.migrate {
            true => rt.migrate().await,
            false => Ok(()),
        };
        let started = match started {
            Ok(()) => rt.launch().await,
            Err(why) => Err(why),
        };
        match started {
            Ok(()) => Ok(rt),
            Err(why) => {
                if !rt.opts.keep_failed {
                    rt.remove_dir();
                }
                Err(why)
            }
        }
    }

    /// `http://127.0.0.1:<port>`, no trailing slash.
    pub fn base(&self) -> &str {
        &self.base
    }

    /// The persist directory (D1 and Durable Object storage live under its `v3/`).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The port clients connect to: wrangler dev's proxy.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The process group of everything running (wrangler's node and both workerds).
    pub fn pgid(&self) -> Option<u32> {
        self.running.as_ref().map(|r| r.pgid)
    }

    /// Stops the runtime and starts it again on the same persist dir, with `vars` if given (on
    /// new ports: a port just closed may still be held). Returns the new base URL.
    pub async fn restart(&mut self, vars: Option<Vec<(String, String)>>) -> Result<String, String> {
        self.stop().await;
        if let Some(vars) = vars {
            self.opts.vars = vars;
        }
        self.launch().await?;
        Ok(self.base.clone())
    }

    /// Starts a stopped runtime again on the same port and persist dir (once the port is free),
    /// so that a page left open on its origin can reconnect by itself.
    pub async fn start_again(&mut self) -> Result<String, String> {
        if self.running.is_some() {
            return Ok(self.base.clone());
        }
        let port = self.port;
        let deadline = Instant::now() + PORT_FREE_TIMEOUT;
        while TcpListener::bind(("127.0.0.1", port)).is_err() {
            if Instant::now() > deadline {
                return Err(format!(
                    "port {port} still taken after {PORT_FREE_TIMEOUT:?}"
                ));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        self.launch_on(Some(port)).await?;
        Ok(self.base.clone())
    }

    /// SIGTERM to the whole process group, then SIGKILL to what is left after a grace period.
    pub async fn stop(&mut self) {
        let Some(mut run) = self.running.take() else {
            return;
        };
        signal_group("TERM", run.pgid);
        if !wait_group_gone(&mut run, STOP_GRACE).await {
            signal_group("KILL", run.pgid);
            wait_group_gone(&mut run, KILL_GRACE).await;
        }
    }

    /// SIGKILL to the whole process group at once: a crash, no chance to flush anything.
    pub async fn kill9(&mut self) {
        let Some(mut run) = self.running.take() else {
            return;
        };
        signal_group("KILL", run.pgid);
        wait_group_gone(&mut run, KILL_GRACE).await;
    }

    /// Deletes the persist dir (and its log).
    pub fn remove_dir(&self) {
        let _ = fs::remove_dir_all(&self.dir);
    }

    /// The last `lines` lines the runtime logged, for failure messages.
    pub fn log_tail(&self, lines: usize) -> String {
        let path = self.log();
        let text = fs::read_to_string(&path)
            .unwrap_or_else(|e| format!("(no log at {}: {e})", path.display()));
        let all: Vec<&str> = text.lines().collect();
        let from = all.len().saturating_sub(lines);
        all.get(from..).unwrap_or_default().join("\n")
    }

    /// Runs one SQL statement on the runtime's local D1 (`wrangler d1 execute --local`, beside
    /// the running Worker) and returns its result rows. Uses the config copy as it is: rewriting
    /// it would make `wrangler dev` reload.
    pub async fn d1(&self, sql: &str) -> Result<Vec<serde_json::Value>, String> {
        let mut cmd = self.wrangler(&["d1", "execute", "DB", "--local", "--json"]);
        cmd.arg("--command").arg(sql);
        let out = run(cmd, "d1 execute").await?;
        let text = String::from_utf8_lossy(&out.stdout);
        let parsed: serde_json::Value = serde_json::from_str(&text).map_err(|e| {
            let err = String::from_utf8_lossy(&out.stderr);
            format!("d1 execute ({}): {e}: {text}{err}", out.status)
        })?;
        let rows = parsed.get(0).and_then(|r| r.get("results"));
        Ok(rows.and_then(|r| r.as_array()).cloned().unwrap_or_default())
    }

    /// Resident memory of every live process of the group (workerd included), in KiB.
    pub fn rss_kib(&self) -> u64 {
        let Some(run) = &self.running else {
            return 0;
        };
        group_pids(run.pgid)
            .into_iter()
            .filter_map(|pid| fs::read_to_string(format!("/proc/{pid}/status")).ok())
            .filter_map(|status| {
                let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
                line.split_whitespace().nth(1)?.parse::<u64>().ok()
            })
            .sum()
    }

    fn log(&self) -> PathBuf {
        self.dir.join("wrangler.log")
    }

    /// `wrangler <args> --persist-to <dir> --config <copy>`, quiet, in its own process group.
    fn wrangler(&self, args: &[&str]) -> tokio::process::Command {
        let mut cmd = tokio::process::Command::new(wrangler());
        cmd.args(args)
            .arg("--persist-to")
            .arg(&self.dir)
            .arg("--config")
            .arg(&self.config);
        cmd.current_dir(root())
            .envs(quiet_env())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        cmd.process_group(0).kill_on_drop(true);
        cmd
    }

    /// `wrangler d1 migrations apply DB --local` into the persist dir.
    async fn migrate(&self) -> Result<(), String> {
        let cmd = self.wrangler(&["d1", "migrations", "apply", "DB", "--local"]);
        let out = run(cmd, "d1 migrations apply").await?;
        if out.status.success() {
            return Ok(());
        }
        Err(format!(
            "d1 migrations apply failed ({}):\n{}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ))
    }

    async fn launch(&mut self) -> Result<(), String> {
        self.launch_on(None).await
    }

    /// Starts `wrangler dev` on `port`, or on a free one, trying again (after a pause, on a
    /// fresh inspector port) when the runtime itself fails to come up.
    async fn launch_on(&mut self, port: Option<u16>) -> Result<(), String> {
        // One start at a time per process: wrangler's start-up is heavy, and several at once
        // only make each slower.
        static STARTING: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
        let _one_at_a_time = STARTING.lock().await;
        let mut tries = 0;
        loop {
            tries += 1;
            match self.launch_once(port).await {
                Err(why)
                    if tries < LAUNCH_TRIES
                        && RETRIED_LOG_LINES.iter().any(|l| why.contains(l)) =>
                {
                    eprintln!(
                        "{}: start {tries} of {LAUNCH_TRIES} failed, trying again: {why}",
                        self.opts.label
                    );
                    tokio::time::sleep(Duration::from_secs(2)).await;
                }
                done => return done,
            }
        }
    }

    /// One try of `launch_on`.
    async fn launch_once(&mut self, port: Option<u16>) -> Result<(), String> {
        let (free, inspector) = free_ports()?;
        let port = port.unwrap_or(free);
        let inspector = if inspector == port { free } else { inspector };
        let log = self.log();
        let log_from = fs::metadata(&log).map(|m| m.len() as usize).unwrap_or(0);
        let exit_file = self.dir.join("wrangler.exit");
        let _ = fs::remove_file(&exit_file);
        let mut cmd = Command::new("sh");
        cmd.arg("-c")
            .arg(WATCHDOG)
            .arg(format!("edgehub-{}-watchdog", self.opts.label));
        match server() {
            Server::Serve => {
                // The launcher applied the migrations already (`migrate`).
                cmd.arg("node").arg(root().join("scripts/serve.mjs"));
                cmd.args(["--no-migrate", "--ip", "127.0.0.1"]);
                cmd.args(serve_args_from_env());
                cmd.args(&self.opts.serve_args);
            }
            Server::WranglerDev => {
                cmd.arg(wrangler()).args(["dev", "--ip", "127.0.0.1"]);
            }
        }
        cmd.arg("--config").arg(&self.config);
        cmd.args(["--port", &port.to_string()]);
        cmd.args(["--inspector-port", &inspector.to_string()]);
        cmd.arg("--persist-to").arg(&self.dir);
        cmd.args([
            "--log-level",
            "warn",
            "--show-interactive-dev-session=false",
        ]);
        for (k, v) in &self.opts.vars {
            cmd.arg("--var").arg(format!("{k}:{v}"));
        }
        cmd.current_dir(root()).envs(quiet_env());
        cmd.env("LOG_FILE", &log).env("EXIT_FILE", &exit_file);
        if let Some(limit) = self.opts.fd_limit {
            cmd.env("FD_LIMIT", limit.to_string());
        }
        cmd.stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        cmd.process_group(0);
        let mut child = cmd
            .spawn()
            .map_err(|e| format!("spawning wrangler dev: {e}"))?;
        let pgid = child.id();
        let stdin = child.stdin.take();
        self.running = Some(Running {
            child,
            _stdin: stdin,
            pgid,
        });
        self.port = port;
        self.base = format!("http://127.0.0.1:{port}");
        let ready = self.wait_ready(&exit_file, log_from).await;
        if let Err(why) = ready {
            let tail = self.log_tail(60);
            self.stop().await;
            return Err(format!(
                "{} at {} not ready: {why}\n--- log tail ---\n{tail}",
                self.opts.label, self.base
            ));
        }
        Ok(())
    }

    /// Polls `ready_path` until 200, the runtime exits, a fatal line is logged (since
    /// `log_from`), or the time or tries run out.
    async fn wait_ready(&self, exit_file: &Path, log_from: usize) -> Result<(), String> {
        let started = Instant::now();
        let path = self.opts.worker.ready_path;
        let url = format!("{}{path}", self.base);
        let mut last = String::from("no answer yet");
        for _ in 0..READY_TRIES {
            if started.elapsed() > READY_TIMEOUT {
                break;
            }
            // The log first: a runtime that exited has logged why, and the why decides a retry.
            let text = fs::read(self.log()).unwrap_or_default();
            let text = String::from_utf8_lossy(text.get(log_from..).unwrap_or_default());
            if let Some(line) = FATAL_LOG_LINES.iter().find(|l| text.contains(*l)) {
                return Err(format!("wrangler dev logged {line:?}"));
            }
            if let Ok(code) = fs::read_to_string(exit_file) {
                return Err(format!("wrangler dev exited with status {}", code.trim()));
            }
            match client().get(&url).send().await {
                Ok(r) if r.status().as_u16() == 200 => return Ok(()),
                Ok(r) => last = format!("GET {path} answered {}", r.status()),
                Err(e) => last = format!("GET {path}: {e}"),
            }
            tokio::time::sleep(READY_PAUSE).await;
        }
        Err(format!(
            "gave up after {:?}; last: {last}",
            started.elapsed()
        ))
    }
}

impl Drop for Runtime {
    /// The last resort (a panic, an early return): SIGKILL to the group, reap the watchdog.
    fn drop(&mut self) {
        if let Some(mut run) = self.running.take() {
            signal_group("KILL", run.pgid);
            for _ in 0..50 {
                if matches!(run.child.try_wait(), Ok(Some(_))) {
                    break;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }
}

/// The repository root: where `wrangler.toml`, `build/` and `node_modules/` are.
pub fn root() -> &'static Path {
    static ROOT: OnceLock<PathBuf> = OnceLock::new();
    ROOT.get_or_init(|| {
        let here = Path::new(env!("CARGO_MANIFEST_DIR"));
        here.ancestors()
            .nth(2)
            .map_or_else(|| here.to_path_buf(), Path::to_path_buf)
    })
}

/// Live (not zombie) processes whose process group is `pgid`, from `/proc`.
pub fn group_pids(pgid: u32) -> Vec<u32> {
    let Ok(entries) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|entry| {
            let pid = entry.file_name().to_str()?.parse::<u32>().ok()?;
            let mut stat = String::new();
            fs::File::open(entry.path().join("stat"))
                .and_then(|mut f| f.read_to_string(&mut stat))
                .ok()?;
            // Fields after the `(comm)`: state, ppid, pgrp, …
            let rest = stat.rsplit_once(')').map(|(_, r)| r)?;
            let mut fields = rest.split_whitespace();
            let state = fields.next()?;
            let pgrp = fields.nth(1)?.parse::<u32>().ok()?;
            (pgrp == pgid && state != "Z" && state != "X").then_some(pid)
        })
        .collect()
}

/// What serves the Worker: `scripts/serve.mjs` (workerd through Miniflare, without wrangler
/// dev's proxy: one fd per client connection instead of three for SSE and seven for WebSocket,
/// the same runtime `make dev` starts), or `wrangler dev` with `EDGEHUB_RUNTIME=wrangler`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Server {
    Serve,
    WranglerDev,
}

pub fn server() -> Server {
    match std::env::var("EDGEHUB_RUNTIME").as_deref() {
        Ok("wrangler") => Server::WranglerDev,
        _ => Server::Serve,
    }
}

/// `EDGEHUB_SERVE_ARGS`, split on whitespace: flags for `scripts/serve.mjs` in every runtime
/// started, for a run by hand (e.g. `--no-front`, to measure without the connection front).
fn serve_args_from_env() -> Vec<String> {
    std::env::var("EDGEHUB_SERVE_ARGS")
        .unwrap_or_default()
        .split_whitespace()
        .map(str::to_string)
        .collect()
}

fn wrangler() -> PathBuf {
    root().join("node_modules/.bin/wrangler")
}

/// Environment for every wrangler run: never prompt, never phone home.
fn quiet_env() -> [(&'static str, &'static str); 6] {
    [
        ("CI", "true"),
        ("WRANGLER_SEND_METRICS", "false"),
        ("CLOUDFLARE_CF_FETCH_ENABLED", "false"),
        ("WRANGLER_HIDE_BANNER", "true"),
        ("NO_COLOR", "1"),
        ("FORCE_COLOR", "0"),
    ]
}

/// An HTTP client for 127.0.0.1 only: never through a proxy from the environment.
fn client() -> &'static reqwest::Client {
    static CLIENT: OnceLock<reqwest::Client> = OnceLock::new();
    CLIENT.get_or_init(|| {
        reqwest::Client::builder()
            .no_proxy()
            .connect_timeout(Duration::from_secs(5))
            .timeout(Duration::from_secs(5))
            .build()
            .unwrap_or_else(|_| reqwest::Client::new())
    })
}

/// Runs a wrangler command to its end, within `WRANGLER_TIMEOUT`.
async fn run(mut cmd: tokio::process::Command, what: &str) -> Result<std::process::Output, String> {
    let child = cmd.spawn().map_err(|e| format!("spawning {what}: {e}"))?;
    let pgid = child.id();
    match tokio::time::timeout(WRANGLER_TIMEOUT, child.wait_with_output()).await {
        Ok(out) => out.map_err(|e| format!("{what}: {e}")),
        Err(_) => {
            if let Some(pgid) = pgid {
                signal_group("KILL", pgid);
            }
            Err(format!("{what} took over {WRANGLER_TIMEOUT:?}"))
        }
    }
}

fn fresh_dir(under: &str, label: &str) -> Result<PathBuf, String> {
    static SEQ: AtomicU32 = AtomicU32::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let name = format!(
        "{label}-{}-{nanos}-{}",
        std::process::id(),
        SEQ.fetch_add(1, Ordering::Relaxed)
    );
    let dir = root().join("target").join(under).join(name);
    fs::create_dir_all(&dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
    Ok(dir)
}

/// Two distinct free loopback ports: both listeners are held until both are known.
fn free_ports() -> Result<(u16, u16), String> {
    let bind = || TcpListener::bind("127.0.0.1:0").map_err(|e| format!("binding a free port: {e}"));
    let (a, b) = (bind()?, bind()?);
    let port = |l: &TcpListener| l.local_addr().map(|a| a.port()).map_err(|e| e.to_string());
    Ok((port(&a)?, port(&b)?))
}

/// The runtime's own copy of the Worker's wrangler config, in its persist dir: the same Worker,
/// bindings and `[vars]`, with absolute paths and without the `[build]` step.
fn config_copy(worker: &Worker, dir: &Path) -> Result<PathBuf, String> {
    let source = root().join(worker.config);
    let text =
        fs::read_to_string(&source).map_err(|e| format!("reading {}: {e}", source.display()))?;
    let absolute = |path: PathBuf| format!("{:?}", path.display().to_string());
    let mut out = String::new();
    let mut in_build = false;
    for line in text.lines() {
        let trimmed = line.trim();
        if trimmed.starts_with('[') {
            in_build = trimmed == "[build]";
        }
        if in_build {
            continue;
        }
        let line = if trimmed.starts_with("main =") {
            format!("main = {}", absolute(root().join(worker.main)))
        } else if trimmed.starts_with("migrations_dir =") {
            format!("migrations_dir = {}", absolute(root().join("migrations")))
        } else {
            line.to_string()
        };
        out.push_str(&line);
        out.push('\n');
    }
    let path = dir.join("wrangler.toml");
    fs::write(&path, out).map_err(|e| format!("writing {}: {e}", path.display()))?;
    Ok(path)
}

fn signal_group(signal: &str, pgid: u32) {
    let _ = Command::new("kill")
        .args(["-s", signal, "--", &format!("-{pgid}")])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

/// Waits until no live process is left in the group; reaps the watchdog.
async fn wait_group_gone(run: &mut Running, limit: Duration) -> bool {
    let started = Instant::now();
    for _ in 0..(limit.as_millis() / 100 + 1) {
        let _ = run.child.try_wait();
        if group_pids(run.pgid).is_empty() {
            return true;
        }
        if started.elapsed() > limit {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    false
}
