// The kvscope-gui window's state and panels. The App owns the Engine (loaded
// on a background thread) and the SessionWorkers on it; each frame it reads
// their latest snapshots and draws — it never waits on the device.
#pragma once
#include <chrono>
#include <future>
#include <nlohmann/json.hpp>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "app/core/forced_comparison.h"
#include "app/core/session.h"
#include "app/core/worker.h"
#include "app/gui/file_dialog.h"
#include "app/gui/inspector.h"
#include "app/gui/lab.h"
#include "app/gui/probes.h"
#include "app/gui/settings.h"
#include "app/gui/theme.h"
#include "gpu/context.h"

namespace kvscope::gui {

// `rgba` (width x height, top row first) encoded as a PNG file's bytes, for
// write_file_atomically (app/core/atomic_file.h).
std::string png_bytes(const uint8_t* rgba, int width, int height);

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
  std::string system;                      // system prompt of new conversations
  bool forced = false;                     // side by side, forced mode (every session reads A's tokens)
  std::string forced_text;                 // forced mode on this text instead of A's reply
  std::string export_dir;                  // scripted: heatmap PNG, traces JSONL, comparison CSV here
  std::string save_conversation;           // scripted: session A's conversation to this JSON file
  std::string load_conversation;           // load this conversation into session A at start
  std::string load_every;                  // load this conversation into every session at start
  std::vector<std::string> drops;          // files handled as if dropped on the window once loaded
  std::string chat_template = "auto";      // "auto" (the model's), "none", or a name of chat_template_names()
  std::string run_probes;                  // probe scenarios against these policies (";"-separated) once loaded
  size_t probe_limit = 0;                  // at most this many scenarios (0: all)
  int scrub = -1;                          // the eviction timeline's step at start (-1: live)
  int select = 0;                          // the session selected once loaded (0: A)
  bool alternate_probes = false;           // measurement: attention readback every other step
  double soak_minutes = 0;                 // measurement: keep every session writing this long (--soak)
  size_t log_events = 0;                   // each eviction log's limit in memory (0: kv::EventLog's default)
  bool held_columns = false;               // the heatmap shows only held positions (--held-columns)
  int heatmap_head = -1;                   // the heatmap's head at start (-1 mean, -2 every head)
  int map_layer = 0, map_head = 0;         // the eviction map's table at start
  LabFields lab;                           // the Lab panel's fields at start (--lab-*)
  bool lab_run = false;                    // scripted: run the Lab panel's sweep once loaded
  int lab_open = -1;                       // scripted: once the sweep is done, open this row side by side
};

// What a scripted run reports on stdout (tests read it).
struct RunReport {
  uint64_t generated_tokens = 0;
  std::vector<double> tok_s;  // each session's last reply
  ImVec4 heatmap_rect{};
  bool heatmap_cells = false;
  std::vector<std::string> errors;
  std::vector<SessionComparison> forced;  // sessions B.. against A (forced mode)
  nlohmann::json sessions;                // per session: cache, context, turns, evictions, pins
  std::vector<std::string> exports;       // files written by --export-dir
  nlohmann::json effective;               // the settings in use (sampling, tokens, system, caches)
  nlohmann::json probes;                  // verdicts of the probe scenarios run
  nlohmann::json scrubbed;                // the selected session's cache at the timeline's step
  nlohmann::json soak;                    // --soak: memory samples and slopes
  nlohmann::json views;                   // where the inspector's views are and what they hold
  nlohmann::json lab;                     // the Lab panel: rows, chart, files (when it ran)
};

class App {
 public:
  App(const GuiOptions& options, const Settings& settings, const Fonts& fonts, std::string render_device);
  ~App();  // workers stop and join before the engine goes
  App(const App&) = delete;
  App& operator=(const App&) = delete;

  void draw();  // the widgets of one frame
  bool generating() const;
  // A scripted run (--prompt) is done: the model is loaded (or failed) and
  // every session's reply is finished.
  bool script_done() const;
  RunReport report() const;
  // Scripted end of run: --export-dir and --save-conversation files.
  void finish_script();
  bool script_finished() const { return script_finished_; }
  void on_error(const std::string& message) { banner_ = message; }
  // Files dropped on the window: a .gguf opens as the model, a .json loads
  // as a conversation; anything else is an error in the banner.
  void on_drop(const std::vector<std::string>& paths);
  // What to remember for the next run (window size set by the caller).
  Settings settings() const;
  uint64_t engine_validation_messages() const;
  void set_frame_rate(double fps_now, double fps_generating) { fps_now_ = fps_now, fps_generating_ = fps_generating; }

