// What the policy files share: their factories and option tables (listed by
// kv/policy.cpp's registry) and the two ways a policy picks victims.
// Internal to kv/: include kv/policy.h elsewhere.
#pragma once
#include <functional>
#include <stdexcept>
#include <memory>
#include <span>
#include <vector>

#include <fmt/format.h>

#include "kv/policy.h"

namespace kvscope::kv::policies {

struct Registration {
  std::string_view name;
  std::string_view summary;
  std::span<const PolicyOption> options;
  std::unique_ptr<EvictionPolicy> (*make)(const PolicySpec&, const PolicyShape&);
  // The policy's text at a budget of B live tokens per kv head, with options
  // chosen so that B holds what it must keep (what `eval --sweep` and the
  // window's budget slider use); null: the policy has no budget (full).
  std::string (*at_budget)(uint32_t budget) = nullptr;
};

// NAME_registration() for every line of kv/policies/registry.h.
#define KVSCOPE_POLICY(name) const Registration& name##_registration();
#include "kv/policies/registry.h"
#undef KVSCOPE_POLICY

// SnapKV's scoring and decode rule with the given per-(layer, kv_head)
// budgets (kv/policies/snapkv.cpp): snapkv gives every layer the same,
// pyramidkv a pyramid. Reads the options budget, window, kernel, interval.
std::unique_ptr<EvictionPolicy> make_observation_window_policy(std::string_view name, const PolicySpec& spec,
                                                               const PolicyShape& shape,
                                                               std::vector<uint32_t> budgets);

// PyramidKV's per-(layer, kv_head) budgets (kv/policies/pyramidkv.cpp).
std::vector<uint32_t> pyramid_budgets(const PolicySpec& spec, const PolicyShape& shape);

// The same budget in every (layer, kv_head).
std::vector<uint32_t> uniform_budgets(const PolicyShape& shape, uint32_t budget);

// Per head: evicts view.excess(kv_head) unprotected live slots with the
// lowest score_of(slot); ties go to the older position, so decisions are
// deterministic. Throws std::logic_error when too few slots are evictable
// (make_policy's budget check rules that out).
void evict_lowest(LayerView& view, uint32_t kv_head, uint32_t count,
                  const std::function<float(uint32_t slot)>& score_of);

// Every head alike (policies that keep the same tokens in all heads): evicts
// the `count` unprotected positions with the lowest score_of(position),
// oldest first among equals. Positions are taken from head 0; heads of such
// a policy hold the same positions.
void evict_lowest_positions(LayerView& view, uint32_t count,
                            const std::function<float(int32_t position)>& score_of);

}  // namespace kvscope::kv::policies
