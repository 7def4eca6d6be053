// `dsv4 bench`: walks a fixed token sequence to context frontiers and reports, at each, the
// prefill speed of the newly added interval, the decode speed there, the state size and the
// achieved weight-read bandwidth of decode; with --roofline every number also as a ratio of this
// machine's measured read bandwidth / peak multiply-add throughput (of the instruction the prefill
// GEMMs use). Prints a table, writes CSV.
#include <algorithm>
#include <array>
#include <chrono>
#include <cstdio>
#include <fstream>
#include <numeric>
#include <sstream>
#include <string>
#include <vector>

#include <unistd.h>

#include "cli/commands.h"
#include "core/error.h"
#include "core/stage_profile.h"
#include "kernels/cpu_features.h"
#include "kernels/gemm.h"
#include "kernels/roofline.h"
#include "model/demo.h"
#include "model/model.h"

namespace dsv4::cli {

namespace {
double seconds_since(std::chrono::steady_clock::time_point t) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t).count();
}

// One profile table: per stage, an amount per token (weight MB, or M multiply-adds), then at
// each context the ms per token and the stage's rate (amount x rate_factor / ms: GB/s, or GFLOP/s
// with factor 2). "other" is the time outside every stage (greedy pick, bookkeeping).
struct ProfileRun {
  std::array<int64_t, StageProfile::kStages> ns{};
  double seconds = 0;
  int64_t tokens = 0;
};
// The stages whose time is nearly all weight products (the GEMM-dominated part of prefill).
constexpr Stage kProductStages[] = {Stage::kAttnProject, Stage::kCompressor, Stage::kAttnOut, Stage::kExperts,
                                    Stage::kSharedExpert};
// Their multiply-adds per token, and their GFLOP/s (flops per ns) in one profiled prefill interval
// (0: none timed).
double product_macs(const StageBytes& macs) {
  double sum = 0;
  for (Stage s : kProductStages) sum += static_cast<double>(macs[static_cast<size_t>(s)]);
  return sum;
}
double product_gflops(const StageBytes& macs, const ProfileRun& run) {
  int64_t ns = 0;
  for (Stage s : kProductStages) ns += run.ns[static_cast<size_t>(s)];
  return ns > 0 ? 2.0 * product_macs(macs) * static_cast<double>(run.tokens) / static_cast<double>(ns) : 0.0;
}
// With products_peak (GFLOP/s, prefill with --roofline), also the product stages' rate against it.
void print_profile(const char* title, const char* amount_name, const char* rate_name, double rate_factor,
                   const StageBytes& amount, double amount_unit, const std::vector<int64_t>& frontiers,
                   const std::vector<ProfileRun>& runs, bool product_row = false,
                   const std::vector<double>& products_peak = {}, const char* peak_name = "") {
  std::printf("\n%s\n%-18s %10s", title, "stage", amount_name);
  for (int64_t f : frontiers) std::printf(" %9lld ms %7s", static_cast<long long>(f), rate_name);
  std::printf("\n");
  auto row = [&](const char* name, double amt, auto&& ms_at) {
    std::printf("%-18s %10.1f", name, amt);
    for (size_t i = 0; i < frontiers.size(); ++i) {
      const double ms = ms_at(i);
      if (amt > 0 && ms > 0) std::printf(" %12.3f %7.1f", ms, amt * rate_factor / ms);
      else std::printf(" %12.3f %7s", ms, "-");
    }
    std::printf("\n");
  };
  auto per_token = [&](size_t i, double ns) { return runs[i].tokens > 0 ? ns / 1e6 / static_cast<double>(runs[i].tokens) : 0.0; };
  double total = 0;
  for (int s = 0; s < StageProfile::kStages; ++s) {
    const double amt = static_cast<double>(amount[static_cast<size_t>(s)]) / amount_unit;
    total += amt;
    row(stage_name(static_cast<Stage>(s)), amt,
        [&](size_t i) { return per_token(i, static_cast<double>(runs[i].ns[static_cast<size_t>(s)])); });
  }
  auto in_stages = [&](size_t i) {
    int64_t sum = 0;
    for (int64_t v : runs[i].ns) sum += v;
    return per_token(i, static_cast<double>(sum));
  };
  row("other", 0.0, [&](size_t i) { return per_token(i, runs[i].seconds * 1e9) - in_stages(i); });
  row("total", total, [&](size_t i) { return per_token(i, runs[i].seconds * 1e9); });
  if (!product_row) return;
  auto products_ms = [&](size_t i) {
    int64_t sum = 0;
    for (Stage s : kProductStages) sum += runs[i].ns[static_cast<size_t>(s)];
    return per_token(i, static_cast<double>(sum));
  };
  row("product stages", product_macs(amount) / amount_unit, products_ms);
  if (products_peak.size() != frontiers.size() || product_macs(amount) <= 0) return;
  std::printf("%-29s", (std::string("  / ") + peak_name + " peak").c_str());
  for (size_t i = 0; i < frontiers.size(); ++i) {
    const double gflops = product_gflops(amount, runs[i]);
    if (gflops > 0 && products_peak[i] > 0) std::printf(" %19.1f%%", 100.0 * gflops / products_peak[i]);
    else std::printf(" %20s", "-");
  }
  std::printf("\n(product stages: attn projections, compressors, attn output, routed and shared experts)\n");
}
}  // namespace

