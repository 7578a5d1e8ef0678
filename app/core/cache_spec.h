// A KV cache named in one line: storage, eviction policy, pinned spans,
// --spill and --on-full. The window's session field, `--compare`,
// `kvscope eval --baseline`, saved conversations and report labels all read
// this grammar, and the command-line flags build the same CacheSpec
// (cache_spec_from_flags), so one validator (plan_cache) refuses the same
// caches with the same words in every front end.
//
//   spec    := part (" + " part)*            (spaces around '+' optional)
//   part    := storage                       f16 · q8,group=16 · k=q8,v=f16
//            | POLICY                        h2o:budget=64 · full (kv/policy.h)
//            | "pin=" START ":" END          a pinned span (repeatable)
//            | "on-full=" POLICY             with full or no policy: evict with POLICY once the context is full
//            | "spill" | "spill=" MIB        evicted entries to host memory (capped at MIB)
//   storage := item ("," item)*
//   item    := FORMAT                        keys and values in FORMAT
//            | "k=" FORMAT | "v=" FORMAT      keys / values only
//            | "group=" N                    quantization group along head_dim
//
// FORMAT is one of kv::format_names(); what a spec leaves unset is f16, so a
// policy alone ("h2o:budget=64") is that policy on f16. label() writes the
// spec back in this grammar, canonically.
#pragma once
#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "kv/cache.h"
#include "kv/pins.h"
#include "kv/policy.h"

namespace kvscope {

// Formats that store codes and scales rather than floats; only they have a
// group size.
bool is_quantized(kv::Format f);

struct CacheSpec {
  kv::Format k_format = kv::Format::F16;
  kv::Format v_format = kv::Format::F16;
  std::optional<uint32_t> group_size;  // unset: the format's default
  // The Hadamard rotation of quantized keys (kv::CacheConfig::hadamard);
  // unset: on. Only with quantized keys.
  std::optional<bool> hadamard;
  // Sparse-V (kv::CacheConfig::sparse_v): attention skips values weighted
  // below this; unset: off.
  std::optional<float> sparse_v;
  // The eviction policy in canonical form (kv::PolicySpec::text(), every
  // option spelled out), empty: none (keep every token until the context is full).
  std::string policy;
  // Tokens no policy may evict.
  kv::PinnedSpans pins;
  // With no policy or `full`: the policy that takes over once the context is
  // full (canonical text), empty: none.
  std::string on_full;
  // Evicted entries go to host memory and may be recalled (kv::CacheConfig::spill);
  // the cap in bytes, 0: none.
  bool spill = false;
  uint64_t spill_max_bytes = 0;

  // "f16", "k=f32,v=f16", "q8,group=16": the storage only.
  std::string name() const;
  // The whole spec: name(), then " + POLICY", " + pin=A:B", " + on-full=POLICY",
  // " + spill[=MIB]" for what is set. parse_cache_spec(label()) == *this.
  std::string label() const;
  // The parts that need no model: a group size needs a quantized format,
  // on-full needs no evicting policy, spill needs a policy. Throws
  // std::invalid_argument.
  void check() const;
  // The storage this spec describes with `capacity` slots (0: the model's
  // context, filled in by Session); check()s first.
  kv::CacheConfig config(uint32_t capacity) const;

  bool operator==(const CacheSpec&) const = default;
};

// Throws std::invalid_argument naming the part that is wrong and what is
// accepted there.
CacheSpec parse_cache_spec(std::string_view text);

// The command line's cache flags (run, chat, bench, eval, probe).
struct CacheFlags {
  std::string kv = "f16";            // --kv SPEC (the whole grammar above)
  std::string kv_k, kv_v;            // --kv-k, --kv-v FORMAT (empty: from --kv)
  std::optional<uint32_t> kv_group;  // --kv-group N
  std::string kv_hadamard;           // --kv-hadamard on|off, empty: as --kv says
  std::string kv_sparse_v;           // --kv-sparse-v T, empty: as --kv says
  std::string policy;                // --policy POLICY
  std::vector<std::string> pins;     // --pin START:END, repeatable
  std::string on_full;               // --on-full POLICY
  bool spill = false;                // --spill
  double spill_max_mb = 0;           // --spill-max-mb
};

// The spec those flags describe: --kv first, then each flag over it. Errors
// name the flag; then CacheSpec::check().
CacheSpec cache_spec_from_flags(const CacheFlags& flags);

// The one validator: a spec checked against the model's cache shape and a
// context of `capacity` slots, resolved into what a Session builds. Every
// front end goes through it (Session's constructor calls it), so a cache the
// CLI refuses is refused in the window with the same message, and a cache
// that is accepted runs as written.
struct CachePlan {
  kv::CacheConfig config;                // the storage, capacity filled in
  std::optional<kv::PolicySpec> policy;  // what the cache runs (on-full's policy when given), none: no eviction
  kv::PinnedSpans pins;                  // the spec's pins and the session's (a pinned system prompt)
};
// Throws std::invalid_argument saying what to change: an unknown format, a
// group that does not divide head_dim, a budget over the context or too small
// for its sinks, pins and recent window, an on-full policy whose budget is not
// the context, --spill without a policy or with kivi2 keys or rolling RoPE.
CachePlan plan_cache(const CacheSpec& spec, const kv::CacheShape& shape, uint32_t capacity,
                     const kv::PinnedSpans& extra_pins = {});

// The caches `kvscope eval --sweep` measures: every format of
// kv::all_formats() for keys and values alike, `group_size` applied to the
// quantized ones (an error when there are none).
std::vector<CacheSpec> sweep_specs(std::optional<uint32_t> group_size);

// Every eviction policy of the registry that has a sweep form
// (kv::policy_at_budget) at each budget, on f16: what `--sweep` adds after
// the formats.
std::vector<CacheSpec> policy_sweep_specs(std::span<const uint32_t> budgets);

}  // namespace kvscope
