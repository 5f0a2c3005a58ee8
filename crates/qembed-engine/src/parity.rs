//! The parity gates (`qembed_gates`) for a model's `DType`: what `qembed check` holds a
//! device to, from the same table the test suites use.

use qembed_model::DType;

pub use qembed_gates::{
    compare, cosine, int8_gate, int8_rerank_gate, same_gate, Gate, Miss, Precision, Quality,
    QuantGate, Worst,
};

/// The gates' precision for `dtype`; `None` for a dtype no model computes in.
pub fn precision(dtype: DType) -> Option<Precision> {
    Precision::of(&format!("{dtype:?}"))
}

/// `qembed_gates::gate` for `dtype`.
pub fn gate(dtype: DType) -> Option<Gate> {
    precision(dtype).map(qembed_gates::gate)
}

/// `qembed_gates::cuda_gate` for `dtype` (provisional: never measured on a GPU).
pub fn cuda_gate(dtype: DType) -> Gate {
    qembed_gates::cuda_gate(precision(dtype).unwrap_or(Precision::F16))
}

/// `qembed_gates::rerank_gate` for `dtype`.
pub fn rerank_gate(dtype: DType) -> Option<f64> {
    precision(dtype).map(qembed_gates::rerank_gate)
}

/// `qembed_gates::cuda_rerank_gate` for `dtype` (provisional: never measured on a GPU).
pub fn cuda_rerank_gate(dtype: DType) -> f64 {
    qembed_gates::cuda_rerank_gate(precision(dtype).unwrap_or(Precision::F16))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn candle_dtypes_map_to_the_table() {
        assert_eq!(precision(DType::BF16), Some(Precision::Bf16));
        assert_eq!(gate(DType::F32), Some(qembed_gates::gate(Precision::F32)));
        assert!(gate(DType::U8).is_none() && rerank_gate(DType::I64).is_none());
    }
}
