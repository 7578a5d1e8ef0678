#define DOCTEST_CONFIG_IMPLEMENT
#include <doctest/doctest.h>

#include <cstdio>

#include "cleanup.h"
#ifdef KVSCOPE_TEST_GPU  // test_host (the sanitizer build) has no GPU layer
#include "gpu/context.h"
#endif

// Every test executable: its cases, then the shared objects released
// (tests/cleanup.h), then the Vulkan validation check over the whole run —
// every Context the cases made, whichever case made it. A message fails the
// run even when every case passed.
int main(int argc, char** argv) {
  doctest::Context context(argc, argv);
  int result = context.run();
  auto& list = kvscope::test::cleanups();
  for (auto it = list.rbegin(); it != list.rend(); ++it) (*it)();
  list.clear();
  if (context.shouldExit()) return result;
#ifdef KVSCOPE_TEST_GPU
  if (const uint64_t messages = kvscope::gpu::process_validation_messages(); messages > 0) {
    std::fprintf(stderr, "[kvscope] FAILED: the Vulkan validation layer reported %llu warnings or errors over this "
                         "run (printed above as \"vulkan validation:\")\n",
                 static_cast<unsigned long long>(messages));
    result = result ? result : 1;
  } else if (kvscope::gpu::validation_wanted(false)) {
    std::fprintf(stderr, "[kvscope] the Vulkan validation layer reported nothing over this run\n");
  }
#endif
  return result;
}
