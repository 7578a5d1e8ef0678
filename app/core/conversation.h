// One conversation for both front ends: `kvscope chat` and the window save
// and load the same JSON (a file saved by either opens in the other), pin a
// system prompt by the same rule, and reuse a cache's tokens by the same rule.
#pragma once
#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "kv/pins.h"
#include "models/chat_template.h"

namespace kvscope {

// One message of a conversation. A completion model has no chat template:
// the user's text and the model's reply are appended to one token stream.
struct Turn {
  enum class Role { System, User, Model };
  Role role = Role::User;
  std::string text;
  uint32_t first_token = 0;  // index of its first token in the context
  uint32_t n_tokens = 0;
  double ttft_seconds = 0;   // Model: command start -> first token
  double tok_s = 0;          // Model: decode tokens per second after the first
  bool streaming = false;    // Model: still being written
  bool stopped = false;      // Model: stopped by the user
};

// A conversation as saved to and loaded from JSON (write_conversation_json):
//   {"kvscope_conversation": 1, "model": PATH, "cache": SPEC, "template": NAME,
//    "pins": ["A:B", ...], "turns": [{"role": "system"|"user"|"model", "text",
//    "first_token", "n_tokens", ...}], "tokens": [ids of the whole context]}
struct Conversation {
  std::string model;          // the model file it was written with
  std::string cache;          // CacheSpec::label()
  std::string chat_template;  // the template family's name, "none", or "" (unknown)
  std::vector<Turn> turns;
  std::vector<int32_t> tokens;  // the context, exactly
  kv::PinnedSpans pins;
};
std::string write_conversation_json(const Conversation& c);
// Throws std::runtime_error naming `source_name` and what is wrong.
Conversation read_conversation_json(const std::string& text, const std::string& source_name);

// The turns as a chat template's messages (a model turn is "assistant").
std::vector<ChatMessage> chat_messages(std::span<const Turn> turns);

// The one pinning rule for a system prompt: the span at the start of `whole`
// (the conversation's tokens) that the system prompt encoded alone
// (`system_alone`, as the chat template renders it, or as plain text) shares
// with it — a last token that merges with what follows is left out. Empty
// when they share nothing.
kv::PinnedSpans system_prompt_pins(std::span<const int32_t> system_alone, std::span<const int32_t> whole);

// The one prefix-reuse rule: how many of the `held` tokens (what a session's
// cache holds) a conversation now rendered as `rendered` can keep — all of
// them when they are its beginning, else none (the conversation is read
// again from an empty cache, e.g. after another template was chosen).
size_t reusable_prefix(std::span<const int32_t> held, std::span<const int32_t> rendered);

}  // namespace kvscope
