// Tokenizer against llama.cpp's output on the Llama 2 vocabulary
// (tests/data/tokenize.json), round trips, and the streaming detokenizer.
#include <doctest/doctest.h>
#include <fmt/format.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <vector>

#include "app/core/paths.h"
#include "models/gguf.h"
#include "models/tokenizer.h"

using namespace kvscope;

namespace {

// The vocabulary of the default model ($KVSCOPE_MODEL, else
// $XDG_CACHE_HOME/kvscope/stories15M.gguf or ~/.cache/..., where
// scripts/setup.sh puts it), loaded once. A missing model fails the
// test (not skips it): the tokenizer is untested without it.
const Tokenizer& vocab() {
  static const std::optional<Tokenizer> tokenizer = []() -> std::optional<Tokenizer> {
    const std::string path = default_model_path();
    if (!std::filesystem::exists(path)) return std::nullopt;
    const GgufFile file = GgufFile::open(path);
    return Tokenizer::from_gguf(file);
  }();
  if (!tokenizer) {
    FAIL("no model at " << default_model_path()
                        << ": run scripts/setup.sh to fetch the default model (or set KVSCOPE_MODEL)");
  }
  return *tokenizer;
}

struct Case {
  std::string text;
  std::vector<int32_t> ids;
};

std::vector<Case> reference_cases() {
  const std::string path = std::string(KVSCOPE_TEST_DATA) + "/tokenize.json";
  std::ifstream in(path);
  REQUIRE_MESSAGE(in.good(), "cannot open " << path);
  const nlohmann::json cases = nlohmann::json::parse(in);
  std::vector<Case> out;
  for (const auto& c : cases) out.push_back({c.at("text").get<std::string>(), c.at("ids").get<std::vector<int32_t>>()});
  REQUIRE(!out.empty());
  return out;
}

// Independent strict UTF-8 check (RFC 3629): no overlongs, surrogates, or
// code points past U+10FFFF, no truncated characters.
bool valid_utf8(const std::string& s) {
  size_t i = 0;
  while (i < s.size()) {
    const auto c = static_cast<uint8_t>(s[i]);
    int len;
    uint32_t cp;
    if (c < 0x80) { len = 1; cp = c; }
    else if ((c & 0xE0) == 0xC0) { len = 2; cp = c & 0x1F; }
    else if ((c & 0xF0) == 0xE0) { len = 3; cp = c & 0x0F; }
    else if ((c & 0xF8) == 0xF0) { len = 4; cp = c & 0x07; }
    else return false;
    if (i + len > s.size()) return false;
    for (int k = 1; k < len; ++k) {
      const auto b = static_cast<uint8_t>(s[i + k]);
      if ((b & 0xC0) != 0x80) return false;
      cp = (cp << 6) | (b & 0x3F);
    }
    static constexpr uint32_t kMinForLen[5] = {0, 0, 0x80, 0x800, 0x10000};
    if (cp < kMinForLen[len] || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) return false;
    i += len;
  }
  return true;
}

std::string ids_to_string(const std::vector<int32_t>& ids) { return fmt::format("[{}]", fmt::join(ids, ", ")); }

// Streams `ids` through a Detokenizer, checking every chunk is valid UTF-8.
std::string stream(const Tokenizer& tok, const std::vector<int32_t>& ids) {
  Detokenizer detok(tok);
  std::string out;
  for (int32_t id : ids) {
    const std::string chunk = detok.push(id);
    CHECK_MESSAGE(valid_utf8(chunk), "chunk after token " << id << " is not valid UTF-8");
    out += chunk;
  }
  const std::string rest = detok.flush();
  CHECK(valid_utf8(rest));
  return out + rest;
}

constexpr const char* kReplacement = "\xEF\xBF\xBD";

}  // namespace

TEST_CASE("tokenizer: loads the Llama 2 vocabulary") {
  const Tokenizer& tok = vocab();
  CHECK(tok.n_vocab() == 32000);
  CHECK(tok.bos() == 1);
  CHECK(tok.eos() == 2);
  CHECK(tok.unk() == 0);
  CHECK(tok.piece(1) == "<s>");
  CHECK(tok.type(1) == TokenType::Control);
  CHECK(tok.type(0) == TokenType::Unknown);
  CHECK(tok.piece(13) == "<0x0A>");
  CHECK(tok.type(13) == TokenType::Byte);
  CHECK(tok.piece(29871) == "\xE2\x96\x81");
  CHECK_THROWS_AS(tok.piece(32000), std::out_of_range);
  CHECK_THROWS_AS(tok.piece(-1), std::out_of_range);
}

