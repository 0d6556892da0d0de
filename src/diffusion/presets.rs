//! Diffusion pipelines' configs built into the binary (models/presets/diffusion/), for
//! `--load-format dummy` benchmarks without downloading anything: the diffusers layout's
//! config files of the published models, and a stand-in tokenizer.
//!
//! The tokenizer is not the model's: it is the tiny CLIP BPE of the test fixtures (585 tokens,
//! ids below every real text encoder's vocabulary), so prompts are tokenised differently from
//! the real model. With dummy weights that changes nothing measurable: the text encoder always
//! reads 77 padded positions.

use anyhow::{Context, Result};
use std::path::{Path, PathBuf};

macro_rules! preset_file {
    ($dir:literal, $file:literal) => {
        (
            $file,
            include_str!(concat!("../../models/presets/diffusion/", $dir, "/", $file)),
        )
    };
}

/// The stand-in tokenizer's files, shared by every preset.
const TOKENIZER: [(&str, &str); 3] = [
    (
        "tokenizer/vocab.json",
        include_str!("../../models/presets/diffusion/stand-in-tokenizer/vocab.json"),
    ),
    (
        "tokenizer/merges.txt",
        include_str!("../../models/presets/diffusion/stand-in-tokenizer/merges.txt"),
    ),
    (
        "tokenizer/tokenizer_config.json",
        include_str!("../../models/presets/diffusion/stand-in-tokenizer/tokenizer_config.json"),
    ),
];

/// A built-in pipeline: its name and its config files by path in the diffusers layout.
#[derive(Debug)]
pub struct DiffusionPreset {
    pub name: &'static str,
    /// What it stands for.
    pub describes: &'static str,
    files: [(&'static str, &'static str); 5],
}

pub const PRESETS: [DiffusionPreset; 2] = [
    DiffusionPreset {
        name: "sd-1.5",
        describes: "Stable Diffusion 1.5 (UNet 860M, CLIP ViT-L/14 text encoder), Euler",
        files: [
            preset_file!("sd-1.5", "model_index.json"),
            preset_file!("sd-1.5", "unet/config.json"),
            preset_file!("sd-1.5", "vae/config.json"),
            preset_file!("sd-1.5", "text_encoder/config.json"),
            preset_file!("sd-1.5", "scheduler/scheduler_config.json"),
        ],
    },
    DiffusionPreset {
        name: "sd-turbo",
        describes: "SD-Turbo (SD 2.1 shapes, OpenCLIP-H text encoder), Euler ancestral, trailing",
        files: [
            preset_file!("sd-turbo", "model_index.json"),
            preset_file!("sd-turbo", "unet/config.json"),
            preset_file!("sd-turbo", "vae/config.json"),
            preset_file!("sd-turbo", "text_encoder/config.json"),
            preset_file!("sd-turbo", "scheduler/scheduler_config.json"),
        ],
    },
];

/// A preset by name (case-insensitive).
pub fn preset(name: &str) -> Option<&'static DiffusionPreset> {
    PRESETS.iter().find(|p| p.name.eq_ignore_ascii_case(name))
}

pub fn names() -> Vec<&'static str> {
    PRESETS.iter().map(|p| p.name).collect()
}

/// Where a pipeline's config files come from: a diffusers directory, or a built-in preset.
#[derive(Clone, Debug)]
pub enum PipelineFiles {
    Dir(PathBuf),
    Preset(&'static DiffusionPreset),
}

impl PipelineFiles {
    /// The text of the file at `rel` (a path in the diffusers layout, `unet/config.json`).
    pub fn text(&self, rel: &str) -> Result<String> {
        match self {
            PipelineFiles::Dir(dir) => {
                let path = dir.join(rel);
                std::fs::read_to_string(&path)
                    .with_context(|| format!("reading {}", path.display()))
            }
            PipelineFiles::Preset(p) => p
                .files
                .iter()
                .chain(TOKENIZER.iter())
                .find(|(name, _)| *name == rel)
                .map(|(_, text)| text.to_string())
                .with_context(|| format!("preset {} has no {rel}", p.name)),
        }
    }

    /// Parses the JSON file at `rel`, naming it in errors.
    pub fn json<T: serde::de::DeserializeOwned>(&self, rel: &str) -> Result<T> {
        serde_json::from_str(&self.text(rel)?)
            .with_context(|| format!("parsing {}", self.describe(rel)))
    }

    /// `rel` as a user reads it: a path, or `preset sd-1.5: unet/config.json`.
    pub fn describe(&self, rel: &str) -> String {
        match self {
            PipelineFiles::Dir(dir) => dir.join(rel).display().to_string(),
            PipelineFiles::Preset(p) => format!("preset {}: {rel}", p.name),
        }
    }

    /// The directory, for weights read from files.
    pub fn dir(&self) -> Option<&Path> {
        match self {
            PipelineFiles::Dir(d) => Some(d),
            PipelineFiles::Preset(_) => None,
        }
    }

    /// A short name for logs and reports.
    pub fn name(&self) -> String {
        match self {
            PipelineFiles::Dir(dir) => dir
                .canonicalize()
                .ok()
                .as_deref()
                .unwrap_or(dir)
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_else(|| dir.display().to_string()),
            PipelineFiles::Preset(p) => p.name.to_string(),
        }
    }
}
