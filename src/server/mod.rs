//! `kiln serve`: the OpenAI-compatible HTTP server on top of the engine handle. The server
//! never reaches into the engine: it submits token ids and reads output streams.
//!
//! Startup binds the port first and loads the model in the background, so `/health`
//! answers 503 while loading. SIGTERM / SIGINT stop new work (new connections are refused,
//! new requests on open ones get 503), let in-flight requests finish within
//! `--shutdown-timeout`, then exit 0.

pub mod auth;
pub mod beam;
pub mod best_of;
pub mod chat;
pub mod chat_tools;
pub mod classify;
pub mod completions;
pub mod embeddings;
pub mod error;
pub mod generate;
pub mod gpu_watch;
pub mod image_metrics;
pub mod images;
pub mod json;
pub mod logprobs;
pub mod lora_admin;
pub mod metrics;
pub mod openapi;
pub mod responses;
pub mod routes;
pub mod sampling;
pub mod service;
pub mod shutdown;
pub mod sse;
pub mod state;
pub mod types;

use crate::engine::EngineHandle;
use crate::launch::{build_engine, EngineArgs};
use anyhow::{Context, Result};
use state::{AppState, Loaded, Served, ServedAdapter, ServedImages, SharedState};
use std::future::Future;
use std::sync::{Arc, RwLock};
use std::time::Duration;
use tokio::net::TcpListener;

#[derive(clap::Args, Clone, Debug)]
pub struct ServeArgs {
    #[command(flatten)]
    pub engine: EngineArgs,
    /// Address to listen on.
    #[arg(long, env = "KILN_HOST", default_value = "0.0.0.0")]
    pub host: String,
    /// Port to listen on (0 picks a free one; the chosen address is logged).
    #[arg(long, env = "KILN_PORT", default_value_t = 8000)]
    pub port: u16,
    /// Names the model answers to in requests (comma-separated); the first is reported.
    /// Defaults to the model's name.
    #[arg(long, env = "KILN_SERVED_MODEL_NAME", value_delimiter = ',')]
    pub served_model_name: Vec<String>,
    /// Require `Authorization: Bearer <key>` on /v1/*.
    #[arg(long, env = "KILN_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,
    /// Requests allowed to wait for a slot before new ones get 429 (0: unbounded).
    #[arg(long, env = "KILN_MAX_QUEUED_REQUESTS", default_value_t = 0)]
    pub max_queued_requests: usize,
    /// Seconds in-flight requests get to finish after SIGTERM / SIGINT.
    #[arg(long, env = "KILN_SHUTDOWN_TIMEOUT", default_value_t = 30)]
    pub shutdown_timeout: u64,
    /// Largest request body accepted; larger ones get 413.
    #[arg(long, env = "KILN_MAX_REQUEST_BODY_BYTES", default_value_t = 16 << 20)]
    pub max_request_body_bytes: usize,
}

/// Runs `kiln serve` until a signal (blocking).
pub fn run(args: ServeArgs) -> Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("kiln-http")
        .build()
        .context("starting the async runtime")?;
    let result = runtime.block_on(serve_from_args(args));
    // Whatever is still running (requests cancelled at the deadline, a model still
    // loading) is dropped rather than waited for.
    runtime.shutdown_timeout(Duration::from_secs(1));
    result
}

async fn serve_from_args(args: ServeArgs) -> Result<()> {
    let listener = TcpListener::bind((args.host.as_str(), args.port))
        .await
        .with_context(|| format!("binding {}:{}", args.host, args.port))?;
    let state = Arc::new(AppState::new(args.api_key.clone()));
    // Detached: it ends with the runtime.
    let _gpu_watch = gpu_watch::start(state.clone(), args.engine.device);
    let engine_args = args.engine.clone();
    let names = args.served_model_name.clone();
    let max_queued = args.max_queued_requests;
    let loader = async move {
        tokio::task::spawn_blocking(move || load_any(&engine_args, names, max_queued))
            .await
            .context("the model loader panicked")?
    };
    let options = ServeOptions {
        max_request_body_bytes: args.max_request_body_bytes,
        shutdown_timeout: Duration::from_secs(args.shutdown_timeout),
    };
    serve_loaded(listener, state, loader, shutdown::signal(), options).await
}

