//! Logging setup, and one log line plus metrics per RPC (`rpc`). Log lines carry
//! ids, names and counts; never a URL, a signature or a secret (DESIGN.md,
//! invariant 5).
//!
//! Format: `text` (human, coloured only on a terminal) or `json` (one object per
//! line, for collectors); `auto` picks text on a terminal and JSON otherwise.
//! Level: `--log-level` (an EnvFilter directive such as `info` or
//! `presignd=debug,sqlx=warn`), else `RUST_LOG`, else `info`.

pub mod rpc;

use std::io::IsTerminal;
use tracing_subscriber::EnvFilter;

#[derive(
    Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Auto,
    Json,
    Text,
}

/// Installs the process's subscriber (once; later calls change nothing).
/// `level` is a filter directive; a malformed one is an error naming it.
pub fn init(format: LogFormat, level: Option<&str>) -> anyhow::Result<()> {
    let filter = match level {
        Some(l) => EnvFilter::try_new(l)
            .map_err(|e| anyhow::anyhow!("--log-level {l:?} is not a valid filter: {e}"))?,
        None => EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
    };
    let terminal = std::io::stderr().is_terminal();
    let json = match format {
        LogFormat::Auto => !terminal,
        LogFormat::Json => true,
        LogFormat::Text => false,
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = if json {
        builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_span_list(false)
            .try_init()
    } else {
        builder.with_ansi(terminal).try_init()
    };
    Ok(())
}

/// Logging for commands run before any setting is read (and for tests):
/// `PRESIGND_LOG_FORMAT` / `PRESIGND_LOG_LEVEL` if set, else auto and RUST_LOG.
pub fn init_from_env() {
    use clap::ValueEnum;
    let format = std::env::var("PRESIGND_LOG_FORMAT")
        .ok()
        .and_then(|f| LogFormat::from_str(&f, true).ok())
        .unwrap_or(LogFormat::Auto);
    let level = std::env::var("PRESIGND_LOG_LEVEL").ok();
    if init(format, level.as_deref()).is_err() {
        let _ = init(format, None);
    }
}
