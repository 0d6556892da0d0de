//! The configs of a diffusers pipeline directory: `model_index.json` and each component's
//! `config.json` / `scheduler_config.json`, reduced to what kiln implements. Settings kiln does
//! not implement fail here, at load time, with the setting's name.

use anyhow::{Context, Result};
use serde::de::DeserializeOwned;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::Path;

use super::presets::PipelineFiles;

/// Reads and parses one JSON config file.
pub fn read_json<T: DeserializeOwned>(path: &Path) -> Result<T> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))
}

/// The pipelines kiln runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PipelineKind {
    /// Stable Diffusion 1.x / 2.x and SD-Turbo: one CLIP text encoder.
    StableDiffusion,
    /// SDXL and SDXL-Turbo: two CLIP text encoders, pooled embeddings, size conditioning.
    StableDiffusionXL,
}

/// `model_index.json`: the pipeline class and, per component, `[library, class]`.
#[derive(Clone, Debug)]
pub struct ModelIndex {
    pub kind: PipelineKind,
    pub components: BTreeMap<String, String>,
    /// SDXL: without a negative prompt, guidance pushes away from zeros rather than from the
    /// empty prompt's states.
    pub force_zeros_for_empty_prompt: bool,
}

impl ModelIndex {
    pub const SUPPORTED: [&'static str; 2] =
        ["StableDiffusionPipeline", "StableDiffusionXLPipeline"];

    pub fn read(dir: &Path) -> Result<ModelIndex> {
        Self::from_files(&PipelineFiles::Dir(dir.to_path_buf()))
    }

    /// `model_index.json` of a directory or a built-in preset.
    pub fn from_files(files: &PipelineFiles) -> Result<ModelIndex> {
        let raw: BTreeMap<String, serde_json::Value> = files.json("model_index.json")?;
        let class = raw
            .get("_class_name")
            .and_then(|v| v.as_str())
            .context("model_index.json has no _class_name")?;
        let kind = match class {
            "StableDiffusionPipeline" => PipelineKind::StableDiffusion,
            "StableDiffusionXLPipeline" => PipelineKind::StableDiffusionXL,
            other => anyhow::bail!(
                "unsupported diffusers pipeline '{other}'; kiln supports: {}",
                Self::SUPPORTED.join(", ")
            ),
        };
        // Components are `[library, class]`; `[null, null]` marks an absent one.
        let components = raw
            .iter()
            .filter(|(k, _)| !k.starts_with('_'))
            .filter_map(|(k, v)| {
                let class = v.as_array()?.get(1)?.as_str()?;
                Some((k.clone(), class.to_string()))
            })
            .collect();
        let force_zeros_for_empty_prompt = raw
            .get("force_zeros_for_empty_prompt")
            .and_then(|v| v.as_bool())
            .unwrap_or(true);
        let index = ModelIndex {
            kind,
            components,
            force_zeros_for_empty_prompt,
        };
        if kind == PipelineKind::StableDiffusionXL {
            index.expect("text_encoder_2", &["CLIPTextModelWithProjection"])?;
            index.expect("tokenizer_2", &["CLIPTokenizer", "CLIPTokenizerFast"])?;
        }
        index.expect(
            "text_encoder",
            &["CLIPTextModel", "CLIPTextModelWithProjection"],
        )?;
        index.expect("tokenizer", &["CLIPTokenizer", "CLIPTokenizerFast"])?;
        index.expect("unet", &["UNet2DConditionModel"])?;
        index.expect("vae", &["AutoencoderKL"])?;
        index.expect("scheduler", &SchedulerKind::SUPPORTED)?;
        Ok(index)
    }

    fn expect(&self, component: &str, classes: &[&str]) -> Result<()> {
        let class = self
            .components
            .get(component)
            .with_context(|| format!("model_index.json lists no '{component}'"))?;
        anyhow::ensure!(
            classes.contains(&class.as_str()),
            "unsupported {component} class '{class}'; kiln supports: {}",
            classes.join(", ")
        );
        Ok(())
    }
}

/// A diffusers setting that is one value for every block or one per block.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(untagged)]
pub enum PerBlock {
    One(usize),
    Each(Vec<usize>),
}

impl PerBlock {
    /// The value of each of `blocks` blocks.
    pub fn per_block(&self, blocks: usize, name: &str) -> Result<Vec<usize>> {
        match self {
            PerBlock::One(v) => Ok(vec![*v; blocks]),
            PerBlock::Each(v) if v.len() == blocks => Ok(v.clone()),
            PerBlock::Each(v) => {
                anyhow::bail!("{name} lists {} values for {blocks} blocks", v.len())
            }
        }
    }
}

fn one() -> usize {
    1
}
fn thirty_two() -> usize {
    32
}
fn yes() -> bool {
    true
}
fn eps_1e5() -> f64 {
    1e-5
}
fn three() -> usize {
    3
}
fn silu() -> String {
    "silu".into()
}

/// `unet/config.json` (UNet2DConditionModel).
#[derive(Clone, Debug, Deserialize)]
pub struct UNetConfig {
    pub in_channels: usize,
    pub out_channels: usize,
    pub block_out_channels: Vec<usize>,
    pub down_block_types: Vec<String>,
    pub up_block_types: Vec<String>,
    #[serde(default)]
    pub mid_block_type: Option<String>,
    pub layers_per_block: PerBlock,
    pub cross_attention_dim: PerBlock,
    pub attention_head_dim: PerBlock,
    #[serde(default)]
    pub num_attention_heads: Option<PerBlock>,
    #[serde(default = "default_transformer_layers")]
    pub transformer_layers_per_block: PerBlock,
    #[serde(default = "thirty_two")]
    pub norm_num_groups: usize,
    #[serde(default = "eps_1e5")]
    pub norm_eps: f64,
    #[serde(default = "yes")]
    pub flip_sin_to_cos: bool,
    #[serde(default)]
    pub freq_shift: f64,
    #[serde(default)]
    pub use_linear_projection: bool,
    /// `"text_time"` (SDXL): pooled text embeds and size / crop ids join the time embedding.
    #[serde(default)]
    pub addition_embed_type: Option<String>,
    #[serde(default)]
    pub addition_time_embed_dim: Option<usize>,
    #[serde(default)]
    pub projection_class_embeddings_input_dim: Option<usize>,
    #[serde(default)]
    pub class_embed_type: Option<String>,
    #[serde(default)]
    pub time_cond_proj_dim: Option<usize>,
    #[serde(default)]
    pub center_input_sample: bool,
    #[serde(default = "silu")]
    pub act_fn: String,
    #[serde(default = "three")]
    pub conv_in_kernel: usize,
    #[serde(default = "three")]
    pub conv_out_kernel: usize,
    #[serde(default)]
    pub only_cross_attention: serde_json::Value,
    #[serde(default)]
    pub dual_cross_attention: bool,
    #[serde(default)]
    pub encoder_hid_dim: Option<usize>,
    #[serde(default)]
    pub resnet_time_scale_shift: Option<String>,
    #[serde(default)]
    pub time_embedding_type: Option<String>,
    #[serde(default)]
    pub mid_block_scale_factor: Option<f64>,
    #[serde(default)]
    pub attention_type: Option<String>,
    /// The latent side the model was trained at (the default image size / VAE factor).
    #[serde(default)]
    pub sample_size: Option<PerBlock>,
}

fn default_transformer_layers() -> PerBlock {
    PerBlock::One(1)
}

impl UNetConfig {
    /// `unet/config.json` of a directory or a built-in preset, validated.
    pub fn from_files(files: &PipelineFiles) -> Result<UNetConfig> {
        let rel = "unet/config.json";
        let cfg: UNetConfig = files.json(rel)?;
        cfg.validate()
            .with_context(|| format!("in {}", files.describe(rel)))?;
        Ok(cfg)
    }

