//! A linear layer: its weight in the form its GEMM kernel reads, and its bias.

use candle_core::{DType, Tensor};

use crate::cpu::gemm::{apply_prologue, column_max_abs, Gemm, PreparedWeight, Prologue};
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

    /// [`new`](Self::new) for an int8 kernel, the weight smoothed for inputs whose
    /// channels reached `act_max` (see `cpu::gemm::int8`).
    pub(super) fn new_smoothed(
        gemm: &'static dyn Gemm,
        weight: Tensor,
        bias: Option<Tensor>,
        act_max: &[f32],
    ) -> Result<Self> {
        Ok(Self {
            gemm,
            weight: gemm.prepare_smoothed(weight, act_max)?,
            bias,
        })
    }

    /// `x @ W.T (+ b)`. With bf16/f16 weights and f32 activations (the CPU layout) the
    /// GEMM runs on the weights' dtype and returns f32.
    pub(super) fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.forward_with(x, Prologue::None)
    }

    /// [`forward_with`](Self::forward_with), recording into `max` (one per input
    /// channel) the largest |value| each channel of `prologue(x)` reached: for
    /// measuring the activations an int8 layer will see.
    pub(super) fn forward_measured(
        &self,
        x: &Tensor,
        prologue: Prologue,
        max: &mut [f32],
    ) -> Result<Tensor> {
        let input = apply_prologue(x, prologue)?;
        let values = input
            .to_dtype(DType::F32)?
            .flatten_all()?
            .to_vec1::<f32>()?;
        column_max_abs(&values, max);
        self.forward_with(&input, Prologue::None)
    }

    /// `swiglu(prologue(x) @ W.T)` for a gate_up projection, where its kernel fuses the
    /// SwiGLU into the product (see `Gemm::linear_swiglu`); `None` where it does not, or
    /// where a bias must be added before the SwiGLU.
    pub(super) fn forward_swiglu(&self, x: &Tensor, prologue: Prologue) -> Result<Option<Tensor>> {
        if self.bias.is_some() {
            return Ok(None);
        }
        self.gemm
            .linear_swiglu(x, &self.weight, prologue)
            .transpose()
    }

    /// `out += prologue(x) @ W.T` in place where the kernel fuses the add (see
    /// `Gemm::linear_add`; `out` a contiguous f32 tensor that nothing else shares);
    /// false, with `out` untouched, where it does not or a bias is in the way.
    pub(super) fn forward_add(&self, out: &Tensor, x: &Tensor, prologue: Prologue) -> Result<bool> {
        if self.bias.is_some() || out.dtype() != DType::F32 || !out.is_contiguous() {
            return Ok(false);
        }
        match self.gemm.linear_add(out, x, &self.weight, prologue) {
            Some(done) => done.map(|()| true),
            None => Ok(false),
        }
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
