//! Model configs, weight loading, tokenizer and the Llama-family implementation.

pub mod base_model_weights;
pub mod byte_pieces;
pub mod chat_template;
pub mod config;
pub mod demo;
pub mod detokenizer;
pub mod fp8;
pub mod grammar;
pub mod harmony;
pub mod int_packing;
pub mod int_quant;
pub mod language_model_weights;
pub mod llama;
pub mod lora;
pub mod lora_forward;
pub mod mla;
pub mod moe;
mod moe_fused;
pub mod mxfp4;
pub mod presets;
pub mod reasoning;
pub mod rope;
pub mod source;
pub mod tiktoken;
pub mod tokenizer;
pub mod tool_calls;
pub mod weights;
