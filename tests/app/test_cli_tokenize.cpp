// `kvscope tokenize` on vocabulary-only GGUF files (no weights): the byte-level
// BPE GPT-2 vocabulary and the SentencePiece Phi-3 one, against the ids
// Hugging Face tokenizers give (tests/data/vocab/*.out).
#include <doctest/doctest.h>

#include <nlohmann/json.hpp>

#include "tests/app/cli_runner.h"
#include "tests/test_util.h"

using nlohmann::json;
using namespace kvscope;

namespace {

// The ids of `j`, without the BOS the command puts in front when the
// vocabulary has one.
std::vector<int32_t> ids_after_bos(const json& j, int32_t bos) {
  std::vector<int32_t> ids = j.at("ids").get<std::vector<int32_t>>();
  if (!ids.empty() && ids.front() == bos) ids.erase(ids.begin());
  return ids;
}

}  // namespace

TEST_CASE("cli tokenize: GPT-2 byte-level BPE vocabulary") {
  const std::string vocab = test::data_path("vocab/ggml-vocab-gpt-2.gguf");
  const test::CliResult r = test::kvscope_cli("tokenize -m " + vocab + " 'Hello world' --json");
  REQUIRE_MESSAGE(r.code == 0, r.out);
  const json j = test::last_json(r.out);
  // Reference ids for "Hello world" (ggml-vocab-gpt-2.gguf.out).
  CHECK(ids_after_bos(j, 50256) == std::vector<int32_t>{15496, 995});
  const auto pieces = j.at("pieces").get<std::vector<std::string>>();
  CHECK(pieces.back() == "\xC4\xA0world");  // "Ġworld": GPT-2 stores the space as "Ġ"

  const test::CliResult plain = test::kvscope_cli("tokenize -m " + vocab + " 'Hello world'");
  REQUIRE_MESSAGE(plain.code == 0, plain.out);
  CHECK(plain.out.find("995 -> '\xC4\xA0world'") != std::string::npos);
}

TEST_CASE("cli tokenize: a control token typed by the user is plain text") {
  const std::string vocab = test::data_path("vocab/ggml-vocab-gpt-2.gguf");
  const test::CliResult r = test::kvscope_cli("tokenize -m " + vocab + " 'a<|endoftext|>b' --json");
  REQUIRE_MESSAGE(r.code == 0, r.out);
  const std::vector<int32_t> ids = ids_after_bos(test::last_json(r.out), 50256);
  CHECK(ids.size() > 3);
  CHECK(std::find(ids.begin(), ids.end(), 50256) == ids.end());
}

TEST_CASE("cli tokenize: Phi-3 SentencePiece vocabulary") {
  const std::string vocab = test::data_path("vocab/ggml-vocab-phi-3.gguf");
  const test::CliResult r = test::kvscope_cli("tokenize -m " + vocab + " 'Hello world' --json");
  REQUIRE_MESSAGE(r.code == 0, r.out);
  // Reference ids for "Hello world" (ggml-vocab-phi-3.gguf.out), after BOS 1.
  CHECK(test::last_json(r.out).at("ids") == json({1, 15043, 3186}));
}
