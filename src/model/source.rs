//! Finding a model's files: a local directory in HF layout, a config-only preset (for dummy
//! weights), or a Hugging Face hub repo id (standard cache, HF_HOME / HF_HUB_CACHE,
//! HF_HUB_OFFLINE, HF_TOKEN, HF_ENDPOINT).

use anyhow::{Context, Result};
use std::path::{Path, PathBuf};

/// The files of one model, all on local disk.
#[derive(Clone, Debug)]
pub struct ModelFiles {
    /// Name to report (repo id, directory name or preset name).
    pub name: String,
    pub config: PathBuf,
    /// Directory holding tokenizer.json and tokenizer_config.json, if any.
    pub tokenizer_dir: Option<PathBuf>,
    pub generation_config: Option<PathBuf>,
    /// NVIDIA ModelOpt's `hf_quant_config.json`, which older ModelOpt checkpoints carry
    /// instead of a `quantization_config` in config.json.
    pub quant_config: Option<PathBuf>,
    /// Safetensors files or PyTorch `.bin` shards (never both); empty for a preset (only
    /// dummy weights can be built).
    pub weights: Vec<PathBuf>,
}

/// ModelOpt's quantization file beside config.json.
const QUANT_CONFIG_FILE: &str = "hf_quant_config.json";

impl ModelFiles {
    /// The model's config, with the quantization ModelOpt's `hf_quant_config.json` names
    /// where config.json names none.
    pub fn model_config(&self) -> Result<super::config::ModelConfig> {
        let mut config = super::config::ModelConfig::from_file(&self.config)?;
        if let (None, Some(path)) = (&config.quantization, &self.quant_config) {
            config.quantization = super::config::Quantization::from_modelopt_file(path)?;
        }
        Ok(config)
    }
}

/// Which weight files to look for (`--load-format`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WeightFiles {
    /// None: the weights are generated (dummy), only the config is needed.
    Skip,
    /// Safetensors when the model has them, else a PyTorch checkpoint.
    Auto,
    Safetensors,
    /// `pytorch_model.bin`, whole or sharded.
    Pytorch,
}

/// The name of the single-file PyTorch checkpoint; shards are listed by its `.index.json`.
const PYTORCH_FILE: &str = "pytorch_model.bin";

/// Whether `path` is a PyTorch checkpoint rather than a safetensors file.
pub fn is_pytorch_checkpoint(path: &Path) -> bool {
    path.extension()
        .is_some_and(|x| x == "bin" || x == "pt" || x == "pth")
}

/// Lists the weight files of a directory that `wanted` asks for.
fn weight_files_in(dir: &Path, wanted: WeightFiles) -> Result<Vec<PathBuf>> {
    match wanted {
        WeightFiles::Skip => Ok(Vec::new()),
        WeightFiles::Safetensors => files_in(dir, "model.safetensors", "", ".safetensors"),
        WeightFiles::Pytorch => files_in(dir, PYTORCH_FILE, "pytorch_model", ".bin"),
        WeightFiles::Auto => {
            let safetensors = weight_files_in(dir, WeightFiles::Safetensors)?;
            if !safetensors.is_empty() {
                return Ok(safetensors);
            }
            weight_files_in(dir, WeightFiles::Pytorch)
        }
    }
}

/// The shards `<single>.index.json` lists, or `single`, or else every file named
/// `<prefix>*<suffix>` (any safetensors shards without an index, prefix ""; only
/// `pytorch_model*.bin`, since repositories also hold other `.bin` files such as
/// `training_args.bin`).
fn files_in(dir: &Path, single: &str, prefix: &str, suffix: &str) -> Result<Vec<PathBuf>> {
    let index = dir.join(format!("{single}.index.json"));
    if index.exists() {
        return shards_from_index(&index, |f| Ok(dir.join(f)));
    }
    let single = dir.join(single);
    if single.exists() {
        return Ok(vec![single]);
    }
    let mut all: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            let name = p.file_name().and_then(|n| n.to_str()).unwrap_or_default();
            name.ends_with(suffix) && name.starts_with(prefix)
        })
        .collect();
    all.sort();
    Ok(all)
}

