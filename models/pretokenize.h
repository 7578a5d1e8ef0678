// Pre-tokenization for byte-level BPE vocabularies: the regular expressions
// that cut text into words before merges run, chosen by the GGUF key
// tokenizer.ggml.pre. Patterns are PCRE2 (UTF + Unicode properties), so
// \p{L}, \p{N} and \s mean what they mean in the Hugging Face tokenizers the
// vocabularies come from; no hand-written Unicode tables.
#pragma once
#include <memory>
#include <string>
#include <string_view>
#include <vector>

namespace kvscope {

// One pre-tokenizer: a sequence of split patterns, each applied to the pieces
// the previous one produced (as a Hugging Face "Sequence" of "Split"s with
// behavior "Isolated": matches and the text between them both become pieces).
struct PreTokenizerSpec {
  std::string_view name;                  // our name, e.g. "llama3"
  std::vector<std::string_view> patterns;
  bool ignore_merges = false;  // a word that is itself a token skips the merges (Llama 3)
  bool add_bos = false;        // BOS by default when the file has no tokenizer.ggml.add_bos_token
};

// The spec for a tokenizer.ggml.pre value ("" = key absent = llama.cpp's
// default). Throws std::invalid_argument naming the value and the known ones.
const PreTokenizerSpec& pre_tokenizer_for(std::string_view ggml_pre);
// The tokenizer.ggml.pre values pre_tokenizer_for() accepts.
std::vector<std::string_view> known_pre_tokenizers();

// Compiled split patterns. Move-only (owns PCRE2 code objects); split() is
// const and thread-safe (match data is per call).
class RegexSplitter {
 public:
  // Throws std::invalid_argument with PCRE2's message and offset when a
  // pattern does not compile.
  explicit RegexSplitter(const std::vector<std::string_view>& patterns);
  RegexSplitter(RegexSplitter&&) noexcept;
  RegexSplitter& operator=(RegexSplitter&&) noexcept;
  ~RegexSplitter();

  // Consecutive, non-empty pieces that together are exactly `text`. Invalid
  // UTF-8 is allowed: no pattern matches it, so its bytes end up in pieces of
  // their own.
  std::vector<std::string_view> split(std::string_view text) const;

 private:
  struct Compiled;
  std::vector<std::unique_ptr<Compiled>> compiled_;
};

}  // namespace kvscope
