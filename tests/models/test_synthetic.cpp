// Synthetic models (models/synthetic.h) of the shapes people download, with
// no download: the GPU forward pass held to the CPU reference
// (models/reference.cpp) on each architecture feature — Llama 3 (GQA 4:1,
// rope_freqs, theta 500000, its 128256-token vocabulary, tied output split in
// row chunks), Qwen 2 (q/k/v biases, NeoX RoPE, GQA 7:1), head size 48 with an
// untied output — for prefill (matmul path, every position's logits) and
// decode (matvec path); the model-too-large check; `bench --synthetic`.
//
// [SECTION] presets and hyperparameters (CPU)
// [SECTION] reference RoPE modes (CPU)
// [SECTION] GPU against the CPU reference
// [SECTION] too large for the device, bench --synthetic
#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <memory>
#include <numeric>
#include <set>

#include <fmt/format.h>

#include "app/core/evaluation.h"
#include "app/core/cache_spec.h"
#include "app/core/session.h"
#include "gpu/context.h"
#include "kv/cache.h"
#include "kv/policy.h"
#include "models/forward.h"
#include "models/hparams.h"
#include "models/quantize.h"
#include "models/reference.h"
#include "models/synthetic.h"
#include "models/tokenizer.h"
#include "tests/app/cli_runner.h"
#include "tests/models/vocab_fixture.h"
#include "tests/test_util.h"

using namespace kvscope;

namespace {

// A GGUF image and the file read from it (the file borrows the bytes).
struct SyntheticModel {
  std::vector<uint8_t> bytes;
  std::unique_ptr<GgufFile> file;
};

SyntheticModel build(const SyntheticSpec& spec, const GgufFile* vocabulary = nullptr) {
  GgufWriter writer;
  if (vocabulary)
    for (const std::string& key : vocabulary->metadata_order())
      if (key.starts_with("tokenizer.")) writer.set(key, vocabulary->get(key));
  add_synthetic_model(writer, spec);
  SyntheticModel m;
  m.bytes = writer.to_bytes();
  m.file = std::make_unique<GgufFile>(GgufFile::from_memory(m.bytes, spec.name + ".gguf"));
  return m;
}

// Llama 3's vocabulary as a GGUF (built once per run: a second or two).
const GgufFile& llama3_vocabulary() {
  static std::vector<uint8_t> bytes;
  static std::unique_ptr<GgufFile> file;
  if (!file) {
    const std::vector<uint8_t> json = test::read_gzip(test::data_path("vocab/tokenizer-llama3.json.gz"));
    bytes = test::gguf_from_tokenizer_json(nlohmann::json::parse(json.begin(), json.end()), "llama-bpe",
                                           "<|begin_of_text|>", "<|end_of_text|>");
    file = std::make_unique<GgufFile>(GgufFile::from_memory(bytes, "llama3-vocab.gguf"));
  }
  return *file;
}

std::string config_error(const GgufWriter& w) {
  const std::vector<uint8_t> bytes = w.to_bytes();
  try {
    read_llama_config(GgufFile::from_memory(bytes, "m.gguf"));
  } catch (const GgufError& e) {
    return e.what();
  }
  return "(no error)";
}

size_t argmax(std::span<const float> v) { return size_t(std::max_element(v.begin(), v.end()) - v.begin()); }

// One position's GPU logits against the reference's: finite, max |difference|
// within `tolerance` of the reference's largest magnitude, the same argmax.
// Returns the normalized error for the report.
double check_logits(std::span<const float> gpu, std::span<const float> ref, double tolerance, const std::string& what) {
  REQUIRE(gpu.size() == ref.size());
  double max_diff = 0, max_ref = 0;
  size_t worst = 0;
  for (size_t i = 0; i < gpu.size(); ++i) {
    if (!std::isfinite(gpu[i])) {
      FAIL_CHECK(what << ": logit " << i << " is " << gpu[i]);
      return INFINITY;
    }
    const double d = std::fabs(double(gpu[i]) - ref[i]);
    if (d > max_diff) max_diff = d, worst = i;
    max_ref = std::max(max_ref, std::fabs(double(ref[i])));
  }
  const double normalized = max_diff / std::max(max_ref, 1e-6);
  CHECK_MESSAGE(normalized <= tolerance, what << ": max |gpu - cpu| " << max_diff << " at token " << worst
                                              << " is " << normalized << " of the largest logit " << max_ref
                                              << " (bound " << tolerance << ")");
  CHECK_MESSAGE(argmax(gpu) == argmax(ref), what << ": argmax " << argmax(gpu) << " on the GPU, " << argmax(ref)
                                                 << " on the CPU");
  return normalized;
}

// Prefill `prompt` in one batch (every position's logits: the matmul path),
// then `n_decode` greedy steps one token at a time (the matvec path), each
// against the CPU reference fed the same tokens. f32 cache: the only
// differences are summation order and the device's pow/sin/cos.
void check_model_against_reference(const GgufFile& file, const std::vector<int32_t>& prompt, uint32_t n_decode,
                                   double tolerance, uint64_t max_binding_bytes = 0, uint32_t max_batch = 64,
                                   uint32_t capacity = 64) {
  gpu::ContextOptions options;
  options.max_binding_bytes = max_binding_bytes;
  gpu::Context ctx(options);
  REQUIRE(prompt.size() + n_decode <= capacity);
  GpuModel model(ctx, file, max_batch, capacity);
  kv::CacheConfig cc;
  cc.k_format = cc.v_format = kv::Format::F32;
  cc.capacity = capacity;
  kv::KvCache cache(ctx, model.cache_shape(), cc, model.max_batch());
  reference::Model ref(file, capacity);
  const size_t n_vocab = model.config().n_vocab;

  std::vector<int32_t> positions(prompt.size());
  std::iota(positions.begin(), positions.end(), 0);
  const std::span<const float> all = model.forward(prompt, positions, cache, LogitsWanted::All);
  const std::vector<float> prefill(all.begin(), all.end());
  double worst = 0;
  std::vector<float> ref_logits;
  for (size_t t = 0; t < prompt.size(); ++t) {
    ref_logits = ref.forward(prompt[t], int32_t(t));
    worst = std::max(worst, check_logits(std::span(prefill).subspan(t * n_vocab, n_vocab), ref_logits, tolerance,
                                         fmt::format("{} prefill position {}", file.path(), t)));
  }
  int32_t token = int32_t(argmax(ref_logits));
  for (uint32_t i = 0; i < n_decode; ++i) {
    const int32_t pos = int32_t(prompt.size() + i);
    const std::span<const float> gpu = model.forward({&token, 1}, {&pos, 1}, cache, LogitsWanted::Last);
    const std::vector<float> gpu_logits(gpu.begin(), gpu.end());
    ref_logits = ref.forward(token, pos);
    worst = std::max(worst, check_logits(gpu_logits, ref_logits, tolerance,
                                         fmt::format("{} decode position {}", file.path(), pos)));
    token = int32_t(argmax(ref_logits));
  }
  MESSAGE(file.path() << ": worst normalized logit error " << worst << " over " << prompt.size() + n_decode
                      << " positions");
  CHECK(ctx.validation_messages() == 0);
}

std::vector<int32_t> pseudo_random_tokens(size_t n, uint32_t n_vocab, uint32_t seed) {
  std::vector<int32_t> ids(n);
  for (int32_t& id : ids) id = int32_t((seed = seed * 1664525u + 1013904223u) % n_vocab);
  return ids;
}

// Logits of f32 weights agree to float rounding (measured <= 2e-6 of the
// largest logit on lavapipe); Q8_0 weights are the same numbers on both sides
// (the reference dequantizes exactly), so the same bound, with 50x headroom
// for other devices' pow/sin/cos.
constexpr double kLogitTolerance = 1e-4;

}  // namespace

