//! The runtime under test: a real `wrangler dev` (workerd) with D1 and SQLite-backed Durable
//! Objects persisted to a fresh directory under `target/e2e-tmp/`, started and stopped by
//! `edgehub-launch` (shared with the benchmark). One `Hub` is one running hub; HTTP helpers live
//! in `api.rs`.

pub use edgehub_launch::root;
use edgehub_launch::{Options, Runtime, HUB};

/// The HS256 secret the hubs under test are started with (`--var AUTH_SECRET:…`).
pub const SECRET: &[u8] = b"edgehub-e2e-secret-not-for-production";
/// `PUBLIC_CHANNELS` of the hubs under test: anyone may subscribe to these without a token.
pub const PUBLIC_CHANNELS: &str = "public:*";
/// The Mercure face of the hubs under test: Mercure's own development values (one key for
/// publishers and subscribers), anonymous subscribers on, as `.dev.vars.example` has them.
pub const MERCURE_KEY: &str = "!ChangeThisMercureHubJWTSecretKey!";
pub const MERCURE_AUDIENCE: &str = "https://localhost/.well-known/mercure";
pub const MERCURE_ISSUER: &str = "https://localhost";

const LOG_TAIL_LINES: usize = 60;

/// Settings beyond the suite's defaults: extra `--var NAME:VALUE` pairs, extra flags for
/// `scripts/serve.mjs`, and a lower open-file limit to run it under.
#[derive(Clone, Debug, Default)]
pub struct HubOptions {
    pub vars: Vec<(String, String)>,
    pub serve_args: Vec<String>,
    pub fd_limit: Option<u64>,
}

/// The shared hub's heartbeat: short, so a gone SSE client leaves the subscriber set quickly.
pub const SHARED_HEARTBEAT_SECONDS: u64 = 2;

impl HubOptions {
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
            ..HubOptions::default()
        }
    }

    /// Every `--var` of a hub: the suite's secret and public channels, then these.
    fn all_vars(&self) -> Vec<(String, String)> {
        let secret = String::from_utf8_lossy(SECRET).into_owned();
        let mut vars = vec![
            ("AUTH_SECRET".to_string(), secret),
            ("PUBLIC_CHANNELS".to_string(), PUBLIC_CHANNELS.to_string()),
            (
                "MERCURE_PUBLISHER_JWT_KEY".to_string(),
                MERCURE_KEY.to_string(),
            ),
            (
                "MERCURE_SUBSCRIBER_JWT_KEY".to_string(),
                MERCURE_KEY.to_string(),
            ),
            ("MERCURE_ANONYMOUS".to_string(), "1".to_string()),
            ("MERCURE_AUDIENCE".to_string(), MERCURE_AUDIENCE.to_string()),
            ("MERCURE_ISSUER".to_string(), MERCURE_ISSUER.to_string()),
        ];
        vars.extend(self.vars.iter().cloned());
        vars
    }
}

/// A running (or stopped) hub and the persist directory it owns. A failed test leaves the
/// directory and its `wrangler.log` for a look; so does `EDGEHUB_E2E_KEEP`.
pub struct Hub {
    runtime: Runtime,
}

impl Hub {
    /// Makes a fresh persist dir, applies the D1 migrations to it and starts the hub.
    pub async fn start(opts: HubOptions) -> Result<Hub, String> {
        let runtime = Runtime::start(Options {
            worker: HUB,
            vars: opts.all_vars(),
            under: "e2e-tmp",
            label: "hub",
            keep_failed: true,
            serve_args: opts.serve_args,
            fd_limit: opts.fd_limit,
        })
        .await?;
        Ok(Hub { runtime })
    }

    /// `http://127.0.0.1:<port>`, no trailing slash.
    pub fn base(&self) -> &str {
        self.runtime.base()
    }

    /// Everything the hub has logged so far (stdout and stderr of `serve.mjs` or wrangler).
    pub fn log(&self) -> String {
        self.runtime.log_tail(usize::MAX)
    }

    /// Stops the hub and starts it again on the same persist dir (on new ports: a port just
    /// closed may still be held). Returns the new base URL.
    pub async fn restart(&mut self) -> Result<String, String> {
        self.runtime.restart(None).await
    }

    /// Like `restart`, with other settings: `opts` replaces the `--var`s given so far.
    pub async fn restart_with(&mut self, opts: HubOptions) -> Result<String, String> {
        self.runtime.restart(Some(opts.all_vars())).await
    }

    /// Runs one SQL statement on the hub's local D1, beside the running hub, and returns its
    /// result rows: what the mirror holds, read directly.
    pub async fn d1(&self, sql: &str) -> Result<Vec<serde_json::Value>, String> {
        self.runtime.d1(sql).await
    }

    /// What the hub's Durable Objects have stored: how many objects hold a table of their own,
    /// and how many alarms are set. (`wrangler dev` writes each object's name into a file of
    /// its own the first time the object runs, `__miniflare_do_name`; that is the local
    /// runtime's, not the hub's, and not counted.) Read with Python's sqlite3, read-only.
    pub fn stored_objects_and_alarms(&self) -> (usize, usize) {
        const PROBE: &str = r#"
import glob, os, sqlite3, sys
objects = alarms = 0
for path in glob.glob(os.path.join(sys.argv[1], "*.sqlite")):
    db = sqlite3.connect("file:" + path + "?mode=ro", uri=True)
    tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    if os.path.basename(path) == "metadata.sqlite":
        alarms += db.execute("SELECT count(*) FROM _cf_ALARM").fetchone()[0] if "_cf_ALARM" in tables else 0
    elif tables - {"__miniflare_do_name"}:
        objects += 1
print(objects, alarms)
"#;
        let dir = self.runtime.dir().join("v3/do/edgehub-ChannelHub");
        let out = std::process::Command::new("python3")
            .arg("-c")
            .arg(PROBE)
            .arg(&dir)
            .output()
            .expect("python3 runs");
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        let mut numbers = text
            .split_whitespace()
            .map(|n| n.parse().unwrap_or(usize::MAX));
        match (numbers.next(), numbers.next()) {
            (Some(objects), Some(alarms)) => (objects, alarms),
            _ => panic!(
                "reading {}: {text} {}",
                dir.display(),
                String::from_utf8_lossy(&out.stderr)
            ),
        }
    }

    /// Resident memory of every live process of the hub's group (workerd included), in KiB.
    pub fn rss_kib(&self) -> u64 {
        self.runtime.rss_kib()
    }

    /// SIGTERM to the whole process group, then SIGKILL to what is left after a grace period.
    pub async fn stop(&mut self) {
        self.runtime.stop().await
    }

    /// Stops the hub and deletes its persist dir, unless `EDGEHUB_E2E_KEEP` is set.
    pub async fn cleanup(mut self) {
        self.stop().await;
        if std::env::var_os("EDGEHUB_E2E_KEEP").is_none() {
            self.runtime.remove_dir();
        }
    }

    /// SIGKILL to the whole process group at once: a crash, no chance to flush anything.
    pub async fn kill9(&mut self) {
        self.runtime.kill9().await
    }

    /// The last lines the hub wrote, for failure messages.
    pub fn log_tail(&self) -> String {
        self.runtime.log_tail(LOG_TAIL_LINES)
    }
}
