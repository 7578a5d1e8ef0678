// The Hadamard rotation of quantized keys (kv/hadamard.h): orthogonal up to
// its power-of-two scale for every head size the models have, its inverse,
// q . k kept, outliers spread, and the constants the shader spells out.
#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <random>
#include <vector>

#include "kv/formats.h"
#include "kv/hadamard.h"

using namespace kvscope;

namespace {
std::vector<float> normal_row(std::mt19937& rng, uint32_t n) {
  std::normal_distribution<float> normal(0.0f, 1.0f);
  std::vector<float> x(n);
  for (float& v : x) v = normal(rng);
  return x;
}
double dot(const std::vector<float>& a, const std::vector<float>& b) {
  double s = 0;
  for (size_t i = 0; i < a.size(); ++i) s += double(a[i]) * b[i];
  return s;
}
}  // namespace

TEST_CASE("hadamard: shapes, signs and the reflection constants") {
  CHECK(kv::hadamard_shape(48).pow2 == 16);
  CHECK(kv::hadamard_shape(48).odd == 3);
  CHECK(kv::hadamard_shape(64).pow2 == 64);
  CHECK(kv::hadamard_shape(80).odd == 5);
  CHECK(kv::hadamard_shape(96).pow2 == 32);
  CHECK(kv::hadamard_shape(100).odd == 25);
  for (uint32_t m = 1; m < 40; m += 2)
    CHECK(kv::hadamard_reflection(m) == (m >= 3 && m <= 15 ? float(2.0 / m) : 0.0f));
  int negative = 0;
  for (uint32_t d = 0; d < 256; ++d) {
    CHECK(std::fabs(kv::hadamard_sign(d)) == 1.0f);
    negative += kv::hadamard_sign(d) < 0;
  }
  CHECK(negative > 100);  // about half
  CHECK(negative < 156);
}

TEST_CASE("hadamard: orthogonal up to P, unmix inverts mix, q . k kept, for every head size") {
  std::mt19937 rng(3);
  for (uint32_t hd : {2u, 24u, 36u, 40u, 48u, 64u, 72u, 80u, 96u, 100u, 112u, 120u, 128u, 256u}) {
    CAPTURE(hd);
    const float P = float(kv::hadamard_shape(hd).pow2);
    for (int trial = 0; trial < 4; ++trial) {
      const std::vector<float> q = normal_row(rng, hd), k = normal_row(rng, hd);
      std::vector<float> mk = k, mq = q, back = k;
      kv::hadamard_mix(mk);
      kv::hadamard_mix_query(mq);
      CHECK(dot(mk, mk) == doctest::Approx(P * dot(k, k)).epsilon(1e-5));  // |M k|^2 = P |k|^2
      CHECK(dot(mq, mk) == doctest::Approx(dot(q, k)).epsilon(1e-4).scale(std::sqrt(dot(q, q) * dot(k, k))));
      kv::hadamard_mix(back);
      kv::hadamard_unmix(back);
      for (uint32_t d = 0; d < hd; ++d) CHECK(back[d] == doctest::Approx(k[d]).epsilon(1e-5).scale(1.0));
    }
  }
}

TEST_CASE("hadamard: one large channel is spread over the head, and q4 keys quantize better") {
  std::mt19937 rng(8);
  for (uint32_t hd : {48u, 64u, 128u}) {
    CAPTURE(hd);
    std::vector<float> x(hd, 0.0f);
    x[5] = 1.0f;
    kv::hadamard_mix(x);
    const float P = float(kv::hadamard_shape(hd).pow2);
    // An impulse becomes sqrt(P)-normed and flat: no element above 1 (it was sqrt(P) times the rest's scale).
    float peak = 0;
    for (float v : x) peak = std::max(peak, std::fabs(v));
    CHECK(peak <= 1.0f);
    CHECK(dot(x, x) == doctest::Approx(P));
    // Keys with two outlier channels: the q4 error of q . k is smaller mixed.
    const kv::TensorLayout L = kv::tensor_layout(kv::Encoding::Q4, 1, 1, hd, 16, 0);
    double plain = 0, mixed = 0;
    for (int trial = 0; trial < 200; ++trial) {
      std::vector<float> k = normal_row(rng, hd), q = normal_row(rng, hd);
      k[3] *= 20.0f;
      k[hd - 5] = 12.0f + k[hd - 5];
      std::vector<uint32_t> row(L.row_words);
      std::vector<float> y(hd);
      kv::encode_row(L, k, row);
      kv::decode_row(L, row, y);
      plain += std::pow(dot(q, y) - dot(q, k), 2);
      std::vector<float> mk = k, mq = q;
      kv::hadamard_mix(mk);
      kv::hadamard_mix_query(mq);
      kv::encode_row(L, mk, row);
      kv::decode_row(L, row, y);
      mixed += std::pow(dot(mq, y) - dot(q, k), 2);
    }
    MESSAGE("head_dim " << hd << ": q4 q.k squared error plain " << plain << ", Hadamard-mixed " << mixed);
    CHECK(mixed < 0.75 * plain);  // measured 0.54 (48), 0.63 (64), 0.73 (128)
  }
}
