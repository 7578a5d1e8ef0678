// Conversion of a llama2.c checkpoint (model.bin + tokenizer.bin) to GGUF.
#pragma once
#include <cstdint>
#include <string>

namespace kvscope {

struct Llama2cConvertResult {
  uint32_t dim, n_layer, n_head, n_kv_head, ffn_dim, n_vocab, seq_len;
  bool tied_output;
  uint64_t n_tensors;
};

// Reads the llama2.c checkpoint (header of 7 int32: dim, hidden_dim,
// n_layers, n_heads, n_kv_heads, vocab_size (negative: untied classifier),
// seq_len; then F32 weights) and tokenizer (int32 max_token_length, then per
// token: f32 score, int32 len, bytes), writes a GGUF v3 llama model with F32
// weights and the Llama 2 vocabulary as GGUF metadata (byte tokens as <0xNN>
// type 6, spaces as U+2581, ids 0/1/2 = <unk>/<s>/</s> as types 2/3/3).
// Throws std::runtime_error naming the file and what is wrong for truncated
// or inconsistent input.
Llama2cConvertResult convert_llama2c(const std::string& checkpoint, const std::string& tokenizer,
                                     const std::string& out_gguf);

}  // namespace kvscope
