//! NVIDIA's Nemotron-H (`NemotronHForCausalLM`: Nemotron-H 4B / 8B / 47B / 56B,
//! Nemotron-Nano-9B-v2 and 12B-v2, Nemotron 3): a stack of pre-norm residual blocks, each
//! one of a Mamba-2 mixer (`M` in `hybrid_override_pattern`), attention without positions
//! (`*`), an ungated ReLU² MLP (`-`) or, in Nemotron 3, a mixture of ungated ReLU² experts
//! (`E`: DeepSeek-V3's sigmoid router, a shared expert, optionally a latent space around
//! the routed experts; `model/moe.rs`).
//!
//! kiln's layer is a mixer block and an optional MLP block, so the blocks are paired: each
//! mixer or attention block opens a layer, and an MLP or experts block right after it
//! becomes that layer's MLP (a mixer followed by another mixer makes a layer without one).
//! The checkpoint's `backbone.layers.N` names are mapped onto those layers
//! ([`NemotronHWeights`]). The Mamba-2 mixers are Bamba's (the grouped gated norm; the step
//! size clamped below at `time_step_min`, as transformers' NemotronH mixer does).
//! Multi-token-prediction layers (`mtp.*`) are not read.

use super::config::MoeConfig;
use super::weights::{layer_part, renamed_part, RenamedWeights, WeightSource};
use anyhow::{Context, Result};
use serde_json::{json, Value};

/// The checkpoint's blocks behind each of kiln's layers: its mixer (or attention) block,
/// and the MLP block after it, if any; which layers' first block is a Mamba mixer; and
/// which layers' MLP is a mixture of experts.
#[derive(Clone, Debug, PartialEq)]
pub struct NemotronHBlocks {
    pub layers: Vec<(usize, Option<usize>)>,
    pub mamba: Vec<bool>,
    pub experts: Vec<bool>,
}

/// One block of the pattern.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Block {
    Mamba,
    Attention,
    Mlp,
    Experts,
}

impl NemotronHBlocks {
    /// The pairing of `pattern` (`M`, `*`, `-` and `E` per block), refusing an MLP or
    /// experts block that follows no mixer.
    fn pair(pattern: &[Block]) -> Result<Self> {
        let mut layers: Vec<(usize, Option<usize>)> = Vec::new();
        let (mut mamba, mut experts) = (Vec::new(), Vec::new());
        for (i, &block) in pattern.iter().enumerate() {
            match block {
                Block::Mlp | Block::Experts => match (layers.last_mut(), experts.last_mut()) {
                    (Some((_, mlp @ None)), Some(sparse)) => {
                        *mlp = Some(i);
                        *sparse = block == Block::Experts;
                    }
                    _ => anyhow::bail!(
                        "Nemotron-H: MLP block {i} does not follow a Mamba or attention block; \
                         kiln pairs each MLP with the mixer before it"
                    ),
                },
                mixer => {
                    layers.push((i, None));
                    mamba.push(mixer == Block::Mamba);
                    experts.push(false);
                }
            }
        }
        anyhow::ensure!(!layers.is_empty(), "Nemotron-H: the pattern has no layers");
        Ok(NemotronHBlocks {
            layers,
            mamba,
            experts,
        })
    }

    /// The experts' config as the pattern places them: on the layers whose MLP is an `E`
    /// block; none where the pattern has no `E` (a dense model, whatever its config says of
    /// experts).
    pub fn sparse_moe(&self, moe: Option<MoeConfig>) -> Result<Option<MoeConfig>> {
        if !self.experts.contains(&true) {
            return Ok(None);
        }
        let mut moe = moe.context("Nemotron-H: experts blocks without an experts config")?;
        moe.sparse_layers = self.experts.clone();
        Ok(Some(moe))
    }

    /// Read back from a normalized config.
    pub fn from_config(value: &Value) -> Result<Self> {
        let pattern = value
            .get("hybrid_override_pattern")
            .and_then(Value::as_str)
            .context("Nemotron-H: no hybrid_override_pattern")?;
        Self::pair(&parse_pattern(pattern)?)
    }

    /// Whether kiln's layer `i` has an MLP.
    pub fn has_mlp(&self, i: usize) -> bool {
        self.layers.get(i).is_some_and(|(_, mlp)| mlp.is_some())
    }
}

