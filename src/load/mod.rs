//! The load tester and the protocol client the tests use: one client, two users.
//!
//! An independent client of the server: it imports no server module (only the leaf utilities
//! `metrics` and `ratelimit`), and speaks the protocol as `docs/protocol.md` writes it, so the
//! two sides of every test are separate implementations and a shared bug cannot hide itself.

pub mod bottleneck;
pub mod client;
pub mod clip;
pub mod config;
pub mod error;
mod expect;
pub mod feedback;
pub mod html;
mod negotiate;
pub mod payload;
pub mod peer;
mod probe;
mod progress;
pub mod publish;
pub mod received;
pub mod report;
pub mod run;
pub mod seen;
pub mod senders;
pub mod wire;

pub use config::LoadConfig;
pub use error::{ClientError, LoadError};
pub use run::run;
