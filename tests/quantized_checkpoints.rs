//! Quantized checkpoints, expanded to the model dtype at load, against references computed
//! by the code of the projects that define each format: gpt-oss's experts packed as MXFP4
//! the way OpenAI ships them, an FP8 checkpoint with 32 x 32 block scales in
//! compressed-tensors' float-quantized format (Qwen3-FP8's and DeepSeek's layout), and
//! transformers unpacking them; a compressed-tensors pack-quantized checkpoint (4-bit
//! groups and 8-bit channels), loaded by transformers; a GPTQ one with `desc_act`, computed
//! by AutoGPTQ's own modules; an AWQ one, unpacked by AutoAWQ's own code; a bitsandbytes
//! NF4 one with double quantization, quantized and unpacked by bitsandbytes on the CPU; NVFP4
//! ones in compressed-tensors' and ModelOpt's layouts, packed and decompressed by
//! compressed-tensors. Each fixture is an
//! unquantized fixture, quantized (scripts/make_fixtures.py, scripts/int_quant_fixtures.py).
//! `packed_int` adds single weights at the other bit widths, with their projects' unpacking.

mod common;

use common::{fixture, load, max_abs_diff};
use kiln::backend::DType;
use kiln::model::int_quant::{IntQuantWeights, IntScheme};
use kiln::model::weights::{SafetensorsWeights, WeightSource};
use serde::Deserialize;
use std::collections::BTreeMap;

#[derive(Deserialize)]
struct Reference {
    prompts: Vec<Prompt>,
}

#[derive(Deserialize)]
struct Prompt {
    prompt_ids: Vec<u32>,
    last_logits: Vec<f32>,
}