    pub fn read(path: &Path) -> Result<UNetConfig> {
        let cfg: UNetConfig = read_json(path)?;
        cfg.validate()
            .with_context(|| format!("in {}", path.display()))?;
        Ok(cfg)
    }

    /// Fails on the settings kiln does not implement, naming them.
    pub fn validate(&self) -> Result<()> {
        let blocks = self.block_out_channels.len();
        anyhow::ensure!(
            self.down_block_types.len() == blocks && self.up_block_types.len() == blocks,
            "down_block_types, up_block_types and block_out_channels differ in length"
        );
        for t in &self.down_block_types {
            anyhow::ensure!(
                t == "DownBlock2D" || t == "CrossAttnDownBlock2D",
                "unsupported down block '{t}' (kiln has DownBlock2D, CrossAttnDownBlock2D)"
            );
        }
        for t in &self.up_block_types {
            anyhow::ensure!(
                t == "UpBlock2D" || t == "CrossAttnUpBlock2D",
                "unsupported up block '{t}' (kiln has UpBlock2D, CrossAttnUpBlock2D)"
            );
        }
        let mid = self.mid_block_type.as_deref();
        anyhow::ensure!(
            matches!(mid, None | Some("UNetMidBlock2DCrossAttn")),
            "unsupported mid block '{}' (kiln has UNetMidBlock2DCrossAttn)",
            mid.unwrap_or_default()
        );
        let unsupported = [
            (
                "addition_embed_type other than text_time",
                !matches!(
                    self.addition_embed_type.as_deref(),
                    None | Some("text_time")
                ),
            ),
            (
                "text_time without addition_time_embed_dim / projection_class_embeddings_input_dim",
                self.addition_embed_type.is_some()
                    && (self.addition_time_embed_dim.is_none()
                        || self.projection_class_embeddings_input_dim.is_none()),
            ),
            ("class_embed_type", self.class_embed_type.is_some()),
            ("time_cond_proj_dim", self.time_cond_proj_dim.is_some()),
            ("center_input_sample", self.center_input_sample),
            ("act_fn other than silu", self.act_fn != "silu"),
            ("conv_in_kernel other than 3", self.conv_in_kernel != 3),
            ("conv_out_kernel other than 3", self.conv_out_kernel != 3),
            (
                "only_cross_attention",
                self.only_cross_attention
                    .as_bool()
                    .unwrap_or(!self.only_cross_attention.is_null()),
            ),
            ("dual_cross_attention", self.dual_cross_attention),
            ("encoder_hid_dim", self.encoder_hid_dim.is_some()),
            (
                "resnet_time_scale_shift other than default",
                !matches!(
                    self.resnet_time_scale_shift.as_deref(),
                    None | Some("default")
                ),
            ),
            (
                "time_embedding_type other than positional",
                !matches!(
                    self.time_embedding_type.as_deref(),
                    None | Some("positional")
                ),
            ),
            (
                "mid_block_scale_factor other than 1",
                self.mid_block_scale_factor.is_some_and(|f| f != 1.0),
            ),
            (
                "attention_type other than default",
                !matches!(self.attention_type.as_deref(), None | Some("default")),
            ),
        ];
        if let Some((name, _)) = unsupported.iter().find(|(_, bad)| *bad) {
            anyhow::bail!("UNet setting '{name}' is not supported by kiln");
        }
        anyhow::ensure!(
            matches!(self.cross_attention_dim, PerBlock::One(_)),
            "a per-block cross_attention_dim is not supported"
        );
        self.heads_per_block()?;
        self.layers_per_block
            .per_block(blocks, "layers_per_block")?;
        self.transformer_layers_per_block
            .per_block(blocks, "transformer_layers_per_block")?;
        Ok(())
    }