TEST_CASE("tokenizer: encode matches llama.cpp on tests/data/tokenize.json") {
  const Tokenizer& tok = vocab();
  for (const Case& c : reference_cases()) {
    CAPTURE(c.text);
    const std::vector<int32_t> ids = tok.encode(c.text, /*add_bos=*/true);
    CHECK_MESSAGE(ids == c.ids, "got " << ids_to_string(ids) << ", llama.cpp gives " << ids_to_string(c.ids));
  }
}

TEST_CASE("tokenizer: decode(encode(s)) == s and streaming gives the same text") {
  const Tokenizer& tok = vocab();
  for (const Case& c : reference_cases()) {
    CAPTURE(c.text);
    CHECK(tok.decode(tok.encode(c.text, true)) == c.text);
    CHECK(tok.decode(tok.encode(c.text, false)) == c.text);
    CHECK(tok.decode(c.ids) == c.text);
    CHECK(stream(tok, c.ids) == c.text);
  }
}

TEST_CASE("tokenizer: matches llama.cpp on the story and the greedy prompts and continuations") {
  const Tokenizer& tok = vocab();
  const std::string data = KVSCOPE_TEST_DATA;
  {
    std::ifstream story_in(data + "/story1.txt", std::ios::binary);
    std::ifstream logits_in(data + "/logits-story1-f32.json");
    REQUIRE((story_in.good() && logits_in.good()));
    const std::string story(std::istreambuf_iterator<char>(story_in), {});
    const auto expected = nlohmann::json::parse(logits_in).at("ids").get<std::vector<int32_t>>();
    CHECK(tok.encode(story, true) == expected);
  }
  for (const char* name : {"/greedy-f32.jsonl", "/greedy-q8_0.jsonl"}) {
    std::ifstream in(data + name);
    REQUIRE(in.good());
    for (std::string line; std::getline(in, line);) {
      if (line.empty()) continue;
      const nlohmann::json run = nlohmann::json::parse(line);
      const std::string prompt = run.at("prompt");
      CAPTURE(prompt);
      const auto prompt_ids = run.at("prompt_ids").get<std::vector<int32_t>>();
      const auto greedy_ids = run.at("greedy_ids").get<std::vector<int32_t>>();
      CHECK(tok.encode(prompt, true) == prompt_ids);
      std::vector<int32_t> all = prompt_ids;
      all.insert(all.end(), greedy_ids.begin(), greedy_ids.end());
      CHECK(stream(tok, all) == prompt + run.at("greedy_text").get<std::string>());
    }
  }
}

TEST_CASE("tokenizer: edge cases of encode") {
  const Tokenizer& tok = vocab();
  CHECK(tok.encode("", true) == std::vector<int32_t>{1});
  CHECK(tok.encode("", false).empty());
  CHECK(tok.encode("a", false) == std::vector<int32_t>{263});
  // Control tokens in the text are plain text.
  CHECK(tok.encode("<s>", false) != std::vector<int32_t>{1});

  // Invalid UTF-8 falls back to byte tokens, bytes preserved exactly.
  const std::vector<std::string> invalid = {"\xFF", "a\xC3", "\xC3(", "\x80\x80x", "\xED\xA0\x80",
                                            "\xF0\x9F\x99", std::string("nul\0byte", 8)};
  for (const std::string& s : invalid) {
    CAPTURE(s);
    const std::vector<int32_t> ids = tok.encode(s, true);
    for (int32_t id : ids) CHECK((id >= 0 && id < tok.n_vocab()));
    CHECK(tok.decode(ids) == s);
    CHECK(valid_utf8(stream(tok, ids)));
  }
  // A lone 0xFF byte: "▁" then <0xFF> (id 3 + 0xFF).
  CHECK(tok.encode("\xFF", false) == std::vector<int32_t>{29871, 3 + 0xFF});

  // Long input stays fast and exact (the merge loop is O(n log n)).
  std::string long_text;
  for (int i = 0; i < 2000; ++i) long_text += "Once upon a time, there was a little girl named Lily. ";
  CHECK(tok.decode(tok.encode(long_text, true)) == long_text);
}

TEST_CASE("tokenizer: token_bytes") {
  const Tokenizer& tok = vocab();
  CHECK(tok.token_bytes(13) == "\n");       // <0x0A>
  CHECK(tok.token_bytes(3) == std::string(1, '\0'));
  CHECK(tok.token_bytes(3 + 0xF0) == "\xF0");
  CHECK(tok.token_bytes(29871) == " ");     // ▁
  CHECK(tok.token_bytes(1023) == " two");   // ▁two
  CHECK(tok.token_bytes(1).empty());        // <s>
  CHECK(tok.token_bytes(2).empty());        // </s>
  CHECK(tok.token_bytes(0).empty());        // <unk>
  CHECK(tok.decode({1, 13}) == "\n");
  CHECK(tok.decode({1, 9038, 2501, 2}) == "Once upon");
  // Only the first piece loses its space.
  CHECK(tok.decode({9038, 9038}) == "Once Once");
}

