//! The wire contract, pure: the route table, names, the event envelope and publish validation,
//! cursors and request-line helpers, SSE framing and WebSocket messages. Nothing here touches the
//! runtime; see `docs/API.md`.

pub mod bridge;
pub mod call;
pub mod cors;
pub mod envelope;
pub mod filter;
pub mod json;
pub mod many;
pub mod mercure;
pub mod names;
pub mod presence;
pub mod publish;
pub mod query;
pub mod route;
pub mod sse;
pub mod stream;
pub mod topics;
pub mod update;
pub mod uritemplate;
pub mod ws;

pub use names::{ChannelName, EventType};
pub use route::{route, Route};
