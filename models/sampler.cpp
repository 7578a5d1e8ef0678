#include "models/sampler.h"

#include <algorithm>
#include <cmath>
#include <stdexcept>

namespace kvscope {

int32_t argmax(std::span<const float> values) {
  if (values.empty()) return -1;
  return static_cast<int32_t>(std::max_element(values.begin(), values.end()) - values.begin());
}

Sampler::Sampler(const SamplerConfig& cfg) : cfg_(cfg), rng_(cfg.seed) {
  if (!(cfg.temperature >= 0)) throw std::invalid_argument("temperature must be >= 0");
  if (!(cfg.top_p > 0 && cfg.top_p <= 1)) throw std::invalid_argument("top-p must be in (0, 1]");
}

int32_t Sampler::sample(std::span<const float> logits) {
  if (cfg_.temperature == 0.0f) return argmax(logits);

  // Candidates sorted by logit, cut to top-k.
  candidates_.clear();
  candidates_.reserve(logits.size());
  for (size_t i = 0; i < logits.size(); ++i)
    if (std::isfinite(logits[i])) candidates_.emplace_back(logits[i], static_cast<int32_t>(i));
  if (candidates_.empty()) return argmax(logits);
  size_t keep = candidates_.size();
  if (cfg_.top_k > 0) keep = std::min(keep, static_cast<size_t>(cfg_.top_k));
  std::partial_sort(candidates_.begin(), candidates_.begin() + keep, candidates_.end(),
                    [](const auto& a, const auto& b) { return a.first > b.first; });
  candidates_.resize(keep);

  // Softmax at temperature, then the smallest prefix whose mass reaches top-p.
  const float max_logit = candidates_.front().first;
  double total = 0;
  for (auto& c : candidates_) {
    c.first = static_cast<float>(std::exp((c.first - max_logit) / cfg_.temperature));
    total += c.first;
  }
  double mass = 0;
  size_t nucleus = candidates_.size();
  for (size_t i = 0; i < candidates_.size(); ++i) {
    mass += candidates_[i].first / total;
    if (mass >= cfg_.top_p) {
      nucleus = i + 1;
      break;
    }
  }
  double nucleus_total = 0;
  for (size_t i = 0; i < nucleus; ++i) nucleus_total += candidates_[i].first;

  std::uniform_real_distribution<double> uniform(0.0, nucleus_total);
  double r = uniform(rng_);
  for (size_t i = 0; i < nucleus; ++i) {
    r -= candidates_[i].first;
    if (r <= 0) return candidates_[i].second;
  }
  return candidates_[nucleus - 1].second;
}

}  // namespace kvscope
