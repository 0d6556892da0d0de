#!/usr/bin/env python3
"""Build kiln's diffusion fixtures: tiny random-weight pipelines in the diffusers layout,
and reference outputs recorded with HuggingFace `diffusers` on the CPU in float32.

Outputs (committed; CI never runs this script):
  tests/fixtures/diffusion/tiny-sd/     SD-1.5-style pipeline (CLIPTextModel, UNet2DCondition
                                        with CrossAttnDownBlock2D / UpBlock2D, AutoencoderKL,
                                        EulerDiscreteScheduler "leading")
    reference.json                      inputs (prompts, token ids, steps, guidance, ...) and
                                        scheduler tables
    reference.safetensors               float32 tensors: encoder states, one UNet forward,
                                        one VAE decode, full runs, scheduler steps
    reference_odd_sizes.json/.safetensors   a UNet forward and a full run at a size with odd
                                        latent sides
  tests/fixtures/diffusion/tiny-sdxl/   SDXL-style pipeline (two text encoders, "text_time"
                                        added conditioning), with the same kinds of files

Regenerate from the repository root:
  pip install torch "transformers>=4.56,<5" diffusers safetensors
  python scripts/make_diffusion_fixtures.py
or, to add only tiny-sdxl/reference_odd_sizes.* and leave every other file untouched:
  python scripts/make_diffusion_fixtures.py --only-sdxl-odd-sizes
A full run rewrites every file with the same bytes except the JSON lists of diffusers'
`_use_default_values`, a set whose order follows Python's hash seed (PYTHONHASHSEED).

Weights are seeded normal noise rounded to float16 (stored as float16 to halve the files);
every reference is computed in float32 from those rounded values, so kiln loads the same
numbers whether it reads them as f16 or f32.
"""

from __future__ import annotations

import argparse
import inspect
import json
import shutil
from collections import Counter
from pathlib import Path

import diffusers
import numpy as np
import torch
import transformers
from diffusers import (
    AutoencoderKL,
    DDIMScheduler,
    EulerAncestralDiscreteScheduler,
    EulerDiscreteScheduler,
    StableDiffusionPipeline,
    StableDiffusionXLPipeline,
    UNet2DConditionModel,
)
from diffusers.utils.torch_utils import randn_tensor
from safetensors.torch import save_file
from transformers import (
    CLIPTextConfig,
    CLIPTextModel,
    CLIPTextModelWithProjection,
    CLIPTokenizer,
    CLIPTokenizerFast,
)

REPO_ROOT = Path(__file__).resolve().parent.parent
OUT_DIR = REPO_ROOT / "tests" / "fixtures" / "diffusion"

# A small corpus for the tokenizer's merges: words of the prompts below and a few more.
TOKENIZER_CORPUS = (
    "a photo of a red cat sitting on the mat, a painting of the sea at night, "
    "blurry low quality photo, an astronaut riding a horse on the moon, the cat and the hat, "
    "a red house with a green door, photo of the city at night"
)
NUM_MERGES = 80

PROMPT = "a photo of a red cat"
NEGATIVE_PROMPT = "blurry, low quality"
# Strings whose token ids kiln's CLIP tokenizer must reproduce (case, spaces, punctuation,
# digits, unknown bytes).
TOKENIZER_CASES = [
    PROMPT,
    NEGATIVE_PROMPT,
    "",
    "A  Photo of   THE Cat!!",
    "an astronaut riding a horse on the moon, 4k, 35mm",
    "don't stop: it's a cat's hat",
    "caf\u00e9 \u00fcber \u2764",
]


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2 / CLIP byte-to-printable-character table."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("\xa1"), ord("\xac") + 1))
    bs += list(range(ord("\xae"), ord("\xff") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, [chr(c) for c in cs]))


