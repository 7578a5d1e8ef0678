// What both tokenizer targets check: any bytes encode without a crash, and
// when the input is valid UTF-8 the decoded ids are valid UTF-8 too (a
// byte-level BPE gives the input back exactly).
#pragma once
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string>
#include <string_view>

#include "models/gguf.h"
#include "models/tokenizer.h"

namespace kvscope::fuzz {

inline bool valid_utf8(std::string_view s) {
  size_t i = 0;
  while (i < s.size()) {
    const auto c = static_cast<unsigned char>(s[i]);
    const size_t n = c < 0x80 ? 1 : (c >> 5) == 0x6 ? 2 : (c >> 4) == 0xE ? 3 : (c >> 3) == 0x1E ? 4 : 0;
    if (n == 0 || i + n > s.size()) return false;
    uint32_t cp = n == 1 ? c : c & (0x7F >> n);
    for (size_t k = 1; k < n; ++k) {
      const auto d = static_cast<unsigned char>(s[i + k]);
      if ((d & 0xC0) != 0x80) return false;
      cp = cp << 6 | (d & 0x3F);
    }
    if ((n == 2 && cp < 0x80) || (n == 3 && cp < 0x800) || (n == 4 && (cp < 0x10000 || cp > 0x10FFFF)) ||
        (cp >= 0xD800 && cp <= 0xDFFF))
      return false;
    i += n;
  }
  return true;
}

inline const Tokenizer& vocabulary(const char* file) {
  static const GgufFile gguf = GgufFile::open(std::string(KVSCOPE_TEST_DATA) + "/vocab/" + file);
  static const Tokenizer tok = Tokenizer::from_gguf(gguf);
  return tok;
}

inline void check_round_trip(const Tokenizer& tok, const uint8_t* data, size_t size, bool exact) {
  const std::string_view text(reinterpret_cast<const char*>(data), size);
  const std::vector<int32_t> ids = tok.encode(text, false);
  for (int32_t id : ids)
    if (id < 0 || id >= tok.n_vocab()) std::abort();  // an id outside the vocabulary
  if (!valid_utf8(text)) return;
  const std::string back = tok.decode(ids);
  if (!valid_utf8(back)) std::abort();
  if (exact && back != text) std::abort();
}

}  // namespace kvscope::fuzz
