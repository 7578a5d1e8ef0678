// Llama-family hyperparameters read from GGUF metadata, and the check that a
// file's tensors have the shapes and types those hyperparameters imply.
#pragma once
#include <cstdint>
#include <string>

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
// pre-norm SwiGLU transformer.
std::string supported_architectures_list();  // "llama qwen2 qwen3 phi3"

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
  bool qk_norm = false;         // blk.N.attn_{q,k}_norm.weight (f32, head_dim): each head RMS-normed before RoPE (qwen3)

  uint32_t kv_dim() const { return n_kv_head * head_dim; }
  uint32_t q_dim() const { return n_head * head_dim; }
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
// rope_factors_short.weight (the factors for contexts up to the original one;
// the long factors and their attention scaling are not applied).
std::string rope_freqs_tensor(const LlamaConfig& cfg);

// Parameter count (all tensors' elements) and the KV bytes per token for a
// cache storing K and V with `bytes_per_elem` each.
uint64_t parameter_count(const GgufFile& file);
double kv_bytes_per_token(const LlamaConfig& cfg, double bytes_per_elem);

}  // namespace kvscope
