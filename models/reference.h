// The CPU reference: plain f32 ops, one free function each, and the forward
// pass built from them. Readable first; this is the oracle every GPU result is
// held against (tests/gpu/test_ops.cpp, tests/models/test_reference.cpp).
#pragma once
#include <cstdint>
#include <span>
#include <vector>

#include "models/ggml_types.h"
#include "models/gguf.h"
#include "models/hparams.h"

namespace kvscope::reference {

// ---- ops (each mirrors one shader) --------------------------------------
// out[i] = x[i] / sqrt(mean(x^2) + eps) * w[i]
void rmsnorm(std::span<float> out, std::span<const float> x, std::span<const float> w, float eps);
// y[r] = sum_k W[r][k] * x[k]; W is rows x cols of `type` in GGUF layout
void matvec(std::span<float> y, GgmlType type, const uint8_t* w, uint64_t rows, uint64_t cols,
            std::span<const float> x);
// row `id` of an embedding table (rows = n_vocab, cols = dim) as f32
void embed(std::span<float> out, GgmlType type, const uint8_t* table, uint64_t n_vocab,
           uint64_t dim, int32_t id);
// rotary embedding of one head vector (head_dim), first rope_dim dims
// (shaders/common/rope.glsl): pair i < rope_dim/2 is dims (2i, 2i+1) (Normal)
// or (i, i + rope_dim/2) (Neox), turned by pos * theta^(-2i/rope_dim), divided
// by freq_factors[i] when given (rope_dim/2 of them: Llama 3's rope_freqs),
// the rotated pair times mscale (ggml's attn_factor: Phi-3.5's LongRoPE).
void rope(std::span<float> head, int32_t pos, uint32_t rope_dim, float theta, RopeMode mode = RopeMode::Normal,
          std::span<const float> freq_factors = {}, float mscale = 1.0f);
// out = silu(gate) * up
void swiglu(std::span<float> out, std::span<const float> gate, std::span<const float> up);
// out = gelu(gate) * up, GELU in its tanh form (GeGLU: gemma3)
void geglu(std::span<float> out, std::span<const float> gate, std::span<const float> up);
// in-place softmax
void softmax(std::span<float> x);
// one query head over n keys/values (each head_dim, contiguous rows); probs
// receives the softmax row when non-empty. scale: of q . k, 0 for
// 1/sqrt(head_dim). sparse_v > 0: values whose weight is below it are left
// out of the sum (not renormalized), as the attention shader's sparse-V.
void attention_head(std::span<float> out, std::span<const float> q, std::span<const float> keys,
                    std::span<const float> values, uint32_t n, uint32_t head_dim,
                    std::span<float> probs = {}, float scale = 0.0f, float sparse_v = 0.0f);

// ---- the model ------------------------------------------------------------
// Borrowed views of a GGUF file's tensors (the file must outlive this).
struct TensorView {
  GgmlType type = GgmlType::F32;
  const uint8_t* data = nullptr;
  uint64_t rows = 0, cols = 0;  // cols contiguous
};
struct LayerWeights {
  std::vector<float> attn_norm;  // (dim)
  TensorView wq;                 // (n_head*head_dim, dim)
  TensorView wk;                 // (n_kv_head*head_dim, dim)
  TensorView wv;                 // (n_kv_head*head_dim, dim)
  std::vector<float> bq, bk, bv; // (q_dim), (kv_dim), (kv_dim); empty without biases (llama)
  std::vector<float> q_norm, k_norm;  // (head_dim) each; empty without (qwen3 has them)
  std::vector<float> post_attn_norm, post_ffn_norm;  // (dim) each; empty without (gemma3 has them)
  TensorView wo;                 // (dim, n_head*head_dim)
  std::vector<float> ffn_norm;   // (dim)
  TensorView w1;                 // gate (ffn_dim, dim)
  TensorView w3;                 // up   (ffn_dim, dim)
  TensorView w2;                 // down (dim, ffn_dim)
};
struct ModelWeights {
  TensorView token_embd;          // (n_vocab, dim)
  std::vector<LayerWeights> layers;
  std::vector<float> output_norm; // (dim)
  TensorView output;              // (n_vocab, dim); token_embd when tied
  std::vector<float> rope_freqs;  // (rope_dim/2) frequency divisors of global layers (rope_factors()); empty: none
};
// `n_ctx`: the context the model runs at (Phi-3.5 picks its RoPE factors by it).
ModelWeights view_weights(const GgufFile& file, const LlamaConfig& cfg, uint32_t n_ctx);

// A full-precision forward pass with its own f32 KV cache of n_ctx positions.
class Model {
 public:
  Model(const GgufFile& file, uint32_t n_ctx);
  const LlamaConfig& config() const { return cfg_; }
  // Feeds one token at position `pos` (0-based, < n_ctx) and returns the
  // logits (n_vocab). Positions must be fed in order 0, 1, 2, ...
  const std::vector<float>& forward(int32_t token, int32_t pos);
  // Attention probabilities of the last forward: [layer][head][0..pos].
  const std::vector<std::vector<std::vector<float>>>& last_attention() const { return probs_; }

 private:
  LlamaConfig cfg_;
  ModelWeights w_;
  uint32_t n_ctx_;
  std::vector<float> key_cache_, value_cache_;  // (layer, n_ctx, kv_dim)
  std::vector<float> x_, xb_, xb2_, hb_, hb2_, q_, k_, v_, att_, logits_;
  std::vector<std::vector<std::vector<float>>> probs_;
};

}  // namespace kvscope::reference
