// The GPU forward pass: the same data flow as models/reference.cpp, recorded
// as one command buffer per call and submitted once.
#pragma once
#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <span>
#include <vector>

#include "gpu/buffer.h"
#include "gpu/context.h"
#include "gpu/pipeline.h"
#include "gpu/recorder.h"
#include "gpu/timer.h"
#include "kv/cache.h"
#include "models/gguf.h"
#include "models/hparams.h"
#include "models/weight_shaders.h"
#include "models/weights.h"

namespace kvscope {

enum class LogitsWanted { Last, All };

// The KV cache shape of a model: layers, kv heads, head size, and the window
// of each sliding-window layer (gemma3).
kv::CacheShape cache_shape_of(const LlamaConfig& cfg);

// The attention probe of one caller (a session): whether its forward calls
// read back, for each layer, the softmax rows of the call's last token
// ([n_head][cache capacity], by slot), and the rows of the last call that did.
// The caller owns it — the window's heatmap, lost attention in eval — so two
// sessions on one model never see each other's setting or rows. Off: nothing
// is recorded or allocated for it.
class AttentionProbe {
 public:
  bool on = false;
  // The query position of the rows read back (-1: none yet, or the last call
  // ran with the probe off).
  int32_t position() const { return position_; }
  // One layer's rows, [n_head][capacity of the cache the call ran on].
  std::span<const float> row(uint32_t layer) const;

 private:
  friend class GpuModel;
  gpu::Buffer readback_;  // f32 [n_layer][n_head][model capacity]
  int32_t position_ = -1;
  uint32_t n_layer_ = 0, n_head_ = 0, model_capacity_ = 0, cache_capacity_ = 0;
};

// What one caller (a session) gets back from its forward calls: its logits
// and its attention probe. The model keeps neither between calls, so
// sessions sharing a model never read each other's results.
struct ForwardOutputs {
  std::vector<float> logits;  // n_vocab (LogitsWanted::Last) or n_tokens x n_vocab
  AttentionProbe probe;
};

class GpuModel {
 public:
  // Uploads the weights and builds the pipelines. `max_batch` bounds the tokens
  // of one submit (longer inputs are split); `capacity` bounds the KV slots
  // any cache used with this model may have.
  GpuModel(gpu::Context& ctx, const GgufFile& file, uint32_t max_batch, uint32_t capacity);

  const LlamaConfig& config() const { return cfg_; }
  gpu::Context& context() const { return *ctx_; }
  kv::CacheShape cache_shape() const;
  uint32_t max_batch() const { return max_batch_; }
  uint64_t weight_bytes() const { return weights_.device_bytes(); }

  // Runs tokens at the given positions (cache slots are reserved in `cache`),
  // and returns the logits of the last token (n_vocab) or of every token
  // (n_tokens x n_vocab). Inputs longer than max_batch are split into several
  // submits; with an eviction policy on the cache, into steps no larger than
  // the room the policy can make (kv/policy.h), each preceded by its
  // evictions. Throws kv::ContextFull when the cache has no room (nothing
  // written without a policy; with `full`, the steps before it stay),
  // std::invalid_argument for token ids outside the vocabulary. The logits
  // go to `out.logits` (the returned span); with `out.probe` on, its rows
  // are those of this call's last token.
  std::span<const float> forward(std::span<const int32_t> tokens, std::span<const int32_t> positions,
                                 kv::KvCache& cache, LogitsWanted wanted, ForwardOutputs& out);
  // The same into outputs of the model's own, overwritten by the next such
  // call: for a single caller (benchmarks, tests).
  std::span<const float> forward(std::span<const int32_t> tokens, std::span<const int32_t> positions,
                                 kv::KvCache& cache, LogitsWanted wanted) {
    return forward(tokens, positions, cache, wanted, scratch_outputs_);
  }

  // GPU milliseconds per shader, summed since the last call, when profiling.
  void set_profiling(bool on);
  std::map<std::string, double> take_profile();
  uint32_t last_dispatch_count() const { return last_dispatches_; }

