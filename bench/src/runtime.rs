//! The runtimes under test, started by `edgehub-launch` the way the e2e suite starts its hubs:
//! a fresh persist dir under `target/bench-tmp/`, the Worker's config copied without `[build]`,
//! D1 migrations applied (hub only), `wrangler dev` on 127.0.0.1 in its own process group, held
//! by a watchdog so nothing outlives the bench. Both the hub and the no-op Worker are reached
//! through wrangler dev's proxy, as every local client is.

pub use edgehub_launch::{root, Runtime};
use edgehub_launch::{Options, Worker, HUB, NOOP};

/// The HS256 secret the bench's hub runs with (`--var AUTH_SECRET:…`); a public test value.
pub const SECRET: &[u8] = b"edgehub-bench-secret-not-for-production";
/// Mercure's development key (docs/mercure.md#configuration), the hub's publisher and subscriber
/// key alike, so Mercure's well-known development token publishes (scenario 7).
pub const MERCURE_KEY: &str = "!ChangeThisMercureHubJWTSecretKey!";

/// The release hub (`build/worker/shim.mjs`, made by `make build`) with its production
/// `[vars]`, the bench's `AUTH_SECRET`, `public:*` channels and the Mercure face with Mercure's
/// development keys and anonymous subscribers. `keep` keeps the dir of a runtime that fails to
/// start.
pub async fn start_hub(keep: bool) -> Result<Runtime, String> {
    let secret = String::from_utf8_lossy(SECRET).into_owned();
    let vars = vec![
        ("AUTH_SECRET".into(), secret),
        // Anonymous pollers of the largest page (scenario 4).
        ("PUBLIC_CHANNELS".into(), "public:*".into()),
        // The Mercure face (scenario 7); no other scenario reaches it.
        ("MERCURE_PUBLISHER_JWT_KEY".into(), MERCURE_KEY.into()),
        ("MERCURE_SUBSCRIBER_JWT_KEY".into(), MERCURE_KEY.into()),
        ("MERCURE_ANONYMOUS".into(), "1".into()),
    ];
    start(HUB, "hub", vars, keep).await
}

/// The no-op Worker of `bench/noop/`.
pub async fn start_noop(keep: bool) -> Result<Runtime, String> {
    start(NOOP, "noop", Vec::new(), keep).await
}

async fn start(
    worker: Worker,
    label: &'static str,
    vars: Vec<(String, String)>,
    keep: bool,
) -> Result<Runtime, String> {
    Runtime::start(Options {
        worker,
        vars,
        under: "bench-tmp",
        label,
        keep_failed: keep,
        serve_args: Vec::new(),
        fd_limit: None,
    })
    .await
}
