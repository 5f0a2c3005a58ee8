//! How close an output must be to its transformers reference: the one table that the
//! parity test suites (through the test kit) and `qembed check` both read, so that an
//! operator's check of a device and CI hold the same bounds. A crate of its own, with
//! no dependencies, so that the test kit can read it without a dependency cycle (the
//! model's own tests use the test kit).
//!
//! The bounds are set from measurements with a stated margin: loose enough for every
//! kernel on every CPU measured, tight enough that a wrong result fails. Two different
//! fixture texts already reach cosine 0.9954, so a bound of 0.999 would barely tell
//! right from wrong.

/// The precision a model computes in, as far as the gates care.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Precision {
    F32,
    F16,
    Bf16,
}

impl Precision {
    /// From a dtype's name, as candle's `DType` or qembed's `DTypeChoice` print it
    /// (`F32`, `F16`, `BF16`, `Bf16`, any case); `None` for other dtypes.
    pub fn of(name: &str) -> Option<Self> {
        match name.to_ascii_lowercase().as_str() {
            "f32" => Some(Self::F32),
            "f16" => Some(Self::F16),
            "bf16" => Some(Self::Bf16),
            _ => None,
        }
    }
}

/// How close each vector must be to its reference.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Gate {
    pub min_cosine: f64,
    /// Largest |got - want| of any component (raw, unnormalised vectors).
    pub max_abs: f32,
}

/// The gate against transformers' f32 vectors for a CPU model computing in `p`.
///
/// Measured worst over the 4 fixtures x 46 cases, per kernel of the AMD EPYC Zen 3 CI
/// machine (portable, avx2, and mkl with its feature; `cargo test -p qembed-model --test
/// parity -- --nocapture` prints each), as 1 - cosine / max |diff| on the raw vectors,
/// and the gate set from it (mkl's bf16: 4.2e-5 / 2.8e-2, inside the same gate; the amx
/// kernel is not measured on this CPU):
/// - f32: < 1e-8 / 2.7e-6 → gate 1e-6 / 2e-5 (about 7x the difference)
/// - f16: 7.6e-7 / 3.7e-3 → gate 1e-5 / 2e-2 (13x / 5x)
/// - bf16: 5.2e-5 / 2.8e-2 → gate 1e-4 / 1e-1 (2x / 3.5x; bf16 keeps 8 bits of mantissa)
pub fn gate(p: Precision) -> Gate {
    match p {
        Precision::F32 => Gate {
            min_cosine: 0.999_999,
            max_abs: 2e-5,
        },
        Precision::F16 => Gate {
            min_cosine: 0.999_99,
            max_abs: 2e-2,
        },
        Precision::Bf16 => Gate {
            min_cosine: 0.999_9,
            max_abs: 1e-1,
        },
    }
}

/// The gate for the CUDA forward pass: **provisional, not yet measured on a GPU** (no
/// GPU run has happened; the CUDA kernels were built and run only on the emulator). The
/// GPU computes f16/bf16 activations (the CPU kernels keep f32 activations), so these
/// are the thresholds the CUDA suite had, cosine 0.999 (0.9999 for f32) with an
/// absolute bound to match; the first GPU run's printed worst values replace them.
pub fn cuda_gate(p: Precision) -> Gate {
    let f32 = p == Precision::F32;
    Gate {
        min_cosine: if f32 { 0.999_9 } else { 0.999 },
        max_abs: if f32 { 2e-2 } else { 2e-1 },
    }
}

/// Two runs of the same model that must agree (a text alone vs in a batch, TP=N vs
/// TP=1, fused vs unfused ops), given the gate `g` against transformers: the same
/// arithmetic up to summation order, so ten times closer in cosine.
pub fn same_gate(g: Gate) -> Gate {
    Gate {
        min_cosine: 1.0 - (1.0 - g.min_cosine) / 10.0,
        max_abs: g.max_abs,
    }
}

