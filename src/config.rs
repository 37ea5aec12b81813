//! Limits and settings, typed and read once per isolate from the environment's `[vars]`
//! (see `wrangler.toml`). A missing or unreadable value falls back to the documented default, so
//! a typo in configuration can never take the hub down; `docs/API.md#configuration` lists them.

use crate::auth::{patterns, Pattern};
use crate::protocol::publish::PublishLimits;
use crate::protocol::stream::DEFAULT_MAX_STREAM_CHANNELS;
use crate::protocol::ChannelName;

/// The deepest `MAX_DATA_DEPTH` may be set. An event's data sits at most three levels down in
/// anything the hub sends (a poll page's object, its `events` array, the envelope), so data at
/// this depth stays well within the 128 levels that serde_json, and most other readers, accept.
pub const MAX_DATA_DEPTH_CAP: usize = 100;

/// The most `MAX_STREAM_CHANNELS` may be set: a stream cursor names every channel of its stream,
/// and it must fit in a `Last-Event-ID` header (1,000 names of 128 bytes are about 130 KB).
pub const MAX_STREAM_CHANNELS_CAP: usize = 1000;

#[derive(Debug, Clone)]
pub struct Config {
    pub max_data_bytes: usize,
    pub max_batch: usize,
    pub max_body_bytes: usize,
    /// Levels of objects and arrays allowed inside an event's `data` (at most
    /// `MAX_DATA_DEPTH_CAP`).
    pub max_data_depth: usize,
    /// About the largest poll page, serialised: a page is cut before the event that would pass
    /// it, but always holds at least one event.
    pub max_page_bytes: usize,
    pub retain_events: u64,
    pub retain_seconds: u64,
    pub sse_max_seconds: u64,
    pub heartbeat_seconds: u64,
    /// Unread bytes after which a live subscriber is dropped as too slow.
    pub slow_consumer_bytes: usize,
    pub query_token_max_seconds: i64,
    pub token_max_ttl_seconds: i64,
    pub poll_default_limit: u32,
    pub poll_max_limit: u32,
    /// How long a Worker isolate may answer a conditional poll from the mirror window it read
    /// last, without D1 (0: always ask D1).
    pub poll_cache_ms: i64,
    /// The most channels one stream (`/sse`, `/ws`, `/poll` with `?channel=`) may carry.
    pub max_stream_channels: usize,
    /// The most members one channel's presence holds; a connection that would add one more
    /// is refused (409), other connections of its members and plain subscribers are not.
    pub presence_max_members: usize,
    pub public_channels: Vec<Pattern>,
    pub cors_origins: Vec<String>,
    /// The Mercure face (`/.well-known/mercure`, docs/mercure.md).
    pub mercure: MercureConfig,
    /// True only under the local development config (`.dev.vars`).
    pub development: bool,
    /// Fault switch for tests: every D1 mirror write fails. Honoured only in development.
    pub fault_d1_writes: bool,
    /// Fault switch for tests: the channel's object refuses an SSE tap's take-over, the shared
    /// subscribe a member's request makes when the owner left (`EDGEHUB_FAULT_TAKE_OVER`).
    /// Honoured only in development.
    pub fault_take_over: bool,
    /// Fault switch for tests: the isolate's first this many take-overs of a shared upstream
    /// (SSE taps and many-channel lanes) fail in the Worker before they reach the object, as
    /// when the woken rider's request is gone (`EDGEHUB_FAULT_TAKE_OVER_STARTS`, at most 100).
    /// Honoured only in development.
    pub fault_take_over_starts: u64,
    /// Fault switch for tests: every poll's D1 read waits this long first
    /// (`EDGEHUB_FAULT_D1_READ_MS`), so that polls meet in flight. Honoured only in development.
    pub fault_d1_read_ms: u64,
}

