// libFuzzer target: probe scenario files (assets/scenarios/*.json, or a
// person's own with `kvscope probe FILE`). Anything but a ScenarioError
// naming the file is a finding.
#include <cstddef>
#include <cstdint>
#include <string>

#include "app/core/scenario.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  try {
    (void)kvscope::parse_scenario(std::string(reinterpret_cast<const char*>(data), size), "fuzz.json");
  } catch (const kvscope::ScenarioError&) {
  }
  return 0;
}
