//! What every handler shares: the engine once it is loaded, the served names, settings.

use super::error::{ApiError, ApiResult};
use super::metrics::ServerMetrics;
use crate::diffusion::handle::ImageHandle;
use crate::engine::EngineHandle;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock, RwLock};

/// The engine and the names it answers to, available once loading has finished.
pub struct Served {
    pub engine: EngineHandle,
    /// The first is the name responses report; requests may use any of them.
    pub names: Vec<String>,
    /// The model's own name or path (`root` in /v1/models).
    pub root: String,
    /// LoRA adapters requests may name instead (changed at run time by the adapter
    /// endpoints, when `runtime_lora_max_rank` allows them).
    pub adapters: RwLock<Vec<ServedAdapter>>,
    /// `--allow-runtime-lora-updating`: the largest rank a loaded adapter may have.
    pub runtime_lora_max_rank: Option<usize>,
    /// Held by each adapter load or unload, so two of them never race on one name.
    pub lora_updates: tokio::sync::Mutex<()>,
}

/// A LoRA adapter a request may name as its `model`.
#[derive(Clone, Debug)]
pub struct ServedAdapter {
    pub name: String,
    pub path: String,
    /// The engine's slot for it (`SamplingParams::lora_adapter`).
    pub slot: usize,
}

impl Served {
    /// The adapter slot a request's `model` names; None for the base model's names.
    pub fn adapter_for(&self, model: &str) -> Option<usize> {
        let adapters = self.adapters.read().ok()?;
        adapters.iter().find(|a| a.name == model).map(|a| a.slot)
    }

    /// 400 for a sequence classifier, which answers `/classify` only.
    pub fn generates(&self) -> ApiResult<()> {
        match self.engine.info().classifier {
            Some(_) => Err(ApiError::invalid(
                Some("model"),
                "this model is a sequence classifier: use POST /classify",
            )),
            None => Ok(()),
        }
    }

    /// The adapters served now.
    pub fn adapters(&self) -> Vec<ServedAdapter> {
        self.adapters.read().map(|a| a.clone()).unwrap_or_default()
    }
}

/// The image engine and the names it answers to, when the server serves a diffusers
/// pipeline instead of an LLM.
pub struct ServedImages {
    pub engine: ImageHandle,
    pub names: Vec<String>,
    pub root: String,
}

/// What `kiln serve` loaded: an LLM or an image pipeline (decided by the model directory).
pub enum Loaded {
    Text(Served),
    Images(ServedImages),
}

pub struct AppState {
    served: OnceLock<Served>,
    images: OnceLock<ServedImages>,
    pub api_key: Option<String>,
    pub metrics: ServerMetrics,
    /// Set once shutdown has begun: new requests on open connections are refused.
    draining: AtomicBool,
    pub started_at: u64,
    /// Why a GPU the server runs on became unusable, once one has (see `gpu_watch`).
    gpu_fault: OnceLock<String>,
}

pub type SharedState = Arc<AppState>;

impl AppState {
    pub fn new(api_key: Option<String>) -> Self {
        AppState {
            served: OnceLock::new(),
            images: OnceLock::new(),
            api_key: api_key.filter(|k| !k.is_empty()),
            metrics: ServerMetrics::new(),
            draining: AtomicBool::new(false),
            started_at: unix_now(),
            gpu_fault: OnceLock::new(),
        }
    }

    /// Publishes the loaded engine; later calls are ignored.
    pub fn set_served(&self, served: Served) {
        let _ = self.served.set(served);
    }

    pub fn served(&self) -> Option<&Served> {
        self.served.get()
    }

    /// Publishes whatever was loaded; later calls are ignored.
    pub fn set_loaded(&self, loaded: Loaded) {
        match loaded {
            Loaded::Text(served) => self.set_served(served),
            Loaded::Images(images) => {
                let _ = self.images.set(images);
            }
        }
    }

    /// The image engine, on a server that serves a diffusers pipeline.
    pub fn images(&self) -> Option<&ServedImages> {
        self.images.get()
    }

    /// 503 while shutting down or after a GPU failure.
    fn accepting(&self) -> ApiResult<()> {
        if self.is_draining() {
            return Err(ApiError::unavailable("the server is shutting down"));
        }
        if let Some(why) = self.gpu_fault() {
            return Err(ApiError::unavailable(format!("GPU failure: {why}")));
        }
        Ok(())
    }

    /// Whether the server can take requests of the kind it serves (for `/health`).
    pub fn healthy(&self) -> ApiResult<()> {
        if self.images().is_some() {
            return self.accepting();
        }
        self.ready().map(|_| ())
    }

    /// The image engine if it can take requests; `model`, when given, must be one of its
    /// names. A text server answers 404 saying what it serves.
    pub fn ready_images(&self, model: Option<&str>) -> ApiResult<&ServedImages> {
        self.accepting()?;
        if let Some(text) = self.served() {
            return Err(ApiError::not_served(format!(
                "this server serves the text model `{}`, not image generation (start \
                 `kiln serve` with a diffusers pipeline directory, one with model_index.json)",
                text.names.first().unwrap_or(&text.root)
            )));
        }
        let images = self
            .images()
            .ok_or_else(|| ApiError::unavailable("the model is still loading"))?;
        if let Some(model) = model.filter(|m| !images.names.iter().any(|n| n == m)) {
            return Err(ApiError::model_not_found(model));
        }
        Ok(images)
    }

    /// The engine if it can take requests, else 503 (404 on an image server).
    pub fn ready(&self) -> ApiResult<&Served> {
        self.accepting()?;
        if let Some(images) = self.images() {
            return Err(ApiError::not_served(format!(
                "this server serves the image pipeline `{}`: use POST /v1/images/generations",
                images.names.first().unwrap_or(&images.root)
            )));
        }
        let served = self
            .served()
            .ok_or_else(|| ApiError::unavailable("the model is still loading"))?;
        if let Some(why) = served.engine.stats().failure() {
            return Err(ApiError::unavailable(format!(
                "the engine has failed: {why}"
            )));
        }
        Ok(served)
    }

    /// The engine, checking that `model` is one of the served names or adapters (404
    /// otherwise).
    pub fn ready_for(&self, model: &str) -> ApiResult<&Served> {
        let served = self.ready()?;
        if !served.names.iter().any(|n| n == model) && served.adapter_for(model).is_none() {
            return Err(ApiError::model_not_found(model));
        }
        Ok(served)
    }

    /// Records a GPU failure; only the first is kept. True if this was the first.
    pub fn set_gpu_fault(&self, why: String) -> bool {
        self.gpu_fault.set(why).is_ok()
    }

    pub fn gpu_fault(&self) -> Option<&str> {
        self.gpu_fault.get().map(String::as_str)
    }

    pub fn start_draining(&self) {
        self.draining.store(true, Ordering::Release);
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Acquire)
    }
}

pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}
