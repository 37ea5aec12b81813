//! The wire contract, pure: the route table, names, the event envelope and publish validation,
//! cursors and request-line helpers. Nothing here touches the runtime; see `docs/API.md`.

pub mod envelope;
pub mod names;
pub mod publish;
pub mod query;
pub mod route;

pub use names::{ChannelName, EventType};
pub use route::{route, Route};
