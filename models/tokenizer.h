// Tokenizers built from GGUF tokenizer metadata
// (tokenizer.ggml.{model,pre,tokens,scores,token_type,merges,bos_token_id,
// eos_token_id,unknown_token_id,add_bos_token,add_space_prefix}):
//   model "llama": SentencePiece-style BPE over scores (Llama 2, TinyLlama,
//                  Mistral 7B, Phi-3), code in tokenizer.cpp;
//   model "gpt2":  byte-level BPE over ranked merges after a regex
//                  pre-tokenizer named by tokenizer.ggml.pre (GPT-2, Llama 3,
//                  Qwen 2, SmolLM, DeepSeek, StarCoder), in tokenizer_bpe.cpp.
#pragma once
#include <cstdint>
#include <functional>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "models/gguf.h"
#include "models/pretokenize.h"

namespace kvscope {

enum class TokenType : int32_t {
  Undefined = 0, Normal = 1, Unknown = 2, Control = 3, UserDefined = 4,
  Unused = 5, Byte = 6,
};

enum class TokenizerKind { SentencePiece, ByteLevelBpe };

// A byte range [begin, end) of a text.
struct TextSpan {
  size_t begin = 0;
  size_t end = 0;
};

class Tokenizer {
 public:
  // Throws GgufError when the metadata is missing or inconsistent
  // (tokenizer.ggml.model must be "llama" or "gpt2"; array lengths must
  // agree; a "gpt2" vocabulary needs merges and a known tokenizer.ggml.pre).
  static Tokenizer from_gguf(const GgufFile& file);

  // Text to token ids, as llama.cpp and Hugging Face tokenizers do it.
  // SentencePiece: a leading space is added (the "▁" prefix) to the text and
  // after each special token, spaces become "▁", highest-score merges first,
  // bytes with no piece fall back to <0xNN> tokens. Byte-level BPE: the
  // pre-tokenizer splits the text into words, each word's bytes are mapped to
  // printable characters, lowest-rank merges first.
  //
  // Special tokens: user-defined tokens of the vocabulary (added tokens that
  // are not control tokens) are always matched in the text, as the model's own
  // tokenizer does. Control tokens ("<|im_start|>", "<s>", ...) are matched
  // only when `parse_special` is true — for text the program itself built,
  // like a chat template's output; never for what a user typed. `add_bos`
  // prepends bos() when the vocabulary has one.
  std::vector<int32_t> encode(std::string_view text, bool add_bos, bool parse_special = false) const;
  // As encode(), with control tokens matched only where they lie wholly
  // inside one of `markup` (sorted, non-overlapping): for a chat prompt, the
  // template's own text, so a user who types "<|im_end|>" gets plain text.
  // The text is otherwise tokenized as one piece, exactly as encode() would.
  std::vector<int32_t> encode_with_markup(std::string_view text, bool add_bos, std::span<const TextSpan> markup) const;

  // The raw piece of a token as stored (e.g. "▁the", "<0x0A>").
  const std::string& piece(int32_t id) const;
  // The bytes a token contributes to text ("▁" -> " ", <0xNN> -> byte NN,
  // control tokens -> ""). Not necessarily valid UTF-8 on its own.
  std::string token_bytes(int32_t id) const;
  // Decodes a whole sequence (leading space of the first token after BOS
  // dropped, as SentencePiece does).
  std::string decode(const std::vector<int32_t>& ids) const;

  int32_t n_vocab() const { return static_cast<int32_t>(pieces_.size()); }
  // -1 when the vocabulary has none (byte-level vocabularies without the key).
  int32_t bos() const { return bos_; }
  int32_t eos() const { return eos_; }
  int32_t unk() const { return unk_; }
  // Whether the model expects BOS in front of a prompt
  // (tokenizer.ggml.add_bos_token; SentencePiece: yes, byte-level BPE: only
  // Llama 3 style pre-tokenizers, unless the file says otherwise).
  bool wants_bos() const { return wants_bos_ && bos_ >= 0; }
  TokenType type(int32_t id) const;
  TokenizerKind kind() const { return kind_; }
  // The tokenizer.ggml.pre value ("" for SentencePiece or when absent).
  const std::string& pre_tokenizer() const { return pre_name_; }
  // The id whose stored piece is exactly `piece` (e.g. "<|im_end|>"), or -1.
  int32_t token_id(std::string_view piece) const { return find_piece(piece); }

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
  TokenizerKind kind_ = TokenizerKind::SentencePiece;
  int32_t bos_ = 1, eos_ = 2, unk_ = 0;
  bool wants_bos_ = true;
  bool add_space_prefix_ = true;  // tokenizer.ggml.add_space_prefix
  int32_t byte_tokens_[256] = {};  // id of <0xNN> for each byte; -1 if absent (SentencePiece)

  // Control, user-defined and unknown tokens that can be cut out of the text
  // before the model's own algorithm runs; by first byte, longest first.
  std::vector<int32_t> special_by_first_byte_[256];

  // Byte-level BPE only.
  std::string pre_name_;
  std::unordered_map<std::string, int32_t, PieceHash, std::equal_to<>> merge_rank_;  // "left right" -> rank
  std::unique_ptr<RegexSplitter> splitter_;
  bool ignore_merges_ = false;

  int32_t find_piece(std::string_view text) const;  // -1 if absent
  void load_bpe(const GgufFile& file);  // tokenizer_bpe.cpp
  void index_special_tokens();
  // One run of plain text (no special token inside) appended to `ids`.
  void encode_spm(std::string_view text, bool add_space_prefix, std::vector<int32_t>& ids) const;
  void encode_bpe(std::string_view text, std::vector<int32_t>& ids) const;
  void bpe_word(std::string_view word, std::vector<int32_t>& ids) const;
  int32_t merge_rank(std::string_view left, std::string_view right, std::string& scratch) const;
  std::string bpe_token_bytes(int32_t id) const;
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
