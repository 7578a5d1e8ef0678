// kvscope-gui in a real window under Xvfb: scripted runs, screenshots checked
// pixel by pixel, validation layers on (the ctest sets KVSCOPE_VALIDATION=1).
#include <doctest/doctest.h>
#include <stb_image.h>
#include <sys/wait.h>

#include <array>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <set>
#include <string>

#include <nlohmann/json.hpp>

#include "tests/test_util.h"

namespace {

struct Run {
  int code = -1;
  std::string out;  // stdout and stderr together
};

Run shell(const std::string& cmd) {
  Run r;
  FILE* p = popen((cmd + " 2>&1").c_str(), "r");
  REQUIRE(p != nullptr);
  std::array<char, 4096> buf{};
  size_t n;
  while ((n = fread(buf.data(), 1, buf.size(), p)) > 0) r.out.append(buf.data(), n);
  const int status = pclose(p);
  r.code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  return r;
}

bool have_xvfb_run() { return shell("command -v xvfb-run").code == 0; }

// kvscope-gui on a fresh virtual display with `args`.
Run gui(const std::string& args) {
  REQUIRE_MESSAGE(have_xvfb_run(), "xvfb-run is missing: run scripts/setup.sh (it installs xvfb and xauth)");
  return shell("xvfb-run -a -s '-screen 0 1920x1200x24' " + std::string(KVSCOPE_GUI_BINARY) + " " + args);
}

nlohmann::json report_of(const Run& r) {
  const auto start = r.out.rfind("\n{");
  const size_t at = start == std::string::npos ? r.out.find('{') : start + 1;
  REQUIRE_MESSAGE(at != std::string::npos, r.out);
  return nlohmann::json::parse(r.out.substr(at));
}

struct Image {
  int width = 0, height = 0;
  std::vector<uint8_t> rgba;
  uint32_t pixel(int x, int y) const {
    const uint8_t* p = &rgba[(size_t(y) * width + x) * 4];
    return uint32_t(p[0]) << 16 | uint32_t(p[1]) << 8 | p[2];
  }
};

Image load_png(const std::string& path) {
  Image img;
  int channels = 0;
  unsigned char* data = stbi_load(path.c_str(), &img.width, &img.height, &channels, 4);
  REQUIRE_MESSAGE(data != nullptr, path << " is not a readable PNG");
  img.rgba.assign(data, data + size_t(img.width) * img.height * 4);
  stbi_image_free(data);
  return img;
}

size_t distinct_colours(const Image& img, int x0, int y0, int w, int h) {
  std::set<uint32_t> colours;
  for (int y = std::max(0, y0); y < std::min(img.height, y0 + h); ++y)
    for (int x = std::max(0, x0); x < std::min(img.width, x0 + w); ++x) colours.insert(img.pixel(x, y));
  return colours.size();
}

std::string temp_png(const char* name) {
  return (std::filesystem::temp_directory_path() / (std::string(name) + std::to_string(getpid()) + ".png")).string();
}

}  // namespace

TEST_CASE("gui: without a display it says what to use instead and exits 1") {
  const Run r = shell("env -u DISPLAY -u WAYLAND_DISPLAY " + std::string(KVSCOPE_GUI_BINARY) + " --frames 1");
  CHECK(r.code == 1);
  CHECK(r.out.find("no display") != std::string::npos);
  CHECK(r.out.find("kvscope run") != std::string::npos);
  CHECK(r.out.find("xvfb-run") != std::string::npos);
}

TEST_CASE("gui: a scripted chat generates, renders, and writes a screenshot of the window") {
  kvscope::test::model_path();  // fails with the fix when the default model is missing
  const std::string png = temp_png("kvscope-gui-chat");
  const Run r = gui("--prompt 'Once upon a time' --tokens 24 --width 1280 --height 800 --screenshot " + png);
  INFO(r.out);
  REQUIRE(r.code == 0);
  CHECK(r.out.find("vulkan validation:") == std::string::npos);
  const nlohmann::json report = report_of(r);
  CHECK(report["validation_messages"] == 0);
  CHECK(report["errors"].empty());
  CHECK(report["generated_tokens"] == 24);
  CHECK(report["frames"].get<int>() > 3);

  const Image img = load_png(png);
  CHECK(img.width == report["window"][0].get<int>());
  CHECK(img.height == report["window"][1].get<int>());
  CHECK(img.width == 1280);
  CHECK(img.height == 800);
  // Text, bars and panels: far from a blank or single-colour frame.
  CHECK(distinct_colours(img, 0, 0, img.width, img.height) > 200);
  // The heatmap region: attention rows were drawn, in many colours.
  const auto& h = report["heatmap"];
  const int hx = h[0].get<float>(), hy = h[1].get<float>(), hw = h[2].get<float>(), hh = h[3].get<float>();
  REQUIRE(hw > 100);
  REQUIRE(hh > 100);
  CHECK(report["heatmap_cells"].get<bool>());
  CHECK(distinct_colours(img, hx, hy, hw, hh) > 16);
  std::filesystem::remove(png);
}

TEST_CASE("gui: --no-probes leaves the heatmap empty and still generates") {
  kvscope::test::model_path();
  const std::string png = temp_png("kvscope-gui-noprobes");
  const Run r = gui("--prompt 'Once upon a time' --tokens 8 --no-probes --screenshot " + png);
  INFO(r.out);
  REQUIRE(r.code == 0);
  const nlohmann::json report = report_of(r);
  CHECK(report["generated_tokens"] == 8);
  CHECK_FALSE(report["heatmap_cells"].get<bool>());
  std::filesystem::remove(png);
}

TEST_CASE("gui: side by side, two caches answer the same prompt") {
  kvscope::test::model_path();
  const std::string png = temp_png("kvscope-gui-compare");
  const Run r = gui("--prompt 'The little dog' --tokens 16 --temp 0 --compare 'f16;f32' --screenshot " + png);
  INFO(r.out);
  REQUIRE(r.code == 0);
  const nlohmann::json report = report_of(r);
  CHECK(report["validation_messages"] == 0);
  CHECK(report["errors"].empty());
  CHECK(report["generated_tokens"] == 32);
  const Image img = load_png(png);
  CHECK(img.width == report["window"][0].get<int>());
  std::filesystem::remove(png);
}

TEST_CASE("gui: a model that cannot be opened is shown in the window, and the run still ends cleanly") {
  const std::string png = temp_png("kvscope-gui-missing");
  const Run r = gui("-m /nonexistent/model.gguf --prompt hi --tokens 2 --screenshot " + png);
  INFO(r.out);
  REQUIRE(r.code == 0);
  const nlohmann::json report = report_of(r);
  REQUIRE(report["errors"].size() == 1);
  CHECK(report["errors"][0].get<std::string>().find("/nonexistent/model.gguf") != std::string::npos);
  CHECK(report["generated_tokens"] == 0);
  CHECK(std::filesystem::exists(png));
  std::filesystem::remove(png);
}

TEST_CASE("gui: a bad --compare spec is a clear error in the window") {
  const std::string png = temp_png("kvscope-gui-badspec");
  const Run r = gui("--compare 'f16;q9' --frames 2 --screenshot " + png);
  INFO(r.out);
  REQUIRE(r.code == 0);
  const nlohmann::json report = report_of(r);
  REQUIRE(!report["errors"].empty());
  CHECK(report["errors"][0].get<std::string>().find("q9") != std::string::npos);
  std::filesystem::remove(png);
}
