// A tiny llama model built in memory with GgufWriter, for tests of the GGUF
// reader, the hyperparameter check and quantization. Values are a fixed
// pseudo-random sequence, so every run builds the same bytes.
//
// Default: dim 64, 2 layers, 4 heads, 2 kv heads (head_dim 16), ffn 96,
// vocab 100, untied output, F32 everywhere.
#pragma once
#include <cstdint>
#include <map>
#include <set>
#include <string>
#include <vector>

#include "models/ggml_types.h"
#include "models/gguf.h"

namespace kvscope::testing {

struct SyntheticLlama {
  std::string arch = "llama";
  uint32_t dim = 64, n_layer = 2, n_head = 4, n_kv_head = 2, ffn = 96, n_vocab = 100, n_ctx = 128;
  bool tied_output = false;
  bool with_tokens = true;              // tokenizer.ggml.tokens metadata
  GgmlType matrix_type = GgmlType::F32;  // type of every 2-D weight
  std::set<std::string> omit;                              // tensors left out
  std::map<std::string, std::vector<uint64_t>> shape_of;   // shape overrides
  std::map<std::string, GgmlType> type_of;                 // type overrides
};

// Deterministic values in [-scale, scale).
inline std::vector<float> synthetic_values(size_t n, uint32_t seed, float scale = 1.0f) {
  std::vector<float> v(n);
  uint32_t state = seed * 2654435761u + 12345u;
  for (float& x : v) {
    state = state * 1664525u + 1013904223u;
    x = scale * (static_cast<float>(state >> 8) / static_cast<float>(1u << 24) * 2.0f - 1.0f);
  }
  return v;
}

// Bytes of a tensor of `type` and `shape` holding synthetic values (zeros for
// types kvscope cannot write: those only need the right size).
inline std::vector<uint8_t> synthetic_tensor_bytes(GgmlType type, const std::vector<uint64_t>& shape, uint32_t seed,
                                                   float scale = 1.0f, float offset = 0.0f) {
  uint64_t n = 1;
  for (uint64_t ne : shape) n *= ne;
  const auto traits = *type_traits(static_cast<uint32_t>(type));
  std::vector<uint8_t> bytes(n / traits.block_elems * traits.block_bytes);
  if (!type_supported(type)) return bytes;
  std::vector<float> values = synthetic_values(n, seed, scale);
  for (float& x : values) x += offset;
  const size_t row = shape[0];
  const size_t out_row = row_bytes(type, row);
  for (size_t r = 0; r < n / row; ++r)
    quantize_row(type, std::span<const float>(values).subspan(r * row, row),
                 std::span<uint8_t>(bytes).subspan(r * out_row, out_row));
  return bytes;
}

inline GgufWriter synthetic_llama_writer(const SyntheticLlama& s = {}) {
  GgufWriter w;
  const std::string& a = s.arch;
  w.set_string("general.architecture", a);
  w.set_string("general.name", "synthetic");
  w.set_uint32(a + ".embedding_length", s.dim);
  w.set_uint32(a + ".block_count", s.n_layer);
  w.set_uint32(a + ".attention.head_count", s.n_head);
  w.set_uint32(a + ".attention.head_count_kv", s.n_kv_head);
  w.set_uint32(a + ".feed_forward_length", s.ffn);
  w.set_uint32(a + ".context_length", s.n_ctx);
  w.set_float32(a + ".attention.layer_norm_rms_epsilon", 1e-5f);
  w.set_float32(a + ".rope.freq_base", 10000.0f);
  if (s.with_tokens) {
    std::vector<std::string> tokens;
    for (uint32_t i = 0; i < s.n_vocab; ++i) tokens.push_back("tok" + std::to_string(i));
    w.set_string_array("tokenizer.ggml.tokens", tokens);
  }

  const uint64_t dim = s.dim, head_dim = s.dim / s.n_head, q_dim = s.n_head * head_dim,
                 kv_dim = s.n_kv_head * head_dim, ffn = s.ffn, vocab = s.n_vocab;
  uint32_t seed = 1;
  auto add = [&](const std::string& name, std::vector<uint64_t> shape, bool is_norm) {
    ++seed;
    if (s.omit.count(name)) return;
    if (auto it = s.shape_of.find(name); it != s.shape_of.end()) shape = it->second;
    GgmlType type = is_norm ? GgmlType::F32 : s.matrix_type;
    if (auto it = s.type_of.find(name); it != s.type_of.end()) type = it->second;
    // Norm weights near 1, like trained ones; matrices small.
    const auto bytes = is_norm ? synthetic_tensor_bytes(type, shape, seed, 0.1f, 1.0f)
                               : synthetic_tensor_bytes(type, shape, seed, 0.5f);
    w.add_tensor(name, type, shape, bytes);
  };
  add("token_embd.weight", {dim, vocab}, false);
  add("output_norm.weight", {dim}, true);
  if (!s.tied_output) add("output.weight", {dim, vocab}, false);
  for (uint32_t l = 0; l < s.n_layer; ++l) {
    const std::string p = "blk." + std::to_string(l) + ".";
    add(p + "attn_norm.weight", {dim}, true);
    add(p + "attn_q.weight", {dim, q_dim}, false);
    add(p + "attn_k.weight", {dim, kv_dim}, false);
    add(p + "attn_v.weight", {dim, kv_dim}, false);
    add(p + "attn_output.weight", {q_dim, dim}, false);
    add(p + "ffn_norm.weight", {dim}, true);
    add(p + "ffn_gate.weight", {dim, ffn}, false);
    add(p + "ffn_up.weight", {dim, ffn}, false);
    add(p + "ffn_down.weight", {ffn, dim}, false);
  }
  return w;
}

}  // namespace kvscope::testing
