// libFuzzer target: the JSON a person's saved conversation is read from
// (kvscope chat /load, the window's Load chat), and what is built from it.
#include <cstddef>
#include <cstdint>
#include <stdexcept>
#include <string>

#include "app/core/conversation.h"
#include "tests/fuzz/fuzz_tokenizer.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace kvscope;
  try {
    const Conversation c = read_conversation_json(std::string(reinterpret_cast<const char*>(data), size), "fuzz.json");
    const std::string again = write_conversation_json(c);
    if (read_conversation_json(again, "again.json").tokens != c.tokens) std::abort();  // writing reads back
    const PromptFormat plain(fuzz::vocabulary("ggml-vocab-llama-spm.gguf"), std::nullopt);
    const ChatPrompt prompt = plain.render(dialogue_of(c.turns), true);
    (void)plan_feed(plain, prompt, std::string(prompt.text.substr(0, prompt.text.size() / 2)), c.tokens.size());
  } catch (const std::runtime_error&) {
  }
  return 0;
}
