// Eviction policies: which tokens a KV cache keeps when it may hold fewer
// live slots (its budget) than the sequence has tokens.
//
// [SECTION] PolicySpec: the text of --policy
// [SECTION] scores a policy asks the attention shader for
// [SECTION] LayerView: what a policy sees of one layer, and the one way it acts
// [SECTION] EvictionPolicy
//
// The contract, the same on the GPU (the cache and session) and in the CPU
// reference (kv/policy_reference.h):
//   * Tokens arrive in forward calls ("steps"): prompt chunks, then one token
//     per decode step. Before step s writes its n tokens, the driver calls
//     on_step for every layer with the scores of step s-1; the policy releases
//     slots until, in every (layer, kv_head), live + n <= budget. So the budget
//     is a hard cap on live slots at every step, prefill included, and freed
//     slots are what the step's writes reuse (the cache is never moved).
//   * The driver sizes prompt chunks so that this is possible: at most
//     budget - (live sinks and pinned tokens) tokens per chunk.
//   * After the last prompt chunk, on_prefill runs once per layer with that
//     chunk's scores.
//   * A policy acts only through LayerView::evict, which releases the slot in
//     the SlotTable and logs an EvictionEvent; it refuses protected slots.
#pragma once
#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "kv/slot_table.h"
#include "kv/pins.h"

namespace kvscope::kv {

class EventLog;

// ----------------------------------------------- [SECTION] PolicySpec: the text of --policy
//
// "NAME[:KEY=VALUE,KEY=VALUE,FLAG]", e.g. "h2o:budget=64,recent=32",
// "streamingllm:sinks=4,window=124,rolling", "full".

enum class OptionKind : uint8_t { Count, Number, Flag };

struct PolicyOption {
  std::string_view key;
  OptionKind kind = OptionKind::Count;
  bool required = false;
  double default_value = 0;  // when not required (flags: absent = off)
  std::string_view help;
};

struct PolicySpec {
  std::string name;
  std::map<std::string, double, std::less<>> values;  // every Count/Number option, defaults filled in
  std::set<std::string, std::less<>> flags;           // the flags given

  uint32_t count(std::string_view key) const;  // a Count option (throws std::logic_error if unknown)
  double number(std::string_view key) const;
  bool flag(std::string_view key) const { return flags.count(key) != 0; }
  // Canonical text with every option spelled out: parse_policy_spec(text())
  // gives the same spec back.
  std::string text() const;
};

// Throws std::invalid_argument naming the bad part — an unknown policy (and
// the known ones), an unknown key (and the policy's keys), a missing required
// key, a value that is not a non-negative integer — so the person can fix the
// command line from the message alone.
PolicySpec parse_policy_spec(std::string_view text);
// Every policy, one line each with its options, for --help.
std::string policy_help();
std::vector<std::string_view> policy_names();
// The options a policy takes (throws std::invalid_argument for an unknown name).
std::span<const PolicyOption> policy_options(std::string_view name);
// Its one-line description (--help, the window's tooltips).
std::string_view policy_summary(std::string_view name);
// The policy's text at a budget of `budget` live tokens per kv head, options
// chosen so that the budget holds what it must keep (h2o's recent window is
// half the budget, streamingllm keeps 4 sinks); nullopt for `full`, which has
// no budget. What `eval --sweep` and the window's policy picker use.
std::optional<std::string> policy_at_budget(std::string_view name, uint32_t budget);

// ---------------------------------- [SECTION] scores a policy asks the attention shader for
//
// Per layer, a float[n_kv_head][capacity] buffer: for each slot, attention
// probability summed over the query heads that share the kv head, and over
// the queries the request names:
//   Accumulated   every query since the slot's token was written (its entry
//                 is zeroed when the slot is assigned): H2O's heavy hitters.
//   LastQueries   only the last `last_queries` queries of the latest forward
//                 call (0: all of them); the buffer is zeroed before each
//                 call: TOVA (1) and SnapKV's observation window (W).
enum class ScoreKind : uint8_t { None, Accumulated, LastQueries };

struct ScoreRequest {
  ScoreKind kind = ScoreKind::None;
  uint32_t last_queries = 0;
};

// One layer's scores: values[kv_head * capacity + slot]. Empty before the
// first step and for policies that need none.
struct LayerScores {
  std::span<const float> values;
  uint32_t capacity = 0;
  bool empty() const { return values.empty(); }
  float at(uint32_t kv_head, uint32_t slot) const {
    return values.empty() ? 0.0f : values[size_t{kv_head} * capacity + slot];
  }
};

// ------------------------ [SECTION] LayerView: what a policy sees of one layer, and how it acts

enum class Phase : uint8_t { Prefill, Decode };

// The step about to run: `incoming` tokens at positions next_position ...
// next_position + incoming - 1 (for on_prefill: the step that just ran, 0 incoming).
struct StepInfo {
  uint32_t step = 0;
  Phase phase = Phase::Prefill;
  int32_t next_position = 0;
  uint32_t incoming = 0;
};

// Tokens a policy must never evict besides the pinned ones: the first
// `sinks` positions (StreamingLLM's attention sinks) and the last `recent`
// positions counted after the incoming tokens land (H2O's recent window,
// SnapKV's observation window).
struct Protection {
  uint32_t sinks = 0;
  uint32_t recent = 0;
};

struct PolicyShape {
  uint32_t n_layer = 0;
  uint32_t n_kv_head = 0;
  uint32_t capacity = 0;  // slots per (layer, kv_head)
};

class LayerView {
 public:
  struct Context {
    StepInfo step;
    Protection protection;
    const PinnedSpans* pins = nullptr;     // null: none
    std::span<const int32_t> tokens;       // token id by position (for the log; -1 beyond)
    EventLog* log = nullptr;               // null: evictions are not logged
  };
  // `tables` and `budgets` are this layer's, one per kv head.
  LayerView(uint32_t layer, std::span<SlotTable> tables, std::span<const uint32_t> budgets,
            const Context& context);