/// Shard file names listed in a `model.safetensors.index.json`, resolved by `fetch`.
fn shards_from_index(
    index: &Path,
    mut fetch: impl FnMut(&str) -> Result<PathBuf>,
) -> Result<Vec<PathBuf>> {
    let text =
        std::fs::read_to_string(index).with_context(|| format!("reading {}", index.display()))?;
    let json: serde_json::Value = serde_json::from_str(&text)
        .with_context(|| format!("{} is not valid JSON", index.display()))?;
    let map = json
        .get("weight_map")
        .and_then(|m| m.as_object())
        .with_context(|| format!("{} has no weight_map", index.display()))?;
    let mut names: Vec<&str> = map.values().filter_map(|v| v.as_str()).collect();
    names.sort_unstable();
    names.dedup();
    names.into_iter().map(&mut fetch).collect()
}

fn optional(path: PathBuf) -> Option<PathBuf> {
    path.exists().then_some(path)
}

/// A local model directory (or a bare config.json, for dummy weights), with whichever
/// weights it has.
pub fn local(path: &Path) -> Result<ModelFiles> {
    local_with(path, WeightFiles::Auto)
}

/// A local model directory (or a bare config.json, for dummy weights), with the weight
/// files `wanted` asks for.
pub fn local_with(path: &Path, wanted: WeightFiles) -> Result<ModelFiles> {
    if path.is_file() {
        let dir = path.parent().map(Path::to_path_buf);
        return Ok(ModelFiles {
            name: path.display().to_string(),
            config: path.to_path_buf(),
            tokenizer_dir: dir.clone().filter(|d| has_tokenizer(d)),
            generation_config: None,
            quant_config: None,
            weights: Vec::new(),
        });
    }
    let config = path.join("config.json");
    anyhow::ensure!(
        config.exists(),
        "{} has no config.json (is it a Hugging Face model directory?)",
        path.display()
    );
    Ok(ModelFiles {
        name: path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| path.display().to_string()),
        config,
        tokenizer_dir: has_tokenizer(path).then(|| path.to_path_buf()),
        generation_config: optional(path.join("generation_config.json")),
        quant_config: optional(path.join(QUANT_CONFIG_FILE)),
        weights: weight_files_in(path, wanted)?,
    })
}

/// Whether `dir` holds a tokenizer kiln reads: tokenizer.json, a tiktoken vocabulary,
/// GPT-2's slow `vocab.json` + `merges.txt`, or a SentencePiece model.
pub fn has_tokenizer(dir: &Path) -> bool {
    dir.join("tokenizer.json").exists()
        || dir.join(super::tiktoken::TIKTOKEN_FILE).exists()
        || super::bpe_files::present(dir)
        || dir.join(super::sentencepiece::MODEL_FILE).exists()
}

fn env_flag(name: &str) -> bool {
    std::env::var(name)
        .is_ok_and(|v| matches!(v.to_ascii_lowercase().as_str(), "1" | "true" | "yes" | "on"))
}

fn hub_cache() -> hf_hub::Cache {
    match std::env::var("HF_HUB_CACHE") {
        Ok(dir) => hf_hub::Cache::new(dir.into()),
        Err(_) => hf_hub::Cache::from_env(),
    }
}

/// Files of one hub repo: from the HF cache, downloading what is missing unless offline.
pub struct HubRepo {
    repo_id: String,
    cached: hf_hub::CacheRepo,
    api: Option<hf_hub::api::sync::ApiRepo>,
}

impl HubRepo {
    /// `repo_id` at `revision` through the HF cache (`HF_HUB_CACHE`/`HF_HOME`), downloading
    /// unless HF_HUB_OFFLINE is set.
    pub fn open(repo_id: &str, revision: Option<&str>) -> Result<HubRepo> {
        Self::open_in(hub_cache(), env_flag("HF_HUB_OFFLINE"), repo_id, revision)
    }

    /// The same with an explicit cache and offline switch (tests use a cache of their own).
    pub fn open_in(
        cache: hf_hub::Cache,
        offline: bool,
        repo_id: &str,
        revision: Option<&str>,
    ) -> Result<HubRepo> {
        let repo = match revision {
            Some(r) => hf_hub::Repo::with_revision(
                repo_id.to_string(),
                hf_hub::RepoType::Model,
                r.to_string(),
            ),
            None => hf_hub::Repo::model(repo_id.to_string()),
        };
        let cached = cache.repo(repo.clone());
        let api = if offline {
            None
        } else {
            let mut b = hf_hub::api::sync::ApiBuilder::from_cache(cache).with_progress(true);
            if let Ok(endpoint) = std::env::var("HF_ENDPOINT") {
                b = b.with_endpoint(endpoint);
            }
            if let Ok(token) = std::env::var("HF_TOKEN") {
                b = b.with_token(Some(token));
            }
            Some(
                b.build()
                    .context("setting up the Hugging Face hub client")?
                    .repo(repo),
            )
        };
        Ok(HubRepo {
            repo_id: repo_id.to_string(),
            cached,
            api,
        })
    }

