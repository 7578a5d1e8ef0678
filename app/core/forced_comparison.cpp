#include "app/core/forced_comparison.h"

#include <fmt/format.h>

#include <cmath>
#include <stdexcept>

namespace kvscope {

double kl_divergence(std::span<const float> log_p, std::span<const float> log_q) {
  if (log_p.size() != log_q.size())
    throw std::invalid_argument(
        fmt::format("KL divergence of distributions over {} and {} tokens: the sessions must share a vocabulary",
                    log_p.size(), log_q.size()));
  double kl = 0;
  for (size_t i = 0; i < log_p.size(); ++i) {
    const double p = std::exp(static_cast<double>(log_p[i]));
    if (p > 0) kl += p * (static_cast<double>(log_p[i]) - log_q[i]);
  }
  return std::max(0.0, kl);  // rounding can leave a tiny negative for equal inputs
}

double SessionComparison::mean_kl() const {
  double sum = 0;
  for (const StepComparison& s : steps) sum += s.kl;
  return steps.empty() ? 0 : sum / steps.size();
}

double SessionComparison::top1_agreement() const {
  size_t agree = 0;
  for (const StepComparison& s : steps) agree += s.top1_agree;
  return steps.empty() ? 1 : static_cast<double>(agree) / steps.size();
}

void ForcedComparison::update(const SessionSnapshot& base, const SessionSnapshot& other) {
  const StepRecord* base_first = base.steps.empty() ? nullptr : base.steps.front().get();
  const StepRecord* other_first = other.steps.empty() ? nullptr : other.steps.front().get();
  if (base_first != base_first_ || other_first != other_first_ ||
      result_.steps.size() > std::min(base.steps.size(), other.steps.size())) {
    result_ = {};
    lost_ = {};
    base_first_ = base_first;
    other_first_ = other_first;
  }
  result_.name = other.name;
  result_.cache = other.spec.label();
  const size_t n = std::min(base.steps.size(), other.steps.size());
  bool added_lost = false;
  for (size_t i = result_.steps.size(); i < n; ++i) {
    const StepRecord& b = *base.steps[i];
    const StepRecord& o = *other.steps[i];
    StepComparison c;
    c.index = o.index;
    c.token = o.token;
    c.kl = kl_divergence(b.log_probs, o.log_probs);
    c.top1_agree = b.argmax == o.argmax;
    if (!c.top1_agree && result_.first_divergence < 0) result_.first_divergence = static_cast<long>(i);
    // Positions line up only when both read the same context.
    if (!b.attention.probs.empty() && b.n_pos == o.n_pos) {
      const std::span<const int32_t> tokens(other.tokens.data(), std::min<size_t>(other.tokens.size(), o.n_pos));
      c.lost_per_layer = lost_.add(b.attention, o.held, tokens);
      double sum = 0;
      for (double l : c.lost_per_layer) sum += l;
      c.lost_attention = c.lost_per_layer.empty() ? 0 : sum / c.lost_per_layer.size();
      added_lost = true;
    }
    result_.steps.push_back(std::move(c));
  }
  if (added_lost) result_.lost = lost_.summary(10);
}

std::string comparison_csv(std::span<const SessionComparison> sessions) {
  std::string out = "session,cache,step,token,kl_nats,top1_agree,lost_attention\n";
  for (const SessionComparison& s : sessions)
    for (const StepComparison& step : s.steps)
      out += fmt::format("{},\"{}\",{},{},{:.6g},{},{}\n", s.name, s.cache, step.index, step.token, step.kl,
                         step.top1_agree ? 1 : 0,
                         step.lost_attention < 0 ? std::string() : fmt::format("{:.6g}", step.lost_attention));
  return out;
}

}  // namespace kvscope
