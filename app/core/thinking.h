// A reply's thinking and its answer: reasoning models (Qwen 3, DeepSeek-R1)
// write their reasoning between <think> and </think> before the answer. The
// window folds that part and the CLI can hide it; both split a reply here.
#pragma once
#include <string_view>

namespace kvscope {

struct ThinkingSplit {
  std::string_view thinking;  // between the tags (without them), trimmed; empty: none
  std::string_view answer;    // after </think> (leading blank lines dropped), or the whole reply
  bool has_thinking = false;  // the reply has a thinking part (perhaps still being written)
  bool open = false;          // ... whose </think> has not come yet
};

// Splits `reply`. `opened_by_prompt`: the template's generation prompt
// already wrote <think> (DeepSeek-R1), so the reply starts inside it.
ThinkingSplit split_thinking(std::string_view reply, bool opened_by_prompt = false);

}  // namespace kvscope
