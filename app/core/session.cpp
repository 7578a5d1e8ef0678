#include "app/core/session.h"

#include <fmt/format.h>

#include "app/core/paths.h"

namespace kvscope {

namespace {

gpu::ContextOptions context_options(const EngineOptions& o) {
  gpu::ContextOptions c;
  c.device_index = o.device_index;
  c.pipeline_cache_path = pipeline_cache_path();
  c.max_binding_bytes = o.max_binding_bytes;
  return c;
}

uint32_t choose_ctx(const GgufFile& file, uint32_t requested) {
  const LlamaConfig cfg = read_llama_config(file);
  if (requested != 0) return requested;
  return cfg.n_ctx_train ? cfg.n_ctx_train : 2048;
}

double seconds_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

}  // namespace

Engine::Engine(const EngineOptions& o)
    : ctx_(context_options(o)),
      file_(GgufFile::open(require_model(o.model_path.empty() ? default_model_path() : o.model_path))),
      tokenizer_(Tokenizer::from_gguf(file_)),
      n_ctx_(choose_ctx(file_, o.n_ctx)),
      model_(ctx_, file_, o.max_batch, n_ctx_) {}

namespace {
kv::CacheConfig with_capacity(kv::CacheConfig c, const Engine& engine) {
  if (c.capacity == 0) c.capacity = engine.n_ctx();
  return c;
}

CacheSpec storage_spec(const kv::CacheConfig& c) {
  CacheSpec spec;
  spec.k_format = c.k_format;
  spec.v_format = c.v_format;
  if (c.group_size) spec.group_size = c.group_size;
  return spec;
}
}  // namespace

Session::Session(Engine& engine, const kv::CacheConfig& cache_config)
    : engine_(&engine),
      spec_(storage_spec(cache_config)),
      cache_(engine.context(), engine.model().cache_shape(), with_capacity(cache_config, engine),
             engine.model().max_batch()) {}

Session::Session(Engine& engine, const CacheSpec& spec, uint32_t capacity, const kv::PinnedSpans& extra_pins)
    : Session(engine, plan_cache(spec, engine.model().cache_shape(), capacity ? capacity : engine.n_ctx(), extra_pins)
                          .config) {
  spec_ = spec;
  set_extra_pins(extra_pins);
}

void Session::set_extra_pins(const kv::PinnedSpans& pins) {
  const CachePlan plan = plan_cache(spec_, cache_.shape(), cache_.capacity(), pins);
  if (plan.policy) set_policy(*plan.policy, plan.pins);
  else reset();
}

void Session::set_policy(const kv::PolicySpec& spec, const kv::PinnedSpans& pins) {
  const kv::CacheShape shape = cache_.shape();
  cache_.set_policy(kv::make_policy(spec, {shape.n_layer, shape.n_kv_head, cache_.capacity()}, pins), pins);
  reset();
}

void Session::reset() {
  cache_.clear();
  tokens_.clear();
  stats_ = {};
}

std::vector<float> Session::feed(const std::vector<int32_t>& ids) {
  if (ids.empty()) return {};
  std::vector<int32_t> positions(ids.size());
  for (size_t i = 0; i < ids.size(); ++i) positions[i] = static_cast<int32_t>(tokens_.size() + i);
  auto logits = engine_->model().forward(ids, positions, cache_, LogitsWanted::Last, outputs_);
  tokens_.insert(tokens_.end(), ids.begin(), ids.end());
  return {logits.begin(), logits.end()};
}

std::vector<float> Session::logits_all(const std::vector<int32_t>& ids) {
  std::vector<int32_t> positions(ids.size());
  for (size_t i = 0; i < ids.size(); ++i) positions[i] = static_cast<int32_t>(tokens_.size() + i);
  auto logits = engine_->model().forward(ids, positions, cache_, LogitsWanted::All, outputs_);
  tokens_.insert(tokens_.end(), ids.begin(), ids.end());
  return {logits.begin(), logits.end()};
}

std::vector<int32_t> Session::generate(const std::vector<int32_t>& prompt, uint32_t max_new, Sampler& sampler,
                                       const TokenCallback& on_token) {
  if (prompt.empty()) throw std::invalid_argument("the prompt is empty");
  GpuModel& model = engine_->model();
  const uint32_t capacity = cache_.capacity();
  if (!evicting() && tokens_.size() + prompt.size() > capacity)
    throw kv::ContextFull(static_cast<uint32_t>(tokens_.size()), static_cast<uint32_t>(prompt.size()), capacity);

  std::vector<int32_t> positions(prompt.size());
  for (size_t i = 0; i < prompt.size(); ++i) positions[i] = static_cast<int32_t>(tokens_.size() + i);
  auto t0 = std::chrono::steady_clock::now();
  auto logits = model.forward(prompt, positions, cache_, LogitsWanted::Last, outputs_);
  stats_.prefill_seconds += seconds_since(t0);
  stats_.prompt_tokens += static_cast<uint32_t>(prompt.size());
  tokens_.insert(tokens_.end(), prompt.begin(), prompt.end());
  cache_.end_prefill();

  std::vector<int32_t> out;
  Detokenizer detok(engine_->tokenizer());
  t0 = std::chrono::steady_clock::now();
  for (uint32_t i = 0; i < max_new; ++i) {
    const int32_t next = sampler.sample(logits);
    out.push_back(next);
    if (next == engine_->tokenizer().eos()) break;
    if (on_token && !on_token(next, detok.push(next))) break;
    // The context is full: stop, as llama.cpp does (an evicting cache never fills).
    if (!evicting() && tokens_.size() >= capacity) break;
    const int32_t pos = static_cast<int32_t>(tokens_.size());
    logits = model.forward({&next, 1}, {&pos, 1}, cache_, LogitsWanted::Last, outputs_);
    tokens_.push_back(next);
  }
  if (on_token) {
    std::string rest = detok.flush();
    if (!rest.empty()) on_token(-1, rest);
  }
  stats_.decode_seconds += seconds_since(t0);
  stats_.generated_tokens += static_cast<uint32_t>(out.size());
  return out;
}

}  // namespace kvscope
