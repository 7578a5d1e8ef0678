#pragma once
// One Engine per model file for a whole test executable: uploading weights
// and creating pipelines dominate on lavapipe, so test cases share it (each
// makes its own sessions and caches). Released after the last test case
// (tests/cleanup.h), not by a static destructor.
#include <map>
#include <memory>
#include <string>

#include "app/core/session.h"
#include "tests/test_util.h"

namespace kvscope::test {

inline Engine& shared_engine(const std::string& path = model_path()) {
  static std::map<std::string, std::unique_ptr<Engine>> engines;
  if (engines.empty()) release_after_tests([] { engines.clear(); });
  auto& engine = engines[path];
  if (!engine) {
    EngineOptions options;
    options.model_path = path;
    engine = std::make_unique<Engine>(options);
  }
  return *engine;
}

}  // namespace kvscope::test
