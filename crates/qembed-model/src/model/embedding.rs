//! The token embedding table: as loaded, or quantized to int8 per row with the rest of
//! the model (`--quantize int8`), looked up per batch either way.
//!
//! The table is a quarter of Qwen3-Embedding-0.6B's parameters (151,669 rows of
//! 1024); kept in bf16 it would hold an int8 model's weights at 64 % of bf16's. Its
//! rows are looked up, never multiplied, so int8 costs only the rounding of each value
//! to 255 levels (the rule of `cpu::gemm::int8` per row, after each column is scaled
//! to its own range: see [`QuantizedRows`]).

use candle_core::{DType, Device, Tensor};

use crate::cpu::gemm::QuantizedRows;
use crate::Result;

pub(super) enum Embedding {
    /// The table as loaded (the checkpoint's or `--dtype`'s dtype).
    Dense(Tensor),
    /// Per-row int8 values and scales, `[rows, cols]`, on the CPU (boxed: the model
    /// holds one of the two, and a tensor is a pointer).
    Int8 {
        rows: Box<QuantizedRows>,
        cols: usize,
    },
}

impl Embedding {
    /// `table` quantized per row.
    pub(super) fn int8(table: &Tensor) -> Result<Self> {
        let cols = table.dims2()?.1;
        Ok(Self::Int8 {
            rows: Box::new(QuantizedRows::new(table)?),
            cols,
        })
    }

    /// The rows `ids` (a 1-D u32 tensor of ids below the vocabulary size) in `dtype`,
    /// `[ids, cols]`.
    pub(super) fn index_select(&self, ids: &Tensor, dtype: DType) -> Result<Tensor> {
        match self {
            Self::Dense(t) => Ok(t.index_select(ids, 0)?.to_dtype(dtype)?),
            Self::Int8 { rows, cols } => {
                let ids = ids.to_vec1::<u32>()?;
                let mut out = Vec::with_capacity(ids.len() * cols);
                for &id in &ids {
                    rows.push_row(id as usize, &mut out)?;
                }
                Ok(Tensor::from_vec(out, (ids.len(), *cols), &Device::Cpu)?.to_dtype(dtype)?)
            }
        }
    }
}
