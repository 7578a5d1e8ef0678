#include "app/core/cache_spec.h"

#include <algorithm>
#include <charconv>
#include <cmath>
#include <stdexcept>

#include <fmt/format.h>

#include "kv/formats.h"

namespace kvscope {

namespace {

constexpr std::string_view kGroupNeedsQuantized = "group size applies to quantized formats (q8, q4, kivi2)";
constexpr std::string_view kHadamardNeedsQuantized = "the Hadamard rotation applies to quantized keys (q8, q4, kivi2)";

float parse_sparse_v(std::string_view what, std::string_view value) {
  float t = 0;
  const auto [end, ec] = std::from_chars(value.data(), value.data() + value.size(), t);
  if (ec != std::errc() || end != value.data() + value.size() || !std::isfinite(t) || t < 0 || t >= 1)
    throw std::invalid_argument(fmt::format(
        "{}: the sparse-V threshold is an attention weight in [0, 1), e.g. 0.001 (0: off), not '{}'", what, value));
  return t;
}

bool parse_on_off(std::string_view what, std::string_view value) {
  if (value == "on") return true;
  if (value == "off") return false;
  throw std::invalid_argument(fmt::format("{}: write on or off, not '{}'", what, value));
}

std::string_view trim(std::string_view t) {
  while (!t.empty() && t.front() == ' ') t.remove_prefix(1);
  while (!t.empty() && t.back() == ' ') t.remove_suffix(1);
  return t;
}

kv::Format parse_format_item(std::string_view item, std::string_view value) {
  if (auto f = kv::parse_format(value)) return *f;
  throw std::invalid_argument(fmt::format("cache spec item '{}': unknown format '{}'; choose one of: {}", item,
                                          value, kv::format_names()));
}

uint32_t parse_group(std::string_view item, std::string_view value) {
  uint32_t n = 0;
  const auto [end, ec] = std::from_chars(value.data(), value.data() + value.size(), n);
  if (ec != std::errc() || end != value.data() + value.size() || n == 0)
    throw std::invalid_argument(
        fmt::format("cache spec item '{}': the group size must be a whole number > 0", item));
  return n;
}

// The storage part: "q8,group=16", "k=f32,v=f16".
void parse_storage(std::string_view text, CacheSpec& spec) {
  bool k_set = false, v_set = false, group_set = false, hadamard_set = false, sparse_set = false;
  auto set_once = [&](bool& was_set, std::string_view what, std::string_view item) {
    if (was_set)
      throw std::invalid_argument(
          fmt::format("cache spec '{}': {} given twice (at '{}'); give each of k, v, group, hadamard and sparse_v once", text, what,
                      item));
    was_set = true;
  };
  size_t begin = 0;
  while (begin <= text.size()) {
    const size_t comma = std::min(text.find(',', begin), text.size());
    const std::string_view item = text.substr(begin, comma - begin);
    begin = comma + 1;
    if (item.empty())
      throw std::invalid_argument(fmt::format("cache spec '{}': an empty item (two commas, or one at an end)", text));
    const size_t eq = item.find('=');
    if (eq == std::string_view::npos) {
      set_once(k_set, "the key format", item);
      set_once(v_set, "the value format", item);
      spec.k_format = spec.v_format = parse_format_item(item, item);
      continue;
    }
    const std::string_view key = item.substr(0, eq), value = item.substr(eq + 1);
    if (key == "k") {
      set_once(k_set, "the key format", item);
      spec.k_format = parse_format_item(item, value);
    } else if (key == "v") {
      set_once(v_set, "the value format", item);
      spec.v_format = parse_format_item(item, value);
    } else if (key == "group") {
      set_once(group_set, "the group size", item);
      spec.group_size = parse_group(item, value);
    } else if (key == "hadamard") {
      set_once(hadamard_set, "the Hadamard rotation", item);
      spec.hadamard = parse_on_off(fmt::format("cache spec item '{}'", item), value);
    } else if (key == "sparse_v") {
      set_once(sparse_set, "the sparse-V threshold", item);
      spec.sparse_v = parse_sparse_v(fmt::format("cache spec item '{}'", item), value);
    } else {
      throw std::invalid_argument(fmt::format(
          "cache spec item '{}': unknown key '{}'; write FORMAT, k=FORMAT, v=FORMAT, group=N, hadamard=on|off or sparse_v=T", item,
          key));
    }
  }
}

bool is_policy_part(std::string_view part) {
  const std::string_view name = part.substr(0, part.find(':'));
  const auto names = kv::policy_names();
  return std::find(names.begin(), names.end(), name) != names.end();
}

std::string policy_names_joined() {
  std::string names;
  for (std::string_view n : kv::policy_names()) names += fmt::format("{}{}", names.empty() ? "" : ", ", n);
  return names;
}

uint64_t mib_to_bytes(double mib) { return static_cast<uint64_t>(mib * 1048576.0); }

std::string bytes_to_mib_text(uint64_t bytes) { return fmt::format("{}", bytes / 1048576.0); }

}  // namespace

bool is_quantized(kv::Format f) { return f != kv::Format::F32 && f != kv::Format::F16; }

std::string CacheSpec::name() const {
  std::string s = k_format == v_format
                      ? std::string(kv::format_name(k_format))
                      : fmt::format("k={},v={}", kv::format_name(k_format), kv::format_name(v_format));
  if (group_size) s += fmt::format(",group={}", *group_size);
  if (hadamard) s += *hadamard ? ",hadamard=on" : ",hadamard=off";
  if (sparse_v) s += fmt::format(",sparse_v={}", *sparse_v);
  return s;
}

std::string CacheSpec::label() const {
  std::string s = name();
  if (!policy.empty()) s += " + " + policy;
  for (const kv::PinnedSpan& span : pins.spans()) s += " + pin=" + kv::to_string(span);
  if (!on_full.empty()) s += " + on-full=" + on_full;
  if (spill) s += spill_max_bytes ? " + spill=" + bytes_to_mib_text(spill_max_bytes) : std::string(" + spill");
  return s;
}

void CacheSpec::check() const {
  if (group_size && !is_quantized(k_format) && !is_quantized(v_format))
    throw std::invalid_argument(fmt::format("{}; the cache {} has none", kGroupNeedsQuantized, name()));
  if (hadamard && !is_quantized(k_format))
    throw std::invalid_argument(fmt::format("{}; the cache {} has {} keys", kHadamardNeedsQuantized, name(),
                                            kv::format_name(k_format)));
  const bool evicting = !policy.empty() && policy.substr(0, policy.find(':')) != "full";
  if (!on_full.empty() && evicting)
    throw std::invalid_argument(fmt::format(
        "--on-full applies to policy full (keep everything until the context is full); --policy {} already evicts: "
        "leave out one of the two",
        policy));
  if (spill && policy.empty() && on_full.empty())
    throw std::invalid_argument(
        "--spill keeps what a policy evicts, and this cache has no policy: add one (e.g. h2o:budget=64) or leave out "
        "spill");
  if (!spill && spill_max_bytes != 0) throw std::invalid_argument("a spill cap needs spill: add spill");
}

kv::CacheConfig CacheSpec::config(uint32_t capacity) const {
  check();
  kv::CacheConfig c;
  c.k_format = k_format;
  c.v_format = v_format;
  c.capacity = capacity;
  c.group_size = group_size.value_or(0);  // 0: the cache's default for head_dim
  c.hadamard = hadamard.value_or(true);
  c.sparse_v = sparse_v.value_or(0.0f);
  c.spill = spill;
  c.spill_max_bytes = spill_max_bytes;
  return c;
}

CacheSpec parse_cache_spec(std::string_view text) {
  const std::string_view whole = trim(text);
  if (whole.empty())
    throw std::invalid_argument(fmt::format(
        "empty cache spec; write a format ({}), a policy (e.g. h2o:budget=64) or both (\"q8 + h2o:budget=64\")",
        kv::format_names()));
  CacheSpec spec;
  bool storage_set = false, policy_set = false, on_full_set = false, spill_set = false;
  size_t begin = 0;
  while (begin <= whole.size()) {
    const size_t plus = std::min(whole.find('+', begin), whole.size());
    const std::string_view part = trim(whole.substr(begin, plus - begin));
    begin = plus + 1;
    if (part.empty())
      throw std::invalid_argument(fmt::format(
          "cache spec \"{}\": an empty part (nothing around a '+'); name a policy, e.g. \"f16 + h2o:budget=64\"",
          whole));
    auto once = [&](bool& seen, std::string_view what) {
      if (seen)
        throw std::invalid_argument(fmt::format("cache spec \"{}\": {} given twice (at '{}')", whole, what, part));
      seen = true;
    };
    if (part.starts_with("pin=")) {
      spec.pins.add(kv::parse_pinned_span(part.substr(4)));
    } else if (part.starts_with("on-full=")) {
      once(on_full_set, "on-full");
      spec.on_full = kv::parse_policy_spec(part.substr(8)).text();
    } else if (part == "spill" || part.starts_with("spill=")) {
      once(spill_set, "spill");
      spec.spill = true;
      if (part.size() > 5) {
        const std::string_view value = part.substr(6);
        double mib = 0;
        const auto [end, ec] = std::from_chars(value.data(), value.data() + value.size(), mib);
        if (value.empty() || ec != std::errc() || end != value.data() + value.size() || !std::isfinite(mib) ||
            mib <= 0)
          throw std::invalid_argument(fmt::format(
              "cache spec part '{}': the spill cap is a number of MiB > 0 (spill=64), or write spill for no cap", part));
        spec.spill_max_bytes = mib_to_bytes(mib);
      }
    } else if (is_policy_part(part) || part.find(':') != std::string_view::npos) {
      const std::string policy = kv::parse_policy_spec(part).text();  // an unknown name lists the known ones
      once(policy_set, "the policy");
      spec.policy = policy;
    } else {
      CacheSpec storage;
      try {
        parse_storage(part, storage);
      } catch (const std::invalid_argument& e) {
        throw std::invalid_argument(fmt::format("{} (a part is a storage format, a policy ({}), pin=START:END, "
                                                "on-full=POLICY or spill[=MIB])",
                                                e.what(), policy_names_joined()));
      }
      once(storage_set, "the storage");
      spec.k_format = storage.k_format;
      spec.v_format = storage.v_format;
      spec.group_size = storage.group_size;
      spec.hadamard = storage.hadamard;
      spec.sparse_v = storage.sparse_v;
    }
  }
  spec.check();
  return spec;
}

namespace {
std::string flag_error(std::string_view flag, std::string_view value, const std::exception& e) {
  return fmt::format("{} {}: {}", flag, value, e.what());
}
}  // namespace

CacheSpec cache_spec_from_flags(const CacheFlags& f) {
  CacheSpec spec;
  try {
    spec = parse_cache_spec(f.kv);
  } catch (const std::invalid_argument& e) {
    throw std::invalid_argument(flag_error("--kv", f.kv, e));
  }
  auto format_flag = [](std::string_view flag, const std::string& text) {
    if (auto format = kv::parse_format(text)) return *format;
    throw std::invalid_argument(
        fmt::format("{} {}: unknown format; choose one of: {}", flag, text, kv::format_names()));
  };
  if (!f.kv_k.empty()) spec.k_format = format_flag("--kv-k", f.kv_k);
  if (!f.kv_v.empty()) spec.v_format = format_flag("--kv-v", f.kv_v);
  if (f.kv_group) spec.group_size = f.kv_group;
  if (!f.kv_hadamard.empty()) spec.hadamard = parse_on_off("--kv-hadamard", f.kv_hadamard);
  if (!f.kv_sparse_v.empty()) spec.sparse_v = parse_sparse_v("--kv-sparse-v", f.kv_sparse_v);
  if (!f.policy.empty()) {
    if (!spec.policy.empty())
      throw std::invalid_argument(
          fmt::format("--policy {}: --kv already names policy {}; give the policy once", f.policy, spec.policy));
    try {
      spec.policy = kv::parse_policy_spec(f.policy).text();
    } catch (const std::invalid_argument& e) {
      throw std::invalid_argument(flag_error("--policy", f.policy, e));
    }
  }
  for (const std::string& text : f.pins) {
    try {
      spec.pins.add(kv::parse_pinned_span(text));
    } catch (const std::invalid_argument& e) {
      throw std::invalid_argument(flag_error("--pin", text, e));
    }
  }
  if (!f.on_full.empty()) {
    try {
      spec.on_full = kv::parse_policy_spec(f.on_full).text();
    } catch (const std::invalid_argument& e) {
      throw std::invalid_argument(flag_error("--on-full", f.on_full, e));
    }
  }
  if (f.spill_max_mb < 0 || !std::isfinite(f.spill_max_mb))
    throw std::invalid_argument(fmt::format("--spill-max-mb {}: must be a number of MiB >= 0", f.spill_max_mb));
  if (f.spill_max_mb > 0 && !f.spill) throw std::invalid_argument("--spill-max-mb caps --spill: add --spill");
  if (f.spill) {
    spec.spill = true;
    spec.spill_max_bytes = mib_to_bytes(f.spill_max_mb);
  }
  try {
    spec.check();
  } catch (const std::invalid_argument& e) {
    throw std::invalid_argument(f.kv_group ? fmt::format("--kv-group {}: {}", *f.kv_group, e.what()) : e.what());
  }
  return spec;
}

CachePlan plan_cache(const CacheSpec& spec, const kv::CacheShape& shape, uint32_t capacity,
                     const kv::PinnedSpans& extra_pins) {
  CachePlan plan;
  plan.config = spec.config(capacity);
  if (capacity == 0) throw std::invalid_argument("the context has 0 tokens; give a context length > 0 (-c)");
  plan.pins = spec.pins;
  for (const kv::PinnedSpan& span : extra_pins.spans()) plan.pins.add(span);
  const kv::PolicyShape policy_shape{shape.n_layer, shape.n_kv_head, capacity};
  if (!spec.on_full.empty()) {
    plan.policy = kv::parse_policy_spec(spec.on_full);
    kv::check_on_full_policy(*plan.policy, policy_shape, plan.pins);
  } else if (!spec.policy.empty()) {
    plan.policy = kv::parse_policy_spec(spec.policy);
  } else if (!plan.pins.empty()) {
    plan.policy = kv::parse_policy_spec("full");  // pins are held by a policy; full keeps everything anyway
  }
  std::unique_ptr<kv::EvictionPolicy> policy;
  if (plan.policy) policy = kv::make_policy(*plan.policy, policy_shape, plan.pins);
  kv::check_cache_config(shape, plan.config, policy.get());
  return plan;
}

std::vector<CacheSpec> sweep_specs(std::optional<uint32_t> group_size) {
  std::vector<CacheSpec> specs;
  bool any_quantized = false;
  for (kv::Format f : kv::all_formats()) {
    CacheSpec s;
    s.k_format = s.v_format = f;
    if (is_quantized(f)) {
      s.group_size = group_size;
      any_quantized = true;
    }
    specs.push_back(s);
  }
  if (group_size && !any_quantized)
    throw std::invalid_argument(fmt::format("{}; the formats swept ({}) include none", kGroupNeedsQuantized,
                                            kv::format_names()));
  return specs;
}

std::vector<CacheSpec> policy_sweep_specs(std::span<const uint32_t> budgets) {
  std::vector<CacheSpec> specs;
  for (uint32_t b : budgets)
    for (std::string_view name : kv::policy_names())
      if (auto text = kv::policy_at_budget(name, b)) {
        CacheSpec s;
        s.policy = kv::parse_policy_spec(*text).text();
        specs.push_back(s);
      }
  return specs;
}

}  // namespace kvscope
