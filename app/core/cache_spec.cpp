#include "app/core/cache_spec.h"

#include <charconv>
#include <stdexcept>

#include <fmt/format.h>

namespace kvscope {

namespace {

constexpr std::string_view kGroupNeedsQuantized = "group size applies to quantized formats (q8, q4, kivi2)";

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

}  // namespace

bool is_quantized(kv::Format f) { return f != kv::Format::F32 && f != kv::Format::F16; }

std::string CacheSpec::name() const {
  std::string s = k_format == v_format
                      ? std::string(kv::format_name(k_format))
                      : fmt::format("k={},v={}", kv::format_name(k_format), kv::format_name(v_format));
  if (group_size) s += fmt::format(",group={}", *group_size);
  return s;
}

std::string CacheSpec::label() const {
  return (policy.empty() ? name() : name() + " + " + policy) + (spill ? " + spill" : "");
}

void CacheSpec::check() const {
  if (group_size && !is_quantized(k_format) && !is_quantized(v_format))
    throw std::invalid_argument(fmt::format("{}; the cache {} has none", kGroupNeedsQuantized, name()));
}

kv::CacheConfig CacheSpec::config(uint32_t capacity) const {
  check();
  kv::CacheConfig c;
  c.k_format = k_format;
  c.v_format = v_format;
  c.capacity = capacity;
  c.group_size = group_size.value_or(0);  // 0: the cache's default for head_dim; it checks divisibility
  c.spill = spill;
  c.spill_max_bytes = spill_max_bytes;
  return c;
}

CacheSpec parse_cache_spec(std::string_view text) {
  if (text.empty())
    throw std::invalid_argument(
        fmt::format("empty cache spec; write a format ({}) or k=FORMAT,v=FORMAT", kv::format_names()));
  CacheSpec spec;
  bool k_set = false, v_set = false, group_set = false;
  auto set_once = [&](bool& was_set, std::string_view what, std::string_view item) {
    if (was_set)
      throw std::invalid_argument(
          fmt::format("cache spec '{}': {} given twice (at '{}'); give each of k, v and group once", text, what,
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
    } else {
      throw std::invalid_argument(fmt::format(
          "cache spec item '{}': unknown key '{}'; write FORMAT, k=FORMAT, v=FORMAT or group=N", item, key));
    }
  }
  spec.check();
  return spec;
}

namespace {
CacheSpec spec_from_flag(std::string_view flag, const std::string& text) {
  try {
    return parse_cache_spec(text);
  } catch (const std::invalid_argument& e) {
    throw std::invalid_argument(fmt::format("{} {}: {}", flag, text, e.what()));
  }
}

kv::Format format_from_flag(std::string_view flag, const std::string& text) {
  if (auto f = kv::parse_format(text)) return *f;
  throw std::invalid_argument(fmt::format("{} {}: unknown format; choose one of: {}", flag, text, kv::format_names()));
}
}  // namespace

CacheSpec cache_spec_from_flags(const std::string& kv, const std::string& kv_k, const std::string& kv_v,
                                std::optional<uint32_t> kv_group) {
  CacheSpec spec = spec_from_flag("--kv", kv);
  if (!kv_k.empty()) spec.k_format = format_from_flag("--kv-k", kv_k);
  if (!kv_v.empty()) spec.v_format = format_from_flag("--kv-v", kv_v);
  if (kv_group) spec.group_size = kv_group;
  try {
    spec.check();
  } catch (const std::invalid_argument& e) {
    throw std::invalid_argument(kv_group ? fmt::format("--kv-group {}: {}", *kv_group, e.what()) : e.what());
  }
  return spec;
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
  for (uint32_t b : budgets) {
    for (const std::string& policy :
         {fmt::format("window:budget={}", b), fmt::format("streamingllm:sinks=4,window={}", b - 4),
          fmt::format("h2o:budget={},recent={}", b, b / 2), fmt::format("tova:budget={}", b),
          fmt::format("snapkv:budget={}", b), fmt::format("pyramidkv:budget={}", b)}) {
      CacheSpec s;
      s.policy = policy;
      specs.push_back(s);
    }
  }
  return specs;
}

}  // namespace kvscope
