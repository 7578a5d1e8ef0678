// libFuzzer target: the GGUF reader and validator, then what reads a model's
// metadata (hyperparameters, tokenizer, chat template). Any input may be
// refused with GgufError / std::invalid_argument / std::runtime_error; a
// crash, a sanitizer report, a hang or another exception type is a finding.
#include <cstddef>
#include <cstdint>
#include <span>
#include <stdexcept>

#include "models/chat_template.h"
#include "models/gguf.h"
#include "models/hparams.h"
#include "models/tokenizer.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace kvscope;
  try {
    const GgufFile file = GgufFile::from_memory(std::span(data, size), "fuzz.gguf");
    try {
      (void)read_llama_config(file);
    } catch (const GgufError&) {
    }
    if (file.has("tokenizer.ggml.model")) {
      try {
        const Tokenizer tok = Tokenizer::from_gguf(file);
        const std::vector<int32_t> ids = tok.encode("Once upon a time, \xC3\xA9t\xC3\xA9 <0x0A>", true);
        (void)tok.decode(ids);
      } catch (const GgufError&) {
      } catch (const std::invalid_argument&) {
      }
    }
    (void)chat_template_for(file);
  } catch (const GgufError&) {
  } catch (const std::invalid_argument&) {
  }
  return 0;
}
