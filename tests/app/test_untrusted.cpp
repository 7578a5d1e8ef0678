// Every input a fuzz target found (tests/fuzz/regressions/TARGET/) stays a
// test: its reader refuses it with its own error type, naming the file —
// never another exception, never a crash. (Conversations: test_conversation.)
#include <doctest/doctest.h>

#include <filesystem>
#include <functional>
#include <sstream>
#include <stdexcept>
#include <string>

#include "app/core/scenario.h"
#include "kv/event_log.h"
#include "tests/test_util.h"

using namespace kvscope;

namespace {
size_t for_each_regression(const std::string& target, const std::function<void(const std::string&)>& check) {
  const std::filesystem::path dir = std::string(KVSCOPE_SOURCE_DIR) + "/tests/fuzz/regressions/" + target;
  size_t files = 0;
  if (!std::filesystem::is_directory(dir)) return 0;
  for (const auto& entry : std::filesystem::directory_iterator(dir)) {
    CAPTURE(entry.path().string());
    ++files;
    check(test::read_text(entry.path().string()));
  }
  return files;
}
}  // namespace

TEST_CASE("untrusted files: scenario files the fuzzer found are refused as ScenarioError naming the file") {
  const size_t files = for_each_regression("scenario", [](const std::string& text) {
    CHECK_THROWS_WITH_AS(parse_scenario(text, "found.json"), doctest::Contains("found.json"), ScenarioError);
  });
  CHECK(files >= 1);
  // The first finding's class: a number too large for a double is "not valid JSON", not an escape.
  CHECK_THROWS_WITH_AS(parse_scenario(R"({"name": 1e999})", "big.json"), doctest::Contains("big.json: not valid JSON"),
                       ScenarioError);
}

TEST_CASE("untrusted files: traces with numbers beyond range or a base that does not hold are refused by line") {
  for_each_regression("trace", [](const std::string& text) {
    std::istringstream in(text);
    CHECK_THROWS_WITH_AS(kv::read_jsonl(in, "found.jsonl"), doctest::Contains("found.jsonl:"), std::runtime_error);
  });
  std::istringstream big(R"({"kind":"header","version":1e999})");
  CHECK_THROWS_WITH_AS(kv::read_jsonl(big, "big.jsonl"), doctest::Contains("big.jsonl:1: not JSON"), std::runtime_error);
  std::istringstream huge(
      R"({"kind":"header","version":1,"policy":"full","n_layer":65536,"n_kv_head":65536,"capacity":65536,"block_slots":1,"pins":[]})");
  CHECK_THROWS_WITH_AS(kv::read_jsonl(huge, "huge.jsonl"), doctest::Contains("larger than any model's cache"),
                       std::runtime_error);
}
