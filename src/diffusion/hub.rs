//! Diffusers pipelines from the Hugging Face hub: `kiln serve --model
//! stabilityai/sd-turbo` fetches `model_index.json` and, for every component kiln runs, the
//! files it reads, into the HF cache; the pipeline then loads from the cache's snapshot
//! directory, which has the repo's layout.

use crate::model::source::HubRepo;
use anyhow::{Context, Result};
use std::path::PathBuf;

/// What kiln reads of one pipeline component, by the component's role.
enum Component {
    /// A UNet or VAE: `config.json` + `diffusion_pytorch_model.safetensors` (or shards).
    Diffusers,
    /// A CLIP text encoder: `config.json` + `model.safetensors` (or shards).
    Transformers,
    /// A CLIP tokenizer.
    Tokenizer,
    Scheduler,
}

/// The role of component `name` of model_index.json; `None` for parts kiln does not run
/// (safety checker, feature extractor, image encoder).
fn role(name: &str) -> Option<Component> {
    match name {
        "unet" | "vae" => Some(Component::Diffusers),
        n if n.starts_with("text_encoder") => Some(Component::Transformers),
        n if n.starts_with("tokenizer") => Some(Component::Tokenizer),
        "scheduler" => Some(Component::Scheduler),
        _ => None,
    }
}

/// The components model_index.json lists (keys whose value is a `[library, class]` pair;
/// `null` entries are absent components).
fn components(index: &serde_json::Value) -> Vec<String> {
    index
        .as_object()
        .map(|m| {
            m.iter()
                .filter(|(k, v)| {
                    !k.starts_with('_')
                        && v.as_array()
                            .is_some_and(|a| a.len() == 2 && !a[0].is_null())
                })
                .map(|(k, _)| k.clone())
                .collect()
        })
        .unwrap_or_default()
}

/// Fetches the pipeline in `repo` and returns the local directory holding it, or `None`
/// when the repo has no `model_index.json` (an LLM repo, or one not cached while offline).
pub fn fetch(repo: &HubRepo) -> Result<Option<PathBuf>> {
    let Ok(index_path) = repo.get("model_index.json") else {
        return Ok(None);
    };
    let text = std::fs::read_to_string(&index_path)
        .with_context(|| format!("reading {}", index_path.display()))?;
    let index: serde_json::Value = serde_json::from_str(&text)
        .with_context(|| format!("{} is not valid JSON", index_path.display()))?;
    for name in components(&index) {
        let Some(role) = role(&name) else { continue };
        match role {
            Component::Diffusers => {
                repo.get(&format!("{name}/config.json"))?;
                repo.weights(&name, "diffusion_pytorch_model")?;
            }
            Component::Transformers => {
                repo.get(&format!("{name}/config.json"))?;
                repo.weights(&name, "model")?;
            }
            Component::Tokenizer => {
                for file in ["vocab.json", "merges.txt", "tokenizer_config.json"] {
                    repo.get(&format!("{name}/{file}"))?;
                }
                // Optional: older repos keep special tokens only here.
                let _ = repo.get(&format!("{name}/special_tokens_map.json"));
            }
            Component::Scheduler => {
                repo.get(&format!("{name}/scheduler_config.json"))?;
            }
        }
    }
    Ok(index_path.parent().map(PathBuf::from))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    /// An HF cache holding the tiny-sd fixture as repo `kiln/tiny-sd` at one revision.
    fn cache_with_fixture(root: &Path) {
        let repo = root.join("models--kiln--tiny-sd");
        let snapshot = repo.join("snapshots/0123456789abcdef");
        let fixture =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/diffusion/tiny-sd");
        copy_tree(&fixture, &snapshot);
        std::fs::create_dir_all(repo.join("refs")).unwrap();
        std::fs::write(repo.join("refs/main"), "0123456789abcdef").unwrap();
    }

    fn copy_tree(from: &Path, to: &Path) {
        std::fs::create_dir_all(to).unwrap();
        for entry in std::fs::read_dir(from).unwrap() {
            let entry = entry.unwrap();
            let target = to.join(entry.file_name());
            if entry.file_type().unwrap().is_dir() {
                copy_tree(&entry.path(), &target);
            } else {
                std::fs::copy(entry.path(), target).unwrap();
            }
        }
    }

    #[test]
    fn a_cached_pipeline_resolves_to_its_snapshot_and_loads() {
        let dir = tempfile::tempdir().unwrap();
        cache_with_fixture(dir.path());
        let cache = hf_hub::Cache::new(dir.path().to_path_buf());
        let repo = HubRepo::open_in(cache.clone(), true, "kiln/tiny-sd", None).unwrap();
        let found = fetch(&repo).unwrap().expect("a pipeline");
        assert!(found.join("unet/config.json").is_file());
        crate::diffusion::Pipeline::load(
            crate::backend::cpu::CpuBackend::new(),
            &found,
            crate::backend::DType::F32,
        )
        .unwrap();
        // A repo without model_index.json (here: not cached, offline) is not a pipeline.
        let other = HubRepo::open_in(cache, true, "kiln/some-llm", None).unwrap();
        assert!(fetch(&other).unwrap().is_none());
    }

    #[test]
    fn a_missing_component_file_is_an_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        cache_with_fixture(dir.path());
        let snapshot = dir
            .path()
            .join("models--kiln--tiny-sd/snapshots/0123456789abcdef");
        std::fs::remove_file(snapshot.join("vae/config.json")).unwrap();
        let cache = hf_hub::Cache::new(dir.path().to_path_buf());
        let repo = HubRepo::open_in(cache, true, "kiln/tiny-sd", None).unwrap();
        let err = format!("{:#}", fetch(&repo).unwrap_err());
        assert!(err.contains("vae/config.json"), "{err}");
    }

    #[test]
    fn components_skip_private_keys_nulls_and_parts_kiln_does_not_run() {
        let index = serde_json::json!({
            "_class_name": "StableDiffusionPipeline",
            "unet": ["diffusers", "UNet2DConditionModel"],
            "safety_checker": [null, null],
            "feature_extractor": ["transformers", "CLIPImageProcessor"],
            "tokenizer": ["transformers", "CLIPTokenizer"],
        });
        let mut names = components(&index);
        names.sort();
        assert_eq!(names, ["feature_extractor", "tokenizer", "unet"]);
        assert!(role("feature_extractor").is_none());
        assert!(matches!(
            role("text_encoder_2"),
            Some(Component::Transformers)
        ));
    }
}