// ===================================================== [SECTION] presets and hyperparameters (CPU)

TEST_CASE("synthetic: presets have the shapes and parameter counts of the models they stand for") {
  // Llama 3.2 1B has 1,235,814,400 parameters (+32 rope factors); Qwen 2.5 0.5B 494,032,768.
  CHECK(synthetic_parameter_count(synthetic_preset("llama-1b")) == 1235814400ull + 32);
  CHECK(synthetic_parameter_count(synthetic_preset("qwen-0.5b")) == 494032768ull);
  // Qwen 3 0.6B: 596,049,920 (0.44B of them outside the tied embedding, as its model card says).
  CHECK(synthetic_parameter_count(synthetic_preset("qwen3-0.6b")) == 596049920ull);
  // Gemma 3 1B: 999,885,952, as published.
  CHECK(synthetic_parameter_count(synthetic_preset("gemma3-1b")) == 999885952ull);
  {  // and its f16 cache at 32K: 22 local layers of 768 slots, 4 global of 32768; 1 kv head of 256
    LlamaConfig cfg;
    cfg.n_layer = 26, cfg.n_kv_head = 1, cfg.head_dim = 256, cfg.sliding_window = 512, cfg.swa_period = 6;
    kv::CacheConfig f16{kv::Format::F16, kv::Format::F16, 32768};
    CHECK(kv::cache_device_bytes(cache_shape_of(cfg), f16, 256) == (22ull * 768 + 4ull * 32768) * 1024);
    CHECK(double(kv::cache_device_bytes(cache_shape_of(cfg), f16, 256)) / 32768 == 4624.0);
  }
  // Phi-3 mini: 3,821,079,552.
  CHECK(synthetic_parameter_count(synthetic_preset("phi3-mini")) == 3821079552ull);
  CHECK_THROWS_WITH(synthetic_preset("gpt-7"), doctest::Contains("llama-1b qwen-0.5b"));

  struct Expected {
    const char* name;
    const char* arch;
    RopeMode mode;
    bool rope_freqs, qkv_bias, tied;
    uint32_t head_dim;
  };
  for (const Expected& e : {Expected{"tiny-llama3", "llama", RopeMode::Normal, true, false, true, 16},
                            Expected{"tiny-qwen2", "qwen2", RopeMode::Neox, false, true, true, 32},
                            Expected{"tiny-qwen3", "qwen3", RopeMode::Neox, false, false, true, 32},
                            Expected{"tiny-phi3", "phi3", RopeMode::Neox, true, false, false, 24},
                            Expected{"tiny-gemma3", "gemma3", RopeMode::Neox, false, false, true, 32},
                            Expected{"tiny-head48", "llama", RopeMode::Normal, false, false, false, 48}}) {
    CAPTURE(std::string(e.name));
    const SyntheticSpec spec = synthetic_preset(e.name);
    const SyntheticModel m = build(spec);
    const LlamaConfig cfg = read_llama_config(*m.file);
    CHECK(cfg.arch == e.arch);
    CHECK(cfg.rope_mode == e.mode);
    CHECK(cfg.rope_freqs == e.rope_freqs);
    CHECK(cfg.qkv_bias == e.qkv_bias);
    CHECK(cfg.tied_output == e.tied);
    CHECK(cfg.head_dim == e.head_dim);
    CHECK(cfg.qk_norm == (cfg.arch == "qwen3" || cfg.arch == "gemma3"));
    CHECK(cfg.post_norms == (cfg.arch == "gemma3"));
    CHECK(cfg.has_local_layers() == (cfg.arch == "gemma3"));
    CHECK(cfg.fused_qkv == (cfg.arch == "phi3"));
    CHECK(cfg.fused_gate_up == (cfg.arch == "phi3"));
    CHECK(cfg.rope_theta == spec.rope_theta);
    CHECK(parameter_count(*m.file) == synthetic_parameter_count(spec));
    uint64_t tensor_bytes = 0;
    for (const GgufTensorInfo& t : m.file->tensors()) tensor_bytes += t.n_bytes;
    CHECK(tensor_bytes == synthetic_weight_bytes(spec));
    // The same spec builds the same bytes.
    CHECK(build(spec).bytes == m.bytes);
  }
}

