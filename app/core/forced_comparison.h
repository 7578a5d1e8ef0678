// Side by side, forced mode: every session reads the same tokens (the first
// session's reply, or the person's text), so at each step their next-token
// distributions can be held against the first session's: KL divergence,
// whether their most likely tokens agree, the first step where they do not,
// and the lost attention (the first session's attention on positions this
// session's cache no longer holds, app/core/lost_attention.h).
//
// Built up step by step from the workers' snapshots, so a view can update it
// every frame at the cost of the new steps only.
#pragma once
#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "app/core/lost_attention.h"
#include "app/core/worker.h"

namespace kvscope {

// KL(P || Q) in nats from log-probabilities of the same vocabulary.
double kl_divergence(std::span<const float> log_p, std::span<const float> log_q);

struct StepComparison {
  uint32_t index = 0;          // token index within the reply
  int32_t token = -1;          // the token both read next
  double kl = 0;               // KL(first session || this one), nats
  bool top1_agree = true;      // same most likely token
  double lost_attention = -1;  // mean over layers; -1: the first session had no attention rows
  std::vector<double> lost_per_layer;
};

struct SessionComparison {
  std::string name, cache;     // the compared session
  std::vector<StepComparison> steps;
  long first_divergence = -1;  // first step whose most likely tokens differ; -1: none yet
  double mean_kl() const;
  double top1_agreement() const;  // fraction of steps, 1 with no steps
  LostAttentionSummary lost;      // over the steps with attention rows
};

class ForcedComparison {
 public:
  // Adds the steps `other` and `base` both have that are not in yet; starts
  // over when either began another reply.
  void update(const SessionSnapshot& base, const SessionSnapshot& other);
  const SessionComparison& result() const { return result_; }

 private:
  SessionComparison result_;
  LostAttentionAccumulator lost_;
  const StepRecord* base_first_ = nullptr;  // identify the replies compared
  const StepRecord* other_first_ = nullptr;
};

// One row per compared session per step, after a header:
// session,cache,step,token,kl_nats,top1_agree,lost_attention
std::string comparison_csv(std::span<const SessionComparison> sessions);

}  // namespace kvscope
