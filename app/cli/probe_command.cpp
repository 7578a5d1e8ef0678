// `kvscope probe`: scenarios (a fact early, a question late) under the full
// cache and each --policy: the answer's log-probability, a verdict, and
// where the fact's tokens were when the question came (app/core/probe.h).
#include <cmath>
#include <cstdio>
#include <iostream>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "app/cli/commands.h"
#include "app/core/paths.h"
#include "app/core/probe.h"
#include "kv/policy.h"

namespace kvscope::cli {

using nlohmann::json;

namespace {

// Per layer, e.g. "12/12" when every fact token is held, "3/12 from step 41"
// when 9 were evicted, the first at step 41.
std::string layer_summary(const ProbeRun& run, uint32_t layer) {
  uint32_t kept = 0, recalled = 0;
  int32_t first_out = -1;
  for (const FactToken& f : run.fact) {
    if (f.state[layer] != Whereabouts::Evicted) ++kept;
    if (f.state[layer] == Whereabouts::Recalled) ++recalled;
    if (f.evicted_step[layer] >= 0 && (first_out < 0 || f.evicted_step[layer] < first_out))
      first_out = f.evicted_step[layer];
  }
  std::string text = fmt::format("{}/{}", kept, run.fact.size());
  if (recalled) text += fmt::format(" ({} recalled)", recalled);
  if (kept < run.fact.size() && first_out >= 0) text += fmt::format(" from step {}", first_out);
  return text;
}

json run_json(const ProbeRun& run, const Tokenizer& tok) {
  json j{{"cache", run.cache},
         {"logprob", run.logprob},
         {"first_prob", run.first_prob},
         {"first_top1", run.first_top1},
         {"top1", tok.decode({run.top1_token})},
         {"verdict", verdict_name(run.verdict)},
         {"evictions", run.evictions}};
  json fact = json::array();
  for (const FactToken& f : run.fact) {
    json layers = json::array();
    for (size_t l = 0; l < f.state.size(); ++l)
      layers.push_back({{"state", whereabouts_name(f.state[l])}, {"evicted_step", f.evicted_step[l]}});
    fact.push_back({{"position", f.position}, {"token", tok.decode({f.token})}, {"layers", layers}});
  }
  if (!run.fact.empty()) j["fact"] = fact;
  return j;
}

void print_result(const ProbeResult& r, const Tokenizer& tok, uint32_t n_layer) {
  fmt::print("{} ({}): fact at tokens {}..{}, question {} tokens later (stated {}), answer {}\n", r.scenario.name,
             r.scenario.source, r.fact_begin, r.fact_end - 1, r.measured_distance, r.scenario.distance,
             json(r.scenario.answer).dump());
  fmt::print("  {:<36} {:>8} {:>7} {:<12} {:<9} fact tokens held per layer\n", "cache", "logprob", "p(1st)",
             "top-1", "verdict");
  auto line = [&](const ProbeRun& run) {
    fmt::print("  {:<36} {:>8.3f} {:>7.3f} {:<12} {:<9}", run.cache, run.logprob, run.first_prob,
               json(tok.decode({run.top1_token})).dump(), verdict_name(run.verdict));
    for (uint32_t l = 0; l < n_layer; ++l)
      fmt::print("{}L{} {}", l ? ", " : " ", l, run.fact.empty() ? "all" : layer_summary(run, l));
    fmt::print("\n");
  };
  line(r.full);
  for (const ProbeRun& run : r.policies) line(run);
}

}  // namespace

int probe(const ProbeOptions& o) {
  std::vector<std::filesystem::path> files(o.scenarios.begin(), o.scenarios.end());
  if (o.all) {
    const auto found = scenario_files(std::filesystem::path(assets_dir()) / "scenarios");
    files.insert(files.end(), found.begin(), found.end());
  }
  if (files.empty())
    throw std::invalid_argument("probe needs scenarios: files (e.g. assets/scenarios/lily-red-ball.json) or --all");
  // Every file and policy is checked before the model loads.
  std::vector<Scenario> scenarios;
  for (const auto& f : files) scenarios.push_back(load_scenario(f));
  ProbeConfig config;
  config.cache = cache_spec_from_options(o.m);
  if (!config.cache.policy.empty() || !config.cache.on_full.empty())
    throw std::invalid_argument("probe compares policies against the full cache: name them with --policy (repeatable), "
                                "not in --kv");
  for (const std::string& text : o.policies) {
    try {
      config.policies.push_back(kv::parse_policy_spec(text).text());
    } catch (const std::invalid_argument& e) {
      throw std::invalid_argument(fmt::format("--policy {}: {}", text, e.what()));
    }
  }

  Engine engine(engine_options(o.m));
  const Tokenizer& tok = engine.tokenizer();
  json results = json::array();
  size_t retained = 0, runs = 0;
  for (const Scenario& s : scenarios) {
    const ProbeResult r = run_probe(engine, s, config);
    for (const ProbeRun& run : r.policies) retained += run.verdict == Verdict::Retained, ++runs;
    if (o.json) {
      json policies = json::array();
      for (const ProbeRun& run : r.policies) policies.push_back(run_json(run, tok));
      results.push_back({{"name", s.name},
                         {"file", s.source},
                         {"answer", s.answer},
                         {"prompt_tokens", r.prompt_tokens},
                         {"answer_tokens", r.answer_tokens},
                         {"fact_begin", r.fact_begin},
                         {"fact_end", r.fact_end},
                         {"distance", s.distance},
                         {"measured_distance", r.measured_distance},
                         {"full", run_json(r.full, tok)},
                         {"policies", policies}});
    } else {
      print_result(r, tok, engine.config().n_layer);
      fmt::print("\n");
    }
  }
  if (o.json) {
    std::cout << json{{"scenarios", results}, {"device", engine.device_name()}}.dump(2) << "\n";
    return 0;
  }
  if (runs)
    fmt::print("{} of {} policy runs retained the answer (retained: log-probability within {} nats of the full "
               "cache's and the first token still top-1 if it was; lost: more than {:.2f} nats below, 10x less "
               "likely)\n",
               retained, runs, kRetainedMargin, kLostMargin);
  return 0;
}

}  // namespace kvscope::cli
