//! One table of how close an output must be to its reference, used by every suite that
//! compares vectors (model parity, engine reference, tensor parallel, CUDA), and the one
//! comparison they all run: counts and lengths first, then the worst cosine and the
//! worst absolute difference over all cases.
//!
//! The bounds themselves live in `qembed_gates` (one table, which `qembed
//! check` reads too); these wrappers take a dtype however a test spells it.

use qembed_gates as table;
pub use qembed_gates::Gate;
use qembed_gates::{Miss, Precision};

/// The precision a test names: a `DType` or `DTypeChoice` (by its `Debug` name: `F32`,
/// `F16`, `BF16`/`Bf16`) or a `&str`.
fn precision(dtype: impl std::fmt::Debug) -> Precision {
    // A `&str` debug-prints with quotes; a dtype enum without.
    let name = format!("{dtype:?}");
    Precision::of(name.trim_matches('"'))
        .unwrap_or_else(|| panic!("no parity gate for dtype {name}"))
}

/// The gate against transformers' f32 vectors for a model computing in `dtype`:
/// `qembed_gates::gate`, where the table and its measurements live.
pub fn gate(dtype: impl std::fmt::Debug) -> Gate {
    table::gate(precision(dtype))
}

/// The (provisional) gate for the CUDA forward pass: `qembed_gates::cuda_gate`.
pub fn cuda_gate(dtype: impl std::fmt::Debug) -> Gate {
    table::cuda_gate(precision(dtype))
}

/// Two runs of the same model that must agree (a text alone vs in a batch, TP=N vs
/// TP=1, fused vs unfused ops) in `dtype`: `qembed_gates::same_gate`.
pub fn same_gate(dtype: impl std::fmt::Debug) -> Gate {
    table::same_gate(gate(dtype))
}

/// Largest |score - reference| of a reranker score on the CPU in `dtype`:
/// `qembed_gates::rerank_gate`.
pub fn rerank_gate(dtype: impl std::fmt::Debug) -> f64 {
    table::rerank_gate(precision(dtype))
}

pub use qembed_gates::Worst;

/// Compares `got[i]` with `want[i]` for every case (`qembed_gates::compare`): the same
/// number of vectors, each of the same length and finite, all within `gate`; panics on
/// the first miss. `names[i]` names case `i` in messages. Prints the worst (for the
/// log) and returns it.
pub fn assert_close<W: AsRef<[f32]>>(
    label: &str,
    got: &[Vec<f32>],
    want: &[W],
    names: &[&str],
    gate: Gate,
) -> Worst {
    let name = |i: usize| names.get(i).copied().unwrap_or("?");
    let (worst, miss) = table::compare(got, want, gate);
    match miss {
        Some(Miss::Count { got, want }) => {
            panic!("{label}: {got} outputs for {want} references")
        }
        Some(Miss::Length { case, .. }) => panic!("{label} {}: vector length", name(case)),
        Some(Miss::NonFinite { case }) => {
            panic!("{label} {}: non-finite output", name(case))
        }
        _ => {}
    }
    assert!(!got.is_empty(), "{label}: nothing to compare");
    println!(
        "{label}: {} cases, worst cosine {:.8} ({}), worst |diff| {:.2e} ({})",
        got.len(),
        worst.cosine,
        name(worst.cosine_case),
        worst.abs,
        name(worst.abs_case)
    );
    assert!(
        miss != Some(Miss::Cosine),
        "{label}: case {} cosine {} < {}",
        name(worst.cosine_case),
        worst.cosine,
        gate.min_cosine
    );
    assert!(
        miss != Some(Miss::Abs),
        "{label}: case {} max |diff| {} > {}",
        name(worst.abs_case),
        worst.abs,
        gate.max_abs
    );
    worst
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    #[should_panic(expected = "2 outputs for 3 references")]
    fn a_dropped_output_fails() {
        let want = vec![vec![1.0, 0.0]; 3];
        assert_close("t", &want[..2], &want, &[], gate("F32"));
    }

    #[test]
    #[should_panic(expected = "cosine")]
    fn a_wrong_vector_fails() {
        let want = vec![vec![1.0, 0.0], vec![0.0, 1.0]];
        let got = vec![vec![1.0, 0.0], vec![0.05, 1.0]];
        assert_close("t", &got, &want, &["a", "b"], gate("BF16"));
    }

    #[test]
    #[should_panic(expected = "|diff|")]
    fn a_scaled_vector_fails_on_abs() {
        let want = vec![vec![3.0, 4.0]];
        let got = vec![vec![3.3, 4.4]];
        assert_close("t", &got, &want, &["a"], gate("F32"));
    }

    #[test]
    fn equal_vectors_pass_and_report() {
        let want = vec![vec![3.0, 4.0], vec![1.0, 1.0]];
        let w = assert_close("t", &want, &want, &["a", "b"], gate("F16"));
        assert!(w.cosine > 0.999_999_9 && w.abs == 0.0);
        assert!(same_gate("BF16").min_cosine > gate("BF16").min_cosine);
    }
}
