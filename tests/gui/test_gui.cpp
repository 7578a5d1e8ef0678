// kvscope-gui in a real window under Xvfb: scripted runs, screenshots checked
// pixel by pixel, validation layers on (the ctest sets KVSCOPE_VALIDATION=1).
#include <doctest/doctest.h>
#include <stb_image.h>
#include <sys/wait.h>

#include <array>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <set>
#include <string>

#include <nlohmann/json.hpp>

#include "app/core/conversation.h"
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

std::string temp_path(const std::string& name) {
  return (std::filesystem::temp_directory_path() / (name + std::to_string(getpid()))).string();
}

// kvscope-gui on a fresh virtual display with `args`. Settings go to
// `config_dir` (a fresh folder by default), never to the person's own.
Run gui(const std::string& args, std::string config_dir = {}) {
  REQUIRE_MESSAGE(have_xvfb_run(), "xvfb-run is missing: run scripts/setup.sh (it installs xvfb and xauth)");
  if (config_dir.empty()) {
    config_dir = temp_path("kvscope-gui-config");
    std::filesystem::remove_all(config_dir);
  }
  return shell("XDG_CONFIG_HOME=" + config_dir + " xvfb-run -a -s '-screen 0 1920x1200x24' " +
               std::string(KVSCOPE_GUI_BINARY) + " " + args);
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

TEST_CASE("gui: a policy alone is a cache on f16; a spec the CLI refuses is refused here, and the model stays") {
  const std::string png = temp_png("kvscope-gui-bare-policy");
  // `full` and `h2o:budget=16` as --policy takes them: the first runs on f16,
  // the second is refused with the CLI's words (its recent window is 32).
  const Run r = gui("--compare 'full;h2o:budget=16' --prompt 'Once upon a time' --tokens 4 --temp 0 --screenshot " +
                    png);
  INFO(r.out);
  REQUIRE(r.code == 0);
  const nlohmann::json report = report_of(r);
  REQUIRE(report["sessions"].size() == 1);
  CHECK(report["sessions"][0]["cache"] == "f16 + full");
  CHECK(report["sessions"][0]["tokens"].size() > 4);  // the model is loaded and answered
  REQUIRE(report["errors"].size() == 1);
  CHECK(report["errors"][0].get<std::string>().find("recent (32) must be smaller than budget (16)") !=
        std::string::npos);
  std::filesystem::remove(png);
}

TEST_CASE("gui: forced side by side gives per-step KL, top-1 agreement and a first divergence; exports are valid") {
  kvscope::test::model_path();
  const std::string dir = temp_path("kvscope-gui-export");
  std::filesystem::remove_all(dir);
  const std::string png = temp_png("kvscope-gui-forced");
  // B is A's own cache: it must agree everywhere. C keeps 8 tokens in 2 bits: it must not.
  const Run r = gui("--prompt 'Once upon a time' --tokens 24 --temp 0 --width 1440 --height 900 "
                    "--compare 'f16;f16;kivi2 + h2o:budget=8,recent=4' --forced --export-dir " + dir +
                    " --screenshot " + png);
  INFO(r.out);
  REQUIRE(r.code == 0);
  const nlohmann::json report = report_of(r);
  CHECK(report["validation_messages"] == 0);
  CHECK(report["errors"].empty());
  REQUIRE(report["forced"].size() == 2);
  const auto& same = report["forced"][0];
  const auto& evicting = report["forced"][1];
  REQUIRE(same["kl"].size() == 24);
  REQUIRE(evicting["kl"].size() == 24);
  for (const auto& kl : same["kl"]) CHECK(kl.get<double>() < 1e-4);
  CHECK(same["first_divergence"] == -1);
  CHECK(same["top1_agreement"] == 1.0);
  double most = 0;
  for (const auto& kl : evicting["kl"]) most = std::max(most, kl.get<double>());
  CHECK(most > 0.01);
  CHECK(evicting["first_divergence"].get<int>() >= 0);
  CHECK(evicting["top1_agreement"].get<double>() < 1.0);
  CHECK(evicting["lost_attention_mean"].get<double>() > 0);
  CHECK(!evicting["regretted"].empty());
  // Every session read A's tokens.
  CHECK(report["sessions"][1]["tokens"] == report["sessions"][0]["tokens"]);
  CHECK(report["sessions"][2]["tokens"] == report["sessions"][0]["tokens"]);
  CHECK(report["sessions"][2]["evictions"].get<int>() > 0);

  // The heatmap PNG has the heatmap's size on screen.
  const Image heat = load_png(dir + "/heatmap.png");
  CHECK(heat.width == static_cast<int>(report["heatmap"][2].get<float>()));
  CHECK(heat.height == static_cast<int>(report["heatmap"][3].get<float>()));
  CHECK(distinct_colours(heat, 0, 0, heat.width, heat.height) > 16);
  // The trace: a header, then events, every line JSON.
  std::ifstream trace(dir + "/trace-C.jsonl");
  REQUIRE(trace.good());
  std::string line;
  size_t lines = 0, evictions = 0;
  while (std::getline(trace, line)) {
    const nlohmann::json j = nlohmann::json::parse(line);
    if (lines++ == 0) CHECK(j["kind"] == "header");
    evictions += j["kind"] == "evict";
  }
  CHECK(evictions == report["sessions"][2]["evictions"].get<size_t>());
  // The comparison: a header and a row per step per compared session.
  std::ifstream csv(dir + "/comparison.csv");
  REQUIRE(csv.good());
  std::getline(csv, line);
  CHECK(line == "session,cache,step,token,kl_nats,top1_agree,lost_attention");
  size_t rows = 0;
  while (std::getline(csv, line)) rows += !line.empty();
  CHECK(rows == 2 * 24);
  std::filesystem::remove_all(dir);
  std::filesystem::remove(png);
}

TEST_CASE("gui: settings are written on exit and read at the next start") {
  kvscope::test::model_path();
  const std::string config = temp_path("kvscope-gui-settings");
  std::filesystem::remove_all(config);
  const std::string png = temp_png("kvscope-gui-settings");
  const Run first = gui("--temp 0.3 --top-k 7 --tokens 5 --system 'A short story.' "
                        "--compare 'q8;f16 + h2o:budget=64' --lab-preset default --lab-chunks 3 --lab-budget 30% "
                        "--lab-probes --frames 2 --screenshot " + png, config);
  INFO(first.out);
  REQUIRE(first.code == 0);
  REQUIRE(std::filesystem::exists(config + "/kvscope/settings.json"));
  // The Lab panel's fields are remembered too.
  const nlohmann::json saved = nlohmann::json::parse(kvscope::test::read_text(config + "/kvscope/settings.json"));
  CHECK(saved["lab"]["preset"] == "default");
  CHECK(saved["lab"]["chunks"] == 3);
  CHECK(saved["lab"]["budget"] == "30%");
  CHECK(saved["lab"]["probes"] == true);
  const Run second = gui("--frames 2 --screenshot " + png, config);
  INFO(second.out);
  REQUIRE(second.code == 0);
  const nlohmann::json effective = report_of(second)["effective"];
  CHECK(effective["temperature"].get<double>() == doctest::Approx(0.3));
  CHECK(effective["top_k"] == 7);
  CHECK(effective["tokens"] == 5);
  CHECK(effective["system"] == "A short story.");
  REQUIRE(effective["caches"].size() == 2);
  CHECK(effective["caches"][0] == "q8");
  CHECK(effective["caches"][1].get<std::string>().rfind("f16 + h2o:budget=64", 0) == 0);
  // A broken settings file is an error in the window, and the run goes on.
  { std::ofstream(config + "/kvscope/settings.json") << "{ not json"; }
  const Run broken = gui("--frames 2 --screenshot " + png, config);
  INFO(broken.out);
  REQUIRE(broken.code == 0);
  CHECK(report_of(broken)["errors"].dump().find("settings.json") != std::string::npos);
  // ... kept aside, not overwritten by the settings written on exit.
  CHECK(report_of(broken)["errors"].dump().find("settings.json.broken-1") != std::string::npos);
  REQUIRE(std::filesystem::exists(config + "/kvscope/settings.json.broken-1"));
  CHECK(kvscope::test::read_text(config + "/kvscope/settings.json.broken-1") == "{ not json");
  CHECK(nlohmann::json::parse(kvscope::test::read_text(config + "/kvscope/settings.json")).is_object());
  // A Lab field of the wrong type is refused by name.
  { std::ofstream(config + "/kvscope/settings.json") << R"({"lab": {"chunks": "many"}})"; }
  const Run lab = gui("--frames 2 --screenshot " + png, config);
  REQUIRE(lab.code == 0);
  CHECK(report_of(lab)["errors"].dump().find("chunks") != std::string::npos);
  // A number that does not fit is refused by name, not converted (1e64 into an int is undefined behaviour).
  { std::ofstream(config + "/kvscope/settings.json") << R"({"tokens": 1e64, "width": 1440})"; }
  const Run huge = gui("--frames 2 --screenshot " + png, config);
  INFO(huge.out);
  REQUIRE(huge.code == 0);
  CHECK(report_of(huge)["errors"].dump().find("\\\"tokens\\\" is 1e+64") != std::string::npos);
  CHECK(std::filesystem::exists(config + "/kvscope/settings.json.broken-3"));
  std::filesystem::remove_all(config);
  std::filesystem::remove(png);
}

TEST_CASE("gui: a conversation saved as JSON loads back with the same tokens, turns and pins") {
  kvscope::test::model_path();
  const std::string file = temp_path("kvscope-gui-conversation") + ".json";
  const std::string png = temp_png("kvscope-gui-conversation");
  const std::string cache = "--compare 'f16 + h2o:budget=32,recent=8' ";
  const Run saved = gui(cache + "--prompt 'Once upon a time' --system 'Lily had a red ball.' --tokens 12 --temp 0 "
                        "--save-conversation " + file + " --screenshot " + png);
  INFO(saved.out);
  REQUIRE(saved.code == 0);
  const nlohmann::json a = report_of(saved)["sessions"][0];
  REQUIRE(a["turns"].size() == 3);  // system, you, model
  REQUIRE(a["pins"].size() == 1);   // the system prompt
  CHECK(a["pins"][0].get<std::string>().rfind("0:", 0) == 0);
  const Run loaded = gui(cache + "--load-conversation " + file + " --screenshot " + png);
  INFO(loaded.out);
  REQUIRE(loaded.code == 0);
  const nlohmann::json report = report_of(loaded);
  CHECK(report["errors"].empty());
  const nlohmann::json b = report["sessions"][0];
  CHECK(b["tokens"] == a["tokens"]);
  CHECK(b["turns"] == a["turns"]);
  CHECK(b["pins"] == a["pins"]);
  CHECK(report["validation_messages"] == 0);
  std::filesystem::remove(file);
  std::filesystem::remove(png);
}

TEST_CASE("gui: a dropped file that is not a model shows an error, and the model in use keeps working") {
  kvscope::test::model_path();
  const std::string bad = temp_path("kvscope-gui-bad") + ".gguf";
  { std::ofstream(bad) << "this is not a GGUF file"; }
  const std::string png = temp_png("kvscope-gui-drop");
  const Run r = gui("--prompt 'Once upon a time' --tokens 8 --temp 0 --drop " + bad + " --screenshot " + png);
  INFO(r.out);
  REQUIRE(r.code == 0);
  const nlohmann::json report = report_of(r);
  REQUIRE(report["errors"].size() == 1);
  CHECK(report["errors"][0].get<std::string>().find(bad) != std::string::npos);
  CHECK(report["generated_tokens"] == 8);
  CHECK(report["effective"]["model"].get<std::string>().find("stories15M") != std::string::npos);
  const std::string text = temp_path("kvscope-gui-notes") + ".txt";
  { std::ofstream(text) << "notes"; }
  const Run other = gui("--drop " + text + " --frames 2 --screenshot " + png);
  INFO(other.out);
  REQUIRE(other.code == 0);
  CHECK(report_of(other)["errors"].dump().find("not a GGUF model") != std::string::npos);
  std::filesystem::remove(bad);
  std::filesystem::remove(text);
  std::filesystem::remove(png);
}

TEST_CASE("gui: the probe scenarios run from the window and give a verdict per policy") {
  kvscope::test::model_path();
  const std::string png = temp_png("kvscope-gui-probes");
  // One scenario, one policy: each run reads a few hundred tokens token by token.
  const Run r = gui("--run-probes 'window:budget=32' --probe-limit 1 --frames 2 --screenshot " + png);
  INFO(r.out);
  REQUIRE(r.code == 0);
  const nlohmann::json report = report_of(r);
  CHECK(report["errors"].empty());
  CHECK(report["validation_messages"] == 0);
  REQUIRE(report["probes"].size() == 1);
  for (const auto& p : report["probes"]) {
    CHECK(p["distance"].get<int>() > 0);
    CHECK(p["full_logprob"].get<double>() < 0);
    REQUIRE(p["runs"].size() == 1);
    for (const auto& run : p["runs"]) {
      const std::string verdict = run["verdict"];
      CHECK((verdict == "retained" || verdict == "degraded" || verdict == "lost"));
    }
  }
  std::filesystem::remove(png);
}

TEST_CASE("gui: the eviction timeline's scrubber shows the cache as the log had it at that step") {
  kvscope::test::model_path();
  const std::string png = temp_png("kvscope-gui-scrub");
  const std::string run = "--prompt 'Once upon a time' --tokens 30 --temp 0 --compare 'f16 + h2o:budget=16,recent=4' ";
  // Step 0 reads the 5-token prompt; each later step writes one token: at
  // step 5 ten positions were written, fewer than the budget, so all held.
  const Run early = gui(run + "--scrub 5 --screenshot " + png);
  INFO(early.out);
  REQUIRE(early.code == 0);
  const nlohmann::json at5 = report_of(early)["scrubbed"];
  CHECK(at5["step"] == 5);
  CHECK(at5["positions"] == 10);
  for (const auto& live : at5["live_per_layer"]) CHECK(live == 10);
  // Live: the budget caps every layer, and evicted positions are held by none.
  const Run late = gui(run + "--screenshot " + png);
  INFO(late.out);
  REQUIRE(late.code == 0);
  const nlohmann::json report = report_of(late);
  const nlohmann::json now = report["scrubbed"];
  CHECK(now["step"] == -1);
  CHECK(now["last_step"].get<int>() >= 29);
  for (const auto& live : now["live_per_layer"]) CHECK(live == 16);
  size_t evicted_everywhere = 0;
  for (const auto& held : now["layers_holding"]) evicted_everywhere += held == 0;
  CHECK(evicted_everywhere > 0);
  CHECK(report["validation_messages"] == 0);
  std::filesystem::remove(png);
}

TEST_CASE("gui: a device lost mid-reply is said in the window, every conversation is kept, and a reload carries them on") {
  const std::string model = kvscope::test::model_path();
  const std::string saved = temp_path("kvscope-gui-lost") + ".json";
  const std::string png = temp_png("kvscope-gui-lost");
  // The 20th forward pass fails as a lost device does (gpu::Context's
  // simulated loss), part way through both replies; the model dropped on the
  // window once they stop is the reload the banner's button does.
  setenv("KVSCOPE_LOSE_DEVICE_AFTER", "20", 1);
  const Run r = gui("-m " + model + " --prompt 'Once upon a time' --tokens 60 --temp 0 --compare 'f16;q8' --drop " +
                    model + " --save-conversation " + saved + " --screenshot " + png);
  unsetenv("KVSCOPE_LOSE_DEVICE_AFTER");
  INFO(r.out);
  REQUIRE(r.code == 0);
  const nlohmann::json report = report_of(r);
  CHECK(report["errors"].dump().find("the GPU stopped responding") != std::string::npos);
  REQUIRE(report["sessions"].size() == 2);
  for (const auto& s : report["sessions"]) {
    CHECK_FALSE(s["device_lost"].get<bool>());  // on the reloaded engine
    REQUIRE(s["turns"].size() == 2);
    CHECK(s["turns"][0] == "Once upon a time");
    CHECK(!s["turns"][1].get<std::string>().empty());  // the part of the reply written before the loss
    CHECK(s["tokens"].size() > 5);
    CHECK(s["tokens"].size() < 60);
  }
  const kvscope::Conversation c = kvscope::read_conversation_json(kvscope::test::read_text(saved), saved);
  CHECK(c.turns.size() == 2);
  std::filesystem::remove(saved);
  std::filesystem::remove(png);
}

namespace {
// The colour of the screenshot at a point of a view's rectangle (fx, fy in 0..1).
uint32_t pixel_at(const Image& img, const nlohmann::json& rect, float fx, float fy) {
  const int x = static_cast<int>(rect[0].get<float>() + fx * rect[2].get<float>());
  const int y = static_cast<int>(rect[1].get<float>() + fy * rect[3].get<float>());
  REQUIRE(x >= 0);
  REQUIRE(y >= 0);
  REQUIRE(x < img.width);
  REQUIRE(y < img.height);
  return img.pixel(x, y);
}
int red(uint32_t c) { return (c >> 16) & 0xFF; }
int green(uint32_t c) { return (c >> 8) & 0xFF; }
int blue(uint32_t c) { return c & 0xFF; }
}  // namespace

TEST_CASE("gui: the eviction map draws a rolling window's diagonal; the heatmap's held columns are the budget") {
  kvscope::test::model_path();
  const std::string png = temp_png("kvscope-gui-map");
  const Run r = gui("--prompt 'Once upon a time' --tokens 400 --temp 0 --compare 'f16 + "
                    "streamingllm:sinks=4,window=60,rolling' --held-columns --screenshot " + png);
  INFO(r.out);
  REQUIRE(r.code == 0);
  const nlohmann::json report = report_of(r);
  CHECK(report["errors"].empty());
  const nlohmann::json& map = report["views"]["map"];
  const size_t tokens = report["sessions"][0]["tokens"].size();
  CHECK(map["positions"].get<size_t>() + 1 >= tokens);  // every position written (the last sampled one waits)
  CHECK(map["steps"].get<int>() >= 400);
  CHECK(map["runs"].get<size_t>() > 50);
  CHECK(report["views"]["heatmap"]["held_only"] == true);
  CHECK(report["views"]["heatmap"]["columns"] == 64);  // 4 sinks + a window of 60
  const Image img = load_png(png);
  const nlohmann::json& rect = map["rect"];
  const float n = static_cast<float>(map["positions"].get<size_t>());
  // Right of the diagonal, high up: positions written long ago and evicted (red).
  const uint32_t evicted = pixel_at(img, rect, 0.9f, 0.3f);
  CHECK_MESSAGE(red(evicted) > blue(evicted) + 30, std::hex << evicted);
  // Left of the diagonal, low down: positions not written yet (the dark background).
  const uint32_t unwritten = pixel_at(img, rect, 0.1f, 0.9f);
  CHECK_MESSAGE(red(unwritten) < 70, std::hex << unwritten);
  CHECK(std::abs(red(unwritten) - blue(unwritten)) < 25);
  // On the band: the last 60 positions before the step, held (blue).
  const uint32_t held = pixel_at(img, rect, 0.9f, 0.9f - 30.0f / n);
  CHECK_MESSAGE(blue(held) > red(held) + 30, std::hex << held);
  // The sinks, the first row, held to the end.
  const uint32_t sinks = pixel_at(img, rect, 0.95f, 0.5f / rect[3].get<float>());
  CHECK_MESSAGE(blue(sinks) > red(sinks), std::hex << sinks);
  std::filesystem::remove(png);
}

TEST_CASE("gui: a 32-layer, 8-kv-head model: the occupancy grid shows every layer and head, PyramidKV's layers "
          "marked, and the heatmap stays in view") {
  const std::string model = temp_path("kvscope-gui-32x8") + ".gguf";
  const Run made = shell(std::string(KVSCOPE_BINARY) + " synthetic tiny-llama3 " + model +
                         " --layers 32 --heads 8 --kv-heads 8 --dim 128 --head-dim 16 --ffn 128 --ctx 256 --vocab-from " +
                         kvscope::test::model_path());
  INFO(made.out);
  REQUIRE(made.code == 0);
  const std::string png = temp_png("kvscope-gui-32x8");
  const Run r = gui("-m " + model + " --prompt 'Once upon a time' --tokens 40 --temp 0 --compare "
                    "'f16 + pyramidkv:budget=32;q8 + h2o:budget=32,recent=8' --map-layer 31 --map-head 7 --screenshot " + png);
  INFO(r.out);
  REQUIRE(r.code == 0);
  const nlohmann::json report = report_of(r);
  CHECK(report["errors"].empty());
  const nlohmann::json& occupancy = report["views"]["occupancy"];
  CHECK(occupancy["layers"] == 32);
  CHECK(occupancy["heads"] == 8);
  CHECK(occupancy["own_budget_layers"].get<size_t>() >= 30);  // a pyramid: (almost) every layer its own budget
  CHECK(occupancy["rect"][3].get<float>() <= 220);            // 32 rows in at most ~200 px
  CHECK(report["views"]["map"]["layer"] == 31);
  CHECK(report["views"]["map"]["head"] == 7);
  // The heatmap is on screen, below the grid and the map, at a usable height.
  const float window_h = report["window"][1].get<float>();
  CHECK(report["heatmap"][1].get<float>() + report["heatmap"][3].get<float>() <= window_h);
  CHECK(report["heatmap"][3].get<float>() >= 120);
  CHECK(report["heatmap_cells"] == true);
  std::filesystem::remove(png);
  std::filesystem::remove(model);
}

TEST_CASE("gui: a Gemma 3 model: local layers drawn apart with their window, a policy's budget on global layers only") {
  const std::string model = temp_path("kvscope-gui-gemma3") + ".gguf";
  const Run made = shell(std::string(KVSCOPE_BINARY) + " synthetic tiny-gemma3 " + model +
                         " --layers 13 --window 24 --ctx 1024 --vocab-from " + kvscope::test::model_path());
  INFO(made.out);
  REQUIRE(made.code == 0);
  const std::string png = temp_png("kvscope-gui-gemma3");
  const Run r = gui("-m " + model + " -c 1024 --prompt 'Once upon a time there was a little cat who liked to sit in "
                    "the sun' --tokens 40 --temp 0 --compare 'f16;f16 + h2o:budget=48,recent=16' --select 1 "
                    "--map-layer 5 --screenshot " + png);
  INFO(r.out);
  REQUIRE(r.code == 0);
  const nlohmann::json report = report_of(r);
  CHECK(report["errors"].empty());
  const nlohmann::json& occupancy = report["views"]["occupancy"];
  CHECK(occupancy["layers"] == 13);
  CHECK(occupancy["local_layers"] == 11);
  CHECK(occupancy["own_budget_layers"] == 0);  // the two global layers share the budget; local ones have none
  // Session B: the global layers hold the budget, the tokens count them.
  const nlohmann::json& b = report["sessions"][1];
  CHECK(b["tokens"].size() > 48);
  CHECK(report["scrubbed"]["session"] == "B");
  const nlohmann::json& live = report["scrubbed"]["live_per_layer"];
  REQUIRE(live.size() == 13);
  for (size_t l = 0; l < 13; ++l) {
    CAPTURE(l);
    CHECK(live[l] == ((l == 5 || l == 11) ? 48 : 24));  // budget on global layers, the window on local ones
  }
  // The local rows' fill is teal (the theme's window_fill, 77 179 168), the
  // global ones' blue (bar_fill, 77 143 217): count such pixels along a row.
  const Image img = load_png(png);
  const nlohmann::json& rect = occupancy["rect"];
  auto count_along_row = [&](size_t layer, auto&& is_colour) {
    const int y = static_cast<int>(rect[1].get<float>() + (layer + 0.5f) * rect[3].get<float>() / 13);
    int n = 0;
    for (int x = static_cast<int>(rect[0].get<float>()); x < static_cast<int>(rect[0].get<float>() + rect[2].get<float>()); ++x)
      n += is_colour(img.pixel(x, y));
    return n;
  };
  auto teal = [](uint32_t c) { return green(c) > 150 && blue(c) < 200 && red(c) < 120; };
  auto bar_blue = [](uint32_t c) { return blue(c) > 190 && green(c) < 170 && red(c) < 120; };
  CHECK(count_along_row(0, teal) > 4);
  CHECK(count_along_row(0, bar_blue) == 0);
  CHECK(count_along_row(5, bar_blue) > 4);
  CHECK(count_along_row(5, teal) == 0);
  std::filesystem::remove(png);
  std::filesystem::remove(model);
}

TEST_CASE("gui: the Lab panel sweeps caches live, shares its journal with `kvscope lab`, and opens a point side by "
          "side") {
  kvscope::test::model_path();
  const std::string dir = temp_path("kvscope-gui-lab");
  std::filesystem::remove_all(dir);
  const std::string png = temp_png("kvscope-gui-lab");
  const std::string text = kvscope::test::data_path("corpus.txt");
  const std::string grid = "--lab-preset none --lab-storages 'f16;q8' --lab-policies none,h2o --lab-budgets 32 "
                           "--lab-chunks 2 --lab-budget 40%";
  const Run r = gui("-c 128 --width 1440 --height 900 --lab-text " + text + " --lab-out " + dir + " " + grid +
                    " --lab-run --frames 2 --screenshot " + png);
  INFO(r.out);
  REQUIRE(r.code == 0);
  const nlohmann::json report = report_of(r);
  CHECK(report["errors"].empty());
  CHECK(report["validation_messages"] == 0);
  const nlohmann::json& lab = report["lab"];
  REQUIRE(lab["done"] == true);
  REQUIRE(lab["rows"].size() == 4);
  CHECK(lab["points_drawn"] == 4);
  CHECK(lab["files"].size() == 9);
  // The chart is on screen, and its points are drawn in their colours.
  const Image shot = load_png(png);
  const auto& c = lab["chart"];
  const int x0 = int(c[0].get<float>()), y0 = int(c[1].get<float>());
  const int w = int(c[2].get<float>()), h = int(c[3].get<float>());
  REQUIRE(w > 400);
  REQUIRE(h > 180);
  CHECK(distinct_colours(shot, x0, y0, w, h) > 12);

  // The command line reads the window's journal as its own: every cache resumed, the same figures.
  const Run cli = shell(std::string(KVSCOPE_BINARY) + " lab -c 128 -f " + text + " --out " + dir +
                        " --preset none --storages 'f16;q8' --policies none,h2o --budgets 32 --max-chunks 2 "
                        "--budget 40% --json");
  REQUIRE_MESSAGE(cli.code == 0, cli.out);
  CHECK(cli.out.find("resumed: 4 of 4 caches") != std::string::npos);
  const nlohmann::json results = nlohmann::json::parse(cli.out.substr(cli.out.find("\n{") + 1));
  REQUIRE(results["rows"].size() == 4);
  for (size_t i = 0; i < 4; ++i) {
    CHECK(results["rows"][i]["label"] == lab["rows"][i]["cache"]);
    CHECK(results["rows"][i]["kl_mean"] == lab["rows"][i]["kl_mean"]);
  }

  // Opened side by side: the baseline as A, row 1 (f16 + h2o at 32) as B, forced on the text.
  const Run open = gui("-c 128 --width 1440 --height 900 --lab-text " + text + " --lab-out " + dir + " " + grid +
                       " --lab-run --lab-open 1 --frames 2 --screenshot " + png);
  INFO(open.out);
  REQUIRE(open.code == 0);
  const nlohmann::json opened = report_of(open);
  CHECK(opened["errors"].empty());
  REQUIRE(opened["sessions"].size() == 2);
  CHECK(opened["sessions"][0]["cache"] == "f16");
  CHECK(opened["sessions"][1]["cache"] == "f16 + h2o:budget=32,recent=16");
  REQUIRE(opened["forced"].size() == 1);
  CHECK(opened["forced"][0]["kl"].size() > 60);
  CHECK(opened["forced"][0]["lost_attention_mean"].get<double>() > 0);
  CHECK(opened["sessions"][1]["evictions"].get<int>() > 0);
  std::filesystem::remove_all(dir);
  std::filesystem::remove(png);
}
