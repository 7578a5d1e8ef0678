// Llama-family hyperparameters and the shape/type check of every tensor the
// forward pass will read. Everything that could make a later kernel index
// out of bounds is rejected here, with the file and the key or tensor named.
#include "models/hparams.h"

#include <cmath>
#include <cstring>

#include <fmt/format.h>
#include <fmt/ranges.h>

namespace kvscope {

namespace {

// Sanity caps: far above any real Llama-family model, far below what would
// overflow the 32-bit sizes the shaders compute with.
constexpr uint64_t kMaxDim = 65536;
constexpr uint64_t kMaxLayers = 1024;
constexpr uint64_t kMaxHeads = 1024;
constexpr uint64_t kMaxHeadDim = 1024;
constexpr uint64_t kMaxFfnDim = 1u << 20;
constexpr uint64_t kMaxVocab = 1u << 24;
constexpr uint64_t kMaxContext = 1u << 26;

class ConfigReader {
 public:
  explicit ConfigReader(const GgufFile& file) : file_(file) {}

  [[noreturn]] void fail(const std::string& what) const {
    throw GgufError(fmt::format("{}: {}", file_.path(), what));
  }

  uint32_t checked(const std::string& key, uint64_t value, uint64_t max) const {
    if (value == 0) fail(fmt::format("{} is 0", key));
    if (value > max) fail(fmt::format("{} is {}, more than kvscope accepts ({})", key, value, max));
    return static_cast<uint32_t>(value);
  }
  uint32_t required(const std::string& key, uint64_t max) const {
    if (!file_.has(key)) fail(fmt::format("metadata {} is missing; this model needs it", key));
    return checked(key, file_.get_uint(key), max);
  }
  uint32_t optional(const std::string& key, uint64_t fallback, uint64_t max) const {
    return checked(key, file_.get_uint_or(key, fallback), max);
  }
  float positive_float(const std::string& key, double fallback) const {
    const double v = file_.get_float_or(key, fallback);
    if (!(v > 0.0) || v > 1e30) fail(fmt::format("{} is {}, expected a positive number", key, v));
    return static_cast<float>(v);
  }