    /// The local path of `file` (a path inside the repo), fetched if needed.
    pub fn get(&self, file: &str) -> Result<PathBuf> {
        if let Some(p) = self.cached.get(file) {
            return Ok(p);
        }
        match &self.api {
            None => anyhow::bail!(
                "{}/{file} is not in the local HF cache and HF_HUB_OFFLINE is set",
                self.repo_id
            ),
            Some(api) => api
                .get(file)
                .with_context(|| format!("downloading {}/{file}", self.repo_id)),
        }
    }

    /// The safetensors weights `<dir>/<stem>.safetensors`, or the shards its index lists.
    pub fn weights(&self, dir: &str, stem: &str) -> Result<Vec<PathBuf>> {
        self.indexed(dir, &format!("{stem}.safetensors"))
            .with_context(|| format!("{} has no safetensors weights in '{dir}'", self.repo_id))
    }

    /// The PyTorch checkpoint `pytorch_model.bin`, or the shards its index lists.
    pub fn pytorch_weights(&self) -> Result<Vec<PathBuf>> {
        self.indexed("", PYTORCH_FILE).with_context(|| {
            format!(
                "{} has no PyTorch checkpoint ({PYTORCH_FILE})",
                self.repo_id
            )
        })
    }

    /// The shards `<dir>/<file>.index.json` lists, or `<dir>/<file>` itself.
    fn indexed(&self, dir: &str, file: &str) -> Result<Vec<PathBuf>> {
        let prefix = if dir.is_empty() {
            String::new()
        } else {
            format!("{dir}/")
        };
        if let Ok(index) = self.get(&format!("{prefix}{file}.index.json")) {
            return shards_from_index(&index, |f| self.get(&format!("{prefix}{f}")));
        }
        Ok(vec![self.get(&format!("{prefix}{file}"))?])
    }

    /// The weight files `wanted` asks for.
    fn weight_files(&self, wanted: WeightFiles) -> Result<Vec<PathBuf>> {
        match wanted {
            WeightFiles::Skip => Ok(Vec::new()),
            WeightFiles::Safetensors => self.weights("", "model"),
            WeightFiles::Pytorch => self.pytorch_weights(),
            WeightFiles::Auto => self.weights("", "model").or_else(|safetensors| {
                self.pytorch_weights().map_err(|pytorch| {
                    anyhow::anyhow!(
                        "{} has neither safetensors weights ({safetensors:#}) nor a PyTorch \
                         checkpoint ({pytorch:#})",
                        self.repo_id
                    )
                })
            }),
        }
    }
}

/// A hub repo id. Files come from the HF cache, downloading what is missing unless
/// HF_HUB_OFFLINE is set. `wanted` says which weights to fetch (none for dummy weights).
pub fn hub(repo_id: &str, revision: Option<&str>, wanted: WeightFiles) -> Result<ModelFiles> {
    hub_files(&HubRepo::open(repo_id, revision)?, wanted)
}

/// The model files of an opened hub repo.
fn hub_files(repo: &HubRepo, wanted: WeightFiles) -> Result<ModelFiles> {
    let get = |file: &str| repo.get(file);
    let config = get("config.json")?;
    let tokenizer = fetch_tokenizer(repo);
    let _ = get("tokenizer_config.json");
    let generation_config = get("generation_config.json").ok();
    let quant_config = get(QUANT_CONFIG_FILE).ok();
    let weights = repo.weight_files(wanted)?;
    Ok(ModelFiles {
        name: repo.repo_id.clone(),
        config,
        tokenizer_dir: tokenizer.and_then(|t| t.parent().map(Path::to_path_buf)),
        generation_config,
        quant_config,
        weights,
    })
}

