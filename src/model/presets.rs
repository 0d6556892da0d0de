//! Configs of popular models, built into the binary, for `--load-format dummy` benchmarks and
//! memory planning without downloading anything.

/// (name, config.json text)
pub const PRESETS: [(&str, &str); 26] = [
    (
        "llama-3.1-8b",
        include_str!("../../models/presets/llama-3.1-8b.json"),
    ),
    (
        "llama-3.1-70b",
        include_str!("../../models/presets/llama-3.1-70b.json"),
    ),
    (
        "qwen2.5-7b",
        include_str!("../../models/presets/qwen2.5-7b.json"),
    ),
    (
        "qwen2.5-0.5b",
        include_str!("../../models/presets/qwen2.5-0.5b.json"),
    ),
    (
        "mistral-7b",
        include_str!("../../models/presets/mistral-7b.json"),
    ),
    (
        "qwen3-8b",
        include_str!("../../models/presets/qwen3-8b.json"),
    ),
    (
        "qwen3-30b-a3b",
        include_str!("../../models/presets/qwen3-30b-a3b.json"),
    ),
    (
        "mixtral-8x7b",
        include_str!("../../models/presets/mixtral-8x7b.json"),
    ),
    (
        "glm-4-9b",
        include_str!("../../models/presets/glm-4-9b.json"),
    ),
    (
        "gpt-oss-20b",
        include_str!("../../models/presets/gpt-oss-20b.json"),
    ),
    (
        "olmo-2-7b",
        include_str!("../../models/presets/olmo-2-7b.json"),
    ),
    (
        "gemma-2-9b",
        include_str!("../../models/presets/gemma-2-9b.json"),
    ),
    (
        "gemma-3-1b",
        include_str!("../../models/presets/gemma-3-1b.json"),
    ),
    (
        "qwen1.5-moe-a2.7b",
        include_str!("../../models/presets/qwen1.5-moe-a2.7b.json"),
    ),
    (
        "glm-4.5-air",
        include_str!("../../models/presets/glm-4.5-air.json"),
    ),
    (
        "deepseek-v2-lite",
        include_str!("../../models/presets/deepseek-v2-lite.json"),
    ),
    (
        "deepseek-v3",
        include_str!("../../models/presets/deepseek-v3.json"),
    ),
    (
        "llama-4-scout",
        include_str!("../../models/presets/llama-4-scout.json"),
    ),
    (
        "lfm2-1.2b",
        include_str!("../../models/presets/lfm2-1.2b.json"),
    ),
    (
        "mamba-codestral-7b",
        include_str!("../../models/presets/mamba-codestral-7b.json"),
    ),
    (
        "qwen3-next-80b-a3b",
        include_str!("../../models/presets/qwen3-next-80b-a3b.json"),
    ),
    (
        "falcon-mamba-7b",
        include_str!("../../models/presets/falcon-mamba-7b.json"),
    ),
    (
        "jamba-mini-1.5",
        include_str!("../../models/presets/jamba-mini-1.5.json"),
    ),
    (
        "falcon-h1-0.5b",
        include_str!("../../models/presets/falcon-h1-0.5b.json"),
    ),
    (
        "nemotron-nano-9b-v2",
        include_str!("../../models/presets/nemotron-nano-9b-v2.json"),
    ),
    (
        "nemotron-3-nano-30b-a3b",
        include_str!("../../models/presets/nemotron-3-nano-30b-a3b.json"),
    ),
];

/// The config text of a preset, by name (case-insensitive).
pub fn preset(name: &str) -> Option<&'static str> {
    PRESETS
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, c)| *c)
}

pub fn names() -> Vec<&'static str> {
    PRESETS.iter().map(|(n, _)| *n).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::config::ModelConfig;

    #[test]
    fn every_preset_parses_and_has_the_known_size() {
        for (name, text) in PRESETS {
            let c = ModelConfig::from_json(text).unwrap_or_else(|e| panic!("{name}: {e:#}"));
            let billions = c.num_parameters() as f64 / 1e9;
            let expected = match name {
                "llama-3.1-8b" => 8.03,
                "llama-3.1-70b" => 70.6,
                "qwen2.5-7b" => 7.6,
                "qwen2.5-0.5b" => 0.49,
                "mistral-7b" => 7.25,
                "qwen3-8b" => 8.2,
                "qwen3-30b-a3b" => 30.5,
                "mixtral-8x7b" => 46.7,
                "gemma-2-9b" => 9.24,
                "glm-4-9b" => 9.4,
                "gpt-oss-20b" => 20.9,
                "olmo-2-7b" => 7.3,
                "gemma-3-1b" => 1.0,
                "qwen1.5-moe-a2.7b" => 14.3,
                // Z.ai's 106B; its next-token-prediction layer is not loaded.
                "glm-4.5-air" => 106.8,
                // DeepSeek's 15.7B and 671B (V3's next-token-prediction layer, 14B more, is not
                // loaded).
                "deepseek-v2-lite" => 15.7,
                "deepseek-v3" => 671.0,
                // Meta's 109B counts the vision encoder, which kiln does not load.
                "llama-4-scout" => 107.8,
                "lfm2-1.2b" => 1.17,
                "mamba-codestral-7b" => 7.29,
                "qwen3-next-80b-a3b" => 79.7,
                "falcon-mamba-7b" => 7.27,
                // AI21's 52B.
                "jamba-mini-1.5" => 51.6,
                "falcon-h1-0.5b" => 0.52,
                // NVIDIA's 8.89B.
                "nemotron-nano-9b-v2" => 8.89,
                // NVIDIA's 31.6B.
                "nemotron-3-nano-30b-a3b" => 31.6,
                _ => unreachable!(),
            };
            assert!(
                (billions - expected).abs() / expected < 0.03,
                "{name}: {billions:.2}B"
            );
            let active = c.active_parameters() as f64 / 1e9;
            let expected_active = match name {
                "qwen3-30b-a3b" => 3.3,
                "mixtral-8x7b" => 12.9,
                "qwen1.5-moe-a2.7b" => 2.7,
                // OpenAI's 3.6B active leaves out the 0.58B embedding table.
                "gpt-oss-20b" => 4.19,
                // Z.ai's 12B active leaves out the 1.24B of embedding and head.
                "glm-4.5-air" => 13.4,
                // DeepSeek's 2.4B leaves out the 0.21B embedding table.
                "deepseek-v2-lite" => 2.66,
                // DeepSeek's 37B (kiln counts 37.55B with the embedding table).
                "deepseek-v3" => 37.0,
                // Meta's 17B: one of 16 experts and the shared one per layer.
                "llama-4-scout" => 17.2,
                // Qwen's 3B active leaves out the 0.62B of embedding and head.
                "qwen3-next-80b-a3b" => 3.9,
                // AI21's 12B active.
                "jamba-mini-1.5" => 12.1,
                // NVIDIA's 3.2B active, 3.6B with the embedding table and head.
                "nemotron-3-nano-30b-a3b" => 3.6,
                _ => billions,
            };
            assert!(
                (active - expected_active).abs() / expected_active < 0.03,
                "{name}: {active:.2}B active"
            );
        }
    }
}
