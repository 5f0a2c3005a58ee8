//! The padding-free (varlen) batch layout the forward pass consumes.

use crate::{ModelError, Qwen3Config, Result};

/// Several token sequences laid end to end, with `cu_seqlens` marking the boundaries,
/// as flash-attention's varlen kernels take them. Dense layers see one `[tokens, hidden]`
/// matrix with no padding rows; only attention looks at the boundaries.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PackedBatch {
    ids: Vec<u32>,
    cu_seqlens: Vec<usize>,
}

impl PackedBatch {
    pub fn new<S: AsRef<[u32]>>(seqs: &[S]) -> Self {
        let mut batch = Self {
            ids: Vec::with_capacity(seqs.iter().map(|s| s.as_ref().len()).sum()),
            cu_seqlens: Vec::with_capacity(seqs.len() + 1),
        };
        batch.cu_seqlens.push(0);
        for s in seqs {
            batch.push(s.as_ref());
        }
        batch
    }

    pub fn push(&mut self, seq: &[u32]) {
        if self.cu_seqlens.is_empty() {
            self.cu_seqlens.push(0);
        }
        self.ids.extend_from_slice(seq);
        self.cu_seqlens.push(self.ids.len());
    }

    /// Flat token ids of every sequence.
    pub fn ids(&self) -> &[u32] {
        &self.ids
    }

    /// `[0, end of seq 0, end of seq 1, ...]`.
    pub fn cu_seqlens(&self) -> &[usize] {
        &self.cu_seqlens
    }

    pub fn num_seqs(&self) -> usize {
        self.cu_seqlens.len().saturating_sub(1)
    }

    pub fn num_tokens(&self) -> usize {
        self.ids.len()
    }

    pub fn is_empty(&self) -> bool {
        self.num_seqs() == 0
    }

    /// Position of every token within its own sequence.
    pub fn positions(&self) -> Vec<u32> {
        let mut pos = Vec::with_capacity(self.ids.len());
        for w in self.cu_seqlens.windows(2) {
            pos.extend(0..(w[1] - w[0]) as u32);
        }
        pos
    }

    /// Index of each sequence's last token (where pooling reads).
    pub fn last_token_indices(&self) -> Vec<u32> {
        self.cu_seqlens[1..].iter().map(|&e| e as u32 - 1).collect()
    }

    /// Checks what the model cannot compute: empty sequences, sequences longer than the
    /// rotary range, ids outside the embedding table.
    pub fn validate(&self, cfg: &Qwen3Config) -> Result<()> {
        for (i, w) in self.cu_seqlens.windows(2).enumerate() {
            let len = w[1] - w[0];
            if len == 0 {
                return Err(ModelError::Input(format!("sequence {i} is empty")));
            }
            if len > cfg.max_position_embeddings {
                return Err(ModelError::Input(format!(
                    "sequence {i} has {len} tokens, more than the model's {} positions",
                    cfg.max_position_embeddings
                )));
            }
            if let Some(&bad) = self.ids[w[0]..w[1]]
                .iter()
                .find(|&&id| id as usize >= cfg.vocab_size)
            {
                return Err(ModelError::Input(format!(
                    "sequence {i} has token id {bad}, outside the vocabulary of {}",
                    cfg.vocab_size
                )));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_of_mixed_lengths() {
        let b = PackedBatch::new(&[vec![5, 6, 7], vec![8], vec![9, 10]]);
        assert_eq!(b.ids(), &[5, 6, 7, 8, 9, 10]);
        assert_eq!(b.cu_seqlens(), &[0, 3, 4, 6]);
        assert_eq!(b.positions(), vec![0, 1, 2, 0, 0, 1]);
        assert_eq!(b.last_token_indices(), vec![2, 3, 5]);
        assert_eq!((b.num_seqs(), b.num_tokens()), (3, 6));
    }
}
