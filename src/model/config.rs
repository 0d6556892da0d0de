//! The model config (HF `config.json`), reduced to what the Llama family needs.

use super::alibi::Alibi;
use super::int_quant::IntScheme;
pub use crate::backend::moe::{ExpertActivation, RouterScoring};
use crate::backend::{KeyWindow, QueryTemperature};
use anyhow::{Context, Result};
use serde::Deserialize;
use std::path::Path;

/// Architectures kiln implements, by their HF class name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Architecture {
    Llama,
    Mistral,
    Qwen2,
    Qwen3,
    /// Llama's layers with q/k/v and gate/up each stored as one fused weight.
    Phi3,
    /// Qwen3's attention with mixture-of-experts MLPs (`mlp.gate`, `mlp.experts.N`).
    Qwen3Moe,
    /// Qwen2's attention (q/k/v biases) with experts plus a gated shared expert.
    Qwen2Moe,
    /// Mistral's attention with mixture-of-experts MLPs (`block_sparse_moe`, `w1/w2/w3`).
    Mixtral,
    /// OpenAI's GPT-2 (DistilGPT-2, and others trained with its code): learned absolute
    /// positions instead of rotary ones, LayerNorms with biases, q/k/v fused (`c_attn`),
    /// biases everywhere, an ungated GELU (tanh) MLP, `Conv1D` weights stored `[in, out]`.
    Gpt2,
    /// BigCode's GPT-BigCode (StarCoder 1, SantaCoder, WizardCoder-15B): GPT-2's layer with
    /// linear weights and one key / value head (`multi_query`), or q / k / v fused head by
    /// head without it.
    GptBigCode,
    /// GLM-4-9B in transformers' format (`GlmForCausalLM`, glm-4-9b-chat-hf, GLM-Edge):
    /// Llama's layer with q/k/v biases, fused gate/up weights, and adjacent-pair rotary on
    /// half of each head (GLM-4-0414 without its sandwich norms).
    Glm,
    /// EleutherAI's GPT-J (`model/gptj.rs`): Phi's parallel layer without attention biases,
    /// adjacent-pair rotary on `rotary_dim` values of each head, a biased LM head.
    GptJ,
    /// IBM Granite 3.x MoE (`GraniteMoeForCausalLM`, granite-3.0-1b-a400m / 3b-a800m):
    /// Granite's multipliers with experts stored as stacks (`block_sparse_moe.input_linear`
    /// `[experts, 2 x intermediate, hidden]`, gate rows first, and `output_linear`), a
    /// softmax over the top k logits (`model/moe_fused.rs`).
    GraniteMoe,
    /// Granite MoE with a shared MLP beside the experts (`GraniteMoeSharedForCausalLM`,
    /// `shared_mlp.input_linear` / `output_linear`, `shared_intermediate_size` wide).
    GraniteMoeShared,
    /// Baidu's ERNIE 4.5 dense models (`Ernie4_5ForCausalLM`, ERNIE-4.5-0.3B): Llama's layer
    /// with adjacent-pair rotary over the whole head and a tied head by default.
    Ernie45,
    /// Kyutai's Helium (`HeliumForCausalLM`): Llama's layer with adjacent-pair rotary.
    Helium,
    /// LG's EXAONE 4.0 (`Exaone4ForCausalLM`): OLMo 2's layers normed after each block, with
    /// per-head q / k norms; with a sliding window, three sliding layers to one global (as
    /// `layer_types` says), only the sliding ones rotating.
    Exaone4,
    /// AI2's OLMo (1) (`OlmoForCausalLM`, OLMo-1B / 7B): Llama's layers with LayerNorms that
    /// have neither weight nor bias (epsilon 1e-5).
    Olmo,
    /// TII's Falcon (`FalconForCausalLM`, `RWForCausalLM`; `model/falcon.rs`): a fused
    /// q/k/v by KV group, parallel (one or two LayerNorms) or sequential layers, an ungated
    /// GELU MLP, biases by `bias`.
    Falcon,
    /// Arcee's AFM (`ArceeForCausalLM`, AFM-4.5B): Llama's layer with an ungated ReLU² MLP
    /// (`up_proj`, `down_proj`).
    Arcee,
    /// NVIDIA's Nemotron (`NemotronForCausalLM`, Nemotron-Mini-4B, Minitron): LayerNorms
    /// with biases that scale by `1 + w`, partial rotary, an ungated ReLU² MLP.
    Nemotron,
    /// Stability's StableLM (`StableLmForCausalLM`: StableLM 2 1.6B, StableLM-3B-4E1T,
    /// Stable Code 3B): Llama's layer with LayerNorms (biases), q/k/v biases by
    /// `use_qkv_bias`, a quarter of each head rotating, optionally a parallel layer.
    StableLm,
    /// EleutherAI's GPT-Neo (`GPTNeoForCausalLM`; `model/gpt_neo.rs`): GPT-2's layer with
    /// separate q/k/v, global and local (sliding) layers in turn, unscaled attention scores.
    GptNeo,
    /// Baidu's ERNIE 4.5 MoE (`Ernie4_5_MoeForCausalLM`, ERNIE-4.5-21B-A3B): ERNIE 4.5's
    /// layer with experts from `moe_layer_start_index` on, shared experts, and a softmax
    /// router whose choice a correction bias (`moe_statics`) steers.
    Ernie45Moe,
    /// Mistral's Ministral (`MinistralForCausalLM`, Ministral-8B-Instruct-2410): Mistral's
    /// layer with the sliding window on the layers `layer_types` marks.
    Ministral,
    /// BigScience's BLOOM (`model/bloom.rs`): LayerNorms with biases (one after the
    /// embeddings too), q/k/v fused head by head, ALiBi, an ungated tanh-GELU MLP.
    Bloom,
    /// Tencent's Hunyuan dense models (`HunYuanDenseV1ForCausalLM`: Hunyuan 0.5B-7B):
    /// Llama's layer with per-head q/k RMS norms applied after the rotation, and NTK-alpha
    /// rotary (`rope_scaling` `dynamic` with `alpha`: a larger base).
    HunYuanDense,
    /// Liquid AI's LFM2 (`Lfm2ForCausalLM`; `model/lfm2.rs`): attention layers (per-head
    /// q/k RMS norms) and gated short-convolution layers, each before a SwiGLU MLP.
    Lfm2,
    /// IBM's Bamba (`BambaForCausalLM`; `model/mamba.rs`): Mamba-2 mixer layers and a few
    /// Llama attention layers (half of each head rotated), each before a SwiGLU MLP.
    Bamba,
    /// IBM Granite 4.0 hybrids (`GraniteMoeHybridForCausalLM`, the "-H" models;
    /// `model/mamba.rs`): Granite's multipliers, Mamba-2 mixers and attention without
    /// rotary, each before the shared MLP (beside Granite MoE's experts where it has them).
    GraniteMoeHybrid,
    /// Pure Mamba-2 (`Mamba2ForCausalLM`: Mamba-Codestral 7B; `model/mamba.rs`): every
    /// layer a norm and a Mamba-2 mixer, no attention, no MLP.
    Mamba2,
    /// Qwen3-Next (`Qwen3NextForCausalLM`; `model/qwen3_next.rs`): gated delta rule mixers
    /// and Qwen3 attention with a gated output, each before Qwen2-MoE's experts; norms
    /// scale by `1 + w`.
    Qwen3Next,
    /// Mamba-1 in transformers' format (`MambaForCausalLM`; `model/mamba1.rs`): every layer
    /// a norm and a Mamba-1 mixer (selective scan), no attention, no MLP.
    Mamba,
    /// TII's Falcon-Mamba (`FalconMambaForCausalLM`): Mamba-1 with weightless RMS norms of
    /// the step, B and C.
    FalconMamba,
    /// AI21's Jamba (`JambaForCausalLM`; `model/mamba1.rs`): Mamba-1 mixers (with RMS norms
    /// of the step, B and C) and attention without positions, each before a SwiGLU MLP or
    /// Mixtral-style experts (softmax top k, not renormalised).
    Jamba,
    /// TII's Falcon-H1 (`FalconH1ForCausalLM`; `model/falcon_h1.rs`): attention and a
    /// Mamba-2 mixer side by side in every layer, before a SwiGLU MLP; µP multipliers.
    FalconH1,
    /// NVIDIA's Nemotron-H (`NemotronHForCausalLM`; `model/nemotron_h.rs`): Mamba-2 mixer,
    /// position-less attention and ungated ReLU² MLP blocks, paired into layers.
    NemotronH,
    /// Meta's Llama 4 (`Llama4ForCausalLM`, Scout and Maverick; `model/llama4.rs`): chunked
    /// attention on the rotating layers (with weightless q/k norms), a query temperature on
    /// the others, experts whose router scales their inputs, plus a shared expert.
    Llama4,
    /// Tencent's Hunyuan MoE (`HunYuanMoEV1ForCausalLM`, Hunyuan-A13B): the dense model's
    /// attention with a softmax top-k router (in f32) over experts plus a shared MLP.
    HunYuanMoe,
    /// rednote's dots.llm1 (`Dots1ForCausalLM`): Qwen3's attention (per-head q/k norms, no
    /// biases) with GLM-4.5's / DeepSeek-V3's experts (sigmoid router with a correction bias
    /// and groups, shared experts, dense first layers); Qwen2's sliding layers.
    Dots1,
    /// Swiss AI's Apertus (`ApertusForCausalLM`, Apertus 8B / 70B): Qwen3's attention
    /// (per-head q/k RMS norms) with an ungated xIELU MLP whose parameters are per layer.
    Apertus,
    /// Microsoft's Phi-3.5-MoE (`PhimoeForCausalLM`, and `PhiMoEForCausalLM` of its hub
    /// config): Mixtral's experts behind LayerNorms with biases, biased attention
    /// projections and LM head, LongRoPE with its own attention factors (`short_mscale`,
    /// `long_mscale`), and the SparseMixer router.
    PhiMoe,
    /// MosaicML's MPT (`model/mpt.rs`): bias-free LayerNorms and projections, one fused
    /// `Wqkv`, ALiBi, an ungated GELU MLP.
    Mpt,
    /// Meta's OPT: GPT-2's layer with separate q / k / v projections, a ReLU MLP and learned
    /// positions read two rows on (`model/opt.rs`).
    Opt,
    /// EleutherAI's GPT-NeoX (Pythia, GPT-NeoX-20B, and models trained on its code):
    /// LayerNorms with biases, q/k/v fused head by head (`query_key_value`), partial
    /// rotate-half rotary, an ungated GELU MLP, and attention and MLP side by side with a
    /// norm each (`use_parallel_residual`) or in sequence.
    GptNeoX,
    /// Gemma (1), CodeGemma: Llama's layers with `1 + w` norm weights, GeGLU (tanh), scaled
    /// embeddings and a tied head.
    Gemma,
    /// Gemma 2: norms around both blocks, `1 + w` norm weights, GeGLU (tanh), scaled
    /// embeddings, alternating local (sliding) and global layers, soft-capped attention
    /// scores and logits.
    Gemma2,
    /// AI2's OLMoE: Llama's pre-norm layers with OLMo 2's q / k norms over whole
    /// projections and Qwen-style experts (`mlp.gate`, `mlp.experts.N`, softmax top k).
    Olmoe,
    /// Cohere's Command R7B / Command A: Cohere's parallel layer with three sliding layers
    /// to one global one (`layer_types`); only the sliding layers rotate q and k.
    Cohere2,
    /// Microsoft's Phi-1 / 1.5 / 2: a parallel layer like Cohere's with LayerNorm biases,
    /// biases on every projection (the output one named `dense`), partial rotary, an
    /// ungated GELU MLP (`fc1`, `fc2`) and a biased LM head.
    Phi,
    /// Cohere's Command R / Aya: one LayerNorm (no bias) feeding attention and the MLP in
    /// parallel, interleaved rotary embeddings, scaled logits.
    Cohere,
    /// BigCode's StarCoder2: Mistral's attention (sliding window) with biases everywhere,
    /// LayerNorms with biases instead of RMS norms, and an ungated MLP (`c_fc`, GELU tanh,
    /// `c_proj`).
    Starcoder2,
    /// Gemma 3 text models: Gemma 2's layer with q/k norms instead of the soft-capping, and
    /// local layers with their own RoPE base.
    Gemma3,
    /// IBM Granite 3.x: Llama's layers with four scalar multipliers (see `GraniteScales`).
    Granite,
    /// GLM-4 (0414): norms around both blocks (Gemma's sandwich with plain weights and a
    /// SiLU MLP), fused gate/up weights, q/k/v biases, interleaved rotary on half the head.
    Glm4,
    /// AI2's OLMo 2: Llama's layers normed after each block instead of before (no input
    /// norm), with RMS norms over the whole q and k projections.
    Olmo2,
    /// OLMo 3: OLMo 2's layers, three of every four sliding (their RoPE unscaled).
    Olmo3,
    /// ByteDance Seed-OSS: Llama's layers with q/k/v biases (and optionally an o bias).
    SeedOss,
    /// SmolLM3: Llama's layers, every 4th without rotary embeddings (NoPE).
    SmolLM3,
    /// OpenAI's gpt-oss: attention with learned sinks and q/k/v/o biases, sliding and full
    /// layers alternating, and experts with biases and a clamped SwiGLU.
    GptOss,
    /// GLM-4.5 / 4.6 / 4.7 (`Glm4MoeForCausalLM`): Llama-style layers with q/k/v biases,
    /// optional q/k norms and rotate-half rotary on part of each head; after the first dense
    /// layers, experts chosen by a sigmoid router with a correction bias and groups, plus an
    /// ungated shared expert.
    Glm4Moe,
    /// DeepSeek-V2 / V2-Lite: multi-head latent attention (`mla.rs`), then experts by a
    /// softmax router (within the best groups, `group_limited_greedy`) plus ungated shared
    /// experts, after the first dense layers.
    DeepseekV2,
    /// DeepSeek-V3 / R1, Kimi K2, Moonlight: V2's attention (with a low-rank q) and GLM-4.5's
    /// router.
    DeepseekV3,
}

impl Architecture {
    pub const SUPPORTED: [&'static str; 64] = [
        "LlamaForCausalLM",
        "MistralForCausalLM",
        "Qwen2ForCausalLM",
        "Qwen3ForCausalLM",
        "Phi3ForCausalLM",
        "Qwen3MoeForCausalLM",
        "Qwen2MoeForCausalLM",
        "MixtralForCausalLM",
        "Gemma2ForCausalLM",
        "Gemma3ForCausalLM",
        "GraniteForCausalLM",
        "Glm4ForCausalLM",
        "Olmo2ForCausalLM",
        "Olmo3ForCausalLM",
        "SeedOssForCausalLM",
        "SmolLM3ForCausalLM",
        "GptOssForCausalLM",
        "Glm4MoeForCausalLM",
        "DeepseekV2ForCausalLM",
        "DeepseekV3ForCausalLM",
        "Starcoder2ForCausalLM",
        "CohereForCausalLM",
        "PhiForCausalLM",
        "Cohere2ForCausalLM",
        "OlmoeForCausalLM",
        "GemmaForCausalLM",
        "GPTNeoXForCausalLM",
        "GPT2LMHeadModel",
        "OPTForCausalLM",
        "GPTBigCodeForCausalLM",
        "GlmForCausalLM",
        "GPTJForCausalLM",
        "GraniteMoeForCausalLM",
        "GraniteMoeSharedForCausalLM",
        "Ernie4_5ForCausalLM",
        "HeliumForCausalLM",
        "Exaone4ForCausalLM",
        "OlmoForCausalLM",
        "FalconForCausalLM",
        "ArceeForCausalLM",
        "NemotronForCausalLM",
        "StableLmForCausalLM",
        "GPTNeoForCausalLM",
        "Ernie4_5_MoeForCausalLM",
        "MinistralForCausalLM",
        "BloomForCausalLM",
        "MptForCausalLM",
        "PhimoeForCausalLM",
        "ApertusForCausalLM",
        "Dots1ForCausalLM",
        "HunYuanDenseV1ForCausalLM",
        "HunYuanMoEV1ForCausalLM",
        "Llama4ForCausalLM",
        "Lfm2ForCausalLM",
        "BambaForCausalLM",
        "GraniteMoeHybridForCausalLM",
        "Mamba2ForCausalLM",
        "Qwen3NextForCausalLM",
        "MambaForCausalLM",
        "FalconMambaForCausalLM",
        "JambaForCausalLM",
        "FalconH1ForCausalLM",
        "NemotronHForCausalLM",
        "Lfm2MoeForCausalLM",
    ];

    /// `tie_word_embeddings` where config.json leaves it out: transformers' config classes
    /// default it to true for Gemma 2 / 3, SmolLM3, StarCoder2 and Cohere (both), false for
    /// the others
    /// (4.57).
    pub fn ties_embeddings_by_default(self) -> bool {
        matches!(
            self,
            Architecture::Gemma
                | Architecture::Gemma2
                | Architecture::Gemma3
                | Architecture::Gpt2
                | Architecture::GptBigCode
                | Architecture::Opt
                | Architecture::Ernie45
                | Architecture::Ernie45Moe
                | Architecture::SmolLM3
                | Architecture::Starcoder2
                | Architecture::Cohere
                | Architecture::Cohere2
                | Architecture::Falcon
                | Architecture::GptNeo
                | Architecture::Bloom
                | Architecture::Mpt
                | Architecture::Mamba
                | Architecture::FalconMamba
        )
    }

    /// Whether `attention_bias` puts a bias on the output projection too, as it does in
    /// transformers' Llama and the models built like it (not in GLM's, Helium's or
    /// GLM-4.5's, whose o_proj never has one).
    pub fn attention_bias_covers_o(self) -> bool {
        matches!(
            self,
            Architecture::Llama
                | Architecture::Qwen3
                | Architecture::Qwen3Moe
                | Architecture::Granite
                | Architecture::GraniteMoe
                | Architecture::GraniteMoeShared
                | Architecture::GraniteMoeHybrid
                | Architecture::Bamba
                | Architecture::Olmo
                | Architecture::Olmo2
                | Architecture::Olmo3
                | Architecture::Olmoe
                | Architecture::Gemma
                | Architecture::Gemma2
                | Architecture::Gemma3
                | Architecture::Cohere
                | Architecture::Cohere2
                | Architecture::SmolLM3
                | Architecture::Arcee
                | Architecture::Nemotron
                | Architecture::PhiMoe
                | Architecture::Apertus
                | Architecture::Qwen3Next
        )
    }

