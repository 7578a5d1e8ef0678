// A probe scenario, as its file gives it (kept apart from the probe that
// runs it so the file reader needs no device: the fuzz target reads it too).
//
// Scenario files are JSON objects (assets/scenarios/*.json):
//   {"name": "...", "description": "...", "context": "...", "filler": "...",
//    "query": "...", "answer": "...", "distance": N}
// The text run is context + filler + query, exactly as written (the files
// carry the spaces), tokenized with BOS; the answer is what the model should
// continue with. `distance` is the scenario's stated number of tokens from
// the end of the fact to the end of the query; the probe reports the measured
// one next to it.
#pragma once
#include <cstdint>
#include <filesystem>
#include <stdexcept>
#include <string>
#include <vector>

namespace kvscope {

struct Scenario {
  std::string name, description, context, filler, query, answer;
  uint32_t distance = 0;
  std::string source;  // the file it came from ("" for one built in code)
};

// A scenario file that cannot be used; the message names the file and what
// is wrong (not JSON and where, a missing or mistyped field).
struct ScenarioError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

// Throws ScenarioError naming `source`.
Scenario parse_scenario(const std::string& json_text, const std::string& source);
Scenario load_scenario(const std::filesystem::path& path);
// Every *.json file in `dir`, sorted by name. Throws ScenarioError when the
// folder does not exist or holds none.
std::vector<std::filesystem::path> scenario_files(const std::filesystem::path& dir);

}  // namespace kvscope
