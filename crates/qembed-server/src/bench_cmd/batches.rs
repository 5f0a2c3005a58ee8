//! The batch shapes `qembed bench` runs: `BxL` or `mixed`, and the token ids in them.

/// One `--batches` entry: its name as given and the length of each sequence.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BatchShape {
    pub name: String,
    pub lengths: Vec<usize>,
}

impl BatchShape {
    /// Deterministic token ids, spread over the vocabulary but clear of its last 32
    /// entries (where the special tokens are).
    pub fn ids(&self, vocab_size: usize) -> Vec<Vec<u32>> {
        let span = vocab_size.saturating_sub(32).max(1) as u64;
        self.lengths
            .iter()
            .enumerate()
            .map(|(s, &len)| {
                (0..len)
                    .map(|t| ((s as u64 * 7919 + t as u64 * 104_729) % span) as u32)
                    .collect()
            })
            .collect()
    }
}

/// Parses `BxL` (B sequences of L tokens, both positive) or `mixed`: the 16 lengths
/// 8 + 337·i mod 505 that benches/forward and its PyTorch counterpart use (2693 tokens
/// in three clusters, 8..13, 177..181 and 345..349), so that the numbers compare; a
/// padding-free packed batch of unequal lengths, as a server sees.
pub fn parse_batch(s: &str) -> Result<BatchShape, String> {
    let lengths = if s == "mixed" {
        (0..16).map(|i| 8 + (i * 337) % 505).collect()
    } else {
        let bad = || format!("`{s}` is not BxL (e.g. 32x512: 32 sequences of 512 tokens) or mixed");
        let (b, l) = s.split_once('x').ok_or_else(bad)?;
        let (b, l): (usize, usize) = (b.parse().map_err(|_| bad())?, l.parse().map_err(|_| bad())?);
        if b == 0 || l == 0 {
            return Err(format!("`{s}`: sequences and length must be positive"));
        }
        vec![l; b]
    };
    Ok(BatchShape {
        name: s.to_string(),
        lengths,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_shapes_and_rejects_bad_ones() {
        let b = parse_batch("3x5").unwrap();
        assert_eq!((b.lengths, b.name.as_str()), (vec![5, 5, 5], "3x5"));
        let mixed = parse_batch("mixed").unwrap();
        assert_eq!(mixed.lengths.len(), 16);
        assert_eq!(mixed.lengths.iter().sum::<usize>(), 2693);
        assert_eq!(
            (mixed.lengths.iter().min(), mixed.lengths.iter().max()),
            (Some(&8), Some(&349))
        );
        for bad in ["32", "x5", "3x", "0x5", "3x0", "3x5x2", "-1x4", "mixd"] {
            assert!(parse_batch(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn ids_stay_inside_the_vocabulary() {
        let ids = parse_batch("4x300").unwrap().ids(795);
        assert!(ids.iter().flatten().all(|&t| t < 795 - 32));
        assert_eq!(ids.iter().map(Vec::len).sum::<usize>(), 1200);
    }
}
