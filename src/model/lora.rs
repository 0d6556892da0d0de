//! LoRA adapters in PEFT's format (`adapter_config.json` + `adapter_model.safetensors`),
//! served beside the base model: a request naming an adapter gets its low-rank updates
//! added to the base weights' outputs, `y = x W^T + s (x A^T) B^T` with
//! `s = lora_alpha / r` (`lora_alpha / sqrt(r)` under rsLoRA), other rows of the same batch
//! none.
//!
//! kiln stacks q/k/v into one projection and gate/up into another, so each adapter is laid
//! out the same way: per layer and per kiln linear ("site"), `A` stacks every targeted
//! module's `A` rows, and `B` places each module's scaled `B` at that module's output rows
//! and its own block of `A`'s rows (zeros elsewhere). One pair of products per site then
//! adds every module's update. Factors kiln folds into base rows at load (Granite, Gemma 2)
//! are folded into `B` the same way.

use super::config::ModelConfig;
use crate::backend::{Backend, DType};
use crate::parallel::ShardLayout;
use anyhow::{Context, Result};
use candle_core::{Device, Tensor};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::str::FromStr;

/// `--lora-modules` entry: `NAME=PATH`, or vLLM's JSON form `{"name": ..., "path": ...}`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AdapterSpec {
    pub name: String,
    pub path: PathBuf,
}

impl FromStr for AdapterSpec {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        #[derive(Deserialize)]
        struct Json {
            name: String,
            path: PathBuf,
        }
        let (name, path) = if s.trim_start().starts_with('{') {
            let j: Json = serde_json::from_str(s).map_err(|e| format!("'{s}': {e}"))?;
            (j.name, j.path)
        } else {
            let (name, path) = s
                .split_once('=')
                .ok_or_else(|| format!("'{s}' is not NAME=PATH"))?;
            (name.to_string(), PathBuf::from(path))
        };
        if name.is_empty() || path.as_os_str().is_empty() {
            return Err(format!("'{s}': the adapter needs a name and a path"));
        }
        Ok(AdapterSpec { name, path })
    }
}

/// The kiln linears an adapter can update.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Site {
    Qkv,
    O,
    GateUp,
    Down,
}

/// One site's update: `(x A^T) B^T`, `a: [ranks, in]`, `b: [out, ranks]` (scale folded in).
pub struct LoraPair<T> {
    pub a: T,
    pub b: T,
}

/// One adapter's updates of one layer, per site (None: the adapter leaves it alone).
pub struct LayerLora<T> {
    pub qkv: Option<LoraPair<T>>,
    pub o: Option<LoraPair<T>>,
    pub gate_up: Option<LoraPair<T>>,
    pub down: Option<LoraPair<T>>,
}

impl<T> LayerLora<T> {
    pub fn site(&self, site: Site) -> Option<&LoraPair<T>> {
        match site {
            Site::Qkv => self.qkv.as_ref(),
            Site::O => self.o.as_ref(),
            Site::GateUp => self.gate_up.as_ref(),
            Site::Down => self.down.as_ref(),
        }
    }
}

/// An adapter ready to run: one entry per layer.
pub struct LoraAdapter<T> {
    pub name: String,
    pub layers: Vec<LayerLora<T>>,
}

/// The fields of `adapter_config.json` kiln reads; those it cannot honour are refused.
#[derive(Default, Deserialize)]
struct AdapterConfig {
    #[serde(default)]
    peft_type: Option<String>,
    r: usize,
    lora_alpha: f64,
    #[serde(default)]
    use_rslora: bool,
    #[serde(default)]
    use_dora: bool,
    #[serde(default)]
    bias: Option<String>,
    #[serde(default)]
    modules_to_save: Option<serde_json::Value>,
    #[serde(default)]
    fan_in_fan_out: bool,
    #[serde(default)]
    alpha_pattern: BTreeMap<String, serde_json::Value>,
    /// PEFT variants that change the forward pass; any of them set is refused.
    #[serde(default)]
    lora_bias: bool,
    #[serde(default)]
    use_qalora: bool,
    #[serde(default)]
    use_bdlora: Option<serde_json::Value>,
    #[serde(default)]
    layer_replication: Option<serde_json::Value>,
    #[serde(default)]
    trainable_token_indices: Option<serde_json::Value>,
    #[serde(default)]
    alora_invocation_tokens: Option<serde_json::Value>,
    #[serde(default)]
    target_parameters: Option<serde_json::Value>,
}

