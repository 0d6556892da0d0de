#!/usr/bin/env python3
"""Build kiln's reference fixtures and its embedded demo model with HuggingFace tools.

Outputs (all committed; CI never runs this script):
  tests/fixtures/<arch>/        tiny random-weight models + reference.json (transformers
                                logits and greedy tokens, float32 and bfloat16)
  tests/fixtures/tokenizer/      the shared tokenizer + cases.json (encode/decode and
                                chat-template references)
  models/demo/                  a tiny Qwen2 model trained for a minute on CORPUS below

Regenerate from the repository root:
  pip install torch "transformers>=4.56,<5" tokenizers safetensors
  python scripts/make_fixtures.py

Everything is seeded; the random-weight fixtures are bit-for-bit reproducible with the
same torch / transformers versions. The demo model's training is seeded and
single-threaded, so it reproduces on the same CPU type and library versions.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import time
from pathlib import Path

import numpy as np
import torch
import transformers
from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
from transformers import (
    AutoModel,
    AutoTokenizer,
    DeepseekV2Config,
    DeepseekV2ForCausalLM,
    DeepseekV3Config,
    DeepseekV3ForCausalLM,
    Gemma2Config,
    Gemma2ForCausalLM,
    GemmaConfig,
    GemmaForCausalLM,
    GPT2Config,
    GPT2LMHeadModel,
    Ernie4_5_MoeConfig,
    Ernie4_5_MoeForCausalLM,
    Ernie4_5Config,
    Ernie4_5ForCausalLM,
    Exaone4Config,
    Exaone4ForCausalLM,
    GlmConfig,
    GlmForCausalLM,
    HeliumConfig,
    HeliumForCausalLM,
    ArceeConfig,
    ArceeForCausalLM,
    FalconConfig,
    FalconForCausalLM,
    BloomConfig,
    BloomForCausalLM,
    MptConfig,
    MptForCausalLM,
    PhimoeConfig,
    PhimoeForCausalLM,
    ApertusConfig,
    ApertusForCausalLM,
    Dots1Config,
    Dots1ForCausalLM,
    HunYuanDenseV1Config,
    HunYuanDenseV1ForCausalLM,
    HunYuanMoEV1Config,
    HunYuanMoEV1ForCausalLM,
    GPTJConfig,
    GPTNeoConfig,
    GPTNeoForCausalLM,
    MinistralConfig,
    MinistralForCausalLM,
    NemotronConfig,
    StableLmConfig,
    StableLmForCausalLM,
    StableLmPreTrainedModel,
    NemotronForCausalLM,
    GPTJForCausalLM,
    GraniteMoeConfig,
    GraniteMoeForCausalLM,
    GPTBigCodeConfig,
    GPTBigCodeForCausalLM,
    GPTNeoXConfig,
    GPTNeoXForCausalLM,
    OlmoConfig,
    OlmoForCausalLM,
    OPTConfig,
    OPTForCausalLM,
    Gemma3ForCausalLM,
    Gemma3TextConfig,
    InternVLConfig,
    InternVLForConditionalGeneration,
    GraniteConfig,
    GraniteForCausalLM,
    GenerationConfig,
    GptOssConfig,
    GptOssForCausalLM,
    Glm4Config,
    Glm4ForCausalLM,
    Glm4MoeConfig,
    Glm4vConfig,
    Glm4vForConditionalGeneration,
    Glm4vMoeConfig,
    Glm4vMoeForConditionalGeneration,
    Glm4MoeForCausalLM,
    LlamaConfig,
    LlamaForCausalLM,
    Lfm2Config,
    Lfm2ForCausalLM,
    BambaConfig,
    BambaForCausalLM,
    GraniteMoeSharedConfig,
    GraniteMoeSharedForCausalLM,
    Mamba2Config,
    Mamba2ForCausalLM,
    Qwen3NextConfig,
    Qwen3NextForCausalLM,
    MambaConfig,
    MambaForCausalLM,
    FalconMambaConfig,
    FalconMambaForCausalLM,
    JambaConfig,
    JambaForCausalLM,
    FalconH1Config,
    FalconH1ForCausalLM,
)

# Nemotron-H and LFM2-MoE arrived in transformers 5: their fixtures are built by
# `make_fixtures.py --only nemotron_h` (`lfm2_moe`) run under transformers >= 5 (their
# reference.json records the version).
try:
    from transformers import Lfm2MoeConfig, Lfm2MoeForCausalLM, NemotronHConfig, NemotronHForCausalLM
except ImportError:
    Lfm2MoeConfig = Lfm2MoeForCausalLM = NemotronHConfig = NemotronHForCausalLM = None

from transformers import (
    GraniteMoeHybridConfig,
    GraniteMoeHybridForCausalLM,
    Llama4ForCausalLM,
    Llama4TextConfig,
    MistralConfig,
    MistralForCausalLM,
    MixtralConfig,
    MixtralForCausalLM,
    Olmo2Config,
    Olmo2ForCausalLM,
    Olmo3Config,
    Olmo3ForCausalLM,
    OlmoeConfig,
    OlmoeForCausalLM,
    Phi3Config,
    Phi3ForCausalLM,
    PreTrainedTokenizerFast,
    Qwen2Config,
    Qwen2ForCausalLM,
    Qwen2MoeConfig,
    Qwen2MoeForCausalLM,
    Qwen2_5_VLConfig,
    Qwen2_5_VLForConditionalGeneration,
    Qwen2VLConfig,
    Qwen2VLForConditionalGeneration,
    Qwen3Config,
    Qwen3ForCausalLM,
    Qwen3MoeConfig,
    Qwen3MoeForCausalLM,
    Qwen3VLConfig,
    Qwen3VLForConditionalGeneration,
    Qwen3VLMoeConfig,
    Qwen3VLMoeForConditionalGeneration,
    SeedOssConfig,
    SeedOssForCausalLM,
    SmolLM3Config,
    SmolLM3ForCausalLM,
    Starcoder2Config,
    Starcoder2ForCausalLM,
    CohereConfig,
    CohereForCausalLM,
    Cohere2Config,
    Cohere2ForCausalLM,
    PhiConfig,
    PhiForCausalLM,
)

REPO_ROOT = Path(__file__).resolve().parent.parent
FIXTURES_DIR = REPO_ROOT / "tests" / "fixtures"
DEMO_DIR = REPO_ROOT / "models" / "demo"

# ---------------------------------------------------------------------------
# Corpus: each entry is (question, answer). The tokenizer is trained on all of it and
# the demo model learns to answer the questions in ChatML form. Non-ASCII text (accents,
# emoji, CJK) repeats often enough that some multi-byte characters become single tokens
# while rarer ones stay split across byte tokens, which exercises incremental decoding.
# ---------------------------------------------------------------------------
CORPUS: list[tuple[str, str]] = [
    (
        "What is a kiln?",
        "A kiln is a hot oven for clay. The potter shapes a bowl on the wheel, lets it dry "
        "for a few days, and then places it in the kiln. The fire rises slowly, and the clay "
        "turns hard as stone. A good kiln keeps the heat even, so every bowl comes out strong.",
    ),
    (
        "How do you bake bread?",
        "To bake bread, mix flour, water, salt and a little yeast. Knead the dough until it "
        "is smooth, then let it rest in a warm place until it has doubled. Shape the loaf, "
        "let it rise again, and bake it in a hot oven until the crust is brown and the loaf "
        "sounds hollow when you tap it.",
    ),
    (
        "Tell me about the river town.",
        "The river town sits where two rivers meet. In the morning the boats carry fish and "
        "apples to the market, and in the evening the lights of the old bridge shine on the "
        "water. The people of the town say the river is slow in summer and wild in spring.",
    ),
    (
        "What can you see in the night sky?",
        "On a clear night you can see the moon, the planets and thousands of stars. The stars "
        "seem to turn around the pole star as the night goes on. Far from the city lights, "
        "the Milky Way rises like a pale river across the sky.",
    ),
    (
        "What does the cat do all day?",
        "The cat sleeps in the sun for most of the day. In the morning she asks for her "
        "breakfast, in the afternoon she watches the birds from the window, and at night she "
        "walks through the garden as quiet as a shadow.",
    ),
    (
        "Where is the café?",
        "The café is on the corner of the old square. Its menu offers café au lait, crème "
        "brûlée and a warm crêpe with honey. The owner, José, greets every guest with a smile, "
        "and the pâtisserie next door sells the best croissants in the town. Café, crème, "
        "crêpe: the café is a happy place. 🙂",
    ),
    (
        "How do you say hello in Japanese?",
        "In Japanese, hello is こんにちは and thank you is ありがとう. Tokyo is written 東京 and "
        "Japan is written 日本. When you visit 東京, say こんにちは to the people you meet, and "
        "say ありがとう when they help you. 日本 is a beautiful country. 🙂",
    ),
    (
        "How do you say hello in Chinese?",
        "In Chinese, hello is 你好 and thank you is 谢谢. The city of Beijing is written 北京. "
        "When you visit 北京, say 你好 to a friend and 谢谢 to the cook. 你好, 你好! 🙂",
    ),
    (
        "What is the weather like today?",
        "Today the weather is bright and mild. ☀️ The morning is cool, the afternoon is warm, "
        "and a soft wind comes from the sea. Tomorrow there may be rain 🌧️, so take a coat "
        "when you go out. The weather changes quickly near the sea.",
    ),
    (
        "Who are you?",
        "I am a tiny demo model made for testing kiln. I know a few short stories about a "
        "kiln, bread, a river town, the night sky, a cat, a café, and how to say hello. I am "
        "not a useful assistant, but I am happy to talk. 🙂",
    ),
]

SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
DEFAULT_SYSTEM_MESSAGE = "You are a helpful assistant."
TOKENIZER_VOCAB_SIZE = 448
MODEL_MAX_LENGTH = 2048

# The same split regex GPT-4 / Qwen2 style tokenizers use before byte-level BPE.
PRETOKENIZE_REGEX = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)

# A ChatML template built from the Jinja features real HF templates use: set/slices,
# a default system message, trim filter and .strip(), raise_exception, loop.first,
# loop.last and add_generation_prompt.
CHAT_TEMPLATE = (
    "{%- if messages and messages[0]['role'] == 'system' -%}\n"
    "    {%- set system_message = messages[0]['content'] | trim -%}\n"
    "    {%- set loop_messages = messages[1:] -%}\n"
    "{%- else -%}\n"
    "    {%- set system_message = '" + DEFAULT_SYSTEM_MESSAGE + "' -%}\n"
    "    {%- set loop_messages = messages -%}\n"
    "{%- endif -%}\n"
    "{{- '<|im_start|>system\\n' + system_message + '<|im_end|>\\n' -}}\n"
    "{%- for message in loop_messages -%}\n"
    "    {%- if message['role'] not in ['user', 'assistant'] -%}\n"
    "        {{- raise_exception('Unknown role: ' + message['role']) -}}\n"
    "    {%- endif -%}\n"
    "    {%- if loop.first and message['role'] != 'user' -%}\n"
    "        {{- raise_exception('The first message after the system message must come from the user') -}}\n"
    "    {%- endif -%}\n"
    "    {{- '<|im_start|>' + message['role'] + '\\n' + message['content'].strip() + '<|im_end|>' -}}\n"
    "    {%- if not loop.last or add_generation_prompt -%}\n"
    "        {{- '\\n' -}}\n"
    "    {%- endif -%}\n"
    "{%- endfor -%}\n"
    "{%- if add_generation_prompt -%}\n"
    "    {{- '<|im_start|>assistant\\n' -}}\n"
    "{%- endif -%}\n"
)

# Reference prompts: short (~5 tokens), medium with non-ASCII (~12), long (~30).
PROMPT_TEXTS = [
    "The river town",
    "Café crème at 東京 🙂 hello",
    "The river town sits where two rivers meet, and the boats carry fish.",
]
GREEDY_NEW_TOKENS = 32
# Smaller random weights where the default's attention would be too peaky for bf16 to follow:
# LongRoPE's attention factor at an original context of 3 multiplies the scores by 5.
WEIGHT_STD = {"phi3_longrope": 0.1, "gemma": 0.15, "qwen3_next": 0.1, "lfm2_moe": 0.1}
MIN_TOP2_MARGIN = 1e-3
MAX_SEED_ATTEMPTS = 200


# ---------------------------------------------------------------------------
# Tokenizer
# ---------------------------------------------------------------------------
def corpus_chat_texts() -> list[str]:
    """Every corpus entry as plain text and as a rendered ChatML conversation."""
    texts = []
    for question, answer in CORPUS:
        texts.append(question + " " + answer)
        texts.append(render_chatml(question, answer))
    return texts


def render_chatml(question: str, answer: str) -> str:
    return (
        f"<|im_start|>system\n{DEFAULT_SYSTEM_MESSAGE}<|im_end|>\n"
        f"<|im_start|>user\n{question}<|im_end|>\n"
        f"<|im_start|>assistant\n{answer}<|im_end|>\n"
    )


def build_tokenizer() -> Tokenizer:
    tokenizer = Tokenizer(models.BPE())
    tokenizer.normalizer = normalizers.NFC()
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(PRETOKENIZE_REGEX), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False, trim_offsets=False),
        ]
    )
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=TOKENIZER_VOCAB_SIZE,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    # Several passes weight the corpus toward its own words; order is fixed.
    tokenizer.train_from_iterator(corpus_chat_texts() * 3, trainer=trainer)
    check_tokenizer(tokenizer)
    return tokenizer


def check_tokenizer(tokenizer: Tokenizer) -> None:
    vocab = tokenizer.get_vocab()
    for token in SPECIAL_TOKENS:
        assert token in vocab, f"special token {token} missing"
    multibyte = [
        tokenizer.decode([i]) for i in range(tokenizer.get_vocab_size())
        if any(ord(c) > 127 for c in tokenizer.decode([i])) and "\ufffd" not in tokenizer.decode([i])
    ]
    assert multibyte, "no token decodes to a whole non-ASCII character"
    assert any(ord(c) >= 0x3000 for t in multibyte for c in t), "no CJK character is a single token"
    for text in PROMPT_TEXTS:
        assert tokenizer.decode(tokenizer.encode(text).ids) == text, f"round trip failed: {text}"


def tokenizer_config() -> dict:
    added = {
        str(i): {
            "content": token,
            "lstrip": False,
            "normalized": False,
            "rstrip": False,
            "single_word": False,
            "special": True,
        }
        for i, token in enumerate(SPECIAL_TOKENS)
    }
    return {
        "add_bos_token": False,
        "add_prefix_space": False,
        "added_tokens_decoder": added,
        "additional_special_tokens": ["<|im_start|>", "<|im_end|>"],
        "bos_token": None,
        "chat_template": CHAT_TEMPLATE,
        "clean_up_tokenization_spaces": False,
        "eos_token": "<|im_end|>",
        "errors": "replace",
        "model_max_length": MODEL_MAX_LENGTH,
        "pad_token": "<|endoftext|>",
        "split_special_tokens": False,
        "tokenizer_class": "PreTrainedTokenizerFast",
        "unk_token": None,
    }


def write_tokenizer(tokenizer: Tokenizer, directory: Path) -> PreTrainedTokenizerFast:
    directory.mkdir(parents=True, exist_ok=True)
    tokenizer.save(str(directory / "tokenizer.json"))
    write_json(directory / "tokenizer_config.json", tokenizer_config())
    # Load back through transformers so references use exactly what a user would get.
    return AutoTokenizer.from_pretrained(str(directory))


def tokenizer_cases(hf_tokenizer: PreTrainedTokenizerFast) -> dict:
    """Encode / decode / chat-template references for the Rust tokenizer module."""
    texts = PROMPT_TEXTS + [
        "",
        "  leading and trailing spaces  ",
        "line one\nline two\n\n\ttabbed",
        "<|im_start|>user\nhi<|im_end|>",
        "naïve résumé, crêpe brûlée, ありがとう, 谢谢, 🌧️ and ☀️",
    ]
    encode_cases = []
    for text in texts:
        ids = hf_tokenizer.encode(text, add_special_tokens=False)
        encode_cases.append(
            {
                "text": text,
                "ids": ids,
                "tokens": hf_tokenizer.convert_ids_to_tokens(ids),
                "decoded": hf_tokenizer.decode(ids),
            }
        )
    conversations = [
        {"messages": [{"role": "user", "content": "What is a kiln?"}], "add_generation_prompt": True},
        {
            "messages": [
                {"role": "system", "content": "  You are a potter.  "},
                {"role": "user", "content": "How do you bake bread?  "},
                {"role": "assistant", "content": " Mix flour and water. "},
                {"role": "user", "content": "Thanks! 🙂"},
            ],
            "add_generation_prompt": True,
        },
        {
            "messages": [
                {"role": "user", "content": "Hello"},
                {"role": "assistant", "content": "Hi there."},
            ],
            "add_generation_prompt": False,
        },
    ]
    chat_cases = []
    for case in conversations:
        rendered = hf_tokenizer.apply_chat_template(
            case["messages"], tokenize=False, add_generation_prompt=case["add_generation_prompt"]
        )
        ids = hf_tokenizer.encode(rendered, add_special_tokens=False)
        chat_cases.append({**case, "rendered": rendered, "ids": ids})
    error_cases = []
    for messages in (
        [{"role": "tool", "content": "42"}],
        [{"role": "assistant", "content": "I speak first."}],
    ):
        try:
            hf_tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        except Exception as err:  # transformers raises TemplateError from raise_exception
            error_cases.append({"messages": messages, "error": str(err)})
        else:
            raise AssertionError(f"template accepted invalid messages {messages}")
    return {
        "vocab_size": len(hf_tokenizer),
        "special_tokens": {t: hf_tokenizer.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS},
        "encode": encode_cases,
        "chat_template": chat_cases,
        "chat_template_errors": error_cases,
    }


# ---------------------------------------------------------------------------
# Tiny random-weight reference models
# ---------------------------------------------------------------------------
# transformers 4.57's StableLM zeroes every LayerNorm's bias at init, and its per-head q/k
# LayerNorms (qk_layernorm) have none: fill their weights only (randomize_weights overwrites
# every parameter afterwards anyway).
_stablelm_init_weights = StableLmPreTrainedModel._init_weights


def _stablelm_init_weights_without_bias(self, module):
    if isinstance(module, torch.nn.LayerNorm) and module.bias is None:
        module.weight.data.fill_(1.0)
        return
    _stablelm_init_weights(self, module)


StableLmPreTrainedModel._init_weights = _stablelm_init_weights_without_bias


# transformers 4.57's eager Mamba-2 mixers (Bamba, Granite 4.0 hybrids, Mamba2) RMS-norm the gated
# scan output over its whole width, while mamba_ssm's fused kernel, which these checkpoints
# were trained with and transformers' own CUDA path calls, norms each of the n_groups
# groups on its own (group_size = width / n_groups); so does kiln. The two agree for one
# group; the bamba fixture has two, so its reference uses the grouped norm.
def _grouped_gated_rms_norm(self, hidden_states, gate=None):
    input_dtype = hidden_states.dtype
    hidden_states = hidden_states.to(torch.float32)
    if gate is not None:
        hidden_states = hidden_states * torch.nn.functional.silu(gate.to(torch.float32))
    shape = hidden_states.shape
    grouped = hidden_states.view(*shape[:-1], self.n_groups, shape[-1] // self.n_groups)
    variance = grouped.pow(2).mean(-1, keepdim=True)
    grouped = grouped * torch.rsqrt(variance + self.variance_epsilon)
    return self.weight * grouped.view(shape).to(input_dtype)


def _with_grouped_norm(mixer_cls):
    original_init = mixer_cls.__init__

    def init(self, *args, **kwargs):
        original_init(self, *args, **kwargs)
        self.norm.n_groups = self.n_groups

    mixer_cls.__init__ = init


for _mixer, _norm in [
    (transformers.models.bamba.modeling_bamba.BambaMixer,
     transformers.models.bamba.modeling_bamba.BambaRMSNormGated),
    (transformers.models.granitemoehybrid.modeling_granitemoehybrid.GraniteMoeHybridMambaLayer,
     transformers.models.granitemoehybrid.modeling_granitemoehybrid.GraniteMoeHybridRMSNormGated),
    (transformers.models.mamba2.modeling_mamba2.Mamba2Mixer,
     transformers.models.mamba2.modeling_mamba2.MambaRMSNormGated),
]:
    _with_grouped_norm(_mixer)
    _norm.forward = _grouped_gated_rms_norm


def fixture_configs(vocab_size: int, eos_id: int, pad_id: int) -> dict[str, tuple[type, object]]:
    falcon = dict(
        vocab_size=vocab_size,
        hidden_size=64,
        ffn_hidden_size=128,
        num_hidden_layers=2,
        num_attention_heads=8,
        max_position_embeddings=256,
        layer_norm_epsilon=1e-5,
        activation="gelu",
        bos_token_id=None,
        eos_token_id=eos_id,
        pad_token_id=pad_id,
        torch_dtype="float32",
        tie_word_embeddings=False,
    )
    common = dict(
        vocab_size=vocab_size,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=8,
        num_key_value_heads=2,
        max_position_embeddings=256,
        rms_norm_eps=1e-6,
        hidden_act="silu",
        bos_token_id=None,
        eos_token_id=eos_id,
        pad_token_id=pad_id,
        torch_dtype="float32",
    )
    # The Qwen VL models: the text model's fields (token ids go at the top level) and a
    # one-block vision tower, which kiln never reads.
    vl_text = {k: v for k, v in common.items() if k not in ("bos_token_id", "eos_token_id", "pad_token_id")}
    neox = {
        **{k: v for k, v in common.items() if k not in ("rms_norm_eps", "hidden_act", "num_key_value_heads")},
        "hidden_act": "gelu",
        "layer_norm_eps": 1e-5,
        "rotary_emb_base": 10000,
        "tie_word_embeddings": False,
    }
    bigcode = {
        "vocab_size": vocab_size,
        "n_embd": 64,
        "n_inner": 128,
        "n_layer": 2,
        "n_head": 8,
        "n_positions": 256,
        "activation_function": "gelu_pytorch_tanh",
        "layer_norm_epsilon": 1e-5,
        "bos_token_id": None,
        "eos_token_id": eos_id,
        "pad_token_id": pad_id,
        "torch_dtype": "float32",
        "tie_word_embeddings": False,
    }
    vl_vision = {"depth": 1, "hidden_size": 32, "intermediate_size": 64, "num_heads": 2, "out_hidden_size": 64}
    configs = {
        "llama": (
            LlamaForCausalLM,
            LlamaConfig(**common, rope_theta=10000.0, tie_word_embeddings=False),
        ),
        # Llama with attention_bias: biases on q, k, v and o_proj (a llamafied checkpoint's).
        "llama_attention_bias": (
            LlamaForCausalLM,
            LlamaConfig(**common, rope_theta=10000.0, attention_bias=True, tie_word_embeddings=False),
        ),
        "llama31": (
            LlamaForCausalLM,
            LlamaConfig(
                **common,
                rope_theta=500000.0,
                rope_scaling={
                    "rope_type": "llama3",
                    "factor": 8.0,
                    "low_freq_factor": 1.0,
                    "high_freq_factor": 4.0,
                    "original_max_position_embeddings": 64,
                },
                tie_word_embeddings=True,
            ),
        ),
        "mistral": (
            MistralForCausalLM,
            MistralConfig(**common, rope_theta=10000.0, sliding_window=None, tie_word_embeddings=False),
        ),
        "qwen2": (
            Qwen2ForCausalLM,
            Qwen2Config(
                **common,
                rope_theta=1000000.0,
                use_sliding_window=False,
                sliding_window=None,
                tie_word_embeddings=True,
            ),
        ),
        "qwen3": (
            Qwen3ForCausalLM,
            Qwen3Config(
                **common,
                head_dim=32,
                rope_theta=1000000.0,
                use_sliding_window=False,
                sliding_window=None,
                tie_word_embeddings=False,
            ),
        ),
        # Qwen3 with YaRN (Qwen2.5 / Qwen3's long-context setting): factor 4 over an original
        # context of 64, so the ramp runs over pairs 0..5 of 16 and the attention factor is
        # 0.1 ln 4 + 1.
        "qwen3_yarn": (
            Qwen3ForCausalLM,
            Qwen3Config(
                **common,
                head_dim=32,
                rope_theta=10000.0,
                rope_scaling={"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 64},
                use_sliding_window=False,
                sliding_window=None,
                tie_word_embeddings=False,
            ),
        ),
        # Fused qkv_proj and gate_up_proj weights.
        "phi3": (
            Phi3ForCausalLM,
            Phi3Config(
                **common,
                rope_theta=10000.0,
                sliding_window=None,
                original_max_position_embeddings=256,
                tie_word_embeddings=False,
            ),
        ),
        # Mixture of experts: 8 experts of 32, top 2, weights not renormalised; layer 1 is
        # a dense MLP (mlp_only_layers).
        "qwen3_moe": (
            Qwen3MoeForCausalLM,
            Qwen3MoeConfig(
                **common,
                head_dim=32,
                rope_theta=1000000.0,
                use_sliding_window=False,
                sliding_window=None,
                tie_word_embeddings=False,
                num_experts=8,
                num_experts_per_tok=2,
                moe_intermediate_size=32,
                norm_topk_prob=False,
                decoder_sparse_step=1,
                mlp_only_layers=[1],
            ),
        ),
        # Qwen2-MoE: q/k/v biases, 4 experts of 32, top 2, and a shared expert of 64 behind a
        # sigmoid gate.
        "qwen2_moe": (
            Qwen2MoeForCausalLM,
            Qwen2MoeConfig(
                **common,
                rope_theta=1000000.0,
                use_sliding_window=False,
                sliding_window=None,
                tie_word_embeddings=False,
                num_experts=4,
                num_experts_per_tok=2,
                moe_intermediate_size=32,
                shared_expert_intermediate_size=64,
                norm_topk_prob=False,
                decoder_sparse_step=1,
                mlp_only_layers=[],
            ),
        ),
        # 4 experts of 128, top 2, renormalised (Mixtral always is).
        "mixtral": (
            MixtralForCausalLM,
            MixtralConfig(
                **common,
                rope_theta=1000000.0,
                sliding_window=None,
                tie_word_embeddings=False,
                num_local_experts=4,
                num_experts_per_tok=2,
            ),
        ),
        # Gemma 3: a sliding layer (window 8, RoPE base 10000) then a global one (base 1e6,
        # linear scaling 4); query_pre_attn_scalar 24 with head_dim 32, so the query scale
        # is not head_dim's; GeGLU (tanh); scaled embeddings. Untied, unlike real Gemma:
        # with random weights a tied head scores the input token's own (sqrt(hidden)-scaled)
        # embedding highest and the model repeats it. llama31 and qwen2 cover tied heads.
        "gemma3": (
            Gemma3ForCausalLM,
            Gemma3TextConfig(
                **{k: v for k, v in common.items() if k != "hidden_act"},
                hidden_activation="gelu_pytorch_tanh",
                head_dim=32,
                query_pre_attn_scalar=24,
                sliding_window=8,
                layer_types=["sliding_attention", "full_attention"],
                rope_theta=1000000.0,
                rope_local_base_freq=10000.0,
                rope_scaling={"rope_type": "linear", "factor": 4.0},
                final_logit_softcapping=None,
                attn_logit_softcapping=None,
                tie_word_embeddings=False,
            ),
        ),
        # Gemma 2: a sliding layer (window 8) then a global one; query_pre_attn_scalar 24 with
        # head_dim 32 (no q norm: kiln folds the scale into q's rows); soft-capped scores
        # and logits at caps small enough to matter for these weights (Gemma 2's own 50 and
        # 30 would change them by less than the test's tolerance). Untied, as gemma3.
        "gemma2": (
            Gemma2ForCausalLM,
            Gemma2Config(
                **{k: v for k, v in common.items() if k != "hidden_act"},
                hidden_activation="gelu_pytorch_tanh",
                head_dim=32,
                query_pre_attn_scalar=24,
                sliding_window=8,
                layer_types=["sliding_attention", "full_attention"],
                rope_theta=10000.0,
                attn_logit_softcapping=4.0,
                final_logit_softcapping=12.0,
                tie_word_embeddings=False,
            ),
        ),
        # Gemma (1): Llama's layers with 1 + w norms, GeGLU (tanh) and scaled embeddings;
        # head_dim 16, so q is wider than the hidden state. hidden_act says tanh too, as
        # transformers 4.57 reads it (the hub configs say `gelu` there, and kiln follows
        # `hidden_activation`, as the config's documentation does). Untied, for the reason
        # given at gemma3.
        "gemma": (
            GemmaForCausalLM,
            GemmaConfig(
                **{k: v for k, v in common.items() if k != "hidden_act"},
                hidden_act="gelu_pytorch_tanh",
                hidden_activation="gelu_pytorch_tanh",
                head_dim=16,
                rope_theta=10000.0,
                tie_word_embeddings=False,
            ),
        ),
        # Granite: Llama with its four multipliers, none of them 1. Untied, unlike real
        # Granite, for the reason given at gemma3 (kiln applies the logit scaling to the last
        # hidden state either way).
        "granite": (
            GraniteForCausalLM,
            GraniteConfig(
                **common,
                rope_theta=10000.0,
                embedding_multiplier=4.0,
                attention_multiplier=0.05,
                residual_multiplier=0.5,
                logits_scaling=3.0,
                tie_word_embeddings=False,
            ),
        ),
        # Granite MoE: granite's multipliers, 8 experts of 32 (intermediate_size) stored as
        # stacks, top 2 by a softmax over their logits.
        "granitemoe": (
            GraniteMoeForCausalLM,
            GraniteMoeConfig(
                **{k: v for k, v in common.items() if k != "intermediate_size"},
                intermediate_size=32,
                rope_theta=10000.0,
                embedding_multiplier=4.0,
                attention_multiplier=0.05,
                residual_multiplier=0.5,
                logits_scaling=3.0,
                num_local_experts=8,
                num_experts_per_tok=2,
                tie_word_embeddings=False,
            ),
        ),
        # Granite MoE with a shared MLP (GraniteMoeShared): granitemoe's experts beside a
        # shared MLP of 48 (fused `shared_mlp.input_linear`).
        "granitemoeshared": (
            GraniteMoeSharedForCausalLM,
            GraniteMoeSharedConfig(
                **{k: v for k, v in common.items() if k != "intermediate_size"},
                intermediate_size=32,
                shared_intermediate_size=48,
                rope_theta=10000.0,
                embedding_multiplier=4.0,
                attention_multiplier=0.05,
                residual_multiplier=0.5,
                logits_scaling=3.0,
                num_local_experts=8,
                num_experts_per_tok=2,
                tie_word_embeddings=False,
            ),
        ),
        # GLM-4 (0414): norms around both blocks, fused gate/up weights, q/k/v biases, and
        # interleaved rotary embeddings on half of each 32-value head.
        "glm4": (
            Glm4ForCausalLM,
            Glm4Config(
                **common,
                head_dim=32,
                partial_rotary_factor=0.5,
                attention_bias=True,
                rope_theta=10000.0,
                tie_word_embeddings=False,
            ),
        ),
        # GLM-4.5's MoE: a dense first layer, then 8 experts (top 2) chosen by sigmoid score plus
        # a correction bias within the better of 2 groups, weights renormalised and scaled by
        # 2.5, and an ungated shared expert; q/k/v biases, q/k norms and rotate-half rotary on
        # half of each head.
        "glm4_moe": (
            Glm4MoeForCausalLM,
            Glm4MoeConfig(
                **dict(common, num_hidden_layers=3, intermediate_size=96),
                head_dim=16,
                partial_rotary_factor=0.5,
                attention_bias=True,
                use_qk_norm=True,
                rope_theta=10000.0,
                n_routed_experts=8,
                num_experts_per_tok=2,
                n_group=2,
                topk_group=1,
                moe_intermediate_size=32,
                n_shared_experts=1,
                first_k_dense_replace=1,
                routed_scaling_factor=2.5,
                norm_topk_prob=True,
                tie_word_embeddings=False,
            ),
        ),
        # DeepSeek-V2 (V2-Lite's layout): multi-head latent attention with q projected directly,
        # k and v decompressed from a 32-value latent, 16 + 8 rotary values per q/k head and 12
        # per v head; a dense first layer, then 8 experts (top 2) by softmax within the 2 best
        # of 4 groups (group_limited_greedy, by the group's best score), scaled by 2 without
        # renormalising, and 2 ungated shared experts. No rope scaling: transformers' port of
        # V2 leaves out the original's YaRN softmax scale (kiln applies it, see deepseek_v3).
        "deepseek_v2": (
            DeepseekV2ForCausalLM,
            DeepseekV2Config(
                **dict(common, num_hidden_layers=3, intermediate_size=96, num_key_value_heads=8),
                q_lora_rank=None,
                kv_lora_rank=32,
                qk_nope_head_dim=16,
                qk_rope_head_dim=8,
                v_head_dim=12,
                rope_theta=10000.0,
                n_routed_experts=8,
                num_experts_per_tok=2,
                moe_intermediate_size=32,
                n_shared_experts=2,
                first_k_dense_replace=1,
                topk_method="group_limited_greedy",
                n_group=4,
                topk_group=2,
                routed_scaling_factor=2.0,
                norm_topk_prob=False,
                tie_word_embeddings=False,
            ),
        ),
        # DeepSeek-V3 / R1, Kimi K2, Moonlight: V2's latent attention with a low-rank q (24) and
        # interleaved rotary pairs under YaRN (factor 4, mscale = mscale_all_dim = 1: the
        # rotation unscaled, the softmax scaled by (0.1 ln 4 + 1)^2); GLM-4.5's router (sigmoid,
        # correction bias, 2 of 4 groups, renormalised, scale 2.5) and one shared expert.
        "deepseek_v3": (
            DeepseekV3ForCausalLM,
            DeepseekV3Config(
                **dict(common, num_hidden_layers=3, intermediate_size=96, num_key_value_heads=8),
                q_lora_rank=24,
                kv_lora_rank=32,
                qk_nope_head_dim=16,
                qk_rope_head_dim=8,
                v_head_dim=20,
                rope_theta=10000.0,
                rope_scaling={
                    "rope_type": "yarn",
                    "factor": 4.0,
                    "beta_fast": 32.0,
                    "beta_slow": 1.0,
                    "mscale": 1.0,
                    "mscale_all_dim": 1.0,
                    "original_max_position_embeddings": 64,
                },
                rope_interleave=True,
                n_routed_experts=8,
                num_experts_per_tok=2,
                moe_intermediate_size=32,
                n_shared_experts=1,
                first_k_dense_replace=1,
                n_group=4,
                topk_group=2,
                routed_scaling_factor=2.5,
                norm_topk_prob=True,
                tie_word_embeddings=False,
            ),
        ),
        # Phi-4-mini's rotary: LongRoPE on the first 3/4 of each 16-value head (6 pairs). The
        # original context of 3 is under every prompt's length, so transformers runs the long
        # factors throughout, as kiln does whenever its context exceeds the original one; the
        # attention factor is sqrt(1 + ln(256 / 3) / ln 3).
        "phi3_longrope": (
            Phi3ForCausalLM,
            Phi3Config(
                **dict(common, hidden_size=128),
                partial_rotary_factor=0.75,
                rope_theta=10000.0,
                sliding_window=None,
                original_max_position_embeddings=3,
                rope_scaling={
                    "type": "longrope",
                    "short_factor": [1.0, 1.1, 1.3, 1.8, 2.5, 3.0],
                    "long_factor": [1.0, 1.5, 3.0, 6.0, 12.0, 20.0],
                },
                tie_word_embeddings=False,
            ),
        ),
        # gpt-oss: attention sinks, q/k/v/o biases, sliding (window 8, under the prompts'
        # lengths) and full layers alternating, YaRN without truncation, and 4 experts (top 2)
        # with biases, interleaved gate/up columns and the clamped SwiGLU.
        "gpt_oss": (
            GptOssForCausalLM,
            GptOssConfig(
                **dict(common, intermediate_size=32),
                head_dim=16,
                num_local_experts=4,
                num_experts_per_tok=2,
                sliding_window=8,
                rope_theta=150000.0,
                rope_scaling={
                    "rope_type": "yarn",
                    "factor": 4.0,
                    "beta_fast": 32.0,
                    "beta_slow": 1.0,
                    "truncate": False,
                    "original_max_position_embeddings": 64,
                },
                tie_word_embeddings=False,
            ),
        ),
        # OLMo 2: no norm before either block, each block's output normed before its residual
        # add, RMS norms over the whole q and k projections.
        "olmo2": (
            Olmo2ForCausalLM,
            Olmo2Config(
                **common,
                rope_theta=500000.0,
                tie_word_embeddings=False,
            ),
        ),
        # Seed-OSS: Llama's layers with q/k/v biases and, here, the optional o bias.
        "seed_oss": (
            SeedOssForCausalLM,
            SeedOssConfig(
                **common,
                head_dim=16,
                rope_theta=10000000.0,
                attention_bias=True,
                attention_out_bias=True,
                tie_word_embeddings=False,
            ),
        ),
        # OLMo 3: OLMo 2's layers, sliding (window 8, under the prompts' lengths) and full
        # alternating here, YaRN on the full layers only.
        "olmo3": (
            Olmo3ForCausalLM,
            Olmo3Config(
                **common,
                rope_theta=500000.0,
                rope_scaling={"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 64},
                sliding_window=8,
                layer_types=["sliding_attention", "full_attention"],
                tie_word_embeddings=False,
            ),
        ),
        # Qwen2.5-VL, run on text alone: Qwen2's layers (q/k/v biases) with multimodal RoPE,
        # whose three position axes are equal for text tokens. A tiny vision tower rides
        # along unread. Saved by transformers 4.57 with the hub's weight names
        # (model.layers.*, visual.*).
        "qwen2_5_vl": (
            Qwen2_5_VLForConditionalGeneration,
            Qwen2_5_VLConfig(
                text_config={
                    **vl_text,
                    "rope_theta": 1000000.0,
                    "rope_scaling": {"type": "mrope", "mrope_section": [2, 1, 1]},
                    "tie_word_embeddings": False,
                },
                vision_config={**vl_vision, "fullatt_block_indexes": [0]},
                eos_token_id=eos_id,
                pad_token_id=pad_id,
                tie_word_embeddings=False,
            ),
        ),
        # Qwen2-VL, run on text alone: Qwen2.5-VL's text model (its vision tower differs, and
        # rides along unread).
        "qwen2_vl": (
            Qwen2VLForConditionalGeneration,
            Qwen2VLConfig(
                text_config={
                    **vl_text,
                    "rope_theta": 1000000.0,
                    "rope_scaling": {"type": "mrope", "mrope_section": [2, 1, 1]},
                    "tie_word_embeddings": False,
                },
                vision_config={"depth": 1, "embed_dim": 32, "hidden_size": 64, "num_heads": 2, "mlp_ratio": 2},
                eos_token_id=eos_id,
                pad_token_id=pad_id,
                tie_word_embeddings=False,
            ),
        ),
        # Qwen3-VL, run on text alone: Qwen3's layers (q/k norms) with interleaved multimodal
        # RoPE; weights under model.language_model.*.
        "qwen3_vl": (
            Qwen3VLForConditionalGeneration,
            Qwen3VLConfig(
                text_config={
                    **vl_text,
                    "head_dim": 8,
                    "rope_theta": 5000000.0,
                    "rope_scaling": {"rope_type": "default", "mrope_section": [2, 1, 1], "mrope_interleaved": True},
                },
                vision_config={**vl_vision, "deepstack_visual_indexes": [0]},
                eos_token_id=eos_id,
                pad_token_id=pad_id,
                tie_word_embeddings=False,
            ),
        ),
        # Qwen3-VL-MoE, run on text alone: Qwen3-MoE's layers (softmax routing, top k
        # renormalised), its experts stored as stacks with gate and up in halves.
        "qwen3_vl_moe": (
            Qwen3VLMoeForConditionalGeneration,
            Qwen3VLMoeConfig(
                text_config={
                    **vl_text,
                    "head_dim": 8,
                    "rope_theta": 5000000.0,
                    "rope_scaling": {"rope_type": "default", "mrope_section": [2, 1, 1], "mrope_interleaved": True},
                    "num_experts": 8,
                    "num_experts_per_tok": 2,
                    "moe_intermediate_size": 32,
                    "decoder_sparse_step": 1,
                },
                vision_config={**vl_vision, "deepstack_visual_indexes": [0]},
                eos_token_id=eos_id,
                pad_token_id=pad_id,
                tie_word_embeddings=False,
            ),
        ),
        # GLM-4.1V, run on text alone: GLM-4-0414's layer (sandwich norms, biased q/k/v,
        # interleaved rotary on half of each head, by sections that are equal on text),
        # saved as model.language_model.*.
        "glm4v": (
            Glm4vForConditionalGeneration,
            Glm4vConfig(
                text_config={
                    **vl_text,
                    "partial_rotary_factor": 0.5,
                    "rope_theta": 10000.0,
                    "rope_scaling": {"type": "default", "mrope_section": [1, 1, 0]},
                },
                vision_config=GLM4V_VISION,
                eos_token_id=eos_id,
                pad_token_id=pad_id,
                tie_word_embeddings=False,
            ),
        ),
        # GLM-4.5V, run on text alone: GLM-4.5's layers (a dense first layer, then sigmoid-
        # routed experts with a correction bias and a shared expert), rotate-half rotary on
        # half of each head by sections.
        "glm4v_moe": (
            Glm4vMoeForConditionalGeneration,
            Glm4vMoeConfig(
                text_config={
                    **vl_text,
                    "partial_rotary_factor": 0.5,
                    "rope_theta": 10000.0,
                    "rope_scaling": {"type": "default", "mrope_section": [1, 1, 0]},
                    "attention_bias": True,
                    "moe_intermediate_size": 32,
                    "n_routed_experts": 8,
                    "num_experts_per_tok": 2,
                    "n_shared_experts": 1,
                    "first_k_dense_replace": 1,
                    "routed_scaling_factor": 2.5,
                },
                vision_config=GLM4V_VISION,
                eos_token_id=eos_id,
                pad_token_id=pad_id,
                tie_word_embeddings=False,
            ),
        ),
        # InternVL (transformers' format) over a Qwen3 text model, run on text alone; saved
        # as language_model.model.* and language_model.lm_head.
        "internvl": (
            InternVLForConditionalGeneration,
            InternVLConfig(
                text_config={**vl_text, "model_type": "qwen3", "head_dim": 8, "rope_theta": 1000000.0},
                vision_config={"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1,
                               "num_attention_heads": 2, "image_size": [28, 28], "patch_size": [14, 14]},
                eos_token_id=eos_id,
                pad_token_id=pad_id,
                tie_word_embeddings=False,
            ),
        ),
        # StarCoder2: LayerNorms with biases, biases on every projection, an ungated GELU
        # (tanh) MLP, a sliding window (8, under the prompts' lengths).
        "starcoder2": (
            Starcoder2ForCausalLM,
            Starcoder2Config(
                **{k: v for k, v in common.items() if k not in ("rms_norm_eps", "hidden_act")},
                hidden_act="gelu_pytorch_tanh",
                norm_epsilon=1e-5,
                use_bias=True,
                rope_theta=100000.0,
                sliding_window=8,
                tie_word_embeddings=True,
            ),
        ),
        # Cohere (Command R / Aya): one bias-free LayerNorm feeding attention and the MLP in
        # parallel, interleaved rotary pairs, scaled logits (0.5 here: the real 0.0625 would
        # leave a random model's greedy steps near ties), tied embeddings.
        "cohere": (
            CohereForCausalLM,
            CohereConfig(
                **{k: v for k, v in common.items() if k != "rms_norm_eps"},
                layer_norm_eps=1e-5,
                logit_scale=0.5,
                rope_theta=10000.0,
                tie_word_embeddings=True,
            ),
        ),
        # Command R+: Cohere's layer with per-head q/k LayerNorms (a [heads, head_dim] weight
        # each, no bias) before the rotation.
        "cohere_qk_norm": (
            CohereForCausalLM,
            CohereConfig(
                **{k: v for k, v in common.items() if k != "rms_norm_eps"},
                layer_norm_eps=1e-5,
                logit_scale=0.5,
                rope_theta=10000.0,
                use_qk_norm=True,
                tie_word_embeddings=True,
            ),
        ),
        # OLMoE: pre-norm layers, RMS norms over the whole q and k projections, 8 experts of
        # 128 (intermediate_size), top 2, not renormalised.
        "olmoe": (
            OlmoeForCausalLM,
            OlmoeConfig(
                **common,
                rope_theta=10000.0,
                num_experts=8,
                num_experts_per_tok=2,
                norm_topk_prob=False,
                tie_word_embeddings=False,
            ),
        ),
        # Command R7B: Cohere's layer, layer 0 sliding (window 8, rotated), layer 1 global and
        # not rotated.
        "cohere2": (
            Cohere2ForCausalLM,
            Cohere2Config(
                **{k: v for k, v in common.items() if k != "rms_norm_eps"},
                layer_norm_eps=1e-5,
                logit_scale=0.5,
                rope_theta=10000.0,
                sliding_window=8,
                layer_types=["sliding_attention", "full_attention"],
                tie_word_embeddings=True,
            ),
        ),
        # Phi-2: Cohere's parallel layer with LayerNorm biases, biases everywhere, half of each
        # head rotating, an ungated GELU (tanh) MLP and a biased LM head.
        "phi": (
            PhiForCausalLM,
            PhiConfig(
                **{k: v for k, v in common.items() if k not in ("rms_norm_eps", "hidden_act")},
                hidden_act="gelu_new",
                layer_norm_eps=1e-5,
                partial_rotary_factor=0.5,
                rope_theta=10000.0,
                tie_word_embeddings=False,
            ),
        ),
        # GPT-NeoX (Pythia): LayerNorms with biases, q/k/v fused head by head with biases,
        # rotate-half rotary on half of each head, an ungated exact-GELU MLP with biases, and
        # attention and MLP side by side, each with its own norm; untied `embed_out`.
        "gpt_neox": (GPTNeoXForCausalLM, GPTNeoXConfig(**neox, rotary_pct=0.5, use_parallel_residual=True)),
        # Falcon-7B's shape: multi-query (one KV head) in a fused query_key_value, a parallel
        # layer with one LayerNorm, no biases, exact-GELU MLP of 128.
        "falcon": (FalconForCausalLM, FalconConfig(**falcon, multi_query=True, parallel_attn=True, bias=False)),
        # Falcon-40B's: KV groups (2 of 8 heads) laid out group by group, ln_attn / ln_mlp,
        # biases everywhere (Falcon-40B has none; the biased variant checks their layout).
        "falcon_40b": (
            FalconForCausalLM,
            FalconConfig(**falcon, new_decoder_architecture=True, num_kv_heads=2, bias=True),
        ),
        # Falcon with its blocks in sequence, every head its own k and v (multi_query false).
        # Falcon-RW: ALiBi (added before the scores are scaled), a sequential layer, every
        # head its own K/V, biases.
        "falcon_rw": (
            FalconForCausalLM,
            FalconConfig(**falcon, alibi=True, multi_query=False, parallel_attn=False, bias=True),
        ),
        "falcon_sequential": (
            FalconForCausalLM,
            FalconConfig(**falcon, multi_query=False, parallel_attn=False, bias=False, rope_theta=500000.0),
        ),
        # Arcee's AFM: Llama's layer with an ungated ReLU^2 MLP (up_proj, down_proj), no biases.
        "arcee": (
            ArceeForCausalLM,
            ArceeConfig(**{**common, "hidden_act": "relu2"}, rope_theta=10000.0, tie_word_embeddings=False),
        ),
        # Nemotron: LayerNorm1P (scale 1 + w, with biases), half of each head rotating, an
        # ungated ReLU^2 MLP; mlp_bias on to check the biases' layout.
        "nemotron": (
            NemotronForCausalLM,
            NemotronConfig(
                **{k: v for k, v in common.items() if k not in ("rms_norm_eps", "hidden_act")},
                norm_eps=1e-5,
                hidden_act="relu2",
                partial_rotary_factor=0.5,
                rope_theta=10000.0,
                mlp_bias=True,
                tie_word_embeddings=False,
            ),
        ),
        # StableLM 2: LayerNorms with biases, q/k/v biases, a quarter of each head rotating.
        "stablelm": (
            StableLmForCausalLM,
            StableLmConfig(
                **{k: v for k, v in common.items() if k != "rms_norm_eps"},
                layer_norm_eps=1e-5,
                use_qkv_bias=True,
                partial_rotary_factor=0.25,
                rope_theta=10000.0,
                tie_word_embeddings=False,
            ),
        ),
        # StableLM with attention and MLP in parallel from one LayerNorm (StableLM 2 12B's
        # layer without its q/k norms).
        "stablelm_parallel": (
            StableLmForCausalLM,
            StableLmConfig(
                **{k: v for k, v in common.items() if k != "rms_norm_eps"},
                layer_norm_eps=1e-5,
                use_parallel_residual=True,
                partial_rotary_factor=0.5,
                rope_theta=10000.0,
                tie_word_embeddings=False,
            ),
        ),
        # StableLM 2 12B: the parallel layer with a LayerNorm per q and k head (no bias).
        "stablelm_qk_norm": (
            StableLmForCausalLM,
            StableLmConfig(
                **{k: v for k, v in common.items() if k != "rms_norm_eps"},
                layer_norm_eps=1e-5,
                use_parallel_residual=True,
                qk_layernorm=True,
                partial_rotary_factor=0.25,
                rope_theta=10000.0,
                tie_word_embeddings=False,
            ),
        ),
        # GPT-Neo: learned positions, bias-free q/k/v with a biased out_proj, unscaled
        # attention scores, layer 0 global and layer 1 local over a window of 8.
        "gpt_neo": (
            GPTNeoForCausalLM,
            GPTNeoConfig(
                vocab_size=vocab_size,
                hidden_size=64,
                intermediate_size=128,
                num_layers=2,
                num_heads=8,
                attention_types=[[["global", "local"], 1]],
                window_size=8,
                max_position_embeddings=256,
                activation_function="gelu_new",
                layer_norm_epsilon=1e-5,
                bos_token_id=None,
                eos_token_id=eos_id,
                pad_token_id=pad_id,
                torch_dtype="float32",
                tie_word_embeddings=False,
            ),
        ),
        # BLOOM: ALiBi with 24 heads of 4 (not a power of two: eight slopes come from the
        # 32-head sequence; 24 splits 8 ways), a LayerNorm after the embeddings, q/k/v fused
        # head by head, biases everywhere, a tanh-GELU MLP of 4 x 96.
        "bloom": (
            BloomForCausalLM,
            BloomConfig(
                vocab_size=vocab_size,
                hidden_size=96,
                n_layer=2,
                n_head=24,
                layer_norm_epsilon=1e-5,
                bos_token_id=None,
                eos_token_id=eos_id,
                pad_token_id=pad_id,
                torch_dtype="float32",
                tie_word_embeddings=False,
            ),
        ),
        # MPT: ALiBi over 8 heads, bias-free LayerNorms and projections, one Wqkv, an exact
        # GELU MLP of 4 x 64 (transformers' MPT ignores expansion_ratio), and a softmax_scale
        # that is not head_dim's.
        "mpt": (
            MptForCausalLM,
            MptConfig(
                vocab_size=vocab_size,
                d_model=64,
                n_layers=2,
                n_heads=8,
                expansion_ratio=4,
                max_seq_len=256,
                layer_norm_epsilon=1e-5,
                attn_config={"alibi": True, "alibi_bias_max": 8, "softmax_scale": 0.25},
                bos_token_id=None,
                eos_token_id=eos_id,
                pad_token_id=pad_id,
                torch_dtype="float32",
                tie_word_embeddings=False,
            ),
        ),
        # Phi-3.5-MoE: Mixtral's experts (4, top 2) behind LayerNorms with biases, attention
        # and LM head biases, LongRoPE whose original context of 3 is under every prompt
        # (long factors throughout, as at phi3_longrope) with distinct short / long attention
        # factors, and SparseMixer routing with a wider threshold than the real 0.01, so
        # each pick's softmax holds several experts.
        "phimoe": (
            PhimoeForCausalLM,
            PhimoeConfig(
                **{k: v for k, v in common.items() if k != "rms_norm_eps"},
                rms_norm_eps=1e-5,
                num_local_experts=4,
                num_experts_per_tok=2,
                router_jitter_noise=0.3,
                attention_bias=True,
                lm_head_bias=True,
                rope_theta=10000.0,
                sliding_window=None,
                original_max_position_embeddings=3,
                rope_scaling={
                    "type": "longrope",
                    "short_factor": [1.0, 1.2, 1.5, 2.0],
                    "long_factor": [1.0, 2.0, 4.0, 8.0],
                    "short_mscale": 1.1,
                    "long_mscale": 1.3,
                    "original_max_position_embeddings": 3,
                },
                tie_word_embeddings=False,
            ),
        ),
        # Apertus: per-head q/k RMS norms before the rotation, norms named after their blocks,
        # an ungated xIELU MLP whose parameters (randomised per layer) are stored in bf16,
        # llama3 rope scaling (ApertusConfig's default).
        "apertus": (
            ApertusForCausalLM,
            ApertusConfig(**{k: v for k, v in common.items() if k != "hidden_act"}, hidden_act="xielu", head_dim=8, rope_theta=10000.0, tie_word_embeddings=False),
        ),
        # dots.llm1: Qwen3's attention, layer 0 dense, layer 1 eight experts of 32 (top 2,
        # one group as in the released model) plus one shared expert behind GLM-4.5's sigmoid
        # router with its correction bias, weights renormalised and scaled by 2; layer 1
        # slides over a window of 8 (max_window_layers 1).
        "dots1": (
            Dots1ForCausalLM,
            Dots1Config(
                **common,
                head_dim=8,
                rope_theta=10000.0,
                n_routed_experts=8,
                num_experts_per_tok=2,
                moe_intermediate_size=32,
                n_shared_experts=1,
                first_k_dense_replace=1,
                n_group=1,
                topk_group=1,
                norm_topk_prob=True,
                routed_scaling_factor=2.0,
                sliding_window=8,
                max_window_layers=1,
                tie_word_embeddings=False,
            ),
        ),
        # Hunyuan dense: per-head q/k RMS norms after the rotation, NTK-alpha rotary (alpha
        # 1000: a base of 10000 * 1000^(8/6)).
        "hunyuan_dense": (
            HunYuanDenseV1ForCausalLM,
            HunYuanDenseV1Config(
                **common,
                head_dim=8,
                rope_theta=10000.0,
                rope_scaling={"type": "dynamic", "factor": 1.0, "alpha": 1000.0},
                tie_word_embeddings=False,
            ),
        ),
        # Hunyuan MoE: the dense model's attention, four experts (top 2, renormalised) behind
        # an f32 router, plus a shared MLP on every token.
        "hunyuan_moe": (
            HunYuanMoEV1ForCausalLM,
            HunYuanMoEV1Config(
                **common,
                head_dim=8,
                rope_theta=10000.0,
                rope_scaling={"type": "dynamic", "factor": 1.0, "alpha": 1000.0},
                num_experts=4,
                moe_topk=2,
                tie_word_embeddings=False,
            ),
        ),
        # Llama 4: chunks of 5 positions on the rotating layers 0 and 2 (interleaved pairs,
        # llama3-scaled, weightless q/k norms), a query temperature that steps every 4
        # positions on layer 1, which neither rotates nor chunks; experts (top 1, the
        # router's sigmoid scaling their input) plus a shared one on layers 1 and 2, a
        # wider dense MLP on layer 0.
        "llama4": (
            Llama4ForCausalLM,
            Llama4TextConfig(
                **{**common, "num_hidden_layers": 3, "intermediate_size": 32},
                intermediate_size_mlp=96,
                head_dim=8,
                rope_theta=10000.0,
                rope_scaling={
                    "rope_type": "llama3",
                    "factor": 8.0,
                    "low_freq_factor": 1.0,
                    "high_freq_factor": 4.0,
                    "original_max_position_embeddings": 16,
                },
                no_rope_layer_interval=2,
                attention_chunk_size=5,
                attn_temperature_tuning=True,
                floor_scale=4,
                attn_scale=0.5,
                use_qk_norm=True,
                num_local_experts=4,
                num_experts_per_tok=1,
                moe_layers=[1, 2],
                tie_word_embeddings=False,
            ),
        ),
        # LFM2: gated short convolutions (3 taps over the paged cache of B * x rows) on
        # layers 0, 2 and 3, attention with per-head q/k RMS norms on layer 1; SwiGLU MLPs
        # two thirds of block_ff_dim wide, rounded to block_multiple_of.
        "lfm2": (
            Lfm2ForCausalLM,
            Lfm2Config(
                vocab_size=vocab_size,
                hidden_size=64,
                intermediate_size=192,
                block_multiple_of=32,
                num_hidden_layers=4,
                num_attention_heads=8,
                num_key_value_heads=2,
                max_position_embeddings=256,
                norm_eps=1e-5,
                rope_theta=10000.0,
                conv_L_cache=3,
                layer_types=["conv", "full_attention", "conv", "conv"],
                bos_token_id=None,
                eos_token_id=eos_id,
                pad_token_id=pad_id,
                torch_dtype="float32",
                tie_word_embeddings=True,
            ),
        ),
        # Bamba: Mamba-2 mixers (8 heads of 16 in 2 groups of B / C, a state of 16, 4
        # convolution taps, with biases) on layers 0 and 2, attention rotating half of each
        # head on layer 1. A chunk of 8 in transformers' SSD algorithm: the prompts span
        # several, so its inter-chunk states are exercised against kiln's token-by-token scan.
        "bamba": (
            BambaForCausalLM,
            BambaConfig(
                vocab_size=vocab_size,
                hidden_size=64,
                intermediate_size=128,
                num_hidden_layers=3,
                num_attention_heads=8,
                num_key_value_heads=2,
                max_position_embeddings=256,
                rms_norm_eps=1e-5,
                attn_layer_indices=[1],
                mamba_n_heads=8,
                mamba_d_head=16,
                mamba_n_groups=2,
                mamba_d_state=16,
                mamba_d_conv=4,
                mamba_expand=2,
                mamba_chunk_size=8,
                bos_token_id=None,
                eos_token_id=eos_id,
                pad_token_id=pad_id,
                torch_dtype="float32",
                tie_word_embeddings=False,
            ),
        ),
        # Granite 4.0 hybrid (dense, as granite-4.0-h-micro): Granite's multipliers, Mamba-2
        # mixers (4 heads of 32, one group, a state of 32, no convolution bias) on layers 0,
        # 2 and 3, attention without rotary on layer 1, the shared MLP's fused gate/up.
        "granitemoehybrid": (
            GraniteMoeHybridForCausalLM,
            GraniteMoeHybridConfig(
                vocab_size=vocab_size,
                hidden_size=64,
                num_hidden_layers=4,
                num_attention_heads=8,
                num_key_value_heads=2,
                max_position_embeddings=256,
                rms_norm_eps=1e-5,
                embedding_multiplier=4.0,
                attention_multiplier=0.05,
                residual_multiplier=0.5,
                logits_scaling=3.0,
                num_local_experts=0,
                shared_intermediate_size=96,
                position_embedding_type="nope",
                layer_types=["mamba", "attention", "mamba", "mamba"],
                mamba_n_heads=4,
                mamba_d_head=32,
                mamba_n_groups=1,
                mamba_d_state=32,
                mamba_d_conv=4,
                mamba_expand=2,
                mamba_chunk_size=8,
                mamba_conv_bias=False,
                bos_token_id=None,
                eos_token_id=eos_id,
                pad_token_id=pad_id,
                torch_dtype="float32",
                tie_word_embeddings=False,
            ),
        ),
        # Pure Mamba-2 (as Mamba-Codestral): three layers of a norm and a mixer (4 heads of
        # 32 in 2 groups, a state of 16), no attention, no MLP; the step size clamped to
        # time_step_limit; the residual stream in f32 (residual_in_fp32).
        "mamba2": (
            Mamba2ForCausalLM,
            Mamba2Config(
                vocab_size=vocab_size,
                hidden_size=64,
                num_hidden_layers=3,
                num_heads=4,
                head_dim=32,
                n_groups=2,
                state_size=16,
                conv_kernel=4,
                expand=2,
                chunk_size=8,
                layer_norm_epsilon=1e-5,
                time_step_limit=(0.05, 1.5),
                bos_token_id=None,
                eos_token_id=eos_id,
                pad_token_id=pad_id,
                torch_dtype="float32",
                tie_word_embeddings=False,
            ),
        ),
        # Granite 4.0 MoE hybrid (as granite-4.0-h-tiny): the dense hybrid's layers with 4
        # experts of 32 (top 2, Granite MoE's stacks and router) beside the shared MLP.
        "granitemoehybrid_moe": (
            GraniteMoeHybridForCausalLM,
            GraniteMoeHybridConfig(
                vocab_size=vocab_size,
                hidden_size=64,
                intermediate_size=32,
                num_hidden_layers=4,
                num_attention_heads=8,
                num_key_value_heads=2,
                max_position_embeddings=256,
                rms_norm_eps=1e-5,
                embedding_multiplier=4.0,
                attention_multiplier=0.05,
                residual_multiplier=0.5,
                logits_scaling=3.0,
                num_local_experts=4,
                num_experts_per_tok=2,
                shared_intermediate_size=48,
                position_embedding_type="nope",
                layer_types=["mamba", "attention", "mamba", "mamba"],
                mamba_n_heads=4,
                mamba_d_head=32,
                mamba_n_groups=2,
                mamba_d_state=16,
                mamba_d_conv=4,
                mamba_expand=2,
                mamba_chunk_size=8,
                bos_token_id=None,
                eos_token_id=eos_id,
                pad_token_id=pad_id,
                torch_dtype="float32",
                tie_word_embeddings=True,
            ),
        ),
        # GPT-NeoX with its blocks in sequence (use_parallel_residual false).
        "gpt_neox_sequential": (
            GPTNeoXForCausalLM,
            GPTNeoXConfig(**neox, rotary_pct=0.25, use_parallel_residual=False),
        ),
        # GPT-2: learned positions, LayerNorms with biases, fused c_attn, biases everywhere,
        # GELU (tanh) MLP of n_inner 128, Conv1D weights ([in, out]); untied for the reason
        # given at gemma3 (real GPT-2 ties its head).
        "gpt2": (
            GPT2LMHeadModel,
            GPT2Config(
                vocab_size=vocab_size,
                n_embd=64,
                n_inner=128,
                n_layer=2,
                n_head=8,
                n_positions=256,
                activation_function="gelu_new",
                layer_norm_epsilon=1e-5,
                bos_token_id=None,
                eos_token_id=eos_id,
                pad_token_id=pad_id,
                torch_dtype="float32",
                tie_word_embeddings=False,
            ),
        ),
        # GPT-BigCode (StarCoder 1, SantaCoder): GPT-2's layer with linear weights and one
        # key / value head; the second fixture without multi-query fuses q / k / v head by
        # head. Untied for the reason given at gemma3.
        "gpt_bigcode": (GPTBigCodeForCausalLM, GPTBigCodeConfig(**bigcode, multi_query=True)),
        "gpt_bigcode_mha": (GPTBigCodeForCausalLM, GPTBigCodeConfig(**bigcode, multi_query=False)),
        # GLM-4-9B in transformers' format: Llama's layer with q/k/v biases, fused gate/up,
        # adjacent-pair rotary on half of each head (partial_rotary_factor left to its
        # default, 0.5).
        "glm": (
            GlmForCausalLM,
            GlmConfig(**common, head_dim=8, rope_theta=10000.0, attention_bias=True, tie_word_embeddings=False),
        ),
        # GPT-J: one LayerNorm feeding attention (no biases) and a GELU (tanh) MLP in parallel,
        # adjacent-pair rotary on 4 of each head's 8 values, a biased LM head.
        "gptj": (
            GPTJForCausalLM,
            GPTJConfig(**{k: v for k, v in bigcode.items() if k != "activation_function"}, rotary_dim=4, activation_function="gelu_new"),
        ),
        # ERNIE 4.5 (dense) and Helium: Llama's layer with adjacent-pair rotary over the whole
        # head. Untied for the reason given at gemma3 (ERNIE ties by default).
        "ernie4_5": (
            Ernie4_5ForCausalLM,
            Ernie4_5Config(**common, head_dim=8, rope_theta=500000.0, use_bias=False, tie_word_embeddings=False),
        ),
        # ERNIE 4.5 MoE: layer 0 dense, layer 1 eight experts of 32 (top 2) plus one shared
        # expert; the softmax router's choice steered by moe_statics' correction bias.
        "ernie4_5_moe": (
            Ernie4_5_MoeForCausalLM,
            Ernie4_5_MoeConfig(
                **common,
                head_dim=8,
                rope_theta=500000.0,
                use_bias=False,
                moe_num_experts=8,
                moe_k=2,
                moe_intermediate_size=32,
                moe_num_shared_experts=1,
                moe_layer_start_index=1,
                moe_layer_end_index=-1,
                moe_layer_interval=1,
                tie_word_embeddings=False,
            ),
        ),
        # Ministral: Mistral's layer, layer 0 sliding (window 8), layer 1 full.
        "ministral": (
            MinistralForCausalLM,
            MinistralConfig(
                **common,
                head_dim=8,
                rope_theta=100000000.0,
                sliding_window=8,
                layer_types=["sliding_attention", "full_attention"],
                tie_word_embeddings=False,
            ),
        ),
        "helium": (
            HeliumForCausalLM,
            HeliumConfig(**common, head_dim=8, rope_theta=100000.0, tie_word_embeddings=False),
        ),
        # EXAONE 4: norms after each block, per-head q/k norms; layer 0 sliding (window 8,
        # rotated), layer 1 global and not rotated.
        "exaone4": (
            Exaone4ForCausalLM,
            Exaone4Config(
                **common,
                head_dim=8,
                rope_theta=10000.0,
                sliding_window=8,
                layer_types=["sliding_attention", "full_attention"],
                tie_word_embeddings=False,
            ),
        ),
        # OLMo (1): Llama's layers with LayerNorms that have no weight or bias.
        "olmo": (
            OlmoForCausalLM,
            OlmoConfig(**{k: v for k, v in common.items() if k != "rms_norm_eps"}, rope_theta=10000.0, tie_word_embeddings=False),
        ),
        # OPT: GPT-2's layer with separate q/k/v projections, a ReLU MLP (ffn_dim 128) and
        # learned positions read two rows on; untied for the reason given at gemma3.
        "opt": (
            OPTForCausalLM,
            OPTConfig(
                vocab_size=vocab_size,
                hidden_size=64,
                word_embed_proj_dim=64,
                ffn_dim=128,
                num_hidden_layers=2,
                num_attention_heads=8,
                max_position_embeddings=256,
                activation_function="relu",
                do_layer_norm_before=True,
                bos_token_id=None,
                eos_token_id=eos_id,
                pad_token_id=pad_id,
                torch_dtype="float32",
                tie_word_embeddings=False,
            ),
        ),
        # SmolLM3: layer 1 of 2 has no rotary embedding (no_rope_layer_interval 2).
        "smollm3": (
            SmolLM3ForCausalLM,
            SmolLM3Config(
                **common,
                rope_theta=10000.0,
                no_rope_layer_interval=2,
                use_sliding_window=False,
                tie_word_embeddings=False,
            ),
        ),
        # Qwen3-Next: gated delta rule mixers (2 key heads of 16 shared by 8 value heads of
        # 24, 4 convolution taps) on layers 0, 2 and 3, gated attention (8 heads of 16,
        # per-head (1 + w) q/k norms, a quarter of each head rotating, a sigmoid gate on the
        # output) on layer 1; Qwen2-MoE's experts with a gated shared expert, layer 2 a dense
        # MLP (mlp_only_layers). Heads divide by 8 ranks (key heads shared beyond 2). Prompts
        # run through transformers' chunked algorithm (chunks of 64), checked against kiln's
        # token-by-token recurrence.
        "qwen3_next": (
            Qwen3NextForCausalLM,
            Qwen3NextConfig(
                vocab_size=vocab_size,
                hidden_size=64,
                intermediate_size=96,
                num_hidden_layers=4,
                num_attention_heads=8,
                num_key_value_heads=2,
                head_dim=16,
                partial_rotary_factor=0.25,
                max_position_embeddings=256,
                rms_norm_eps=1e-6,
                rope_theta=10000.0,
                layer_types=["linear_attention", "full_attention", "linear_attention", "linear_attention"],
                linear_conv_kernel_dim=4,
                linear_key_head_dim=16,
                linear_value_head_dim=24,
                linear_num_key_heads=2,
                linear_num_value_heads=8,
                num_experts=4,
                num_experts_per_tok=2,
                moe_intermediate_size=32,
                shared_expert_intermediate_size=48,
                decoder_sparse_step=1,
                mlp_only_layers=[2],
                norm_topk_prob=True,
                bos_token_id=None,
                eos_token_id=eos_id,
                pad_token_id=pad_id,
                torch_dtype="float32",
                tie_word_embeddings=False,
            ),
        ),
        # Mamba-1 (as state-spaces/mamba-*-hf): three layers of a norm and a mixer (128
        # channels, a state of 16, a step of rank 8, 4 convolution taps with biases), no
        # attention, no MLP.
        "mamba": (
            MambaForCausalLM,
            MambaConfig(
                vocab_size=vocab_size,
                hidden_size=64,
                num_hidden_layers=3,
                state_size=16,
                expand=2,
                conv_kernel=4,
                time_step_rank=8,
                layer_norm_epsilon=1e-5,
                use_mambapy=False,
                bos_token_id=None,
                eos_token_id=eos_id,
                pad_token_id=pad_id,
                torch_dtype="float32",
                tie_word_embeddings=False,
            ),
        ),
        # Falcon-Mamba: Mamba-1 with weightless RMS norms of the step, B and C; 96 channels
        # (intermediate_size over expand * hidden, as Falcon-Mamba-7B gives both), a state
        # of 12 and a convolution without biases.
        "falcon_mamba": (
            FalconMambaForCausalLM,
            FalconMambaConfig(
                vocab_size=vocab_size,
                hidden_size=64,
                num_hidden_layers=3,
                state_size=12,
                expand=2,
                intermediate_size=96,
                conv_kernel=4,
                time_step_rank=8,
                use_conv_bias=False,
                layer_norm_epsilon=1e-5,
                mixer_rms_eps=1e-6,
                use_mambapy=False,
                bos_token_id=None,
                eos_token_id=eos_id,
                pad_token_id=pad_id,
                torch_dtype="float32",
                tie_word_embeddings=False,
            ),
        ),
        # Jamba: Mamba-1 mixers (128 channels, a state of 16, a step of rank 8, RMS norms with
        # weights of the step, B and C) on layers 0, 2 and 3, attention without positions on
        # layer 1 (attn_layer_period 4, offset 1); layers 1 and 3 route 4 experts of 96 (top
        # 2, softmax probabilities not renormalised), 0 and 2 a SwiGLU MLP.
        "jamba": (
            JambaForCausalLM,
            JambaConfig(
                vocab_size=vocab_size,
                hidden_size=64,
                intermediate_size=96,
                num_hidden_layers=4,
                num_attention_heads=8,
                num_key_value_heads=2,
                max_position_embeddings=256,
                rms_norm_eps=1e-6,
                attn_layer_period=4,
                attn_layer_offset=1,
                expert_layer_period=2,
                expert_layer_offset=1,
                num_experts=4,
                num_experts_per_tok=2,
                mamba_d_state=16,
                mamba_d_conv=4,
                mamba_expand=2,
                mamba_dt_rank=8,
                mamba_conv_bias=True,
                mamba_proj_bias=False,
                use_mamba_kernels=False,
                bos_token_id=None,
                eos_token_id=eos_id,
                pad_token_id=pad_id,
                torch_dtype="float32",
                tie_word_embeddings=False,
            ),
        ),
        # Falcon-H1: attention (8 heads of 8, 2 KV heads) beside a Mamba-2 mixer (8 heads of
        # 12: mamba_d_ssm 96, not expand * hidden; 2 groups of B / C, a state of 16, the gate
        # without the norm) in each of 3 layers (shards 2, 4 and 8 ways); Falcon-H1-0.5B's multipliers (the embedding's,
        # keys', each block's in and out, the in-projection's five pieces, the MLP's; the
        # head's below). A chunk of 8 in transformers' SSD algorithm.
        "falcon_h1": (
            FalconH1ForCausalLM,
            FalconH1Config(
                vocab_size=vocab_size,
                hidden_size=64,
                intermediate_size=128,
                num_hidden_layers=3,
                num_attention_heads=8,
                num_key_value_heads=2,
                head_dim=8,
                max_position_embeddings=256,
                rms_norm_eps=1e-5,
                rope_theta=1e11,
                mamba_d_ssm=96,
                mamba_n_heads=8,
                mamba_d_head=12,
                mamba_n_groups=2,
                mamba_d_state=16,
                mamba_d_conv=4,
                mamba_expand=2,
                mamba_chunk_size=8,
                mamba_conv_bias=True,
                mamba_proj_bias=False,
                mamba_rms_norm=False,
                mamba_norm_before_gate=False,
                embedding_multiplier=5.656854249492381,
                # 0.039 in the 0.5B model, where logits are larger; 1.5 keeps this fixture's
                # logits far from zero, so the logit checks measure something.
                lm_head_multiplier=1.5,
                key_multiplier=0.390625,
                attention_in_multiplier=1.25,
                attention_out_multiplier=0.9375,
                ssm_in_multiplier=1.25,
                ssm_out_multiplier=0.23570226039551587,
                ssm_multipliers=[0.3535533905932738, 0.25, 0.3535533905932738, 0.5, 0.3535533905932738],
                mlp_multipliers=[0.8838834764831844, 0.5859375],
                bos_token_id=None,
                eos_token_id=eos_id,
                pad_token_id=pad_id,
                torch_dtype="float32",
                tie_word_embeddings=False,
            ),
        ),
    }
    # Nemotron-H (transformers >= 5): a Mamba-2 mixer + MLP, a mixer before an attention
    # block (no MLP), attention + MLP, a mixer before a mixer (no MLP), a mixer + MLP; kiln
    # pairs the 8 blocks into 5 layers. Mixers of 8 heads of 16 in 2 groups of B / C (the
    # grouped gated norm), a state of 16, 4 taps with biases; attention (8 heads of 8, 2 KV
    # heads) without positions; ReLU² MLPs of 128. A chunk of 8 in transformers' SSD algorithm.
    # Nemotron 3 (Nemotron-H with experts, transformers >= 5): blocks `ME*EM-ME`, paired into
    # 4 layers, three of whose MLPs are experts: 8 ungated ReLU² experts of 32 (top 3 by
    # sigmoid score plus a random correction bias, renormalised, times 2.5) in a latent
    # space of 32 (LatentMoE: projected down from and back up to the hidden 64), beside a
    # shared ReLU² expert of 48; the third layer's MLP is dense. Mixers of 8 heads in 8
    # groups, as Nemotron 3 Nano's 64 heads in 8: tensor parallelism up to 8 ways.
    # LFM2-MoE (transformers >= 5): LFM2's convolution and attention layers (as the lfm2
    # fixture's), a dense SwiGLU MLP of 128 on layer 0, then 8 experts of 32 (top 2: sigmoid
    # scores chosen with a random expert_bias, renormalised, times routed_scaling_factor
    # 1.5); rope_parameters, as transformers 5 writes the rotary settings. Weights drawn with
    # std 0.1: its router rounds its scores to bf16, and at 0.2 an expert choice flipped by
    # an ulp of the hidden state moved the logits by 3.
    if Lfm2MoeConfig is not None:
        configs["lfm2_moe"] = (
            Lfm2MoeForCausalLM,
            Lfm2MoeConfig(
                vocab_size=vocab_size,
                hidden_size=64,
                intermediate_size=128,
                moe_intermediate_size=32,
                num_hidden_layers=4,
                num_attention_heads=8,
                num_key_value_heads=2,
                max_position_embeddings=256,
                norm_eps=1e-5,
                rope_parameters={"rope_theta": 10000.0, "rope_type": "default"},
                conv_L_cache=3,
                layer_types=["conv", "full_attention", "conv", "conv"],
                num_dense_layers=1,
                num_experts=8,
                num_experts_per_tok=2,
                use_expert_bias=True,
                norm_topk_prob=True,
                routed_scaling_factor=1.5,
                bos_token_id=None,
                eos_token_id=eos_id,
                pad_token_id=pad_id,
                tie_word_embeddings=True,
            ),
        )
    if NemotronHConfig is not None:
        nemotron_h = dict(
            vocab_size=vocab_size,
            hidden_size=64,
            intermediate_size=128,
            num_attention_heads=8,
            num_key_value_heads=2,
            head_dim=8,
            max_position_embeddings=256,
            layer_norm_epsilon=1e-5,
            mamba_num_heads=8,
            mamba_head_dim=16,
            ssm_state_size=16,
            conv_kernel=4,
            chunk_size=8,
            use_conv_bias=True,
            mlp_hidden_act="relu2",
            bos_token_id=None,
            eos_token_id=eos_id,
            pad_token_id=pad_id,
            tie_word_embeddings=False,
        )
        configs["nemotron_h"] = (
            NemotronHForCausalLM,
            NemotronHConfig(**nemotron_h, hybrid_override_pattern="M-M*-MM-", n_groups=2),
        )
        configs["nemotron_h_moe"] = (
            NemotronHForCausalLM,
            NemotronHConfig(
                **nemotron_h,
                hybrid_override_pattern="ME*EM-ME",
                n_groups=8,
                n_routed_experts=8,
                num_experts_per_tok=3,
                moe_intermediate_size=32,
                moe_shared_expert_intermediate_size=48,
                moe_latent_size=32,
                n_group=1,
                topk_group=1,
                norm_topk_prob=True,
                routed_scaling_factor=2.5,
            ),
        )
    return configs


def randomize_weights(model: torch.nn.Module, seed: int, std: float = 0.2) -> None:
    """Overwrite every parameter so no weight is zero, one or identity-like."""
    generator = torch.Generator().manual_seed(seed)
    # Qwen3-Next's RMS norms scale by 1 + w (its mixers' output norm by w): their weights
    # vary around 0, as its checkpoints' do, so no norm doubles the stream it scales.
    offset_norms = getattr(model.config, "model_type", "") == "qwen3_next"
    with torch.no_grad():
        for name, param in model.named_parameters():  # tied weights appear once
            noise = torch.randn(param.shape, generator=generator, dtype=torch.float32)
            # GPT-2 names its LayerNorms ln_1, ln_2, ln_f.
            # ERNIE 4.5 MoE's correction bias is a parameter: on the scale of the router's
            # probabilities, so it steers choices without fixing them.
            if name.endswith("e_score_correction_bias"):
                param.copy_(0.05 * noise)
            # MPT names them norm_1, norm_2, norm_f.
            elif offset_norms and name.endswith("norm.weight") and "linear_attn" not in name:
                param.copy_(0.1 * noise)
            elif name.endswith("norm.weight") or (
                name.endswith(".weight") and name.split(".")[-2].startswith(("ln_", "norm_"))
            ):
                param.copy_(1.0 + 0.1 * noise)
            elif name.endswith(".bias"):
                param.copy_(0.1 * noise)
            else:
                param.copy_(std * noise)
        # GLM-4.5's router correction bias is a buffer (zeros at init): it must steer choices.
        # So is LFM2-MoE's expert_bias.
        for name, buffer in model.named_buffers():
            if name.endswith(("e_score_correction_bias", "expert_bias")):
                buffer.copy_(0.3 * torch.randn(buffer.shape, generator=generator, dtype=torch.float32))


def is_varied(tokens: list[int]) -> bool:
    """Reject continuations stuck on one token: a wrong kernel must change the output."""
    longest_run, run = 1, 1
    for prev, cur in zip(tokens, tokens[1:]):
        run = run + 1 if cur == prev else 1
        longest_run = max(longest_run, run)
    return longest_run <= 3 and len(set(tokens)) >= 16


@torch.no_grad()
def greedy_reference(model: torch.nn.Module, prompt_ids: list[int], with_mask: bool = False) -> dict:
    """Greedy decoding by full recomputation (no KV cache), EOS ignored."""
    ids = torch.tensor([prompt_ids], dtype=torch.long)
    last_logits = None
    generated, margins = [], []
    for step in range(GREEDY_NEW_TOKENS):
        mask = {"attention_mask": torch.ones_like(ids)} if with_mask else {}
        logits = model(input_ids=ids, use_cache=False, **mask).logits[0, -1].float()
        if step == 0:
            last_logits = logits.clone()
        top2 = torch.topk(logits, 2)
        next_id = int(top2.indices[0])
        generated.append(next_id)
        margins.append(float(top2.values[0] - top2.values[1]))
        ids = torch.cat([ids, torch.tensor([[next_id]])], dim=1)
    return {"last_logits": last_logits, "greedy_ids": generated, "margins": margins}


def f32_list(tensor: torch.Tensor) -> list[float]:
    """Shortest decimal strings that parse back to the exact float32 values."""
    values = tensor.detach().to(torch.float32).numpy()
    return [float(np.format_float_positional(v, unique=True, trim="-")) for v in values]


def greedy_reference_json(architecture: str, seed, prompts: list[list[int]], f32_refs: list[dict], bf16_refs: list[dict]) -> dict:
    """A fixture's reference.json: per prompt, transformers' f32 and bf16 last-token logits
    and greedy continuations with their top-2 margins."""
    return {
        "transformers_version": transformers.__version__,
        "torch_version": torch.__version__,
        "architecture": architecture,
        "seed": seed,
        "greedy_new_tokens": GREEDY_NEW_TOKENS,
        "prompts": [
            {
                "text": text,
                "prompt_ids": ids,
                "last_logits": f32_list(f32["last_logits"]),
                "greedy_ids": f32["greedy_ids"],
                "greedy_margins": [round(m, 6) for m in f32["margins"]],
                "bf16_last_logits": f32_list(bf16["last_logits"]),
                "bf16_greedy_ids": bf16["greedy_ids"],
                "bf16_greedy_margins": [round(m, 6) for m in bf16["margins"]],
            }
            for text, ids, f32, bf16 in zip(PROMPT_TEXTS, prompts, f32_refs, bf16_refs)
        ],
    }


# GLM-4.1V's / GLM-4.5V's vision tower at its smallest (kiln never reads it).
GLM4V_VISION = dict(depth=1, hidden_size=32, intermediate_size=32, num_heads=2, out_hidden_size=64,
                    patch_size=2, spatial_merge_size=1, temporal_patch_size=1, image_size=4)

# transformers 4.57's GLM-4.1V / GLM-4.5V, given text alone without an attention mask, pass
# their three-axis position ids to the causal mask, which cannot take them: these fixtures'
# references are computed with an all-ones mask.
NEEDS_ATTENTION_MASK = {"glm4v", "glm4v_moe"}

# transformers' eager Falcon attention adds ALiBi twice (to the scores and again through the
# mask it folded ALiBi into); its SDPA path, like the original RW code, adds it once.
ATTENTION_IMPLEMENTATION = {"falcon_rw": "sdpa"}


def build_fixture(name: str, model_cls: type, config, tokenizer: Tokenizer, prompts: list[list[int]]) -> None:
    directory = FIXTURES_DIR / name
    attn = ATTENTION_IMPLEMENTATION.get(name, "eager")
    if directory.exists():
        shutil.rmtree(directory)
    hf_tokenizer = write_tokenizer(tokenizer, directory)
    base_seed = 1000 + sum(map(ord, name))
    for attempt in range(MAX_SEED_ATTEMPTS):
        seed = base_seed + attempt
        torch.manual_seed(seed)
        model = model_cls(config).eval()
        model.config._attn_implementation = attn
        randomize_weights(model, seed, WEIGHT_STD.get(name, 0.2))
        f32_refs = [greedy_reference(model, p, name in NEEDS_ATTENTION_MASK) for p in prompts]
        min_margin = min(min(r["margins"]) for r in f32_refs)
        if min_margin >= MIN_TOP2_MARGIN and all(is_varied(r["greedy_ids"]) for r in f32_refs):
            break
    else:
        raise RuntimeError(f"{name}: no seed gave robust greedy steps")

    save_kwargs = {"safe_serialization": True}
    if name == "llama31":
        save_kwargs["max_shard_size"] = "200KB"  # force >= 2 shards and an index file
    model.save_pretrained(str(directory), **save_kwargs)
    generation_config(hf_tokenizer).save_pretrained(str(directory))

    bf16_model = model_cls.from_pretrained(str(directory), dtype=torch.bfloat16, attn_implementation=attn).eval()
    reloaded = model_cls.from_pretrained(str(directory), dtype=torch.float32, attn_implementation=attn).eval()
    check_reload(model, reloaded, prompts[0])
    bf16_refs = [greedy_reference(bf16_model, p, name in NEEDS_ATTENTION_MASK) for p in prompts]

    reference = greedy_reference_json(model_cls.__name__, seed, prompts, f32_refs, bf16_refs)
    write_reference_json(directory / "reference.json", reference)
    agree = [common_prefix(f["greedy_ids"], b["greedy_ids"]) for f, b in zip(f32_refs, bf16_refs)]
    print(
        f"  {name}: seed {seed}, min top-2 margin {min_margin:.4f}, "
        f"greedy f32 {[r['greedy_ids'][:6] for r in f32_refs]}..., bf16 greedy matches f32 for the first {agree} of {GREEDY_NEW_TOKENS}"
    )


# E2M1 magnitudes, by the low three bits of a nibble (the fourth is the sign).
E2M1 = np.array([0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0], dtype=np.float32)


def mxfp4_pack(w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Quantise `w [..., cols]` to MXFP4 along its last axis: per 32 values one power-of-two
    scale (E8M0 byte, bias 127) chosen so the largest fits E2M1's 6, each value rounded to the
    nearest E2M1 magnitude; returns (blocks [..., cols / 32, 16] uint8, scales [..., cols / 32]
    uint8), two values per byte, the even one in the low nibble."""
    *lead, cols = w.shape
    groups = w.reshape(*lead, cols // 32, 32).astype(np.float32)
    amax = np.abs(groups).max(axis=-1, keepdims=True)
    exp = np.where(amax > 0, np.ceil(np.log2(np.maximum(amax, 1e-30) / 6.0)), 0).astype(np.int32)
    scaled = groups / np.exp2(exp)
    mag = np.abs(scaled)[..., None]
    index = np.abs(mag - E2M1).argmin(axis=-1).astype(np.uint8)
    nibble = index | (np.signbit(scaled).astype(np.uint8) << 3)
    blocks = nibble[..., 0::2] | (nibble[..., 1::2] << 4)
    scales = (exp[..., 0] + 127).astype(np.uint8)
    return blocks, scales


@torch.no_grad()
def write_quantized_reference(model, prompts: list[list[int]], src: Path, directory: Path) -> None:
    """A quantized fixture's reference.json: transformers' last-token logits per prompt
    (no greedy runs), and how far the quantization moved them from `src`'s."""
    logits = [model(input_ids=torch.tensor([p]), use_cache=False).logits[0, -1] for p in prompts]
    reference = {
        "transformers_version": transformers.__version__,
        "torch_version": torch.__version__,
        "architecture": type(model).__name__,
        "prompts": [
            {"text": text, "prompt_ids": ids, "last_logits": f32_list(l)}
            for text, ids, l in zip(PROMPT_TEXTS, prompts, logits)
        ],
    }
    write_reference_json(directory / "reference.json", reference)
    unquantized = json.loads((src / "reference.json").read_text())["prompts"][0]["last_logits"]
    moved = float(np.abs(np.array(unquantized) - np.array(reference["prompts"][0]["last_logits"])).max())
    print(f"  {directory.name}: quantizing moves prompt 0's logits by up to {moved:.4f}")


def build_mxfp4_fixture(prompts: list[list[int]]) -> None:
    """gpt_oss's checkpoint with its experts packed as MXFP4, the way OpenAI ships gpt-oss:
    `*_blocks` / `*_scales` laid out [experts, out, in / 32, 16]. The reference is what
    transformers computes from it (it unpacks MXFP4 to bf16 without a GPU), so the fixture
    checks kiln's unpacking against transformers' own."""
    from safetensors.numpy import load_file, save_file

    src, directory = FIXTURES_DIR / "gpt_oss", FIXTURES_DIR / "gpt_oss_mxfp4"
    if directory.exists():
        shutil.rmtree(directory)
    shutil.copytree(src, directory)
    (directory / "reference.json").unlink()
    tensors = load_file(str(directory / "model.safetensors"))
    for name in list(tensors):
        if name.endswith("experts.gate_up_proj") or name.endswith("experts.down_proj"):
            # Stored x @ w ([experts, in, out]); packed per output row.
            blocks, scales = mxfp4_pack(np.ascontiguousarray(tensors.pop(name).transpose(0, 2, 1)))
            tensors[f"{name}_blocks"], tensors[f"{name}_scales"] = blocks, scales
    save_file(tensors, str(directory / "model.safetensors"), metadata={"format": "pt"})
    config = json.loads((directory / "config.json").read_text())
    config["quantization_config"] = {
        "quant_method": "mxfp4",
        "modules_to_not_convert": ["model.layers.*.self_attn", "model.layers.*.mlp.router", "model.embed_tokens", "lm_head"],
    }
    (directory / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    model = GptOssForCausalLM.from_pretrained(str(directory), dtype=torch.float32, attn_implementation="eager")
    # transformers unpacks to bf16 without a GPU; every MXFP4 value is exact there.
    model = model.float().eval()
    write_quantized_reference(model, prompts, src, directory)


def build_fp8_fixture(prompts: list[list[int]]) -> None:
    """qwen3's checkpoint as an FP8 one in compressed-tensors' float-quantized format: every
    projection's weight float8 e4m3 with one scale per 32 x 32 block (the block-scaled layout
    of Qwen3-FP8 and DeepSeek). The reference is what transformers computes from it
    (compressed-tensors decompresses it on the CPU)."""
    from safetensors.torch import load_file, save_file
    from transformers.utils.quantization_config import CompressedTensorsConfig

    src, directory = FIXTURES_DIR / "qwen3", FIXTURES_DIR / "qwen3_fp8"
    if directory.exists():
        shutil.rmtree(directory)
    shutil.copytree(src, directory)
    (directory / "reference.json").unlink()
    block = 32
    tensors = load_file(str(directory / "model.safetensors"))
    for name in [n for n in tensors if n.endswith("_proj.weight")]:
        w = tensors[name]
        rows, cols = w.shape
        blocks = w.reshape(rows // block, block, cols // block, block)
        scale = (blocks.abs().amax(dim=(1, 3)) / torch.finfo(torch.float8_e4m3fn).max).clamp(min=1e-12)
        expanded = scale.repeat_interleave(block, 0).repeat_interleave(block, 1)
        tensors[name] = (w / expanded).to(torch.float8_e4m3fn)
        tensors[name.removesuffix("weight") + "weight_scale"] = scale.to(torch.float32)
    save_file(tensors, str(directory / "model.safetensors"), metadata={"format": "pt"})
    config = json.loads((directory / "config.json").read_text())
    config["quantization_config"] = {
        "quant_method": "compressed-tensors",
        "format": "float-quantized",
        "quantization_status": "compressed",
        "ignore": ["lm_head"],
        "config_groups": {
            "group_0": {
                "targets": ["Linear"],
                "weights": {"num_bits": 8, "type": "float", "symmetric": True, "dynamic": False,
                            "strategy": "block", "block_structure": [block, block]},
            }
        },
    }
    (directory / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    model = Qwen3ForCausalLM.from_pretrained(
        str(directory), dtype=torch.float32, attn_implementation="eager",
        quantization_config=CompressedTensorsConfig(run_compressed=False),
    ).eval()
    write_quantized_reference(model, prompts, src, directory)


def common_prefix(a: list[int], b: list[int]) -> int:
    return next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))


def check_reload(model: torch.nn.Module, reloaded: torch.nn.Module, prompt: list[int]) -> None:
    """The saved files must reproduce the in-memory model (to the last bits of a GEMM)."""
    with torch.no_grad():
        ids = torch.tensor([prompt])
        mask = torch.ones_like(ids)  # harmless for every model, needed by GLM-4.1V's
        a = model(input_ids=ids, attention_mask=mask, use_cache=False).logits
        b = reloaded(input_ids=ids, attention_mask=mask, use_cache=False).logits
    # A save that lost or mangled a weight moves logits by far more than 1e-5; below that
    # is the CPU GEMM's result depending on its operands' alignment in the last bits (experts
    # run on freshly gathered rows; Nemotron's reloaded weights land differently).
    diff = (a - b).abs().max().item()
    assert diff <= 1e-5, f"reloaded model differs from the saved one by {diff}"


def generation_config(hf_tokenizer: PreTrainedTokenizerFast) -> GenerationConfig:
    return GenerationConfig(
        bos_token_id=None,
        eos_token_id=[hf_tokenizer.convert_tokens_to_ids("<|im_end|>"), hf_tokenizer.convert_tokens_to_ids("<|endoftext|>")],
        pad_token_id=hf_tokenizer.convert_tokens_to_ids("<|endoftext|>"),
        do_sample=True,
        temperature=0.7,
        top_p=0.8,
        top_k=20,
        repetition_penalty=1.05,
    )


# ---------------------------------------------------------------------------
# Demo model: a tiny Qwen2 trained on the corpus in ChatML form
# ---------------------------------------------------------------------------
DEMO_TRAIN_STEPS = 400
DEMO_SEED = 7


def demo_config(vocab_size: int, eos_id: int, pad_id: int) -> Qwen2Config:
    return Qwen2Config(
        vocab_size=vocab_size,
        hidden_size=128,
        intermediate_size=352,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=MODEL_MAX_LENGTH,
        rope_theta=10000.0,
        rms_norm_eps=1e-6,
        hidden_act="silu",
        tie_word_embeddings=True,
        use_sliding_window=False,
        sliding_window=None,
        bos_token_id=None,
        eos_token_id=eos_id,
        pad_token_id=pad_id,
        torch_dtype="bfloat16",
    )


def demo_training_examples(hf_tokenizer: PreTrainedTokenizerFast) -> list[tuple[list[int], list[int]]]:
    """(input ids, loss mask) per example; in chats the loss is on the assistant's reply only."""
    examples = []
    for question, answer in CORPUS:
        for q in (question, question.lower(), question.rstrip("?")):
            prompt = hf_tokenizer.apply_chat_template(
                [{"role": "user", "content": q}], tokenize=False, add_generation_prompt=True
            )
            prompt_ids = hf_tokenizer.encode(prompt, add_special_tokens=False)
            reply_ids = hf_tokenizer.encode(answer + "<|im_end|>\n", add_special_tokens=False)
            ids = prompt_ids + reply_ids
            mask = [0] * len(prompt_ids) + [1] * len(reply_ids)
            examples.append((ids, mask))
        # Plain text too, so raw completions (no chat template) continue like the corpus.
        plain = hf_tokenizer.encode(question + " " + answer + "<|endoftext|>", add_special_tokens=False)
        examples.append((plain, [1] * len(plain)))
    return examples


def train_demo(model: Qwen2ForCausalLM, examples, pad_id: int) -> None:
    generator = torch.Generator().manual_seed(DEMO_SEED)
    max_len = max(len(ids) for ids, _ in examples)
    inputs = torch.full((len(examples), max_len), pad_id, dtype=torch.long)
    labels = torch.full((len(examples), max_len), -100, dtype=torch.long)
    for row, (ids, mask) in enumerate(examples):
        inputs[row, : len(ids)] = torch.tensor(ids)
        labels[row, : len(ids)] = torch.tensor([t if m else -100 for t, m in zip(ids, mask)])
    attention = (torch.arange(max_len)[None, :] < torch.tensor([len(i) for i, _ in examples])[:, None]).long()

    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.01, betas=(0.9, 0.95))
    batch_size = 8
    model.train()
    start = time.time()
    for step in range(DEMO_TRAIN_STEPS):
        lr_scale = min(1.0, (step + 1) / 50) * 0.5 * (1 + math.cos(math.pi * step / DEMO_TRAIN_STEPS))
        for group in optimizer.param_groups:
            group["lr"] = 3e-3 * lr_scale
        batch = torch.randperm(len(examples), generator=generator)[:batch_size]
        loss = model(input_ids=inputs[batch], attention_mask=attention[batch], labels=labels[batch]).loss
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        if step % 100 == 0 or step == DEMO_TRAIN_STEPS - 1:
            print(f"  demo step {step:4d} loss {loss.item():.3f} ({time.time() - start:.0f}s)")
    model.eval()


def build_demo(tokenizer: Tokenizer) -> None:
    if DEMO_DIR.exists():
        shutil.rmtree(DEMO_DIR)
    hf_tokenizer = write_tokenizer(tokenizer, DEMO_DIR)
    eos_id = hf_tokenizer.convert_tokens_to_ids("<|im_end|>")
    pad_id = hf_tokenizer.convert_tokens_to_ids("<|endoftext|>")
    torch.manual_seed(DEMO_SEED)
    model = Qwen2ForCausalLM(demo_config(len(hf_tokenizer), eos_id, pad_id))
    model.config._attn_implementation = "eager"
    train_demo(model, demo_training_examples(hf_tokenizer), pad_id)
    model.to(torch.bfloat16)
    model.save_pretrained(str(DEMO_DIR), safe_serialization=True)
    generation_config(hf_tokenizer).save_pretrained(str(DEMO_DIR))
    sample = demo_sample(hf_tokenizer, "What is a kiln?")
    print(f"  demo greedy reply: {sample!r}")
    write_demo_readme(sample, sum(p.numel() for p in model.parameters()))


@torch.no_grad()
def demo_sample(hf_tokenizer: PreTrainedTokenizerFast, question: str) -> str:
    model = Qwen2ForCausalLM.from_pretrained(str(DEMO_DIR), dtype=torch.float32).eval()
    prompt = hf_tokenizer.apply_chat_template(
        [{"role": "user", "content": question}], tokenize=True, add_generation_prompt=True, return_tensors="pt"
    )
    out = model.generate(prompt, attention_mask=torch.ones_like(prompt), do_sample=False, max_new_tokens=160)
    return hf_tokenizer.decode(out[0, prompt.shape[1]:], skip_special_tokens=True)


def write_demo_readme(sample: str, parameter_count: int) -> None:
    text = f"""# Tiny demo model

This is a tiny demo model made by `scripts/make_fixtures.py`. It is **not a useful LLM**:
a 4-layer Qwen2-architecture model (hidden size 128, {parameter_count:,} parameters, bfloat16)
trained for about a minute on a few paragraphs of text that the script itself contains.
It knows a handful of short answers (a kiln, bread, a river town, the night sky, a cat,
a café, greetings in Japanese and Chinese, the weather) and produces text-like output in
ChatML form, so kiln can serve something out of the box and tests can run end to end.

Files follow the HuggingFace layout: `config.json`, `generation_config.json`,
`model.safetensors`, `tokenizer.json`, `tokenizer_config.json` (with a ChatML
`chat_template`).

Greedy reply (float32, transformers) to the user message "What is a kiln?":

> {sample.strip()}

Regenerate with `python scripts/make_fixtures.py` from the repository root.
"""
    (DEMO_DIR / "README.md").write_text(text, encoding="utf-8")


# ---------------------------------------------------------------------------
# Helpers and entry point
# ---------------------------------------------------------------------------
def write_json(path: Path, data) -> None:
    path.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def write_reference_json(path: Path, reference: dict) -> None:
    """Indented keys, but each number list on one line so the file stays small and diffable."""
    lines = ["{"]
    for key, value in reference.items():
        if key != "prompts":
            lines.append(f"  {json.dumps(key)}: {json.dumps(value, ensure_ascii=False)},")
    lines.append('  "prompts": [')
    for i, prompt in enumerate(reference["prompts"]):
        fields = [f"      {json.dumps(k)}: {json.dumps(v, ensure_ascii=False)}" for k, v in prompt.items()]
        closing = "    }," if i + 1 < len(reference["prompts"]) else "    }"
        lines += ["    {", ",\n".join(fields), closing]
    lines += ["  ]", "}"]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


@torch.no_grad()
def build_embedding_reference(name: str) -> None:
    """Last-token embeddings of the fixture's prompts as decoder embedding models define them
    (Qwen3-Embedding): the base model's last hidden state (after its final norm) at the last
    prompt token, L2-normalised; also cut to the first 16 values and then normalised."""
    directory = FIXTURES_DIR / name
    reference = json.loads((directory / "reference.json").read_text())
    model = AutoModel.from_pretrained(str(directory), dtype=torch.float32, attn_implementation="eager").eval()
    rows = []
    for prompt in reference["prompts"]:
        hidden = model(input_ids=torch.tensor([prompt["prompt_ids"]])).last_hidden_state[0, -1]
        rows.append(
            {
                "prompt_ids": prompt["prompt_ids"],
                "embedding": f32_list(torch.nn.functional.normalize(hidden, dim=0)),
                "embedding_16": f32_list(torch.nn.functional.normalize(hidden[:16], dim=0)),
            }
        )
    write_json(
        directory / "embeddings.json",
        {"transformers_version": transformers.__version__, "pooling": "last", "prompts": rows},
    )
    print(f"  {name}: embeddings.json ({len(rows)} prompts, {hidden.numel()} values)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--skip-demo", action="store_true", help="only rebuild tests/fixtures")
    parser.add_argument("--only", metavar="NAME", help="build only this model fixture (and no demo)")
    args = parser.parse_args()

    torch.set_num_threads(1)  # fixed reduction order, so reruns give identical bits
    torch.use_deterministic_algorithms(True)
    tokenizer = build_tokenizer()
    FIXTURES_DIR.mkdir(parents=True, exist_ok=True)
    hf_tokenizer = write_tokenizer(tokenizer, FIXTURES_DIR / "tokenizer")
    write_json(FIXTURES_DIR / "tokenizer" / "cases.json", tokenizer_cases(hf_tokenizer))
    print(f"tokenizer: {len(hf_tokenizer)} tokens")

    prompts = [hf_tokenizer.encode(t, add_special_tokens=False) for t in PROMPT_TEXTS]
    print(f"prompt lengths: {[len(p) for p in prompts]}")
    eos_id = hf_tokenizer.convert_tokens_to_ids("<|im_end|>")
    pad_id = hf_tokenizer.convert_tokens_to_ids("<|endoftext|>")
    for name, (model_cls, config) in fixture_configs(len(hf_tokenizer), eos_id, pad_id).items():
        if args.only in (None, name):
            build_fixture(name, model_cls, config, tokenizer, prompts)
    if args.only in (None, "gpt_oss", "gpt_oss_mxfp4"):
        build_mxfp4_fixture(prompts)
    if args.only in (None, "qwen3", "qwen3_fp8"):
        build_fp8_fixture(prompts)
    if args.only in (None, "qwen3", "qwen3_embeddings"):
        build_embedding_reference("qwen3")
    import int_quant_fixtures

    int_quant_fixtures.build(args.only, FIXTURES_DIR, prompts, write_quantized_reference)
    import nvfp4_fixtures

    nvfp4_fixtures.build(args.only, FIXTURES_DIR, prompts, write_quantized_reference)
    if args.only in (None, "qwen3", "qwen3_classifier"):
        import classifier_fixture

        classifier_fixture.build(FIXTURES_DIR, prompts, f32_list, write_json)
    import pytorch_checkpoint_fixture

    pytorch_checkpoint_fixture.build(
        args.only, FIXTURES_DIR, PROMPT_TEXTS, greedy_reference, greedy_reference_json, write_json, write_reference_json
    )
    if args.only in (None, "lora"):
        import lora_fixtures

        lora_fixtures.build(FIXTURES_DIR, prompts, greedy_reference, f32_list, write_json)
    if not args.skip_demo and args.only is None:
        build_demo(tokenizer)


if __name__ == "__main__":
    main()
