//! How the weights are held once loaded: as the checkpoint (or `--dtype`) gives them,
//! or quantized to int8 at load (`--quantize int8`).

/// The form of the linear layers' weights and of the embedding table. Norms, attention
/// and the reranker head are not affected: they stay in the load dtype and f32.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Hash)]
pub enum Quantize {
    /// The weights in the load dtype (f32, bf16, f16).
    #[default]
    None,
    /// Symmetric int8 per output channel, with an f32 scale each (the embedding table
    /// per column, then per row); activations quantized per row at run time, int32
    /// sums, f32 out. CPU only.
    Int8,
}

impl std::str::FromStr for Quantize {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s.trim().to_ascii_lowercase().as_str() {
            "none" | "" => Ok(Self::None),
            "int8" => Ok(Self::Int8),
            other => Err(format!("unknown quantization `{other}` (none, int8)")),
        }
    }
}

impl std::fmt::Display for Quantize {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::None => "none",
            Self::Int8 => "int8",
        })
    }
}
