//! edgehub: a real-time pub/sub hub for Cloudflare Workers.
//!
//! - Publish: `POST /channels/{c}/events` → the Worker validates → the channel's `ChannelHub`
//!   Durable Object assigns ids, stores the events in its SQLite log, answers, then mirrors them
//!   to D1 in id order.
//! - Poll: `GET /poll/{c}` → the Worker reads the D1 mirror; the Durable Object is never woken.
//!
//! Modules: `protocol` (wire contract), `auth` (tokens and rights), `channel` (one channel's rules:
//! cursors, replay and gaps), `error`, `config`: all pure and tested natively. `runtime` is the only
//! code that names the `worker` crate, and it builds only for `wasm32`.

pub mod auth;
pub mod channel;
pub mod config;
pub mod error;
pub mod protocol;

#[cfg(target_arch = "wasm32")]
mod runtime;

pub use error::Error;
