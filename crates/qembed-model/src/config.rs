//! The subset of a Hugging Face Qwen3 `config.json` that the forward pass needs.

use std::path::Path;

use serde::Deserialize;

use crate::{ModelError, Result};

/// Qwen3 hyper-parameters as written by `transformers` (both the 4.x layout with a
/// top-level `rope_theta`/`torch_dtype` and the 5.x one with `rope_parameters`/`dtype`).
/// Unknown fields are ignored: checkpoints carry many generation-only settings.
#[derive(Debug, Clone, PartialEq)]
pub struct Qwen3Config {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub num_key_value_heads: usize,
    pub head_dim: usize,
    pub rms_norm_eps: f64,
    pub rope_theta: f64,
    pub max_position_embeddings: usize,
    pub attention_bias: bool,
    /// The dtype the checkpoint was saved in (`torch_dtype`/`dtype`), if it says.
    pub torch_dtype: Option<String>,
    /// Whether the output projection is the embedding table (Qwen3-0.6B and its
    /// embedding/reranker models) rather than a `lm_head` of its own (4B, 8B).
    pub tie_word_embeddings: bool,
}

#[derive(Deserialize)]
struct RawConfig {
    vocab_size: usize,
    hidden_size: usize,
    intermediate_size: usize,
    num_hidden_layers: usize,
    num_attention_heads: usize,
    num_key_value_heads: Option<usize>,
    head_dim: Option<usize>,
    rms_norm_eps: f64,
    rope_theta: Option<f64>,
    rope_parameters: Option<RopeParameters>,
    rope_scaling: Option<RopeParameters>,
    max_position_embeddings: usize,
    #[serde(default)]
    attention_bias: bool,
    hidden_act: Option<String>,
    #[serde(default)]
    use_sliding_window: bool,
    /// transformers' Qwen3Config default is false.
    #[serde(default)]
    tie_word_embeddings: bool,
    torch_dtype: Option<String>,
    dtype: Option<String>,
    model_type: Option<String>,
}

#[derive(Deserialize)]
struct RopeParameters {
    rope_theta: Option<f64>,
    rope_type: Option<String>,
    #[serde(rename = "type")]
    kind: Option<String>,
}

impl RopeParameters {
    fn is_plain(&self) -> bool {
        matches!(
            self.rope_type.as_deref().or(self.kind.as_deref()),
            None | Some("default")
        )
    }
}

impl Qwen3Config {
    /// The dimensions tensor parallelism splits among the ranks, by their config.json
    /// names: a group size must divide every one of them.
    pub fn sharded_dims(&self) -> [(&'static str, usize); 3] {
        [
            ("num_attention_heads", self.num_attention_heads),
            ("num_key_value_heads", self.num_key_value_heads),
            ("intermediate_size", self.intermediate_size),
        ]
    }

    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|source| ModelError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        Self::from_json(&text).map_err(|message| ModelError::Config {
            path: path.to_path_buf(),
            message,
        })
    }

    /// Parses and checks a config; the error is a message for [`ModelError::Config`].
    pub fn from_json(text: &str) -> std::result::Result<Self, String> {
        let raw: RawConfig = serde_json::from_str(text).map_err(|e| e.to_string())?;
        if let Some(t) = raw.model_type.as_deref() {
            if t != "qwen3" {
                return Err(format!("model_type is `{t}`, expected `qwen3`"));
            }
        }
        if let Some(act) = raw.hidden_act.as_deref() {
            if act != "silu" {
                return Err(format!(
                    "hidden_act `{act}` is not supported (Qwen3 uses silu)"
                ));
            }
        }
        if raw.use_sliding_window {
            return Err("use_sliding_window=true is not supported".into());
        }
        for rope in [&raw.rope_parameters, &raw.rope_scaling]
            .into_iter()
            .flatten()
        {
            if !rope.is_plain() {
                return Err(
                    "only default rotary embeddings are supported (rope scaling found)".into(),
                );
            }
        }
        let rope_theta = raw
            .rope_theta
            .or(raw.rope_parameters.as_ref().and_then(|r| r.rope_theta))
            .unwrap_or(1_000_000.0);
        if raw.num_attention_heads == 0 {
            return Err("num_attention_heads must be positive".into());
        }
        let cfg = Self {
            vocab_size: raw.vocab_size,
            hidden_size: raw.hidden_size,
            intermediate_size: raw.intermediate_size,
            num_hidden_layers: raw.num_hidden_layers,
            num_attention_heads: raw.num_attention_heads,
            num_key_value_heads: raw.num_key_value_heads.unwrap_or(raw.num_attention_heads),
            head_dim: raw
                .head_dim
                .unwrap_or(raw.hidden_size / raw.num_attention_heads),
            rms_norm_eps: raw.rms_norm_eps,
            rope_theta,
            max_position_embeddings: raw.max_position_embeddings,
            attention_bias: raw.attention_bias,
            torch_dtype: raw.torch_dtype.or(raw.dtype),
            tie_word_embeddings: raw.tie_word_embeddings,
        };
        cfg.check()?;
        Ok(cfg)
    }

