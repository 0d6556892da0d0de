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
use crate::backend::selective_scan::{SelectiveParams, SelectiveShape, SlotConvParams};
use crate::backend::{Backend, DType};
use anyhow::{Context, Result};
use candle_core::Tensor;
use serde_json::{json, Value};

/// The mixers of a Mamba-1 model (every layer is one).
#[derive(Clone, Debug, PartialEq)]
pub struct SelectiveLayers {
    pub shape: SelectiveShape,
    pub conv_bias: bool,
    /// Falcon-Mamba: the epsilon of the weightless RMS norms of the step, B and C.
    pub bc_dt_norm_eps: Option<f64>,
}

impl SelectiveLayers {
    /// A (normalized) Mamba-1 config's mixers.
    pub fn from_config(value: &Value, hidden: usize, falcon: bool) -> Result<Self> {
        let number =
            |k: &str, default: u64| value.get(k).and_then(Value::as_u64).unwrap_or(default);
        let expand = value.get("expand").and_then(Value::as_f64).unwrap_or(2.0);
        // MambaConfig: "auto" is ceil(hidden / 16).
        let dt_rank = match value.get("time_step_rank") {
            Some(Value::Number(n)) => n.as_u64().context("time_step_rank is not a count")? as usize,
            _ => hidden.div_ceil(16),
        };
        let shape = SelectiveShape {
            inner: (expand * hidden as f64) as usize,
            state: number("state_size", 16) as usize,
            dt_rank,
            taps: number("conv_kernel", 4) as usize,
        };
        shape.validate()?;
        Ok(SelectiveLayers {
            shape,
            conv_bias: value
                .get("use_conv_bias")
                .and_then(Value::as_bool)
                .unwrap_or(true),
            bc_dt_norm_eps: falcon.then(|| {
                value
                    .get("mixer_rms_eps")
                    .and_then(Value::as_f64)
                    .unwrap_or(1e-6)
            }),
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
    /// Falcon-Mamba: unit weights of the step's and of B's / C's norms, and the epsilon.
    pub norms: Option<(B::Tensor, B::Tensor, f64)>,
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
        if let Some((ones_step, ones_state, eps)) = &self.norms {
            step = be.rms_norm(&step, ones_step, *eps)?;
            b = be.rms_norm(&b, ones_state, *eps)?;
            c = be.rms_norm(&c, ones_state, *eps)?;
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
    let norms = match layers.bc_dt_norm_eps {
        Some(eps) => Some((ones(sh.dt_rank)?, ones(sh.state)?, eps)),
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
        "vocab_size": 65024, "state_size": 16, "expand": 16, "conv_kernel": 4,
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
            (65536, 16, 256)
        );
        assert_eq!(s.bc_dt_norm_eps, Some(1e-6));
        assert_eq!(c.cache_values_per_token(), 0);
        assert_eq!(c.state_values_per_sequence(), 64 * (65536 * 16 + 3 * 65536));
        assert!(c.keeps_recurrent_state());
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
        assert!(s.bc_dt_norm_eps.is_none() && c.tie_word_embeddings);
        let millions = c.num_parameters() as f64 / 1e6;
        assert!((millions - 129.1).abs() < 1.0, "{millions}");
        let auto = r#"{"architectures": ["MambaForCausalLM"], "hidden_size": 100,
            "num_hidden_layers": 1, "vocab_size": 32, "time_step_rank": "auto"}"#;
        let c = ModelConfig::from_json(auto).unwrap();
        assert_eq!(c.selective.unwrap().shape.dt_rank, 7);
    }
}
