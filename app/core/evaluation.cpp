#include "app/core/evaluation.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <memory>

#include <fmt/format.h>

#include "kv/event_log.h"
#include "kv/policy.h"
#include "kv/spill.h"

namespace kvscope {

namespace eval_stats {

void log_softmax(std::span<const float> logits, std::span<double> out) {
  double max_logit = -INFINITY;
  for (float x : logits) max_logit = std::max(max_logit, double(x));
  double sum = 0;
  for (float x : logits) sum += std::exp(double(x) - max_logit);
  const double log_z = max_logit + std::log(sum);
  for (size_t i = 0; i < logits.size(); ++i) out[i] = double(logits[i]) - log_z;
}

double kl_divergence(std::span<const double> log_p, std::span<const double> log_q) {
  double kl = 0;
  for (size_t i = 0; i < log_p.size(); ++i) kl += std::exp(log_p[i]) * (log_p[i] - log_q[i]);
  return std::max(kl, 0.0);
}

uint32_t argmax(std::span<const float> values) {
  return static_cast<uint32_t>(std::max_element(values.begin(), values.end()) - values.begin());
}

double quantile(std::vector<double> values, double q) {
  if (values.empty()) return 0;
  std::sort(values.begin(), values.end());
  const double at = std::clamp(q, 0.0, 1.0) * double(values.size() - 1);
  const size_t below = static_cast<size_t>(at);
  const size_t above = std::min(below + 1, values.size() - 1);
  return values[below] + (at - double(below)) * (values[above] - values[below]);
}

}  // namespace eval_stats

namespace {

double seconds_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

// One cache's running totals over the chunks.
struct CacheRun {
  std::unique_ptr<Session> session;
  PerplexityRun result;
  double nll_sum = 0, nll_sq_sum = 0;
  // Against the baseline (tests only).
  std::vector<double> kl;  // one per scored position
  uint64_t top1_same = 0;
  double dp_top_sum = 0;
  LostAttentionAccumulator lost;  // evicting caches only

  CacheRun(Engine& engine, const CacheSpec& spec, uint32_t n_ctx, const kv::PinnedSpans& pins = {})
      : session(std::make_unique<Session>(engine, spec, n_ctx,
                                          spec.policy.empty() && spec.on_full.empty() ? kv::PinnedSpans{} : pins)) {
    result.spec = spec;
    result.bytes_per_token = session->cache().bytes_per_token();
    result.cache_bytes = session->cache().device_bytes();
  }

  // Runs one chunk on an empty cache; returns the logits of all its tokens.
  // With an evicting policy, `prompt_done(n)` is called once the first n
  // tokens ran as a prompt, and `decoded(j)` after position j ran alone: the
  // cache then holds what position j's query saw.
  std::vector<float> run_chunk(const std::vector<int32_t>& chunk,
                               const std::function<void(size_t n)>& prompt_done = {},
                               const std::function<void(size_t j)>& decoded = {}) {
    session->reset();
    const auto t0 = std::chrono::steady_clock::now();
    std::vector<float> logits;
    if (!session->evicting()) {
      logits = session->logits_all(chunk);
    } else {
      // Prefill what the budget holds, then decode: one token per step.
      const size_t prompt = std::min<size_t>(chunk.size(), 
                                                std::max(session->cache().eviction()->room(session->cache().tables()), 1u));
      logits = session->logits_all({chunk.begin(), chunk.begin() + static_cast<std::ptrdiff_t>(prompt)});
      session->end_prefill();
      if (prompt_done) prompt_done(prompt);
      logits.reserve(chunk.size() * (logits.size() / prompt));
      for (size_t i = prompt; i < chunk.size(); ++i) {
        const std::vector<float> row = session->logits_all({chunk[i]});
        logits.insert(logits.end(), row.begin(), row.end());
        if (decoded) decoded(i);
      }
      result.evictions += session->cache().eviction()->log().eviction_count();
      result.recalls += session->cache().recalls();
      if (const kv::SpillTier* spill = session->cache().spill())
        result.spill_peak_bytes = std::max(result.spill_peak_bytes, spill->peak_host_bytes());
    }
    result.seconds += seconds_since(t0);
    result.tokens_evaluated += chunk.size();
    return logits;
  }

