// `kvscope quantize`: rewrite a GGUF model with its 2-D weight matrices in
// another type, one type everywhere (F16, Q8_0, Q4_0, Q4_K, Q5_K, Q6_K, ...)
// or a mix as llama.cpp makes it (Q4_K_M, Q5_K_M, Q3_K_M, Q2_K). Norm weights
// and 1-D tensors stay as they are.
#pragma once
#include <optional>
#include <string>
#include <string_view>

#include "models/ggml_types.h"

namespace kvscope {

// llama.cpp's mixes (llama_tensor_get_type, for dense models): which
// tensors get more bits than the base type.
enum class QuantizeMix {
  None,  // every matrix the base type
  // Q4_K_M / Q5_K_M: the output (and a tied token_embd, which serves as the
  // output) Q6_K; attn_v and ffn_down Q6_K in the layers use_more_bits()
  // picks (the first and last eighth, and every third layer between); a
  // fused attn_qkv Q5_K (Q4_K_M) or Q6_K (Q5_K_M).
  KM,
  // Q3_K_M: output Q6_K; attn_v Q5_K in layers 0 and 1, else Q4_K; ffn_down
  // Q5_K in the first sixteenth of the layers, else Q4_K; attn_output and
  // attn_qkv Q4_K; the rest Q3_K.
  Q3_K_M,
  // Q2_K: output Q6_K; attn_v Q4_K when 4 or more query heads share a kv
  // head, else Q3_K; ffn_down and attn_output Q3_K; the rest Q2_K.
  Q2_K,
};

// What `kvscope quantize` accepts as its type argument.
struct QuantizeScheme {
  std::string_view name;  // "Q4_K_M", "Q8_0", ...
  GgmlType base;          // the type of most matrices
  QuantizeMix mix = QuantizeMix::None;
};
std::optional<QuantizeScheme> quantize_scheme(std::string_view name);  // case-insensitive
// "F16 Q8_0 Q4_0 Q4_1 Q5_0 Q5_1 Q2_K Q3_K Q4_K Q5_K Q6_K Q2_K_MIX ... "
std::string_view quantize_scheme_list();

// Where a weight matrix sits, for the mixes' rules.
struct TensorPlace {
  int layer = -1;         // from "blk.N.", -1 for others
  int n_layers = 0;
  uint64_t cols = 0;      // row length (ne[0])
  uint32_t n_gqa = 1;     // query heads per kv head
  bool tied_output = false;  // no output.weight: token_embd is the output too
};
// The type `scheme` gives the 2-D weight `name`: the mix's rule, then, where
// the rows are not whole blocks of a K-quant, llama.cpp's fallback (Q2_K and
// Q3_K to Q4_0, Q4_K to Q5_0, Q5_K to Q5_1, Q6_K to Q8_0; F16 when not even
// 32 divides them); `fell_back` says whether that happened. (Other types are
// returned as they are: quantizing rows that do not fit them is refused.) Shared by
// `quantize` and the synthetic models.
GgmlType scheme_tensor_type(const QuantizeScheme& scheme, std::string_view name, const TensorPlace& place,
                            bool* fell_back = nullptr);

// llama.cpp's use_more_bits(i_layer, n_layers).
bool use_more_bits(int layer, int n_layers);

struct QuantizeResult {
  uint64_t n_quantized = 0, n_kept = 0, bytes_in = 0, bytes_out = 0;
  // K-quant targets whose rows are not a multiple of 256 elements: written
  // as llama.cpp's fallback type instead (scheme_tensor_type).
  uint64_t n_fallback = 0;
};

// Throws std::runtime_error for unsupported targets or sources, and (for
// F16/Q8_0/Q4_0) rows whose length is not a multiple of the block size (the
// message names the tensor).
QuantizeResult quantize_model(const std::string& in_path, const std::string& out_path, const QuantizeScheme& scheme);
QuantizeResult quantize_model(const std::string& in_path, const std::string& out_path, GgmlType type);

}  // namespace kvscope
