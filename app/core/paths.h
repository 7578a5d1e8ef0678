// Where kvscope keeps its files: the user's cache directory
// ($XDG_CACHE_HOME/kvscope, else ~/.cache/kvscope) holds the default model
// and the Vulkan pipeline cache.
#pragma once
#include <string>

namespace kvscope {

std::string cache_dir();
// $KVSCOPE_MODEL if set, else <cache_dir>/stories15M.gguf.
std::string default_model_path();
std::string pipeline_cache_path();  // <cache_dir>/pipelines.bin
// The assets folder (scenarios, demo texts): $KVSCOPE_ASSETS if set, else
// the source tree's assets/ that the build was configured from.
std::string assets_dir();
// Throws std::runtime_error with the fix ("run scripts/setup.sh ...") when
// `path` does not exist; returns it unchanged otherwise.
std::string require_model(const std::string& path);

}  // namespace kvscope
