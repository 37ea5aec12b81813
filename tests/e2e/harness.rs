//! The runtime under test: a real `wrangler dev` (workerd) with D1 and SQLite-backed Durable
//! Objects persisted to a fresh directory under `target/e2e-tmp/`. One `Hub` is one running hub;
//! HTTP helpers live in `api.rs`. Every wait here is bounded in tries and in time.

use std::fs;
use std::io::Read;
use std::net::TcpListener;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// The HS256 secret the hubs under test are started with (`--var AUTH_SECRET:…`).
pub const SECRET: &[u8] = b"edgehub-e2e-secret-not-for-production";
/// `PUBLIC_CHANNELS` of the hubs under test: anyone may subscribe to these without a token.
pub const PUBLIC_CHANNELS: &str = "public:*";

const READY_TIMEOUT: Duration = Duration::from_secs(180);
const READY_TRIES: u32 = 900;
const READY_PAUSE: Duration = Duration::from_millis(200);
const MIGRATE_TIMEOUT: Duration = Duration::from_secs(120);
const STOP_GRACE: Duration = Duration::from_secs(15);
const KILL_GRACE: Duration = Duration::from_secs(10);
const LOG_TAIL_LINES: usize = 60;
/// Lines after which `wrangler dev` stays up but will never serve: give up at once.
const FATAL_LOG_LINES: &[&str] = &[
    "The Workers runtime failed to start",
    "Custom build failed",
    "Command failed with exit code",
];

/// Runs the hub's command in the background and holds it on `read` from our stdin pipe: when the
/// test process dies, the pipe closes, and the watchdog takes the whole process group down
/// (TERM, then KILL), so no workerd outlives the suite. `$EXIT_FILE` records an early exit.
const WATCHDOG: &str = r#"( "$@"; echo "$?" > "$EXIT_FILE" ) >>"$LOG_FILE" 2>&1 </dev/null &
read _line
trap '' TERM
kill -TERM 0
sleep 5
kill -KILL 0
"#;

/// Settings beyond the suite's defaults: extra `--var NAME:VALUE` pairs.
#[derive(Clone, Debug, Default)]
pub struct HubOptions {
    pub vars: Vec<(String, String)>,
}

/// The shared hub's heartbeat: short, so a gone SSE client leaves the subscriber set quickly.
pub const SHARED_HEARTBEAT_SECONDS: u64 = 2;

impl HubOptions {
    /// The suite's shared hub.
    /// The suite's shared hub: short heartbeats, and retention wide enough that the tests
    /// of ordering and paging (2,500 events on one channel) see every event they published.
    pub fn shared() -> HubOptions {
        HubOptions::with_vars(&[
            ("HEARTBEAT_SECONDS", &SHARED_HEARTBEAT_SECONDS.to_string()),
            ("RETAIN_EVENTS", "100000"),
        ])
    }

    pub fn with_vars(vars: &[(&str, &str)]) -> HubOptions {
        HubOptions {
            vars: vars
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        }
    }
}

/// A running (or stopped) hub and the persist directory it owns.
pub struct Hub {
    opts: HubOptions,
    dir: PathBuf,
    base: String,
    running: Option<Running>,
}

struct Running {
    /// The watchdog shell; its pid is the process group of everything it starts.
    child: Child,
    /// Held open so the watchdog stays up; dropping it asks the watchdog to stop the group.
    _stdin: Option<ChildStdin>,
    pgid: u32,
}

impl Hub {
    /// Makes a fresh persist dir, applies the D1 migrations to it and starts the hub.
    pub async fn start(opts: HubOptions) -> Result<Hub, String> {
        let dir = fresh_dir()?;
        migrate(&dir).await?;
        let mut hub = Hub {
            opts,
            dir,
            base: String::new(),
            running: None,
        };
        hub.launch().await?;
        Ok(hub)
    }

    /// `http://127.0.0.1:<port>`, no trailing slash.
    pub fn base(&self) -> &str {
        &self.base
    }

