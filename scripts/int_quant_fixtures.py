"""Integer weight-quantized fixtures (GPTQ, AWQ, compressed-tensors pack-quantized), built
with the packing code of the projects that define each format, so kiln's unpacking is
checked against theirs rather than against a reading of ours:

- GPTQ: AutoGPTQ 0.7.1's `QuantLinear` (qlinear_cuda.py: its `pack` and its CPU forward,
  which unpacks and dequantizes in torch);
- AWQ: AutoAWQ 0.2.9's `WQLinear_GEMM.from_linear` (pack) and `dequantize_gemm` (unpack);
- compressed-tensors 0.20: `pack_to_int32`, and transformers' own loading of the checkpoint
  (compressed-tensors decompresses it on the CPU).

AutoGPTQ and AutoAWQ need CUDA extensions to install, so their source is downloaded
(`pip download --no-deps`) and only the pure-torch files above are loaded. Called from
make_fixtures.py (`--only llama_gptq`, `qwen2_awq`, `qwen3_w4a16`, `packed_int`).
"""

from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
import sys
import tarfile
import types
import zipfile
from pathlib import Path

import numpy as np
import torch

REFERENCE_SOURCES = Path.home() / ".cache" / "kiln-fixture-references"
# AutoGPTQ and AutoAWQ size their packed zeros as `outputs // 32 * bits` words, so they pack
# only output widths that are multiples of 32 (every real model's); the fixtures' k and v
# projections (16 outputs) stay unquantized, as a checkpoint's skipped modules do.
PACKED_OUTPUTS_MULTIPLE = 32


def download(requirement: str) -> Path:
    """`requirement`'s sdist or wheel, unpacked under REFERENCE_SOURCES; its directory."""
    target = REFERENCE_SOURCES / requirement.replace("==", "-")
    if target.exists():
        return target
    archives = REFERENCE_SOURCES / "archives"
    archives.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        [sys.executable, "-m", "pip", "download", "--no-deps", "-d", str(archives), requirement],
        check=True,
    )
    name, version = requirement.split("==")
    stem = name.replace("-", "_").lower()
    archive = next(
        p for p in archives.iterdir()
        if p.name.lower().replace("-", "_").startswith(f"{stem}_{version}")
    )
    if archive.suffix == ".whl":
        zipfile.ZipFile(archive).extractall(target)
    else:
        with tarfile.open(archive) as tar:
            tar.extractall(target)
    return target


def load_file_as_module(name: str, path: Path):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def autogptq_quant_linear():
    """AutoGPTQ's QuantLinear class (no CUDA extension: it unpacks in torch)."""
    root = download("auto-gptq==0.7.1")
    return load_file_as_module(
        "autogptq_qlinear_cuda", root / "auto_gptq" / "nn_modules" / "qlinear" / "qlinear_cuda.py"
    ).QuantLinear


def autoawq_modules():
    """AutoAWQ's (WQLinear_GEMM, dequantize_gemm), its package __init__s skipped (they import
    every model and kernel AutoAWQ has)."""
    root = next(download("autoawq==0.2.9").iterdir()) / "awq"
    for package, directory in [
        ("awq", root), ("awq.utils", root / "utils"), ("awq.modules", root / "modules"),
        ("awq.modules.linear", root / "modules" / "linear"),
    ]:
        module = types.ModuleType(package)
        module.__path__ = [str(directory)]
        sys.modules[package] = module
    gemm = importlib.import_module("awq.modules.linear.gemm")
    packing = importlib.import_module("awq.utils.packing_utils")
    return gemm.WQLinear_GEMM, packing.dequantize_gemm