fn parse_pattern(pattern: &str) -> Result<Vec<Block>> {
    pattern
        .chars()
        .map(|c| match c {
            'M' => Ok(Block::Mamba),
            '*' => Ok(Block::Attention),
            '-' => Ok(Block::Mlp),
            'E' => Ok(Block::Experts),
            other => {
                anyhow::bail!("Nemotron-H: unknown block '{other}' in hybrid_override_pattern")
            }
        })
        .collect()
}

/// The block pattern as a string, from `hybrid_override_pattern` or the list
/// `layers_block_type` / `layer_types` (transformers 5's names, or the older ones).
fn pattern_of(fields: &serde_json::Map<String, Value>) -> Result<String> {
    if let Some(p) = fields
        .get("hybrid_override_pattern")
        .and_then(Value::as_str)
    {
        return Ok(p.to_string());
    }
    let list = ["layers_block_type", "layer_types"]
        .iter()
        .find_map(|k| fields.get(*k).and_then(Value::as_array))
        .context("Nemotron-H: config.json has no hybrid_override_pattern or layers_block_type")?;
    list.iter()
        .map(|t| match t.as_str() {
            Some("mamba" | "linear_attention") => Ok('M'),
            Some("attention" | "full_attention") => Ok('*'),
            Some("mlp") => Ok('-'),
            Some("moe") => Ok('E'),
            other => anyhow::bail!("Nemotron-H: unknown block type {other:?}"),
        })
        .collect()
}

/// `value` (a Nemotron-H config.json) under the keys kiln's loader reads: the paired layers'
/// count, Bamba's `mamba_*` keys (from NemotronHConfig's names and defaults), ReLU² for the
/// MLP, and the pattern as a string.
pub fn normalized_config(mut value: Value) -> Result<Value> {
    let fields = value
        .as_object_mut()
        .context("config.json is not an object")?;
    let pattern = pattern_of(fields)?;
    let blocks = NemotronHBlocks::pair(&parse_pattern(&pattern)?)?;
    let number = |k: &str, alt: &str, default: f64| {
        fields
            .get(k)
            .or_else(|| fields.get(alt))
            .and_then(Value::as_f64)
            .unwrap_or(default)
    };
    let heads = number("mamba_num_heads", "mamba_n_heads", 128.0);
    let head_dim = number("mamba_head_dim", "mamba_d_head", 64.0);
    let dt_min = number("time_step_min", "mamba_dt_min", 0.001);
    let eps = number("layer_norm_epsilon", "rms_norm_eps", 1e-5);
    let flag = |k: &str, alt: &str, default: bool| {
        fields
            .get(k)
            .or_else(|| fields.get(alt))
            .and_then(Value::as_bool)
            .unwrap_or(default)
    };
    let conv_bias = flag("use_conv_bias", "mamba_conv_bias", true);
    anyhow::ensure!(
        !flag("use_bias", "mamba_proj_bias", false),
        "Nemotron-H with projection biases (use_bias) is not supported"
    );
    let act = fields
        .get("mlp_hidden_act")
        .cloned()
        .unwrap_or(json!("relu2"));
    let has_experts = blocks.experts.contains(&true);
    if has_experts {
        // The experts' ungated ReLU² is kiln's only ungated expert activation; their
        // latent and shared projections would take `mlp_bias`.
        anyhow::ensure!(
            act == json!("relu2") && !flag("mlp_bias", "", false),
            "Nemotron-H experts with mlp_hidden_act {act} or mlp_bias are not supported \
             (relu2, no biases)"
        );
    }
    // NemotronHConfig's default shared expert width.
    let shared = number("moe_shared_expert_intermediate_size", "", 7688.0) as u64;
    let entries = [
        ("num_hidden_layers", json!(blocks.layers.len())),
        ("hybrid_override_pattern", json!(pattern)),
        ("mamba_n_heads", json!(heads as u64)),
        ("mamba_d_head", json!(head_dim as u64)),
        ("mamba_d_ssm", json!((heads * head_dim) as u64)),
        (
            "mamba_n_groups",
            json!(number("n_groups", "mamba_n_groups", 8.0) as u64),
        ),
        (
            "mamba_d_state",
            json!(number("ssm_state_size", "mamba_d_state", 128.0) as u64),
        ),
        (
            "mamba_d_conv",
            json!(number("conv_kernel", "mamba_d_conv", 4.0) as u64),
        ),
        ("mamba_conv_bias", json!(conv_bias)),
        ("time_step_limit", json!([dt_min, f64::MAX])),
        ("rms_norm_eps", json!(eps)),
        ("hidden_act", act),
        (
            "head_dim",
            fields.get("head_dim").cloned().unwrap_or(json!(128)),
        ),
        (
            "num_attention_heads",
            json!(number("num_attention_heads", "", 32.0) as u64),
        ),
        (
            "num_key_value_heads",
            // NemotronHConfig: 8 when absent, the attention heads when null.
            json!(match fields.get("num_key_value_heads") {
                Some(Value::Null) => number("num_attention_heads", "", 32.0),
                _ => number("num_key_value_heads", "", 8.0),
            } as u64),
        ),
        (
            "intermediate_size",
            json!(number("intermediate_size", "", 21504.0) as u64),
        ),
    ];
    for (key, v) in entries {
        fields.insert(key.into(), v);
    }
    if has_experts {
        fields.insert("shared_expert_intermediate_size".into(), json!(shared));
    }
    // The list forms would read as sliding-window layer types.
    fields.remove("layers_block_type");
    fields.remove("layer_types");
    Ok(value)
}

