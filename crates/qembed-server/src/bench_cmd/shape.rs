//! The model shapes `qembed bench` can build: the published Qwen3-Embedding sizes, and
//! the repository's tiny fixture for tests. Only the shape is real; the weights are
//! random (see `synth`).

use serde_json::json;

/// A named model shape: the `config.json` fields the loader reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shape {
    pub name: &'static str,
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub num_key_value_heads: usize,
    pub head_dim: usize,
    pub max_position_embeddings: usize,
    pub tie_word_embeddings: bool,
}

/// Every shape, by the name `--shape` takes.
pub const SHAPES: [Shape; 4] = [
    // Qwen/Qwen3-Embedding-0.6B's config.json.
    Shape {
        name: "0.6b",
        vocab_size: 151_669,
        hidden_size: 1024,
        intermediate_size: 3072,
        num_hidden_layers: 28,
        num_attention_heads: 16,
        num_key_value_heads: 8,
        head_dim: 128,
        max_position_embeddings: 32_768,
        tie_word_embeddings: true,
    },
    // Qwen3-Embedding-4B's layer shape; vocabulary and positions as 0.6B's (a
    // larger or smaller embedding table changes a row lookup, not the forward pass).
    Shape {
        name: "4b",
        vocab_size: 151_669,
        hidden_size: 2560,
        intermediate_size: 9728,
        num_hidden_layers: 36,
        num_attention_heads: 32,
        num_key_value_heads: 8,
        head_dim: 128,
        max_position_embeddings: 32_768,
        tie_word_embeddings: true,
    },
    // Qwen3-Embedding-8B's layer shape, likewise.
    Shape {
        name: "8b",
        vocab_size: 151_669,
        hidden_size: 4096,
        intermediate_size: 12_288,
        num_hidden_layers: 36,
        num_attention_heads: 32,
        num_key_value_heads: 8,
        head_dim: 128,
        max_position_embeddings: 32_768,
        tie_word_embeddings: false,
    },
    // models/qwen3-tiny-gqa (a unit test checks they agree).
    Shape {
        name: "tiny",
        vocab_size: 795,
        hidden_size: 64,
        intermediate_size: 160,
        num_hidden_layers: 3,
        num_attention_heads: 4,
        num_key_value_heads: 2,
        head_dim: 32,
        max_position_embeddings: 2048,
        tie_word_embeddings: false,
    },
];

impl std::str::FromStr for Shape {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let lower = s.to_ascii_lowercase();
        SHAPES
            .iter()
            .find(|shape| shape.name == lower)
            .copied()
            .ok_or_else(|| format!("unknown shape `{s}` (0.6b, 4b, 8b, tiny)"))
    }
}

/// Which initialisation a tensor gets: linear and embedding weights small and centred,
/// RMSNorm weights near one (as trained checkpoints have them), so that activations
/// stay finite through every layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Init {
    Weight,
    Norm,
}

/// One tensor of the checkpoint: its stored name, shape and initialisation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorSpec {
    pub name: String,
    pub shape: Vec<usize>,
    pub init: Init,
}

impl TensorSpec {
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }
}

impl Shape {
    /// The `config.json` a checkpoint of this shape carries (transformers 4.x layout).
    pub fn config_json(&self) -> serde_json::Value {
        json!({
            "architectures": ["Qwen3ForCausalLM"],
            "model_type": "qwen3",
            "attention_bias": false,
            "hidden_act": "silu",
            "vocab_size": self.vocab_size,
            "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
            "num_hidden_layers": self.num_hidden_layers,
            "num_attention_heads": self.num_attention_heads,
            "num_key_value_heads": self.num_key_value_heads,
            "head_dim": self.head_dim,
            "max_position_embeddings": self.max_position_embeddings,
            "rms_norm_eps": 1e-6,
            "rope_theta": 1_000_000.0,
            "rope_scaling": null,
            "use_sliding_window": false,
            "tie_word_embeddings": self.tie_word_embeddings,
            "torch_dtype": "bfloat16",
        })
    }

