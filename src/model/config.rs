//! The model config (HF `config.json`), reduced to what the Llama family needs.

use anyhow::{Context, Result};
use serde::Deserialize;
use std::path::Path;

/// Architectures kiln implements, by their HF class name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Architecture {
    Llama,
    Mistral,
    Qwen2,
    Qwen3,
    /// Llama's layers with q/k/v and gate/up each stored as one fused weight.
    Phi3,
    /// Qwen3's attention with mixture-of-experts MLPs (`mlp.gate`, `mlp.experts.N`).
    Qwen3Moe,
    /// Mistral's attention with mixture-of-experts MLPs (`block_sparse_moe`, `w1/w2/w3`).
    Mixtral,
}

impl Architecture {
    pub const SUPPORTED: [&'static str; 7] = [
        "LlamaForCausalLM",
        "MistralForCausalLM",
        "Qwen2ForCausalLM",
        "Qwen3ForCausalLM",
        "Phi3ForCausalLM",
        "Qwen3MoeForCausalLM",
        "MixtralForCausalLM",
    ];

    pub fn from_hf(name: &str) -> Result<Self> {
        Ok(match name {
            "LlamaForCausalLM" => Architecture::Llama,
            "MistralForCausalLM" => Architecture::Mistral,
            "Qwen2ForCausalLM" => Architecture::Qwen2,
            "Qwen3ForCausalLM" => Architecture::Qwen3,
            "Phi3ForCausalLM" => Architecture::Phi3,
            "Qwen3MoeForCausalLM" => Architecture::Qwen3Moe,
            "MixtralForCausalLM" => Architecture::Mixtral,
            other => anyhow::bail!(
                "unsupported architecture '{other}'; kiln supports: {}",
                Self::SUPPORTED.join(", ")
            ),
        })
    }
}

/// `rope_scaling` as HF writes it (`rope_type`, or the older `type`).
#[derive(Clone, Debug, Deserialize, PartialEq)]
pub struct RopeScaling {
    #[serde(alias = "type")]
    pub rope_type: String,
    #[serde(default)]
    pub factor: Option<f64>,
    #[serde(default)]
    pub low_freq_factor: Option<f64>,
    #[serde(default)]
    pub high_freq_factor: Option<f64>,
    #[serde(default)]
    pub original_max_position_embeddings: Option<usize>,
}

#[derive(Clone, Debug, Deserialize)]
struct RawConfig {
    #[serde(default)]
    architectures: Vec<String>,
    hidden_size: usize,
    intermediate_size: usize,
    num_hidden_layers: usize,
    num_attention_heads: usize,
    num_key_value_heads: Option<usize>,
    head_dim: Option<usize>,
    vocab_size: usize,
    #[serde(default = "default_eps")]
    rms_norm_eps: f64,
    #[serde(default = "default_theta")]
    rope_theta: f64,
    #[serde(default)]
    rope_scaling: Option<RopeScaling>,
    #[serde(default = "default_max_pos")]
    max_position_embeddings: usize,
    #[serde(default)]
    tie_word_embeddings: bool,
    #[serde(default)]
    attention_bias: bool,
    #[serde(default)]
    sliding_window: Option<usize>,
    #[serde(default)]
    use_sliding_window: Option<bool>,
    #[serde(default)]
    torch_dtype: Option<String>,
    #[serde(default)]
    dtype: Option<String>,
    #[serde(default)]
    hidden_act: Option<String>,
    /// Rotary embedding on only this fraction of each head (Phi-3.5/4-mini): not supported.
    #[serde(default)]
    partial_rotary_factor: Option<f64>,
    /// Mixture of experts: Qwen3-MoE's `num_experts`, Mixtral's `num_local_experts`.
    #[serde(default)]
    num_experts: Option<usize>,
    #[serde(default)]
    num_local_experts: Option<usize>,
    #[serde(default)]
    num_experts_per_tok: Option<usize>,
    #[serde(default)]
    moe_intermediate_size: Option<usize>,
    #[serde(default)]
    norm_topk_prob: Option<bool>,
    #[serde(default)]
    decoder_sparse_step: Option<usize>,
    #[serde(default)]
    mlp_only_layers: Vec<usize>,
    #[serde(default)]
    eos_token_id: Option<serde_json::Value>,
    #[serde(default)]
    bos_token_id: Option<serde_json::Value>,
}

