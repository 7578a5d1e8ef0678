// The kvscope-gui window's state and panels. The App owns the Engine (loaded
// on a background thread) and the SessionWorkers on it; each frame it reads
// their latest snapshots and draws — it never waits on the device.
#pragma once
#include <chrono>
#include <future>
#include <memory>
#include <string>
#include <vector>

#include "app/core/session.h"
#include "app/core/worker.h"
#include "app/gui/inspector.h"
#include "app/gui/theme.h"

namespace kvscope::gui {

struct GuiOptions {
  std::string model_path;                  // empty: the default model
  int device_index = -1;
  uint32_t n_ctx = 0;                      // 0: the model's
  std::string prompt;                      // sent to every session once loaded
  uint32_t tokens = 96;                    // new tokens per reply
  std::vector<std::string> compare_specs;  // one session per cache spec
  SamplerConfig sampling;
  bool probes = true;                      // read attention rows back for the heatmap
  int frames = 0;                          // exit after this many frames (0: never)
  std::string screenshot;                  // PNG written once the replies are done
  int width = 1440, height = 900;
};

// What a scripted run reports on stdout (tests read it).
struct RunReport {
  uint64_t generated_tokens = 0;
  std::vector<double> tok_s;  // each session's last reply
  ImVec4 heatmap_rect{};
  bool heatmap_cells = false;
  std::vector<std::string> errors;
};

class App {
 public:
  App(const GuiOptions& options, const Fonts& fonts, std::string render_device);
  ~App();  // workers stop and join before the engine goes
  App(const App&) = delete;
  App& operator=(const App&) = delete;

  void draw();  // the widgets of one frame
  bool generating() const;
  // A scripted run (--prompt) is done: the model is loaded (or failed) and
  // every session's reply is finished.
  bool script_done() const;
  RunReport report() const;
  uint64_t engine_validation_messages() const;
  void set_frame_rate(double fps_now, double fps_generating) { fps_now_ = fps_now, fps_generating_ = fps_generating; }

 private:
  void start_loading(const std::string& path);
  void poll_loading();
  void add_session(const CacheSpec& spec);
  void send_prompt(const std::string& text);
  GenerateRequest request(const std::string& text) const;

  void draw_toolbar();
  void draw_banner();
  void draw_sessions_panel();
  void draw_conversation(const SessionSnapshot& s, SessionWorker& worker);
  void draw_prompt_box(const SessionSnapshot& s, SessionWorker& worker);
  void draw_context_meter(const SessionSnapshot& s);
  void draw_compare();
  void draw_inspector(const SessionSnapshot& s);
  void draw_open_model_popup();

  GuiOptions options_;
  Fonts fonts_;
  std::string render_device_;

  std::unique_ptr<Engine> engine_;
  std::future<std::unique_ptr<Engine>> loading_;
  std::string loading_path_, model_path_;
  EngineTurns turns_;
  std::vector<std::unique_ptr<SessionWorker>> sessions_;  // destroyed before engine_
  std::vector<std::shared_ptr<const SessionSnapshot>> frame_snapshots_;
  size_t selected_ = 0;
  bool compare_mode_ = false;
  bool prompt_sent_ = false;
  std::chrono::steady_clock::time_point load_started_;

  std::string banner_;  // one-line error with what to do
  char prompt_buffer_[4096] = "Once upon a time";
  char model_buffer_[1024] = "";
  int new_session_format_ = 1;  // index into kv::all_formats(): f16
  HeatmapView heatmap_;
  double fps_now_ = 0, fps_generating_ = 0;
  size_t last_turn_text_size_ = 0;
};

}  // namespace kvscope::gui
