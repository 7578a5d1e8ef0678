#include "app/core/scenario.h"

#include <algorithm>
#include <fstream>
#include <sstream>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

namespace kvscope {

using nlohmann::json;

Scenario parse_scenario(const std::string& json_text, const std::string& source) {
  json j;
  try {
    j = json::parse(json_text);
  } catch (const json::parse_error& e) {
    throw ScenarioError(fmt::format("{}: not valid JSON (byte {}): {}", source, e.byte, e.what()));
  } catch (const json::exception& e) {  // a number beyond double's range (fuzz_scenario's first finding)
    throw ScenarioError(fmt::format("{}: not valid JSON: {}", source, e.what()));
  }
  if (!j.is_object())
    throw ScenarioError(fmt::format("{}: a scenario is a JSON object with name, description, context, filler, "
                                    "query, answer and distance",
                                    source));
  Scenario s;
  s.source = source;
  auto text = [&](const char* key, std::string& out, bool may_be_empty) {
    if (!j.contains(key) || !j[key].is_string())
      throw ScenarioError(fmt::format("{}: \"{}\" must be a string{}", source, key,
                                      j.contains(key) ? fmt::format(", not {}", j[key].type_name()) : " (missing)"));
    out = j[key].get<std::string>();
    if (out.empty() && !may_be_empty) throw ScenarioError(fmt::format("{}: \"{}\" is empty", source, key));
  };
  text("name", s.name, false);
  text("description", s.description, true);
  text("context", s.context, false);
  text("filler", s.filler, true);
  text("query", s.query, false);
  text("answer", s.answer, false);
  if (!j.contains("distance") || !j["distance"].is_number_unsigned() || j["distance"].get<uint64_t>() > 1000000)
    throw ScenarioError(fmt::format("{}: \"distance\" must be a whole number of tokens from 0 to 1000000{}", source,
                                    j.contains("distance") ? "" : " (missing)"));
  s.distance = j["distance"].get<uint32_t>();
  for (const auto& [key, value] : j.items())
    if (key != "name" && key != "description" && key != "context" && key != "filler" && key != "query" &&
        key != "answer" && key != "distance")
      throw ScenarioError(fmt::format("{}: unknown field \"{}\"; a scenario has name, description, context, "
                                      "filler, query, answer, distance",
                                      source, key));
  return s;
}

Scenario load_scenario(const std::filesystem::path& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw ScenarioError(fmt::format("{}: cannot read the scenario file", path.string()));
  std::stringstream ss;
  ss << in.rdbuf();
  return parse_scenario(ss.str(), path.string());
}

std::vector<std::filesystem::path> scenario_files(const std::filesystem::path& dir) {
  std::error_code ec;
  if (!std::filesystem::is_directory(dir, ec))
    throw ScenarioError(fmt::format("{}: no such folder of scenarios (set KVSCOPE_ASSETS to the assets folder)",
                                    dir.string()));
  std::vector<std::filesystem::path> files;
  for (const auto& entry : std::filesystem::directory_iterator(dir))
    if (entry.is_regular_file() && entry.path().extension() == ".json") files.push_back(entry.path());
  std::sort(files.begin(), files.end());
  if (files.empty()) throw ScenarioError(fmt::format("{}: holds no scenario (*.json)", dir.string()));
  return files;
}

}  // namespace kvscope
