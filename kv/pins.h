// Pinned spans: token positions that no eviction policy may drop (a system
// prompt, a constraint, a tool schema). They count toward the budget like
// any other live token, so a policy has that much less room for the rest.
#pragma once
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace kvscope::kv {

// Positions [begin, end): half-open, like a slice, so `--pin 0:16` pins the
// first 16 tokens.
struct PinnedSpan {
  int32_t begin = 0;
  int32_t end = 0;
  uint32_t size() const { return end > begin ? static_cast<uint32_t>(end - begin) : 0; }
  bool operator==(const PinnedSpan&) const = default;
};

// "START:END" (both >= 0, START < END). Throws std::invalid_argument that
// quotes the text and says what is expected.
PinnedSpan parse_pinned_span(std::string_view text);
std::string to_string(const PinnedSpan& span);  // "START:END"

// A set of spans kept sorted and merged, so `count()` is the number of
// distinct pinned positions.
class PinnedSpans {
 public:
  PinnedSpans() = default;
  explicit PinnedSpans(std::vector<PinnedSpan> spans);
  void add(PinnedSpan span);
  bool contains(int32_t position) const;
  uint32_t count() const;  // distinct positions pinned
  const std::vector<PinnedSpan>& spans() const { return spans_; }
  bool operator==(const PinnedSpans&) const = default;
  bool empty() const { return spans_.empty(); }

 private:
  std::vector<PinnedSpan> spans_;  // sorted by begin, disjoint, not touching
};

}  // namespace kvscope::kv