impl AdapterConfig {
    fn read(dir: &Path) -> Result<Self> {
        let path = dir.join("adapter_config.json");
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("reading {}", path.display()))?;
        let c: AdapterConfig =
            serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
        let refuse = |what: &str| anyhow::bail!("{}: {what} is not supported", path.display());
        if c.peft_type.as_deref().is_some_and(|t| t != "LORA") {
            refuse(&format!("peft_type {:?}", c.peft_type))?;
        }
        if c.use_dora {
            refuse("DoRA (use_dora)")?;
        }
        if c.bias.as_deref().is_some_and(|b| b != "none") {
            refuse("training biases (bias other than \"none\")")?;
        }
        if c.modules_to_save.as_ref().is_some_and(|m| !m.is_null()) {
            refuse("modules_to_save (fully trained modules beside the adapter)")?;
        }
        if c.fan_in_fan_out {
            refuse("fan_in_fan_out (Conv1D-style weights)")?;
        }
        if !c.alpha_pattern.is_empty() {
            refuse("alpha_pattern")?;
        }
        let set = |v: &Option<serde_json::Value>| {
            v.as_ref()
                .is_some_and(|v| !v.is_null() && v != &serde_json::Value::Bool(false))
        };
        for (on, what) in [
            (c.lora_bias, "lora_bias"),
            (c.use_qalora, "QA-LoRA (use_qalora)"),
            (set(&c.use_bdlora), "use_bdlora"),
            (set(&c.layer_replication), "layer_replication"),
            (set(&c.trainable_token_indices), "trainable_token_indices"),
            (
                set(&c.alora_invocation_tokens),
                "activated LoRA (alora_invocation_tokens)",
            ),
            (
                set(&c.target_parameters),
                "target_parameters (LoRA on raw parameters)",
            ),
        ] {
            if on {
                refuse(what)?;
            }
        }
        anyhow::ensure!(c.r > 0, "{}: r is 0", path.display());
        Ok(c)
    }

    /// PEFT's scaling for a module of rank `r` (its own, under `rank_pattern`).
    fn scaling(&self, r: usize) -> f64 {
        if self.use_rslora {
            self.lora_alpha / (r as f64).sqrt()
        } else {
            self.lora_alpha / r as f64
        }
    }
}

/// Where a targeted module's output lands in its site: rows `offset..offset + rows`, times
/// the factor kiln folded into those base rows.
struct Placement {
    site: Site,
    offset: usize,
    rows: usize,
    inputs: usize,
    factor: f64,
}

/// Where HF module `module` (`self_attn.q_proj`, `mlp.down_proj`, ...) of a layer lands.
fn placement(c: &ModelConfig, module: &str) -> Option<Placement> {
    let (h, q, kv, inter) = (
        c.hidden_size,
        c.q_width(),
        c.kv_width(),
        c.intermediate_size,
    );
    let (q_scale, residual_scale) = c.folded_scales();
    let at = |site, offset, rows, inputs, factor| {
        Some(Placement {
            site,
            offset,
            rows,
            inputs,
            factor,
        })
    };
    match module {
        "self_attn.q_proj" => at(Site::Qkv, 0, q, h, q_scale),
        "self_attn.k_proj" => at(Site::Qkv, q, kv, h, 1.0),
        "self_attn.v_proj" => at(Site::Qkv, q + kv, kv, h, 1.0),
        "self_attn.qkv_proj" => at(Site::Qkv, 0, q + 2 * kv, h, 1.0),
        "self_attn.o_proj" => at(Site::O, 0, h, q, residual_scale),
        "mlp.gate_proj" => at(Site::GateUp, 0, inter, h, 1.0),
        "mlp.up_proj" => at(Site::GateUp, inter, inter, h, 1.0),
        "mlp.gate_up_proj" => at(Site::GateUp, 0, 2 * inter, h, 1.0),
        "mlp.down_proj" => at(Site::Down, 0, h, inter, residual_scale),
        _ => None,
    }
}

/// What a tensor-parallel rank holds of a site, in the full site's coordinates: the output
/// rows it computes (in order: its local rows are their concatenation) and, for the
/// row-parallel sites, the input columns it reads (None: all of them).
struct SiteShard {
    rows: Vec<Range<usize>>,
    inputs: Option<Range<usize>>,
}