    pub fn from_hf(name: &str) -> Result<Self> {
        Ok(match name {
            "LlamaForCausalLM" => Architecture::Llama,
            "MistralForCausalLM" => Architecture::Mistral,
            "Qwen2ForCausalLM" => Architecture::Qwen2,
            "Qwen3ForCausalLM" => Architecture::Qwen3,
            "Phi3ForCausalLM" => Architecture::Phi3,
            "Qwen3MoeForCausalLM" => Architecture::Qwen3Moe,
            "Qwen2MoeForCausalLM" => Architecture::Qwen2Moe,
            "MixtralForCausalLM" => Architecture::Mixtral,
            "Gemma2ForCausalLM" => Architecture::Gemma2,
            "Gemma3ForCausalLM" => Architecture::Gemma3,
            "GraniteForCausalLM" => Architecture::Granite,
            "Olmo2ForCausalLM" => Architecture::Olmo2,
            "Olmo3ForCausalLM" => Architecture::Olmo3,
            "SeedOssForCausalLM" => Architecture::SeedOss,
            "Glm4ForCausalLM" => Architecture::Glm4,
            "SmolLM3ForCausalLM" => Architecture::SmolLM3,
            "GptOssForCausalLM" => Architecture::GptOss,
            "Glm4MoeForCausalLM" => Architecture::Glm4Moe,
            "DeepseekV2ForCausalLM" => Architecture::DeepseekV2,
            "DeepseekV3ForCausalLM" => Architecture::DeepseekV3,
            "Starcoder2ForCausalLM" => Architecture::Starcoder2,
            "CohereForCausalLM" => Architecture::Cohere,
            "PhiForCausalLM" => Architecture::Phi,
            "Cohere2ForCausalLM" => Architecture::Cohere2,
            "OlmoeForCausalLM" => Architecture::Olmoe,
            "GemmaForCausalLM" => Architecture::Gemma,
            "GPTNeoXForCausalLM" => Architecture::GptNeoX,
            "GPT2LMHeadModel" => Architecture::Gpt2,
            "OPTForCausalLM" => Architecture::Opt,
            "GPTBigCodeForCausalLM" => Architecture::GptBigCode,
            "GlmForCausalLM" => Architecture::Glm,
            "GPTJForCausalLM" => Architecture::GptJ,
            "GraniteMoeForCausalLM" => Architecture::GraniteMoe,
            "GraniteMoeSharedForCausalLM" => Architecture::GraniteMoeShared,
            "Ernie4_5ForCausalLM" => Architecture::Ernie45,
            "Ernie4_5_MoeForCausalLM" => Architecture::Ernie45Moe,
            "MinistralForCausalLM" => Architecture::Ministral,
            "HeliumForCausalLM" => Architecture::Helium,
            "Exaone4ForCausalLM" => Architecture::Exaone4,
            "OlmoForCausalLM" => Architecture::Olmo,
            "FalconForCausalLM" => Architecture::Falcon,
            "ArceeForCausalLM" => Architecture::Arcee,
            "NemotronForCausalLM" => Architecture::Nemotron,
            "StableLmForCausalLM" => Architecture::StableLm,
            "GPTNeoForCausalLM" => Architecture::GptNeo,
            "BloomForCausalLM" => Architecture::Bloom,
            "MptForCausalLM" => Architecture::Mpt,
            "PhimoeForCausalLM" | "PhiMoEForCausalLM" => Architecture::PhiMoe,
            "ApertusForCausalLM" => Architecture::Apertus,
            "Dots1ForCausalLM" => Architecture::Dots1,
            "HunYuanDenseV1ForCausalLM" => Architecture::HunYuanDense,
            "HunYuanMoEV1ForCausalLM" => Architecture::HunYuanMoe,
            "Llama4ForCausalLM" => Architecture::Llama4,
            "Lfm2ForCausalLM" | "Lfm2MoeForCausalLM" => Architecture::Lfm2,
            "BambaForCausalLM" => Architecture::Bamba,
            "GraniteMoeHybridForCausalLM" => Architecture::GraniteMoeHybrid,
            "Mamba2ForCausalLM" => Architecture::Mamba2,
            "Qwen3NextForCausalLM" => Architecture::Qwen3Next,
            "MambaForCausalLM" => Architecture::Mamba,
            "FalconMambaForCausalLM" => Architecture::FalconMamba,
            "JambaForCausalLM" => Architecture::Jamba,
            "FalconH1ForCausalLM" => Architecture::FalconH1,
            "NemotronHForCausalLM" => Architecture::NemotronH,
            other => anyhow::bail!(
                "unsupported architecture '{other}'; kiln supports: {}, and {} as their text \
                 models",
                Self::SUPPORTED.join(", "),
                MULTIMODAL_ARCHITECTURES.join(", ")
            ),
        })
    }
}

/// A sequence classifier's labels (`id2label`, in id order; `LABEL_i` where it names none).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClassifierConfig {
    pub labels: Vec<String>,
}

impl ClassifierConfig {
    fn from_config(value: &serde_json::Value) -> Result<Self> {
        let named: std::collections::BTreeMap<usize, String> = value
            .get("id2label")
            .and_then(|m| m.as_object())
            .map(|m| {
                m.iter()
                    .filter_map(|(k, v)| Some((k.parse().ok()?, v.as_str()?.to_string())))
                    .collect()
            })
            .unwrap_or_default();
        let count = match value.get("num_labels").and_then(|n| n.as_u64()) {
            Some(n) => n as usize,
            None => named.keys().next_back().map_or(2, |last| last + 1),
        };
        anyhow::ensure!(count > 0, "a classifier with no labels");
        let labels = (0..count)
            .map(|i| {
                named
                    .get(&i)
                    .cloned()
                    .unwrap_or_else(|| format!("LABEL_{i}"))
            })
            .collect();
        Ok(ClassifierConfig { labels })
    }
}

/// Multimodal architectures whose language model kiln runs alone (see
/// `language_model_config`).
pub const MULTIMODAL_ARCHITECTURES: [&str; 12] = [
    "Gemma3ForConditionalGeneration",
    "Mistral3ForConditionalGeneration",
    "LlavaForConditionalGeneration",
    "Qwen2VLForConditionalGeneration",
    "Qwen2_5_VLForConditionalGeneration",
    "Qwen3VLForConditionalGeneration",
    "Qwen3VLMoeForConditionalGeneration",
    "InternVLForConditionalGeneration",
    "Llama4ForConditionalGeneration",
    "Lfm2VlForConditionalGeneration",
    "Glm4vForConditionalGeneration",
    "Glm4vMoeForConditionalGeneration",
];

/// The model type of Qwen3-VL-MoE's text model, whose experts are stacked.
const QWEN3_VL_MOE_TEXT: &str = "qwen3_vl_moe_text";

/// `rope_scaling` as HF writes it (`rope_type`, or the older `type`).
#[derive(Clone, Debug, Deserialize, PartialEq)]
pub struct RopeScaling {
    #[serde(alias = "type")]
    pub rope_type: String,
    #[serde(default)]
    pub factor: Option<f64>,
    #[serde(default)]
    pub low_freq_factor: Option<f64>,
    #[serde(default)]
    pub high_freq_factor: Option<f64>,
    #[serde(default)]
    pub original_max_position_embeddings: Option<usize>,
    /// YaRN: the rotations bounding the ramp between extrapolated and interpolated
    /// frequencies (32 and 1 by default), the attention factor or what it is derived from,
    /// and whether the ramp's bounds are rounded outwards (default true).
    #[serde(default)]
    pub beta_fast: Option<f64>,
    #[serde(default)]
    pub beta_slow: Option<f64>,
    #[serde(default)]
    pub attention_factor: Option<f64>,
    #[serde(default)]
    pub mscale: Option<f64>,
    #[serde(default)]
    pub mscale_all_dim: Option<f64>,
    #[serde(default)]
    pub truncate: Option<bool>,
    /// LongRoPE (Phi-3/3.5/4-mini): per-pair divisors of the inverse frequencies, one set
    /// for sequences within the original context and one for longer ones.
    #[serde(default)]
    pub short_factor: Option<Vec<f64>>,
    #[serde(default)]
    pub long_factor: Option<Vec<f64>>,
    /// HunYuan's NTK-alpha (`dynamic` with `alpha`): the rotary base times
    /// `alpha^(d / (d - 2))`, fixed.
    #[serde(default)]
    pub alpha: Option<f64>,
    /// Phi-3.5-MoE's LongRoPE: the attention factor of each factor set, given instead of
    /// derived.
    #[serde(default)]
    pub short_mscale: Option<f64>,
    #[serde(default)]
    pub long_mscale: Option<f64>,
}

#[derive(Clone, Debug, Deserialize)]
struct RawConfig {
    #[serde(default)]
    architectures: Vec<String>,
    #[serde(default)]
    model_type: Option<String>,
    hidden_size: usize,
    intermediate_size: usize,
    num_hidden_layers: usize,
    num_attention_heads: usize,
    num_key_value_heads: Option<usize>,
    head_dim: Option<usize>,
    vocab_size: usize,
    #[serde(default = "default_eps")]
    rms_norm_eps: f64,
    /// StarCoder2's name for its LayerNorms' epsilon (Nemotron's `norm_eps`).
    #[serde(default, alias = "norm_eps")]
    norm_epsilon: Option<f64>,
    /// Cohere's.
    #[serde(default)]
    layer_norm_eps: Option<f64>,
    /// Cohere: what the logits are multiplied by.
    #[serde(default)]
    logit_scale: Option<f64>,
    /// Phi: LayerNorms over q and k.
    #[serde(default)]
    qk_layernorm: Option<bool>,
    /// OLMo / OLMoE: clamp q, k and v to this magnitude.
    #[serde(default)]
    clip_qkv: Option<f64>,
    /// Phi-3.5-MoE: the SparseMixer router's relative threshold (half of it).
    #[serde(default)]
    router_jitter_noise: Option<f64>,
    /// Phi-3.5-MoE: a bias on the LM head.
    #[serde(default)]
    lm_head_bias: Option<bool>,
    /// MPT (from its `attn_config`): the ALiBi slopes' exponent range.
    #[serde(default)]
    alibi_bias_max: Option<f64>,
    /// MPT (from its `attn_config`): the attention's scale, head_dim^-0.5 when null.
    #[serde(default)]
    softmax_scale: Option<f64>,
    /// StarCoder2: biases on every projection.
    #[serde(default)]
    use_bias: Option<bool>,
    #[serde(default = "default_theta")]
    rope_theta: f64,
    #[serde(default)]
    rope_scaling: Option<RopeScaling>,
    #[serde(default = "default_max_pos")]
    max_position_embeddings: usize,
    /// Phi-3: the pretraining context, which LongRoPE scales from (top level, not in
    /// `rope_scaling`).
    #[serde(default)]
    original_max_position_embeddings: Option<usize>,
    /// Absent: the config class's default (see `ties_embeddings_by_default`).
    #[serde(default)]
    tie_word_embeddings: Option<bool>,
    /// q/k/v biases (Seed-OSS's config class defaults it to true, the others to false).
    #[serde(default)]
    attention_bias: Option<bool>,
    /// Seed-OSS: a bias on the attention's output projection.
    #[serde(default)]
    attention_out_bias: Option<bool>,
    #[serde(default)]
    mlp_bias: Option<bool>,
    #[serde(default)]
    sliding_window: Option<usize>,
    #[serde(default)]
    use_sliding_window: Option<bool>,
    /// Qwen2 / Qwen3: with `use_sliding_window`, the first this many layers stay full
    /// (transformers' default 28), unless `layer_types` says otherwise.
    #[serde(default)]
    max_window_layers: Option<usize>,
    #[serde(default)]
    torch_dtype: Option<String>,
    #[serde(default)]
    dtype: Option<String>,
    #[serde(default)]
    hidden_act: Option<String>,
    /// Gemma's name for `hidden_act`.
    #[serde(default)]
    hidden_activation: Option<String>,
    /// Gemma 3: attention scores are scaled by `query_pre_attn_scalar^-0.5`.
    #[serde(default)]
    query_pre_attn_scalar: Option<f64>,
    /// Gemma 3: `sliding_attention` / `full_attention` per layer.
    #[serde(default)]
    layer_types: Option<Vec<String>>,
    /// Gemma 3: every n-th layer is global (when `layer_types` is absent).
    #[serde(default)]
    sliding_window_pattern: Option<usize>,
    /// Gemma 3: RoPE base of the sliding (local) layers.
    #[serde(default)]
    rope_local_base_freq: Option<f64>,
    /// SmolLM3: per layer, 1 where it rotates q and k, 0 where it does not.
    #[serde(default)]
    no_rope_layers: Option<Vec<u8>>,
    #[serde(default)]
    no_rope_layer_interval: Option<usize>,
    /// Granite's multipliers.
    #[serde(default)]
    embedding_multiplier: Option<f64>,
    #[serde(default)]
    attention_multiplier: Option<f64>,
    #[serde(default)]
    residual_multiplier: Option<f64>,
    #[serde(default)]
    logits_scaling: Option<f64>,
    #[serde(default)]
    final_logit_softcapping: Option<f64>,
    #[serde(default)]
    attn_logit_softcapping: Option<f64>,
    /// Rotary embedding on only the first fraction of each head (Phi-4-mini, GLM-4).
    #[serde(default)]
    partial_rotary_factor: Option<f64>,
    /// GPT-NeoX's names for `partial_rotary_factor` and `rope_theta` (its hub configs have
    /// only these).
    #[serde(default)]
    rotary_pct: Option<f64>,
    #[serde(default)]
    rotary_emb_base: Option<f64>,
    /// GPT-NeoX: attention and MLP side by side, each with its own norm (transformers'
    /// default true).
    #[serde(default)]
    use_parallel_residual: Option<bool>,
    /// StableLM: biases on q / k / v.
    #[serde(default)]
    use_qkv_bias: Option<bool>,
    /// Mixture of experts: Qwen3-MoE's `num_experts`, Mixtral's `num_local_experts`.
    #[serde(default)]
    num_experts: Option<usize>,
    #[serde(default)]
    num_local_experts: Option<usize>,
    #[serde(default)]
    num_experts_per_tok: Option<usize>,
    #[serde(default)]
    moe_intermediate_size: Option<usize>,
    #[serde(default)]
    shared_expert_intermediate_size: Option<usize>,
    /// Granite MoE-shared's shared MLP width.
    #[serde(default)]
    shared_intermediate_size: Option<usize>,
    #[serde(default)]
    norm_topk_prob: Option<bool>,
    #[serde(default)]
    decoder_sparse_step: Option<usize>,
    #[serde(default)]
    mlp_only_layers: Vec<usize>,
    /// ERNIE 4.5 MoE's names: experts, the top k, shared experts, and which layers have
    /// experts (every `moe_layer_interval`-th from the start index to the end index, -1 the
    /// last layer).
    #[serde(default)]
    moe_num_experts: Option<usize>,
    #[serde(default)]
    moe_k: Option<usize>,
    #[serde(default)]
    moe_num_shared_experts: Option<usize>,
    #[serde(default)]
    moe_layer_start_index: Option<i64>,
    #[serde(default)]
    moe_layer_end_index: Option<i64>,
    #[serde(default)]
    moe_layer_interval: Option<usize>,
    /// Jamba: experts on the layers `i % expert_layer_period == expert_layer_offset`.
    #[serde(default)]
    expert_layer_period: Option<usize>,
    #[serde(default)]
    expert_layer_offset: Option<usize>,
    /// GLM-4.5's names: routed and shared experts, dense layers before the first MoE one,
    /// the router's scale and groups, and whether q and k are normed.
    #[serde(default)]
    n_routed_experts: Option<usize>,
    #[serde(default)]
    n_shared_experts: Option<usize>,
    /// Nemotron 3's latent space of the routed experts (none: they run on the hidden state).
    #[serde(default)]
    moe_latent_size: Option<usize>,
    #[serde(default)]
    first_k_dense_replace: Option<usize>,
    #[serde(default)]
    routed_scaling_factor: Option<f64>,
    #[serde(default)]
    n_group: Option<usize>,
    #[serde(default)]
    topk_group: Option<usize>,
    #[serde(default)]
    use_qk_norm: Option<bool>,
    /// DeepSeek: every `moe_layer_freq`-th layer from `first_k_dense_replace` on has experts;
    /// V2's router (`greedy` or `group_limited_greedy`; V3's is always the grouped sigmoid).
    #[serde(default)]
    moe_layer_freq: Option<usize>,
    #[serde(default)]
    topk_method: Option<String>,
    /// gpt-oss: the clamp of its SwiGLU's gate and up values (7 in its configs).
    #[serde(default)]
    swiglu_limit: Option<f64>,
    #[serde(default)]
    quantization_config: Option<serde_json::Value>,
    #[serde(default)]
    eos_token_id: Option<serde_json::Value>,
    #[serde(default)]
    bos_token_id: Option<serde_json::Value>,
}

fn default_eps() -> f64 {
    1e-6
}
fn default_theta() -> f64 {
    10000.0
}
fn default_max_pos() -> usize {
    4096
}

/// Multimodal checkpoints whose language model kiln runs alone (Gemma 3 4B/12B/27B,
/// Mistral Small 3.1/3.2, Pixtral and other LLaVA-style models): their `text_config` as a
/// text model's config, over the defaults transformers fills in (the hub's text configs
/// leave most fields out), and whether that applied.
fn language_model_config(value: serde_json::Value) -> Result<(serde_json::Value, bool)> {
    // transformers 4.57 saves a Qwen2.5-VL config's `architectures` inside its text_config.
    let arch = value["architectures"][0]
        .as_str()
        .or_else(|| value["text_config"]["architectures"][0].as_str())
        .unwrap_or_default();
    if !MULTIMODAL_ARCHITECTURES.contains(&arch) {
        return Ok((value, false));
    }
    let qwen_vl = arch.starts_with("Qwen");
    // GLM-4.1V's and GLM-4.5V's text models rotate by sections as Qwen2-VL's do.
    let glm_v = arch.starts_with("Glm4v");
    let text = match value.get("text_config").and_then(|t| t.as_object()) {
        Some(text) => text.clone(),
        // The hub's Qwen2.5-VL configs keep the text model's fields at the top level.
        None if qwen_vl => {
            let mut top = value.as_object().cloned().unwrap_or_default();
            top.remove("vision_config");
            top
        }
        None => anyhow::bail!("a {arch} config without text_config"),
    };
    let mut merged = match (arch, text.get("model_type").and_then(|t| t.as_str())) {
        // Qwen2_5_VLTextConfig's and Qwen2VLTextConfig's defaults (transformers 4.57, the
        // same): Qwen2's layers.
        ("Qwen2_5_VLForConditionalGeneration" | "Qwen2VLForConditionalGeneration", _) => {
            serde_json::json!({
            "architectures": ["Qwen2ForCausalLM"],
            "vocab_size": 152064, "hidden_size": 8192, "intermediate_size": 29568,
            "num_hidden_layers": 80, "num_attention_heads": 64, "num_key_value_heads": 8,
            "hidden_act": "silu", "max_position_embeddings": 32768, "rms_norm_eps": 1e-5,
            "rope_theta": 1000000.0, "use_sliding_window": false, "tie_word_embeddings": false,
            })
        }
        // Qwen3VLMoeTextConfig's defaults (transformers 4.57): Qwen3-MoE's layers, which
        // always renormalise the top k (the config leaves norm_topk_prob out).
        ("Qwen3VLMoeForConditionalGeneration", _) => serde_json::json!({
            "architectures": ["Qwen3MoeForCausalLM"],
            "vocab_size": 151936, "hidden_size": 2048, "intermediate_size": 5632,
            "num_hidden_layers": 24, "num_attention_heads": 16, "num_key_value_heads": 16,
            "head_dim": 128, "hidden_act": "silu", "max_position_embeddings": 128000,
            "rms_norm_eps": 1e-6, "rope_theta": 5000000.0, "attention_bias": false,
            "tie_word_embeddings": false, "num_experts": 60, "num_experts_per_tok": 4,
            "moe_intermediate_size": 1408, "decoder_sparse_step": 1, "mlp_only_layers": [],
            "norm_topk_prob": true,
        }),
        // Qwen3VLTextConfig's defaults (transformers 4.57): Qwen3's layers.
        ("Qwen3VLForConditionalGeneration", _) => serde_json::json!({
            "architectures": ["Qwen3ForCausalLM"],
            "vocab_size": 151936, "hidden_size": 4096, "intermediate_size": 22016,
            "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 32,
            "head_dim": 128, "hidden_act": "silu", "max_position_embeddings": 128000,
            "rms_norm_eps": 1e-6, "rope_theta": 5000000.0, "attention_bias": false,
            "tie_word_embeddings": false,
        }),
        // Glm4vTextConfig's defaults (transformers 4.57): GLM-4-0414's layer (sandwich norms,
        // interleaved rotary; its q/k/v always have biases, set below).
        ("Glm4vForConditionalGeneration", _) => serde_json::json!({
            "architectures": ["Glm4ForCausalLM"],
            "vocab_size": 151552, "hidden_size": 4096, "intermediate_size": 13696,
            "num_hidden_layers": 40, "num_attention_heads": 32, "num_key_value_heads": 2,
            "hidden_act": "silu", "max_position_embeddings": 32768, "rms_norm_eps": 1e-5,
            "rope_theta": 10000.0, "tie_word_embeddings": false,
        }),
        // Glm4vMoeTextConfig's defaults (transformers 4.57): GLM-4.5's layers.
        ("Glm4vMoeForConditionalGeneration", _) => serde_json::json!({
            "architectures": ["Glm4MoeForCausalLM"],
            "vocab_size": 151424, "hidden_size": 4096, "intermediate_size": 10944,
            "num_hidden_layers": 46, "num_attention_heads": 96, "num_key_value_heads": 8,
            "partial_rotary_factor": 0.5, "hidden_act": "silu",
            "max_position_embeddings": 65536, "rms_norm_eps": 1e-5, "rope_theta": 10000.0,
            "attention_bias": true, "tie_word_embeddings": false,
            "moe_intermediate_size": 1408, "num_experts_per_tok": 8, "n_shared_experts": 1,
            "n_routed_experts": 128, "routed_scaling_factor": 1.0, "n_group": 1,
            "topk_group": 1, "first_k_dense_replace": 1, "norm_topk_prob": true,
        }),
        // Lfm2Config's defaults are filled in by `lfm2::normalized_config`.
        ("Lfm2VlForConditionalGeneration", _) => serde_json::json!({
            "architectures": ["Lfm2ForCausalLM"], "model_type": "lfm2",
        }),
        // Llama4TextConfig's defaults are filled in by `llama4::normalized_config`.
        ("Llama4ForConditionalGeneration", _) => serde_json::json!({
            "architectures": ["Llama4ForCausalLM"], "model_type": "llama4_text",
        }),
        // Gemma3TextConfig's defaults (transformers 4.57).
        ("Gemma3ForConditionalGeneration", _) => serde_json::json!({
            "architectures": ["Gemma3ForCausalLM"],
            "vocab_size": 262208, "hidden_size": 2304, "intermediate_size": 9216,
            "num_hidden_layers": 26, "num_attention_heads": 8, "num_key_value_heads": 4,
            "head_dim": 256, "hidden_activation": "gelu_pytorch_tanh",
            "max_position_embeddings": 131072, "rms_norm_eps": 1e-6, "rope_theta": 1000000.0,
            "query_pre_attn_scalar": 256, "sliding_window": 4096, "rope_local_base_freq": 10000.0,
            "tie_word_embeddings": true, "bos_token_id": 2, "eos_token_id": 1,
        }),
        // MistralConfig's defaults (transformers 4.57).
        (_, Some("mistral")) => serde_json::json!({
            "architectures": ["MistralForCausalLM"],
            "vocab_size": 32000, "hidden_size": 4096, "intermediate_size": 14336,
            "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 8,
            "hidden_act": "silu", "max_position_embeddings": 131072, "rms_norm_eps": 1e-6,
            "rope_theta": 10000.0, "sliding_window": 4096, "tie_word_embeddings": false,
            "bos_token_id": 1, "eos_token_id": 2,
        }),
        // LlamaConfig's defaults (transformers 4.57).
        (_, Some("llama")) => serde_json::json!({
            "architectures": ["LlamaForCausalLM"],
            "vocab_size": 32000, "hidden_size": 4096, "intermediate_size": 11008,
            "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 32,
            "hidden_act": "silu", "max_position_embeddings": 2048, "rms_norm_eps": 1e-6,
            "rope_theta": 10000.0, "tie_word_embeddings": false, "bos_token_id": 1,
            "eos_token_id": 2,
        }),
        // Qwen2Config's defaults (transformers 4.57): InternVL 2.5 / 3, LLaVA-style models
        // over Qwen2.
        (_, Some("qwen2")) => serde_json::json!({
            "architectures": ["Qwen2ForCausalLM"],
            "vocab_size": 151936, "hidden_size": 4096, "intermediate_size": 22016,
            "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 32,
            "hidden_act": "silu", "max_position_embeddings": 32768, "rms_norm_eps": 1e-6,
            "rope_theta": 10000.0, "use_sliding_window": false, "tie_word_embeddings": false,
        }),
        // Qwen3Config's defaults (transformers 4.57): InternVL 3.5 and others over Qwen3.
        (_, Some("qwen3")) => serde_json::json!({
            "architectures": ["Qwen3ForCausalLM"],
            "vocab_size": 151936, "hidden_size": 4096, "intermediate_size": 22016,
            "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 32,
            "head_dim": 128, "hidden_act": "silu", "max_position_embeddings": 32768,
            "rms_norm_eps": 1e-6, "rope_theta": 10000.0, "attention_bias": false,
            "use_sliding_window": false, "tie_word_embeddings": false,
        }),
        (_, other) => anyhow::bail!(
            "a {arch} checkpoint whose text model is '{}' (kiln runs mistral, llama, qwen2 \
             and qwen3 ones)",
            other.unwrap_or("unnamed")
        ),
    };
    let fields = merged.as_object_mut().expect("an object");
    for (k, v) in &text {
        if k != "architectures" {
            fields.insert(k.clone(), v.clone());
        }
    }
    if qwen_vl || glm_v {
        // Multimodal RoPE rotates each section of a head by its own axis (time, height,
        // width); a text token's three positions are equal, so on text alone it is the
        // ordinary rotation.
        if let Some(scaling) = fields
            .get("rope_scaling")
            .filter(|r| r.get("mrope_section").is_some())
        {
            let kind = scaling
                .get("rope_type")
                .or_else(|| scaling.get("type"))
                .and_then(|t| t.as_str())
                .unwrap_or("default");
            anyhow::ensure!(
                matches!(kind, "default" | "mrope"),
                "multimodal RoPE with '{kind}' scaling is not supported"
            );
            fields.remove("rope_scaling");
        }
    }
    if arch == "Glm4vForConditionalGeneration" {
        // Glm4vTextAttention's q, k and v always have biases (its config has no switch).
        fields.insert("attention_bias".into(), true.into());
    }
    if arch == "Qwen3VLMoeForConditionalGeneration" {
        // Its MoE block renormalises the top k whatever the config says, and its experts
        // are stacked (`MoeConfig::stacked` reads the model type).
        fields.insert("norm_topk_prob".into(), true.into());
        fields.insert("model_type".into(), QWEN3_VL_MOE_TEXT.into());
    }
    // The top level says these for the whole checkpoint.
    for key in [
        "eos_token_id",
        "bos_token_id",
        "torch_dtype",
        "dtype",
        "tie_word_embeddings",
    ] {
        if let Some(v) = value.get(key).filter(|v| !v.is_null()) {
            if !text.contains_key(key) {
                fields.insert(key.into(), v.clone());
            }
        }
    }
    Ok((merged, true))
}

