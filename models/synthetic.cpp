// Synthetic GGUF models: real shapes, pseudo-random weights. A 1B model's
// 1.2 billion values are generated and quantized in a few seconds: a
// splitmix64 stream per row (so threads can split the rows and the bytes do
// not depend on how many there are), rows quantized in parallel.
#include "models/synthetic.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <numbers>
#include <stdexcept>
#include <thread>

#include <fmt/format.h>

#include "models/hparams.h"
#include "models/quantize.h"

namespace kvscope {

namespace {

// splitmix64: a fast, well-mixed 64-bit generator (one add, two multiplies).
struct SplitMix64 {
  uint64_t state;
  uint64_t next() {
    uint64_t z = (state += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
  }
};

// Uniform floats in [offset - scale, offset + scale), two per draw.
void fill_uniform(std::span<float> out, SplitMix64& rng, float scale, float offset) {
  constexpr float kUnit = 1.0f / float(1u << 24);  // 24 random bits -> [0, 1)
  size_t i = 0;
  for (; i + 1 < out.size(); i += 2) {
    const uint64_t r = rng.next();
    out[i] = offset + scale * (float(uint32_t(r) >> 8) * kUnit * 2.0f - 1.0f);
    out[i + 1] = offset + scale * (float(uint32_t(r >> 32) >> 8) * kUnit * 2.0f - 1.0f);
  }
  if (i < out.size()) out[i] = offset + scale * (float(uint32_t(rng.next()) >> 8) * kUnit * 2.0f - 1.0f);
}

// How each weight matrix is stored under a type name: one type everywhere,
// or llama.cpp's _M mixes (output and some attn_v / ffn_down in Q6_K).
// The type of each matrix: the scheme `type` names, as `kvscope quantize`
// would give it (scheme_tensor_type: the mix's rules and the fallback for
// rows that are not whole blocks).
struct TypePlan {
  QuantizeScheme scheme{"F32", GgmlType::F32};
  uint32_t n_gqa = 1;
  bool tied_output = true;

  GgmlType matrix_type(std::string_view name, int layer, int n_layers, uint64_t cols) const {
    if (scheme.base == GgmlType::F32) return GgmlType::F32;
    return scheme_tensor_type(scheme, name, TensorPlace{layer, n_layers, cols, n_gqa, tied_output});
  }
};

TypePlan type_plan(const SyntheticSpec& s) {
  TypePlan plan;
  plan.n_gqa = s.n_kv_head > 0 ? s.n_head / s.n_kv_head : 1;
  plan.tied_output = s.tied_output;
  if (auto t = type_from_name(s.type); t && *t == GgmlType::F32) return plan;
  if (auto scheme = quantize_scheme(s.type)) {
    plan.scheme = *scheme;
    return plan;
  }
  throw std::invalid_argument(fmt::format("synthetic model: weight type '{}' is not one of F32 {}", s.type,
                                          quantize_scheme_list()));
}

class Builder {
 public:
  Builder(GgufWriter& writer, const SyntheticSpec& spec)
      : writer_(writer), spec_(spec), plan_(type_plan(spec)),
        threads_(spec.threads ? spec.threads : std::max(1u, std::thread::hardware_concurrency())) {}

  // A vector of f32 values (norms, biases): uniform in offset +- scale.
  void add_vector(const std::string& name, uint64_t n, float scale, float offset) {
    SplitMix64 rng{row_seed(0)};
    std::vector<float> v(n);
    fill_uniform(v, rng, scale, offset);
    add_f32(name, v);
  }
  void add_f32(const std::string& name, std::span<const float> v) {
    ++tensor_index_;
    writer_.add_tensor(name, GgmlType::F32, {v.size()},
                       {reinterpret_cast<const uint8_t*>(v.data()), v.size() * sizeof(float)});
  }