fn site_shard(c: &ModelConfig, layout: &ShardLayout, site: Site) -> SiteShard {
    let (h, q, kv, hd) = (c.hidden_size, c.q_width(), c.kv_width(), c.head_dim);
    let (q_cols, kv_cols, inter) = (
        layout.q_columns(hd),
        layout.kv_columns(hd),
        layout.intermediate.clone(),
    );
    let shift = |r: &Range<usize>, by: usize| r.start + by..r.end + by;
    match site {
        Site::Qkv => SiteShard {
            rows: vec![q_cols, shift(&kv_cols, q), shift(&kv_cols, q + kv)],
            inputs: None,
        },
        Site::GateUp => SiteShard {
            rows: vec![inter.clone(), shift(&inter, c.intermediate_size)],
            inputs: None,
        },
        Site::O => SiteShard {
            rows: std::iter::once(0..h).collect(),
            inputs: Some(q_cols),
        },
        Site::Down => SiteShard {
            rows: std::iter::once(0..h).collect(),
            inputs: Some(inter),
        },
    }
}

/// A targeted module's placement, `A` and scaled `B`, on its way into its site's pair.
type SitePart = (Placement, Tensor, Tensor);

/// An adapter's modules as read: `(layer, module)` to its `A` and `B`.
type Modules = BTreeMap<(usize, String), ModulePair>;

/// One module's `A` and `B` as read, before placement.
#[derive(Default)]
struct ModulePair {
    a: Option<Tensor>,
    b: Option<Tensor>,
}

/// `base_model.model.model.layers.3.self_attn.q_proj.lora_A.weight` as
/// `(3, "self_attn.q_proj", 'A')`.
fn parse_name(name: &str) -> Option<(usize, String, char)> {
    let rest = name.strip_prefix("base_model.model.")?;
    let rest = rest.strip_prefix("model.layers.")?;
    let (layer, rest) = rest.split_once('.')?;
    let rest = rest.strip_suffix(".weight")?;
    let rest = rest.strip_suffix(".default").unwrap_or(rest);
    let (module, which) = rest.rsplit_once(".lora_")?;
    let which = match which {
        "A" => 'A',
        "B" => 'B',
        _ => return None,
    };
    Some((layer.parse().ok()?, module.to_string(), which))
}

/// Reads the adapter at `spec.path` and lays it out for `config`'s layers as `layout`'s
/// rank holds them, in `dtype` on `be`. Refuses what kiln cannot apply: modules outside
/// the layers' attention and dense MLP projections, ranks over `max_rank`, shapes that do
/// not match the model.
///
/// Under tensor parallelism a column-parallel site (qkv, gate_up) keeps the `B` rows of
/// the rank's outputs and all of `A`; a row-parallel one (o, down) keeps the `A` columns
/// of the rank's inputs and all of `B`, so the rank's partial `(x_r A_r^T) B^T` is summed by
/// the all-reduce that sums the base partials.
pub fn load_adapter<B: Backend>(
    be: &B,
    config: &ModelConfig,
    layout: &ShardLayout,
    dtype: DType,
    spec: &AdapterSpec,
    max_rank: usize,
) -> Result<LoraAdapter<B::Tensor>> {
    let (adapter, modules) = match dummy_rank(&spec.path)? {
        Some(rank) => dummy_adapter(config, rank)?,
        None => read_adapter(config, &spec.path)?,
    };
    layout_adapter(be, config, layout, dtype, spec, max_rank, &adapter, modules)
}

/// `dummy:RANK` (for benchmarks): the rank of a generated adapter.
fn dummy_rank(path: &Path) -> Result<Option<usize>> {
    let Some(rank) = path.to_str().and_then(|p| p.strip_prefix("dummy:")) else {
        return Ok(None);
    };
    let rank: usize = rank
        .parse()
        .ok()
        .filter(|&r| r > 0)
        .with_context(|| format!("'{}': expected dummy:RANK", path.display()))?;
    Ok(Some(rank))
}

/// A generated adapter of rank `rank` on every projection of every layer it can adapt,
/// with small reproducible values (benchmarks, like `--load-format dummy`).
fn dummy_adapter(config: &ModelConfig, rank: usize) -> Result<(AdapterConfig, Modules)> {
    let adapter = AdapterConfig {
        r: rank,
        lora_alpha: rank as f64,
        ..AdapterConfig::default()
    };
    let attention = [
        "self_attn.q_proj",
        "self_attn.k_proj",
        "self_attn.v_proj",
        "self_attn.o_proj",
    ];
    let mlp = ["mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"];
    let mut modules = BTreeMap::new();
    let mut seed = 0u64;
    let mut values = |shape: (usize, usize)| {
        seed += 1;
        let v = (0..shape.0 * shape.1)
            .map(|i| super::weights::dummy_value(seed, i as u64))
            .collect();
        Tensor::from_vec(v, shape, &Device::Cpu)
    };
    for layer in 0..config.num_layers {
        let sparse = config.moe.as_ref().is_some_and(|m| m.is_sparse(layer));
        let targets = attention
            .iter()
            .filter(|_| config.mla.is_none())
            .chain(mlp.iter().filter(|_| !sparse));
        for module in targets {
            let place = placement(config, module).context("a module kiln adapts")?;
            let pair = ModulePair {
                a: Some(values((rank, place.inputs))?),
                b: Some(values((place.rows, rank))?),
            };
            modules.insert((layer, module.to_string()), pair);
        }
    }
    Ok((adapter, modules))
}

