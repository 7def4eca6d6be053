#include "model/model.h"

#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <limits>
#include <type_traits>
#include <numeric>
#include <optional>

#include "core/error.h"
#include "core/stage_profile.h"
#include "kernels/attention.h"
#include "kernels/exp.h"
#include "kernels/gemm.h"
#include "kernels/hc_mix.h"
#include "kernels/index_score.h"
#include "kernels/numerics.h"
#include "model/checkpoint.h"

namespace dsv4 {

namespace {

constexpr float kNegInf = -std::numeric_limits<float>::infinity();
// Tokens per attention call within a forward chunk (run_block).
constexpr int kAttentionPieceTokens = 512;
// Routed (token, expert) rows per batch of experts in the MoE: a decode step's few rows run as
// one batch; a prefill chunk's in several (this bounds the buffers: ~56 MB at V4-Flash widths).
constexpr size_t kExpertBatchRows = 1024;

inline float sigmoid(float v) { return 1.0f / (1.0f + std::exp(-v)); }

// fn(i) for every i in [0, n), split over the pool. Only for iterations that are independent of
// each other (tokens, rows, heads): each result is computed exactly as in a serial loop, so the
// split changes no bit at any thread count. `grain` groups iterations too cheap to be worth a
// pool wake-up alone; a call with n <= grain (decode) runs inline.
template <class Fn>
void parallel_each(ThreadPool& pool, int64_t n, Fn&& fn, int64_t grain = 1) {
  pool.parallel_for(n, [&](int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; ++i) fn(i);
  }, grain);
}

// Interleaved-pair RoPE on `npairs` pairs (spec §4.10), rounded back to bf16.
void apply_rope(float* x, const float* cs, const float* sn, int npairs, bool inverse) {
  for (int j = 0; j < npairs; ++j) {
    const float a = x[2 * j], b = x[2 * j + 1];
    const float c = cs[j], s = inverse ? -sn[j] : sn[j];
    x[2 * j] = bf16_round(a * c - b * s);
    x[2 * j + 1] = bf16_round(a * s + b * c);
  }
}

// A decode step (one token) spreads HC_PRE's chains (hc_token_sums) over the pool in parts (at
// least two: both cores of a small machine stream the mix rows; 13 + 12 chains at hc = 4). Each
// is the same serial sum as in one pass, so the split changes no bit.
int hc_pre_parts(const HcWeights& hw) { return std::max(2, (hw.mix + kHcMaxChains) / kHcMaxChains); }
void hc_pre_part(const HcWeights& hw, int HD, const float* x, int part, float* ss, float* mix) {
  const int chains = hw.mix + 1, per = (chains + hc_pre_parts(hw) - 1) / hc_pre_parts(hw);
  hc_token_sums(hw.fn, HD, x, part * per, std::min(chains, (part + 1) * per), ss, mix);
}
// From this many tokens on (prefill), HC_PRE's sums run over groups of this many tokens at once.
constexpr int kHcTokensPerItem = 16;

// The rest of HC_PRE from those sums: pre/post gates, the Sinkhorn-normalised comb [hc][hc] and
// the block input a [D] = bf16(sum_j pre_j * x_j), rms-normalised with `norm`.
void hc_pre_finish(const ModelConfig& c, const HcWeights& hw, const float* x, float ss, float* mix, const float* norm,
                   float* a, float* post, float* comb) {
  const int hc = c.hc_mult, D = c.dim, HD = hc * D;
  const float eps = static_cast<float>(c.hc_eps);
  const float r = 1.0f / std::sqrt(ss / static_cast<float>(HD) + static_cast<float>(c.norm_eps));
  for (int j = 0; j < hw.mix; ++j) mix[j] *= r;
  float pre[16];
  for (int j = 0; j < hc; ++j) {
    pre[j] = sigmoid(mix[j] * hw.scale[0] + hw.base[j]) + eps;
    post[j] = 2.0f * sigmoid(mix[hc + j] * hw.scale[1] + hw.base[hc + j]);
  }
  float* C = comb;  // [hc][hc], row j, column k
  for (int j = 0; j < hc; ++j)
    for (int k = 0; k < hc; ++k) {
      const int idx = 2 * hc + hc * j + k;
      C[j * hc + k] = mix[idx] * hw.scale[2] + hw.base[idx];
    }
  hc_sinkhorn(C, hc, c.hc_sinkhorn_iters, eps);
  // Stream by stream over all d (vectorisable); per element still pre_0 x_0 + pre_1 x_1 + ...
  std::fill(a, a + D, 0.0f);
  for (int j = 0; j < hc; ++j) {
    const float pj = pre[j];
    const float* xj = x + static_cast<size_t>(j) * D;
    for (int d = 0; d < D; ++d) a[d] += pj * xj[d];
  }
  for (int d = 0; d < D; ++d) a[d] = bf16_round(a[d]);
  rms_norm(a, norm, D, static_cast<float>(c.norm_eps), a);
}

float softplus(float v) { return v > 20.0f ? v : std::log1p(std::exp(v)); }

// Indices of the k largest values, descending, equal values by ascending index.
void topk_desc(const float* v, int n, int k, int32_t* out) {
  std::vector<int32_t> idx(static_cast<size_t>(n));
  std::iota(idx.begin(), idx.end(), 0);
  auto cmp = [&](int32_t a, int32_t b) { return v[a] > v[b] || (v[a] == v[b] && a < b); };
  std::partial_sort(idx.begin(), idx.begin() + k, idx.end(), cmp);
  std::copy(idx.begin(), idx.begin() + k, out);
}

}  // namespace

void RopeTable::init(int rope_dim, double base, bool yarn, double factor, int64_t original_seq_len, double beta_fast,
                     double beta_slow) {
  const int half = rope_dim / 2;
  freq.resize(static_cast<size_t>(half));
  for (int i = 0; i < half; ++i) {
    const float expo = static_cast<float>(2 * i) / static_cast<float>(rope_dim);
    freq[static_cast<size_t>(i)] = 1.0f / static_cast<float>(std::pow(base, static_cast<double>(expo)));
  }
  if (yarn && original_seq_len > 0) {
    auto corr = [&](double rot) {
      return rope_dim * std::log(static_cast<double>(original_seq_len) / (rot * 2 * M_PI)) / (2 * std::log(base));
    };
    double low = std::max(std::floor(corr(beta_fast)), 0.0);
    double high = std::min(std::ceil(corr(beta_slow)), static_cast<double>(rope_dim - 1));
    if (low == high) high += 0.001;
    for (int i = 0; i < half; ++i) {
      const float ramp = static_cast<float>(std::clamp((i - low) / (high - low), 0.0, 1.0));
      const float f = freq[static_cast<size_t>(i)];
      freq[static_cast<size_t>(i)] = f / static_cast<float>(factor) * ramp + f * (1.0f - ramp);
    }
  }
}

