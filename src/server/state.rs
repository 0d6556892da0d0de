//! What every handler shares: the engine once it is loaded, the served names, settings.

use super::error::{ApiError, ApiResult};
use super::metrics::ServerMetrics;
use crate::engine::EngineHandle;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};

/// The engine and the names it answers to, available once loading has finished.
pub struct Served {
    pub engine: EngineHandle,
    /// The first is the name responses report; requests may use any of them.
    pub names: Vec<String>,
    /// The model's own name or path (`root` in /v1/models).
    pub root: String,
}

pub struct AppState {
    served: OnceLock<Served>,
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

    /// The engine if it can take requests, else 503.
    pub fn ready(&self) -> ApiResult<&Served> {
        if self.is_draining() {
            return Err(ApiError::unavailable("the server is shutting down"));
        }
        if let Some(why) = self.gpu_fault() {
            return Err(ApiError::unavailable(format!("GPU failure: {why}")));
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

    /// The engine, checking that `model` is one of the served names (404 otherwise).
    pub fn ready_for(&self, model: &str) -> ApiResult<&Served> {
        let served = self.ready()?;
        if !served.names.iter().any(|n| n == model) {
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
