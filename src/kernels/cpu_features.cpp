#include "kernels/cpu_features.h"

#include "kernels/gemm.h"

#include <atomic>
#include <cstdint>
#include <cstdlib>
#include <cstring>

#if defined(__x86_64__) || defined(__i386__)
#include <cpuid.h>
#define DSV4_X86 1
#endif
#if defined(DSV4_X86) && defined(__linux__)
#include <sys/syscall.h>
#include <unistd.h>
#endif

namespace dsv4 {

namespace {

#ifdef DSV4_X86
uint64_t read_xcr0() {
  uint32_t lo, hi;
  __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
  return (static_cast<uint64_t>(hi) << 32) | lo;
}
#endif

Isa detect() {
#ifdef DSV4_X86
  unsigned a, b, c, d;
  if (!__get_cpuid(1, &a, &b, &c, &d)) return Isa::Scalar;
  const bool fma = c & (1u << 12), osxsave = c & (1u << 27), avx = c & (1u << 28),
             f16c = c & (1u << 29);
  if (!(osxsave && avx && fma && f16c)) return Isa::Scalar;
  const uint64_t xcr0 = read_xcr0();
  if ((xcr0 & 0x6) != 0x6) return Isa::Scalar;  // OS saves XMM and YMM state
  if (__get_cpuid_max(0, nullptr) < 7) return Isa::Scalar;
  __cpuid_count(7, 0, a, b, c, d);
  const bool avx2 = b & (1u << 5), bmi2 = b & (1u << 8);
  if (!(avx2 && bmi2)) return Isa::Scalar;
  const bool f = b & (1u << 16), dq = b & (1u << 17), bw = b & (1u << 30), vl = b & (1u << 31);
  const bool vnni = c & (1u << 11);
  unsigned a1, b1, c1, d1;
  __cpuid_count(7, 1, a1, b1, c1, d1);
  const bool bf16 = a1 & (1u << 5);
  const bool zmm_state = (xcr0 & 0xe0) == 0xe0;  // opmask, ZMM0-15 high halves, ZMM16-31
  // The FP4 GEMM order relies on VDPBF16PS rounding like two FMAs (gemm.h): probed, not assumed.
  if (f && dq && bw && vl && vnni && bf16 && zmm_state && gemm_detail::avx512_dpbf16_is_two_fmas()) return Isa::Avx512;
  return Isa::Avx2;
#else
  return Isa::Scalar;
#endif
}

Isa parse_env(Isa best) {
  const char* e = std::getenv("DSV4_ISA");
  if (!e || !*e) return best;
  Isa want = best;
  if (!std::strcmp(e, "scalar"))
    want = Isa::Scalar;
  else if (!std::strcmp(e, "avx2"))
    want = Isa::Avx2;
  else if (!std::strcmp(e, "avx512"))
    want = Isa::Avx512;
  return static_cast<int>(want) < static_cast<int>(best) ? want : best;
}

// CPUID leaf 7 ECX bits, given AVX-512 F and BW and the OS's ZMM state (0 when not).
unsigned avx512_leaf7_ecx() {
#ifdef DSV4_X86
  unsigned a, b, c, d;
  if (!__get_cpuid(1, &a, &b, &c, &d) || !(c & (1u << 27))) return 0;  // OSXSAVE
  if ((read_xcr0() & 0xe6) != 0xe6 || __get_cpuid_max(0, nullptr) < 7) return 0;
  __cpuid_count(7, 0, a, b, c, d);
  return (b & (1u << 16)) && (b & (1u << 30)) ? c : 0;  // F, BW
#else
  return 0;
#endif
}

// -1: not yet initialised.
std::atomic<int> g_active{-1};

}  // namespace

const char* isa_name(Isa isa) {
  switch (isa) {
    case Isa::Avx512: return "avx512";
    case Isa::Avx2: return "avx2";
    default: return "scalar";
  }
}

Isa detected_isa() {
  static const Isa isa = detect();
  return isa;
}

bool cpu_has_avx512_vbmi() {
  static const bool vbmi = avx512_leaf7_ecx() & (1u << 1);
  return vbmi;
}

bool cpu_has_avx512_vbmi_gfni() {
  static const bool both = cpu_has_avx512_vbmi() && (avx512_leaf7_ecx() & (1u << 8));
  return both;
}

bool cpu_has_amx_bf16() {
#if defined(DSV4_X86) && defined(__linux__) && defined(__x86_64__)
  static const bool amx = [] {
    unsigned a, b, c, d;
    if (!__get_cpuid(1, &a, &b, &c, &d) || !(c & (1u << 27))) return false;  // OSXSAVE
    if (__get_cpuid_max(0, nullptr) < 0xd) return false;
    __cpuid_count(7, 0, a, b, c, d);
    const bool tile = d & (1u << 24), bf16 = d & (1u << 22);
    const uint64_t tile_state = (uint64_t{1} << 17) | (uint64_t{1} << 18);  // XTILECFG, XTILEDATA
    if (!tile || !bf16 || (read_xcr0() & tile_state) != tile_state) return false;
    constexpr long kArchReqXcompPerm = 0x1023, kXfeatureXtiledata = 18;
    return syscall(SYS_arch_prctl, kArchReqXcompPerm, kXfeatureXtiledata) == 0;
  }();
  return amx;
#else
  return false;
#endif
}

bool cpu_is_amd() {
#ifdef DSV4_X86
  static const bool amd = [] {
    unsigned a, b, c, d;
    if (!__get_cpuid(0, &a, &b, &c, &d)) return false;
    return b == 0x68747541u && d == 0x69746E65u && c == 0x444D4163u;  // "Auth" "enti" "cAMD"
  }();
  return amd;
#else
  return false;
#endif
}

bool isa_supported(Isa isa) { return static_cast<int>(isa) <= static_cast<int>(detected_isa()); }

Isa active_isa() {
  int v = g_active.load(std::memory_order_relaxed);
  if (v < 0) {
    v = static_cast<int>(parse_env(detected_isa()));
    g_active.store(v, std::memory_order_relaxed);
  }
  return static_cast<Isa>(v);
}

Isa force_isa(Isa isa) {
  if (!isa_supported(isa)) isa = detected_isa();
  g_active.store(static_cast<int>(isa), std::memory_order_relaxed);
  return isa;
}

}  // namespace dsv4
