//! `qembed check`: runs the repository's fixture checkpoints on a device and dtype and
//! compares them with transformers' reference outputs, so that an operator can tell
//! that these kernels and this build give the reference results on this machine before
//! serving a real model on it. The bounds are the parity suites' own
//! (`qembed_engine::parity`), so a device that passes here passes CI's gates.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};
use clap::Args;
use qembed_engine::parity::{self, Gate, Miss, Quality};
use qembed_engine::rerank::sigmoid;
use qembed_engine::{
    Backend, DType, DTypeChoice, DeviceSpec, Embedder, LoadOptions, Pair, Quantize, Task,
};
use qembed_model::PackedBatch;
use serde::{Deserialize, Serialize};

#[derive(Args)]
pub struct CheckArgs {
    /// Where the fixtures run: cpu, cuda or cuda:N (needs a build with `--features cuda`).
    #[arg(long, env = "QEMBED_DEVICE", default_value = "cpu")]
    device: DeviceSpec,
    /// Compute dtype: auto (f32 on CPU, f16 on CUDA), f32, f16, bf16.
    #[arg(long, env = "QEMBED_DTYPE", default_value = "auto")]
    dtype: DTypeChoice,
    /// Check the fixtures quantized: none, or int8 (CPU only; auto then loads bf16),
    /// against the int8 gates (`qembed_gates::int8_gate`, `int8_rerank_gate`).
    #[arg(long, env = "QEMBED_QUANTIZE", default_value = "none")]
    quantize: Quantize,
    /// The repository's `models/` directory of fixture checkpoints (`qwen3-tiny-*` and
    /// `qwen3-rerank-*`, each with the `reference.json` transformers produced for it).
    #[arg(long, default_value = "models")]
    fixtures: PathBuf,
    /// Split each fixture over N ranks (N consecutive GPUs from --device, NCCL's
    /// all-reduce; on CPU the ranks share the cores). A fixture whose heads or
    /// intermediate size N does not divide is skipped, and its row says so.
    #[arg(long, default_value_t = 1)]
    tensor_parallel: usize,
    /// Print one JSON line per fixture instead of the table.
    #[arg(long)]
    json: bool,
}

/// Where and how the fixtures run.
#[derive(Debug, Clone, Copy)]
struct On {
    device: DeviceSpec,
    dtype: DType,
    quantize: Quantize,
    tensor_parallel: usize,
}

/// What a fixture's directory name says it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Embed,
    Rerank,
}

/// One line of the report: a fixture's worst result against its reference.
#[derive(Debug, Serialize)]
struct Row {
    fixture: String,
    task: &'static str,
    dtype: String,
    /// `none` or `int8` (`--quantize`).
    quantize: String,
    kernel: String,
    cases: usize,
    /// Worst cosine to the reference (embeddings only).
    worst_cosine: Option<f64>,
    /// Worst |got - reference|: a vector component, or a reranker score.
    worst_abs: Option<f64>,
    /// Worst cosine of a case alone against the same case in the batch (embeddings).
    alone_vs_batch_cosine: Option<f64>,
    gate: String,
    ok: bool,
    /// Why the row failed, when it did.
    problem: Option<String>,
    /// Why the fixture was not run (a tensor-parallel size it cannot be split by).
    skipped: Option<String>,
}

