//! `qembed`: Qwen3-Embedding and Qwen3-Reranker from the command line.

use clap::Parser;
use qembed_server::{bench_cmd, check_cmd, embed_cmd, rerank_cmd, serve, Cli, Command};

fn main() -> std::process::ExitCode {
    // Before any thread exists: forward passes reuse freed activation memory.
    qembed_model::retain_freed_memory();
    let cli = Cli::parse();
    let default_level = match cli.command {
        Command::Serve(_) => "info",
        // Quiet, except for hub download progress (a first run may fetch gigabytes).
        Command::Embed(_) | Command::Rerank(_) => "warn,qembed::hub=info",
        Command::Check(_) | Command::Bench(_) => "warn",
    };
    init_logging(cli.json_logs, default_level);
    let result = match cli.command {
        Command::Embed(args) => embed_cmd::run(args),
        Command::Rerank(args) => rerank_cmd::run(args),
        Command::Check(args) => check_cmd::run(args),
        Command::Bench(args) => bench_cmd::run(args),
        Command::Serve(args) => serve::run(args),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn init_logging(json: bool, default_level: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("QEMBED_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_level));
    // Colour only on a terminal (a log file or journald gets plain text), and never
    // under NO_COLOR.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr())
        && std::env::var_os("NO_COLOR").is_none();
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(std::io::stderr);
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
}