    /// Attention heads of each down block. diffusers reads `attention_head_dim` as the number
    /// of heads when `num_attention_heads` is absent (a naming accident it keeps for old
    /// checkpoints), and so does kiln.
    pub fn heads_per_block(&self) -> Result<Vec<usize>> {
        let blocks = self.block_out_channels.len();
        self.num_attention_heads
            .as_ref()
            .unwrap_or(&self.attention_head_dim)
            .per_block(blocks, "num_attention_heads")
    }

    pub fn context_dim(&self) -> usize {
        match self.cross_attention_dim {
            PerBlock::One(d) => d,
            PerBlock::Each(ref v) => v[0],
        }
    }
}

/// `vae/config.json` (AutoencoderKL); kiln runs its decoder.
#[derive(Clone, Debug, Deserialize)]
pub struct VaeConfig {
    pub out_channels: usize,
    pub latent_channels: usize,
    pub block_out_channels: Vec<usize>,
    pub up_block_types: Vec<String>,
    #[serde(default = "one")]
    pub layers_per_block: usize,
    #[serde(default = "thirty_two")]
    pub norm_num_groups: usize,
    pub scaling_factor: f64,
    #[serde(default)]
    pub shift_factor: Option<f64>,
    #[serde(default = "yes")]
    pub use_post_quant_conv: bool,
    #[serde(default = "yes")]
    pub mid_block_add_attention: bool,
    #[serde(default)]
    pub latents_mean: Option<Vec<f64>>,
    #[serde(default = "silu")]
    pub act_fn: String,
}

impl VaeConfig {
    /// `vae/config.json` of a directory or a built-in preset, validated.
    pub fn from_files(files: &PipelineFiles) -> Result<VaeConfig> {
        let rel = "vae/config.json";
        let cfg: VaeConfig = files.json(rel)?;
        cfg.validate()
            .with_context(|| format!("in {}", files.describe(rel)))?;
        Ok(cfg)
    }

