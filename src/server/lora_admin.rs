//! vLLM's runtime adapter endpoints, `POST /v1/load_lora_adapter` and
//! `POST /v1/unload_lora_adapter`, on when the server runs with
//! `--allow-runtime-lora-updating`. The engine loads or frees the adapter between steps;
//! the served names change once it has. Answers are plain text, as vLLM's are.

use super::error::{ApiError, ApiResult};
use super::json::ApiJson;
use super::state::{Served, ServedAdapter, SharedState};
use crate::model::lora::AdapterSpec;
use axum::extract::State;
use axum::http::StatusCode;
use serde::Deserialize;
use utoipa::ToSchema;

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LoadLoraAdapterRequest {
    /// The name requests will give as their `model`.
    pub lora_name: String,
    /// A PEFT adapter directory on the server's machine.
    pub lora_path: String,
    /// Replacing a loaded adapter in place is not supported: unload it first.
    #[serde(default)]
    pub load_inplace: bool,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UnloadLoraAdapterRequest {
    pub lora_name: String,
    /// Accepted for vLLM compatibility; the name decides.
    #[serde(default)]
    pub lora_int_id: Option<i64>,
}

/// The served model and the rank limit, when runtime adapter updates are on; otherwise a
/// 404 saying how to turn them on.
fn updatable(state: &SharedState) -> ApiResult<(&Served, usize)> {
    let served = state.ready()?;
    match served.runtime_lora_max_rank {
        Some(max_rank) => Ok((served, max_rank)),
        None => Err(ApiError {
            message: "runtime LoRA adapter updates are off (start kiln serve with \
                      --allow-runtime-lora-updating)"
                .into(),
            ..ApiError::not_found("")
        }),
    }
}

#[utoipa::path(post, tag = "lora", path = "/v1/load_lora_adapter",
    request_body = LoadLoraAdapterRequest,
    responses((status = 200, description = "Plain-text confirmation", body = String),
        (status = 400, body = super::error::ErrorBody), (status = 404, body = super::error::ErrorBody)))]
pub async fn load_lora_adapter(
    State(state): State<SharedState>,
    ApiJson(req): ApiJson<LoadLoraAdapterRequest>,
) -> ApiResult<String> {
    let (served, max_rank) = updatable(&state)?;
    let _one_at_a_time = served.lora_updates.lock().await;
    let name = req.lora_name.trim().to_string();
    if name.is_empty() || req.lora_path.trim().is_empty() {
        return Err(ApiError::invalid(
            None,
            "lora_name and lora_path must not be empty",
        ));
    }
    if req.load_inplace {
        return Err(ApiError::invalid(
            Some("load_inplace"),
            "replacing an adapter in place is not supported: unload it, then load it",
        ));
    }
    if served.names.contains(&name) || served.adapter_for(&name).is_some() {
        return Err(ApiError::invalid(
            Some("lora_name"),
            format!("The lora adapter '{name}' has already been loaded."),
        ));
    }
    let spec = AdapterSpec {
        name: name.clone(),
        path: req.lora_path.clone().into(),
    };
    let slot = served
        .engine
        .load_adapter(spec, max_rank)
        .await
        .map_err(|_| ApiError::internal("the engine stopped while loading the adapter"))?
        .map_err(|e| ApiError::invalid(Some("lora_path"), e))?;
    let mut adapters = served
        .adapters
        .write()
        .map_err(|_| ApiError::internal("the adapter list is poisoned"))?;
    adapters.push(ServedAdapter {
        name: name.clone(),
        path: req.lora_path,
        slot,
    });
    Ok(format!(
        "Success: LoRA adapter '{name}' added successfully."
    ))
}

#[utoipa::path(post, tag = "lora", path = "/v1/unload_lora_adapter",
    request_body = UnloadLoraAdapterRequest,
    responses((status = 200, description = "Plain-text confirmation", body = String),
        (status = 400, body = super::error::ErrorBody), (status = 404, body = super::error::ErrorBody)))]
pub async fn unload_lora_adapter(
    State(state): State<SharedState>,
    ApiJson(req): ApiJson<UnloadLoraAdapterRequest>,
) -> ApiResult<String> {
    let (served, _) = updatable(&state)?;
    let _one_at_a_time = served.lora_updates.lock().await;
    let name = req.lora_name;
    let Some(slot) = served.adapter_for(&name) else {
        return Err(ApiError {
            param: Some("lora_name".into()),
            ..ApiError::invalid(None, format!("The lora adapter '{name}' cannot be found."))
                .with_status(StatusCode::NOT_FOUND)
        });
    };
    // Off the list first, so no new request reaches it while the engine frees it.
    let restore = |served: &Served, adapter: ServedAdapter| {
        if let Ok(mut list) = served.adapters.write() {
            list.push(adapter);
        }
    };
    let removed = {
        let mut list = served
            .adapters
            .write()
            .map_err(|_| ApiError::internal("the adapter list is poisoned"))?;
        let at = list.iter().position(|a| a.slot == slot);
        at.map(|i| list.remove(i))
    };
    let freed = served
        .engine
        .unload_adapter(slot)
        .await
        .unwrap_or_else(|_| Err("the engine stopped while unloading the adapter".into()));
    if let Err(e) = freed {
        if let Some(adapter) = removed {
            restore(served, adapter);
        }
        return Err(ApiError::invalid(
            Some("lora_name"),
            format!("The lora adapter '{name}' cannot be unloaded now: {e}"),
        ));
    }
    Ok(format!(
        "Success: LoRA adapter '{name}' removed successfully."
    ))
}
