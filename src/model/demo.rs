//! The tiny demo model built into the binary (made by scripts/make_fixtures.py), so that
//! kiln runs on a fresh machine with no network. It produces text-like noise, not answers.
//! Its files are written once to the cache directory, because weights are memory-mapped.

use super::source::ModelFiles;
use anyhow::{Context, Result};
use sha2::{Digest, Sha256};
use std::path::PathBuf;

const FILES: [(&str, &[u8]); 5] = [
    (
        "config.json",
        include_bytes!("../../models/demo/config.json"),
    ),
    (
        "generation_config.json",
        include_bytes!("../../models/demo/generation_config.json"),
    ),
    (
        "tokenizer.json",
        include_bytes!("../../models/demo/tokenizer.json"),
    ),
    (
        "tokenizer_config.json",
        include_bytes!("../../models/demo/tokenizer_config.json"),
    ),
    (
        "model.safetensors",
        include_bytes!("../../models/demo/model.safetensors"),
    ),
];

/// kiln's cache root: `$KILN_CACHE_DIR`, else `$XDG_CACHE_HOME/kiln`, else `~/.cache/kiln`.
pub fn cache_root() -> PathBuf {
    if let Ok(dir) = std::env::var("KILN_CACHE_DIR") {
        return dir.into();
    }
    if let Ok(dir) = std::env::var("XDG_CACHE_HOME") {
        return PathBuf::from(dir).join("kiln");
    }
    match std::env::var("HOME") {
        Ok(home) => PathBuf::from(home).join(".cache/kiln"),
        Err(_) => std::env::temp_dir().join("kiln-cache"),
    }
}

/// Writes `files` into a content-addressed folder under the cache (once) and returns it.
fn materialise(kind: &str, files: &[(&str, &[u8])]) -> Result<PathBuf> {
    let mut h = Sha256::new();
    for (name, bytes) in files {
        h.update(name.as_bytes());
        h.update(bytes);
    }
    let digest = h.finalize();
    let tag: String = digest.iter().take(8).map(|b| format!("{b:02x}")).collect();
    let dir = cache_root().join(format!("{kind}-{tag}"));
    if !dir.join(".complete").exists() {
        let tmp = cache_root().join(format!(".{kind}-{tag}-{}", std::process::id()));
        std::fs::create_dir_all(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
        for (name, bytes) in files {
            std::fs::write(tmp.join(name), bytes).with_context(|| format!("writing {name}"))?;
        }
        std::fs::write(tmp.join(".complete"), b"")?;
        // Another process may have won the race; either copy is complete.
        if std::fs::rename(&tmp, &dir).is_err() {
            let _ = std::fs::remove_dir_all(&tmp);
        }
    }
    Ok(dir)
}

/// The demo model's files.
pub fn files() -> Result<ModelFiles> {
    let dir = materialise("demo", &FILES)?;
    let mut files = super::source::local(&dir)?;
    files.name = "kiln-demo".to_string();
    Ok(files)
}

/// A preset's config, with the demo tokenizer beside it (for dummy-weight runs).
pub fn preset_files(name: &str, config: &str) -> Result<ModelFiles> {
    let dir = materialise(
        &format!("preset-{name}"),
        &[("config.json", config.as_bytes())],
    )?;
    let demo = files()?;
    Ok(ModelFiles {
        name: name.to_string(),
        config: dir.join("config.json"),
        tokenizer_dir: demo.tokenizer_dir,
        generation_config: None,
        quant_config: None,
        weights: Vec::new(),
    })
}
