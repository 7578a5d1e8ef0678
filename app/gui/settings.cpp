#include "app/gui/settings.h"

#include "app/core/atomic_file.h"

#include <type_traits>

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

Settings parse_settings(std::string_view text) {
  Settings s;
  const nlohmann::json j = nlohmann::json::parse(text);
  if (!j.is_object()) throw std::runtime_error("the settings are a JSON object");
  {
    // Numbers are checked before they are converted: nlohmann's get<int> of
    // 1e64 is undefined behaviour, and a settings file is only text.
    auto integer = [&](const nlohmann::json& o, const char* key, auto& out, int64_t lo, int64_t hi) {
      if (!o.contains(key)) return;
      const nlohmann::json& v = o.at(key);
      const bool fits = v.is_number_integer() && !(v.is_number_unsigned() && v.get<uint64_t>() > uint64_t(hi)) &&
                        v.get<int64_t>() >= lo && v.get<int64_t>() <= hi;
      if (!fits) throw std::runtime_error(fmt::format("\"{}\" is {}, expected a whole number from {} to {}", key,
                                                      v.dump(), lo, hi));
      out = static_cast<std::remove_reference_t<decltype(out)>>(v.get<int64_t>());
    };
    auto number = [&](const nlohmann::json& o, const char* key, float& out, double lo, double hi) {
      if (!o.contains(key)) return;
      const nlohmann::json& v = o.at(key);
      if (!v.is_number() || !(v.get<double>() >= lo && v.get<double>() <= hi))
        throw std::runtime_error(fmt::format("\"{}\" is {}, expected a number from {} to {}", key, v.dump(), lo, hi));
      out = static_cast<float>(v.get<double>());
    };
    s.recent_models = j.value("recent_models", s.recent_models);
    s.last_model = j.value("last_model", s.last_model);
    integer(j, "device_index", s.device_index, -1, 1024);
    if (j.contains("sampling")) {
      const auto& sj = j.at("sampling");
      number(sj, "temperature", s.sampling.temperature, 0.0, 100.0);
      integer(sj, "top_k", s.sampling.top_k, -1, 1 << 30);
      number(sj, "top_p", s.sampling.top_p, 0.0, 1.0);
      if (sj.contains("seed")) {
        if (!sj.at("seed").is_number_unsigned()) throw std::runtime_error("\"seed\" must be a whole number >= 0");
        s.sampling.seed = sj.at("seed").get<uint64_t>();
      }
    }
    integer(j, "tokens", s.tokens, 1, 1 << 20);
    s.system_prompt = j.value("system_prompt", s.system_prompt);
    s.cache_specs = j.value("cache_specs", s.cache_specs);
    integer(j, "width", s.width, 320, 8192);
    integer(j, "height", s.height, 240, 8192);
    if (j.contains("lab")) {
      const auto& lj = j.at("lab");
      if (!lj.is_object()) throw std::runtime_error("\"lab\" is the Lab panel's fields, a JSON object");
      auto text = [&](const char* key, std::string& out) {
        if (!lj.contains(key)) return;
        if (!lj.at(key).is_string() || lj.at(key).get_ref<const std::string&>().size() > 4096)
          throw std::runtime_error(fmt::format("\"lab.{}\" is {}, expected a string", key, lj.at(key).dump()));
        out = lj.at(key).get<std::string>();
      };
      text("text", s.lab.text);
      text("out", s.lab.out);
      text("preset", s.lab.preset);
      text("storages", s.lab.storages);
      text("policies", s.lab.policies);
      text("budgets", s.lab.budgets);
      text("caches", s.lab.caches);
      text("budget", s.lab.budget);
      integer(lj, "chunks", s.lab.max_chunks, 0, 1 << 20);
      if (lj.contains("probes")) {
        if (!lj.at("probes").is_boolean()) throw std::runtime_error("\"lab.probes\" must be true or false");
        s.lab.probes = lj.at("probes").get<bool>();
      }
    }
  }
  return s;
}

Settings load_settings(const std::filesystem::path& path) {
  std::ifstream in(path);
  if (!in) return {};
  std::stringstream text;
  text << in.rdbuf();
  try {
    return parse_settings(text.str());
  } catch (const std::exception& e) {
    // Kept aside rather than overwritten by the settings written on exit.
    in.close();
    const std::filesystem::path aside = keep_aside(path);
    throw std::runtime_error(fmt::format("{}: {}; it was kept as {} and the window starts with its defaults",
                                         path.string(), e.what(), aside.string()));
  }
}

std::string settings_json(const Settings& s) {
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
  j["lab"] = {{"text", s.lab.text},         {"out", s.lab.out},         {"preset", s.lab.preset},
              {"storages", s.lab.storages}, {"policies", s.lab.policies}, {"budgets", s.lab.budgets},
              {"caches", s.lab.caches},     {"chunks", s.lab.max_chunks}, {"budget", s.lab.budget},
              {"probes", s.lab.probes}};
  return j.dump(2) + "\n";
}

void save_settings(const Settings& s, const std::filesystem::path& path) { write_file_atomically(path, settings_json(s)); }

}  // namespace kvscope::gui
