//! The load tester and the protocol client the tests use: one client, two users.

pub mod client;
pub mod payload;
