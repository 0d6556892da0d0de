//! transformers 5 writes a config's rotary settings as one `rope_parameters` object
//! (`rope_theta`, `rope_type` and the scaling's own keys, sometimes `partial_rotary_factor`),
//! or one such object per attention kind (`full_attention`, `sliding_attention`), where
//! transformers 4 wrote `rope_theta`, `rope_scaling` and `partial_rotary_factor` beside the
//! other keys. kiln reads the older keys, so the newer object is lifted into them; a key the
//! config also gives the old way keeps its old value.

use serde_json::{Map, Value};

/// `value` with its `rope_parameters` (if any) lifted into the keys transformers 4 used.
pub fn lift_rope_parameters(value: &mut Value) {
    let Some(fields) = value.as_object_mut() else {
        return;
    };
    let Some(Value::Object(params)) = fields.get("rope_parameters").cloned() else {
        return;
    };
    // Per attention kind: the full layers' settings are the model's, the sliding layers'
    // base is Gemma 3's local one.
    let (main, sliding) = match params.get("full_attention") {
        Some(Value::Object(full)) => (full.clone(), params.get("sliding_attention").cloned()),
        _ => (params, None),
    };
    lift(fields, &main);
    if let Some(theta) = sliding.as_ref().and_then(|s| s.get("rope_theta")) {
        fields
            .entry("rope_local_base_freq")
            .or_insert_with(|| theta.clone());
    }
}

fn lift(fields: &mut Map<String, Value>, params: &Map<String, Value>) {
    for key in ["rope_theta", "partial_rotary_factor"] {
        if let Some(v) = params.get(key) {
            fields.entry(key).or_insert_with(|| v.clone());
        }
    }
    let scaled = params
        .get("rope_type")
        .and_then(Value::as_str)
        .is_some_and(|t| t != "default");
    let unset = fields.get("rope_scaling").is_none_or(Value::is_null);
    if scaled && unset {
        let mut scaling = params.clone();
        scaling.remove("rope_theta");
        scaling.remove("partial_rotary_factor");
        fields.insert("rope_scaling".into(), Value::Object(scaling));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_single_object_becomes_theta_and_scaling() {
        let mut v = json!({"rope_parameters": {"rope_theta": 500000.0, "rope_type": "llama3",
            "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
            "original_max_position_embeddings": 8192}});
        lift_rope_parameters(&mut v);
        assert_eq!(v["rope_theta"], json!(500000.0));
        assert_eq!(v["rope_scaling"]["rope_type"], json!("llama3"));
        assert_eq!(v["rope_scaling"]["factor"], json!(8.0));
        assert!(v["rope_scaling"].get("rope_theta").is_none());
        // The default type scales nothing; old keys keep their values.
        let mut v = json!({"rope_theta": 10000.0, "rope_parameters": {"rope_theta": 1e6,
            "rope_type": "default", "partial_rotary_factor": 0.5}});
        lift_rope_parameters(&mut v);
        assert_eq!(v["rope_theta"], json!(10000.0));
        assert_eq!(v["partial_rotary_factor"], json!(0.5));
        assert!(v.get("rope_scaling").is_none());
    }

    #[test]
    fn per_kind_objects_give_the_full_layers_settings_and_the_local_base() {
        let mut v = json!({"rope_parameters": {
            "full_attention": {"rope_theta": 1000000.0, "rope_type": "linear", "factor": 8.0},
            "sliding_attention": {"rope_theta": 10000.0, "rope_type": "default"}}});
        lift_rope_parameters(&mut v);
        assert_eq!(v["rope_theta"], json!(1000000.0));
        assert_eq!(
            v["rope_scaling"],
            json!({"rope_type": "linear", "factor": 8.0})
        );
        assert_eq!(v["rope_local_base_freq"], json!(10000.0));
    }

    #[test]
    fn a_transformers_5_llama_config_reads_its_rotary() {
        let c = crate::model::config::ModelConfig::from_json(
            r#"{"architectures": ["LlamaForCausalLM"], "hidden_size": 64,
            "intermediate_size": 128, "num_attention_heads": 4, "num_hidden_layers": 2,
            "num_key_value_heads": 2, "vocab_size": 100, "max_position_embeddings": 131072,
            "rope_parameters": {"rope_theta": 500000.0, "rope_type": "llama3", "factor": 8.0,
            "low_freq_factor": 1.0, "high_freq_factor": 4.0,
            "original_max_position_embeddings": 8192}}"#,
        )
        .unwrap();
        assert_eq!(c.rope_theta, 500000.0);
        assert!(c.rope_scaling.is_some());
    }
}
