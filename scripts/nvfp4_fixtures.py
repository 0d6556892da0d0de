"""NVFP4 fixtures: qwen3's projections packed by compressed-tensors' own NVFP4 code
(`generate_gparam` for the tensor-wide scale, `quantize_and_pack_fp4` for the nibbles),
their reference computed by transformers loading the checkpoint (compressed-tensors
decompresses it on the CPU), so kiln's unpacking is checked against theirs:

- `qwen3_nvfp4`: compressed-tensors' `nvfp4-pack-quantized` layout as it comes out.
- `qwen3_nvfp4_modelopt`: NVIDIA ModelOpt's layout (the bytes under `weight`, the
  tensor-wide scale as `weight_scale_2`, which multiplies). Its reference is the same
  library loading the same numbers in compressed-tensors' layout: the global scales are
  rounded down to powers of two, so `scale / global` and `scale * (1 / global)` are the same
  float and no value changes in bf16.

Called from make_fixtures.py (`--only qwen3_nvfp4`, `qwen3_nvfp4_modelopt`).
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

import torch

GROUP = 16


def quantize(weight: torch.Tensor, power_of_two: bool) -> dict[str, torch.Tensor]:
    """One weight as compressed-tensors' NVFP4 tensors: packed nibbles, e4m3 group scales
    and the f32 global scale."""
    from compressed_tensors.compressors.nvfp4.helpers import quantize_and_pack_fp4
    from compressed_tensors.quantization.utils.helpers import generate_gparam

    rows, cols = weight.shape
    groups = weight.reshape(rows, cols // GROUP, GROUP)
    global_scale = generate_gparam(weight.min().reshape(1), weight.max().reshape(1))
    if power_of_two:
        global_scale = torch.exp2(torch.floor(torch.log2(global_scale)))
    # Each group's largest magnitude maps to E2M1's 6, its scale rounded to e4m3 as stored.
    amax = groups.abs().amax(dim=-1)
    scale = (global_scale * amax / 6.0).clamp(min=2.0**-9).to(torch.float8_e4m3fn)
    packed = quantize_and_pack_fp4(weight, scale.to(torch.float32), global_scale=global_scale, group_size=GROUP)
    return {"weight_packed": packed, "weight_scale": scale, "weight_global_scale": global_scale.to(torch.float32)}


def ct_config() -> dict:
    scheme = {"num_bits": 4, "type": "float", "symmetric": True, "dynamic": False,
              "strategy": "tensor_group", "group_size": GROUP}
    return {
        "quant_method": "compressed-tensors", "format": "nvfp4-pack-quantized",
        "quantization_status": "compressed", "ignore": ["lm_head"],
        "config_groups": {"group_0": {"targets": ["Linear"], "weights": scheme,
                                      "format": "nvfp4-pack-quantized"}},
    }


def write_checkpoint(src: Path, directory: Path, power_of_two: bool) -> None:
    """`src` (an unquantized fixture) with every projection quantized, in compressed-tensors'
    layout, into `directory`."""
    from safetensors.torch import load_file, save_file

    if directory.exists():
        shutil.rmtree(directory)
    shutil.copytree(src, directory)
    for extra in ["reference.json", "embeddings.json"]:
        (directory / extra).unlink(missing_ok=True)
    tensors = load_file(str(directory / "model.safetensors"))
    for name in [n for n in tensors if n.endswith("_proj.weight")]:
        stem = name.removesuffix("weight")
        for suffix, t in quantize(tensors.pop(name), power_of_two).items():
            tensors[stem + suffix] = t
    save_file(tensors, str(directory / "model.safetensors"), metadata={"format": "pt"})
    config = json.loads((directory / "config.json").read_text())
    config["quantization_config"] = ct_config()
    (directory / "config.json").write_text(json.dumps(config, indent=2) + "\n")


def reference_model(directory: Path):
    from transformers import Qwen3ForCausalLM
    from transformers.utils.quantization_config import CompressedTensorsConfig

    model = Qwen3ForCausalLM.from_pretrained(
        str(directory), dtype=torch.float32, attn_implementation="eager",
        quantization_config=CompressedTensorsConfig(run_compressed=False),
    ).eval()
    # The decompressor hands its weights out in bf16; the model runs in f32 around them
    # (transformers refuses `.float()` on a quantized model, so the parameters are widened
    # one by one).
    for param in model.parameters():
        param.data = param.data.float()
    return model


def to_modelopt(directory: Path) -> None:
    """A compressed-tensors NVFP4 checkpoint rewritten in ModelOpt's layout."""
    from safetensors.torch import load_file, save_file

    tensors = load_file(str(directory / "model.safetensors"))
    for name in [n for n in tensors if n.endswith("weight_packed")]:
        stem = name.removesuffix("weight_packed")
        tensors[stem + "weight"] = tensors.pop(name)
        global_scale = tensors.pop(stem + "weight_global_scale")
        tensors[stem + "weight_scale_2"] = (1.0 / global_scale).reshape(())
    save_file(tensors, str(directory / "model.safetensors"), metadata={"format": "pt"})
    config = json.loads((directory / "config.json").read_text())
    config["quantization_config"] = {
        "quant_method": "modelopt", "quant_algo": "NVFP4", "group_size": GROUP,
        "kv_cache_quant_algo": None, "exclude_modules": ["lm_head"],
    }
    (directory / "config.json").write_text(json.dumps(config, indent=2) + "\n")


@torch.no_grad()
def build(only: str | None, fixtures_dir: Path, prompts, write_reference) -> None:
    src = fixtures_dir / "qwen3"
    if only in (None, "qwen3", "qwen3_nvfp4"):
        directory = fixtures_dir / "qwen3_nvfp4"
        write_checkpoint(src, directory, power_of_two=False)
        write_reference(reference_model(directory), prompts, src, directory)
    if only in (None, "qwen3", "qwen3_nvfp4_modelopt"):
        directory = fixtures_dir / "qwen3_nvfp4_modelopt"
        with tempfile.TemporaryDirectory() as scratch:
            staged = Path(scratch) / "qwen3_nvfp4_modelopt"
            write_checkpoint(src, staged, power_of_two=True)
            model = reference_model(staged)
            if directory.exists():
                shutil.rmtree(directory)
            shutil.copytree(staged, directory)
        to_modelopt(directory)
        write_reference(model, prompts, src, directory)