    /// Stops the hub and starts it again on the same persist dir (on new ports: a port just
    /// closed may still be held). Returns the new base URL.
    pub async fn restart(&mut self) -> Result<String, String> {
        self.stop().await;
        self.launch().await?;
        Ok(self.base.clone())
    }

    /// Like `restart`, with other settings: `opts` replaces the `--var`s given so far.
    pub async fn restart_with(&mut self, opts: HubOptions) -> Result<String, String> {
        self.opts = opts;
        self.restart().await
    }

    /// Runs one SQL statement on the hub's local D1 (`wrangler d1 execute --local`, beside
    /// the running hub) and returns its result rows: what the mirror holds, read directly.
    /// Uses the hub's config copy as it is: rewriting it would make `wrangler dev` reload.
    pub async fn d1(&self, sql: &str) -> Result<Vec<serde_json::Value>, String> {
        let config = self.dir.join("wrangler.toml");
        let mut cmd = tokio::process::Command::new(wrangler());
        cmd.args(["d1", "execute", "DB", "--local", "--json", "--persist-to"])
            .arg(&self.dir)
            .arg("--config")
            .arg(&config)
            .arg("--command")
            .arg(sql);
        cmd.current_dir(root())
            .envs(quiet_env())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        cmd.process_group(0).kill_on_drop(true);
        let child = cmd
            .spawn()
            .map_err(|e| format!("spawning d1 execute: {e}"))?;
        let out = tokio::time::timeout(MIGRATE_TIMEOUT, child.wait_with_output())
            .await
            .map_err(|_| format!("d1 execute took over {MIGRATE_TIMEOUT:?}"))?
            .map_err(|e| format!("d1 execute: {e}"))?;
        let text = String::from_utf8_lossy(&out.stdout);
        let parsed: serde_json::Value = serde_json::from_str(&text).map_err(|e| {
            let err = String::from_utf8_lossy(&out.stderr);
            format!("d1 execute ({}): {e}: {text}{err}", out.status)
        })?;
        Ok(parsed[0]["results"].as_array().cloned().unwrap_or_default())
    }

