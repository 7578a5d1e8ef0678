#include "app/cli/commands.h"

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <filesystem>
#include <cstdio>
#include <fstream>
#include <functional>
#include <memory>
#include <iostream>
#include <numeric>
#include <sstream>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "app/core/atomic_file.h"
#include "app/core/cache_spec.h"
#include "app/core/paths.h"
#include "app/core/session.h"
#include "gpu/context.h"
#include "kv/event_log.h"
#include "kv/pins.h"
#include "kv/policy.h"
#include "models/hparams.h"
#include "models/llama2c.h"
#include "models/quantize.h"
#include "models/synthetic.h"
#include "models/tokenizer.h"

namespace kvscope::cli {

using nlohmann::json;

namespace {

std::string model_path(const std::string& m) { return require_model(m.empty() ? default_model_path() : m); }

// Exact device bytes per token of keys and values in `format` (default
// group) for a cache of the model's trained context: scales and kivi2's f16
// window included, and sliding-window layers holding only their window, as
// KvCache allocates them for a session's batches.
double kv_format_bytes_per_token(const LlamaConfig& cfg, kv::Format format) {
  kv::CacheConfig c;
  c.k_format = c.v_format = format;
  c.capacity = std::max(cfg.n_ctx_train, 1u);
  return double(kv::cache_device_bytes(cache_shape_of(cfg), c, EngineOptions{}.max_batch)) / c.capacity;
}

}  // namespace

void write_trace(const Session& session, const ModelOptions& m) {
  if (m.trace.empty() || !session.cache().eviction()) return;
  std::ostringstream text;
  kv::write_jsonl(session.cache().eviction()->log(), text);
  try {
    write_file_atomically(m.trace, text.str());
  } catch (const std::runtime_error& e) {
    throw std::runtime_error(fmt::format("--trace: {}", e.what()));
  }
}

struct StreamedTrace::Open {
  kv::EventLog* log;
  AtomicFile file;
  kv::TraceWriter writer;
  Open(kv::EventLog& l, const std::string& path) : log(&l), file(path), writer(file.stream(), l) {}
};

StreamedTrace::StreamedTrace(Session& session, const ModelOptions& m) {
  kv::EvictionDriver* eviction = session.cache().eviction();
  if (m.trace.empty() || !eviction) return;
  try {
    open_ = std::make_unique<Open>(eviction->log(), m.trace);
  } catch (const std::runtime_error& e) {
    throw std::runtime_error(fmt::format("--trace: {}", e.what()));
  }
  eviction->log().on_fold([open = open_.get()](const kv::EventLog& log) { open->writer.append(log); });
}

StreamedTrace::~StreamedTrace() {
  if (open_) open_->log->on_fold(nullptr);
}

void StreamedTrace::finish() {
  if (!open_) return;
  try {
    open_->writer.append(*open_->log);
    open_->file.commit();
  } catch (const std::runtime_error& e) {
    throw std::runtime_error(fmt::format("--trace: {}", e.what()));
  }
}

namespace {

std::string policy_text(const Session& session) {
  return session.cache().eviction() ? session.cache().eviction()->policy().spec().text() : "none";
}

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  const size_t n = v.size();
  return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

}  // namespace

std::string read_text_file(const std::string& path, std::string_view command) {
  if (path.empty())
    throw std::invalid_argument(fmt::format("{} needs a text to evaluate on: -f FILE (for example -f tests/data/corpus.txt)", command));
  std::error_code ec;
  if (!std::filesystem::is_regular_file(path, ec))
    throw std::runtime_error(fmt::format("-f {}: cannot read the file ({})", path,
                                         std::filesystem::exists(path, ec) ? "not a regular file" : "no such file"));
  std::ifstream in(path, std::ios::binary);
  if (!in) throw std::runtime_error(fmt::format("-f {}: cannot read the file ({})", path, std::strerror(errno)));
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

EngineOptions engine_options(const ModelOptions& m, uint32_t max_batch) {
  EngineOptions e;
  e.model_path = model_path(m.model);
  e.device_index = m.device;
  e.n_ctx = m.n_ctx;
  e.max_batch = max_batch;
  return e;
}

bool wants_policy(const ModelOptions& m) {
  return !m.policy.empty() || !m.pins.empty() || !m.trace.empty() || !m.on_full.empty() ||
         m.kv.find('+') != std::string::npos;
}

std::string human_bytes(double b) {
  const char* units[] = {"B", "KiB", "MiB", "GiB", "TiB"};
  int u = 0;
  while (b >= 1024 && u < 4) b /= 1024, ++u;
  return u == 0 ? fmt::format("{:.0f} {}", b, units[u]) : fmt::format("{:.2f} {}", b, units[u]);
}

// ------------------------------------------------------------------------ run

CacheSpec cache_spec_from_options(const ModelOptions& m) {
  CacheSpec spec = cache_spec_from_flags(
      CacheFlags{m.kv, m.kv_k, m.kv_v, m.kv_group, m.kv_hadamard, m.kv_sparse_v, m.policy, m.pins, m.on_full, m.spill, m.spill_max_mb});
  // --trace writes the event log, which a policy keeps: `full` logs without evicting.
  if (!m.trace.empty() && spec.policy.empty() && spec.on_full.empty()) spec.policy = "full";
  return spec;
}

int run(const RunOptions& o) {
  Engine engine(engine_options(o.m));
  Session session(engine, cache_spec_from_options(o.m), o.m.n_ctx);
  StreamedTrace trace(session, o.m);
  const std::vector<int32_t> prompt = engine.tokenizer().encode(o.prompt, true);
  SamplerConfig sc;
  sc.temperature = o.temp;
  sc.top_k = o.top_k;
  sc.top_p = o.top_p;
  sc.seed = o.seed_set ? o.seed : static_cast<uint64_t>(std::chrono::system_clock::now().time_since_epoch().count());
  Sampler sampler(sc);
  if (o.n_predict < 0) throw std::invalid_argument("-n must be >= 0");

  std::string text;
  auto on_token = [&](int32_t, const std::string& piece) {
    text += piece;
    if (!o.json) {
      std::fwrite(piece.data(), 1, piece.size(), stdout);
      std::fflush(stdout);
    }
    return true;
  };
  if (!o.json) {
    std::fputs(o.prompt.c_str(), stdout);
    std::fflush(stdout);
  }
  // With policy `full` named, a context that fills is an error that says what
  // to do; without a policy the run stops there, as llama.cpp's does.
  const bool full_policy = session.cache().eviction() && !session.evicting();
  const std::vector<int32_t> ids = session.generate(prompt, static_cast<uint32_t>(o.n_predict), sampler, on_token);
  if (full_policy && ids.size() < static_cast<size_t>(o.n_predict) &&
      session.tokens().size() >= session.cache().capacity() && (ids.empty() || ids.back() != engine.tokenizer().eos())) {
    if (!o.json) std::fputs("\n", stdout);
    std::fflush(stdout);
    const uint32_t capacity = session.cache().capacity();
    throw kv::ContextFull(capacity, static_cast<uint32_t>(o.n_predict - ids.size()), capacity,
                          fmt::format("policy full keeps every token; {} of {} new tokens were written", ids.size(),
                                      o.n_predict));
  }
  const GenerationStats& st = session.stats();
  trace.finish();
  const uint64_t evictions = session.cache().eviction() ? session.cache().eviction()->log().eviction_count() : 0;
  if (o.json) {
    json j;
    j["policy"] = policy_text(session);
    j["evictions"] = evictions;
    j["prompt_ids"] = prompt;
    j["ids"] = ids;
    j["text"] = text;
    j["prefill_tok_s"] = st.prefill_tok_s();
    j["decode_tok_s"] = st.decode_tok_s();
    j["device"] = engine.device_name();
    std::cout << j.dump() << "\n";
  } else {
    std::fputs("\n", stdout);
    std::fflush(stdout);
    std::fprintf(stderr, "prefill: %u tokens, %.1f tokens/s | decode: %u tokens, %.1f tokens/s | %s\n",
                 st.prompt_tokens, st.prefill_tok_s(), st.generated_tokens, st.decode_tok_s(),
                 engine.device_name().c_str());
    if (session.cache().eviction())
      std::fprintf(stderr, "policy: %s | %llu evictions\n", policy_text(session).c_str(),
                   static_cast<unsigned long long>(evictions));
  }
  return 0;
}

// ----------------------------------------------------------------------- info

int info(const std::string& model, bool as_json) {
  const std::string path = model_path(model);
  GgufFile file = GgufFile::open(path);
  const LlamaConfig cfg = read_llama_config(file);
  const uint64_t params = parameter_count(file);
  json j;
  j["path"] = path;
  j["version"] = file.version();
  j["alignment"] = file.alignment();
  j["architecture"] = cfg.arch;
  j["name"] = cfg.name;
  j["parameters"] = params;
  j["n_vocab"] = cfg.n_vocab;
  j["dim"] = cfg.dim;
  j["n_layer"] = cfg.n_layer;
  j["n_head"] = cfg.n_head;
  j["n_kv_head"] = cfg.n_kv_head;
  j["head_dim"] = cfg.head_dim;
  j["ffn_dim"] = cfg.ffn_dim;
  j["n_ctx_train"] = cfg.n_ctx_train;
  j["rope_theta"] = cfg.rope_theta;
  j["norm_eps"] = cfg.norm_eps;
  j["tied_output"] = cfg.tied_output;
  j["rope_mode"] = cfg.rope_mode == RopeMode::Neox ? "neox" : "normal";
  j["rope_freqs"] = cfg.rope_freqs;
  j["qkv_bias"] = cfg.qkv_bias;
  j["qk_norm"] = cfg.qk_norm;
  j["post_norms"] = cfg.post_norms;
  j["ffn_activation"] = cfg.ffn_act == FfnActivation::GeluTanh ? "gelu_tanh" : "silu";
  j["attention_scale"] = cfg.attn_scale;
  j["rope_linear_factor"] = cfg.rope_linear_factor;
  j["rope_attn_factor"] = cfg.rope_attn_factor;
  j["rope_original_context"] = cfg.rope_ctx_orig;
  j["rope_factors_long"] = cfg.rope_factors_long;
  json layers = json::array();  // per layer: its attention window (0: global)
  for (uint32_t l = 0; l < cfg.n_layer; ++l) layers.push_back(cfg.layer_window(l));
  j["layer_windows"] = layers;
  if (cfg.has_local_layers()) {
    j["sliding_window"] = cfg.sliding_window;
    j["local_layers"] = local_layer_count(cfg);
    j["rope_theta_local"] = cfg.rope_theta_local;
  }
  json kvj;
  for (kv::Format f : kv::all_formats())
    kvj[std::string(kv::format_name(f))] = kv_format_bytes_per_token(cfg, f);
  j["kv_bytes_per_token"] = kvj;
  json tensors = json::array();
  std::map<std::string, uint64_t> by_type;
  for (const auto& t : file.tensors()) {
    const std::string type(type_traits(uint32_t(t.type))->name);
    tensors.push_back({{"name", t.name}, {"type", type}, {"shape", t.shape}, {"bytes", t.n_bytes}});
    by_type[type] += t.n_bytes;
  }
  j["tensors"] = tensors;
  if (as_json) {
    std::cout << j.dump(2) << "\n";
    return 0;
  }
  fmt::print("{}\n  GGUF v{}, alignment {}, {}\n", path, file.version(), file.alignment(), human_bytes(file.file_size()));
  fmt::print("  architecture {} ({}), {:.2f} M parameters\n", cfg.arch, cfg.name.empty() ? "unnamed" : cfg.name,
             params / 1e6);
  fmt::print("  vocab {}, dim {}, layers {}, heads {} (kv {}), head_dim {}, ffn {}, context {}\n", cfg.n_vocab,
             cfg.dim, cfg.n_layer, cfg.n_head, cfg.n_kv_head, cfg.head_dim, cfg.ffn_dim, cfg.n_ctx_train);
  fmt::print("  rope theta {} ({} pairs{}{}), rms eps {}, output {}{}\n", cfg.rope_theta,
             cfg.rope_mode == RopeMode::Neox ? "NeoX" : "normal", cfg.rope_freqs ? ", rope_freqs factors" : "",
             cfg.rope_linear_factor != 1.0f ? fmt::format(", linear scaling x{:g}", cfg.rope_linear_factor)
             : cfg.rope_factors_long
                 ? fmt::format(", LongRoPE: long factors past {} tokens, attn factor {:g}", cfg.rope_ctx_orig,
                               cfg.rope_attn_factor)
                 : "",
             cfg.norm_eps, cfg.tied_output ? "tied to token_embd" : "output.weight",
             cfg.qkv_bias ? ", q/k/v biases" : "");
  if (cfg.has_local_layers()) {
    std::string kinds;  // L = local (sliding window), G = global, layer by layer
    for (uint32_t l = 0; l < cfg.n_layer; ++l) kinds += cfg.layer_window(l) ? 'L' : 'G';
    const uint32_t local = local_layer_count(cfg);
    fmt::print("  layers: {} local (sliding window of {} tokens, rope theta {}), {} global: {}\n", local,
               cfg.sliding_window, cfg.rope_theta_local, cfg.n_layer - local, kinds);
    fmt::print("  a local layer's cache holds at most {} tokens (its window and one batch of {})\n",
               std::min<uint64_t>(cfg.n_ctx_train, uint64_t{cfg.sliding_window} + EngineOptions{}.max_batch),
               EngineOptions{}.max_batch);
  }
  if (cfg.post_norms || cfg.ffn_act != FfnActivation::Silu || cfg.embed_scale != 1.0f)
    fmt::print("  {}{}, embeddings x {:g}, query scale {:g}\n", cfg.post_norms ? "norms before and after attention and FFN, " : "",
               cfg.ffn_act == FfnActivation::GeluTanh ? "GeGLU" : "SwiGLU", cfg.embed_scale, cfg.attn_scale);
  fmt::print("  KV bytes per token:");
  for (kv::Format f : kv::all_formats()) fmt::print(" {} {:g}", kv::format_name(f), kv_format_bytes_per_token(cfg, f));
  fmt::print(" (at context {}, group {}; f16 cache {})\n", cfg.n_ctx_train, kv::default_group_size(cfg.head_dim),
             human_bytes(kv_format_bytes_per_token(cfg, kv::Format::F16) * cfg.n_ctx_train));
  // Bits per key or value element, every scale, minimum, window and tag counted.
  fmt::print("  KV bits per value:");
  const double values_per_token = 2.0 * cfg.n_layer * cfg.kv_dim();
  for (kv::Format f : kv::all_formats())
    fmt::print(" {} {:.2f}", kv::format_name(f), kv_format_bytes_per_token(cfg, f) * 8.0 / values_per_token);
  fmt::print("\n");
  fmt::print("  weights by type:");
  for (const auto& [type, bytes] : by_type) fmt::print(" {} {}", type, human_bytes(double(bytes)));
  fmt::print("\n  metadata ({} keys):\n", file.metadata_order().size());
  for (const auto& key : file.metadata_order()) {
    const GgufValue& v = file.get(key);
    std::string shown;
    switch (v.type) {
      case GgufValueType::STRING: shown = v.as_string(key); if (shown.size() > 60) shown = shown.substr(0, 57) + "..."; break;
      case GgufValueType::ARRAY: shown = fmt::format("[{} items]", v.as_array(key).items.size()); break;
      case GgufValueType::FLOAT32: case GgufValueType::FLOAT64: shown = fmt::format("{}", v.as_float(key)); break;
      case GgufValueType::BOOL: shown = v.as_bool(key) ? "true" : "false"; break;
      case GgufValueType::INT8: case GgufValueType::INT16: case GgufValueType::INT32: case GgufValueType::INT64:
        shown = fmt::format("{}", v.as_int(key)); break;
      default: shown = fmt::format("{}", v.as_uint(key)); break;
    }
    fmt::print("    {:<44} {}\n", key, shown);
  }
  fmt::print("  tensors ({}):\n", file.tensors().size());
  for (const auto& t : file.tensors()) {
    std::string shape;
    for (size_t i = 0; i < t.shape.size(); ++i) shape += (i ? " x " : "") + std::to_string(t.shape[i]);
    fmt::print("    {:<28} {:<5} [{}]\n", t.name, type_traits(uint32_t(t.type))->name, shape);
  }
  return 0;
}

// ------------------------------------------------------------------- tokenize

int tokenize(const TokenizeOptions& o) {
  GgufFile file = GgufFile::open(model_path(o.model));
  const Tokenizer tok = Tokenizer::from_gguf(file);
  const std::vector<int32_t> ids = tok.encode(o.text, tok.wants_bos());
  if (o.json) {
    json pieces = json::array();
    for (int32_t id : ids) pieces.push_back(tok.piece(id));
    std::cout << json{{"ids", ids}, {"pieces", pieces}}.dump() << "\n";
    return 0;
  }
  for (int32_t id : ids) fmt::print("{:>6} -> '{}'\n", id, tok.piece(id));
  return 0;
}

// -------------------------------------------------------------------- devices

int devices(bool as_json) {
  const auto list = gpu::list_devices();
  if (as_json) {
    json arr = json::array();
    for (const auto& d : list)
      arr.push_back({{"index", d.index}, {"name", d.name}, {"type", d.type}, {"driver", d.driver},
                     {"memory_bytes", d.device_local_bytes}, {"subgroup_size", d.subgroup_size},
                     {"max_storage_buffer_range", d.max_storage_buffer_range}});
    std::cout << arr.dump(2) << "\n";
    return 0;
  }
  for (const auto& d : list)
    fmt::print("{}: {} ({}), {} memory, subgroup {}, max binding {}, driver {}\n", d.index, d.name, d.type,
               human_bytes(double(d.device_local_bytes)), d.subgroup_size,
               human_bytes(double(d.max_storage_buffer_range)), d.driver);
  return 0;
}

// ---------------------------------------------------------------------- bench

namespace {

struct BenchTimes {
  double prefill_tok_s = 0, decode_tok_s = 0;  // medians over the repetitions
};

// Times o.reps runs (after a warm-up) of a pseudo-random prompt of
// o.n_prompt tokens and o.n_gen decode steps; `reset` empties the cache.
BenchTimes time_prefill_and_decode(GpuModel& model, kv::KvCache& cache, const std::function<void()>& reset,
                                   const BenchOptions& o) {
  // A deterministic pseudo-random prompt (the speed does not depend on the words).
  std::vector<int32_t> prompt(o.n_prompt);
  uint32_t state = 12345;
  for (auto& t : prompt) t = static_cast<int32_t>((state = state * 1664525u + 1013904223u) % model.config().n_vocab);

  std::vector<double> prefill, decode;
  auto run_once = [&] {
    reset();
    std::vector<int32_t> pos(prompt.size());
    std::iota(pos.begin(), pos.end(), 0);
    auto t0 = std::chrono::steady_clock::now();
    model.forward(prompt, pos, cache, LogitsWanted::Last);
    cache.end_prefill();
    auto t1 = std::chrono::steady_clock::now();
    for (uint32_t i = 0; i < o.n_gen; ++i) {
      const int32_t tok = prompt[i % prompt.size()];
      const int32_t p = static_cast<int32_t>(o.n_prompt + i);
      model.forward({&tok, 1}, {&p, 1}, cache, LogitsWanted::Last);
    }
    auto t2 = std::chrono::steady_clock::now();
    prefill.push_back(o.n_prompt / std::chrono::duration<double>(t1 - t0).count());
    if (o.n_gen) decode.push_back(o.n_gen / std::chrono::duration<double>(t2 - t1).count());
  };
  run_once();  // warm-up: pipelines, descriptor sets, caches
  prefill.clear();
  decode.clear();
  model.take_profile();
  for (uint32_t r = 0; r < o.reps; ++r) run_once();
  return {median(prefill), decode.empty() ? 0 : median(decode)};
}

// Prints (or returns as JSON) what both bench paths report. Effective GB/s:
// the bytes one decode step reads — every weight, plus the KV cache at the
// mean fill of the generation — times decode tokens/s.
void report_bench(GpuModel& model, const kv::KvCache& cache, const BenchTimes& times, const BenchOptions& o,
                  const std::string& device, const std::string& model_name, json extra) {
  const double kv_read = cache.bytes_per_token() * (o.n_prompt + o.n_gen / 2.0);
  const double decode_gb_s = times.decode_tok_s * (double(model.weight_bytes()) + kv_read) / 1e9;
  if (o.json) {
    json j{{"prefill_tok_s", times.prefill_tok_s}, {"decode_tok_s", times.decode_tok_s}, {"decode_gb_s", decode_gb_s},
           {"device", device}, {"model", model_name}, {"n_prompt", o.n_prompt}, {"n_gen", o.n_gen}, {"reps", o.reps},
           {"kv", cache_spec_from_options(o.m).name()},
           {"policy", cache.eviction() ? cache.eviction()->policy().spec().text() : "none"},
           {"weight_bytes", model.weight_bytes()},
           {"dispatches_per_token", model.last_dispatch_count()}};
    j.update(extra);
    if (o.profile) j["profile_ms"] = model.take_profile();
    std::cout << j.dump(2) << "\n";
    return;
  }
  fmt::print("device   {}\nmodel    {} ({} on device)\n", device, model_name, human_bytes(double(model.weight_bytes())));
  fmt::print("prefill  {:>9.1f} tokens/s  (p={}, median of {})\n", times.prefill_tok_s, o.n_prompt, o.reps);
  fmt::print("decode   {:>9.1f} tokens/s  (n={}, {:.2f} GB/s effective, {} dispatches/token)\n", times.decode_tok_s,
             o.n_gen, decode_gb_s, model.last_dispatch_count());
  if (o.profile) {
    auto prof = model.take_profile();
    double total = 0;
    for (const auto& [name, ms] : prof) total += ms;
    fmt::print("GPU time by shader over {} runs ({:.1f} ms):\n", o.reps, total);
    std::vector<std::pair<double, std::string>> rows;
    for (const auto& [name, ms] : prof) rows.emplace_back(ms, name);
    std::sort(rows.rbegin(), rows.rend());
    for (const auto& [ms, name] : rows) fmt::print("  {:<16} {:>9.2f} ms {:>5.1f}%\n", name, ms, 100 * ms / total);
  }
}

// bench --synthetic NAME: a model of a real shape with pseudo-random weights,
// built in memory (no file is written), uploaded, and the memory freed
// before timing. The context is just what the run needs unless -c says.
int bench_synthetic(const BenchOptions& o) {
  if (!o.m.model.empty()) throw std::invalid_argument("--synthetic builds its own model; leave out -m");
  if (wants_policy(o.m))
    throw std::invalid_argument("--synthetic times the full cache; leave out --policy, --pin and --trace");
  SyntheticSpec spec = synthetic_preset(o.synthetic);
  spec.type = o.type;
  // 256 quantized rows per matrix, the rest copies of them: the same bytes to
  // read, built in seconds whatever the type's quantizer costs.
  spec.distinct_rows = 256;
  const uint32_t capacity = o.m.n_ctx ? o.m.n_ctx : o.n_prompt + o.n_gen;
  if (o.n_prompt == 0 || o.n_prompt + o.n_gen > capacity)
    throw std::invalid_argument(fmt::format(
        "-p {} + -n {} must be at least 1 and fit the context of {} tokens (-c)", o.n_prompt, o.n_gen, capacity));

  gpu::ContextOptions co;
  co.device_index = o.m.device;
  co.pipeline_cache_path = pipeline_cache_path();
  gpu::Context ctx(co);
  const uint64_t parameters = synthetic_parameter_count(spec);
  // Refuse before generating gigabytes that could not be uploaded (the model
  // checks again, exactly, with its activations).
  const uint64_t weight_bytes = synthetic_weight_bytes(spec);
  if (weight_bytes > ctx.info().device_local_bytes) {
    // Name the types whose weights would fit, if any.
    std::string fitting;
    for (const char* type : {"F16", "Q8_0", "Q6_K", "Q5_K_M", "Q4_K_M", "Q4_0"}) {
      SyntheticSpec smaller = spec;
      smaller.type = type;
      if (synthetic_weight_bytes(smaller) <= ctx.info().device_local_bytes)
        fitting += (fitting.empty() ? "" : ", ") + std::string(type);
    }
    throw gpu::OutOfMemory(fmt::format(
        "synthetic {} in {} has {} of weights; {} has {} of memory. {}", spec.name, spec.type,
        human_bytes(double(weight_bytes)), ctx.info().name, human_bytes(double(ctx.info().device_local_bytes)),
        fitting.empty() ? std::string("No weight type fits it there: choose a smaller preset, or a device with more "
                                      "memory (--device; kvscope devices lists them)")
                        : "Choose a --type that fits: " + fitting));
  }
  if (!o.json)
    fmt::print(stderr, "building {} ({:.2f} B parameters, {}) in memory...\n", spec.name, parameters / 1e9, spec.type);
  const auto t0 = std::chrono::steady_clock::now();
  std::unique_ptr<GpuModel> model;
  double build_seconds = 0, upload_seconds = 0;
  {
    std::vector<uint8_t> bytes = synthetic_gguf(spec);
    const auto t1 = std::chrono::steady_clock::now();
    build_seconds = std::chrono::duration<double>(t1 - t0).count();
    const GgufFile file = GgufFile::from_memory(bytes, fmt::format("synthetic {}", spec.name));
    model = std::make_unique<GpuModel>(ctx, file, 256, capacity);
    upload_seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t1).count();
  }  // the host copy is freed: the model lives on the device
  if (!o.json) fmt::print(stderr, "built in {:.1f} s, uploaded in {:.1f} s\n", build_seconds, upload_seconds);

  kv::CacheConfig cc = cache_spec_from_options(o.m).config(capacity);
  kv::KvCache cache(ctx, model->cache_shape(), cc, model->max_batch());
  model->set_profiling(o.profile);
  const BenchTimes times = time_prefill_and_decode(*model, cache, [&] { cache.clear(); }, o);
  report_bench(*model, cache, times, o, ctx.info().name, fmt::format("synthetic {} ({})", spec.name, spec.type),
               {{"parameters", parameters}, {"build_seconds", build_seconds}, {"upload_seconds", upload_seconds}});
  return 0;
}

// bench --ops: the matrix shaders alone, per weight type, as the forward
// pass dispatches them — a one-layer model of 2048 x 2048 matrices built in
// memory for each type, its GPU time per shader read from timestamp queries:
// matvec (decode) as GB/s of weights, matmul (prefill, -p tokens) as tokens/s.
int bench_ops(const BenchOptions& o) {
  if (!o.m.model.empty() || !o.synthetic.empty() || wants_policy(o.m))
    throw std::invalid_argument("--ops times the matrix shaders on models it builds; leave out -m, --synthetic and "
                                "the cache flags");
  gpu::ContextOptions co;
  co.device_index = o.m.device;
  co.pipeline_cache_path = pipeline_cache_path();
  gpu::Context ctx(co);
  const uint32_t n_prompt = std::max(o.n_prompt, 1u), n_gen = std::max(o.n_gen, 1u);
  json rows = json::array();
  if (!o.json)
    fmt::print("device   {}\n{:<6} {:>12} {:>11} {:>14} {:>16}\n", ctx.info().name, "type", "matrix bytes",
               "matvec ms", "matvec GB/s", "matmul tok/s");
  for (const char* type : {"F32", "F16", "Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q4_K", "Q5_K", "Q6_K"}) {
    SyntheticSpec spec;
    spec.name = "ops";
    spec.dim = 2048, spec.n_layer = 1, spec.n_head = 16, spec.n_kv_head = 16, spec.head_dim = 128;
    spec.ffn_dim = 2048, spec.n_vocab = 256, spec.n_ctx = n_prompt + n_gen;
    spec.type = type;
    spec.distinct_rows = 256;
    const std::vector<uint8_t> bytes = synthetic_gguf(spec);
    const GgufFile file = GgufFile::from_memory(bytes, fmt::format("ops {}", type));
    GpuModel model(ctx, file, 256, spec.n_ctx);
    kv::CacheConfig cc;
    cc.capacity = spec.n_ctx;
    kv::KvCache cache(ctx, model.cache_shape(), cc, model.max_batch());
    model.set_profiling(true);
    auto shader_ms = [](const std::map<std::string, double>& profile, std::string_view prefix) {
      double ms = 0;
      for (const auto& [name, t] : profile) ms += name.starts_with(prefix) ? t : 0;
      return ms;
    };
    double matvec_ms = 1e30, matmul_ms = 1e30;  // the best repetition: other processes share the device
    for (uint32_t r = 0; r <= o.reps; ++r) {  // the first is a warm-up
      cache.clear();
      std::vector<int32_t> prompt(n_prompt), pos(n_prompt);
      for (uint32_t i = 0; i < n_prompt; ++i) prompt[i] = static_cast<int32_t>(i % spec.n_vocab), pos[i] = int32_t(i);
      model.take_profile();
      model.forward(prompt, pos, cache, LogitsWanted::Last);
      const double mm = shader_ms(model.take_profile(), "matmul");
      for (uint32_t i = 0; i < n_gen; ++i) {
        const int32_t tok = 1, p = static_cast<int32_t>(n_prompt + i);
        model.forward({&tok, 1}, {&p, 1}, cache, LogitsWanted::Last);
      }
      const double mv = shader_ms(model.take_profile(), "matvec") / n_gen;
      if (r > 0) matvec_ms = std::min(matvec_ms, mv), matmul_ms = std::min(matmul_ms, mm);
    }
    // Every matrix a decode step reads: the layer's four and the (tied) output.
    const double matrix_bytes = double(model.weight_bytes());
    const double gb_s = matrix_bytes / (matvec_ms * 1e-3) / 1e9, tok_s = n_prompt / (matmul_ms * 1e-3);
    rows.push_back({{"type", type}, {"matrix_bytes", matrix_bytes}, {"matvec_ms", matvec_ms}, {"matvec_gb_s", gb_s},
                    {"matmul_tok_s", tok_s}});
    if (!o.json)
      fmt::print("{:<6} {:>12} {:>11.3f} {:>14.2f} {:>16.1f}\n", type, human_bytes(matrix_bytes), matvec_ms, gb_s, tok_s);
  }
  if (o.json)
    std::cout << json{{"device", ctx.info().name}, {"n_prompt", n_prompt}, {"n_gen", n_gen}, {"reps", o.reps},
                      {"ops", rows}}
                     .dump(2)
              << "\n";
  return 0;
}

}  // namespace

int bench(const BenchOptions& o) {
  if (o.reps == 0) throw std::invalid_argument("-r must be >= 1");
  if (o.ops) return bench_ops(o);
  if (!o.synthetic.empty()) return bench_synthetic(o);
  Engine engine(engine_options(o.m));
  const uint32_t ctx = engine.n_ctx();
  if (o.n_prompt == 0 || o.n_prompt + o.n_gen > ctx)
    throw std::invalid_argument(fmt::format(
        "-p {} + -n {} must be at least 1 and fit the context of {} tokens (-c)", o.n_prompt, o.n_gen, ctx));
  Session session(engine, cache_spec_from_options(o.m), o.m.n_ctx);
  GpuModel& model = engine.model();
  model.set_profiling(o.profile);
  const BenchTimes times = time_prefill_and_decode(model, session.cache(), [&] { session.reset(); }, o);
  write_trace(session, o.m);  // the last repetition's
  report_bench(model, session.cache(), times, o, engine.device_name(), engine.file().path(), json::object());
  return 0;
}

// ----------------------------------------------------------- convert, quantize

int convert_llama2c(const std::string& checkpoint, const std::string& tokenizer, const std::string& out) {
  const Llama2cConvertResult r = kvscope::convert_llama2c(checkpoint, tokenizer, out);
  fmt::print(stderr, "{}: llama, dim {}, {} layers, {} heads ({} kv), ffn {}, vocab {}, context {}, {} tensors{}\n",
             out, r.dim, r.n_layer, r.n_head, r.n_kv_head, r.ffn_dim, r.n_vocab, r.seq_len, r.n_tensors,
             r.tied_output ? ", output tied to the embedding" : "");
  return 0;
}

int synthetic(const SyntheticOptions& o) {
  SyntheticSpec spec = synthetic_preset(o.preset);
  if (o.layers) spec.n_layer = *o.layers;
  if (o.heads) spec.n_head = *o.heads;
  if (o.kv_heads) spec.n_kv_head = *o.kv_heads;
  if (o.dim) spec.dim = *o.dim;
  if (o.head_dim) spec.head_dim = *o.head_dim;
  if (o.ffn) spec.ffn_dim = *o.ffn;
  if (o.ctx) spec.n_ctx = *o.ctx;
  if (o.window) {
    if (spec.arch != "gemma3")
      throw std::invalid_argument(fmt::format("--window: {} is a {} model, which has no sliding-window layers; "
                                              "use a gemma3 preset (tiny-gemma3, gemma3-1b)",
                                              o.preset, spec.arch));
    spec.sliding_window = *o.window;
  }
  if (!o.type.empty()) spec.type = o.type;
  if (spec.n_kv_head == 0 || spec.n_head % spec.n_kv_head != 0)
    throw std::invalid_argument(fmt::format("--heads {} must be a multiple of --kv-heads {}", spec.n_head,
                                            spec.n_kv_head));
  std::optional<GgufFile> vocab;
  if (!o.vocab_from.empty()) {
    vocab.emplace(GgufFile::open(o.vocab_from));
    spec.n_vocab = static_cast<uint32_t>(vocab->get("tokenizer.ggml.tokens").as_array("tokenizer.ggml.tokens").items.size());
  }
  std::fprintf(stderr, "synthetic %s: %u layers, %u heads (%u kv), dim %u, head_dim %u, ffn %u, vocab %u%s, %s: %s of "
               "weights\n",
               o.preset.c_str(), spec.n_layer, spec.n_head, spec.n_kv_head, spec.dim, spec.head_dim, spec.ffn_dim,
               spec.n_vocab,
               spec.sliding_window ? fmt::format(", sliding window {}", spec.sliding_window).c_str() : "",
               spec.type.c_str(), human_bytes(static_cast<double>(synthetic_weight_bytes(spec))).c_str());
  GgufWriter writer;
  add_synthetic_model(writer, spec);
  if (vocab)
    for (const std::string& key : vocab->metadata_order())
      if (key.starts_with("tokenizer.")) writer.set(key, vocab->get(key));
  writer.write(o.out);
  std::printf("%s\n", o.out.c_str());
  return 0;
}

int quantize(const std::string& in, const std::string& out, const std::string& type_name) {
  const auto scheme = quantize_scheme(type_name);
  if (!scheme)
    throw std::invalid_argument(
        fmt::format("quantize: type '{}' is not one of {}", type_name, quantize_scheme_list()));
  const QuantizeResult r = quantize_model(in, out, *scheme);
  fmt::print(stderr, "{}: {} tensors to {}, {} kept; {} -> {}\n", out, r.n_quantized, scheme->name, r.n_kept,
             human_bytes(double(r.bytes_in)), human_bytes(double(r.bytes_out)));
  if (r.n_fallback > 0)
    fmt::print(stderr,
               "{}: {} tensors have rows that are not a multiple of 256 elements and were written as llama.cpp "
               "writes them: Q4_0 for Q2_K and Q3_K, Q5_0 for Q4_K, Q5_1 for Q5_K, Q8_0 for Q6_K (F16 where not "
               "a multiple of 32)\n",
               out, r.n_fallback);
  return 0;
}

}  // namespace kvscope::cli
