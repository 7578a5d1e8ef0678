// Byte-level BPE (tokenizer.ggml.model = "gpt2"): GPT-2, Llama 3, Qwen 2,
// SmolLM, DeepSeek, StarCoder vocabularies.
//
// A word from the pre-tokenizer is turned into its UTF-8 bytes, each byte
// into one printable character (GPT-2's byte-to-unicode table, so that every
// token is a printable string and " " is stored as "Ġ"), then adjacent symbols
// are merged by rank, lowest first, until no ranked pair is left.
//
// [SECTION] GPT-2's byte <-> character mapping
// [SECTION] loading merges and the pre-tokenizer
// [SECTION] encode: pre-tokenize, then lowest-rank merges per word
// [SECTION] token bytes
#include <fmt/format.h>

#include <array>
#include <queue>

#include "models/tokenizer.h"

namespace kvscope {

// ======================================================================
// [SECTION] GPT-2's byte <-> character mapping
// ======================================================================

namespace {

// Printable Latin-1 bytes ('!'..'~', '¡'..'¬', '®'..'ÿ') stand for
// themselves; the other 68 bytes (controls, space, DEL, NBSP, soft hyphen)
// take the code points 256, 257, ... in byte order.
struct ByteMapping {
  std::array<std::string, 256> utf8_of_byte;  // the character, UTF-8 encoded
  std::array<int16_t, 512> byte_of_code_point;  // -1 where no byte maps here