def train_merges(corpus: str, num_merges: int) -> list[tuple[str, str]]:
    """A tiny BPE trainer: words end with '</w>' as in CLIP; ties broken lexicographically."""
    words = Counter(w for w in corpus.lower().replace(",", " , ").split())
    seqs = {w: list(w[:-1]) + [w[-1] + "</w>"] for w in words}
    merges: list[tuple[str, str]] = []
    for _ in range(num_merges):
        pairs: Counter = Counter()
        for w, count in words.items():
            s = seqs[w]
            for a, b in zip(s, s[1:]):
                pairs[(a, b)] += count
        if not pairs:
            break
        best = min(pairs, key=lambda p: (-pairs[p], p))
        merges.append(best)
        for w in words:
            s, out, i = seqs[w], [], 0
            while i < len(s):
                if i + 1 < len(s) and (s[i], s[i + 1]) == best:
                    out.append(s[i] + s[i + 1])
                    i += 2
                else:
                    out.append(s[i])
                    i += 1
            seqs[w] = out
    return merges


def make_tokenizer(directory: Path, pad_token: str) -> CLIPTokenizer:
    """A CLIP BPE tokenizer laid out like CLIP's own: 256 byte characters, the same with
    '</w>', the merges, then <|startoftext|> and <|endoftext|>."""
    directory.mkdir(parents=True, exist_ok=True)
    chars = list(bytes_to_unicode().values())
    vocab = chars + [c + "</w>" for c in chars]
    merges = train_merges(TOKENIZER_CORPUS, NUM_MERGES)
    vocab += ["".join(m) for m in merges]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    raw = directory / "raw"
    raw.mkdir(exist_ok=True)
    (raw / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(vocab)}))
    (raw / "merges.txt").write_text(
        "#version: 0.2\n" + "\n".join(f"{a} {b}" for a, b in merges) + "\n"
    )
    tok = CLIPTokenizer(str(raw / "vocab.json"), str(raw / "merges.txt"), pad_token=pad_token)
    tok.model_max_length = 77
    shutil.rmtree(raw)
    tok.save_pretrained(directory)
    return CLIPTokenizer.from_pretrained(directory)


