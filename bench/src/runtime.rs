//! The runtimes under test, started the way the e2e harness starts its hubs: a fresh persist dir
//! under `target/bench-tmp/`, a copy of the Worker's wrangler config without `[build]` and with
//! absolute paths, D1 migrations applied (hub only), then `wrangler dev` on 127.0.0.1 in its own
//! process group, held by a watchdog on our stdin pipe so nothing outlives the bench. Both the
//! hub and the no-op Worker are reached through wrangler dev's proxy, as every local client is.

use std::fs;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::client;
use crate::procfs;

/// The HS256 secret the bench's hub runs with (`--var AUTH_SECRET:…`); a public test value.
pub const SECRET: &[u8] = b"edgehub-bench-secret-not-for-production";

const READY_TIMEOUT: Duration = Duration::from_secs(180);
const READY_PAUSE: Duration = Duration::from_millis(250);
const MIGRATE_TIMEOUT: Duration = Duration::from_secs(120);
const STOP_GRACE: Duration = Duration::from_secs(15);
const KILL_GRACE: Duration = Duration::from_secs(10);
const LOG_TAIL_LINES: usize = 40;
/// Lines after which `wrangler dev` stays up but will never serve: give up at once.
const FATAL_LOG_LINES: &[&str] = &[
    "The Workers runtime failed to start",
    "Command failed with exit code",
];

/// Runs the command in the background and waits on `read` from our stdin pipe: when the bench
/// dies, the pipe closes and the watchdog takes the whole process group down (TERM, then KILL).
const WATCHDOG: &str = r#"( "$@"; echo "$?" > "$EXIT_FILE" ) >>"$LOG_FILE" 2>&1 </dev/null &
read _line
trap '' TERM
kill -TERM 0
sleep 5
kill -KILL 0
"#;

/// Which Worker a runtime serves.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Worker {
    Hub,
    Noop,
}

/// One running `wrangler dev` and the persist dir it owns.
pub struct Runtime {
    dir: PathBuf,
    base: String,
    port: u16,
    running: Option<Running>,
}

struct Running {
    /// The watchdog shell; its pid is the process group of everything it starts.
    child: Child,
    /// Held open so the watchdog stays up; dropped on stop.
    _stdin: Option<ChildStdin>,
    pgid: u32,
}

impl Runtime {
    /// The release hub (`build/worker/shim.mjs`, made by `make build`) with its production
    /// `[vars]` and the bench's `AUTH_SECRET`.
    pub async fn start_hub(keep: bool) -> Result<Runtime, String> {
        let shim = root().join("build/worker/shim.mjs");
        if !shim.exists() {
            return Err(format!("{} is missing: run `make build`", shim.display()));
        }
        Runtime::start(Worker::Hub, keep).await
    }

    /// The no-op Worker of `bench/noop/`.
    pub async fn start_noop(keep: bool) -> Result<Runtime, String> {
        Runtime::start(Worker::Noop, keep).await
    }

    async fn start(worker: Worker, keep: bool) -> Result<Runtime, String> {
        let name = match worker {
            Worker::Hub => "hub",
            Worker::Noop => "noop",
        };
        let dir = fresh_dir(name)?;
        let config = config_copy(worker, &dir)?;
        if worker == Worker::Hub {
            migrate(&dir, &config).await?;
        }
        let (port, inspector) = free_ports()?;
        let mut rt = Runtime {
            dir,
            base: format!("http://127.0.0.1:{port}"),
            port,
            running: None,
        };
        rt.launch(worker, &config, inspector)?;
        let ready = match worker {
            Worker::Hub => "/healthz",
            Worker::Noop => "/",
        };
        if let Err(why) = rt.wait_ready(ready).await {
            let tail = rt.log_tail();
            rt.stop().await;
            if !keep {
                rt.remove_dir();
            }
            return Err(format!(
                "{name} at {} not ready: {why}\n--- log tail ---\n{tail}",
                rt.base
            ));
        }
        Ok(rt)
    }

    /// `http://127.0.0.1:<port>`, no trailing slash.
    pub fn base(&self) -> &str {
        &self.base
    }

    /// The port clients connect to: wrangler dev's proxy.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The process group of this runtime (wrangler's node processes and both workerds).
    pub fn pgid(&self) -> Option<u32> {
        self.running.as_ref().map(|r| r.pgid)
    }

