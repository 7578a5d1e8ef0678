// `kvscope quantize`: rewrite a GGUF model with its 2-D weight matrices in
// another type (F16, Q8_0, Q4_0). Norm weights and 1-D tensors stay F32.
#pragma once
#include <string>

#include "models/ggml_types.h"

namespace kvscope {

struct QuantizeResult {
  uint64_t n_quantized = 0, n_kept = 0, bytes_in = 0, bytes_out = 0;
};

// Throws std::runtime_error for unsupported target types or rows whose
// length is not a multiple of the block size (the message names the tensor).
QuantizeResult quantize_model(const std::string& in_path, const std::string& out_path, GgmlType type);

}  // namespace kvscope
