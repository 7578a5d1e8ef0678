#pragma once
// Objects that test cases share for a whole run (an Engine per model file)
// are released here, before main returns, rather than by static destructors:
// NVIDIA's driver tears itself down at exit and crashes when a VkDevice
// outlives that teardown.
#include <functional>
#include <vector>

namespace kvscope::test {

inline std::vector<std::function<void()>>& cleanups() {
  static std::vector<std::function<void()>> list;
  return list;
}

// Runs `release` after the last test case, in reverse order of registration.
inline void release_after_tests(std::function<void()> release) { cleanups().push_back(std::move(release)); }

}  // namespace kvscope::test
