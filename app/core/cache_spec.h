// A KV cache named in one short string, the way both front ends let a person
// choose one (`kvscope eval --baseline SPEC`, `--kv SPEC`, the GUI's field):
//
//   spec := item ("," item)*
//   item := FORMAT           keys and values in FORMAT           f16
//         | "k=" FORMAT      keys only                           k=f32,v=f16
//         | "v=" FORMAT      values only
//         | "group=" N       quantization group along head_dim   q8,group=16
//
// FORMAT is one of kv::format_names(). What a spec leaves unset is f16. Each of
// keys, values and group may be given once (a bare FORMAT gives both keys and
// values). name() writes the shortest spec that parses back to the same cache.
#pragma once
#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "kv/cache.h"

namespace kvscope {

// Formats that store codes and scales rather than floats; only they have a
// group size.
bool is_quantized(kv::Format f);

struct CacheSpec {
  kv::Format k_format = kv::Format::F16;
  kv::Format v_format = kv::Format::F16;
  std::optional<uint32_t> group_size;  // unset: the format's default
  // The eviction policy (kv/policy.h's spec text, e.g. "h2o:budget=64"),
  // empty: none. Not part of the spec grammar above (policy options use
  // commas too): `kvscope eval --policy` and the sweep set it.
  std::string policy;
  // --spill (kv::CacheConfig::spill): evicted entries go to host memory and
  // may be recalled; the cap in bytes, 0: none. Not part of the grammar either.
  bool spill = false;
  uint64_t spill_max_bytes = 0;

  // "f16", "k=f32,v=f16", "q8,group=16": the storage only.
  std::string name() const;
  // name(), then " + POLICY" (and " + spill") when there is one: how tables and reports name the cache.
  std::string label() const;
  // Throws std::invalid_argument when the parts do not fit together (a group
  // size for a cache with no quantized format).
  void check() const;
  // The cache this spec describes with `capacity` slots; check()s first.
  kv::CacheConfig config(uint32_t capacity) const;

  bool operator==(const CacheSpec&) const = default;
};

// Throws std::invalid_argument naming the item that is wrong and what is
// accepted.
CacheSpec parse_cache_spec(std::string_view text);

// The cache the command-line flags describe: --kv SPEC, then --kv-k FORMAT,
// --kv-v FORMAT (empty: not given) and --kv-group N over it. Errors name the
// flag.
CacheSpec cache_spec_from_flags(const std::string& kv, const std::string& kv_k, const std::string& kv_v,
                                std::optional<uint32_t> kv_group);

// The caches `kvscope eval --sweep` measures: every format of
// kv::all_formats() for keys and values alike, `group_size` applied to the
// quantized ones (an error when there are none).
std::vector<CacheSpec> sweep_specs(std::optional<uint32_t> group_size);

// Every eviction policy but `full` at each budget, on f16 storage, with
// options chosen so that the budget holds what each must keep (h2o's recent
// window is half the budget; streamingllm keeps 4 sinks): what `--sweep`
// adds after the formats.
std::vector<CacheSpec> policy_sweep_specs(std::span<const uint32_t> budgets);

}  // namespace kvscope