/// Largest |score - reference| of a reranker score (`sigmoid(l_yes - l_no)`) on the
/// CPU in `p`.
///
/// transformers itself, run in bf16 on the fixtures, is off its own f32 scores by up
/// to 1.9e-2 (tied) and 9.6e-3 (head); in f16 by 3.0e-3 and 1.3e-3. qembed measured
/// 1.2e-2 / 1.1e-2 in bf16 and 1.9e-3 / 6.6e-4 in f16; the bounds leave ~20 % above
/// the worst. f32 is held to 1e-4.
pub fn rerank_gate(p: Precision) -> f64 {
    match p {
        Precision::F32 => 1e-4,
        Precision::F16 => 2.3e-3,
        Precision::Bf16 => 1.5e-2,
    }
}

/// The reranker score gate on CUDA: **provisional, not measured on a GPU**, like
/// [`cuda_gate`]. The GPU's f16/bf16 activations round more than the CPU's f32 ones,
/// so reduced precision gets 3e-2 (about twice the CPU's bf16 bound) and f32 1e-3.
pub fn cuda_rerank_gate(p: Precision) -> f64 {
    if p == Precision::F32 {
        1e-3
    } else {
        3e-2
    }
}

/// The worst of one comparison: its lowest cosine and largest |got - want|, and the
/// cases (indices) they came from.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Worst {
    pub cosine: f64,
    pub cosine_case: usize,
    pub abs: f32,
    pub abs_case: usize,
}

/// The first way a comparison misses, for the caller to word (a test panics, `qembed
/// check` prints a FAIL row).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Miss {
    /// Not as many outputs as references.
    Count { got: usize, want: usize },
    /// Case `case`'s vector is not as long as its reference.
    Length {
        case: usize,
        got: usize,
        want: usize,
    },
    /// Case `case`'s vector holds a NaN or an infinity.
    NonFinite { case: usize },
    /// The worst cosine (of case `Worst::cosine_case`) is below the gate, or NaN.
    Cosine,
    /// The worst |diff| (of case `Worst::abs_case`) is above the gate.
    Abs,
}

/// Compares `got[i]` with `want[i]` for every case: as many vectors, each as long and
/// finite (checked in that order, stopping at the first miss), then the worst cosine
/// and worst |diff| over all cases against `gate`. Returns the worst seen (up to a
/// miss) and the miss, if any.
pub fn compare<G: AsRef<[f32]>, W: AsRef<[f32]>>(
    got: &[G],
    want: &[W],
    gate: Gate,
) -> (Worst, Option<Miss>) {
    let mut worst = Worst {
        cosine: f64::INFINITY,
        cosine_case: 0,
        abs: 0.0,
        abs_case: 0,
    };
    if got.len() != want.len() {
        let miss = Miss::Count {
            got: got.len(),
            want: want.len(),
        };
        return (worst, Some(miss));
    }
    for (case, (g, w)) in got.iter().zip(want).enumerate() {
        let (g, w) = (g.as_ref(), w.as_ref());
        if g.len() != w.len() {
            let miss = Miss::Length {
                case,
                got: g.len(),
                want: w.len(),
            };
            return (worst, Some(miss));
        }
        if !g.iter().all(|x| x.is_finite()) {
            return (worst, Some(Miss::NonFinite { case }));
        }
        let c = cosine(g, w);
        if c < worst.cosine || c.is_nan() {
            worst.cosine = c;
            worst.cosine_case = case;
        }
        let a = g
            .iter()
            .zip(w)
            .map(|(x, y)| (x - y).abs())
            .fold(0f32, f32::max);
        if a > worst.abs {
            worst.abs = a;
            worst.abs_case = case;
        }
    }
    // A NaN cosine fails too.
    let miss = if worst.cosine.is_nan() || worst.cosine < gate.min_cosine {
        Some(Miss::Cosine)
    } else if worst.abs > gate.max_abs {
        Some(Miss::Abs)
    } else {
        None
    };
    (worst, miss)
}

/// What quantized weights must keep against transformers' f32 vectors over all cases of
/// a fixture: the worst and the mean cosine of each vector to its reference, and the
/// ranking retrieval sees (Spearman's correlation between the pairwise cosine
/// similarities of the quantized vectors and of the references).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct QuantGate {
    pub worst_cosine: f64,
    pub mean_cosine: f64,
    pub spearman: f64,
}

