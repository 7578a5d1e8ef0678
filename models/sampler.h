// Picks the next token from logits: greedy at temperature 0, else
// temperature -> top-k -> top-p (nucleus) -> a draw from a seeded generator.
#pragma once
#include <cstdint>
#include <random>
#include <span>
#include <vector>

namespace kvscope {

struct SamplerConfig {
  float temperature = 0.8f;  // 0: greedy (argmax)
  int32_t top_k = 40;        // <= 0: no limit
  float top_p = 0.95f;       // 1: no limit
  uint64_t seed = 0;         // same seed, same logits -> same tokens
};

class Sampler {
 public:
  explicit Sampler(const SamplerConfig& cfg);
  int32_t sample(std::span<const float> logits);
  const SamplerConfig& config() const { return cfg_; }

 private:
  SamplerConfig cfg_;
  std::mt19937_64 rng_;
  std::vector<std::pair<float, int32_t>> candidates_;
};

// Index of the largest value (the first one on ties); -1 for empty input.
int32_t argmax(std::span<const float> values);

}  // namespace kvscope
