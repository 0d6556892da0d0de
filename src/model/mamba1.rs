//! Mamba-1 models in transformers' format (`MambaForCausalLM`: state-spaces/mamba-*-hf;
//! `FalconMambaForCausalLM`: TII's Falcon-Mamba-7B): every layer a norm and a Mamba-1
//! mixer, no attention, no MLP ([`crate::backend::selective_scan`] has the mixer's math).
//!
//! In the layer, `in_proj` (x, then the gate z) takes the fused q/k/v projection's place
//! and `out_proj` the output projection's. Between them the model composes the backend's
//! ops: the causal convolution over the sequence's window ([`crate::backend::Backend::
//! slot_conv`]), `x_proj` to the low-rank step and B / C (Falcon-Mamba RMS-norms each of
//! the three without weights), `dt_proj` to a step per channel, and the selective scan
//! ([`crate::backend::Backend::selective_scan`]). The convolution's window and the scan's
//! `[inner, state]` state live in the sequence's state slot, as the Mamba-2 mixers' do,
//! with the same consequences (no prefix caching, speculative decoding, embeddings or
//! tensor parallelism).

use super::llama::load;
use super::weights::WeightSource;
use crate::backend::selective_scan::{SelectiveParams, SelectiveShape};
use crate::backend::slot_conv::SlotConvParams;
use crate::backend::{Backend, DType};
use anyhow::{Context, Result};
use candle_core::Tensor;
use serde_json::{json, Value};

/// How a Mamba-1 mixer norms the step, B and C after `x_proj`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum StepNorms {
    /// Falcon-Mamba: RMS norms without weights, with this epsilon.
    Weightless(f64),
    /// Jamba: RMS norms with weights (`dt_layernorm`, `b_layernorm`, `c_layernorm`).
    Weighted(f64),
}

/// The Mamba-1 mixers of a model.
#[derive(Clone, Debug, PartialEq)]
pub struct SelectiveLayers {
    pub shape: SelectiveShape,
    /// Which layers are mixers (all of a pure Mamba model; Jamba's all but its attention).
    pub layers: Vec<bool>,
    pub conv_bias: bool,
    pub norms: Option<StepNorms>,
    /// A pure Mamba model: each layer is its norm and mixer, no MLP.
    pub without_mlp: bool,
}

impl SelectiveLayers {
    /// Whether layer `i` is a mixer.
    pub fn is_mixer(&self, i: usize) -> bool {
        self.layers.get(i).copied().unwrap_or(false)
    }

    /// Whether the step, B and C norms have weights (Jamba's).
    pub fn weighted_norms(&self) -> bool {
        matches!(self.norms, Some(StepNorms::Weighted(_)))
    }

    /// A (normalized) Mamba-1, Falcon-Mamba or Jamba config's mixers.
    pub fn from_config(value: &Value, num_layers: usize) -> Result<Self> {
        let number =
            |k: &str, default: u64| value.get(k).and_then(Value::as_u64).unwrap_or(default);
        let hidden = number("hidden_size", 768) as usize;
        let expand = value.get("expand").and_then(Value::as_f64).unwrap_or(2.0);
        // MambaConfig: "auto" is ceil(hidden / 16).
        let dt_rank = match value.get("time_step_rank") {
            Some(Value::Number(n)) => n.as_u64().context("time_step_rank is not a count")? as usize,
            _ => hidden.div_ceil(16),
        };
        let inner = match value.get("mamba_intermediate_size").and_then(Value::as_u64) {
            Some(inner) => inner as usize,
            None => (expand * hidden as f64) as usize,
        };
        let shape = SelectiveShape {
            inner,
            state: number("state_size", 16) as usize,
            dt_rank,
            taps: number("conv_kernel", 4) as usize,
        };
        shape.validate()?;
        let eps = |k: &str, default: f64| value.get(k).and_then(Value::as_f64).unwrap_or(default);
        let (layers, norms, without_mlp) = match value["architectures"][0].as_str() {
            Some("JambaForCausalLM") => {
                let period = number("attn_layer_period", 8).max(1) as usize;
                let offset = number("attn_layer_offset", 4) as usize;
                let layers = (0..num_layers).map(|i| i % period != offset).collect();
                let norms = Some(StepNorms::Weighted(eps("rms_norm_eps", 1e-6)));
                (layers, norms, false)
            }
            Some("FalconMambaForCausalLM") => {
                let norms = Some(StepNorms::Weightless(eps("mixer_rms_eps", 1e-6)));
                (vec![true; num_layers], norms, true)
            }
            _ => (vec![true; num_layers], None, true),
        };
        Ok(SelectiveLayers {
            shape,
            layers,
            conv_bias: value
                .get("use_conv_bias")
                .and_then(Value::as_bool)
                .unwrap_or(true),
            norms,
            without_mlp,
        })
    }
}

