"""A SentencePiece tokenizer fixture (tests/fixtures/sentencepiece/): a small BPE model with
byte fallback trained by sentencepiece on the fixture corpus, shipped as Llama-family
repositories ship theirs before tokenizer.json (`tokenizer.model` + `tokenizer_config.json`
naming `LlamaTokenizer`), and `cases.json`: texts with the ids transformers gives them.

transformers builds the fast tokenizer from `tokenizer.model` differently under
`legacy: true` (its default) and `legacy: false` (Llama 2 and later configs), and with
`add_prefix_space: false`, so the cases cover each of those configurations, with and without
special tokens. Each id list is also checked against sentencepiece itself where the two
agree by design (legacy, plain text).

Usage: python3 scripts/sentencepiece_fixture.py   (needs sentencepiece, protobuf, transformers)
"""

import io
import json
import shutil
import sys
import tempfile
from pathlib import Path

import sentencepiece as spm
import transformers
from transformers import LlamaTokenizerFast

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "tests" / "fixtures" / "sentencepiece"
sys.path.insert(0, str(ROOT / "scripts"))
from make_fixtures import corpus_chat_texts  # noqa: E402

# Llama's layout: unk, bos, eos first; byte pieces for text the vocabulary cannot spell.
VOCAB_SIZE = 700
USER_DEFINED = ["<|im_start|>", "<|im_end|>"]

# Configurations transformers converts differently (tokenizer_config.json of each case).
CONFIGS = {
    # No `legacy` key: transformers takes legacy (with a warning), and so must kiln.
    "default": {},
    "legacy": {"legacy": True},
    "non_legacy": {"legacy": False},
    "no_prefix_space": {"legacy": False, "add_prefix_space": False},
    "bos_and_eos": {"legacy": False, "add_eos_token": True},
}

TEXTS = [
    "The river town",
    "Hello world, the boats carry fish.",
    " leading space",
    "  two leading spaces and  inner  runs   ",
    "line1\n\nline2\r\n  indented\ttab",
    "Café crème at 東京 🙂 hello",
    "1234567 + 89 = 1234656",
    "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n",
    "<s>text after bos</s> and after eos",
    "Ünïcödé — “quotes” … ¿¡ ẞ ℌ ﬁ",
    "",
]


def train(directory: Path) -> None:
    corpus = "\n".join(corpus_chat_texts() * 3)
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(corpus.splitlines()),
        model_writer=model,
        model_type="bpe",
        vocab_size=VOCAB_SIZE,
        byte_fallback=True,
        character_coverage=1.0,
        unk_id=0,
        bos_id=1,
        eos_id=2,
        pad_id=-1,
        user_defined_symbols=USER_DEFINED,
        split_digits=True,
        add_dummy_prefix=True,
        remove_extra_whitespaces=False,
        normalization_rule_name="identity",
        num_threads=1,
        minloglevel=2,
    )
    (directory / "tokenizer.model").write_bytes(model.getvalue())


def tokenizer_config(extra: dict) -> dict:
    return {
        "tokenizer_class": "LlamaTokenizer",
        "bos_token": "<s>",
        "eos_token": "</s>",
        "unk_token": "<unk>",
        "add_bos_token": True,
        "add_eos_token": False,
        "clean_up_tokenization_spaces": False,
        **extra,
    }


def main() -> None:
    if OUT.exists():
        shutil.rmtree(OUT)
    OUT.mkdir(parents=True)
    train(OUT)
    sp = spm.SentencePieceProcessor(model_file=str(OUT / "tokenizer.model"))
    # The repository's own config is the default (legacy) one.
    (OUT / "tokenizer_config.json").write_text(json.dumps(tokenizer_config(CONFIGS["legacy"]), indent=2) + "\n")
    configs = {}
    for name, extra in CONFIGS.items():
        config = tokenizer_config(extra)
        with tempfile.TemporaryDirectory() as tmp:
            shutil.copy(OUT / "tokenizer.model", Path(tmp) / "tokenizer.model")
            (Path(tmp) / "tokenizer_config.json").write_text(json.dumps(config))
            fast = LlamaTokenizerFast.from_pretrained(tmp, from_slow=True)
            cases = []
            for text in TEXTS:
                for add_special in (True, False):
                    ids = fast.encode(text, add_special_tokens=add_special)
                    cases.append({"text": text, "add_special_tokens": add_special, "ids": ids})
                    plain = not any(s in text for s in ["<s>", "</s>", *USER_DEFINED])
                    if name == "legacy" and plain and not add_special:
                        assert ids == sp.encode(text), (text, ids, sp.encode(text))
        configs[name] = {"tokenizer_config": config, "cases": cases}
    out = {"transformers_version": transformers.__version__, "sentencepiece_version": spm.__version__,
           "vocab_size": sp.get_piece_size(), "configs": configs}
    (OUT / "cases.json").write_text(json.dumps(out, indent=1, ensure_ascii=False) + "\n")
    print(f"sentencepiece fixture: {sp.get_piece_size()} pieces, {sum(len(c['cases']) for c in configs.values())} cases")


if __name__ == "__main__":
    main()
