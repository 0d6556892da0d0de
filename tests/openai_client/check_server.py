"""Drives a running `kiln serve` with the official `openai` Python client.

Usage: python3 tests/openai_client/check_server.py BASE_URL MODEL API_KEY MAX_QUEUED

The server must run with --max-num-seqs 1, --max-queued-requests MAX_QUEUED and
--tool-call-parser hermes.

Plain Python (no pytest) so CI needs only the `openai` package. Each check is a function
named check_*; all run, failures are listed, and the exit code is 1 if any failed.
"""

import sys

import openai
from run_checks import expect_bad_request, run_checks

BASE_URL, MODEL, API_KEY = sys.argv[1], sys.argv[2], sys.argv[3]
MAX_QUEUED = int(sys.argv[4])
client = openai.OpenAI(base_url=f"{BASE_URL}/v1", api_key=API_KEY, max_retries=0)
MESSAGES = [{"role": "user", "content": "What is a kiln?"}]


def check_models_lists_the_served_model():
    ids = [m.id for m in client.models.list().data]
    assert ids == [MODEL], ids
    assert client.models.retrieve(MODEL).id == MODEL
    try:
        client.models.retrieve("no-such-model")
    except openai.NotFoundError:
        pass
    else:
        raise AssertionError("no NotFoundError")


def check_chat_completion():
    r = client.chat.completions.create(
        model=MODEL, messages=MESSAGES, max_tokens=10, temperature=0
    )
    assert r.object == "chat.completion"
    choice = r.choices[0]
    assert choice.message.role == "assistant"
    assert choice.message.content.startswith("A kiln is"), choice.message.content
    assert choice.finish_reason == "length"
    assert r.usage.completion_tokens == 10
    assert r.usage.total_tokens == r.usage.prompt_tokens + 10


def check_chat_max_completion_tokens_and_n_2():
    r = client.chat.completions.create(
        model=MODEL, messages=MESSAGES, max_completion_tokens=6, n=2, seed=3
    )
    assert [c.index for c in r.choices] == [0, 1]
    assert r.usage.completion_tokens == 12


def check_chat_stream_with_usage():
    whole = client.chat.completions.create(
        model=MODEL, messages=MESSAGES, max_tokens=10, temperature=0
    )
    stream = client.chat.completions.create(
        model=MODEL,
        messages=MESSAGES,
        max_tokens=10,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    text, finish, usage = "", None, None
    for chunk in stream:
        if chunk.usage is not None:
            usage = chunk.usage
        for c in chunk.choices:
            text += c.delta.content or ""
            finish = c.finish_reason or finish
    assert text == whole.choices[0].message.content, (text, whole)
    assert finish == "length"
    assert usage is not None and usage.completion_tokens == 10


def check_chat_logprobs():
    r = client.chat.completions.create(
        model=MODEL,
        messages=MESSAGES,
        max_tokens=3,
        temperature=0,
        logprobs=True,
        top_logprobs=2,
    )
    content = r.choices[0].logprobs.content
    assert len(content) == 3
    assert content[0].token == "A"
    assert len(content[0].top_logprobs) == 2
    assert content[0].logprob <= 0


def check_chat_stop_sequence():
    r = client.chat.completions.create(
        model=MODEL, messages=MESSAGES, max_tokens=20, temperature=0, stop=[" hot"]
    )
    assert r.choices[0].message.content == "A kiln is a", r.choices[0].message.content
    assert r.choices[0].finish_reason == "stop"


def check_completion_and_stream():
    whole = client.completions.create(
        model=MODEL, prompt="The cat", max_tokens=6, temperature=0, logprobs=2
    )
    assert whole.object == "text_completion"
    choice = whole.choices[0]
    assert "".join(choice.logprobs.tokens) == choice.text
    assert len(choice.logprobs.token_logprobs) == 6
    streamed = "".join(
        c.choices[0].text
        for c in client.completions.create(
            model=MODEL, prompt="The cat", max_tokens=6, temperature=0, stream=True
        )
        if c.choices
    )
    assert streamed == choice.text, (streamed, choice.text)


def check_completion_n_2_and_echo():
    r = client.completions.create(
        model=MODEL, prompt=["The cat", "A river"], max_tokens=4, n=2, echo=True
    )
    assert len(r.choices) == 4
    assert r.choices[0].text.startswith("The cat")
    assert r.choices[3].text.startswith("A river")


def check_content_parts_and_developer_role():
    """The client's typed content parts and developer messages give the same answer as
    plain strings and a system message; an image part is refused for a text model."""
    plain = client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "system", "content": "Answer briefly."}] + MESSAGES,
        max_tokens=8,
        temperature=0,
    )
    parts = client.chat.completions.create(
        model=MODEL,
        messages=[
            {"role": "developer", "content": [{"type": "text", "text": "Answer briefly."}]},
            {"role": "user", "content": [{"type": "text", "text": "What is a kiln?"}]},
        ],
        max_tokens=8,
        temperature=0,
    )
    assert parts.choices[0].message.content == plain.choices[0].message.content
    expect_bad_request(
        "messages",
        lambda: client.chat.completions.create(
            model=MODEL,
            messages=[{"role": "user", "content": [
                {"type": "image_url", "image_url": {"url": "https://example.com/a.png"}}
            ]}],
        ),
    )