    fn launch(&mut self, worker: Worker, config: &Path, inspector: u16) -> Result<(), String> {
        let log = self.dir.join("wrangler.log");
        let exit_file = self.dir.join("wrangler.exit");
        let mut cmd = Command::new("sh");
        cmd.arg("-c").arg(WATCHDOG).arg("edgehub-bench-watchdog");
        cmd.arg(wrangler()).args(["dev", "--ip", "127.0.0.1"]);
        cmd.arg("--config").arg(config);
        cmd.args(["--port", &self.port.to_string()]);
        cmd.args(["--inspector-port", &inspector.to_string()]);
        cmd.arg("--persist-to").arg(&self.dir);
        cmd.args([
            "--log-level",
            "warn",
            "--show-interactive-dev-session=false",
        ]);
        if worker == Worker::Hub {
            let secret = String::from_utf8_lossy(SECRET);
            cmd.arg("--var").arg(format!("AUTH_SECRET:{secret}"));
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
        Ok(())
    }

    /// Polls `path` until 200, the process exits, a fatal log line shows, or time runs out.
    async fn wait_ready(&self, path: &str) -> Result<(), String> {
        let started = Instant::now();
        let url = format!("{}{path}", self.base);
        let exit_file = self.dir.join("wrangler.exit");
        let mut last = String::from("no answer yet");
        while started.elapsed() < READY_TIMEOUT {
            if let Ok(code) = fs::read_to_string(&exit_file) {
                return Err(format!("wrangler dev exited with status {}", code.trim()));
            }
            let log = fs::read_to_string(self.dir.join("wrangler.log")).unwrap_or_default();
            if let Some(line) = FATAL_LOG_LINES.iter().find(|l| log.contains(*l)) {
                return Err(format!("wrangler dev logged {line:?}"));
            }
            let req = client::http().get(&url).timeout(Duration::from_secs(5));
            match req.send().await {
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

    /// Deletes the persist dir (and its log).
    pub fn remove_dir(&self) {
        let _ = fs::remove_dir_all(&self.dir);
    }

    pub fn log_tail(&self) -> String {
        let text = fs::read_to_string(self.dir.join("wrangler.log")).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        let from = lines.len().saturating_sub(LOG_TAIL_LINES);
        lines.get(from..).unwrap_or_default().join("\n")
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
pub fn root() -> PathBuf {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest.parent().unwrap_or(manifest).to_path_buf()
}

fn wrangler() -> PathBuf {
    root().join("node_modules/.bin/wrangler")
}

/// Environment for every wrangler run: never prompt, never phone home.
fn quiet_env() -> Vec<(&'static str, &'static str)> {
    vec![
        ("CI", "true"),
        ("WRANGLER_SEND_METRICS", "false"),
        ("WRANGLER_HIDE_BANNER", "true"),
        ("CLOUDFLARE_CF_FETCH_ENABLED", "false"),
        ("NO_COLOR", "1"),
        ("FORCE_COLOR", "0"),
    ]
}

fn fresh_dir(name: &str) -> Result<PathBuf, String> {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let dir = root()
        .join("target/bench-tmp")
        .join(format!("{name}-{}-{nanos}", std::process::id()));
    fs::create_dir_all(&dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
    Ok(dir)
}

/// Two distinct free loopback ports: both listeners are held until both are known.
fn free_ports() -> Result<(u16, u16), String> {
    let bind =
        || std::net::TcpListener::bind("127.0.0.1:0").map_err(|e| format!("binding a port: {e}"));
    let (a, b) = (bind()?, bind()?);
    let port =
        |l: &std::net::TcpListener| l.local_addr().map(|a| a.port()).map_err(|e| e.to_string());
    Ok((port(&a)?, port(&b)?))
}

/// The runtime's own copy of its wrangler config, in its persist dir: no `[build]` step (the
/// bench runs the bundle `make build` made, and never rebuilds mid-run), absolute paths, and
/// no `.dev.vars` beside it, so the settings are the config's `[vars]` and our `--var`s only.
fn config_copy(worker: Worker, dir: &Path) -> Result<PathBuf, String> {
    let (source, main) = match worker {
        Worker::Hub => (
            root().join("wrangler.toml"),
            root().join("build/worker/shim.mjs"),
        ),
        Worker::Noop => (
            root().join("bench/noop/wrangler.toml"),
            root().join("bench/noop/index.js"),
        ),
    };
    let text =
        fs::read_to_string(&source).map_err(|e| format!("reading {}: {e}", source.display()))?;
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
            format!("main = {:?}", main.display().to_string())
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

/// `wrangler d1 migrations apply DB --local` into the runtime's persist dir.
async fn migrate(dir: &Path, config: &Path) -> Result<(), String> {
    let mut cmd = tokio::process::Command::new(wrangler());
    cmd.args(["d1", "migrations", "apply", "DB", "--local", "--persist-to"])
        .arg(dir)
        .arg("--config")
        .arg(config);
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
    loop {
        let _ = run.child.try_wait();
        if procfs::group_pids(run.pgid).is_empty() {
            return true;
        }
        if started.elapsed() > limit {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
