//! The language model's weights inside a multimodal checkpoint (Gemma 3 4B/12B/27B, Mistral
//! Small 3.1, LLaVA-style models, Qwen2.5-VL, Qwen3-VL), under the names the text model asks
//! for (`model.layers.0...`, `lm_head.weight`). The hub's files keep them under
//! `language_model.` (`language_model.model.layers.0...`) or, for Qwen2.5-VL, under the text
//! model's own names; newer transformers versions save them as
//! `model.language_model.layers.0...`. The vision tower's weights are never read.

use super::weights::{RenamedWeights, WeightSource};
use anyhow::Result;

/// How the checkpoint names the language model's weights.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Layout {
    /// `language_model.` + the text model's name.
    Prefixed,
    /// `model.language_model.` in place of `model.`; `lm_head` unchanged.
    Nested,
    /// The text model's own names (the hub's Qwen2.5-VL files: `model.layers.0...`, the
    /// vision tower under `visual.`).
    Plain,
}

pub struct LanguageModelWeights;

impl LanguageModelWeights {
    /// Wraps `inner`, finding its layout from where the embedding table is.
    pub fn wrap<S: WeightSource>(inner: S) -> Result<RenamedWeights<S>> {
        let layout = if inner.contains("language_model.model.embed_tokens.weight") {
            Layout::Prefixed
        } else if inner.contains("model.language_model.embed_tokens.weight") {
            Layout::Nested
        } else if inner.contains("model.embed_tokens.weight") {
            Layout::Plain
        } else {
            anyhow::bail!(
                "a multimodal checkpoint without its language model's embed_tokens (looked \
                 for language_model.model.*, model.language_model.* and model.*)"
            )
        };
        Ok(RenamedWeights::new(inner, move |name| match layout {
            Layout::Prefixed => format!("language_model.{name}"),
            Layout::Nested => match name.strip_prefix("model.") {
                Some(rest) => format!("model.language_model.{rest}"),
                None => name.to_string(),
            },
            Layout::Plain => name.to_string(),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::DType;
    use candle_core::Tensor;
    use std::collections::HashMap;

    /// Named 1-element tensors.
    struct Named(HashMap<String, f32>);

    impl WeightSource for Named {
        fn tensor(&self, name: &str, _shape: &[usize], _dtype: DType) -> Result<Tensor> {
            let v = *self
                .0
                .get(name)
                .ok_or_else(|| anyhow::anyhow!("no {name}"))?;
            Ok(Tensor::new(&[v], &candle_core::Device::Cpu)?)
        }
        fn contains(&self, name: &str) -> bool {
            self.0.contains_key(name)
        }
    }

    fn value(src: &impl WeightSource, name: &str) -> f32 {
        src.tensor(name, &[1], DType::F32)
            .unwrap()
            .to_vec1::<f32>()
            .unwrap()[0]
    }

    #[test]
    fn every_layout_answers_to_the_text_model_names() {
        let hub = Named(HashMap::from([
            ("language_model.model.embed_tokens.weight".to_string(), 1.0),
            (
                "language_model.model.layers.0.mlp.up_proj.weight".to_string(),
                2.0,
            ),
            ("vision_tower.x".to_string(), 9.0),
        ]));
        let hub = LanguageModelWeights::wrap(hub).unwrap();
        assert_eq!(value(&hub, "model.layers.0.mlp.up_proj.weight"), 2.0);
        assert!(!hub.contains("lm_head.weight"));

        let saved = Named(HashMap::from([
            ("model.language_model.embed_tokens.weight".to_string(), 1.0),
            ("model.language_model.norm.weight".to_string(), 3.0),
            ("lm_head.weight".to_string(), 4.0),
        ]));
        let saved = LanguageModelWeights::wrap(saved).unwrap();
        assert_eq!(value(&saved, "model.norm.weight"), 3.0);
        assert_eq!(value(&saved, "lm_head.weight"), 4.0);

        // Qwen2.5-VL's hub files: the text model's own names beside `visual.`.
        let plain = Named(HashMap::from([
            ("model.embed_tokens.weight".to_string(), 1.0),
            ("model.norm.weight".to_string(), 5.0),
            ("visual.patch_embed.proj.weight".to_string(), 9.0),
        ]));
        let plain = LanguageModelWeights::wrap(plain).unwrap();
        assert_eq!(value(&plain, "model.norm.weight"), 5.0);

        let neither = Named(HashMap::from([("transformer.wte.weight".to_string(), 1.0)]));
        assert!(LanguageModelWeights::wrap(neither).is_err());
    }
}
