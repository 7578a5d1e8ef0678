// Probes (app/core/probe.h): scenario files, verdicts, and the shipped
// scenarios on the default model under the full cache and a tiny window.
#include <doctest/doctest.h>

#include <algorithm>
#include <filesystem>
#include <fstream>

#include <nlohmann/json.hpp>

#include "app/core/paths.h"
#include "app/core/probe.h"
#include "tests/app/cli_runner.h"
#include "tests/shared_engine.h"
#include "tests/test_util.h"

using namespace kvscope;

TEST_CASE("probe: a scenario parses, and bad ones say what is wrong") {
  const Scenario s = parse_scenario(
      R"({"name": "n", "description": "d", "context": "Lily had a red ball.", "filler": " She ran.",
          "query": " Lily looked for her", "answer": " red ball", "distance": 5})",
      "x.json");
  CHECK(s.name == "n");
  CHECK(s.answer == " red ball");
  CHECK(s.distance == 5);
  CHECK(s.source == "x.json");

  auto error_of = [](const std::string& text) {
    try {
      parse_scenario(text, "bad.json");
    } catch (const ScenarioError& e) {
      return std::string(e.what());
    }
    return std::string("no error");
  };
  CHECK(error_of("{\"name\": ").find("bad.json: not valid JSON") == 0);
  CHECK(error_of("[1, 2]").find("bad.json: a scenario is a JSON object") == 0);
  CHECK(error_of(R"({"name": "n", "context": "c", "query": "q", "answer": "a", "distance": 1})") ==
        "bad.json: \"description\" must be a string (missing)");
  CHECK(error_of(R"({"name": "n", "description": "", "context": "c", "filler": "", "query": "q", "answer": 3,
                    "distance": 1})") == "bad.json: \"answer\" must be a string, not number");
  CHECK(error_of(R"({"name": "n", "description": "", "context": "c", "filler": "", "query": "q", "answer": "a",
                    "distance": -4})")
            .find("\"distance\" must be a whole number") != std::string::npos);
  CHECK(error_of(R"({"name": "n", "description": "", "context": "", "filler": "", "query": "q", "answer": "a",
                    "distance": 1})") == "bad.json: \"context\" is empty");
  CHECK(error_of(R"({"name": "n", "description": "", "context": "c", "filler": "", "query": "q", "answer": "a",
                    "distance": 1, "anwser": "typo"})")
            .find("unknown field \"anwser\"") != std::string::npos);
}

TEST_CASE("probe: verdicts follow the stated margins") {
  // Full cache: logprob -1.0, first token top-1.
  CHECK(verdict_for(-1.0, true, -1.0, true) == Verdict::Retained);
  CHECK(verdict_for(-1.0 - kRetainedMargin + 1e-9, true, -1.0, true) == Verdict::Retained);
  CHECK(verdict_for(-1.2, false, -1.0, true) == Verdict::Degraded);  // close, but no longer top-1
  CHECK(verdict_for(-1.2, false, -1.0, false) == Verdict::Retained);  // was not top-1 either
  CHECK(verdict_for(-2.0, true, -1.0, true) == Verdict::Degraded);
  CHECK(verdict_for(-1.0 - kLostMargin - 1e-9, true, -1.0, true) == Verdict::Lost);
  CHECK(verdict_for(+3.0, true, -1.0, true) == Verdict::Retained);  // better than full is kept
}

// ------------------------------------------------------------ on the default model

namespace {

std::filesystem::path scenarios_dir() { return std::filesystem::path(assets_dir()) / "scenarios"; }

}  // namespace

TEST_CASE("probe: every shipped scenario is answered by the full cache (top-1), 50 to 250 tokens after its fact") {
  const auto files = scenario_files(scenarios_dir());
  CHECK(files.size() >= 10);
  Engine& engine = test::shared_engine();
  uint32_t shortest = UINT32_MAX, longest = 0;
  for (const auto& file : files) {
    const Scenario s = load_scenario(file);
    CAPTURE(s.source);
    const ProbeResult r = run_probe(engine, s, {});
    CHECK(r.full.verdict == Verdict::Retained);
    CHECK(r.full.first_top1);
    CHECK(r.full.first_prob > 0.5);
    CHECK(r.full.fact.empty());
    CHECK(r.measured_distance == s.distance);  // the file states what the tokenizer gives
    CHECK(r.fact_begin == 1);                  // after BOS
    CHECK(r.fact_end > r.fact_begin);
    shortest = std::min(shortest, r.measured_distance);
    longest = std::max(longest, r.measured_distance);
  }
  CHECK(shortest >= 50);
  CHECK(longest <= 250);
  CHECK(longest >= 200);
  CHECK(engine.context().validation_messages() == 0);
}

