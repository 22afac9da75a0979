//! Logging setup: `tracing` to stderr, filtered by `--log` (or `RECOVERD_LOG`), else `RUST_LOG`,
//! else the command's default; JSON lines behind a flag. Colour only on a terminal, and never
//! when `NO_COLOR` is set (<https://no-color.org>).

use std::io::IsTerminal as _;

use tracing_subscriber::EnvFilter;

pub fn init(filter: Option<&str>, default_filter: &str, json: bool) {
    let filter = match filter {
        Some(f) => EnvFilter::new(f),
        None => EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_filter)),
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(colour(std::io::stderr().is_terminal()));
    let _ = if json {
        builder.json().try_init()
    } else {
        builder.try_init()
    };
}

/// Whether to colour output going to a terminal (`tty`) or not: never off a terminal, never
/// with `NO_COLOR` set to anything but the empty string.
pub fn colour(tty: bool) -> bool {
    tty && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
}
