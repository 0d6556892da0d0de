#!/usr/bin/env python3
"""The diffusers baseline for `kiln bench image`: the same pipeline shapes, built from kiln's
preset configs (models/presets/diffusion/<name>/) with small random weights (no download),
timed the way kiln times itself. Prints one JSON object to stdout.

What it runs, as StableDiffusionPipeline.__call__ does it (written out so each stage can be
timed, with a CUDA synchronise before every clock read):
  text encode (pipe.encode_prompt: the prompt and, with guidance, the empty negative prompt),
  `steps` x [UNet on the latents (doubled with guidance), guidance, scheduler.step],
  VAE decode + postprocess to a float numpy image.
The UNet and VAE use PyTorch SDPA (AttnProcessor2_0), the text encoder transformers' "sdpa".

Needs torch, transformers and diffusers (0.35 works with transformers 4.57). Examples:
  python3 scripts/diffusers_baseline.py --preset sd-1.5 --steps 50 --guidance-scale 7.5
  python3 scripts/diffusers_baseline.py --preset sd-turbo --steps 1 --guidance-scale 0
  python3 scripts/diffusers_baseline.py --preset sd-1.5 --device cpu --dtype f32 --tiny \
      --width 64 --height 64 --steps 2 --warmup 0 --iters 1     # a quick check without a GPU
"""

import argparse
import json
import os
import statistics
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PRESETS = os.path.join(REPO, "models", "presets", "diffusion")


def read(preset_dir, rel):
    with open(os.path.join(preset_dir, rel)) as f:
        return json.load(f)


def shrink(unet_cfg, vae_cfg, te_cfg):
    """Tiny stand-ins of the same structure, for a CPU check of the script itself."""
    heads = unet_cfg["attention_head_dim"]
    heads = heads if isinstance(heads, list) else [heads] * len(unet_cfg["block_out_channels"])
    unet_cfg["block_out_channels"] = [8 * h for h in heads]
    unet_cfg["norm_num_groups"] = 4
    unet_cfg["layers_per_block"] = 1
    te_cfg.update(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                  num_attention_heads=4, projection_dim=32)
    unet_cfg["cross_attention_dim"] = 32
    vae_cfg["block_out_channels"] = [8, 8, 16, 16]
    vae_cfg["norm_num_groups"] = 4
    vae_cfg["layers_per_block"] = 1


