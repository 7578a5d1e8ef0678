// `kvscope eval`: a cache under test (or every format, --sweep) against a
// baseline cache over a text, as a short report, JSON, or a markdown table.
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <sstream>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "app/cli/commands.h"
#include "app/core/evaluation.h"
#include "kv/policy.h"

namespace kvscope::cli {

using nlohmann::json;

namespace {

// Parses a spec given to `flag`, naming the flag in the error.
CacheSpec spec_from_flag(std::string_view flag, const std::string& text) {
  try {
    return parse_cache_spec(text);
  } catch (const std::invalid_argument& e) {
    throw std::invalid_argument(fmt::format("{} {}: {}", flag, text, e.what()));
  }
}

// The cache under test: --kv SPEC, then --kv-k, --kv-v and --kv-group over it.
// --policy SPEC (canonical text), named in the error.
CacheSpec test_spec(const EvalOptions& o) {
  return cache_spec_from_options(o.m);
}

// --sweep[=formats|policies|all]: the formats; the policies at the budgets
// the context leaves room for, on f16, q8 and q4 keys and values.
std::vector<CacheSpec> sweep(const EvalOptions& o, uint32_t n_ctx) {
  if (o.sweep != "all" && o.sweep != "formats" && o.sweep != "policies")
    throw std::invalid_argument(
        fmt::format("--sweep={}: expected formats, policies or all (--sweep alone is all)", o.sweep));
  std::vector<CacheSpec> specs;
  if (o.sweep != "policies") specs = sweep_specs(o.m.kv_group);
  if (o.sweep == "formats") return specs;
  std::vector<uint32_t> budgets;
  for (uint32_t b : {32u, 64u, 128u})
    if (b < n_ctx) budgets.push_back(b);
  const std::vector<CacheSpec> policies = policy_sweep_specs(budgets);
  for (kv::Format format : {kv::Format::F16, kv::Format::Q8, kv::Format::Q4})
    for (CacheSpec s : policies) {
      s.k_format = s.v_format = format;
      if (format != kv::Format::F16) s.group_size = o.m.kv_group;
      specs.push_back(std::move(s));
    }
  return specs;
}

// --pin START:END (repeatable), named in the error.
kv::PinnedSpans pins_from_flags(const EvalOptions& o) {
  kv::PinnedSpans pins;
  for (const std::string& text : o.m.pins) {
    try {
      pins.add(kv::parse_pinned_span(text));
    } catch (const std::invalid_argument& e) {
      throw std::invalid_argument(fmt::format("--pin: {}", e.what()));
    }
  }
  return pins;
}

// The token at a position as it reads in a table: its piece, with the
// SentencePiece space shown as a space and control bytes escaped.
std::string token_text(const Tokenizer& tok, int32_t id) {
  if (id < 0 || id >= tok.n_vocab()) return "?";
  std::string text = tok.decode({id});
  if (text.empty()) text = tok.piece(id);
  return json(text).dump();
}

double mib(uint64_t bytes) { return double(bytes) / (1024.0 * 1024.0); }

// KL figures span many decades (0 for an identical cache, 1e-6 for f32 vs
// f16, 1e-2 for 4-bit), so they are shown in scientific notation.
std::string kl_text(double kl) { return kl == 0 ? "0" : fmt::format("{:.2e}", kl); }

json regretted_json(const LostAttentionSummary& lost, const Tokenizer& tok) {
  json out = json::array();
  for (const RegrettedEviction& e : lost.regretted)
    out.push_back({{"chunk", e.sequence},
                   {"position", e.position},
                   {"token", e.token},
                   {"text", e.token >= 0 && e.token < tok.n_vocab() ? tok.decode({e.token}) : ""},
                   {"lost_mass", e.lost_mass}});
  return out;
}

json cache_json(const EvaluationReport& r, const CacheEvaluation& t, const std::string& text_file,
                const Tokenizer& tok) {
  const PerplexityRun& b = r.baseline;
  const Divergence& d = t.divergence;
  return json{
      {"ppl_base", b.ppl},
      {"ppl", t.run.ppl},
      {"kl_mean", d.kl_mean},
      {"kl_median", d.kl_median},
      {"kl_p99", d.kl_p99},
      {"kl_max", d.kl_max},
      {"top1_agreement", d.top1_agreement},
      {"dp_top_mean", d.dp_top_mean},
      {"bytes_per_token_base", b.bytes_per_token},
      {"bytes_per_token", t.run.bytes_per_token},
      {"bits_per_value_base", b.bits_per_value},
      {"bits_per_value", t.run.bits_per_value},
      {"cache_bytes_base", b.cache_bytes},
      {"cache_bytes", t.run.cache_bytes},
      {"tok_s_base", b.tok_s()},
      {"tok_s", t.run.tok_s()},
      {"ppl_ratio", t.ppl_ratio},
      {"ppl_base_stderr", b.ppl_stderr},
      {"ppl_stderr", t.run.ppl_stderr},
      {"kv_base", b.spec.name()},
      {"kv", t.run.spec.name()},
      {"policy", t.run.spec.policy.empty() ? "none" : t.run.spec.policy},
      {"evictions", t.run.evictions},
      {"spill", t.run.spec.spill},
      {"recalls", t.run.recalls},
      {"spill_host_bytes", t.run.spill_peak_bytes},
      {"lost_attention_mean", t.lost.mean},
      {"lost_attention_p99", t.lost.p99},
      {"lost_attention_per_layer", t.lost.per_layer},
      {"regretted_evictions", regretted_json(t.lost, tok)},
      {"n_tokens", r.n_tokens},
      {"n_chunks", r.n_chunks},
      {"n_ctx", r.n_ctx},
      {"n_scored", r.n_scored},
      {"text", text_file},
      {"device", r.device},
  };
}

void print_report(const EvaluationReport& r, const std::string& text_file, const Tokenizer& tok) {
  const PerplexityRun& b = r.baseline;
  const CacheEvaluation& t = r.tests.front();
  const Divergence& d = t.divergence;
  fmt::print("{}: {} tokens, {} chunks of {} ({} positions scored, the second half of each chunk), {}\n\n", text_file,
             r.n_tokens, r.n_chunks, r.n_ctx, r.n_scored, r.device);
  fmt::print("{:<22} {:<22} {:<22}\n", "", fmt::format("baseline {}", b.spec.name()),
             fmt::format("test {}", t.run.spec.label()));
  fmt::print("{:<22} {:<22} {:<22} ratio {:.4f}\n", "perplexity", fmt::format("{:.4f} ± {:.4f}", b.ppl, b.ppl_stderr),
             fmt::format("{:.4f} ± {:.4f}", t.run.ppl, t.run.ppl_stderr), t.ppl_ratio);
  fmt::print("{:<22} {:<22.6g} {:<22.6g}\n", "KV bytes per token", b.bytes_per_token, t.run.bytes_per_token);
  fmt::print("{:<22} {:<22.3f} {:<22.3f}\n", "KV bits per value", b.bits_per_value, t.run.bits_per_value);
  fmt::print("{:<22} {:<22} {:<22}\n", "cache device memory", human_bytes(double(b.cache_bytes)),
             human_bytes(double(t.run.cache_bytes)));
  fmt::print("{:<22} {:<22.1f} {:<22.1f}\n", "tokens/s", b.tok_s(), t.run.tok_s());
  if (t.run.spec.spill)
    fmt::print("{:<22} {:<22} {} recalls, at most {} in host memory\n", "spill", "", t.run.recalls,
               human_bytes(double(t.run.spill_peak_bytes)));
  fmt::print("\n");
  fmt::print("KL(baseline || test)   mean {}  median {}  p99 {}  max {}\n", kl_text(d.kl_mean),
             kl_text(d.kl_median), kl_text(d.kl_p99), kl_text(d.kl_max));
  fmt::print("top-1 agreement        {:.2f}%\n", 100 * d.top1_agreement);
  fmt::print("mean |Δp(top token)|   {:.5f}\n", d.dp_top_mean);
  if (!t.run.spec.policy.empty()) {
    const LostAttentionSummary& lost = t.lost;
    fmt::print("lost attention         mean {:.4f}  p99 {:.4f}  max {:.4f}  per layer", lost.mean, lost.p99, lost.max);
    for (double l : lost.per_layer) fmt::print(" {:.4f}", l);
    fmt::print("\n  (the baseline's attention on tokens the test cache no longer holds, mean over heads and layers)\n");
    if (!lost.regretted.empty()) {
      fmt::print("regretted evictions    (lost mass summed over the scored positions)\n");
      for (const RegrettedEviction& e : lost.regretted)
        fmt::print("  chunk {:>3} position {:>4} {:<16} {:.3f}\n", e.sequence, e.position, token_text(tok, e.token),
                   e.lost_mass);
    }
  }
  fmt::print("\nCaches rank by KL and top-1 agreement, not by perplexity: on a text like corpus.txt eviction can "
             "lower perplexity while the distributions move far from the full cache's.\n");
}

void print_sweep_table(const EvaluationReport& r) {
  const PerplexityRun& b = r.baseline;
  fmt::print("Baseline {}: perplexity {:.4f} ± {:.4f}; {} chunks of {} tokens, {} positions scored; {}\n\n",
             b.spec.name(), b.ppl, b.ppl_stderr, r.n_chunks, r.n_ctx, r.n_scored, r.device);
  std::vector<const CacheEvaluation*> rows;
  for (const auto& t : r.tests) rows.push_back(&t);
  std::stable_sort(rows.begin(), rows.end(), [](const CacheEvaluation* x, const CacheEvaluation* y) {
    return x->run.bytes_per_token < y->run.bytes_per_token;
  });
  fmt::print("| cache | bytes/token | bits/value | cache MiB | ppl | Δppl | KL mean | KL p99 | top-1 | lost attn | tok/s |\n");
  fmt::print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n");
  for (const CacheEvaluation* t : rows) {
    const std::string name = t->run.spec == b.spec ? t->run.spec.label() + " (baseline)" : t->run.spec.label();
    const std::string lost = t->run.spec.policy.empty() ? "—" : fmt::format("{:.4f}", t->lost.mean);
    fmt::print("| {} | {:.6g} | {:.2f} | {:.2f} | {:.4f} | {:+.4f} | {} | {} | {:.2f}% | {} | {:.0f} |\n", name,
               t->run.bytes_per_token, t->run.bits_per_value, mib(t->run.cache_bytes), t->run.ppl, t->run.ppl - b.ppl,
               kl_text(t->divergence.kl_mean), kl_text(t->divergence.kl_p99), 100 * t->divergence.top1_agreement,
               lost, t->run.tok_s());
  }
  fmt::print("\nRank caches by KL and top-1 agreement, not perplexity: a cache can keep perplexity while changing "
             "which tokens the model predicts (an evicting cache can even lower it while its distributions move far "
             "from the full cache's).\n");
}

}  // namespace

int eval(const EvalOptions& o) {
  const std::string text = read_text_file(o.text_file, "eval");
  const CacheSpec baseline = spec_from_flag("--baseline", o.baseline);
  EvaluationOptions options;
  options.n_ctx = o.m.n_ctx;
  options.baseline = baseline;
  options.max_chunks = o.max_chunks;
  options.pins = pins_from_flags(o);
  const bool sweeping = !o.sweep.empty();
  if (!sweeping) options.tests = {test_spec(o)};  // a bad spec is an error before the model loads
  // Progress only where a person watches: not into a pipe or a JSON consumer.
  // A sweep runs long (dozens of caches token by token): it reports every
  // cache's chunk on stderr, a line each, even into a log file.
  const bool show_progress = !o.json && ::isatty(STDERR_FILENO);
  if (sweeping)
    options.on_cache = [&](uint32_t chunk, uint32_t n_chunks, size_t test, size_t n_tests) {
      std::fprintf(stderr, "chunk %u/%u: cache %zu/%zu %s\n", chunk + 1, n_chunks, test + 1, n_tests,
                   options.tests[test].label().c_str());
      std::fflush(stderr);
    };
  else if (show_progress)
    options.on_chunk = [](uint64_t done, uint64_t n) {
      std::fprintf(stderr, "\rchunk %llu/%llu", static_cast<unsigned long long>(done),
                   static_cast<unsigned long long>(n));
      if (done == n) std::fprintf(stderr, "\r\033[K");
      std::fflush(stderr);
    };

  Engine engine(engine_options(o.m));
  if (sweeping) options.tests = sweep(o, o.m.n_ctx ? o.m.n_ctx : engine.n_ctx());
  const std::vector<int32_t> tokens = engine.tokenizer().encode(text, true);
  EvaluationReport report;
  try {
    report = evaluate_caches(engine, tokens, options);
  } catch (const TextTooShort& e) {
    throw TextTooShort(fmt::format("-f {}: {}", o.text_file, e.what()));
  }

  const Tokenizer& tok = engine.tokenizer();
  if (o.json) {
    if (!sweeping) {
      std::cout << cache_json(report, report.tests.front(), o.text_file, tok).dump(2) << "\n";
      return 0;
    }
    json rows = json::array();
    for (const auto& t : report.tests) rows.push_back(cache_json(report, t, o.text_file, tok));
    std::cout << json{{"rows", rows}}.dump(2) << "\n";
    return 0;
  }
  if (sweeping)
    print_sweep_table(report);
  else
    print_report(report, o.text_file, tok);
  return 0;
}

}  // namespace kvscope::cli