def noise_weights(module: torch.nn.Module, seed: int) -> None:
    """Seeded normal weights large enough that every layer matters, rounded to float16.

    Norm scales are 1 + noise, biases and matrices noise scaled by 1/sqrt(fan_in), so
    activations keep a sane size through the tiny networks."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            noise = torch.randn(p.shape, generator=gen)
            if "norm" in name and name.endswith("weight"):
                value = 1.0 + 0.1 * noise
            elif name.endswith("bias"):
                value = 0.1 * noise
            elif p.dim() >= 2:
                fan_in = p[0].numel()
                value = noise / fan_in**0.5
            else:
                value = 0.2 * noise
            p.copy_(value.half().float())


def save_f16(module, directory: Path) -> None:
    """save_pretrained, then rewrite the weights file in float16 (the values are exact)."""
    module.save_pretrained(directory, safe_serialization=True)
    for f in directory.glob("*.safetensors"):
        from safetensors.torch import load_file

        tensors = {k: v.half().contiguous() for k, v in load_file(f).items()}
        save_file(tensors, f, metadata={"format": "pt"})


def clip_config(vocab_size: int, eos: int, hidden_act: str, projection: int = 32) -> CLIPTextConfig:
    return CLIPTextConfig(
        vocab_size=vocab_size,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=77,
        hidden_act=hidden_act,
        layer_norm_eps=1e-5,
        projection_dim=projection,
        bos_token_id=eos - 1,
        eos_token_id=eos,
        pad_token_id=eos,
    )


def euler_config() -> dict:
    # As Stable Diffusion 1.5's scheduler_config.json, switched to Euler.
    return dict(
        num_train_timesteps=1000,
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        prediction_type="epsilon",
        timestep_spacing="leading",
        steps_offset=1,
    )


def to_f32(t: torch.Tensor) -> torch.Tensor:
    return t.detach().to(torch.float32).contiguous()


def token_cases(tok: CLIPTokenizer, fast: CLIPTokenizerFast) -> list[dict]:
    cases = []
    for text in TOKENIZER_CASES:
        ids = tok(text, padding="max_length", max_length=77, truncation=True).input_ids
        fast_ids = fast(text, padding="max_length", max_length=77, truncation=True).input_ids
        assert ids == fast_ids, f"slow and fast CLIP tokenizers disagree on {text!r}"
        cases.append({"text": text, "ids": ids})
    return cases


def scheduler_tables(config: dict, tensors: dict) -> list[dict]:
    """Timesteps and sigmas / alphas for each scheduler and spacing, and one step each from
    fixed inputs (ancestral with its noise recorded)."""
    gen = torch.Generator().manual_seed(7)
    sample = torch.randn((1, 4, 4, 4), generator=gen)
    model_output = torch.randn((1, 4, 4, 4), generator=gen)
    tensors["scheduler.sample"] = sample
    tensors["scheduler.model_output"] = model_output
    cases = []
    kinds = [
        ("EulerDiscreteScheduler", EulerDiscreteScheduler),
        ("EulerAncestralDiscreteScheduler", EulerAncestralDiscreteScheduler),
        ("DDIMScheduler", DDIMScheduler),
    ]
    for class_name, cls in kinds:
        for spacing in ["leading", "trailing", "linspace"]:
            for prediction in ["epsilon", "v_prediction"]:
                for steps in [1, 4, 25]:
                    extra = {"clip_sample": False, "set_alpha_to_one": False} if cls is DDIMScheduler else {}
                    cfg = dict(config, timestep_spacing=spacing, prediction_type=prediction, **extra)
                    s = cls(**cfg)
                    s.set_timesteps(steps)
                    case = {
                        "class_name": class_name,
                        "config": cfg,
                        "steps": steps,
                        "timesteps": [float(t) for t in s.timesteps],
                        "init_noise_sigma": float(s.init_noise_sigma),
                    }
                    if hasattr(s, "sigmas"):
                        case["sigmas"] = [float(x) for x in s.sigmas]
                    # The second step (the first when there is one), from fixed inputs.
                    index = min(1, steps - 1)
                    t = s.timesteps[index]
                    if cls is not DDIMScheduler:
                        s._step_index = index
                    scaled = s.scale_model_input(sample, t)
                    key = f"scheduler.{class_name}.{spacing}.{prediction}.{steps}"
                    noise_gen = torch.Generator().manual_seed(11)
                    if cls is EulerAncestralDiscreteScheduler:
                        # The step draws its noise like this; record it so kiln can use it.
                        tensors[key + ".noise"] = randn_tensor(
                            sample.shape, generator=torch.Generator().manual_seed(11), dtype=sample.dtype
                        )
                        out = s.step(model_output, t, sample, generator=noise_gen).prev_sample
                    else:
                        out = s.step(model_output, t, sample).prev_sample
                    case["step_index"] = index
                    case["key"] = key
                    tensors[key + ".scaled"] = to_f32(scaled)
                    tensors[key + ".prev"] = to_f32(out)
                    cases.append(case)
    return cases


def make_sd(out: Path) -> None:
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    tok = make_tokenizer(out / "tokenizer", pad_token="<|endoftext|>")
    fast = CLIPTokenizerFast.from_pretrained(out / "tokenizer", from_slow=True)
    eos = tok.convert_tokens_to_ids("<|endoftext|>")

    torch.manual_seed(0)
    text_encoder = CLIPTextModel(clip_config(len(tok), eos, "quick_gelu")).eval()
    noise_weights(text_encoder, 1)
    unet = UNet2DConditionModel(
        sample_size=16,
        in_channels=4,
        out_channels=4,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        block_out_channels=(16, 32),
        layers_per_block=1,
        cross_attention_dim=32,
        attention_head_dim=4,
        norm_num_groups=8,
    ).eval()
    noise_weights(unet, 2)
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        block_out_channels=(8, 16),
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=4,
        sample_size=32,
    ).eval()
    noise_weights(vae, 3)
    scheduler = EulerDiscreteScheduler(**euler_config())
    pipe = StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tok,
        unet=unet,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    pipe.save_pretrained(out, safe_serialization=True)
    for name, module in [("text_encoder", text_encoder), ("unet", unet), ("vae", vae)]:
        shutil.rmtree(out / name)
        save_f16(module, out / name)

    tensors: dict[str, torch.Tensor] = {}
    ref: dict = {
        "versions": {
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "diffusers": diffusers.__version__,
        },
        "tokenizer_cases": token_cases(tok, fast),
    }

    with torch.no_grad():
        # Text encoder: last hidden state, the penultimate layer (SDXL, clip skip) and the
        # pooled output, for the prompt and the negative prompt in one batch.
        ids = tok([PROMPT, NEGATIVE_PROMPT], padding="max_length", max_length=77, truncation=True,
                  return_tensors="pt").input_ids
        enc = text_encoder(ids, output_hidden_states=True)
        ref["text_encoder"] = {"input_ids": ids.tolist()}
        tensors["text_encoder.last_hidden_state"] = to_f32(enc.last_hidden_state)
        tensors["text_encoder.penultimate"] = to_f32(enc.hidden_states[-2])
        tensors["text_encoder.pooled"] = to_f32(enc.pooler_output)

        # One UNet forward: batch 2, a fractional timestep per sample is not what pipelines
        # do, so one timestep for the batch.
        gen = torch.Generator().manual_seed(42)
        latents = torch.randn((2, 4, 16, 16), generator=gen)
        context = enc.last_hidden_state
        timestep = 501.0
        tensors["unet.sample"] = latents
        tensors["unet.context"] = to_f32(context)
        tensors["unet.out"] = to_f32(unet(latents, timestep, encoder_hidden_states=context).sample)
        ref["unet"] = {"timestep": timestep}

        # VAE decode of fixed latents (already divided by the scaling factor).
        z = torch.randn((1, 4, 16, 16), generator=gen)
        tensors["vae.latents"] = z
        tensors["vae.image"] = to_f32(vae.decode(z).sample)

    # Full runs from given initial latents: Euler leading with CFG and a negative prompt,
    # two images; DDIM trailing; Euler ancestral trailing, one step without CFG (Turbo-like,
    # deterministic because the last step adds no noise).
    runs = []
    gen = torch.Generator().manual_seed(123)
    init = torch.randn((2, 4, 16, 16), generator=gen)
    tensors["run.initial_latents"] = init
    run_specs = [
        ("euler_cfg", EulerDiscreteScheduler, {}, 3, 7.5, NEGATIVE_PROMPT, 2),
        ("ddim_trailing", DDIMScheduler, {"timestep_spacing": "trailing", "clip_sample": False,
                                          "set_alpha_to_one": False}, 2, 5.0, None, 1),
        ("euler_ancestral_turbo", EulerAncestralDiscreteScheduler, {"timestep_spacing": "trailing"},
         1, 0.0, None, 1),
    ]
    for name, cls, overrides, steps, guidance, negative, n in run_specs:
        pipe.scheduler = cls(**dict(euler_config(), **overrides))
        common = dict(
            prompt=PROMPT,
            negative_prompt=negative,
            num_inference_steps=steps,
            guidance_scale=guidance,
            height=32,
            width=32,
            num_images_per_prompt=n,
            latents=init[:n].clone(),
        )
        with torch.no_grad():
            final = pipe(**common, output_type="latent").images
            image = pipe(**common, output_type="np").images
        tensors[f"run.{name}.latents"] = to_f32(final)
        tensors[f"run.{name}.image"] = torch.from_numpy(np.ascontiguousarray(image)).float()
        runs.append({
            "name": name,
            "scheduler": {"_class_name": cls.__name__, **pipe.scheduler.config},
            "prompt": PROMPT,
            "negative_prompt": negative,
            "steps": steps,
            "guidance_scale": guidance,
            "height": 32,
            "width": 32,
            "num_images": n,
        })
    ref["runs"] = runs
    ref["schedulers"] = scheduler_tables(euler_config(), tensors)

    save_file({k: v.clone().contiguous() for k, v in tensors.items()}, out / "reference.safetensors")
    (out / "reference.json").write_text(json.dumps(ref, indent=1, default=str) + "\n")
    odd_size_references(pipe, out, ODD_HEIGHT, ODD_WIDTH, {"context": context}, guidance_scale=7.5)


# Sizes (height, width in pixels) whose latents have odd sides. Both tiny UNets have two
# blocks, so one downsample: an odd side rounds up there (11 -> 6), and diffusers then
# upsamples to the skip connection's size instead of doubling (6 -> 11, not 12). With a
# single downsample, one odd latent side per axis exercises every level that can round.
# tiny-sd: 22x30 pixels, 11x15 latents (6x8 below the downsample).
ODD_HEIGHT, ODD_WIDTH = 22, 30
# tiny-sdxl: 26x18 pixels, 13x9 latents (7x5 below the downsample): portrait where the other
# references are landscape, so a height / width swap in the size conditioning shows.
SDXL_ODD_HEIGHT, SDXL_ODD_WIDTH = 26, 18


def skip_size_check(pipe) -> None:
    """Makes `pipe.check_inputs` check everything but the multiple of 8 pixels.

    diffusers' pipelines insist on multiples of 8 whatever the VAE's factor; the tiny VAEs'
    factor is 2, so every multiple of 8 gives latents that halve evenly. The SD and SDXL
    pipelines take height and width at different positions, so bind by name. `del
    pipe.check_inputs` restores the method."""
    checked = pipe.check_inputs
    signature = inspect.signature(checked)

    def check(*args, **kwargs):
        bound = signature.bind(*args, **kwargs)
        bound.arguments["height"] = bound.arguments["width"] = 8
        return checked(*bound.args, **bound.kwargs)

    pipe.check_inputs = check


def odd_size_references(
    pipe,
    out: Path,
    height: int,
    width: int,
    unet_conditioning: dict[str, torch.Tensor],
    guidance_scale: float,
) -> None:
    """One UNet forward and one full run at a size whose latents have odd sides, in their own
    files (reference_odd_sizes.*) so the references of `out` stay as they were.

    `unet_conditioning` is what the forward attends to, recorded as `unet.<key>`: "context"
    (batch 2), plus "text_embeds" and "time_ids" for a UNet with SDXL's added conditioning.
    The run is a 3-step Euler + CFG with the negative prompt at `guidance_scale`; it skips
    only the pipeline's multiple-of-8 check (22x30 for a factor-2 VAE is what 88x120 is for
    a real factor-8 one), everything else is the unchanged pipeline."""
    tensors: dict[str, torch.Tensor] = {}
    f = pipe.vae_scale_factor
    gen = torch.Generator().manual_seed(2024)
    added = {k: v for k, v in unet_conditioning.items() if k in ("text_embeds", "time_ids")}
    with torch.no_grad():
        latents = torch.randn((2, 4, height // f, width // f), generator=gen)
        timestep = 501.0
        tensors["unet.sample"] = latents
        for key, value in unet_conditioning.items():
            tensors[f"unet.{key}"] = to_f32(value)
        forward = pipe.unet(latents, timestep, encoder_hidden_states=unet_conditioning["context"],
                            added_cond_kwargs=added or None)
        tensors["unet.out"] = to_f32(forward.sample)

    init = torch.randn((1, 4, height // f, width // f), generator=gen)
    tensors["run.initial_latents"] = init
    pipe.scheduler = EulerDiscreteScheduler(**euler_config())
    skip_size_check(pipe)
    run = dict(name="euler_cfg", prompt=PROMPT, negative_prompt=NEGATIVE_PROMPT, steps=3,
               guidance_scale=guidance_scale, height=height, width=width, num_images=1)
    common = dict(prompt=PROMPT, negative_prompt=NEGATIVE_PROMPT, num_inference_steps=3,
                  guidance_scale=guidance_scale, height=height, width=width, latents=init.clone())
    with torch.no_grad():
        final = pipe(**common, output_type="latent").images
        image = pipe(**common, output_type="np").images
    del pipe.check_inputs
    tensors["run.euler_cfg.latents"] = to_f32(final)
    tensors["run.euler_cfg.image"] = torch.from_numpy(np.ascontiguousarray(image)).float()
    run["scheduler"] = {"_class_name": "EulerDiscreteScheduler", **pipe.scheduler.config}
    ref = {"unet": {"timestep": timestep}, "runs": [run]}
    save_file({k: v.clone().contiguous() for k, v in tensors.items()}, out / "reference_odd_sizes.safetensors")
    (out / "reference_odd_sizes.json").write_text(json.dumps(ref, indent=1, default=str) + "\n")


def sdxl_odd_size_references(pipe: StableDiffusionXLPipeline, out: Path) -> None:
    """SDXL's odd-size references: the forward is conditioned as the pipeline's CFG batch at
    that size would be (negative prompt, then prompt; pooled text embeds; time ids of the
    odd size, uncropped)."""
    h, w = SDXL_ODD_HEIGHT, SDXL_ODD_WIDTH
    with torch.no_grad():
        context, negative, pooled, negative_pooled = pipe.encode_prompt(
            PROMPT, negative_prompt=NEGATIVE_PROMPT, do_classifier_free_guidance=True)
    conditioning = {
        "context": torch.cat([negative, context]),
        "text_embeds": torch.cat([negative_pooled, pooled]),
        "time_ids": torch.tensor([[h, w, 0.0, 0.0, h, w]] * 2),
    }
    odd_size_references(pipe, out, h, w, conditioning, guidance_scale=6.0)


def make_sdxl(out: Path) -> None:
    """SDXL-style: two text encoders (the second with a projection, pooled output and "!"
    padding, eos_token_id 2 so HF pools at the largest id), their penultimate states
    concatenated as context, and the UNet's "text_time" added conditioning."""
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    tok = make_tokenizer(out / "tokenizer", pad_token="<|endoftext|>")
    tok2 = make_tokenizer(out / "tokenizer_2", pad_token="!")
    eos = tok.convert_tokens_to_ids("<|endoftext|>")
    text_encoder = CLIPTextModel(clip_config(len(tok), eos, "quick_gelu")).eval()
    noise_weights(text_encoder, 11)
    cfg2 = clip_config(len(tok2), eos, "gelu")
    cfg2.eos_token_id = 2
    text_encoder_2 = CLIPTextModelWithProjection(cfg2).eval()
    noise_weights(text_encoder_2, 12)
    time_dim = 8
    unet = UNet2DConditionModel(
        sample_size=16,
        in_channels=4,
        out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        block_out_channels=(8, 16),
        layers_per_block=1,
        transformer_layers_per_block=(1, 2),
        attention_head_dim=(2, 4),
        use_linear_projection=True,
        cross_attention_dim=64,
        addition_embed_type="text_time",
        addition_time_embed_dim=time_dim,
        projection_class_embeddings_input_dim=32 + 6 * time_dim,
        norm_num_groups=4,
    ).eval()
    noise_weights(unet, 13)
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        block_out_channels=(8, 16),
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=4,
        sample_size=32,
        scaling_factor=0.13025,
    ).eval()
    noise_weights(vae, 14)
    pipe = StableDiffusionXLPipeline(
        vae=vae,
        text_encoder=text_encoder,
        text_encoder_2=text_encoder_2,
        tokenizer=tok,
        tokenizer_2=tok2,
        unet=unet,
        scheduler=EulerDiscreteScheduler(**euler_config()),
        force_zeros_for_empty_prompt=True,
    )
    pipe.set_progress_bar_config(disable=True)
    pipe.save_pretrained(out, safe_serialization=True)
    for name, module in [
        ("text_encoder", text_encoder),
        ("text_encoder_2", text_encoder_2),
        ("unet", unet),
        ("vae", vae),
    ]:
        shutil.rmtree(out / name)
        save_f16(module, out / name)

    tensors: dict[str, torch.Tensor] = {}
    ref: dict = {
        "versions": {"torch": torch.__version__, "diffusers": diffusers.__version__},
        "tokenizer_2_cases": token_cases(tok2, CLIPTokenizerFast.from_pretrained(out / "tokenizer_2", from_slow=True)),
    }
    with torch.no_grad():
        ids2 = tok2([PROMPT, NEGATIVE_PROMPT], padding="max_length", max_length=77, truncation=True,
                    return_tensors="pt").input_ids
        enc2 = text_encoder_2(ids2, output_hidden_states=True)
        ref["text_encoder_2"] = {"input_ids": ids2.tolist()}
        tensors["text_encoder_2.penultimate"] = to_f32(enc2.hidden_states[-2])
        tensors["text_encoder_2.text_embeds"] = to_f32(enc2.text_embeds)
        gen = torch.Generator().manual_seed(42)
        latents = torch.randn((2, 4, 8, 16), generator=gen)
        context = torch.randn((2, 77, 64), generator=gen)
        text_embeds = torch.randn((2, 32), generator=gen)
        time_ids = torch.tensor([[16.0, 32.0, 0.0, 0.0, 16.0, 32.0], [64.0, 48.0, 2.0, 4.0, 16.0, 32.0]])
        out_t = unet(latents, 501.0, encoder_hidden_states=context,
                     added_cond_kwargs={"text_embeds": text_embeds, "time_ids": time_ids}).sample
        for k, v in [("sample", latents), ("context", context), ("text_embeds", text_embeds),
                     ("time_ids", time_ids), ("out", out_t)]:
            tensors[f"unet.{k}"] = to_f32(v)
        ref["unet"] = {"timestep": 501.0}

    runs = []
    gen = torch.Generator().manual_seed(123)
    init = torch.randn((1, 4, 8, 16), generator=gen)
    tensors["run.initial_latents"] = init
    run_specs = [
        ("euler_cfg", EulerDiscreteScheduler, {}, 3, 6.0, NEGATIVE_PROMPT),
        ("euler_zero_negative", EulerDiscreteScheduler, {}, 2, 5.0, None),
        ("euler_ancestral_turbo", EulerAncestralDiscreteScheduler, {"timestep_spacing": "trailing"}, 1, 0.0, None),
    ]
    for name, cls, overrides, steps, guidance, negative in run_specs:
        pipe.scheduler = cls(**dict(euler_config(), **overrides))
        common = dict(prompt=PROMPT, negative_prompt=negative, num_inference_steps=steps,
                      guidance_scale=guidance, height=16, width=32, latents=init.clone())
        with torch.no_grad():
            final = pipe(**common, output_type="latent").images
            image = pipe(**common, output_type="np").images
        tensors[f"run.{name}.latents"] = to_f32(final)
        tensors[f"run.{name}.image"] = torch.from_numpy(np.ascontiguousarray(image)).float()
        runs.append({"name": name, "scheduler": {"_class_name": cls.__name__, **pipe.scheduler.config},
                     "prompt": PROMPT, "negative_prompt": negative, "steps": steps,
                     "guidance_scale": guidance, "height": 16, "width": 32, "num_images": 1})
    ref["runs"] = runs
    save_file({k: v.clone().contiguous() for k, v in tensors.items()}, out / "reference.safetensors")
    (out / "reference.json").write_text(json.dumps(ref, indent=1, default=str) + "\n")
    sdxl_odd_size_references(pipe, out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--only-sdxl-odd-sizes",
        action="store_true",
        help="write only tiny-sdxl/reference_odd_sizes.*, from the committed tiny-sdxl "
        "pipeline (its float16 weights load exactly), leaving every other file as it is",
    )
    args = parser.parse_args()
    torch.set_num_threads(1)
    if args.only_sdxl_odd_sizes:
        out = OUT_DIR / "tiny-sdxl"
        pipe = StableDiffusionXLPipeline.from_pretrained(out, torch_dtype=torch.float32)
        pipe.set_progress_bar_config(disable=True)
        sdxl_odd_size_references(pipe, out)
        written = sorted(out.glob("reference_odd_sizes.*"))
    else:
        make_sd(OUT_DIR / "tiny-sd")
        make_sdxl(OUT_DIR / "tiny-sdxl")
        written = sorted(f for f in OUT_DIR.rglob("*") if f.is_file())
    for f in written:
        print(f"{f.relative_to(REPO_ROOT)}: {f.stat().st_size} bytes")


if __name__ == "__main__":
    main()
