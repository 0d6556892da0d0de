"""The `opt_pytorch` fixture: the `opt` fixture's model as older hub repositories ship one,
with neither safetensors nor a tokenizer.json:

- weights saved by transformers with `safe_serialization=False` (torch.save's zip archives),
  sharded, with a `pytorch_model.bin.index.json`;
- GPT-2's slow tokenizer files (`vocab.json`, `merges.txt`, `special_tokens_map.json`) and a
  `tokenizer_config.json` that sets `add_bos_token`, as OPT's does.

The prompt ids are what transformers' slow `GPT2Tokenizer` makes of the prompt texts (BOS
first), checked against the fast tokenizer transformers converts from the same files;
`tokenizer_cases.json` holds more texts encoded by the slow tokenizer, for kiln's own
conversion to match. Called from make_fixtures.py (`--only opt_pytorch`).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
import transformers
from transformers import GPT2Tokenizer, GPT2TokenizerFast, OPTForCausalLM

NAME = "opt_pytorch"
# Texts that exercise GPT-2's pre-tokenization: contractions, digit runs, punctuation runs,
# repeated and trailing whitespace, newlines, non-Latin scripts, emoji and special tokens
# written in the text.
TOKENIZER_TEXTS = [
    "Hello world",
    " leading space and  two  spaces",
    "It's what they'd've done, isn't it? I'LL GO.",
    "Numbers 1234567 and 3.14159, 10,000!",
    "tabs\tand\nnew\n\nlines   \n",
    "Café crème at 東京 🙂 hello",
    "<|im_start|>user\nhi<|im_end|>",
    "Ünïcödé — “quotes” … and ¿¡ marks!",
    "",
]


def write_slow_tokenizer(fixtures_dir: Path, directory: Path) -> None:
    """vocab.json and merges.txt from the shared fixture tokenizer's BPE, and OPT's style of
    configuration: BOS before every prompt, specials split out of the text."""
    fast = json.loads((fixtures_dir / "tokenizer" / "tokenizer.json").read_text())
    model = fast["model"]
    (directory / "vocab.json").write_text(json.dumps(model["vocab"], ensure_ascii=False))
    merges = [" ".join(m) if isinstance(m, list) else m for m in model["merges"]]
    (directory / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
    config = {
        "tokenizer_class": "GPT2Tokenizer",
        "add_bos_token": True,
        "add_prefix_space": False,
        "errors": "replace",
        "bos_token": "<|endoftext|>",
        "eos_token": "<|im_end|>",
        "unk_token": "<|endoftext|>",
        "pad_token": "<|endoftext|>",
        "model_max_length": 2048,
    }
    (directory / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n")
    special = {"additional_special_tokens": ["<|im_start|>", "<|im_end|>"]}
    (directory / "special_tokens_map.json").write_text(json.dumps(special, indent=2) + "\n")


def build(only, fixtures_dir: Path, prompt_texts, greedy_reference, greedy_reference_json, write_json, write_reference_json) -> None:
    if only not in (None, "opt", NAME):
        return
    src, directory = fixtures_dir / "opt", fixtures_dir / NAME
    if directory.exists():
        shutil.rmtree(directory)
    directory.mkdir(parents=True)
    for name in ("config.json", "generation_config.json"):
        shutil.copy(src / name, directory / name)
    write_slow_tokenizer(fixtures_dir, directory)

    slow = GPT2Tokenizer.from_pretrained(str(directory))
    fast = GPT2TokenizerFast.from_pretrained(str(directory), from_slow=True)
    cases = []
    for text in TOKENIZER_TEXTS:
        for add_special in (True, False):
            ids = slow.encode(text, add_special_tokens=add_special)
            assert ids == fast.encode(text, add_special_tokens=add_special), (text, add_special)
            cases.append({"text": text, "add_special_tokens": add_special, "ids": ids})
    write_json(directory / "tokenizer_cases.json", {"transformers_version": transformers.__version__, "cases": cases})

    model = OPTForCausalLM.from_pretrained(str(src), dtype=torch.float32, attn_implementation="eager").eval()
    # Two shards and an index, as large checkpoints are saved.
    model.save_pretrained(str(directory), safe_serialization=False, max_shard_size="400KB")
    assert (directory / "pytorch_model.bin.index.json").exists(), "expected a sharded checkpoint"
    for stray in ("model.safetensors", "config.json.bak"):
        (directory / stray).unlink(missing_ok=True)
    reloaded = OPTForCausalLM.from_pretrained(str(directory), dtype=torch.float32, attn_implementation="eager").eval()
    bf16_model = OPTForCausalLM.from_pretrained(str(directory), dtype=torch.bfloat16, attn_implementation="eager").eval()

    prompts = [slow.encode(t) for t in prompt_texts]
    f32_refs = [greedy_reference(reloaded, p) for p in prompts]
    bf16_refs = [greedy_reference(bf16_model, p) for p in prompts]
    seed = json.loads((src / "reference.json").read_text())["seed"]
    reference = greedy_reference_json("OPTForCausalLM", seed, prompts, f32_refs, bf16_refs)
    write_reference_json(directory / "reference.json", reference)
    min_margin = min(min(r["margins"]) for r in f32_refs)
    print(f"  {NAME}: prompts {[p[:4] for p in prompts]}..., min top-2 margin {min_margin:.4f}, {len(cases)} tokenizer cases")
