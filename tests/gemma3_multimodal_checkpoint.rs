//! A Gemma 3 multimodal checkpoint (Gemma3ForConditionalGeneration: config under
//! `text_config`, language-model weights under `language_model.`, a vision tower beside
//! them) runs as its text model: the gemma3 fixture repackaged that way gives transformers'
//! logits.

mod common;

use common::*;
use kiln::launch::load_model;
use std::collections::HashMap;

#[test]
fn a_repackaged_gemma3_fixture_gives_the_text_models_logits() {
    let src = fixture("gemma3");
    let dir = tempfile::tempdir().unwrap();
    for file in [
        "tokenizer.json",
        "tokenizer_config.json",
        "generation_config.json",
    ] {
        std::fs::copy(src.join(file), dir.path().join(file)).unwrap();
    }
    let text_config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(src.join("config.json")).unwrap()).unwrap();
    let config = serde_json::json!({
        "architectures": ["Gemma3ForConditionalGeneration"],
        "model_type": "gemma3",
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
    for p in &reference("gemma3").prompts {
        let logits = kiln::cli::check_reference::last_logits(&m, &p.prompt_ids).unwrap();
        let diff = max_abs_diff(&logits, &p.last_logits);
        assert!(diff < 1e-3, "'{}': max abs logit diff {diff}", p.text);
    }
}
