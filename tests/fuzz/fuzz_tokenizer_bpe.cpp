// libFuzzer target: the byte-level BPE tokenizer (PCRE2 pre-tokenizer, merges)
// on llama.cpp's gpt-2 vocabulary: valid UTF-8 comes back exactly.
#include "tests/fuzz/fuzz_tokenizer.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const kvscope::Tokenizer& tok = kvscope::fuzz::vocabulary("ggml-vocab-gpt-2.gguf");
  kvscope::fuzz::check_round_trip(tok, data, size, /*exact=*/true);
  return 0;
}
