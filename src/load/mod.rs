//! The load tester and the protocol client the tests use.