fn default_eps() -> f64 {
    1e-6
}
fn default_theta() -> f64 {
    10000.0
}
fn default_max_pos() -> usize {
    4096
}

/// The mixture-of-experts MLP of the layers that have one.
#[derive(Clone, Debug, PartialEq)]
pub struct MoeConfig {
    pub num_experts: usize,
    /// Experts each token is sent to.
    pub top_k: usize,
    /// Intermediate size of one expert.
    pub expert_intermediate_size: usize,
    /// Whether the chosen experts' weights are rescaled to sum to one (Mixtral always;
    /// Qwen3-MoE when `norm_topk_prob`).
    pub normalize_top_k: bool,
    /// Per layer: true where the MLP is the experts, false where it is a dense MLP of
    /// `intermediate_size` (Qwen3-MoE's `mlp_only_layers`, `decoder_sparse_step`).
    pub sparse_layers: Vec<bool>,
}

impl MoeConfig {
    fn from_raw(architecture: Architecture, raw: &RawConfig) -> Result<Option<MoeConfig>> {
        let (num_experts, expert_intermediate_size, normalize_top_k) = match architecture {
            Architecture::Qwen3Moe => (
                raw.num_experts.unwrap_or(0),
                raw.moe_intermediate_size
                    .context("Qwen3-MoE config has no moe_intermediate_size")?,
                raw.norm_topk_prob.unwrap_or(false),
            ),
            Architecture::Mixtral => (
                raw.num_local_experts.unwrap_or(0),
                raw.intermediate_size,
                true,
            ),
            _ => return Ok(None),
        };
        if num_experts == 0 {
            return Ok(None);
        }
        let top_k = raw.num_experts_per_tok.unwrap_or(2);
        anyhow::ensure!(
            (1..=num_experts).contains(&top_k),
            "num_experts_per_tok {top_k} must be between 1 and the {num_experts} experts"
        );
        let step = raw.decoder_sparse_step.unwrap_or(1).max(1);
        let sparse_layers = (0..raw.num_hidden_layers)
            .map(|i| !raw.mlp_only_layers.contains(&i) && (i + 1) % step == 0)
            .collect();
        Ok(Some(MoeConfig {
            num_experts,
            top_k,
            expert_intermediate_size,
            normalize_top_k,
            sparse_layers,
        }))
    }

    /// Whether layer `i`'s MLP is the experts.
    pub fn is_sparse(&self, layer: usize) -> bool {
        self.sparse_layers.get(layer).copied().unwrap_or(false)
    }
}

/// A validated model config.
#[derive(Clone, Debug, PartialEq)]
pub struct ModelConfig {
    pub architecture: Architecture,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_layers: usize,
    pub num_heads: usize,
    pub num_kv_heads: usize,
    pub head_dim: usize,
    pub vocab_size: usize,
    pub rms_norm_eps: f64,
    pub rope_theta: f64,
    pub rope_scaling: Option<RopeScaling>,
    pub max_position_embeddings: usize,
    pub tie_word_embeddings: bool,
    pub qkv_bias: bool,
    pub qk_norm: bool,
    pub sliding_window: Option<usize>,
    /// The experts, for mixture-of-experts models.
    pub moe: Option<MoeConfig>,
    /// The dtype the checkpoint was saved in, if it says.
    pub checkpoint_dtype: Option<String>,
    pub eos_token_ids: Vec<u32>,
    pub bos_token_id: Option<u32>,
}

