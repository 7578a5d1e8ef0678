#include "kv/policy.h"

#include <algorithm>
#include <charconv>
#include <cmath>
#include <numeric>
#include <stdexcept>

#include <fmt/format.h>

#include "kv/event_log.h"
#include "kv/policies/common.h"

namespace kvscope::kv {

// ------------------------------------------------------------------ registry

namespace {

// In the order --help lists them.
std::span<const policies::Registration* const> registry() {
  static const policies::Registration* const all[] = {
#define KVSCOPE_POLICY(name) &policies::name##_registration(),
#include "kv/policies/registry.h"
#undef KVSCOPE_POLICY
  };
  return all;
}

std::string joined_names() {
  std::string names;
  for (const auto* r : registry()) names += fmt::format("{}{}", names.empty() ? "" : ", ", r->name);
  return names;
}

const policies::Registration& find_registration(std::string_view name) {
  for (const auto* r : registry())
    if (r->name == name) return *r;
  throw std::invalid_argument(
      fmt::format("unknown eviction policy '{}'; known policies: {}", name, joined_names()));
}

std::string option_keys(const policies::Registration& r) {
  if (r.options.empty()) return "none";
  std::string keys;
  for (const auto& o : r.options) keys += fmt::format("{}{}", keys.empty() ? "" : ", ", o.key);
  return keys;
}

std::string format_number(double v) {
  if (v == std::floor(v) && std::fabs(v) < 1e15) return fmt::format("{}", static_cast<int64_t>(v));
  return fmt::format("{}", v);
}

}  // namespace

std::vector<std::string_view> policy_names() {
  std::vector<std::string_view> names;
  for (const auto* r : registry()) names.push_back(r->name);
  return names;
}

std::span<const PolicyOption> policy_options(std::string_view name) { return find_registration(name).options; }

std::string_view policy_summary(std::string_view name) { return find_registration(name).summary; }

std::optional<std::string> policy_at_budget(std::string_view name, uint32_t budget) {
  const auto& r = find_registration(name);
  if (!r.at_budget) return std::nullopt;
  return r.at_budget(budget);
}

std::string policy_help() {
  std::string help;
  for (const auto* r : registry()) {
    help += fmt::format("  {:<13}{}\n", r->name, r->summary);
    for (const auto& o : r->options) {
      std::string what = o.kind == OptionKind::Flag ? "flag"
                         : o.required           ? "required"
                                                : "default " + format_number(o.default_value);
      help += fmt::format("  {:<13}  {:<9} {} ({})\n", "", o.key, o.help, what);
    }
  }
  return help;
}

// ------------------------------------------------------------------ PolicySpec

uint32_t PolicySpec::count(std::string_view key) const {
  const auto it = values.find(key);
  if (it == values.end())
    throw std::logic_error(fmt::format("policy '{}' has no option '{}' (a bug in its file)", name, key));
  return static_cast<uint32_t>(it->second);
}

double PolicySpec::number(std::string_view key) const {
  const auto it = values.find(key);
  if (it == values.end())
    throw std::logic_error(fmt::format("policy '{}' has no option '{}' (a bug in its file)", name, key));
  return it->second;
}

std::string PolicySpec::text() const {
  std::string out = name;
  char sep = ':';
  // In the registration's order, so equal specs read the same.
  for (const auto& o : policy_options(name)) {
    if (o.kind == OptionKind::Flag) {
      if (!flag(o.key)) continue;
      out += fmt::format("{}{}", sep, o.key);
    } else {
      out += fmt::format("{}{}={}", sep, o.key, format_number(number(o.key)));
    }
    sep = ',';
  }
  return out;
}

PolicySpec parse_policy_spec(std::string_view text) {
  const auto colon = text.find(':');
  PolicySpec spec;
  spec.name = std::string(text.substr(0, colon));
  if (spec.name.empty())
    throw std::invalid_argument(fmt::format("--policy '{}': no policy name; known policies: {}", text, joined_names()));
  const auto& reg = find_registration(spec.name);
  auto bad = [&](const std::string& what) {
    return std::invalid_argument(fmt::format("--policy '{}': {}", text, what));
  };

  std::string_view rest = colon == std::string_view::npos ? std::string_view{} : text.substr(colon + 1);
  if (colon != std::string_view::npos && rest.empty())
    throw bad(fmt::format("nothing after ':'; {} takes: {}", spec.name, option_keys(reg)));
  std::set<std::string, std::less<>> seen;
  while (!rest.empty()) {
    const auto comma = rest.find(',');
    const std::string_view part = rest.substr(0, comma);
    rest = comma == std::string_view::npos ? std::string_view{} : rest.substr(comma + 1);
    if (part.empty() || (comma != std::string_view::npos && rest.empty()))
      throw bad("empty option (two commas, or a comma at the end)");
    const auto eq = part.find('=');
    const std::string_view key = part.substr(0, eq);
    const auto option = std::find_if(reg.options.begin(), reg.options.end(), [&](const auto& o) { return o.key == key; });
    if (option == reg.options.end())
      throw bad(fmt::format("unknown option '{}' for {}; {} takes: {}", key, spec.name, spec.name, option_keys(reg)));
    if (!seen.insert(std::string(key)).second) throw bad(fmt::format("option '{}' given twice", key));
    if (option->kind == OptionKind::Flag) {
      if (eq != std::string_view::npos)
        throw bad(fmt::format("'{}' is a flag: write '{}' without a value", key, key));
      spec.flags.insert(std::string(key));
      continue;
    }
    if (eq == std::string_view::npos) throw bad(fmt::format("option '{}' needs a value: {}=N", key, key));
    const std::string_view value = part.substr(eq + 1);
    double v = 0;
    bool ok = !value.empty();
    if (ok && option->kind == OptionKind::Count) {
      uint32_t n = 0;
      const auto [end, ec] = std::from_chars(value.data(), value.data() + value.size(), n);
      ok = ec == std::errc() && end == value.data() + value.size();
      v = n;
    } else if (ok) {
      const auto [end, ec] = std::from_chars(value.data(), value.data() + value.size(), v);
      ok = ec == std::errc() && end == value.data() + value.size() && std::isfinite(v) && v > 0;
    }
    if (!ok)
      throw bad(fmt::format("option '{}={}': expected {}", key, value,
                            option->kind == OptionKind::Count ? "a whole number >= 0" : "a number > 0"));
    spec.values[std::string(key)] = v;
  }
  for (const auto& o : reg.options) {
    if (o.kind == OptionKind::Flag || spec.values.count(o.key)) continue;
    if (o.required)
      throw bad(fmt::format("{} needs '{}' ({}), e.g. {}:{}=64", spec.name, o.key, o.help, spec.name, o.key));
    spec.values[std::string(o.key)] = o.default_value;
  }
  return spec;
}

// ------------------------------------------------------------------ LayerView

LayerView::LayerView(uint32_t layer, std::span<SlotTable> tables, std::span<const uint32_t> budgets,
                     const Context& context)
    : layer_(layer), tables_(tables), budgets_(budgets), context_(context) {
  if (tables.size() != budgets.size())
    throw std::logic_error(fmt::format("LayerView: {} tables but {} budgets", tables.size(), budgets.size()));
}

uint32_t LayerView::excess(uint32_t kv_head) const {
  const uint64_t after = uint64_t{live(kv_head)} + context_.step.incoming;
  return after > budgets_[kv_head] ? static_cast<uint32_t>(after - budgets_[kv_head]) : 0;
}

bool LayerView::is_pinned(int32_t position) const { return context_.pins && context_.pins->contains(position); }

bool LayerView::is_protected_position(int32_t position) const {
  const auto& p = context_.protection;
  if (position < static_cast<int64_t>(p.sinks)) return true;
  // The last `recent` positions once the incoming tokens have landed.
  const int64_t end = int64_t{context_.step.next_position} + context_.step.incoming;
  if (position >= end - p.recent) return true;
  return is_pinned(position);
}

int32_t LayerView::token_at(int32_t position) const {
  return position >= 0 && static_cast<size_t>(position) < context_.tokens.size() ? context_.tokens[position] : -1;
}

std::vector<uint32_t> LayerView::live_slots_by_position(uint32_t kv_head) const {
  const auto& table = tables_[kv_head];
  std::vector<uint32_t> slots;
  slots.reserve(table.live());
  for (uint32_t slot = 0; slot < table.high_water(); ++slot)
    if (table.position(slot) >= 0) slots.push_back(slot);
  std::sort(slots.begin(), slots.end(),
            [&](uint32_t a, uint32_t b) { return table.position(a) < table.position(b); });
  return slots;
}

int32_t LayerView::slot_of(uint32_t kv_head, int32_t position) const {
  const auto& table = tables_[kv_head];
  for (uint32_t slot = 0; slot < table.high_water(); ++slot)
    if (table.position(slot) == position) return static_cast<int32_t>(slot);
  return -1;
}

void LayerView::evict(uint32_t kv_head, uint32_t slot, float score) {
  auto& table = tables_[kv_head];
  const int32_t position = slot < table.capacity() ? table.position(slot) : -1;
  if (position < 0)
    throw std::logic_error(fmt::format("eviction of layer {} kv_head {} slot {}: the slot is empty", layer_, kv_head, slot));
  if (is_protected_position(position))
    throw std::logic_error(fmt::format(
        "eviction of position {} (layer {} kv_head {}): it is a sink, pinned or in the recent window", position,
        layer_, kv_head));
  table.release(slot);
  if (context_.log)
    context_.log->evicted(EvictionEvent{context_.step.step, layer_, kv_head, slot, position, token_at(position), score});
}

// --------------------------------------------------------------- EvictionPolicy

EvictionPolicy::EvictionPolicy(PolicySpec spec, PolicyShape shape, std::vector<uint32_t> budgets)
    : spec_(std::move(spec)), shape_(shape), budgets_(std::move(budgets)) {
  if (budgets_.size() != size_t{shape_.n_layer} * shape_.n_kv_head)
    throw std::logic_error(fmt::format("policy {}: {} budgets for {} layers x {} kv heads", spec_.name,
                                       budgets_.size(), shape_.n_layer, shape_.n_kv_head));
}

std::unique_ptr<EvictionPolicy> make_policy(const PolicySpec& spec, const PolicyShape& shape, const PinnedSpans& pins) {
  if (shape.n_layer == 0 || shape.n_kv_head == 0 || shape.capacity == 0)
    throw std::invalid_argument(fmt::format("policy {}: the cache shape has a zero dimension ({} layers, {} kv heads, "
                                            "{} slots)", spec.name, shape.n_layer, shape.n_kv_head, shape.capacity));
  auto policy = find_registration(spec.name).make(spec, shape);
  if (!policy->evicts()) return policy;
  const auto protection = policy->protection();
  // Sinks that are also pinned count once.
  uint32_t sinks_unpinned = 0;
  for (uint32_t p = 0; p < protection.sinks; ++p) sinks_unpinned += pins.contains(static_cast<int32_t>(p)) ? 0 : 1;
  const uint64_t needed = uint64_t{sinks_unpinned} + pins.count() + std::max(protection.recent, 1u);
  for (uint32_t layer = 0; layer < shape.n_layer; ++layer)
    for (uint32_t head = 0; head < shape.n_kv_head; ++head) {
      const uint32_t budget = policy->budget(layer, head);
      if (budget > shape.capacity)
        throw std::invalid_argument(fmt::format(
            "--policy {}: layer {} has a budget of {} slots, more than the cache's {} (the context length); lower the "
            "budget or raise the context (-c)",
            spec.text(), layer, budget, shape.capacity));
      if (budget < needed)
        throw std::invalid_argument(fmt::format(
            "--policy {}: layer {} has a budget of {} slots, too small for what it must keep: {} sinks + {} pinned "
            "+ {} recent (at least 1 new token); raise the budget, or pin fewer tokens",
            spec.text(), layer, budget, sinks_unpinned, pins.count(), std::max(protection.recent, 1u)));
    }
  return policy;
}

void check_on_full_policy(const PolicySpec& spec, const PolicyShape& shape, const PinnedSpans& pins) {
  if (spec.name == "full")
    throw std::invalid_argument(fmt::format(
        "--on-full {}: full does not evict; name the policy that should evict once the context is full, e.g. "
        "--on-full streamingllm:sinks=4,window={}",
        spec.text(), shape.capacity > 4 ? shape.capacity - 4 : 1));
  const auto policy = make_policy(spec, shape, pins);
  for (uint32_t layer = 0; layer < shape.n_layer; ++layer)
    for (uint32_t head = 0; head < shape.n_kv_head; ++head)
      if (policy->budget(layer, head) != shape.capacity)
        throw std::invalid_argument(fmt::format(
            "--on-full {}: layer {} has a budget of {} slots, but a policy that takes over when the context is full "
            "keeps the whole context of {} tokens until then and evicts only what each new token needs: give it a "
            "budget of {}{} (or use --policy {} to evict before the context is full)",
            spec.text(), layer, policy->budget(layer, head), shape.capacity, shape.capacity,
            spec.name == "streamingllm" ? " (sinks + window)" : "", spec.text()));
}

// ------------------------------------------------------------ shared helpers

namespace policies {

std::vector<uint32_t> uniform_budgets(const PolicyShape& shape, uint32_t budget) {
  return std::vector<uint32_t>(size_t{shape.n_layer} * shape.n_kv_head, budget);
}

namespace {
struct Candidate {
  float score;
  int32_t position;
  uint32_t slot;
};
// Lowest score first, then the older position: a total order, so the same
// inputs give the same victims on every machine.
bool lower(const Candidate& a, const Candidate& b) {
  if (a.score != b.score) return a.score < b.score;
  return a.position < b.position;
}
}  // namespace

void evict_lowest(LayerView& view, uint32_t kv_head, uint32_t count,
                  const std::function<float(uint32_t slot)>& score_of) {
  if (count == 0) return;
  const auto& table = view.table(kv_head);
  std::vector<Candidate> candidates;
  for (uint32_t slot = 0; slot < table.high_water(); ++slot)
    if (table.position(slot) >= 0 && !view.is_protected(kv_head, slot))
      candidates.push_back({score_of(slot), table.position(slot), slot});
  if (candidates.size() < count)
    throw std::logic_error(fmt::format("layer {} kv_head {}: {} slots to free but only {} may be evicted", view.layer(),
                                       kv_head, count, candidates.size()));
  std::partial_sort(candidates.begin(), candidates.begin() + count, candidates.end(), lower);
  for (uint32_t i = 0; i < count; ++i) view.evict(kv_head, candidates[i].slot, candidates[i].score);
}

void evict_lowest_positions(LayerView& view, uint32_t count, const std::function<float(int32_t position)>& score_of) {
  if (count == 0) return;
  const auto& table = view.table(0);
  std::vector<Candidate> candidates;
  for (uint32_t slot = 0; slot < table.high_water(); ++slot) {
    const int32_t position = table.position(slot);
    if (position >= 0 && !view.is_protected_position(position)) candidates.push_back({score_of(position), position, slot});
  }
  if (candidates.size() < count)
    throw std::logic_error(fmt::format("layer {}: {} positions to free but only {} may be evicted", view.layer(), count,
                                       candidates.size()));
  std::partial_sort(candidates.begin(), candidates.begin() + count, candidates.end(), lower);
  for (uint32_t i = 0; i < count; ++i)
    for (uint32_t head = 0; head < view.n_kv_head(); ++head) {
      const int32_t slot = head == 0 ? static_cast<int32_t>(candidates[i].slot) : view.slot_of(head, candidates[i].position);
      if (slot < 0)
        throw std::logic_error(fmt::format("layer {}: position {} is live in kv_head 0 but not in kv_head {}; a "
                                           "policy that keeps the same tokens in every head found them different",
                                           view.layer(), candidates[i].position, head));
      view.evict(head, static_cast<uint32_t>(slot), candidates[i].score);
    }
}

}  // namespace policies

}  // namespace kvscope::kv