/// A PEFT adapter directory's config and its modules' `A` and `B`.
fn read_adapter(config: &ModelConfig, dir: &Path) -> Result<(AdapterConfig, Modules)> {
    // Its fused projections hold a mixer's rows and its multipliers are folded piece by
    // piece, which the adapter placement does not follow.
    anyhow::ensure!(
        config.falcon_h1.is_none(),
        "LoRA adapters on Falcon-H1 are not supported"
    );
    let adapter = AdapterConfig::read(dir)?;
    let file = dir.join("adapter_model.safetensors");
    anyhow::ensure!(
        file.exists(),
        "{} is missing (kiln reads safetensors adapters)",
        file.display()
    );
    let tensors = candle_core::safetensors::load(&file, &Device::Cpu)
        .with_context(|| format!("reading {}", file.display()))?;
    let mut modules = Modules::new();
    for (name, t) in tensors {
        let (layer, module, which) = parse_name(&name).with_context(|| {
            format!(
                "{}: tensor '{name}' is not a LoRA A or B of a decoder layer",
                file.display()
            )
        })?;
        anyhow::ensure!(
            layer < config.num_layers,
            "{}: '{name}' is for layer {layer}; the model has {}",
            file.display(),
            config.num_layers
        );
        let pair = modules.entry((layer, module)).or_default();
        *(if which == 'A' {
            &mut pair.a
        } else {
            &mut pair.b
        }) = Some(t);
    }
    anyhow::ensure!(
        !modules.is_empty(),
        "{} holds no LoRA weights",
        file.display()
    );
    Ok((adapter, modules))
}

/// Lays read modules out per layer and site for `layout`'s rank (see [`load_adapter`]).
#[allow(clippy::too_many_arguments)]
fn layout_adapter<B: Backend>(
    be: &B,
    config: &ModelConfig,
    layout: &ShardLayout,
    dtype: DType,
    spec: &AdapterSpec,
    max_rank: usize,
    adapter: &AdapterConfig,
    modules: Modules,
) -> Result<LoraAdapter<B::Tensor>> {
    // Per (layer, site): each module's A, and its scaled B at its rows.
    let mut sites: BTreeMap<(usize, Site), Vec<SitePart>> = BTreeMap::new();
    for ((layer, module), pair) in modules {
        let what = format!("{}: layer {layer} {module}", spec.name);
        let place = placement(config, &module).with_context(|| {
            format!("{what}: kiln applies adapters to attention and MLP projections only")
        })?;
        let (Some(a), Some(b)) = (pair.a, pair.b) else {
            anyhow::bail!("{what}: lora_A and lora_B must both be present");
        };
        let (r, inputs) = a.dims2().with_context(|| format!("{what}: lora_A"))?;
        let (rows, rb) = b.dims2().with_context(|| format!("{what}: lora_B"))?;
        anyhow::ensure!(
            r <= max_rank,
            "{what}: rank {r} is over --max-lora-rank {max_rank}"
        );
        anyhow::ensure!(
            inputs == place.inputs && rows == place.rows && rb == r,
            "{what}: lora_A {:?} and lora_B {:?} do not fit its [{}, {}] weight",
            a.dims(),
            b.dims(),
            place.rows,
            place.inputs
        );
        let attention = place.site == Site::Qkv || place.site == Site::O;
        anyhow::ensure!(
            !(attention && config.mla.is_some()),
            "{what}: adapters on multi-head latent attention are not supported"
        );
        let sparse = config.moe.as_ref().is_some_and(|m| m.is_sparse(layer));
        anyhow::ensure!(
            attention || !sparse,
            "{what}: layer {layer} is a mixture of experts; adapters on experts are not supported"
        );
        let b = (b.to_dtype(candle_core::DType::F32)? * (adapter.scaling(r) * place.factor))?;
        let a = a.to_dtype(candle_core::DType::F32)?;
        sites
            .entry((layer, place.site))
            .or_default()
            .push((place, a, b));
    }

    let mut layers: Vec<LayerLora<B::Tensor>> = (0..config.num_layers)
        .map(|_| LayerLora {
            qkv: None,
            o: None,
            gate_up: None,
            down: None,
        })
        .collect();
    for ((layer, site), parts) in sites {
        let pair = stack_site(be, &site_shard(config, layout, site), &parts, dtype)
            .with_context(|| format!("{}: layer {layer}", spec.name))?;
        let slot = match site {
            Site::Qkv => &mut layers[layer].qkv,
            Site::O => &mut layers[layer].o,
            Site::GateUp => &mut layers[layer].gate_up,
            Site::Down => &mut layers[layer].down,
        };
        *slot = Some(pair);
    }
    Ok(LoraAdapter {
        name: spec.name.clone(),
        layers,
    })
}

