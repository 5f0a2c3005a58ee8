//! The vector-space gate: can vectors stored from the active colour be compared with
//! the new colour's? Equal fingerprints, or probe texts embedded alike by both. It is
//! an embedding colour's gate only: a reranker's scores are computed per request and
//! never stored, so a reranker's model change leaves nothing to re-index (its new
//! scores are the golden set's to vouch for). What a reranker must not do is replace
//! an embedding colour, or the other way round: that is `TaskChange`, refused always.

use crate::config::Config;
use crate::instance::{cosine, Caller, EmbedRequest, Info, Instance};
use crate::task::Task;

#[derive(Debug, PartialEq, Eq)]
pub enum Compat {
    SameFingerprint,
    SameVectors,
    /// Stored vectors would have to be re-embedded.
    Incompatible(String),
    NoActive,
    /// A reranker replacing a reranker: nothing stored depends on its scores.
    /// `model_change` when the fingerprints differ (rankings will change).
    NotApplicable {
        model_change: bool,
    },
    /// A reranker whose active colour could not be asked what it serves: the switch
    /// might change the task.
    Unverified(String),
    /// The colours serve different tasks: never switched, whatever the flags.
    TaskChange {
        from: Task,
        to: Task,
    },
}

/// The embedding colours' verdict; `old_info` is the active colour's `/info`.
pub async fn check(
    cfg: &Config,
    new: &Instance,
    new_fp: &str,
    active: &Instance,
    old_info: &Info,
    caller: &Caller,
) -> Compat {
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