/// A Nemotron-H checkpoint (`backbone.*`) under the loader's names, its blocks paired into
/// layers as `blocks` says.
pub struct NemotronHWeights;

impl NemotronHWeights {
    pub fn wrap<S: WeightSource>(inner: S, blocks: NemotronHBlocks) -> RenamedWeights<S> {
        RenamedWeights::new(inner, move |name| match layer_part(name) {
            Some((index, part)) => {
                let Some(&(mixer, mlp)) = index
                    .parse::<usize>()
                    .ok()
                    .and_then(|i| blocks.layers.get(i))
                else {
                    return name.to_string();
                };
                // The norm before the MLP is the MLP block's own (or, in a layer without
                // one, an unread copy of the mixer's).
                let (block, rest) = if let Some(rest) = part.strip_prefix("mlp.") {
                    (mlp.unwrap_or(mixer), format!("mixer.{rest}"))
                } else if part.starts_with("post_attention_layernorm.") {
                    (mlp.unwrap_or(mixer), renamed_part(part, &NORM_RENAMED))
                } else {
                    (mixer, renamed_part(part, &MIXER_RENAMED))
                };
                format!("backbone.layers.{block}.{rest}")
            }
            None => match name {
                "model.embed_tokens.weight" => "backbone.embeddings.weight".to_string(),
                "model.norm.weight" => "backbone.norm_f.weight".to_string(),
                _ => name.to_string(),
            },
        })
    }
}

const NORM_RENAMED: [(&str, &str); 1] = [("post_attention_layernorm.", "norm.")];

