// libFuzzer target: the window's settings file ($XDG_CONFIG_HOME/kvscope/
// settings.json). What parses writes back and reads back the same.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <exception>
#include <string_view>

#include "app/gui/settings.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace kvscope::gui;
  Settings s;
  try {
    s = parse_settings(std::string_view(reinterpret_cast<const char*>(data), size));
  } catch (const std::exception&) {
    return 0;  // refused with a message (load_settings keeps the file aside)
  }
  const Settings again = parse_settings(settings_json(s));
  if (again.recent_models != s.recent_models || again.last_model != s.last_model ||
      again.device_index != s.device_index || again.tokens != s.tokens || again.system_prompt != s.system_prompt ||
      again.cache_specs != s.cache_specs || again.width != s.width || again.height != s.height ||
      again.sampling.top_k != s.sampling.top_k || again.sampling.seed != s.sampling.seed)
    std::abort();
  return 0;
}