  ByteMapping() {
    byte_of_code_point.fill(-1);
    int next_extra = 256;
    for (int byte = 0; byte < 256; ++byte) {
      const bool printable = (byte >= '!' && byte <= '~') || (byte >= 0xA1 && byte <= 0xAC) || (byte >= 0xAE);
      const int code_point = printable ? byte : next_extra++;
      byte_of_code_point[code_point] = static_cast<int16_t>(byte);
      std::string& utf8 = utf8_of_byte[byte];
      if (code_point < 0x80) {
        utf8 = std::string(1, static_cast<char>(code_point));
      } else {  // all mapped code points are below 0x800: two bytes
        utf8 += static_cast<char>(0xC0 | (code_point >> 6));
        utf8 += static_cast<char>(0x80 | (code_point & 0x3F));
      }
    }
  }
};

const ByteMapping& byte_mapping() {
  static const ByteMapping mapping;
  return mapping;
}

// Byte length of the UTF-8 character starting with `lead` (1 for stray
// continuation bytes; never past the end, the caller clamps).
size_t utf8_len(uint8_t lead) {
  if (lead < 0xC0) return 1;
  if (lead < 0xE0) return 2;
  if (lead < 0xF0) return 3;
  return 4;
}

// Decodes the code point at `text[i]` when it is a well-formed 1- or 2-byte
// character; -1 otherwise (byte-level pieces only use those).
int small_code_point(std::string_view text, size_t i, size_t& len) {
  const auto lead = static_cast<uint8_t>(text[i]);
  len = std::min(utf8_len(lead), text.size() - i);
  if (lead < 0x80) return lead;
  if (len == 2 && (lead & 0xE0) == 0xC0 && (static_cast<uint8_t>(text[i + 1]) & 0xC0) == 0x80) {
    return ((lead & 0x1F) << 6) | (static_cast<uint8_t>(text[i + 1]) & 0x3F);
  }
  return -1;
}

}  // namespace

// ======================================================================
// [SECTION] loading merges and the pre-tokenizer
// ======================================================================

void Tokenizer::load_bpe(const GgufFile& file) {
  pre_name_ = file.get_string_or("tokenizer.ggml.pre", "");
  const PreTokenizerSpec* spec = nullptr;
  try {
    spec = &pre_tokenizer_for(pre_name_);
  } catch (const std::invalid_argument& e) {
    throw GgufError(fmt::format("{}: {}", file.path(), e.what()));
  }
  splitter_ = std::make_unique<RegexSplitter>(spec->patterns);
  ignore_merges_ = spec->ignore_merges;
  wants_bos_ = spec->add_bos;

  const std::string key = "tokenizer.ggml.merges";
  if (!file.has(key)) {
    throw GgufError(fmt::format("{}: metadata {} is missing; a byte-level BPE (\"gpt2\") vocabulary needs its "
                                "merges",
                                file.path(), key));
  }
  const GgufArray& merges = file.get(key).as_array(key);
  merge_rank_.reserve(merges.items.size());
  for (size_t rank = 0; rank < merges.items.size(); ++rank) {
    const std::string& merge = merges.items[rank].as_string(key);
    // "left right"; the separator is the first space after the first byte,
    // since a left part could itself be a space in hand-made vocabularies.
    const size_t space = merge.find(' ', 1);
    if (space == std::string::npos || space + 1 >= merge.size()) {
      throw GgufError(fmt::format("{}: {}[{}] = \"{}\" is not two symbols separated by a space", file.path(), key,
                                  rank, merge));
    }
    // The first occurrence keeps its (lower) rank.
    merge_rank_.emplace(merge, static_cast<int32_t>(rank));
  }
}

int32_t Tokenizer::merge_rank(std::string_view left, std::string_view right, std::string& scratch) const {
  scratch.assign(left);
  scratch += ' ';
  scratch += right;
  const auto it = merge_rank_.find(std::string_view(scratch));
  return it == merge_rank_.end() ? -1 : it->second;
}

// ======================================================================
// [SECTION] encode: pre-tokenize, then lowest-rank merges per word
// ======================================================================

namespace {

// A symbol is a contiguous run of the byte-level word; len 0 = merged away.
struct BpeSymbol {
  size_t start;
  size_t len;
  int prev;
  int next;
};

struct BpeMerge {
  int32_t rank;
  int left;
  int right;
  size_t len;  // both symbols' length when queued: a stale entry no longer matches
};

// Lowest rank first; among equal ranks the leftmost pair.
struct BpeMergeOrder {
  bool operator()(const BpeMerge& a, const BpeMerge& b) const {
    return a.rank > b.rank || (a.rank == b.rank && a.left > b.left);
  }
};

}  // namespace

void Tokenizer::encode_bpe(std::string_view text, std::vector<int32_t>& ids) const {
  const ByteMapping& mapping = byte_mapping();
  std::string word;
  for (std::string_view piece : splitter_->split(text)) {
    word.clear();
    for (char c : piece) word += mapping.utf8_of_byte[static_cast<uint8_t>(c)];
    bpe_word(word, ids);
  }
}

void Tokenizer::bpe_word(std::string_view word, std::vector<int32_t>& ids) const {
  if (ignore_merges_) {
    const int32_t whole = find_piece(word);
    if (whole >= 0) {
      ids.push_back(whole);
      return;
    }
  }

  std::vector<BpeSymbol> symbols;
  symbols.reserve(word.size());
  for (size_t offset = 0; offset < word.size();) {
    const size_t len = std::min(utf8_len(static_cast<uint8_t>(word[offset])), word.size() - offset);
    const int index = static_cast<int>(symbols.size());
    symbols.push_back({offset, len, index - 1, offset + len == word.size() ? -1 : index + 1});
    offset += len;
  }
  if (symbols.empty()) return;

  std::string scratch;
  std::priority_queue<BpeMerge, std::vector<BpeMerge>, BpeMergeOrder> queue;
  auto text_of = [&](int i) { return word.substr(symbols[i].start, symbols[i].len); };
  auto consider = [&](int left, int right) {
    if (left < 0 || right < 0) return;
    const int32_t rank = merge_rank(text_of(left), text_of(right), scratch);
    if (rank >= 0) queue.push({rank, left, right, symbols[left].len + symbols[right].len});
  };
  for (int i = 1; i < static_cast<int>(symbols.size()); ++i) consider(i - 1, i);

  while (!queue.empty()) {
    const BpeMerge merge = queue.top();
    queue.pop();
    BpeSymbol& left = symbols[merge.left];
    BpeSymbol& right = symbols[merge.right];
    if (left.len == 0 || right.len == 0 || left.len + right.len != merge.len) continue;  // stale
    left.len += right.len;
    right.len = 0;
    left.next = right.next;
    if (right.next >= 0) symbols[right.next].prev = merge.left;
    consider(left.prev, merge.left);
    consider(merge.left, left.next);
  }

  // A merge's result is a token in any consistent vocabulary; should one not
  // be, its characters are looked up one by one (unknown ones become unk, or
  // are dropped when the vocabulary has no unk, as llama.cpp does).
  for (int i = 0; i >= 0; i = symbols[i].next) {
    const std::string_view sym = text_of(i);
    const int32_t id = find_piece(sym);
    if (id >= 0) {
      ids.push_back(id);
      continue;
    }
    for (size_t offset = 0; offset < sym.size();) {
      const size_t len = std::min(utf8_len(static_cast<uint8_t>(sym[offset])), sym.size() - offset);
      const int32_t char_id = find_piece(sym.substr(offset, len));
      if (char_id >= 0) ids.push_back(char_id);
      else if (unk_ >= 0) ids.push_back(unk_);
      offset += len;
    }
  }
}

// ======================================================================
// [SECTION] token bytes
// ======================================================================

std::string Tokenizer::bpe_token_bytes(int32_t id) const {
  const ByteMapping& mapping = byte_mapping();
  const std::string& piece = pieces_[id];
  std::string out;
  out.reserve(piece.size());
  for (size_t i = 0; i < piece.size();) {
    size_t len = 1;
    const int code_point = small_code_point(piece, i, len);
    const int byte = code_point >= 0 && code_point < 512 ? mapping.byte_of_code_point[code_point] : -1;
    if (byte >= 0) out += static_cast<char>(byte);
    else out.append(piece, i, len);  // not a byte-level character: keep it as written
    i += len;
  }
  return out;
}

}  // namespace kvscope
