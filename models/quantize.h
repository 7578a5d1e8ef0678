// `kvscope quantize`: rewrite a GGUF model with its 2-D weight matrices in
// another type, one type everywhere (F16, Q8_0, Q4_0, Q4_K, Q5_K, Q6_K) or a
// mix as llama.cpp makes it (Q4_K_M, Q5_K_M). Norm weights and 1-D tensors
// stay as they are.
#pragma once
#include <optional>
#include <string>
#include <string_view>

#include "models/ggml_types.h"

namespace kvscope {

// What `kvscope quantize` accepts as its type argument.
struct QuantizeScheme {
  std::string_view name;  // "Q4_K_M", "Q8_0", ...
  GgmlType base;          // the type of most matrices
  // Q4_K_M / Q5_K_M: output.weight, and attn_v / ffn_down in the layers
  // llama.cpp's use_more_bits() picks (the first and last eighth, and every
  // third layer between), get Q6_K; token_embd keeps `base`.
  bool more_bits_mix = false;
};
std::optional<QuantizeScheme> quantize_scheme(std::string_view name);  // case-insensitive
std::string_view quantize_scheme_list();  // "F16 Q8_0 Q4_0 Q4_1 Q5_0 Q5_1 Q4_K Q5_K Q6_K Q4_K_M Q5_K_M"

// llama.cpp's use_more_bits(i_layer, n_layers).
bool use_more_bits(int layer, int n_layers);

struct QuantizeResult {
  uint64_t n_quantized = 0, n_kept = 0, bytes_in = 0, bytes_out = 0;
  // K-quant targets whose rows are not a multiple of 256 elements: written
  // as Q8_0 instead (F16 when rows are not a multiple of 32 either).
  uint64_t n_fallback = 0;
};

// Throws std::runtime_error for unsupported targets or sources, and (for
// F16/Q8_0/Q4_0) rows whose length is not a multiple of the block size (the
// message names the tensor).
QuantizeResult quantize_model(const std::string& in_path, const std::string& out_path, const QuantizeScheme& scheme);
QuantizeResult quantize_model(const std::string& in_path, const std::string& out_path, GgmlType type);

}  // namespace kvscope
