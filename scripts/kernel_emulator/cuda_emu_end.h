// Undoes the parts of cuda_emu.h that would break ordinary C++ after the kernel sources.
#undef asm
#undef volatile
#undef __shared__
