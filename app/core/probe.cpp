#include "app/core/probe.h"

#include <algorithm>
#include <fstream>
#include <sstream>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "app/core/evaluation.h"
#include "kv/event_log.h"
#include "kv/policy.h"

namespace kvscope {

using nlohmann::json;

// ------------------------------------------------------------------ verdicts

const char* verdict_name(Verdict v) {
  switch (v) {
    case Verdict::Retained: return "retained";
    case Verdict::Degraded: return "degraded";
    case Verdict::Lost: return "lost";
  }
  return "?";
}

Verdict verdict_for(double logprob, bool first_top1, double full_logprob, bool full_first_top1) {
  const double delta = logprob - full_logprob;
  if (delta < -kLostMargin) return Verdict::Lost;
  if (delta >= -kRetainedMargin && (first_top1 || !full_first_top1)) return Verdict::Retained;
  return Verdict::Degraded;
}

const char* whereabouts_name(Whereabouts w) {
  switch (w) {
    case Whereabouts::Kept: return "kept";
    case Whereabouts::Evicted: return "evicted";
    case Whereabouts::Recalled: return "recalled";
  }
  return "?";
}

// ------------------------------------------------------------------ the run

namespace {

struct Tokens {
  std::vector<int32_t> all;  // BOS + prompt + answer
  uint32_t prompt = 0;       // BOS + context + filler + query
  int32_t fact_begin = 0, fact_end = 0;
};

Tokens tokenize(const Tokenizer& tok, const Scenario& s) {
  Tokens t;
  const std::string prompt = s.context + s.filler + s.query;
  const std::vector<int32_t> prompt_ids = tok.encode(prompt, true);
  t.all = tok.encode(prompt + s.answer, true);
  if (t.all.size() <= prompt_ids.size() || !std::equal(prompt_ids.begin(), prompt_ids.end(), t.all.begin()))
    throw ScenarioError(fmt::format(
        "{}: the answer \"{}\" does not tokenize as a continuation of the query (the last tokens of the query "
        "merge with it); start the answer with a space or end the query at a word boundary",
        s.source.empty() ? s.name : s.source, s.answer));
  t.prompt = static_cast<uint32_t>(prompt_ids.size());
  const std::vector<int32_t> context_ids = tok.encode(s.context, true);
  t.fact_begin = tok.wants_bos() ? 1 : 0;
  // The context's last token may merge with the filler's first; count only
  // the tokens the two encodings share.
  size_t shared = 0;
  while (shared < context_ids.size() && context_ids[shared] == prompt_ids[shared]) ++shared;
  t.fact_end = static_cast<int32_t>(shared);
  return t;
}

ProbeRun score(const std::vector<float>& logits, const Tokens& t, uint32_t n_vocab, std::string cache) {
  ProbeRun run;
  run.cache = std::move(cache);
  std::vector<double> log_p(n_vocab);
  for (size_t i = t.prompt; i < t.all.size(); ++i) {
    const std::span<const float> row(logits.data() + (i - 1) * n_vocab, n_vocab);
    eval_stats::log_softmax(row, log_p);
    run.logprob += log_p[t.all[i]];
    if (i == t.prompt) {
      run.first_prob = std::exp(log_p[t.all[i]]);
      run.top1_token = static_cast<int32_t>(eval_stats::argmax(row));
      run.first_top1 = run.top1_token == t.all[i];
    }
  }
  return run;
}

// Where each fact token is in each layer when the query's last token has
// run: the slot tables then, and the log for when it left.
// `query_step` is the first step after the query's last token.
std::vector<FactToken> whereabouts(const kv::KvCache& cache, const HeldPositions& at_query, const Tokens& t,
                                   uint32_t query_step) {
  const uint32_t n_layer = cache.shape().n_layer, n_kv_head = cache.shape().n_kv_head;
  auto held = [&](uint32_t l, uint32_t h, int32_t p) { return at_query.at(l, h, static_cast<uint32_t>(p)); };
  std::vector<FactToken> fact;
  for (int32_t p = t.fact_begin; p < t.fact_end; ++p) {
    FactToken f;
    f.position = p;
    f.token = t.all[p];
    f.state.assign(n_layer, Whereabouts::Kept);
    f.evicted_step.assign(n_layer, -1);
    fact.push_back(f);
  }
  std::vector<std::vector<bool>> recalled(fact.size(), std::vector<bool>(n_layer, false));
  for (const kv::TraceEvent& e : cache.eviction()->log().events()) {
    const auto* ev = std::get_if<kv::EvictionEvent>(&e);
    const auto* rc = std::get_if<kv::RecallEvent>(&e);
    const kv::EvictionEvent* any = ev ? ev : rc;
    if (!any || any->step >= query_step || any->position < t.fact_begin || any->position >= t.fact_end) continue;
    const size_t i = static_cast<size_t>(any->position - t.fact_begin);
    if (ev && fact[i].evicted_step[ev->layer] < 0) fact[i].evicted_step[ev->layer] = static_cast<int32_t>(ev->step);
    if (rc) recalled[i][rc->layer] = true;
  }
  for (size_t i = 0; i < fact.size(); ++i)
    for (uint32_t l = 0; l < n_layer; ++l) {
      bool all_heads = true;
      for (uint32_t h = 0; h < n_kv_head; ++h) all_heads = all_heads && held(l, h, fact[i].position);
      if (!all_heads)
        fact[i].state[l] = Whereabouts::Evicted;
      else if (recalled[i][l])
        fact[i].state[l] = Whereabouts::Recalled;
    }
  return fact;
}

}  // namespace

ProbeResult run_probe(Engine& engine, const Scenario& scenario, const ProbeConfig& config) {
  const Tokens t = tokenize(engine.tokenizer(), scenario);
  const uint32_t n_vocab = engine.config().n_vocab;
  const uint32_t n_ctx = engine.n_ctx();
  if (t.all.size() > n_ctx)
    throw std::invalid_argument(fmt::format(
        "{}: the scenario is {} tokens with its answer and the context holds {}; shorten its filler or run with "
        "a larger context (-c)",
        scenario.source.empty() ? scenario.name : scenario.source, t.all.size(), n_ctx));

  ProbeResult result;
  result.scenario = scenario;
  result.prompt_tokens = t.prompt;
  result.answer_tokens = static_cast<uint32_t>(t.all.size() - t.prompt);
  result.fact_begin = t.fact_begin;
  result.fact_end = t.fact_end;
  result.measured_distance = t.prompt - static_cast<uint32_t>(t.fact_end);

  {
    Session full(engine, config.cache, n_ctx);
    result.full = score(full.logits_all(t.all), t, n_vocab, "full");
    result.full.verdict = Verdict::Retained;
  }

  for (const std::string& text : config.policies) {
    CacheSpec spec = config.cache;
    spec.policy = text;
    Session session(engine, spec, n_ctx, config.pins);
    // As eval runs an evicting cache: a prompt of what the budget holds, then
    // one token per step, so the question meets the cache the policy kept.
    const size_t prompt = std::min<size_t>(t.prompt, std::max(session.cache().eviction()->room(session.cache().tables()), 1u));
    std::vector<float> logits = session.logits_all({t.all.begin(), t.all.begin() + static_cast<std::ptrdiff_t>(prompt)});
    session.end_prefill();
    HeldPositions held_at_query;
    uint32_t query_step = 0;
    auto snapshot = [&] {
      held_at_query = held_positions(session.cache(), static_cast<uint32_t>(t.all.size()));
      query_step = session.cache().eviction()->steps();
    };
    if (prompt == t.prompt) snapshot();
    for (size_t i = prompt; i < t.all.size(); ++i) {
      const std::vector<float> row = session.logits_all({t.all[i]});
      logits.insert(logits.end(), row.begin(), row.end());
      if (i + 1 == t.prompt) snapshot();
    }
    ProbeRun run = score(logits, t, n_vocab, text);
    run.verdict = verdict_for(run.logprob, run.first_top1, result.full.logprob, result.full.first_top1);
    run.fact = whereabouts(session.cache(), held_at_query, t, query_step);
    run.evictions = session.cache().eviction()->log().eviction_count();
    result.policies.push_back(std::move(run));
  }
  return result;
}

}  // namespace kvscope
