//! nchan, the comparison column (`--nchan`, issue 18): Debian's `nginx-light` with
//! `libnginx-mod-nchan`, installed with apt-get when missing, run from a config of our own in a
//! fresh dir under `target/bench-tmp/` (127.0.0.1 on a free port, pid, logs and temp files in
//! that dir, no daemon), held by a watchdog so that its process group never outlives the bench.
//! Its endpoints mirror the hub's paths, so the bench's own clients read both: `POST /pub/{c}`
//! publishes, `GET /sse/{c}` is an EventSource subscriber, `GET /poll/{c}` an interval poll.
//! What the scenarios measure against it lives beside the hub's passes in `scenario/`.

mod config;

use std::fs;
use std::net::TcpListener;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rustix::process::{kill_process_group, Pid, Signal};
use serde_json::Value;

use crate::client;
use crate::procfs;
use crate::runtime::root;

/// What `--nchan` installs when it is missing.
pub const PACKAGES: [&str; 2] = ["nginx-light", "libnginx-mod-nchan"];
const NGINX: &str = "/usr/sbin/nginx";
/// Where Debian's `libnginx-mod-nchan` puts the module.
const MODULE: &str = "/usr/lib/nginx/modules/ngx_nchan_module.so";
/// One apt-get command may take this long (a slow mirror, a large update).
const APT_TIMEOUT: Duration = Duration::from_secs(300);
const READY_TIMEOUT: Duration = Duration::from_secs(15);
const READY_PAUSE: Duration = Duration::from_millis(100);
const STOP_GRACE: Duration = Duration::from_secs(10);

/// Runs nginx in the background and holds it on `read` from our stdin pipe: when the bench dies,
/// the pipe closes and the watchdog takes the whole process group down (TERM, then KILL).
const WATCHDOG: &str = r#""$@" >>"$LOG_FILE" 2>&1 </dev/null &
read _line
trap '' TERM
kill -TERM 0
sleep 3
kill -KILL 0
"#;

/// Where a running nchan answers, for the scenarios.
#[derive(Clone, Debug)]
pub struct Endpoint {
    pub base: String,
    pub port: u16,
    pub pgid: u32,
}

/// A running nginx with nchan.
pub struct Nchan {
    endpoint: Endpoint,
    dir: PathBuf,
    /// The watchdog shell, whose pid is the group of everything it starts.
    child: Option<Child>,
    /// Held open so the watchdog stays up.
    stdin: Option<ChildStdin>,
    /// `nginx 1.22.1, nchan 1:1.3.6+dfsg-2`, as the package manager says.
    pub version: String,
}

impl Nchan {
    /// Installs the packages when missing, writes the config and starts nginx; `Err` says why
    /// the column cannot be measured (the caller skips it).
    pub async fn start(fd_limit: u64) -> Result<Nchan, String> {
        ensure_installed().await?;
        let dir = fresh_dir()?;
        match launch(&dir, fd_limit).await {
            Ok(n) => Ok(n),
            Err(why) => {
                let _ = fs::remove_dir_all(&dir);
                Err(why)
            }
        }
    }

    pub fn endpoint(&self) -> Endpoint {
        self.endpoint.clone()
    }

