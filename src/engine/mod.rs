//! The engine: sequences, paged KV blocks, scheduling, sampling, the model runner.

pub mod beam_search;
pub mod block_manager;
pub mod device_draw;
pub mod embedding;
pub mod handle;
pub mod llm_engine;
pub mod loop_times;
pub mod ngram;
pub mod output;
pub mod params;
pub mod prompt_logprobs;
pub mod runner;
pub mod sampler;
pub mod scheduler;
pub mod sequence;
pub mod speculative;
pub mod text;

pub use handle::{EngineHandle, RequestStream};
pub use llm_engine::{EngineConfig, LlmEngine, RequestError};
pub use output::{FinishReason, RequestOutput};
pub use params::SamplingParams;
