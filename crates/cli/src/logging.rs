//! Structured logs on stderr (or, for the demo, in a file); `RUST_LOG` filters (default `info`).

use std::io::IsTerminal as _;
use std::path::Path;

use anyhow::Context as _;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::MakeWriter;

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

pub fn init(format: LogFormat) {
    // Colours only for a person at a terminal, never into files or pipes.
    install(format, std::io::stderr().is_terminal(), std::io::stderr);
}

/// Sends every log line to `path` (appended, created if missing) instead of the terminal.
pub fn init_to_file(format: LogFormat, path: &Path) -> anyhow::Result<()> {
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .with_context(|| format!("cannot open the log file {}", path.display()))?;
    install(format, false, std::sync::Mutex::new(file));
    Ok(())
}

fn install<W>(format: LogFormat, ansi: bool, writer: W)
where
    W: for<'writer> MakeWriter<'writer> + Send + Sync + 'static,
{
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(writer);
    // Ignoring the error is right: it only fails if a subscriber is already set.
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
}
