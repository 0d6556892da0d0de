//! Subcommands of the `kiln` binary that are ours (the CLI entry point stays thin).

pub mod check_chat_templates;
pub mod check_image_reference;
pub mod check_reference;
pub mod generate;
pub mod image;
pub mod plan;
mod reference_adapters;