  uint32_t layer() const { return layer_; }
  uint32_t n_kv_head() const { return static_cast<uint32_t>(tables_.size()); }
  const StepInfo& step() const { return context_.step; }
  const SlotTable& table(uint32_t kv_head) const { return tables_[kv_head]; }
  uint32_t budget(uint32_t kv_head) const { return budgets_[kv_head]; }
  uint32_t live(uint32_t kv_head) const { return tables_[kv_head].live(); }
  // Slots to free in this head before the step's tokens land: live + incoming - budget, or 0.
  uint32_t excess(uint32_t kv_head) const;

  bool is_pinned(int32_t position) const;
  bool is_protected_position(int32_t position) const;  // sink, pinned or recent
  bool is_protected(uint32_t kv_head, uint32_t slot) const {
    return is_protected_position(tables_[kv_head].position(slot));
  }
  int32_t token_at(int32_t position) const;
  // Live slots of a head, ordered by the position they hold.
  std::vector<uint32_t> live_slots_by_position(uint32_t kv_head) const;
  // The slot of `position` in a head, -1 when it is not live there.
  int32_t slot_of(uint32_t kv_head, int32_t position) const;

  // Releases the slot and logs the eviction with `score` (the policy's
  // score for it). Throws std::logic_error for an empty or protected slot:
  // a policy that tries either has a bug the invariant tests should catch.
  void evict(uint32_t kv_head, uint32_t slot, float score);

 private:
  uint32_t layer_;
  std::span<SlotTable> tables_;
  std::span<const uint32_t> budgets_;
  Context context_;
};

// ------------------------------------------------------------ [SECTION] EvictionPolicy

class EvictionPolicy {
 public:
  virtual ~EvictionPolicy() = default;
  EvictionPolicy(const EvictionPolicy&) = delete;
  EvictionPolicy& operator=(const EvictionPolicy&) = delete;

  virtual std::string_view name() const = 0;
  virtual ScoreRequest score_request() const { return {}; }
  bool needs_scores() const { return score_request().kind != ScoreKind::None; }
  // False only for `full`: when it runs out of slots the cache is full.
  virtual bool evicts() const { return true; }
  // True when heads of a layer may keep different tokens (scores per kv head).
  virtual bool per_head() const = 0;
  virtual Protection protection() const { return {}; }

  // Makes room for view.step().incoming tokens (see the contract above).
  // `scores` are those of the previous step (empty at the first).
  virtual void on_step(LayerView& view, const LayerScores& scores) = 0;
  // The prompt is complete; `scores` are those of its last chunk.
  virtual void on_prefill(LayerView& /*view*/, const LayerScores& /*scores*/) {}
  // Forget per-sequence state (the session was reset or truncated).
  virtual void reset() {}

  const PolicySpec& spec() const { return spec_; }
  const PolicyShape& shape() const { return shape_; }
  uint32_t budget(uint32_t layer, uint32_t kv_head) const {
    return budgets_[size_t{layer} * shape_.n_kv_head + kv_head];
  }
  std::span<const uint32_t> layer_budgets(uint32_t layer) const {
    return std::span(budgets_).subspan(size_t{layer} * shape_.n_kv_head, shape_.n_kv_head);
  }

 protected:
  // budgets: one per (layer, kv_head), [layer][kv_head].
  EvictionPolicy(PolicySpec spec, PolicyShape shape, std::vector<uint32_t> budgets);

 private:
  PolicySpec spec_;
  PolicyShape shape_;
  std::vector<uint32_t> budgets_;
};

// Builds the policy the spec names for a cache of this shape. Throws
// std::invalid_argument when a budget exceeds the capacity or cannot hold
// the protected tokens (sinks + pinned + recent window + 1 new token), with
// the numbers and what to change.
std::unique_ptr<EvictionPolicy> make_policy(const PolicySpec& spec, const PolicyShape& shape,
                                            const PinnedSpans& pins = {});

// `--on-full SPEC`: the policy that takes over from `full` once the context is
// full. Its budget must be the whole context in every layer and kv head, so
// that it keeps every token until the context fills and from then on evicts,
// by its own rule, only what each new token needs (e.g.
// streamingllm:sinks=4,window=252 for a 256-token context). Throws
// std::invalid_argument with the budget that fits when it is not, or when
// SPEC is `full` itself.
void check_on_full_policy(const PolicySpec& spec, const PolicyShape& shape, const PinnedSpans& pins = {});

}  // namespace kvscope::kv
