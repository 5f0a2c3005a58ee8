//! `qembed-load`: drive an OpenAI-compatible /v1/embeddings endpoint, or one of
//! qembed's rerank routes, and report QPS, tokens/s, latency percentiles and error rate.

use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::Parser;
use qembed_loadgen::{run, Api, Lengths, LoadConfig, RERANK_ROUTES};

#[derive(Parser)]
#[command(
    name = "qembed-load",
    about = "Bounded load generator for /v1/embeddings and the rerank routes"
)]
struct Args {
    /// Base URL of the server (`--route` is appended).
    #[arg(long, default_value = "http://127.0.0.1:30000")]
    url: String,
    /// The route, which sets the request shape: /v1/embeddings, /embeddings, or a
    /// rerank route (/v1/rerank, /v2/rerank, /rerank, /v1/score, /score: one query
    /// against `--inputs` documents).
    #[arg(long, default_value = "/v1/embeddings")]
    route: String,
    /// Words in a rerank request's query.
    #[arg(long, default_value_t = 8)]
    query_words: usize,
    #[arg(long)]
    model: Option<String>,
    #[arg(long, env = "QEMBED_API_KEY", hide_env_values = true)]
    api_key: Option<String>,
    /// Concurrent clients (closed loop) or most requests in flight (open loop).
    #[arg(long, default_value_t = 8)]
    concurrency: usize,
    /// Open-loop arrival rate, requests/s (default: closed loop).
    #[arg(long)]
    rate: Option<f64>,
    /// Stop after this many requests...
    #[arg(long, default_value_t = 1000)]
    requests: usize,
    /// ...or after this many seconds, whichever comes first.
    #[arg(long, default_value_t = 30.0)]
    duration: f64,
    /// Inputs per request (documents, for a rerank route).
    #[arg(long, default_value_t = 1)]
    inputs: usize,
    /// Words per input: `N`, or `LO:HI` for uniform lengths.
    #[arg(long, default_value = "128")]
    words: String,
    /// A file of texts, one per line, used instead of generated ones.
    #[arg(long)]
    texts: Option<std::path::PathBuf>,
    #[arg(long)]
    dimensions: Option<usize>,
    /// Write the report as JSON here (also printed as a table).
    #[arg(long)]
    json: Option<std::path::PathBuf>,
}

fn lengths(args: &Args) -> Result<Lengths> {
    if let Some(path) = &args.texts {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        let lines: Vec<String> = text
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(str::to_string)
            .collect();
        if lines.is_empty() {
            bail!("{} has no texts", path.display());
        }
        return Ok(Lengths::Texts(lines));
    }
    Ok(match args.words.split_once(':') {
        Some((lo, hi)) => Lengths::Uniform(lo.parse()?, hi.parse()?),
        None => Lengths::Fixed(args.words.parse()?),
    })
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    if !(args.duration > 0.0 && args.duration.is_finite()) {
        bail!("--duration must be a positive number of seconds");
    }
    let Some(api) = Api::from_route(&args.route) else {
        bail!(
            "--route {}: not a route qembed serves requests on (/v1/embeddings, /embeddings, {})",
            args.route,
            RERANK_ROUTES.join(", ")
        );
    };
    if matches!(api, Api::Rerank(_)) && args.dimensions.is_some() {
        bail!(
            "--dimensions is for embeddings; {} scores documents",
            args.route
        );
    }
    let cfg = LoadConfig {
        url: format!("{}{}", args.url.trim_end_matches('/'), args.route),
        api,
        query_words: args.query_words,
        model: args.model.clone(),
        api_key: args.api_key.clone(),
        concurrency: args.concurrency,
        rate: args.rate,
        max_requests: args.requests,
        max_duration: Duration::from_secs_f64(args.duration),
        inputs_per_request: args.inputs,
        lengths: lengths(&args)?,
        dimensions: args.dimensions,
        ..LoadConfig::default()
    };
    let (report, _) = run(&cfg).await?;
    println!("{}", report.table());
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_string_pretty(&report)?)?;
    }
    Ok(())
}