void register_bench(CLI::App& app) {
  auto* cmd = app.add_subcommand("bench", "Measure prefill/decode speed at context frontiers");
  static std::string model_dir, csv_path, frontiers_arg = "512,2048,8192";
  static int decode_tokens = 8, threads = 0, chunk = kPrefillChunkTokens, batch = 1;
  static bool roofline = false, profile = false;
  cmd->add_option("--model", model_dir, "Model directory (default: the built-in demo model)");
  cmd->add_option("--frontiers", frontiers_arg, "Comma-separated context lengths")->capture_default_str();
  cmd->add_option("--decode", decode_tokens, "Greedy decode steps timed at each frontier")->capture_default_str()->check(CLI::Range(1, 100000));
  cmd->add_option("--chunk", chunk, "Prefill chunk size")->capture_default_str()->check(CLI::Range(1, 1 << 20));
  cmd->add_option("-t,--threads", threads, "Worker threads (0 = all cores)");
  cmd->add_option("--batch", batch,
                  "Also decode this many sequences together at each frontier (copies of the sequence, each "
                  "starting from a different one of the top tokens) and report their total tokens/s")
      ->capture_default_str()
      ->check(CLI::Range(1, 256));
  cmd->add_option("--csv", csv_path, "Also write the table as CSV to this file");
  cmd->add_flag("--roofline", roofline, "Measure read bandwidth and peak FMA throughput in the same run");
  cmd->add_flag("--profile", profile, "Also print where decode time goes, stage by stage, with each stage's weight bytes");
  cmd->callback([] {
    std::vector<int64_t> frontiers;
    {
      std::stringstream ss(frontiers_arg);
      std::string item;
      while (std::getline(ss, item, ',')) {
        try {
          frontiers.push_back(std::stoll(item));
        } catch (const std::exception&) {
          throw Error("--frontiers: '" + item + "' is not a number");
        }
        if (frontiers.back() <= 0 || (frontiers.size() > 1 && frontiers.back() <= frontiers[frontiers.size() - 2]))
          throw Error("--frontiers must be increasing positive numbers");
      }
    }
    const std::string dir = model_dir.empty() ? ensure_demo_model() : model_dir;
    Model m(dir, threads);
    m.prefault_weights(true);  // steady state: no first-touch faults inside the timings
    const ModelConfig& c = m.config();
    if (frontiers.back() + decode_tokens * static_cast<int64_t>(frontiers.size() + (batch > 1 ? 1 : 0)) >
        c.max_position_embeddings)
      throw Error("--frontiers exceed the model's max_position_embeddings");
    std::printf("model %s (%s), %d threads, ISA %s%s%s%s\n", dir.c_str(), c.family_name().c_str(), m.pool().size(),
                isa_name(active_isa()), active_isa() == Isa::Avx512 ? ", prefill tiles " : "",
                active_isa() == Isa::Avx512 ? gemm_tiles_name(active_gemm_tiles()) : "",
                active_isa() == Isa::Avx512 && gemm_amx_active() ? ", AMX tiles for FP8 and FP4 products of several rows" : "");
    // Read bandwidth over the mapped output head (the largest tensor decode streams, resident
    // once prefaulted): the same pages the decode reads. It is measured again right before each
    // frontier's decode, and the ratio is taken against that: this VM's bandwidth drifts by tens
    // of percent within minutes.
    const Bf16Weight& head = m.weights().head;
    const size_t head_bytes = static_cast<size_t>(head.n) * head.k * 2;
    const bool use_head = head_bytes >= (size_t{256} << 20);
    const size_t read_bytes = use_head ? head_bytes : size_t{1} << 30;
    const void* read_data = use_head ? head.w : nullptr;
    Roofline roof;
    if (roofline) {
      roof = measure_roofline(m.pool(), read_bytes, 0.5, read_data);
      std::printf("roofline: read %.1f GB/s (%s), peak FMA %.1f GFLOP/s", roof.read_gbs,
                  use_head ? "over the mapped output head" : "fresh 1 GiB buffer", roof.fma_gflops);
      if (roof.dot_gflops > 0) std::printf(", peak VDPBF16PS %.1f GFLOP/s", roof.dot_gflops);
      if (roof.amx_gflops > 0) std::printf(", AMX tiles %.1f GFLOP/s", roof.amx_gflops);
      std::printf(" (%s, all threads); prefill/peak is against the fastest the products use, %s,\n"
                  "sampled again before and after every prefill chunk (the interval's time-weighted mean is the\n"
                  "peak column), and decode/read against the read bandwidth measured right before and after the decode\n",
                  roof.isa, roof.gemm_peak_name());
    }
    // A short probe of the same peak: best of 3 runs of a tenth of the iterations, ~0.04 s on two
    // cores (on the Zen 3 VM within a few percent of the full probe run right before or after it).
    auto probe_peak = [&] { return measure_peaks(m.pool(), 3, 0.1).gemm_peak_gflops(); };
    const double bytes_per_token = static_cast<double>(m.bytes_per_token());
    const double macs_per_token = m.prefill_macs_per_token();
    std::printf("decode reads %.3f GB of weights per token; prefill does %.2f G multiply-adds of weight "
                "products per token (attention over the context not counted)\n\n",
                bytes_per_token / 1e9, macs_per_token / 1e9);
    if (batch > 1)
      std::printf("batch: %d sequences decoded together at each frontier, right after the single sequence's decode; "
                  "batch t/s counts all of their tokens\n\n", batch);
    std::printf("%9s %12s %12s %12s %12s %10s%s%s\n", "context", "prefill t/s", "decode t/s", "decode GB/s", "state MiB",
                "interval", roofline ? "   read GB/s  decode/read  prefill GFLOP/s  peak GFLOP/s  prefill/peak" : "",
                batch > 1 ? "    batch t/s  x single" : "");
    std::ofstream csv;
    if (!csv_path.empty()) {
      csv.open(csv_path);
      if (!csv) throw Error(csv_path + ": cannot create");
      csv << "context,prefill_tokens,prefill_seconds,prefill_tok_s,decode_tokens,decode_seconds,decode_tok_s,"
             "decode_weight_gb_s,state_bytes,read_bw_gb_s,peak_fma_gflops,peak_dot_gflops,decode_bw_ratio,"
             "prefill_gflops,prefill_peak_ratio,products_gflops,products_peak_ratio,peak_amx_gflops,"
             "peak_sampled_gflops,peak_sampled_min_gflops,peak_sampled_max_gflops,batch,batch_decode_tok_s\n";
    }
    // A fixed pseudo-random token walk (same for every run and machine).
    uint64_t x = 0x243f6a8885a308d3ull;
    auto next_token = [&] {
      x ^= x << 13, x ^= x >> 7, x ^= x << 17;
      return static_cast<int32_t>(x % static_cast<uint64_t>(c.vocab_size));
    };
    SequenceState st = m.new_state();
    std::vector<float> logits(static_cast<size_t>(c.vocab_size));
    std::vector<int32_t> buf;
    std::vector<ProfileRun> prefill_runs, decode_runs, batch_runs;  // per frontier
    std::vector<double> interval_peaks;                 // per frontier, with --roofline
    for (int64_t f : frontiers) {
      const int64_t n_prefill = f - st.pos;
      PeakSamples peak;
      if (roofline) peak.start(probe_peak());
      StageProfile::reset();
      StageProfile::enable(profile);
      // Long intervals (minutes at 64K) report progress on stderr: in place on a terminal, a line
      // every 30 s otherwise; the table on stdout stays clean.
      const bool tty = isatty(STDERR_FILENO) != 0;
      double last_report = 0.0;
      double el = 0.0;  // prefill seconds so far (the probes between chunks not counted)
      for (int64_t done = 0; done < n_prefill;) {
        const int n = static_cast<int>(std::min<int64_t>(chunk, n_prefill - done));
        buf.resize(static_cast<size_t>(n));
        for (int32_t& t : buf) t = next_token();
        const auto t0 = std::chrono::steady_clock::now();
        m.forward(st, buf.data(), n, done + n == n_prefill ? logits.data() : nullptr);
        const double chunk_s = seconds_since(t0);
        el += chunk_s;
        done += n;
        if (roofline) {
          StageProfile::enable(false);
          peak.piece(chunk_s, probe_peak());
          StageProfile::enable(profile);
        }
        if (done < n_prefill && el - last_report >= (tty ? 1.0 : 30.0)) {
          last_report = el;
          std::fprintf(stderr, "%sprefill to %lld: %lld/%lld tokens, %.1f tok/s%s", tty ? "\r\033[K" : "",
                       static_cast<long long>(f), static_cast<long long>(done), static_cast<long long>(n_prefill),
                       static_cast<double>(done) / el, tty ? "" : "\n");
        }
      }
      if (tty && last_report > 0.0) std::fputs("\r\033[K", stderr);
      const double prefill_s = el;
      StageProfile::enable(false);
      prefill_runs.push_back({StageProfile::totals(), prefill_s, n_prefill});
      interval_peaks.push_back(roofline ? peak.mean() : 0.0);
      const double read_before = roofline ? measure_read_gbs(m.pool(), read_bytes, 0.3, read_data) : 0.0;
      StageProfile::reset();
      StageProfile::enable(profile);
      const auto t1 = std::chrono::steady_clock::now();
      for (int i = 0; i < decode_tokens; ++i) {
        int32_t best = 0;  // greedy
        for (int v = 1; v < c.vocab_size; ++v)
          if (logits[static_cast<size_t>(v)] > logits[static_cast<size_t>(best)]) best = v;
        m.forward(st, &best, 1, logits.data());
      }
      const double decode_s = seconds_since(t1);
      StageProfile::enable(false);
      const double read_gbs = roofline ? 0.5 * (read_before + measure_read_gbs(m.pool(), read_bytes, 0.3, read_data)) : 0.0;
      decode_runs.push_back({StageProfile::totals(), decode_s, decode_tokens});
      // The batch: copies of the sequence, copy i starting from the (i+1)-th best token, then each
      // greedy on its own logits, all through decode_batch.
      double batch_tps = 0;
      if (batch > 1) {
        const size_t V = static_cast<size_t>(c.vocab_size);
        std::vector<SequenceState> seqs(static_cast<size_t>(batch), st);
        std::vector<SequenceState*> ptrs;
        for (SequenceState& q : seqs) ptrs.push_back(&q);
        std::vector<int32_t> order(V), next(static_cast<size_t>(batch));
        std::iota(order.begin(), order.end(), 0);
        std::partial_sort(order.begin(), order.begin() + std::min<size_t>(V, static_cast<size_t>(batch)), order.end(),
                          [&](int32_t a, int32_t b) { return logits[static_cast<size_t>(a)] > logits[static_cast<size_t>(b)]; });
        for (int i = 0; i < batch; ++i) next[static_cast<size_t>(i)] = order[static_cast<size_t>(i) % V];
        std::vector<float> batch_logits(static_cast<size_t>(batch) * V);
        StageProfile::reset();
        StageProfile::enable(profile);
        const auto t2 = std::chrono::steady_clock::now();
        for (int s = 0; s < decode_tokens; ++s) {
          m.decode_batch(ptrs, next.data(), batch_logits.data());
          for (int i = 0; i < batch; ++i) {
            const float* row = &batch_logits[static_cast<size_t>(i) * V];
            next[static_cast<size_t>(i)] = static_cast<int32_t>(std::max_element(row, row + V) - row);
          }
        }
        const double batch_s = seconds_since(t2);
        StageProfile::enable(false);
        batch_runs.push_back({StageProfile::totals(), batch_s, decode_tokens});
        batch_tps = static_cast<double>(batch) * decode_tokens / batch_s;
      }
      const double prefill_tps = n_prefill > 0 ? static_cast<double>(n_prefill) / prefill_s : 0;
      const double decode_tps = decode_tokens / decode_s;
      const double decode_gbs = bytes_per_token * decode_tps / 1e9;
      const double state_mib = static_cast<double>(st.bytes()) / (1 << 20);
      // 2 FLOPs per multiply-add, over the whole interval (non-GEMM work included: a lower bound).
      const double prefill_gflops = 2.0 * macs_per_token * prefill_tps / 1e9;
      // The product stages alone (with --profile; else 0).
      const double products_gflops = profile ? product_gflops(m.prefill_macs_by_stage(), prefill_runs.back()) : 0.0;
      std::printf("%9lld %12.1f %12.2f %12.2f %12.2f %10lld", static_cast<long long>(f), prefill_tps, decode_tps,
                  decode_gbs, state_mib, static_cast<long long>(n_prefill));
      if (roofline)
        std::printf(" %11.1f %11.1f%% %16.1f %13.1f %12.1f%%", read_gbs, 100.0 * decode_gbs / read_gbs, prefill_gflops,
                    peak.mean(), 100.0 * prefill_gflops / peak.mean());
      if (batch > 1) std::printf(" %12.2f %9.2f", batch_tps, batch_tps / decode_tps);
      std::printf("\n");
      std::fflush(stdout);
      if (csv)
        csv << f << ',' << n_prefill << ',' << prefill_s << ',' << prefill_tps << ',' << decode_tokens << ',' << decode_s
            << ',' << decode_tps << ',' << decode_gbs << ',' << st.bytes() << ',' << read_gbs << ','
            << roof.fma_gflops << ',' << roof.dot_gflops << ',' << (roofline ? decode_gbs / read_gbs : 0) << ','
            << prefill_gflops << ',' << (roofline ? prefill_gflops / peak.mean() : 0) << ','
            << products_gflops << ',' << (roofline ? products_gflops / peak.mean() : 0) << ',' << roof.amx_gflops << ','
            << peak.mean() << ',' << peak.lo() << ',' << peak.hi() << ',' << batch << ',' << (batch > 1 ? batch_tps : 0)
            << '\n';
    }
    if (profile) {
      print_profile("decode profile (ms per token, and the GB/s of the stage's weight reads, at each context)",
                    "MB/token", "GB/s", 1.0, m.bytes_per_token_by_stage(), 1e6, frontiers, decode_runs);
      if (batch > 1)
        print_profile("batch decode profile (ms per step of all the sequences, and the GB/s the stage's weight reads would "
                      "be if read once per step: true but for the routed experts, read once per expert used)",
                      "MB/token", "GB/s", 1.0, m.bytes_per_token_by_stage(), 1e6, frontiers, batch_runs);
      print_profile("prefill profile (ms per token of each interval, and the GFLOP/s of the stage's weight products)",
                    "MMAC/token", "GFLOP/s", 2.0, m.prefill_macs_by_stage(), 1e6, frontiers, prefill_runs, true,
                    roofline ? interval_peaks : std::vector<double>{}, roof.gemm_peak_name());
    }
  });
}

}  // namespace dsv4::cli
