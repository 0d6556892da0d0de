//! Multimodal checkpoints (Gemma3ForConditionalGeneration, Mistral3ForConditionalGeneration,
//! LlavaForConditionalGeneration: config under `text_config`, language-model weights under
//! `language_model.`, a vision tower beside them) run as their text model: a text fixture
//! repackaged that way gives transformers' logits.

mod common;

use common::*;
use kiln::launch::load_model;
use std::collections::HashMap;

/// `arch`'s fixture repackaged as a `wrapper` checkpoint whose text config says
/// `model_type`, checked against transformers' logits of the text model.
fn repackaged_gives_the_text_models_logits(arch: &str, wrapper: &str, model_type: &str) {
    let src = fixture(arch);
    let dir = tempfile::tempdir().unwrap();
    for file in [
        "tokenizer.json",
        "tokenizer_config.json",
        "generation_config.json",
    ] {
        std::fs::copy(src.join(file), dir.path().join(file)).unwrap();
    }
    let mut text_config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(src.join("config.json")).unwrap()).unwrap();
    text_config["model_type"] = model_type.into();
    let config = serde_json::json!({
        "architectures": [wrapper],
        "text_config": text_config,
        "vision_config": {"model_type": "siglip_vision_model", "hidden_size": 16},
    });
    std::fs::write(dir.path().join("config.json"), config.to_string()).unwrap();
    let weights =
        candle_core::safetensors::load(src.join("model.safetensors"), &candle_core::Device::Cpu)
            .unwrap();
    let mut renamed: HashMap<String, candle_core::Tensor> = weights
        .into_iter()
        .map(|(name, t)| (format!("language_model.{name}"), t))
        .collect();
    renamed.insert(
        "vision_tower.patch_embedding.weight".into(),
        candle_core::Tensor::zeros((4, 4), candle_core::DType::F32, &candle_core::Device::Cpu)
            .unwrap(),
    );
    candle_core::safetensors::save(&renamed, dir.path().join("model.safetensors")).unwrap();

    let m = load_model(&engine_args(&[
        "--model",
        dir.path().to_str().unwrap(),
        "--dtype",
        "float32",
    ]))
    .unwrap();
    for p in &reference(arch).prompts {
        let logits = kiln::cli::check_reference::last_logits(&m, &p.prompt_ids).unwrap();
        let diff = max_abs_diff(&logits, &p.last_logits);
        assert!(
            diff < 1e-3,
            "{wrapper} '{}': max abs logit diff {diff}",
            p.text
        );
    }
}

#[test]
fn a_repackaged_gemma3_fixture_gives_the_text_models_logits() {
    repackaged_gives_the_text_models_logits(
        "gemma3",
        "Gemma3ForConditionalGeneration",
        "gemma3_text",
    );
}

/// Mistral Small 3.1 / 3.2.
#[test]
fn a_repackaged_mistral_fixture_gives_the_text_models_logits() {
    repackaged_gives_the_text_models_logits(
        "mistral",
        "Mistral3ForConditionalGeneration",
        "mistral",
    );
}

/// Pixtral and other LLaVA-style checkpoints.
#[test]
fn a_repackaged_llama_fixture_gives_the_text_models_logits() {
    repackaged_gives_the_text_models_logits("llama", "LlavaForConditionalGeneration", "llama");
}

#[test]
fn a_text_model_kiln_does_not_run_is_named_in_the_error() {
    let config = serde_json::json!({
        "architectures": ["LlavaForConditionalGeneration"],
        "text_config": {"model_type": "vicuna_like"},
    });
    let err = kiln::model::config::ModelConfig::from_json(&config.to_string())
        .unwrap_err()
        .to_string();
    assert!(err.contains("vicuna_like"), "{err}");
}