/// The gate for `--quantize int8` on every fixture, the outlier fixture included: the
/// bounds the issue that introduced int8 set (worst 0.995, mean 0.999, Spearman 0.99),
/// not tightened from measurements: an int8 model that meets them is usable, and what
/// the kernels measure is printed beside them (see docs/quantization.md).
pub fn int8_gate() -> QuantGate {
    QuantGate {
        worst_cosine: 0.995,
        mean_cosine: 0.999,
        spearman: 0.99,
    }
}

/// Largest |score - reference| of a reranker score served with `--quantize int8`
/// (smoothed, from bf16), against transformers' f32 scores. Measured on the AMD EPYC
/// Zen 4 machine over every group of the two reranker fixtures (`crates/qembed-server/
/// tests/quantize.rs` prints it): 4.16e-2 (tied, whose int8 embedding table is also
/// its input side) and 1.80e-2 (head); the bound leaves about 20 % above the worst. The scores' ranking is held to [`int8_gate`]'s Spearman
/// bound as well: adjacent documents whose scores differ by less than this may swap.
pub fn int8_rerank_gate() -> f64 {
    5e-2
}

/// How quantized vectors compare with their references (see [`QuantGate`]).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Quality {
    pub worst_cosine: f64,
    /// The case of the worst cosine.
    pub worst_case: usize,
    pub mean_cosine: f64,
    pub spearman: f64,
}

impl Quality {
    /// `got[i]` against `want[i]` (as many of each, each pair one length; otherwise
    /// cosines are NaN and fail every gate).
    pub fn of<G: AsRef<[f32]>, W: AsRef<[f32]>>(got: &[G], want: &[W]) -> Self {
        let cosines: Vec<f64> = got
            .iter()
            .zip(want)
            .map(|(g, w)| cosine(g.as_ref(), w.as_ref()))
            .collect();
        let (worst_case, worst_cosine) =
            cosines
                .iter()
                .copied()
                .enumerate()
                .fold((0, f64::INFINITY), |(i, m), (j, c)| {
                    if c < m || c.is_nan() {
                        (j, c)
                    } else {
                        (i, m)
                    }
                });
        let mean_cosine = if got.len() == want.len() && !cosines.is_empty() {
            cosines.iter().sum::<f64>() / cosines.len() as f64
        } else {
            f64::NAN
        };
        let pairs = |v: &[&[f32]]| -> Vec<f64> {
            let mut out = Vec::new();
            for i in 0..v.len() {
                for j in i + 1..v.len() {
                    out.push(cosine(v[i], v[j]));
                }
            }
            out
        };
        let g: Vec<&[f32]> = got.iter().map(AsRef::as_ref).collect();
        let w: Vec<&[f32]> = want.iter().map(AsRef::as_ref).collect();
        Self {
            worst_cosine,
            worst_case,
            mean_cosine,
            spearman: spearman(&pairs(&g), &pairs(&w)),
        }
    }

    /// Whether every figure meets `gate` (NaN meets none).
    pub fn meets(&self, gate: QuantGate) -> bool {
        self.worst_cosine >= gate.worst_cosine
            && self.mean_cosine >= gate.mean_cosine
            && self.spearman >= gate.spearman
    }
}

/// Spearman's rank correlation of two samples of one length (ties get their average
/// rank); NaN when the lengths differ, there are fewer than two values, or a sample is
/// constant.
pub fn spearman(a: &[f64], b: &[f64]) -> f64 {
    if a.len() != b.len() || a.len() < 2 {
        return f64::NAN;
    }
    let (ra, rb) = (ranks(a), ranks(b));
    let mean = (a.len() as f64 + 1.0) / 2.0;
    let (mut num, mut da, mut db) = (0.0, 0.0, 0.0);
    for (x, y) in ra.iter().zip(&rb) {
        num += (x - mean) * (y - mean);
        da += (x - mean).powi(2);
        db += (y - mean).powi(2);
    }
    num / (da * db).sqrt()
}

