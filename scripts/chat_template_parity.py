#!/usr/bin/env python3
"""Renders chat templates with HuggingFace transformers for a fixed set of conversations, so
that `kiln check-chat-templates CASES` can check kiln renders each one byte for byte alike.

    pip install "transformers>=4.56,<5" jinja2        # no torch needed
    python3 scripts/chat_template_parity.py --templates DIR [--tokens tokens.json] --out cases.json
    kiln check-chat-templates cases.json

DIR holds `*.jinja` files (a model's chat_template.jinja, or the `chat_template` string of its
tokenizer_config.json). tokens.json, if given, maps a file name to its model's
{"bos_token": ..., "eos_token": ...}; otherwise "<s>" and "</s>" stand in.

The output holds each template (source, bos and eos tokens) once, and each case the template's
name, the request as an OpenAI client sends it (tool-call arguments
as JSON text), and what transformers' `render_jinja_template` made of it (or the exception it
raised). The conversations cover tools offered, a tool round trip with parallel calls,
reasoning in the history, `enable_thinking` / `reasoning_effort` kwargs and non-ASCII text.
tests/data/chat_templates/cases.json is this script's output for that folder's templates.
"""
import argparse
import copy
import glob
import json
import os

from transformers.utils.chat_template_utils import render_jinja_template

WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather in a city",
        "parameters": {
            "type": "object",
            "properties": {
                "city": {"type": "string", "description": "City name"},
                "unit": {"type": "string", "enum": ["c", "f"]},
            },
            "required": ["city"],
        },
    },
}
TOOLS = [WEATHER_TOOL]


def call(call_id, arguments):
    return {"id": call_id, "type": "function", "function": {"name": "get_weather", "arguments": arguments}}


def turns(*pairs):
    return [{"role": role, "content": content} for role, content in pairs]


CASES = {
    "user_only": dict(messages=turns(("user", "Hello!"))),
    "system_multi": dict(messages=turns(("system", "You are terse."), ("user", "Hi there"),
                                        ("assistant", "Hello. "), ("user", "What is 2+2?"))),
    "no_system_multi": dict(messages=turns(("user", "Hi"), ("assistant", "Hello!"), ("user", "Bye"))),
    "ends_with_assistant": dict(messages=turns(("user", "Hi"), ("assistant", "Hello!")), generation_prompt=False),
    "tools_offered": dict(messages=turns(("system", "Use tools."), ("user", "Weather in Paris?")), tools=TOOLS),
    "tool_round_trip": dict(
        messages=[{"role": "user", "content": "Weather in Paris?"},
                  {"role": "assistant", "content": "", "tool_calls": [call("call_1", {"city": "Paris", "unit": "c"})]},
                  {"role": "tool", "content": '{"temp": 21}', "tool_call_id": "call_1", "name": "get_weather"}],
        tools=TOOLS),
    "parallel_calls": dict(
        messages=[{"role": "system", "content": "Be helpful."},
                  {"role": "user", "content": "Weather in Paris and Köln?"},
                  {"role": "assistant", "content": "", "tool_calls": [
                      call("call_1", {"city": "Paris", "unit": "c"}),
                      call("call_2", {"city": "Köln", "unit": "f", "days": [1, 2], "exact": True, "note": None})]},
                  {"role": "tool", "content": '{"temp": 21}', "tool_call_id": "call_1", "name": "get_weather"},
                  {"role": "tool", "content": '{"temp": 50}', "tool_call_id": "call_2", "name": "get_weather"},
                  {"role": "assistant", "content": "Paris 21C, Köln 50F."},
                  {"role": "user", "content": "Thanks"}],
        tools=TOOLS),
    "reasoning_history": dict(messages=[{"role": "user", "content": "Hi"},
                                        {"role": "assistant", "content": "Hello!", "reasoning_content": "Greet back."},
                                        {"role": "user", "content": "Again"}]),
    "think_in_content": dict(messages=[{"role": "user", "content": "Hi"},
                                       {"role": "assistant", "content": "<think>\nGreet.\n</think>\n\nHello!"},
                                       {"role": "user", "content": "Again"}]),
    "harmony_history": dict(messages=[{"role": "system", "content": "Be brief."},
                                      {"role": "user", "content": "Hi"},
                                      {"role": "assistant", "content": "Hello!", "thinking": "Say hi."},
                                      {"role": "user", "content": "Again"}],
                            kwargs={"reasoning_effort": "high"}),
    "thinking_off": dict(messages=turns(("user", "Hi")), kwargs={"enable_thinking": False}),
    "thinking_on": dict(messages=turns(("user", "Hi")), kwargs={"enable_thinking": True}),
    "unicode": dict(messages=turns(("user", "  Grüße, 世界 — \"quotes\" and 'apostrophes' \\ backslash\n  "))),
}


def as_client_sends(messages):
    """The request's messages as an OpenAI client sends them: arguments as JSON text."""
    messages = copy.deepcopy(messages)
    for message in messages:
        for tool_call in message.get("tool_calls", []):
            tool_call["function"]["arguments"] = json.dumps(tool_call["function"]["arguments"])
    return messages


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--templates", required=True, help="folder of *.jinja chat templates")
    parser.add_argument("--tokens", help="JSON: file name -> {bos_token, eos_token}")
    parser.add_argument("--out", required=True, help="where to write the cases (JSON)")
    args = parser.parse_args()

    tokens = json.load(open(args.tokens)) if args.tokens else {}
    templates, cases = {}, []
    for path in sorted(glob.glob(os.path.join(args.templates, "*.jinja"))):
        name = os.path.basename(path)
        source = open(path, encoding="utf-8").read()
        bos = tokens.get(name, {}).get("bos_token", "<s>")
        eos = tokens.get(name, {}).get("eos_token", "</s>")
        templates[name] = dict(source=source, bos_token=bos, eos_token=eos)
        for case, spec in CASES.items():
            generation_prompt = spec.get("generation_prompt", True)
            kwargs = spec.get("kwargs", {})
            try:
                rendered, _ = render_jinja_template(
                    conversations=[copy.deepcopy(spec["messages"])], tools=spec.get("tools"),
                    chat_template=source, add_generation_prompt=generation_prompt,
                    bos_token=bos, eos_token=eos, **kwargs)
                expected, error = rendered[0], None
            except Exception as e:  # the template's own raise_exception, or a Python error
                expected, error = None, f"{type(e).__name__}: {e}"
            cases.append(dict(template=name, case=case, messages=as_client_sends(spec["messages"]), add_generation_prompt=generation_prompt,
                              tools=spec.get("tools"), kwargs=kwargs, expected=expected, error=error))
    with open(args.out, "w", encoding="utf-8") as f:
        json.dump(dict(templates=templates, cases=cases), f, indent=1, ensure_ascii=False)
        f.write("\n")
    raised = sum(1 for c in cases if c["error"])
    print(f"{len(cases)} cases from {len(templates)} templates; transformers raised in {raised}")


if __name__ == "__main__":
    main()
