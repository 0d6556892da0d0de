"""Scoring references for `tests/server_ranked_choices.rs`, from HF transformers on the
llama fixture:
- beams: transformers' own beam search with EOS disabled, so no beam ends early (then
  every beam search that keeps the `width` best extensions per round by cumulative
  log-probability returns the same beams, whatever its length normalisation). Per prompt,
  the beams in HF's order with their tokens and cumulative log-probabilities (re-scored by
  a plain forward pass), and the smallest gap between neighbouring beams' scores (a
  near-tie would make the test depend on rounding).
- prompt_logprobs: every prompt token's log-probability after the tokens before it, its
  rank in the vocabulary, and the top alternatives (vLLM's `prompt_logprobs`).

Writes tests/fixtures/llama/scoring_reference.json.

    python3 scripts/scoring_reference.py
"""

import json
import pathlib

import torch
import transformers

FIXTURE = pathlib.Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "llama"
WIDTH = 4
NEW_TOKENS = 8


def cumulative_logprob(model, prompt, generated):
    ids = torch.tensor([prompt + generated])
    with torch.no_grad():
        logits = model(ids).logits[0].double()
    logprobs = torch.log_softmax(logits, dim=-1)
    total = 0.0
    for i, token in enumerate(generated):
        total += float(logprobs[len(prompt) + i - 1, token])
    return total


def prompt_scores(model, prompt, top):
    """Per prompt token after the first: its logprob, rank and the `top` alternatives."""
    with torch.no_grad():
        logits = model(torch.tensor([prompt])).logits[0].double()
    logprobs = torch.log_softmax(logits, dim=-1)
    scores = []
    for pos in range(len(prompt) - 1):
        row = logprobs[pos]
        token = prompt[pos + 1]
        values, ids = torch.topk(row, top)
        scores.append(
            {
                "token": token,
                "logprob": float(row[token]),
                "rank": int((row > row[token]).sum()) + 1,
                "top": [[int(i), float(v)] for i, v in zip(ids, values)],
            }
        )
    return scores


def main():
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_pretrained(FIXTURE, dtype=torch.float32)
    model.eval()
    model.generation_config.eos_token_id = None
    # The fixture's generation config carries sampling defaults (a repetition penalty of
    # 1.05 among them) that beam search would apply to its scores; a plain search has none.
    model.generation_config.repetition_penalty = 1.0
    reference = json.loads((FIXTURE / "reference.json").read_text())
    out = {
        "transformers_version": transformers.__version__,
        "torch_version": torch.__version__,
        "width": WIDTH,
        "max_new_tokens": NEW_TOKENS,
        "prompts": [],
    }
    for case in reference["prompts"]:
        prompt = case["prompt_ids"]
        with torch.no_grad():
            result = model.generate(
                torch.tensor([prompt]),
                num_beams=WIDTH,
                num_return_sequences=WIDTH,
                max_new_tokens=NEW_TOKENS,
                do_sample=False,
                length_penalty=1.0,
                repetition_penalty=1.0,
                early_stopping=False,
                pad_token_id=0,
                output_scores=True,
                return_dict_in_generate=True,
            )
        beams = []
        for seq in result.sequences.tolist():
            generated = seq[len(prompt):]
            beams.append(
                {"ids": generated, "cumulative_logprob": cumulative_logprob(model, prompt, generated)}
            )
        scores = [b["cumulative_logprob"] for b in beams]
        assert scores == sorted(scores, reverse=True), scores
        out["prompts"].append(
            {
                "prompt_ids": prompt,
                "beams": beams,
                "min_gap": min(a - b for a, b in zip(scores, scores[1:])),
            }
        )
    first = reference["prompts"][0]["prompt_ids"]
    out["prompt_logprobs"] = {"prompt_ids": first, "top": 3, "scores": prompt_scores(model, first, 3)}
    path = FIXTURE / "scoring_reference.json"
    path.write_text(json.dumps(out, indent=1) + "\n")
    print(f"wrote {path}")
    for p in out["prompts"]:
        print(p["prompt_ids"], [b["ids"] for b in p["beams"]], f"min gap {p['min_gap']:.2e}")


if __name__ == "__main__":
    main()