fn reference(name: &str) -> Reference {
    let text = std::fs::read_to_string(fixture(name).join("reference.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

/// `quantized`'s logits match transformers' within 1e-3; the quantization moves them
/// away from those of `unquantized` (so reading the weights some other way would show).
fn matches_transformers(quantized: &str, unquantized: &str) {
    let m = load(quantized, "float32");
    let packed = reference(quantized);
    let full = reference(unquantized);
    for (p, f) in packed.prompts.iter().zip(&full.prompts) {
        let ours = kiln::cli::check_reference::last_logits(&m, &p.prompt_ids).unwrap();
        let diff = max_abs_diff(&ours, &p.last_logits);
        assert!(diff < 1e-3, "{quantized}: max abs logit diff {diff}");
        assert!(max_abs_diff(&p.last_logits, &f.last_logits) > 0.05);
    }
}

#[test]
fn packed_experts_unpack_as_transformers_unpacks_them() {
    matches_transformers("gpt_oss_mxfp4", "gpt_oss");
}

#[test]
fn fp8_block_scaled_weights_expand_as_transformers_expands_them() {
    matches_transformers("qwen3_fp8", "qwen3");
}

#[test]
fn nvfp4_weights_expand_as_compressed_tensors_decompresses_them() {
    matches_transformers("qwen3_nvfp4", "qwen3");
}

/// ModelOpt's NVFP4 layout (the bytes under `weight`, the global scale multiplying as
/// `weight_scale_2`), against compressed-tensors decompressing the same numbers.
#[test]
fn modelopt_nvfp4_weights_expand_to_the_same_values() {
    matches_transformers("qwen3_nvfp4_modelopt", "qwen3");
}

/// ModelOpt's MIXED_PRECISION checkpoints hold FP8 and NVFP4 layers: each weight is
/// expanded as the tensors beside it say. The NVFP4 fixture and the FP8 one, relabelled as
/// mixed, still match their references.
#[test]
fn modelopt_mixed_precision_expands_each_weight_in_its_own_format() {
    for name in ["qwen3_nvfp4_modelopt", "qwen3_fp8"] {
        let dir = tempfile::tempdir().unwrap();
        for entry in std::fs::read_dir(fixture(name)).unwrap() {
            let path = entry.unwrap().path();
            std::fs::copy(&path, dir.path().join(path.file_name().unwrap())).unwrap();
        }
        let config_path = dir.path().join("config.json");
        let mut config: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&config_path).unwrap()).unwrap();
        config["quantization_config"] = serde_json::json!({
            "quant_method": "modelopt", "quant_algo": "MIXED_PRECISION",
            "kv_cache_quant_algo": null, "exclude_modules": ["lm_head"],
        });
        std::fs::write(&config_path, config.to_string()).unwrap();
        let m = kiln::launch::load_model(&common::engine_args(&[
            "--model",
            dir.path().to_str().unwrap(),
            "--dtype",
            "float32",
        ]))
        .unwrap();
        for p in reference(name).prompts {
            let ours = kiln::cli::check_reference::last_logits(&m, &p.prompt_ids).unwrap();
            let diff = max_abs_diff(&ours, &p.last_logits);
            assert!(
                diff < 1e-3,
                "{name} as mixed precision: max abs logit diff {diff}"
            );
        }
    }
}

#[test]
fn gptq_act_order_weights_expand_as_autogptq_computes_them() {
    matches_transformers("llama_gptq", "llama");
}

#[test]
fn awq_weights_expand_as_autoawq_unpacks_them() {
    matches_transformers("qwen2_awq", "qwen2");
}

#[test]
fn bitsandbytes_nf4_weights_expand_as_bitsandbytes_unpacks_them() {
    matches_transformers("qwen3_bnb_nf4", "qwen3");
}

#[test]
fn bitsandbytes_int8_weights_expand_as_bitsandbytes_dequantizes_them() {
    matches_transformers("qwen3_bnb_int8", "qwen3");
}

#[test]
fn pack_quantized_weights_expand_as_transformers_expands_them() {
    matches_transformers("qwen3_w4a16", "qwen3");
}

#[derive(Deserialize)]
struct Case {
    format: String,
    bits: u32,
    group_size: Option<i64>,
    shape: [usize; 2],
}

/// A source without some of its tensors (a GPTQ checkpoint saved without `g_idx`).
struct Without<S> {
    inner: S,
    hidden: &'static str,
}

impl<S: WeightSource> WeightSource for Without<S> {
    fn tensor(
        &self,
        name: &str,
        shape: &[usize],
        dtype: DType,
    ) -> anyhow::Result<candle_core::Tensor> {
        self.inner.tensor(name, shape, dtype)
    }

    fn contains(&self, name: &str) -> bool {
        !name.ends_with(self.hidden) && self.inner.contains(name)
    }

    fn shape_of(&self, name: &str) -> anyhow::Result<Vec<usize>> {
        self.inner.shape_of(name)
    }

    fn words(&self, name: &str) -> anyhow::Result<(Vec<usize>, Vec<u32>)> {
        self.inner.words(name)
    }
}

fn expanded(
    source: impl WeightSource,
    scheme: IntScheme,
    case: &str,
    shape: [usize; 2],
) -> Vec<f32> {
    IntQuantWeights::new(source, scheme)
        .tensor(&format!("{case}.weight"), &shape, DType::F32)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap()
}

/// Every bit width and layout the model fixtures do not reach, weight by weight, exactly as
/// AutoGPTQ, AutoAWQ and compressed-tensors unpack them.
#[test]
fn packed_weights_of_every_width_expand_as_their_projects_unpack_them() {
    let dir = fixture("packed_int");
    let cases: BTreeMap<String, Case> =
        serde_json::from_str(&std::fs::read_to_string(dir.join("cases.json")).unwrap()).unwrap();
    let file = || SafetensorsWeights::open(&[dir.join("cases.safetensors")]).unwrap();
    assert_eq!(cases.len(), 7);
    for (name, case) in &cases {
        let group_size = case.group_size.filter(|&g| g > 0).map(|g| g as usize);
        let scheme = match case.format.as_str() {
            "gptq" => IntScheme::Gptq {
                bits: case.bits,
                group_size,
                zero_offset: 1,
            },
            "awq" => IntScheme::Awq { group_size },
            "pack-quantized" => IntScheme::PackQuantized {
                bits: vec![case.bits],
                group_sizes: group_size.into_iter().collect(),
            },
            other => panic!("{other}"),
        };
        let expected: Vec<f32> = file()
            .tensor(&format!("{name}.expected"), &case.shape, DType::F32)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        let ours = expanded(file(), scheme.clone(), name, case.shape);
        let diff = max_abs_diff(&ours, &expected);
        assert!(diff <= 1e-6, "{name}: max abs diff {diff}");
        if name == "gptq_2bit" {
            // Saved without g_idx, its groups are runs of group_size inputs: the same weight.
            let bare = Without {
                inner: file(),
                hidden: "g_idx",
            };
            assert_eq!(expanded(bare, scheme, name, case.shape), ours);
        }
    }
}

/// vLLM's `--quantization` names the checkpoint's method, or is refused before loading.
#[test]
fn the_quantization_flag_is_checked_against_the_checkpoint() {
    let load_with = |name: &str, method: &str| {
        let dir = fixture(name);
        kiln::launch::load_model(&common::engine_args(&[
            "--model",
            dir.to_str().unwrap(),
            "--quantization",
            method,
        ]))
    };
    assert!(load_with("llama_gptq", "gptq_marlin").is_ok());
    assert!(load_with("qwen2_awq", "awq").is_ok());
    let err = format!("{:#}", load_with("qwen2_awq", "gptq").err().unwrap());
    assert!(err.contains("not gptq"), "{err}");
    let err = format!("{:#}", load_with("llama", "fp8").err().unwrap());
    assert!(err.contains("does not quantize"), "{err}");
}
