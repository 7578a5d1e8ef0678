// libFuzzer target: the SentencePiece tokenizer on llama.cpp's llama-spm
// vocabulary (tests/data/vocab), with the round-trip property of fuzz_tokenizer.h.
#include "tests/fuzz/fuzz_tokenizer.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const kvscope::Tokenizer& tok = kvscope::fuzz::vocabulary("ggml-vocab-llama-spm.gguf");
  kvscope::fuzz::check_round_trip(tok, data, size, /*exact=*/false);
  return 0;
}
