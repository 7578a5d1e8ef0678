// What a KV cache costs and what it breaks, measured against a baseline cache
// over the same text: `kvscope eval` and the GUI's evaluation view.
//
// The text runs teacher-forced in chunks of n_ctx tokens exactly as llama.cpp's
// perplexity tool does by default (examples/perplexity, perplexity()): the
// whole text is tokenized with BOS, cut into n_tokens / n_ctx chunks (the
// remainder is dropped), the first token of every chunk is replaced by BOS,
// each chunk runs on an empty cache, and positions j = n_ctx/2 .. n_ctx-2 of
// each chunk are scored on predicting token j+1 — the second half, where the
// model always has context. Perplexity is exp(mean negative log-likelihood).
//
// Every cache under test runs over the same chunks as the baseline, and at
// each scored position the two next-token distributions are compared over
// the whole vocabulary.
//
// A cache with an evicting policy (CacheSpec::policy) takes each chunk as a
// prompt of as many tokens as its budget holds (the room the policy can
// make), then one token per forward call, as decoding would: every scored
// position sees exactly the cache the policy kept, never a whole-chunk
// prefill that attends to tokens the policy would already have dropped.
//
// For such a cache the evaluation also measures the lost attention
// (app/core/lost_attention.h): at every scored position, the baseline runs
// that position alone with the attention probe on, and the mass its query
// puts on positions the test cache no longer holds is summed per layer.
#pragma once
#include <cstdint>
#include <functional>
#include <memory>
#include <span>
#include <stdexcept>
#include <string>
#include <vector>

#include "app/core/cache_spec.h"
#include "app/core/lost_attention.h"
#include "app/core/session.h"
#include "kv/pins.h"

namespace kvscope {

class EngineTurns;  // app/core/worker.h

// The text has fewer tokens than two chunks; the message says how many it
// has and how many are needed.
struct TextTooShort : std::invalid_argument {
  using std::invalid_argument::invalid_argument;
};

// One cache's run over the text.
struct PerplexityRun {
  CacheSpec spec;
  double ppl = 0;
  double ppl_stderr = 0;          // llama.cpp's "±": the standard error of the mean NLL, times ppl
  double bytes_per_token = 0;     // kv::KvCache::bytes_per_token()
  // Bits the cache allocates per key or value element of a token: every
  // code, scale, minimum, window and tag counted (16 for f16; a sliding-window
  // layer counts its few slots, so less there).
  double bits_per_value = 0;
  uint64_t cache_bytes = 0;       // kv::KvCache::device_bytes() at n_ctx slots
  // What the cache needs to hold the text, per token of context: the most
  // device bytes its live entries (every layer and kv head, each at its
  // layer's bytes per slot) held at once in any chunk, over n_ctx. For a
  // cache without a policy it equals bytes_per_token; for h2o:budget=64 at
  // n_ctx 256 about a quarter of it; a model's sliding-window layers count
  // their window only. A cache sized to its budget allocates this much;
  // kvscope itself allocates n_ctx slots (cache_bytes) so the inspector can
  // show any position.
  double held_bytes_per_token = 0;
  uint64_t peak_live_entries = 0;  // the most live entries at once, every layer and kv head together
  // The most device bytes those live entries held at once (each layer's
  // bytes per slot: a sliding-window layer's cache is smaller).
  double peak_live_bytes = 0;
  uint64_t tokens_evaluated = 0;  // every token run through the model (n_chunks * n_ctx)
  uint64_t evictions = 0;         // by the cache's policy, over all chunks (every layer and kv head)
  uint64_t recalls = 0;           // --spill: entries brought back from host memory, over all chunks
  uint64_t spill_peak_bytes = 0;  // --spill: the most host memory the spilled entries held in a chunk
  double seconds = 0;             // in the forward passes that produced them
  double tok_s() const { return seconds > 0 ? tokens_evaluated / seconds : 0; }
};

// How far a test cache's next-token distributions are from the baseline's,
// over all scored positions.
struct Divergence {
  double kl_mean = 0, kl_median = 0, kl_p99 = 0, kl_max = 0;  // KL(baseline || test), nats
  double top1_agreement = 0;  // fraction of positions where both argmaxes are the same token
  double dp_top_mean = 0;     // mean |p_test(t) - p_base(t)|, t the baseline's argmax
};

struct CacheEvaluation {
  PerplexityRun run;
  Divergence divergence;
  double ppl_ratio = 0;  // run.ppl / baseline.ppl
  // Of an evicting cache: over every scored position (sequence = chunk). A
  // cache that evicts nothing holds every position: all zero, steps 0.
  LostAttentionSummary lost;
};

struct EvaluationReport {
  uint64_t n_tokens = 0;  // of the whole text, BOS included
  uint32_t n_chunks = 0;
  uint32_t n_ctx = 0;
  uint64_t n_scored = 0;  // positions scored per cache: n_chunks * (n_ctx - 1 - n_ctx/2)
  std::string device;
  PerplexityRun baseline;
  std::vector<CacheEvaluation> tests;  // in the order of EvaluationOptions::tests
};

struct EvaluationOptions {
  uint32_t n_ctx = 0;  // 0: the engine's context
  uint32_t max_chunks = 0;  // 0: every chunk of the text; else at most the first max_chunks
  CacheSpec baseline;  // f16 keys and values
  std::vector<CacheSpec> tests;
  // Pinned positions of every test cache with a policy (kv/pins.h).
  kv::PinnedSpans pins;
  // How many regretted evictions each evicting cache reports (most lost mass first).
  size_t regretted_top = 10;
  // Called after each chunk any cache ran (the baseline's first, then each
  // test cache's): chunk runs done, of n_chunks * (1 + tests.size()).
  std::function<void(uint64_t done, uint64_t total)> on_chunk;
  // Called after each test cache finishes a chunk: the chunk (0-based), the
  // cache (index into tests), and their counts. For progress over long sweeps.
  std::function<void(uint32_t chunk, uint32_t n_chunks, size_t test, size_t n_tests)> on_cache;
  // The baseline's logits at the scored positions (and its attention rows
  // when a test cache evicts) are kept for reuse by later caches up to this
  // many bytes; chunks past it are run again for each cache that needs them
  // (the same device gives the same figures).
  uint64_t baseline_memo_bytes = uint64_t{512} << 20;
  // When sessions generate on the same engine meanwhile (the window's Lab
  // panel): every forward call takes the engine in turn with them. Null: the
  // evaluation has the engine to itself.
  EngineTurns* turns = nullptr;
};

// Caches measured one at a time against one baseline over one text: what
// `evaluate_caches` runs, and what a sweep that writes each cache's row as
// it finishes (app/core/lab.h) drives directly. The baseline runs over every
// chunk once (its perplexity), and its figures are kept (within
// baseline_memo_bytes) for every cache evaluated after it. Each cache runs
// every chunk on an empty cache, so the order of caches changes nothing.
class Evaluator {
 public:
  // `tokens` is the whole text tokenized with BOS; options.tests is not
  // used (evaluate() takes the caches). Checks the text and the context and
  // runs nothing. Throws TextTooShort when tokens.size() < 2 * n_ctx
  // (llama.cpp's minimum), std::invalid_argument for an n_ctx the engine
  // cannot hold or one too small to score anything.
  Evaluator(Engine& engine, std::span<const int32_t> tokens, EvaluationOptions options);
  ~Evaluator();
  Evaluator(const Evaluator&) = delete;
  Evaluator& operator=(const Evaluator&) = delete;

