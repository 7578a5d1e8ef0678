// What the window remembers between runs, in the person's config folder:
// $XDG_CONFIG_HOME/kvscope/settings.json, else ~/.config/kvscope/settings.json.
// Read at start (a missing file is the defaults; a broken one is reported
// and replaced on exit), written on exit.
#pragma once
#include <filesystem>
#include <string>
#include <string_view>
#include <vector>

#include "models/sampler.h"

namespace kvscope::gui {

// The Lab panel's fields (app/gui/lab.h), as a scripted run or the settings give them.
struct LabFields {
  std::string text;        // the text file ("": the sources' tests/data/corpus.txt when there)
  std::string out;         // the journal's folder ("" : under the cache folder, named after the text)
  std::string preset = "quick";
  std::string storages, policies, budgets, caches;
  uint32_t max_chunks = 4; // 0: every chunk
  std::string budget = "25%";
  bool probes = false;     // every scenario of assets/scenarios under every cache (as `kvscope lab --probes`)
};

struct Settings {
  std::vector<std::string> recent_models;  // most recent first, at most kMaxRecent
  std::string last_model;
  int device_index = -1;
  SamplerConfig sampling{0.8f, 40, 0.95f, 0};
  uint32_t tokens = 96;
  std::string system_prompt;
  std::vector<std::string> cache_specs;    // the sessions' specs ("f16", "q8 + h2o:budget=64")
  int width = 1440, height = 900;
  LabFields lab;                           // the Lab panel's last fields

  static constexpr size_t kMaxRecent = 8;
  void add_recent_model(const std::string& path);
};

std::filesystem::path settings_path();
// Throws std::runtime_error naming the file and what is wrong; a missing file
// gives the defaults.
Settings load_settings(const std::filesystem::path& path);
// The same from the file's text (throws std::exception saying what is wrong),
// and the text save_settings writes.
Settings parse_settings(std::string_view text);
std::string settings_json(const Settings& settings);
// Creates the folder; throws std::runtime_error naming the file on failure.
void save_settings(const Settings& settings, const std::filesystem::path& path);

}  // namespace kvscope::gui