pub fn run(args: CheckArgs) -> Result<()> {
    if args.tensor_parallel == 0 {
        bail!("--tensor-parallel must be at least 1");
    }
    let dtype = args.dtype.resolve_for(args.device, args.quantize);
    let fixtures = discover(&args.fixtures)?;
    let mut rows = Vec::with_capacity(fixtures.len());
    let on = On {
        device: args.device,
        dtype,
        quantize: args.quantize,
        tensor_parallel: args.tensor_parallel,
    };
    for (name, kind, dir) in &fixtures {
        let result = match unsplittable(dir, on.tensor_parallel) {
            Ok(Some(why)) => Ok(row_without_results(name, *kind, on, None, Some(why))),
            Err(e) => Err(e),
            Ok(None) => match kind {
                Kind::Embed => check_embedding(name, dir, on),
                Kind::Rerank => check_reranker(name, dir, on),
            },
        };
        rows.push(result.unwrap_or_else(|e| {
            row_without_results(name, *kind, on, Some(format!("{e:#}")), None)
        }));
    }
    print_rows(&rows, args.json)?;
    // A GPU that cannot run the kernel checks at all (it would not open, say) is
    // reported after the fixtures' own failures, which name the cause per fixture.
    let (kernels, kernel_error) = match kernel_checks(args.device) {
        Ok(k) => (k, None),
        Err(e) => (Vec::new(), Some(e)),
    };
    print_kernel_rows(&kernels, args.json)?;
    let kernel_misses = kernels.iter().filter(|k| !k.ok).count();
    if rows.iter().all(|r| r.skipped.is_some()) {
        bail!(
            "no fixture in {} can be split over {} ranks",
            args.fixtures.display(),
            args.tensor_parallel
        );
    }
    let failed: Vec<&str> = rows
        .iter()
        .filter(|r| !r.ok)
        .map(|r| r.fixture.as_str())
        .collect();
    if !failed.is_empty() {
        bail!(
            "{} of {} fixtures miss their reference on {} in {}: {}",
            failed.len(),
            rows.len(),
            args.device,
            dtype_name(dtype),
            failed.join(", ")
        );
    }
    if let Some(e) = kernel_error {
        return Err(e);
    }
    if kernel_misses > 0 {
        bail!(
            "{kernel_misses} of {} kernel checks miss their CPU reference on {}",
            kernels.len(),
            args.device
        );
    }
    Ok(())
}

/// One of our CUDA kernels on one dtype and shape against candle's CPU ops
/// (`qembed_model::cuda::selftest`).
#[derive(Debug, Serialize)]
struct KernelRow {
    kernel_check: &'static str,
    dtype: String,
    case: String,
    max_diff: f64,
    tolerance: f64,
    ok: bool,
    /// Why the case did not run on this GPU.
    skipped: Option<String>,
}

/// The fused kernels' checks on a GPU device; none on the CPU, whose forward pass
/// does not use them (the fixtures above cover its kernels).
fn kernel_checks(device: DeviceSpec) -> Result<Vec<KernelRow>> {
    if device.is_cpu() {
        return Ok(Vec::new());
    }
    #[cfg(feature = "cuda")]
    {
        let dev = device.device(0)?;
        let checks = qembed_model::cuda::selftest::run(&dev)
            .with_context(|| format!("running the kernel checks on {device}"))?;
        Ok(checks
            .into_iter()
            .map(|c| KernelRow {
                kernel_check: c.kernel,
                dtype: dtype_name(c.dtype),
                ok: c.ok(),
                case: c.case,
                max_diff: c.max_diff as f64,
                tolerance: c.tolerance as f64,
                skipped: c.skipped,
            })
            .collect())
    }
    #[cfg(not(feature = "cuda"))]
    {
        // Unreachable in practice: opening a CUDA device already failed above.
        bail!("{device}: this binary was built without CUDA support")
    }
}

fn print_kernel_rows(rows: &[KernelRow], json: bool) -> Result<()> {
    if rows.is_empty() {
        return Ok(());
    }
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    if json {
        return write_json_lines(&mut out, rows);
    }
    writeln!(
        out,
        "\n{:16}  {:5}  {:>9}  {:>9}  {:50}  result",
        "kernel", "dtype", "max |d|", "tolerance", "case"
    )?;
    for r in rows {
        writeln!(
            out,
            "{:16}  {:5}  {:>9.2e}  {:>9.1e}  {:50}  {}",
            r.kernel_check,
            r.dtype,
            r.max_diff,
            r.tolerance,
            r.case,
            match (&r.skipped, r.ok) {
                (Some(why), _) => format!("skipped: {why}"),
                (None, true) => "ok".into(),
                (None, false) => "FAIL".into(),
            }
        )?;
    }
    out.flush()?;
    Ok(())
}

