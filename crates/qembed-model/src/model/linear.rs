//! A linear layer: its weight in the form its GEMM kernel reads, and its bias.

use candle_core::Tensor;

use crate::cpu::gemm::{Gemm, PreparedWeight, Prologue};
use crate::Result;

pub(super) struct Linear {
    gemm: &'static dyn Gemm,
    weight: PreparedWeight,
    bias: Option<Tensor>,
}

impl Linear {
    /// Takes a `[out, in]` weight and prepares it for `gemm` (packing, on kernels that
    /// pack: the prepared form is the only copy kept).
    pub(super) fn new(
        gemm: &'static dyn Gemm,
        weight: Tensor,
        bias: Option<Tensor>,
    ) -> Result<Self> {
        Ok(Self {
            gemm,
            weight: gemm.prepare(weight)?,
            bias,
        })
    }

    /// `x @ W.T (+ b)`. With bf16/f16 weights and f32 activations (the CPU layout) the
    /// GEMM runs on the weights' dtype and returns f32.
    pub(super) fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.forward_with(x, Prologue::None)
    }

    /// `prologue(x) @ W.T (+ b)`: the kernel applies the prologue (a norm, SwiGLU) as it
    /// reads `x`, where it can.
    pub(super) fn forward_with(&self, x: &Tensor, prologue: Prologue) -> Result<Tensor> {
        let y = self.gemm.linear(x, &self.weight, prologue)?;
        Ok(match &self.bias {
            Some(b) => y.broadcast_add(b)?,
            None => y,
        })
    }
}
