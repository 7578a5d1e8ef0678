// Pre-tokenizer patterns per tokenizer.ggml.pre, and the PCRE2 splitter.
//
// [SECTION] the patterns, by family
// [SECTION] tokenizer.ggml.pre names
// [SECTION] RegexSplitter
#define PCRE2_CODE_UNIT_WIDTH 8
#include "models/pretokenize.h"

#include <fmt/format.h>
#include <pcre2.h>

#include <array>
#include <stdexcept>

namespace kvscope {

// ======================================================================
// [SECTION] the patterns, by family
// ======================================================================
//
// These are the split expressions of each model's Hugging Face
// tokenizer.json (the same meaning llama.cpp's llama-vocab.cpp gives them),
// written for PCRE2. Non-ASCII characters are written as \x{...} escapes so
// that no editor or normalization can silently change a range bound.

namespace {

// GPT-2's own pattern: contractions, letters, digits, other symbols, each
// optionally after one space; runs of spaces keep their last space for the
// next word ("\s+(?!\S)").
constexpr std::string_view kGpt2 =
    R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)";

// Llama 3: case-insensitive contractions, a letter run may take one leading
// non-letter, numbers in groups of up to three digits, newlines grouped.
constexpr std::string_view kLlama3 =
    R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";

// Qwen 2: as Llama 3 but every digit on its own.
constexpr std::string_view kQwen2 =
    R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";

// Tekken (Mistral Nemo): case-aware words, single digits, '/' joins symbols.
constexpr std::string_view kTekken =
    R"([^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+)";

// DeepSeek LLM: newlines alone; Latin/Greek/Cyrillic/... cased letters (the
// explicit class of DeepSeek's tokenizer.json); ASCII and full-width
// punctuation; trailing spaces; CJK and Hangul runs; digit runs.
constexpr std::string_view kDeepseekLetters =
    R"(\s?[A-Za-z\x{B5}\x{C0}-\x{D6}\x{D8}-\x{F6}\x{F8}-\x{1BA}\x{1BC}-\x{1BF}\x{1C4}-\x{293})"
    R"(\x{295}-\x{2AF}\x{370}-\x{373}\x{376}\x{377}\x{37B}-\x{37D}\x{37F}\x{386}\x{388}-\x{38A})"
    R"(\x{38C}\x{38E}-\x{3A1}\x{3A3}-\x{3F5}\x{3F7}-\x{481}\x{48A}-\x{52F}\x{531}-\x{556})"
    R"(\x{10A0}-\x{10C5}\x{13A0}-\x{13F5}\x{13F8}-\x{13FD}\x{1C90}-\x{1CBA}\x{1CBD}-\x{1CBF})"
    R"(\x{1D00}-\x{1D2B}\x{1D6B}-\x{1D77}\x{1D79}-\x{1D9A}\x{1E00}-\x{1F15}\x{1F18}-\x{1F1D})"
    R"(\x{1F20}-\x{1F45}\x{1F48}-\x{1F4D}\x{1F50}-\x{1F57}\x{1F59}\x{1F5B}\x{1F5D}\x{1F5F}-\x{1F7D})"
    R"(\x{1F80}-\x{1FB4}\x{1FB6}-\x{1FBC}\x{1FBE}\x{1FC2}-\x{1FC4}\x{1FC6}-\x{1FCC}\x{1FD0}-\x{1FD3})"
    R"(\x{1FD6}-\x{1FDB}\x{1FE0}-\x{1FEC}\x{1FF2}-\x{1FF4}\x{1FF6}-\x{1FFC}\x{2102}\x{2107})"
    R"(\x{210A}-\x{2113}\x{2115}\x{2119}-\x{211D}\x{2124}\x{2126}\x{2128}\x{212A}-\x{212D})"
    R"(\x{212F}-\x{2134}\x{2139}\x{213C}-\x{213F}\x{2145}-\x{2149}\x{214E}\x{2183}\x{2184})"
    R"(\x{2C00}-\x{2C7B}\x{2C7E}-\x{2CE4}\x{2CEB}-\x{2CEE}\x{2CF2}\x{2CF3}\x{A640}-\x{A66D})"
    R"(\x{A680}-\x{A69B}\x{A722}-\x{A76F}\x{A771}-\x{A787}\x{A78B}-\x{A78E}\x{AB70}-\x{ABBF})"
    R"(\x{FB00}-\x{FB06}\x{FB13}-\x{FB17}\x{FF21}-\x{FF3A}\x{FF41}-\x{FF5A}\x{10400}-\x{1044F})"
    R"(\x{104B0}-\x{104D3}\x{104D8}-\x{104FB}\x{10C80}-\x{10CB2}\x{10CC0}-\x{10CF2})"
    R"(\x{118A0}-\x{118DF}\x{1E900}-\x{1E943}]+)";
constexpr std::string_view kDeepseekPunct = R"(\s?[!-/:-~\x{FF01}-\x{FF0F}\x{FF1A}-\x{FF5E}\x{2018}-\x{201F}\x{3000}-\x{3002}]+)";
constexpr std::string_view kCjk = R"([\x{4E00}-\x{9FA5}\x{800}-\x{4E00}\x{AC00}-\x{D7FF}]+)";

struct NamedSpec {
  std::vector<std::string_view> ggml_names;  // tokenizer.ggml.pre values
  PreTokenizerSpec spec;
};

const std::vector<NamedSpec>& all_specs() {
  static const std::vector<NamedSpec> specs = {
      // No tokenizer.ggml.pre (files older than the key) or "default": the
      // split llama.cpp falls back to; punctuation runs first, digits in threes.
      {{"", "default"},
       {"default", {R"([\p{P}\$\+<=>\^~\|]+)", kGpt2, R"(\p{N}+)", "[0-9][0-9][0-9]"}, false, false}},
      {{"gpt-2", "gpt2", "phi-2", "mpt", "olmo", "jais", "jina-es", "jina-de", "jina-v2-es", "jina-v2-de",
        "exaone4", "roberta-bpe", "jina-v1-en", "jina-v2-code"},
       {"gpt-2", {kGpt2}, false, false}},
      {{"llama3", "llama-v3", "llama-bpe", "falcon3", "pixtral"}, {"llama3", {kLlama3}, true, true}},
      {{"dbrx", "smaug-bpe", "chatglm-bpe", "glm4"}, {"llama3-merges", {kLlama3}, false, false}},
      {{"qwen2", "qwen2.5", "qwen-2.5", "deepseek-r1-qwen", "stablelm2", "megrez"}, {"qwen2", {kQwen2}, false, false}},
      // StarCoder, SmolLM and friends: every digit alone, then GPT-2's split.
      {{"starcoder", "smollm", "refact", "command-r", "codeshell", "exaone", "minerva-7b"},
       {"starcoder", {R"(\p{N})", kGpt2}, false, false}},
      {{"deepseek-llm"},
       {"deepseek-llm", {R"([\r\n])", kDeepseekLetters, kDeepseekPunct, R"(\s+$)", kCjk, R"(\p{N}+)"}, false, false}},
      {{"deepseek-coder"},
       {"deepseek-coder", {R"([\r\n])", R"(\s?\p{L}+)", R"(\s?\p{P}+)", kCjk, R"(\p{N})"}, false, false}},
      {{"falcon"},
       {"falcon", {R"([\p{P}\$\+<=>\^~\|`]+)", kGpt2, "[0-9][0-9][0-9]"}, false, false}},
      {{"tekken"}, {"tekken", {kTekken}, true, true}},
  };
  return specs;
}

}  // namespace