/// Why `dir`'s model cannot be split over `ranks` (the dimensions the model shards,
/// [`Qwen3Config::sharded_dims`](qembed_model::Qwen3Config::sharded_dims)), or `None`
/// when it can.
fn unsplittable(dir: &Path, ranks: usize) -> Result<Option<String>> {
    if ranks == 1 {
        return Ok(None);
    }
    let config = qembed_model::Qwen3Config::from_file(&dir.join("config.json"))
        .with_context(|| format!("reading {}", dir.join("config.json").display()))?;
    Ok(config
        .sharded_dims()
        .iter()
        .find(|(_, n)| !n.is_multiple_of(ranks))
        .map(|(what, n)| format!("{ranks} ranks do not divide its {what} ({n})")))
}

/// The row of a fixture with no results: one that was skipped (`skipped`), or that
/// failed before any case ran (`problem`).
fn row_without_results(
    name: &str,
    kind: Kind,
    on: On,
    problem: Option<String>,
    skipped: Option<String>,
) -> Row {
    Row {
        fixture: name.into(),
        task: match kind {
            Kind::Embed => "embed",
            Kind::Rerank => "rerank",
        },
        dtype: dtype_name(on.dtype),
        quantize: on.quantize.to_string(),
        kernel: "-".into(),
        cases: 0,
        worst_cosine: None,
        worst_abs: None,
        alone_vs_batch_cosine: None,
        gate: "-".into(),
        ok: problem.is_none(),
        problem,
        skipped,
    }
}

/// The fixtures in `dir`, sorted by name: `qwen3-tiny-*` embedding checkpoints and
/// `qwen3-rerank-*` reranker checkpoints. Finding none is an error (the wrong
/// directory would otherwise pass).
fn discover(dir: &Path) -> Result<Vec<(String, Kind, PathBuf)>> {
    let entries = std::fs::read_dir(dir).with_context(|| {
        format!(
            "reading fixture directory {} (pass the repository's models/ with --fixtures)",
            dir.display()
        )
    })?;
    let mut found = BTreeMap::new();
    for entry in entries {
        let entry = entry.with_context(|| format!("reading {}", dir.display()))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let kind = if name.starts_with("qwen3-tiny-") {
            Kind::Embed
        } else if name.starts_with("qwen3-rerank-") {
            Kind::Rerank
        } else {
            continue;
        };
        if entry.path().is_dir() {
            found.insert(name, (kind, entry.path()));
        }
    }
    if found.is_empty() {
        bail!(
            "no fixtures (qwen3-tiny-*, qwen3-rerank-*) in {}; pass the repository's models/ with --fixtures",
            dir.display()
        );
    }
    Ok(found
        .into_iter()
        .map(|(name, (kind, path))| (name, kind, path))
        .collect())
}

/// An embedding fixture's reference: what transformers produced per case.
#[derive(Deserialize)]
struct EmbedReference {
    cases: Vec<EmbedCase>,
}

#[derive(Deserialize)]
struct EmbedCase {
    name: String,
    input_ids: Vec<u32>,
    /// The last token's final hidden state, un-normalised.
    raw: Vec<f32>,
}

/// A reranker fixture's reference: the model card's transformers scoring.
#[derive(Deserialize)]
struct RerankReference {
    groups: Vec<RerankGroup>,
}

#[derive(Deserialize)]
struct RerankGroup {
    name: String,
    query: String,
    instruction: Option<String>,
    /// Token limit of the pairs (`None`: the model's).
    max_length: Option<usize>,
    documents: Vec<String>,
    input_ids: Vec<Vec<u32>>,
    /// `sigmoid(l_yes - l_no)` per document.
    scores: Vec<f32>,
}

/// Reads and parses `dir/reference.json`, naming the file in any error.
fn read_reference<T: serde::de::DeserializeOwned>(dir: &Path) -> Result<T> {
    let path = dir.join("reference.json");
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))
}

