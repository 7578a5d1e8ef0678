// One conversation for both front ends: `kvscope chat` and the window save
// and load the same JSON (a file saved by either opens in the other), render
// and encode it through the same PromptFormat, pin a system prompt by the
// same rule, and reuse what a session's cache holds by the same rule.
#pragma once
#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "kv/pins.h"
#include "models/chat_template.h"
#include "models/tokenizer.h"

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

// A conversation's messages as a prompt format renders them: the system
// prompt ("" for none), then user and assistant messages in order.
struct Dialogue {
  std::string system;
  std::vector<ChatMessage> messages;
  std::vector<ChatMessage> with_system() const;
};
// The turns' messages (a model turn is "assistant").
Dialogue dialogue_of(std::span<const Turn> turns);

// How a conversation becomes tokens: a chat template, or none — then it is
// plain text, one story that every user message extends (after a space) and
// every reply continues (completion models such as stories15M).
class PromptFormat {
 public:
  PromptFormat(const Tokenizer& tok, std::optional<ChatTemplate> tmpl);

  bool plain() const { return !template_; }
  // As written to a saved conversation: the family's name, or "none".
  std::string name() const;
  // The tokens that end a reply: the template's end-of-turn tokens, or EOS.
  bool is_stop(int32_t id) const;
  ChatPrompt render(const Dialogue& dialogue, bool add_generation_prompt) const;
  // The whole prompt for an empty session: BOS where the vocabulary wants
  // one and the template does not write it.
  std::vector<int32_t> encode_whole(const ChatPrompt& prompt) const;
  // The part of `prompt` from byte `from` on, for a session that holds the
  // rest: control tokens parsed only in the template's markup, as in the
  // whole prompt.
  std::vector<int32_t> encode_continuation(const ChatPrompt& prompt, size_t from) const;

  // The one pinning rule for a system prompt: the span at the start of
  // `whole` (the tokens of `dialogue` from an empty session) that its system
  // prompt, rendered and encoded alone, shares with it — a last token that
  // merges with what follows is left out. Empty without a system prompt.
  kv::PinnedSpans system_pins(const Dialogue& dialogue, std::span<const int32_t> whole) const;

 private:
  const Tokenizer* tok_;
  std::optional<ChatTemplate> template_;
  std::vector<int32_t> stop_ids_;
};

// The one prefix-reuse rule. A session's cache stands for `fed_text`, the
// conversation as rendered when it was fed (replies included; nullopt:
// unknown, e.g. after a failure). A conversation now rendered as `prompt`
// that starts with it needs only the tokens of what follows; otherwise (the
// template renders earlier turns differently, a message was edited, the
// session is empty) it is read whole from an empty cache.
struct FeedPlan {
  bool from_scratch = true;
  std::vector<int32_t> tokens;  // what to feed: the continuation, or everything
};
FeedPlan plan_feed(const PromptFormat& format, const ChatPrompt& prompt, const std::optional<std::string>& fed_text,
                   size_t held_tokens);

}  // namespace kvscope