// ======================================================================
// [SECTION] tokenizer.ggml.pre names
// ======================================================================

const PreTokenizerSpec& pre_tokenizer_for(std::string_view ggml_pre) {
  for (const NamedSpec& named : all_specs()) {
    for (std::string_view name : named.ggml_names) {
      if (name == ggml_pre) return named.spec;
    }
  }
  std::string known;
  for (std::string_view name : known_pre_tokenizers()) known += fmt::format("{}{}", known.empty() ? "" : " ", name);
  throw std::invalid_argument(fmt::format("tokenizer.ggml.pre is \"{}\", a pre-tokenizer kvscope does not know; "
                                          "known: {}",
                                          ggml_pre, known));
}

std::vector<std::string_view> known_pre_tokenizers() {
  std::vector<std::string_view> names;
  for (const NamedSpec& named : all_specs()) {
    for (std::string_view name : named.ggml_names) {
      if (!name.empty()) names.push_back(name);
    }
  }
  return names;
}

// ======================================================================
// [SECTION] RegexSplitter
// ======================================================================

struct RegexSplitter::Compiled {
  pcre2_code* code = nullptr;
  explicit Compiled(pcre2_code* c) : code(c) {}
  Compiled(const Compiled&) = delete;
  Compiled& operator=(const Compiled&) = delete;
  ~Compiled() { pcre2_code_free(code); }
};