TEST_CASE("detokenizer: multi-byte characters split across byte tokens") {
  const Tokenizer& tok = vocab();
  // "emoji 🙂": 🙂 = F0 9F 99 82 arrives as four byte tokens.
  const std::vector<int32_t> ids = tok.encode("emoji \xF0\x9F\x99\x82!", true);
  Detokenizer detok(tok);
  std::string out;
  int held_back = 0;
  for (int32_t id : ids) {
    const std::string chunk = detok.push(id);
    CHECK(valid_utf8(chunk));
    if (chunk.empty() && tok.type(id) == TokenType::Byte) ++held_back;
    out += chunk;
  }
  CHECK(held_back == 3);  // the first three bytes of the emoji wait for the fourth
  out += detok.flush();
  CHECK(out == "emoji \xF0\x9F\x99\x82!");
}

TEST_CASE("detokenizer: invalid bytes become U+FFFD, never half a character") {
  const Tokenizer& tok = vocab();
  const int32_t byte0 = 3;  // <0x00>
  auto byte = [&](int b) { return byte0 + b; };
  {
    Detokenizer d(tok);
    CHECK(d.push(byte(0xFF)) == kReplacement);
    CHECK(d.push(byte(0x80)) == kReplacement);
    CHECK(d.flush().empty());
  }
  {  // a truncated character followed by text: one U+FFFD, then the text
    Detokenizer d(tok);
    CHECK(d.push(byte(0xE6)).empty());
    CHECK(d.push(byte(0x97)).empty());
    CHECK(d.push(263) == std::string(kReplacement) + " a");  // ▁a, not the first piece
    CHECK(d.flush().empty());
  }
  {  // truncated at the end: flush gives U+FFFD
    Detokenizer d(tok);
    CHECK(d.push(byte(0xF0)).empty());
    CHECK(d.flush() == kReplacement);
  }
  {  // surrogate encoding (ED A0 80) is not UTF-8
    Detokenizer d(tok);
    std::string out = d.push(byte(0xED));
    out += d.push(byte(0xA0));
    out += d.push(byte(0x80));
    out += d.flush();
    CHECK(valid_utf8(out));
    CHECK(out.find(kReplacement) != std::string::npos);
  }
  {  // the leading space of the first piece after BOS is dropped
    Detokenizer d(tok);
    CHECK(d.push(1).empty());
    CHECK(d.push(9038) == "Once");
    CHECK(d.push(2501) == " upon");
  }
}

TEST_CASE("tokenizer: a byte token whose text is not <0xHH> is refused, naming the token") {
  // llama.cpp's vocabulary test file, with one byte token's text replaced as a
  // crafted file would (a "<0x-1>" turned into a heap write in another loader).
  const GgufFile good = GgufFile::open(std::string(KVSCOPE_TEST_DATA) + "/vocab/ggml-vocab-llama-spm.gguf");
  const GgufArray& tokens = good.get("tokenizer.ggml.tokens").as_array("tokenizer.ggml.tokens");
  const GgufArray& types = good.get("tokenizer.ggml.token_type").as_array("tokenizer.ggml.token_type");
  size_t byte_token = 0;
  while (byte_token < types.items.size() && types.items[byte_token].as_int("t") != 6) ++byte_token;
  REQUIRE(byte_token < types.items.size());
  CHECK_NOTHROW(Tokenizer::from_gguf(good));
  for (const char* lie : {"<0x-1>", "<0x1G>", "<0x100>", "A"}) {
    CAPTURE(lie);
    GgufArray lying = tokens;
    lying.items[byte_token].value = std::string(lie);
    GgufWriter w;
    for (const auto& key : good.metadata_order()) {
      if (key == "tokenizer.ggml.tokens") {
        GgufValue v;
        v.type = GgufValueType::ARRAY;
        v.value = std::make_shared<GgufArray>(lying);
        w.set(key, v);
      } else {
        w.set(key, good.get(key));
      }
    }
    const std::vector<uint8_t> bytes = w.to_bytes();
    const GgufFile file = GgufFile::from_memory(bytes, "lie.gguf");
    CHECK_THROWS_WITH_AS(Tokenizer::from_gguf(file),
                         doctest::Contains(fmt::format("token {} has type BYTE", byte_token).c_str()), GgufError);
  }
}
