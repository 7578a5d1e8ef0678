// K-quants: reference dequantizers that follow ggml's formulas (the same
// float operations in the same order, so a file llama.cpp wrote decodes to
// the values llama.cpp computes with), and quantizers of our own.
//
// The quantizers search, per sub-block, for the scale (and, for Q4_K/Q5_K,
// the min) that minimise a weighted squared error: a few candidate step sizes
// around the plain range/levels one, the integer codes each candidate gives,
// then the least-squares scale/min for those codes. The per-sub-block scales
// are then quantized themselves (6 bits, or int8 for Q6_K) and the codes are
// recomputed against the scales actually stored. Not bit-identical to ggml's
// search; the error bounds are tested in tests/models/test_quant.cpp.
#include "models/ggml_kquants.h"

#include <algorithm>
#include <array>
#include <cmath>
#include <cstring>

#include "models/ggml_types.h"

namespace kvscope {

namespace {

constexpr size_t kSub = 32;  // Q4_K / Q5_K sub-block
constexpr size_t kSub6 = 16;  // Q6_K scale group

void store_f16(uint8_t* dst, float value) {
  const uint16_t h = f32_to_f16(value);
  std::memcpy(dst, &h, sizeof h);
}

float load_f16(const uint8_t* src) {
  uint16_t h;
  std::memcpy(&h, src, sizeof h);
  return f16_to_f32(h);
}

// round(v) clamped to [lo, hi]; NaN gives lo (inputs with inf/NaN only need
// defined behaviour, as in the other quantizers).
int round_clamped(float v, int lo, int hi) {
  if (!(v >= static_cast<float>(lo))) return lo;
  if (v >= static_cast<float>(hi)) return hi;
  return static_cast<int>(std::nearbyint(v));
}

// x ~= scale * L - min, L in 0..n_levels-1, min >= 0 (ggml's K-quants store
// mins that are subtracted, so a sub-block whose values are all positive
// gets min 0). Returns {scale, min}.
struct AffineFit {
  float scale = 0.0f, min = 0.0f;
};

// Nearest integer of v >= 0, clamped to `top` (ties away from zero; which
// way a tie goes does not matter to a quantizer, and this is the hot loop).
int round_positive(float v, int top) {
  // Branch-free so the loops vectorize; max(0, NaN) is 0.
  const float clamped = std::min(static_cast<float>(top), std::max(0.0f, v));
  return static_cast<int>(clamped + 0.5f);
}

// The weights of a super-block's squared errors: its typical magnitude plus
// each element's own, so large weights (which matter more to a matmul) are
// fitted more closely.
std::array<float, kSuperBlock> fit_weights(const float* x) {
  double sum_sq = 0;
  for (size_t i = 0; i < kSuperBlock; ++i) sum_sq += double(x[i]) * x[i];
  const float typical = static_cast<float>(std::sqrt(sum_sq / kSuperBlock));
  std::array<float, kSuperBlock> w;
  for (size_t i = 0; i < kSuperBlock; ++i) w[i] = typical + std::fabs(x[i]);
  return w;
}

AffineFit fit_affine(const float* x, const float* w, size_t n, int n_levels) {
  const int top = n_levels - 1;
  float lo = 0.0f, hi = x[0];
  float sw = 0, sx = 0, sxx = 0;  // sums that do not depend on the codes
  for (size_t i = 0; i < n; ++i) {
    lo = std::min(lo, x[i]);
    hi = std::max(hi, x[i]);
    sw += w[i];
    sx += w[i] * x[i];
    sxx += w[i] * x[i] * x[i];
  }
  if (!(hi > lo) || !std::isfinite(hi - lo)) return {0.0f, std::isfinite(lo) ? -lo : 0.0f};  // constant (or non-finite)
  AffineFit best{(hi - lo) / static_cast<float>(top), -lo};
  float best_err = INFINITY;
  // Candidate inverse steps from (top - 1) to (top + 1) levels over the range:
  // a slightly coarser or finer grid often fits the bulk better than the
  // exact range does. (Steps of 0.1 instead of 0.2 measured no better: relative
  // RMSE on Gaussian data 0.07171 against 0.07175, at twice the time.)
  for (int step = -5; step <= 5; ++step) {
    const float inv = (static_cast<float>(top) + 0.2f * static_cast<float>(step)) / (hi - lo);
    float sl = 0, sll = 0, slx = 0;
    for (size_t i = 0; i < n; ++i) {
      const float L = static_cast<float>(round_positive(inv * (x[i] - lo), top));
      sl += w[i] * L;
      sll += w[i] * L * L;
      slx += w[i] * L * x[i];
    }
    // Weighted least squares for x ~= scale * L + offset, offset <= 0.
    const float det = sw * sll - sl * sl;
    if (!(det > 0)) continue;
    float scale = (sw * slx - sl * sx) / det;
    float offset = (sll * sx - sl * slx) / det;
    if (offset > 0) {
      offset = 0;
      scale = slx / sll;
    }
    if (!(scale >= 0)) continue;
    // sum w (scale L + offset - x)^2, expanded over the sums above.
    const float err = scale * scale * sll + 2 * scale * offset * sl + offset * offset * sw - 2 * scale * slx -
                      2 * offset * sx + sxx;
    if (err < best_err) {
      best_err = err;
      best = {scale, -offset};
    }
  }
  return best;
}

// Shared by Q4_K (5 == false) and Q5_K: header, 6-bit scales/mins, codes.
void quantize_q45_k(std::span<const float> src, uint8_t* dst, bool five_bits) {
  const int n_levels = five_bits ? 32 : 16;
  const size_t block_bytes = five_bits ? kQ5_KBlockBytes : kQ4_KBlockBytes;
  for (size_t block = 0; block < src.size() / kSuperBlock; ++block) {
    const float* x = src.data() + block * kSuperBlock;
    uint8_t* out = dst + block * block_bytes;
    std::memset(out, 0, block_bytes);
    const std::array<float, kSuperBlock> w = fit_weights(x);

    std::array<AffineFit, 8> fits;
    float max_scale = 0.0f, max_min = 0.0f;
    for (size_t j = 0; j < 8; ++j) {
      fits[j] = fit_affine(x + j * kSub, w.data() + j * kSub, kSub, n_levels);
      if (!std::isfinite(fits[j].scale) || !std::isfinite(fits[j].min)) fits[j] = {};
      max_scale = std::max(max_scale, fits[j].scale);
      max_min = std::max(max_min, fits[j].min);
    }
    const float d = max_scale / 63.0f, dmin = max_min / 63.0f;
    const float inv_d = d > 0 ? 1.0f / d : 0.0f, inv_dmin = dmin > 0 ? 1.0f / dmin : 0.0f;
    std::array<uint8_t, 8> ls, lm;
    for (size_t j = 0; j < 8; ++j) {
      ls[j] = static_cast<uint8_t>(round_clamped(inv_d * fits[j].scale, 0, 63));
      lm[j] = static_cast<uint8_t>(round_clamped(inv_dmin * fits[j].min, 0, 63));
    }
    store_f16(out, d);
    store_f16(out + 2, dmin);
    uint8_t* scales = out + 4;
    for (size_t j = 0; j < 4; ++j) {
      scales[j] = static_cast<uint8_t>(ls[j] | ((ls[j + 4] >> 4) << 6));
      scales[j + 4] = static_cast<uint8_t>(lm[j] | ((lm[j + 4] >> 4) << 6));
      scales[j + 8] = static_cast<uint8_t>((ls[j + 4] & 0xF) | ((lm[j + 4] & 0xF) << 4));
    }
    // Codes against the scales as stored (f16 super-scales times 6-bit values).
    const float d_stored = load_f16(out), dmin_stored = load_f16(out + 2);
    uint8_t* qh = five_bits ? out + 16 : nullptr;
    uint8_t* qs = out + (five_bits ? 48 : 16);
    for (size_t j = 0; j < 8; ++j) {
      const float step = d_stored * ls[j], offset = dmin_stored * lm[j];
      const float inv_step = step > 0 ? 1.0f / step : 0.0f;
      for (size_t l = 0; l < kSub; ++l) {
        const int q = round_clamped((x[j * kSub + l] + offset) * inv_step, 0, n_levels - 1);
        qs[32 * (j / 2) + l] |= static_cast<uint8_t>((q & 0xF) << (4 * (j % 2)));
        if (qh && q > 15) qh[l] |= static_cast<uint8_t>(1u << j);
      }
    }
  }
}

void dequantize_q45_k(const uint8_t* src, std::span<float> dst, bool five_bits) {
  const size_t block_bytes = five_bits ? kQ5_KBlockBytes : kQ4_KBlockBytes;
  for (size_t block = 0; block < dst.size() / kSuperBlock; ++block) {
    const uint8_t* in = src + block * block_bytes;
    const float d = load_f16(in), dmin = load_f16(in + 2);
    const uint8_t* qh = five_bits ? in + 16 : nullptr;
    const uint8_t* qs = in + (five_bits ? 48 : 16);
    float* y = dst.data() + block * kSuperBlock;
    for (int j = 0; j < 8; ++j) {
      uint8_t sc, m;
      kq_scale_min(in + 4, j, sc, m);
      const float step = d * sc, offset = dmin * m;  // ggml: d1 = d * sc; m1 = min * m
      for (size_t l = 0; l < kSub; ++l) {
        int q = (qs[32 * (j / 2) + l] >> (4 * (j % 2))) & 0xF;
        if (qh && (qh[l] >> j) & 1) q += 16;
        y[j * kSub + l] = step * static_cast<float>(q) - offset;
      }
    }
  }
}

}  // namespace

void kq_scale_min(const uint8_t* scales, int j, uint8_t& scale, uint8_t& min) {
  if (j < 4) {
    scale = scales[j] & 63;
    min = scales[j + 4] & 63;
  } else {
    scale = static_cast<uint8_t>((scales[j + 4] & 0xF) | ((scales[j - 4] >> 6) << 4));
    min = static_cast<uint8_t>((scales[j + 4] >> 4) | ((scales[j] >> 6) << 4));
  }
}

void quantize_q4_k(std::span<const float> src, uint8_t* dst) { quantize_q45_k(src, dst, false); }
void quantize_q5_k(std::span<const float> src, uint8_t* dst) { quantize_q45_k(src, dst, true); }
void dequantize_q4_k(const uint8_t* src, std::span<float> dst) { dequantize_q45_k(src, dst, false); }
void dequantize_q5_k(const uint8_t* src, std::span<float> dst) { dequantize_q45_k(src, dst, true); }

void quantize_q6_k(std::span<const float> src, uint8_t* dst) {
  for (size_t block = 0; block < src.size() / kSuperBlock; ++block) {
    const float* x = src.data() + block * kSuperBlock;
    uint8_t* out = dst + block * kQ6_KBlockBytes;
    std::memset(out, 0, kQ6_KBlockBytes);
    // Per group of 16: a signed scale, x ~= scale * L with L in -32..31. The
    // element of largest magnitude sets the sign so that it lands on the -32
    // end, the side with one more level; candidates around 32 levels over it,
    // each refined by the least-squares scale for its codes.
    std::array<float, 16> scales{};
    float max_scale = 0.0f;  // signed: the scale of largest magnitude
    for (size_t g = 0; g < 16; ++g) {
      const float* xg = x + g * kSub6;
      float amax = 0.0f, extreme = 0.0f;
      for (size_t i = 0; i < kSub6; ++i) {
        if (std::fabs(xg[i]) > amax) {
          amax = std::fabs(xg[i]);
          extreme = xg[i];
        }
      }
      float best_scale = 0.0f;
      if (amax > 0.0f && std::isfinite(amax)) {
        float sxx = 0;
        for (size_t i = 0; i < kSub6; ++i) sxx += xg[i] * xg[i];
        float best_err = INFINITY;
        for (int step = -4; step <= 4; ++step) {
          const float inv = -(32.0f + 0.2f * static_cast<float>(step)) / extreme;
          float slx = 0, sll = 0;
          for (size_t i = 0; i < kSub6; ++i) {
            // Shifted by 32 to round a non-negative value (the hot loop).
            const float L = static_cast<float>(round_positive(inv * xg[i] + 32.0f, 63) - 32);
            slx += L * xg[i];
            sll += L * L;
          }
          if (!(sll > 0)) continue;
          const float scale = slx / sll;
          const float err = sxx - scale * slx;  // sum (x - scale L)^2 at the least-squares scale
          if (err < best_err) {
            best_err = err;
            best_scale = scale;
          }
        }
      }
      scales[g] = best_scale;
      if (std::fabs(best_scale) > std::fabs(max_scale)) max_scale = best_scale;
    }
    // int8 group scales: the largest maps to -128 (ggml's choice), so d may be negative.
    const float inv_d = max_scale != 0.0f ? -128.0f / max_scale : 0.0f;
    const float d = inv_d != 0.0f ? 1.0f / inv_d : 0.0f;
    int8_t* group_scales = reinterpret_cast<int8_t*>(out + 192);
    for (size_t g = 0; g < 16; ++g) group_scales[g] = static_cast<int8_t>(round_clamped(inv_d * scales[g], -128, 127));
    store_f16(out + 208, d);
    const float d_stored = load_f16(out + 208);
    uint8_t* ql = out;
    uint8_t* qh = out + 128;
    for (size_t e = 0; e < kSuperBlock; ++e) {
      const float step = d_stored * group_scales[e / kSub6];
      const int q = (step != 0.0f ? round_clamped(x[e] / step, -32, 31) : 0) + 32;
      const size_t h = e / 128, k = (e % 128) / 32, l = e % 32;
      ql[64 * h + 32 * (k & 1) + l] |= static_cast<uint8_t>((q & 0xF) << (4 * (k >> 1)));
      qh[32 * h + l] |= static_cast<uint8_t>((q >> 4) << (2 * k));
    }
  }
}

void dequantize_q6_k(const uint8_t* src, std::span<float> dst) {
  for (size_t block = 0; block < dst.size() / kSuperBlock; ++block) {
    const uint8_t* in = src + block * kQ6_KBlockBytes;
    const float d = load_f16(in + 208);
    const uint8_t* ql = in;
    const uint8_t* qh = in + 128;
    const auto* sc = reinterpret_cast<const int8_t*>(in + 192);
    float* y = dst.data() + block * kSuperBlock;
    for (size_t e = 0; e < kSuperBlock; ++e) {
      const size_t h = e / 128, k = (e % 128) / 32, l = e % 32;
      const int low = (ql[64 * h + 32 * (k & 1) + l] >> (4 * (k >> 1))) & 0xF;
      const int high = (qh[32 * h + l] >> (2 * k)) & 3;
      // ggml: d * sc[is] * q, evaluated left to right in float.
      y[e] = d * static_cast<float>(sc[e / kSub6]) * static_cast<float>((low | (high << 4)) - 32);
    }
  }
}

void quantize_q2_k(std::span<const float> src, uint8_t* dst) {
  for (size_t block = 0; block < src.size() / kSuperBlock; ++block) {
    const float* x = src.data() + block * kSuperBlock;
    uint8_t* out = dst + block * kQ2_KBlockBytes;
    std::memset(out, 0, kQ2_KBlockBytes);
    // As Q4_K, on sixteen groups of 16 with 4 levels and 4-bit scales and mins.
    const std::array<float, kSuperBlock> w = fit_weights(x);
    std::array<AffineFit, 16> fits;
    float max_scale = 0.0f, max_min = 0.0f;
    for (size_t g = 0; g < 16; ++g) {
      fits[g] = fit_affine(x + g * kSub6, w.data() + g * kSub6, kSub6, 4);
      if (!std::isfinite(fits[g].scale) || !std::isfinite(fits[g].min)) fits[g] = {};
      max_scale = std::max(max_scale, fits[g].scale);
      max_min = std::max(max_min, fits[g].min);
    }
    const float d = max_scale / 15.0f, dmin = max_min / 15.0f;
    const float inv_d = d > 0 ? 1.0f / d : 0.0f, inv_dmin = dmin > 0 ? 1.0f / dmin : 0.0f;
    uint8_t* scales = out;
    for (size_t g = 0; g < 16; ++g)
      scales[g] = static_cast<uint8_t>(round_clamped(inv_d * fits[g].scale, 0, 15) |
                                       (round_clamped(inv_dmin * fits[g].min, 0, 15) << 4));
    store_f16(out + 80, d);
    store_f16(out + 82, dmin);
    const float d_stored = load_f16(out + 80), dmin_stored = load_f16(out + 82);
    uint8_t* qs = out + 16;
    for (size_t e = 0; e < kSuperBlock; ++e) {  // e = 128h + 32k + l, group 8h + 2k + (l >= 16)
      const size_t h = e / 128, k = (e % 128) / 32, l = e % 32;
      const uint8_t sc = scales[8 * h + 2 * k + (l >= 16 ? 1 : 0)];
      const float step = d_stored * static_cast<float>(sc & 0xF), offset = dmin_stored * static_cast<float>(sc >> 4);
      const int q = step > 0.0f ? round_clamped((x[e] + offset) / step, 0, 3) : 0;
      qs[32 * h + l] |= static_cast<uint8_t>(q << (2 * k));
    }
  }
}

void quantize_q3_k(std::span<const float> src, uint8_t* dst) {
  for (size_t block = 0; block < src.size() / kSuperBlock; ++block) {
    const float* x = src.data() + block * kSuperBlock;
    uint8_t* out = dst + block * kQ3_KBlockBytes;
    std::memset(out, 0, kQ3_KBlockBytes);
    // As Q6_K, on sixteen groups of 16 with L in -4..3: the element of largest
    // magnitude lands on the -4 end (one more level that side), candidates
    // around it refined to their least-squares scale.
    std::array<float, 16> group_scale{};
    float max_scale = 0.0f;
    for (size_t g = 0; g < 16; ++g) {
      const float* xg = x + g * kSub6;
      float amax = 0.0f, extreme = 0.0f, sxx = 0.0f;
      for (size_t i = 0; i < kSub6; ++i) {
        sxx += xg[i] * xg[i];
        if (std::fabs(xg[i]) > amax) amax = std::fabs(xg[i]), extreme = xg[i];
      }
      float best_scale = 0.0f, best_err = INFINITY;
      if (amax > 0.0f && std::isfinite(amax)) {
        for (int step = -6; step <= 6; ++step) {
          const float inv = -(4.0f + 0.1f * static_cast<float>(step)) / extreme;
          float slx = 0, sll = 0;
          for (size_t i = 0; i < kSub6; ++i) {
            const float L = static_cast<float>(round_positive(inv * xg[i] + 4.0f, 7) - 4);
            slx += L * xg[i];
            sll += L * L;
          }
          if (!(sll > 0)) continue;
          const float scale = slx / sll;
          const float err = sxx - scale * slx;
          if (err < best_err) best_err = err, best_scale = scale;
        }
      }
      group_scale[g] = best_scale;
      if (std::fabs(best_scale) > std::fabs(max_scale)) max_scale = best_scale;
    }
    // 6-bit group scales stored +32: the largest maps to -32 (ggml's choice), so d may be negative.
    const float inv_d = max_scale != 0.0f ? -32.0f / max_scale : 0.0f;
    const float d = inv_d != 0.0f ? 1.0f / inv_d : 0.0f;
    uint8_t* hmask = out;
    uint8_t* qs = out + 32;
    uint8_t* scales = out + 96;
    std::array<int, 16> ls;
    for (size_t j = 0; j < 16; ++j) {
      ls[j] = round_clamped(inv_d * group_scale[j], -32, 31);
      const int l = ls[j] + 32;  // ggml's packing (kq3_scale unpacks it)
      if (j < 8)
        scales[j] = static_cast<uint8_t>(l & 0xF);
      else
        scales[j - 8] |= static_cast<uint8_t>((l & 0xF) << 4);
      scales[j % 4 + 8] |= static_cast<uint8_t>((l >> 4) << (2 * (j / 4)));
    }
    store_f16(out + 108, d);
    const float d_stored = load_f16(out + 108);
    for (size_t e = 0; e < kSuperBlock; ++e) {  // e = 128h + 32k + l, group 8h + 2k + (l >= 16)
      const size_t h = e / 128, k = (e % 128) / 32, l = e % 32;
      const float step = d_stored * static_cast<float>(ls[8 * h + 2 * k + (l >= 16 ? 1 : 0)]);
      const int q = (step != 0.0f ? round_clamped(x[e] / step, -4, 3) : 0) + 4;  // 0..7
      qs[32 * h + l] |= static_cast<uint8_t>((q & 3) << (2 * k));
      if (q > 3) hmask[l] |= static_cast<uint8_t>(1u << (4 * h + k));
    }
  }
}

int kq3_scale(const uint8_t* scales, int i) {
  if (i < 4) return (scales[i] & 0xF) | ((scales[i + 8] & 3) << 4);
  if (i < 8) return (scales[i] & 0xF) | (((scales[i + 4] >> 2) & 3) << 4);
  if (i < 12) return (scales[i - 8] >> 4) | (((scales[i] >> 4) & 3) << 4);
  return (scales[i - 8] >> 4) | (((scales[i - 4] >> 6) & 3) << 4);
}

void dequantize_q2_k(const uint8_t* src, std::span<float> dst) {
  for (size_t b = 0; b < dst.size() / kSuperBlock; ++b) {
    const uint8_t* in = src + b * kQ2_KBlockBytes;
    const uint8_t* scales = in;
    const uint8_t* qs = in + 16;
    const float d = load_f16(in + 80), dmin = load_f16(in + 82);
    float* y = dst.data() + b * kSuperBlock;
    for (size_t e = 0; e < kSuperBlock; ++e) {
      const size_t h = e / 128, k = (e % 128) / 32, l = e % 32;
      const uint8_t sc = scales[8 * h + 2 * k + (l >= 16 ? 1 : 0)];
      const int q = (qs[32 * h + l] >> (2 * k)) & 3;
      y[e] = d * static_cast<float>(sc & 0xF) * static_cast<float>(q) - dmin * static_cast<float>(sc >> 4);
    }
  }
}

void dequantize_q3_k(const uint8_t* src, std::span<float> dst) {
  for (size_t b = 0; b < dst.size() / kSuperBlock; ++b) {
    const uint8_t* in = src + b * kQ3_KBlockBytes;
    const uint8_t* hmask = in;
    const uint8_t* qs = in + 32;
    const uint8_t* scales = in + 96;
    const float d = load_f16(in + 108);
    float* y = dst.data() + b * kSuperBlock;
    for (size_t e = 0; e < kSuperBlock; ++e) {
      const size_t h = e / 128, k = (e % 128) / 32, l = e % 32;
      const int sc = kq3_scale(scales, static_cast<int>(8 * h + 2 * k + (l >= 16 ? 1 : 0)));
      const bool high = (hmask[l] >> (4 * h + k)) & 1;
      const int q = ((qs[32 * h + l] >> (2 * k)) & 3) - (high ? 0 : 4);
      y[e] = d * static_cast<float>(sc - 32) * static_cast<float>(q);
    }
  }
}

}  // namespace kvscope
