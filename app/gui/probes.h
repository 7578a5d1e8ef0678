// The probe scenarios (app/core/probe.h, assets/scenarios/) run from the
// window: on a background thread that takes the engine in turn with the
// sessions, one scenario at a time, and a verdict table that fills as they
// finish.
#pragma once
#include <atomic>
#include <future>
#include <mutex>
#include <string>
#include <vector>

#include "app/core/probe.h"
#include "app/core/worker.h"
#include "app/gui/theme.h"

namespace kvscope::gui {

class ProbePanel {
 public:
  ~ProbePanel();  // waits for the run in progress
  // Starts a run of every scenario in `folder` (at most `limit`, 0: all)
  // against the full cache and each policy of `policies` (";"-separated).
  void start(Engine& engine, EngineTurns& turns, const std::string& folder, const std::string& policies, size_t limit);
  bool running() const;
  void cancel() { cancel_ = true; }
  void wait();
  // The table, and the controls that start a run.
  void draw(Engine* engine, EngineTurns& turns, const Fonts& fonts);
  // Done runs' verdicts, for the scripted report.
  std::vector<ProbeResult> results() const;
  std::string error() const;

 private:
  mutable std::mutex mutex_;
  std::vector<ProbeResult> results_;
  std::string error_;
  size_t total_ = 0;
  std::atomic<bool> cancel_{false};
  std::future<void> run_;
  char policies_[512] = "h2o:budget=64;streamingllm:sinks=4,window=60;window:budget=64";
};

}  // namespace kvscope::gui