impl Config {
    /// Reads every setting through `var`, which returns the raw string of a `[vars]` entry.
    pub fn from_lookup(var: impl Fn(&str) -> Option<String>) -> Self {
        let num = |name: &str, default: u64| -> u64 {
            var(name)
                .and_then(|v| v.trim().parse::<u64>().ok())
                .unwrap_or(default)
        };
        let size =
            |name: &str, default: u64| usize::try_from(num(name, default)).unwrap_or(usize::MAX);
        let flag = |name: &str| var(name).is_some_and(|v| v.trim() == "1");
        let development = flag("EDGEHUB_DEV");
        let poll_max_limit = u32::try_from(num("POLL_MAX_LIMIT", 1000))
            .unwrap_or(1000)
            .max(1);
        let poll_default_limit = u32::try_from(num("POLL_DEFAULT_LIMIT", 100))
            .unwrap_or(100)
            .clamp(1, poll_max_limit);
        Config {
            max_data_bytes: size("MAX_DATA_BYTES", 64 * 1024),
            max_batch: size("MAX_BATCH", 100).max(1),
            max_body_bytes: size("MAX_BODY_BYTES", 1024 * 1024),
            max_data_depth: size("MAX_DATA_DEPTH", 32).min(MAX_DATA_DEPTH_CAP),
            max_page_bytes: size("MAX_PAGE_BYTES", 1024 * 1024).max(1024),
            retain_events: num("RETAIN_EVENTS", 1000).max(1),
            retain_seconds: num("RETAIN_SECONDS", 86_400).max(1),
            sse_max_seconds: num("SSE_MAX_SECONDS", 1800).max(1),
            heartbeat_seconds: num("HEARTBEAT_SECONDS", 15).max(1),
            slow_consumer_bytes: size("SLOW_CONSUMER_BYTES", 1024 * 1024).max(64 * 1024),
            query_token_max_seconds: i64::try_from(num("QUERY_TOKEN_MAX_SECONDS", 300))
                .unwrap_or(300),
            token_max_ttl_seconds: i64::try_from(num("TOKEN_MAX_TTL_SECONDS", 3600))
                .unwrap_or(3600),
            poll_default_limit,
            poll_max_limit,
            poll_cache_ms: i64::try_from(num("POLL_CACHE_MS", 250)).unwrap_or(250),
            max_stream_channels: size("MAX_STREAM_CHANNELS", DEFAULT_MAX_STREAM_CHANNELS as u64)
                .clamp(1, MAX_STREAM_CHANNELS_CAP),
            presence_max_members: size("PRESENCE_MAX_MEMBERS", 10_000),
            public_channels: patterns(&var("PUBLIC_CHANNELS").unwrap_or_default()),
            cors_origins: var("CORS_ORIGINS")
                .unwrap_or_default()
                .split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(str::to_string)
                .collect(),
            mercure: MercureConfig {
                channel: var("MERCURE_CHANNEL")
                    .and_then(|c| ChannelName::parse(c.trim()).ok())
                    .unwrap_or_else(ChannelName::mercure),
                anonymous: flag("MERCURE_ANONYMOUS"),
                audience: var("MERCURE_AUDIENCE")
                    .unwrap_or_default()
                    .trim()
                    .to_string(),
                issuer: var("MERCURE_ISSUER").unwrap_or_default().trim().to_string(),
            },
            development,
            fault_d1_writes: development && flag("EDGEHUB_FAULT_D1_WRITES"),
            fault_take_over: development && flag("EDGEHUB_FAULT_TAKE_OVER"),
            fault_take_over_starts: if development {
                num("EDGEHUB_FAULT_TAKE_OVER_STARTS", 0).min(100)
            } else {
                0
            },
            fault_d1_read_ms: if development {
                num("EDGEHUB_FAULT_D1_READ_MS", 0).min(10_000)
            } else {
                0
            },
        }
    }
}

/// The Mercure face's settings (its JWT keys are secrets, read apart).
#[derive(Debug, Clone)]
pub struct MercureConfig {
    /// The channel that is the Mercure hub (`MERCURE_CHANNEL`, default `mercure`).
    pub channel: ChannelName,
    /// Subscribers without a token get public updates (`MERCURE_ANONYMOUS=1`).
    pub anonymous: bool,
    /// The resource identifier a Mercure 1.0 token's `aud` must hold (`MERCURE_AUDIENCE`);
    /// empty: 1.0 tokens are refused.
    pub audience: String,
    /// The trusted `iss` of Mercure 1.0 tokens (`MERCURE_ISSUER`).
    pub issuer: String,
}

