// Chat template families: detection, names, and formatting.
//
// Each formatter follows the family's reference Jinja template line by line
// (quoted in the comments); the tests hold them to strings derived from the
// real templates in tests/data/chat-templates/.
//
// [SECTION] names
// [SECTION] detection
// [SECTION] formatting, one function per family
// [SECTION] tokens: BOS, stop tokens, encode
#include "models/chat_template.h"

#include <fmt/format.h>

#include <algorithm>
#include <stdexcept>

namespace kvscope {

// ======================================================================
// [SECTION] names
// ======================================================================

namespace {

struct NamedFamily {
  std::string_view name;
  ChatFamily family;
};

// The first name of each family is its canonical one.
constexpr NamedFamily kNames[] = {
    {"chatml", ChatFamily::ChatML},          {"qwen", ChatFamily::ChatML},  {"qwen3", ChatFamily::ChatML},
    {"llama3", ChatFamily::Llama3},          {"llama3.1", ChatFamily::Llama31},
    {"llama2", ChatFamily::Llama2},          {"mistral-v1", ChatFamily::MistralV1},
    {"mistral-v3", ChatFamily::MistralV3},   {"mistral-tekken", ChatFamily::MistralTekken},
    {"mistral-nemo", ChatFamily::MistralTekken}, {"zephyr", ChatFamily::Zephyr},
    {"tinyllama", ChatFamily::Zephyr},       {"gemma", ChatFamily::Gemma},
    {"phi3", ChatFamily::Phi3},              {"deepseek-r1", ChatFamily::DeepSeekR1},
};

constexpr std::string_view kQwenDefaultSystem = "You are Qwen, created by Alibaba Cloud. You are a helpful assistant.";

bool contains(std::string_view text, std::string_view part) { return text.find(part) != std::string_view::npos; }

}  // namespace

std::vector<std::string_view> chat_template_names() {
  std::vector<std::string_view> names;
  for (const NamedFamily& n : kNames) names.push_back(n.name);
  return names;
}

std::string_view chat_family_name(ChatFamily family) {
  for (const NamedFamily& n : kNames) {
    if (n.family == family) return n.name;
  }
  return "unknown";
}

ChatTemplate chat_template_by_name(std::string_view name) {
  for (const NamedFamily& n : kNames) {
    if (n.name != name) continue;
    ChatTemplate tmpl;
    tmpl.family = n.family;
    if (name == "qwen") tmpl.default_system = kQwenDefaultSystem;
    if (name == "qwen3") tmpl.thinking = true;
    return tmpl;
  }
  std::string known;
  for (std::string_view n : chat_template_names()) known += fmt::format("{}{}", known.empty() ? "" : ", ", n);
  throw std::invalid_argument(fmt::format("unknown chat template \"{}\"; known: {}", name, known));
}

// ======================================================================
// [SECTION] detection
// ======================================================================

ChatTemplate detect_chat_template(std::string_view jinja) {
  ChatTemplate tmpl;
  auto fallback = [&](std::string reason) {
    tmpl.family = ChatFamily::ChatML;
    tmpl.fallback = true;
    std::string known;
    for (std::string_view n : chat_template_names()) known += fmt::format("{}{}", known.empty() ? "" : ", ", n);
    tmpl.warning = fmt::format("{}; formatting the conversation as ChatML, which may not be what this model was "
                               "trained on. Choose one with --chat-template NAME ({})",
                               reason, known);
    return tmpl;
  };
  if (jinja.empty()) return fallback("the model has no tokenizer.chat_template");

  // Markers are the literal turn tokens each family writes; the order matters
  // only where templates share tokens (Phi-3 and Zephyr both write <|user|>).
  if (contains(jinja, "<|im_start|>")) {
    tmpl.family = ChatFamily::ChatML;
    if (contains(jinja, kQwenDefaultSystem)) tmpl.default_system = kQwenDefaultSystem;
    tmpl.thinking = contains(jinja, "</think>");  // Qwen 3 (and QwQ): reasoning folded out of past turns
    return tmpl;
  }
  if (contains(jinja, "<\xEF\xBD\x9C" "Assistant\xEF\xBD\x9C>")) {  // "<｜Assistant｜>", full-width bars
    tmpl.family = ChatFamily::DeepSeekR1;
    return tmpl;
  }
  if (contains(jinja, "<|start_header_id|>")) {
    // Llama 3.1 and later always write a system header with the dates.
    const bool dated = contains(jinja, "Cutting Knowledge Date") && contains(jinja, "Today Date");
    tmpl.family = dated ? ChatFamily::Llama31 : ChatFamily::Llama3;
    return tmpl;
  }
  if (contains(jinja, "<start_of_turn>")) {
    tmpl.family = ChatFamily::Gemma;
    return tmpl;
  }
  if (contains(jinja, "<|user|>")) {
    tmpl.family = contains(jinja, "<|end|>") ? ChatFamily::Phi3 : ChatFamily::Zephyr;
    return tmpl;
  }
  if (contains(jinja, "[INST]")) {
    if (contains(jinja, "<<SYS>>")) tmpl.family = ChatFamily::Llama2;
    else if (contains(jinja, " [/INST]")) tmpl.family = ChatFamily::MistralV1;
    else if (contains(jinja, "[INST] ")) tmpl.family = ChatFamily::MistralV3;
    else tmpl.family = ChatFamily::MistralTekken;
    return tmpl;
  }
  return fallback("tokenizer.chat_template is not a format kvscope recognizes");
}

ChatTemplate chat_template_for(const GgufFile& file, std::string_view override_name) {
  if (!override_name.empty()) return chat_template_by_name(override_name);
  return detect_chat_template(file.get_string_or("tokenizer.chat_template", ""));
}

// ======================================================================
// [SECTION] formatting, one function per family
// ======================================================================

namespace {

// Jinja's `trim` / Python's strip(): ASCII whitespace at both ends.
std::string trim(std::string_view s) {
  const auto is_space = [](char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' || c == '\v'; };
  size_t begin = 0, end = s.size();
  while (begin < end && is_space(s[begin])) ++begin;
  while (end > begin && is_space(s[end - 1])) --end;
  return std::string(s.substr(begin, end - begin));
}

// Appends template text (markup) and message text (content) to a prompt,
// remembering which is which.
class PromptBuilder {
 public:
  PromptBuilder& markup(std::string_view s) {
    if (s.empty()) return *this;
    const size_t begin = prompt_.text.size();
    prompt_.text += s;
    if (!prompt_.markup.empty() && prompt_.markup.back().end == begin) prompt_.markup.back().end = prompt_.text.size();
    else prompt_.markup.push_back({begin, prompt_.text.size()});
    return *this;
  }
  PromptBuilder& content(std::string_view s) {
    prompt_.text += s;
    return *this;
  }
  ChatPrompt take() { return std::move(prompt_); }

 private:
  ChatPrompt prompt_;
};

// The conversation split the way most templates do: an optional leading
// system message, then the turns.
struct Split {
  const ChatMessage* system = nullptr;
  std::span<const ChatMessage> turns;
};

Split split_system(std::span<const ChatMessage> messages) {
  Split split{nullptr, messages};
  if (!messages.empty() && messages.front().role == "system") {
    split.system = &messages.front();
    split.turns = messages.subspan(1);
  }
  return split;
}

// "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' +
//  message['content'] + '<|im_end|>' + '\n'}}{% endfor %}
//  {% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
// plus Qwen 2.5's default system message when there is none.
//
// Qwen 3 (tmpl.thinking): an assistant message before the last user message
// keeps only what follows its last "</think>" (newlines at its start
// dropped); one after it (the reply being continued) is written
// "<think>\n" + its reasoning + "\n</think>\n\n" + the answer, when it is
// the last message or has reasoning.
void format_chatml(PromptBuilder& out, const ChatTemplate& tmpl, std::span<const ChatMessage> messages, bool gen) {
  const bool has_system = !messages.empty() && messages.front().role == "system";
  if (!has_system && !tmpl.default_system.empty()) {
    out.markup("<|im_start|>system\n" + tmpl.default_system + "<|im_end|>\n");
  }
  // The index of the last user message (the template's ns.last_query_index,
  // which starts at the last message).
  size_t last_query = messages.empty() ? 0 : messages.size() - 1;
  for (size_t i = messages.size(); i-- > 0;)
    if (messages[i].role == "user") {
      last_query = i;
      break;
    }
  constexpr std::string_view kOpen = "<think>", kClose = "</think>";
  auto strip = [](std::string_view v, bool front, bool back) {
    while (front && !v.empty() && v.front() == '\n') v.remove_prefix(1);
    while (back && !v.empty() && v.back() == '\n') v.remove_suffix(1);
    return v;
  };
  for (size_t i = 0; i < messages.size(); ++i) {
    const ChatMessage& m = messages[i];
    std::string_view content = m.content;
    if (!tmpl.thinking || m.role != "assistant" || content.find(kClose) == std::string_view::npos) {
      out.markup("<|im_start|>" + m.role + "\n").content(content).markup("<|im_end|>\n");
      continue;
    }
    // content.split('</think>')[0].rstrip('\n').split('<think>')[-1].lstrip('\n'), and [-1].lstrip('\n')
    std::string_view reasoning = strip(content.substr(0, content.find(kClose)), false, true);
    if (const size_t open = reasoning.rfind(kOpen); open != std::string_view::npos)
      reasoning.remove_prefix(open + kOpen.size());
    reasoning = strip(reasoning, true, false);
    const std::string_view answer = strip(content.substr(content.rfind(kClose) + kClose.size()), true, false);
    const bool after_query = i > last_query;
    if (after_query && (i + 1 == messages.size() || !reasoning.empty())) {
      out.markup("<|im_start|>assistant\n<think>\n").content(strip(reasoning, true, true)).markup("\n</think>\n\n");
      out.content(answer).markup("<|im_end|>\n");
    } else {
      out.markup("<|im_start|>assistant\n").content(answer).markup("<|im_end|>\n");
    }
  }
  if (gen) out.markup("<|im_start|>assistant\n");
}

// bos_token, then per message "<|start_header_id|>" + role +
// "<|end_header_id|>\n\n" + content | trim + "<|eot_id|>". Llama 3.1 always
// writes the system header first, with "Cutting Knowledge Date: December
// 2023\nToday Date: " + date_string + "\n\n" before the (trimmed) system text.
void format_llama3(PromptBuilder& out, const ChatTemplate& tmpl, std::span<const ChatMessage> messages, bool gen,
                   const ChatTokens& tokens) {
  out.markup(tokens.bos);
  std::span<const ChatMessage> turns = messages;
  if (tmpl.family == ChatFamily::Llama31) {
    const Split split = split_system(messages);
    out.markup("<|start_header_id|>system<|end_header_id|>\n\n");
    out.markup("Cutting Knowledge Date: December 2023\nToday Date: " + tmpl.date_string + "\n\n");
    if (split.system) out.content(trim(split.system->content));
    out.markup("<|eot_id|>");
    turns = split.turns;
  }
  for (const ChatMessage& m : turns) {
    out.markup("<|start_header_id|>" + m.role + "<|end_header_id|>\n\n").content(trim(m.content)).markup("<|eot_id|>");
  }
  if (gen) out.markup("<|start_header_id|>assistant<|end_header_id|>\n\n");
}

// Llama 2 chat: the system text joins the first user message inside
// <<SYS>> markers; each user turn is bos_token + "[INST] " + content.strip()
// + " [/INST]", each assistant turn " " + content.strip() + " " + eos_token.
// The template has no generation prompt: the model answers after [/INST].
void format_llama2(PromptBuilder& out, std::span<const ChatMessage> messages, const ChatTokens& tokens) {
  const Split split = split_system(messages);
  for (size_t i = 0; i < split.turns.size(); ++i) {
    const ChatMessage& m = split.turns[i];
    if (m.role == "user") {
      out.markup(tokens.bos + "[INST] ");
      // strip() applies to "<<SYS>>...<</SYS>>\n\n" + content as one string,
      // so only the content's end can lose whitespace after a system block.
      if (i == 0 && split.system) {
        out.markup("<<SYS>>\n").content(split.system->content).markup("\n<</SYS>>\n\n");
        const std::string stripped = trim("x" + m.content);
        out.content(std::string_view(stripped).substr(1));
      } else {
        out.content(trim(m.content));
      }
      out.markup(" [/INST]");
    } else {
      out.markup(" ").content(trim(m.content)).markup(" " + tokens.eos);
    }
  }
}

// Mistral: bos_token once, then user turns in [INST] and assistant turns
// followed by eos_token; no generation prompt.
//   v1 (7B v0.1/v0.2): "[INST] " + content + " [/INST]", assistant content
//      as is. Its template refuses a system message; like llama.cpp we put
//      it before the first user message, separated by a blank line.
//   v3 (7B v0.3): "{%- if loop.last and system_message is defined %}": the
//      system text goes before the user message that is the LAST message
//      ("[INST] " + system + "\n\n" + content + "[/INST]"), and nowhere when
//      the conversation ends with the assistant; assistant turns are
//      " " + content | trim.
//   tekken (Nemo): as v3 without the spaces and without trim.
void format_mistral(PromptBuilder& out, ChatFamily family, std::span<const ChatMessage> messages,
                    const ChatTokens& tokens) {
  const Split split = split_system(messages);
  size_t system_turn = split.turns.size();  // none
  if (family == ChatFamily::MistralV1) {
    for (size_t i = 0; i < split.turns.size() && system_turn == split.turns.size(); ++i) {
      if (split.turns[i].role == "user") system_turn = i;
    }
  } else if (!split.turns.empty() && split.turns.back().role == "user") {
    system_turn = split.turns.size() - 1;
  }
  out.markup(tokens.bos);
  for (size_t i = 0; i < split.turns.size(); ++i) {
    const ChatMessage& m = split.turns[i];
    if (m.role == "user") {
      out.markup(family == ChatFamily::MistralTekken ? "[INST]" : "[INST] ");
      if (split.system && i == system_turn) out.content(split.system->content).markup("\n\n");
      out.content(m.content);
      out.markup(family == ChatFamily::MistralV1 ? " [/INST]" : "[/INST]");
    } else if (family == ChatFamily::MistralV3) {
      out.markup(" ").content(trim(m.content)).markup(tokens.eos);
    } else {
      out.content(m.content).markup(tokens.eos);
    }
  }
}

// Zephyr (rendered with trim_blocks, as Hugging Face does): each message
// "<|" + role + "|>\n" + content + eos_token + "\n"; generation prompt
// "<|assistant|>\n".
void format_zephyr(PromptBuilder& out, std::span<const ChatMessage> messages, bool gen, const ChatTokens& tokens) {
  for (const ChatMessage& m : messages) out.markup("<|" + m.role + "|>\n").content(m.content).markup(tokens.eos + "\n");
  if (gen) out.markup("<|assistant|>\n");
}

// Gemma: bos_token, then "<start_of_turn>" + role ("model" for the
// assistant) + "\n" + content | trim + "<end_of_turn>\n"; generation prompt
// "<start_of_turn>model\n". The template refuses a system role; like
// llama.cpp we put the system text before the first user message, separated
// by a blank line (and trim the two together).
void format_gemma(PromptBuilder& out, std::span<const ChatMessage> messages, bool gen, const ChatTokens& tokens) {
  const Split split = split_system(messages);
  out.markup(tokens.bos);
  bool system_pending = split.system != nullptr;
  for (const ChatMessage& m : split.turns) {
    std::string content = m.content;
    if (system_pending && m.role == "user") {
      content = split.system->content + "\n\n" + content;
      system_pending = false;
    }
    const std::string role = m.role == "assistant" ? "model" : m.role;
    out.markup("<start_of_turn>" + role + "\n").content(trim(content)).markup("<end_of_turn>\n");
  }
  if (gen) out.markup("<start_of_turn>model\n");
}

// Phi-3.5: "<|" + role + "|>\n" + content + "<|end|>\n" (a system message
// only when not empty); then "<|assistant|>\n" as generation prompt, or
// eos_token when there is none.
void format_phi3(PromptBuilder& out, std::span<const ChatMessage> messages, bool gen, const ChatTokens& tokens) {
  for (const ChatMessage& m : messages) {
    if (m.role == "system" && m.content.empty()) continue;
    out.markup("<|" + m.role + "|>\n").content(m.content).markup("<|end|>\n");
  }
  out.markup(gen ? "<|assistant|>\n" : tokens.eos);
}

// DeepSeek-R1 (and its Llama/Qwen distills): bos_token + the system text
// bare, then "<｜User｜>" + content, and "<｜Assistant｜>" + the content after
// the last "</think>" + "<｜end▁of▁sentence｜>"; generation prompt
// "<｜Assistant｜><think>\n".
void format_deepseek_r1(PromptBuilder& out, std::span<const ChatMessage> messages, bool gen,
                        const ChatTokens& tokens) {
  constexpr std::string_view kUser = "<\xEF\xBD\x9CUser\xEF\xBD\x9C>";
  constexpr std::string_view kAssistant = "<\xEF\xBD\x9C" "Assistant\xEF\xBD\x9C>";
  constexpr std::string_view kEnd = "<\xEF\xBD\x9C" "end\xE2\x96\x81of\xE2\x96\x81sentence\xEF\xBD\x9C>";
  std::string_view system;  // the template keeps the last system message
  for (const ChatMessage& m : messages) {
    if (m.role == "system") system = m.content;
  }
  out.markup(tokens.bos).content(system);
  for (const ChatMessage& m : messages) {
    if (m.role == "user") {
      out.markup(kUser).content(m.content);
    } else if (m.role == "assistant") {
      std::string_view content = m.content;
      const size_t think_end = content.rfind("</think>");
      if (think_end != std::string_view::npos) content.remove_prefix(think_end + std::string_view("</think>").size());
      out.markup(kAssistant).content(content).markup(kEnd);
    }
  }
  if (gen) out.markup(std::string(kAssistant) + "<think>\n");
}

}  // namespace

ChatPrompt render_chat(const ChatTemplate& tmpl, std::span<const ChatMessage> messages, bool add_generation_prompt,
                       const ChatTokens& tokens) {
  for (const ChatMessage& m : messages) {
    if (m.role != "system" && m.role != "user" && m.role != "assistant") {
      throw std::invalid_argument(fmt::format("chat message role \"{}\" is not one of system, user, assistant", m.role));
    }
  }
  PromptBuilder out;
  const bool gen = add_generation_prompt;
  switch (tmpl.family) {
    case ChatFamily::ChatML: format_chatml(out, tmpl, messages, gen); break;
    case ChatFamily::Llama3:
    case ChatFamily::Llama31: format_llama3(out, tmpl, messages, gen, tokens); break;
    case ChatFamily::Llama2: format_llama2(out, messages, tokens); break;
    case ChatFamily::MistralV1:
    case ChatFamily::MistralV3:
    case ChatFamily::MistralTekken: format_mistral(out, tmpl.family, messages, tokens); break;
    case ChatFamily::Zephyr: format_zephyr(out, messages, gen, tokens); break;
    case ChatFamily::Gemma: format_gemma(out, messages, gen, tokens); break;
    case ChatFamily::Phi3: format_phi3(out, messages, gen, tokens); break;
    case ChatFamily::DeepSeekR1: format_deepseek_r1(out, messages, gen, tokens); break;
  }
  return out.take();
}

std::string format_chat(const ChatTemplate& tmpl, std::span<const ChatMessage> messages, bool add_generation_prompt,
                        const ChatTokens& tokens) {
  return render_chat(tmpl, messages, add_generation_prompt, tokens).text;
}

// ======================================================================
// [SECTION] tokens: BOS, stop tokens, encode
// ======================================================================

ChatTokens ChatTokens::from(const Tokenizer& tok) {
  ChatTokens tokens;
  if (tok.bos() >= 0) tokens.bos = tok.piece(tok.bos());
  if (tok.eos() >= 0) tokens.eos = tok.piece(tok.eos());
  return tokens;
}

bool template_writes_bos(ChatFamily family) {
  switch (family) {
    case ChatFamily::ChatML:
    case ChatFamily::Zephyr:
    case ChatFamily::Phi3: return false;
    default: return true;
  }
}

std::vector<int32_t> encode_chat(const ChatTemplate& tmpl, std::span<const ChatMessage> messages,
                                 bool add_generation_prompt, const Tokenizer& tok) {
  const ChatPrompt prompt = render_chat(tmpl, messages, add_generation_prompt, ChatTokens::from(tok));
  const bool add_bos = tok.wants_bos() && !template_writes_bos(tmpl.family);
  return tok.encode_with_markup(prompt.text, add_bos, prompt.markup);
}

std::vector<std::string> stop_strings(const ChatTemplate& tmpl, const ChatTokens& tokens) {
  std::vector<std::string> stops;
  switch (tmpl.family) {
    case ChatFamily::ChatML: stops = {"<|im_end|>", "<|endoftext|>"}; break;
    case ChatFamily::Llama3:
    case ChatFamily::Llama31: stops = {"<|eot_id|>", "<|eom_id|>", "<|end_of_text|>"}; break;
    case ChatFamily::Gemma: stops = {"<end_of_turn>"}; break;
    case ChatFamily::Phi3: stops = {"<|end|>", "<|endoftext|>"}; break;
    case ChatFamily::DeepSeekR1: stops = {"<\xEF\xBD\x9C" "end\xE2\x96\x81of\xE2\x96\x81sentence\xEF\xBD\x9C>"}; break;
    default: break;  // Llama 2, Mistral, Zephyr: the end of a turn is eos_token
  }
  if (!tokens.eos.empty() && std::find(stops.begin(), stops.end(), tokens.eos) == stops.end()) {
    stops.push_back(tokens.eos);
  }
  return stops;
}

std::vector<int32_t> stop_token_ids(const ChatTemplate& tmpl, const Tokenizer& tok) {
  std::vector<int32_t> ids;
  for (const std::string& text : stop_strings(tmpl, ChatTokens::from(tok))) {
    const int32_t id = tok.token_id(text);
    if (id >= 0 && std::find(ids.begin(), ids.end(), id) == ids.end()) ids.push_back(id);
  }
  if (tok.eos() >= 0 && std::find(ids.begin(), ids.end(), tok.eos()) == ids.end()) ids.push_back(tok.eos());
  return ids;
}

}  // namespace kvscope
