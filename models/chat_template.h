// Chat templates: which conversation format a model was trained on, detected
// from the Jinja text in tokenizer.chat_template (or chosen by name), and the
// exact prompt text that format gives a conversation. No Jinja interpreter:
// each family's format is written out by hand, following the model's own
// template (see tests/data/chat-templates/ and tests/models/test_chat_template.cpp).
#pragma once
#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "models/gguf.h"
#include "models/tokenizer.h"

namespace kvscope {

enum class ChatFamily {
  ChatML,         // <|im_start|>role\n...<|im_end|>\n  (Qwen 2/2.5, SmolLM2, Hermes, ...)
  Llama3,         // <|start_header_id|>role<|end_header_id|>\n\n...<|eot_id|>  (Llama 3)
  Llama31,        // Llama 3 plus the system header "Cutting Knowledge Date ..." (Llama 3.1/3.2/3.3)
  Llama2,         // <s>[INST] <<SYS>>\n...\n<</SYS>>\n\n... [/INST] ... </s>
  MistralV1,      // <s>[INST] ... [/INST]...</s>  (Mistral 7B Instruct v0.1/v0.2)
  MistralV3,      // <s>[INST] ...[/INST] ...</s>, system before the last user turn (v0.3)
  MistralTekken,  // <s>[INST]...[/INST]...</s>, no spaces (Mistral Nemo, tekken vocabularies)
  Zephyr,         // <|user|>\n...</s>\n  (Zephyr, TinyLlama chat)
  Gemma,          // <start_of_turn>user\n...<end_of_turn>\n
  Phi3,           // <|user|>\n...<|end|>\n
  DeepSeekR1,     // <｜User｜>...<｜Assistant｜>...<｜end▁of▁sentence｜>
};

struct ChatMessage {
  std::string role;  // "system", "user" or "assistant"
  std::string content;
};

struct ChatTemplate {
  ChatFamily family = ChatFamily::ChatML;
  // Used when the conversation has no system message and the template
  // supplies one (Qwen 2.5: "You are Qwen, created by Alibaba Cloud. ...").
  std::string default_system;
  // Qwen 3's template (ChatML that mentions </think>): past replies are
  // written without their <think> part (chat_prompt).
  bool thinking = false;
  // Llama 3.1's "Today Date:" line; its template's default.
  std::string date_string = "26 Jul 2024";
  // True when the template was not recognized (or absent) and ChatML is a
  // guess; `warning` then says so in words a person can act on.
  bool fallback = false;
  std::string warning;
};

// The special token texts a template needs; from the vocabulary.
struct ChatTokens {
  std::string bos;  // e.g. "<s>", "<|begin_of_text|>"; "" if none
  std::string eos;  // e.g. "</s>"
  static ChatTokens from(const Tokenizer& tok);
};

// Names accepted by chat_template_by_name() (and --chat-template), e.g.
// "chatml", "qwen", "qwen3", "llama3", "llama3.1", "llama2", "mistral-v1",
// "mistral-v3", "mistral-tekken", "zephyr", "gemma", "phi3", "deepseek-r1".
std::vector<std::string_view> chat_template_names();
std::string_view chat_family_name(ChatFamily family);

// Recognizes the family from a template's Jinja text by the markers only that
// family writes. Unknown or empty text: ChatML with fallback = true.
ChatTemplate detect_chat_template(std::string_view jinja);
// Throws std::invalid_argument naming the unknown name and listing the known.
ChatTemplate chat_template_by_name(std::string_view name);
// `override_name` if not empty, else detection on tokenizer.chat_template.
ChatTemplate chat_template_for(const GgufFile& file, std::string_view override_name = {});

// A rendered prompt and which parts of it the template wrote (the rest is
// message content: what users typed and what the model said).
struct ChatPrompt {
  std::string text;
  std::vector<TextSpan> markup;  // sorted, non-overlapping
};

// The prompt exactly as the family's template renders it, including the
// BOS/EOS texts where the template writes them; `add_generation_prompt`
// appends the opening of the assistant's turn. Roles other than system, user
// and assistant throw std::invalid_argument.
ChatPrompt render_chat(const ChatTemplate& tmpl, std::span<const ChatMessage> messages, bool add_generation_prompt,
                       const ChatTokens& tokens);
// render_chat(...).text
std::string format_chat(const ChatTemplate& tmpl, std::span<const ChatMessage> messages, bool add_generation_prompt,
                        const ChatTokens& tokens);

// Whether the family's template writes BOS itself (then it must not be added
// again when tokenizing).
bool template_writes_bos(ChatFamily family);

// The conversation as token ids, ready to prefill: the rendered prompt
// tokenized as one text, control tokens parsed in the template's markup only
// (never in message content), BOS added only if the vocabulary wants one and
// the template did not write it.
std::vector<int32_t> encode_chat(const ChatTemplate& tmpl, std::span<const ChatMessage> messages,
                                 bool add_generation_prompt, const Tokenizer& tok);

// Token texts that end an assistant's turn in this family (e.g. "<|eot_id|>").
std::vector<std::string> stop_strings(const ChatTemplate& tmpl, const ChatTokens& tokens);
// Their ids in `tok` (those it has) plus tok.eos(); no duplicates.
std::vector<int32_t> stop_token_ids(const ChatTemplate& tmpl, const Tokenizer& tok);

}  // namespace kvscope
