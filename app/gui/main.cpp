// kvscope-gui: chat with a local model while watching its KV cache.
//
// Scriptable for tests and for the README's screenshot:
//   kvscope-gui [-m MODEL] [--prompt TEXT] [--tokens N] [--compare "SPEC;SPEC"]
//               [--frames N] [--screenshot FILE.png]
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
#include <thread>
#include <nlohmann/json.hpp>

#include "app/gui/app.h"
#include "app/gui/renderer.h"
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

int run(const GuiOptions& options) {
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
  App app(options, fonts, renderer.device_name());

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
    if (capture) {
      const Screenshot& shot = renderer.screenshot();
      if (!stbi_write_png(options.screenshot.c_str(), static_cast<int>(shot.width), static_cast<int>(shot.height), 4,
                          shot.rgba.data(), static_cast<int>(shot.width * 4))) {
        std::fprintf(stderr, "kvscope-gui: cannot write %s\n", options.screenshot.c_str());
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

  const RunReport report = app.report();
  int fb_w = 0, fb_h = 0;
  glfwGetFramebufferSize(window->handle(), &fb_w, &fb_h);
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
  cli.add_option("-m,--model", options.model_path, "GGUF model (default: the stories15M set up by scripts/setup.sh)");
  cli.add_option("--device", options.device_index, "Vulkan device index (kvscope devices lists them)");
  cli.add_option("-c,--ctx", options.n_ctx, "context length (default: the model's)");
  cli.add_option("--prompt", options.prompt, "send this prompt to every session once the model is loaded");
  cli.add_option("--tokens", options.tokens, "new tokens per reply")->check(CLI::Range(1, 1 << 20));
  cli.add_option("--compare", compare, "one session per cache spec, side by side: \"f16;q8\" (up to 4)");
  cli.add_option("--temp", options.sampling.temperature, "temperature (0: greedy)");
  cli.add_option("--top-k", options.sampling.top_k, "top-k");
  cli.add_option("--top-p", options.sampling.top_p, "top-p");
  cli.add_option("--seed", options.sampling.seed, "sampling seed");
  cli.add_flag("!--no-probes", options.probes,
               "do not read attention back for the heatmap (to measure what the inspector costs)");
  cli.add_option("--frames", options.frames, "exit after N frames (with --screenshot: at least N frames)");
  cli.add_option("--screenshot", options.screenshot, "write FILE.png once the replies are written, then exit");
  cli.add_option("--width", options.width, "window width")->check(CLI::Range(320, 8192));
  cli.add_option("--height", options.height, "window height")->check(CLI::Range(240, 8192));
  CLI11_PARSE(cli, argc, argv);
  options.compare_specs = split_specs(compare);
  if (options.compare_specs.size() > 4) {
    std::fprintf(stderr, "kvscope-gui: --compare takes at most 4 cache specs, got %zu\n", options.compare_specs.size());
    return 2;
  }
  try {
    return run(options);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "kvscope-gui: %s\n", e.what());
    return 1;
  }
}
