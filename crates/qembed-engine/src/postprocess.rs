//! Matryoshka truncation and L2 normalisation of pooled vectors.

use crate::{EngineError, Result};

/// Qwen3-Embedding is trained for Matryoshka truncation down to 32 dimensions.
pub const MIN_DIMENSIONS: usize = 32;

/// Checks a requested output size against the model's hidden size.
pub fn check_dimensions(dims: usize, hidden: usize) -> Result<()> {
    if (MIN_DIMENSIONS..=hidden).contains(&dims) {
        Ok(())
    } else {
        Err(EngineError::Dimensions {
            got: dims,
            min: MIN_DIMENSIONS,
            max: hidden,
        })
    }
}

/// Keeps the first `dims` values (all when `None`), then L2-normalises them unless
/// `normalize` is off. Truncation comes first: a truncated unit vector is not unit.
pub fn finish(raw: &[f32], dims: Option<usize>, normalize: bool) -> Result<Vec<f32>> {
    // Only a requested size is held to 32..=hidden; the full vector is always valid.
    if let Some(d) = dims {
        check_dimensions(d, raw.len())?;
    }
    let dims = dims.unwrap_or(raw.len());
    let mut v = raw[..dims].to_vec();
    if normalize {
        let norm = v.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
        // torch.nn.functional.normalize's eps: a zero vector stays zero, not NaN.
        let scale = 1.0 / norm.max(1e-12);
        v.iter_mut().for_each(|x| *x = (*x as f64 * scale) as f32);
    }
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn truncates_then_normalises() {
        let raw: Vec<f32> = (1..=64).map(|i| i as f32).collect();
        let v = finish(&raw, Some(32), true).unwrap();
        assert_eq!(v.len(), 32);
        let norm: f32 = v.iter().map(|x| x * x).sum::<f32>().sqrt();
        assert!((norm - 1.0).abs() < 1e-6);
        let expected = 1.0 / (1..=32).map(|i| (i * i) as f32).sum::<f32>().sqrt();
        assert!((v[0] - expected).abs() < 1e-7);
        assert_eq!(finish(&raw, Some(40), false).unwrap(), raw[..40].to_vec());
        assert_eq!(finish(&[0.0; 32], None, true).unwrap(), vec![0.0; 32]);
        // A model narrower than 32 still returns its full vector.
        assert_eq!(finish(&[3.0, 4.0], None, true).unwrap(), vec![0.6, 0.8]);
    }

    #[test]
    fn dimensions_outside_32_to_hidden_are_errors() {
        let raw = vec![1.0; 64];
        for bad in [0, 1, 31, 65, 1000] {
            let err = finish(&raw, Some(bad), true).unwrap_err();
            assert!(matches!(err, EngineError::Dimensions { got, min: 32, max: 64 } if got == bad));
        }
        assert!(finish(&raw, Some(64), true).is_ok());
    }
}
