//! `qembed embed`, `qembed rerank` and `qembed check` as a user runs them: the real
//! binary, JSON Lines in and out.

use std::io::Write;
use std::process::{Command, Output, Stdio};

use qembed_testkit::{
    cosine, fixture, root, Case, Reference, RerankReference, FIXTURES, RERANK_FIXTURES,
};
use serde::Deserialize;

fn qembed(args: &[&str], stdin: &str, env: &[(&str, &str)]) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_qembed"))
        .args(args)
        .envs(env.iter().copied())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}

#[derive(Deserialize)]
struct OutLine {
    index: usize,
    embedding: Vec<f32>,
    tokens: usize,
}

fn parse_output(out: &Output) -> Vec<OutLine> {
    assert!(
        out.status.success(),
        "stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout.clone())
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[test]
fn embeds_jsonl_in_order_matching_transformers() {
    for name in ["qwen3-tiny-gqa", "qwen3-tiny-mqa"] {
        let r = Reference::load(name);
        let cases: Vec<&Case> = r
            .cases
            .iter()
            .filter(|c| c.dimensions.is_none() && c.max_length.is_none())
            .collect();
        // Mix both line shapes; blank lines are skipped.
        let mut stdin = String::new();
        for c in &cases {
            let line = match &c.instruction {
                Some(i) => serde_json::json!({"text": c.text, "instruction": i}),
                None if c.text.len() % 2 == 0 => serde_json::json!(c.text),
                None => serde_json::json!({"text": c.text}),
            };
            stdin.push_str(&line.to_string());
            stdin.push_str("\n\n");
        }
        let out = parse_output(&qembed(
            &["embed", "--model-path", fixture(name).to_str().unwrap()],
            &stdin,
            &[],
        ));
        assert_eq!(out.len(), cases.len());
        for (i, (line, c)) in out.iter().zip(&cases).enumerate() {
            assert_eq!(line.index, i);
            assert_eq!(line.tokens, c.input_ids.len());
            let cos = cosine(&line.embedding, &c.embedding);
            assert!(cos >= 0.99999, "{name} line {i}: {cos}");
        }
    }
}

#[test]
fn dimensions_and_default_instruction_flags() {
    let r = Reference::load("qwen3-tiny-gqa");
    let c = r
        .cases
        .iter()
        .find(|c| c.dimensions == Some(32) && c.instruction.is_some())
        .unwrap();
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), format!("{}\n", serde_json::json!(c.text))).unwrap();
    let model = fixture("qwen3-tiny-gqa");
    let args = [
        "embed",
        "--model-path",
        model.to_str().unwrap(),
        "--dimensions",
        "32",
        "--instruction",
        c.instruction.as_deref().unwrap(),
        "--input",
        file.path().to_str().unwrap(),
    ];
    let out = parse_output(&qembed(&args, "", &[]));
    assert_eq!(out[0].embedding.len(), 32);
    assert!(cosine(&out[0].embedding, &c.embedding) >= 0.99999);
}