/// `value` (a MambaConfig or FalconMambaConfig config.json) in the names kiln's loader
/// reads: the norms' epsilon as `rms_norm_eps`, no MLP; attention keys it has none of are
/// filled so the config parses (no layer attends). A recurrent model has no context limit
/// of its own: it defaults to 131072 tokens (`--max-model-len` sets it).
pub fn normalized_config(mut value: Value) -> Result<Value> {
    let fields = value
        .as_object_mut()
        .context("config.json is not an object")?;
    anyhow::ensure!(
        fields.get("use_bias").and_then(Value::as_bool) != Some(true),
        "Mamba with projection biases (use_bias) is not supported"
    );
    let eps = fields
        .get("layer_norm_epsilon")
        .cloned()
        .unwrap_or(json!(1e-5));
    fields.insert("rms_norm_eps".into(), eps);
    // FalconMambaConfig takes a given intermediate_size over `expand * hidden_size`
    // (Falcon-Mamba-7B says expand 16 and intermediate_size 8192); MambaConfig ignores it.
    let falcon = fields
        .get("architectures")
        .and_then(|a| a.get(0))
        .and_then(Value::as_str)
        == Some("FalconMambaForCausalLM");
    if let Some(inner) = fields.get("intermediate_size").filter(|_| falcon).cloned() {
        fields.insert("mamba_intermediate_size".into(), inner);
    }
    for (key, default) in [
        ("vocab_size", json!(50280)),
        ("hidden_size", json!(768)),
        ("num_hidden_layers", json!(32)),
        ("max_position_embeddings", json!(131072)),
    ] {
        fields.entry(key).or_insert(default);
    }
    fields.insert("num_attention_heads".into(), json!(1));
    fields.insert("num_key_value_heads".into(), json!(1));
    fields.insert("intermediate_size".into(), json!(0));
    Ok(value)
}

/// `value` (a JambaConfig config.json) with its mixer's `mamba_*` keys in Mamba's names and
/// JambaConfig's defaults where it leaves keys out.
pub fn normalized_jamba_config(mut value: Value) -> Result<Value> {
    let fields = value
        .as_object_mut()
        .context("config.json is not an object")?;
    anyhow::ensure!(
        fields.get("mamba_proj_bias").and_then(Value::as_bool) != Some(true),
        "Jamba with projection biases (mamba_proj_bias) is not supported"
    );
    for (from, to, default) in [
        ("mamba_d_state", "state_size", json!(16)),
        ("mamba_d_conv", "conv_kernel", json!(4)),
        ("mamba_expand", "expand", json!(2)),
        ("mamba_dt_rank", "time_step_rank", json!("auto")),
        ("mamba_conv_bias", "use_conv_bias", json!(true)),
    ] {
        let v = fields.get(from).cloned().unwrap_or(default);
        fields.insert(to.into(), v);
    }
    for (key, default) in [
        ("vocab_size", json!(65536)),
        ("hidden_size", json!(4096)),
        ("intermediate_size", json!(14336)),
        ("num_hidden_layers", json!(32)),
        ("num_attention_heads", json!(32)),
        ("num_key_value_heads", json!(8)),
        ("rms_norm_eps", json!(1e-6)),
        ("num_experts", json!(16)),
        ("num_experts_per_tok", json!(2)),
        ("max_position_embeddings", json!(262144)),
        ("tie_word_embeddings", json!(false)),
    ] {
        fields.entry(key).or_insert(default);
    }
    Ok(value)
}

/// One mixer's weights on this device (`a` and `d` in f32).
pub struct SelectiveMixer<B: Backend> {
    pub shape: SelectiveShape,
    pub conv_weight: B::Tensor,
    pub conv_bias: Option<B::Tensor>,
    pub x_proj: B::Tensor,
    pub dt_proj: B::Tensor,
    pub dt_bias: B::Tensor,
    pub a: B::Tensor,
    pub d: B::Tensor,
    /// The weights of the step's, B's and C's norms (ones for Falcon-Mamba's), and the
    /// epsilon.
    pub norms: Option<([B::Tensor; 3], f64)>,
}