  // n_tokens, n_chunks, n_ctx, n_scored, device; `baseline` once baseline()
  // ran; `tests` stays empty (evaluate() returns each cache's figures).
  const EvaluationReport& header() const;
  // Runs the baseline over every chunk the first time; `on_chunk(done, n)`
  // after each.
  const PerplexityRun& baseline(const std::function<void(uint32_t done, uint32_t n)>& on_chunk = {});
  // One cache over every chunk against the baseline (which runs first if it
  // has not). Throws std::invalid_argument for a spec the model's cache
  // cannot take (plan_cache's message).
  CacheEvaluation evaluate(const CacheSpec& spec,
                           const std::function<void(uint32_t done, uint32_t n)>& on_chunk = {});

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

// The baseline and every test cache over the text, through one Evaluator.
// Throws as Evaluator's constructor does.
EvaluationReport evaluate_caches(Engine& engine, std::span<const int32_t> tokens, const EvaluationOptions& options);

// The statistics, exposed for their tests.
namespace eval_stats {

// log of softmax(logits), in double so that tiny probabilities and the
// differences KL sums keep their digits.
void log_softmax(std::span<const float> logits, std::span<double> out);
// KL(p || q) = sum p (log p - log q) from log-probabilities; 0 for identical
// inputs, and never negative (rounding below zero is clamped).
double kl_divergence(std::span<const double> log_p, std::span<const double> log_q);
// Index of the largest value (the lowest index among equals).
uint32_t argmax(std::span<const float> values);
// The q-quantile (0..1) with linear interpolation between order statistics
// (numpy's default): the median of {1, 2, 3, 4} is 2.5. 0 for no values.
double quantile(std::vector<double> values, double q);

}  // namespace eval_stats

}  // namespace kvscope