TEST_CASE("synthetic: distinct_rows draws that many rows per matrix and copies them into the rest") {
  SyntheticSpec spec = synthetic_preset("tiny-head48");
  spec.type = "Q8_0";
  spec.distinct_rows = 16;
  const SyntheticModel m = build(spec);
  const GgufTensorInfo& embd = m.file->tensor("token_embd.weight");  // 300 rows of 192
  const size_t row = row_bytes(GgmlType::Q8_0, 192);
  std::set<std::vector<uint8_t>> drawn, all;
  for (size_t r = 0; r < 300; ++r) {
    std::vector<uint8_t> bytes(embd.data + r * row, embd.data + (r + 1) * row);
    (r < 16 ? drawn : all).insert(bytes);
  }
  CHECK(drawn.size() == 16);
  for (const auto& bytes : all) CHECK(drawn.count(bytes) == 1);
  SyntheticSpec every = spec;
  every.distinct_rows = 0;
  CHECK(build(every).bytes.size() == m.bytes.size());
}

TEST_CASE("synthetic: Llama 3.1's rope factors: 1 for short wavelengths, 8 for long, blended between") {
  const std::vector<float> f = llama3_rope_freqs(64, 500000.0f);
  REQUIRE(f.size() == 32);
  CHECK(f.front() == 1.0f);
  CHECK(f.back() == 8.0f);
  CHECK(std::is_sorted(f.begin(), f.end()));
  CHECK(std::any_of(f.begin(), f.end(), [](float x) { return x > 1.0f && x < 8.0f; }));
}

TEST_CASE("hparams: qwen3 needs its q and k head norms, one weight per head dimension") {
  SyntheticSpec qwen3 = synthetic_preset("tiny-qwen3");
  GgufWriter w;
  add_synthetic_model(w, qwen3);
  CHECK(config_error(w) == "(no error)");
  SyntheticSpec as_qwen2 = qwen3;  // the same tensors under another name: no norms expected, biases missing
  as_qwen2.arch = "qwen2";
  GgufWriter q2;
  add_synthetic_model(q2, as_qwen2);
  CHECK(config_error(q2) == "m.gguf: tensor 'blk.0.attn_q.bias' is missing; this qwen2 model needs it");
  // A qwen3 file without its norms (written as llama, renamed).
  SyntheticSpec plain = qwen3;
  plain.arch = "llama";
  GgufWriter l;
  add_synthetic_model(l, plain);
  l.set_string("general.architecture", "qwen3");
  const std::pair<const char*, uint32_t> keys[] = {
      {"embedding_length", plain.dim},      {"block_count", plain.n_layer},         {"attention.head_count", plain.n_head},
      {"attention.head_count_kv", plain.n_kv_head}, {"attention.key_length", plain.head_dim},
      {"feed_forward_length", plain.ffn_dim}, {"context_length", plain.n_ctx}};
  for (const auto& [key, value] : keys) l.set_uint32(std::string("qwen3.") + key, value);
  l.set_float32("qwen3.attention.layer_norm_rms_epsilon", 1e-6f);
  l.set_float32("qwen3.rope.freq_base", 1e6f);
  CHECK(config_error(l) == "m.gguf: tensor 'blk.0.attn_q_norm.weight' is missing; this qwen3 model needs it");
}