/// All cases as one packed batch against the reference raw vectors, then each case
/// alone against its batched vector.
fn check_embedding(name: &str, dir: &Path, on: On) -> Result<Row> {
    let On {
        device,
        dtype,
        quantize,
        tensor_parallel,
    } = on;
    let reference: EmbedReference = read_reference(dir)?;
    if reference.cases.is_empty() || reference.cases.iter().any(|c| c.input_ids.is_empty()) {
        bail!(
            "{}: no cases, or a case without token ids",
            dir.join("reference.json").display()
        );
    }
    let gate = gate(dtype, device)?;
    let model = Backend::load_quantized(dir, device, dtype, quantize, tensor_parallel)
        .with_context(|| format!("loading {}", dir.display()))?;
    let ids: Vec<&[u32]> = reference
        .cases
        .iter()
        .map(|c| c.input_ids.as_slice())
        .collect();
    let batched = model.embed(&PackedBatch::new(&ids))?;
    let want: Vec<&[f32]> = reference.cases.iter().map(|c| c.raw.as_slice()).collect();
    let names: Vec<&str> = reference.cases.iter().map(|c| c.name.as_str()).collect();
    let against_reference = match quantize {
        Quantize::None => compare(&batched, &want, &names, gate),
        Quantize::Int8 => compare_int8(&batched, &want, &names),
    };
    let mut alone = Vec::with_capacity(ids.len());
    for seq in &ids {
        alone.extend(model.embed(&PackedBatch::new(&[*seq]))?);
    }
    let same = if device.is_cpu() {
        parity::same_gate(gate)
    } else {
        // The CUDA suite holds batch invariance to its (provisional) gate.
        gate
    };
    let invariance = compare(&alone, &batched, &names, same);
    let problem = match (&against_reference.problem, &invariance.problem) {
        (Some(p), _) => Some(p.clone()),
        (None, Some(p)) => Some(format!("alone vs batched: {p}")),
        (None, None) => None,
    };
    Ok(Row {
        fixture: name.into(),
        task: "embed",
        dtype: dtype_name(dtype),
        quantize: quantize.to_string(),
        kernel: kernel_name(model.cpu_kernel(), device),
        cases: reference.cases.len(),
        worst_cosine: Some(against_reference.cosine),
        worst_abs: Some(against_reference.abs as f64),
        alone_vs_batch_cosine: Some(invariance.cosine),
        gate: match quantize {
            Quantize::None => format!(
                "1-cos<={:.1e} |d|<={:.1e} alone 1-cos<={:.1e}",
                1.0 - gate.min_cosine,
                gate.max_abs,
                1.0 - same.min_cosine
            ),
            Quantize::Int8 => {
                let g = parity::int8_gate();
                format!(
                    "int8 cos>={} mean>={} spearman>={} alone 1-cos<={:.1e}",
                    g.worst_cosine,
                    g.mean_cosine,
                    g.spearman,
                    1.0 - same.min_cosine
                )
            }
        },
        ok: problem.is_none(),
        problem,
        skipped: None,
    })
}

/// int8 vectors against their references by the int8 gate (worst and mean cosine,
/// Spearman of the pairwise similarities); `abs` is the worst |diff|, not gated.
fn compare_int8<G: AsRef<[f32]>, W: AsRef<[f32]>>(
    got: &[G],
    want: &[W],
    names: &[&str],
) -> Compared {
    // Counts, lengths and finiteness as for every row (a gate nothing can miss otherwise).
    let open = Gate {
        min_cosine: f64::NEG_INFINITY,
        max_abs: f32::INFINITY,
    };
    let mut c = compare(got, want, names, open);
    if c.problem.is_some() {
        return c;
    }
    let (q, g) = (Quality::of(got, want), parity::int8_gate());
    c.cosine = q.worst_cosine;
    if !q.meets(g) {
        c.problem = Some(format!(
            "int8: worst cosine {:.6} ({}), mean {:.6}, spearman {:.6} against {} / {} / {}",
            q.worst_cosine,
            names.get(q.worst_case).copied().unwrap_or("?"),
            q.mean_cosine,
            q.spearman,
            g.worst_cosine,
            g.mean_cosine,
            g.spearman
        ));
    }
    c
}

/// The worst of one comparison, and the first way it misses the gate.
struct Compared {
    cosine: f64,
    abs: f32,
    problem: Option<String>,
}

