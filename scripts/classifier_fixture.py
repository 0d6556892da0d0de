"""A sequence-classification fixture (tests/fixtures/qwen3_classifier/): the qwen3 fixture's
decoder with a random 3-label score head, as Qwen3ForSequenceClassification saves it (reward
models and classifiers built on decoders: Skywork-Reward, Qwen3 classifiers). The reference
is transformers' logits for each prompt (the last token's row). Called from make_fixtures.py
(`--only qwen3_classifier`).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch


@torch.no_grad()
def build(fixtures_dir: Path, prompts, f32_list, write_json) -> None:
    from transformers import Qwen3Config, Qwen3ForCausalLM, Qwen3ForSequenceClassification

    src, directory = fixtures_dir / "qwen3", fixtures_dir / "qwen3_classifier"
    if directory.exists():
        shutil.rmtree(directory)
    directory.mkdir()
    for name in ["tokenizer.json", "tokenizer_config.json"]:
        shutil.copy(src / name, directory / name)
    causal = Qwen3ForCausalLM.from_pretrained(str(src), dtype=torch.float32).eval()
    config = Qwen3Config.from_pretrained(str(src))
    config.architectures = ["Qwen3ForSequenceClassification"]
    config.num_labels = 3
    config.id2label = {0: "negative", 1: "neutral", 2: "positive"}
    config.label2id = {v: k for k, v in config.id2label.items()}
    model = Qwen3ForSequenceClassification(config).eval()
    model.model.load_state_dict(causal.model.state_dict())
    generator = torch.Generator().manual_seed(31)
    model.score.weight.copy_(torch.randn(model.score.weight.shape, generator=generator) * 0.2)
    model.save_pretrained(str(directory), safe_serialization=True)
    logits = [model(input_ids=torch.tensor([p])).logits[0] for p in prompts]
    write_json(directory / "reference.json", {
        "architecture": "Qwen3ForSequenceClassification",
        "labels": ["negative", "neutral", "positive"],
        "prompts": [{"prompt_ids": p, "logits": f32_list(l)} for p, l in zip(prompts, logits)],
    })
    print(f"  qwen3_classifier: logits {[[round(float(v), 3) for v in l] for l in logits]}")