TEST_CASE("hparams: qwen2 needs its biases; rope_freqs must have one factor per pair") {
  SyntheticSpec qwen = synthetic_preset("tiny-qwen2");
  qwen.qkv_bias = false;
  GgufWriter no_bias;
  add_synthetic_model(no_bias, qwen);
  CHECK(config_error(no_bias) == "m.gguf: tensor 'blk.0.attn_q.bias' is missing; this qwen2 model needs it");

  GgufWriter short_factors;
  SyntheticSpec llama = synthetic_preset("tiny-head48");
  add_synthetic_model(short_factors, llama);
  short_factors.add_tensor("rope_freqs.weight", GgmlType::F32, {4}, std::vector<uint8_t>(16, 0));
  CHECK(config_error(short_factors) ==
        "m.gguf: tensor 'rope_freqs.weight' has shape [4], expected [24] for this llama model");

  GgufWriter other;
  SyntheticSpec s = synthetic_preset("tiny-head48");
  add_synthetic_model(other, s);
  other.set_string("general.architecture", "gemma");
  CHECK(config_error(other) ==
        "m.gguf: general.architecture is 'gemma', which kvscope does not run; supported: llama qwen2 qwen3 phi3 gemma3");
}

TEST_CASE("hparams: gemma3's sliding-window layers, RoPE bases, query scale, and the keys it needs") {
  const SyntheticSpec spec = synthetic_preset("tiny-gemma3");
  GgufWriter w;
  add_synthetic_model(w, spec);
  const std::vector<uint8_t> bytes = w.to_bytes();
  const LlamaConfig cfg = read_llama_config(GgufFile::from_memory(bytes, "g.gguf"));
  // No pattern key: llama.cpp's 6, so layers 0-4 and 6 are local, 5 global.
  CHECK(cfg.sliding_window == 6);
  CHECK(cfg.swa_period == 6);
  for (uint32_t l = 0; l < 7; ++l) CHECK(cfg.layer_window(l) == (l == 5 ? 0u : 6u));
  CHECK(local_layer_count(cfg) == 6);
  CHECK(cfg.layer_rope_theta(0) == 10000.0f);
  CHECK(cfg.layer_rope_theta(5) == 1000000.0f);
  CHECK(cfg.rope_linear_factor == 8.0f);  // the global layers' only
  CHECK_FALSE(cfg.layer_rope_factors(0));
  CHECK(cfg.layer_rope_factors(5));
  CHECK(cfg.embed_scale == doctest::Approx(8.0));  // sqrt(64)
  CHECK(cfg.attn_scale == doctest::Approx(1.0 / std::sqrt(32.0)));
  CHECK(cfg.ffn_act == FfnActivation::GeluTanh);
  // The pattern and the query scale when the file gives them.
  SyntheticSpec every_other = spec;
  every_other.swa_period = 2;
  GgufWriter w2;
  add_synthetic_model(w2, every_other);
  w2.set_float32("gemma3.attention.scale", 0.0625f);
  const std::vector<uint8_t> bytes2 = w2.to_bytes();
  const LlamaConfig cfg2 = read_llama_config(GgufFile::from_memory(bytes2, "g2.gguf"));
  CHECK(cfg2.layer_window(0) == 6);
  CHECK(cfg2.layer_window(1) == 0);
  CHECK(cfg2.attn_scale == 0.0625f);
  // A gemma3 file without its window, or without a post-norm, is refused by name.
  SyntheticSpec no_window = spec;
  no_window.sliding_window = 0;
  GgufWriter w3;
  add_synthetic_model(w3, no_window);
  CHECK(config_error(w3) == "m.gguf: metadata gemma3.attention.sliding_window is missing; this model needs it");
  SyntheticSpec as_qwen3 = spec;  // the same tensors less the post-norms, renamed gemma3
  as_qwen3.arch = "qwen3";
  GgufWriter w4;
  add_synthetic_model(w4, as_qwen3);
  w4.set_string("general.architecture", "gemma3");
  const std::pair<const char*, uint32_t> keys[] = {
      {"embedding_length", spec.dim},   {"block_count", spec.n_layer},         {"attention.head_count", spec.n_head},
      {"attention.head_count_kv", spec.n_kv_head}, {"attention.key_length", spec.head_dim},
      {"feed_forward_length", spec.ffn_dim}, {"context_length", spec.n_ctx}, {"attention.sliding_window", 6}};
  for (const auto& [key, value] : keys) w4.set_uint32(std::string("gemma3.") + key, value);
  CHECK(config_error(w4) == "m.gguf: tensor 'blk.0.post_attention_norm.weight' is missing; this gemma3 model needs it");
}

// ============================================================ [SECTION] reference RoPE modes (CPU)

