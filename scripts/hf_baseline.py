#!/usr/bin/env python3
"""HuggingFace transformers baseline on the same GPU and shapes as `kiln bench latency`.

Builds the model from a kiln preset config with random bf16 weights (no download), then
measures decode tokens/s at the given batch sizes and the forward time of one prompt
(prefill). Prints one JSON object. Used by scripts/gpu-check.sh so ratios are measured side
by side in one run.

Modes: `eager` (eager attention, dynamic cache) and `static-compiled` (a static KV cache
and the decode step compiled with torch.compile, transformers' fastest documented setup;
the compile happens in the untimed warm-up).

    python3 scripts/hf_baseline.py --config models/presets/llama-3.1-8b.json \
        --batch-sizes 1,32 --input-len 128 --output-len 32 --prefill-len 1024
"""
import argparse
import json
import time

import torch
import transformers


def sync(device):
    if device == "cuda":
        torch.cuda.synchronize()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--config", required=True)
    ap.add_argument("--batch-sizes", default="1")
    ap.add_argument("--input-len", type=int, default=128)
    ap.add_argument("--output-len", type=int, default=32)
    ap.add_argument("--prefill-len", type=int, default=1024)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--mode", choices=["eager", "static-compiled"], default="eager")
    args = ap.parse_args()

    cfg = transformers.AutoConfig.from_pretrained(args.config)
    torch.manual_seed(0)
    t0 = time.time()
    with torch.device(args.device):
        model = transformers.AutoModelForCausalLM.from_config(
            cfg,
            torch_dtype=torch.bfloat16,
            attn_implementation="eager" if args.mode == "eager" else "sdpa",
        )
    model.eval()
    gen_extra = {}
    if args.mode == "static-compiled":
        gen_extra["cache_implementation"] = "static"
        model.forward = torch.compile(model.forward, mode="reduce-overhead", fullgraph=True)
    result = {
        "transformers": transformers.__version__,
        "torch": torch.__version__,
        "gpu": torch.cuda.get_device_name(0) if args.device == "cuda" else args.device,
        "init_s": time.time() - t0,
        "mode": args.mode,
        "decode": [],
    }
    vocab = cfg.vocab_size
    with torch.inference_mode():
        ids = torch.randint(0, vocab, (1, args.prefill_len), device=args.device)
        for _ in range(2):
            model(ids)
        sync(args.device)
        t = time.time()
        model(ids)
        sync(args.device)
        result["prefill_ms"] = (time.time() - t) * 1e3
        result["prefill_len"] = args.prefill_len
        for b in [int(x) for x in args.batch_sizes.split(",")]:
            ids = torch.randint(0, vocab, (b, args.input_len), device=args.device)
            kw = dict(
                max_new_tokens=args.output_len,
                min_new_tokens=args.output_len,
                do_sample=False,
                pad_token_id=0,
                **gen_extra,
            )
            # Warm-up (and, compiled, the compilation): the full length, twice.
            for _ in range(2):
                model.generate(ids, **kw)
            sync(args.device)
            # Time prefill + 1 token, then the whole run; decode = the difference.
            t = time.time()
            model.generate(ids, **dict(kw, max_new_tokens=1, min_new_tokens=1))
            sync(args.device)
            first = time.time() - t
            t = time.time()
            model.generate(ids, **kw)
            sync(args.device)
            total = time.time() - t
            decode = max(total - first, 1e-9)
            result["decode"].append(
                {"batch": b, "input_len": args.input_len, "output_len": args.output_len,
                 "decode_tokens_per_s": b * (args.output_len - 1) / decode}
            )
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