def small_init(model, torch):
    """kiln's dummy weights: norm scales one, everything else uniform in [-0.02, 0.02)."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            layer = name.rsplit(".", 2)[-2] if name.count(".") >= 1 else ""
            if name.endswith(".weight") and "norm" in layer:
                p.fill_(1.0)
            else:
                p.uniform_(-0.02, 0.02)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--preset", default="sd-1.5", help="a folder of models/presets/diffusion")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--dtype", default="f16", choices=["f16", "bf16", "f32"])
    ap.add_argument("--width", type=int, default=512)
    ap.add_argument("--height", type=int, default=512)
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--guidance-scale", type=float, default=7.5)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--iters", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--prompt", default="a photograph of an astronaut riding a horse on mars")
    ap.add_argument("--tiny", action="store_true", help="shrink every width (CPU check)")
    ap.add_argument("--compile", action="store_true", help="torch.compile the UNet")
    args = ap.parse_args()

    import numpy as np
    import torch
    import diffusers
    import transformers
    from diffusers import (AutoencoderKL, EulerAncestralDiscreteScheduler,
                           EulerDiscreteScheduler, StableDiffusionPipeline,
                           UNet2DConditionModel)
    from diffusers.models.attention_processor import AttnProcessor2_0
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    preset_dir = os.path.join(PRESETS, args.preset)
    dtype = {"f16": torch.float16, "bf16": torch.bfloat16, "f32": torch.float32}[args.dtype]
    device = torch.device(args.device)
    torch.manual_seed(args.seed)

    unet_cfg = read(preset_dir, "unet/config.json")
    vae_cfg = read(preset_dir, "vae/config.json")
    te_cfg = read(preset_dir, "text_encoder/config.json")
    sched_cfg = read(preset_dir, "scheduler/scheduler_config.json")
    if args.tiny:
        shrink(unet_cfg, vae_cfg, te_cfg)

    t_load = time.perf_counter()
    with torch.device(device):
        unet = UNet2DConditionModel.from_config(unet_cfg)
        vae = AutoencoderKL.from_config(vae_cfg)
        te_config = CLIPTextConfig(**{k: v for k, v in te_cfg.items() if not k.startswith("_")})
        try:
            text_encoder = CLIPTextModel._from_config(te_config, attn_implementation="sdpa")
        except (TypeError, ValueError):
            text_encoder = CLIPTextModel(te_config)
    params = {
        "unet": sum(p.numel() for p in unet.parameters()),
        "vae": sum(p.numel() for p in vae.parameters()),
        "vae_decoder": sum(p.numel() for n, p in vae.named_parameters()
                           if n.startswith(("decoder.", "post_quant_conv."))),
        "text_encoder": sum(p.numel() for p in text_encoder.parameters()),
    }
    for m in (unet, vae, text_encoder):
        small_init(m, torch)
        m.to(device=device, dtype=dtype).eval()
    unet.set_attn_processor(AttnProcessor2_0())
    vae.set_attn_processor(AttnProcessor2_0())
    if args.compile:
        unet = torch.compile(unet)
    sched_class = {"EulerDiscreteScheduler": EulerDiscreteScheduler,
                   "EulerAncestralDiscreteScheduler": EulerAncestralDiscreteScheduler}[
        sched_cfg["_class_name"]]
    scheduler = sched_class.from_config(sched_cfg)
    tokenizer = CLIPTokenizer.from_pretrained(os.path.join(PRESETS, "stand-in-tokenizer"))
    pipe = StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer,
                                   unet=unet, scheduler=scheduler, safety_checker=None,
                                   feature_extractor=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    sync()
    load_s = time.perf_counter() - t_load

    guided = args.guidance_scale > 1.0
    generator = torch.Generator(device=device).manual_seed(args.seed)

    @torch.inference_mode()
    def run():
        t0 = time.perf_counter()
        cond, uncond = pipe.encode_prompt(args.prompt, device, args.batch, guided)
        context = torch.cat([uncond, cond]) if guided else cond
        sync()
        t_text = time.perf_counter()
        scheduler.set_timesteps(args.steps, device=device)
        latents = pipe.prepare_latents(args.batch, unet_cfg["in_channels"], args.height,
                                       args.width, dtype, device, generator)
        for t in scheduler.timesteps:
            x = torch.cat([latents] * 2) if guided else latents
            x = scheduler.scale_model_input(x, t)
            noise = unet(x, t, encoder_hidden_states=context, return_dict=False)[0]
            if guided:
                uncond_noise, cond_noise = noise.chunk(2)
                noise = uncond_noise + args.guidance_scale * (cond_noise - uncond_noise)
            latents = scheduler.step(noise, t, latents, generator=generator,
                                     return_dict=False)[0]
        sync()
        t_unet = time.perf_counter()
        image = vae.decode(latents / vae.config.scaling_factor, return_dict=False)[0]
        image = pipe.image_processor.postprocess(image, output_type="np")
        sync()
        t_end = time.perf_counter()
        steps = len(scheduler.timesteps)
        return {
            "total_s": t_end - t0,
            "text_encoder_s": t_text - t0,
            "unet_loop_s": t_unet - t_text,
            "vae_decode_s": t_end - t_unet,
            "unet_it_per_s": steps / (t_unet - t_text),
            "non_finite": bool(not np.isfinite(image).all()
                               or not torch.isfinite(latents).all().item()),
        }

    for _ in range(args.warmup):
        run()
    runs = [run() for _ in range(args.iters)]
    median = sorted(runs, key=lambda r: r["total_s"])[len(runs) // 2]
    report = {
        "implementation": "diffusers",
        "diffusers": diffusers.__version__,
        "transformers": transformers.__version__,
        "torch": torch.__version__,
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "preset": args.preset + (" (tiny)" if args.tiny else ""),
        "dtype": args.dtype,
        "attention": "sdpa",
        "compiled": args.compile,
        "width": args.width,
        "height": args.height,
        "steps": args.steps,
        "guidance_scale": args.guidance_scale,
        "batch": args.batch,
        "params": params,
        "load_s": load_s,
        "runs": runs,
        "median": median,
        "median_total_s": statistics.median(r["total_s"] for r in runs),
    }
    json.dump(report, sys.stdout, indent=2)
    print()


if __name__ == "__main__":
    main()
