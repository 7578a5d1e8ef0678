#pragma once
// Waits for a SessionWorker to finish what it was given (started, then idle
// with an empty queue): the tests of the window's sessions share this.
#include <doctest/doctest.h>

#include <chrono>
#include <memory>
#include <thread>

#include "app/core/worker.h"

namespace kvscope::test {

inline std::shared_ptr<const SessionSnapshot> wait_idle(const SessionWorker& w) {
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::minutes(3);
  while (w.busy() || w.snapshot()->state == SessionSnapshot::State::Starting) {
    REQUIRE_MESSAGE(std::chrono::steady_clock::now() < deadline, "the worker did not finish in 3 minutes");
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  return w.snapshot();
}

}  // namespace kvscope::test
