// Probes: what eviction silently breaks.
//
// A scenario places a fact early (`context`: "... a girl named Lily who had a
// red ball."), runs a story past it (`filler`), then asks for the fact
// (`query`: "... Lily looked for her") and knows the right continuation
// (`answer`: " red ball"). The probe runs it teacher-forced under the full
// cache and under each policy, and reports the log-probability of the
// answer under each, where the fact's tokens are when the question is asked
// (per layer: kept, evicted at step N, recalled), and a verdict.
//
// Verdicts, from delta = logprob(answer | policy) - logprob(answer | full):
//   retained  delta >= -kRetainedMargin (the answer at least 61% as likely),
//             and the answer's first token still the top-1 if it was with
//             the full cache
//   lost      delta < -kLostMargin (the answer at least 10x less likely)
//   degraded  anything between
//
#pragma once
#include <cstdint>
#include <filesystem>
#include <stdexcept>
#include <string>
#include <vector>

#include "app/core/cache_spec.h"
#include "app/core/scenario.h"
#include "app/core/session.h"
#include "kv/pins.h"

namespace kvscope {

constexpr double kRetainedMargin = 0.5;     // nats: exp(-0.5) = 0.61
constexpr double kLostMargin = 2.302585093;  // nats: ln 10



enum class Verdict : uint8_t { Retained, Degraded, Lost };
const char* verdict_name(Verdict v);
Verdict verdict_for(double logprob, bool first_top1, double full_logprob, bool full_first_top1);

// Where one fact token is, in one layer, when the query's last token runs.
enum class Whereabouts : uint8_t { Kept, Evicted, Recalled };
const char* whereabouts_name(Whereabouts w);

struct FactToken {
  int32_t position = 0;
  int32_t token = 0;
  // Per layer: kept in every kv head; else evicted (from at least one head;
  // `step` the step of that layer's first eviction of it); recalled (evicted,
  // then brought back by the spill tier, and held in every head again).
  std::vector<Whereabouts> state;
  std::vector<int32_t> evicted_step;  // per layer, -1: never evicted
};

struct ProbeRun {
  std::string cache;          // "full" or the policy's canonical text
  double logprob = 0;         // sum over the answer's tokens, nats
  double first_prob = 0;      // probability of the answer's first token
  bool first_top1 = false;    // the answer's first token is the argmax
  int32_t top1_token = -1;    // what the model would say first
  Verdict verdict = Verdict::Retained;
  std::vector<FactToken> fact;  // empty for the full cache (it keeps everything)
  uint64_t evictions = 0;
};

struct ProbeResult {
  Scenario scenario;
  uint32_t prompt_tokens = 0;    // BOS + context + filler + query
  uint32_t answer_tokens = 0;
  int32_t fact_begin = 0, fact_end = 0;  // positions of the context's tokens [begin, end)
  uint32_t measured_distance = 0;        // prompt_tokens - fact_end
  ProbeRun full;
  std::vector<ProbeRun> policies;  // in the order given
};

struct ProbeConfig {
  CacheSpec cache;                       // storage of every run (f16)
  std::vector<std::string> policies;     // policy specs (kv/policy.h)
  kv::PinnedSpans pins;                  // for every policy run
};

// Runs the scenario under the full cache and each policy. Throws
// std::invalid_argument when the scenario does not fit the context (with the
// numbers) or a policy spec is bad, ScenarioError when the answer does not
// tokenize as a continuation of the query.
ProbeResult run_probe(Engine& engine, const Scenario& scenario, const ProbeConfig& config);

}  // namespace kvscope
