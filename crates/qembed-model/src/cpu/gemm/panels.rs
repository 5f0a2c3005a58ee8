//! The weights of the f32 register-tiled kernels (`avx2`, `avx512`): a linear layer's
//! `[n, k]` weight in panels of `NR` output columns, `[k][NR]` each, kept in the
//! checkpoint's dtype (f32, bf16 or f16) and widened to f32 in registers by the kernel.
//! The kernels differ in the panel width and in the slot order their widening wants;
//! the packing, and the tests against an f64 product, are the same and live here.

use candle_core::{DType, Tensor};
use rayon::prelude::*;

/// bf16 bits, as a panel stores them.
#[derive(Clone, Copy)]
#[repr(transparent)]
pub(super) struct Bf16(pub(super) u16);

/// f16 bits, as a panel stores them.
#[derive(Clone, Copy)]
#[repr(transparent)]
pub(super) struct F16(pub(super) u16);

/// `[n, k]` values in panels of `NR` output columns, `[k][NR]` each, the columns past
/// `n` zero.
pub(super) struct Panels<E, const NR: usize> {
    pub(super) n: usize,
    pub(super) k: usize,
    data: Vec<E>,
}

impl<E: Copy + Send + Sync, const NR: usize> Panels<E, NR> {
    /// Packs row-major `[n, k]` values (in parallel: called at load), column `j` of a
    /// panel in slot `slot(j)`.
    fn pack<S: Copy + Sync>(
        w: &[S],
        (n, k): (usize, usize),
        zero: E,
        conv: impl Fn(S) -> E + Sync,
        slot: fn(usize) -> usize,
    ) -> Self {
        let mut data = vec![zero; n.div_ceil(NR) * k * NR];
        if k > 0 {
            data.par_chunks_mut(k * NR)
                .enumerate()
                .for_each(|(p, panel)| {
                    for j in 0..NR.min(n - p * NR) {
                        let row = &w[(p * NR + j) * k..][..k];
                        let slot = slot(j);
                        for (kk, &v) in row.iter().enumerate() {
                            panel[kk * NR + slot] = conv(v);
                        }
                    }
                });
        }
        Self { n, k, data }
    }

    /// Panel `p` from k index `k0` on.
    pub(super) fn at(&self, p: usize, k0: usize) -> *const E {
        self.data[p * self.k * NR + k0 * NR..].as_ptr()
    }
}

/// A linear layer's weight in an f32 kernel's form, in the checkpoint's dtype.
pub(super) enum Packed<const NR: usize> {
    F32(Panels<f32, NR>),
    Bf16(Panels<Bf16, NR>),
    F16(Panels<F16, NR>),
}

/// The order a kernel's widening reads a panel's columns in, per stored dtype: the slot
/// of column `j` (0..NR).
pub(super) struct SlotOrder {
    pub(super) f32: fn(usize) -> usize,
    pub(super) bf16: fn(usize) -> usize,
    pub(super) f16: fn(usize) -> usize,
}

/// Every column in its own slot.
pub(super) fn in_order(j: usize) -> usize {
    j
}

impl<const NR: usize> Packed<NR> {
    /// `w` (`[n, k]`, f32, bf16 or f16) packed for kernel `kernel` in its slot order.
    pub(super) fn from_tensor(
        w: &Tensor,
        kernel: &str,
        order: &SlotOrder,
    ) -> candle_core::Result<Self> {
        let (n, k) = w.dims2()?;
        let flat = w.flatten_all()?;
        Ok(match w.dtype() {
            DType::F32 => Self::F32(Panels::pack(
                &flat.to_vec1::<f32>()?,
                (n, k),
                0.0,
                |v| v,
                order.f32,
            )),
            DType::BF16 => Self::Bf16(Panels::pack(
                &flat.to_vec1::<half::bf16>()?,
                (n, k),
                Bf16(0),
                |v| Bf16(v.to_bits()),
                order.bf16,
            )),
            DType::F16 => Self::F16(Panels::pack(
                &flat.to_vec1::<half::f16>()?,
                (n, k),
                F16(0),
                |v| F16(v.to_bits()),
                order.f16,
            )),
            d => candle_core::bail!("{kernel}: {d:?} weights are not supported"),
        })
    }

    /// `(n, k)`.
    pub(super) fn shape(&self) -> (usize, usize) {
        match self {
            Self::F32(p) => (p.n, p.k),
            Self::Bf16(p) => (p.n, p.k),
            Self::F16(p) => (p.n, p.k),
        }
    }
}