/// The mixture-of-experts MLP of the layers that have one.
#[derive(Clone, Debug, PartialEq)]
pub struct MoeConfig {
    pub num_experts: usize,
    /// Experts each token is sent to.
    pub top_k: usize,
    /// Intermediate size of one expert.
    pub expert_intermediate_size: usize,
    /// Whether the chosen experts' weights are rescaled to sum to one (Mixtral always;
    /// Qwen3-MoE when `norm_topk_prob`).
    pub normalize_top_k: bool,
    /// Per layer: true where the MLP is the experts, false where it is a dense MLP of
    /// `intermediate_size` (Qwen3-MoE's `mlp_only_layers`, `decoder_sparse_step`).
    pub sparse_layers: Vec<bool>,
    /// Qwen2-MoE: an expert every token goes through, weighted by a sigmoid gate, of this
    /// intermediate size (GLM-4.5: the same, without the gate).
    pub shared_expert_intermediate_size: Option<usize>,
    /// Whether the shared expert's output is scaled by `sigmoid(gate . x)` (Qwen2-MoE).
    pub shared_expert_gated: bool,
    /// How the router picks and weighs experts.
    pub scoring: RouterScoring,
    /// gpt-oss: biases on the router and on each expert's projections, and its activation.
    pub biases: bool,
    pub activation: ExpertActivation,
    /// Qwen3-VL-MoE: each layer's experts stored as two stacks (`experts.gate_up_proj`,
    /// gate and up columns in halves, and `experts.down_proj`) instead of one tensor per
    /// expert and projection (`model/moe_fused.rs`).
    pub stacked: bool,
    /// The router's logits are computed in f32 from the dtype's inputs, as transformers
    /// computes them for these models (GLM-4.5, DeepSeek-V2 / V3, ERNIE 4.5, dots.llm1): a
    /// logit rounded to bf16 can flip a near-tied expert choice.
    pub router_f32: bool,
    /// The router's weight stays in f32 whatever the model dtype, as transformers keeps it
    /// (`_keep_in_fp32_modules`: ERNIE 4.5 MoE, Nemotron 3).
    pub router_weight_f32: bool,
    /// The experts' weighted outputs are added in f32 and rounded once, as transformers'
    /// loop adds them in its f32 router weights' dtype (DeepSeek-V2 / V3, GLM-4.5,
    /// dots.llm1, Nemotron 3); otherwise each step rounds to the model dtype.
    pub sum_f32: bool,
    /// Nemotron 3 (LatentMoE): the routed experts' input and output width, projected down
    /// from and back up to the hidden size around them (`model/moe.rs`).
    pub latent_size: Option<usize>,
}

impl MoeConfig {
    fn from_raw(architecture: Architecture, raw: &RawConfig) -> Result<Option<MoeConfig>> {
        let (num_experts, expert_intermediate_size, normalize_top_k) = match architecture {
            Architecture::Qwen3Moe | Architecture::Qwen2Moe | Architecture::Qwen3Next => (
                raw.num_experts.unwrap_or(0),
                raw.moe_intermediate_size
                    .context("a Qwen MoE config without moe_intermediate_size")?,
                raw.norm_topk_prob.unwrap_or(false),
            ),
            // OLMoE's experts are `intermediate_size` wide (OlmoeConfig's defaults).
            Architecture::Olmoe => (
                raw.num_experts.unwrap_or(64),
                raw.intermediate_size,
                raw.norm_topk_prob.unwrap_or(false),
            ),
            // gpt-oss and Granite MoE take the softmax of the top-k logits: the same as
            // renormalising.
            Architecture::GraniteMoe | Architecture::GraniteMoeShared => (
                raw.num_local_experts.unwrap_or(8),
                raw.intermediate_size,
                true,
            ),
            // Granite 4.0's MoE hybrids: Granite MoE's experts and router (none in the
            // dense ones, whose shared MLP `mamba::normalized_granite_hybrid_config` made
            // the dense MLP).
            Architecture::GraniteMoeHybrid => (
                raw.num_local_experts.unwrap_or(8),
                raw.intermediate_size,
                true,
            ),
            Architecture::Mixtral | Architecture::GptOss => (
                raw.num_local_experts.unwrap_or(0),
                raw.intermediate_size,
                true,
            ),
            // SparseMixer's weights are its two softmaxes' own (PhimoeConfig's defaults).
            Architecture::PhiMoe => (
                raw.num_local_experts.unwrap_or(16),
                raw.intermediate_size,
                false,
            ),
            // HunYuanMoEV1Config's defaults (one expert, top 1), renormalised top k.
            Architecture::HunYuanMoe => (
                raw.num_experts.unwrap_or(1),
                raw.moe_intermediate_size.unwrap_or(raw.intermediate_size),
                true,
            ),
            // Dots1Config's defaults (it has no expert count of its own).
            Architecture::Dots1 => (
                raw.n_routed_experts.unwrap_or(0),
                raw.moe_intermediate_size.unwrap_or(1408),
                raw.norm_topk_prob.unwrap_or(false),
            ),
            // Glm4MoeConfig's defaults.
            Architecture::Glm4Moe => (
                raw.n_routed_experts.unwrap_or(128),
                raw.moe_intermediate_size.unwrap_or(1408),
                raw.norm_topk_prob.unwrap_or(true),
            ),
            // DeepseekV2Config's and DeepseekV3Config's defaults.
            Architecture::DeepseekV2 => (
                raw.n_routed_experts.unwrap_or(64),
                raw.moe_intermediate_size.unwrap_or(1407),
                raw.norm_topk_prob.unwrap_or(false),
            ),
            Architecture::DeepseekV3 => (
                raw.n_routed_experts.unwrap_or(256),
                raw.moe_intermediate_size.unwrap_or(2048),
                raw.norm_topk_prob.unwrap_or(true),
            ),
            // Set from Llama 4's widths (`llama4::normalized_config`); its weights are the
            // chosen logits' sigmoids.
            Architecture::Llama4 => (
                raw.num_local_experts.unwrap_or(16),
                raw.moe_intermediate_size.unwrap_or(raw.intermediate_size),
                false,
            ),
            // JambaConfig's defaults: experts `intermediate_size` wide, their softmax
            // probabilities not renormalised.
            Architecture::Jamba => (raw.num_experts.unwrap_or(16), raw.intermediate_size, false),
            // LFM2-MoE (`lfm2::normalized_moe_config` fills in Lfm2MoeConfig's defaults);
            // the dense LFM2 has no experts.
            Architecture::Lfm2 => (
                raw.num_experts.unwrap_or(0),
                raw.moe_intermediate_size.unwrap_or(1792),
                raw.norm_topk_prob.unwrap_or(true),
            ),
            // NemotronHConfig's defaults (whether any layer has experts is its pattern's
            // say: `ModelConfig::from_json`).
            Architecture::NemotronH => (
                raw.n_routed_experts.unwrap_or(8),
                raw.moe_intermediate_size.unwrap_or(7688),
                raw.norm_topk_prob.unwrap_or(true),
            ),
            // Ernie4_5_MoeConfig's defaults; the chosen weights are renormalised.
            Architecture::Ernie45Moe => (
                raw.moe_num_experts.unwrap_or(64),
                raw.moe_intermediate_size.unwrap_or(1536),
                true,
            ),
            _ => return Ok(None),
        };
        if num_experts == 0 {
            return Ok(None);
        }
        let top_k = match architecture {
            Architecture::Ernie45Moe => raw.moe_k.unwrap_or(6),
            _ => raw.num_experts_per_tok.unwrap_or(2),
        };
        anyhow::ensure!(
            (1..=num_experts).contains(&top_k),
            "num_experts_per_tok {top_k} must be between 1 and the {num_experts} experts"
        );
        let step = raw.decoder_sparse_step.unwrap_or(1).max(1);
        // DeepSeek's experts come every `moe_layer_freq` layers, counted from layer 0.
        let deepseek_step = raw.moe_layer_freq.unwrap_or(1).max(1);
        let first_sparse = match architecture {
            Architecture::Glm4Moe => raw.first_k_dense_replace.unwrap_or(1),
            Architecture::Dots1 => raw.first_k_dense_replace.unwrap_or(0),
            Architecture::DeepseekV2 => raw.first_k_dense_replace.unwrap_or(0),
            Architecture::DeepseekV3 => raw.first_k_dense_replace.unwrap_or(3),
            Architecture::Lfm2 => raw.first_k_dense_replace.unwrap_or(2),
            _ => 0,
        };
        let sparse_layers = if architecture == Architecture::Ernie45Moe {
            ernie_moe_layers(raw)
        } else if architecture == Architecture::Jamba {
            let period = raw.expert_layer_period.unwrap_or(2).max(1);
            let offset = raw.expert_layer_offset.unwrap_or(1);
            (0..raw.num_hidden_layers)
                .map(|i| i % period == offset)
                .collect()
        } else {
            (0..raw.num_hidden_layers)
                .map(|i| {
                    i >= first_sparse
                        && !raw.mlp_only_layers.contains(&i)
                        && (i + 1) % step == 0
                        && i % deepseek_step == 0
                })
                .collect()
        };
        // The groups of a grouped router, checked.
        let groups = |groups: Option<usize>, top_groups: Option<usize>| -> Result<(usize, usize)> {
            let groups = groups.unwrap_or(1).max(1);
            let top_groups = top_groups.unwrap_or(groups);
            anyhow::ensure!(
                num_experts.is_multiple_of(groups) && (1..=groups).contains(&top_groups),
                "n_group {groups} must divide the {num_experts} experts and topk_group \
                 {top_groups} be between 1 and it"
            );
            anyhow::ensure!(
                top_k <= top_groups * (num_experts / groups),
                "num_experts_per_tok {top_k} exceeds the experts of topk_group groups"
            );
            Ok((groups, top_groups))
        };
        let scale = raw.routed_scaling_factor.unwrap_or(1.0) as f32;
        let scoring = match architecture {
            Architecture::Glm4Moe
            | Architecture::DeepseekV3
            | Architecture::Dots1
            | Architecture::NemotronH => {
                let (groups, top_groups) = groups(raw.n_group, raw.topk_group.or(Some(1)))?;
                RouterScoring::SigmoidGrouped {
                    groups,
                    top_groups,
                    scale,
                }
            }
            Architecture::DeepseekV2 => {
                let (groups, top_groups) = match raw.topk_method.as_deref().unwrap_or("greedy") {
                    "greedy" => (1, 1),
                    "group_limited_greedy" => groups(raw.n_group, raw.topk_group)?,
                    other => anyhow::bail!(
                        "DeepSeek-V2 topk_method '{other}' is not supported (greedy, \
                         group_limited_greedy)"
                    ),
                };
                // V2-Lite's router is the plain softmax one, which devices route themselves.
                if groups == 1 && scale == 1.0 {
                    RouterScoring::Softmax
                } else {
                    RouterScoring::SoftmaxGrouped {
                        groups,
                        top_groups,
                        scale,
                    }
                }
            }
            // The softmax's top k by probability plus `moe_statics`' bias: one group.
            Architecture::Ernie45Moe => RouterScoring::SoftmaxGrouped {
                groups: 1,
                top_groups: 1,
                scale: 1.0,
            },
            Architecture::PhiMoe => {
                anyhow::ensure!(
                    top_k == 2,
                    "Phi-3.5-MoE's SparseMixer router picks 2 experts, not {top_k}"
                );
                RouterScoring::SparseMixer {
                    jitter_eps: raw.router_jitter_noise.unwrap_or(0.01) as f32,
                }
            }
            Architecture::Llama4 => RouterScoring::SigmoidScaledInput,
            // LFM2-MoE: sigmoid scores in the dtype, chosen with the expert bias.
            Architecture::Lfm2 => RouterScoring::SigmoidInDtype { scale },
            _ => RouterScoring::Softmax,
        };
        Ok(Some(MoeConfig {
            stacked: raw.model_type.as_deref() == Some(QWEN3_VL_MOE_TEXT)
                || architecture == Architecture::Llama4,
            router_f32: matches!(
                architecture,
                Architecture::Glm4Moe
                    | Architecture::DeepseekV2
                    | Architecture::DeepseekV3
                    | Architecture::Ernie45Moe
                    | Architecture::Dots1
                    | Architecture::HunYuanMoe
                    | Architecture::NemotronH
            ),
            latent_size: match architecture {
                Architecture::NemotronH => raw.moe_latent_size.filter(|&n| n > 0),
                _ => None,
            },
            router_weight_f32: matches!(
                architecture,
                Architecture::Ernie45Moe | Architecture::NemotronH
            ),
            sum_f32: matches!(
                architecture,
                Architecture::Glm4Moe
                    | Architecture::DeepseekV2
                    | Architecture::DeepseekV3
                    | Architecture::Dots1
                    | Architecture::NemotronH
            ),
            num_experts,
            top_k,
            expert_intermediate_size,
            normalize_top_k,
            sparse_layers,
            shared_expert_intermediate_size: match architecture {
                Architecture::Qwen2Moe | Architecture::Qwen3Next => Some(
                    raw.shared_expert_intermediate_size
                        .context("a Qwen2-MoE config without shared_expert_intermediate_size")?,
                )
                .filter(|&n| n > 0),
                Architecture::Glm4Moe | Architecture::DeepseekV3 => {
                    Some(expert_intermediate_size * raw.n_shared_experts.unwrap_or(1))
                        .filter(|&n| n > 0)
                }
                // Dots1Config's default is none.
                Architecture::Dots1 => raw
                    .n_shared_experts
                    .map(|n| expert_intermediate_size * n)
                    .filter(|&n| n > 0),
                Architecture::DeepseekV2 => {
                    Some(expert_intermediate_size * raw.n_shared_experts.unwrap_or(2))
                        .filter(|&n| n > 0)
                }
                Architecture::Ernie45Moe => {
                    Some(expert_intermediate_size * raw.moe_num_shared_experts.unwrap_or(2))
                        .filter(|&n| n > 0)
                }
                // Set from its per-layer settings (`hunyuan::normalized_moe_config`), or
                // Granite 4.0's shared MLP (`mamba::normalized_granite_hybrid_config`), or
                // Nemotron 3's `moe_shared_expert_intermediate_size`
                // (`nemotron_h::normalized_config`).
                Architecture::HunYuanMoe
                | Architecture::Llama4
                | Architecture::GraniteMoeHybrid
                | Architecture::NemotronH => raw.shared_expert_intermediate_size.filter(|&n| n > 0),
                // GraniteMoeSharedConfig's default is none (0).
                Architecture::GraniteMoeShared => raw.shared_intermediate_size.filter(|&n| n > 0),
                _ => None,
            },
            shared_expert_gated: matches!(
                architecture,
                Architecture::Qwen2Moe | Architecture::Qwen3Next
            ),
            scoring,
            biases: architecture == Architecture::GptOss,
            activation: match architecture {
                Architecture::GptOss => ExpertActivation::ClampedSwiGlu {
                    limit: raw.swiglu_limit.unwrap_or(7.0) as f32,
                    alpha: 1.702,
                },
                // Nemotron 3's experts are its MLPs' kind: ungated ReLU².
                Architecture::NemotronH => ExpertActivation::Relu2,
                _ => ExpertActivation::SwiGlu,
            },
        }))
    }

    /// Whether layer `i`'s MLP is the experts.
    pub fn is_sparse(&self, layer: usize) -> bool {
        self.sparse_layers.get(layer).copied().unwrap_or(false)
    }
}

/// ERNIE 4.5 MoE's expert layers: every `moe_layer_interval`-th (counting from one) between
/// `moe_layer_start_index` and `moe_layer_end_index` (-1: the last layer), inclusive.
fn ernie_moe_layers(raw: &RawConfig) -> Vec<bool> {
    let n = raw.num_hidden_layers as i64;
    let start = raw.moe_layer_start_index.unwrap_or(1);
    let end = match raw.moe_layer_end_index.unwrap_or(-1) {
        -1 => n - 1,
        end => end,
    };
    let interval = raw.moe_layer_interval.unwrap_or(1).max(1) as i64;
    (0..n)
        .map(|i| (i + 1) % interval == 0 && i >= start && i <= end)
        .collect()
}

