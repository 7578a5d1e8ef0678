// The eviction scores pass (shaders/attention_scores.comp) against a direct
// CPU sum over the probs rows: per (kv head, slot), over the query heads of
// the group and the call's last queries, overwritten or accumulated, with
// slots written by the call starting over.
#include <doctest/doctest.h>

#include <cmath>
#include <cstdlib>
#include <random>
#include <vector>

#include "gpu/buffer.h"
#include "gpu/context.h"
#include "gpu/pipeline.h"
#include "gpu/recorder.h"
#include "shaders/common/params.h"
#include "tests/gpu/gpu_fixture.h"

using namespace kvscope;
using namespace kvscope::test;


TEST_CASE("attention_scores: sums of the probs rows per kv head and slot, overwritten or accumulated") {
  gpu::Context& ctx = context();
  gpu::Pipeline pipe(ctx, {shaders::Id::attention_scores, 4, sizeof(params::AttentionScoresParams), {64}});
  const uint32_t n_head = 6, n_kv_head = 3, group = n_head / n_kv_head, capacity = 77, n_slots = 70;
  const uint32_t n_tokens = 5;
  std::mt19937 rng(7);
  std::uniform_real_distribution<float> unit(0.0f, 1.0f);
  std::vector<float> probs(size_t{n_tokens} * n_head * capacity);
  for (float& p : probs) p = unit(rng);
  // Slots hold positions 0..59 scattered, some empty; the call writes 60..64.
  std::vector<int32_t> slot_pos(size_t{n_kv_head} * capacity, -1);
  for (uint32_t h = 0; h < n_kv_head; ++h)
    for (uint32_t s = 0; s < n_slots; ++s)
      if ((s + h) % 7 != 3) slot_pos[size_t{h} * capacity + s] = static_cast<int32_t>((s * 13 + h) % 65);
  const std::vector<int32_t> query_pos = {60, 61, 62, 63, 64};
  std::vector<float> old_scores(size_t{n_kv_head} * capacity);
  for (float& v : old_scores) v = unit(rng) * 10;

  for (uint32_t first_query : {0u, 3u, 4u})
    for (uint32_t accumulate : {0u, 1u}) {
      CAPTURE(first_query);
      CAPTURE(accumulate);
      gpu::Buffer probs_b = upload(probs, "probs", gpu::MemoryUse::Upload);
      gpu::Buffer slots_b = upload(slot_pos, "slot positions", gpu::MemoryUse::Upload);
      gpu::Buffer query_b = upload(query_pos, "query positions", gpu::MemoryUse::Upload);
      gpu::Buffer scores_b = upload(old_scores, "scores", gpu::MemoryUse::Readback);
      gpu::Recorder rec(ctx);
      rec.begin();
      params::AttentionScoresParams p{n_tokens, n_head, n_kv_head, capacity, n_slots, first_query, accumulate};
      rec.dispatch(pipe, {probs_b, slots_b, query_b, scores_b}, p, gpu::ceil_div(capacity, 64u), n_kv_head);
      rec.submit_and_wait();
      std::vector<float> got(old_scores.size());
      scores_b.read_as<float>(got);

      float worst = 0;
      for (uint32_t kv = 0; kv < n_kv_head; ++kv)
        for (uint32_t s = 0; s < capacity; ++s) {
          float sum = 0;
          if (s < n_slots)
            for (uint32_t t = first_query; t < n_tokens; ++t)
              for (uint32_t h = kv * group; h < (kv + 1) * group; ++h) sum += probs[(size_t{t} * n_head + h) * capacity + s];
          const size_t i = size_t{kv} * capacity + s;
          const bool fresh = slot_pos[i] < 0 || slot_pos[i] >= query_pos[0];
          const float expected = accumulate && !fresh ? old_scores[i] + sum : sum;
          worst = std::max(worst, std::abs(expected - got[i]));
        }
      CHECK(worst < 1e-5f);
    }
}