 private:
  void start_loading(const std::string& path);
  void poll_loading();
  // False (the reason in the banner) when the spec is refused.
  bool add_session(const CacheSpec& spec);
  bool add_session_from_text(const std::string& text);
  CacheSpec new_session_spec() const;  // the format, policy and budget pickers' cache
  void send_prompt(const std::string& text);
  void dispatch_forced();  // forced mode: the other sessions read A's finished reply
  GenerateRequest request(const std::string& text) const;
  // The template request() applies: none for "none" or a model without one.
  std::optional<ChatTemplate> chat_template() const;
  void draw_template_picker();
  void load_conversation(const std::string& path);
  void save_conversation(const std::string& path);
  Conversation conversation_of(const SessionSnapshot& s) const;  // as saved: turns, tokens, pins, template
  std::vector<std::string> export_files(const std::string& dir);
  std::string export_heatmap_png(const std::string& path);
  void update_comparisons();
  // --soak: every idle session gets " Then" to continue its story, and
  // memory is sampled, until the minutes are up.
  void drive_soak();
  std::vector<int32_t> regretted_positions(size_t session) const;

  void draw_toolbar();
  void draw_banner();
  void draw_sessions_panel();
  void draw_conversation(const SessionSnapshot& s, SessionWorker& worker);
  void draw_prompt_box(const SessionSnapshot& s, SessionWorker& worker);
  void draw_context_meter(const SessionSnapshot& s);
  void draw_compare();
  void draw_forced_metrics();
  void draw_inspector(const SessionSnapshot& s);
  void draw_open_model_popup();
  void draw_file_dialog();
  void draw_lab_window();
  // Closes the sessions and opens the lab's point as B beside the baseline
  // as A, forced on the sweep's first chunk.
  void open_lab_point(const LabPanel::OpenRequest& request);
  void draw_turn(const SessionSnapshot& s, SessionWorker& worker, size_t index);

  GuiOptions options_;
  Fonts fonts_;
  std::string render_device_;

  std::unique_ptr<Engine> engine_;
  std::future<std::unique_ptr<Engine>> loading_;
  std::string loading_path_, model_path_;
  EngineTurns turns_;
  std::vector<std::unique_ptr<SessionWorker>> sessions_;  // destroyed before engine_
  ProbePanel probes_;                                      // likewise
  bool probes_open_ = false;
  LabPanel lab_;                                           // likewise
  bool lab_open_ = false;
  bool lab_used_ = false;  // the panel ran a sweep this run (the report says what it did)
  std::vector<std::shared_ptr<const SessionSnapshot>> frame_snapshots_;
  size_t selected_ = 0;
  bool compare_mode_ = false;
  bool prompt_sent_ = false;
  std::chrono::steady_clock::time_point load_started_;

  Settings settings_;
  std::vector<gpu::DeviceInfo> devices_;  // listed when the device menu first opens
  std::vector<std::string> pending_drops_;
  bool forced_mode_ = false, forced_on_text_ = false;
  std::optional<GenerateRequest> forced_pending_;  // the others' request, once A's reply is done
  std::vector<ForcedComparison> comparisons_;       // [session]: against session 0
  TimelineView timeline_;
  StripDrag strip_drag_;
  FileDialog file_dialog_;
  enum class FilePurpose { OpenModel, LoadConversation, SaveConversation, ExportDir } file_purpose_{};
  bool thinking_opened_by_prompt_ = false;  // the chat template opens <think> (DeepSeek-R1)
  int editing_turn_ = -1;
  char edit_buffer_[4096] = "";
  char system_buffer_[2048] = "";
  char forced_text_buffer_[2048] = "";
  char spec_buffer_[256] = "f16 + h2o:budget=64";
  std::string status_;  // last export or save, shown under the toolbar
  std::vector<std::string> exported_;  // by finish_script
  bool script_finished_ = false;

  std::string banner_;  // one-line error with what to do
  char prompt_buffer_[4096] = "Once upon a time";
  char model_buffer_[1024] = "";
  int new_session_format_ = 1;  // index into kv::all_formats(): f16
  bool new_session_hadamard_ = true;  // quantized formats: CacheSpec::hadamard (off: hadamard=off)
  int new_session_policy_ = 0;  // 0: no eviction, else 1 + index into kv::policy_names()
  int new_session_budget_ = 64;
  HeatmapView heatmap_;
  double fps_now_ = 0, fps_generating_ = 0;
  int context_field_ = 0;  // the toolbar's context size, applied on Enter
  OccupancyDrawn occupancy_drawn_;
  struct SoakSample {
    double seconds = 0;
    uint64_t rss = 0, heap = 0, device = 0, tokens = 0;
    double fps = 0;
  };
  std::optional<std::chrono::steady_clock::time_point> soak_started_;
  std::vector<SoakSample> soak_samples_;
  size_t last_turn_text_size_ = 0;
};

}  // namespace kvscope::gui