/// Granite's four multipliers. Three are folded into weights at load (attention into the q
/// rows, residual into the o and down projections); the embedding and logit ones are
/// applied to the embeddings and to the last hidden state before the (possibly tied) head.
#[derive(Clone, Debug, PartialEq)]
pub struct GraniteScales {
    /// Multiplies the embeddings.
    pub embedding: f64,
    /// Replaces `head_dim^-0.5` as the attention scale.
    pub attention: f64,
    /// Multiplies each block's output before its residual add.
    pub residual: f64,
    /// Divides the logits.
    pub logits: f64,
}

/// What Gemma 2 and 3 do differently from the Llama layer.
#[derive(Clone, Debug, PartialEq)]
pub struct GemmaConfig {
    /// Per layer: whether it attends only over the last `sliding_window` tokens (local,
    /// with RoPE base `local_rope_theta` and no scaling) or over everything (global).
    pub sliding_layers: Vec<bool>,
    pub local_rope_theta: f64,
    /// Multiplies q before the scores: `query_pre_attn_scalar^-0.5` over the usual
    /// `head_dim^-0.5` (folded into the q norm's weight at load, or into q's rows where
    /// there is no q norm: Gemma 2).
    pub query_scale: f64,
    /// Gemma 2 and 3: norms around both blocks (Gemma's own layer is Llama's).
    pub sandwich: bool,
    /// Gemma 2: each scaled attention score `s` becomes `cap * tanh(s / cap)`.
    pub attn_softcap: Option<f32>,
    /// Gemma 2: the logits likewise.
    pub final_softcap: Option<f32>,
}

/// A quantized checkpoint's format (`quantization_config`); kiln expands the weights to the
/// model dtype as they load.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Quantization {
    /// float8 e4m3 weights with `weight_scale` / `weight_scale_inv` beside them
    /// (`model/fp8.rs`): quant_method `fp8`, compressed-tensors' `float-quantized`, or
    /// NVIDIA ModelOpt's `FP8` (one scale per tensor).
    Fp8,
    /// NVFP4 (`model/nvfp4.rs`): compressed-tensors' `nvfp4-pack-quantized`, or ModelOpt's
    /// `NVFP4`.
    Nvfp4,
    /// ModelOpt's `MIXED_PRECISION`: FP8 and NVFP4 layers (`model/modelopt_mixed.rs`).
    Fp8AndNvfp4,
    /// gpt-oss's MXFP4 experts (`model/mxfp4.rs`).
    Mxfp4,
    /// Integer weights with group scales: GPTQ, AWQ, compressed-tensors pack-quantized
    /// (`model/int_quant.rs`).
    Int(IntScheme),
    /// bitsandbytes 4-bit (NF4 / FP4, double quantization or not: `model/bnb.rs`).
    Bnb4,
    /// bitsandbytes 8-bit (LLM.int8's row-wise int8: `model/bnb8.rs`).
    Bnb8,
}

impl Quantization {
    /// The format ModelOpt's `hf_quant_config.json` (`{"producer": {"name": "modelopt"},
    /// "quantization": {"quant_algo": ...}}`) names.
    pub fn from_modelopt_file(path: &Path) -> Result<Option<Self>> {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        let file: serde_json::Value = serde_json::from_str(&text)
            .with_context(|| format!("{} is not JSON", path.display()))?;
        let quantization = file.get("quantization").cloned().unwrap_or_default();
        let config = serde_json::json!({"quant_method": "modelopt", "quantization": quantization});
        Self::from_config(Some(&config)).with_context(|| format!("in {}", path.display()))
    }

    fn from_config(config: Option<&serde_json::Value>) -> Result<Option<Self>> {
        let Some(config) = config.filter(|c| !c.is_null()) else {
            return Ok(None);
        };
        let field = |k: &str| config.get(k).and_then(|v| v.as_str()).unwrap_or("");
        let method = field("quant_method");
        Ok(Some(match (method, field("format")) {
            ("fp8", _) => Quantization::Fp8,
            ("compressed-tensors", "float-quantized") => Quantization::Fp8,
            ("compressed-tensors", "nvfp4-pack-quantized") => Quantization::Nvfp4,
            // ModelOpt names its algorithm at the top (config.json) or under `quantization`
            // (the hf_quant_config.json layout).
            ("modelopt", _) => {
                let algo = config
                    .get("quant_algo")
                    .or_else(|| config.get("quantization").and_then(|q| q.get("quant_algo")))
                    .and_then(|v| v.as_str())
                    .unwrap_or("");
                match algo.to_ascii_uppercase().as_str() {
                    "FP8" => Quantization::Fp8,
                    "NVFP4" => Quantization::Nvfp4,
                    "MIXED_PRECISION" => Quantization::Fp8AndNvfp4,
                    _ => anyhow::bail!(
                        "ModelOpt checkpoints quantized with quant_algo '{algo}' are not \
                         supported (kiln loads FP8, NVFP4 and MIXED_PRECISION of the two)"
                    ),
                }
            }
            ("mxfp4", _) => Quantization::Mxfp4,
            ("gptq", _) => Quantization::Int(gptq_scheme(config)?),
            ("awq", _) => Quantization::Int(awq_scheme(config)?),
            ("bitsandbytes", _) => {
                let flag = |k: &str| config.get(k).and_then(|v| v.as_bool()) == Some(true);
                if flag("load_in_4bit") || flag("_load_in_4bit") {
                    Quantization::Bnb4
                } else if flag("load_in_8bit") || flag("_load_in_8bit") {
                    Quantization::Bnb8
                } else {
                    anyhow::bail!(
                        "a bitsandbytes checkpoint that is neither load_in_4bit nor load_in_8bit \
                         is not supported"
                    )
                }
            }
            ("compressed-tensors", "pack-quantized") => {
                Quantization::Int(pack_quantized_scheme(config)?)
            }
            (method, format) => anyhow::bail!(
                "quantized checkpoints of quant_method '{method}'{} are not supported (kiln \
                 loads fp8, gptq, awq (GEMM layout), bitsandbytes 4- and 8-bit, mxfp4, \
                 ModelOpt FP8 and NVFP4, and compressed-tensors float-quantized, \
                 nvfp4-pack-quantized and pack-quantized ones)",
                if format.is_empty() {
                    String::new()
                } else {
                    format!(" (format '{format}')")
                }
            ),
        }))
    }
}

/// Checks vLLM's `--quantization NAME` against the checkpoint's own method: kiln only reads
/// checkpoints as they are quantized, so a name that disagrees (or any name for an
/// unquantized checkpoint, which vLLM would quantize online) is an error.
pub fn check_quantization_flag(asked: &str, found: Option<&Quantization>) -> Result<()> {
    let method = asked
        .to_ascii_lowercase()
        .replace('-', "_")
        .trim_end_matches("_marlin")
        .trim_start_matches("marlin_")
        .to_string();
    let matches = matches!(
        (method.as_str(), found),
        ("fp8", Some(Quantization::Fp8))
            | ("mxfp4", Some(Quantization::Mxfp4))
            | (
                "modelopt",
                Some(Quantization::Fp8 | Quantization::Fp8AndNvfp4)
            )
            | ("modelopt_fp4" | "nvfp4", Some(Quantization::Nvfp4))
            | ("gptq", Some(Quantization::Int(IntScheme::Gptq { .. })))
            | ("awq", Some(Quantization::Int(IntScheme::Awq { .. })))
            | (
                "bitsandbytes",
                Some(Quantization::Bnb4 | Quantization::Bnb8)
            )
            | (
                "compressed_tensors",
                Some(Quantization::Fp8 | Quantization::Nvfp4 | Quantization::Int(_))
            )
    );
    match (matches, found) {
        (true, _) => Ok(()),
        (false, None) => anyhow::bail!(
            "the checkpoint is not quantized, and kiln does not quantize weights as it loads \
             them (leave --quantization out)"
        ),
        (false, Some(q)) => anyhow::bail!(
            "the checkpoint is quantized as {q:?}, not {asked} (leave --quantization out: \
             kiln reads the method from the checkpoint)"
        ),
    }
}

/// A quantization config's `group_size`: -1 (or none) means one group over all inputs.
fn group_size(config: &serde_json::Value) -> Option<usize> {
    config
        .get("group_size")
        .and_then(|v| v.as_i64())
        .filter(|&g| g > 0)
        .map(|g| g as usize)
}

fn bits(config: &serde_json::Value) -> Result<u32> {
    let bits = config
        .get("bits")
        .and_then(|v| v.as_u64())
        .context("quantization_config has no integer 'bits'")?;
    Ok(bits as u32)
}

/// GPTQ (AutoGPTQ, GPTQModel, optimum): the packed layout at 2, 3, 4 or 8 bits, in the
/// original format (zeros stored minus one) or GPTQModel's v2.
fn gptq_scheme(config: &serde_json::Value) -> Result<IntScheme> {
    let bits = bits(config)?;
    anyhow::ensure!(
        matches!(bits, 2 | 3 | 4 | 8),
        "GPTQ checkpoints of {bits} bits are not supported (2, 3, 4 and 8 are)"
    );
    let format = ["checkpoint_format", "format"]
        .iter()
        .find_map(|k| config.get(*k).and_then(|v| v.as_str()))
        .unwrap_or("gptq");
    let zero_offset = match format {
        "gptq" => 1,
        "gptq_v2" => 0,
        other => anyhow::bail!(
            "GPTQ checkpoints in the '{other}' layout are not supported (gptq and gptq_v2 are)"
        ),
    };
    Ok(IntScheme::Gptq {
        bits,
        group_size: group_size(config),
        zero_offset,
    })
}

/// AWQ (AutoAWQ, llm-awq): 4-bit, zero points, the GEMM layout.
fn awq_scheme(config: &serde_json::Value) -> Result<IntScheme> {
    let bits = bits(config)?;
    anyhow::ensure!(
        bits == 4,
        "AWQ checkpoints of {bits} bits are not supported (4 are)"
    );
    let version = config
        .get("version")
        .and_then(|v| v.as_str())
        .unwrap_or("gemm")
        .to_ascii_lowercase();
    anyhow::ensure!(
        version == "gemm",
        "AWQ checkpoints in the '{version}' layout are not supported (gemm is)"
    );
    anyhow::ensure!(
        config.get("zero_point").and_then(|v| v.as_bool()) != Some(false),
        "AWQ checkpoints without zero points are not supported"
    );
    Ok(IntScheme::Awq {
        group_size: group_size(config),
    })
}

/// compressed-tensors pack-quantized (llm-compressor's W4A16, W8A16): integer weights;
/// each config group's bits and group size.
fn pack_quantized_scheme(config: &serde_json::Value) -> Result<IntScheme> {
    let groups = config
        .get("config_groups")
        .and_then(|g| g.as_object())
        .context("a pack-quantized quantization_config without config_groups")?;
    let (mut bits, mut group_sizes) = (Vec::new(), Vec::new());
    for (name, group) in groups {
        // kiln would run such activations unquantized: not the model that was calibrated.
        anyhow::ensure!(
            group.get("input_activations").is_none_or(|a| a.is_null()),
            "config group {name}: quantized activations are not supported (kiln loads \
             weight-only pack-quantized checkpoints)"
        );
        let Some(weights) = group.get("weights").filter(|w| !w.is_null()) else {
            continue;
        };
        let kind = weights
            .get("type")
            .and_then(|t| t.as_str())
            .unwrap_or("int");
        anyhow::ensure!(
            kind == "int",
            "config group {name}: pack-quantized weights of type '{kind}' are not supported"
        );
        if let Some(b) = weights.get("num_bits").and_then(|b| b.as_u64()) {
            bits.push(b as u32);
        }
        group_sizes.extend(group_size(weights));
    }
    Ok(IntScheme::PackQuantized { bits, group_sizes })
}

/// `layer_types` (Gemma 3, gpt-oss): per layer, whether it is a sliding-window one.
/// A config's `layer_types` (`value`'s, `layers` of them) as flags: true for `marked`, false
/// for `full_attention`, anything else refused; `None` where the config has none (Llama 4's
/// chunked layers, LFM2's convolutions).
pub(super) fn layer_types_marking(
    value: &serde_json::Value,
    layers: usize,
    marked: &str,
) -> Result<Option<Vec<bool>>> {
    let Some(types) = value.get("layer_types").and_then(|t| t.as_array()) else {
        return Ok(None);
    };
    anyhow::ensure!(
        types.len() == layers,
        "layer_types has {} entries for {layers} layers",
        types.len()
    );
    types
        .iter()
        .map(|t| match t.as_str() {
            Some(kind) if kind == marked => Ok(true),
            // Granite 4.0 hybrids say `attention`.
            Some("full_attention" | "attention") => Ok(false),
            other => {
                anyhow::bail!("unknown layer type {other:?} (expected {marked} or full_attention)")
            }
        })
        .collect::<Result<_>>()
        .map(Some)
}

fn parse_layer_types(raw: &RawConfig) -> Result<Option<Vec<bool>>> {
    let Some(types) = &raw.layer_types else {
        return Ok(None);
    };
    let n = raw.num_hidden_layers;
    anyhow::ensure!(
        types.len() == n,
        "layer_types has {} entries for {n} layers",
        types.len()
    );
    types
        .iter()
        .map(|t| match t.as_str() {
            "sliding_attention" => Ok(true),
            // Llama 4's chunks are not a sliding window (`ModelConfig::attention_chunks`),
            // nor are LFM2's convolutions (`ModelConfig::short_conv`), Granite 4.0's
            // Mamba mixers (`ModelConfig::mamba`) or Qwen3-Next's gated delta rule mixers.
            "full_attention" | "chunked_attention" | "conv" | "attention" | "mamba"
            | "linear_attention" => Ok(false),
            other => anyhow::bail!("unknown layer type '{other}'"),
        })
        .collect::<Result<_>>()
        .map(Some)
}

impl GemmaConfig {
    fn from_raw(architecture: Architecture, raw: &RawConfig) -> Result<Option<GemmaConfig>> {
        if !matches!(
            architecture,
            Architecture::Gemma | Architecture::Gemma2 | Architecture::Gemma3
        ) {
            return Ok(None);
        }
        let cap = |name: &str, cap: Option<f64>| -> Result<Option<f32>> {
            match cap {
                Some(c) if !(c > 0.0 && c.is_finite()) => {
                    anyhow::bail!("{name} must be positive, got {c}")
                }
                c => Ok(c.map(|c| c as f32)),
            }
        };
        let attn_softcap = cap("attn_logit_softcapping", raw.attn_logit_softcapping)?;
        let final_softcap = cap("final_logit_softcapping", raw.final_logit_softcapping)?;
        let n = raw.num_hidden_layers;
        let sliding_layers = match (parse_layer_types(raw)?, raw.sliding_window_pattern) {
            // Gemma (1) attends over everything in every layer.
            _ if architecture == Architecture::Gemma => vec![false; n],
            (Some(sliding), _) => sliding,
            // Every `pattern`-th layer is global (Gemma 3's default is 6; Gemma 2 alternates,
            // local first).
            (None, pattern) => {
                let default = if architecture == Architecture::Gemma2 {
                    2
                } else {
                    6
                };
                let pattern = pattern.unwrap_or(default).max(1);
                (0..n).map(|i| (i + 1) % pattern != 0).collect()
            }
        };
        let head_dim =
            raw.head_dim
                .unwrap_or(raw.hidden_size / raw.num_attention_heads.max(1)) as f64;
        let scalar = raw.query_pre_attn_scalar.unwrap_or(head_dim);
        anyhow::ensure!(scalar > 0.0, "query_pre_attn_scalar must be positive");
        Ok(Some(GemmaConfig {
            sliding_layers,
            // Gemma 2's local layers rotate like its global ones.
            local_rope_theta: match architecture {
                Architecture::Gemma2 => raw.rope_local_base_freq.unwrap_or(raw.rope_theta),
                _ => raw.rope_local_base_freq.unwrap_or(10000.0),
            },
            query_scale: (head_dim / scalar).sqrt(),
            sandwich: architecture != Architecture::Gemma,
            attn_softcap,
            final_softcap,
        }))
    }
}

/// A validated model config.
#[derive(Clone, Debug, PartialEq)]
pub struct ModelConfig {
    pub architecture: Architecture,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_layers: usize,
    pub num_heads: usize,
    pub num_kv_heads: usize,
    pub head_dim: usize,
    pub vocab_size: usize,
    pub rms_norm_eps: f64,
    pub rope_theta: f64,
    pub rope_scaling: Option<RopeScaling>,
    pub max_position_embeddings: usize,
    /// The longest sequence the engine will run (`--max-model-len`; the config's
    /// `max_position_embeddings` until the launcher says). LongRoPE picks its long factors
    /// when this exceeds the original context.
    pub context_len: usize,
    pub tie_word_embeddings: bool,
    pub qkv_bias: bool,
    pub qk_norm: bool,
    /// Values of each head that rotate (`head_dim` unless `partial_rotary_factor`).
    pub rotary_dim: usize,
    /// OLMo 2: the q / k norms span the whole projection (all heads), not one head.
    pub qk_norm_whole: bool,
    /// HunYuan: the per-head q / k norms apply to the rotated heads.
    pub qk_norm_after_rope: bool,
    /// Command R+ (`use_qk_norm`), StableLM 2 12B (`qk_layernorm`): the q / k norms are
    /// LayerNorms without biases, with a weight per head.
    pub qk_layer_norm: bool,
    /// Llama 4: the q / k norms have no weights (transformers' `L2Norm`: an RMS norm with
    /// unit weights), and only the layers that rotate apply them.
    pub qk_norm_unweighted: bool,
    /// OLMo 2: no norm before a block; its output is normed before the residual add.
    pub post_norm: bool,
    pub sliding_window: Option<usize>,
    /// gpt-oss: per layer, whether `sliding_window` applies (Gemma keeps its own in `gemma`);
    /// `None`: every layer slides when there is a window.
    pub sliding_layers: Option<Vec<bool>>,
    /// gpt-oss: a bias on the attention's output projection.
    pub o_bias: bool,
    /// StarCoder2: LayerNorms (mean-centred, with biases) instead of RMS norms; their
    /// epsilon is `rms_norm_eps`.
    pub layer_norm: bool,
    /// Cohere: the attention and the MLP both read the layer's one norm, and both outputs
    /// join the residual stream (no norm between them).
    pub parallel_block: bool,
    /// GPT-NeoX, Falcon-40B: a parallel layer's MLP reads its own norm of the stream
    /// (`post_attention_layernorm`), not the attention's.
    pub parallel_two_norms: bool,
    /// Whether the ungated MLP's projections have biases (Falcon's follow its `bias`).
    pub ungated_mlp_bias: bool,
    /// Cohere: what the logits are multiplied by.
    pub logit_scale: Option<f64>,
    /// StarCoder2: an ungated MLP, `c_proj(act(c_fc(x) + b) ) + b`, with this activation
    /// (`None`: the gated SiLU / GeLU MLP, or experts).
    pub ungated_mlp: Option<crate::backend::image_ops::Activation>,
    /// gpt-oss: a learned logit per head that joins each softmax (`self_attn.sinks`): it
    /// takes part of the probability mass without contributing a value.
    pub attention_sinks: bool,
    /// GPT-2: learned absolute position embeddings (`model.embed_positions`), added to the
    /// token embeddings at each position plus this offset.
    pub learned_positions: Option<usize>,
    /// BLOOM: a LayerNorm (`model.embed_norm`) right after the embedding lookup.
    pub embedding_norm: bool,
    /// Phi, GPT-J, Phi-3.5-MoE: a bias on the LM head.
    pub lm_head_bias: bool,
    /// BLOOM, MPT, Falcon-RW: positions as ALiBi's per-head distance penalties (no layer
    /// rotates).
    pub alibi: Option<Alibi>,
    /// The attention scores' scale where it is not head_dim^-0.5 (GPT-Neo's 1, MPT's
    /// `softmax_scale`); folded into the q rows at load.
    pub score_scale: Option<f64>,
    /// DeepSeek's multi-head latent attention (`head_dim` is then its q / k head size).
    pub mla: Option<super::mla::MlaConfig>,
    /// The experts, for mixture-of-experts models.
    pub moe: Option<MoeConfig>,
    /// Gemma 3's differences from the Llama layer.
    pub gemma: Option<GemmaConfig>,
    /// Granite's multipliers.
    pub granite: Option<GraniteScales>,
    /// Per layer, whether it applies rotary embeddings (SmolLM3's NoPE layers do not);
    /// `None`: every layer does.
    pub rope_layers: Option<Vec<bool>>,
    /// LFM2: the layers that are gated short convolutions instead of attention.
    pub short_conv: Option<super::lfm2::ShortConvLayers>,
    /// Bamba, Granite 4.0 hybrids: the layers that are Mamba-2 mixers instead of attention.
    pub mamba: Option<super::mamba::MambaLayers>,
    /// Mamba-1 models: every layer's mixer.
    pub selective: Option<super::mamba1::SelectiveLayers>,
    /// Qwen3-Next: the layers that are gated delta rule mixers instead of attention.
    pub gated_delta: Option<super::qwen3_next::GatedDeltaLayers>,
    /// Qwen3-Next: `q_proj` also gives a gate per head and value; the attention's output is
    /// multiplied by its sigmoid before `o_proj`.
    pub attention_output_gate: bool,
    /// Nemotron-H: the checkpoint's blocks behind each layer (for the weights' names), and
    /// so which layers are Mamba mixers and which have an MLP.
    pub nemotron_h: Option<super::nemotron_h::NemotronHBlocks>,
    /// Falcon-H1's µP multipliers (folded into its weights at load, but the embedding's and
    /// the head's).
    pub falcon_h1: Option<super::falcon_h1::FalconH1Scales>,
    /// Llama 4: the layers that attend only within their chunk of positions, and its size.
    pub attention_chunks: Option<super::llama4::AttentionChunks>,
    /// Llama 4: the layers without rotary scale each query by a temperature growing with
    /// its position (applied with their all-zero rotation).
    pub query_temperature: Option<QueryTemperature>,
    /// The checkpoint is a multimodal one whose language model is run alone: its weights
    /// sit under `language_model` (see `weights::LanguageModelWeights`).
    pub nested_language_model: bool,
    /// A `*ForSequenceClassification` checkpoint: the decoder plus a `score` head over the
    /// last token's hidden state (classifiers, reward models); it classifies, never
    /// generates.
    pub classifier: Option<ClassifierConfig>,
    /// The dtype the checkpoint was saved in, if it says.
    pub checkpoint_dtype: Option<String>,
    /// How the checkpoint's weights are quantized, if they are (expanded at load).
    pub quantization: Option<Quantization>,
    pub eos_token_ids: Vec<u32>,
    pub bos_token_id: Option<u32>,
}