TEST_CASE("reference rope: NeoX pairs (i, i + d/2) are the normal pairs of a reordered head; factors divide the angle") {
  const uint32_t head_dim = 48, rope_dim = 32;  // dims past rope_dim are left alone in both modes
  std::vector<float> head(head_dim);
  for (uint32_t d = 0; d < head_dim; ++d) head[d] = std::sin(0.7f * float(d) + 0.3f);
  std::vector<float> factors(rope_dim / 2);
  for (uint32_t i = 0; i < factors.size(); ++i) factors[i] = 1.0f + 0.5f * float(i);
  // NeoX dim i pairs with i + rope_dim/2; interleaving the halves makes them (2i, 2i+1).
  auto interleave = [&](const std::vector<float>& h) {
    std::vector<float> out = h;
    for (uint32_t i = 0; i < rope_dim / 2; ++i) out[2 * i] = h[i], out[2 * i + 1] = h[i + rope_dim / 2];
    return out;
  };
  for (bool with_factors : {false, true}) {
    const std::span<const float> f = with_factors ? std::span<const float>(factors) : std::span<const float>();
    std::vector<float> neox = head, normal = interleave(head);
    reference::rope(neox, 37, rope_dim, 10000.0f, RopeMode::Neox, f);
    reference::rope(normal, 37, rope_dim, 10000.0f, RopeMode::Normal, f);
    const std::vector<float> neox_interleaved = interleave(neox);
    for (uint32_t d = 0; d < head_dim; ++d) CHECK(neox_interleaved[d] == normal[d]);
  }
  // A factor f at position p turns pair i as far as factor 1 at position p / f.
  std::vector<float> slowed = head, plain = head;
  std::vector<float> fours(rope_dim / 2, 4.0f);
  reference::rope(slowed, 40, rope_dim, 10000.0f, RopeMode::Normal, fours);
  reference::rope(plain, 10, rope_dim, 10000.0f, RopeMode::Normal);
  for (uint32_t d = 0; d < head_dim; ++d) CHECK(slowed[d] == doctest::Approx(plain[d]).epsilon(1e-5));
}

// ============================================================ [SECTION] GPU against the CPU reference

TEST_CASE("synthetic Llama 3: GQA 4:1, rope_freqs, its 128256-token vocabulary in row chunks; GPU = CPU reference") {
  const GgufFile& vocab = llama3_vocabulary();
  for (const std::string type : {"F32", "Q8_0"}) {
    CAPTURE(type);
    SyntheticSpec spec = synthetic_preset("tiny-llama3");
    spec.n_vocab = 128256;
    spec.type = type;
    spec.name = fmt::format("tiny-llama3-{}", type);
    const SyntheticModel m = build(spec, &vocab);
    const LlamaConfig cfg = read_llama_config(*m.file);
    REQUIRE(cfg.n_vocab == 128256);
    const Tokenizer tok = Tokenizer::from_gguf(*m.file);
    const std::vector<int32_t> prompt = tok.encode("Once upon a time, in a land far away, there lived", true);
    REQUIRE(prompt.front() == 128000);  // <|begin_of_text|>
    // 4 MiB per binding: the 128256-row embedding and tied output are read in
    // 16 (F32) or 8 (Q8_0) chunks, as a 1B model's are under lavapipe's 128 MiB.
    check_model_against_reference(*m.file, prompt, 6, kLogitTolerance, 4u << 20);
  }
}

TEST_CASE("synthetic Qwen 2: q/k/v biases, NeoX RoPE, GQA 7:1, theta 1e6; GPU = CPU reference") {
  for (const std::string type : {"F32", "Q8_0"}) {
    CAPTURE(type);
    SyntheticSpec spec = synthetic_preset("tiny-qwen2");
    spec.type = type;
    spec.name = fmt::format("tiny-qwen2-{}", type);
    const SyntheticModel m = build(spec);
    check_model_against_reference(*m.file, pseudo_random_tokens(13, spec.n_vocab, 7), 6, kLogitTolerance);
  }
}

TEST_CASE("synthetic Qwen 3: q/k head norms, no biases, q wider than the model, NeoX RoPE; GPU = CPU reference") {
  for (const std::string type : {"F32", "Q8_0"}) {
    CAPTURE(type);
    SyntheticSpec spec = synthetic_preset("tiny-qwen3");
    spec.type = type;
    spec.name = fmt::format("tiny-qwen3-{}", type);
    const SyntheticModel m = build(spec);
    check_model_against_reference(*m.file, pseudo_random_tokens(13, spec.n_vocab, 5), 6, kLogitTolerance);
  }
}

TEST_CASE("synthetic Phi-3.5: one q|k|v tensor, one gate|up tensor, head 24, NeoX, LongRoPE; GPU = CPU reference") {
  for (const std::string type : {"F32", "Q8_0"}) {
    CAPTURE(type);
    SyntheticSpec spec = synthetic_preset("tiny-phi3");
    spec.type = type;
    spec.name = fmt::format("tiny-phi3-{}", type);
    const SyntheticModel m = build(spec);
    // A context of 64 is past the original 32: the long factors; one of 32: the short ones.
    check_model_against_reference(*m.file, pseudo_random_tokens(12, spec.n_vocab, 9), 6, kLogitTolerance);
    check_model_against_reference(*m.file, pseudo_random_tokens(12, spec.n_vocab, 9), 6, kLogitTolerance, 0, 32, 32);
  }
  const SyntheticModel m = build(synthetic_preset("tiny-phi3"));
  const LlamaConfig cfg = read_llama_config(*m.file);
  CHECK(cfg.rope_factors_long);
  CHECK(cfg.rope_ctx_orig == 32);
  CHECK(cfg.rope_attn_factor == doctest::Approx(std::sqrt(1.0 + std::log(8.0) / std::log(32.0))));
  CHECK(rope_factors(*m.file, cfg, 32) != rope_factors(*m.file, cfg, 33));  // llama.cpp: long when n_ctx > original
  // The same tokens at the same positions: the two contexts give different logits (the factors differ).
  reference::Model short_ctx(*m.file, 32), long_ctx(*m.file, 64);
  const std::vector<int32_t> tokens = pseudo_random_tokens(10, 320, 9);
  std::vector<float> a, b;
  for (size_t t = 0; t < tokens.size(); ++t) a = short_ctx.forward(tokens[t], int32_t(t)), b = long_ctx.forward(tokens[t], int32_t(t));
  CHECK(a != b);
}

