#include "app/core/evaluation.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <memory>

#include <fmt/format.h>

#include "app/core/worker.h"
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

// The engine for one forward call (or a cache's creation), when the
// evaluation shares it with sessions that generate meanwhile (the window's
// Lab panel): they take turns call by call.
class Turn {
 public:
  explicit Turn(EngineTurns* turns) : turns_(turns) {
    if (turns_) turns_->lock();
  }
  ~Turn() {
    if (turns_) turns_->unlock();
  }
  Turn(const Turn&) = delete;
  Turn& operator=(const Turn&) = delete;

 private:
  EngineTurns* turns_;
};

std::unique_ptr<Session> make_session(Engine& engine, const CacheSpec& spec, uint32_t n_ctx,
                                      const kv::PinnedSpans& pins, EngineTurns* turns) {
  Turn turn(turns);
  return std::make_unique<Session>(engine, spec, n_ctx,
                                   spec.policy.empty() && spec.on_full.empty() ? kv::PinnedSpans{} : pins);
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

  EngineTurns* turns = nullptr;

  CacheRun(Engine& engine, const CacheSpec& spec, uint32_t n_ctx, const kv::PinnedSpans& pins, EngineTurns* t)
      : session(make_session(engine, spec, n_ctx, pins, t)), turns(t) {
    result.spec = spec;
    result.bytes_per_token = session->cache().bytes_per_token();
    const kv::CacheShape& shape = session->cache().shape();
    result.bits_per_value = result.bytes_per_token * 8.0 / (2.0 * shape.n_layer * shape.n_kv_head * shape.head_dim);
    result.cache_bytes = session->cache().device_bytes();
  }

  // Runs one chunk on an empty cache; returns the logits of all its tokens.
  // With an evicting policy, `prompt_done(n)` is called once the first n
  // tokens ran as a prompt, and `decoded(j)` after position j ran alone: the
  // cache then holds what position j's query saw.
  std::vector<float> run_chunk(const std::vector<int32_t>& chunk,
                               const std::function<void(size_t n)>& prompt_done = {},
                               const std::function<void(size_t j)>& decoded = {}) {
    {
      Turn turn(turns);
      session->reset();
    }
    const auto t0 = std::chrono::steady_clock::now();
    std::vector<float> logits;
    if (!session->evicting()) {
      {
        Turn turn(turns);
        logits = session->logits_all(chunk);
      }
      note_live();
    } else {
      // Prefill what the budget holds, then decode: one token per step.
      const size_t prompt = std::min<size_t>(chunk.size(), 
                                                std::max(session->cache().eviction()->room(session->cache().tables()), 1u));
      {
        Turn turn(turns);
        logits = session->logits_all({chunk.begin(), chunk.begin() + static_cast<std::ptrdiff_t>(prompt)});
        session->end_prefill();
      }
      note_live();
      if (prompt_done) prompt_done(prompt);
      logits.reserve(chunk.size() * (logits.size() / prompt));
      for (size_t i = prompt; i < chunk.size(); ++i) {
        std::vector<float> row;
        {
          Turn turn(turns);
          row = session->logits_all({chunk[i]});
        }
        logits.insert(logits.end(), row.begin(), row.end());
        note_live();
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

  // The entries live now over every layer and kv head; the peak is kept.
  void note_live() {
    const kv::KvCache& cache = session->cache();
    uint64_t live = 0;
    double bytes = 0;
    for (uint32_t l = 0; l < cache.shape().n_layer; ++l) {
      const double slot_bytes = double(cache.key_layout(l).bytes() + cache.value_layout(l).bytes()) /
                                (double(cache.shape().n_kv_head) * cache.layer_slots(l));
      for (uint32_t h = 0; h < cache.shape().n_kv_head; ++h) {
        live += cache.table(l, h).live();
        bytes += slot_bytes * cache.table(l, h).live();
      }
    }
    result.peak_live_entries = std::max(result.peak_live_entries, live);
    result.peak_live_bytes = std::max(result.peak_live_bytes, bytes);
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
                                              uint32_t first, uint32_t last, EngineTurns* turns) {
  // The probe is the session's: on for these steps only, as it was after.
  struct ProbeOn {
    AttentionProbe& probe;
    bool was;
    explicit ProbeOn(AttentionProbe& p) : probe(p), was(p.on) { probe.on = true; }
    ~ProbeOn() { probe.on = was; }
  };
  const uint32_t n_positions = static_cast<uint32_t>(chunk.size());
  {
    Turn turn(turns);
    session.reset();
    session.logits_all({chunk.begin(), chunk.begin() + first});
  }
  std::vector<AttentionRows> rows;
  rows.reserve(last - first + 1);
  ProbeOn probe(session.attention_probe());
  for (uint32_t j = first; j <= last; ++j) {
    {
      Turn turn(turns);
      session.logits_all({chunk[j]});
    }
    rows.push_back(probe_attention_rows(session.attention_probe(), engine.config(), session.cache(), n_positions));
  }
  return rows;
}

}  // namespace

struct Evaluator::Impl {
  Engine& engine;
  std::vector<int32_t> tokens;
  EvaluationOptions options;
  EvaluationReport header;
  uint32_t n_vocab = 0;
  uint32_t first = 0;               // first scored position of a chunk
  uint32_t n_scored_per_chunk = 0;  // positions first .. n_ctx-2
  bool baseline_done = false;
  std::unique_ptr<CacheRun> baseline;

  // What the baseline gave for one chunk: its logits at the scored
  // positions, [n_scored_per_chunk][n_vocab], and its attention rows there
  // (only once an evicting cache asked for them).
  struct Chunk {
    std::vector<float> logits;
    std::vector<AttentionRows> attention;
  };
  std::vector<Chunk> memo;  // by chunk; empty vectors: not kept
  uint64_t memo_bytes = 0;

  Impl(Engine& e, std::span<const int32_t> t, EvaluationOptions o)
      : engine(e), tokens(t.begin(), t.end()), options(std::move(o)) {}

  std::vector<int32_t> chunk_tokens(uint32_t c) const {
    std::vector<int32_t> chunk(tokens.begin() + size_t{c} * header.n_ctx,
                               tokens.begin() + size_t{c + 1} * header.n_ctx);
    chunk[0] = engine.tokenizer().bos();
    return chunk;
  }
  // The targets are the text's own tokens: chunk[0]'s replacement is never a
  // target because scoring starts in the second half.
  int32_t target(uint32_t c, uint32_t j) const { return tokens[size_t{c} * header.n_ctx + j + 1]; }

  bool keep(uint64_t bytes) {
    if (memo_bytes + bytes > options.baseline_memo_bytes) return false;
    memo_bytes += bytes;
    return true;
  }

  // The baseline's logits at chunk c's scored positions (run again when not kept).
  std::vector<float> scored_logits(uint32_t c) {
    if (!memo[c].logits.empty()) return memo[c].logits;
    const std::vector<float> all = baseline->run_chunk(chunk_tokens(c));
    std::vector<float> scored(all.begin() + size_t{first} * n_vocab,
                              all.begin() + size_t{first + n_scored_per_chunk} * n_vocab);
    if (keep(scored.size() * sizeof(float))) memo[c].logits = scored;
    return scored;
  }

  std::vector<AttentionRows> attention(uint32_t c) {
    if (!memo[c].attention.empty()) return memo[c].attention;
    std::vector<AttentionRows> rows =
        baseline_attention(engine, *baseline->session, chunk_tokens(c), first, header.n_ctx - 2, options.turns);
    uint64_t bytes = 0;
    for (const AttentionRows& r : rows) bytes += r.probs.size() * sizeof(float);
    if (keep(bytes)) memo[c].attention = rows;
    return rows;
  }

  void run_baseline(const std::function<void(uint32_t, uint32_t)>& on_chunk) {
    if (baseline_done) return;
    baseline = std::make_unique<CacheRun>(engine, options.baseline, header.n_ctx, kv::PinnedSpans{}, options.turns);
    std::vector<double> log_p(n_vocab);
    for (uint32_t c = 0; c < header.n_chunks; ++c) {
      const std::vector<float> logits = scored_logits(c);
      for (uint32_t i = 0; i < n_scored_per_chunk; ++i) {
        eval_stats::log_softmax({logits.data() + size_t{i} * n_vocab, n_vocab}, log_p);
        baseline->add_nll(-log_p[target(c, first + i)]);
      }
      if (on_chunk) on_chunk(c + 1, header.n_chunks);
    }
    baseline->finish_perplexity(header.n_scored);
    header.baseline = baseline->result;
    baseline_done = true;
  }

  CacheEvaluation evaluate(const CacheSpec& spec, const std::function<void(uint32_t, uint32_t)>& on_chunk) {
    CacheRun test(engine, spec, header.n_ctx, options.pins, options.turns);
    run_baseline({});
    test.kl.reserve(header.n_scored);
    const uint32_t n_ctx = header.n_ctx;
    std::vector<double> base_log_probs(size_t{n_scored_per_chunk} * n_vocab);
    std::vector<uint32_t> base_top(n_scored_per_chunk);
    std::vector<double> test_log_probs(n_vocab);
    for (uint32_t c = 0; c < header.n_chunks; ++c) {
      const std::vector<int32_t> chunk = chunk_tokens(c);
      {
        const std::vector<float> base = scored_logits(c);
        for (uint32_t i = 0; i < n_scored_per_chunk; ++i) {
          const std::span<const float> row(base.data() + size_t{i} * n_vocab, n_vocab);
          eval_stats::log_softmax(row, {base_log_probs.data() + size_t{i} * n_vocab, n_vocab});
          base_top[i] = eval_stats::argmax(row);
        }
      }
      std::vector<float> logits;
      if (test.session->evicting()) {
        const std::vector<AttentionRows> base_attention = attention(c);
        // Scored positions inside the prompt saw every earlier token: nothing lost.
        auto prompt_done = [&](size_t n) {
          for (size_t j = first; j < std::min<size_t>(n, n_ctx - 1); ++j)
            test.lost.add_nothing_lost(engine.config().n_layer);
        };
        auto decoded = [&](size_t j) {
          if (j < first || j > n_ctx - 2) return;
          test.lost.add(base_attention[j - first], held_positions(test.session->cache(), n_ctx), chunk, c);
        };
        logits = test.run_chunk(chunk, prompt_done, decoded);
      } else {
        logits = test.run_chunk(chunk);
      }
      for (uint32_t i = 0; i < n_scored_per_chunk; ++i) {
        const uint32_t j = first + i;
        const std::span<const float> row(logits.data() + size_t{j} * n_vocab, n_vocab);
        const std::span<const double> log_p(base_log_probs.data() + size_t{i} * n_vocab, n_vocab);
        eval_stats::log_softmax(row, test_log_probs);
        test.add_nll(-test_log_probs[target(c, j)]);
        test.kl.push_back(eval_stats::kl_divergence(log_p, test_log_probs));
        const uint32_t top = base_top[i];
        test.top1_same += eval_stats::argmax(row) == top;
        test.dp_top_sum += std::abs(std::exp(test_log_probs[top]) - std::exp(log_p[top]));
      }
      if (on_chunk) on_chunk(c + 1, header.n_chunks);
    }

    const double n = double(header.n_scored);
    test.finish_perplexity(header.n_scored);
    // The bytes of the most entries held at once, per token of context (at
    // most the allocation's: a full cache holds every position).
    test.result.held_bytes_per_token =
        std::min(test.result.bytes_per_token, test.result.peak_live_bytes / std::max(1u, n_ctx));
    CacheEvaluation e;
    e.run = test.result;
    e.ppl_ratio = e.run.ppl / header.baseline.ppl;
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
    return e;
  }
};

Evaluator::Evaluator(Engine& engine, std::span<const int32_t> tokens, EvaluationOptions options)
    : impl_(std::make_unique<Impl>(engine, tokens, std::move(options))) {
  Impl& m = *impl_;
  const uint32_t n_ctx = m.options.n_ctx ? m.options.n_ctx : engine.n_ctx();
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
  m.n_vocab = engine.config().n_vocab;
  m.first = n_ctx / 2;
  m.n_scored_per_chunk = n_ctx - 1 - m.first;
  EvaluationReport& h = m.header;
  h.n_tokens = tokens.size();
  h.n_chunks = static_cast<uint32_t>(tokens.size() / n_ctx);
  if (m.options.max_chunks) h.n_chunks = std::min(h.n_chunks, m.options.max_chunks);
  h.n_ctx = n_ctx;
  h.n_scored = uint64_t{h.n_chunks} * m.n_scored_per_chunk;
  h.device = engine.device_name();
  m.memo.resize(h.n_chunks);
}

Evaluator::~Evaluator() = default;

const EvaluationReport& Evaluator::header() const { return impl_->header; }

const PerplexityRun& Evaluator::baseline(const std::function<void(uint32_t done, uint32_t n)>& on_chunk) {
  impl_->run_baseline(on_chunk);
  return impl_->header.baseline;
}

CacheEvaluation Evaluator::evaluate(const CacheSpec& spec,
                                    const std::function<void(uint32_t done, uint32_t n)>& on_chunk) {
  return impl_->evaluate(spec, on_chunk);
}

EvaluationReport evaluate_caches(Engine& engine, std::span<const int32_t> tokens, const EvaluationOptions& options) {
  Evaluator evaluator(engine, tokens, options);
  const uint32_t n_chunks = evaluator.header().n_chunks;
  const uint64_t total = uint64_t{n_chunks} * (1 + options.tests.size());
  uint64_t done = 0;
  auto tick = [&] {
    ++done;
    if (options.on_chunk) options.on_chunk(done, total);
  };
  evaluator.baseline([&](uint32_t, uint32_t) { tick(); });
  EvaluationReport report = evaluator.header();
  for (size_t t = 0; t < options.tests.size(); ++t) {
    report.tests.push_back(evaluator.evaluate(options.tests[t], [&](uint32_t c, uint32_t n) {
      if (options.on_cache) options.on_cache(c - 1, n, t, options.tests.size());
      tick();
    }));
  }
  return report;
}

}  // namespace kvscope
