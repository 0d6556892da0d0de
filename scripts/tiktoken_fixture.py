"""A Kimi-style tiktoken tokenizer fixture (tests/fixtures/tiktoken/): the shared fixture
tokenizer's byte-level BPE re-expressed as tiktoken ranks (`tiktoken.model`), a
`tokenizer_config.json` naming Kimi's tokenizer class and some of its special tokens, and
`cases.json`: texts with the ids tiktoken itself gives them, built with Kimi's
pre-tokenization pattern (as `tokenization_kimi.py` builds its `tiktoken.Encoding`).

Usage: python3 scripts/tiktoken_fixture.py   (needs tiktoken and tokenizers)
"""

import base64
import json
from pathlib import Path

import tiktoken
from tokenizers import Tokenizer

ROOT = Path(__file__).resolve().parent.parent
SOURCE = ROOT / "tests" / "fixtures" / "tokenizer" / "tokenizer.json"
OUT = ROOT / "tests" / "fixtures" / "tiktoken"

# tokenization_kimi.py's TikTokenTokenizer.pat_str: a format constant, needed verbatim.
KIMI_PAT = "|".join([
    r"""[\p{Han}]+""",
    r"""[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}&&[^\p{Han}]]*[\p{Ll}\p{Lm}\p{Lo}\p{M}&&[^\p{Han}]]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?""",
    r"""[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}&&[^\p{Han}]]+[\p{Ll}\p{Lm}\p{Lo}\p{M}&&[^\p{Han}]]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?""",
    r"""\p{N}{1,3}""",
    r""" ?[^\s\p{L}\p{N}]+[\r\n]*""",
    r"""\s*[\r\n]+""",
    r"""\s+(?!\S)""",
    r"""\s+""",
])
RESERVED = 256
NAMED = ["[BOS]", "[EOS]", "<|im_end|>", "<|im_user|>", "<|im_assistant|>"]

TEXTS = [
    "The river town",
    "Hello world, the boats carry fish.",
    "中文English混合",
    "它是2023年的GPT4模型。",
    "don't STOP'S they'll We'RE",
    "line1\n\nline2\r\n  indented\ttab",
    "  spaces   end ",
    "<|im_user|>hi<|im_end|>[EOS]",
    "Café crème at 東京 🙂 hello",
    "1234567 + 89 = 1234656",
    "CamelCase snake_case kebab-case",
]


def byte_decoder() -> dict[str, int]:
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(0xA1, 0xAD)) + list(range(0xAE, 0x100))
    chars, n = {}, 0
    for b in range(256):
        if b in printable:
            chars[chr(b)] = b
        else:
            chars[chr(256 + n)] = b
            n += 1
    return chars


def main() -> None:
    vocab = json.loads(SOURCE.read_text())["model"]["vocab"]
    decode = byte_decoder()
    ordered = [t for t, _ in sorted(vocab.items(), key=lambda kv: kv[1]) if not t.startswith("<|")]
    ranks = {bytes(decode[c] for c in token): rank for rank, token in enumerate(ordered)}
    assert sum(1 for b in ranks if len(b) == 1) == 256
    # Tokens that cross the boundaries the pattern draws, so a pattern that failed to draw
    # them would merge them: Han then Latin ("文E"), digit runs past three ("1234").
    for extra in ["文".encode()[:2], "文".encode(), "文E".encode(), b"12", b"123", b"1234", b"34"]:
        ranks.setdefault(extra, len(ranks))
    OUT.mkdir(parents=True, exist_ok=True)
    with open(OUT / "tiktoken.model", "w") as f:
        for token, rank in sorted(ranks.items(), key=lambda kv: kv[1]):
            f.write(f"{base64.b64encode(token).decode()} {rank}\n")
    n = len(ranks)
    specials = {f"<|reserved_token_{i}|>": i for i in range(n, n + RESERVED)}
    for i, name in enumerate(NAMED):
        del specials[f"<|reserved_token_{n + i}|>"]
        specials[name] = n + i
    config = {
        "tokenizer_class": "TikTokenTokenizer",
        "auto_map": {"AutoTokenizer": ["tokenization_kimi.TikTokenTokenizer", None]},
        "bos_token": "[BOS]",
        "eos_token": "[EOS]",
        "added_tokens_decoder": {
            str(n + i): {"content": name, "lstrip": False, "normalized": False, "rstrip": False,
                         "single_word": False, "special": True}
            for i, name in enumerate(NAMED)
        },
    }
    (OUT / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n")
    enc = tiktoken.Encoding(name="kimi-fixture", pat_str=KIMI_PAT, mergeable_ranks=ranks,
                            special_tokens=specials)
    cases = [{"text": t, "ids": enc.encode(t, allowed_special="all")} for t in TEXTS]
    for case in cases:
        assert enc.decode(case["ids"]) == case["text"]
    (OUT / "cases.json").write_text(json.dumps(
        {"tiktoken_version": tiktoken.__version__, "ranks": n, "cases": cases},
        indent=1, ensure_ascii=False) + "\n")
    print(f"{n} ranks, {len(cases)} cases; {sum(len(c['ids']) for c in cases)} ids")


if __name__ == "__main__":
    main()
