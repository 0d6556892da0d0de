// The few CUDA driver API calls needed to run a cubin on a real GPU, loaded with dlopen so
// this builds without the CUDA toolkit (only the device machine needs libcuda.so.1). Used
// by attention_decode_check's `gpu` mode to run the same cases as the emulator.
#pragma once

#include <dlfcn.h>

#include <cstdio>
#include <cstdlib>
#include <stdexcept>
#include <string>
#include <vector>

namespace kiln_gpu {

using Result = int;
using DevPtr = unsigned long long;

struct Driver {
    Result (*cuInit)(unsigned);
    Result (*cuDeviceGet)(int*, int);
    Result (*cuDevicePrimaryCtxRetain)(void**, int);
    Result (*cuCtxSetCurrent)(void*);
    Result (*cuModuleLoadData)(void**, const void*);
    Result (*cuModuleGetFunction)(void**, void*, const char*);
    Result (*cuMemAlloc_v2)(DevPtr*, size_t);
    Result (*cuMemFree_v2)(DevPtr);
    Result (*cuMemcpyHtoD_v2)(DevPtr, const void*, size_t);
    Result (*cuMemcpyDtoH_v2)(void*, DevPtr, size_t);
    Result (*cuLaunchKernel)(void*, unsigned, unsigned, unsigned, unsigned, unsigned, unsigned,
                             unsigned, void*, void**, void**);
    Result (*cuCtxSynchronize)();
    Result (*cuGetErrorString)(Result, const char**);
    void* module = nullptr;

    void check(Result r, const char* what) const {
        if (r == 0) return;
        const char* text = "?";
        if (cuGetErrorString) cuGetErrorString(r, &text);
        throw std::runtime_error(std::string(what) + ": CUDA error " + std::to_string(r) + " " +
                                 text);
    }

    Driver(const std::vector<char>& cubin) {
        void* lib = dlopen("libcuda.so.1", RTLD_NOW);
        if (!lib) throw std::runtime_error("libcuda.so.1 not found");
        auto sym = [&](const char* name) {
            void* p = dlsym(lib, name);
            if (!p) throw std::runtime_error(std::string("missing ") + name);
            return p;
        };
#define KILN_GPU_SYM(name) name = reinterpret_cast<decltype(name)>(sym(#name))
        KILN_GPU_SYM(cuInit);
        KILN_GPU_SYM(cuDeviceGet);
        KILN_GPU_SYM(cuDevicePrimaryCtxRetain);
        KILN_GPU_SYM(cuCtxSetCurrent);
        KILN_GPU_SYM(cuModuleLoadData);
        KILN_GPU_SYM(cuModuleGetFunction);
        KILN_GPU_SYM(cuMemAlloc_v2);
        KILN_GPU_SYM(cuMemFree_v2);
        KILN_GPU_SYM(cuMemcpyHtoD_v2);
        KILN_GPU_SYM(cuMemcpyDtoH_v2);
        KILN_GPU_SYM(cuLaunchKernel);
        KILN_GPU_SYM(cuCtxSynchronize);
        KILN_GPU_SYM(cuGetErrorString);
#undef KILN_GPU_SYM
        check(cuInit(0), "cuInit");
        int dev = 0;
        check(cuDeviceGet(&dev, 0), "cuDeviceGet");
        void* ctx = nullptr;
        check(cuDevicePrimaryCtxRetain(&ctx, dev), "cuDevicePrimaryCtxRetain");
        check(cuCtxSetCurrent(ctx), "cuCtxSetCurrent");
        check(cuModuleLoadData(&module, cubin.data()), "cuModuleLoadData");
    }

    void* function(const std::string& name) const {
        void* f = nullptr;
        check(cuModuleGetFunction(&f, module, name.c_str()), name.c_str());
        return f;
    }

    // A device copy of `bytes` bytes at `host` (freed by the caller through free()).
    DevPtr upload(const void* host, size_t bytes) const {
        DevPtr p = 0;
        check(cuMemAlloc_v2(&p, bytes == 0 ? 16 : bytes), "cuMemAlloc");
        if (bytes) check(cuMemcpyHtoD_v2(p, host, bytes), "cuMemcpyHtoD");
        return p;
    }

    void download(void* host, DevPtr p, size_t bytes) const {
        check(cuMemcpyDtoH_v2(host, p, bytes), "cuMemcpyDtoH");
    }

    void launch(void* f, unsigned gx, unsigned gy, unsigned gz, unsigned threads,
                std::vector<void*> args) const {
        check(cuLaunchKernel(f, gx, gy, gz, threads, 1, 1, 0, nullptr, args.data(), nullptr),
              "cuLaunchKernel");
        check(cuCtxSynchronize(), "kernel");
    }
};

}  // namespace kiln_gpu