fn token_ids(v: &Option<serde_json::Value>) -> Vec<u32> {
    match v {
        Some(serde_json::Value::Number(n)) => {
            n.as_u64().map(|x| vec![x as u32]).unwrap_or_default()
        }
        Some(serde_json::Value::Array(a)) => a
            .iter()
            .filter_map(|x| x.as_u64())
            .map(|x| x as u32)
            .collect(),
        _ => Vec::new(),
    }
}

impl ModelConfig {
    pub fn from_file(path: &Path) -> Result<Self> {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        Self::from_json(&text).with_context(|| format!("in {}", path.display()))
    }

    pub fn from_json(text: &str) -> Result<Self> {
        let raw: RawConfig =
            serde_json::from_str(text).context("config.json is not a valid model config")?;
        let arch_name = raw
            .architectures
            .first()
            .context("config.json has no 'architectures' entry")?;
        let architecture = Architecture::from_hf(arch_name)?;
        if let Some(act) = &raw.hidden_act {
            anyhow::ensure!(act == "silu", "unsupported hidden_act '{act}' (only silu)");
        }
        if let Some(f) = raw.partial_rotary_factor {
            anyhow::ensure!(
                f == 1.0,
                "partial_rotary_factor {f} is not supported (rotary embedding on whole heads only)"
            );
        }
        let num_kv_heads = raw.num_key_value_heads.unwrap_or(raw.num_attention_heads);
        anyhow::ensure!(
            raw.num_attention_heads > 0 && num_kv_heads > 0,
            "head counts must be positive"
        );
        anyhow::ensure!(
            raw.num_attention_heads.is_multiple_of(num_kv_heads),
            "num_attention_heads {} is not a multiple of num_key_value_heads {num_kv_heads}",
            raw.num_attention_heads
        );
        let head_dim = raw
            .head_dim
            .unwrap_or(raw.hidden_size / raw.num_attention_heads);
        anyhow::ensure!(
            head_dim.is_multiple_of(2),
            "head_dim {head_dim} must be even for rotary embeddings"
        );
        let sliding_window = match (architecture, raw.use_sliding_window) {
            // Qwen2/3 only slide when use_sliding_window says so.
            (
                Architecture::Qwen2 | Architecture::Qwen3 | Architecture::Qwen3Moe,
                Some(false) | None,
            ) => None,
            _ => raw.sliding_window,
        };
        let moe = MoeConfig::from_raw(architecture, &raw)?;
        Ok(ModelConfig {
            architecture,
            hidden_size: raw.hidden_size,
            intermediate_size: raw.intermediate_size,
            num_layers: raw.num_hidden_layers,
            num_heads: raw.num_attention_heads,
            num_kv_heads,
            head_dim,
            vocab_size: raw.vocab_size,
            rms_norm_eps: raw.rms_norm_eps,
            rope_theta: raw.rope_theta,
            rope_scaling: raw.rope_scaling,
            max_position_embeddings: raw.max_position_embeddings,
            tie_word_embeddings: raw.tie_word_embeddings,
            qkv_bias: architecture == Architecture::Qwen2 || raw.attention_bias,
            qk_norm: matches!(architecture, Architecture::Qwen3 | Architecture::Qwen3Moe),
            sliding_window,
            moe,
            checkpoint_dtype: raw.torch_dtype.or(raw.dtype),
            eos_token_ids: token_ids(&raw.eos_token_id),
            bos_token_id: token_ids(&raw.bos_token_id).first().copied(),
        })
    }

    /// EOS ids of a generation_config.json (a number or a list).
    pub fn eos_from_generation_config(text: &str) -> Vec<u32> {
        let v: serde_json::Value = serde_json::from_str(text).unwrap_or_default();
        token_ids(&v.get("eos_token_id").cloned())
    }

    pub fn q_width(&self) -> usize {
        self.num_heads * self.head_dim
    }