impl<B: Backend> SelectiveMixer<B> {
    /// The mixer from its in-projection `xz` (`[n, 2 * inner]`) to the gated scan output
    /// (`[n, inner]`, before `out_proj`), over the sequences' state slots in layer `layer`.
    pub fn forward(
        &self,
        be: &B,
        xz: &B::Tensor,
        cache: &mut B::KvCache,
        layer: usize,
        batch: &B::BatchMeta,
    ) -> Result<B::Tensor> {
        let sh = self.shape;
        let conv = SlotConvParams {
            offset: 0,
            channels: sh.inner,
            taps: sh.taps,
            state_values: sh.state_values(),
            weight: &self.conv_weight,
            bias: self.conv_bias.as_ref(),
        };
        let x = be.slot_conv(xz, &conv, cache, layer, batch)?;
        let ssm = be.linear(&x, &self.x_proj, None)?;
        let mut parts = be
            .split_columns(&ssm, &[sh.dt_rank, sh.state, sh.state])?
            .into_iter();
        let (Some(mut step), Some(mut b), Some(mut c)) = (parts.next(), parts.next(), parts.next())
        else {
            anyhow::bail!("split_columns returned fewer than three parts");
        };
        if let Some(([w_step, w_b, w_c], eps)) = &self.norms {
            step = be.rms_norm(&step, w_step, *eps)?;
            b = be.rms_norm(&b, w_b, *eps)?;
            c = be.rms_norm(&c, w_c, *eps)?;
        }
        let dt = be.linear(&step, &self.dt_proj, Some(&self.dt_bias))?;
        let params = SelectiveParams {
            shape: sh,
            a: &self.a,
            d: &self.d,
        };
        be.selective_scan(&x, &dt, (&b, &c), xz, &params, cache, layer, batch)
    }
}

/// Layer `prefix`'s mixer (`{prefix}.mamba.*`, which the `backbone` renaming maps to
/// `mixer`): its weights, `in_proj` (the layer's fused projection) and `out_proj`.
pub fn load_mixer<B: Backend>(
    be: &B,
    src: &dyn WeightSource,
    prefix: &str,
    (hidden, layers): (usize, &SelectiveLayers),
    dtype: DType,
) -> Result<(SelectiveMixer<B>, B::Tensor, B::Tensor)> {
    let sh = layers.shape;
    let name = |n: &str| format!("{prefix}.mamba.{n}");
    let inner = sh.inner;
    let in_proj = load(
        be,
        src,
        &name("in_proj.weight"),
        &[2 * inner, hidden],
        dtype,
    )?;
    let out_proj = load(be, src, &name("out_proj.weight"), &[hidden, inner], dtype)?;
    let kernel = src
        .tensor(&name("conv1d.weight"), &[inner, 1, sh.taps], dtype)?
        .reshape((inner, sh.taps))?;
    let conv_bias = if layers.conv_bias {
        Some(load(be, src, &name("conv1d.bias"), &[inner], dtype)?)
    } else {
        None
    };
    // A and D in f32, as the kernels read them (the checkpoint's values rounded to the
    // model dtype first, as transformers holds them).
    let f32_of = |n: &str, shape: &[usize]| -> Result<Tensor> {
        Ok(src
            .tensor(&name(n), shape, dtype)?
            .to_dtype(candle_core::DType::F32)?)
    };
    let a = f32_of("A_log", &[inner, sh.state])?.exp()?.neg()?;
    let ones = |len: usize| -> Result<B::Tensor> {
        be.upload(Tensor::ones(
            len,
            dtype.to_candle(),
            &candle_core::Device::Cpu,
        )?)
    };
    let norms = match layers.norms {
        Some(StepNorms::Weightless(eps)) => {
            Some(([ones(sh.dt_rank)?, ones(sh.state)?, ones(sh.state)?], eps))
        }
        Some(StepNorms::Weighted(eps)) => {
            let norm =
                |n: &str, len: usize| load(be, src, &name(&format!("{n}.weight")), &[len], dtype);
            let weights = [
                norm("dt_layernorm", sh.dt_rank)?,
                norm("b_layernorm", sh.state)?,
                norm("c_layernorm", sh.state)?,
            ];
            Some((weights, eps))
        }
        None => None,
    };
    let mixer = SelectiveMixer {
        shape: sh,
        conv_weight: be.upload(kernel)?,
        conv_bias,
        x_proj: load(
            be,
            src,
            &name("x_proj.weight"),
            &[sh.x_proj_width(), inner],
            dtype,
        )?,
        dt_proj: load(
            be,
            src,
            &name("dt_proj.weight"),
            &[inner, sh.dt_rank],
            dtype,
        )?,
        dt_bias: load(be, src, &name("dt_proj.bias"), &[inner], dtype)?,
        a: be.upload(a)?,
        d: be.upload(f32_of("D", &[inner])?)?,
        norms,
    };
    Ok((mixer, in_proj, out_proj))
}

#[cfg(test)]
mod tests {
    use crate::model::config::{Architecture, ModelConfig};