/// Compares `got[i]` with `want[i]` (`qembed_gates::compare`): as many vectors, each as
/// long and finite, and the worst cosine and |diff| within `gate`.
fn compare<G: AsRef<[f32]>, W: AsRef<[f32]>>(
    got: &[G],
    want: &[W],
    names: &[&str],
    gate: Gate,
) -> Compared {
    let name = |i: usize| names.get(i).copied().unwrap_or("?");
    let (worst, miss) = parity::compare(got, want, gate);
    let mut c = Compared {
        cosine: worst.cosine,
        abs: worst.abs,
        problem: None,
    };
    c.problem = miss.map(|m| match m {
        Miss::Count { got, want } => format!("{got} outputs for {want} cases"),
        Miss::Length { case, got, want } => format!(
            "case {}: {got} components, reference has {want}",
            name(case)
        ),
        Miss::NonFinite { case } => {
            c.cosine = f64::NAN;
            format!("case {}: non-finite output", name(case))
        }
        Miss::Cosine => format!(
            "case {}: cosine {:.8} < {}",
            name(worst.cosine_case),
            worst.cosine,
            gate.min_cosine
        ),
        Miss::Abs => format!(
            "case {}: |diff| {:.2e} > {:e}",
            name(worst.abs_case),
            worst.abs,
            gate.max_abs
        ),
    });
    c
}

/// Every group's documents scored from their texts (template and tokenizer included),
/// each group at its own length limit, against the card's scores.
fn check_reranker(name: &str, dir: &Path, on: On) -> Result<Row> {
    let On {
        device,
        dtype,
        quantize,
        tensor_parallel,
    } = on;
    let path = dir.join("reference.json");
    let reference: RerankReference = read_reference(dir)?;
    for g in &reference.groups {
        let n = g.documents.len();
        if n == 0 || g.input_ids.len() != n || g.scores.len() != n {
            bail!(
                "{} group {}: documents, ids and scores differ in number",
                path.display(),
                g.name
            );
        }
    }
    if reference.groups.is_empty() {
        bail!("{}: no groups", path.display());
    }
    let max_gate = match quantize {
        Quantize::None => rerank_gate(dtype, device)?,
        Quantize::Int8 => parity::int8_rerank_gate(),
    };
    // One load per length limit the groups use.
    let mut models: BTreeMap<Option<usize>, Embedder> = BTreeMap::new();
    let (mut worst, mut cases, mut problem) = (0f64, 0usize, None);
    let mut kernel = None;
    for g in &reference.groups {
        let model = match models.entry(g.max_length) {
            std::collections::btree_map::Entry::Occupied(e) => e.into_mut(),
            std::collections::btree_map::Entry::Vacant(e) => {
                let opts = LoadOptions {
                    task: Task::Rerank,
                    device,
                    tensor_parallel,
                    dtype: choice(dtype),
                    quantize,
                    max_length: g.max_length,
                    ..LoadOptions::default()
                };
                let m = Embedder::load(dir, &opts)
                    .with_context(|| format!("loading {}", dir.display()))?;
                e.insert(m)
            }
        };
        kernel = Some(model.model().cpu_kernel());
        let mut ids = Vec::with_capacity(g.documents.len());
        for (i, d) in g.documents.iter().enumerate() {
            let pair = Pair {
                query: &g.query,
                document: d,
                instruction: g.instruction.as_deref(),
            };
            let got = model.tokenize_pair(pair, true)?;
            if got != g.input_ids[i] && problem.is_none() {
                problem = Some(format!(
                    "group {} document {i}: {} template ids, the card's are {} and differ",
                    g.name,
                    got.len(),
                    g.input_ids[i].len()
                ));
            }
            ids.push(got);
        }
        let hidden = model.embed_ids(&ids)?;
        if hidden.len() != ids.len() {
            bail!(
                "group {}: {} outputs for {} documents",
                g.name,
                hidden.len(),
                ids.len()
            );
        }
        for (i, (h, want)) in hidden.iter().zip(&g.scores).enumerate() {
            let score = sigmoid(model.logit(h)?) as f64;
            let diff = (score - *want as f64).abs();
            if !diff.is_finite() && problem.is_none() {
                problem = Some(format!("group {} document {i}: score {score}", g.name));
            }
            if diff > worst || diff.is_nan() {
                worst = diff;
                if diff > max_gate && problem.is_none() {
                    problem = Some(format!(
                        "group {} document {i}: |score - reference| {diff:.2e} > {max_gate:e}",
                        g.name
                    ));
                }
            }
            cases += 1;
        }
    }
    Ok(Row {
        fixture: name.into(),
        task: "rerank",
        dtype: dtype_name(dtype),
        quantize: quantize.to_string(),
        kernel: kernel_name(kernel.flatten(), device),
        cases,
        worst_cosine: None,
        worst_abs: Some(worst),
        alone_vs_batch_cosine: None,
        gate: format!("|score|<={max_gate:.1e}"),
        ok: problem.is_none(),
        problem,
        skipped: None,
    })
}