TEST_CASE("probe: a tiny window loses a far fact, and the fact's whereabouts match the eviction order") {
  Engine& engine = test::shared_engine();
  const Scenario far = load_scenario(scenarios_dir() / "anna-green-dress.json");
  ProbeConfig config;
  config.policies = {"window:budget=16", "h2o:budget=64,recent=32"};
  const ProbeResult r = run_probe(engine, far, config);
  REQUIRE(r.policies.size() == 2);
  const ProbeRun& window = r.policies[0];
  CHECK(window.cache == "window:budget=16");
  CHECK(window.verdict == Verdict::Lost);
  CHECK(window.logprob < r.full.logprob - kLostMargin);
  CHECK(window.evictions > 0);
  // window:budget=16 takes positions 0..15 as its prompt (step 0), then one
  // position per step: step k writes position 15 + k after evicting the
  // oldest, position k - 1. So fact token p left every layer at step p + 1.
  REQUIRE(window.fact.size() == static_cast<size_t>(r.fact_end - r.fact_begin));
  for (const FactToken& f : window.fact) {
    CAPTURE(f.position);
    for (size_t l = 0; l < f.state.size(); ++l) {
      CHECK(f.state[l] == Whereabouts::Evicted);
      CHECK(f.evicted_step[l] == f.position + 1);
    }
  }
  // H2O keeps some of the fact in some layers; a token is "evicted" exactly
  // when the log has its eviction in that layer (no spill: nothing recalled).
  const ProbeRun& h2o = r.policies[1];
  bool some_kept = false;
  for (const FactToken& f : h2o.fact)
    for (size_t l = 0; l < f.state.size(); ++l) {
      CHECK((f.state[l] == Whereabouts::Evicted) == (f.evicted_step[l] >= 0));
      some_kept = some_kept || f.state[l] == Whereabouts::Kept;
    }
  CHECK(some_kept);
  CHECK(h2o.logprob > window.logprob);
  CHECK(engine.context().validation_messages() == 0);
}

TEST_CASE("probe: a scenario longer than the context is refused with the numbers") {
  Engine& engine = test::shared_engine();
  Scenario s = load_scenario(scenarios_dir() / "lily-red-ball.json");
  std::string filler;
  for (int i = 0; i < 40; ++i) filler += " They ran and jumped and laughed in the sun.";
  s.filler = filler;
  CHECK_THROWS_WITH_AS(run_probe(engine, s, {}), doctest::Contains("and the context holds 256"),
                       std::invalid_argument);
}

TEST_CASE("cli: kvscope probe prints a verdict per policy; --json has the fact's whereabouts; errors are one line") {
  const test::CliResult r = test::kvscope_cli("probe " + (scenarios_dir() / "lily-red-ball.json").string() +
                                              " --policy window:budget=16 --json");
  REQUIRE_MESSAGE(r.code == 0, r.out);
  const nlohmann::json j = test::last_json(r.out);
  REQUIRE(j["scenarios"].size() == 1);
  const nlohmann::json& s = j["scenarios"][0];
  CHECK(s["name"] == "lily-red-ball");
  CHECK(s["full"]["verdict"] == "retained");
  REQUIRE(s["policies"].size() == 1);
  CHECK(s["policies"][0]["cache"] == "window:budget=16");
  CHECK(s["policies"][0]["fact"][0]["layers"].size() == 6);
  CHECK(s["policies"][0]["fact"][0]["layers"][0]["state"] == "evicted");

  const test::CliResult text = test::kvscope_cli("probe " + (scenarios_dir() / "lily-red-ball.json").string() +
                                                 " --policy h2o:budget=32,recent=16");
  REQUIRE_MESSAGE(text.code == 0, text.out);
  CHECK(text.out.find("h2o:budget=32,recent=16") != std::string::npos);
  CHECK(text.out.find("policy runs retained the answer") != std::string::npos);

  test::TempDir dir;
  const std::string bad = dir.file("bad.json");
  std::ofstream(bad) << "{\"name\": \"x\"";
  const test::CliResult err = test::kvscope_cli("probe " + bad);
  CHECK(err.code != 0);
  CHECK(test::count_lines(err.out) == 1);
  CHECK(err.out.find("bad.json: not valid JSON") != std::string::npos);
  const test::CliResult none = test::kvscope_cli("probe");
  CHECK(none.code != 0);
  CHECK(none.out.find("--all") != std::string::npos);
}
