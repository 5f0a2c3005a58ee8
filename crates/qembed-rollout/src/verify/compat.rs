//! The vector-space gate: can vectors stored from the active colour be compared with
//! the new colour's? Equal fingerprints, or probe texts embedded alike by both.

use crate::config::Config;
use crate::instance::{cosine, Caller, EmbedRequest, Instance};

#[derive(Debug, PartialEq, Eq)]
pub enum Compat {
    SameFingerprint,
    SameVectors,
    /// Stored vectors would have to be re-embedded.
    Incompatible(String),
    NoActive,
}

pub async fn check(
    cfg: &Config,
    new: &Instance,
    new_fp: &str,
    active: &Instance,
    caller: &Caller,
) -> Compat {
    let old_info = match active.info().await {
        Ok(i) => i,
        Err(e) => return Compat::Incompatible(format!("active colour unreachable: {e:#}")),
    };
    if !new_fp.is_empty() && old_info.fingerprint == new_fp {
        return Compat::SameFingerprint;
    }
    let req = EmbedRequest {
        texts: &cfg.verify.probe_texts,
        ..EmbedRequest::default()
    };
    let (a, b) = match (
        vectors(active, caller, &req).await,
        vectors(new, caller, &req).await,
    ) {
        (Ok(a), Ok(b)) => (a, b),
        (Err(e), _) | (_, Err(e)) => return Compat::Incompatible(format!("probe failed: {e:#}")),
    };
    let worst = a
        .iter()
        .zip(&b)
        .map(|(x, y)| cosine(x, y))
        .fold(f64::INFINITY, f64::min);
    if a.len() == b.len() && worst >= cfg.verify.compat_min_cosine {
        Compat::SameVectors
    } else {
        Compat::Incompatible(format!(
            "fingerprints {} vs {}, probe cosine {worst:.4} < {}",
            old_info.fingerprint, new_fp, cfg.verify.compat_min_cosine
        ))
    }
}

async fn vectors(
    inst: &Instance,
    caller: &Caller,
    req: &EmbedRequest<'_>,
) -> anyhow::Result<Vec<Vec<f32>>> {
    use anyhow::Context;
    let answer = inst.embed(caller, req).await?;
    answer.embeddings().with_context(|| inst.name.clone())
}