def check_logit_bias():
    plain = client.completions.create(model=MODEL, prompt="The cat", max_tokens=3, temperature=0)
    forced = client.completions.create(
        model=MODEL, prompt="The cat", max_tokens=3, temperature=0, logit_bias={"100": 100}
    )
    assert forced.choices[0].text != plain.choices[0].text
    expect_bad_request(
        "logit_bias",
        lambda: client.completions.create(model=MODEL, prompt="The cat", logit_bias={"100": 500}),
    )


def check_vllm_extras_through_extra_body():
    """vLLM's request extras, as the openai client sends them (`extra_body`)."""
    r = client.chat.completions.create(
        model=MODEL,
        messages=MESSAGES,
        max_tokens=6,
        temperature=0,
        logprobs=True,
        extra_body={
            "allowed_token_ids": [100, 101],
            "return_tokens_as_token_ids": True,
            "truncate_prompt_tokens": 8,
            "cache_salt": "tenant-a",
            "bad_words": ["kiln"],
        },
    )
    tokens = [e.token for e in r.choices[0].logprobs.content]
    assert tokens and set(tokens) <= {"token_id:100", "token_id:101"}, tokens
    assert r.usage.prompt_tokens == 8, r.usage
    expect_bad_request(
        "priority",
        lambda: client.completions.create(
            model=MODEL, prompt="The cat", max_tokens=2, extra_body={"priority": 3}
        ),
    )


def check_beam_search_through_extra_body():
    """vLLM's use_beam_search: n distinct beams, best first by summed logprob per token."""
    r = client.completions.create(
        model=MODEL,
        prompt="The cat",
        n=3,
        max_tokens=6,
        logprobs=1,
        extra_body={"use_beam_search": True, "ignore_eos": True, "length_penalty": 1.0},
    )
    assert len(r.choices) == 3, r.choices
    assert len({c.text for c in r.choices}) == 3, [c.text for c in r.choices]
    # Equal lengths: the per-token average orders as the sum does.
    sums = [sum(c.logprobs.token_logprobs) for c in r.choices]
    assert sums == sorted(sums, reverse=True), sums
    expect_bad_request(
        "stop",
        lambda: client.completions.create(
            model=MODEL, prompt="The cat", stop=["x"], extra_body={"use_beam_search": True}
        ),
    )


