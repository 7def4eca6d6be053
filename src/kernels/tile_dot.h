// The arithmetic of Intel AMX's bf16 tile product, TDPBF16PS, as a scalar model, and the
// instruction itself for tests and the roofline probe.
//
// For each output element c[m][n], one instruction runs two fp32 chains that start at +0: one
// over the first bf16 of every pair (a[m][2k] * b[k][2n]) and one over the second
// (a[m][2k+1] * b[k][2n+1]), a fused multiply-add per pair in increasing k; then
// c = c + (first + second). Round to nearest even; denormal inputs read as zero and denormal
// results flushed, whatever MXCSR says. This is what the SDM's operation section describes, and a
// Xeon VM's hardware matched it bit for bit on random tiles, where a single chain continuing from
// c (either element of a pair first), one rounding per pair, or an exact sum of a tile's products
// did not (tests/test_tile_dot.cpp; docs/performance.md, "AMX tiles").
//
// So a tile product adds a partial that starts from zero every 16 pairs: a chain that continues
// over all of K cannot be reproduced with them. The GEMMs' canonical orders (gemm.h) are built
// from such partials: FP8's step order is one tile product per lane and 256 elements, FP4's
// block partial one tile product with a zero in every pair (gemm_amx.cpp).
#pragma once
#include <cstdint>

namespace dsv4 {

// One full tile product: a is 16 rows of 32 bf16 (16 pairs), b is 16 rows k of 16 pairs (pair n
// of row k is column n's k-th pair; the "VNNI" layout), c is 16 x 16 fp32, all row-major.
constexpr int kTileRows = 16, kTilePairs = 16;
void tile_dot_bf16_model(const uint16_t* a, const uint16_t* b, float* c);

namespace tile_detail {
// The same through TDPBF16PS (only where cpu_has_amx_bf16()).
void tile_dot_bf16_amx(const uint16_t* a, const uint16_t* b, float* c);
}  // namespace tile_detail

}  // namespace dsv4