def asymmetric_grid(w: torch.Tensor, g_idx: torch.Tensor, groups: int, bits: int, min_zero: int = 0):
    """Round-to-nearest asymmetric quantization parameters of `w [out, in]`, each input column
    in group `g_idx[column]`: (scales, zeros), both [out, groups], zeros in [min_zero, 2^bits - 1]."""
    maxq = 2**bits - 1
    out = w.shape[0]
    scales = torch.empty(out, groups)
    zeros = torch.empty(out, groups, dtype=torch.int32)
    for g in range(groups):
        cols = w[:, g_idx == g]
        lo = cols.min(dim=1).values.clamp(max=0)
        hi = cols.max(dim=1).values.clamp(min=0)
        scale = ((hi - lo) / maxq).clamp(min=1e-8)
        scales[:, g] = scale
        zeros[:, g] = torch.round(-lo / scale).clamp(min_zero, maxq).to(torch.int32)
    return scales, zeros


def act_order_g_idx(inputs: int, group_size: int, generator: torch.Generator) -> torch.Tensor:
    """GPTQ's `desc_act` grouping: columns quantized in a permuted order, group k taking the
    k-th run of `group_size` columns of that order."""
    perm = torch.randperm(inputs, generator=generator)
    g_idx = torch.empty(inputs, dtype=torch.int32)
    g_idx[perm] = torch.arange(inputs, dtype=torch.int32) // group_size
    return g_idx


def gptq_pack(QuantLinear, linear: torch.nn.Linear, bits: int, group_size: int, g_idx: torch.Tensor):
    """A QuantLinear packed from `linear` by AutoGPTQ (scales kept in float32)."""
    inputs, outputs = linear.in_features, linear.out_features
    groups = int(g_idx.max()) + 1
    # Zeros of at least 1: AutoGPTQ stores zero - 1 and a zero of 0 would wrap into the
    # neighbouring packed values (a known flaw of the v1 format, not something to test).
    scales, zeros = asymmetric_grid(linear.weight.data, g_idx, groups, bits, min_zero=1)
    q = QuantLinear(bits, group_size, inputs, outputs, linear.bias is not None, weight_dtype=torch.float32)
    q.pack(linear, scales, zeros, g_idx)
    return q


def gptq_dequantized(q, inputs: int) -> torch.Tensor:
    """AutoGPTQ's own dequantized weight [out, in]: its forward on the identity."""
    with torch.no_grad():
        bias = q.bias
        q.bias = None
        w = q(torch.eye(inputs)).t().contiguous()
        q.bias = bias
    return w