def check_echo_with_logprobs_scores_the_prompt():
    """What lm-evaluation-harness sends for loglikelihood tasks."""
    r = client.completions.create(
        model=MODEL, prompt="The cat sat", max_tokens=1, temperature=0, echo=True, logprobs=1
    )
    lp = r.choices[0].logprobs
    assert r.choices[0].text.startswith("The cat sat"), r.choices[0].text
    assert lp.token_logprobs[0] is None and lp.top_logprobs[0] is None
    assert all(v <= 0 for v in lp.token_logprobs[1:]), lp.token_logprobs
    assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.text_offset) == r.usage.prompt_tokens + 1


def check_structured_output():
    """response_format json_schema through the client: the answer parses and fits."""
    import json

    schema = {
        "type": "object",
        "properties": {"material": {"enum": ["clay", "glass"]}, "hot": {"type": "boolean"}},
        "required": ["material", "hot"],
        "additionalProperties": False,
    }
    r = client.chat.completions.create(
        model=MODEL,
        messages=MESSAGES,
        max_tokens=64,
        temperature=0,
        response_format={"type": "json_schema", "json_schema": {"name": "kiln", "schema": schema}},
    )
    value = json.loads(r.choices[0].message.content)
    assert value["material"] in ("clay", "glass") and isinstance(value["hot"], bool), value
    assert r.choices[0].finish_reason == "stop"


TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "look_up",
            "description": "Looks a word up",
            "parameters": {
                "type": "object",
                "properties": {"word": {"enum": ["kiln", "clay"]}},
                "required": ["word"],
                "additionalProperties": False,
            },
        },
    }
]


def check_forced_tool_call():
    """tool_choice "required": the client gets a typed tool call, whole and streamed."""
    import json

    r = client.chat.completions.create(
        model=MODEL, messages=MESSAGES, tools=TOOLS, tool_choice="required",
        parallel_tool_calls=False, max_tokens=256, temperature=0,
    )
    choice = r.choices[0]
    assert choice.finish_reason == "tool_calls", choice
    call = choice.message.tool_calls[0]
    assert call.type == "function" and call.function.name == "look_up"
    assert json.loads(call.function.arguments)["word"] in ("kiln", "clay")
    streamed = client.chat.completions.create(
        model=MODEL, messages=MESSAGES, tools=TOOLS,
        tool_choice={"type": "function", "function": {"name": "look_up"}},
        max_tokens=256, temperature=0, stream=True,
    )
    calls = [tc for chunk in streamed if chunk.choices for tc in (chunk.choices[0].delta.tool_calls or [])]
    assert len(calls) == 1 and calls[0].function.name == "look_up", calls
    assert json.loads(calls[0].function.arguments)["word"] in ("kiln", "clay")


def check_responses_whole_and_streamed():
    """The Responses API gives the chat endpoint's answer, whole and as typed events."""
    chat = client.chat.completions.create(
        model=MODEL, messages=MESSAGES, max_tokens=10, temperature=0
    )
    r = client.responses.create(
        model=MODEL, input="What is a kiln?", max_output_tokens=10, temperature=0
    )
    assert r.object == "response" and r.status == "incomplete", r
    assert r.incomplete_details.reason == "max_output_tokens", r
    assert r.output_text == chat.choices[0].message.content, (r.output_text, chat)
    assert r.usage.output_tokens == 10, r.usage
    assert r.usage.input_tokens == chat.usage.prompt_tokens, r.usage
    stream = client.responses.create(
        model=MODEL, input=MESSAGES, max_output_tokens=10, temperature=0, stream=True
    )
    deltas, final = [], None
    for event in stream:
        if event.type == "response.output_text.delta":
            deltas.append(event.delta)
        elif event.type in ("response.completed", "response.incomplete"):
            final = event.response
    assert "".join(deltas) == r.output_text, deltas
    assert final is not None and final.output_text == r.output_text, final


