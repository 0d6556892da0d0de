//! The LoRA side of `kiln check-reference`: a `--lora-modules` adapter whose directory sits
//! in a folder with a `reference.json` (tests/fixtures/lora/, made with PEFT) is checked
//! too, when that reference is for the fixture being run.

use crate::launch::EngineArgs;
use anyhow::{Context, Result};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::Path;

#[derive(Deserialize)]
struct AdapterFile {
    base: String,
    prompts: Vec<AdapterPrompt>,
}

#[derive(Deserialize)]
pub(super) struct AdapterPrompt {
    pub prompt_ids: Vec<u32>,
    pub last_logits: Vec<f32>,
    pub greedy_ids: Vec<u32>,
}

/// One adapter to check: its index among `--lora-modules`, its name, PEFT's outputs.
pub(super) struct AdapterReference {
    pub index: usize,
    pub name: String,
    pub prompts: Vec<AdapterPrompt>,
}

/// The references of those `--lora-modules` adapters that have one for fixture `dir`
/// (matched by the fixture directory's name).
pub(super) fn adapter_references(args: &EngineArgs, dir: &str) -> Result<Vec<AdapterReference>> {
    let fixture = Path::new(dir)
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or_default();
    let mut out = Vec::new();
    for (index, spec) in args.lora_modules.iter().enumerate() {
        let (Some(folder), Some(key)) = (
            spec.path.parent(),
            spec.path.file_name().and_then(|n| n.to_str()),
        ) else {
            continue;
        };
        let path = folder.join("reference.json");
        let Ok(text) = std::fs::read_to_string(&path) else {
            continue;
        };
        let mut all: BTreeMap<String, AdapterFile> =
            serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
        if let Some(file) = all.remove(key).filter(|f| f.base == fixture) {
            out.push(AdapterReference {
                index,
                name: spec.name.clone(),
                prompts: file.prompts,
            });
        }
    }
    Ok(out)
}