    pub fn kv_width(&self) -> usize {
        self.num_kv_heads * self.head_dim
    }

    /// Parameter count, for memory planning and logs.
    pub fn num_parameters(&self) -> u64 {
        self.parameters(|m| m.num_experts)
    }

    /// Parameters one token's forward pass reads: for mixture-of-experts layers only its
    /// `top_k` experts (and the router). The weights a batch-1 decode step streams, for
    /// bandwidth rooflines; larger batches touch more experts.
    pub fn active_parameters(&self) -> u64 {
        self.parameters(|m| m.top_k)
    }

    /// Parameter count with `experts(moe)` experts per sparse layer.
    fn parameters(&self, experts: impl Fn(&MoeConfig) -> usize) -> u64 {
        let h = self.hidden_size as u64;
        let attn = h * (self.q_width() + 2 * self.kv_width()) as u64 + self.q_width() as u64 * h;
        let dense_mlp = 3 * h * self.intermediate_size as u64;
        let layers: u64 = (0..self.num_layers)
            .map(|i| {
                let mlp = match &self.moe {
                    // Every expert's weights, and the router's.
                    Some(m) if m.is_sparse(i) => {
                        experts(m) as u64 * 3 * h * m.expert_intermediate_size as u64
                            + m.num_experts as u64 * h
                    }
                    _ => dense_mlp,
                };
                attn + mlp + 2 * h
            })
            .sum();
        let embed = self.vocab_size as u64 * h;
        let head = if self.tie_word_embeddings { 0 } else { embed };
        layers + embed + head + h
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sparse_layers_follow_the_step_and_the_dense_list() {
        let c = ModelConfig::from_json(
            r#"{"architectures": ["Qwen3MoeForCausalLM"], "hidden_size": 64,
            "intermediate_size": 128, "moe_intermediate_size": 32, "num_experts": 4,
            "num_experts_per_tok": 2, "decoder_sparse_step": 2, "mlp_only_layers": [3],
            "num_hidden_layers": 6, "num_attention_heads": 4, "vocab_size": 100}"#,
        )
        .unwrap();
        let moe = c.moe.unwrap();
        assert_eq!(moe.sparse_layers, [false, true, false, false, false, true]);
        assert!(
            !moe.normalize_top_k,
            "Qwen3-MoE's norm_topk_prob defaults to false"
        );
        let bad = r#"{"architectures": ["MixtralForCausalLM"], "hidden_size": 64,
            "intermediate_size": 128, "num_local_experts": 2, "num_experts_per_tok": 3,
            "num_hidden_layers": 1, "num_attention_heads": 4, "vocab_size": 100}"#;
        let err = ModelConfig::from_json(bad).unwrap_err().to_string();
        assert!(err.contains("num_experts_per_tok 3"), "{err}");
    }

    fn phi3(extra: &str) -> Result<ModelConfig> {
        ModelConfig::from_json(&format!(
            r#"{{"architectures": ["Phi3ForCausalLM"], "hidden_size": 64,
                "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 8,
                "num_key_value_heads": 2, "vocab_size": 100{extra}}}"#
        ))
    }

    #[test]
    fn phi3_loads_and_partial_rotary_embeddings_are_refused() {
        assert_eq!(phi3("").unwrap().architecture, Architecture::Phi3);
        assert!(phi3(r#", "partial_rotary_factor": 1.0"#).is_ok());
        let err = phi3(r#", "partial_rotary_factor": 0.75"#).unwrap_err();
        assert!(
            format!("{err:#}").contains("partial_rotary_factor"),
            "{err:#}"
        );
        let err = phi3(r#", "rope_scaling": {"type": "longrope", "short_factor": [1.0], "long_factor": [1.0]}"#)
            .and_then(|c| crate::model::rope::rope_for(&c).map(|_| c))
            .unwrap_err();
        assert!(format!("{err:#}").contains("longrope"), "{err:#}");
    }
}
