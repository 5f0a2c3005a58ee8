//! What the workspace's test suites share (a dev-dependency only): where the fixture
//! checkpoints live and the cosine every parity test compares with, so that the suites
//! of the model, the engine and the server measure parity the same way.

use std::path::{Path, PathBuf};

/// The fixture checkpoints `models/generate.py` makes, each with the vectors Hugging
/// Face transformers produced for it (`reference.json`).
pub const FIXTURES: [&str; 4] = [
    "qwen3-tiny-gqa",
    "qwen3-tiny-mqa",
    "qwen3-tiny-f16",
    "qwen3-tiny-tp4",
];

/// The directory of fixture `name`: `models/<name>` at the workspace root.
pub fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../models")
        .join(name)
}

/// Cosine similarity of two vectors of one length, accumulated in f64.
pub fn cosine(a: &[f32], b: &[f32]) -> f64 {
    assert_eq!(a.len(), b.len(), "cosine of vectors of different lengths");
    let dot: f64 = a.iter().zip(b).map(|(x, y)| *x as f64 * *y as f64).sum();
    let na: f64 = a.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
    let nb: f64 = b.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
    dot / (na * nb)
}

#[cfg(test)]
mod tests {
    #[test]
    fn fixtures_exist_and_cosine_is_scale_free() {
        for name in super::FIXTURES {
            assert!(
                super::fixture(name).join("reference.json").is_file(),
                "{name}"
            );
        }
        let a = [1.0, 2.0, -3.0];
        assert!((super::cosine(&a, &[2.0, 4.0, -6.0]) - 1.0).abs() < 1e-12);
        assert!((super::cosine(&a, &[-1.0, -2.0, 3.0]) + 1.0).abs() < 1e-12);
        assert!(super::cosine(&[1.0, 0.0], &[0.0, 1.0]).abs() < 1e-12);
    }
}
