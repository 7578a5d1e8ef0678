// SentencePiece-style BPE tokenizer (llama / Llama 2 vocabulary) built from
// GGUF tokenizer metadata: tokenizer.ggml.{model,tokens,scores,token_type,
// bos_token_id,eos_token_id,unknown_token_id,add_bos_token}.
#pragma once
#include <cstdint>
#include <functional>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "models/gguf.h"

namespace kvscope {

enum class TokenType : int32_t {
  Undefined = 0, Normal = 1, Unknown = 2, Control = 3, UserDefined = 4,
  Unused = 5, Byte = 6,
};

class Tokenizer {
 public:
  // Throws GgufError when the metadata is missing or inconsistent
  // (tokenizer.ggml.model must be "llama"; array lengths must agree).
  static Tokenizer from_gguf(const GgufFile& file);

  // Encodes like llama.cpp's SPM tokenizer: a leading space is added
  // (the "▁" prefix), spaces become "▁", highest-score merges first, bytes
  // with no piece fall back to <0xNN> tokens. Control tokens in the text are
  // not parsed.
  std::vector<int32_t> encode(std::string_view text, bool add_bos) const;

  // The raw piece of a token as stored (e.g. "▁the", "<0x0A>").
  const std::string& piece(int32_t id) const;
  // The bytes a token contributes to text ("▁" -> " ", <0xNN> -> byte NN,
  // control tokens -> ""). Not necessarily valid UTF-8 on its own.
  std::string token_bytes(int32_t id) const;
  // Decodes a whole sequence (leading space of the first token after BOS
  // dropped, as SentencePiece does).
  std::string decode(const std::vector<int32_t>& ids) const;

  int32_t n_vocab() const { return static_cast<int32_t>(pieces_.size()); }
  int32_t bos() const { return bos_; }
  int32_t eos() const { return eos_; }
  int32_t unk() const { return unk_; }
  TokenType type(int32_t id) const;

 private:
  std::vector<std::string> pieces_;
  std::vector<float> scores_;
  std::vector<TokenType> types_;
  // Transparent hash so that encode() can look up string_views of the text
  // without building a std::string per candidate merge.
  struct PieceHash {
    using is_transparent = void;
    size_t operator()(std::string_view s) const { return std::hash<std::string_view>{}(s); }
  };
  std::unordered_map<std::string, int32_t, PieceHash, std::equal_to<>> piece_to_id_;
  int32_t bos_ = 1, eos_ = 2, unk_ = 0;
  bool add_space_prefix_ = true;  // tokenizer.ggml.add_space_prefix
  int32_t byte_tokens_[256] = {};  // id of <0xNN> for each byte; -1 if absent

  int32_t find_piece(std::string_view text) const;  // -1 if absent
  // The bytes of `id` as they appear in decoded text; `at_start` is true
  // until the first non-control token, whose leading space is dropped.
  std::string text_of(int32_t id, bool& at_start) const;
  void check_id(int32_t id) const;  // std::out_of_range naming the id
  friend class Detokenizer;
};

// Streams tokens into text that is always valid UTF-8: bytes of an incomplete
// character are held back until the character completes; invalid sequences
// become U+FFFD. Drops the leading space of the first piece after BOS.
class Detokenizer {
 public:
  explicit Detokenizer(const Tokenizer& tok) : tok_(&tok) {}
  std::string push(int32_t id);  // the text that became complete with this token
  std::string flush();           // whatever is pending, invalid bytes as U+FFFD
 private:
  const Tokenizer* tok_;
  std::string pending_;
  bool first_ = true;
};

}  // namespace kvscope