fn token_ids(v: &Option<serde_json::Value>) -> Vec<u32> {
    match v {
        Some(serde_json::Value::Number(n)) => {
            n.as_u64().map(|x| vec![x as u32]).unwrap_or_default()
        }
        Some(serde_json::Value::Array(a)) => a
            .iter()
            .filter_map(|x| x.as_u64())
            .map(|x| x as u32)
            .collect(),
        _ => Vec::new(),
    }
}

impl ModelConfig {
    pub fn from_file(path: &Path) -> Result<Self> {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        Self::from_json(&text).with_context(|| format!("in {}", path.display()))
    }

    pub fn from_json(text: &str) -> Result<Self> {
        let value: serde_json::Value = serde_json::from_str(&super::python_json::strict_json(text))
            .context("config.json is not JSON")?;
        let (mut value, nested_language_model) = language_model_config(value)?;
        super::rope_parameters::lift_rope_parameters(&mut value);
        // Configs saved by recent transformers name the scaling twice (`rope_type` and the
        // older `type`, which it keeps): the newer name wins.
        if let Some(scaling) = value
            .get_mut("rope_scaling")
            .and_then(serde_json::Value::as_object_mut)
        {
            if scaling.contains_key("rope_type") {
                scaling.remove("type");
            }
        }
        let value = match value["architectures"][0].as_str() {
            Some("GPT2LMHeadModel" | "GPTBigCodeForCausalLM") => {
                super::gpt2::normalized_config(value)?
            }
            Some("OPTForCausalLM") => super::opt::normalized_config(value)?,
            Some("GPTJForCausalLM") => super::gptj::normalized_config(value)?,
            Some("FalconForCausalLM" | "RWForCausalLM") => super::falcon::normalized_config(value)?,
            Some("GPTNeoForCausalLM") => super::gpt_neo::normalized_config(value)?,
            Some("BloomForCausalLM") => super::bloom::normalized_config(value)?,
            Some("MptForCausalLM" | "MPTForCausalLM") => super::mpt::normalized_config(value)?,
            Some("HunYuanMoEV1ForCausalLM") => super::hunyuan::normalized_moe_config(value)?,
            Some("Llama4ForCausalLM") => super::llama4::normalized_config(value)?,
            Some("Lfm2ForCausalLM") => super::lfm2::normalized_config(value)?,
            Some("Lfm2MoeForCausalLM") => super::lfm2::normalized_moe_config(value)?,
            Some("BambaForCausalLM") => super::mamba::normalized_bamba_config(value)?,
            Some("GraniteMoeHybridForCausalLM") => {
                super::mamba::normalized_granite_hybrid_config(value)?
            }
            Some("Mamba2ForCausalLM") => super::mamba::normalized_mamba2_config(value)?,
            Some("Qwen3NextForCausalLM") => super::qwen3_next::normalized_config(value)?,
            Some("MambaForCausalLM" | "FalconMambaForCausalLM") => {
                super::mamba1::normalized_config(value)?
            }
            Some("JambaForCausalLM") => super::mamba1::normalized_jamba_config(value)?,
            Some("FalconH1ForCausalLM") => super::falcon_h1::normalized_config(value)?,
            Some("NemotronHForCausalLM") => super::nemotron_h::normalized_config(value)?,
            _ => value,
        };
        let raw: RawConfig = serde_json::from_value(value.clone())
            .context("config.json is not a valid model config")?;
        let arch_name = raw
            .architectures
            .first()
            .context("config.json has no 'architectures' entry")?;
        // A classifier is its causal LM's decoder with a score head instead of the LM head.
        let (arch_name, classifier) = match arch_name.strip_suffix("ForSequenceClassification") {
            Some(stem) => (
                format!("{stem}ForCausalLM"),
                Some(ClassifierConfig::from_config(&value)?),
            ),
            None => (arch_name.clone(), None),
        };
        let architecture = Architecture::from_hf(&arch_name)?;
        let gemma = GemmaConfig::from_raw(architecture, &raw)?;
        let falcon =
            (architecture == Architecture::Falcon).then(|| super::falcon::FalconLayer::of(&value));
        let falcon_bias = falcon.is_some_and(|f| f.bias);
        // GPT-NeoX's parallel layer (use_parallel_residual, transformers' default) reads a
        // norm per block.
        let neox_parallel =
            architecture == Architecture::GptNeoX && raw.use_parallel_residual.unwrap_or(true);
        match (&raw.hidden_act, &raw.hidden_activation, architecture) {
            // `hidden_activation` overrides the legacy `hidden_act` (Gemma's hub configs say
            // `gelu` there and `gelu_pytorch_tanh` here).
            (_, Some(act), Architecture::Gemma | Architecture::Gemma2 | Architecture::Gemma3)
            | (
                Some(act),
                None,
                Architecture::Gemma | Architecture::Gemma2 | Architecture::Gemma3,
            ) => {
                anyhow::ensure!(
                    act == "gelu_pytorch_tanh",
                    "unsupported hidden_activation '{act}' for Gemma (only gelu_pytorch_tanh)"
                )
            }
            (
                Some(_),
                _,
                Architecture::Starcoder2
                | Architecture::Phi
                | Architecture::GptNeoX
                | Architecture::Gpt2
                | Architecture::GptBigCode
                | Architecture::GptJ
                | Architecture::Opt
                | Architecture::Falcon
                | Architecture::Arcee
                | Architecture::Nemotron
                | Architecture::NemotronH
                | Architecture::GptNeo
                | Architecture::Bloom
                | Architecture::Mpt
                | Architecture::Apertus,
            ) => {}
            (Some(act), _, _) => {
                anyhow::ensure!(act == "silu", "unsupported hidden_act '{act}' (only silu)")
            }
            _ => {}
        }
        // Arcee's and Nemotron's ungated MLPs take them; the gated one does not.
        let ungated_relu2 = matches!(
            architecture,
            Architecture::Arcee
                | Architecture::Nemotron
                | Architecture::NemotronH
                | Architecture::Apertus
        );
        anyhow::ensure!(
            raw.mlp_bias != Some(true) || ungated_relu2,
            "MLP biases (mlp_bias) are not supported"
        );
        // ERNIE 4.5's use_bias covers its MLP too.
        anyhow::ensure!(
            !(matches!(
                architecture,
                Architecture::Ernie45 | Architecture::Ernie45Moe
            ) && raw.use_bias == Some(true)),
            "ERNIE 4.5 with biases (use_bias: true) is not supported"
        );
        let num_kv_heads = raw.num_key_value_heads.unwrap_or(raw.num_attention_heads);
        anyhow::ensure!(
            raw.num_attention_heads > 0 && num_kv_heads > 0,
            "head counts must be positive"
        );
        anyhow::ensure!(
            raw.num_attention_heads.is_multiple_of(num_kv_heads),
            "num_attention_heads {} is not a multiple of num_key_value_heads {num_kv_heads}",
            raw.num_attention_heads
        );
        // DeepSeek's latent attention runs as ordinary heads of q's and k's size, each with
        // its own (decompressed) key and value, its rope part rotating (`mla.rs`).
        let mla = match architecture {
            Architecture::DeepseekV2 | Architecture::DeepseekV3 => {
                Some(super::mla::MlaConfig::from_value(&value)?)
            }
            _ => None,
        };
        let num_kv_heads = if mla.is_some() {
            raw.num_attention_heads
        } else {
            num_kv_heads
        };
        let head_dim = match &mla {
            Some(m) => m.qk_head_dim(),
            None => raw
                .head_dim
                .unwrap_or(raw.hidden_size / raw.num_attention_heads),
        };
        anyhow::ensure!(
            head_dim.is_multiple_of(2),
            "head_dim {head_dim} must be even for rotary embeddings"
        );
        // As HF: the first int(head_dim * factor) values of each head rotate.
        let factor = match &mla {
            Some(m) => m.qk_rope_head_dim as f64 / head_dim as f64,
            // GlmConfig's and NemotronConfig's default is half the head, StableLmConfig's a
            // quarter.
            None => raw
                .partial_rotary_factor
                .or(raw.rotary_pct)
                .unwrap_or(match architecture {
                    Architecture::Glm | Architecture::Nemotron => 0.5,
                    Architecture::StableLm => 0.25,
                    _ => 1.0,
                }),
        };
        let rotary_dim = match &mla {
            Some(m) => m.qk_rope_head_dim,
            None => (head_dim as f64 * factor) as usize,
        };
        anyhow::ensure!(
            factor > 0.0 && factor <= 1.0 && rotary_dim > 0 && rotary_dim.is_multiple_of(2),
            "partial_rotary_factor {factor} gives {rotary_dim} rotary dims of head_dim \
             {head_dim} (must be even and positive)"
        );
        let sliding_window = match (architecture, raw.use_sliding_window) {
            // Qwen2/3 only slide when use_sliding_window says so.
            (
                Architecture::Qwen2
                | Architecture::Qwen3
                | Architecture::Qwen3Moe
                | Architecture::Qwen2Moe
                | Architecture::SmolLM3,
                Some(false) | None,
            ) => None,
            (Architecture::SmolLM3, Some(true)) => anyhow::bail!(
                "SmolLM3 with use_sliding_window is not supported (per-layer sliding windows)"
            ),
            _ => raw.sliding_window,
        };
        let mut moe = MoeConfig::from_raw(architecture, &raw)?;
        // HunYuan's NTK-alpha rotary is a fixed, larger base (up to max_position_embeddings,
        // past which transformers would rescale it dynamically; kiln's context stops there).
        let hunyuan = matches!(
            architecture,
            Architecture::HunYuanDense | Architecture::HunYuanMoe
        );
        let ntk_alpha = match &raw.rope_scaling {
            Some(s) if hunyuan && s.rope_type == "dynamic" => s.alpha.filter(|&a| a != 0.0),
            _ => None,
        };
        if hunyuan {
            for key in ["use_cla", "use_mla"] {
                anyhow::ensure!(
                    value.get(key).and_then(serde_json::Value::as_bool) != Some(true),
                    "Hunyuan with {key} is not supported"
                );
            }
        }
        let nemotron_h = match architecture {
            Architecture::NemotronH => {
                let blocks = super::nemotron_h::NemotronHBlocks::from_config(&value)?;
                // Its pattern says which layers' MLPs are experts (none: a dense model).
                moe = blocks.sparse_moe(moe)?;
                Some(blocks)
            }
            _ => None,
        };
        let granite = matches!(
            architecture,
            Architecture::Granite
                | Architecture::GraniteMoe
                | Architecture::GraniteMoeShared
                | Architecture::GraniteMoeHybrid
        )
        .then(|| GraniteScales {
            embedding: raw.embedding_multiplier.unwrap_or(1.0),
            // transformers' default, like the others.
            attention: raw.attention_multiplier.unwrap_or(1.0),
            residual: raw.residual_multiplier.unwrap_or(1.0),
            logits: raw.logits_scaling.unwrap_or(1.0),
        });
        if let Some(g) = &granite {
            anyhow::ensure!(g.logits != 0.0, "logits_scaling must not be zero");
        }
        // Command R7B and EXAONE 4: three sliding layers to one global
        // (`sliding_window_pattern` in older configs); the global ones do not rotate.
        let cohere2_sliding = match parse_layer_types(&raw)? {
            Some(sliding) => sliding,
            None => {
                let pattern = raw.sliding_window_pattern.unwrap_or(4).max(1);
                (0..raw.num_hidden_layers)
                    .map(|i| (i + 1) % pattern != 0)
                    .collect()
            }
        };
        let rope_layers = match (architecture, &raw.no_rope_layers) {
            (Architecture::Cohere2, _) => Some(cohere2_sliding.clone()),
            // EXAONE 4 without a window rotates every layer.
            (Architecture::Exaone4, _) => raw
                .sliding_window
                .is_some()
                .then(|| cohere2_sliding.clone()),
            // GPT-2's positions are learned embeddings, ALiBi's are biases: no layer rotates.
            (
                Architecture::Gpt2
                | Architecture::GptBigCode
                | Architecture::Opt
                | Architecture::GptNeo
                | Architecture::Bloom
                | Architecture::Mpt,
                _,
            ) => Some(vec![false; raw.num_hidden_layers]),
            (Architecture::Falcon, _) if falcon.is_some_and(|f| f.alibi) => {
                Some(vec![false; raw.num_hidden_layers])
            }
            (Architecture::Llama4, _) => {
                Some(super::llama4::rope_layers(&value, raw.num_hidden_layers)?)
            }
            (Architecture::GraniteMoeHybrid, _)
                if !super::mamba::granite_hybrid_rotates(&value) =>
            {
                Some(vec![false; raw.num_hidden_layers])
            }
            // Jamba's and Nemotron-H's attention has no positions (their Mamba layers order
            // the tokens).
            (Architecture::Jamba | Architecture::NemotronH, _) => {
                Some(vec![false; raw.num_hidden_layers])
            }
            (Architecture::SmolLM3, Some(flags)) => {
                anyhow::ensure!(
                    flags.len() == raw.num_hidden_layers,
                    "no_rope_layers has {} entries for {} layers",
                    flags.len(),
                    raw.num_hidden_layers
                );
                Some(flags.iter().map(|&f| f != 0).collect())
            }
            // transformers' default: every `no_rope_layer_interval`-th layer is NoPE.
            (Architecture::SmolLM3, None) => {
                let every = raw.no_rope_layer_interval.unwrap_or(4).max(1);
                Some(
                    (0..raw.num_hidden_layers)
                        .map(|i| (i + 1) % every != 0)
                        .collect(),
                )
            }
            _ => None,
        };
        // StarCoder2's use_bias (transformers' default true) covers its MLP too; Phi always
        // has biases.
        let starcoder2_bias = architecture == Architecture::Phi
            || (architecture == Architecture::Starcoder2 && raw.use_bias.unwrap_or(true));
        // GPT-NeoX's attention_bias (default true) covers q/k/v and the output projection;
        // its MLP always has biases.
        let neox_attention_bias = (architecture == Architecture::GptNeoX
            && raw.attention_bias.unwrap_or(true))
            || matches!(
                architecture,
                Architecture::Gpt2 | Architecture::GptBigCode | Architecture::Opt
            );
        anyhow::ensure!(
            !(architecture == Architecture::Phi && raw.qk_layernorm == Some(true)),
            "{architecture:?}'s q/k LayerNorms (qk_layernorm) are not supported"
        );
        anyhow::ensure!(
            !(architecture == Architecture::Cohere2 && raw.use_qk_norm == Some(true)),
            "Cohere2's per-head q/k LayerNorms (use_qk_norm) are not supported"
        );
        let qk_layer_norm = (architecture == Architecture::Cohere && raw.use_qk_norm == Some(true))
            || (architecture == Architecture::StableLm && raw.qk_layernorm == Some(true));
        anyhow::ensure!(raw.logit_scale != Some(0.0), "logit_scale must not be zero");
        anyhow::ensure!(
            raw.clip_qkv.is_none(),
            "clip_qkv (clamped q / k / v projections) is not supported"
        );
        let ungated_mlp = match architecture {
            Architecture::Opt => {
                let act = raw.hidden_act.as_deref().unwrap_or("relu");
                Some(crate::backend::image_ops::Activation::from_hf(act)?)
            }
            Architecture::Gpt2
            | Architecture::GptBigCode
            | Architecture::GptJ
            | Architecture::GptNeo => {
                let act = raw.hidden_act.as_deref().unwrap_or("gelu_new");
                Some(crate::backend::image_ops::Activation::from_hf(act)?)
            }
            Architecture::Bloom => {
                let act = raw.hidden_act.as_deref().unwrap_or("gelu_pytorch_tanh");
                Some(crate::backend::image_ops::Activation::from_hf(act)?)
            }
            Architecture::Apertus => {
                let act = raw.hidden_act.as_deref().unwrap_or("xielu");
                Some(crate::backend::image_ops::Activation::from_hf(act)?)
            }
            Architecture::Arcee | Architecture::Nemotron | Architecture::NemotronH => {
                let act = raw.hidden_act.as_deref().unwrap_or("relu2");
                Some(crate::backend::image_ops::Activation::from_hf(act)?)
            }
            Architecture::GptNeoX | Architecture::Falcon | Architecture::Mpt => {
                let act = raw.hidden_act.as_deref().unwrap_or("gelu");
                Some(crate::backend::image_ops::Activation::from_hf(act)?)
            }
            Architecture::Phi => {
                let act = raw.hidden_act.as_deref().unwrap_or("gelu_new");
                Some(crate::backend::image_ops::Activation::from_hf(act)?)
            }
            Architecture::Starcoder2 => {
                anyhow::ensure!(
                    raw.use_bias != Some(false),
                    "StarCoder2 without biases (use_bias: false) is not supported"
                );
                let act = raw.hidden_act.as_deref().unwrap_or("gelu_pytorch_tanh");
                Some(crate::backend::image_ops::Activation::from_hf(act)?)
            }
            _ => None,
        };
        Ok(ModelConfig {
            architecture,
            hidden_size: raw.hidden_size,
            intermediate_size: raw.intermediate_size,
            num_layers: raw.num_hidden_layers,
            num_heads: raw.num_attention_heads,
            num_kv_heads,
            head_dim,
            vocab_size: raw.vocab_size,
            // OLMo's parameter-free LayerNorm has its epsilon built in.
            rms_norm_eps: if architecture == Architecture::Olmo {
                1e-5
            } else {
                raw.norm_epsilon
                    .or(raw.layer_norm_eps)
                    .unwrap_or(raw.rms_norm_eps)
            },
            rope_theta: match (architecture, &ntk_alpha) {
                (Architecture::GptNeoX, _) => raw.rotary_emb_base.unwrap_or(raw.rope_theta),
                (_, Some(alpha)) => {
                    let d = head_dim as f64;
                    raw.rope_theta * alpha.powf(d / (d - 2.0))
                }
                _ => raw.rope_theta,
            },
            rope_scaling: super::rope::resolve_scaling(
                raw.rope_scaling.clone().filter(|_| ntk_alpha.is_none()),
                architecture,
                raw.original_max_position_embeddings,
                raw.max_position_embeddings,
                rotary_dim,
            )?,
            max_position_embeddings: raw.max_position_embeddings,
            context_len: raw.max_position_embeddings,
            tie_word_embeddings: raw
                .tie_word_embeddings
                .unwrap_or(architecture.ties_embeddings_by_default()),
            qkv_bias: matches!(
                architecture,
                Architecture::Qwen2 | Architecture::Qwen2Moe | Architecture::Bloom
            ) || (architecture == Architecture::StableLm
                && raw.use_qkv_bias == Some(true))
                || falcon_bias
                || starcoder2_bias
                || neox_attention_bias
                || raw.attention_bias.unwrap_or(matches!(
                    architecture,
                    Architecture::SeedOss | Architecture::Glm
                )),
            qk_norm: matches!(
                architecture,
                Architecture::Qwen3
                    | Architecture::Qwen3Moe
                    | Architecture::Gemma3
                    | Architecture::Olmo2
                    | Architecture::Olmo3
                    | Architecture::Olmoe
                    | Architecture::Exaone4
                    | Architecture::Apertus
                    | Architecture::Dots1
                    | Architecture::HunYuanDense
                    | Architecture::HunYuanMoe
                    | Architecture::Qwen3Next
            ) || (architecture == Architecture::Glm4Moe && raw.use_qk_norm == Some(true))
                || (architecture == Architecture::Llama4 && raw.use_qk_norm.unwrap_or(true))
                || architecture == Architecture::Lfm2
                || qk_layer_norm,
            qk_norm_whole: matches!(
                architecture,
                Architecture::Olmo2 | Architecture::Olmo3 | Architecture::Olmoe
            ),
            qk_norm_after_rope: hunyuan || architecture == Architecture::Llama4,
            qk_norm_unweighted: architecture == Architecture::Llama4,
            qk_layer_norm,
            rotary_dim,
            post_norm: matches!(
                architecture,
                Architecture::Olmo2 | Architecture::Olmo3 | Architecture::Exaone4
            ),
            sliding_window,
            sliding_layers: match architecture {
                // MinistralConfig's default: every layer slides when there is a window.
                Architecture::GptOss | Architecture::GptNeo | Architecture::Ministral => {
                    parse_layer_types(&raw)?
                }
                // Qwen2Config's and Qwen3Config's: layers from max_window_layers on slide
                // (their MoE models slide every layer); Dots1Config's the same, from 62.
                Architecture::Qwen2 | Architecture::Qwen3 | Architecture::Dots1 => {
                    Some(parse_layer_types(&raw)?.unwrap_or_else(|| {
                        let full = raw.max_window_layers.unwrap_or(match architecture {
                            Architecture::Dots1 => 62,
                            _ => 28,
                        });
                        (0..raw.num_hidden_layers).map(|i| i >= full).collect()
                    }))
                }
                Architecture::Exaone4 => Some(cohere2_sliding.clone()),
                Architecture::Cohere2 => Some(cohere2_sliding.clone()),
                // transformers' default: every fourth layer is a full one.
                Architecture::Olmo3 => Some(parse_layer_types(&raw)?.unwrap_or_else(|| {
                    (0..raw.num_hidden_layers)
                        .map(|i| (i + 1) % 4 != 0)
                        .collect()
                })),
                _ => None,
            },
            o_bias: matches!(
                architecture,
                Architecture::GptOss | Architecture::GptNeo | Architecture::Bloom
            ) || (architecture.attention_bias_covers_o()
                && raw.attention_bias == Some(true))
                || falcon_bias
                || starcoder2_bias
                || neox_attention_bias
                || raw.attention_out_bias == Some(true),
            layer_norm: matches!(
                architecture,
                Architecture::Starcoder2
                    | Architecture::Cohere
                    | Architecture::Cohere2
                    | Architecture::Phi
                    | Architecture::GptNeoX
                    | Architecture::Gpt2
                    | Architecture::GptBigCode
                    | Architecture::GptJ
                    | Architecture::Opt
                    | Architecture::Olmo
                    | Architecture::Falcon
                    | Architecture::Nemotron
                    | Architecture::StableLm
                    | Architecture::GptNeo
                    | Architecture::Bloom
                    | Architecture::Mpt
                    | Architecture::PhiMoe
            ),
            parallel_block: matches!(
                architecture,
                Architecture::Cohere
                    | Architecture::Cohere2
                    | Architecture::Phi
                    | Architecture::GptJ
            ) || neox_parallel
                || falcon.is_some_and(|f| f.parallel)
                || (architecture == Architecture::StableLm
                    && raw.use_parallel_residual == Some(true)),
            parallel_two_norms: neox_parallel || falcon.is_some_and(|f| f.two_norms),
            ungated_mlp_bias: match architecture {
                Architecture::Falcon => falcon_bias,
                Architecture::Mpt => false,
                Architecture::Arcee
                | Architecture::Nemotron
                | Architecture::NemotronH
                | Architecture::Apertus => raw.mlp_bias.unwrap_or(false),
                _ => true,
            },
            logit_scale: match architecture {
                // CohereConfig's default.
                Architecture::Cohere | Architecture::Cohere2 => {
                    Some(raw.logit_scale.unwrap_or(0.0625))
                }
                _ => None,
            },
            ungated_mlp,
            attention_sinks: architecture == Architecture::GptOss,
            embedding_norm: architecture == Architecture::Bloom,
            lm_head_bias: matches!(architecture, Architecture::Phi | Architecture::GptJ)
                || (architecture == Architecture::PhiMoe && raw.lm_head_bias == Some(true)),
            alibi: match architecture {
                Architecture::Bloom => Some(Alibi {
                    max_bias: 8.0,
                    scaled_by_head_dim: false,
                }),
                Architecture::Mpt => Some(Alibi {
                    max_bias: raw.alibi_bias_max.unwrap_or(8.0),
                    scaled_by_head_dim: false,
                }),
                Architecture::Falcon if falcon.is_some_and(|f| f.alibi) => Some(Alibi {
                    max_bias: 8.0,
                    scaled_by_head_dim: true,
                }),
                _ => None,
            },
            score_scale: match architecture {
                // GPT-Neo's scores are not scaled.
                Architecture::GptNeo => Some(1.0),
                Architecture::Mpt => raw.softmax_scale,
                _ => None,
            },
            learned_positions: match architecture {
                Architecture::Gpt2 | Architecture::GptBigCode | Architecture::GptNeo => Some(0),
                Architecture::Opt => Some(super::opt::POSITION_OFFSET),
                _ => None,
            },
            mla,
            moe,
            gemma,
            granite,
            rope_layers,
            short_conv: match architecture {
                Architecture::Lfm2 => {
                    Some(super::lfm2::conv_layers(&value, raw.num_hidden_layers)?)
                }
                _ => None,
            },
            mamba: match architecture {
                Architecture::Bamba => Some(super::mamba::MambaLayers::from_config(
                    &value,
                    raw.hidden_size,
                    super::mamba::bamba_layers(&value, raw.num_hidden_layers),
                )?),
                Architecture::GraniteMoeHybrid => Some(super::mamba::MambaLayers::from_config(
                    &value,
                    raw.hidden_size,
                    super::mamba::granite_hybrid_layers(&value, raw.num_hidden_layers)?,
                )?),
                Architecture::NemotronH => Some(super::mamba::MambaLayers::from_config(
                    &value,
                    raw.hidden_size,
                    nemotron_h
                        .as_ref()
                        .map(|b| b.mamba.clone())
                        .context("a Nemotron-H config without its block pairing")?,
                )?),
                Architecture::FalconH1 => Some(super::mamba::MambaLayers {
                    parallel: true,
                    ..super::mamba::MambaLayers::from_config(
                        &value,
                        raw.hidden_size,
                        vec![true; raw.num_hidden_layers],
                    )?
                }),
                Architecture::Mamba2 => Some(super::mamba::MambaLayers {
                    without_mlp: true,
                    ..super::mamba::MambaLayers::from_config(
                        &value,
                        raw.hidden_size,
                        vec![true; raw.num_hidden_layers],
                    )?
                }),
                _ => None,
            },
            gated_delta: match architecture {
                Architecture::Qwen3Next => Some(super::qwen3_next::GatedDeltaLayers::from_config(
                    &value,
                    raw.num_hidden_layers,
                )?),
                _ => None,
            },
            attention_output_gate: architecture == Architecture::Qwen3Next,
            nemotron_h,
            falcon_h1: match architecture {
                Architecture::FalconH1 => {
                    Some(super::falcon_h1::FalconH1Scales::from_config(&value)?)
                }
                _ => None,
            },
            selective: match architecture {
                Architecture::Mamba | Architecture::FalconMamba | Architecture::Jamba => Some(
                    super::mamba1::SelectiveLayers::from_config(&value, raw.num_hidden_layers)?,
                ),
                _ => None,
            },
            attention_chunks: match architecture {
                Architecture::Llama4 => {
                    super::llama4::attention_chunks(&value, raw.num_hidden_layers)?
                }
                _ => None,
            },
            query_temperature: match architecture {
                Architecture::Llama4 => super::llama4::query_temperature(&value),
                _ => None,
            },
            nested_language_model,
            classifier,
            quantization: Quantization::from_config(raw.quantization_config.as_ref())?,
            checkpoint_dtype: raw.torch_dtype.or(raw.dtype),
            eos_token_ids: token_ids(&raw.eos_token_id),
            bos_token_id: token_ids(&raw.bos_token_id).first().copied(),
        })
    }

