//! The wire types of the OpenAI-compatible API. Requests reject unknown fields, as OpenAI
//! does; responses follow OpenAI's schema field for field. `/openapi.json` is generated
//! from these definitions.

pub mod chat;
pub mod classify;
pub mod common;
pub mod completion;
pub mod embeddings;
pub mod images;
pub mod responses;
pub mod service;