/// The repo's tokenizer files, in kiln's order of preference: tokenizer.json; else a form
/// kiln converts (tiktoken, GPT-2's slow pair, SentencePiece), with the files that name
/// its special and added tokens. A file in the tokenizer's directory, or None.
fn fetch_tokenizer(repo: &HubRepo) -> Option<PathBuf> {
    use super::bpe_files::{MERGES_FILE, VOCAB_FILE};
    use super::tokenizer_json::{ADDED_TOKENS_FILE, SPECIAL_TOKENS_FILE};
    if let Ok(path) = repo.get("tokenizer.json") {
        return Some(path);
    }
    let converted = repo
        .get(super::tiktoken::TIKTOKEN_FILE)
        .or_else(|_| {
            let vocab = repo.get(VOCAB_FILE)?;
            repo.get(MERGES_FILE).map(|_| vocab)
        })
        .or_else(|_| repo.get(super::sentencepiece::MODEL_FILE))
        .ok()?;
    for optional in [SPECIAL_TOKENS_FILE, ADDED_TOKENS_FILE] {
        let _ = repo.get(optional);
    }
    Some(converted)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_shards_through_the_index() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("config.json"), "{}").unwrap();
        std::fs::write(
            dir.path().join("model.safetensors.index.json"),
            r#"{"weight_map": {"a": "m-2.safetensors", "b": "m-1.safetensors", "c": "m-2.safetensors"}}"#,
        )
        .unwrap();
        let files = local(dir.path()).unwrap();
        let names: Vec<_> = files
            .weights
            .iter()
            .map(|p| p.file_name().unwrap().to_str().unwrap())
            .collect();
        assert_eq!(names, ["m-1.safetensors", "m-2.safetensors"]);
        assert!(files.tokenizer_dir.is_none());
    }

    /// Older ModelOpt checkpoints name their format only in hf_quant_config.json; a
    /// quantization_config in config.json wins.
    #[test]
    fn modelopt_checkpoints_name_their_format_beside_the_config() {
        use crate::model::config::Quantization;
        let dir = tempfile::tempdir().unwrap();
        let config = r#"{"architectures": ["LlamaForCausalLM"], "hidden_size": 64,
            "intermediate_size": 128, "num_hidden_layers": 1, "num_attention_heads": 4,
            "vocab_size": 100"#;
        std::fs::write(dir.path().join("config.json"), format!("{config}}}")).unwrap();
        let files = local_with(dir.path(), WeightFiles::Skip).unwrap();
        assert_eq!(files.model_config().unwrap().quantization, None);
        let quant = dir.path().join("hf_quant_config.json");
        std::fs::write(
            &quant,
            r#"{"producer": {"name": "modelopt", "version": "0.19.0"},
            "quantization": {"quant_algo": "FP8", "kv_cache_quant_algo": null,
            "exclude_modules": ["lm_head"]}}"#,
        )
        .unwrap();
        let files = local_with(dir.path(), WeightFiles::Skip).unwrap();
        assert_eq!(files.quant_config.as_deref(), Some(quant.as_path()));
        let q = files.model_config().unwrap().quantization;
        assert_eq!(q, Some(Quantization::Fp8));
        std::fs::write(&quant, r#"{"quantization": {"quant_algo": "NVFP4"}}"#).unwrap();
        let q = files.model_config().unwrap().quantization;
        assert_eq!(q, Some(Quantization::Nvfp4));
        std::fs::write(&quant, r#"{"quantization": {"quant_algo": "INT4_AWQ"}}"#).unwrap();
        let err = format!("{:#}", files.model_config().unwrap_err());
        assert!(
            err.contains("INT4_AWQ") && err.contains("hf_quant_config.json"),
            "{err}"
        );
        // config.json's own quantization_config wins.
        let own = format!(
            r#"{config}, "quantization_config": {{"quant_method": "fp8", "weight_block_size": [128, 128]}}}}"#
        );
        std::fs::write(dir.path().join("config.json"), own).unwrap();
        std::fs::write(&quant, r#"{"quantization": {"quant_algo": "NVFP4"}}"#).unwrap();
        let q = files.model_config().unwrap().quantization;
        assert_eq!(q, Some(Quantization::Fp8));
    }

    fn names(files: &ModelFiles) -> Vec<&str> {
        files
            .weights
            .iter()
            .map(|p| p.file_name().unwrap().to_str().unwrap())
            .collect()
    }

    #[test]
    fn pytorch_checkpoints_are_found_when_there_are_no_safetensors() {
        let dir = tempfile::tempdir().unwrap();
        let touch = |name: &str| std::fs::write(dir.path().join(name), "x").unwrap();
        touch("config.json");
        // Not weights: only pytorch_model*.bin are, when there is no index.
        touch("training_args.bin");
        touch("pytorch_model-00002-of-00002.bin");
        touch("pytorch_model-00001-of-00002.bin");
        let auto = local(dir.path()).unwrap();
        assert_eq!(
            names(&auto),
            [
                "pytorch_model-00001-of-00002.bin",
                "pytorch_model-00002-of-00002.bin"
            ]
        );
        assert!(auto.weights.iter().all(|p| is_pytorch_checkpoint(p)));
        let safetensors = local_with(dir.path(), WeightFiles::Safetensors).unwrap();
        assert!(safetensors.weights.is_empty());
        // Safetensors win over a PyTorch checkpoint beside them, unless pt is asked for.
        touch("model.safetensors");
        assert_eq!(names(&local(dir.path()).unwrap()), ["model.safetensors"]);
        let pt = local_with(dir.path(), WeightFiles::Pytorch).unwrap();
        assert_eq!(pt.weights.len(), 2);
        touch("pytorch_model.bin");
        let pt = local_with(dir.path(), WeightFiles::Pytorch).unwrap();
        assert_eq!(names(&pt), ["pytorch_model.bin"]);
        let skip = local_with(dir.path(), WeightFiles::Skip).unwrap();
        assert!(skip.weights.is_empty());
    }

    #[test]
    fn slow_tokenizer_files_count_as_a_tokenizer() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("config.json"), "{}").unwrap();
        std::fs::write(dir.path().join("vocab.json"), "{}").unwrap();
        assert!(local(dir.path()).unwrap().tokenizer_dir.is_none());
        std::fs::write(dir.path().join("merges.txt"), "").unwrap();
        assert!(local(dir.path()).unwrap().tokenizer_dir.is_some());
    }

    /// An offline HF cache holding the `fixture` directory's files as repo `kiln/<fixture>`.
    fn cached_fixture(root: &Path, fixture: &str) -> HubRepo {
        let repo = root.join(format!("models--kiln--{fixture}"));
        let snapshot = repo.join("snapshots/0123456789abcdef");
        std::fs::create_dir_all(&snapshot).unwrap();
        let source = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures")
            .join(fixture);
        for entry in std::fs::read_dir(source).unwrap() {
            let path = entry.unwrap().path();
            std::fs::copy(&path, snapshot.join(path.file_name().unwrap())).unwrap();
        }
        std::fs::create_dir_all(repo.join("refs")).unwrap();
        std::fs::write(repo.join("refs/main"), "0123456789abcdef").unwrap();
        let cache = hf_hub::Cache::new(root.to_path_buf());
        HubRepo::open_in(cache, true, &format!("kiln/{fixture}"), None).unwrap()
    }

    #[test]
    fn a_hub_repo_without_safetensors_or_tokenizer_json_resolves_its_older_files() {
        let dir = tempfile::tempdir().unwrap();
        let repo = cached_fixture(dir.path(), "opt_pytorch");
        let files = hub_files(&repo, WeightFiles::Auto).unwrap();
        assert_eq!(files.name, "kiln/opt_pytorch");
        assert_eq!(
            names(&files),
            [
                "pytorch_model-00001-of-00002.bin",
                "pytorch_model-00002-of-00002.bin"
            ]
        );
        // The slow tokenizer's directory, which converts to the fixture's ids.
        let tokenizer_dir = files.tokenizer_dir.unwrap();
        let tokenizer = crate::model::tokenizer::Tokenizer::from_dir(&tokenizer_dir).unwrap();
        assert_eq!(tokenizer.encode("The river town", true).unwrap()[0], 0);
        let err = format!(
            "{:#}",
            hub_files(&repo, WeightFiles::Safetensors).unwrap_err()
        );
        assert!(err.contains("no safetensors weights"), "{err}");
        // A repo with neither says what was looked for.
        let safetensors_only = cached_fixture(dir.path(), "opt");
        let err = format!(
            "{:#}",
            hub_files(&safetensors_only, WeightFiles::Pytorch).unwrap_err()
        );
        assert!(err.contains("no PyTorch checkpoint"), "{err}");
        let sentencepiece = cached_fixture(dir.path(), "sentencepiece");
        assert!(fetch_tokenizer(&sentencepiece)
            .unwrap()
            .ends_with("tokenizer.model"));
    }

    #[test]
    fn a_directory_without_config_is_refused_with_its_name() {
        let dir = tempfile::tempdir().unwrap();
        let err = local(dir.path()).unwrap_err().to_string();
        assert!(err.contains("no config.json"), "{err}");
    }

    #[test]
    fn offline_without_cache_says_so() {
        let dir = tempfile::tempdir().unwrap();
        // Only this test reads these variables, and it sets them for its own process view.
        std::env::set_var("HF_HUB_CACHE", dir.path());
        std::env::set_var("HF_HUB_OFFLINE", "1");
        let err = format!(
            "{:#}",
            hub("nobody/nothing", None, WeightFiles::Auto).unwrap_err()
        );
        assert!(err.contains("HF_HUB_OFFLINE"), "{err}");
    }
}
