// What both front ends drive: an Engine (device, model file, weights on the
// device, tokenizer) and Sessions on it (a KV cache and the tokens so far).
#pragma once
#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "app/core/cache_spec.h"
#include "gpu/context.h"
#include "kv/cache.h"
#include "kv/pins.h"
#include "kv/policy.h"
#include "models/forward.h"
#include "models/gguf.h"
#include "models/sampler.h"
#include "models/tokenizer.h"

namespace kvscope {

struct EngineOptions {
  std::string model_path;  // empty: the default model
  int device_index = -1;
  uint32_t n_ctx = 0;      // 0: the model's trained context length
  uint32_t max_batch = 256;
  // Cap on bytes per storage-buffer binding below the device's limit (0: the
  // device limit); tests lower it to run large tensors in row chunks.
  uint64_t max_binding_bytes = 0;
};

class Engine {
 public:
  // Throws with one clear message (missing model, malformed file, no device,
  // out of memory).
  explicit Engine(const EngineOptions& options);

  gpu::Context& context() { return ctx_; }
  const GgufFile& file() const { return file_; }
  const Tokenizer& tokenizer() const { return tokenizer_; }
  GpuModel& model() { return model_; }
  const LlamaConfig& config() const { return model_.config(); }
  uint32_t n_ctx() const { return n_ctx_; }
  std::string device_name() const { return ctx_.info().name; }

 private:
  gpu::Context ctx_;
  GgufFile file_;
  Tokenizer tokenizer_;
  uint32_t n_ctx_;
  GpuModel model_;
};

struct GenerationStats {
  uint32_t prompt_tokens = 0, generated_tokens = 0;
  double prefill_seconds = 0, decode_seconds = 0;
  double prefill_tok_s() const { return prefill_seconds > 0 ? prompt_tokens / prefill_seconds : 0; }
  double decode_tok_s() const { return decode_seconds > 0 ? generated_tokens / decode_seconds : 0; }
};

class Session {
 public:
  // A session whose cache is `spec` (app/core/cache_spec.h) over `capacity`
  // slots (0: the engine's context) with `extra_pins` pinned besides the
  // spec's (a pinned system prompt). plan_cache checks it
  // first: a spec the model cannot run is std::invalid_argument saying what to
  // change, before anything is allocated — a session never runs a cache other
  // than the one it was given.
  Session(Engine& engine, const CacheSpec& spec, uint32_t capacity = 0, const kv::PinnedSpans& extra_pins = {});
  // Storage only, no policy (tests of the formats).
  Session(Engine& engine, const kv::CacheConfig& cache_config);

  // The spec the session was made with (a storage-only session: its storage).
  const CacheSpec& spec() const { return spec_; }
  // Pins `pins` besides the spec's from now on (the cache is re-planned and
  // the session reset; std::invalid_argument when they do not fit the budget).
  void set_extra_pins(const kv::PinnedSpans& pins);
  // Evicts with this policy from now on (the session is reset): budgets are
  // checked against the cache (std::invalid_argument with what to change).
  // The cache then owns the policy, the pins and the event log.
  void set_policy(const kv::PolicySpec& spec, const kv::PinnedSpans& pins = {});
  // True when the cache drops tokens to stay within a budget (any policy but
  // `full`): the context never fills.
  bool evicting() const { return cache_.eviction() && cache_.eviction()->policy().evicts(); }

  // Feeds the prompt, then samples up to `max_new` tokens (stopping at EOS or
  // when the context is full), calling `on_token(id, text)` with text that is
  // always whole UTF-8 characters; returning false from it stops early.
  // Throws kv::ContextFull when the prompt alone does not fit.
  using TokenCallback = std::function<bool(int32_t id, const std::string& text)>;
  std::vector<int32_t> generate(const std::vector<int32_t>& prompt, uint32_t max_new, Sampler& sampler,
                                const TokenCallback& on_token = {});

  // Reads `ids` into the cache (continuing the session) and returns the
  // logits of the last one only: a refill after a change of pins, a loaded
  // conversation, a prompt. (Every token's logits of a 32K-token
  // conversation would be 4 GB.) Empty `ids`: nothing, empty logits.
  std::vector<float> feed(const std::vector<int32_t>& ids);
  // Teacher-forced logits for every token of `ids` (continuing the session).
  // With an evicting policy the cache may take them in several steps.
  std::vector<float> logits_all(const std::vector<int32_t>& ids);
  // The prompt is complete (SnapKV and PyramidKV compress it now); later
  // calls are decode steps. generate() calls it after its prompt.
  void end_prefill() { cache_.end_prefill(); }

  void reset();
  const std::vector<int32_t>& tokens() const { return tokens_; }
  kv::KvCache& cache() { return cache_; }
  const kv::KvCache& cache() const { return cache_; }
  // This session's attention probe (models/forward.h): set `on` for the calls
  // whose last token's attention should be read back; the rows stay until the
  // next call.
  AttentionProbe& attention_probe() { return outputs_.probe; }
  const AttentionProbe& attention_probe() const { return outputs_.probe; }
  const GenerationStats& stats() const { return stats_; }

 private:
  Engine* engine_;
  CacheSpec spec_;
  kv::KvCache cache_;
  ForwardOutputs outputs_;  // this session's logits and attention probe (models/forward.h)
  std::vector<int32_t> tokens_;
  GenerationStats stats_;
};

}  // namespace kvscope
