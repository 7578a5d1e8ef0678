// Llama-family hyperparameters read from GGUF metadata, and the check that a
// file's tensors have the shapes and types those hyperparameters imply.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "models/gguf.h"

namespace kvscope {

// Which dims of a head RoPE rotates together (shaders/common/rope.glsl):
// Normal (llama) pairs (2i, 2i+1), Neox (qwen2) pairs (i, i + rope_dim/2).
enum class RopeMode : uint32_t { Normal = 0, Neox = 1 };

// The architectures kvscope runs (general.architecture): llama (Llama 2 and
// 3.x, TinyLlama, SmolLM, Mistral), qwen2 (Qwen 2 / 2.5: biases on q, k, v,
// NeoX RoPE) and qwen3 (Qwen 3: no biases, an RMS norm of each q and k head
// before RoPE, NeoX RoPE) and phi3 (Phi-3 / Phi-3.5 / Phi-4-mini: q|k|v in one
// tensor, gate|up in one, NeoX RoPE, short RoPE factors). All are the same
// pre-norm SwiGLU transformer; gemma3 (Gemma 3) adds sliding-window layers, norms
// after attention and after the FFN, GeGLU, √dim-scaled embeddings and q/k
// head norms.
std::string supported_architectures_list();  // "llama qwen2 qwen3 phi3 gemma3"

// The FFN's gate activation: SwiGLU (silu) or GeGLU (GELU, tanh form).
enum class FfnActivation : uint32_t { Silu = 0, GeluTanh = 1 };

struct LlamaConfig {
  std::string arch = "llama";   // general.architecture
  std::string name;             // general.name, if any
  uint32_t n_vocab = 0;         // from tokenizer.ggml.tokens or token_embd shape
  uint32_t dim = 0;             // {arch}.embedding_length
  uint32_t n_layer = 0;         // {arch}.block_count
  uint32_t n_head = 0;          // {arch}.attention.head_count
  uint32_t n_kv_head = 0;       // {arch}.attention.head_count_kv (default n_head)
  uint32_t head_dim = 0;        // dim / n_head (or {arch}.attention.key_length)
  uint32_t ffn_dim = 0;         // {arch}.feed_forward_length
  uint32_t n_ctx_train = 0;     // {arch}.context_length
  float norm_eps = 1e-5f;       // {arch}.attention.layer_norm_rms_epsilon
  float rope_theta = 10000.0f;  // {arch}.rope.freq_base
  uint32_t rope_dim = 0;        // {arch}.rope.dimension_count (default head_dim)
  bool tied_output = false;     // no output.weight: logits use token_embd.weight
  RopeMode rope_mode = RopeMode::Normal;  // from the architecture: qwen2 rotates NeoX pairs
  bool rope_freqs = false;      // rope_freqs.weight (rope_dim/2 f32): per-pair frequency divisors (Llama 3)
  bool qkv_bias = false;        // blk.N.attn_{q,k,v}.bias (f32): added after the projections (qwen2)
  bool fused_qkv = false;       // blk.N.attn_qkv.weight (q | k | v rows) instead of three (phi3)
  bool fused_gate_up = false;   // blk.N.ffn_up.weight holds gate | up rows, no ffn_gate (phi3)
  bool qk_norm = false;         // blk.N.attn_{q,k}_norm.weight (f32, head_dim): each head RMS-normed before RoPE (qwen3, gemma3)
  // RoPE linear scaling ({arch}.rope.scaling.type "linear", .factor): every
  // pair's frequency divided by the factor, on global layers (1: none).
  float rope_linear_factor = 1.0f;
  // LongRoPE (phi3: Phi-3.5, Phi-4-mini): {arch}.rope.scaling.attn_factor
  // multiplies every rotated pair (ggml's attn_factor, at any context), and
  // rope_factors_long.weight replaces the short factors when the context
  // exceeds {arch}.rope.scaling.original_context_length.
  float rope_attn_factor = 1.0f;
  uint32_t rope_ctx_orig = 0;       // original context (default: context_length)
  bool rope_factors_long = false;   // rope_factors_long.weight (phi3)
  // gemma3: the embedding row times sqrt(dim) (1: as read).
  float embed_scale = 1.0f;
  // gemma3: blk.N.post_attention_norm / post_ffw_norm: the attention output
  // and the FFN output RMS-normed before they are added to the residual.
  bool post_norms = false;
  FfnActivation ffn_act = FfnActivation::Silu;
  // The query scale of attention (llama.cpp's f_attention_scale): 1/sqrt(head_dim)
  // unless the file says otherwise ({arch}.attention.scale; Gemma 3 27B's
  // rule from its size).
  float attn_scale = 0.0f;
  // Sliding-window attention (gemma3: {arch}.attention.sliding_window): a
  // layer with a window sees only the keys within `sliding_window` positions
  // of its query (q - k < window); the others are global. Which layers:
  // every one except each `swa_period`-th ({arch}.attention.sliding_window_pattern,
  // 6 when absent, as llama.cpp sets for Gemma 3). Local layers rotate with
  // `rope_theta_local` (10000, llama.cpp's value for Gemma 3; the files do
  // not carry it), without frequency factors or scaling.
  uint32_t sliding_window = 0;  // 0: every layer global
  uint32_t swa_period = 0;
  float rope_theta_local = 10000.0f;

