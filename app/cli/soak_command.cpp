// `kvscope soak`: memory over a long generation. Each cache generates -n
// tokens (a story, then " Then" whenever a round of --sample-every tokens
// ends, a new story after an end of text: the shape of a long chat) while the
// process's resident memory, kvscope's device memory and the eviction log's
// size are sampled. The figures that matter are the slopes after warm-up
// (the first fifth of the tokens): a cache that holds a fixed budget should
// cost nothing more at token 10,000 than at token 2,000.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <iostream>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "app/cli/commands.h"
#include "app/core/cache_spec.h"
#include "app/core/memory.h"
#include "app/core/session.h"
#include "gpu/context.h"
#include "kv/event_log.h"
#include "kv/policy.h"

namespace kvscope::cli {

using nlohmann::json;

namespace {

struct SoakSample {
  uint64_t tokens = 0, rss = 0, heap = 0, device = 0, log_events = 0, folded_events = 0;
};

struct SoakRun {
  std::string cache;
  uint64_t tokens = 0;
  double seconds = 0;
  std::vector<SoakSample> samples;
  double rss_slope = 0, heap_slope = 0, device_slope = 0, log_slope = 0;  // bytes (events) per 1000 tokens, after warm-up
  int64_t rss_growth = 0;                                  // last sample - first after warm-up
  uint64_t log_max_events = 0;
};

// Rolling StreamingLLM, then every policy that evicts, at half the context.
std::vector<std::string> default_specs(uint32_t capacity) {
  const uint32_t budget = std::max(capacity / 2, 16u);
  std::vector<std::string> specs{fmt::format("streamingllm:sinks=4,window={},rolling", budget - 4)};
  for (std::string_view name : kv::policy_names())
    if (auto text = kv::policy_at_budget(name, budget)) specs.push_back(*text);
  return specs;
}

SoakRun soak_one(Engine& engine, const CacheSpec& spec, const SoakOptions& o) {
  Session session(engine, spec, o.m.n_ctx);
  if (!session.evicting())
    throw std::invalid_argument(fmt::format(
        "cache \"{}\" does not evict: its context fills at {} tokens; a soak needs an evicting policy (--policy)",
        spec.label(), session.cache().capacity()));
  kv::EventLog& log = session.cache().eviction()->log();  // its limit: --log-events, set for the process
  SoakRun run;
  run.cache = spec.label();
  run.log_max_events = log.max_events();
  auto sample = [&](uint64_t tokens) {
    run.samples.push_back({tokens, resident_bytes(), heap_in_use_bytes(), engine.context().bytes_allocated(),
                           log.events().size(), log.folded_events()});
  };
  SamplerConfig sc;
  sc.seed = 1;
  Sampler sampler(sc);
  const Tokenizer& tok = engine.tokenizer();
  std::vector<int32_t> next = tok.encode("Once upon a time", true);
  const std::vector<int32_t> then = tok.encode(" Then", false);
  sample(0);
  const auto t0 = std::chrono::steady_clock::now();
  while (run.tokens < o.tokens) {
    const uint32_t n = static_cast<uint32_t>(std::min<uint64_t>(o.sample_every, o.tokens - run.tokens));
    const std::vector<int32_t> ids = session.generate(next, n, sampler);
    run.tokens += ids.size() + next.size();
    next = !ids.empty() && ids.back() == tok.eos() ? std::vector<int32_t>{tok.bos()} : then;
    sample(run.tokens);
  }
  run.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();

  std::vector<double> x, rss, heap, device, events;
  const double warm = 0.2 * static_cast<double>(run.tokens);
  for (const SoakSample& s : run.samples) {
    if (static_cast<double>(s.tokens) < warm) continue;
    x.push_back(static_cast<double>(s.tokens) / 1000.0);
    rss.push_back(static_cast<double>(s.rss));
    heap.push_back(static_cast<double>(s.heap));
    device.push_back(static_cast<double>(s.device));
    events.push_back(static_cast<double>(s.log_events));
  }
  run.rss_slope = least_squares_slope(x, rss);
  run.heap_slope = least_squares_slope(x, heap);
  run.device_slope = least_squares_slope(x, device);
  run.log_slope = least_squares_slope(x, events);
  if (!rss.empty()) run.rss_growth = static_cast<int64_t>(rss.back() - rss.front());
  return run;
}

std::string kib(double bytes) { return fmt::format("{:+.1f} KiB", bytes / 1024.0); }
std::string mib(double bytes) { return fmt::format("{:.1f}", bytes / (1024.0 * 1024.0)); }

}  // namespace

int soak(const SoakOptions& o) {
  if (o.log_events > 0) kv::EventLog::set_default_max_events(o.log_events);
  Engine engine(engine_options(o.m));
  const uint32_t capacity = o.m.n_ctx ? o.m.n_ctx : engine.n_ctx();
  std::vector<std::string> texts = o.policies.empty() ? default_specs(capacity) : o.policies;
  std::vector<CacheSpec> specs;
  for (const std::string& text : texts) {
    // A bare policy goes on --kv's storage; a whole spec ("q8 + h2o:...") is taken as written.
    const std::string whole = text.find('+') == std::string::npos && !o.m.kv.empty() ? o.m.kv + " + " + text : text;
    specs.push_back(parse_cache_spec(whole));
    plan_cache(specs.back(), engine.model().cache_shape(), capacity);  // every refusal before the first run
  }
  if (!o.json)
    std::printf("soak: %u tokens per cache on %s (context %u), memory sampled every %u tokens; slopes after the "
                "first fifth\n\n| cache | tok/s | resident MiB (start → end) | resident per 1k tokens | heap in use per 1k "
                "tokens | device MiB | device per 1k tokens | log events kept (folded) |\n|---|---:|---:|---:|---:|---:|---:|---:|\n",
                o.tokens, engine.device_name().c_str(), capacity, o.sample_every);
  json runs = json::array();
  for (const CacheSpec& spec : specs) {
    const SoakRun run = soak_one(engine, spec, o);
    const SoakSample& first = run.samples.front();
    const SoakSample& last = run.samples.back();
    if (!o.json) {
      std::printf("| %s | %.1f | %s → %s | %s | %s | %s | %s | %llu (%llu) |\n", run.cache.c_str(),
                  run.seconds > 0 ? run.tokens / run.seconds : 0.0, mib(first.rss).c_str(), mib(last.rss).c_str(),
                  kib(run.rss_slope).c_str(), kib(run.heap_slope).c_str(), mib(last.device).c_str(),
                  kib(run.device_slope).c_str(),
                  static_cast<unsigned long long>(last.log_events), static_cast<unsigned long long>(last.folded_events));
      std::fflush(stdout);
    }
    json samples = json::array();
    for (const SoakSample& s : run.samples)
      samples.push_back({{"tokens", s.tokens}, {"rss", s.rss}, {"heap", s.heap}, {"device", s.device},
                         {"log_events", s.log_events},
                         {"folded_events", s.folded_events}});
    runs.push_back({{"cache", run.cache},
                    {"tokens", run.tokens},
                    {"seconds", run.seconds},
                    {"tok_s", run.seconds > 0 ? run.tokens / run.seconds : 0.0},
                    {"rss_slope_bytes_per_1k_tokens", run.rss_slope},
                    {"rss_growth_after_warmup_bytes", run.rss_growth},
                    {"heap_slope_bytes_per_1k_tokens", run.heap_slope},
                    {"device_slope_bytes_per_1k_tokens", run.device_slope},
                    {"log_events_slope_per_1k_tokens", run.log_slope},
                    {"log_max_events", run.log_max_events},
                    {"samples", samples}});
  }
  if (o.json)
    std::cout << json{{"device", engine.device_name()}, {"model", engine.file().path()}, {"context", capacity},
                      {"tokens_per_cache", o.tokens}, {"runs", runs}}
                     .dump(2)
              << "\n";
  else
    std::printf("\nresident: the whole process (every cache so far; the allocator keeps what it freed). device: "
                "buffers kvscope holds on the device. A flat run reads about +0 per 1k tokens.\n");
  return 0;
}

}  // namespace kvscope::cli
