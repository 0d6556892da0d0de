"""Compiles one CUDA source to a cubin (or, when OUT ends in .ptx, to PTX) with NVRTC through ctypes, with kiln's options
(src/backend/cuda/nvrtc.rs: -default-device --std=c++17) plus any EXTRA options (the GPU
probe's compiler variants, e.g. -G or --ptxas-options=-O0).

    python3 nvrtc_cubin.py LIBNVRTC ARCH SOURCE.cu OUT.cubin [EXTRA...]
"""
import ctypes
import sys

lib_path, arch, source, out = sys.argv[1:5]
nvrtc = ctypes.CDLL(lib_path)
program = ctypes.c_void_p()
with open(source, "rb") as f:
    text = f.read()
if nvrtc.nvrtcCreateProgram(ctypes.byref(program), text, b"kernels.cu", 0, None, None):
    sys.exit("nvrtcCreateProgram failed")
options = [f"--gpu-architecture={arch}".encode(), b"-default-device", b"--std=c++17"]
options += [o.encode() for o in sys.argv[5:]]
status = nvrtc.nvrtcCompileProgram(program, len(options), (ctypes.c_char_p * len(options))(*options))
size = ctypes.c_size_t()
nvrtc.nvrtcGetProgramLogSize(program, ctypes.byref(size))
log = ctypes.create_string_buffer(size.value)
nvrtc.nvrtcGetProgramLog(program, log)
if log.value.strip():
    print(log.value.decode(), file=sys.stderr)
if status:
    sys.exit(f"NVRTC failed ({status})")
if out.endswith(".ptx"):
    nvrtc.nvrtcGetPTXSize(program, ctypes.byref(size))
    image = ctypes.create_string_buffer(size.value)
    nvrtc.nvrtcGetPTX(program, image)
    data = image.raw.rstrip(b"\0")
else:
    nvrtc.nvrtcGetCUBINSize(program, ctypes.byref(size))
    image = ctypes.create_string_buffer(size.value)
    nvrtc.nvrtcGetCUBIN(program, image)
    data = image.raw
with open(out, "wb") as f:
    f.write(data)
