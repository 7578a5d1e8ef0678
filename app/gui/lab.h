// The window's Lab panel: the cache lab's sweep (app/core/lab.h, the code
// `kvscope lab` runs) on a background thread that takes the engine in turn
// with the sessions, forward call by forward call, so they keep generating.
// The Pareto chart is drawn live as rows arrive; any point opens as a
// session side by side with the full cache, in forced mode on the sweep's
// text. Its journal and report go to a folder, as the CLI's do: a sweep
// stopped in the window resumes there, or from the command line.
#pragma once
#include <atomic>
#include <future>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "app/core/lab.h"
#include "app/core/worker.h"
#include "app/gui/settings.h"
#include "app/gui/theme.h"

namespace kvscope::gui {

class LabPanel {
 public:
  LabPanel();
  ~LabPanel();  // stops the sweep (between chunks) and waits for it

  // A point to open side by side: the baseline as session A, the point's
  // cache as B, both given `prompt` (the first tokens of the sweep's first
  // chunk) and then reading `forced` (the rest of that chunk).
  struct OpenRequest {
    CacheSpec baseline, cache;
    std::string prompt, forced;
  };

  void set_fields(const LabFields& fields);
  LabFields fields() const;
  // Starts the sweep with the panel's fields; false (the reason in error())
  // when a field is refused — the same messages as `kvscope lab`.
  bool start(Engine& engine, EngineTurns& turns, const std::string& model_path);
  bool running() const;
  void cancel() { cancel_ = true; }
  void wait();
  // The request to open row `index` (in arrival order), once the sweep has a text.
  std::optional<OpenRequest> open_request(size_t index) const;

  // The fields, the progress, the chart, the selected point. Returns a
  // request when the person asks to open a point side by side.
  std::optional<OpenRequest> draw(Engine* engine, EngineTurns& turns, const std::string& model_path,
                                  const Fonts& fonts);

  // For the scripted run's report: rows, progress, the chart's rectangle and
  // the points drawn on it, the recommendation, files written.
  nlohmann::json report() const;
  std::string error() const;

 private:
  void draw_chart(const Fonts& fonts);

  mutable std::mutex mutex_;
  std::vector<LabRow> rows_;       // in arrival order
  LabProgress progress_;
  std::string error_, note_;
  std::vector<std::string> written_;  // the report's files, once done
  std::string prompt_, forced_;    // the sweep's first chunk, split for forced side by side
  uint32_t n_ctx_ = 0;
  CacheSpec baseline_;
  bool done_ = false;

  std::atomic<bool> cancel_{false};
  std::future<void> run_;

  char text_path_[1024] = "";
  char out_[1024] = "";
  bool out_auto_ = false;  // out_ was derived from the text, context and chunks: derived again for the next run
  int preset_ = 0;
  char storages_[256] = "", policies_[256] = "", budgets_[128] = "", caches_[512] = "";
  int max_chunks_ = 4;
  char budget_[64] = "25%";
  bool probes_ = false;
  bool top1_ = false;
  int selected_ = -1;
  std::vector<float> chart_rect_;  // x, y, w, h on screen
  size_t points_drawn_ = 0;
};

}  // namespace kvscope::gui
