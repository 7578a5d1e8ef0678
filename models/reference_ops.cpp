// The CPU reference ops: plain loops in f32, one function per shader, written
// to be read (llama2.c style). Every GPU op is tested against these.
#include <algorithm>
#include <cmath>
#include <stdexcept>
#include <string>
#include <vector>

#include "models/reference.h"

namespace kvscope::reference {

void rmsnorm(std::span<float> out, std::span<const float> x, std::span<const float> w, float eps) {
  const size_t n = x.size();
  float sum_sq = 0.0f;
  for (size_t i = 0; i < n; ++i) sum_sq += x[i] * x[i];
  const float inv_rms = 1.0f / std::sqrt(sum_sq / static_cast<float>(n) + eps);
  for (size_t i = 0; i < n; ++i) out[i] = x[i] * inv_rms * w[i];
}

void matvec(std::span<float> y, GgmlType type, const uint8_t* w, uint64_t rows, uint64_t cols,
            std::span<const float> x) {
  const size_t bytes_per_row = row_bytes(type, cols);
  std::vector<float> w_row(cols);  // one dequantized row at a time
  for (uint64_t r = 0; r < rows; ++r) {
    dequantize_row(type, {w + r * bytes_per_row, bytes_per_row}, w_row);
    float sum = 0.0f;
    for (uint64_t k = 0; k < cols; ++k) sum += w_row[k] * x[k];
    y[r] = sum;
  }
}

void embed(std::span<float> out, GgmlType type, const uint8_t* table, uint64_t n_vocab, uint64_t dim,
           int32_t id) {
  if (id < 0 || static_cast<uint64_t>(id) >= n_vocab) {
    throw std::out_of_range("reference::embed: token id " + std::to_string(id) +
                            " is outside the vocabulary of " + std::to_string(n_vocab));
  }
  const size_t bytes_per_row = row_bytes(type, dim);
  dequantize_row(type, {table + static_cast<uint64_t>(id) * bytes_per_row, bytes_per_row}, out.first(dim));
}

void rope(std::span<float> head, int32_t pos, uint32_t rope_dim, float theta, RopeMode mode,
          std::span<const float> freq_factors, float mscale) {
  for (uint32_t i = 0; i < rope_dim / 2; ++i) {
    // Pair i turns at theta^(-2i/rope_dim) radians per position (divided by
    // its frequency factor); Normal pairs dims (2i, 2i+1), Neox (i, i + rope_dim/2).
    const float freq = std::pow(theta, -static_cast<float>(2 * i) / static_cast<float>(rope_dim));
    const float factor = freq_factors.empty() ? 1.0f : freq_factors[i];
    const float angle = static_cast<float>(pos) * freq / factor;
    const float c = std::cos(angle) * mscale, s = std::sin(angle) * mscale;
    const uint32_t a = mode == RopeMode::Neox ? i : 2 * i;
    const uint32_t b = mode == RopeMode::Neox ? i + rope_dim / 2 : 2 * i + 1;
    const float x0 = head[a], x1 = head[b];
    head[a] = x0 * c - x1 * s;
    head[b] = x0 * s + x1 * c;
  }
}

void swiglu(std::span<float> out, std::span<const float> gate, std::span<const float> up) {
  for (size_t i = 0; i < out.size(); ++i) {
    const float g = gate[i];
    out[i] = g / (1.0f + std::exp(-g)) * up[i];
  }
}

void geglu(std::span<float> out, std::span<const float> gate, std::span<const float> up) {
  for (size_t i = 0; i < out.size(); ++i) {
    const double g = gate[i];
    const double gelu = 0.5 * g * (1.0 + std::tanh(0.7978845608028654 * (g + 0.044715 * g * g * g)));
    out[i] = float(gelu) * up[i];
  }
}

void softmax(std::span<float> x) {
  if (x.empty()) return;
  float max_value = x[0];
  for (float v : x) max_value = std::max(max_value, v);
  float sum = 0.0f;
  for (float& v : x) {
    v = std::exp(v - max_value);
    sum += v;
  }
  for (float& v : x) v /= sum;
}

void attention_head(std::span<float> out, std::span<const float> q, std::span<const float> keys,
                    std::span<const float> values, uint32_t n, uint32_t head_dim, std::span<float> probs,
                    float scale, float sparse_v) {
  // scores (n) = q . key_i * scale (1/sqrt(head_dim) by default), softmaxed over the n keys
  std::vector<float> scores(n);
  if (scale == 0.0f) scale = 1.0f / std::sqrt(static_cast<float>(head_dim));
  for (uint32_t i = 0; i < n; ++i) {
    float score = 0.0f;
    for (uint32_t d = 0; d < head_dim; ++d) score += q[d] * keys[i * head_dim + d];
    scores[i] = score * scale;
  }
  softmax(scores);
  // out (head_dim) = sum_i scores[i] * value_i
  for (uint32_t d = 0; d < head_dim; ++d) out[d] = 0.0f;
  for (uint32_t i = 0; i < n; ++i) {
    if (scores[i] < sparse_v) continue;  // sparse-V: a value row this query barely weighs is not read
    for (uint32_t d = 0; d < head_dim; ++d) out[d] += scores[i] * values[i * head_dim + d];
  }
  if (!probs.empty()) {
    for (uint32_t i = 0; i < n; ++i) probs[i] = scores[i];
  }
}

}  // namespace kvscope::reference
