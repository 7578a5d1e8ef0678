// Policy `full` when the context fills (an error that says what to do, or
// --on-full POLICY), and chat's --pin-system, through the `kvscope` command
// on the default model.
#include <doctest/doctest.h>

#include <fstream>
#include <string>

#include <nlohmann/json.hpp>

#include "tests/app/cli_runner.h"
#include "tests/test_util.h"

using nlohmann::json;
using namespace kvscope;

TEST_CASE("cli: policy full on a full context is a clear error naming -c and --on-full") {
  const test::CliResult r = test::kvscope_cli("run -c 32 -n 100 --temp 0 --policy full");
  CHECK(r.code != 0);
  CHECK(r.out.find("kvscope: error: the context is full: 32 tokens held + ") != std::string::npos);
  CHECK(r.out.find("(policy full keeps every token;") != std::string::npos);
  CHECK(r.out.find("use a larger context (-c)") != std::string::npos);
  CHECK(r.out.find("--on-full streamingllm:sinks=4,window=28") != std::string::npos);
  // Without a policy the run stops at the full context, as llama.cpp's does.
  const test::CliResult plain = test::kvscope_cli("run -c 32 -n 100 --temp 0 --json");
  REQUIRE_MESSAGE(plain.code == 0, plain.out);
}

TEST_CASE("cli: --on-full keeps everything until the context is full, then evicts with the policy") {
  const test::CliResult full = test::kvscope_cli("run -c 32 -n 20 --temp 0 --json");
  REQUIRE_MESSAGE(full.code == 0, full.out);
  const test::CliResult r =
      test::kvscope_cli("run -c 32 -n 60 --temp 0 --on-full streamingllm:sinks=4,window=28 --json");
  REQUIRE_MESSAGE(r.code == 0, r.out);
  const json a = test::last_json(full.out), b = test::last_json(r.out);
  CHECK(b["policy"] == "streamingllm:sinks=4,window=28");
  REQUIRE(b["ids"].size() == 60);  // past the 32-token context
  // 5 prompt tokens + 60 new (each fed back) in 32 slots: every token past
  // the 32nd evicts one in each of 6 layers x 6 kv heads.
  CHECK(b["evictions"] == (5 + 60 - 32) * 36);
  // Until the context filled nothing was evicted: the same greedy tokens.
  for (size_t i = 0; i < 20; ++i) {
    CAPTURE(i);
    CHECK(a["ids"][i] == b["ids"][i]);
  }
}

TEST_CASE("cli: --on-full errors name the flag and what fits") {
  SUBCASE("a budget other than the context is refused with the one that fits") {
    const test::CliResult bad = test::kvscope_cli("run -c 32 -n 4 --on-full window:budget=16");
    CHECK(bad.code != 0);
    CHECK(test::count_lines(bad.out) == 1);
    CHECK(bad.out.find("--on-full window:budget=16: layer 0 has a budget of 16 slots") != std::string::npos);
    CHECK(bad.out.find("give it a budget of 32") != std::string::npos);
  }
  SUBCASE("with an evicting --policy it is refused") {
    const test::CliResult bad =
        test::kvscope_cli("run -c 32 -n 4 --policy window:budget=16 --on-full window:budget=32");
    CHECK(bad.code != 0);
    CHECK(bad.out.find("--on-full applies to policy full") != std::string::npos);
  }
  SUBCASE("a bad spec names --on-full") {
    const test::CliResult bad = test::kvscope_cli("run -c 32 -n 4 --on-full windw:budget=32");
    CHECK(bad.code != 0);
    CHECK(bad.out.find("--on-full windw:budget=32: unknown eviction policy 'windw'") != std::string::npos);
  }
}

TEST_CASE("cli: chat --pin-system keeps the system prompt's tokens through eviction") {
  test::TempDir dir;
  const std::string input = dir.file("input.txt"), trace = dir.file("trace.jsonl");
  std::ofstream(input) << "She went to the park.\nThen she went home.\n";
  const test::CliResult r = test::kvscope_cli(
      "chat -c 64 -n 24 --temp 0 --verbose --policy window:budget=32 --pin-system --trace " + trace +
      " --system \"Once upon a time there was a girl named Lily.\" < " + input);
  REQUIRE_MESSAGE(r.code == 0, r.out);
  const size_t note = r.out.find("[system prompt pinned: tokens 0:");
  REQUIRE_MESSAGE(note != std::string::npos, r.out);
  const int pinned_end = std::stoi(r.out.substr(note + std::string("[system prompt pinned: tokens 0:").size()));
  CHECK(pinned_end >= 10);  // BOS and the sentence
  const std::vector<json> rows = test::read_jsonl(trace);
  REQUIRE(!rows.empty());
  CHECK(rows[0]["pins"] == json::array({"0:" + std::to_string(pinned_end)}));
  size_t evictions = 0;
  for (const json& row : rows) {
    if (row["kind"] != "evict") continue;
    ++evictions;
    CHECK(row["position"].get<int>() >= pinned_end);
  }
  CHECK(evictions > 0);  // two replies of 24 tokens overflow a window of 32
  // The pinned tokens count in the budget: never more than 32 live.
  for (const json& row : rows)
    if (row["kind"] == "occupancy")
      for (const json& layer : row["live"])
        for (const json& live : layer) CHECK(live.get<int>() <= 32);
}