fn gate(dtype: DType, device: DeviceSpec) -> Result<Gate> {
    if device.is_cpu() {
        parity::gate(dtype).ok_or_else(|| anyhow!("no parity gate for dtype {dtype:?}"))
    } else {
        Ok(parity::cuda_gate(dtype))
    }
}

fn rerank_gate(dtype: DType, device: DeviceSpec) -> Result<f64> {
    if device.is_cpu() {
        parity::rerank_gate(dtype).ok_or_else(|| anyhow!("no rerank gate for dtype {dtype:?}"))
    } else {
        Ok(parity::cuda_rerank_gate(dtype))
    }
}

/// The `--dtype` that resolves to `dtype` (the engine's loader takes the user's choice).
fn choice(dtype: DType) -> DTypeChoice {
    match dtype {
        DType::F16 => DTypeChoice::F16,
        DType::BF16 => DTypeChoice::Bf16,
        _ => DTypeChoice::F32,
    }
}

fn dtype_name(dtype: DType) -> String {
    format!("{dtype:?}").to_ascii_lowercase()
}

/// The CPU GEMM kernel, or the device when the model is not on the CPU.
fn kernel_name(cpu_kernel: Option<&str>, device: DeviceSpec) -> String {
    match cpu_kernel {
        Some(k) => k.into(),
        None => device.to_string(),
    }
}

/// One JSON object per line, then a flush.
fn write_json_lines<T: Serialize>(out: &mut impl Write, rows: &[T]) -> Result<()> {
    for row in rows {
        serde_json::to_writer(&mut *out, row)?;
        out.write_all(b"\n")?;
    }
    out.flush()?;
    Ok(())
}

fn print_rows(rows: &[Row], json: bool) -> Result<()> {
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    if json {
        return write_json_lines(&mut out, rows);
    }
    let width = rows
        .iter()
        .map(|r| r.fixture.len())
        .max()
        .unwrap_or(7)
        .max(7);
    writeln!(
        out,
        "{:width$}  {:6}  {:5}  {:8}  {:>5}  {:>11}  {:>9}  {:42}  result",
        "fixture", "task", "dtype", "kernel", "cases", "worst cos", "worst |d|", "gate"
    )?;
    let num = |v: Option<f64>, f: fn(f64) -> String| v.map_or_else(|| "-".into(), f);
    for r in rows {
        let result = match (&r.problem, &r.skipped) {
            (Some(p), _) => format!("FAIL: {p}"),
            (None, Some(why)) => format!("skipped: {why}"),
            (None, None) => "ok".to_string(),
        };
        writeln!(
            out,
            "{:width$}  {:6}  {:5}  {:8}  {:>5}  {:>11}  {:>9}  {:42}  {}",
            r.fixture,
            r.task,
            r.dtype,
            r.kernel,
            r.cases,
            num(r.worst_cosine, |v| format!("{v:.8}")),
            num(r.worst_abs, |v| format!("{v:.2e}")),
            r.gate,
            result
        )?;
    }
    out.flush()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_flipped_vector_misses_the_gate_and_a_missing_one_is_counted() {
        let want = vec![vec![1.0f32, 2.0], vec![3.0, -1.0]];
        let g = parity::gate(DType::F32).unwrap();
        assert!(compare(&want, &want, &["a", "b"], g).problem.is_none());
        let flipped = vec![vec![1.0f32, 2.0], vec![-3.0, 1.0]];
        let c = compare(&flipped, &want, &["a", "b"], g);
        assert!(c.problem.unwrap().contains("case b: cosine"));
        let c = compare(&want[..1], &want, &["a", "b"], g);
        assert!(c.problem.unwrap().contains("1 outputs for 2 cases"));
    }
}
