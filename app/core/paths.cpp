#include "app/core/paths.h"

#include <cstdlib>
#include <filesystem>
#include <stdexcept>

#include <fmt/format.h>

namespace kvscope {

std::string cache_dir() {
  if (const char* xdg = std::getenv("XDG_CACHE_HOME"); xdg && *xdg) return std::string(xdg) + "/kvscope";
  if (const char* home = std::getenv("HOME"); home && *home) return std::string(home) + "/.cache/kvscope";
  return std::filesystem::temp_directory_path().string() + "/kvscope-cache";
}

std::string default_model_path() {
  if (const char* m = std::getenv("KVSCOPE_MODEL"); m && *m) return m;
  return cache_dir() + "/stories15M.gguf";
}

std::string pipeline_cache_path() { return cache_dir() + "/pipelines.bin"; }

std::string require_model(const std::string& path) {
  if (std::filesystem::exists(path)) return path;
  if (path == default_model_path())
    throw std::runtime_error(fmt::format(
        "{}: the default model is not there yet; run scripts/setup.sh (it fetches and converts "
        "it), or pass a GGUF file with -m",
        path));
  throw std::runtime_error(fmt::format("{}: no such file; pass a GGUF model with -m", path));
}

std::string assets_dir() {
  if (const char* env = std::getenv("KVSCOPE_ASSETS"); env && *env) return env;
  return KVSCOPE_SOURCE_ASSETS;
}

}  // namespace kvscope