/// Bad input fails the whole run with the line number and writes nothing to stdout.
#[test]
fn bad_input_fails_before_any_output() {
    let model = fixture("qwen3-tiny-mqa");
    let model = model.to_str().unwrap();
    let cases: [(&str, &[&str], &str); 7] = [
        ("\"ok\"\n\"fine\"\n{not json}\n", &[], "line 3"),
        ("\"ok\"\n42\n", &[], "line 2"),
        ("{\"text\": \"ok\", \"extra\": 1}\n", &[], "line 1"),
        ("\"ok\"\n\"\"\n", &[], "line 2: text is empty"),
        (
            "\"a b c d e f g h i j k l m n o p\"\n",
            &["--max-length", "4", "--no-truncate"],
            "line 1",
        ),
        (
            "\"ok\"\n",
            &["--dimensions", "31"],
            "dimensions must be between 32 and 48",
        ),
        ("\n\n", &[], "no input"),
    ];
    for (stdin, extra, needle) in cases {
        let mut args = vec!["embed", "--model-path", model];
        args.extend_from_slice(extra);
        let out = qembed(&args, stdin, &[]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{stdin:?} succeeded");
        assert!(out.stdout.is_empty(), "{stdin:?} wrote output");
        assert!(err.contains(needle), "{stdin:?}: {err}");
    }
}

#[test]
fn truncation_keeps_eos_and_counts_tokens() {
    let model = fixture("qwen3-tiny-mqa");
    let args = [
        "embed",
        "--model-path",
        model.to_str().unwrap(),
        "--max-length",
        "4",
    ];
    let out = parse_output(&qembed(&args, "\"a b c d e f g h i j k l m n o p\"\n", &[]));
    assert_eq!(out[0].tokens, 4);
}

#[test]
fn offline_hub_id_names_the_id_and_cache() {
    let home = tempfile::tempdir().unwrap();
    let env = [
        ("HF_HUB_OFFLINE", "1"),
        ("HF_HOME", home.path().to_str().unwrap()),
    ];
    let out = qembed(
        &["embed", "--model-path", "Qwen/Qwen3-Embedding-0.6B"],
        "\"hi\"\n",
        &env,
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("Qwen/Qwen3-Embedding-0.6B") && err.contains(home.path().to_str().unwrap()),
        "{err}"
    );
    let out = qembed(&["embed", "--model-path", "no/such/dir"], "\"hi\"\n", &[]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("neither a directory nor"));
}

#[derive(Deserialize)]
struct ScoreLine {
    index: usize,
    score: f32,
    tokens: usize,
}

#[test]
fn rerank_scores_documents_in_input_order_matching_transformers() {
    let name = RERANK_FIXTURES[1];
    let r = RerankReference::load(name);
    let model = fixture(name);
    let mut checked = 0;
    for g in r.groups.iter().filter(|g| g.max_length.is_none()) {
        // Alternate the two line forms: a JSON string and {"text": ...}.
        let stdin: String = g
            .documents
            .iter()
            .enumerate()
            .map(|(i, d)| {
                let line = if i % 2 == 0 {
                    serde_json::json!(d)
                } else {
                    serde_json::json!({"text": d})
                };
                format!("{line}\n\n")
            })
            .collect();
        let mut args = vec![
            "rerank",
            "--model-path",
            model.to_str().unwrap(),
            "--query",
            &g.query,
        ];
        if let Some(i) = &g.instruction {
            args.extend(["--instruction", i]);
        }
        let out = qembed(&args, &stdin, &[]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let lines: Vec<ScoreLine> = String::from_utf8(out.stdout)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), g.documents.len(), "{}", g.name);
        for (i, line) in lines.iter().enumerate() {
            assert_eq!(line.index, i);
            assert_eq!(line.tokens, g.input_ids[i].len(), "{} {i}", g.name);
            let err = (line.score - g.scores[i]).abs();
            assert!(
                err <= 1e-4,
                "{} {i}: {} vs {}",
                g.name,
                line.score,
                g.scores[i]
            );
            checked += 1;
        }
    }
    assert!(checked >= 30, "{checked}");

    // --raw prints the logit; a bad line fails before any output.
    let g = &r.groups[0];
    let doc = serde_json::json!(g.documents[0]).to_string();
    let args = [
        "rerank",
        "--model-path",
        model.to_str().unwrap(),
        "--query",
        &g.query,
        "--raw",
    ];
    let out = qembed(&args, &format!("{doc}\n"), &[]);
    let line: ScoreLine =
        serde_json::from_slice(out.stdout.split(|b| *b == b'\n').next().unwrap()).unwrap();
    assert!(
        (line.score - g.logits[0]).abs() <= 1e-4,
        "{} vs {}",
        line.score,
        g.logits[0]
    );
    let out = qembed(&args, &format!("{doc}\n{{\"txt\": 1}}\n"), &[]);
    assert!(!out.status.success());
    assert!(out.stdout.is_empty());
    assert!(String::from_utf8_lossy(&out.stderr).contains("line 2"));
    // An embedding checkpoint without single yes/no tokens cannot rerank.
    let emb = fixture("qwen3-tiny-mqa");
    let out = qembed(
        &[
            "rerank",
            "--model-path",
            emb.to_str().unwrap(),
            "--query",
            "q",
        ],
        &format!("{doc}\n"),
        &[],
    );
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("yes"));
}

