#include "app/core/conversation.h"

#include <algorithm>
#include <climits>
#include <cstdint>
#include <stdexcept>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

namespace kvscope {

// ======================================================= conversation as JSON

namespace {

// An integer of the JSON in [lo, hi]: a float, a string or a number out of
// range is refused by name, never converted (nlohmann's get<int> of 1e64 is
// undefined behaviour; fuzz_conversation found it).
int64_t integer_in(const nlohmann::json& v, int64_t lo, int64_t hi, const std::string& what) {
  if (v.is_number_unsigned() && v.get<uint64_t>() <= static_cast<uint64_t>(hi)) {
    const auto x = static_cast<int64_t>(v.get<uint64_t>());
    if (x >= lo) return x;
  } else if (v.is_number_integer() && !v.is_number_unsigned()) {
    const auto x = v.get<int64_t>();
    if (x >= lo && x <= hi) return x;
  }
  throw std::runtime_error(fmt::format("{} is {}, expected a whole number from {} to {}", what, v.dump(), lo, hi));
}

const char* role_name(Turn::Role role) {
  return role == Turn::Role::System ? "system" : role == Turn::Role::User ? "user" : "model";
}

}  // namespace

std::string write_conversation_json(const Conversation& c) {
  nlohmann::ordered_json j;
  j["kvscope_conversation"] = 1;
  j["model"] = c.model;
  j["cache"] = c.cache;
  j["template"] = c.chat_template;
  nlohmann::ordered_json pins = nlohmann::ordered_json::array();
  for (const kv::PinnedSpan& span : c.pins.spans()) pins.push_back(kv::to_string(span));
  j["pins"] = pins;
  j["turns"] = nlohmann::ordered_json::array();
  for (const Turn& t : c.turns)
    j["turns"].push_back({{"role", role_name(t.role)},
                          {"text", t.text},
                          {"first_token", t.first_token},
                          {"n_tokens", t.n_tokens},
                          {"ttft_seconds", t.ttft_seconds},
                          {"tok_s", t.tok_s},
                          {"stopped", t.stopped}});
  j["tokens"] = c.tokens;
  return j.dump(1) + "\n";
}

Conversation read_conversation_json(const std::string& text, const std::string& source_name) {
  Conversation c;
  try {
    const nlohmann::json j = nlohmann::json::parse(text);
    if (!j.contains("kvscope_conversation"))
      throw std::runtime_error("not a kvscope conversation (no \"kvscope_conversation\" field)");
    c.model = j.value("model", "");
    c.cache = j.value("cache", "");
    c.chat_template = j.value("template", "");
    for (const auto& span : j.at("pins")) c.pins.add(kv::parse_pinned_span(span.get<std::string>()));
    const nlohmann::json& tokens = j.at("tokens");
    if (!tokens.is_array()) throw std::runtime_error("\"tokens\" is not an array of token ids");
    c.tokens.reserve(tokens.size());
    for (size_t i = 0; i < tokens.size(); ++i)
      c.tokens.push_back(static_cast<int32_t>(integer_in(tokens[i], 0, INT32_MAX, fmt::format("tokens[{}]", i))));
    for (const auto& t : j.at("turns")) {
      Turn turn;
      const std::string role = t.at("role").get<std::string>();
      if (role == "system") turn.role = Turn::Role::System;
      else if (role == "user") turn.role = Turn::Role::User;
      else if (role == "model") turn.role = Turn::Role::Model;
      else throw std::runtime_error(fmt::format("turn role \"{}\" is not system, user or model", role));
      turn.text = t.at("text").get<std::string>();
      turn.first_token = static_cast<uint32_t>(integer_in(t.at("first_token"), 0, UINT32_MAX, "a turn's first_token"));
      turn.n_tokens = static_cast<uint32_t>(integer_in(t.at("n_tokens"), 0, UINT32_MAX, "a turn's n_tokens"));
      turn.ttft_seconds = t.value("ttft_seconds", 0.0);
      turn.tok_s = t.value("tok_s", 0.0);
      turn.stopped = t.value("stopped", false);
      if (size_t{turn.first_token} + turn.n_tokens > c.tokens.size())
        throw std::runtime_error(fmt::format("a turn spans tokens {}..{} but the context has {}", turn.first_token,
                                             turn.first_token + turn.n_tokens, c.tokens.size()));
      c.turns.push_back(std::move(turn));
    }
  } catch (const std::exception& e) {
    throw std::runtime_error(fmt::format("{}: {}; save a conversation from the window to see the format",
                                         source_name, e.what()));
  }
  return c;
}

// ============================================================ prompt format

std::vector<ChatMessage> Dialogue::with_system() const {
  std::vector<ChatMessage> all;
  if (!system.empty()) all.push_back({"system", system});
  all.insert(all.end(), messages.begin(), messages.end());
  return all;
}

Dialogue dialogue_of(std::span<const Turn> turns) {
  Dialogue d;
  for (const Turn& t : turns) {
    if (t.role == Turn::Role::System) d.system = t.text;
    else d.messages.push_back({t.role == Turn::Role::User ? "user" : "assistant", t.text});
  }
  return d;
}

PromptFormat::PromptFormat(const Tokenizer& tok, std::optional<ChatTemplate> tmpl)
    : tok_(&tok), template_(std::move(tmpl)) {
  if (template_) {
    stop_ids_ = stop_token_ids(*template_, tok);
  } else if (tok.eos() >= 0) {
    stop_ids_ = {tok.eos()};
  }
}

std::string PromptFormat::name() const {
  return template_ ? std::string(chat_family_name(template_->family)) : "none";
}

bool PromptFormat::is_stop(int32_t id) const {
  return std::find(stop_ids_.begin(), stop_ids_.end(), id) != stop_ids_.end();
}

ChatPrompt PromptFormat::render(const Dialogue& dialogue, bool add_generation_prompt) const {
  if (template_)
    return render_chat(*template_, dialogue.with_system(), add_generation_prompt, ChatTokens::from(*tok_));
  ChatPrompt prompt;
  prompt.text = dialogue.system;
  for (const ChatMessage& m : dialogue.messages) {
    if (m.role == "user" && !prompt.text.empty() && prompt.text.back() != ' ' && prompt.text.back() != '\n')
      prompt.text += ' ';
    prompt.text += m.content;
  }
  return prompt;
}

std::vector<int32_t> PromptFormat::encode_whole(const ChatPrompt& prompt) const {
  if (template_) {
    const bool add_bos = tok_->wants_bos() && !template_writes_bos(template_->family);
    return tok_->encode_with_markup(prompt.text, add_bos, prompt.markup);
  }
  return tok_->encode(prompt.text, tok_->wants_bos());
}

std::vector<int32_t> PromptFormat::encode_continuation(const ChatPrompt& prompt, size_t from) const {
  std::string_view part = std::string_view(prompt.text).substr(from);
  std::vector<TextSpan> markup;
  for (const TextSpan& s : prompt.markup) {
    if (s.end <= from) continue;
    markup.push_back({std::max(s.begin, from) - from, s.end - from});
  }
  // SentencePiece puts a space in front of the text it is given; the
  // separating space of plain text is that space.
  if (plain() && tok_->kind() == TokenizerKind::SentencePiece && part.starts_with(' ')) part.remove_prefix(1);
  return tok_->encode_with_markup(part, false, markup);
}

kv::PinnedSpans PromptFormat::system_pins(const Dialogue& dialogue, std::span<const int32_t> whole) const {
  if (dialogue.system.empty()) return {};
  Dialogue system_only;
  system_only.system = dialogue.system;
  const std::vector<int32_t> alone = encode_whole(render(system_only, false));
  size_t shared = 0;
  while (shared < alone.size() && shared < whole.size() && alone[shared] == whole[shared]) ++shared;
  if (shared == 0) return {};
  return kv::PinnedSpans({{0, static_cast<int32_t>(shared)}});
}

FeedPlan plan_feed(const PromptFormat& format, const ChatPrompt& prompt, const std::optional<std::string>& fed_text,
                   size_t held_tokens) {
  FeedPlan plan;
  plan.from_scratch = held_tokens == 0 || !fed_text || !prompt.text.starts_with(*fed_text);
  plan.tokens = plan.from_scratch ? format.encode_whole(prompt) : format.encode_continuation(prompt, fed_text->size());
  return plan;
}

}  // namespace kvscope