    /// Stops the whole process group (the watchdog's TERM, then KILL after `STOP_GRACE`).
    pub async fn stop(&mut self) {
        let pgid = self.endpoint.pgid;
        self.stdin = None;
        let started = Instant::now();
        while !procfs::group_pids(pgid).is_empty() && started.elapsed() < STOP_GRACE {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        if let Some(pid) = Pid::from_raw(pgid as i32) {
            if !procfs::group_pids(pgid).is_empty() {
                let _ = kill_process_group(pid, Signal::KILL);
            }
        }
        if let Some(mut child) = self.child.take() {
            for _ in 0..50 {
                if matches!(child.try_wait(), Ok(Some(_))) {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }

    /// Deletes the dir (config, logs, pid, temp files).
    pub fn remove_dir(&self) {
        let _ = fs::remove_dir_all(&self.dir);
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

impl Drop for Nchan {
    /// The last resort (an early return): SIGKILL to the group.
    fn drop(&mut self) {
        if self.child.is_some() {
            if let Some(pid) = Pid::from_raw(self.endpoint.pgid as i32) {
                let _ = kill_process_group(pid, Signal::KILL);
            }
            if let Some(mut child) = self.child.take() {
                let _ = child.wait();
            }
        }
    }
}

/// `POST /pub/{c}` with `body` as the message; nchan answers 201 when the channel has
/// subscribers and 202 when it has none.
pub async fn publish(base: &str, channel: &str, body: Vec<u8>) -> Result<(), String> {
    let url = format!("{base}/pub/{channel}");
    let r = client::http()
        .post(&url)
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .map_err(|e| format!("POST {url}: {e}"))?;
    let status = r.status().as_u16();
    let bytes = r.bytes().await.map_err(|e| format!("POST {url}: {e}"))?;
    match status {
        201 | 202 => Ok(()),
        s => Err(format!(
            "POST {url}: {s} {}",
            String::from_utf8_lossy(&bytes)
        )),
    }
}

/// The channel's subscribers, from the publisher location's channel info (`GET /pub/{c}`);
/// 0 for a channel nchan does not know yet.
pub async fn subscribers(base: &str, channel: &str) -> Result<u64, String> {
    let url = format!("{base}/pub/{channel}");
    let r = client::http()
        .get(&url)
        .header("accept", "application/json")
        .send()
        .await
        .map_err(|e| format!("GET {url}: {e}"))?;
    let status = r.status().as_u16();
    let bytes = r.bytes().await.map_err(|e| format!("GET {url}: {e}"))?;
    match status {
        200 => {
            let v: Value = serde_json::from_slice(&bytes).map_err(|e| format!("GET {url}: {e}"))?;
            v["subscribers"]
                .as_u64()
                .ok_or(format!("GET {url}: no subscribers in {v}"))
        }
        404 => Ok(0),
        s => Err(format!("GET {url}: {s}")),
    }
}

/// Waits (bounded) until the channel counts `want` subscribers; the last count seen.
pub async fn await_subscribers(base: &str, channel: &str, want: u64, limit: Duration) -> u64 {
    let started = Instant::now();
    let mut last = u64::MAX;
    while started.elapsed() < limit {
        if let Ok(n) = subscribers(base, channel).await {
            last = n;
            if n == want {
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    last
}

/// Installs `PACKAGES` when nginx or the module is missing: `apt-get install`, and once more
/// after `apt-get update` if that failed (the package lists may be stale or absent).
async fn ensure_installed() -> Result<(), String> {
    if installed() {
        return Ok(());
    }
    eprintln!(
        "edgehub-bench: nchan: installing {} with apt-get …",
        PACKAGES.join(" ")
    );
    let install = || {
        let mut args = vec!["install", "-y", "--no-install-recommends"];
        args.extend(PACKAGES);
        apt(args)
    };
    if let Err(first) = install().await {
        eprintln!("edgehub-bench: nchan: {first}; running apt-get update first");
        apt(vec!["update"]).await?;
        install().await?;
    }
    match installed() {
        true => Ok(()),
        false => Err(format!(
            "apt-get installed {} but {NGINX} or {MODULE} is not there",
            PACKAGES.join(" ")
        )),
    }
}

fn installed() -> bool {
    Path::new(NGINX).exists() && Path::new(MODULE).exists()
}

/// Runs `apt-get ARGS` non-interactively, within `APT_TIMEOUT`; the tail of its output on failure.
async fn apt(args: Vec<&str>) -> Result<(), String> {
    let what = format!("apt-get {}", args.join(" "));
    let mut cmd = tokio::process::Command::new("apt-get");
    cmd.args(&args)
        .env("DEBIAN_FRONTEND", "noninteractive")
        .stdin(Stdio::null())
        .kill_on_drop(true);
    let child = cmd.output();
    let out = match tokio::time::timeout(APT_TIMEOUT, child).await {
        Err(_) => return Err(format!("{what} took over {APT_TIMEOUT:?}")),
        Ok(Err(e)) => return Err(format!("{what}: {e}")),
        Ok(Ok(out)) => out,
    };
    if out.status.success() {
        return Ok(());
    }
    let text = String::from_utf8_lossy(&out.stderr);
    let tail: Vec<&str> = text.lines().rev().take(3).collect();
    Err(format!(
        "{what} failed ({}): {}",
        out.status,
        tail.into_iter().rev().collect::<Vec<_>>().join(" / ")
    ))
}

/// The package manager's versions of nginx-light and the module.
fn versions() -> String {
    let version = |package: &str| {
        Command::new("dpkg-query")
            .args(["-W", "-f", "${Version}", package])
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map_or("unknown".into(), |o| {
                String::from_utf8_lossy(&o.stdout).trim().to_string()
            })
    };
    format!(
        "nginx-light {}, libnginx-mod-nchan {}",
        version(PACKAGES[0]),
        version(PACKAGES[1])
    )
}

fn fresh_dir() -> Result<PathBuf, String> {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let dir = root()
        .join("target/bench-tmp")
        .join(format!("nchan-{}-{nanos}", std::process::id()));
    fs::create_dir_all(&dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
    Ok(dir)
}

/// Writes the config, starts nginx behind the watchdog and waits until it answers.
async fn launch(dir: &Path, fd_limit: u64) -> Result<Nchan, String> {
    let port = TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|e| format!("finding a free port: {e}"))?;
    let conf = dir.join("nginx.conf");
    let text = config::write(dir, port, fd_limit, &config::compiled_without());
    fs::write(&conf, text).map_err(|e| format!("writing {}: {e}", conf.display()))?;
    let log = dir.join("nginx.out");
    let mut cmd = Command::new("sh");
    cmd.arg("-c")
        .arg(WATCHDOG)
        .arg("edgehub-bench-nchan-watchdog");
    cmd.arg(NGINX).arg("-p").arg(dir).arg("-c").arg(&conf);
    cmd.arg("-e").arg(dir.join("error.log"));
    cmd.env("LOG_FILE", &log)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .process_group(0);
    let mut child = cmd.spawn().map_err(|e| format!("spawning nginx: {e}"))?;
    let stdin = child.stdin.take();
    let mut nchan = Nchan {
        endpoint: Endpoint {
            base: format!("http://127.0.0.1:{port}"),
            port,
            pgid: child.id(),
        },
        dir: dir.to_path_buf(),
        child: Some(child),
        stdin,
        version: versions(),
    };
    if let Err(why) = nchan.wait_ready().await {
        nchan.stop().await;
        let tail = |name: &str| {
            let text = fs::read_to_string(dir.join(name)).unwrap_or_default();
            let lines: Vec<&str> = text.lines().rev().take(5).collect();
            lines.into_iter().rev().collect::<Vec<_>>().join(" / ")
        };
        return Err(format!(
            "nginx not ready: {why}; error.log: {}; output: {}",
            tail("error.log"),
            tail("nginx.out")
        ));
    }
    Ok(nchan)
}

impl Nchan {
    /// Polls `/healthz` until 200, or nginx's exit, or `READY_TIMEOUT`.
    async fn wait_ready(&mut self) -> Result<(), String> {
        let url = format!("{}/healthz", self.endpoint.base);
        let started = Instant::now();
        let mut last = "no answer yet".to_string();
        while started.elapsed() < READY_TIMEOUT {
            let nginx_up = procfs::group_pids(self.endpoint.pgid).len() > 1;
            if started.elapsed() > Duration::from_secs(1) && !nginx_up {
                return Err("nginx exited".into());
            }
            match client::http().get(&url).send().await {
                Ok(r) if r.status().as_u16() == 200 => return Ok(()),
                Ok(r) => last = format!("GET /healthz answered {}", r.status()),
                Err(e) => last = format!("GET /healthz: {e}"),
            }
            tokio::time::sleep(READY_PAUSE).await;
        }
        Err(format!("gave up after {READY_TIMEOUT:?}; last: {last}"))
    }
}