/// The tests every f32 kernel runs, over its `linear(x, m, width, weight, prologue)`.
#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use crate::cpu::gemm::test_values as values;
    use crate::cpu::gemm::{reference_rows, Prologue};

    /// A kernel's `linear`: `prologue(x) @ w.T` for `(m, width)` rows of `x`.
    pub(in crate::cpu::gemm) type Linear<const NR: usize> =
        crate::cpu::gemm::op::Product<Packed<NR>>;

    /// The weights as each dtype stores them, packed in `order`, and their exact
    /// values in f64.
    fn weights<const NR: usize>(
        w: &[f32],
        (n, k): (usize, usize),
        dtype: DType,
        order: &SlotOrder,
    ) -> (Packed<NR>, Vec<f64>) {
        let t = Tensor::from_slice(w, (n, k), &candle_core::Device::Cpu)
            .unwrap()
            .to_dtype(dtype)
            .unwrap();
        let exact: Vec<f64> = t
            .to_dtype(DType::F64)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        (Packed::from_tensor(&t, "test", order).unwrap(), exact)
    }

    /// Against an f64 product of the same weight values, for every weight dtype and
    /// prologue, over `shapes` (`m, n, k`; a kernel gives shapes with every kind of tail
    /// for its tile: no rows, one row, rows and columns not a multiple of the tile, K
    /// not a multiple of anything and K over several passes, which accumulate into the
    /// output).
    pub(in crate::cpu::gemm) fn matches_an_f64_reference<const NR: usize>(
        linear: Linear<NR>,
        order: &SlotOrder,
        shapes: &[(usize, usize, usize)],
    ) {
        for &(m, n, k) in shapes {
            let w = values(n * k, 2 + n as u64);
            let norm: Vec<f32> = values(k, 9).iter().map(|v| 1.0 + v).collect();
            let prologues = [
                Prologue::None,
                Prologue::RmsNorm(&norm, 1e-6),
                Prologue::SwiGlu,
            ];
            for prologue in prologues {
                let width = prologue.input_width(k);
                let x: Vec<f32> = values(m * width, 1 + m as u64)
                    .iter()
                    .map(|v| 4.0 * v)
                    .collect();
                let a = reference_rows(&x, m, k, prologue);
                for dtype in [DType::F32, DType::BF16, DType::F16] {
                    let (packed, wx) = weights::<NR>(&w, (n, k), dtype, order);
                    let got = linear(&x, (m, width), &packed, prologue).unwrap();
                    assert_eq!(got.len(), m * n, "{m}x{n}x{k}");
                    for i in 0..m {
                        for j in 0..n {
                            let terms = (0..k).map(|t| a[i * k + t] * wx[j * k + t]);
                            let want: f64 = terms.clone().sum();
                            let scale: f64 = terms.map(f64::abs).sum::<f64>() + 1e-30;
                            let err = (got[i * n + j] as f64 - want).abs() / scale;
                            assert!(
                                err < 1e-5,
                                "{dtype:?} {m}x{n}x{k} at ({i},{j}): {} vs {want}",
                                got[i * n + j]
                            );
                        }
                    }
                }
            }
        }
    }

    /// A row's result does not depend on the rows packed beside it: rows `rows` alone
    /// and inside a batch of 23 give the same bits (batch invariance of the model).
    pub(in crate::cpu::gemm) fn a_row_alone_equals_the_row_in_a_batch<const NR: usize>(
        linear: Linear<NR>,
        order: &SlotOrder,
        rows: &[usize],
    ) {
        let (m, n, k) = (23, 50, 600);
        let x = values(m * k, 3);
        let (packed, _) = weights::<NR>(&values(n * k, 4), (n, k), DType::BF16, order);
        let all = linear(&x, (m, k), &packed, Prologue::None).unwrap();
        for &r in rows {
            let one = linear(&x[r * k..][..k], (1, k), &packed, Prologue::None).unwrap();
            assert_eq!(one, all[r * n..][..n], "row {r}");
        }
    }

    /// The SwiGLU and the residual add fused into the product give the plain product's
    /// SwiGLU and sum, bit for bit, for f32 and bf16 weights: K of one and of several
    /// passes, a partial last panel (the add), rows over several tasks.
    pub(in crate::cpu::gemm) fn fused_outputs_equal_the_plain_product<const NR: usize>(
        (linear, swiglu, add): (
            Linear<NR>,
            Linear<NR>,
            crate::cpu::gemm::op::ProductAdd<Packed<NR>>,
        ),
        order: &SlotOrder,
        named: &str,
    ) {
        for dtype in [DType::F32, DType::BF16] {
            for k in [50, 600] {
                let (gate_up, _) = weights::<NR>(&values(2 * 64 * k, 7), (2 * 64, k), dtype, order);
                crate::cpu::gemm::check_fused_swiglu(
                    named,
                    (64, k),
                    &[1, 13, 300],
                    &|x, mw, p| swiglu(x, mw, &gate_up, p).unwrap(),
                    &|x, mw, p| linear(x, mw, &gate_up, p).unwrap(),
                );
                let (w, _) = weights::<NR>(&values(45 * k, 8), (45, k), dtype, order);
                crate::cpu::gemm::check_fused_add(
                    named,
                    (45, k),
                    &[1, 13, 300],
                    &|x, mw, p, out| add(x, mw, &w, p, out).unwrap(),
                    &|x, mw, p| linear(x, mw, &w, p).unwrap(),
                );
            }
        }
    }

    /// Inputs whose width does not fit the layer are errors, not panics.
    pub(in crate::cpu::gemm) fn rejects_inputs_that_do_not_fit<const NR: usize>(
        linear: Linear<NR>,
        order: &SlotOrder,
    ) {
        let (packed, _) = weights::<NR>(&values(12, 5), (4, 3), DType::F32, order);
        assert!(linear(&[0.0; 5], (1, 5), &packed, Prologue::None).is_err());
        assert!(linear(&[0.0; 3], (1, 3), &packed, Prologue::SwiGlu).is_err());
        assert!(linear(
            &[0.0; 3],
            (1, 3),
            &packed,
            Prologue::RmsNorm(&[1.0; 2], 1e-6)
        )
        .is_err());
    }
}