    /// tiiuae/falcon-mamba-7b's config.json, in the fields kiln reads.
    const FALCON_MAMBA_7B: &str = r#"{"architectures": ["FalconMambaForCausalLM"],
        "model_type": "falcon_mamba", "hidden_size": 4096, "num_hidden_layers": 64,
        "vocab_size": 65024, "state_size": 16, "expand": 16, "intermediate_size": 8192,
        "conv_kernel": 4,
        "time_step_rank": 256, "use_bias": false, "use_conv_bias": true,
        "layer_norm_epsilon": 1e-05, "mixer_rms_eps": 1e-06, "residual_in_fp32": true,
        "tie_word_embeddings": false}"#;

    #[test]
    fn falcon_mamba_is_mamba_1_mixers_with_normed_steps() {
        let c = ModelConfig::from_json(FALCON_MAMBA_7B).unwrap();
        assert_eq!(c.architecture, Architecture::FalconMamba);
        let s = c.selective.as_ref().unwrap();
        assert_eq!(
            (s.shape.inner, s.shape.state, s.shape.dt_rank),
            (8192, 16, 256)
        );
        assert_eq!(s.norms, Some(super::StepNorms::Weightless(1e-6)));
        assert!(s.without_mlp && (0..64).all(|i| s.is_mixer(i)));
        assert_eq!(c.cache_values_per_token(), 0);
        assert_eq!(c.state_values_per_sequence(), 64 * (8192 * 16 + 3 * 8192));
        assert!(c.keeps_recurrent_state());
        let billions = c.num_parameters() as f64 / 1e9;
        assert!((billions - 7.27).abs() < 0.05, "{billions}");
    }

    #[test]
    fn mamba_130m_has_an_automatic_step_rank_and_ties_its_head() {
        // state-spaces/mamba-130m-hf's config.json.
        let c = ModelConfig::from_json(
            r#"{"architectures": ["MambaForCausalLM"], "model_type": "mamba",
            "hidden_size": 768, "num_hidden_layers": 24, "vocab_size": 50280,
            "state_size": 16, "expand": 2, "conv_kernel": 4, "time_step_rank": 48,
            "use_bias": false, "use_conv_bias": true, "layer_norm_epsilon": 1e-05}"#,
        )
        .unwrap();
        assert_eq!(c.architecture, Architecture::Mamba);
        let s = c.selective.as_ref().unwrap();
        assert_eq!((s.shape.inner, s.shape.dt_rank), (1536, 48));
        assert!(s.norms.is_none() && c.tie_word_embeddings);
        let millions = c.num_parameters() as f64 / 1e6;
        assert!((millions - 129.1).abs() < 1.0, "{millions}");
        let auto = r#"{"architectures": ["MambaForCausalLM"], "hidden_size": 100,
            "num_hidden_layers": 1, "vocab_size": 32, "time_step_rank": "auto"}"#;
        let c = ModelConfig::from_json(auto).unwrap();
        assert_eq!(c.selective.unwrap().shape.dt_rank, 7);
    }

    #[test]
    fn jamba_mixes_seven_layers_in_eight_and_routes_every_other_one() {
        // ai21labs/AI21-Jamba-Mini-1.5's config.json, in the fields kiln reads.
        let c = ModelConfig::from_json(
            r#"{"architectures": ["JambaForCausalLM"], "model_type": "jamba",
            "hidden_size": 4096, "intermediate_size": 14336, "num_hidden_layers": 32,
            "num_attention_heads": 32, "num_key_value_heads": 8, "vocab_size": 65536,
            "rms_norm_eps": 1e-06, "attn_layer_period": 8, "attn_layer_offset": 4,
            "expert_layer_period": 2, "expert_layer_offset": 1, "num_experts": 16,
            "num_experts_per_tok": 2, "mamba_d_state": 16, "mamba_d_conv": 4,
            "mamba_expand": 2, "mamba_dt_rank": 256, "mamba_conv_bias": true,
            "mamba_proj_bias": false, "max_position_embeddings": 262144,
            "tie_word_embeddings": false}"#,
        )
        .unwrap();
        assert_eq!(c.architecture, Architecture::Jamba);
        let s = c.selective.as_ref().unwrap();
        let attention: Vec<usize> = (0..32).filter(|&i| !s.is_mixer(i)).collect();
        assert_eq!(attention, vec![4, 12, 20, 28]);
        assert_eq!(s.norms, Some(super::StepNorms::Weighted(1e-6)));
        assert!(!s.without_mlp && !c.mixer_only_layers());
        let moe = c.moe.as_ref().unwrap();
        assert_eq!((moe.num_experts, moe.top_k), (16, 2));
        assert!(!moe.normalize_top_k);
        assert!((0..32).all(|i| moe.is_sparse(i) == (i % 2 == 1)));
        assert_eq!(c.rope_layers.as_deref(), Some(&[false; 32][..]));
        // Per token: 4 attention layers' K and V.
        assert_eq!(c.cache_values_per_token(), 4 * 2 * 1024);
        let billions = c.num_parameters() as f64 / 1e9;
        assert!((billions - 51.6).abs() < 0.5, "{billions}");
        let active = c.active_parameters() as f64 / 1e9;
        assert!((active - 12.1).abs() < 0.3, "{active}");
    }
}