    /// The tensors of a Qwen3-Embedding checkpoint of this shape, named as
    /// `Qwen3Model` saves them (no `model.` prefix, no `lm_head`: embeddings need none).
    pub fn tensors(&self) -> Vec<TensorSpec> {
        let (h, hd, inter) = (self.hidden_size, self.head_dim, self.intermediate_size);
        let (q, kv) = (self.num_attention_heads * hd, self.num_key_value_heads * hd);
        let t = |name: String, shape: Vec<usize>, init| TensorSpec { name, shape, init };
        let mut out = vec![t(
            "embed_tokens.weight".into(),
            vec![self.vocab_size, h],
            Init::Weight,
        )];
        for i in 0..self.num_hidden_layers {
            let p = format!("layers.{i}");
            out.extend([
                t(format!("{p}.input_layernorm.weight"), vec![h], Init::Norm),
                t(
                    format!("{p}.self_attn.q_proj.weight"),
                    vec![q, h],
                    Init::Weight,
                ),
                t(
                    format!("{p}.self_attn.k_proj.weight"),
                    vec![kv, h],
                    Init::Weight,
                ),
                t(
                    format!("{p}.self_attn.v_proj.weight"),
                    vec![kv, h],
                    Init::Weight,
                ),
                t(
                    format!("{p}.self_attn.o_proj.weight"),
                    vec![h, q],
                    Init::Weight,
                ),
                t(format!("{p}.self_attn.q_norm.weight"), vec![hd], Init::Norm),
                t(format!("{p}.self_attn.k_norm.weight"), vec![hd], Init::Norm),
                t(
                    format!("{p}.post_attention_layernorm.weight"),
                    vec![h],
                    Init::Norm,
                ),
                t(
                    format!("{p}.mlp.gate_proj.weight"),
                    vec![inter, h],
                    Init::Weight,
                ),
                t(
                    format!("{p}.mlp.up_proj.weight"),
                    vec![inter, h],
                    Init::Weight,
                ),
                t(
                    format!("{p}.mlp.down_proj.weight"),
                    vec![h, inter],
                    Init::Weight,
                ),
            ]);
        }
        out.push(t("norm.weight".into(), vec![h], Init::Norm));
        out
    }

    /// Parameters of the embedding table, and of everything else.
    pub fn params(&self) -> (usize, usize) {
        let embed = self.vocab_size * self.hidden_size;
        let total: usize = self.tensors().iter().map(TensorSpec::numel).sum();
        (embed, total - embed)
    }

    /// Bytes the loaded weights take in host memory when the model runs on the CPU:
    /// the linear layers in the compute dtype, the embedding table and norms in f32
    /// (the CPU path keeps activations in f32). Activations come on top.
    pub fn cpu_weight_bytes(&self, dtype_bytes: usize) -> usize {
        let (embed, rest) = self.params();
        embed * 4 + rest * dtype_bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use qembed_model::Qwen3Config;

    /// The tiny shape is the fixture's, and every shape's config parses with the real
    /// loader to the fields it was built from.
    #[test]
    fn tiny_matches_the_fixture_and_configs_parse() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../models/qwen3-tiny-gqa/config.json");
        let fixture = Qwen3Config::from_file(&path).unwrap();
        for shape in SHAPES {
            let cfg = Qwen3Config::from_json(&shape.config_json().to_string()).unwrap();
            assert_eq!(
                (cfg.hidden_size, cfg.num_hidden_layers, cfg.head_dim),
                (shape.hidden_size, shape.num_hidden_layers, shape.head_dim)
            );
            if shape.name == "tiny" {
                assert_eq!(cfg, fixture);
            }
        }
    }

    /// Parameter counts land where the published model sizes say.
    #[test]
    fn parameter_counts_match_the_model_names() {
        let total = |name: &str| {
            let (e, r) = name.parse::<Shape>().unwrap().params();
            (e + r) as f64 / 1e9
        };
        assert!((0.55..0.65).contains(&total("0.6b")), "{}", total("0.6b"));
        assert!((3.8..4.2).contains(&total("4b")), "{}", total("4b"));
        // 8B counts its untied lm_head, which an embedding checkpoint does not carry.
        assert!((6.9..7.7).contains(&total("8b")), "{}", total("8b"));
        assert!("13b"
            .parse::<Shape>()
            .unwrap_err()
            .contains("0.6b, 4b, 8b, tiny"));
    }
}
