//! A base model saved alone (transformers' `AutoModel`, as embedding models such as
//! Qwen3-Embedding are published): its weights are named without the `model.` prefix the
//! causal LM asks for (`layers.0...`, `embed_tokens.weight`), and there is no LM head (the
//! model then uses its embedding as the head, which embedding requests never read).

use super::weights::{RenamedWeights, WeightSource};

pub struct BaseModelWeights;

impl BaseModelWeights {
    /// Whether `source` holds a base model saved alone.
    pub fn applies_to(source: &impl WeightSource) -> bool {
        !source.contains("model.embed_tokens.weight") && source.contains("embed_tokens.weight")
    }

    /// `inner` under the causal LM's names.
    pub fn wrap<S: WeightSource>(inner: S) -> RenamedWeights<S> {
        RenamedWeights::new(inner, |name| {
            name.strip_prefix("model.").unwrap_or(name).to_string()
        })
    }
}
