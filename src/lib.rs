//! kiln: a GPU inference runtime. The library holds everything; `src/main.rs` is only the CLI.
//!
//! A request's path: `server` (HTTP) -> `engine::handle` (channel) -> `engine` (schedule ->
//! run -> postprocess) -> `model` (one implementation written against `backend::Backend`)
//! -> `backend::cpu` (reference) or `backend::cuda` (our kernels + cuBLAS).

pub mod backend;
pub mod bench;
pub mod cli;
pub mod diffusion;
pub mod engine;
pub mod gpu;
pub mod launch;
pub mod model;
pub mod parallel;
pub mod plan;
pub mod server;

/// The crate version, reported by `kiln --version` and `GET /version`.
pub fn version() -> &'static str {
    env!("CARGO_PKG_VERSION")
}