namespace {

struct MatchDataDeleter {
  void operator()(pcre2_match_data* md) const { pcre2_match_data_free(md); }
};

std::string pcre2_message(int error_code) {
  std::array<PCRE2_UCHAR, 256> buffer{};
  const int n = pcre2_get_error_message(error_code, buffer.data(), buffer.size());
  return n < 0 ? fmt::format("PCRE2 error {}", error_code) : std::string(reinterpret_cast<const char*>(buffer.data()), n);
}

}  // namespace

RegexSplitter::RegexSplitter(const std::vector<std::string_view>& patterns) {
  // UCP: \s, \d and [[:classes:]] follow Unicode as they do in the Rust and
  // Oniguruma engines of Hugging Face tokenizers. DOLLAR_ENDONLY: "$" is the
  // end of the piece, not "before a final newline". MATCH_INVALID_UTF: user
  // text may hold broken UTF-8; it simply never matches.
  const uint32_t options = PCRE2_UTF | PCRE2_UCP | PCRE2_DOLLAR_ENDONLY | PCRE2_MATCH_INVALID_UTF;
  for (std::string_view pattern : patterns) {
    int error_code = 0;
    PCRE2_SIZE error_offset = 0;
    pcre2_code* code = pcre2_compile(reinterpret_cast<PCRE2_SPTR>(pattern.data()), pattern.size(), options,
                                     &error_code, &error_offset, nullptr);
    if (code == nullptr) {
      throw std::invalid_argument(fmt::format("pre-tokenizer pattern does not compile at offset {}: {} (pattern: {})",
                                              error_offset, pcre2_message(error_code), pattern));
    }
    compiled_.push_back(std::make_unique<Compiled>(code));
    // Compiled to machine code where PCRE2 can (pcre2_match then uses it;
    // the matches are the same): 5-10x faster on long prompts. Where JIT is
    // not available the interpreter runs, so the result is not checked.
    pcre2_jit_compile(code, PCRE2_JIT_COMPLETE);
  }
}

RegexSplitter::RegexSplitter(RegexSplitter&&) noexcept = default;
RegexSplitter& RegexSplitter::operator=(RegexSplitter&&) noexcept = default;
RegexSplitter::~RegexSplitter() = default;

std::vector<std::string_view> RegexSplitter::split(std::string_view text) const {
  std::vector<std::string_view> pieces;
  if (text.empty()) return pieces;
  pieces.push_back(text);
  for (const auto& compiled : compiled_) {
    std::unique_ptr<pcre2_match_data, MatchDataDeleter> match(
        pcre2_match_data_create_from_pattern(compiled->code, nullptr));
    if (!match) throw std::bad_alloc();
    std::vector<std::string_view> next;
    next.reserve(pieces.size() * 2);
    for (std::string_view piece : pieces) {
      // Each piece is its own subject: "$" and lookaheads stop at its end,
      // as they do when Hugging Face applies a split to earlier splits.
      const auto* subject = reinterpret_cast<PCRE2_SPTR>(piece.data());
      size_t kept = 0;    // end of what is already in `next`
      size_t offset = 0;  // where the next search starts
      while (offset < piece.size()) {
        const int rc = pcre2_match(compiled->code, subject, piece.size(), offset, 0, match.get(), nullptr);
        if (rc == PCRE2_ERROR_NOMATCH) break;
        if (rc < 0) throw std::runtime_error("pre-tokenizer: " + pcre2_message(rc));
        const PCRE2_SIZE* ovector = pcre2_get_ovector_pointer(match.get());
        const size_t start = ovector[0];
        const size_t end = ovector[1];
        if (end == start) {  // an empty match splits nothing; step over one character
          offset = start + 1;
          while (offset < piece.size() && (static_cast<uint8_t>(piece[offset]) & 0xC0) == 0x80) ++offset;
          continue;
        }
        if (start > kept) next.push_back(piece.substr(kept, start - kept));
        next.push_back(piece.substr(start, end - start));
        kept = offset = end;
      }
      if (kept < piece.size()) next.push_back(piece.substr(kept));
    }
    pieces = std::move(next);
  }
  return pieces;
}

}  // namespace kvscope