 private:
  const GgufFile& file_;
};

std::string shape_string(const std::vector<uint64_t>& shape) { return fmt::format("[{}]", fmt::join(shape, ", ")); }

// `f32_only`: what the tensor is, when it must be F32 ("norm weights"); null otherwise.
void check_tensor(const GgufFile& file, const std::string& arch, const std::string& name,
                  std::vector<uint64_t> expected, const char* f32_only) {
  const GgufTensorInfo* t = file.find_tensor(name);
  if (!t)
    throw GgufError(fmt::format("{}: tensor '{}' is missing; this {} model needs it", file.path(), name, arch));
  const std::string_view type_name = type_traits(static_cast<uint32_t>(t->type))->name;  // reader checked the id
  if (!type_supported(t->type))
    throw GgufError(fmt::format("{}: tensor {} has type {}, which kvscope does not support yet; supported: {}",
                                file.path(), name, type_name, supported_types_list()));
  if (f32_only && t->type != GgmlType::F32)
    throw GgufError(fmt::format("{}: tensor '{}' has type {}; {} must be F32", file.path(), name, type_name, f32_only));
  if (t->shape != expected)
    throw GgufError(fmt::format("{}: tensor '{}' has shape {}, expected {} for this {} model", file.path(), name,
                                shape_string(t->shape), shape_string(expected), arch));
}

}  // namespace

std::string layer_tensor(uint32_t layer, const char* suffix) { return fmt::format("blk.{}.{}", layer, suffix); }

std::string supported_architectures_list() { return "llama qwen2 qwen3 phi3 gemma3"; }

LlamaConfig read_llama_config(const GgufFile& file) {
  ConfigReader in(file);
  LlamaConfig cfg;
  if (!file.has("general.architecture"))
    in.fail("metadata general.architecture is missing; kvscope runs llama-family models");
  cfg.arch = file.get_string("general.architecture");
  if (cfg.arch != "llama" && cfg.arch != "qwen2" && cfg.arch != "qwen3" && cfg.arch != "phi3" && cfg.arch != "gemma3")
    in.fail(fmt::format("general.architecture is '{}', which kvscope does not run; supported: {}", cfg.arch,
                        supported_architectures_list()));
  // qwen2 is llama with biases on q, k, v and GPT-NeoX's rotation pairs
  // (llama.cpp's LLAMA_ROPE_TYPE_NEOX for it).
  // qwen3 drops the biases and RMS-normalizes each q and k head before RoPE
  // (llama.cpp's LLM_ARCH_QWEN3: attn_q_norm / attn_k_norm).
  const bool qwen2 = cfg.arch == "qwen2";
  const bool qwen3 = cfg.arch == "qwen3";
  // phi3 stores q|k|v as one tensor and gate|up as one (llama.cpp's
  // LLM_ARCH_PHI3, NeoX RoPE; its rope_factors_short.weight are per-pair
  // divisors like Llama 3's rope_freqs).
  const bool phi3 = cfg.arch == "phi3";
  // gemma3 (llama.cpp's LLM_ARCH_GEMMA3): NeoX RoPE, q/k head norms,
  // embeddings times sqrt(dim), RMS norms after attention and after the FFN
  // as well as before, GeGLU, and five sliding-window layers to each global
  // one. Its norm weights are stored with the 1 of Gemma's (1 + w) already
  // added by the converter, so they are plain RMS norm weights here.
  const bool gemma3 = cfg.arch == "gemma3";
  cfg.rope_mode = qwen2 || qwen3 || phi3 || gemma3 ? RopeMode::Neox : RopeMode::Normal;
  cfg.qk_norm = qwen3 || gemma3;
  cfg.post_norms = gemma3;
  cfg.ffn_act = gemma3 ? FfnActivation::GeluTanh : FfnActivation::Silu;
  cfg.fused_qkv = cfg.fused_gate_up = phi3;
  cfg.name = file.get_string_or("general.name", "");

  const std::string& a = cfg.arch;  // every hyperparameter key is prefixed with the architecture
  cfg.dim = in.required(a + ".embedding_length", kMaxDim);
  cfg.n_layer = in.required(a + ".block_count", kMaxLayers);
  cfg.n_head = in.required(a + ".attention.head_count", kMaxHeads);
  cfg.n_kv_head = in.optional(a + ".attention.head_count_kv", cfg.n_head, kMaxHeads);
  cfg.ffn_dim = in.required(a + ".feed_forward_length", kMaxFfnDim);
  cfg.n_ctx_train = in.required(a + ".context_length", kMaxContext);
  cfg.norm_eps = in.positive_float(a + ".attention.layer_norm_rms_epsilon", 1e-5);
  cfg.rope_theta = in.positive_float(a + ".rope.freq_base", 10000.0);

  if (cfg.n_head % cfg.n_kv_head != 0)
    in.fail(fmt::format("{}.attention.head_count {} is not a multiple of {}.attention.head_count_kv {}", a, cfg.n_head,
                        a, cfg.n_kv_head));
  const std::string key_length = a + ".attention.key_length";
  if (!file.has(key_length) && cfg.dim % cfg.n_head != 0)
    in.fail(fmt::format("{}.embedding_length {} is not a multiple of {}.attention.head_count {}", a, cfg.dim, a,
                        cfg.n_head));
  cfg.head_dim = in.optional(key_length, cfg.dim / cfg.n_head, kMaxHeadDim);
  if (cfg.head_dim % 2 != 0) in.fail(fmt::format("head dimension {} is odd; rotary embedding needs pairs", cfg.head_dim));
  cfg.rope_dim = in.optional(a + ".rope.dimension_count", cfg.head_dim, kMaxHeadDim);
  if (cfg.rope_dim % 2 != 0 || cfg.rope_dim > cfg.head_dim)
    in.fail(fmt::format("{}.rope.dimension_count {} must be even and at most the head dimension {}", a, cfg.rope_dim,
                        cfg.head_dim));
  // Linear RoPE scaling (llama.cpp: freq_scale = 1 / factor); other scaling
  // types (yarn, longrope) are not applied.
  if (file.get_string_or(a + ".rope.scaling.type", "") == "linear") {
    cfg.rope_linear_factor = in.positive_float(a + ".rope.scaling.factor", 1.0);
    if (cfg.rope_linear_factor < 1.0f || cfg.rope_linear_factor > 1024.0f)
      in.fail(fmt::format("{}.rope.scaling.factor is {}, expected 1 to 1024", a, cfg.rope_linear_factor));
  }
  cfg.rope_attn_factor = in.positive_float(a + ".rope.scaling.attn_factor", 1.0);
  cfg.rope_ctx_orig = in.optional(a + ".rope.scaling.original_context_length", cfg.n_ctx_train, kMaxContext);
  cfg.attn_scale = 1.0f / std::sqrt(float(cfg.head_dim));
  if (gemma3) {
    cfg.embed_scale = std::sqrt(float(cfg.dim));
    cfg.sliding_window = in.required(a + ".attention.sliding_window", kMaxContext);
    cfg.swa_period = in.optional(a + ".attention.sliding_window_pattern", 6, kMaxLayers);
    // Gemma 3 27B scales queries by its hidden size per head, the others by
    // the head size (llama.cpp decides by the layer count, 62).
    if (cfg.n_layer == 62) cfg.attn_scale = 1.0f / std::sqrt(float(cfg.dim / cfg.n_head));
  }
  if (file.has(a + ".attention.scale")) cfg.attn_scale = in.positive_float(a + ".attention.scale", 1.0);

  // Vocabulary size: the tokenizer is the authority when present.
  const GgufTensorInfo* embd = file.find_tensor("token_embd.weight");
  uint64_t n_vocab = 0;
  if (file.has("tokenizer.ggml.tokens")) {
    const GgufValue& tokens = file.get("tokenizer.ggml.tokens");
    try {
      n_vocab = tokens.as_array("tokenizer.ggml.tokens").items.size();
    } catch (const GgufError& e) {
      in.fail(e.what());
    }
  } else if (embd && embd->shape.size() == 2) {
    n_vocab = embd->shape[1];
  } else if (!embd) {
    in.fail(fmt::format("tensor 'token_embd.weight' is missing; this {} model needs it", cfg.arch));
  } else {
    in.fail(fmt::format("tensor 'token_embd.weight' has shape {}, expected [{}, n_vocab] for this {} model",
                        shape_string(embd->shape), cfg.dim, cfg.arch));
  }
  cfg.n_vocab = in.checked("vocabulary size", n_vocab, kMaxVocab);

  // Tensors, shapes ne[0] first (ne[0] is the input side of a matmul).
  const uint64_t dim = cfg.dim, q_dim = cfg.q_dim(), kv_dim = cfg.kv_dim(), ffn = cfg.ffn_dim;
  check_tensor(file, cfg.arch, "token_embd.weight", {dim, cfg.n_vocab}, nullptr);
  check_tensor(file, cfg.arch, "output_norm.weight", {dim}, "norm weights");
  cfg.tied_output = file.find_tensor("output.weight") == nullptr;
  if (!cfg.tied_output) check_tensor(file, cfg.arch, "output.weight", {dim, cfg.n_vocab}, nullptr);
  for (uint32_t l = 0; l < cfg.n_layer; ++l) {
    check_tensor(file, cfg.arch, layer_tensor(l, "attn_norm.weight"), {dim}, "norm weights");
    if (cfg.fused_qkv) {
      check_tensor(file, cfg.arch, layer_tensor(l, "attn_qkv.weight"), {dim, q_dim + 2 * kv_dim}, nullptr);
    } else {
      check_tensor(file, cfg.arch, layer_tensor(l, "attn_q.weight"), {dim, q_dim}, nullptr);
      check_tensor(file, cfg.arch, layer_tensor(l, "attn_k.weight"), {dim, kv_dim}, nullptr);
      check_tensor(file, cfg.arch, layer_tensor(l, "attn_v.weight"), {dim, kv_dim}, nullptr);
    }
    check_tensor(file, cfg.arch, layer_tensor(l, "attn_output.weight"), {q_dim, dim}, nullptr);
    check_tensor(file, cfg.arch, layer_tensor(l, "ffn_norm.weight"), {dim}, "norm weights");
    if (cfg.fused_gate_up) {
      check_tensor(file, cfg.arch, layer_tensor(l, "ffn_up.weight"), {dim, 2 * ffn}, nullptr);
    } else {
      check_tensor(file, cfg.arch, layer_tensor(l, "ffn_gate.weight"), {dim, ffn}, nullptr);
      check_tensor(file, cfg.arch, layer_tensor(l, "ffn_up.weight"), {dim, ffn}, nullptr);
    }
    check_tensor(file, cfg.arch, layer_tensor(l, "ffn_down.weight"), {ffn, dim}, nullptr);
    if (cfg.post_norms) {
      check_tensor(file, cfg.arch, layer_tensor(l, "post_attention_norm.weight"), {dim}, "norm weights");
      check_tensor(file, cfg.arch, layer_tensor(l, "post_ffw_norm.weight"), {dim}, "norm weights");
    }
  }
  // q/k/v biases: required by qwen2, accepted on llama when every layer has all three.
  cfg.qkv_bias = qwen2 || file.find_tensor(layer_tensor(0, "attn_q.bias")) != nullptr;
  if (cfg.qkv_bias) {
    for (uint32_t l = 0; l < cfg.n_layer; ++l) {
      check_tensor(file, cfg.arch, layer_tensor(l, "attn_q.bias"), {q_dim}, "biases");
      check_tensor(file, cfg.arch, layer_tensor(l, "attn_k.bias"), {kv_dim}, "biases");
      check_tensor(file, cfg.arch, layer_tensor(l, "attn_v.bias"), {kv_dim}, "biases");
    }
  }
  if (cfg.qk_norm) {
    for (uint32_t l = 0; l < cfg.n_layer; ++l) {
      check_tensor(file, cfg.arch, layer_tensor(l, "attn_q_norm.weight"), {cfg.head_dim}, "norm weights");
      check_tensor(file, cfg.arch, layer_tensor(l, "attn_k_norm.weight"), {cfg.head_dim}, "norm weights");
    }
  }
  // Llama 3.1+ stores its RoPE frequency scaling as one divisor per pair.
  cfg.rope_freqs = file.find_tensor(rope_freqs_tensor(cfg)) != nullptr;
  if (cfg.rope_freqs)
    check_tensor(file, cfg.arch, rope_freqs_tensor(cfg), {cfg.rope_dim / 2}, "rope frequency factors");
  cfg.rope_factors_long = phi3 && file.find_tensor("rope_factors_long.weight") != nullptr;
  if (cfg.rope_factors_long) {
    if (!cfg.rope_freqs)
      in.fail("tensor 'rope_factors_long.weight' has no 'rope_factors_short.weight' beside it; this phi3 model "
              "needs both");
    check_tensor(file, cfg.arch, "rope_factors_long.weight", {cfg.rope_dim / 2}, "rope frequency factors");
  }
  return cfg;
}

std::string rope_freqs_tensor(const LlamaConfig& cfg) {
  return cfg.arch == "phi3" ? "rope_factors_short.weight" : "rope_freqs.weight";
}

std::vector<float> rope_factors(const GgufFile& file, const LlamaConfig& cfg, uint32_t n_ctx) {
  if (!cfg.rope_freqs && cfg.rope_linear_factor == 1.0f) return {};
  std::vector<float> factors(cfg.rope_dim / 2, 1.0f);
  if (cfg.rope_freqs) {
    // llama.cpp's get_rope_factors: the long factors when the context is longer than the original.
    const std::string name =
        cfg.rope_factors_long && n_ctx > cfg.rope_ctx_orig ? "rope_factors_long.weight" : rope_freqs_tensor(cfg);
    const GgufTensorInfo& t = file.tensor(name);  // F32, rope_dim/2: read_llama_config checked
    std::memcpy(factors.data(), t.data, factors.size() * sizeof(float));
  }
  for (float& f : factors) f *= cfg.rope_linear_factor;
  return factors;
}

uint64_t parameter_count(const GgufFile& file) {
  uint64_t total = 0;
  for (const GgufTensorInfo& t : file.tensors()) total += t.n_elements;
  return total;
}

double kv_bytes_per_token(const LlamaConfig& cfg, double bytes_per_elem) {
  return 2.0 * cfg.n_layer * cfg.kv_dim() * bytes_per_elem;  // K and V, every layer
}

uint32_t local_layer_count(const LlamaConfig& cfg) {
  uint32_t n = 0;
  for (uint32_t l = 0; l < cfg.n_layer; ++l) n += cfg.layer_window(l) > 0 ? 1 : 0;
  return n;
}

}  // namespace kvscope
