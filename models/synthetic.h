// Synthetic models: GGUF files of a real architecture's shapes filled with
// pseudo-random weights, built in memory. They let the tests hold the GPU
// forward pass to the CPU reference on shapes no downloaded model is needed
// for (GQA 4:1, NeoX RoPE with biases, head size 48, Llama 3 frequency
// factors), and `kvscope bench --synthetic` time a 1B model without one.
#pragma once
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "models/ggml_types.h"
#include "models/gguf.h"

namespace kvscope {

struct SyntheticSpec {
  std::string name = "synthetic";  // general.name
  std::string arch = "llama";      // general.architecture: llama, qwen2, qwen3, phi3 or gemma3 (models/hparams.h)
  uint32_t dim = 64, n_layer = 2, n_head = 4, n_kv_head = 2, head_dim = 16, ffn_dim = 96;
  uint32_t n_vocab = 256, n_ctx = 256;
  float rope_theta = 10000.0f;
  float norm_eps = 1e-5f;
  bool rope_freqs = false;    // rope_freqs.weight with Llama 3.1's factors (scale 8, original context 8192)
  bool qkv_bias = false;      // blk.N.attn_{q,k,v}.bias (qwen2 has them)
  bool tied_output = true;    // no output.weight: logits from token_embd
  // gemma3: {arch}.attention.sliding_window (0: not written) and its
  // .sliding_window_pattern (0: not written; readers take llama.cpp's 6).
  uint32_t sliding_window = 0, swa_period = 0;
  float rope_linear = 1.0f;   // > 1: rope.scaling.type "linear" with this factor
  // phi3's LongRoPE (Phi-3.5): rope_factors_short/long.weight, an original
  // context of this many tokens (0: none written) and its attn_factor.
  uint32_t long_rope_ctx = 0;
  // Weight type: one ggml type name (F32 F16 Q8_0 Q4_0 ...) or a mix
  // (Q4_K_M, Q5_K_M) as models/quantize.h names them. Norms, biases and
  // rope_freqs stay F32.
  std::string type = "F32";
  uint64_t seed = 1;
  // Quantization threads for large models (0: one per hardware thread).
  unsigned threads = 0;
  // 0: every row of every matrix drawn and quantized on its own. N > 0: only
  // N rows per matrix are; each further row is a copy of one of them, picked
  // pseudo-randomly. The bytes a forward pass reads (and so its speed) are
  // the same; building a 1B model no longer costs a K-quant scale search on
  // every row. For benchmarks only: the rows are no longer independent.
  uint32_t distinct_rows = 0;
};

// The shapes of models people download, by name: llama-1b (Llama 3.2 1B),
// qwen-0.5b (Qwen 2.5 0.5B), qwen3-0.6b, phi3-mini, gemma3-1b, and tiny test
// shapes (tiny-llama3, tiny-qwen2, tiny-qwen3, tiny-phi3, tiny-gemma3, tiny-head48). Throws std::invalid_argument listing the names otherwise.
SyntheticSpec synthetic_preset(std::string_view name);
std::string synthetic_preset_list();  // "llama-1b qwen-0.5b tiny-llama3 ..."

// Llama 3.1's RoPE frequency divisors (what its converter writes as
// rope_freqs.weight): 1 for wavelengths below original_context / 4, `scale`
// above original_context, a smooth blend between.
std::vector<float> llama3_rope_freqs(uint32_t rope_dim, float theta, float scale = 8.0f,
                                     uint32_t original_context = 8192);

// Writes the architecture metadata and every tensor of `spec` into `writer`.
// Values are uniform in +-sqrt(3 / fan_in) for matrices (unit-variance
// activations through the layers), 1 +- 0.1 for norms, +-0.5 for biases,
// from a fast generator seeded by spec.seed: the same spec builds the same
// bytes. No tokenizer metadata is written (the vocabulary size comes from
// token_embd); a caller that wants one sets the tokenizer.* keys itself.
void add_synthetic_model(GgufWriter& writer, const SyntheticSpec& spec);

// The whole GGUF image in memory (GgufFile::from_memory reads it).
std::vector<uint8_t> synthetic_gguf(const SyntheticSpec& spec);

// Parameters and bytes of the weights of `spec` (for a caller to say what it
// is about to build).
uint64_t synthetic_parameter_count(const SyntheticSpec& spec);
uint64_t synthetic_weight_bytes(const SyntheticSpec& spec);  // the tensors' bytes in the GGUF image

}  // namespace kvscope