  uint32_t kv_dim() const { return n_kv_head * head_dim; }
  uint32_t q_dim() const { return n_head * head_dim; }
  // The window of layer `l`'s attention, 0 for a global layer.
  uint32_t layer_window(uint32_t l) const {
    return sliding_window > 0 && swa_period > 0 && (l % swa_period) < swa_period - 1 ? sliding_window : 0;
  }
  bool has_local_layers() const { return sliding_window > 0; }
  float layer_rope_theta(uint32_t l) const { return layer_window(l) ? rope_theta_local : rope_theta; }
  // Whether layer `l` divides RoPE frequencies by per-pair factors: a global
  // layer with rope_freqs.weight and/or linear scaling (their product:
  // rope_factors()).
  bool layer_rope_factors(uint32_t l) const {
    return layer_window(l) == 0 && (rope_freqs || rope_linear_factor != 1.0f);
  }
};

// Reads and validates the hyperparameters. Throws GgufError naming the file and
// key for: unsupported architecture, missing keys, zero or absurd sizes,
// missing q/k/v biases for qwen2 (optional for llama, all or none),
// n_head not divisible by n_kv_head, and every tensor whose shape or type does
// not fit (missing tensor, wrong shape, type kvscope cannot compute with).
LlamaConfig read_llama_config(const GgufFile& file);

// Tensor names (llama.cpp's GGUF naming).
std::string layer_tensor(uint32_t layer, const char* suffix);  // "blk.3.attn_q.weight"
// The per-pair RoPE divisors: rope_freqs.weight (Llama 3), or phi3's
// rope_factors_short.weight (the factors for contexts up to the original one).
std::string rope_freqs_tensor(const LlamaConfig& cfg);
// The RoPE divisors a global layer uses at a context of `n_ctx` tokens
// (rope_freqs.weight, or phi3's long factors past its original context as
// llama.cpp chooses them; times the linear scaling factor; rope_dim/2 of
// them), empty when there are none.
std::vector<float> rope_factors(const GgufFile& file, const LlamaConfig& cfg, uint32_t n_ctx);

// Parameter count (all tensors' elements) and the KV bytes per token for a
// cache storing K and V with `bytes_per_elem` each.
uint64_t parameter_count(const GgufFile& file);
double kv_bytes_per_token(const LlamaConfig& cfg, double bytes_per_elem);
// Layers with a sliding window (LlamaConfig::layer_window > 0).
uint32_t local_layer_count(const LlamaConfig& cfg);

}  // namespace kvscope
