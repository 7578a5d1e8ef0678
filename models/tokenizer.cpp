// Tokenizer over a GGUF vocabulary: loading, special tokens, and the
// SentencePiece-style "llama" model (the byte-level BPE "gpt2" model is in
// tokenizer_bpe.cpp).
//
// [SECTION] loading the vocabulary from GGUF metadata
// [SECTION] encode: special tokens, then the model's algorithm per run of text
// [SECTION] SentencePiece: highest-score merges over a linked list of symbols
// [SECTION] decode and token text
// [SECTION] streaming detokenizer (valid UTF-8 only)
#include "models/tokenizer.h"

#include <fmt/format.h>

#include <algorithm>
#include <queue>
#include <stdexcept>

namespace kvscope {

// ======================================================================
// [SECTION] loading the vocabulary from GGUF metadata
// ======================================================================

namespace {

constexpr std::string_view kSpaceMark = "\xE2\x96\x81";  // U+2581 "▁", SentencePiece's space

const GgufArray& metadata_array(const GgufFile& file, const std::string& key, size_t expected_len) {
  const GgufArray& array = file.get(key).as_array(key);
  if (array.items.size() != expected_len) {
    throw GgufError(fmt::format("{}: metadata {} has {} entries but tokenizer.ggml.tokens has {}; "
                                "the vocabulary is inconsistent",
                                file.path(), key, array.items.size(), expected_len));
  }
  return array;
}

bool is_byte_piece(std::string_view piece) {
  auto hex = [](char c) { return (c >= '0' && c <= '9') || (c >= 'A' && c <= 'F') || (c >= 'a' && c <= 'f'); };
  return piece.size() == 6 && piece.starts_with("<0x") && hex(piece[3]) && hex(piece[4]) && piece[5] == '>';
}

int32_t special_id(const GgufFile& file, const std::string& key, uint64_t fallback, size_t n_vocab) {
  const uint64_t id = file.get_uint_or(key, fallback);
  if (id >= n_vocab) {
    throw GgufError(fmt::format("{}: metadata {} = {} is not a token id (vocabulary has {} tokens)",
                                file.path(), key, id, n_vocab));
  }
  return static_cast<int32_t>(id);
}

}  // namespace

Tokenizer Tokenizer::from_gguf(const GgufFile& file) {
  const std::string model = file.get_string("tokenizer.ggml.model");
  if (model != "llama" && model != "gpt2") {
    throw GgufError(fmt::format("{}: tokenizer.ggml.model is \"{}\"; kvscope supports the SentencePiece "
                                "\"llama\" and the byte-level BPE \"gpt2\" tokenizers",
                                file.path(), model));
  }
  const std::string tokens_key = "tokenizer.ggml.tokens";
  const GgufArray& tokens = file.get(tokens_key).as_array(tokens_key);
  const size_t n_vocab = tokens.items.size();
  if (n_vocab == 0 || n_vocab > static_cast<size_t>(INT32_MAX)) {
    throw GgufError(fmt::format("{}: {} has {} entries; expected a non-empty vocabulary",
                                file.path(), tokens_key, n_vocab));
  }

  Tokenizer tok;
  tok.pieces_.reserve(n_vocab);
  for (const GgufValue& item : tokens.items) tok.pieces_.push_back(item.as_string(tokens_key));

  // Scores and types are optional in the format (llama.cpp defaults them too).
  tok.scores_.assign(n_vocab, 0.0f);
  if (file.has("tokenizer.ggml.scores")) {
    const std::string key = "tokenizer.ggml.scores";
    const GgufArray& scores = metadata_array(file, key, n_vocab);
    for (size_t i = 0; i < n_vocab; ++i) tok.scores_[i] = static_cast<float>(scores.items[i].as_float(key));
  }
  tok.types_.assign(n_vocab, TokenType::Normal);
  if (file.has("tokenizer.ggml.token_type")) {
    const std::string key = "tokenizer.ggml.token_type";
    const GgufArray& types = metadata_array(file, key, n_vocab);
    for (size_t i = 0; i < n_vocab; ++i) {
      const int64_t t = types.items[i].as_int(key);
      if (t < 0 || t > static_cast<int64_t>(TokenType::Byte)) {
        throw GgufError(fmt::format("{}: {}[{}] = {} is not a token type (0..6)", file.path(), key, i, t));
      }
      tok.types_[i] = static_cast<TokenType>(t);
      // A byte token stands for one byte: its text must be <0xHH>, two
      // upper-case hex digits (a crafted "<0x-1>" must not become a byte).
      if (tok.types_[i] == TokenType::Byte && !is_byte_piece(tok.pieces_[i]))
        throw GgufError(fmt::format("{}: token {} has type BYTE but its text \"{}\" is not <0xHH> (two hex digits); "
                                    "the vocabulary is malformed",
                                    file.path(), i, tok.pieces_[i]));
    }
  }

  // Later duplicates win, as in llama.cpp's token_to_id.
  tok.piece_to_id_.reserve(n_vocab);
  for (size_t i = 0; i < n_vocab; ++i) tok.piece_to_id_[tok.pieces_[i]] = static_cast<int32_t>(i);

  if (model == "llama") {
    tok.kind_ = TokenizerKind::SentencePiece;
    tok.bos_ = special_id(file, "tokenizer.ggml.bos_token_id", 1, n_vocab);
    tok.eos_ = special_id(file, "tokenizer.ggml.eos_token_id", 2, n_vocab);
    tok.unk_ = special_id(file, "tokenizer.ggml.unknown_token_id", 0, n_vocab);
    tok.wants_bos_ = true;
    if (file.has("tokenizer.ggml.add_space_prefix")) {
      tok.add_space_prefix_ = file.get("tokenizer.ggml.add_space_prefix").as_bool("tokenizer.ggml.add_space_prefix");
    }
    for (int byte = 0; byte < 256; ++byte) {
      tok.byte_tokens_[byte] = tok.find_piece(fmt::format("<0x{:02X}>", byte));
    }
  } else {
    tok.kind_ = TokenizerKind::ByteLevelBpe;
    // Byte-level vocabularies name their special tokens or have none (-1).
    auto optional_id = [&](const std::string& key) { return file.has(key) ? special_id(file, key, 0, n_vocab) : -1; };
    tok.bos_ = optional_id("tokenizer.ggml.bos_token_id");
    tok.eos_ = optional_id("tokenizer.ggml.eos_token_id");
    tok.unk_ = optional_id("tokenizer.ggml.unknown_token_id");
    tok.add_space_prefix_ = false;
    std::fill(std::begin(tok.byte_tokens_), std::end(tok.byte_tokens_), -1);
    tok.load_bpe(file);  // also sets wants_bos_ from the pre-tokenizer
  }
  if (file.has("tokenizer.ggml.add_bos_token")) {
    tok.wants_bos_ = file.get("tokenizer.ggml.add_bos_token").as_bool("tokenizer.ggml.add_bos_token");
  }
  tok.index_special_tokens();
  return tok;
}

void Tokenizer::index_special_tokens() {
  for (int32_t id = 0; id < n_vocab(); ++id) {
    const TokenType t = types_[id];
    if (pieces_[id].empty()) continue;
    if (t == TokenType::Control || t == TokenType::UserDefined || t == TokenType::Unknown) {
      special_by_first_byte_[static_cast<uint8_t>(pieces_[id][0])].push_back(id);
    }
  }
  for (auto& candidates : special_by_first_byte_) {
    std::stable_sort(candidates.begin(), candidates.end(),
                     [&](int32_t a, int32_t b) { return pieces_[a].size() > pieces_[b].size(); });
  }
}

int32_t Tokenizer::find_piece(std::string_view text) const {
  const auto it = piece_to_id_.find(text);
  return it == piece_to_id_.end() ? -1 : it->second;
}

void Tokenizer::check_id(int32_t id) const {
  if (id < 0 || id >= n_vocab()) {
    throw std::out_of_range(fmt::format("token id {} is outside the vocabulary [0, {})", id, n_vocab()));
  }
}

const std::string& Tokenizer::piece(int32_t id) const {
  check_id(id);
  return pieces_[id];
}

TokenType Tokenizer::type(int32_t id) const {
  check_id(id);
  return types_[id];
}


// ======================================================================
// [SECTION] encode: special tokens, then the model's algorithm per run of text
// ======================================================================

std::vector<int32_t> Tokenizer::encode(std::string_view text, bool add_bos, bool parse_special) const {
  const TextSpan everything{0, text.size()};
  return encode_with_markup(text, add_bos, parse_special ? std::span<const TextSpan>(&everything, 1)
                                                         : std::span<const TextSpan>());
}

std::vector<int32_t> Tokenizer::encode_with_markup(std::string_view text, bool add_bos,
                                                   std::span<const TextSpan> markup) const {
  std::vector<int32_t> ids;
  if (add_bos && bos_ >= 0) ids.push_back(bos_);

  // Cut special tokens out of the text, leftmost first and longest at each
  // position (as Hugging Face's added-token matcher does); the runs of plain
  // text between them go through the model's algorithm one by one.
  bool after_special = true;  // SentencePiece adds its space prefix after these
  auto flush_text = [&](std::string_view run) {
    if (run.empty()) return;
    if (kind_ == TokenizerKind::SentencePiece) encode_spm(run, add_space_prefix_ && after_special, ids);
    else encode_bpe(run, ids);
    after_special = false;
  };
  size_t span = 0;  // first markup span that does not end before `pos`
  size_t run_start = 0;
  for (size_t pos = 0; pos < text.size();) {
    while (span < markup.size() && markup[span].end <= pos) ++span;
    const bool in_markup = span < markup.size() && markup[span].begin <= pos;
    int32_t matched = -1;
    for (int32_t id : special_by_first_byte_[static_cast<uint8_t>(text[pos])]) {
      const size_t len = pieces_[id].size();
      if (types_[id] != TokenType::UserDefined && !(in_markup && pos + len <= markup[span].end)) continue;
      if (text.compare(pos, len, pieces_[id]) == 0) {
        matched = id;
        break;
      }
    }
    if (matched < 0) {
      ++pos;
      continue;
    }
    flush_text(text.substr(run_start, pos - run_start));
    ids.push_back(matched);
    after_special = true;
    pos += pieces_[matched].size();
    run_start = pos;
  }
  flush_text(text.substr(run_start));
  return ids;
}

// ======================================================================
// [SECTION] SentencePiece: highest-score merges over a linked list of symbols
// ======================================================================

namespace {

// Byte length of a UTF-8 character from its lead byte, as llama.cpp counts it:
// stray continuation bytes count as 1, and a lead byte claims its full length
// whether or not the following bytes continue it (byte fallback sorts it out).
size_t utf8_char_len(uint8_t lead) {
  static constexpr uint8_t kByHighNibble[16] = {1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 2, 2, 3, 4};
  return kByHighNibble[lead >> 4];
}

// A run of text that is one symbol; merged symbols stay contiguous in the
// text, so (start, len) is enough. Linked through indices; len 0 = merged away.
struct Symbol {
  size_t start;
  size_t len;
  int prev;
  int next;
};

struct Merge {
  float score;
  int left;
  int right;
  size_t len;  // both symbols' length when queued: a stale entry no longer matches
};

// Highest score first; among equal scores the leftmost pair.
struct MergeOrder {
  bool operator()(const Merge& a, const Merge& b) const {
    return a.score < b.score || (a.score == b.score && a.left > b.left);
  }
};

}  // namespace

void Tokenizer::encode_spm(std::string_view input, bool add_space_prefix, std::vector<int32_t>& ids) const {
  std::string text;
  text.reserve(input.size() * 3 + kSpaceMark.size());
  if (add_space_prefix) text += kSpaceMark;
  for (char c : input) {
    if (c == ' ') text += kSpaceMark;
    else text += c;
  }

  std::vector<Symbol> symbols;
  symbols.reserve(text.size());
  for (size_t offset = 0; offset < text.size();) {
    const size_t len = std::min(utf8_char_len(static_cast<uint8_t>(text[offset])), text.size() - offset);
    const int index = static_cast<int>(symbols.size());
    symbols.push_back({offset, len, index - 1, offset + len == text.size() ? -1 : index + 1});
    offset += len;
  }

  std::priority_queue<Merge, std::vector<Merge>, MergeOrder> queue;
  auto consider = [&](int left, int right) {
    if (left < 0 || right < 0) return;
    const size_t len = symbols[left].len + symbols[right].len;
    const int32_t id = find_piece(std::string_view(text).substr(symbols[left].start, len));
    if (id >= 0) queue.push({scores_[id], left, right, len});
  };
  for (int i = 1; i < static_cast<int>(symbols.size()); ++i) consider(i - 1, i);

  while (!queue.empty()) {
    const Merge merge = queue.top();
    queue.pop();
    Symbol& left = symbols[merge.left];
    Symbol& right = symbols[merge.right];
    if (left.len == 0 || right.len == 0 || left.len + right.len != merge.len) continue;  // stale
    left.len += right.len;
    right.len = 0;
    left.next = right.next;
    if (right.next >= 0) symbols[right.next].prev = merge.left;
    consider(left.prev, merge.left);
    consider(merge.left, left.next);
  }

  // Every merged symbol is a piece by construction; only single characters
  // can be missing from the vocabulary, and those fall back to byte tokens.
  for (int i = 0; i >= 0; i = symbols[i].next) {
    const Symbol& sym = symbols[i];
    const std::string_view sym_text = std::string_view(text).substr(sym.start, sym.len);
    const int32_t id = find_piece(sym_text);
    if (id >= 0) {
      ids.push_back(id);
      continue;
    }
    for (char c : sym_text) {
      const int32_t byte_id = byte_tokens_[static_cast<uint8_t>(c)];
      ids.push_back(byte_id >= 0 ? byte_id : unk_);
    }
  }
}

// ======================================================================
// [SECTION] decode and token text
// ======================================================================

namespace {

// "<0x0A>" -> 0x0A; -1 when the piece is not in that form.
int parse_byte_piece(const std::string& piece) {
  if (piece.size() != 6 || piece.compare(0, 3, "<0x") != 0 || piece[5] != '>') return -1;
  int value = 0;
  for (size_t i = 3; i < 5; ++i) {
    const char c = piece[i];
    int digit;
    if (c >= '0' && c <= '9') digit = c - '0';
    else if (c >= 'A' && c <= 'F') digit = c - 'A' + 10;
    else if (c >= 'a' && c <= 'f') digit = c - 'a' + 10;
    else return -1;
    value = value * 16 + digit;
  }
  return value;
}

}  // namespace

std::string Tokenizer::token_bytes(int32_t id) const {
  check_id(id);
  switch (types_[id]) {
    case TokenType::Control:
    case TokenType::Unknown:
    case TokenType::Unused:
      return {};
    case TokenType::Byte: {
      const int byte = parse_byte_piece(pieces_[id]);
      if (byte >= 0) return std::string(1, static_cast<char>(byte));
      return pieces_[id];  // a "byte" token not spelled <0xNN>: its text as is
    }
    case TokenType::UserDefined:
      return pieces_[id];  // stored as the text it stands for, in both models
    default:
      break;
  }
  if (kind_ == TokenizerKind::ByteLevelBpe) return bpe_token_bytes(id);
  const std::string& piece = pieces_[id];
  std::string out;
  out.reserve(piece.size());
  for (size_t i = 0; i < piece.size();) {
    if (piece.compare(i, kSpaceMark.size(), kSpaceMark) == 0) {
      out += ' ';
      i += kSpaceMark.size();
    } else {
      out += piece[i++];
    }
  }
  return out;
}

std::string Tokenizer::text_of(int32_t id, bool& at_start) const {
  std::string bytes = token_bytes(id);
  if (!at_start) return bytes;
  const TokenType t = types_[id];
  if (t == TokenType::Control) return bytes;  // BOS and friends: still at the start
  at_start = false;
  // SentencePiece drops the space it added in front of the text; only text
  // pieces carry it (a <0x20> byte token is a real space).
  if (add_space_prefix_ && t != TokenType::Byte && !bytes.empty() && bytes[0] == ' ') bytes.erase(0, 1);
  return bytes;
}

std::string Tokenizer::decode(const std::vector<int32_t>& ids) const {
  std::string out;
  bool at_start = true;
  for (int32_t id : ids) out += text_of(id, at_start);
  return out;
}

// ======================================================================
// [SECTION] streaming detokenizer (valid UTF-8 only)
// ======================================================================

namespace {

constexpr std::string_view kReplacement = "\xEF\xBF\xBD";  // U+FFFD

// Moves the complete prefix of `pending` to the result: well-formed
// characters as they are, each maximal ill-formed subpart (Unicode's
// "substitution of maximal subparts") as one U+FFFD. A character cut short by
// the end of `pending` stays pending unless `final`, then it becomes U+FFFD.
std::string take_complete_utf8(std::string& pending, bool final) {
  std::string out;
  const auto* bytes = reinterpret_cast<const uint8_t*>(pending.data());
  const size_t n = pending.size();
  size_t i = 0;
  while (i < n) {
    const uint8_t lead = bytes[i];
    if (lead < 0x80) {
      out += static_cast<char>(lead);
      ++i;
      continue;
    }
    // Allowed range of the second byte narrows for E0/ED/F0/F4 to exclude
    // overlongs, surrogates and code points past U+10FFFF.
    size_t len = 0;
    uint8_t second_lo = 0x80, second_hi = 0xBF;
    if (lead >= 0xC2 && lead <= 0xDF) len = 2;
    else if (lead >= 0xE0 && lead <= 0xEF) {
      len = 3;
      if (lead == 0xE0) second_lo = 0xA0;
      if (lead == 0xED) second_hi = 0x9F;
    } else if (lead >= 0xF0 && lead <= 0xF4) {
      len = 4;
      if (lead == 0xF0) second_lo = 0x90;
      if (lead == 0xF4) second_hi = 0x8F;
    }
    if (len == 0) {  // stray continuation byte or a byte never used in UTF-8
      out += kReplacement;
      ++i;
      continue;
    }
    size_t good = 1;  // bytes of this character that are valid so far
    while (good < len && i + good < n) {
      const uint8_t b = bytes[i + good];
      const uint8_t lo = good == 1 ? second_lo : 0x80;
      const uint8_t hi = good == 1 ? second_hi : 0xBF;
      if (b < lo || b > hi) break;
      ++good;
    }
    if (good == len) {
      out.append(pending, i, len);
      i += len;
    } else if (i + good == n && !final) {
      break;  // may still complete with the next token
    } else {
      out += kReplacement;
      i += good;
    }
  }
  pending.erase(0, i);
  return out;
}

}  // namespace

std::string Detokenizer::push(int32_t id) {
  pending_ += tok_->text_of(id, first_);
  return take_complete_utf8(pending_, /*final=*/false);
}

std::string Detokenizer::flush() { return take_complete_utf8(pending_, /*final=*/true); }

}  // namespace kvscope