impl Config {
    /// What one publish (HTTP, or a WebSocket frame with `max_batch` 1) is held to.
    pub fn publish_limits(&self) -> PublishLimits {
        PublishLimits {
            max_data_bytes: self.max_data_bytes,
            max_batch: self.max_batch,
            max_depth: self.max_data_depth,
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        Config::from_lookup(|_| None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_follow_the_design_table() {
        let c = Config::default();
        assert_eq!(c.max_data_bytes, 65_536);
        assert_eq!(c.max_batch, 100);
        assert_eq!(c.max_body_bytes, 1_048_576);
        assert_eq!(c.max_data_depth, 32);
        assert_eq!(c.max_page_bytes, 1_048_576);
        assert_eq!(c.retain_events, 1000);
        assert_eq!(c.retain_seconds, 86_400);
        assert_eq!(c.sse_max_seconds, 1800);
        assert_eq!(c.heartbeat_seconds, 15);
        assert_eq!(c.presence_max_members, 10_000);
        assert_eq!(c.slow_consumer_bytes, 1_048_576);
        assert_eq!(c.query_token_max_seconds, 300);
        assert_eq!((c.poll_default_limit, c.poll_max_limit), (100, 1000));
        assert_eq!(c.poll_cache_ms, 250);
        assert!(c.public_channels.is_empty());
        assert!(!c.development);
        assert!(!c.fault_d1_writes && !c.fault_take_over);
        assert_eq!(c.fault_take_over_starts, 0);
        assert_eq!(c.mercure.channel.as_str(), "mercure");
        assert!(!c.mercure.anonymous);
        assert!(c.mercure.audience.is_empty() && c.mercure.issuer.is_empty());
    }

    #[test]
    fn the_fault_switches_work_only_in_development() {
        let faults = |k: &str| {
            matches!(
                k,
                "EDGEHUB_FAULT_D1_WRITES"
                    | "EDGEHUB_FAULT_TAKE_OVER"
                    | "EDGEHUB_FAULT_TAKE_OVER_STARTS"
            )
        };
        let prod = Config::from_lookup(|k| faults(k).then(|| "1".into()));
        assert!(!prod.fault_d1_writes && !prod.fault_take_over);
        assert_eq!(prod.fault_take_over_starts, 0);
        let dev = Config::from_lookup(|k| (faults(k) || k == "EDGEHUB_DEV").then(|| "1".into()));
        assert!(dev.fault_d1_writes && dev.fault_take_over);
        assert_eq!(dev.fault_take_over_starts, 1);
        let many = Config::from_lookup(|k| match k {
            "EDGEHUB_DEV" => Some("1".into()),
            "EDGEHUB_FAULT_TAKE_OVER_STARTS" => Some("5000".into()),
            _ => None,
        });
        assert_eq!(many.fault_take_over_starts, 100);
    }

    #[test]
    fn values_are_read_and_junk_falls_back() {
        let c = Config::from_lookup(|k| match k {
            "MAX_BATCH" => Some("7".into()),
            "MAX_DATA_BYTES" => Some("lots".into()),
            "PUBLIC_CHANNELS" => Some("public:*, demo".into()),
            "POLL_DEFAULT_LIMIT" => Some("5000".into()),
            "MAX_DATA_DEPTH" => Some("1000".into()),
            _ => None,
        });
        assert_eq!(c.max_batch, 7);
        assert_eq!(c.max_data_bytes, 65_536);
        assert_eq!(
            c.poll_default_limit, 1000,
            "default limit is clamped to the max"
        );
        assert_eq!(c.max_data_depth, MAX_DATA_DEPTH_CAP, "depth is capped");
        let public = ChannelName::parse("public:x").ok();
        assert!(public.is_some_and(|p| c.public_channels.iter().any(|pat| pat.matches(&p))));
    }
}