 private:
  void make_pipelines();
  // Throws gpu::OutOfMemory, before anything is allocated, when the weights
  // and activations need more than the device's memory: how much, how much
  // there is, what to do.
  void check_fits_device(const GgufFile& file) const;
  // The pipelines for this cache's formats, made if not yet.
  void make_kv_pipelines(const kv::CacheConfig& config);
  void make_scores_pipeline();
  void record_batch(std::span<const int32_t> tokens, kv::KvCache& cache, const kv::StepPlan& plan,
                    LogitsWanted wanted);
  // y[t][y_offset + r] (+)= w[r] . x[t]; y rows are y_stride floats.
  void matmul(const GpuTensor& w, const gpu::Buffer& x, gpu::Buffer& y, uint32_t n_tokens,
              uint32_t y_stride, bool accumulate, uint32_t y_offset = 0);
  // x += w . in (n tokens), RMS-normed with `post_norm` first when it is not
  // empty (gemma3's post-attention and post-FFN norms).
  void add_to_residual(const GpuTensor& w, const gpu::Buffer& in, const gpu::Buffer& post_norm, uint32_t n);
  // All parts of a fused projection into rows of y of width f.out_width.
  void project(const FusedProjection& f, const gpu::Buffer& x, gpu::Buffer& y, uint32_t n_tokens);

  gpu::Context* ctx_;
  LlamaConfig cfg_;
  uint32_t max_batch_, capacity_;
  uint32_t wg_ = 64;  // threads per workgroup, from the device's subgroup size
  uint32_t matvec_rows_ = 4;  // matvec rows per workgroup
  bool row_per_invocation_ = false;  // matvec/matmul layout for CPU devices
  GpuWeights weights_;

  struct Pipelines {
    // Indexed by weight_shader_index() (models/weight_shaders.h).
    gpu::Pipeline embed[kWeightTypeCount], matvec[kWeightTypeCount], matmul[kWeightTypeCount];
    gpu::Pipeline rmsnorm, swiglu;
    gpu::Pipeline add;  // q|k|v biases (qwen2), only when the model has them
    // Per (key format, value format), indexed by kv::Format, made on first
    // use (kv_pipelines): lavapipe compiles each pipeline through LLVM, and a
    // cache uses one pair.
    gpu::Pipeline rope_kv_write[5][5], attention[5][5];
    // GPUs only: attention with the device's widest workgroup (up to 1024
    // invocations), for caches whose scanned slots outnumber 512 (forward.cpp).
    gpu::Pipeline attention_wide[5][5];
    gpu::Pipeline kivi_key_write;
    gpu::Pipeline kivi_value_window;
    gpu::Pipeline attention_scores;  // only for caches whose policy needs scores
  } pipelines_;

  // Activations, sized for max_batch tokens.
  gpu::Buffer tokens_, positions_;             // int[max_batch] (host-visible)
  gpu::Buffer rope_positions_;                 // int[max_batch]: queries' cache-relative positions (rolling)
  gpu::Buffer x_, xb_, xb2_;                   // f32 [max_batch][dim | q_dim]
  gpu::Buffer qkv_;                            // f32 [max_batch][q_dim + 2 kv_dim]: q | k | v
  gpu::Buffer gate_up_;                        // f32 [max_batch][2 ffn_dim]: gate | up
  gpu::Buffer hb_;                             // f32 [max_batch][ffn_dim]
  gpu::Buffer probs_;                          // f32 [max_batch][n_head][capacity]
  gpu::Buffer x_last_, xn_last_;               // f32 [dim]
  gpu::Buffer logits_;                         // f32 [max_batch][n_vocab] (readback)
  AttentionProbe* probe_ = nullptr;             // the running call's probe, when it is on
  ForwardOutputs scratch_outputs_;  // forward() without outputs of the caller's
  gpu::Recorder recorder_;
  std::unique_ptr<gpu::Timer> timer_;
  std::map<std::string, double> profile_;
  uint32_t last_dispatches_ = 0;
};

}  // namespace kvscope
