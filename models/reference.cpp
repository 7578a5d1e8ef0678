// The reference forward pass, in data-flow order (llama2.c's run.c, with
// GGUF tensors of any supported type dequantized row by row in matvec).
#include "models/reference.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <stdexcept>

#include <fmt/format.h>

namespace kvscope::reference {

namespace {

TensorView view(const GgufFile& file, const std::string& name) {
  const GgufTensorInfo& t = file.tensor(name);
  TensorView v;
  v.type = t.type;
  v.data = t.data;
  v.cols = t.shape.at(0);
  v.rows = t.shape.size() > 1 ? t.shape[1] : 1;
  return v;
}

// Rows [first, first + count) of a matrix view (rows are contiguous, whole blocks).
TensorView rows_of(const TensorView& v, uint64_t first, uint64_t count) {
  TensorView out = v;
  out.data = v.data + first * row_bytes(v.type, v.cols);
  out.rows = count;
  return out;
}

std::vector<float> floats(const GgufFile& file, const std::string& name) {
  const TensorView v = view(file, name);
  std::vector<float> out(v.rows * v.cols);
  dequantize_row(v.type, {v.data, row_bytes(v.type, out.size())}, out);
  return out;
}

}  // namespace

ModelWeights view_weights(const GgufFile& file, const LlamaConfig& cfg, uint32_t n_ctx) {
  ModelWeights w;
  w.token_embd = view(file, "token_embd.weight");
  w.output_norm = floats(file, "output_norm.weight");
  w.output = cfg.tied_output ? w.token_embd : view(file, "output.weight");
  w.rope_freqs = rope_factors(file, cfg, n_ctx);
  for (uint32_t l = 0; l < cfg.n_layer; ++l) {
    LayerWeights lw;
    lw.attn_norm = floats(file, layer_tensor(l, "attn_norm.weight"));
    if (cfg.fused_qkv) {  // row ranges of the one q|k|v tensor
      const TensorView qkv = view(file, layer_tensor(l, "attn_qkv.weight"));
      lw.wq = rows_of(qkv, 0, cfg.q_dim());
      lw.wk = rows_of(qkv, cfg.q_dim(), cfg.kv_dim());
      lw.wv = rows_of(qkv, cfg.q_dim() + cfg.kv_dim(), cfg.kv_dim());
    } else {
      lw.wq = view(file, layer_tensor(l, "attn_q.weight"));
      lw.wk = view(file, layer_tensor(l, "attn_k.weight"));
      lw.wv = view(file, layer_tensor(l, "attn_v.weight"));
    }
    if (cfg.qkv_bias) {
      lw.bq = floats(file, layer_tensor(l, "attn_q.bias"));
      lw.bk = floats(file, layer_tensor(l, "attn_k.bias"));
      lw.bv = floats(file, layer_tensor(l, "attn_v.bias"));
    }
    if (cfg.qk_norm) {
      lw.q_norm = floats(file, layer_tensor(l, "attn_q_norm.weight"));
      lw.k_norm = floats(file, layer_tensor(l, "attn_k_norm.weight"));
    }
    lw.wo = view(file, layer_tensor(l, "attn_output.weight"));
    lw.ffn_norm = floats(file, layer_tensor(l, "ffn_norm.weight"));
    if (cfg.fused_gate_up) {  // gate rows, then up rows
      const TensorView gate_up = view(file, layer_tensor(l, "ffn_up.weight"));
      lw.w1 = rows_of(gate_up, 0, cfg.ffn_dim);
      lw.w3 = rows_of(gate_up, cfg.ffn_dim, cfg.ffn_dim);
    } else {
      lw.w1 = view(file, layer_tensor(l, "ffn_gate.weight"));
      lw.w3 = view(file, layer_tensor(l, "ffn_up.weight"));
    }
    lw.w2 = view(file, layer_tensor(l, "ffn_down.weight"));
    if (cfg.post_norms) {
      lw.post_attn_norm = floats(file, layer_tensor(l, "post_attention_norm.weight"));
      lw.post_ffn_norm = floats(file, layer_tensor(l, "post_ffw_norm.weight"));
    }
    w.layers.push_back(std::move(lw));
  }
  return w;
}

Model::Model(const GgufFile& file, uint32_t n_ctx)
    : cfg_(read_llama_config(file)), w_(view_weights(file, cfg_, n_ctx)), n_ctx_(n_ctx) {
  if (n_ctx == 0) throw std::invalid_argument("reference model: context length must be > 0");
  const size_t dim = cfg_.dim, kv_dim = cfg_.kv_dim(), q_dim = cfg_.q_dim();
  key_cache_.assign(size_t{cfg_.n_layer} * n_ctx * kv_dim, 0.0f);
  value_cache_.assign(key_cache_.size(), 0.0f);
  x_.resize(dim);
  xb_.resize(std::max(dim, q_dim));
  xb2_.resize(dim);
  hb_.resize(cfg_.ffn_dim);
  hb2_.resize(cfg_.ffn_dim);
  q_.resize(q_dim);
  k_.resize(kv_dim);
  v_.resize(kv_dim);
  att_.resize(n_ctx);
  logits_.resize(cfg_.n_vocab);
  probs_.assign(cfg_.n_layer, std::vector<std::vector<float>>(cfg_.n_head));
}

static void mv(std::span<float> y, const TensorView& w, std::span<const float> x) {
  matvec(y, w.type, w.data, w.rows, w.cols, x);
}

const std::vector<float>& Model::forward(int32_t token, int32_t pos) {
  if (pos < 0 || static_cast<uint32_t>(pos) >= n_ctx_)
    throw std::out_of_range(fmt::format("reference model: position {} outside the context of {}", pos, n_ctx_));
  const uint32_t dim = cfg_.dim, hd = cfg_.head_dim, kv_dim = cfg_.kv_dim(), q_dim = cfg_.q_dim();
  const uint32_t group = cfg_.n_head / cfg_.n_kv_head;
  // x += xb2, RMS-normed with `post_norm` first when the model has one (gemma3).
  auto add_residual = [&](const std::vector<float>& post_norm) {
    if (!post_norm.empty()) {
      std::vector<float> normed(dim);
      rmsnorm(normed, {xb2_.data(), dim}, post_norm, cfg_.norm_eps);
      std::copy(normed.begin(), normed.end(), xb2_.begin());
    }
    for (uint32_t i = 0; i < dim; ++i) x_[i] += xb2_[i];
  };

  embed(x_, w_.token_embd.type, w_.token_embd.data, w_.token_embd.rows, dim, token);
  for (float& v : x_) v *= cfg_.embed_scale;  // gemma3: sqrt(dim)

  for (uint32_t l = 0; l < cfg_.n_layer; ++l) {
    const LayerWeights& lw = w_.layers[l];
    float* key_layer = key_cache_.data() + size_t{l} * n_ctx_ * kv_dim;    // (n_ctx, kv_dim)
    float* value_layer = value_cache_.data() + size_t{l} * n_ctx_ * kv_dim;

    // attention: rmsnorm -> q, k, v -> rope -> cache -> softmax(q.k) v -> wo
    rmsnorm({xb_.data(), dim}, x_, lw.attn_norm, cfg_.norm_eps);
    mv(q_, lw.wq, {xb_.data(), dim});
    mv(k_, lw.wk, {xb_.data(), dim});
    mv(v_, lw.wv, {xb_.data(), dim});
    if (cfg_.qkv_bias) {
      for (uint32_t i = 0; i < q_dim; ++i) q_[i] += lw.bq[i];
      for (uint32_t i = 0; i < kv_dim; ++i) k_[i] += lw.bk[i], v_[i] += lw.bv[i];
    }
    if (cfg_.qk_norm) {  // each head RMS-normed on its own, with the layer's head_dim weights
      std::vector<float> head(hd);
      for (uint32_t h = 0; h < cfg_.n_head; ++h) {
        std::copy_n(q_.data() + h * hd, hd, head.begin());
        rmsnorm({q_.data() + h * hd, hd}, head, lw.q_norm, cfg_.norm_eps);
      }
      for (uint32_t h = 0; h < cfg_.n_kv_head; ++h) {
        std::copy_n(k_.data() + h * hd, hd, head.begin());
        rmsnorm({k_.data() + h * hd, hd}, head, lw.k_norm, cfg_.norm_eps);
      }
    }
    // A sliding-window layer (gemma3) rotates with its own theta and no factors.
    const float theta = cfg_.layer_rope_theta(l);
    const std::span<const float> factors = cfg_.layer_rope_factors(l) ? std::span<const float>(w_.rope_freqs)
                                                                      : std::span<const float>();
    for (uint32_t h = 0; h < cfg_.n_head; ++h)
      rope({q_.data() + h * hd, hd}, pos, cfg_.rope_dim, theta, cfg_.rope_mode, factors, cfg_.rope_attn_factor);
    for (uint32_t h = 0; h < cfg_.n_kv_head; ++h)
      rope({k_.data() + h * hd, hd}, pos, cfg_.rope_dim, theta, cfg_.rope_mode, factors, cfg_.rope_attn_factor);
    std::memcpy(key_layer + size_t(pos) * kv_dim, k_.data(), kv_dim * sizeof(float));
    std::memcpy(value_layer + size_t(pos) * kv_dim, v_.data(), kv_dim * sizeof(float));

    // Keys [first, pos]: all of them, or on a sliding-window layer those
    // within the window (pos - t < window); probs of the others stay 0.
    const uint32_t window = cfg_.layer_window(l);
    const uint32_t first = window > 0 && uint32_t(pos) >= window ? uint32_t(pos) - window + 1 : 0;
    const uint32_t n = static_cast<uint32_t>(pos) + 1 - first;
    std::vector<float> keys(size_t{n} * hd), values(size_t{n} * hd);
    for (uint32_t h = 0; h < cfg_.n_head; ++h) {
      const uint32_t kv_head = h / group;
      for (uint32_t t = 0; t < n; ++t) {
        const size_t row = size_t{first + t} * kv_dim + kv_head * hd;
        std::memcpy(&keys[size_t{t} * hd], key_layer + row, hd * sizeof(float));
        std::memcpy(&values[size_t{t} * hd], value_layer + row, hd * sizeof(float));
      }
      probs_[l][h].assign(size_t(pos) + 1, 0.0f);
      attention_head({xb_.data() + h * hd, hd}, {q_.data() + h * hd, hd}, keys, values, n, hd,
                     std::span(probs_[l][h]).subspan(first), cfg_.attn_scale);
    }
    mv(xb2_, lw.wo, {xb_.data(), q_dim});
    add_residual(lw.post_attn_norm);

    // feed-forward: rmsnorm -> act(w1 x) * (w3 x) -> w2
    rmsnorm({xb_.data(), dim}, x_, lw.ffn_norm, cfg_.norm_eps);
    mv(hb_, lw.w1, {xb_.data(), dim});
    mv(hb2_, lw.w3, {xb_.data(), dim});
    if (cfg_.ffn_act == FfnActivation::GeluTanh)
      geglu(hb_, hb_, hb2_);
    else
      swiglu(hb_, hb_, hb2_);
    mv(xb2_, lw.w2, hb_);
    add_residual(lw.post_ffn_norm);
  }

  rmsnorm({xb_.data(), dim}, x_, w_.output_norm, cfg_.norm_eps);
  mv(logits_, w_.output, {xb_.data(), dim});
  return logits_;
}

}  // namespace kvscope::reference