def check_responses_function_call_and_parse():
    """A forced call comes back as a typed function_call item; `responses.parse` gets a
    pydantic object from a strict json_schema format."""
    import json
    from typing import Literal

    import pydantic

    tool = dict(TOOLS[0]["function"], type="function", strict=True)
    r = client.responses.create(
        model=MODEL, input="Look up kiln.", tools=[tool], tool_choice="required",
        parallel_tool_calls=False, max_output_tokens=256, temperature=0,
    )
    calls = [item for item in r.output if item.type == "function_call"]
    assert len(calls) == 1 and calls[0].name == "look_up", r.output
    assert json.loads(calls[0].arguments)["word"] in ("kiln", "clay"), calls

    class Kiln(pydantic.BaseModel):
        material: Literal["clay", "glass"]
        hot: bool

    parsed = client.responses.parse(
        model=MODEL, input="Describe a kiln.", text_format=Kiln, max_output_tokens=128,
        temperature=0,
    )
    assert parsed.output_parsed.material in ("clay", "glass"), parsed.output_text


def check_reasoning_effort():
    # The client's own parameter reaches the server (a template variable there); the demo
    # template ignores it, so the answer is the plain one.
    r = client.chat.completions.create(
        model=MODEL, messages=MESSAGES, max_tokens=10, temperature=0, reasoning_effort="low"
    )
    assert r.choices[0].message.content.startswith("A kiln is"), r.choices[0].message.content
    expect_bad_request(
        "reasoning_effort",
        lambda: client.chat.completions.create(
            model=MODEL, messages=MESSAGES, max_tokens=1, reasoning_effort="extreme"
        ),
    )


def check_embeddings():
    # The client asks for base64 by default and decodes it itself.
    r = client.embeddings.create(model=MODEL, input=["A kiln is hot.", "Clay"])
    assert r.object == "list" and [d.index for d in r.data] == [0, 1], r
    first, second = (d.embedding for d in r.data)
    assert len(first) == len(second) > 8, len(first)
    assert abs(sum(x * x for x in first) - 1.0) < 1e-3, "normalised"
    assert first != second
    assert r.usage.prompt_tokens == r.usage.total_tokens > 2
    floats = client.embeddings.create(model=MODEL, input="Clay", encoding_format="float")
    assert max(abs(a - b) for a, b in zip(floats.data[0].embedding, second)) < 1e-5
    cut = client.embeddings.create(model=MODEL, input=[[1, 2, 3]], dimensions=8)
    assert len(cut.data[0].embedding) == 8
    for bad in [dict(input=[]), dict(input="x", dimensions=100000)]:
        try:
            client.embeddings.create(model=MODEL, **bad)
        except openai.BadRequestError:
            pass
        else:
            raise AssertionError(f"no BadRequestError for {bad}")


def check_bad_request():
    try:
        client.chat.completions.create(model=MODEL, messages=MESSAGES, temperature=-1)
    except openai.BadRequestError as e:
        assert e.status_code == 400
        assert e.body["param"] == "temperature", e.body
    else:
        raise AssertionError("no BadRequestError")


def check_unknown_model():
    try:
        client.chat.completions.create(model="no-such-model", messages=MESSAGES)
    except openai.NotFoundError as e:
        assert e.body["code"] == "model_not_found", e.body
    else:
        raise AssertionError("no NotFoundError")


def check_wrong_key():
    bad = openai.OpenAI(base_url=f"{BASE_URL}/v1", api_key="wrong", max_retries=0)
    try:
        bad.models.list()
    except openai.AuthenticationError as e:
        assert e.status_code == 401
    else:
        raise AssertionError("no AuthenticationError")


def check_queue_full():
    """With max_num_seqs 1, a request for MAX_QUEUED + 2 choices cannot all be queued:
    they are submitted back to back, at most one runs, so the last finds the queue full."""
    try:
        client.completions.create(
            model=MODEL, prompt="The cat", max_tokens=1000, n=MAX_QUEUED + 2
        )
    except openai.RateLimitError as e:
        assert e.response.headers.get("retry-after") == "1"
    else:
        raise AssertionError("no RateLimitError")


if __name__ == "__main__":
    run_checks(globals())