  // A rows x cols matrix (cols contiguous, GGUF shape {cols, rows}), values
  // uniform in +-sqrt(3 / cols): unit variance in, unit variance out.
  void add_matrix(const std::string& name, uint64_t rows, uint64_t cols, int layer) {
    ++tensor_index_;
    const GgmlType type = plan_.matrix_type(name, layer, int(spec_.n_layer), cols);
    const float scale = std::sqrt(3.0f / float(cols));
    const size_t out_row = row_bytes(type, cols);
    std::vector<uint8_t> bytes(rows * out_row);
    const uint64_t drawn = spec_.distinct_rows ? std::min<uint64_t>(rows, spec_.distinct_rows) : rows;
    auto work = [&](uint64_t first, uint64_t last) {
      std::vector<float> row(cols);
      for (uint64_t r = first; r < last; ++r) {
        SplitMix64 rng{row_seed(r)};
        fill_uniform(row, rng, scale, 0.0f);
        if (type == GgmlType::F32)
          std::memcpy(bytes.data() + r * out_row, row.data(), out_row);
        else
          quantize_row(type, row, {bytes.data() + r * out_row, out_row});
      }
    };
    const uint64_t n_threads = std::min<uint64_t>(threads_, std::max<uint64_t>(1, drawn / 64));
    if (n_threads <= 1) {
      work(0, drawn);
    } else {
      std::vector<std::jthread> pool;
      for (uint64_t t = 0; t < n_threads; ++t)
        pool.emplace_back(work, drawn * t / n_threads, drawn * (t + 1) / n_threads);
    }
    for (uint64_t r = drawn; r < rows; ++r) {  // distinct_rows: copies of drawn rows
      SplitMix64 pick{row_seed(r)};
      std::memcpy(bytes.data() + r * out_row, bytes.data() + pick.next() % drawn * out_row, out_row);
    }
    writer_.add_tensor(name, type, {cols, rows}, bytes);
  }

 private:
  uint64_t row_seed(uint64_t row) const {
    SplitMix64 mix{spec_.seed * 0x100000001b3ull ^ (uint64_t(tensor_index_) << 40) ^ row};
    return mix.next();
  }

