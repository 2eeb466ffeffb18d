//! Integration tests live in `tests/tests/`, one file per feature, sharing
//! `tests/tests/harness/mod.rs`. They start the real `gateway` binary and real upstream servers
//! on ports the OS assigns, and talk to them over real sockets.