  void add_nll(double nll) {
    nll_sum += nll;
    nll_sq_sum += nll * nll;
  }

  // Perplexity and its error as llama.cpp reports them.
  void finish_perplexity(uint64_t count) {
    const double mean = nll_sum / double(count);
    result.ppl = std::exp(mean);
    const double variance = nll_sq_sum / double(count) - mean * mean;
    result.ppl_stderr = variance > 0 && count > 1 ? std::sqrt(variance / double(count - 1)) * result.ppl : 0;
  }
};

// The baseline's attention at positions first .. last of a chunk, each run
// alone after a prefill of the positions before it, with the probe on; the
// logits are not used (the baseline's figures come from its whole-chunk
// run), so this costs one decode step per scored position.
std::vector<AttentionRows> baseline_attention(Engine& engine, Session& session, const std::vector<int32_t>& chunk,
                                              uint32_t first, uint32_t last) {
  // The probe is the session's: on for these steps only, as it was after.
  struct ProbeOn {
    AttentionProbe& probe;
    bool was;
    explicit ProbeOn(AttentionProbe& p) : probe(p), was(p.on) { probe.on = true; }
    ~ProbeOn() { probe.on = was; }
  };
  const uint32_t n_positions = static_cast<uint32_t>(chunk.size());
  session.reset();
  session.logits_all({chunk.begin(), chunk.begin() + first});
  std::vector<AttentionRows> rows;
  rows.reserve(last - first + 1);
  ProbeOn probe(session.attention_probe());
  for (uint32_t j = first; j <= last; ++j) {
    session.logits_all({chunk[j]});
    rows.push_back(probe_attention_rows(session.attention_probe(), engine.config(), session.cache(), n_positions));
  }
  return rows;
}

}  // namespace

EvaluationReport evaluate_caches(Engine& engine, std::span<const int32_t> tokens, const EvaluationOptions& options) {
  const uint32_t n_ctx = options.n_ctx ? options.n_ctx : engine.n_ctx();
  if (n_ctx > engine.n_ctx())
    throw std::invalid_argument(fmt::format(
        "an evaluation context of {} tokens is larger than the engine's {}; open the model with that context (-c)",
        n_ctx, engine.n_ctx()));
  // The second half of a chunk must hold at least one position that predicts
  // a token inside the chunk.
  if (n_ctx < 4)
    throw std::invalid_argument(fmt::format("an evaluation context of {} tokens scores nothing; use -c 4 or more",
                                            n_ctx));
  if (tokens.size() < 2 * uint64_t{n_ctx})
    throw TextTooShort(fmt::format(
        "the text is {} tokens; evaluating with a context of {} needs at least {} (two chunks, as llama.cpp's "
        "perplexity requires): use a longer text or a smaller context (-c)",
        tokens.size(), n_ctx, 2 * uint64_t{n_ctx}));

  const uint32_t n_vocab = engine.config().n_vocab;
  const uint32_t first = n_ctx / 2;                    // first scored position of a chunk
  const uint32_t n_scored_per_chunk = n_ctx - 1 - first;  // positions first .. n_ctx-2

  EvaluationReport report;
  report.n_tokens = tokens.size();
  report.n_chunks = static_cast<uint32_t>(tokens.size() / n_ctx);
  if (options.max_chunks) report.n_chunks = std::min(report.n_chunks, options.max_chunks);
  report.n_ctx = n_ctx;
  report.n_scored = uint64_t{report.n_chunks} * n_scored_per_chunk;
  report.device = engine.device_name();

  CacheRun baseline(engine, options.baseline, n_ctx);
  std::vector<CacheRun> tests;
  tests.reserve(options.tests.size());
  bool any_evicting = false;
  for (const CacheSpec& spec : options.tests) {
    tests.emplace_back(engine, spec, n_ctx, options.pins);
    tests.back().kl.reserve(report.n_scored);
    any_evicting = any_evicting || tests.back().session->evicting();
  }

  // The baseline's log-probabilities of one chunk's scored positions,
  // [n_scored_per_chunk][n_vocab], and its argmax at each.
  std::vector<double> base_log_probs(size_t{n_scored_per_chunk} * n_vocab);
  std::vector<uint32_t> base_top(n_scored_per_chunk);
  std::vector<double> test_log_probs(n_vocab);

  std::vector<int32_t> chunk(n_ctx);
  for (uint32_t c = 0; c < report.n_chunks; ++c) {
    const auto begin = tokens.begin() + size_t{c} * n_ctx;
    std::copy(begin, begin + n_ctx, chunk.begin());
    chunk[0] = engine.tokenizer().bos();
    // The targets are the text's own tokens: chunk[0]'s replacement is never a
    // target because scoring starts in the second half.
    auto target = [&](uint32_t j) { return begin[j + 1]; };

    const std::vector<float> base_logits = baseline.run_chunk(chunk);
    const std::vector<AttentionRows> base_attention =
        any_evicting ? baseline_attention(engine, *baseline.session, chunk, first, n_ctx - 2)
                     : std::vector<AttentionRows>{};
    for (uint32_t i = 0; i < n_scored_per_chunk; ++i) {
      const uint32_t j = first + i;
      const std::span<const float> row(base_logits.data() + size_t{j} * n_vocab, n_vocab);
      const std::span<double> log_p(base_log_probs.data() + size_t{i} * n_vocab, n_vocab);
      eval_stats::log_softmax(row, log_p);
      baseline.add_nll(-log_p[target(j)]);
      base_top[i] = eval_stats::argmax(row);
    }

    for (size_t t = 0; t < tests.size(); ++t) {
      CacheRun& test = tests[t];
      // Scored positions inside the prompt saw every earlier token: nothing lost.
      auto prompt_done = [&](size_t n) {
        for (size_t j = first; j < std::min<size_t>(n, n_ctx - 1); ++j)
          test.lost.add_nothing_lost(engine.config().n_layer);
      };
      auto decoded = [&](size_t j) {
        if (j < first || j > n_ctx - 2) return;
        test.lost.add(base_attention[j - first], held_positions(test.session->cache(), n_ctx), chunk, c);
      };
      const std::vector<float> logits = test.session->evicting() ? test.run_chunk(chunk, prompt_done, decoded)
                                                                 : test.run_chunk(chunk);
      for (uint32_t i = 0; i < n_scored_per_chunk; ++i) {
        const uint32_t j = first + i;
        const std::span<const float> row(logits.data() + size_t{j} * n_vocab, n_vocab);
        const std::span<const double> log_p(base_log_probs.data() + size_t{i} * n_vocab, n_vocab);
        eval_stats::log_softmax(row, test_log_probs);
        test.add_nll(-test_log_probs[target(j)]);
        test.kl.push_back(eval_stats::kl_divergence(log_p, test_log_probs));
        const uint32_t top = base_top[i];
        test.top1_same += eval_stats::argmax(row) == top;
        test.dp_top_sum += std::abs(std::exp(test_log_probs[top]) - std::exp(log_p[top]));
      }
      if (options.on_cache) options.on_cache(c, report.n_chunks, t, tests.size());
    }
    if (options.on_chunk) options.on_chunk(c + 1, report.n_chunks);
  }

  const double n = double(report.n_scored);
  baseline.finish_perplexity(report.n_scored);
  report.baseline = baseline.result;
  for (CacheRun& test : tests) {
    test.finish_perplexity(report.n_scored);
    CacheEvaluation e;
    e.run = test.result;
    e.ppl_ratio = e.run.ppl / report.baseline.ppl;
    Divergence& d = e.divergence;
    double kl_sum = 0;
    for (double k : test.kl) kl_sum += k;
    d.kl_mean = kl_sum / n;
    d.kl_median = eval_stats::quantile(test.kl, 0.5);
    d.kl_p99 = eval_stats::quantile(test.kl, 0.99);
    d.kl_max = test.kl.empty() ? 0 : *std::max_element(test.kl.begin(), test.kl.end());
    d.top1_agreement = double(test.top1_same) / n;
    d.dp_top_mean = test.dp_top_sum / n;
    e.lost = test.lost.summary(options.regretted_top);
    if (e.lost.per_layer.empty()) e.lost.per_layer.assign(engine.config().n_layer, 0.0);
    report.tests.push_back(e);
  }
  return report;
}

}  // namespace kvscope