/// 1-based ranks, ties averaged; NaN values rank as the largest.
fn ranks(v: &[f64]) -> Vec<f64> {
    let mut order: Vec<usize> = (0..v.len()).collect();
    order.sort_by(|&i, &j| v[i].total_cmp(&v[j]));
    let mut out = vec![0.0; v.len()];
    let mut start = 0;
    while start < order.len() {
        let mut end = start + 1;
        while end < order.len() && v[order[end]] == v[order[start]] {
            end += 1;
        }
        let rank = (start + end + 1) as f64 / 2.0;
        for &i in &order[start..end] {
            out[i] = rank;
        }
        start = end;
    }
    out
}

/// Cosine similarity of two vectors of one length, accumulated in f64 (`NaN` when
/// the lengths differ or a vector is zero, so that it fails every gate).
pub fn cosine(a: &[f32], b: &[f32]) -> f64 {
    if a.len() != b.len() {
        return f64::NAN;
    }
    let dot: f64 = a.iter().zip(b).map(|(x, y)| *x as f64 * *y as f64).sum();
    let na: f64 = a.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
    let nb: f64 = b.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
    dot / (na * nb)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gates_tighten_with_precision() {
        let (f32, f16, bf16) = (
            gate(Precision::F32),
            gate(Precision::F16),
            gate(Precision::Bf16),
        );
        assert!(f32.min_cosine > f16.min_cosine && f16.min_cosine > bf16.min_cosine);
        assert!(f32.max_abs < f16.max_abs && f16.max_abs < bf16.max_abs);
        assert!(same_gate(bf16).min_cosine > bf16.min_cosine);
        assert!(cuda_gate(Precision::F16).min_cosine < f16.min_cosine);
        assert!(cuda_rerank_gate(Precision::F16) > rerank_gate(Precision::Bf16));
        assert_eq!(Precision::of("BF16"), Some(Precision::Bf16));
        assert_eq!(Precision::of("Bf16"), Some(Precision::Bf16));
        assert_eq!(Precision::of("U8"), None);
    }

    #[test]
    fn spearman_ranks_with_ties_and_fails_on_nonsense() {
        assert!((spearman(&[1.0, 2.0, 3.0], &[10.0, 20.0, 30.0]) - 1.0).abs() < 1e-12);
        assert!((spearman(&[1.0, 2.0, 3.0], &[3.0, 2.0, 1.0]) + 1.0).abs() < 1e-12);
        // Monotone but not linear: still 1.
        assert!((spearman(&[1.0, 2.0, 3.0, 4.0], &[1.0, 8.0, 27.0, 1000.0]) - 1.0).abs() < 1e-12);
        // Ties averaged: ranks [1.5, 1.5, 3] vs [1, 2, 3] -> 0.866.
        let r = spearman(&[5.0, 5.0, 7.0], &[1.0, 2.0, 3.0]);
        assert!((r - 0.75f64.sqrt()).abs() < 1e-12, "{r}");
        assert!(spearman(&[1.0], &[1.0]).is_nan());
        assert!(spearman(&[1.0, 2.0], &[1.0]).is_nan());
        assert!(spearman(&[1.0, 1.0], &[1.0, 2.0]).is_nan());
    }

    #[test]
    fn quality_sees_a_swapped_vector_and_a_reordering() {
        let want = [
            vec![1.0, 0.0, 0.0],
            vec![0.9, 0.1, 0.0],
            vec![0.0, 1.0, 0.2],
            vec![0.1, 0.3, 1.0],
        ];
        let same = Quality::of(&want, &want);
        assert!((same.worst_cosine - 1.0).abs() < 1e-12 && (same.spearman - 1.0).abs() < 1e-12);
        assert!(same.meets(int8_gate()));
        let mut swapped = want.clone();
        swapped.swap(1, 2);
        let q = Quality::of(&swapped, &want);
        assert!(!q.meets(int8_gate()) && q.worst_case == 1, "{q:?}");
        assert!(Quality::of(&want[..2], &want).mean_cosine.is_nan());
    }

    #[test]
    fn cosine_is_scale_free_and_nan_on_mismatch() {
        let a = [1.0, 2.0, -3.0];
        assert!((cosine(&a, &[2.0, 4.0, -6.0]) - 1.0).abs() < 1e-12);
        assert!((cosine(&a, &[-1.0, -2.0, 3.0]) + 1.0).abs() < 1e-12);
        assert!(cosine(&a, &[1.0]).is_nan());
    }
}
