#include "app/core/thinking.h"

#include <algorithm>

namespace kvscope {

namespace {
constexpr std::string_view kOpen = "<think>", kClose = "</think>";

std::string_view trim(std::string_view s) {
  const size_t first = s.find_first_not_of(" \t\r\n");
  if (first == std::string_view::npos) return {};
  return s.substr(first, s.find_last_not_of(" \t\r\n") - first + 1);
}
}  // namespace

ThinkingSplit split_thinking(std::string_view reply, bool opened_by_prompt) {
  ThinkingSplit out;
  out.answer = reply;
  const size_t lead = reply.find_first_not_of(" \t\r\n");
  const bool opens = lead != std::string_view::npos && reply.substr(lead).starts_with(kOpen);
  if (!opens && !opened_by_prompt) return out;  // a <think> later in the text is the answer's own words
  std::string_view rest = opens ? reply.substr(lead + kOpen.size()) : reply;
  out.has_thinking = true;
  const size_t close = rest.find(kClose);
  if (close == std::string_view::npos) {
    out.open = true;
    out.thinking = trim(rest);
    out.answer = {};
    return out;
  }
  out.thinking = trim(rest.substr(0, close));
  std::string_view answer = rest.substr(close + kClose.size());
  answer.remove_prefix(std::min(answer.size(), answer.find_first_not_of("\r\n") == std::string_view::npos
                                                   ? answer.size()
                                                   : answer.find_first_not_of("\r\n")));
  out.answer = answer;
  return out;
}

}  // namespace kvscope
