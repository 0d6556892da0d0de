"""Drives a `kiln serve` with a LoRA adapter through the official `openai` Python client.

Usage: python3 tests/openai_client/check_lora.py BASE_URL BASE_MODEL ADAPTER

The server serves BASE_MODEL with `--lora-modules ADAPTER=...`. Each check is a function
named check_*; all run, failures are listed, and the exit code is 1 if any failed.
"""

import sys

import openai
from run_checks import expect_bad_request, run_checks

BASE_URL, BASE, ADAPTER = sys.argv[1], sys.argv[2], sys.argv[3]
client = openai.OpenAI(base_url=f"{BASE_URL}/v1", api_key="unused", max_retries=0)


def check_models_list_the_adapter_under_its_base():
    models = {m.id: m for m in client.models.list().data}
    assert list(models) == [BASE, ADAPTER], list(models)
    assert models[ADAPTER].model_extra.get("parent") == BASE, models[ADAPTER]
    assert client.models.retrieve(ADAPTER).id == ADAPTER


def check_adapter_answers_differ_from_the_base_model():
    def answer(model, stream):
        kwargs = dict(model=model, prompt="The river town", max_tokens=8, temperature=0)
        if not stream:
            r = client.completions.create(**kwargs)
            assert r.model == model, r.model
            return r.choices[0].text
        return "".join(c.choices[0].text for c in client.completions.create(stream=True, **kwargs) if c.choices)

    adapted, plain = answer(ADAPTER, False), answer(BASE, False)
    assert adapted != plain, (adapted, plain)
    assert answer(ADAPTER, True) == adapted
    chat = client.chat.completions.create(
        model=ADAPTER, messages=[{"role": "user", "content": "hi"}], max_tokens=4, temperature=0
    )
    assert chat.model == ADAPTER and chat.usage.completion_tokens == 4, chat


def check_embeddings_refuse_an_adapter():
    expect_bad_request("model", lambda: client.embeddings.create(model=ADAPTER, input="x"))


if __name__ == "__main__":
    run_checks(globals())
