//! The load tester and the protocol client the tests use: one client, two users.

pub mod client;
pub mod clip;
pub mod error;
pub mod feedback;
mod negotiate;
pub mod payload;
pub mod peer;
pub mod publish;
pub mod received;
pub mod report;
pub mod run;
pub mod seen;
pub mod senders;
pub mod wire;

pub use error::{ClientError, LoadError};
pub use run::{run, LoadConfig};
