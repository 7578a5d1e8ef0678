#include "app/gui/settings.h"

#include "app/core/atomic_file.h"

#include <fmt/format.h>

#include <algorithm>
#include <cstdlib>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

namespace kvscope::gui {

void Settings::add_recent_model(const std::string& path) {
  recent_models.erase(std::remove(recent_models.begin(), recent_models.end(), path), recent_models.end());
  recent_models.insert(recent_models.begin(), path);
  if (recent_models.size() > kMaxRecent) recent_models.resize(kMaxRecent);
  last_model = path;
}

std::filesystem::path settings_path() {
  if (const char* xdg = std::getenv("XDG_CONFIG_HOME"); xdg && *xdg)
    return std::filesystem::path(xdg) / "kvscope" / "settings.json";
  const char* home = std::getenv("HOME");
  return std::filesystem::path(home && *home ? home : ".") / ".config" / "kvscope" / "settings.json";
}

Settings load_settings(const std::filesystem::path& path) {
  Settings s;
  std::ifstream in(path);
  if (!in) return s;
  std::stringstream text;
  text << in.rdbuf();
  try {
    const nlohmann::json j = nlohmann::json::parse(text.str());
    s.recent_models = j.value("recent_models", s.recent_models);
    s.last_model = j.value("last_model", s.last_model);
    s.device_index = j.value("device_index", s.device_index);
    if (j.contains("sampling")) {
      const auto& sj = j.at("sampling");
      s.sampling.temperature = sj.value("temperature", s.sampling.temperature);
      s.sampling.top_k = sj.value("top_k", s.sampling.top_k);
      s.sampling.top_p = sj.value("top_p", s.sampling.top_p);
      s.sampling.seed = sj.value("seed", s.sampling.seed);
    }
    s.tokens = j.value("tokens", s.tokens);
    s.system_prompt = j.value("system_prompt", s.system_prompt);
    s.cache_specs = j.value("cache_specs", s.cache_specs);
    s.width = j.value("width", s.width);
    s.height = j.value("height", s.height);
  } catch (const std::exception& e) {
    // Kept aside rather than overwritten by the settings written on exit.
    in.close();
    const std::filesystem::path aside = keep_aside(path);
    throw std::runtime_error(fmt::format("{}: {}; it was kept as {} and the window starts with its defaults",
                                         path.string(), e.what(), aside.string()));
  }
  return s;
}

void save_settings(const Settings& s, const std::filesystem::path& path) {
  nlohmann::ordered_json j;
  j["recent_models"] = s.recent_models;
  j["last_model"] = s.last_model;
  j["device_index"] = s.device_index;
  j["sampling"] = {{"temperature", s.sampling.temperature},
                   {"top_k", s.sampling.top_k},
                   {"top_p", s.sampling.top_p},
                   {"seed", s.sampling.seed}};
  j["tokens"] = s.tokens;
  j["system_prompt"] = s.system_prompt;
  j["cache_specs"] = s.cache_specs;
  j["width"] = s.width;
  j["height"] = s.height;
  write_file_atomically(path, j.dump(2) + "\n");
}

}  // namespace kvscope::gui