    /// EOS ids of a generation_config.json (a number or a list).
    pub fn eos_from_generation_config(text: &str) -> Vec<u32> {
        let v: serde_json::Value = serde_json::from_str(text).unwrap_or_default();
        token_ids(&v.get("eos_token_id").cloned())
    }

    /// Which positions layer `i`'s queries see: Llama 4's chunk on its chunked layers, else
    /// the layer's sliding window ([`ModelConfig::layer_window`]) or the whole context.
    pub fn layer_key_window(&self, i: usize) -> KeyWindow {
        match &self.attention_chunks {
            Some(chunks) if chunks.layers.get(i).copied().unwrap_or(false) => {
                KeyWindow::Chunked(chunks.size)
            }
            _ => KeyWindow::sliding(self.layer_window(i)),
        }
    }

    /// Layer `i`'s attention window: Gemma 3's local layers only, every layer elsewhere.
    pub fn layer_window(&self, i: usize) -> Option<usize> {
        let sliding = match (&self.gemma, &self.sliding_layers) {
            (Some(g), _) => g.sliding_layers.get(i).copied().unwrap_or(false),
            (None, Some(layers)) => layers.get(i).copied().unwrap_or(false),
            (None, None) => true,
        };
        self.sliding_window.filter(|_| sliding)
    }

    /// Factors kiln folds into weights at load: `(q rows, block output projections)`.
    /// Granite's attention scale goes into the q rows (the attention applies
    /// head_dim^-0.5), its residual multiplier into o_proj and down_proj; Gemma 2's query
    /// scale into q (Gemma 3 folds it into its q norm). Anything added to those outputs (a
    /// LoRA update) takes the same factors.
    pub fn folded_scales(&self) -> (f64, f64) {
        if let Some(scale) = self.score_scale {
            // The attention applies head_dim^-0.5: the q rows carry the rest.
            return (scale * (self.head_dim as f64).sqrt(), 1.0);
        }
        match (&self.granite, &self.gemma) {
            (Some(g), _) => (g.attention * (self.head_dim as f64).sqrt(), g.residual),
            (None, Some(g)) if !self.qk_norm => (g.query_scale, 1.0),
            _ => (1.0, 1.0),
        }
    }

    /// Factors kiln folds into a dense MLP's gate and down projections: Falcon-H1's MLP
    /// multipliers, or the block output factor of [`ModelConfig::folded_scales`].
    pub fn mlp_scales(&self) -> (f64, f64) {
        match &self.falcon_h1 {
            Some(s) => (s.mlp[0], s.mlp[1]),
            None => (1.0, self.folded_scales().1),
        }
    }

    pub fn q_width(&self) -> usize {
        self.num_heads * self.head_dim
    }

    pub fn kv_width(&self) -> usize {
        self.num_kv_heads * self.head_dim
    }

    /// Parameter count, for memory planning and logs.
    /// Values one token keeps in the paged cache across all layers: K and V of each
    /// attention layer, one row of each of LFM2's convolution layers, nothing for Mamba
    /// mixers (whose per-sequence states [`ModelConfig::state_values_per_sequence`] counts).
    pub fn cache_values_per_token(&self) -> u64 {
        (0..self.num_layers)
            .map(|i| match (&self.short_conv, &self.mamba) {
                (Some(conv), _) if conv.is_conv(i) => self.hidden_size as u64,
                (_, Some(m)) if m.parallel => 2 * self.kv_width() as u64,
                _ if self.state_slot_values(i).is_some() => 0,
                _ => 2 * self.kv_width() as u64,
            })
            .sum()
    }

    /// f32 values each running sequence keeps besides its tokens' rows: the recurrent
    /// mixers' (Mamba-2's, the gated delta rule's) convolution windows and states.
    pub fn state_values_per_sequence(&self) -> u64 {
        (0..self.num_layers)
            .filter_map(|i| self.state_slot_values(i))
            .map(|v| v as u64)
            .sum()
    }

    /// Layers of the paged cache: one per layer, and after them one per mixer that runs
    /// beside its layer's attention (Falcon-H1's, whose states cannot share their layer's
    /// cache with its keys and values).
    pub fn cache_layers(&self) -> usize {
        match &self.mamba {
            Some(m) if m.parallel => {
                self.num_layers + (0..self.num_layers).filter(|&i| m.is_mamba(i)).count()
            }
            _ => self.num_layers,
        }
    }

    /// The f32 values of layer `i`'s state slot, when it is a recurrent mixer.
    pub fn state_slot_values(&self, i: usize) -> Option<usize> {
        match (&self.mamba, &self.gated_delta, &self.selective) {
            (Some(m), _, _) if m.is_mamba(i) => Some(m.shape.slot_values()),
            (_, Some(g), _) if g.is_mixer(i) => Some(g.shape.slot_values()),
            (_, _, Some(s)) if s.is_mixer(i) => Some(s.shape.slot_values()),
            _ => None,
        }
    }

    /// Whether the model keeps a recurrent state per sequence (Mamba-2 or gated delta rule
    /// mixers): it cannot be restored at a cached prefix or rolled back, so these models
    /// run without prefix caching, speculative decoding, embeddings or tensor parallelism.
    pub fn keeps_recurrent_state(&self) -> bool {
        self.mamba.is_some() || self.gated_delta.is_some() || self.selective.is_some()
    }

    /// Whether layer `i` has an MLP block after its mixer or attention (not in pure Mamba
    /// models, nor after a Nemotron-H mixer followed by another mixer).
    pub fn has_mlp(&self, i: usize) -> bool {
        match &self.nemotron_h {
            Some(blocks) => blocks.has_mlp(i),
            None => !self.mixer_only_layers(),
        }
    }

    /// Whether each layer is its norm and mixer alone, without an MLP (pure Mamba-1 and
    /// Mamba-2 models).
    pub fn mixer_only_layers(&self) -> bool {
        self.mamba.as_ref().is_some_and(|m| m.without_mlp)
            || self.selective.as_ref().is_some_and(|s| s.without_mlp)
    }

    pub fn num_parameters(&self) -> u64 {
        self.parameters(|m| m.num_experts)
    }

    /// Parameters one token's forward pass reads: for mixture-of-experts layers only its
    /// `top_k` experts (and the router). The weights a batch-1 decode step streams, for
    /// bandwidth rooflines; larger batches touch more experts.
    pub fn active_parameters(&self) -> u64 {
        self.parameters(|m| m.top_k)
    }