def awq_pack(WQLinear_GEMM, linear: torch.nn.Linear, group_size: int):
    inputs = linear.in_features
    g_idx = torch.arange(inputs, dtype=torch.int32) // group_size
    scales, zeros = asymmetric_grid(linear.weight.data, g_idx, inputs // group_size, 4)
    return WQLinear_GEMM.from_linear(linear, 4, group_size, scales=scales.t().contiguous(), zeros=zeros.t().contiguous())


def awq_dequantized(dequantize_gemm, q, group_size: int) -> torch.Tensor:
    """AutoAWQ's own dequantized weight [out, in], computed in float32 from the stored fp16 scales."""
    return dequantize_gemm(q.qweight, q.qzeros, q.scales.float(), 4, group_size).t().contiguous()


def ct_quantize(w: torch.Tensor, bits: int, symmetric: bool, group_size: int | None):
    """compressed-tensors-style signed codes of `w [out, in]`: (codes int8, scale [out, groups],
    zero point int8 [out, groups] or None). `group_size` None: one group per row (channel)."""
    out, inputs = w.shape
    gs = group_size or inputs
    groups = -(-inputs // gs)
    g_idx = torch.arange(inputs) // gs
    lo_q, hi_q = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    scale = torch.empty(out, groups)
    zp = torch.zeros(out, groups, dtype=torch.int8)
    for g in range(groups):
        cols = w[:, g_idx == g]
        if symmetric:
            scale[:, g] = (cols.abs().max(dim=1).values / hi_q).clamp(min=1e-8)
        else:
            lo = cols.min(dim=1).values.clamp(max=0)
            hi = cols.max(dim=1).values.clamp(min=0)
            scale[:, g] = ((hi - lo) / (hi_q - lo_q)).clamp(min=1e-8)
            zp[:, g] = torch.round(lo_q - lo / scale[:, g]).clamp(lo_q, hi_q).to(torch.int8)
    full_scale = scale[:, g_idx]
    full_zp = zp[:, g_idx].float()
    codes = torch.round(w / full_scale + full_zp).clamp(lo_q, hi_q).to(torch.int8)
    return codes, scale, (None if symmetric else zp)


def ct_compressed(pack_to_int32, w: torch.Tensor, bits: int, symmetric: bool, group_size: int | None) -> dict:
    """One weight's tensors in pack-quantized form, under their suffixes."""
    codes, scale, zp = ct_quantize(w, bits, symmetric, group_size)
    tensors = {
        "weight_packed": pack_to_int32(codes, bits),
        "weight_scale": scale,
        "weight_shape": torch.tensor(w.shape),
    }
    if zp is not None:
        tensors["weight_zero_point"] = pack_to_int32(zp, bits, packed_dim=0)
    return tensors


def ct_scheme_config(bits: int, symmetric: bool, group_size: int | None) -> dict:
    return {
        "num_bits": bits, "type": "int", "symmetric": symmetric, "dynamic": False,
        "strategy": "group" if group_size else "channel", "group_size": group_size,
    }


def ct_dequantized(w_tensors: dict, bits: int, symmetric: bool, group_size: int | None) -> torch.Tensor:
    """compressed-tensors' own decompression of one weight."""
    from compressed_tensors.compressors.pack_quantized.base import PackedQuantizationCompressor
    from compressed_tensors.quantization import QuantizationArgs, QuantizationScheme

    scheme = QuantizationScheme(targets=["Linear"], weights=QuantizationArgs(**ct_scheme_config(bits, symmetric, group_size)))
    return PackedQuantizationCompressor.decompress(dict(w_tensors), scheme)["weight"].float()


def copy_fixture(fixtures_dir: Path, src: str, name: str) -> tuple[Path, Path]:
    source, directory = fixtures_dir / src, fixtures_dir / name
    if directory.exists():
        shutil.rmtree(directory)
    shutil.copytree(source, directory)
    for extra in ["reference.json", "embeddings.json"]:
        (directory / extra).unlink(missing_ok=True)
    return source, directory


def set_quantization_config(directory: Path, quantization_config: dict) -> None:
    config = json.loads((directory / "config.json").read_text())
    config["quantization_config"] = quantization_config
    (directory / "config.json").write_text(json.dumps(config, indent=2) + "\n")


def layer_linears(model: torch.nn.Module, outputs_multiple: int = 1):
    """The decoder layers' linears whose output width is a multiple of `outputs_multiple`."""
    return [
        (n, m) for n, m in model.named_modules()
        if isinstance(m, torch.nn.Linear) and ".layers." in n and m.out_features % outputs_multiple == 0
    ]


def replace_module(model: torch.nn.Module, name: str, module: torch.nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent), child, module)


def save(directory: Path, state: dict) -> None:
    from safetensors.torch import save_file

    state = {k: v.contiguous() for k, v in state.items()}
    save_file(state, str(directory / "model.safetensors"), metadata={"format": "pt"})


@torch.no_grad()
def build_gptq_fixture(fixtures_dir: Path, prompts, write_reference) -> None:
    """llama as a GPTQ checkpoint (v1 format, 4 bits, groups of 32, `desc_act`: each layer's
    columns grouped by a random permutation, stored as g_idx; k and v unquantized). The reference is AutoGPTQ's
    QuantLinear modules computing the model."""
    from transformers import LlamaForCausalLM

    QuantLinear = autogptq_quant_linear()
    src, directory = copy_fixture(fixtures_dir, "llama", "llama_gptq")
    model = LlamaForCausalLM.from_pretrained(str(src), dtype=torch.float32, attn_implementation="eager").eval()
    generator = torch.Generator().manual_seed(11)
    for name, linear in layer_linears(model, PACKED_OUTPUTS_MULTIPLE):
        g_idx = act_order_g_idx(linear.in_features, 32, generator)
        replace_module(model, name, gptq_pack(QuantLinear, linear, 4, 32, g_idx))
    state = {k: v for k, v in model.state_dict().items()}
    save(directory, state)
    set_quantization_config(directory, {
        "quant_method": "gptq", "bits": 4, "group_size": 32, "desc_act": True, "sym": False,
        "checkpoint_format": "gptq", "damp_percent": 0.01, "true_sequential": True, "static_groups": False,
    })
    write_reference(model, prompts, src, directory)


@torch.no_grad()
def build_awq_fixture(fixtures_dir: Path, prompts, write_reference) -> None:
    """qwen2 (q/k/v biases, tied embeddings) as an AWQ GEMM checkpoint: 4 bits, groups of 32,
    fp16 scales and biases as AutoAWQ stores them (k and v unquantized). The reference is transformers' Qwen2
    computing with the weights AutoAWQ's `dequantize_gemm` unpacks."""
    from transformers import Qwen2ForCausalLM

    WQLinear_GEMM, dequantize_gemm = autoawq_modules()
    src, directory = copy_fixture(fixtures_dir, "qwen2", "qwen2_awq")
    model = Qwen2ForCausalLM.from_pretrained(str(src), dtype=torch.float32, attn_implementation="eager").eval()
    state = {k: v for k, v in model.state_dict().items() if k != "lm_head.weight"}
    for name, linear in layer_linears(model, PACKED_OUTPUTS_MULTIPLE):
        q = awq_pack(WQLinear_GEMM, linear, 32)
        del state[f"{name}.weight"]
        state.update({f"{name}.qweight": q.qweight, f"{name}.qzeros": q.qzeros, f"{name}.scales": q.scales})
        linear.weight.copy_(awq_dequantized(dequantize_gemm, q, 32))
        if q.bias is not None:
            state[f"{name}.bias"] = q.bias
            linear.bias.copy_(q.bias.float())
    save(directory, state)
    set_quantization_config(directory, {
        "quant_method": "awq", "bits": 4, "group_size": 32, "zero_point": True, "version": "gemm",
        "modules_to_not_convert": None,
    })
    write_reference(model, prompts, src, directory)


@torch.no_grad()
def build_w4a16_fixture(fixtures_dir: Path, prompts, write_reference) -> None:
    """qwen3 as a compressed-tensors pack-quantized checkpoint with two schemes: the MLP's
    projections 4-bit symmetric in groups of 32 (W4A16), attention's 8-bit symmetric per
    output channel. (Asymmetric packed zero points are in the packed_int cases:
    transformers 4.57 cannot load them.) The reference is transformers loading it."""
    from compressed_tensors.compressors.pack_quantized.helpers import pack_to_int32
    from transformers import Qwen3ForCausalLM
    from transformers.utils.quantization_config import CompressedTensorsConfig

    src, directory = copy_fixture(fixtures_dir, "qwen3", "qwen3_w4a16")
    model = Qwen3ForCausalLM.from_pretrained(str(src), dtype=torch.float32, attn_implementation="eager").eval()
    schemes = {"mlp": (4, True, 32), "self_attn": (8, True, None)}
    state = dict(model.state_dict())
    for name, linear in layer_linears(model):
        bits, symmetric, group_size = schemes[name.split(".")[-2]]
        del state[f"{name}.weight"]
        for suffix, t in ct_compressed(pack_to_int32, linear.weight.data, bits, symmetric, group_size).items():
            state[f"{name}.{suffix}"] = t
    save(directory, state)
    set_quantization_config(directory, {
        "quant_method": "compressed-tensors", "format": "pack-quantized", "quantization_status": "compressed",
        "ignore": ["lm_head"],
        "config_groups": {
            "group_0": {"targets": ["re:.*mlp\\..*_proj$"], "weights": ct_scheme_config(4, True, 32)},
            "group_1": {"targets": ["re:.*self_attn\\..*_proj$"], "weights": ct_scheme_config(8, True, None)},
        },
    })
    reloaded = Qwen3ForCausalLM.from_pretrained(
        str(directory), dtype=torch.float32, attn_implementation="eager",
        quantization_config=CompressedTensorsConfig(run_compressed=False),
    ).eval()
    write_reference(reloaded, prompts, src, directory)


@torch.no_grad()
def build_packed_int_cases(fixtures_dir: Path) -> None:
    """Single weights in the packings the model fixtures do not reach (GPTQ at 2, 3 and 8
    bits, one group; AWQ with groups of 16; compressed-tensors at 2 and 3 bits, whose values
    straddle words, and rows that end mid-word), each with the weight its project's own code
    unpacks (`NAME.expected`). cases.json says how each is quantized."""
    from compressed_tensors.compressors.pack_quantized.helpers import pack_to_int32

    QuantLinear = autogptq_quant_linear()
    WQLinear_GEMM, dequantize_gemm = autoawq_modules()
    directory = fixtures_dir / "packed_int"
    directory.mkdir(exist_ok=True)
    generator = torch.Generator().manual_seed(5)
    tensors, cases = {}, {}

    def linear(outputs: int, inputs: int) -> torch.nn.Linear:
        layer = torch.nn.Linear(inputs, outputs, bias=False)
        layer.weight.copy_(torch.randn(outputs, inputs, generator=generator) * 0.1)
        return layer

    for case, bits, group_size, act_order, (outputs, inputs) in [
        ("gptq_2bit", 2, 16, False, (32, 64)),
        ("gptq_3bit_act_order", 3, 32, True, (32, 64)),
        ("gptq_8bit_one_group", 8, -1, False, (32, 64)),
    ]:
        layer = linear(outputs, inputs)
        gs = inputs if group_size == -1 else group_size
        g_idx = act_order_g_idx(inputs, gs, generator) if act_order else torch.arange(inputs, dtype=torch.int32) // gs
        q = gptq_pack(QuantLinear, layer, bits, group_size, g_idx)
        for suffix in ["qweight", "qzeros", "scales", "g_idx"]:
            tensors[f"{case}.{suffix}"] = getattr(q, suffix)
        tensors[f"{case}.expected"] = gptq_dequantized(q, inputs)
        cases[case] = {"format": "gptq", "bits": bits, "group_size": group_size, "shape": [outputs, inputs]}

    layer = linear(96, 48)
    q = awq_pack(WQLinear_GEMM, layer, 16)
    tensors.update({"awq_96x48.qweight": q.qweight, "awq_96x48.qzeros": q.qzeros, "awq_96x48.scales": q.scales})
    tensors["awq_96x48.expected"] = awq_dequantized(dequantize_gemm, q, 16)
    cases["awq_96x48"] = {"format": "awq", "bits": 4, "group_size": 16, "shape": [96, 48]}

    for case, bits, symmetric, group_size, (outputs, inputs) in [
        ("ct_3bit_asymmetric", 3, False, 16, (20, 48)),
        ("ct_2bit_channel", 2, True, None, (12, 40)),
        ("ct_8bit_asymmetric_channel", 8, False, None, (6, 36)),
    ]:
        w = linear(outputs, inputs).weight.data
        packed = ct_compressed(pack_to_int32, w, bits, symmetric, group_size)
        for suffix, t in packed.items():
            tensors[f"{case}.{suffix}"] = t
        tensors[f"{case}.expected"] = ct_dequantized(packed, bits, symmetric, group_size)
        cases[case] = {"format": "pack-quantized", "bits": bits, "group_size": group_size, "shape": [outputs, inputs]}

    save_path = directory / "cases.safetensors"
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in tensors.items()}, str(save_path))
    (directory / "cases.json").write_text(json.dumps(cases, indent=2) + "\n")
    print(f"  packed_int: {len(cases)} cases")