    /// Resident memory of every live process of the hub's group (workerd included), in KiB.
    pub fn rss_kib(&self) -> u64 {
        let Some(run) = &self.running else {
            return 0;
        };
        let Ok(entries) = fs::read_dir("/proc") else {
            return 0;
        };
        let in_group = |stat: &str| {
            let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
            rest.split_whitespace().nth(2) == Some(run.pgid.to_string().as_str())
        };
        entries
            .flatten()
            .filter(|e| fs::read_to_string(e.path().join("stat")).is_ok_and(|s| in_group(&s)))
            .filter_map(|e| fs::read_to_string(e.path().join("status")).ok())
            .filter_map(|status| {
                let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
                line.split_whitespace().nth(1)?.parse::<u64>().ok()
            })
            .sum()
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

    /// Stops the hub and deletes its persist dir, unless `EDGEHUB_E2E_KEEP` is set (a failed
    /// test skips this too, leaving the dir and its `wrangler.log` for a look).
    pub async fn cleanup(mut self) {
        self.stop().await;
        if std::env::var_os("EDGEHUB_E2E_KEEP").is_none() {
            let _ = fs::remove_dir_all(&self.dir);
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

    /// The last lines the hub wrote, for failure messages.
    pub fn log_tail(&self) -> String {
        log_tail(&self.dir.join("wrangler.log"))
    }

    async fn launch(&mut self) -> Result<(), String> {
        // One start at a time: each runs the build command (`make -s build`) in the shared tree,
        // and two builds at once would write the same files.
        static STARTING: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
        let _one_at_a_time = STARTING.lock().await;
        let (port, inspector) = free_ports()?;
        let log = self.dir.join("wrangler.log");
        let log_from = fs::metadata(&log).map(|m| m.len() as usize).unwrap_or(0);
        let exit_file = self.dir.join("wrangler.exit");
        let _ = fs::remove_file(&exit_file);
        let config = config_for(&self.dir)?;
        let mut cmd = Command::new("sh");
        cmd.arg("-c").arg(WATCHDOG).arg("edgehub-e2e-watchdog");
        cmd.arg(wrangler()).args(["dev", "--ip", "127.0.0.1"]);
        cmd.arg("--config").arg(&config);
        cmd.args([
            "--port",
            &port.to_string(),
            "--inspector-port",
            &inspector.to_string(),
        ]);
        cmd.arg("--persist-to").arg(&self.dir);
        cmd.args([
            "--log-level",
            "warn",
            "--show-interactive-dev-session=false",
        ]);
        let secret = String::from_utf8_lossy(SECRET).into_owned();
        let mut vars = vec![
            ("AUTH_SECRET".to_string(), secret),
            ("PUBLIC_CHANNELS".to_string(), PUBLIC_CHANNELS.to_string()),
        ];
        vars.extend(self.opts.vars.iter().cloned());
        for (k, v) in vars {
            cmd.arg("--var").arg(format!("{k}:{v}"));
        }
        cmd.current_dir(root()).envs(quiet_env());
        cmd.env("LOG_FILE", &log).env("EXIT_FILE", &exit_file);
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
        self.base = format!("http://127.0.0.1:{port}");
        match wait_ready(&self.base, &exit_file, &log, log_from).await {
            Ok(()) => Ok(()),
            Err(why) => {
                self.stop().await;
                Err(format!(
                    "hub at {} not ready: {why}\n--- log tail ---\n{}",
                    self.base,
                    self.log_tail()
                ))
            }
        }
    }
}

impl Drop for Hub {
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

/// The repository root: where `wrangler.toml` and `node_modules/` are.
pub fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn wrangler() -> PathBuf {
    root().join("node_modules/.bin/wrangler")
}

/// Environment for every wrangler run: never prompt, never phone home.
fn quiet_env() -> Vec<(&'static str, &'static str)> {
    vec![
        ("CI", "true"),
        ("WRANGLER_SEND_METRICS", "false"),
        ("CLOUDFLARE_CF_FETCH_ENABLED", "false"),
        ("WRANGLER_HIDE_BANNER", "true"),
        ("NO_COLOR", "1"),
        ("FORCE_COLOR", "0"),
    ]
}

fn fresh_dir() -> Result<PathBuf, String> {
    static SEQ: AtomicU32 = AtomicU32::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let name = format!(
        "hub-{}-{nanos}-{}",
        std::process::id(),
        SEQ.fetch_add(1, Ordering::Relaxed)
    );
    let dir = root().join("target/e2e-tmp").join(name);
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

/// The hub's own copy of `wrangler.toml`, in its persist dir: the same Worker, bindings and
/// settings, with absolute paths and without the `[build]` step. So a test hub runs the bundle
/// `make build` made and never rebuilds or restarts when a file in `src/` changes mid-run, and
/// no `.dev.vars` is read: a test hub's settings are the `--var`s it is given, nothing else.
fn config_for(dir: &Path) -> Result<PathBuf, String> {
    let text = fs::read_to_string(root().join("wrangler.toml"))
        .map_err(|e| format!("reading wrangler.toml: {e}"))?;
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
            format!(
                "main = {:?}",
                root().join("build/worker/shim.mjs").display().to_string()
            )
        } else if trimmed.starts_with("migrations_dir =") {
            format!(
                "migrations_dir = {:?}",
                root().join("migrations").display().to_string()
            )
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

/// `wrangler d1 migrations apply DB --local` into the hub's persist dir.
async fn migrate(dir: &Path) -> Result<(), String> {
    let config = config_for(dir)?;
    let mut cmd = tokio::process::Command::new(wrangler());
    cmd.args(["d1", "migrations", "apply", "DB", "--local", "--persist-to"])
        .arg(dir)
        .arg("--config")
        .arg(&config);
    cmd.current_dir(root())
        .envs(quiet_env())
        .stdin(Stdio::null());
    cmd.process_group(0).kill_on_drop(true);
    let child = cmd.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn();
    let child = child.map_err(|e| format!("spawning wrangler d1 migrations apply: {e}"))?;
    let pgid = child.id();
    match tokio::time::timeout(MIGRATE_TIMEOUT, child.wait_with_output()).await {
        Ok(Ok(out)) if out.status.success() => Ok(()),
        Ok(Ok(out)) => Err(format!(
            "d1 migrations apply failed ({}):\n{}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )),
        Ok(Err(e)) => Err(format!("d1 migrations apply: {e}")),
        Err(_) => {
            if let Some(pgid) = pgid {
                signal_group("KILL", pgid);
            }
            Err(format!("d1 migrations apply took over {MIGRATE_TIMEOUT:?}"))
        }
    }
}

/// Polls `GET /healthz` until 200, the hub's process exits, or the time or tries run out.
async fn wait_ready(
    base: &str,
    exit_file: &Path,
    log: &Path,
    log_from: usize,
) -> Result<(), String> {
    let started = Instant::now();
    let url = format!("{base}/healthz");
    let mut last = String::from("no answer yet");
    for _ in 0..READY_TRIES {
        if started.elapsed() > READY_TIMEOUT {
            break;
        }
        if let Ok(code) = fs::read_to_string(exit_file) {
            return Err(format!("wrangler dev exited with status {}", code.trim()));
        }
        let text = fs::read(log).unwrap_or_default();
        let text = String::from_utf8_lossy(text.get(log_from..).unwrap_or_default());
        if let Some(line) = FATAL_LOG_LINES.iter().find(|l| text.contains(*l)) {
            return Err(format!("wrangler dev logged {line:?}"));
        }
        let req = crate::api::client()
            .get(&url)
            .timeout(Duration::from_secs(5));
        match req.send().await {
            Ok(r) if r.status().as_u16() == 200 => return Ok(()),
            Ok(r) => last = format!("GET /healthz answered {}", r.status()),
            Err(e) => last = format!("GET /healthz: {e}"),
        }
        tokio::time::sleep(READY_PAUSE).await;
    }
    Err(format!(
        "gave up after {:?}; last: {last}",
        started.elapsed()
    ))
}

fn signal_group(signal: &str, pgid: u32) {
    let _ = Command::new("kill")
        .args(["-s", signal, "--", &format!("-{pgid}")])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

/// Waits until no live (non-zombie) process is left in the group; reaps the watchdog.
async fn wait_group_gone(run: &mut Running, limit: Duration) -> bool {
    let started = Instant::now();
    for _ in 0..(limit.as_millis() / 100 + 1) {
        let _ = run.child.try_wait();
        if !group_alive(run.pgid) {
            return true;
        }
        if started.elapsed() > limit {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    false
}

/// True while a process of group `pgid` is alive. Reads `/proc` so that zombies (orphans nobody
/// has reaped yet) do not count; falls back to `kill -0` where there is no `/proc`.
fn group_alive(pgid: u32) -> bool {
    let Ok(entries) = fs::read_dir("/proc") else {
        return Command::new("kill")
            .args(["-0", "--", &format!("-{pgid}")])
            .stderr(Stdio::null())
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
    };
    entries.flatten().any(|entry| {
        let mut stat = String::new();
        let path = entry.path().join("stat");
        let read = fs::File::open(path).and_then(|mut f| f.read_to_string(&mut stat));
        if read.is_err() {
            return false;
        }
        // Fields after the `(comm)`: state, ppid, pgrp, …
        let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
        let mut fields = rest.split_whitespace();
        let state = fields.next().unwrap_or("Z");
        let pgrp = fields.nth(1).and_then(|p| p.parse::<u32>().ok());
        pgrp == Some(pgid) && state != "Z" && state != "X"
    })
}

fn log_tail(path: &Path) -> String {
    let text =
        fs::read_to_string(path).unwrap_or_else(|e| format!("(no log at {}: {e})", path.display()));
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(LOG_TAIL_LINES)..].join("\n")
}