/// A mixer or attention block's names.
const MIXER_RENAMED: [(&str, &str); 3] = [
    ("input_layernorm.", "norm."),
    ("self_attn.", "mixer."),
    ("mamba.", "mixer."),
];

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::config::{Architecture, ModelConfig};

    /// nvidia/NVIDIA-Nemotron-Nano-9B-v2's config.json (the keys kiln reads).
    fn nano_9b_v2() -> String {
        r#"{"architectures": ["NemotronHForCausalLM"], "model_type": "nemotron_h",
        "hidden_size": 4480, "intermediate_size": 15680, "num_hidden_layers": 56,
        "hybrid_override_pattern": "M-M-M-MM-M-M-M*-M-M-M*-M-M-M-M*-M-M-M-M*-M-MM-M-M-M-M-M-",
        "num_attention_heads": 40, "num_key_value_heads": 8, "head_dim": 128,
        "mamba_num_heads": 128, "mamba_head_dim": 80, "n_groups": 8, "ssm_state_size": 128,
        "conv_kernel": 4, "use_conv_bias": true, "mamba_hidden_act": "silu",
        "mlp_hidden_act": "relu2", "layer_norm_epsilon": 1e-05, "time_step_min": 0.001,
        "max_position_embeddings": 131072, "tie_word_embeddings": false,
        "use_bias": false, "mlp_bias": false, "attention_bias": false,
        "vocab_size": 131072}"#
            .to_string()
    }

    #[test]
    fn blocks_pair_into_layers_of_a_mixer_and_an_mlp() {
        let c = ModelConfig::from_json(&nano_9b_v2()).unwrap();
        assert_eq!(c.architecture, Architecture::NemotronH);
        // 31 mixer or attention blocks, 25 of them followed by an MLP (the 6 before another
        // mixer or an attention block have none).
        assert_eq!(c.num_layers, 31);
        let blocks = c.nemotron_h.as_ref().unwrap();
        assert_eq!(
            blocks.layers[..4],
            [(0, Some(1)), (2, Some(3)), (4, Some(5)), (6, None)]
        );
        assert_eq!((0..c.num_layers).filter(|&i| c.has_mlp(i)).count(), 25);
        let m = c.mamba.as_ref().unwrap();
        assert_eq!(m.layers.iter().filter(|&&l| !l).count(), 4);
        assert_eq!(
            (m.shape.heads, m.shape.head_dim, m.shape.groups),
            (128, 80, 8)
        );
        assert_eq!((m.shape.norm_group, m.shape.dt_min), (1280, 0.001));
        assert!(m.shape.normed && !m.parallel);
        // Attention without positions, an ungated ReLU² MLP.
        assert!(c.rope_layers.as_ref().unwrap().iter().all(|&r| !r));
        assert_eq!(
            c.ungated_mlp,
            Some(crate::backend::image_ops::Activation::Relu2)
        );
        assert_eq!(c.cache_values_per_token(), 4 * 2 * 8 * 128);
        // NVIDIA counts 8.89B.
        let billions = c.num_parameters() as f64 / 1e9;
        assert!((billions - 8.89).abs() < 0.05, "{billions}");
    }

    /// Nemotron 3 Nano (nvidia/NVIDIA-Nemotron-3-Nano-30B-A3B): its experts blocks pair
    /// with the mixer or attention block before them into layers whose MLP is the experts.
    #[test]
    fn nemotron_3_pairs_experts_blocks_into_sparse_layers() {
        let c = ModelConfig::from_json(
            crate::model::presets::preset("nemotron-3-nano-30b-a3b").unwrap(),
        )
        .unwrap();
        // 29 mixer or attention blocks, 23 followed by experts.
        assert_eq!(c.num_layers, 29);
        let moe = c.moe.as_ref().unwrap();
        assert_eq!(moe.sparse_layers.iter().filter(|&&s| s).count(), 23);
        assert_eq!(
            moe.sparse_layers.iter().filter(|&&s| s).count(),
            (0..c.num_layers).filter(|&i| c.has_mlp(i)).count()
        );
        assert_eq!(
            (moe.num_experts, moe.top_k, moe.expert_intermediate_size),
            (128, 6, 1856)
        );
        assert_eq!(moe.shared_expert_intermediate_size, Some(3712));
        assert!(!moe.shared_expert_gated && moe.normalize_top_k && moe.router_f32);
        assert_eq!(moe.activation, crate::backend::moe::ExpertActivation::Relu2);
        assert_eq!(
            moe.scoring,
            crate::backend::moe::RouterScoring::SigmoidGrouped {
                groups: 1,
                top_groups: 1,
                scale: 2.5
            }
        );
        assert_eq!(moe.latent_size, None);
        // A latent space: the routed experts' width, and the two projections around them.
        let latent = crate::model::presets::preset("nemotron-3-nano-30b-a3b")
            .unwrap()
            .replace(
                r#""n_group": 1,"#,
                r#""n_group": 1, "moe_latent_size": 1024,"#,
            );
        let l = ModelConfig::from_json(&latent).unwrap();
        assert_eq!(l.moe.as_ref().unwrap().latent_size, Some(1024));
        let per_layer = 128 * 2 * (2688 - 1024) * 1856 - 2 * 2688 * 1024;
        assert_eq!(
            c.num_parameters() - l.num_parameters(),
            23 * per_layer as u64
        );
        // A dense Nemotron-H keeps no experts config, whatever its config says of experts.
        let dense =
            nano_9b_v2().replace(r#""vocab_size""#, r#""n_routed_experts": 8, "vocab_size""#);
        assert!(ModelConfig::from_json(&dense).unwrap().moe.is_none());
        // Experts with another activation, or biases, are refused.
        for (from, to) in [
            (r#""mlp_bias": false"#, r#""mlp_bias": true"#),
            (
                r#""mlp_hidden_act": "relu2""#,
                r#""mlp_hidden_act": "silu""#,
            ),
        ] {
            let preset = crate::model::presets::preset("nemotron-3-nano-30b-a3b").unwrap();
            assert!(
                ModelConfig::from_json(&preset.replace(from, to)).is_err(),
                "{to}"
            );
        }
    }

    #[test]
    fn patterns_kiln_cannot_pair_are_refused() {
        for pattern in ["--M", "EM*", "M-E", "M-M-X"] {
            let text = nano_9b_v2().replace(
                "M-M-M-MM-M-M-M*-M-M-M*-M-M-M-M*-M-M-M-M*-M-MM-M-M-M-M-M-",
                pattern,
            );
            assert!(ModelConfig::from_json(&text).is_err(), "{pattern}");
        }
        // transformers 5's list form reads as the pattern does.
        let text = nano_9b_v2().replace(
            r#""hybrid_override_pattern": "M-M-M-MM-M-M-M*-M-M-M*-M-M-M-M*-M-M-M-M*-M-MM-M-M-M-M-M-","#,
            r#""layers_block_type": ["linear_attention", "mlp", "full_attention", "mlp", "linear_attention"],"#,
        );
        let c = ModelConfig::from_json(&text).unwrap();
        assert_eq!(c.num_kv_heads, 8);
        let null_kv = text.replace(
            r#""num_key_value_heads": 8"#,
            r#""num_key_value_heads": null"#,
        );
        assert_eq!(ModelConfig::from_json(&null_kv).unwrap().num_kv_heads, 40);
        let no_kv = text.replace(r#""num_key_value_heads": 8, "#, "");
        assert_ne!(no_kv, text);
        assert_eq!(ModelConfig::from_json(&no_kv).unwrap().num_kv_heads, 8);
        assert_eq!(
            c.nemotron_h.unwrap().layers,
            vec![(0, Some(1)), (2, Some(3)), (4, None)]
        );
    }

    #[test]
    fn weights_take_backbone_block_names() {
        let blocks = NemotronHBlocks {
            layers: vec![(0, Some(1)), (2, None), (3, Some(4))],
            mamba: vec![true, true, false],
            experts: vec![false, false, true],
        };
        let src = NemotronHWeights::wrap(crate::model::weights::DummyWeights { seed: 0 }, blocks);
        let names: Vec<String> = [
            "model.embed_tokens.weight",
            "model.norm.weight",
            "model.layers.0.input_layernorm.weight",
            "model.layers.0.mamba.in_proj.weight",
            "model.layers.0.post_attention_layernorm.weight",
            "model.layers.0.mlp.up_proj.weight",
            "model.layers.1.post_attention_layernorm.weight",
            "model.layers.2.self_attn.q_proj.weight",
            "model.layers.2.mlp.down_proj.weight",
            "model.layers.2.mlp.experts.5.up_proj.weight",
            "model.layers.2.mlp.gate.e_score_correction_bias",
        ]
        .iter()
        .map(|n| src.stored_name(n))
        .collect();
        assert_eq!(
            names,
            [
                "backbone.embeddings.weight",
                "backbone.norm_f.weight",
                "backbone.layers.0.norm.weight",
                "backbone.layers.0.mixer.in_proj.weight",
                "backbone.layers.1.norm.weight",
                "backbone.layers.1.mixer.up_proj.weight",
                "backbone.layers.2.norm.weight",
                "backbone.layers.3.mixer.q_proj.weight",
                "backbone.layers.4.mixer.down_proj.weight",
                "backbone.layers.4.mixer.experts.5.up_proj.weight",
                "backbone.layers.4.mixer.gate.e_score_correction_bias",
            ]
        );
    }
}
