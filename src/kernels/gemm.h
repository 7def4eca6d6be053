// Matrix products of the forward pass with the reference's quantisation semantics
// (spec model.md §4.7, §4.8, §6.5, §8.1). Activations are fp32 arrays holding bf16 values;
// weights are used in place in their checkpoint format. All outputs are row-major [M, N].
//
// Canonical summation order (identical, bit for bit, on every ISA path and thread count):
//   * The operands are dequantised exactly first: a = q * sa (act_quant codes times their
//     power-of-two scale; FP8-as-BF16 and BF16 take x as it is) and, for FP8 weights,
//     w = e4m3 * sw[n/128, k/128] (a power of two, so exact; the SIMD decoders need sw <= 2^7,
//     else the call runs the scalar reference; no checkpoint has such scales).
//   * FP8 and FP8-as-BF16 ("step order"): element k goes to slot (k mod 16) of 16 fp32 slots that
//     start at +0 and accumulate with fused multiply-add, slot = fma(a_k, w_k, slot), in
//     increasing k; every kFp8StepK (256) elements, and at the end of K, the slots fold into 16
//     lanes: lane d += (slot d + slot d+8) for d < 8, lanes 8..15 stay +0, and the slots restart
//     at +0. This is what AMX computes (kernels/tile_dot.h): one tile product per step and lane d
//     takes pairs (element 16j+d, element 16j+8+d), j = 0..15, whose two chains are the slots d
//     and d+8, and adds their sum to C, lane d. The fp32 back ends take each 16-wide half of a
//     32-chunk in natural order (one FMA per half into the slots), VDPBF16PS takes dword i =
//     (element c+i, element c+16+i) of chunk c with element c+i in the high word (it adds the
//     high product first). A step is 8 chunks.
//   * At the end the lanes are reduced by a fixed tree: l += l+8, then l += l+4, l += l+2,
//     l += l+1, and lane 0 is the output (rounded to bf16 where the GEMM says so).
//   This is the "dequantise, then one fp32 dot product" form of spec §4.7/4.8: no per-block
//   scaling in the inner loops (the weights and activations are dequantised exactly).
// FP4 differs in the lanes: per 128-block, lane d sums elements 8d .. 8d+7 (one ue8m0 scale
// group) from +0, in the order 8d + kFp4Order[t], t = 0..7, with unscaled e2m1 weights (the
// reference's per-block partial, times its scale sw[n, group]). Blocks meet in pairs before
// their lane: for blocks 2h, 2h+1, lane += fma(part_2h+1, sw_2h+1, part_2h * sw_2h); a last even
// block alone adds part * sw + 0, and a lane without elements in a shorter last block adds +0.
// This is what one TDPBF16PS computes when its two slots hold the two blocks (rows_amx_fp4),
// where one tile product per block used a quarter of the tiles' products.
// The order within a block is the one VDPBF16PS produces when element pairs (8d+u, 8d+4+u)
// share a dword: it adds the odd product, then the even one, each rounded (probed at start-up,
// cpu_features.h). The activations reach the back ends permuted per block (fp4_permuted_pos).
// BF16 differs (the VDPBF16PS order on adjacent elements, no steps): lane d of each 32-wide
// chunk takes element 2d+1, then element 2d, chunks in increasing k over all of K, 16 lanes
// straight into the tree; the fp32 back ends
// get the activations permuted per chunk (bf16_permuted_pos), and the activations must be bf16
// values (they are: every BF16 GEMM input is an RMSNorm output).
// FP8 products may also go through VDPBF16PS (AVX-512, M >= gemm_small_m_limit()): dequantised e4m3
// weights and activations are exact in bf16; the path is taken only when no product or partial
// sum can be a denormal (VDPBF16PS flushes them): weight scales >= 2^-86 for quantised
// activations (every nonzero one is >= 2^-31), >= 2^-54 for FP8-as-BF16 with activations that
// are zero or >= 2^-56 (bf16_dp_exact).
// Every product a_k * w_k of these GEMMs is exact in fp32 (e4m3 x e4m3, e4m3 x e2m1, bf16 x bf16,
// bf16 x e4m3, times powers of two), so the fma only fixes the few cases that underflow; the
// order is what matters.
// Work is split over output rows n only, so the thread count never changes a result.
// (NaN weight codes are not supported by the SIMD decoders; checkpoints have none.)
#pragma once
#include <cstdint>
#include <span>

#include "core/thread_pool.h"
#include "model/weights.h"

