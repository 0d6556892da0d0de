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
}

impl Architecture {
    pub const SUPPORTED: [&'static str; 5] = [
        "LlamaForCausalLM",
        "MistralForCausalLM",
        "Qwen2ForCausalLM",
        "Qwen3ForCausalLM",
        "Phi3ForCausalLM",
    ];

    pub fn from_hf(name: &str) -> Result<Self> {
        Ok(match name {
            "LlamaForCausalLM" => Architecture::Llama,
            "MistralForCausalLM" => Architecture::Mistral,
            "Qwen2ForCausalLM" => Architecture::Qwen2,
            "Qwen3ForCausalLM" => Architecture::Qwen3,
            "Phi3ForCausalLM" => Architecture::Phi3,
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
            (Architecture::Qwen2 | Architecture::Qwen3, Some(false) | None) => None,
            _ => raw.sliding_window,
        };
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
            qk_norm: architecture == Architecture::Qwen3,
            sliding_window,
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
        let h = self.hidden_size as u64;
        let attn = h * (self.q_width() + 2 * self.kv_width()) as u64 + self.q_width() as u64 * h;
        let mlp = 3 * h * self.intermediate_size as u64;
        let per_layer = attn + mlp + 2 * h;
        let embed = self.vocab_size as u64 * h;
        let head = if self.tie_word_embeddings { 0 } else { embed };
        self.num_layers as u64 * per_layer + embed + head + h
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
