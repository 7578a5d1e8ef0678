#include "kv/pins.h"

#include <algorithm>
#include <charconv>
#include <stdexcept>

#include <fmt/format.h>

namespace kvscope::kv {

namespace {
bool parse_position(std::string_view text, int32_t& out) {
  if (text.empty()) return false;
  const auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), out);
  return ec == std::errc() && end == text.data() + text.size() && out >= 0;
}
}  // namespace

PinnedSpan parse_pinned_span(std::string_view text) {
  const auto colon = text.find(':');
  PinnedSpan span;
  if (colon == std::string_view::npos || !parse_position(text.substr(0, colon), span.begin) ||
      !parse_position(text.substr(colon + 1), span.end))
    throw std::invalid_argument(fmt::format(
        "pinned span '{}': expected START:END, two token positions >= 0 (END excluded), e.g. 0:16", text));
  if (span.end <= span.begin)
    throw std::invalid_argument(fmt::format(
        "pinned span '{}': END must be greater than START (END is excluded: 0:16 pins positions 0..15)", text));
  return span;
}

std::string to_string(const PinnedSpan& span) { return fmt::format("{}:{}", span.begin, span.end); }

PinnedSpans::PinnedSpans(std::vector<PinnedSpan> spans) {
  for (const auto& s : spans) add(s);
}

void PinnedSpans::add(PinnedSpan span) {
  if (span.size() == 0) return;
  // Merge with every span it overlaps or touches, then insert in order.
  std::vector<PinnedSpan> merged;
  for (const auto& s : spans_) {
    if (s.end < span.begin || span.end < s.begin) {
      merged.push_back(s);
    } else {
      span.begin = std::min(span.begin, s.begin);
      span.end = std::max(span.end, s.end);
    }
  }
  merged.push_back(span);
  std::sort(merged.begin(), merged.end(), [](const auto& a, const auto& b) { return a.begin < b.begin; });
  spans_ = std::move(merged);
}

bool PinnedSpans::contains(int32_t position) const {
  // Few spans: a linear scan is the clearest and fast enough.
  for (const auto& s : spans_)
    if (position >= s.begin && position < s.end) return true;
  return false;
}

uint32_t PinnedSpans::count() const {
  uint32_t n = 0;
  for (const auto& s : spans_) n += s.size();
  return n;
}

}  // namespace kvscope::kv