@torch.no_grad()
def build_bnb_checkpoint(fixtures_dir: Path, name: str, config, quantized_module, dequantize,
                         prompts, write_reference) -> None:
    """qwen3 quantized by bitsandbytes under `config`, as transformers saves it (on the CPU),
    as fixture `name`; the reference is transformers' Qwen3 computing with the weights
    `dequantize(module)` gives for each `quantized_module` layer."""
    from transformers import Qwen3ForCausalLM

    src, directory = copy_fixture(fixtures_dir, "qwen3", name)
    (directory / "model.safetensors").unlink()
    model = Qwen3ForCausalLM.from_pretrained(
        str(src), quantization_config=config, device_map="cpu", dtype=torch.float32,
        attn_implementation="eager",
    ).eval()
    model.save_pretrained(str(directory))
    reference = Qwen3ForCausalLM.from_pretrained(
        str(src), dtype=torch.float32, attn_implementation="eager"
    ).eval()
    for module_name, module in model.named_modules():
        if isinstance(module, quantized_module):
            reference.get_submodule(module_name).weight.copy_(dequantize(module).float())
    write_reference(reference, prompts, src, directory)


def build_bnb_fixture(fixtures_dir: Path, prompts, write_reference) -> None:
    """qwen3 as a bitsandbytes 4-bit checkpoint (NF4, double quantization, blocks of 64).
    The reference computes with the weights bitsandbytes' `dequantize_4bit` unpacks (the
    quantized model's own CPU matmul rounds through a lower precision, about 0.02 off in
    these logits)."""
    import bitsandbytes as bnb
    from transformers import BitsAndBytesConfig

    config = BitsAndBytesConfig(
        load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=torch.float32,
    )
    build_bnb_checkpoint(
        fixtures_dir, "qwen3_bnb_nf4", config, bnb.nn.Linear4bit,
        lambda m: bnb.functional.dequantize_4bit(m.weight.data, m.weight.quant_state),
        prompts, write_reference,
    )