/// `qembed check --json` on `dir`: the exit status, the rows, and stderr.
fn check(dir: &std::path::Path, dtype: &str) -> (bool, Vec<serde_json::Value>, String) {
    let args = [
        "check",
        "--fixtures",
        dir.to_str().unwrap(),
        "--dtype",
        dtype,
        "--json",
    ];
    let out = qembed(&args, "", &[]);
    let rows = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    (
        out.status.success(),
        rows,
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Every fixture of the repository passes on this CPU in f32 and bf16, each with all of
/// its cases, and the table form lists every fixture too.
#[test]
fn check_passes_every_fixture_on_cpu() {
    let models = root().join("models");
    for dtype in ["f32", "bf16"] {
        let (ok, rows, stderr) = check(&models, dtype);
        assert!(ok, "{dtype}: {stderr} {rows:?}");
        let names: Vec<&str> = rows
            .iter()
            .map(|r| r["fixture"].as_str().unwrap())
            .collect();
        let mut want: Vec<&str> = FIXTURES.iter().chain(&RERANK_FIXTURES).copied().collect();
        want.sort_unstable();
        assert_eq!(names, want, "{dtype}");
        for r in &rows {
            assert_eq!(r["ok"], true, "{r}");
            assert_eq!(r["dtype"], dtype, "{r}");
            assert!(r["cases"].as_u64().unwrap() >= 30, "{r}");
            assert!(r["kernel"].as_str().is_some_and(|k| !k.is_empty()), "{r}");
        }
        let embed = rows.iter().find(|r| r["task"] == "embed").unwrap();
        assert_eq!(embed["cases"], 46);
        assert!(embed["worst_cosine"].as_f64().unwrap() > 0.9999);
    }
    let out = qembed(&["check", "--fixtures", models.to_str().unwrap()], "", &[]);
    assert!(out.status.success());
    let table = String::from_utf8(out.stdout).unwrap();
    assert!(table.starts_with("fixture"), "{table}");
    for name in FIXTURES.iter().chain(&RERANK_FIXTURES) {
        let line = table.lines().find(|l| l.starts_with(name)).unwrap();
        assert!(line.ends_with(" ok") && line.contains(" f32 "), "{line}");
    }
}

/// `qembed check --tensor-parallel 2` on the CPU (two ranks sharing the cores, the
/// same sharding and all-reduce points NCCL serves on GPUs): every fixture two ranks
/// divide passes its reference, and the MQA one (3 heads, 1 kv head) is skipped with
/// the reason in its row, not failed. Four ranks split only what divides by four.
#[test]
fn check_splits_fixtures_over_ranks_and_skips_those_that_do_not_divide() {
    let models = root().join("models");
    for ranks in ["2", "4"] {
        let args = [
            "check",
            "--fixtures",
            models.to_str().unwrap(),
            "--tensor-parallel",
            ranks,
            "--json",
        ];
        let out = qembed(&args, "", &[]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{ranks}: {stderr}");
        let rows: Vec<serde_json::Value> = String::from_utf8(out.stdout)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(rows.len(), FIXTURES.len() + RERANK_FIXTURES.len());
        let mqa = rows
            .iter()
            .find(|r| r["fixture"] == "qwen3-tiny-mqa")
            .unwrap();
        assert!(
            mqa["skipped"]
                .as_str()
                .is_some_and(|w| w.contains("do not divide its num_attention_heads (3)")),
            "{mqa}"
        );
        let tp4 = rows
            .iter()
            .find(|r| r["fixture"] == "qwen3-tiny-tp4")
            .unwrap();
        assert!(tp4["skipped"].is_null() && tp4["ok"] == true, "{tp4}");
        assert!(tp4["cases"].as_u64().unwrap() > 0, "{tp4}");
        for r in &rows {
            assert_eq!(r["ok"], true, "{ranks}: {r}");
        }
    }
    // A size no fixture divides runs nothing, and says so with a failure.
    let args = [
        "check",
        "--fixtures",
        models.to_str().unwrap(),
        "--tensor-parallel",
        "7",
    ];
    let out = qembed(&args, "", &[]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("can be split over 7 ranks"));
}

/// `qembed check --quantize int8`: every fixture passes the int8 gates on this CPU,
/// on an int8 kernel, loaded from bf16 (what `--dtype auto` loads with int8).
#[test]
fn check_passes_every_fixture_in_int8() {
    let models = root().join("models");
    let out = qembed(
        &[
            "check",
            "--fixtures",
            models.to_str().unwrap(),
            "--quantize",
            "int8",
            "--json",
        ],
        "",
        &[],
    );
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let rows: Vec<serde_json::Value> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(out.status.success(), "{stderr} {rows:?}");
    assert_eq!(
        rows.len(),
        FIXTURES.len() + RERANK_FIXTURES.len(),
        "{rows:?}"
    );
    for r in &rows {
        assert_eq!(r["ok"], true, "{r}");
        assert_eq!(r["quantize"], "int8", "{r}");
        assert_eq!(r["dtype"], "bf16", "{r}");
        let kernel = r["kernel"].as_str().unwrap();
        assert!(
            ["amx-int8", "avx512vnni", "avxvnni", "portable-int8"].contains(&kernel),
            "{r}"
        );
        if r["task"] == "embed" {
            let cosine = r["worst_cosine"].as_f64().unwrap();
            assert!((0.995..0.99999).contains(&cosine), "{r}");
        }
    }
}

/// Copies fixture `name` into `dir`, its reference.json rewritten by `edit`.
fn copy_fixture(name: &str, dir: &std::path::Path, edit: impl FnOnce(&mut serde_json::Value)) {
    let to = dir.join(name);
    std::fs::create_dir(&to).unwrap();
    for entry in std::fs::read_dir(fixture(name)).unwrap() {
        let p = entry.unwrap().path();
        std::fs::copy(&p, to.join(p.file_name().unwrap())).unwrap();
    }
    let path = to.join("reference.json");
    let mut r: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    edit(&mut r);
    std::fs::write(&path, r.to_string()).unwrap();
}

/// One raw reference vector with its sign flipped, or one reranker score moved by
/// 0.05: that row fails, the others pass, and the exit is non-zero. A fixture
/// directory without reference.json is an error naming the file.
#[test]
fn check_fails_on_a_wrong_reference() {
    let dir = tempfile::tempdir().unwrap();
    copy_fixture("qwen3-tiny-mqa", dir.path(), |r| {
        for x in r["cases"][3]["raw"].as_array_mut().unwrap() {
            *x = serde_json::json!(-x.as_f64().unwrap());
        }
    });
    copy_fixture("qwen3-tiny-gqa", dir.path(), |_| {});
    copy_fixture(RERANK_FIXTURES[0], dir.path(), |r| {
        let s = &mut r["groups"][1]["scores"][2];
        *s = serde_json::json!(s.as_f64().unwrap() + 0.05);
    });
    let (ok, rows, stderr) = check(dir.path(), "f32");
    assert!(!ok, "{rows:?}");
    assert_eq!(rows.len(), 3, "{rows:?}");
    let row = |name: &str| rows.iter().find(|r| r["fixture"] == name).unwrap();
    assert_eq!(row("qwen3-tiny-gqa")["ok"], true);
    let bad = row("qwen3-tiny-mqa");
    assert_eq!(bad["ok"], false);
    assert!(bad["worst_cosine"].as_f64().unwrap() < 0.0, "{bad}");
    let case = r_case_name("qwen3-tiny-mqa", 3);
    assert!(bad["problem"].as_str().unwrap().contains(&case), "{bad}");
    let bad = row(RERANK_FIXTURES[0]);
    assert_eq!(bad["ok"], false);
    assert!(
        (bad["worst_abs"].as_f64().unwrap() - 0.05).abs() < 1e-3,
        "{bad}"
    );
    assert!(stderr.contains("2 of 3 fixtures"), "{stderr}");

    // The table says FAIL on the row.
    let out = qembed(
        &["check", "--fixtures", dir.path().to_str().unwrap()],
        "",
        &[],
    );
    assert!(!out.status.success());
    let table = String::from_utf8(out.stdout).unwrap();
    let line = table
        .lines()
        .find(|l| l.starts_with("qwen3-tiny-mqa"))
        .unwrap();
    assert!(line.contains("FAIL: case"), "{line}");

    // No reference.json, or an unreadable one: the row fails naming the file.
    std::fs::create_dir(dir.path().join("qwen3-tiny-none")).unwrap();
    copy_fixture("qwen3-tiny-f16", dir.path(), |r| {
        r["cases"] = serde_json::json!(7)
    });
    let (ok, rows, _) = check(dir.path(), "f32");
    assert!(!ok);
    for (name, what) in [
        ("qwen3-tiny-none", "reading"),
        ("qwen3-tiny-f16", "parsing"),
    ] {
        let p = row_problem(&rows, name);
        let file = format!("{name}/reference.json");
        assert!(p.contains(what) && p.contains(&file), "{p}");
    }
    // A directory without any fixture is an error, not a pass.
    let empty = tempfile::tempdir().unwrap();
    let (ok, rows, stderr) = check(empty.path(), "f32");
    assert!(
        !ok && rows.is_empty() && stderr.contains("no fixtures"),
        "{stderr}"
    );
}

fn r_case_name(fixture: &str, i: usize) -> String {
    Reference::load(fixture).cases[i].name.clone()
}

fn row_problem(rows: &[serde_json::Value], name: &str) -> String {
    let r = rows.iter().find(|r| r["fixture"] == name).unwrap();
    r["problem"].as_str().unwrap().to_string()
}

#[test]
fn bench_tiny_reports_each_batch_shape_as_a_json_line() {
    let out = qembed(
        &[
            "bench",
            "--shape",
            "tiny",
            "--batches",
            "2x16,mixed",
            "--repeats",
            "2",
            "--json",
        ],
        "",
        &[],
    );
    assert!(
        out.status.success(),
        "stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rows: Vec<serde_json::Value> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(rows.len(), 2, "{rows:?}");
    // mixed: benches/forward's 16 lengths, 2693 tokens (benches/RESULTS.md).
    let mixed_tokens: u64 = 2693;
    for (row, (batch, seqs, tokens)) in rows
        .iter()
        .zip([("2x16", 2, 32), ("mixed", 16, mixed_tokens)])
    {
        assert_eq!(row["batch"], batch);
        assert_eq!(row["sequences"], seqs);
        assert_eq!(row["tokens"].as_u64(), Some(tokens), "{row}");
        assert_eq!(row["repeats"], 2);
        let rate = |k: &str| row[k].as_f64().unwrap();
        assert!(
            rate("tokens_per_s").is_finite() && rate("tokens_per_s") > 0.0,
            "{row}"
        );
        assert!(rate("tokens_per_s_min") <= rate("tokens_per_s"), "{row}");
        assert!(rate("tokens_per_s") <= rate("tokens_per_s_max"), "{row}");
        assert!(
            rate("tokens_per_cpu_s") > 0.0 && rate("cpu_s") > 0.0,
            "{row}"
        );
        assert_eq!(row["kernel"].as_str().map(str::is_empty), Some(false));
        // The model's arithmetic over the wall time; no peak (nor MFU) on the CPU.
        let tflops = rate("model_tflops");
        assert!(tflops > 0.0 && tflops.is_finite(), "{row}");
        assert!(
            row["peak_tflops"].is_null() && row["mfu"].is_null(),
            "{row}"
        );
    }
}

#[test]
fn bench_saves_a_checkpoint_that_embed_loads_and_the_same_one_each_time() {
    let tmp = tempfile::tempdir().unwrap();
    let dirs = [tmp.path().join("a"), tmp.path().join("b")];
    for dir in &dirs {
        let out = qembed(
            &[
                "bench",
                "--shape",
                "tiny",
                "--batches",
                "1x8",
                "--repeats",
                "1",
                "--save",
                dir.to_str().unwrap(),
            ],
            "",
            &[],
        );
        assert!(
            out.status.success(),
            "stderr: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        // The text table: header lines, then one row for the one batch shape.
        let stdout = String::from_utf8(out.stdout).unwrap();
        assert!(stdout.contains("kernel"), "{stdout}");
        assert_eq!(
            stdout.lines().filter(|l| l.starts_with("1x8 ")).count(),
            1,
            "{stdout}"
        );
    }
    // A directory with something in it is never overwritten.
    let again = qembed(
        &[
            "bench",
            "--shape",
            "tiny",
            "--save",
            dirs[0].to_str().unwrap(),
        ],
        "",
        &[],
    );
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("not empty"));
    // Seeded weights: two runs write the same bytes.
    let weights = |d: &std::path::Path| std::fs::read(d.join("model.safetensors")).unwrap();
    assert_eq!(weights(&dirs[0]), weights(&dirs[1]));

    let out = qembed(
        &["embed", "--model-path", dirs[0].to_str().unwrap()],
        "\"hello world\"\n",
        &[],
    );
    let lines = parse_output(&out);
    assert_eq!(lines.len(), 1);
    let v = &lines[0].embedding;
    assert_eq!(v.len(), 64);
    assert!(v.iter().all(|x| x.is_finite()));
    let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    assert!((norm - 1.0).abs() < 1e-3, "{norm}");
    assert!(lines[0].tokens >= 2);
}

#[test]
fn bench_rejects_bad_batches_and_shapes_clearly() {
    for (args, needle) in [
        (["--shape", "tiny", "--batches", "16by512"], "BxL"),
        (["--shape", "tiny", "--batches", "0x16"], "positive"),
        (["--shape", "tiny", "--batches", "1x4096"], "2048 positions"),
        (["--shape", "13b", "--batches", "1x4"], "0.6b, 4b, 8b, tiny"),
    ] {
        let out = qembed(&[&["bench"][..], &args[..]].concat(), "", &[]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?}");
        assert!(stderr.contains(needle), "{args:?}: {stderr}");
        assert!(out.stdout.is_empty(), "{args:?}");
    }
}
