"""LoRA adapter fixtures: PEFT adapters on the llama, granite and phi3 fixtures, random
(PEFT starts B at zero, which would change nothing), saved by PEFT's `save_pretrained`, with
the logits and greedy tokens PEFT's `PeftModel` computes. Called from make_fixtures.py
(`--only lora`); needs `peft` installed.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch

# name: (base fixture, LoraConfig arguments)
ADAPTERS = {
    "llama_all": ("llama", dict(r=4, lora_alpha=8, target_modules=[
        "q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"])),
    # rsLoRA scaling, two modules, the second layer only.
    "llama_qv_rslora": ("llama", dict(r=2, lora_alpha=4, use_rslora=True,
                                      target_modules=["q_proj", "v_proj"], layers_to_transform=[1])),
    # Granite folds its attention and residual multipliers into q, o and down rows.
    "granite_all": ("granite", dict(r=4, lora_alpha=4, target_modules=[
        "q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"])),
    # Phi-3's fused projections.
    "phi3_fused": ("phi3", dict(r=3, lora_alpha=6, target_modules=[
        "qkv_proj", "o_proj", "gate_up_proj", "down_proj"])),
}


@torch.no_grad()
def build(fixtures_dir: Path, prompts, greedy_reference, f32_list, write_json) -> None:
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    directory = fixtures_dir / "lora"
    if directory.exists():
        shutil.rmtree(directory)
    directory.mkdir()
    generator = torch.Generator().manual_seed(23)
    reference = {}
    for name, (base, args) in ADAPTERS.items():
        model = AutoModelForCausalLM.from_pretrained(
            str(fixtures_dir / base), dtype=torch.float32, attn_implementation="eager"
        ).eval()
        peft_model = get_peft_model(model, LoraConfig(lora_dropout=0.0, bias="none", **args)).eval()
        for param_name, param in peft_model.named_parameters():
            if "lora_A" in param_name or "lora_B" in param_name:
                param.copy_(torch.randn(param.shape, generator=generator) * 0.3)
        peft_model.save_pretrained(str(directory / name))
        # Keep the fixture free of this machine's paths and of PEFT's model-card template.
        (directory / name / "README.md").unlink(missing_ok=True)
        config_path = directory / name / "adapter_config.json"
        config = json.loads(config_path.read_text())
        config["base_model_name_or_path"] = f"tests/fixtures/{base}"
        config_path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
        runs = [greedy_reference(peft_model, p) for p in prompts]
        reference[name] = {
            "base": base,
            "prompts": [
                {"prompt_ids": p, "last_logits": f32_list(r["last_logits"]), "greedy_ids": r["greedy_ids"],
                 "greedy_margins": r["margins"]}
                for p, r in zip(prompts, runs)
            ],
        }
        base_ref = json.loads((fixtures_dir / base / "reference.json").read_text())["prompts"][0]["last_logits"]
        moved = (torch.tensor(base_ref) - runs[0]["last_logits"]).abs().max().item()
        margin = min(min(r["margins"]) for r in runs)
        print(f"  lora/{name}: moves prompt 0's logits by up to {moved:.3f}; min greedy margin {margin:.4f}")
    write_json(directory / "reference.json", reference)