  GgufWriter& writer_;
  const SyntheticSpec& spec_;
  TypePlan plan_;
  unsigned threads_;
  uint32_t tensor_index_ = 0;
};

void check_spec(const SyntheticSpec& s) {
  if (s.arch != "llama" && s.arch != "qwen2" && s.arch != "qwen3" && s.arch != "phi3" && s.arch != "gemma3")
    throw std::invalid_argument(fmt::format("synthetic model: architecture '{}' is not one of {}", s.arch,
                                            supported_architectures_list()));
  if (s.n_head == 0 || s.n_kv_head == 0 || s.n_head % s.n_kv_head != 0)
    throw std::invalid_argument(fmt::format("synthetic model: {} heads cannot share {} kv heads", s.n_head, s.n_kv_head));
  if (s.head_dim == 0 || s.head_dim % 2 != 0)
    throw std::invalid_argument(fmt::format("synthetic model: head size {} must be even", s.head_dim));
}

}  // namespace

std::vector<float> llama3_rope_freqs(uint32_t rope_dim, float theta, float scale, uint32_t original_context) {
  // Llama 3.1's published scaling (low_freq_factor 1, high_freq_factor 4):
  // a pair whose wavelength is short against the original context keeps its
  // frequency, a long one is slowed by `scale`, those between are blended.
  constexpr double kLowFreqFactor = 1.0, kHighFreqFactor = 4.0;
  const double low_freq_wavelen = original_context / kLowFreqFactor;
  const double high_freq_wavelen = original_context / kHighFreqFactor;
  std::vector<float> factors(rope_dim / 2);
  for (uint32_t i = 0; i < rope_dim / 2; ++i) {
    const double freq = std::pow(double(theta), -2.0 * i / rope_dim);
    const double wavelen = 2.0 * std::numbers::pi / freq;
    if (wavelen < high_freq_wavelen) {
      factors[i] = 1.0f;
    } else if (wavelen > low_freq_wavelen) {
      factors[i] = scale;
    } else {
      const double smooth = (original_context / wavelen - kLowFreqFactor) / (kHighFreqFactor - kLowFreqFactor);
      factors[i] = float(1.0 / ((1.0 - smooth) / scale + smooth));
    }
  }
  return factors;
}

SyntheticSpec synthetic_preset(std::string_view name) {
  SyntheticSpec s;
  s.name = std::string(name);
  if (name == "llama-1b") {  // Llama 3.2 1B
    s.arch = "llama";
    s.dim = 2048, s.n_layer = 16, s.n_head = 32, s.n_kv_head = 8, s.head_dim = 64, s.ffn_dim = 8192;
    s.n_vocab = 128256, s.n_ctx = 131072, s.rope_theta = 500000.0f, s.rope_freqs = true, s.tied_output = true;
  } else if (name == "qwen-0.5b") {  // Qwen 2.5 0.5B
    s.arch = "qwen2";
    s.dim = 896, s.n_layer = 24, s.n_head = 14, s.n_kv_head = 2, s.head_dim = 64, s.ffn_dim = 4864;
    s.n_vocab = 151936, s.n_ctx = 32768, s.rope_theta = 1000000.0f, s.norm_eps = 1e-6f, s.qkv_bias = true;
    s.tied_output = true;
  } else if (name == "tiny-llama3") {  // Llama 3's traits at test size: GQA 4:1, rope_freqs, theta 500000
    s.arch = "llama";
    s.dim = 128, s.n_layer = 2, s.n_head = 8, s.n_kv_head = 2, s.head_dim = 16, s.ffn_dim = 320;
    s.n_vocab = 512, s.rope_theta = 500000.0f, s.rope_freqs = true, s.tied_output = true;
  } else if (name == "tiny-qwen2") {  // Qwen 2's traits: biases, NeoX RoPE, theta 1e6, GQA 7:1
    s.arch = "qwen2";
    s.dim = 224, s.n_layer = 2, s.n_head = 7, s.n_kv_head = 1, s.head_dim = 32, s.ffn_dim = 256;
    s.n_vocab = 384, s.rope_theta = 1000000.0f, s.norm_eps = 1e-6f, s.qkv_bias = true, s.tied_output = true;
  } else if (name == "qwen3-0.6b") {  // Qwen 3 0.6B: head size 128 with 16 heads of a 1024-wide model
    s.arch = "qwen3";
    s.dim = 1024, s.n_layer = 28, s.n_head = 16, s.n_kv_head = 8, s.head_dim = 128, s.ffn_dim = 3072;
    s.n_vocab = 151936, s.n_ctx = 40960, s.rope_theta = 1000000.0f, s.norm_eps = 1e-6f, s.tied_output = true;
  } else if (name == "tiny-qwen3") {  // Qwen 3's traits: q/k head norms, no biases, q wider than the model, GQA 2:1
    s.arch = "qwen3";
    s.dim = 96, s.n_layer = 2, s.n_head = 4, s.n_kv_head = 2, s.head_dim = 32, s.ffn_dim = 192;
    s.n_vocab = 320, s.rope_theta = 1000000.0f, s.norm_eps = 1e-6f, s.tied_output = true;
  } else if (name == "phi3-mini") {  // Phi-3 mini 4K: head 96, 32 kv heads, untied 32064-token output
    s.arch = "phi3";
    s.dim = 3072, s.n_layer = 32, s.n_head = 32, s.n_kv_head = 32, s.head_dim = 96, s.ffn_dim = 8192;
    s.n_vocab = 32064, s.n_ctx = 4096, s.tied_output = false;
  } else if (name == "tiny-phi3") {  // Phi-3.5's traits: fused q|k|v and gate|up, NeoX RoPE, head 24, LongRoPE past 32 tokens
    s.arch = "phi3";
    s.dim = 96, s.n_layer = 2, s.n_head = 4, s.n_kv_head = 4, s.head_dim = 24, s.ffn_dim = 160;
    s.n_vocab = 320, s.tied_output = false, s.long_rope_ctx = 32;
  } else if (name == "gemma3-1b") {  // Gemma 3 1B: 26 layers, 5 of each 6 with a 512-token window, head 256, 1 kv head
    s.arch = "gemma3";
    s.dim = 1152, s.n_layer = 26, s.n_head = 4, s.n_kv_head = 1, s.head_dim = 256, s.ffn_dim = 6912;
    s.n_vocab = 262144, s.n_ctx = 32768, s.rope_theta = 1000000.0f, s.norm_eps = 1e-6f, s.tied_output = true;
    s.sliding_window = 512;
  } else if (name == "tiny-gemma3") {  // Gemma 3's traits: a 6-token window on layers 0-4 and 6, linear RoPE scaling 8 on layer 5
    s.arch = "gemma3";
    s.dim = 64, s.n_layer = 7, s.n_head = 4, s.n_kv_head = 2, s.head_dim = 32, s.ffn_dim = 128;
    s.n_vocab = 320, s.rope_theta = 1000000.0f, s.norm_eps = 1e-6f, s.tied_output = true;
    s.sliding_window = 6, s.rope_linear = 8.0f;
  } else if (name == "tiny-head48") {  // a head size that is not a power of two, untied output
    s.arch = "llama";
    s.dim = 192, s.n_layer = 2, s.n_head = 4, s.n_kv_head = 2, s.head_dim = 48, s.ffn_dim = 288;
    s.n_vocab = 300, s.tied_output = false;
  } else {
    throw std::invalid_argument(fmt::format("synthetic model '{}' is not one of: {}", name, synthetic_preset_list()));
  }
  return s;
}

std::string synthetic_preset_list() {
  return "llama-1b qwen-0.5b qwen3-0.6b phi3-mini gemma3-1b tiny-llama3 tiny-qwen2 tiny-qwen3 tiny-phi3 tiny-gemma3 "
         "tiny-head48";
}

void add_synthetic_model(GgufWriter& w, const SyntheticSpec& s) {
  check_spec(s);
  const std::string& a = s.arch;  // every hyperparameter key is prefixed with the architecture
  w.set_string("general.architecture", a);
  w.set_string("general.name", s.name);
  w.set_uint32(a + ".embedding_length", s.dim);
  w.set_uint32(a + ".block_count", s.n_layer);
  w.set_uint32(a + ".attention.head_count", s.n_head);
  w.set_uint32(a + ".attention.head_count_kv", s.n_kv_head);
  w.set_uint32(a + ".attention.key_length", s.head_dim);
  w.set_uint32(a + ".attention.value_length", s.head_dim);
  w.set_uint32(a + ".rope.dimension_count", s.head_dim);
  w.set_uint32(a + ".feed_forward_length", s.ffn_dim);
  w.set_uint32(a + ".context_length", s.n_ctx);
  w.set_float32(a + ".attention.layer_norm_rms_epsilon", s.norm_eps);
  w.set_float32(a + ".rope.freq_base", s.rope_theta);
  if (s.sliding_window) w.set_uint32(a + ".attention.sliding_window", s.sliding_window);
  if (s.swa_period) w.set_uint32(a + ".attention.sliding_window_pattern", s.swa_period);
  if (s.rope_linear != 1.0f) {
    w.set_string(a + ".rope.scaling.type", "linear");
    w.set_float32(a + ".rope.scaling.factor", s.rope_linear);
  }

  Builder b(w, s);
  const uint64_t dim = s.dim, q_dim = uint64_t{s.n_head} * s.head_dim, kv_dim = uint64_t{s.n_kv_head} * s.head_dim;
  // The embedding at the matrices' scale too: tied logits (rows . normed x)
  // come out with unit variance, and the first rmsnorm rescales its rows.
  b.add_matrix("token_embd.weight", s.n_vocab, dim, -1);
  b.add_vector("output_norm.weight", dim, 0.1f, 1.0f);
  if (!s.tied_output) b.add_matrix("output.weight", s.n_vocab, dim, -1);
  if (s.rope_freqs) b.add_f32("rope_freqs.weight", llama3_rope_freqs(s.head_dim, s.rope_theta));
  if (s.long_rope_ctx) {  // Phi-3.5's kind: gentle short factors, stronger long ones, sqrt(1 + ln(s) / ln(orig))
    const float scale = float(s.n_ctx) / float(s.long_rope_ctx);
    b.add_f32("rope_factors_short.weight", llama3_rope_freqs(s.head_dim, s.rope_theta, 1.5f, s.long_rope_ctx));
    b.add_f32("rope_factors_long.weight", llama3_rope_freqs(s.head_dim, s.rope_theta, 8.0f, s.long_rope_ctx));
    w.set_uint32(a + ".rope.scaling.original_context_length", s.long_rope_ctx);
    w.set_float32(a + ".rope.scaling.attn_factor",
                  std::sqrt(1.0f + std::log(std::max(scale, 1.0f)) / std::log(float(s.long_rope_ctx))));
  }
  for (uint32_t l = 0; l < s.n_layer; ++l) {
    const int layer = int(l);
    b.add_vector(layer_tensor(l, "attn_norm.weight"), dim, 0.1f, 1.0f);
    if (s.arch == "phi3") {  // one q|k|v tensor
      b.add_matrix(layer_tensor(l, "attn_qkv.weight"), q_dim + 2 * kv_dim, dim, layer);
    } else {
      b.add_matrix(layer_tensor(l, "attn_q.weight"), q_dim, dim, layer);
      b.add_matrix(layer_tensor(l, "attn_k.weight"), kv_dim, dim, layer);
      b.add_matrix(layer_tensor(l, "attn_v.weight"), kv_dim, dim, layer);
    }
    if (s.qkv_bias) {
      b.add_vector(layer_tensor(l, "attn_q.bias"), q_dim, 0.5f, 0.0f);
      b.add_vector(layer_tensor(l, "attn_k.bias"), kv_dim, 0.5f, 0.0f);
      b.add_vector(layer_tensor(l, "attn_v.bias"), kv_dim, 0.5f, 0.0f);
    }
    if (s.arch == "qwen3" || s.arch == "gemma3") {  // per-head norm weights of q and k, around 1 as trained ones are
      b.add_vector(layer_tensor(l, "attn_q_norm.weight"), s.head_dim, 0.3f, 1.0f);
      b.add_vector(layer_tensor(l, "attn_k_norm.weight"), s.head_dim, 0.3f, 1.0f);
    }
    b.add_matrix(layer_tensor(l, "attn_output.weight"), dim, q_dim, layer);
    b.add_vector(layer_tensor(l, "ffn_norm.weight"), dim, 0.1f, 1.0f);
    if (s.arch == "phi3") {  // one gate|up tensor
      b.add_matrix(layer_tensor(l, "ffn_up.weight"), 2 * uint64_t{s.ffn_dim}, dim, layer);
    } else {
      b.add_matrix(layer_tensor(l, "ffn_gate.weight"), s.ffn_dim, dim, layer);
      b.add_matrix(layer_tensor(l, "ffn_up.weight"), s.ffn_dim, dim, layer);
    }
    b.add_matrix(layer_tensor(l, "ffn_down.weight"), dim, s.ffn_dim, layer);
    if (s.arch == "gemma3") {  // the norms after attention and after the FFN
      b.add_vector(layer_tensor(l, "post_attention_norm.weight"), dim, 0.1f, 1.0f);
      b.add_vector(layer_tensor(l, "post_ffw_norm.weight"), dim, 0.1f, 1.0f);
    }
  }
}

std::vector<uint8_t> synthetic_gguf(const SyntheticSpec& spec) {
  GgufWriter writer;
  add_synthetic_model(writer, spec);
  return writer.to_bytes();
}

namespace {
// Norm weights per layer past attn_norm and ffn_norm: q/k head norms (qwen3,
// gemma3), post-attention and post-FFN norms (gemma3).
uint64_t extra_norms(const SyntheticSpec& s) {
  if (s.arch == "qwen3") return 2 * uint64_t{s.head_dim};
  if (s.arch == "gemma3") return 2 * uint64_t{s.head_dim} + 2 * uint64_t{s.dim};
  return 0;
}
}  // namespace

uint64_t synthetic_weight_bytes(const SyntheticSpec& s) {
  const TypePlan plan = type_plan(s);
  const uint64_t dim = s.dim, q_dim = uint64_t{s.n_head} * s.head_dim, kv_dim = uint64_t{s.n_kv_head} * s.head_dim;
  auto matrix = [&](const std::string& name, uint64_t rows, uint64_t cols, int layer) {
    return rows * row_bytes(plan.matrix_type(name, layer, int(s.n_layer), cols), cols);
  };
  uint64_t total = matrix("token_embd.weight", s.n_vocab, dim, -1) + 4 * dim;
  if (!s.tied_output) total += matrix("output.weight", s.n_vocab, dim, -1);
  if (s.rope_freqs) total += 4 * (s.head_dim / 2);
  if (s.long_rope_ctx) total += 2 * 4 * (s.head_dim / 2);
  for (uint32_t l = 0; l < s.n_layer; ++l) {
    const int layer = int(l);
    if (s.arch == "phi3")
      total += matrix(layer_tensor(l, "attn_qkv.weight"), q_dim + 2 * kv_dim, dim, layer) +
               matrix(layer_tensor(l, "ffn_up.weight"), 2 * uint64_t{s.ffn_dim}, dim, layer);
    else
      total += matrix(layer_tensor(l, "attn_q.weight"), q_dim, dim, layer) +
               matrix(layer_tensor(l, "attn_k.weight"), kv_dim, dim, layer) +
               matrix(layer_tensor(l, "attn_v.weight"), kv_dim, dim, layer) +
               matrix(layer_tensor(l, "ffn_gate.weight"), s.ffn_dim, dim, layer) +
               matrix(layer_tensor(l, "ffn_up.weight"), s.ffn_dim, dim, layer);
    total += matrix(layer_tensor(l, "attn_output.weight"), dim, q_dim, layer) +
             matrix(layer_tensor(l, "ffn_down.weight"), dim, s.ffn_dim, layer) + 4 * 2 * dim +
             (s.qkv_bias ? 4 * (q_dim + 2 * kv_dim) : 0) + 4 * extra_norms(s);
  }
  return total;
}

uint64_t synthetic_parameter_count(const SyntheticSpec& s) {
  const uint64_t dim = s.dim, q_dim = uint64_t{s.n_head} * s.head_dim, kv_dim = uint64_t{s.n_kv_head} * s.head_dim;
  const uint64_t per_layer = 2 * dim + dim * (q_dim + 2 * kv_dim) + (s.qkv_bias ? q_dim + 2 * kv_dim : 0) +
                             extra_norms(s) + q_dim * dim + 3 * dim * s.ffn_dim;
  return uint64_t{s.n_vocab} * dim * (s.tied_output ? 1 : 2) + dim + (s.rope_freqs ? s.head_dim / 2 : 0) +
         (s.long_rope_ctx ? s.head_dim : 0) +
         s.n_layer * per_layer;
}

}  // namespace kvscope
