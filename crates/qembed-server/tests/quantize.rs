//! `qembed serve --quantize int8`: what a deployment sees. `/info` and the fingerprint
//! name the quantization (so blue/green treats an int8 colour as its own build), the
//! vectors keep the int8 quality gate against transformers' f32 reference through the
//! HTTP API, and a reranker served in int8 keeps its scores and their ranking.

mod common;

use common::TestApp;
use qembed_testkit::{
    int8_gate, int8_rerank_gate, spearman, Quality, Reference, RerankReference, OUTLIER_FIXTURE,
    RERANK_FIXTURES,
};
use serde_json::{json, Value};

const OUTLIERS: &str = OUTLIER_FIXTURE;

fn floats(v: &Value) -> Vec<f32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap() as f32)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn int8_is_named_in_info_and_fingerprint_and_keeps_the_gate() {
    let t = TestApp::start(OUTLIERS, &["--quantize", "int8"]).await;
    let info = t.get("/info").await.body;
    assert_eq!(info["quantize"], "int8", "{info}");
    // `--dtype auto` loads bf16 for int8.
    assert_eq!(info["dtype"], "bf16", "{info}");
    let kernel = info["cpu_kernel"].as_str().unwrap().to_string();
    assert!(
        ["amx-int8", "avx512vnni", "avxvnni", "portable-int8"].contains(&kernel.as_str()),
        "{kernel}"
    );
    let float = TestApp::start(OUTLIERS, &[]).await;
    let float_info = float.get("/info").await.body;
    assert_eq!(float_info["quantize"], "none");
    assert_ne!(info["fingerprint"], float_info["fingerprint"]);

    let r = Reference::load(OUTLIERS);
    let cases: Vec<_> = r.plain().filter(|c| c.instruction.is_none()).collect();
    let texts: Vec<&str> = cases.iter().map(|c| c.text.as_str()).collect();
    let resp = t
        .post(
            "/v1/embeddings",
            &json!({"model": OUTLIERS, "input": texts}),
        )
        .await;
    assert_eq!(resp.status, 200, "{}", resp.text);
    let got: Vec<Vec<f32>> = resp.body["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| floats(&d["embedding"]))
        .collect();
    let want: Vec<&[f32]> = cases.iter().map(|c| c.embedding.as_slice()).collect();
    let q = Quality::of(&got, &want);
    println!("served int8 ({kernel}) {OUTLIERS}: {q:?}");
    assert!(q.meets(int8_gate()), "{q:?}");
}

/// Every group of both reranker fixtures served in int8: scores within the int8
/// reranker gate of transformers' f32 scores, and ranked as they rank (Spearman over
/// all of a fixture's pairs).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_int8_reranker_keeps_scores_and_ranking() {
    for name in RERANK_FIXTURES {
        let t = TestApp::start(name, &["--task", "rerank", "--quantize", "int8"]).await;
        assert_eq!(t.get("/info").await.body["quantize"], "int8");
        let r = RerankReference::load(name);
        let (mut got, mut want) = (Vec::new(), Vec::new());
        for g in r.groups.iter().filter(|g| g.max_length.is_none()) {
            let mut body = json!({"query": g.query, "texts": g.documents});
            if let Some(i) = &g.instruction {
                body["instruction"] = json!(i);
            }
            let s = t.post("/rerank", &body).await;
            assert_eq!(s.status, 200, "{name}/{}: {}", g.name, s.text);
            let items = s.body.as_array().unwrap();
            assert_eq!(items.len(), g.documents.len(), "{name}/{}", g.name);
            for item in items {
                let i = item["index"].as_u64().unwrap() as usize;
                got.push(item["score"].as_f64().unwrap());
                want.push(f64::from(g.scores[i]));
            }
        }
        let worst = got
            .iter()
            .zip(&want)
            .map(|(g, w)| (g - w).abs())
            .fold(0f64, f64::max);
        let rho = spearman(&got, &want);
        println!(
            "int8 reranker {name}: {} pairs, worst |score - reference| {worst:.4}, spearman {rho:.6}",
            got.len()
        );
        assert!(got.len() >= 30, "{name}: only {} pairs", got.len());
        assert!(worst <= int8_rerank_gate(), "{name}: {worst}");
        assert!(rho >= int8_gate().spearman, "{name}: {rho}");
    }
}