TEST_CASE("synthetic Gemma 3: sliding-window layers, post-norms, GeGLU, scaled embeddings, linear RoPE; GPU = CPU reference") {
  for (const std::string type : {"F32", "Q8_0"}) {
    CAPTURE(type);
    SyntheticSpec spec = synthetic_preset("tiny-gemma3");
    spec.type = type;
    spec.name = fmt::format("tiny-gemma3-{}", type);
    const SyntheticModel m = build(spec);
    // 20 prompt tokens and 6 decoded: past the 6-token window on the local
    // layers; in one batch, and in batches of 4, where a local layer's cache
    // holds 10 slots of the 64 and reuses them as the window moves.
    check_model_against_reference(*m.file, pseudo_random_tokens(20, spec.n_vocab, 11), 6, kLogitTolerance);
    check_model_against_reference(*m.file, pseudo_random_tokens(20, spec.n_vocab, 11), 6, kLogitTolerance, 0, 4);
  }
}

TEST_CASE("synthetic Gemma 3: local layers hold their window in every cache format; a policy evicts on global layers only") {
  const SyntheticModel m = build(synthetic_preset("tiny-gemma3"));
  gpu::Context ctx;
  const uint32_t capacity = 96, max_batch = 8;
  GpuModel model(ctx, *m.file, max_batch, capacity);
  const kv::CacheShape shape = model.cache_shape();
  REQUIRE(shape.windows == std::vector<uint32_t>{6, 6, 6, 6, 6, 0, 6});
  const std::vector<int32_t> tokens = pseudo_random_tokens(80, 320, 21);
  std::vector<int32_t> positions(tokens.size());
  std::iota(positions.begin(), positions.end(), 0);
  auto run = [&](kv::KvCache& cache) {  // 60 prompt tokens in batches, then 20 decode steps
    std::vector<float> last;
    model.forward(std::span(tokens).first(60), std::span(positions).first(60), cache, LogitsWanted::Last);
    cache.end_prefill();
    for (size_t i = 60; i < tokens.size(); ++i) {
      const std::span<const float> logits =
          model.forward(std::span(tokens).subspan(i, 1), std::span(positions).subspan(i, 1), cache, LogitsWanted::Last);
      last.assign(logits.begin(), logits.end());
    }
    return last;
  };
  kv::CacheConfig f32;
  f32.k_format = f32.v_format = kv::Format::F32;
  f32.capacity = capacity;
  kv::KvCache full_cache(ctx, shape, f32, model.max_batch());
  const std::vector<float> reference_logits = run(full_cache);
  for (kv::Format format : kv::all_formats()) {
    CAPTURE(kv::format_name(format));
    kv::CacheConfig cc = f32;
    cc.k_format = cc.v_format = format;
    kv::KvCache cache(ctx, shape, cc, model.max_batch());
    CHECK(cache.layer_slots(0) < capacity);
    CHECK(cache.layer_slots(5) == capacity);
    CHECK(cache.device_bytes() < kv::cache_device_bytes({shape.n_layer, shape.n_kv_head, shape.head_dim}, cc, 8));
    const std::vector<float> logits = run(cache);
    REQUIRE(logits.size() == reference_logits.size());
    for (float v : logits) REQUIRE(std::isfinite(v));
    CHECK(cache.tokens() == 80);
    for (uint32_t h = 0; h < shape.n_kv_head; ++h) CHECK(cache.table(0, h).live() <= 6u + max_batch);
    if (format == kv::Format::F32) CHECK(logits == reference_logits);
  }
  // H2O with a budget of 24 (8 recent): the global layer holds 24, the local ones their window (untouched by the policy).
  kv::KvCache evicting(ctx, shape, f32, model.max_batch());
  evicting.set_policy(kv::make_policy(kv::parse_policy_spec("h2o:budget=24,recent=8"), {shape.n_layer, shape.n_kv_head, capacity}));
  run(evicting);
  CHECK(evicting.table(5, 0).live() == 24);
  for (uint32_t l : {0u, 1u, 2u, 3u, 4u, 6u}) {
    CAPTURE(l);
    std::set<int32_t> held;
    for (int32_t p : evicting.table(l, 0).positions())
      if (p >= 0) held.insert(p);
    CHECK(held == std::set<int32_t>{74, 75, 76, 77, 78, 79});  // the window of the last query, position 79
  }
  size_t evictions = 0;
  for (const kv::TraceEvent& event : evicting.eviction()->log().events())
    if (const auto* e = std::get_if<kv::EvictionEvent>(&event)) {
      CHECK(e->layer == 5);
      ++evictions;
    }
  CHECK(evictions == 2 * (80 - 24));  // both kv heads of the global layer, every token past the budget
  CHECK(ctx.validation_messages() == 0);
}

