//! `qembed`: Qwen3-Embedding from the command line.

mod api;
mod embed_cmd;
mod error;
mod metrics;
mod routes;
mod serve;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "qembed", version, about = "Qwen3-Embedding inference")]
struct Cli {
    /// Log as JSON lines instead of text (to stderr).
    #[arg(long, global = true, env = "QEMBED_JSON_LOGS")]
    json_logs: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Embed JSON Lines from stdin or a file; one JSON line out per input, in order.
    Embed(embed_cmd::EmbedArgs),
    /// Serve OpenAI-compatible /v1/embeddings over HTTP.
    Serve(serve::ServeArgs),
}

fn main() -> std::process::ExitCode {
    // Before any thread exists: forward passes reuse freed activation memory.
    qembed_model::retain_freed_memory();
    let cli = Cli::parse();
    let default_level = match cli.command {
        Command::Serve(_) => "info",
        Command::Embed(_) => "warn",
    };
    init_logging(cli.json_logs, default_level);
    let result = match cli.command {
        Command::Embed(args) => embed_cmd::run(args),
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
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
}