/// Stacked ranks are padded with zeros to a multiple of this, so the second product's
/// inner dimension suits vectorised GEMVs and tensor cores.
const RANK_ALIGN: usize = 8;

/// One site's pair as `shard`'s rank holds it: the modules' `A`s stacked (their columns
/// for the rank's inputs; zero rows pad the ranks), and `B: [local out, ranks]` with module
/// `m`'s (scaled) `B` at those of its rows the rank computes, in the columns of its `A`
/// rows.
fn stack_site<B: Backend>(
    be: &B,
    shard: &SiteShard,
    parts: &[SitePart],
    dtype: DType,
) -> Result<LoraPair<B::Tensor>> {
    let used: usize = parts.iter().map(|(_, a, _)| a.dims()[0]).sum();
    let ranks = used.div_ceil(RANK_ALIGN) * RANK_ALIGN;
    let mut a_rows: Vec<Tensor> = parts
        .iter()
        .map(|(_, a, _)| match &shard.inputs {
            Some(cols) => a.narrow(1, cols.start, cols.len()),
            None => Ok(a.clone()),
        })
        .collect::<candle_core::Result<_>>()?;
    let inputs = a_rows[0].dims()[1];
    a_rows.push(Tensor::zeros(
        (ranks - used, inputs),
        candle_core::DType::F32,
        &Device::Cpu,
    )?);
    let a = Tensor::cat(&a_rows, 0)?;
    let out: usize = shard.rows.iter().map(|r| r.len()).sum();
    let mut b = vec![0f32; out * ranks];
    let mut column = 0;
    for (place, a, part) in parts {
        let r = a.dims()[0];
        let values = part.flatten_all()?.to_vec1::<f32>()?;
        let module = place.offset..place.offset + place.rows;
        let mut local = 0;
        for kept in &shard.rows {
            for full in kept.start.max(module.start)..kept.end.min(module.end) {
                let src = &values[(full - place.offset) * r..][..r];
                let at = (local + full - kept.start) * ranks + column;
                b[at..at + r].copy_from_slice(src);
            }
            local += kept.len();
        }
        column += r;
    }
    let b = Tensor::from_vec(b, (out, ranks), &Device::Cpu)?;
    Ok(LoraPair {
        a: be.upload(a.contiguous()?.to_dtype(dtype.to_candle())?)?,
        b: be.upload(b.to_dtype(dtype.to_candle())?)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn adapter_specs_parse_both_forms() {
        let plain: AdapterSpec = "sql=/adapters/sql".parse().unwrap();
        assert_eq!(plain.name, "sql");
        assert_eq!(plain.path, PathBuf::from("/adapters/sql"));
        let json: AdapterSpec = r#"{"name": "chat", "path": "/a/chat", "base_model_name": "x"}"#
            .parse()
            .unwrap();
        assert_eq!(
            (json.name.as_str(), json.path.to_str()),
            ("chat", Some("/a/chat"))
        );
        assert!("no-path".parse::<AdapterSpec>().is_err());
        assert!("=/p".parse::<AdapterSpec>().is_err());
    }

    #[test]
    fn peft_names_give_layer_module_and_matrix() {
        assert_eq!(
            parse_name("base_model.model.model.layers.12.self_attn.q_proj.lora_A.weight"),
            Some((12, "self_attn.q_proj".into(), 'A'))
        );
        assert_eq!(
            parse_name("base_model.model.model.layers.0.mlp.down_proj.lora_B.default.weight"),
            Some((0, "mlp.down_proj".into(), 'B'))
        );
        assert_eq!(parse_name("base_model.model.lm_head.lora_A.weight"), None);
        assert_eq!(
            parse_name("base_model.model.model.layers.0.mlp.down_proj.lora_embedding_A"),
            None
        );
    }
}