    pub fn read(path: &Path) -> Result<VaeConfig> {
        let cfg: VaeConfig = read_json(path)?;
        cfg.validate()
            .with_context(|| format!("in {}", path.display()))?;
        Ok(cfg)
    }

    pub fn validate(&self) -> Result<()> {
        anyhow::ensure!(
            self.up_block_types.len() == self.block_out_channels.len(),
            "up_block_types and block_out_channels differ in length"
        );
        if let Some(t) = self
            .up_block_types
            .iter()
            .find(|t| *t != "UpDecoderBlock2D")
        {
            anyhow::bail!("unsupported VAE up block '{t}' (kiln has UpDecoderBlock2D)");
        }
        anyhow::ensure!(
            self.act_fn == "silu",
            "VAE act_fn '{}' is not supported",
            self.act_fn
        );
        anyhow::ensure!(
            self.latents_mean.is_none(),
            "VAE latents_mean / latents_std are not supported"
        );
        Ok(())
    }

    /// How much smaller the latents are than the image, per side.
    pub fn scale_factor(&self) -> usize {
        1 << (self.block_out_channels.len() - 1)
    }
}

/// `text_encoder/config.json` (CLIPTextModel, CLIPTextModelWithProjection).
#[derive(Clone, Debug, Deserialize)]
pub struct ClipConfig {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub max_position_embeddings: usize,
    pub hidden_act: String,
    #[serde(default = "eps_1e5")]
    pub layer_norm_eps: f64,
    #[serde(default = "default_eos")]
    pub eos_token_id: u32,
    #[serde(default)]
    pub projection_dim: Option<usize>,
}

fn default_eos() -> u32 {
    2
}

impl ClipConfig {
    /// `<component>/config.json` (`text_encoder`, `text_encoder_2`) of a directory or preset.
    pub fn from_files(files: &PipelineFiles, component: &str) -> Result<ClipConfig> {
        files.json(&format!("{component}/config.json"))
    }

    pub fn read(path: &Path) -> Result<ClipConfig> {
        read_json(path)
    }
}

/// The schedulers kiln implements.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SchedulerKind {
    Euler,
    EulerAncestral,
    Ddim,
}

impl SchedulerKind {
    pub const SUPPORTED: [&'static str; 3] = [
        "EulerDiscreteScheduler",
        "EulerAncestralDiscreteScheduler",
        "DDIMScheduler",
    ];

    pub fn from_class(name: &str) -> Result<SchedulerKind> {
        Ok(match name {
            "EulerDiscreteScheduler" => SchedulerKind::Euler,
            "EulerAncestralDiscreteScheduler" => SchedulerKind::EulerAncestral,
            "DDIMScheduler" => SchedulerKind::Ddim,
            other => anyhow::bail!(
                "unsupported scheduler '{other}'; kiln supports: {}",
                Self::SUPPORTED.join(", ")
            ),
        })
    }
}
