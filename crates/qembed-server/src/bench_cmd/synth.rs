//! Writes a random-weight checkpoint of a [`Shape`]: `config.json` and one
//! `model.safetensors` in bf16 (the dtype the published checkpoints are stored in), so
//! that the real loader reads it exactly as it reads a downloaded model.

use std::borrow::Cow;
use std::path::Path;

use anyhow::{Context, Result};
use safetensors::tensor::{Dtype, View};

use super::shape::{Init, Shape, TensorSpec};

/// Standard deviation of the linear and embedding weights (Qwen3's initializer_range).
const WEIGHT_STD: f32 = 0.02;
/// Spread of the RMSNorm weights around one.
const NORM_SPREAD: f32 = 0.05;

/// The tokenizer of models/qwen3-tiny-gqa, written next to a saved `tiny` checkpoint so
/// that `qembed embed`/`serve` can load it as is (its vocabulary is the tiny shape's).
const TINY_TOKENIZER: &str = include_str!("../../../../models/qwen3-tiny-gqa/tokenizer.json");
const TINY_TOKENIZER_CONFIG: &str =
    include_str!("../../../../models/qwen3-tiny-gqa/tokenizer_config.json");

/// Bytes per stored value (bf16).
pub const STORED_BYTES: usize = 2;

/// Writes the checkpoint into `dir` (created if missing). The weights depend only on
/// the shape and `seed`. For `tiny` the fixture's tokenizer files are written too.
pub fn write_checkpoint(shape: &Shape, dir: &Path, seed: u64) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let config = dir.join("config.json");
    let text = serde_json::to_string_pretty(&shape.config_json())?;
    std::fs::write(&config, text).with_context(|| format!("writing {}", config.display()))?;
    if shape.name == "tiny" {
        for (name, text) in [
            ("tokenizer.json", TINY_TOKENIZER),
            ("tokenizer_config.json", TINY_TOKENIZER_CONFIG),
        ] {
            let path = dir.join(name);
            std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
        }
    }
    let tensors: Vec<(String, Lazy)> = shape
        .tensors()
        .into_iter()
        .enumerate()
        .map(|(i, spec)| {
            let seed = seed ^ (i as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15);
            (spec.name.clone(), Lazy { spec, seed })
        })
        .collect();
    let path = dir.join("model.safetensors");
    safetensors::serialize_to_file(tensors, None, &path)
        .with_context(|| format!("writing {}", path.display()))?;
    // The writer's temporary file is private (0600); a kept checkpoint should be as
    // readable as the config beside it, e.g. by a server running as another user.
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644))
            .with_context(|| format!("setting permissions of {}", path.display()))?;
    }
    Ok(())
}

/// A tensor whose bytes are generated when the writer asks for them, so that writing an
/// 8B checkpoint holds one tensor in memory at a time, not the whole model.
struct Lazy {
    spec: TensorSpec,
    seed: u64,
}

impl View for Lazy {
    fn dtype(&self) -> Dtype {
        Dtype::BF16
    }

    fn shape(&self) -> &[usize] {
        &self.spec.shape
    }

    fn data(&self) -> Cow<'_, [u8]> {
        let mut rng = SplitMix64(self.seed);
        let mut bytes = Vec::with_capacity(self.data_len());
        for _ in 0..self.spec.numel() {
            let z = rng.normalish();
            let v = match self.spec.init {
                Init::Weight => z * WEIGHT_STD,
                Init::Norm => 1.0 + z * NORM_SPREAD,
            };
            bytes.extend_from_slice(&bf16_bits(v).to_le_bytes());
        }
        Cow::Owned(bytes)
    }

    fn data_len(&self) -> usize {
        self.spec.numel() * STORED_BYTES
    }
}

/// splitmix64: tiny, fast and deterministic across platforms.
struct SplitMix64(u64);

impl SplitMix64 {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Mean 0, variance 1, within ±2√3: the sum of four 16-bit uniforms from one draw,
    /// rescaled (Irwin–Hall); close enough to normal for weights, and cheap.
    fn normalish(&mut self) -> f32 {
        let r = self.next_u64();
        let sum: u64 = (0..4).map(|i| (r >> (16 * i)) & 0xFFFF).sum();
        // Four uniforms on [0, 1): mean 2, variance 4/12.
        let s = sum as f32 / 65_536.0;
        (s - 2.0) * 3.0_f32.sqrt()
    }
}

/// f32 to bf16 with round-to-nearest-even (values here are finite).
fn bf16_bits(v: f32) -> u16 {
    let bits = v.to_bits();
    let round = 0x7FFF + ((bits >> 16) & 1);
    (bits.wrapping_add(round) >> 16) as u16
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalish_has_unit_variance_and_is_deterministic() {
        let mut a = SplitMix64(7);
        let xs: Vec<f32> = (0..100_000).map(|_| a.normalish()).collect();
        let mean = xs.iter().sum::<f32>() / xs.len() as f32;
        let var = xs.iter().map(|x| (x - mean) * (x - mean)).sum::<f32>() / xs.len() as f32;
        assert!(
            mean.abs() < 0.02 && (var - 1.0).abs() < 0.03,
            "{mean} {var}"
        );
        let mut b = SplitMix64(7);
        assert_eq!(b.normalish(), xs[0]);
    }

    #[test]
    fn bf16_rounds_to_nearest() {
        assert_eq!(bf16_bits(1.0), 0x3F80);
        assert_eq!(bf16_bits(-2.0), 0xC000);
        // 1 + 2^-8 is halfway between two bf16 values: ties go to the even one (1.0).
        assert_eq!(bf16_bits(1.0 + 1.0 / 256.0), 0x3F80);
        assert_eq!(bf16_bits(1.0 + 3.0 / 512.0), 0x3F81);
    }
}