    /// Parameter count with `experts(moe)` experts per sparse layer.
    fn parameters(&self, experts: impl Fn(&MoeConfig) -> usize) -> u64 {
        let h = self.hidden_size as u64;
        // Qwen3-Next's q_proj gives a gate per q value too.
        let q_rows = self.q_width() * if self.attention_output_gate { 2 } else { 1 };
        let attn = match &self.mla {
            Some(m) => m.parameters(self.hidden_size, self.num_heads),
            None => h * (q_rows + 2 * self.kv_width()) as u64 + self.q_width() as u64 * h,
        };
        // An ungated MLP (StarCoder2) has two projections, the gated one three.
        let projections = if self.ungated_mlp.is_some() { 2 } else { 3 };
        let dense_mlp = projections * h * self.intermediate_size as u64;
        let layers: u64 = (0..self.num_layers)
            .map(|i| {
                let mlp = match &self.moe {
                    // Every expert's weights, and the router's.
                    Some(m) if m.is_sparse(i) => {
                        // Ungated experts (Nemotron 3's) have two projections.
                        let projections = if m.activation.is_gated() { 3 } else { 2 };
                        // The shared expert, and its gate where it has one.
                        let gate = if m.shared_expert_gated { h } else { 0 };
                        let shared = m
                            .shared_expert_intermediate_size
                            .map_or(0, |s| projections * h * s as u64 + gate);
                        // The experts' input width, and the latent projections around them.
                        let (width, latent) = match m.latent_size {
                            Some(l) => (l as u64, 2 * h * l as u64),
                            None => (h, 0),
                        };
                        experts(m) as u64 * projections * width * m.expert_intermediate_size as u64
                            + latent
                            + m.num_experts as u64 * h
                            + shared
                    }
                    _ => dense_mlp,
                };
                // LFM2's convolution layers: in_proj, the kernel, out_proj.
                let mixer = match (&self.short_conv, &self.mamba) {
                    (Some(conv), _) if conv.is_conv(i) => 4 * h * h + conv.taps as u64 * h,
                    // Falcon-H1's mixers run beside the attention.
                    (_, Some(m)) if m.is_mamba(i) => {
                        let s = &m.shape;
                        let (inner, conv) = (s.inner() as u64, s.conv_dim() as u64);
                        let norm = if s.normed { inner } else { 0 };
                        let beside = if m.parallel { attn } else { 0 };
                        h * s.projection_width() as u64
                            + conv * (s.taps as u64 + 1)
                            + 3 * s.heads as u64
                            + norm
                            + inner * h
                            + beside
                    }
                    // in_proj, the kernel (and bias), x_proj, dt_proj (and bias), A, D,
                    // out_proj; Jamba's norms of the step, B and C.
                    _ if self.selective.as_ref().is_some_and(|s| s.is_mixer(i)) => {
                        let layers = self.selective.as_ref().expect("matched");
                        let s = &layers.shape;
                        let inner = s.inner as u64;
                        let norms = if layers.weighted_norms() {
                            s.x_proj_width() as u64
                        } else {
                            0
                        };
                        h * 2 * inner
                            + inner * (s.taps as u64 + 1)
                            + inner * s.x_proj_width() as u64
                            + inner * (s.dt_rank as u64 + 1)
                            + inner * (s.state as u64 + 1)
                            + inner * h
                            + norms
                    }
                    // The in-projections, the kernel, dt_bias and A_log, the norm, out_proj.
                    _ if self.gated_delta.as_ref().is_some_and(|g| g.is_mixer(i)) => {
                        let s = &self.gated_delta.as_ref().expect("matched").shape;
                        h * s.projection_width() as u64
                            + (s.conv_dim() * s.taps) as u64
                            + 2 * s.v_heads as u64
                            + s.v_dim as u64
                            + s.value_dim() as u64 * h
                    }
                    _ => attn,
                };
                // A layer without an MLP has one norm.
                if !self.has_mlp(i) {
                    return mixer + h;
                }
                mixer + mlp + 2 * h
            })
            .sum();
        let embed = self.vocab_size as u64 * h;
        let head = if self.tie_word_embeddings { 0 } else { embed };
        layers + embed + head + h
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn phi_runs_a_parallel_layer_with_biases_and_partial_rotary() {
        // microsoft/phi-2's config.json.
        let c = ModelConfig::from_json(
            r#"{"architectures": ["PhiForCausalLM"], "hidden_act": "gelu_new",
            "hidden_size": 2560, "intermediate_size": 10240, "layer_norm_eps": 1e-05,
            "max_position_embeddings": 2048, "model_type": "phi", "num_attention_heads": 32,
            "num_hidden_layers": 32, "num_key_value_heads": 32, "partial_rotary_factor": 0.4,
            "qk_layernorm": false, "rope_theta": 10000.0, "tie_word_embeddings": false,
            "vocab_size": 51200}"#,
        )
        .unwrap();
        assert_eq!(c.architecture, Architecture::Phi);
        assert!(c.parallel_block && c.layer_norm && c.qkv_bias && c.o_bias);
        assert_eq!(c.rotary_dim, 32);
        assert_eq!(
            c.ungated_mlp,
            Some(crate::backend::image_ops::Activation::GeluTanh)
        );
        let billions = c.num_parameters() as f64 / 1e9;
        assert!((billions - 2.78).abs() < 0.05, "{billions}");
        let qk = r#"{"architectures": ["PhiForCausalLM"], "hidden_size": 64,
            "intermediate_size": 128, "num_attention_heads": 4, "num_hidden_layers": 1,
            "vocab_size": 32, "qk_layernorm": true}"#;
        assert!(ModelConfig::from_json(qk).is_err());
    }

    #[test]
    fn olmoe_has_whole_projection_qk_norms_and_intermediate_sized_experts() {
        // allenai/OLMoE-1B-7B-0924's config.json.
        let c = ModelConfig::from_json(
            r#"{"architectures": ["OlmoeForCausalLM"], "hidden_size": 2048,
            "intermediate_size": 1024, "num_attention_heads": 16, "num_hidden_layers": 16,
            "num_key_value_heads": 16, "num_experts": 64, "num_experts_per_tok": 8,
            "norm_topk_prob": false, "rms_norm_eps": 1e-05, "rope_theta": 10000.0,
            "vocab_size": 50304, "clip_qkv": null, "model_type": "olmoe"}"#,
        )
        .unwrap();
        assert_eq!(c.architecture, Architecture::Olmoe);
        assert!(c.qk_norm && c.qk_norm_whole && !c.post_norm);
        let moe = c.moe.as_ref().unwrap();
        assert_eq!(
            (moe.num_experts, moe.top_k, moe.expert_intermediate_size),
            (64, 8, 1024)
        );
        assert!(!moe.normalize_top_k);
        let billions = c.num_parameters() as f64 / 1e9;
        assert!((billions - 6.9).abs() < 0.1, "{billions}");
        let clipped = r#"{"architectures": ["OlmoeForCausalLM"], "hidden_size": 64,
            "intermediate_size": 32, "num_attention_heads": 4, "num_hidden_layers": 1,
            "vocab_size": 32, "num_experts": 4, "clip_qkv": 8.0}"#;
        assert!(ModelConfig::from_json(clipped).is_err());
    }

    #[test]
    fn cohere_runs_a_parallel_layer_with_scaled_logits() {
        // CohereForAI/c4ai-command-r-v01's config.json.
        let c = ModelConfig::from_json(
            r#"{"architectures": ["CohereForCausalLM"], "hidden_size": 8192,
            "intermediate_size": 22528, "layer_norm_eps": 1e-05, "logit_scale": 0.0625,
            "max_position_embeddings": 131072, "num_attention_heads": 64,
            "num_hidden_layers": 40, "num_key_value_heads": 64, "rope_theta": 8000000.0,
            "use_qk_norm": false, "vocab_size": 256000, "model_type": "cohere"}"#,
        )
        .unwrap();
        assert_eq!(c.architecture, Architecture::Cohere);
        assert!(c.parallel_block && c.layer_norm && c.tie_word_embeddings);
        assert!(!c.qkv_bias && c.ungated_mlp.is_none());
        assert_eq!(c.logit_scale, Some(0.0625));
        let billions = c.num_parameters() as f64 / 1e9;
        assert!((billions - 34.9).abs() < 0.3, "{billions}");
        // Command R7B (an older config: sliding_window_pattern instead of layer_types):
        // three sliding, rotating layers to one global layer without rotation.
        let c = ModelConfig::from_json(
            r#"{"architectures": ["Cohere2ForCausalLM"], "hidden_size": 4096,
            "intermediate_size": 14336, "num_attention_heads": 32, "num_hidden_layers": 8,
            "num_key_value_heads": 8, "vocab_size": 256000, "logit_scale": 0.25,
            "sliding_window": 4096, "sliding_window_pattern": 4, "rope_theta": 50000.0}"#,
        )
        .unwrap();
        assert_eq!(c.architecture, Architecture::Cohere2);
        assert!(c.parallel_block && c.layer_norm && c.tie_word_embeddings);
        assert_eq!(c.logit_scale, Some(0.25));
        let windows: Vec<_> = (0..8).map(|i| c.layer_window(i)).collect();
        let w = Some(4096);
        assert_eq!(windows, [w, w, w, None, w, w, w, None]);
        let rotates = c.rope_layers.clone().unwrap();
        assert_eq!(rotates, [true, true, true, false, true, true, true, false]);
        // CohereForAI/c4ai-command-r-plus's config.json: per-head q/k LayerNorms.
        let c = ModelConfig::from_json(
            r#"{"architectures": ["CohereForCausalLM"], "hidden_size": 12288,
            "intermediate_size": 33792, "layer_norm_eps": 1e-05, "logit_scale": 0.8333333333333334,
            "max_position_embeddings": 8192, "num_attention_heads": 96,
            "num_hidden_layers": 64, "num_key_value_heads": 8, "rope_theta": 75000000.0,
            "use_qk_norm": true, "vocab_size": 256000, "model_type": "cohere"}"#,
        )
        .unwrap();
        assert!(c.qk_norm && c.qk_layer_norm && !c.qk_norm_after_rope);
        let billions = c.num_parameters() as f64 / 1e9;
        assert!((billions - 103.8).abs() < 1.0, "{billions}");
        // Cohere2 has no such norms in transformers: refused, not ignored.
        let r7b = r#"{"architectures": ["Cohere2ForCausalLM"], "hidden_size": 64,
            "intermediate_size": 128, "num_attention_heads": 4, "num_hidden_layers": 1,
            "vocab_size": 32, "use_qk_norm": true}"#;
        let err = ModelConfig::from_json(r7b).unwrap_err();
        assert!(format!("{err:#}").contains("use_qk_norm"), "{err:#}");
    }

    #[test]
    fn stablelm_2_12b_has_per_head_qk_layer_norms() {
        // stabilityai/stablelm-2-12b's config.json.
        let c = ModelConfig::from_json(
            r#"{"architectures": ["StableLmForCausalLM"], "hidden_act": "silu",
            "hidden_size": 5120, "intermediate_size": 13824, "layer_norm_eps": 1e-05,
            "max_position_embeddings": 4096, "num_attention_heads": 32,
            "num_hidden_layers": 40, "num_key_value_heads": 8, "partial_rotary_factor": 0.25,
            "qk_layernorm": true, "rope_theta": 10000, "tie_word_embeddings": false,
            "use_parallel_residual": true, "use_qkv_bias": false, "vocab_size": 100352,
            "model_type": "stablelm"}"#,
        )
        .unwrap();
        assert!(c.qk_norm && c.qk_layer_norm && c.parallel_block && !c.qkv_bias);
        assert_eq!(c.rotary_dim, 40);
        let billions = c.num_parameters() as f64 / 1e9;
        assert!((billions - 12.1).abs() < 0.2, "{billions}");
    }

    #[test]
    fn starcoder2_has_layer_norms_biases_and_an_ungated_mlp() {
        // bigcode/starcoder2-3b's config.json.
        let c = ModelConfig::from_json(
            r#"{"architectures": ["Starcoder2ForCausalLM"], "hidden_act": "gelu_pytorch_tanh",
            "hidden_size": 3072, "intermediate_size": 12288, "max_position_embeddings": 16384,
            "norm_epsilon": 1e-05, "num_attention_heads": 24, "num_hidden_layers": 30,
            "num_key_value_heads": 2, "rope_theta": 999999.4420358813, "sliding_window": 4096,
            "use_bias": true, "vocab_size": 49152, "model_type": "starcoder2"}"#,
        )
        .unwrap();
        assert_eq!(c.architecture, Architecture::Starcoder2);
        assert!(c.layer_norm && c.qkv_bias && c.o_bias && c.tie_word_embeddings);
        assert_eq!(
            c.ungated_mlp,
            Some(crate::backend::image_ops::Activation::GeluTanh)
        );
        assert_eq!(c.rms_norm_eps, 1e-5);
        assert_eq!(c.layer_window(0), Some(4096));
        let billions = c.num_parameters() as f64 / 1e9;
        assert!((billions - 3.03).abs() < 0.05, "{billions}");
        let unbiased = r#"{"architectures": ["Starcoder2ForCausalLM"], "hidden_size": 64,
            "intermediate_size": 128, "num_attention_heads": 4, "num_hidden_layers": 1,
            "vocab_size": 32, "use_bias": false}"#;
        assert!(ModelConfig::from_json(unbiased).is_err());
    }

    #[test]
    fn qwen2_5_vl_hub_configs_run_their_top_level_text_fields_with_plain_rope() {
        // Qwen2.5-VL-3B-Instruct's config.json (the hub's layout: the text model's fields
        // at the top level), vision parts shortened.
        let c = ModelConfig::from_json(
            r#"{"architectures": ["Qwen2_5_VLForConditionalGeneration"],
            "model_type": "qwen2_5_vl", "hidden_size": 2048, "intermediate_size": 11008,
            "num_attention_heads": 16, "num_hidden_layers": 36, "num_key_value_heads": 2,
            "rms_norm_eps": 1e-06, "rope_theta": 1000000.0, "sliding_window": 32768,
            "use_sliding_window": false, "tie_word_embeddings": true, "vocab_size": 151936,
            "max_position_embeddings": 128000, "eos_token_id": 151645,
            "rope_scaling": {"type": "mrope", "mrope_section": [16, 24, 24]},
            "vision_config": {"depth": 32, "hidden_size": 1280, "out_hidden_size": 2048}}"#,
        )
        .unwrap();
        assert!(c.nested_language_model);
        assert_eq!(c.architecture, Architecture::Qwen2);
        assert!(c.qkv_bias && c.tie_word_embeddings);
        assert_eq!((c.num_heads, c.num_kv_heads, c.head_dim), (16, 2, 128));
        assert_eq!(
            c.rope_scaling, None,
            "text positions make mrope the plain rotation"
        );
        assert_eq!(c.layer_window(0), None);
        let billions = c.num_parameters() as f64 / 1e9;
        assert!((billions - 3.09).abs() < 0.1, "{billions}");
        // Qwen3-VL (transformers' layout: text_config), Qwen3's layers; the top level's
        // tie_word_embeddings holds where the text config says nothing.
        let c = ModelConfig::from_json(
            r#"{"architectures": ["Qwen3VLForConditionalGeneration"], "model_type": "qwen3_vl",
            "tie_word_embeddings": true,
            "text_config": {"hidden_size": 2560, "intermediate_size": 9728,
                "num_attention_heads": 32, "num_hidden_layers": 36, "num_key_value_heads": 8,
                "head_dim": 128, "vocab_size": 151936, "model_type": "qwen3_vl_text",
                "rope_scaling": {"rope_type": "default", "mrope_section": [24, 20, 20],
                    "mrope_interleaved": true}},
            "vision_config": {"depth": 24}}"#,
        )
        .unwrap();
        assert_eq!(c.architecture, Architecture::Qwen3);
        assert!(c.qk_norm && c.tie_word_embeddings);
        assert_eq!(c.rope_scaling, None);
        // Qwen3-VL-MoE: Qwen3-MoE's layers with stacked experts, always renormalised.
        let c = ModelConfig::from_json(
            r#"{"architectures": ["Qwen3VLMoeForConditionalGeneration"],
            "text_config": {"hidden_size": 2048, "num_attention_heads": 32,
                "num_hidden_layers": 48, "num_key_value_heads": 4, "num_experts": 128,
                "num_experts_per_tok": 8, "moe_intermediate_size": 768,
                "norm_topk_prob": false, "model_type": "qwen3_vl_moe_text"}}"#,
        )
        .unwrap();
        assert_eq!(c.architecture, Architecture::Qwen3Moe);
        let moe = c.moe.as_ref().unwrap();
        assert!(moe.stacked && moe.normalize_top_k);
        assert_eq!((moe.num_experts, moe.top_k), (128, 8));
        let plain = r#"{"architectures": ["Qwen3MoeForCausalLM"], "hidden_size": 64, "vocab_size": 32,
            "intermediate_size": 128, "num_attention_heads": 4, "num_hidden_layers": 1,
            "num_experts": 4, "moe_intermediate_size": 32, "model_type": "qwen3_moe"}"#;
        assert!(!ModelConfig::from_json(plain).unwrap().moe.unwrap().stacked);
        // InternVL3-8B-hf: a Qwen2 text model under transformers' defaults.
        let c = ModelConfig::from_json(
            r#"{"architectures": ["InternVLForConditionalGeneration"], "model_type": "internvl",
            "text_config": {"model_type": "qwen2", "hidden_size": 3584,
                "intermediate_size": 18944, "num_attention_heads": 28,
                "num_hidden_layers": 28, "num_key_value_heads": 4, "rope_theta": 1000000.0,
                "vocab_size": 151674},
            "vision_config": {"hidden_size": 1024}}"#,
        )
        .unwrap();
        assert_eq!(c.architecture, Architecture::Qwen2);
        assert!(c.qkv_bias && !c.tie_word_embeddings);
        assert_eq!((c.num_heads, c.num_kv_heads, c.head_dim), (28, 4, 128));
        // Multimodal RoPE over a scaled rotation is not the plain one: refused.
        let scaled = r#"{"architectures": ["Qwen2_5_VLForConditionalGeneration"],
            "hidden_size": 64, "num_attention_heads": 4, "num_hidden_layers": 1,
            "rope_scaling": {"type": "yarn", "factor": 4.0, "mrope_section": [4, 2, 2]}}"#;
        let err = ModelConfig::from_json(scaled).unwrap_err();
        assert!(format!("{err:#}").contains("multimodal RoPE"), "{err:#}");
    }

    #[test]
    fn a_multimodal_gemma3_config_runs_its_text_config_over_transformers_defaults() {
        // gemma-3-4b-it's config.json, vision parts shortened.
        let c = ModelConfig::from_json(
            r#"{"architectures": ["Gemma3ForConditionalGeneration"], "model_type": "gemma3",
            "eos_token_id": [1, 106], "torch_dtype": "bfloat16",
            "text_config": {"hidden_size": 2560, "intermediate_size": 10240,
                "model_type": "gemma3_text", "num_hidden_layers": 34,
                "rope_scaling": {"factor": 8.0, "rope_type": "linear"}, "sliding_window": 1024},
            "vision_config": {"hidden_size": 1152, "model_type": "siglip_vision_model"}}"#,
        )
        .unwrap();
        assert!(c.nested_language_model);
        assert_eq!(c.architecture, Architecture::Gemma3);
        assert_eq!((c.num_heads, c.num_kv_heads, c.head_dim), (8, 4, 256));
        assert_eq!(
            (c.hidden_size, c.num_layers, c.vocab_size),
            (2560, 34, 262208)
        );
        assert_eq!(c.eos_token_ids, [1, 106]);
        assert_eq!(c.layer_window(0), Some(1024));
        assert_eq!(c.layer_window(5), None);
        assert_eq!(c.rope_scaling.as_ref().unwrap().rope_type, "linear");
        let billions = c.num_parameters() as f64 / 1e9;
        assert!((billions - 3.88).abs() < 0.1, "{billions}");
    }

    #[test]
    fn mistral_small_3_1_runs_as_its_mistral_text_model() {
        // Mistral-Small-3.1-24B-Instruct-2503's config.json, vision parts shortened.
        let c = ModelConfig::from_json(
            r#"{"architectures": ["Mistral3ForConditionalGeneration"], "model_type": "mistral3",
            "torch_dtype": "bfloat16",
            "text_config": {"head_dim": 128, "hidden_act": "silu", "hidden_size": 5120,
                "intermediate_size": 32768, "max_position_embeddings": 131072,
                "model_type": "mistral", "num_attention_heads": 32, "num_hidden_layers": 40,
                "num_key_value_heads": 8, "rms_norm_eps": 1e-05, "rope_theta": 1000000000.0,
                "sliding_window": null, "vocab_size": 131072},
            "vision_config": {"hidden_size": 1024, "model_type": "pixtral"}}"#,
        )
        .unwrap();
        assert!(c.nested_language_model);
        assert_eq!(c.architecture, Architecture::Mistral);
        assert_eq!((c.num_heads, c.num_kv_heads, c.head_dim), (32, 8, 128));
        assert_eq!(c.sliding_window, None, "an explicit null is no window");
        assert_eq!(c.eos_token_ids, [2], "MistralConfig's default");
        let billions = c.num_parameters() as f64 / 1e9;
        assert!((billions - 23.57).abs() < 0.3, "{billions}");
    }

    /// `attention_bias` biases Llama's output projection too (transformers' LlamaAttention),
    /// but not GLM's or Helium's.
    #[test]
    fn attention_bias_reaches_o_proj_where_transformers_puts_it() {
        let json = |arch: &str| {
            format!(
                r#"{{"architectures": ["{arch}"], "hidden_size": 64, "intermediate_size": 128,
                "num_hidden_layers": 2, "num_attention_heads": 4, "vocab_size": 100,
                "attention_bias": true}}"#
            )
        };
        let c = ModelConfig::from_json(&json("LlamaForCausalLM")).unwrap();
        assert!(c.qkv_bias && c.o_bias);
        for arch in ["GlmForCausalLM", "HeliumForCausalLM"] {
            let c = ModelConfig::from_json(&json(arch)).unwrap();
            assert!(c.qkv_bias && !c.o_bias, "{arch}");
        }
        let c = ModelConfig::from_json(&json("LlamaForCausalLM").replace("true", "false")).unwrap();
        assert!(!c.qkv_bias && !c.o_bias);
    }

    /// Qwen2 / Qwen3 with `use_sliding_window` slide only from `max_window_layers` on (or
    /// where `layer_types` says), as transformers does; without it nothing slides.
    #[test]
    fn qwen_sliding_windows_start_at_max_window_layers() {
        let json = |extra: &str| {
            format!(
                r#"{{"architectures": ["Qwen2ForCausalLM"], "hidden_size": 64,
                "intermediate_size": 128, "num_hidden_layers": 4, "num_attention_heads": 4,
                "vocab_size": 100, "sliding_window": 16{extra}}}"#
            )
        };
        let c = ModelConfig::from_json(&json("")).unwrap();
        assert_eq!(
            c.layer_window(3),
            None,
            "use_sliding_window is off by default"
        );
        let c = ModelConfig::from_json(&json(
            r#", "use_sliding_window": true, "max_window_layers": 2"#,
        ))
        .unwrap();
        let windows: Vec<_> = (0..4).map(|i| c.layer_window(i)).collect();
        assert_eq!(windows, [None, None, Some(16), Some(16)]);
        // The default 28 keeps a 4-layer model full.
        let c = ModelConfig::from_json(&json(r#", "use_sliding_window": true"#)).unwrap();
        assert_eq!(c.layer_window(3), None);
        let c = ModelConfig::from_json(&json(
            r#", "use_sliding_window": true, "layer_types": ["sliding_attention",
            "full_attention", "full_attention", "full_attention"]"#,
        ))
        .unwrap();
        assert_eq!((c.layer_window(0), c.layer_window(1)), (Some(16), None));
    }

    /// microsoft/Phi-3.5-MoE-instruct's config.json as the hub has it (its factor lists cut
    /// to placeholders of the right length).
    #[test]
    fn the_phi_3_5_moe_hub_config_parses() {
        let factors = |v: f64| format!("[{}]", vec![v.to_string(); 64].join(", "));
        let text = format!(
            r#"{{"architectures": ["PhiMoEForCausalLM"], "attention_bias": true,
            "bos_token_id": 1, "eos_token_id": 32000, "hidden_act": "silu",
            "hidden_size": 4096, "input_jitter_noise": 0.01, "intermediate_size": 6400,
            "lm_head_bias": true, "max_position_embeddings": 131072, "model_type": "phimoe",
            "num_attention_heads": 32, "num_experts_per_tok": 2, "num_hidden_layers": 32,
            "num_key_value_heads": 8, "num_local_experts": 16,
            "original_max_position_embeddings": 4096, "rms_norm_eps": 1e-05,
            "rope_scaling": {{"long_factor": {long}, "long_mscale": 1.243163121016122,
                "original_max_position_embeddings": 4096, "short_factor": {short},
                "short_mscale": 1.243163121016122, "type": "longrope"}},
            "rope_theta": 10000.0, "router_aux_loss_coef": 0.0, "router_jitter_noise": 0.01,
            "sliding_window": 131072, "tie_word_embeddings": false, "vocab_size": 32064}}"#,
            long = factors(1.5),
            short = factors(1.0),
        );
        let c = ModelConfig::from_json(&text).unwrap();
        assert_eq!(c.architecture, Architecture::PhiMoe);
        assert!(c.layer_norm && c.qkv_bias && c.o_bias && c.lm_head_bias);
        let moe = c.moe.as_ref().unwrap();
        assert_eq!(
            (moe.num_experts, moe.top_k, moe.normalize_top_k),
            (16, 2, false)
        );
        assert_eq!(moe.scoring, RouterScoring::SparseMixer { jitter_eps: 0.01 });
        assert!((crate::model::rope::attention_factor(&c) - 1.243163121016122).abs() < 1e-12);
        let three = text.replace(r#""num_experts_per_tok": 2"#, r#""num_experts_per_tok": 3"#);
        let err = ModelConfig::from_json(&three).unwrap_err();
        assert!(format!("{err:#}").contains("SparseMixer"), "{err:#}");
    }

    /// rednote-hilab/dots.llm1.inst's config.json as the hub has it.
    #[test]
    fn the_dots_llm1_hub_config_parses() {
        let text = r#"{"architectures": ["Dots1ForCausalLM"], "attention_bias": false,
            "first_k_dense_replace": 1, "hidden_act": "silu", "hidden_size": 4096,
            "intermediate_size": 10944, "max_position_embeddings": 32768,
            "max_window_layers": 62, "model_type": "dots1", "moe_intermediate_size": 1408,
            "moe_layer_freq": 1, "n_routed_experts": 128, "n_shared_experts": 2,
            "norm_topk_prob": true, "num_attention_heads": 32, "num_experts_per_tok": 6,
            "num_hidden_layers": 62, "num_key_value_heads": 32, "rms_norm_eps": 1e-05,
            "rope_scaling": null, "rope_theta": 10000000, "routed_scaling_factor": 2.5,
            "sliding_window": null, "tie_word_embeddings": false, "torch_dtype": "bfloat16",
            "use_sliding_window": false, "vocab_size": 152064, "head_dim": 128,
            "scoring_func": "noaux_tc", "n_group": 1, "topk_group": 1}"#;
        let c = ModelConfig::from_json(text).unwrap();
        assert_eq!(c.architecture, Architecture::Dots1);
        assert!(c.qk_norm && !c.qkv_bias && !c.o_bias);
        assert_eq!(c.layer_window(61), None);
        let moe = c.moe.as_ref().unwrap();
        assert_eq!(
            (moe.num_experts, moe.top_k, moe.normalize_top_k),
            (128, 6, true)
        );
        assert_eq!(moe.shared_expert_intermediate_size, Some(2 * 1408));
        assert!(!moe.is_sparse(0) && moe.is_sparse(1) && moe.router_f32);
        let scoring = RouterScoring::SigmoidGrouped {
            groups: 1,
            top_groups: 1,
            scale: 2.5,
        };
        assert_eq!(moe.scoring, scoring);
    }

    /// transformers 4.57 saves `rope_scaling` with both `rope_type` and the older `type`.
    #[test]
    fn rope_scaling_may_name_its_type_twice() {
        let text = r#"{"architectures": ["LlamaForCausalLM"], "hidden_size": 64,
            "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
            "vocab_size": 100,
            "rope_scaling": {"type": "linear", "rope_type": "linear", "factor": 2.0}}"#;
        let c = ModelConfig::from_json(text).unwrap();
        let s = c.rope_scaling.unwrap();
        assert_eq!((s.rope_type.as_str(), s.factor), ("linear", Some(2.0)));
    }

    #[test]
    fn smollm3_drops_rope_on_every_fourth_layer_by_default() {
        let json = |extra: &str| {
            format!(
                r#"{{"architectures": ["SmolLM3ForCausalLM"], "hidden_size": 64,
                "intermediate_size": 128, "num_hidden_layers": 8, "num_attention_heads": 4,
                "vocab_size": 100{extra}}}"#
            )
        };
        let c = ModelConfig::from_json(&json("")).unwrap();
        let on = [true, true, true, false, true, true, true, false];
        assert_eq!(c.rope_layers.as_deref(), Some(&on[..]));
        let c = ModelConfig::from_json(&json(r#", "no_rope_layers": [1, 0, 0, 1, 1, 1, 1, 1]"#))
            .unwrap();
        assert_eq!(c.rope_layers.unwrap()[..3], [true, false, false]);
        assert!(ModelConfig::from_json(&json(r#", "use_sliding_window": true"#)).is_err());
        assert!(ModelConfig::from_json(&json(r#", "no_rope_layers": [1]"#)).is_err());
    }

    /// SmolLM3-3B's and gemma-2-9b-it's config.json leave `tie_word_embeddings` out; their
    /// config classes tie, so the published sizes (3.08B, 9.24B) count no separate head.
    #[test]
    fn an_absent_tie_word_embeddings_takes_the_config_classes_default() {
        let smollm3 = r#"{"architectures": ["SmolLM3ForCausalLM"], "hidden_size": 2048,
            "intermediate_size": 11008, "num_hidden_layers": 36, "num_attention_heads": 16,
            "num_key_value_heads": 4, "vocab_size": 128256, "rope_theta": 5000000.0}"#;
        let gemma2 = r#"{"architectures": ["Gemma2ForCausalLM"], "hidden_size": 3584,
            "intermediate_size": 14336, "num_hidden_layers": 42, "num_attention_heads": 16,
            "num_key_value_heads": 8, "head_dim": 256, "vocab_size": 256000,
            "hidden_activation": "gelu_pytorch_tanh", "query_pre_attn_scalar": 256,
            "sliding_window": 4096}"#;
        for (json, billions) in [(smollm3, 3.08), (gemma2, 9.24)] {
            let c = ModelConfig::from_json(json).unwrap();
            assert!(c.tie_word_embeddings);
            let got = c.num_parameters() as f64 / 1e9;
            assert!((got - billions).abs() < 0.02, "{got}");
        }
        let llama = r#"{"architectures": ["LlamaForCausalLM"], "hidden_size": 64,
            "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
            "vocab_size": 100}"#;
        assert!(!ModelConfig::from_json(llama).unwrap().tie_word_embeddings);
    }

    #[test]
    fn granite_multipliers_default_to_transformers_ones() {
        let json = |extra: &str| {
            format!(
                r#"{{"architectures": ["GraniteForCausalLM"], "hidden_size": 64,
                "intermediate_size": 128, "num_hidden_layers": 1, "num_attention_heads": 4,
                "vocab_size": 100{extra}}}"#
            )
        };
        let g = ModelConfig::from_json(&json("")).unwrap().granite.unwrap();
        assert_eq!(
            (g.embedding, g.attention, g.residual, g.logits),
            (1.0, 1.0, 1.0, 1.0)
        );
        let g = ModelConfig::from_json(&json(
            r#", "embedding_multiplier": 12.0,
            "attention_multiplier": 0.0078125, "residual_multiplier": 0.22,
            "logits_scaling": 16.0"#,
        ))
        .unwrap()
        .granite
        .unwrap();
        assert_eq!(
            (g.embedding, g.attention, g.residual, g.logits),
            (12.0, 0.0078125, 0.22, 16.0)
        );
        assert!(ModelConfig::from_json(&json(r#", "logits_scaling": 0.0"#)).is_err());
    }

    #[test]
    fn gemma3_layers_query_scale_and_refusals() {
        let json = |extra: &str| {
            format!(
                r#"{{"architectures": ["Gemma3ForCausalLM"], "hidden_size": 64,
                "intermediate_size": 128, "num_hidden_layers": 7, "num_attention_heads": 4,
                "num_key_value_heads": 1, "head_dim": 32, "vocab_size": 100,
                "sliding_window": 16, "query_pre_attn_scalar": 8{extra}}}"#
            )
        };
        let c = ModelConfig::from_json(&json("")).unwrap();
        let g = c.gemma.clone().unwrap();
        // Every 6th layer is global by default.
        assert_eq!(
            g.sliding_layers,
            [true, true, true, true, true, false, true]
        );
        assert_eq!(c.layer_window(0), Some(16));
        assert_eq!(c.layer_window(5), None);
        assert!((g.query_scale - 2.0).abs() < 1e-12, "sqrt(32 / 8)");
        assert!(c.qk_norm);
        let capped = ModelConfig::from_json(&json(
            r#", "final_logit_softcapping": 30.0, "attn_logit_softcapping": 50.0"#,
        ))
        .unwrap();
        let g = capped.gemma.unwrap();
        assert_eq!((g.attn_softcap, g.final_softcap), (Some(50.0), Some(30.0)));
        let err = ModelConfig::from_json(&json(r#", "final_logit_softcapping": -1.0"#))
            .unwrap_err()
            .to_string();
        assert!(err.contains("final_logit_softcapping"), "{err}");
        assert!(
            ModelConfig::from_json(&json(r#", "hidden_activation": "gelu_pytorch_tanh""#)).is_ok()
        );
        let err = ModelConfig::from_json(&json(r#", "hidden_activation": "gelu""#))
            .unwrap_err()
            .to_string();
        assert!(err.contains("hidden_activation 'gelu'"), "{err}");
    }

    #[test]
    fn gemma_hub_configs_run_every_layer_globally_with_their_hidden_activation() {
        // google/gemma-2b's config: the legacy hidden_act says exact GELU, hidden_activation
        // the tanh one the model was trained with.
        let json = |act: &str| {
            format!(
                r#"{{"architectures": ["GemmaForCausalLM"], "hidden_size": 2048,
                "intermediate_size": 16384, "num_hidden_layers": 18, "num_attention_heads": 8,
                "num_key_value_heads": 1, "head_dim": 256, "vocab_size": 256000,
                "rope_theta": 10000.0, "rms_norm_eps": 1e-6, "hidden_act": "gelu"{act}}}"#
            )
        };
        let c =
            ModelConfig::from_json(&json(r#", "hidden_activation": "gelu_pytorch_tanh""#)).unwrap();
        assert_eq!(c.architecture, Architecture::Gemma);
        let g = c.gemma.clone().unwrap();
        assert!(!g.sandwich);
        assert!(g.sliding_layers.iter().all(|&s| !s));
        assert_eq!(c.layer_window(3), None);
        assert_eq!(g.query_scale, 1.0);
        assert_eq!((g.attn_softcap, g.final_softcap), (None, None));
        assert!(c.tie_word_embeddings);
        assert!(!c.qk_norm);
        assert_eq!(c.q_width(), 2048);
        // Without hidden_activation, the exact GELU is refused rather than approximated.
        let err = ModelConfig::from_json(&json("")).unwrap_err().to_string();
        assert!(err.contains("'gelu'"), "{err}");
    }

    #[test]
    fn pythia_hub_configs_read_neox_names_for_rotary_and_residual() {
        // EleutherAI/pythia-70m's config.json, as on the hub.
        let pythia = r#"{"architectures": ["GPTNeoXForCausalLM"], "bos_token_id": 0,
            "eos_token_id": 0, "hidden_act": "gelu", "hidden_size": 512,
            "intermediate_size": 2048, "layer_norm_eps": 1e-05,
            "max_position_embeddings": 2048, "model_type": "gpt_neox",
            "num_attention_heads": 8, "num_hidden_layers": 6, "rotary_emb_base": 10000,
            "rotary_pct": 0.25, "tie_word_embeddings": false, "torch_dtype": "float16",
            "use_parallel_residual": true, "vocab_size": 50304}"#;
        let c = ModelConfig::from_json(pythia).unwrap();
        assert_eq!(c.architecture, Architecture::GptNeoX);
        assert_eq!((c.head_dim, c.rotary_dim, c.num_kv_heads), (64, 16, 8));
        assert_eq!(c.rope_theta, 10000.0);
        assert_eq!(c.rms_norm_eps, 1e-5);
        assert!(c.layer_norm && c.parallel_block && c.qkv_bias && c.o_bias);
        assert_eq!(
            c.ungated_mlp,
            Some(crate::backend::image_ops::Activation::Gelu)
        );
        assert!(!c.tie_word_embeddings);
        let sequential = pythia
            .replace(
                r#""use_parallel_residual": true"#,
                r#""use_parallel_residual": false, "attention_bias": false"#,
            )
            .replace(r#""rotary_emb_base": 10000"#, r#""rotary_emb_base": 500"#);
        let c = ModelConfig::from_json(&sequential).unwrap();
        assert!(!c.parallel_block && !c.qkv_bias && !c.o_bias);
        assert_eq!(c.rope_theta, 500.0);
    }

    #[test]
    fn glm_configs_default_to_biases_and_half_head_rotary() {
        // THUDM/glm-4-9b-chat-hf's shape, with the two fields GlmConfig defaults left out.
        let c = ModelConfig::from_json(
            r#"{"architectures": ["GlmForCausalLM"], "head_dim": 128, "hidden_act": "silu",
            "hidden_size": 4096, "intermediate_size": 13696, "max_position_embeddings": 131072,
            "model_type": "glm", "num_attention_heads": 32, "num_hidden_layers": 40,
            "num_key_value_heads": 2, "rms_norm_eps": 1.5625e-07, "rope_theta": 10000.0,
            "vocab_size": 151552, "eos_token_id": [151329, 151336, 151338]}"#,
        )
        .unwrap();
        assert_eq!(c.architecture, Architecture::Glm);
        assert_eq!((c.head_dim, c.rotary_dim), (128, 64));
        assert!(c.qkv_bias && !c.o_bias);
        assert!(c.gemma.is_none() && !c.post_norm);
        assert!(!crate::model::rope::rope_for(&c).unwrap().neox);
        assert_eq!(c.eos_token_ids, [151329, 151336, 151338]);
    }

    #[test]
    fn sparse_layers_follow_the_step_and_the_dense_list() {
        let c = ModelConfig::from_json(
            r#"{"architectures": ["Qwen3MoeForCausalLM"], "hidden_size": 64,
            "intermediate_size": 128, "moe_intermediate_size": 32, "num_experts": 4,
            "num_experts_per_tok": 2, "decoder_sparse_step": 2, "mlp_only_layers": [3],
            "num_hidden_layers": 6, "num_attention_heads": 4, "vocab_size": 100}"#,
        )
        .unwrap();
        let moe = c.moe.unwrap();
        assert_eq!(moe.sparse_layers, [false, true, false, false, false, true]);
        assert!(
            !moe.normalize_top_k,
            "Qwen3-MoE's norm_topk_prob defaults to false"
        );
        let bad = r#"{"architectures": ["MixtralForCausalLM"], "hidden_size": 64,
            "intermediate_size": 128, "num_local_experts": 2, "num_experts_per_tok": 3,
            "num_hidden_layers": 1, "num_attention_heads": 4, "vocab_size": 100}"#;
        let err = ModelConfig::from_json(bad).unwrap_err().to_string();
        assert!(err.contains("num_experts_per_tok 3"), "{err}");
    }

    fn phi3(extra: &str) -> Result<ModelConfig> {
        ModelConfig::from_json(&format!(
            r#"{{"architectures": ["Phi3ForCausalLM"], "hidden_size": 64,
                "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 8,
                "num_key_value_heads": 2, "vocab_size": 100{extra}}}"#
        ))
    }

    #[test]
    fn quantized_checkpoints_load_only_in_formats_kiln_expands() {
        let with = |q: &str| phi3(&format!(r#", "quantization_config": {q}"#));
        let fp8 = with(r#"{"quant_method": "fp8", "weight_block_size": [128, 128]}"#);
        assert_eq!(fp8.unwrap().quantization, Some(Quantization::Fp8));
        let ct = with(r#"{"quant_method": "compressed-tensors", "format": "float-quantized"}"#);
        assert_eq!(ct.unwrap().quantization, Some(Quantization::Fp8));
        assert_eq!(phi3("").unwrap().quantization, None);
        // NVFP4 in compressed-tensors' layout and ModelOpt's; ModelOpt's FP8, its algorithm
        // at the top or under `quantization`.
        let nvfp4 =
            with(r#"{"quant_method": "compressed-tensors", "format": "nvfp4-pack-quantized"}"#);
        assert_eq!(nvfp4.unwrap().quantization, Some(Quantization::Nvfp4));
        for (q, want) in [
            (
                r#"{"quant_method": "modelopt", "quant_algo": "NVFP4"}"#,
                Quantization::Nvfp4,
            ),
            (
                r#"{"quant_method": "modelopt", "quant_algo": "FP8"}"#,
                Quantization::Fp8,
            ),
            (
                r#"{"quant_method": "modelopt", "quant_algo": "MIXED_PRECISION"}"#,
                Quantization::Fp8AndNvfp4,
            ),
            (
                r#"{"quant_method": "modelopt", "quantization": {"quant_algo": "FP8"}}"#,
                Quantization::Fp8,
            ),
        ] {
            assert_eq!(with(q).unwrap().quantization, Some(want), "{q}");
        }
        let w4a8 = with(r#"{"quant_method": "modelopt", "quant_algo": "W4A8_AWQ"}"#);
        assert!(w4a8.unwrap_err().to_string().contains("W4A8_AWQ"));
        let int = |q: &str| match with(q).unwrap().quantization {
            Some(Quantization::Int(scheme)) => scheme,
            other => panic!("{q}: {other:?}"),
        };
        assert_eq!(
            int(r#"{"quant_method": "gptq", "bits": 4, "group_size": 128, "desc_act": true}"#),
            IntScheme::Gptq {
                bits: 4,
                group_size: Some(128),
                zero_offset: 1
            }
        );
        assert_eq!(
            int(
                r#"{"quant_method": "gptq", "bits": 8, "group_size": -1, "checkpoint_format": "gptq_v2"}"#
            ),
            IntScheme::Gptq {
                bits: 8,
                group_size: None,
                zero_offset: 0
            }
        );
        assert_eq!(
            int(r#"{"quant_method": "awq", "bits": 4, "group_size": 128, "version": "GEMM"}"#),
            IntScheme::Awq {
                group_size: Some(128)
            }
        );
        let w4a16 = r#"{"quant_method": "compressed-tensors", "format": "pack-quantized",
            "config_groups": {"group_0": {"targets": ["Linear"], "weights": {"num_bits": 4,
            "type": "int", "symmetric": true, "strategy": "group", "group_size": 128}}}}"#;
        assert_eq!(
            int(w4a16),
            IntScheme::PackQuantized {
                bits: vec![4],
                group_sizes: vec![128]
            }
        );
        for refused in [
            r#"{"quant_method": "awq", "bits": 4, "version": "gemv"}"#,
            r#"{"quant_method": "awq", "bits": 3}"#,
            r#"{"quant_method": "awq", "bits": 4, "zero_point": false}"#,
            r#"{"quant_method": "gptq", "bits": 5}"#,
            r#"{"quant_method": "gptq", "bits": 4, "checkpoint_format": "marlin"}"#,
            r#"{"quant_method": "compressed-tensors", "format": "pack-quantized", "config_groups":
                {"g": {"weights": {"num_bits": 4, "type": "float"}}}}"#,
            r#"{"quant_method": "compressed-tensors", "format": "marlin-24"}"#,
            r#"{"quant_method": "compressed-tensors", "format": "pack-quantized", "config_groups":
                {"g": {"weights": {"num_bits": 4, "type": "int"},
                "input_activations": {"num_bits": 8, "type": "int"}}}}"#,
            r#"{"quant_method": "bitsandbytes"}"#,
        ] {
            let err = with(refused).unwrap_err();
            assert!(format!("{err:#}").contains("not supported"), "{err:#}");
        }
        assert!(with(r#"{"quant_method": "gptq"}"#).is_err(), "no bits");
    }

    #[test]
    fn the_quantization_flag_must_name_the_checkpoints_method() {
        let gptq = Quantization::Int(IntScheme::Gptq {
            bits: 4,
            group_size: Some(128),
            zero_offset: 1,
        });
        let awq = Quantization::Int(IntScheme::Awq {
            group_size: Some(128),
        });
        assert!(check_quantization_flag("gptq", Some(&gptq)).is_ok());
        assert!(check_quantization_flag("gptq_marlin", Some(&gptq)).is_ok());
        assert!(check_quantization_flag("awq_marlin", Some(&awq)).is_ok());
        assert!(check_quantization_flag("FP8", Some(&Quantization::Fp8)).is_ok());
        assert!(check_quantization_flag("compressed-tensors", Some(&gptq)).is_ok());
        assert!(check_quantization_flag("awq", Some(&gptq)).is_err());
        let err = check_quantization_flag("fp8", None)
            .unwrap_err()
            .to_string();
        assert!(err.contains("does not quantize"), "{err}");
        assert!(check_quantization_flag("bitsandbytes", Some(&awq)).is_err());
        // vLLM's names for ModelOpt's formats.
        assert!(check_quantization_flag("modelopt", Some(&Quantization::Fp8)).is_ok());
        assert!(check_quantization_flag("modelopt_fp4", Some(&Quantization::Nvfp4)).is_ok());
        assert!(check_quantization_flag("modelopt", Some(&Quantization::Nvfp4)).is_err());
    }

    #[test]
    fn phi3_loads_with_partial_rotary_embeddings() {
        assert_eq!(phi3("").unwrap().architecture, Architecture::Phi3);
        assert_eq!(
            phi3(r#", "partial_rotary_factor": 1.0"#)
                .unwrap()
                .rotary_dim,
            8
        );
        // head_dim 8: 0.75 rotates 6 values, 0.25 would rotate 2, 0.1 none.
        let c = phi3(r#", "partial_rotary_factor": 0.75"#).unwrap();
        assert_eq!(c.rotary_dim, 6);
        assert_eq!(crate::model::rope::rope_for(&c).unwrap().inv_freq.len(), 3);
        let err = phi3(r#", "partial_rotary_factor": 0.1"#).unwrap_err();
        assert!(
            format!("{err:#}").contains("partial_rotary_factor"),
            "{err:#}"
        );
    }
}
