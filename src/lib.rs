//! certkeeper: an ACME certificate renewal agent.
//!
//! # Layout
//! Each responsibility lives in one file:
//!
//! - [`cli`]: the command line (clap derive); `main.rs` maps results to exit codes.
//! - [`config`]: TOML → validated [`config::Config`]; every error names file, line and key.
//! - [`check`]: `certkeeper check`'s host checks (directories, programs, users, ca_bundle, strict_modes).
//! - [`inventory`]: what is on disk: PEM parsing, key/cert match, names, validity.
//! - [`policy`]: pure renewal decision (threshold, jitter, ARI) and the retry ladder.
//! - [`acme`]: the only module that uses instant-acme: account, ARI, order flow.
//! - [`challenge`]: HTTP-01 responder and webroot, DNS-01 hook; cleanup on every path.
//! - [`keys`]: new private keys and CSRs (rcgen).
//! - [`fileset`]: the files one certificate is made of, listed once.
//! - [`fsx`]: bounded reads of regular files only, atomic writes, stale temp cleanup.
//! - [`store`]: staging, crash-safe install, roll-forward, `.prev` backups, file modes.
//! - [`hooks`]: running argv hooks with timeout, env, JSON stdin and captured output.
//! - [`owner`]: ownership markers next to managed files, so two `state_dir`s never share them.
//! - [`state`]: what is remembered between runs (retry ladder, outcomes, ARI) and the lock.
//! - [`budget`]: the per-CA order budget and the per-certificate circuit breaker (pure).
//! - [`pass`]: one renewal pass; each certificate's pipeline as small named steps.
//! - [`report`]: `status`, `--dry-run` lines and metrics as pure views over gathered facts.
//! - [`daemon`]: `certkeeper run`: schedule, file watch, signals, metrics server.
//! - [`fault`]: named crash points for the fault-injection tests (debug builds only).
//! - [`clock`]: the injectable wall clock (system, tokio-driven for tests, manual).
//! - [`timefmt`]: how times and durations are shown (RFC 3339, `2d3h`).

pub mod acme;
pub mod alert;
pub mod budget;
pub mod challenge;
pub mod check;
pub mod cli;
pub mod clock;
pub mod config;
pub mod daemon;
pub mod fault;
pub mod fileset;
pub mod fleet;
pub mod fsx;
pub mod hooks;
pub mod inventory;
pub mod keys;

pub mod owner;
pub mod pass;
pub mod policy;
pub mod report;
pub mod seal;
pub mod state;
pub mod store;
pub mod timefmt;
pub mod verify;
pub mod watched;

/// Installs aws-lc-rs as the process-wide rustls provider. Called once at start-up: with
/// more than one provider in a dependency graph rustls panics unless one is chosen.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
}
