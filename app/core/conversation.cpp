#include "app/core/conversation.h"

#include <algorithm>
#include <stdexcept>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

namespace kvscope {

kv::PinnedSpans system_prompt_pins(std::span<const int32_t> system_alone, std::span<const int32_t> whole) {
  size_t shared = 0;
  while (shared < system_alone.size() && shared < whole.size() && system_alone[shared] == whole[shared]) ++shared;
  if (shared == 0) return {};
  return kv::PinnedSpans({{0, static_cast<int32_t>(shared)}});
}

// ======================================================= conversation as JSON

namespace {

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
    c.tokens = j.at("tokens").get<std::vector<int32_t>>();
    for (const auto& t : j.at("turns")) {
      Turn turn;
      const std::string role = t.at("role").get<std::string>();
      if (role == "system") turn.role = Turn::Role::System;
      else if (role == "user") turn.role = Turn::Role::User;
      else if (role == "model") turn.role = Turn::Role::Model;
      else throw std::runtime_error(fmt::format("turn role \"{}\" is not system, user or model", role));
      turn.text = t.at("text").get<std::string>();
      turn.first_token = t.at("first_token").get<uint32_t>();
      turn.n_tokens = t.at("n_tokens").get<uint32_t>();
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

std::vector<ChatMessage> chat_messages(std::span<const Turn> turns) {
  std::vector<ChatMessage> messages;
  for (const Turn& t : turns)
    messages.push_back(
        {t.role == Turn::Role::System ? "system" : t.role == Turn::Role::User ? "user" : "assistant", t.text});
  return messages;
}

size_t reusable_prefix(std::span<const int32_t> held, std::span<const int32_t> rendered) {
  return rendered.size() >= held.size() && std::equal(held.begin(), held.end(), rendered.begin()) ? held.size() : 0;
}

}  // namespace kvscope
