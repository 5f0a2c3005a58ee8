//! `qembed rerank`: score documents against one query without a server.

use std::io::{BufWriter, Write};
use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::Args;
use qembed_engine::rerank::sigmoid;
use qembed_engine::{resolve_model, Embedder, LoadOptions, Pair, Task};
use serde::{Deserialize, Serialize};

use crate::args::ModelArgs;
use crate::embed_cmd::read_lines;

#[derive(Args)]
pub struct RerankArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// The query every document is judged against.
    #[arg(long)]
    query: String,
    /// The task (default: the model card's web-search instruction).
    #[arg(long)]
    instruction: Option<String>,
    /// Refuse over-long pairs instead of cutting the end of the document.
    #[arg(long)]
    no_truncate: bool,
    /// Output `l_yes - l_no` instead of the relevance score in (0, 1).
    #[arg(long)]
    raw: bool,
    /// JSON Lines of documents (default: stdin).
    #[arg(long)]
    input: Option<PathBuf>,
}

/// One document line: a JSON string, or an object with `text`.
#[derive(Deserialize)]
#[serde(untagged)]
enum Line {
    Text(String),
    Object(LineObject),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LineObject {
    text: String,
}

#[derive(Serialize)]
struct OutputLine {
    index: usize,
    score: f32,
    tokens: usize,
}

pub fn run(args: RerankArgs) -> Result<()> {
    if args.query.is_empty() {
        bail!("--query must not be empty");
    }
    // Read and parse everything first: a bad line fails the run before any model work.
    let documents = parse_lines(&read_lines(args.input.as_deref())?)?;
    let dir = resolve_model(&args.model.model_path)?;
    let opts = LoadOptions {
        task: Task::Rerank,
        ..args.model.load_options()
    };
    let reranker = Embedder::load(&dir, &opts)
        .with_context(|| format!("loading reranker from {}", dir.display()))?;
    let mut ids = Vec::with_capacity(documents.len());
    for (line_no, document) in &documents {
        let pair = Pair {
            query: &args.query,
            document,
            instruction: args.instruction.as_deref(),
        };
        ids.push(
            reranker
                .tokenize_pair(pair, !args.no_truncate)
                .with_context(|| format!("line {line_no}"))?,
        );
    }
    let hidden = reranker.embed_ids(&ids)?;
    let stdout = std::io::stdout();
    let mut out = BufWriter::new(stdout.lock());
    for (index, (h, tokens)) in hidden.iter().zip(&ids).enumerate() {
        let logit = reranker.logit(h)?;
        let line = OutputLine {
            index,
            score: if args.raw { logit } else { sigmoid(logit) },
            tokens: tokens.len(),
        };
        serde_json::to_writer(&mut out, &line)?;
        out.write_all(b"\n")?;
    }
    out.flush()?;
    Ok(())
}

/// The non-blank lines as (1-based line number, document); the first bad one fails.
fn parse_lines(lines: &[String]) -> Result<Vec<(usize, String)>> {
    let mut documents = Vec::new();
    for (i, line) in lines.iter().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let line_no = i + 1;
        let value: Line = serde_json::from_str(line).map_err(|e| {
            anyhow::anyhow!("line {line_no}: expected a JSON string or {{\"text\": ...}}: {e}")
        })?;
        let text = match value {
            Line::Text(t) => t,
            Line::Object(o) => o.text,
        };
        if text.is_empty() {
            bail!("line {line_no}: document is empty");
        }
        documents.push((line_no, text));
    }
    if documents.is_empty() {
        bail!("no documents: expected one JSON string or object per line");
    }
    Ok(documents)
}
