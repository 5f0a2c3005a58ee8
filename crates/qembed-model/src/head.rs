//! Qwen3-Reranker's score head: `l_yes - l_no` at the last position.
//!
//! The reranker is a causal LM asked to answer "yes" or "no"; its score is the softmax
//! of those two logits, i.e. `sigmoid(l_yes - l_no)`. Both logits come from the final
//! normed hidden state `h` and two rows of the output projection, so the difference
//! is one dot product with `w_yes - w_no`: no projection onto 151k tokens, and computed
//! in f32 from the stored rows rather than by subtracting two low-precision logits.

use std::path::Path;

use crate::{ModelError, Qwen3Config, Result, Weights};
use candle_core::{DType, Device};

pub struct ScoreHead {
    /// `w_yes - w_no` in f32, `[hidden]`.
    diff: Vec<f32>,
}

impl ScoreHead {
    /// The head of the checkpoint at `dir`, for the token ids of `yes` and `no`: rows
    /// of the embedding table when the config ties it to the output, of `lm_head`
    /// otherwise; an error when the checkpoint has neither.
    pub fn load(dir: &Path, cfg: &Qwen3Config, yes: u32, no: u32) -> Result<Self> {
        for (token, id) in [("yes", yes), ("no", no)] {
            if id as usize >= cfg.vocab_size {
                return Err(ModelError::HeadToken {
                    token: token.to_string(),
                    id,
                    vocab: cfg.vocab_size,
                });
            }
        }
        // Only two rows are read from the map, so dtype and device do not matter here.
        let weights = Weights::open(dir, DType::F32, &Device::Cpu)?;
        let table = if cfg.tie_word_embeddings {
            "embed_tokens.weight"
        } else if weights.contains("lm_head.weight") {
            "lm_head.weight"
        } else {
            return Err(ModelError::NoScoreHead {
                dir: dir.to_path_buf(),
            });
        };
        let rows = weights.rows_f32(
            table,
            [cfg.vocab_size, cfg.hidden_size],
            &[yes as usize, no as usize],
        )?;
        let diff = rows[0].iter().zip(&rows[1]).map(|(y, n)| y - n).collect();
        Ok(Self { diff })
    }

    /// `l_yes - l_no` for one final normed hidden state (what the embedding forward
    /// pass returns before normalisation), accumulated in f64.
    pub fn logit(&self, hidden: &[f32]) -> Result<f32> {
        if hidden.len() != self.diff.len() {
            return Err(ModelError::Input(format!(
                "hidden state of {} values for a head of {}",
                hidden.len(),
                self.diff.len()
            )));
        }
        let dot: f64 = hidden
            .iter()
            .zip(&self.diff)
            .map(|(h, d)| *h as f64 * *d as f64)
            .sum();
        Ok(dot as f32)
    }
}