/// Loads the model and starts the engine (blocking).
pub fn load(args: &EngineArgs, names: Vec<String>, max_queued: usize) -> Result<Served> {
    let (engine, root) = build_engine(args)?;
    let names = if names.is_empty() {
        vec![root.clone()]
    } else {
        names
    };
    let adapters = args
        .lora_modules
        .iter()
        .enumerate()
        .map(|(slot, a)| ServedAdapter {
            name: a.name.clone(),
            path: a.path.display().to_string(),
            slot,
        })
        .collect();
    Ok(Served {
        engine: EngineHandle::spawn(engine, max_queued),
        names,
        root,
        adapters: RwLock::new(adapters),
        runtime_lora_max_rank: args
            .allow_runtime_lora_updating
            .then_some(args.max_lora_rank),
        lora_updates: Default::default(),
    })
}

/// Loads what the model directory holds: a diffusers pipeline (it has model_index.json)
/// is served for images, anything else as an LLM (blocking).
pub fn load_any(args: &EngineArgs, names: Vec<String>, max_queued: usize) -> Result<Loaded> {
    let Some(dir) = crate::launch::images::diffusers_dir(args)? else {
        return load(args, names, max_queued).map(Loaded::Text);
    };
    let (engine, root) = crate::launch::images::build_image_engine(args, &dir, max_queued)?;
    let names = if names.is_empty() {
        vec![root.clone()]
    } else {
        names
    };
    Ok(Loaded::Images(ServedImages {
        engine,
        names,
        root,
    }))
}

pub struct ServeOptions {
    pub max_request_body_bytes: usize,
    pub shutdown_timeout: Duration,
}

/// Serves an LLM on `listener` while `loader` brings the engine up, until `stop` resolves;
/// then drains. Returns an error if the model fails to load or the listener fails.
pub async fn serve(
    listener: TcpListener,
    state: SharedState,
    loader: impl Future<Output = Result<Served>>,
    stop: impl Future<Output = ()> + Send + 'static,
    options: ServeOptions,
) -> Result<()> {
    let loader = async move { loader.await.map(Loaded::Text) };
    serve_loaded(listener, state, loader, stop, options).await
}

/// [`serve`] for whatever `loader` loads: an LLM or an image pipeline.
pub async fn serve_loaded(
    listener: TcpListener,
    state: SharedState,
    loader: impl Future<Output = Result<Loaded>>,
    stop: impl Future<Output = ()> + Send + 'static,
    options: ServeOptions,
) -> Result<()> {
    let addr = listener.local_addr().context("reading the bound address")?;
    tracing::info!("listening on http://{addr}");
    let app = routes::router(state.clone(), options.max_request_body_bytes);
    let (stopping_tx, mut stopping) = tokio::sync::oneshot::channel::<()>();
    let draining_state = state.clone();
    let graceful = async move {
        stop.await;
        draining_state.start_draining();
        let _ = stopping_tx.send(());
    };
    // Tokens go out as small writes: without TCP_NODELAY, Nagle's algorithm holds each
    // until the previous one is acknowledged, and a client that delays its ACKs stalls
    // the stream by tens of milliseconds.
    let listener = axum::serve::ListenerExt::tap_io(listener, |tcp: &mut tokio::net::TcpStream| {
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!("TCP_NODELAY not set on a connection: {e}");
        }
    });
    let mut server = tokio::spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(graceful)
            .await
    });
    tokio::pin!(loader);
    let mut loading = true;
    loop {
        tokio::select! {
            loaded = &mut loader, if loading => {
                loading = false;
                let loaded = loaded.context("loading the model")?;
                let (root, names) = match &loaded {
                    Loaded::Text(s) => (&s.root, &s.names),
                    Loaded::Images(s) => (&s.root, &s.names),
                };
                tracing::info!("ready: serving {root} as {names:?}");
                state.set_loaded(loaded);
            }
            _ = &mut stopping => break,
            ended = &mut server => {
                ended.context("the HTTP server task failed")?.context("serving HTTP")?;
                return Ok(());
            }
        }
    }
    tracing::info!(
        "shutting down: no new requests; waiting up to {:?} for in-flight ones",
        options.shutdown_timeout
    );
    match tokio::time::timeout(options.shutdown_timeout, &mut server).await {
        Ok(ended) => {
            ended
                .context("the HTTP server task failed")?
                .context("serving HTTP")?;
            if let Some(served) = state.served() {
                let engine = served.engine.clone();
                let _ = tokio::task::spawn_blocking(move || engine.shutdown()).await;
            }
            if let Some(images) = state.images() {
                let engine = images.engine.clone();
                let _ = tokio::task::spawn_blocking(move || engine.shutdown()).await;
            }
            tracing::info!("shut down cleanly");
        }
        Err(_) => {
            server.abort();
            tracing::warn!("in-flight requests did not finish in time; cancelling them");
        }
    }
    Ok(())
}
