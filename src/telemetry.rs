//! Logging setup: `tracing` to stderr, filtered by `--log` (or `RECOVERD_LOG`), else `RUST_LOG`,
//! else the command's default; JSON lines behind a flag.

use tracing_subscriber::EnvFilter;

pub fn init(filter: Option<&str>, default_filter: &str, json: bool) {
    let filter = match filter {
        Some(f) => EnvFilter::new(f),
        None => {
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_filter))
        }
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = if json {
        builder.json().try_init()
    } else {
        builder.try_init()
    };
}
