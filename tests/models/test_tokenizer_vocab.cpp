// The tokenizer on a vocabulary-only GGUF file written by llama.cpp (the
// Llama SPM vocabulary, no weights), against llama.cpp's own tokenization of
// its tokenizer test strings (tests/data/vocab/*.inp -> *.out, no BOS).
#include <doctest/doctest.h>

#include <sstream>

#include "models/gguf.h"
#include "models/tokenizer.h"
#include "tests/test_util.h"

using namespace kvscope;

namespace {

// llama.cpp's test-tokenizer-0 format: inputs separated by a marker line;
// outputs one line of space-separated ids per input.
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

}  // namespace

TEST_CASE("tokenizer: llama.cpp's test strings on its vocabulary-only llama-spm GGUF") {
  const std::string base = test::data_path("vocab/ggml-vocab-llama-spm.gguf");
  GgufFile file = GgufFile::open(base);
  CHECK(file.tensors().empty());  // vocabulary only
  const Tokenizer tok = Tokenizer::from_gguf(file);
  const auto inputs = split_inputs(test::read_text(base + ".inp"));
  const auto expected = read_outputs(test::read_text(base + ".out"));
  REQUIRE(inputs.size() == expected.size());
  REQUIRE(inputs.size() > 30);
  for (size_t i = 0; i < inputs.size(); ++i) {
    CAPTURE(inputs[i]);
    CHECK(tok.encode(inputs[i], false) == expected[i]);
  }
}
