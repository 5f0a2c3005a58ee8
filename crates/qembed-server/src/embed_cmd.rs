//! `qembed embed`: batch embedding of JSON Lines without a server.

use std::io::{BufRead, BufWriter, Write};
use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::Args;
use qembed_engine::{postprocess, resolve_model, Embedder, Input};
use serde::{Deserialize, Serialize};

use crate::args::ModelArgs;

#[derive(Args)]
pub struct EmbedArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// Task instruction applied to every input that names none (queries; omit for documents).
    #[arg(long)]
    instruction: Option<String>,
    /// Matryoshka output size, 32 to the model's hidden size.
    #[arg(long)]
    dimensions: Option<usize>,
    /// Refuse over-long inputs instead of truncating them.
    #[arg(long)]
    no_truncate: bool,
    /// Output the pooled hidden state without L2 normalisation.
    #[arg(long)]
    raw: bool,
    /// JSON Lines input (default: stdin).
    #[arg(long)]
    input: Option<PathBuf>,
}

/// One input line: a JSON string, or an object with `text` and optional `instruction`.
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
    instruction: Option<String>,
}

#[derive(Serialize)]
struct OutputLine<'a> {
    index: usize,
    embedding: &'a [f32],
    tokens: usize,
}

pub fn run(args: EmbedArgs) -> Result<()> {
    // Read and parse everything first: a bad line fails the run before any model work.
    let parsed = parse_lines(&read_lines(args.input.as_deref())?)?;

    let dir = resolve_model(&args.model.model_path)?;
    let started = std::time::Instant::now();
    let embedder = Embedder::load(&dir, &args.model.load_options())
        .with_context(|| format!("loading model from {}", dir.display()))?;
    embedder.check_dimensions(args.dimensions)?;
    // Which kernel the vectors come from, for `QEMBED_LOG=info` (benchmarks record it).
    tracing::info!(
        model = %dir.display(),
        quantize = %embedder.model().quantize(),
        cpu_kernel = embedder.model().cpu_kernel().unwrap_or("none"),
        secs = started.elapsed().as_secs_f64(),
        "model loaded"
    );

    let mut ids = Vec::with_capacity(parsed.len());
    for line in &parsed {
        let input = Input {
            text: &line.text,
            instruction: line.instruction.as_deref().or(args.instruction.as_deref()),
        };
        let tokens = embedder
            .tokenize(input, !args.no_truncate)
            .with_context(|| format!("line {}", line.line_no))?;
        ids.push(tokens);
    }
    let raw = embedder.embed_ids(&ids)?;

    let stdout = std::io::stdout();
    let mut out = BufWriter::new(stdout.lock());
    for (index, (vector, tokens)) in raw.iter().zip(&ids).enumerate() {
        let embedding = postprocess::finish(vector, args.dimensions, !args.raw)?;
        let line = OutputLine {
            index,
            embedding: &embedding,
            tokens: tokens.len(),
        };
        serde_json::to_writer(&mut out, &line)?;
        out.write_all(b"\n")?;
    }
    out.flush()?;
    Ok(())
}

/// The lines of `input` (stdin when `None`), each checked to be UTF-8.
pub fn read_lines(input: Option<&std::path::Path>) -> Result<Vec<String>> {
    let reader: Box<dyn BufRead> = match input {
        Some(p) => Box::new(std::io::BufReader::new(
            std::fs::File::open(p).with_context(|| format!("opening {}", p.display()))?,
        )),
        None => Box::new(std::io::stdin().lock()),
    };
    let mut lines = Vec::new();
    for (i, line) in reader.lines().enumerate() {
        lines.push(line.with_context(|| format!("line {}: not valid UTF-8 text", i + 1))?);
    }
    Ok(lines)
}

/// An input line that parsed, with its 1-based line number.
struct ParsedLine {
    line_no: usize,
    text: String,
    instruction: Option<String>,
}

/// Parses the non-blank lines; the first bad one fails with its line number.
fn parse_lines(lines: &[String]) -> Result<Vec<ParsedLine>> {
    let mut parsed = Vec::new();
    for (i, line) in lines.iter().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let line_no = i + 1;
        let value: Line = serde_json::from_str(line).map_err(|e| {
            anyhow::anyhow!(
                "line {line_no}: expected a JSON string or {{\"text\": ..., \"instruction\": ...}}: {e}"
            )
        })?;
        let (text, instruction) = match value {
            Line::Text(t) => (t, None),
            Line::Object(o) => (o.text, o.instruction),
        };
        if text.is_empty() {
            bail!("line {line_no}: text is empty");
        }
        parsed.push(ParsedLine {
            line_no,
            text,
            instruction,
        });
    }
    if parsed.is_empty() {
        bail!("no input: expected one JSON string or object per line");
    }
    Ok(parsed)
}