void RopeTable::angles(int64_t pos, float* cs, float* sn) const {
  for (size_t i = 0; i < freq.size(); ++i) {
    const float ang = static_cast<float>(pos) * freq[i];  // fp32 product, as the reference
    cs[i] = static_cast<float>(std::cos(static_cast<double>(ang)));
    sn[i] = static_cast<float>(std::sin(static_cast<double>(ang)));
  }
}

Model::Model(const std::string& dir, int threads) {
  const std::filesystem::path d(dir);
  if (!std::filesystem::is_directory(d)) throw Error(dir + ": not a model directory");
  cfg_ = ModelConfig::from_file((d / "config.json").string());
  store_ = TensorStore::open_dir(dir);
  w_ = bind_weights(cfg_, store_);
  pool_ = std::make_unique<ThreadPool>(threads);
  rope_swa_.init(cfg_.rope_dim, cfg_.rope_theta, false, 1, 0, 0, 0);
  rope_compressed_.init(cfg_.rope_dim, cfg_.compress_rope_theta, true, cfg_.rope_factor, cfg_.original_seq_len,
                        cfg_.beta_fast, cfg_.beta_slow);
}

Model::~Model() = default;

bool Model::prefault_weights(bool verbose) {
  const size_t bytes = store_.total_bytes();
  // Worth it whenever the weights fit in RAM with room to spare: decode then never stalls on a
  // page fault the first time an expert is used. Larger checkpoints stay purely on demand.
  const long pages = ::sysconf(_SC_PHYS_PAGES), page = ::sysconf(_SC_PAGESIZE);
  bool want = pages > 0 && page > 0 && static_cast<double>(bytes) < 0.8 * static_cast<double>(pages) * page;
  if (const char* e = std::getenv("DSV4_PREFAULT"); e && *e) want = std::string(e) != "0";
  if (!want) return false;
  const auto t0 = std::chrono::steady_clock::now();
  store_.prefault([&](size_t done, size_t total) {
    if (verbose) std::fprintf(stderr, "\rmapping weights: %5.1f of %.1f GB", done / 1e9, total / 1e9);
  });
  if (verbose)
    std::fprintf(stderr, " (%.1f s)\n",
                 std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
  // A checkpoint written shortly before (downloaded, copied) sits in the page cache in 4 KiB
  // pages; read it again in 2 MiB ones (TensorStore::reload_small_pages). DSV4_PAGE_RELOAD=0
  // leaves the cache as it is.
  if (const char* e = std::getenv("DSV4_PAGE_RELOAD"); !(e && std::string(e) == "0")) {
    const auto t1 = std::chrono::steady_clock::now();
    const size_t again = store_.reload_small_pages([&](size_t done, size_t total) {
      if (verbose)
        std::fprintf(stderr, "\rweights cached in 4 KiB pages, reading them again in 2 MiB pages: %5.1f of %.1f GB",
                     done / 1e9, total / 1e9);
    });
    if (verbose && again > 0)
      std::fprintf(stderr, " (%.1f s)\n", std::chrono::duration<double>(std::chrono::steady_clock::now() - t1).count());
  }
  return true;
}

const RopeTable& Model::rope_for(int layer_id) const {
  return cfg_.ratio(layer_id) == 0 ? rope_swa_ : rope_compressed_;
}

static void init_layer_state(const ModelConfig& c, int layer_id, LayerState& ls) {
  ls.window.init(c.nope_dim(), c.rope_dim);
  ls.window.resize(c.window);
  ls.compressed.init(c.nope_dim(), c.rope_dim);
  ls.index_keys.init(c.index_head_dim);
  const int r = c.ratio(layer_id);
  if (r > 0) ls.compressor.init(r, (r == 4 ? 2 : 1) * c.head_dim);
  if (r == 4) ls.index_compressor.init(4, 2 * c.index_head_dim);
}

SequenceState Model::new_state() const {
  SequenceState s;
  s.layers.resize(static_cast<size_t>(cfg_.n_layers));
  for (int i = 0; i < cfg_.n_layers; ++i) init_layer_state(cfg_, i, s.layers[static_cast<size_t>(i)]);
  return s;
}

SequenceState Model::new_mtp_state() const {
  SequenceState s;
  s.layers.resize(static_cast<size_t>(cfg_.n_mtp_layers));
  for (int i = 0; i < cfg_.n_mtp_layers; ++i) init_layer_state(cfg_, cfg_.n_layers + i, s.layers[static_cast<size_t>(i)]);
  return s;
}

void Model::compress(const CompressorWeights& cw, std::span<const Segment> segs, const float* x, int n, bool indexer) {
  const int r = cw.ratio, Dc = cw.out_dim, width = cw.wkv.n;
  const bool overlap = cw.overlap();
  StageTimer timer(Stage::kCompressor);
  float* const a = scratch_.comp_a.grown(static_cast<size_t>(n) * width);
  float* const z = scratch_.comp_z.grown(static_cast<size_t>(n) * width);
  const GemmItem<Bf16Weight> products[] = {{x, n, &cw.wkv, a}, {x, n, &cw.wgate, z}};
  gemm_bf16_f32_batch(products, *pool_);
  const int cur0 = overlap ? 4 : 0;
  std::vector<float> u(static_cast<size_t>(Dc)), row(static_cast<size_t>(Dc));
  std::vector<float> cosv(static_cast<size_t>(cfg_.rope_dim / 2)), sinv(cosv.size());
  std::vector<uint8_t> codes(static_cast<size_t>(Dc)), scales(static_cast<size_t>(Dc / 32 + 1));
  for (const Segment& sg : segs) {
    LayerState& ls = *sg.ls;
    CompressorState& cs = indexer ? ls.index_compressor : ls.compressor;
    if (cs.width != width)
      throw Error("compressor state width " + std::to_string(cs.width) + " does not match its weights (" +
                  std::to_string(width) + ")");
    for (int t = sg.t0; t < sg.t0 + sg.n; ++t) {
      const int64_t p = sg.start + (t - sg.t0);
      const int i = static_cast<int>(p % r);
      float* kv_slot = cs.kv.data() + static_cast<size_t>(cur0 + i) * width;
      float* sc_slot = cs.score.data() + static_cast<size_t>(cur0 + i) * width;
      const float* ape = cw.ape + static_cast<size_t>(i) * width;
      for (int ch = 0; ch < width; ++ch) {
        kv_slot[ch] = a[static_cast<size_t>(t) * width + ch];
        sc_slot[ch] = z[static_cast<size_t>(t) * width + ch] + ape[ch];
      }
      if (i != r - 1) continue;
      // Pool the block: per-channel softmax over the candidate tokens.
      const int64_t j = p / r;
      for (int ch = 0; ch < Dc; ++ch) {
        float cand_kv[16], cand_sc[16];
        int nc = 0;
        if (overlap) {
          for (int s = 0; s < 4; ++s) {
            cand_kv[nc] = cs.kv[static_cast<size_t>(s) * width + ch];
            cand_sc[nc++] = cs.score[static_cast<size_t>(s) * width + ch];
          }
          for (int s = 4; s < 8; ++s) {
            cand_kv[nc] = cs.kv[static_cast<size_t>(s) * width + Dc + ch];
            cand_sc[nc++] = cs.score[static_cast<size_t>(s) * width + Dc + ch];
          }
          float m = kNegInf;
          for (int q = 0; q < nc; ++q) m = std::max(m, cand_sc[q]);
          float e[16], sum = 0.0f;
          for (int q = 0; q < nc; ++q) sum += (e[q] = std::exp(cand_sc[q] - m));
          float acc = 0.0f;
          for (int q = 0; q < nc; ++q) acc += (e[q] / sum) * cand_kv[q];
          u[static_cast<size_t>(ch)] = acc;
        } else {
          float m = kNegInf;
          for (int s = 0; s < r; ++s) m = std::max(m, cs.score[static_cast<size_t>(s) * width + ch]);
          float sum = 0.0f;
          for (int s = 0; s < r; ++s) sum += std::exp(cs.score[static_cast<size_t>(s) * width + ch] - m);
          float acc = 0.0f;
          for (int s = 0; s < r; ++s)
            acc += (std::exp(cs.score[static_cast<size_t>(s) * width + ch] - m) / sum) * cs.kv[static_cast<size_t>(s) * width + ch];
          u[static_cast<size_t>(ch)] = acc;
        }
      }
      for (int ch = 0; ch < Dc; ++ch) u[static_cast<size_t>(ch)] = bf16_round(u[static_cast<size_t>(ch)]);
      rms_norm(u.data(), cw.norm.data(), Dc, static_cast<float>(cfg_.norm_eps), row.data());
      rope_compressed_.angles(j * r, cosv.data(), sinv.data());
      apply_rope(row.data() + Dc - cfg_.rope_dim, cosv.data(), sinv.data(), cfg_.rope_dim / 2, false);
      if (indexer) {
        hadamard128(row.data());
        fp4_simulate_codes(row.data(), Dc, codes.data(), scales.data());
        ls.index_keys.append(codes.data(), scales.data());
      } else {
        const int nope = cfg_.nope_dim();
        act_quant_simulate_codes(row.data(), nope, 64, codes.data(), scales.data());
        ls.compressed.append(codes.data(), scales.data(), row.data() + nope);
      }
      if (overlap) {  // the completed block becomes the previous block
        std::copy(cs.kv.begin() + 4 * width, cs.kv.end(), cs.kv.begin());
        std::copy(cs.score.begin() + 4 * width, cs.score.end(), cs.score.begin());
      }
    }
  }
}

void Model::attention(const BlockWeights& bw, LayerState& ls, const float* x, int n, int64_t start, float* out,
                      BlockProbe* probe) {
  const Segment seg{&ls, start, 0, n};
  attention_segments(bw, {&seg, 1}, x, n, out, probe);
}

void Model::attention_segments(const BlockWeights& bw, std::span<const Segment> segs, const float* x, int n, float* out,
                               BlockProbe* probe) {
  const ModelConfig& c = cfg_;
  const AttentionWeights& aw = bw.attn;
  const int H = c.n_heads, Dh = c.head_dim, Dr = c.rope_dim, Dn = c.nope_dim(), W = c.window;
  const int r = c.ratio(bw.layer_id);
  const RopeTable& rope = rope_for(bw.layer_id);
  const float eps = static_cast<float>(c.norm_eps);
  const size_t N = static_cast<size_t>(n);
  // Each row's position and segment (rows of different sequences share only the products).
  std::vector<int64_t> pos(N);
  std::vector<int> seg_of(N);
  for (size_t si = 0; si < segs.size(); ++si)
    for (int t = segs[si].t0; t < segs[si].t0 + segs[si].n; ++t) {
      pos[static_cast<size_t>(t)] = segs[si].start + (t - segs[si].t0);
      seg_of[static_cast<size_t>(t)] = static_cast<int>(si);
    }

  // Projections (§6.1).
  StageTimer project_timer(Stage::kAttnProject);
  float* const qr = scratch_.qr.grown(N * c.q_lora_rank);
  float* const kv = scratch_.kv.grown(N * Dh);
  {  // both read x: one pool job
    const GemmItem<Fp8Weight> items[] = {{x, n, &aw.wq_a, qr}, {x, n, &aw.wkv, kv}};
    gemm_fp8_batch(items, *pool_);
  }
  parallel_each(*pool_, n, [&](int64_t t) {
    float* row = qr + static_cast<size_t>(t) * c.q_lora_rank;
    rms_norm(row, aw.q_norm.data(), c.q_lora_rank, eps, row);
  }, 8);
  float* const q = scratch_.q.grown(N * H * Dh);
  gemm_fp8(qr, n, aw.wq_b, q, *pool_);
  std::vector<float> cos_t(N * Dr / 2), sin_t(N * Dr / 2);
  parallel_each(*pool_, n, [&](int64_t t) {
    rope.angles(pos[static_cast<size_t>(t)], &cos_t[static_cast<size_t>(t) * Dr / 2], &sin_t[static_cast<size_t>(t) * Dr / 2]);
  }, 8);
  uint8_t* const kv_codes = scratch_.kv_codes.grown(N * Dn);
  uint8_t* const kv_scales = scratch_.kv_scales.grown(N * (Dn / 64));
  pool_->parallel_for(n, [&](int64_t t0, int64_t t1) {
    for (int64_t t = t0; t < t1; ++t) {
      const float* cs = &cos_t[static_cast<size_t>(t) * Dr / 2];
      const float* sn = &sin_t[static_cast<size_t>(t) * Dr / 2];
      q_head_norm_bf16(q + static_cast<size_t>(t) * H * Dh, H, Dh, eps);
      for (int h = 0; h < H; ++h) apply_rope(q + (static_cast<size_t>(t) * H + h) * Dh + Dn, cs, sn, Dr / 2, false);
      float* k = kv + static_cast<size_t>(t) * Dh;
      rms_norm(k, aw.kv_norm.data(), Dh, eps, k);
      apply_rope(k + Dn, cs, sn, Dr / 2, false);
      act_quant_simulate_codes(k, Dn, 64, &kv_codes[static_cast<size_t>(t) * Dn], &kv_scales[static_cast<size_t>(t) * (Dn / 64)]);
    }
  });

  project_timer.stop();
  // Compressors emit every row completed inside this call (§6.3); visibility is by position.
  if (r > 0) compress(aw.compressor, segs, x, n, false);

  // Lightning indexer (§6.4): top-k compressed rows per query.
  const int topk_cap = c.index_topk;
  int32_t* topk = nullptr;  // [n, topk_cap], -1 padded
  std::vector<int> topk_count(N, 0);
  if (r == 4) {
    compress(aw.idx_compressor, segs, x, n, true);
    StageTimer indexer_timer(Stage::kIndexer);
    const int IH = c.index_n_heads, ID = c.index_head_dim;
    float* const qi = scratch_.qi.grown(N * IH * ID);
    float* const wts = scratch_.wts.grown(N * IH);
    gemm_fp8(qr, n, aw.idx_wq_b, qi, *pool_);
    gemm_bf16_f32(x, n, aw.idx_weights_proj, wts, *pool_);
    const float wscale = static_cast<float>(1.0 / std::sqrt(static_cast<double>(ID)) / std::sqrt(static_cast<double>(IH)));
    // Queries as FP4 codes: the scores are taken in exact integer arithmetic (index_score.h).
    if (ID != kIndexDim) throw Error("indexer head dim " + std::to_string(ID) + " is not " + std::to_string(kIndexDim));
    uint8_t* const qcodes = scratch_.qcodes.grown(N * IH * ID / 2);
    uint8_t* const qscales = scratch_.qscales.grown(N * IH * ID / 32);
    // Token x head items: a decode step's 64 heads are spread over the pool as well.
    parallel_each(*pool_, static_cast<int64_t>(n) * IH, [&](int64_t item) {
      const int64_t t = item / IH;
      const size_t th = static_cast<size_t>(item);
      wts[th] = bf16_round(bf16_round(wts[th]) * wscale);
      float* v = qi + th * ID;
      apply_rope(v + ID - Dr, &cos_t[static_cast<size_t>(t) * Dr / 2], &sin_t[static_cast<size_t>(t) * Dr / 2], Dr / 2, false);
      hadamard128(v);
      fp4_simulate_codes(v, ID, &qcodes[th * ID / 2], &qscales[th * ID / 32]);
    }, 8);
    auto keys_of = [&](int64_t t) {
      const IndexKeyStore& ks = segs[static_cast<size_t>(seg_of[static_cast<size_t>(t)])].ls->index_keys;
      return ks.rows() > 0 ? ks.row_data(0) : nullptr;
    };
    auto query = [&](int64_t t) {
      const size_t th = static_cast<size_t>(t) * IH;
      return IndexQuery{IH, &qcodes[th * ID / 2], &qscales[th * ID / 32], wts + th};
    };
    auto select = [&](int64_t t, std::vector<float>& score) {
      const int64_t vis = static_cast<int64_t>(score.size());
      const int k = static_cast<int>(std::min<int64_t>(topk_cap, vis));
      topk_desc(score.data(), static_cast<int>(vis), k, &topk[static_cast<size_t>(t) * topk_cap]);
      topk_count[static_cast<size_t>(t)] = k;
    };
    topk = scratch_.topk.grown(N * topk_cap);
    std::fill(topk, topk + N * topk_cap, -1);
    if (n >= pool_->size()) {  // prefill (or a batch of sequences): one query per task
      pool_->parallel_for(n, [&](int64_t t0, int64_t t1) {
        std::vector<float> score;
        for (int64_t t = t0; t < t1; ++t) {
          score.resize(static_cast<size_t>((pos[static_cast<size_t>(t)] + 1) / 4));
          index_scores(query(t), keys_of(t), 0, static_cast<int64_t>(score.size()), score.data());
          select(t, score);
        }
      });
    } else {  // decode: the keys of each query split over the pool
      std::vector<float> score;
      for (int64_t t = 0; t < n; ++t) {
        score.resize(static_cast<size_t>((pos[static_cast<size_t>(t)] + 1) / 4));
        const IndexQuery q = query(t);
        const uint8_t* keys = keys_of(t);
        pool_->parallel_for(static_cast<int64_t>(score.size()), [&](int64_t j0, int64_t j1) {
          index_scores(q, keys, j0, j1, score.data() + j0);
        }, 256);
        select(t, score);
      }
    }
    if (probe) probe->indexer_topk.insert(probe->indexer_topk.end(), topk, topk + N * topk_cap);
  }

  StageTimer core_timer(Stage::kAttnCore);
  float* const o = scratch_.o.grown(N * H * Dh);
  const float scale = 1.0f / std::sqrt(static_cast<float>(Dh));
  std::vector<const float*> rows;
  std::vector<float> sel_rows;
  for (const Segment& sg : segs) {
    LayerState& ls = *sg.ls;
    const int64_t start = sg.start;
    const int sn_rows = sg.n;
    // Window rows: earlier positions come from the ring, this segment's from the fresh kv.
    const int64_t wstart = std::max<int64_t>(0, start - (W - 1));
    const int64_t nwin = start + sn_rows - wstart;
    float* const win = scratch_.win.grown(static_cast<size_t>(nwin) * Dh);
    // (row decodes are independent: split over the pool, as the selected rows below)
    pool_->parallel_for(start - wstart, [&](int64_t i0, int64_t i1) {
      for (int64_t i = i0; i < i1; ++i) ls.window.load((wstart + i) % W, &win[static_cast<size_t>(i) * Dh]);
    }, 32);
    const float* const kv_seg = kv + static_cast<size_t>(sg.t0) * Dh;
    std::copy(kv_seg, kv_seg + static_cast<size_t>(sn_rows) * Dh, win + (start - wstart) * Dh);
    // HCA attends to every visible compressed row: decode them once per segment.
    float* comp_rows = nullptr;
    if (r == 128) {
      comp_rows = scratch_.comp_rows.grown(static_cast<size_t>(ls.compressed.rows()) * Dh);
      pool_->parallel_for(ls.compressed.rows(), [&](int64_t j0, int64_t j1) {
        for (int64_t j = j0; j < j1; ++j) ls.compressed.load(j, &comp_rows[static_cast<size_t>(j) * Dh]);
      }, 32);
    }

    // Sparse attention with sink (§6.2), online softmax over blocks of 64 indices as the reference kernel.
    const int wlen = start == 0 ? std::min(sn_rows, W) : W;  // window part of the index list
    for (int t = sg.t0; t < sg.t0 + sn_rows; ++t) {
      const int64_t p = pos[static_cast<size_t>(t)];
      rows.assign(static_cast<size_t>(wlen), nullptr);
      const int64_t first = std::max<int64_t>(0, p - (W - 1));
      for (int64_t q0 = first; q0 <= p; ++q0) rows[static_cast<size_t>(q0 - first)] = &win[static_cast<size_t>(q0 - wstart) * Dh];
      if (r == 128) {
        const int64_t vis = (p + 1) / r;
        for (int64_t j = 0; j < vis; ++j) rows.push_back(&comp_rows[static_cast<size_t>(j) * Dh]);
      } else if (r == 4) {
        const int k = topk_count[static_cast<size_t>(t)];
        sel_rows.resize(static_cast<size_t>(k) * Dh);
        const int32_t* sel = &topk[static_cast<size_t>(t) * topk_cap];
        pool_->parallel_for(k, [&](int64_t i0, int64_t i1) {
          for (int64_t i = i0; i < i1; ++i) ls.compressed.load(sel[i], &sel_rows[static_cast<size_t>(i) * Dh]);
        }, 32);
        for (int i = 0; i < k; ++i) rows.push_back(&sel_rows[static_cast<size_t>(i) * Dh]);
      }
      const float* cs = &cos_t[static_cast<size_t>(t) * Dr / 2];
      const float* sn = &sin_t[static_cast<size_t>(t) * Dr / 2];
      // Row blocks outside, heads inside: a block of 64 rows (128 KiB) stays in cache while every
      // head of this thread takes it, instead of each head streaming all rows again (640 rows are
      // 1.3 MiB, more than L2). Each head's operations and their order are unchanged.
      const int64_t heads_per_thread = (H + pool_->size() - 1) / pool_->size();
      pool_->parallel_for(H, [&](int64_t h0, int64_t h1) {
        float* ot = o + static_cast<size_t>(t) * H * Dh;
        sparse_attention_heads(q + static_cast<size_t>(t) * H * Dh, static_cast<int>(h0), static_cast<int>(h1), Dh, rows.data(),
                               rows.size(), scale, aw.sink, ot);
        for (int64_t h = h0; h < h1; ++h)
          apply_rope(ot + static_cast<size_t>(h) * Dh + Dn, cs, sn, Dr / 2, true);  // V = K carries the rotation: undo it
      }, heads_per_thread);
    }

    // The ring keeps the last W positions (written after attending, see the ring hazard in §7.3).
    for (int64_t p = std::max<int64_t>(start, start + sn_rows - W); p < start + sn_rows; ++p) {
      const size_t t = static_cast<size_t>(sg.t0) + static_cast<size_t>(p - start);
      ls.window.set(p % W, &kv_codes[t * Dn], &kv_scales[t * (Dn / 64)], &kv[t * Dh + Dn]);
    }
  }

  core_timer.stop();
  // Grouped low-rank output projection (§6.5): wo_a per group as bf16, then wo_b as FP8.
  StageTimer out_timer(Stage::kAttnOut);
  const int G = c.o_groups, R = c.o_lora_rank, gin = H / G * Dh;
  float* const u = scratch_.u.grown(N * G * R);
  std::vector<Fp8RowsItem> groups;  // all groups in one pool job
  for (int g = 0; g < G; ++g)
    groups.push_back({o + static_cast<size_t>(g) * gin, n, H * Dh, &aw.wo_a, g * R, (g + 1) * R,
                      u + static_cast<size_t>(g) * R, G * R});
  gemm_fp8_as_bf16_rows_batch(groups, *pool_);
  gemm_fp8(u, n, aw.wo_b, out, *pool_);
}

void Model::moe(const MoeWeights& mw, int layer_id, const float* x, const int32_t* tokens, int n, float* out,
                BlockProbe* probe) {
  const ModelConfig& c = cfg_;
  const int E = c.n_routed_experts, K = c.n_activated_experts, D = c.dim, I = c.moe_inter_dim;
  const size_t N = static_cast<size_t>(n);
  StageTimer gate_timer(Stage::kMoeGate);
  std::vector<float> logits(N * E);
  gemm_bf16_f32(x, n, mw.gate, logits.data(), *pool_);
  std::vector<int32_t> ids(N * K);
  std::vector<float> wts(N * K);
  pool_->parallel_for(n, [&](int64_t t0, int64_t t1) {  // tokens route independently
    std::vector<float> score(static_cast<size_t>(E)), biased(static_cast<size_t>(E));
    for (int64_t t = t0; t < t1; ++t) {
      for (int e = 0; e < E; ++e) score[static_cast<size_t>(e)] = std::sqrt(softplus(logits[static_cast<size_t>(t) * E + e]));
      int32_t* id = &ids[static_cast<size_t>(t) * K];
      if (layer_id < c.n_hash_layers) {
        std::copy_n(&mw.tid2eid[static_cast<size_t>(tokens[t]) * K], K, id);
      } else {
        for (int e = 0; e < E; ++e) biased[static_cast<size_t>(e)] = score[static_cast<size_t>(e)] + mw.bias[e];
        topk_desc(biased.data(), E, K, id);
      }
      float sum = 0.0f;
      for (int k = 0; k < K; ++k) sum += score[static_cast<size_t>(id[k])];
      for (int k = 0; k < K; ++k)
        wts[static_cast<size_t>(t) * K + k] = score[static_cast<size_t>(id[k])] / sum * static_cast<float>(c.route_scale);
    }
  }, 8);
  if (probe) {
    probe->expert_ids.insert(probe->expert_ids.end(), ids.begin(), ids.end());
    probe->expert_weights.insert(probe->expert_weights.end(), wts.begin(), wts.end());
  }

  gate_timer.stop();
  StageTimer experts_timer(Stage::kExperts);
  const float limit = static_cast<float>(c.swiglu_limit);
  // SwiGLU with clamps (§8.2); `weight` (routed experts) is applied before the down projection.
  auto swiglu = [&](const float* g, const float* up, const float* weight, int m, float* hdn) {
    // A row's exp(-g) in one exp_f32 call (the SIMD paths: std::exp's bits), then the rest.
    parallel_each(*pool_, m, [&](int64_t t) {
      thread_local std::vector<float> e;
      e.resize(static_cast<size_t>(I));
      const float* gt = g + static_cast<size_t>(t) * I;
      for (int i = 0; i < I; ++i) e[static_cast<size_t>(i)] = -(limit > 0 ? std::min(gt[i], limit) : gt[i]);
      exp_f32(e.data(), e.data(), I);
      for (int i = 0; i < I; ++i) {
        float gv = gt[i], uv = up[static_cast<size_t>(t) * I + i];
        if (limit > 0) {
          uv = std::clamp(uv, -limit, limit);
          gv = std::min(gv, limit);
        }
        float h = gv / (1.0f + e[static_cast<size_t>(i)]) * uv;
        if (weight) h *= weight[t];
        hdn[static_cast<size_t>(t) * I + i] = bf16_round(h);
      }
    }, 4);
  };

  float* const y = moe_scratch_.y.grown(N * D);
  pool_->parallel_for(static_cast<int64_t>(N * D), [&](int64_t i0, int64_t i1) { std::fill(y + i0, y + i1, 0.0f); }, 1 << 16);
  // The routed rows grouped by expert: increasing e, each expert's rows in token order. (An id
  // outside [0, E) cannot come from the router or the checked tid2eid; it would be skipped.)
  std::vector<size_t> first(static_cast<size_t>(E) + 1, 0);
  for (size_t i = 0; i < N * K; ++i)
    if (ids[i] >= 0 && ids[i] < E) ++first[static_cast<size_t>(ids[i]) + 1];
  for (int e = 0; e < E; ++e) first[static_cast<size_t>(e) + 1] += first[static_cast<size_t>(e)];
  std::vector<int> row_token(first[static_cast<size_t>(E)]);
  std::vector<float> row_weight(row_token.size());
  {
    std::vector<size_t> fill(first.begin(), first.end() - 1);
    for (int t = 0; t < n; ++t)
      for (int k = 0; k < K; ++k) {
        const int e = ids[static_cast<size_t>(t) * K + k];
        if (e < 0 || e >= E) continue;
        const size_t r = fill[static_cast<size_t>(e)]++;
        row_token[r] = t;
        row_weight[r] = wts[static_cast<size_t>(t) * K + k];
      }
  }
  // Experts in batches of up to kExpertBatchRows routed rows (at least one expert): each batch's
  // w1 and w3 products in one pool job, then its w2 products in another, instead of three jobs
  // per expert. Every product, and each y element's sum over experts and rows, is the same.
  MoeScratch& sc = moe_scratch_;
  float *xe = nullptr, *g = nullptr, *up = nullptr, *hdn = nullptr, *oe = nullptr;
  std::vector<GemmItem<Fp4Weight>> expert_jobs;
  for (int e0 = 0; e0 < E;) {
    int e1 = e0 + 1;
    while (e1 < E && first[static_cast<size_t>(e1) + 1] - first[static_cast<size_t>(e0)] <= kExpertBatchRows) ++e1;
    const size_t r0 = first[static_cast<size_t>(e0)], rows = first[static_cast<size_t>(e1)] - r0;
    if (rows == 0) {
      e0 = e1;
      continue;
    }
    const int m_all = static_cast<int>(rows);
    xe = sc.xe.grown(rows * D);  // (every element below is written before it is read)
    g = sc.g.grown(rows * I);
    up = sc.up.grown(rows * I);
    hdn = sc.hdn.grown(rows * I);
    oe = sc.oe.grown(rows * D);
    parallel_each(*pool_, m_all, [&](int64_t i) {
      std::copy_n(x + static_cast<size_t>(row_token[r0 + static_cast<size_t>(i)]) * D, D, &xe[static_cast<size_t>(i) * D]);
    }, 16);
    auto expert_items = [&](bool down) {
      expert_jobs.clear();
      for (int e = e0; e < e1; ++e) {
        const size_t b = first[static_cast<size_t>(e)] - r0;
        const int m = static_cast<int>(first[static_cast<size_t>(e) + 1] - first[static_cast<size_t>(e)]);
        if (m == 0) continue;
        const ExpertWeights& ew = mw.experts[static_cast<size_t>(e)];
        if (down) {
          expert_jobs.push_back({&hdn[b * I], m, &ew.w2, &oe[b * D]});
        } else {
          // w1 and w3 share x, and so do experts with one row of the same token (every routed
          // expert in decode): the GEMM prepares activations once per distinct pointer.
          const float* xm = m == 1 ? x + static_cast<size_t>(row_token[r0 + b]) * D : &xe[b * D];
          expert_jobs.push_back({xm, m, &ew.w1, &g[b * I]});
          expert_jobs.push_back({xm, m, &ew.w3, &up[b * I]});
        }
      }
      gemm_fp4_batch(expert_jobs, *pool_);
    };
    expert_items(false);
    swiglu(g, up, &row_weight[r0], m_all, hdn);
    expert_items(true);
    // Split over channels, not rows: each y element still adds its rows in the serial order.
    // A few rows (decode) stay on this thread: waking the pool would cost more than the adds.
    pool_->parallel_for(D, [&](int64_t d0, int64_t d1) {
      for (size_t i = 0; i < rows; ++i) {
        float* yt = &y[static_cast<size_t>(row_token[r0 + i]) * D];
        for (int64_t d = d0; d < d1; ++d) yt[d] += oe[i * D + static_cast<size_t>(d)];
      }
    }, std::max(256, (1 << 16) / m_all));
    e0 = e1;
  }
  experts_timer.stop();
  StageTimer shared_timer(Stage::kSharedExpert);
  if (mw.has_shared) {
    g = sc.g.grown(N * I);
    up = sc.up.grown(N * I);
    hdn = sc.hdn.grown(N * I);
    oe = sc.oe.grown(N * D);
    const GemmItem<Fp8Weight> items[] = {{x, n, &mw.shared.w1, g}, {x, n, &mw.shared.w3, up}};
    gemm_fp8_batch(items, *pool_);
    swiglu(g, up, nullptr, n, hdn);
    gemm_fp8(hdn, n, mw.shared.w2, oe, *pool_);
  }
  // The shared expert's output is added last, then each element is rounded once.
  parallel_each(*pool_, n, [&](int64_t t) {
    for (size_t i = static_cast<size_t>(t) * D; i < static_cast<size_t>(t + 1) * D; ++i)
      out[i] = bf16_round(mw.has_shared ? y[i] + oe[i] : y[i]);
  }, 8);
}

void Model::run_block(const BlockWeights& bw, LayerState& ls, float* h, const int32_t* tokens, int n, int64_t start,
                      BlockProbe* probe) {
  const Segment seg{&ls, start, 0, n};
  run_block_segments(bw, {&seg, 1}, h, tokens, n, probe);
}

void Model::run_block_segments(const BlockWeights& bw, std::span<const Segment> segs, float* h, const int32_t* tokens,
                               int n, BlockProbe* probe) {
  const ModelConfig& c = cfg_;
  const int D = c.dim, hc = c.hc_mult;
  const size_t N = static_cast<size_t>(n);
  // (a: the sites' inputs, f: their outputs; every element written before it is read.)
  float* const a = block_scratch_.a.grown(N * D);
  float* const f = block_scratch_.f.grown(N * D);
  std::vector<float> post(N * hc), comb(N * hc * hc);
  std::vector<float> ss(N), mix;
  auto site = [&](const HcWeights& hw, const std::vector<float>& norm, auto&& body, std::vector<float>* in_probe,
                  std::vector<float>* out_probe) {
    StageTimer pre_timer(Stage::kHyperConn);
    const int parts = hc_pre_parts(hw), M = hw.mix;
    mix.resize(N * static_cast<size_t>(M));
    if (n < kHcTokensPerItem) {
      // Token x part items: a decode step's one token still keeps every thread busy.
      pool_->parallel_for(static_cast<int64_t>(n) * parts, [&](int64_t i0, int64_t i1) {
        for (int64_t i = i0; i < i1; ++i) {
          const int64_t t = i / parts;
          hc_pre_part(hw, hc * D, h + static_cast<size_t>(t) * hc * D, static_cast<int>(i % parts),
                      &ss[static_cast<size_t>(t)], &mix[static_cast<size_t>(t) * M]);
        }
      });
    } else {  // prefill: tokens in the vector lanes, the same chains
      const int64_t items = (n + kHcTokensPerItem - 1) / kHcTokensPerItem;
      pool_->parallel_for(items, [&](int64_t i0, int64_t i1) {
        for (int64_t i = i0; i < i1; ++i) {
          const int t0 = static_cast<int>(i) * kHcTokensPerItem, count = std::min(kHcTokensPerItem, n - t0);
          hc_mix_tokens(hw.fn, M, hc * D, h + static_cast<size_t>(t0) * hc * D, count, &ss[static_cast<size_t>(t0)],
                        &mix[static_cast<size_t>(t0) * M]);
        }
      });
    }
    pool_->parallel_for(n, [&](int64_t t0, int64_t t1) {
      for (int64_t t = t0; t < t1; ++t)
        hc_pre_finish(c, hw, h + static_cast<size_t>(t) * hc * D, ss[static_cast<size_t>(t)], &mix[static_cast<size_t>(t) * M],
                      norm.data(), &a[static_cast<size_t>(t) * D], &post[static_cast<size_t>(t) * hc],
                      &comb[static_cast<size_t>(t) * hc * hc]);
    });
    pre_timer.stop();
    if (in_probe) in_probe->insert(in_probe->end(), a, a + N * D);
    body();
    if (out_probe) out_probe->insert(out_probe->end(), f, f + N * D);
    StageTimer post_timer(Stage::kHyperConn);
    constexpr int kPostSpan = 1024;  // elements per item: a decode step's token spread over the pool
    const int spans = (D + kPostSpan - 1) / kPostSpan;
    pool_->parallel_for(static_cast<int64_t>(n) * spans, [&](int64_t i0, int64_t i1) {
      for (int64_t i = i0; i < i1; ++i) {
        const int64_t t = i / spans;
        const int d0 = static_cast<int>(i % spans) * kPostSpan, d1 = std::min(D, d0 + kPostSpan);
        hc_post(&f[static_cast<size_t>(t) * D], &post[static_cast<size_t>(t) * hc], &comb[static_cast<size_t>(t) * hc * hc],
                h + static_cast<size_t>(t) * hc * D, hc, D, d0, d1);
      }
    });
  };
  // Attention takes a long chunk in pieces: its per-token buffers (queries and outputs, [n, heads,
  // 512] fp32, 128 KiB a token at V4-Flash widths) stay bounded however long the chunk, while the
  // MoE takes the whole chunk at once, where more rows per routed expert pay (forward). Any split
  // gives the same bits (pieces start past position 0 or are at least a window long, see the
  // window layout in attention()). Several sequences' rows (decode_batch: a few each) go in one call.
  const int piece = std::max(kAttentionPieceTokens, c.window);
  site(bw.hc_attn, bw.attn_norm, [&] {
    if (segs.size() != 1) {
      attention_segments(bw, segs, a, n, f, probe);
      return;
    }
    for (int t0 = 0; t0 < n; t0 += piece) {
      const size_t off = static_cast<size_t>(t0) * D;
      attention(bw, *segs[0].ls, a + off, std::min(piece, n - t0), segs[0].start + t0, f + off, probe);
    }
  }, probe ? &probe->attn_in : nullptr, probe ? &probe->attn_out : nullptr);
  site(bw.hc_ffn, bw.ffn_norm, [&] { moe(bw.moe, bw.layer_id, a, tokens, n, f, probe); },
       probe ? &probe->ffn_in : nullptr, probe ? &probe->ffn_out : nullptr);
}

void Model::head(const float* streams, const HcWeights& hc_head, const std::vector<float>& norm, float* logits,
                 float* normed_out) {
  head_rows(streams, 1, hc_head, norm, logits, normed_out);
}

void Model::head_rows(const float* streams, int rows, const HcWeights& hc_head, const std::vector<float>& norm,
                      float* logits, float* normed_out) {
  const ModelConfig& c = cfg_;
  const int hc = c.hc_mult, D = c.dim, HD = hc * D;
  StageTimer timer(Stage::kHead);
  std::vector<float> y(static_cast<size_t>(rows) * D);
  for (int i = 0; i < rows; ++i) {
    const float* st = streams + static_cast<size_t>(i) * HD;
    float* yi = &y[static_cast<size_t>(i) * D];
    float ss = 0.0f, pre[16], mix[16];
    hc_token_sums(hc_head.fn, HD, st, 0, hc + 1, &ss, mix);
    const float r = 1.0f / std::sqrt(ss / static_cast<float>(HD) + static_cast<float>(c.norm_eps));
    for (int j = 0; j < hc; ++j)
      pre[j] = sigmoid(mix[j] * r * hc_head.scale[0] + hc_head.base[j]) + static_cast<float>(c.hc_eps);
    for (int d = 0; d < D; ++d) {
      float acc = 0.0f;
      for (int j = 0; j < hc; ++j) acc += pre[j] * st[j * D + d];
      yi[d] = bf16_round(acc);
    }
    rms_norm(yi, norm.data(), D, static_cast<float>(c.norm_eps), yi);
  }
  if (normed_out) std::copy(y.begin(), y.end(), normed_out);
  if (logits) gemm_bf16_f32(y.data(), rows, w_.head, logits, *pool_);
}

static void check_tokens(const ModelConfig& c, const SequenceState& st, const int32_t* tokens, int n) {
  if (n <= 0) throw Error("forward: no tokens");
  for (int i = 0; i < n; ++i)
    if (tokens[i] < 0 || tokens[i] >= c.vocab_size)
      throw Error("token id " + std::to_string(tokens[i]) + " at index " + std::to_string(i) + " is outside the vocabulary [0, " +
                  std::to_string(c.vocab_size) + ")");
  if (st.pos + n > c.max_position_embeddings)
    throw Error("context overflow: " + std::to_string(st.pos + n) + " tokens exceed max_position_embeddings " +
                std::to_string(c.max_position_embeddings));
}

// Each token's embedding row, widened to fp32, in all hc residual streams: h [n, hc, D].
void Model::embed(const int32_t* tokens, int n, float* h) {
  const int D = cfg_.dim, hc = cfg_.hc_mult;
  StageTimer embed_timer(Stage::kEmbed);
  parallel_each(*pool_, n, [&](int64_t t) {
    const uint16_t* e = w_.embed.w + static_cast<size_t>(tokens[t]) * D;
    for (int j = 0; j < hc; ++j)
      for (int d = 0; d < D; ++d) h[(static_cast<size_t>(t) * hc + j) * D + d] = bf16_to_f32(e[d]);
  }, 8);
}

bool Model::forward(SequenceState& st, const int32_t* tokens, int n, float* logits, std::vector<float>* final_streams,
                    const LayerCallback& on_layer) {
  check_tokens(cfg_, st, tokens, n);
  if (st.layers.size() != static_cast<size_t>(cfg_.n_layers)) throw Error("forward: state does not belong to this model");
  const int D = cfg_.dim, hc = cfg_.hc_mult;
  const size_t stream_floats = static_cast<size_t>(n) * hc * D;
  float* const h = streams_.grown(stream_floats);  // (every element written below before it is read)
  embed(tokens, n, h);
  // A stoppable call keeps a snapshot to go back to (a few MiB: the window rings and partial
  // compressor blocks; compressed rows are only appended, and are cut back).
  std::optional<StateCheckpoint> before;
  if (on_layer) before = take_checkpoint(st);
  for (int l = 0; l < cfg_.n_layers; ++l) {
    run_block(w_.layers[static_cast<size_t>(l)], st.layers[static_cast<size_t>(l)], h, tokens, n, st.pos);
    if (on_layer && !on_layer(l + 1)) {
      restore_checkpoint(st, *before);
      return false;
    }
  }
  st.pos += n;
  if (logits) head(&h[static_cast<size_t>(n - 1) * hc * D], w_.hc_head, w_.norm, logits);
  if (final_streams) final_streams->assign(h, h + stream_floats);
  return true;
}

void Model::decode_batch(std::span<SequenceState* const> states, const int32_t* tokens, float* logits) {
  const int B = static_cast<int>(states.size());
  if (B == 0) return;
  for (int i = 0; i < B; ++i) {
    SequenceState& st = *states[static_cast<size_t>(i)];
    check_tokens(cfg_, st, &tokens[i], 1);
    if (st.layers.size() != static_cast<size_t>(cfg_.n_layers)) throw Error("decode_batch: a state does not belong to this model");
    for (int j = 0; j < i; ++j)
      if (states[static_cast<size_t>(j)] == &st) throw Error("decode_batch: the same sequence appears twice in one batch");
  }
  const int D = cfg_.dim, hc = cfg_.hc_mult;
  float* const h = streams_.grown(static_cast<size_t>(B) * hc * D);
  embed(tokens, B, h);
  std::vector<Segment> segs(static_cast<size_t>(B));
  for (int l = 0; l < cfg_.n_layers; ++l) {
    for (int i = 0; i < B; ++i) {
      SequenceState& st = *states[static_cast<size_t>(i)];
      segs[static_cast<size_t>(i)] = Segment{&st.layers[static_cast<size_t>(l)], st.pos, i, 1};
    }
    run_block_segments(w_.layers[static_cast<size_t>(l)], segs, h, tokens, B, nullptr);
  }
  for (SequenceState* st : states) ++st->pos;
  if (logits) head_rows(h, B, w_.hc_head, w_.norm, logits);
}

void Model::mtp_forward(SequenceState& st, const float* h_main, const int32_t* tokens, int n, float* logits,
                        std::vector<float>* final_streams) {
  if (w_.mtp.empty()) throw Error("this checkpoint has no MTP module");
  check_tokens(cfg_, st, tokens, n);
  const MtpWeights& m = w_.mtp[0];
  const int D = cfg_.dim, hc = cfg_.hc_mult;
  const size_t N = static_cast<size_t>(n);
  const float eps = static_cast<float>(cfg_.norm_eps);
  std::vector<float> e(N * D), hh(N * hc * D), ep(N * D), hp(N * hc * D);
  for (int t = 0; t < n; ++t) {
    const uint16_t* row = w_.embed.w + static_cast<size_t>(tokens[t]) * D;
    float* et = &e[static_cast<size_t>(t) * D];
    for (int d = 0; d < D; ++d) et[d] = bf16_to_f32(row[d]);
    rms_norm(et, m.enorm.data(), D, eps, et);
    for (int j = 0; j < hc; ++j)
      rms_norm(h_main + (static_cast<size_t>(t) * hc + j) * D, m.hnorm.data(), D, eps, &hh[(static_cast<size_t>(t) * hc + j) * D]);
  }
  gemm_fp8(e.data(), n, m.e_proj, ep.data(), *pool_);
  gemm_fp8(hh.data(), n * hc, m.h_proj, hp.data(), *pool_);
  std::vector<float> x(N * hc * D);
  for (int t = 0; t < n; ++t)
    for (int j = 0; j < hc; ++j)
      for (int d = 0; d < D; ++d) {
        const size_t i = (static_cast<size_t>(t) * hc + j) * D + d;
        x[i] = bf16_round(ep[static_cast<size_t>(t) * D + d] + hp[i]);
      }
  run_block(m.block, st.layers[0], x.data(), tokens, n, st.pos);
  st.pos += n;
  if (logits) head(&x[(N - 1) * hc * D], m.hc_head, m.norm, logits);
  if (final_streams) *final_streams = std::move(x);
}

namespace {
// Per-token weight use, one walk for both measures: bytes read (codes + scales) or multiply-adds.
struct WeightCost {
  bool macs;
  size_t operator()(const Fp8Weight& w) const {
    return static_cast<size_t>(w.n) * w.k + (macs ? 0 : static_cast<size_t>((w.n + 127) / 128) * w.scale_cols());
  }
  size_t operator()(const Fp4Weight& w) const {
    return macs ? static_cast<size_t>(w.n) * w.k : static_cast<size_t>(w.n) * (w.k / 2) + static_cast<size_t>(w.n) * (w.k / 32);
  }
  size_t operator()(const Bf16Weight& w) const { return static_cast<size_t>(w.n) * w.k * (macs ? 1 : 2); }
};
}  // namespace

template <class Cost>
StageBytes Model::weights_per_token(const Cost& cost) const {
  const ModelConfig& c = cfg_;
  StageBytes by{};
  auto add = [&](Stage s, size_t v) { by[static_cast<size_t>(s)] += v; };
  for (const BlockWeights& b : w_.layers) {
    const AttentionWeights& a = b.attn;
    add(Stage::kAttnProject, cost(a.wq_a) + cost(a.wq_b) + cost(a.wkv));
    add(Stage::kAttnOut, cost(a.wo_a) + cost(a.wo_b));
    add(Stage::kHyperConn, 2 * static_cast<size_t>(b.hc_attn.mix) * c.hc_mult * c.dim * (cost.macs ? 1 : 4));  // fp32 mHC mixes
    if (a.compressor.ratio > 0) add(Stage::kCompressor, cost(a.compressor.wkv) + cost(a.compressor.wgate));
    if (a.compressor.ratio == 4) {
      add(Stage::kCompressor, cost(a.idx_compressor.wkv) + cost(a.idx_compressor.wgate));
      add(Stage::kIndexer, cost(a.idx_wq_b) + cost(a.idx_weights_proj));
    }
    add(Stage::kMoeGate, cost(b.moe.gate));
    if (!b.moe.experts.empty()) {
      const ExpertWeights& e = b.moe.experts[0];
      add(Stage::kExperts, static_cast<size_t>(c.n_activated_experts) * (cost(e.w1) + cost(e.w2) + cost(e.w3)));
    }
    if (b.moe.has_shared) add(Stage::kSharedExpert, cost(b.moe.shared.w1) + cost(b.moe.shared.w2) + cost(b.moe.shared.w3));
  }
  return by;
}

StageBytes Model::bytes_per_token_by_stage() const {
  StageBytes by = weights_per_token(WeightCost{false});
  by[static_cast<size_t>(Stage::kEmbed)] += static_cast<size_t>(cfg_.dim) * 2;  // one embedding row
  by[static_cast<size_t>(Stage::kHead)] += WeightCost{false}(w_.head);
  return by;
}

size_t Model::bytes_per_token() const {
  const StageBytes by = bytes_per_token_by_stage();
  return std::accumulate(by.begin(), by.end(), size_t{0});
}

StageBytes Model::prefill_macs_by_stage() const { return weights_per_token(WeightCost{true}); }

double Model::prefill_macs_per_token() const {
  const StageBytes macs = prefill_macs_by_stage();
  return static_cast<double>(std::accumulate(macs.begin(), macs.end(), size_t{0}));
}

}  // namespace dsv4