TEST_CASE("reference gemma3: a local layer's attention sees only its window") {
  const SyntheticModel m = build(synthetic_preset("tiny-gemma3"));
  reference::Model ref(*m.file, 32);
  const std::vector<int32_t> tokens = pseudo_random_tokens(12, 320, 4);
  for (size_t t = 0; t < tokens.size(); ++t) ref.forward(tokens[t], int32_t(t));
  const auto& probs = ref.last_attention();  // the query at position 11
  for (uint32_t l = 0; l < 7; ++l) {
    CAPTURE(l);
    for (const std::vector<float>& row : probs[l]) {
      REQUIRE(row.size() == 12);
      double inside = 0;
      for (size_t k = 0; k < row.size(); ++k) {
        if (l != 5 && k <= 5) CHECK(row[k] == 0.0f);  // 11 - k >= 6: outside the window
        inside += row[k];
      }
      CHECK(inside == doctest::Approx(1.0).epsilon(1e-5));
      if (l == 5) CHECK(row[0] > 0.0f);  // the global layer sees the first token
    }
  }
}

TEST_CASE("synthetic Q2_K and Q3_K_M models (rows of 256): GPU = CPU reference") {
  for (const std::string type : {"Q2_K", "Q3_K_M"}) {
    CAPTURE(type);
    SyntheticSpec spec = synthetic_preset("tiny-llama3");
    spec.dim = 256, spec.ffn_dim = 512, spec.n_head = 8, spec.n_kv_head = 2, spec.head_dim = 32;
    spec.type = type;
    spec.name = fmt::format("tiny-256-{}", type);
    const SyntheticModel m = build(spec);
    std::set<GgmlType> types;
    for (const GgufTensorInfo& t : m.file->tensors())
      if (t.shape.size() == 2) types.insert(t.type);
    CHECK(types.count(type == "Q2_K" ? GgmlType::Q2_K : GgmlType::Q3_K) == 1);
    CHECK(types.count(GgmlType::Q3_K) == 1);  // Q2_K's ffn_down and attn_output; Q3_K_M's base
    check_model_against_reference(*m.file, pseudo_random_tokens(12, spec.n_vocab, 13), 6, kLogitTolerance);
  }
}

TEST_CASE("every architecture in every weight type kvscope writes (rows of 256): GPU = CPU reference") {
  // Each tiny preset widened to 256 so that every type, K-quants included,
  // fits its matrices; prefill and two decode steps against the reference.
  for (const char* preset : {"tiny-llama3", "tiny-qwen2", "tiny-qwen3", "tiny-phi3", "tiny-gemma3"}) {
    for (const char* type : {"F16", "Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K"}) {
      CAPTURE(std::string(preset));
      CAPTURE(std::string(type));
      SyntheticSpec spec = synthetic_preset(preset);
      spec.dim = 256, spec.ffn_dim = 256, spec.n_layer = std::min(spec.n_layer, 7u);
      spec.n_head = 8, spec.head_dim = 32;  // q rows of 256 too (attn_output), the kv heads as the preset has
      spec.type = type;
      spec.name = fmt::format("{}-256-{}", preset, type);
      const SyntheticModel m = build(spec);
      const GgmlType expected = *type_from_name(type);
      const bool mix = quantize_scheme(type)->mix != QuantizeMix::None;  // "Q2_K" is llama.cpp's Q2_K mix
      size_t of_type = 0;
      for (const GgufTensorInfo& t : m.file->tensors())
        if (t.shape.size() == 2) {
          of_type += t.type == expected;
          if (!mix) REQUIRE(t.type == expected);
        }
      REQUIRE(of_type > 0);
      check_model_against_reference(*m.file, pseudo_random_tokens(8, spec.n_vocab, 3), 2, kLogitTolerance);
    }
  }
}

TEST_CASE("synthetic head size 48, untied output; GPU = CPU reference") {
  const SyntheticModel m = build(synthetic_preset("tiny-head48"));
  check_model_against_reference(*m.file, pseudo_random_tokens(11, 300, 3), 6, kLogitTolerance);
}

// ============================================================ [SECTION] too large for the device, bench --synthetic

TEST_CASE("a model larger than the device's memory is refused before anything is allocated, with both sizes") {
  const SyntheticModel m = build(synthetic_preset("tiny-head48"));
  gpu::ContextOptions options;
  options.max_device_bytes = 1u << 20;
  gpu::Context ctx(options);
  try {
    GpuModel model(ctx, *m.file, 64, 64);
    FAIL("a 3 MiB model was accepted by a device of 1 MiB");
  } catch (const gpu::OutOfMemory& e) {
    const std::string message = e.what();
    CHECK_MESSAGE(message.find("tiny-head48.gguf: the model needs 3.1 MiB of device memory (2.6 MiB of weights") !=
                      std::string::npos,
                  message);
    CHECK_MESSAGE(message.find("has 1.0 MiB") != std::string::npos, message);
    CHECK_MESSAGE(message.find("kvscope quantize") != std::string::npos, message);
  }
  CHECK(ctx.validation_messages() == 0);
}

