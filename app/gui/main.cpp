// kvscope-gui: chat with a local model while watching its KV cache.
//
// Scriptable for tests and for the README's screenshot:
//   kvscope-gui [-m MODEL] [--prompt TEXT] [--tokens N] [--compare "SPEC;SPEC + POLICY"]
//               [--forced] [--export-dir DIR] [--frames N] [--screenshot FILE.png] ...
// (README "The window" lists every flag.)
// With --screenshot the window is captured once every reply is written, the
// PNG written, and the program exits; a JSON report goes to stdout.
#include <CLI/CLI.hpp>
#include <GLFW/glfw3.h>
#include <fmt/format.h>
#include <imgui.h>
#include <imgui_impl_glfw.h>
#include <imgui_impl_vulkan.h>
#include <stb_image_write.h>

#include <chrono>
#include <cstdio>
#include <filesystem>
#include <thread>
#include <nlohmann/json.hpp>

#include "app/core/atomic_file.h"
#include "app/gui/app.h"
#include "app/gui/renderer.h"
#include "app/gui/settings.h"
#include "app/gui/theme.h"

namespace {

using namespace kvscope;
using namespace kvscope::gui;

// The ImGui context lives from before the renderer to after it.
struct ImGuiContextScope {
  ImGuiContextScope() {
    IMGUI_CHECKVERSION();
    ImGui::CreateContext();
    ImGui::GetIO().IniFilename = nullptr;  // the layout is fixed; nothing to save yet
  }
  ~ImGuiContextScope() { ImGui::DestroyContext(); }
};

std::vector<std::string> split_specs(const std::string& text) {
  std::vector<std::string> out;
  size_t start = 0;
  while (start <= text.size()) {
    size_t end = text.find(';', start);
    if (end == std::string::npos) end = text.size();
    if (end > start) out.push_back(text.substr(start, end - start));
    start = end + 1;
  }
  return out;
}

// Frames per second over a sliding second, and over all frames drawn while
// a session was generating (the figure the issue asks for).
struct FrameClock {
  using Clock = std::chrono::steady_clock;
  Clock::time_point start = Clock::now(), window_start = Clock::now(), last = Clock::now();
  int window_frames = 0;
  double fps_now = 0, generating_seconds = 0;
  uint64_t generating_frames = 0, frames = 0;
  double build_seconds = 0, render_seconds = 0;  // ImGui widgets vs. draw + present
  void tick(bool generating) {
    const Clock::time_point now = Clock::now();
    const double dt = std::chrono::duration<double>(now - last).count();
    last = now;
    ++frames;
    if (generating) generating_seconds += dt, ++generating_frames;
    ++window_frames;
    const double span = std::chrono::duration<double>(now - window_start).count();
    if (span >= 0.5) fps_now = window_frames / span, window_frames = 0, window_start = now;
  }
  double fps_overall() const {
    const double span = std::chrono::duration<double>(last - start).count();
    return span > 0 ? frames / span : 0;
  }
  double fps_generating() const { return generating_seconds > 0 ? generating_frames / generating_seconds : 0; }
};

// Files dropped on the window go to the app of the running window.
App* g_drop_target = nullptr;
void on_drop(GLFWwindow*, int count, const char** paths) {
  if (!g_drop_target) return;
  std::vector<std::string> files(paths, paths + count);
  g_drop_target->on_drop(files);
}

int run(const GuiOptions& options, const Settings& settings, const std::string& settings_error) {
  std::unique_ptr<Window> window;
  try {
    window = std::make_unique<Window>(options.width, options.height, "kvscope");
  } catch (const NoDisplay& e) {
    std::fprintf(stderr,
                 "kvscope-gui: %s.\n"
                 "  Without a display, use the command line: kvscope run -p \"Once upon a time\"\n"
                 "  or run the window on a virtual display: xvfb-run -a kvscope-gui\n",
                 e.what());
    return 1;
  }
  ImGuiContextScope imgui;
  Fonts fonts = setup_theme(window->content_scale());
  Renderer renderer(*window, options.device_index);
  renderer.upload_fonts();
  App app(options, settings, fonts, renderer.device_name());
  g_drop_target = &app;
  glfwSetDropCallback(window->handle(), on_drop);
  if (!settings_error.empty()) app.on_error(settings_error);

  // A scripted picture has no pointer over it: no tooltip in the screenshot.
  if (!options.screenshot.empty()) glfwSetCursorPos(window->handle(), 0, options.height - 1);
  FrameClock clock;
  bool done = false;
  int settle_frames = 0;  // frames drawn after the script finished
  int exit_code = 0;
  while (!done && !window->should_close()) {
    const bool generating = app.generating();
    // Idle: wake for input or to pick up snapshots a few times a second.
    if (generating || !options.screenshot.empty() || options.frames > 0)
      glfwPollEvents();
    else
      glfwWaitEventsTimeout(0.1);
    const auto build_start = FrameClock::Clock::now();
    ImGui_ImplVulkan_NewFrame();
    ImGui_ImplGlfw_NewFrame();
    ImGui::NewFrame();
    app.set_frame_rate(clock.fps_now, clock.fps_generating());
    app.draw();
    ImGui::Render();

    const bool script_done = app.script_done();
    if (script_done) ++settle_frames;
    // Two frames after the last snapshot, so the final state is what shows.
    const bool capture = !options.screenshot.empty() && script_done && settle_frames >= 3 &&
                         clock.frames + 1 >= static_cast<uint64_t>(std::max(options.frames, 0));
    const auto render_start = FrameClock::Clock::now();
    renderer.render(ImGui::GetDrawData(), capture);
    clock.build_seconds += std::chrono::duration<double>(render_start - build_start).count();
    clock.render_seconds += std::chrono::duration<double>(FrameClock::Clock::now() - render_start).count();
    clock.tick(generating);
    if (script_done && settle_frames == 2) app.finish_script();
    if (capture) {
      const Screenshot& shot = renderer.screenshot();
      try {
        write_file_atomically(options.screenshot, png_bytes(shot.rgba.data(), static_cast<int>(shot.width),
                                                            static_cast<int>(shot.height)));
      } catch (const std::exception& e) {
        std::fprintf(stderr, "kvscope-gui: %s\n", e.what());
        exit_code = 1;
      }
      done = true;
    }
    if (options.screenshot.empty() && options.frames > 0 && clock.frames >= static_cast<uint64_t>(options.frames))
      done = true;
    // At most 60 frames/s: FIFO presentation does not pace every display
    // (Xvfb), and on a CPU device each extra frame takes cores from decoding.
    const double frame_seconds = std::chrono::duration<double>(FrameClock::Clock::now() - build_start).count();
    if (frame_seconds < 1.0 / 60) std::this_thread::sleep_for(std::chrono::duration<double>(1.0 / 60 - frame_seconds));
  }

  if (options.screenshot.empty() && !app.script_finished()) app.finish_script();
  const RunReport report = app.report();
  int fb_w = 0, fb_h = 0;
  glfwGetFramebufferSize(window->handle(), &fb_w, &fb_h);
  g_drop_target = nullptr;
  int win_w = 0, win_h = 0;
  glfwGetWindowSize(window->handle(), &win_w, &win_h);
  Settings to_save = app.settings();
  to_save.width = win_w, to_save.height = win_h;
  std::string settings_saved = settings_path().string();
  try {
    save_settings(to_save, settings_path());
  } catch (const std::exception& e) {
    std::fprintf(stderr, "kvscope-gui: %s\n", e.what());
    settings_saved.clear();
  }
  nlohmann::json j;
  j["frames"] = clock.frames;
  j["fps"] = clock.fps_overall();
  j["fps_generating"] = clock.fps_generating();
  j["ms_per_frame_widgets"] = clock.frames ? 1000 * clock.build_seconds / clock.frames : 0;
  j["ms_per_frame_render"] = clock.frames ? 1000 * clock.render_seconds / clock.frames : 0;
  j["generated_tokens"] = report.generated_tokens;
  j["tok_s"] = report.tok_s;
  j["window"] = {fb_w, fb_h};
  j["heatmap"] = {report.heatmap_rect.x, report.heatmap_rect.y, report.heatmap_rect.z, report.heatmap_rect.w};
  j["heatmap_cells"] = report.heatmap_cells;
  j["errors"] = report.errors;
  j["sessions"] = report.sessions;
  j["effective"] = report.effective;
  j["exports"] = report.exports;
  j["probes"] = report.probes;
  j["scrubbed"] = report.scrubbed;
  if (!report.soak.is_null()) j["soak"] = report.soak;
  j["views"] = report.views;
  if (!report.lab.is_null()) j["lab"] = report.lab;
  j["settings_file"] = settings_saved;
  nlohmann::json forced = nlohmann::json::array();
  for (const SessionComparison& c : report.forced) {
    nlohmann::json kl = nlohmann::json::array(), lost = nlohmann::json::array(), agree = nlohmann::json::array();
    for (const StepComparison& st : c.steps) {
      kl.push_back(st.kl);
      lost.push_back(st.lost_attention);
      agree.push_back(st.top1_agree);
    }
    nlohmann::json regretted = nlohmann::json::array();
    for (const RegrettedEviction& r : c.lost.regretted)
      regretted.push_back({{"position", r.position}, {"token", r.token}, {"lost_mass", r.lost_mass}});
    forced.push_back({{"name", c.name},
                      {"cache", c.cache},
                      {"steps", c.steps.size()},
                      {"kl", kl},
                      {"top1_agree", agree},
                      {"top1_agreement", c.top1_agreement()},
                      {"mean_kl", c.mean_kl()},
                      {"first_divergence", c.first_divergence},
                      {"lost_attention", lost},
                      {"lost_attention_mean", c.lost.mean},
                      {"regretted", regretted}});
  }
  j["forced"] = forced;
  j["validation_messages"] = renderer.validation_messages() + app.engine_validation_messages();
  j["device"] = renderer.device_name();
  std::printf("%s\n", j.dump().c_str());
  return exit_code;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App cli{"kvscope-gui: chat with a local model while watching its KV cache"};
  GuiOptions options;
  std::string compare;
  // Remembered settings first; flags given on the command line win.
  std::string settings_error;
  Settings settings;
  try {
    settings = load_settings(settings_path());
  } catch (const std::exception& e) {
    settings_error = e.what();
  }
  options.model_path = settings.last_model;
  options.device_index = settings.device_index;
  options.sampling = settings.sampling;
  options.tokens = settings.tokens;
  options.system = settings.system_prompt;
  options.width = settings.width;
  options.height = settings.height;
  options.lab = settings.lab;
  for (size_t i = 0; i < settings.cache_specs.size(); ++i) compare += (i ? ";" : "") + settings.cache_specs[i];
  cli.add_option("-m,--model", options.model_path, "GGUF model (default: the stories15M set up by scripts/setup.sh)");
  cli.add_option("--device", options.device_index, "Vulkan device index (kvscope devices lists them)");
  cli.add_option("-c,--ctx", options.n_ctx, "context length (default: the model's)");
  cli.add_option("--prompt", options.prompt, "send this prompt to every session once the model is loaded");
  cli.add_option("--tokens", options.tokens, "new tokens per reply")->check(CLI::Range(1, 1 << 20));
  cli.add_option("--compare", compare,
                 "one session per cache spec, side by side: \"f16;q8 + h2o:budget=64\" (up to 4)");
  cli.add_option("--temp", options.sampling.temperature, "temperature (0: greedy)");
  cli.add_option("--top-k", options.sampling.top_k, "top-k");
  cli.add_option("--top-p", options.sampling.top_p, "top-p");
  cli.add_option("--seed", options.sampling.seed, "sampling seed");
  cli.add_flag("!--no-probes", options.probes,
               "do not read attention back for the heatmap (to measure what the inspector costs)");
  cli.add_option("--scrub", options.scrub, "the eviction timeline's step at start (-1: live)");
  cli.add_option("--select", options.select, "the session the inspector shows at start (0: A, 1: B, ...)");
  cli.add_flag("--alternate-probes", options.alternate_probes,
               "measurement: read attention back every other decode step; the report's sessions give the decode "
               "time of steps with and without it");
  cli.add_option("--frames", options.frames, "exit after N frames (with --screenshot: at least N frames)");
  cli.add_option("--screenshot", options.screenshot, "write FILE.png once the replies are written, then exit");
  cli.add_option("--system", options.system, "system prompt: opens each conversation, pinned when the cache evicts");
  cli.add_flag("--forced", options.forced,
               "side by side, forced mode: every session reads session A's reply (per-step KL, first divergence, "
               "lost attention)");
  cli.add_option("--forced-text", options.forced_text, "forced mode on this text instead of A's reply");
  cli.add_option("--export-dir", options.export_dir,
                 "once the replies are written: heatmap.png, trace-SESSION.jsonl, comparison.csv here");
  cli.add_option("--save-conversation", options.save_conversation, "once the replies are written: session A's "
                                                                    "conversation to this JSON file");
  cli.add_option("--load-conversation", options.load_conversation, "load a saved conversation into session A");
  cli.add_option("--load-every", options.load_every,
                 "load a saved conversation into every session (a context of a given size, for measurements)");
  cli.add_option("--chat-template", options.chat_template,
                 "auto (the model's), none (text as typed), or a template name (as kvscope chat)");
  cli.add_option("--run-probes", options.run_probes,
                 "once loaded, run the probe scenarios against these policies (\"h2o:budget=64;window:budget=64\")");
  cli.add_option("--probe-limit", options.probe_limit, "at most N scenarios (0: all)");
  cli.add_option("--lab-text", options.lab.text, "the Lab panel's text (default tests/data/corpus.txt of the sources)");
  cli.add_option("--lab-out", options.lab.out, "the Lab panel's folder for its journal and report");
  cli.add_option("--lab-preset", options.lab.preset, "the Lab panel's grid preset (quick, default, full, none)");
  cli.add_option("--lab-storages", options.lab.storages, "the Lab panel's storages (';'-separated)");
  cli.add_option("--lab-policies", options.lab.policies, "the Lab panel's policies (','-separated)");
  cli.add_option("--lab-budgets", options.lab.budgets, "the Lab panel's policy budgets (','-separated)");
  cli.add_option("--lab-caches", options.lab.caches, "whole caches added to the Lab panel's grid (';'-separated)");
  cli.add_option("--lab-chunks", options.lab.max_chunks, "the Lab panel's chunks of the text (0: all)");
  cli.add_option("--lab-budget", options.lab.budget, "the Lab panel's memory budget for its recommendation");
  cli.add_flag("--lab-probes", options.lab.probes, "the Lab panel runs the probe scenarios under every cache");
  cli.add_flag("--lab-run", options.lab_run, "open the Lab panel and run its sweep once the model is loaded");
  cli.add_option("--lab-open", options.lab_open,
                 "once the sweep is done, open its row N (0-based) side by side with the full cache, forced");
  cli.add_option("--drop", options.drops, "handle these files as if dropped on the window (.gguf, .json)");
  cli.add_option("--soak", options.soak_minutes,
                 "measurement: keep every session writing (\" Then\" after each reply) for MINUTES after --prompt, "
                 "sampling resident and device memory; the report gives the slopes")
      ->check(CLI::Range(0.0, 24.0 * 60));
  cli.add_option("--log-events", options.log_events,
                 "events each session's eviction log keeps in memory before folding the oldest (default 262144)");
  cli.add_flag("--held-columns", options.held_columns, "the heatmap's columns: only the positions the cache holds");
  cli.add_option("--heatmap-head", options.heatmap_head, "the heatmap's query head at start (-1: mean, -2: every head)")
      ->check(CLI::Range(-2, 4096));
  cli.add_option("--map-layer", options.map_layer, "the eviction map's layer at start");
  cli.add_option("--map-head", options.map_head, "the eviction map's kv head at start");
  cli.add_option("--width", options.width, "window width")->check(CLI::Range(320, 8192));
  cli.add_option("--height", options.height, "window height")->check(CLI::Range(240, 8192));
  CLI11_PARSE(cli, argc, argv);
  options.compare_specs = split_specs(compare);
  // A model that the settings remember but that is gone: the default instead.
  if (cli.count("--model") == 0 && !options.model_path.empty() && !std::filesystem::exists(options.model_path))
    options.model_path.clear();
  if (options.compare_specs.size() > 4) {
    std::fprintf(stderr, "kvscope-gui: --compare takes at most 4 cache specs, got %zu\n", options.compare_specs.size());
    return 2;
  }
  try {
    return run(options, settings, settings_error);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "kvscope-gui: %s\n", e.what());
    return 1;
  }
}
