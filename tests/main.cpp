#define DOCTEST_CONFIG_IMPLEMENT
#include <doctest/doctest.h>

#include "cleanup.h"

int main(int argc, char** argv) {
  doctest::Context context(argc, argv);
  const int result = context.run();
  auto& list = kvscope::test::cleanups();
  for (auto it = list.rbegin(); it != list.rend(); ++it) (*it)();
  list.clear();
  return result;
}