TEST_CASE("eval on a Gemma 3 model: the bytes a cache held count each local layer's window only") {
  test::TempDir dir;
  SyntheticSpec spec = synthetic_preset("tiny-gemma3");
  spec.n_ctx = 512;
  spec.n_vocab = 32000;  // the default model's vocabulary, for the engine's tokenizer
  const GgufFile vocab = GgufFile::open(test::model_path());
  GgufWriter w;
  for (const std::string& key : vocab.metadata_order())
    if (key.starts_with("tokenizer.")) w.set(key, vocab.get(key));
  add_synthetic_model(w, spec);
  w.write(dir.file("g.gguf"));
  EngineOptions options;
  options.model_path = dir.file("g.gguf");
  options.max_batch = 64;
  Engine engine(options);
  const std::vector<int32_t> tokens = pseudo_random_tokens(2 * 256, spec.n_vocab, 5);
  EvaluationOptions eo;
  eo.n_ctx = 256;
  eo.baseline = parse_cache_spec("f16");
  eo.tests = {parse_cache_spec("f16"), parse_cache_spec("f16 + h2o:budget=64,recent=16")};
  const EvaluationReport r = evaluate_caches(engine, tokens, eo);
  REQUIRE(r.tests.size() == 2);
  // 6 local layers of min(256, 6 + 64) = 70 slots, 1 global of 256: 2 kv heads of 32, f16 K and V.
  const double slot = 2 * 32 * 2 * 2;  // bytes per slot of a layer, both kv heads
  CHECK(r.tests[0].run.bytes_per_token == doctest::Approx((256 + 6 * 70) * slot / 256));
  // Held at once: the global layer's 256 positions, and on each local layer
  // what the last step's first query could see (5) plus the step (64 tokens).
  CHECK(r.tests[0].run.held_bytes_per_token == doctest::Approx((256 + 6 * (5 + 64)) * slot / 256));
  CHECK(r.tests[0].divergence.kl_max < 1e-9);  // the same cache
  // H2O evicts on the global layer only (64 held there), in steps no larger than its room.
  CHECK(r.tests[1].run.held_bytes_per_token <= (64 + 6 * (5 + 64)) * slot / 256);
  CHECK(r.tests[1].run.held_bytes_per_token >= (64 + 6 * 6) * slot / 256);
}

TEST_CASE("kvscope info on a Gemma 3 file: its local and global layers, and the bytes per token they cost") {
  test::TempDir dir;
  GgufWriter w;
  add_synthetic_model(w, synthetic_preset("tiny-gemma3"));
  w.write(dir.file("g.gguf"));
  const test::CliResult r = test::kvscope_cli("info " + dir.file("g.gguf"));
  REQUIRE_MESSAGE(r.code == 0, r.out);
  CHECK_MESSAGE(r.out.find("layers: 6 local (sliding window of 6 tokens, rope theta 10000), 1 global: LLLLLGL") !=
                    std::string::npos,
                r.out);
  CHECK_MESSAGE(r.out.find("norms before and after attention and FFN, GeGLU, embeddings x 8") != std::string::npos,
                r.out);
  const test::CliResult j = test::kvscope_cli("info --json " + dir.file("g.gguf"));
  REQUIRE_MESSAGE(j.code == 0, j.out);
  const nlohmann::json info = nlohmann::json::parse(j.out);
  CHECK(info["local_layers"] == 6);
  CHECK(info["layer_windows"] == nlohmann::json::array({6, 6, 6, 6, 6, 0, 6}));
  // f16 at the trained context of 256: 6 local layers of min(256, 6 + 256) slots hold all of it here.
  const LlamaConfig cfg = read_llama_config(GgufFile::open(dir.file("g.gguf")));
  CHECK(info["kv_bytes_per_token"]["f16"].get<double>() ==
        double(kv::cache_device_bytes(cache_shape_of(cfg), kv::CacheConfig{kv::Format::F16, kv::Format::F16, 256}, 256)) /
            256);
}

TEST_CASE("kvscope bench --synthetic: a preset built in memory, speed and GB/s as JSON") {
  const test::CliResult r = test::kvscope_cli("bench --synthetic tiny-qwen2 --type Q8_0 -p 16 -n 8 -r 1 --json");
  REQUIRE_MESSAGE(r.code == 0, r.out);
  const nlohmann::json j = test::last_json(r.out);
  CHECK(j["model"] == "synthetic tiny-qwen2 (Q8_0)");
  CHECK(j["prefill_tok_s"].get<double>() > 0);
  CHECK(j["decode_tok_s"].get<double>() > 0);
  CHECK(j["decode_gb_s"].get<double>() > 0);
  CHECK(j["weight_bytes"].get<uint64_t>() > 0);
  const test::CliResult bad = test::kvscope_cli("bench --synthetic gpt-7");
  CHECK(bad.code != 0);
  CHECK_MESSAGE(bad.out.find("synthetic model 'gpt-7' is not one of: llama-1b qwen-0.5b") != std::string::npos, bad.out);
}
