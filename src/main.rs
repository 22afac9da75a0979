//! The `recoverd` binary: everything lives in the library; see `recoverd --help`.

#[tokio::main]
async fn main() -> std::process::ExitCode {
    recoverd::cli::main().await
}