namespace dsv4 {

// FP8 GEMM (§4.7): act_quant(x, block 128); per 128-block part, scale sa[m,b] * sw[n/128,b].
void gemm_fp8(const float* x, int M, const Fp8Weight& W, float* y, ThreadPool& pool);

// FP4 expert GEMM (§4.8): weights are dequantised exactly to w * sw[n, k/32] (a power of two,
// so exact) and the 128-block partials take the activation scale sa[m, k/128] — the
// "dequantise W and take one fp32 dot product" form that §4.8 allows. K must be a multiple of 32.
void gemm_fp4(const float* x, int M, const Fp4Weight& W, float* y, ThreadPool& pool);

// Several independent products of one kind in a single pool job (decode: the routed experts'
// w1 and w3, then their w2): one hand-off for all instead of one per product. Each y is exactly
// what the single call computes.
template <class Weight>
struct GemmItem {
  const float* x = nullptr;
  int M = 0;
  const Weight* W = nullptr;
  float* y = nullptr;
};
void gemm_fp8_batch(std::span<const GemmItem<Fp8Weight>> items, ThreadPool& pool);
void gemm_fp4_batch(std::span<const GemmItem<Fp4Weight>> items, ThreadPool& pool);

// bf16 activations times an FP8-stored weight used as bf16 (wo_a): no activation
// quantisation; per 128-block part of x * w_e4m3, scale sw[n/128, b]; bf16 output.
void gemm_fp8_as_bf16(const float* x, int M, const Fp8Weight& W, float* y, ThreadPool& pool);

// Same, for output rows [row_begin, row_end) of W only (the grouped output projection, §6.5):
// y[m * y_stride + (n - row_begin)] for x rows x[m * x_stride .. + W.k). The scale row is n/128
// for the absolute n, so row_begin need not be a multiple of 128.
void gemm_fp8_as_bf16_rows(const float* x, int M, int x_stride, const Fp8Weight& W, int row_begin,
                           int row_end, float* y, int y_stride, ThreadPool& pool);
// Several of those in one pool job (the output projection's groups).
struct Fp8RowsItem {
  const float* x = nullptr;
  int M = 0, x_stride = 0;
  const Fp8Weight* W = nullptr;
  int row_begin = 0, row_end = 0;
  float* y = nullptr;
  int y_stride = 0;
};
void gemm_fp8_as_bf16_rows_batch(std::span<const Fp8RowsItem> items, ThreadPool& pool);

// x [M, K] times a BF16 weight [N, K] in fp32, fp32 output (gate, compressor, head, ...);
// 128-block partials summed with scale 1.
void gemm_bf16_f32(const float* x, int M, const Bf16Weight& W, float* y, ThreadPool& pool);
// Several of those in one pool job (a compressor's wkv and wgate: their shared activations are
// prepared once). Each y is exactly what the single call computes.
void gemm_bf16_f32_batch(std::span<const GemmItem<Bf16Weight>> items, ThreadPool& pool);

// Activation quantisation of a row block for the GEMMs above: q holds the rounded e4m3 values,
// s the power-of-two scale per 128 columns.
void quantize_rows_fp8(const float* x, int M, int K, float* q, float* s);

// Register tiles of the M >= 4 products on the AVX-512 path: VDPBF16PS (32 multiply-adds per
// instruction) or fp32 FMA (16). Both give the same bits (the canonical order below), so the
// choice changes speed only, and which is faster depends on the CPU: VDPBF16PS measured 863
// GFLOP/s on a Zen 5 VM, well above FMA, but 170 against FMA's 340 on a Xeon VM, where it
// occupies the vector ports as long as four FMAs. Chosen once from the two instructions' measured rates
// (a few ms, on first use); env DSV4_GEMM_TILES=dp|fma, or force_gemm_tiles(), overrides that.
enum class GemmTiles { Dp, Fma };
// Products with fewer activation rows than this run the small-M back ends, each row over weights
// decoded in registers; from it on, the M >= 4 tiles (a panel's weights converted once for all
// rows). 8 where the VDPBF16PS tiles run, whose conversion to bf16 pairs costs more than decoding
// per row up to 7 rows (Zen 5 VM, two threads, weights from DRAM, alternating runs: expert w1 FP4
// at M = 4 / 6 / 7 took 263-280 / 378-384 / 436-442 us against 408-446 / 510-527 / 513-527 in the
// tiles, shared w1 FP8 454-486 / 666-673 / 775-822 against 715-819 / 783-835 / 808-878; at M = 8
// about even: FP4 a little faster per row, FP8 in the tiles), and 8 on AVX2 (its fp32 tiles on
// the same VM: 631-677 against 845-964 us at M = 4, 916-1049 against 1300-1339 at 6). 4 with the
// AVX-512 fp32 FMA tiles, which the start-up probe picks where VDPBF16PS is slow (the Xeon VM),
// and where the small-M FP8 decode was compute-bound: not measured against there. Same bits
// either way.
int gemm_small_m_limit();
GemmTiles active_gemm_tiles();
// For tests and benchmarks; returns the previous choice. Not while GEMMs run on other threads.
GemmTiles force_gemm_tiles(GemmTiles tiles);
const char* gemm_tiles_name(GemmTiles tiles);

// Small-M FP4 on AVX-512 CPUs that also have AVX512_VBMI: the integer lane sums run through
// VPDPBUSD on byte weights (gemm_detail::fp4_byte_activations_avx512) instead of VPDPWSSD on
// word weights, same bits, about a third fewer vector instructions per weight byte. On by default
// where the CPU has VBMI; env DSV4_FP4_BYTES=0, or force_fp4_bytes(false), turns it off.
bool fp4_bytes_active();
// For tests and benchmarks (clamped to what the CPU has); returns the previous setting.
bool force_fp4_bytes(bool on);

// Small-M FP4 on AVX2 and in AVX-512's byte form: activation blocks that need 16 to 18 bits run
// in two integer planes (gemm_detail::fp4_int_activations; the byte form: three byte planes,
// fp4_byte_activations_avx512) instead of fp32 FMAs, same bits. On by default; env
// DSV4_FP4_TWO_PLANES=0, or force_fp4_two_planes(false), turns it off.
bool fp4_two_planes_active();
bool force_fp4_two_planes(bool on);  // (as force_fp4_bytes)

// Small-M FP8 on AVX-512 CPUs that also have VBMI and GFNI: the e4m3 codes become fp32 weights
// through two GF2P8AFFINEQB (each code's bits moved to where the fp32 wants them) and VPERMI2B
// (the two bytes into place), 10 instead of 16 vector instructions per 64 weights; the same
// weight values and FMA chain, so the same bits. On by default where the CPU has both; env
// DSV4_FP8_GFNI=0, or force_fp8_gfni(false), turns it off.
bool fp8_gfni_active();
// For tests and benchmarks (clamped to what the CPU has); returns the previous setting.
bool force_fp8_gfni(bool on);
// Those rows through VDPBF16PS instead of FMAs where exact (the VDPBF16PS guards on the weight
// scales): the codes become unscaled bf16 weights (6 instructions per 64, gemm_avx512.cpp,
// fp8_rows_pairs), the activations bf16 pairs with each block's weight scale in their exponents,
// and one instruction takes 32 products; the same chain, so the same bits. On by default where
// the GFNI rows run; env DSV4_FP8_SMALL_PAIRS=0, or force_fp8_small_pairs(false), turns it off.
bool fp8_small_pairs_active();
bool force_fp8_small_pairs(bool on);  // (as force_fp8_gfni)
// Small-M FP8 rows ask for their weight lines ahead with PREFETCHNTA instead of PREFETCHT0:
// the lines are used once, and on a Zen 5 VM the FP8 products at M = 1 read 4-7 % more of the
// bandwidth so (two threads, four alternating runs of 4-8 rounds). The Xeon's tuning was
// measured with T0, so the default is NTA on AMD CPUs only; env DSV4_FP8_PREFETCH_NTA=0|1, or
// force_fp8_prefetch_nta(), overrides. Speed only: the results are the same.
bool fp8_prefetch_nta_active();
// For tests and benchmarks; returns the previous setting.
bool force_fp8_prefetch_nta(bool on);
// Small-M FP4 rows on AVX-512 ask for each row's own lines kFp4AheadBytes / R ahead (the next
// pass's rows near a row's end), and nothing into L2, instead of the next pass's rows at the
// same offset plus rows kFp4FarRows further into L2. On a Zen 5 VM (two threads, weights from
// DRAM, the two forms alternating within one process) the experts' w1 / w2 at M = 1 took
// 10-16 % / 5-16 % less time so; the Xeon's tuning was the other one, so the default is this
// on AMD CPUs only; env DSV4_FP4_PREFETCH_AHEAD=0|1, or force_fp4_prefetch_ahead(), overrides.
// Speed only: the results are the same.
bool fp4_prefetch_ahead_active();
bool force_fp4_prefetch_ahead(bool on);  // (as force_fp8_prefetch_nta)

// FP8 products of at least gemm_amx_min_m() rows through AMX tiles (gemm_detail::rows_amx_fp8)
// where the CPU has them (cpu_has_amx_bf16) and K is a multiple of kFp8StepK, under the
// VDPBF16PS guards (the tiles flush denormals alike). Same bits as every other path (the step
// order is theirs). Env DSV4_GEMM_AMX=0 turns it off; force_gemm_amx() sets it for tests and
// benchmarks (clamped to the CPU) and returns the previous setting.
// From 4 rows on (gemm_amx_min_m): on the Xeon VM with AMX, 2 threads, an 8 MB FP8 product
// (4096 -> 2048) with its weights in L3, against the fp32 FMA tiles: M = 3 0.49 / 0.45 ms,
// 4 0.50 / 0.65, 8 0.51 / 0.87, 16 0.60 / 1.37, 128 2.1 / 9.3.
bool gemm_amx_active();
bool force_gemm_amx(bool on);
int gemm_amx_min_m();

namespace gemm_detail {

// The fewest activation rows the M >= 4 tiles are made for (their MR); gemm_small_m_limit() is
// never below it.
constexpr int kTilesMinM = 4;
// Below this many rows the BF16 products with bf16 pairs and the folded FP8 products through
// GFNI stay on the small-M back ends past gemm_small_m_limit(): those share each weight load
// across up to 4 rows (a decode step of several sequences) and beat the tiles there (Zen 5,
// 2 threads, weights from DRAM: head M = 8 3.95 ms vs 5.41, wo_b 2.58 vs 3.43). 16 since the FP8
// rows run as bf16 pairs (fp8_small_pairs_active): at M = 12, two alternating runs, wq_b
// 4.57 / 3.77 ms vs the tiles' 4.93 / 3.90, wo_b 3.82 / 2.99 vs 4.39 / 4.24, shared w1 0.79 /
// 0.80 vs 1.17 / 1.10, head 4.55 / 4.72 vs 6.95 / 6.33 (the fp32 GFNI rows lost to the FP8
// tiles there: wo_b 3.89 vs 3.64).
constexpr int kSharedLoadMaxM = 16;
// One GEMM as the ISA back ends see it. Activation rows are readable and zero up to kp.
enum class Kind { Fp8, Fp4, Fp8AsBf16, Bf16 };
struct Problem {
  Kind kind = Kind::Fp8;
  const float* a = nullptr;  // [M, a_stride]: q * sa (Fp8/Fp4, dequantised) or x
  int a_stride = 0, M = 0;
  int small_m = kTilesMinM;  // M < small_m: the small-M back ends run (gemm_small_m_limit)
  const float* zero_row = nullptr;  // kp zeros, stands in for missing rows of a tile
  // Fp4: the activations as bf16 pairs, [M][nb][4][16]: dword d of vector u of a block holds
  // (element 8d+u, element 8d+4+u), the operand layout of the VDPBF16PS paths.
  // Fp8, Fp8AsBf16 (M >= small_m, or the GFNI rows as pairs: fp8_gfni; AVX-512 only): [M][kp / 2], dword d of the 32-chunk c holds
  // (element c+d, element c+16+d). Set only when the VDPBF16PS order is exact (see above).
  // Bf16: the activations as bf16 words in natural order, [M][kp] (pairs = adjacent elements).
  const uint32_t* a_pairs = nullptr;
  // Fp4 (M < small_m on AVX-512 and AVX2; M >= small_m where AVX-512 takes the FMA tiles): the
  // activations as exact integers (fp4_int_activations), per row [nb][64] dwords of int16 pairs
  // in the a_pairs layout, [nb][16] lane units and [nb] flags (0: the block has no such form and
  // takes the fp32 route through `a`).
  // With a_int_corr set (the byte form, fp4_byte_activations_avx512), a_int holds per row
  // [nb][64] dwords of byte planes instead, a_int_corr [nb][16] the lane corrections, and
  // a_int_ok that form's flags.
  // With a_int_high set, blocks flagged 2 are in the two-plane form: a_int holds the low
  // planes, a_int_high [nb][64] the high ones (AVX2); in the byte form a_int holds the hi and lo
  // byte planes, a_int_high the top ones (fp4_byte_activations_avx512).
  const uint32_t* a_int = nullptr;
  const uint32_t* a_int_high = nullptr;
  const float* a_int_unit = nullptr;
  const float* a_int_corr = nullptr;
  const uint8_t* a_int_ok = nullptr;
  const uint8_t* w = nullptr;       // codes (Bf16: uint16 data)
  const uint8_t* ws = nullptr;      // ue8m0 scales (Fp8*: [ceil(N/128), nb]; Fp4: [N, K/32])
  int K = 0, kp = 0, nb = 0;        // kp = K rounded up to 32 (Fp4: to 128); nb = ceil(K/128)
  float* y = nullptr;
  int y_stride = 0, row0 = 0;  // y[m * y_stride + n - row0]
  int row_end = 0;             // rows [row0, row_end) are computed by this call (prefetch bound)
  bool round_bf16 = true;
  // FP8 kinds, M < 4: the fp32 back ends may scale the activations by 2^120 sw instead of the
  // weights (set where |a| * 2^120 sw stays finite and sw >= 2^-120, so a * 2^120 sw is exact).
  bool fold_w_scale = false;
  // FP8 kinds, M < kSharedLoadMaxM, AVX-512: the folded rows decode through GFNI + VBMI
  // (fp8_gfni_active), on the small-M back end whatever small_m is; with fold_w_scale and
  // a_pairs set there (fp8_small_pairs_active), through VDPBF16PS on those pairs.
  bool fp8_gfni = false;
  // FP8 kinds, M < 4: the rows' software prefetch uses PREFETCHNTA (fp8_prefetch_nta_active).
  bool fp8_nta = false;
  // Fp4, small-M AVX-512 rows: the in-row prefetch ahead (fp4_prefetch_ahead_active).
  bool fp4_ahead = false;
  // Through AMX tiles (rows_amx_fp8, rows_amx_fp4): the activations as tile rows. FP8 kinds:
  // [ceil(M / 16)][K / 256][8][16][16] dwords (token block, step, lane d, pair j, token): dword =
  // element 256 s + 16 j + d (low word), element 256 s + 16 j + 8 + d (high word), as bf16.
  // FP4: amx_fp4_activation_block's layout per token block.
  const uint32_t* a_amx = nullptr;
  // Fp4 through the VDPBF16PS tiles: panels whose scale bytes all lie in kFp4FoldMinByte ..
  // fp4_fold_max_byte take the scales into their bf16 weights (0: none do; see kFp4FoldMinByte).
  int fp4_fold_max_byte = 0;
  // Decoding tables from numerics (passed in so that the ISA files need no shared inlines).
  const float* e4m3 = nullptr;  // [256]
  const float* e2m1 = nullptr;  // [16]
  const float* e8m0 = nullptr;  // [256]
};

constexpr int kPanelRows = 16;  // rows n per work item
// Elements per step of the FP8 order (above): one AMX tile product per lane.
constexpr int kFp8StepK = 256;
// M >= 4 fp32 path: the panel's weights are decoded once over all of K; blocks of kMBlock
// activation rows then run over them kChunkK columns at a time, so that a chunk of the weights,
// the block's activation rows and the lane vectors of its tiles share L1.
constexpr int kChunkK = 256;
static_assert(kChunkK == kFp8StepK, "an FP8 chunk of the fp32 tiles is one step of the order");
static_assert(kChunkK % 256 == 0, "an FP4 chunk of the fp32 tiles holds whole block pairs");
constexpr int kMBlock = 8;
// Row stride (floats) of the activation buffers the GEMMs prepare and of the decoded weights:
// kp plus one chunk. With a stride that is a multiple of 4 KiB (every K of V4 gives one) the
// rows of a tile fall into the same L1 sets and evict each other; one chunk (1 KiB) past it, the
// chunks of four rows cover the 64 sets once. (One core of the Xeon VM, a 4 x 4 tile over rows
// 16 KiB apart: 67 GFLOP/s; 16 KiB + 64 B apart: 114.)
inline int act_stride(int kp) { return kp + kChunkK; }
// k columns per chunk of bf16 weight pairs (M >= 4 VDPBF16PS path): 16 rows x 1024 x 2 bytes
// (32 KB) stay in L1 while the tiles run over them (512 measured slower, 2048 the same).
constexpr int kPairsChunkK = 1024;
static_assert(kPairsChunkK % kFp8StepK == 0, "FP8 steps never span two chunks of pairs");
// M >= 4 products with more activation rows than this run in row slices of at most this many
// (run_jobs, gemm.cpp): a pool thread's panels each meet one slice, then the next, so a slice's
// activations (256 rows x 8 KiB of bf16 pairs at K = 4096) are read from cache by all of them.
// With all rows at once (a 2048-token prefill chunk: 16 MiB at K = 4096) every panel streamed
// them from DRAM. The cost: each panel's weights are decoded once per slice.
constexpr int kSliceRows = 256;
// The same for the integer FP4 tiles (int16 words, the same bytes per column): 512, since their
// activation rows (int16 words plus a lane unit per block) also pass through L1 per tile. One
// core of the Xeon VM, best of 7: M = 12 89 -> 94-99 GFLOP/s, M = 96 the same (98-107).
constexpr int kFp4IntChunkK = 512;
static_assert(kFp4IntChunkK <= kPairsChunkK && kFp4IntChunkK % 256 == 0 && kPairsChunkK % 256 == 0,
              "an int chunk fits the pairs scratch; FP4 chunks hold whole block pairs");
// Weight-scale bounds of the FP8 kinds (ue8m0 bytes): up to 2^7 the fp32 decoders are exact
// (e4m3 * 2^-120 times 2^120 sw); from 2^-86 (2^-54 for FP8-as-BF16) VDPBF16PS is exact.
constexpr int kFp8ScaleMaxByte = 127 + 7, kFp8PairsMinByte = 127 - 86, kFp8AsBf16PairsMinByte = 127 - 54;
// FP4 in the VDPBF16PS tiles with the group scales taken into the bf16 weights: w' = e2m1 * sw,
// so that a block's partial is added to its lane (VADDPS) instead of an FMA with the lane scales,
// and the tile loads no scales. (On the Zen 5 VM the adds issue on other ports than VDPBF16PS,
// whose FMAs took a fifth of the tile's issue slots; without scale registers the tiles are 3 x 4,
// rows_tiled_pairs_fp4_folded.) The partials are then sw times the
// canonical ones, exactly, as long as no product, partial sum or weight leaves the normal range
// (VDPBF16PS flushes denormals). Nonzero quantised activations are multiples of 2^-31 (the amax
// floor 1e-4 makes sa >= 2^-22, e4m3 steps are 2^-9) and e2m1 values multiples of 0.5, so with
// sw >= 2^-94 every sum is zero or at least 2^-126. Above: w' stays a finite bf16 up to sw =
// 2^125, and the partials (at most 48 max |a| in magnitude, times sw) must stay finite in both
// forms, which gemm.cpp bounds per call through max |a| (Problem::fp4_fold_max_byte).
constexpr int kFp4FoldMinByte = 127 - 94, kFp4FoldMaxByte = 127 + 125;
// The scratch of one work item, in floats (see Scratch in gemm_simd.inc): wbuf (the panel's
// decoded weights, rows act_stride(kp) apart, or a chunk of bf16 pairs; also the FP4 small-M lane
// stash), the lane vectors of the M >= 4 tiles, FP4 lane scales, the FP4 group scales of a
// small-M group.
struct ScratchLayout {  // offsets (wbuf is at 0) and the total
  int64_t lanes = 0, lsc = 0, row_scales = 0, wt = 0, total = 0;
};
inline ScratchLayout scratch_layout(int M, int nb) {
  static_assert(kPairsChunkK >= 2 * 16 * 16, "the FP4 lane stash (lanes, waiting partials) lives in wbuf");
  const auto max = [](int64_t a, int64_t b) { return a > b ? a : b; };
  ScratchLayout l;
  l.lanes = kPanelRows * max(kPairsChunkK, act_stride(nb * 128));
  l.lsc = l.lanes + int64_t{kPanelRows} * 16 * max(M + 4, kMBlock);
  l.row_scales = l.lsc + int64_t{kPanelRows} * 16 * max(kPairsChunkK / 128, nb);
  // (wt: the AVX2 broadcast tiles' panel, whole steps of kFp8StepK columns x kPanelRows, then
  // for FP4 the lane scales [nb][16][kPanelRows]; a 64-byte aligned offset)
  l.wt = (l.row_scales + int64_t{kPanelRows} * nb * 4 + 16 + 15) / 16 * 16;
  l.total = l.wt + int64_t{kPanelRows} * ((nb + 1) / 2 * kFp8StepK + 16 * nb) + 64;
  return l;
}
inline int64_t scratch_floats(int M, int nb) { return scratch_layout(M, nb).total; }

// ---- AMX (gemm_amx.cpp; only where cpu_has_amx_bf16()) ----
// FP8 products through TDPBF16PS in the canonical step order: per group of weight rows, their
// e4m3 codes become tile rows of bf16 pairs (lane d, step s: pairs (16j+d, 16j+8+d)), then every
// lane is a tile product chain over the steps, 2 x 2 tiles of 16 rows x 16 tokens at a time; the
// lanes meet in the tree. Rows [n0, n1) of p (any number of panels); K % kFp8StepK == 0.
void rows_amx_fp8(const Problem& p, int n0, int n1, float* scratch);
// FP4 products through TDPBF16PS in the canonical order, for rows whose group scales fold into
// bf16 weights (kFp4FoldMinByte .. p.fp4_fold_max_byte): one tile product per lane and block
// pair over 8 pairs (element 8d + kFp4Order[u], u = 0..7, of block 2h in one slot, of block 2h+1
// in the other): its two chains from +0 are the two scaled block partials (exact), and C + their
// sum is the lane update. 2 x 2 tiles of 16 rows x 16 tokens at a time, as FP8; half of the
// tiles' products are used (8 of 16 pairs). K % 256 == 0.
void rows_amx_fp4(const Problem& p, int n0, int n1, float* scratch);
// Rows of weights per group: their tile rows (K x tile_bytes_per_k bytes each) stay in L2 while
// every token block runs over them. (static: gemm_amx.cpp's copy is compiled for AMX CPUs only.)
static inline int amx_group_rows(int K, int tile_bytes_per_k) {
  const int rows = (1 << 20) / (K > 0 ? K : 1) / tile_bytes_per_k / 32 * 32;
  return rows < 32 ? 32 : rows > 128 ? 128 : rows;
}
constexpr int kAmxFp8TileBytesPerK = 2, kAmxFp4TileBytesPerK = 2;
// The fewest rows an FP4 product runs on AMX with: converting the codes into tile rows is paid
// once per product. Xeon VM with AMX, one thread, 4096 -> 2048 with the weights in L3, AMX
// against the fp32 tiles: M = 8 1.83 / 1.27 ms, 12 1.88 / 1.73, 16 1.94 / 1.98, 32 2.60 / 3.70,
// 128 6.90 / 14.1.
constexpr int kAmxFp4MinM = 16;
static inline int64_t amx_scratch_floats(int K) {
  const int64_t fp8 = int64_t{amx_group_rows(K, kAmxFp8TileBytesPerK)} * K * kAmxFp8TileBytesPerK / 4;
  const int64_t fp4 = int64_t{amx_group_rows(K, kAmxFp4TileBytesPerK)} * K * kAmxFp4TileBytesPerK / 4;
  return (fp8 > fp4 ? fp8 : fp4) + 16 * 4 * 256 + 16;
}
// Rows [0, rows) of x (rows <= 16, K % 256 == 0) as token block tb of p.a_amx (out points at
// that block): zeros for rows past `rows`. Returns false if a value is not a bf16 or is a
// nonzero below 2^-56 (bf16_dp_exact; only FP8-as-BF16 takes such inputs), as the VDPBF16PS
// guard; `work` holds 16 x 128 dwords.
bool amx_fp8_activation_block(const float* x, int rows, int K, int x_stride, uint32_t* out, uint32_t* work);
// The FP4 form (Problem::a_amx for Kind::Fp4): rows [0, rows) of the permuted activations a
// (fp4_permuted_pos; bf16 values; nb even) as token block tb, [nb / 2][16 lanes][8][16 tokens]
// dwords, block 2h's value in the low word, block 2h+1's in the high word.
void amx_fp4_activation_block(const float* a, int rows, int nb, int a_stride, uint32_t* out);

// FP4 lane order (see above) and the activation layout of one 128-block: position 16 t + d holds
// element 8 d + kFp4Order[t], so that lane vector t meets the t-th element of every lane.
constexpr int kFp4Order[8] = {4, 0, 5, 1, 6, 2, 7, 3};
constexpr int fp4_permuted_pos(int r) {
  const int e = r % 8, t = e < 4 ? 2 * e + 1 : 2 * (e - 4);  // kFp4Order[t] == e
  return t * 16 + r / 8;
}
// nb blocks of 128 values in natural order to that layout, in place.
void fp4_permute_blocks(float* a, int nb);
void fp4_permute_blocks_avx512(float* a, int nb);  // the same

// FP4 small M through VPDPWSSD: the e2m1 weights doubled are the integers 0, ±1, ±2, ±3, ±4, ±6,
// ±8, ±12, so a lane partial is exact in integers when the lane's 8 activations are integer
// multiples of one power of two u, each below 2^15 u: the sum (in steps of u / 2) stays under
// 2^22 in any order, so every fp32 partial sum of the canonical order is exact too, and the
// integer sum times u / 2 is the canonical partial bit for bit. Per 128-block of one permuted
// activation row `a` (nb blocks): words [nb][64] the int16 pairs (a_pairs layout), unit [nb][16]
// each lane's u / 2, ok [nb] whether every lane has such a u with u >= 2^-117 (so that all sums,
// u / 2 and the AVX2 path's u / 512 stay normal); the finest u (2^-14 of the lane's largest
// power of two, biased exponent e: u = 2^(e - 141)) is the one to try.
constexpr int kFp4IntMinExp = 24;  // the smallest e
// The largest e: a partial sum of the canonical order stays below 12 * 8 * 2^15 u / 2 < 2^(e - 120),
// so up to e = 248 none overflows (where one did, the fp32 chain's inf would differ from the
// integer sum's finite value).
constexpr int kFp4IntMaxExp = 248;
// With `high` given (AVX2), a block without that form may take two planes instead (ok = 2). An
// activation quantised to e4m3 spans 18 bits of one power of two (2^-9 s .. 448 s), more than
// int16 holds: activations like silu(gate) x up often leave a quarter of the blocks without the
// one-plane form, each lane partial then costing the fp32 chain, about twice the integer sum. In
// a two-plane block every lane with the one-plane form keeps its u, the others take u = 2^(e - 144)
// (so |n| < 2^18; e >= kFp4IntMinExp + 3 keeps u >= 2^-117) and hold when 12 sum |n| < 2^24 (the
// weights doubled reach 12: every partial sum of the canonical order is exact, as above, and below
// 2^(e - 121): e <= kFp4TwoPlaneMaxExp keeps it finite).
// words then hold l = n mod 2^15 (0 .. 32767) and high [nb][64] h = n >> 15 (floor), n = 2^15 h + l,
// in the same layout; the lane partial is (2^15 sum h w + sum l w) u / 2. A row of activations
// takes them when at least 1 / kFp4TwoPlaneShare of its blocks have this form (else those run
// in fp32): at M = 1 on Zen 3 (one thread, weights in L3) silu x up rows (~24 % two-plane blocks)
// ran 8-10 % faster with them; rows of normal values (~4 %) gained nothing measurable.
constexpr int kFp4TwoPlaneShare = 8;
constexpr int kFp4TwoPlaneMaxExp = 249;
constexpr int kFp4TwoPlaneMaxBlocks = 64;  // (K <= 8192: the experts' widths, 2048 .. 7168)
// Small-M FP4 asks for each weight row twice: into L1 one row group ahead, and into L2 this many
// rows further on. Prefetches into L1 wait in the core's few fill buffers, so they alone keep too
// little in flight once two cores stream. 2048 x 4096 and 4096 x 2048 at M = 1, weights from
// DRAM (540 MB), best of 5, Xeon VM, 2 threads: 16-21 -> 22.6-24.1 GB/s; one thread 10.3-12.0 ->
// 10.8-13.0.
constexpr int kFp4FarRows = 16;
// With fp4_prefetch_ahead_active (AVX-512): the bytes a pass of R rows asks for ahead, together
// (each row kFp4AheadBytes / R ahead of its reads; at most a row). Zen 5 VM, paired rounds, w1
// (8 rows a pass) / w2 (4 rows): 1536 bytes 0.91 / 1.00 of the time without, 3072 0.84 / 0.82-0.96,
// 4096 0.84 / 0.84-0.94, 8192 0.86 / 0.84-0.93.
constexpr int kFp4AheadBytes = 4096;
void fp4_int_activations(const float* a, int nb, uint32_t* words, float* unit, uint8_t* ok, uint32_t* high = nullptr);
void fp4_int_activations_avx512(const float* a, int nb, uint32_t* words, float* unit, uint8_t* ok);  // the same, one plane
void fp4_int_activations_avx2(const float* a, int nb, uint32_t* words, float* unit, uint8_t* ok, uint32_t* high);  // the same
// The same integers n as bytes for VPDPBUSD (unsigned bytes times signed bytes, four products
// per dword): the weights become w' = 2 e2m1 + 12 in 0 .. 24, the activations two signed byte
// planes, n = 256 hi + lo (lo = n mod 256 as a signed byte, so hi is in -128 .. 127 for n up to
// 32639; a block with a larger n has no byte form). Then sum n w' = 256 sum hi w' + sum lo w'
// stays below 2^23, and the lane's partial is fma(sum n w', unit, corr) with corr = -12 unit sum
// n: both terms and their sum (sum n (2 e2m1)) unit are exact, so it is the word form's value bit
// for bit. Per block: planes [4][16] dwords (vector 0: the hi bytes of the elements that meet the
// weights' low nibbles, 8d + 2i at byte i of dword d; 1: of the high nibbles, 8d + 2i + 1; 2, 3:
// the lo bytes of the same), unit [16] as fp4_int_activations, corr [16], ok.
// With `high`, a block without that form may take three planes instead (ok = 2): the lanes
// without the one-plane form at u = 2^(e - 144), as fp4_int_activations' two planes, and every
// n = 65536 top + 256 hi + lo, hi and lo as above, `top` (-4 .. 4) in high [nb][64] (vectors 0, 1
// as the hi planes; 2, 3 unused). The kernel sums the top planes by VPDPBUSD too, and the lane's
// partial is fma(sum (256 hi + lo) w', unit, fma(sum top w', 65536 unit, corr)): the inner sum
// is (P - sum (256 hi + lo) w') unit for the exact partial P = sum n (2 e2m1) unit (a multiple
// of 4 units below 2^25 of them: exact), and then the outer one is P itself.
void fp4_byte_activations_avx512(const float* a, int nb, uint32_t* planes, float* unit, float* corr, uint8_t* ok,
                                 uint32_t* high = nullptr);

// BF16 activation layout of one 32-wide chunk: odd elements in slots 0..15, even ones in 16..31,
// so that vector 0 meets the first element of every lane pair and vector 1 the second.
inline int bf16_permuted_pos(int k) {
  const int c = k / 32 * 32, r = k % 32;
  return c + (r % 2 ? r / 2 : 16 + r / 2);
}

// Compute output rows [n0, n1) (n1 - n0 <= kPanelRows) of `p` for all M rows.
void rows_scalar(const Problem& p, int n0, int n1);
void rows_avx2(const Problem& p, int n0, int n1, float* scratch);
void rows_avx512(const Problem& p, int n0, int n1, float* scratch);
// Start-up probe of the AVX-512 path (run only on CPUs with AVX512_BF16): does VDPBF16PS round
// like two FMAs, odd element first? If not, the AVX-512 path is not used.
bool avx512_dpbf16_is_two_fmas();

}  // namespace gemm_detail

}  // namespace dsv4
