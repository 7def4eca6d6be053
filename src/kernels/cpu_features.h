// Runtime CPU feature detection and the choice of SIMD path for the kernels.
// The SIMD code lives in *_avx2.cpp / *_avx512.cpp files compiled with their own -m flags; it
// may run only after this module says the CPU (and the OS, via XCR0) supports it.
#pragma once

namespace dsv4 {

enum class Isa { Scalar = 0, Avx2 = 1, Avx512 = 2 };

const char* isa_name(Isa isa);

// Best path this CPU supports: Avx512 needs F/BW/VL/DQ/BF16/VNNI (+ AVX2/FMA/F16C/BMI2, since
// the avx512 files are compiled with all of those flags) and a VDPBF16PS that rounds like two
// FMAs (probed once, see gemm.h); Avx2 needs AVX2/FMA/F16C/BMI2.
Isa detected_isa();
bool isa_supported(Isa isa);

// AVX512_VBMI (byte permutes), which some AVX-512 kernels use in addition where the CPU has it
// (checked together with the OS's ZMM state; false on non-x86).
bool cpu_has_avx512_vbmi();
// VBMI and GFNI (bit-matrix byte transforms) together, the same way.
bool cpu_has_avx512_vbmi_gfni();

// Intel AMX with BF16 tiles (AMX-TILE and AMX-BF16 in CPUID, tile state enabled in XCR0) and,
// on Linux, the process's permission to use the tile data state, which is requested here once
// (arch_prctl ARCH_REQ_XCOMP_PERM; kernels before 5.16 refuse it). False elsewhere. The FP8 and
// FP4 products of several rows run on the tiles then (gemm.h gemm_amx_active).
bool cpu_has_amx_bf16();

// The CPU's vendor is AMD (CPUID "AuthenticAMD"): some memory-access choices of the kernels
// were measured per vendor (gemm.h). False on non-x86.
bool cpu_is_amd();

// The path the kernels use: detected_isa(), lowered by env DSV4_ISA=scalar|avx2|avx512 (read
// once; a request the CPU cannot run is clamped down), or by force_isa().
Isa active_isa();
// For tests and benchmarks: use `isa` from now on (clamped to what the CPU supports); returns
// the ISA actually set. Not meant to be called while kernels run on other threads.
Isa force_isa(Isa isa);

}  // namespace dsv4