    fn check(&self) -> std::result::Result<(), String> {
        let positive = [
            ("vocab_size", self.vocab_size),
            ("hidden_size", self.hidden_size),
            ("intermediate_size", self.intermediate_size),
            ("num_hidden_layers", self.num_hidden_layers),
            ("num_key_value_heads", self.num_key_value_heads),
            ("head_dim", self.head_dim),
            ("max_position_embeddings", self.max_position_embeddings),
        ];
        if let Some((name, _)) = positive.iter().find(|(_, v)| *v == 0) {
            return Err(format!("{name} must be positive"));
        }
        if !self
            .num_attention_heads
            .is_multiple_of(self.num_key_value_heads)
        {
            return Err(format!(
                "num_attention_heads ({}) must be a multiple of num_key_value_heads ({})",
                self.num_attention_heads, self.num_key_value_heads
            ));
        }
        if !self.head_dim.is_multiple_of(2) {
            return Err(format!(
                "head_dim ({}) must be even for rotary embeddings",
                self.head_dim
            ));
        }
        if !(self.rms_norm_eps > 0.0 && self.rope_theta > 0.0) {
            return Err("rms_norm_eps and rope_theta must be positive".into());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The config.json of Qwen/Qwen3-Embedding-0.6B as published (transformers 4.51 layout).
    const QWEN3_EMBEDDING_0_6B: &str = r#"{
      "architectures": ["Qwen3ForCausalLM"], "attention_bias": false, "attention_dropout": 0.0,
      "bos_token_id": 151643, "eos_token_id": 151643, "head_dim": 128, "hidden_act": "silu",
      "hidden_size": 1024, "initializer_range": 0.02, "intermediate_size": 3072,
      "max_position_embeddings": 32768, "max_window_layers": 28, "model_type": "qwen3",
      "num_attention_heads": 16, "num_hidden_layers": 28, "num_key_value_heads": 8,
      "rms_norm_eps": 1e-06, "rope_scaling": null, "rope_theta": 1000000, "sliding_window": null,
      "tie_word_embeddings": true, "torch_dtype": "bfloat16", "transformers_version": "4.51.3",
      "use_cache": true, "use_sliding_window": false, "vocab_size": 151669
    }"#;

    #[test]
    fn parses_published_qwen3_embedding_config() {
        let c = Qwen3Config::from_json(QWEN3_EMBEDDING_0_6B).unwrap();
        assert_eq!(
            (c.hidden_size, c.head_dim, c.num_key_value_heads),
            (1024, 128, 8)
        );
        assert_eq!(c.rope_theta, 1_000_000.0);
        assert_eq!(c.torch_dtype.as_deref(), Some("bfloat16"));
        assert!(c.tie_word_embeddings);
        let untied = QWEN3_EMBEDDING_0_6B.replace(r#""tie_word_embeddings": true,"#, "");
        assert!(!Qwen3Config::from_json(&untied).unwrap().tie_word_embeddings);
    }

    #[test]
    fn reads_transformers5_rope_parameters() {
        let text = QWEN3_EMBEDDING_0_6B.replace(
            r#""rope_theta": 1000000,"#,
            r#""rope_parameters": {"rope_theta": 5000.0, "rope_type": "default"},"#,
        );
        assert_eq!(Qwen3Config::from_json(&text).unwrap().rope_theta, 5000.0);
    }

    #[test]
    fn rejects_bad_configs_with_reasons() {
        let cases = [
            (
                r#""num_key_value_heads": 8"#,
                r#""num_key_value_heads": 3"#,
                "multiple of",
            ),
            (
                r#""hidden_act": "silu""#,
                r#""hidden_act": "gelu""#,
                "hidden_act",
            ),
            (
                r#""model_type": "qwen3""#,
                r#""model_type": "llama""#,
                "model_type",
            ),
            (
                r#""rope_scaling": null"#,
                r#""rope_scaling": {"type": "yarn", "factor": 4.0}"#,
                "rope",
            ),
            (r#""hidden_size": 1024,"#, "", "hidden_size"),
            (r#""head_dim": 128"#, r#""head_dim": 0"#, "head_dim"),
        ];
        for (from, to, needle) in cases {
            let text = QWEN3_EMBEDDING_0_6B.replace(from, to);
            let err = Qwen3Config::from_json(&text).unwrap_err();
            assert!(err.contains(needle), "{to}: {err}");
        }
        assert!(Qwen3Config::from_json("{not json").is_err());
    }
}
