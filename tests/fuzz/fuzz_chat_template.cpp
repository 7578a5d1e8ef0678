// libFuzzer target: chat-template detection on any Jinja text, then rendering
// a conversation with what was detected.
#include <cstddef>
#include <cstdint>
#include <stdexcept>
#include <string_view>
#include <vector>

#include "models/chat_template.h"
#include "tests/fuzz/fuzz_tokenizer.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace kvscope;
  const std::string_view jinja(reinterpret_cast<const char*>(data), size);
  try {
    const ChatTemplate tmpl = detect_chat_template(jinja);
    const Tokenizer& tok = fuzz::vocabulary("ggml-vocab-llama-spm.gguf");
    const std::vector<ChatMessage> messages = {
        {"system", "Be brief."}, {"user", std::string(jinja.substr(0, 64))}, {"assistant", "Yes."}, {"user", "Why?"}};
    const std::string text = format_chat(tmpl, messages, true, ChatTokens::from(tok));
    (void)encode_chat(tmpl, messages, true, tok);
    (void)text;
  } catch (const std::invalid_argument&) {
  }
  return 0;
}