def build_bnb_int8_fixture(fixtures_dir: Path, prompts, write_reference) -> None:
    """qwen3 as a bitsandbytes 8-bit (LLM.int8) checkpoint: int8 weights with one absmax per
    row (`SCB`). The reference computes with `int8 * SCB / 127`, the weights bitsandbytes'
    own `int8_vectorwise_dequant` gives (the quantized model's matmul splits outlier columns
    into 16-bit and runs the rest in int8, which is not what kiln reproduces)."""
    import bitsandbytes as bnb
    from transformers import BitsAndBytesConfig

    build_bnb_checkpoint(
        fixtures_dir, "qwen3_bnb_int8", BitsAndBytesConfig(load_in_8bit=True),
        bnb.nn.Linear8bitLt,
        lambda m: bnb.functional.int8_vectorwise_dequant(m.weight.data, m.weight.SCB),
        prompts, write_reference,
    )


def build(only: str | None, fixtures_dir: Path, prompts, write_reference) -> None:
    if only in (None, "llama", "llama_gptq"):
        build_gptq_fixture(fixtures_dir, prompts, write_reference)
    if only in (None, "qwen2", "qwen2_awq"):
        build_awq_fixture(fixtures_dir, prompts, write_reference)
    if only in (None, "qwen3", "qwen3_w4a16"):
        build_w4a16_fixture(fixtures_dir, prompts, write_reference)
    if only in (None, "qwen3", "qwen3_bnb_nf4"):
        build_bnb_fixture(fixtures_dir, prompts, write_reference)
    if only in (None, "qwen3", "qwen3_bnb_int8"):
        build_bnb_int8_fixture(fixtures_dir, prompts, write_reference)
    if only in (None, "packed_int"):
        build_packed_int_cases(fixtures_dir)
