#include "app/gui/theme.h"

#include <algorithm>
#include <cmath>
#include <filesystem>

namespace kvscope::gui {

namespace {

// Debian's font packages; the first that exists wins.
constexpr const char* kTextFonts[] = {
    "/usr/share/fonts/opentype/inter/Inter-Regular.otf",     // fonts-inter
    "/usr/share/fonts/truetype/inter/Inter-Regular.ttf",
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",       // fonts-dejavu-core
};
constexpr const char* kSymbolFont = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf";
constexpr const char* kMonoFont = "/usr/share/fonts/truetype/dejavu/DejaVuSansMono.ttf";

const char* first_existing(std::initializer_list<const char*> paths) {
  for (const char* p : paths)
    if (std::filesystem::exists(p)) return p;
  return nullptr;
}

// Latin text plus the symbols the panels draw: ▁ ↵ · … ▾ ━ and the lock.
const ImWchar* glyph_ranges() {
  static const ImWchar ranges[] = {
      0x0020, 0x024F,  // Latin, Latin-1, Latin Extended
      0x2000, 0x206F,  // general punctuation (· … ‖)
      0x2190, 0x21FF,  // arrows (↵)
      0x2500, 0x25FF,  // box drawing, blocks, shapes (▁ ▾ ■)
      0x2600, 0x26FF,  // misc symbols
      0,
  };
  return ranges;
}

void apply_style(float scale) {
  ImGuiStyle& s = ImGui::GetStyle();
  ImGui::StyleColorsDark(&s);
  s.WindowRounding = 0;
  s.ChildRounding = 6;
  s.FrameRounding = 5;
  s.GrabRounding = 5;
  s.PopupRounding = 6;
  s.ScrollbarRounding = 6;
  s.TabRounding = 5;
  s.WindowBorderSize = 0;
  s.ChildBorderSize = 1;
  s.FrameBorderSize = 0;
  s.WindowPadding = {12, 10};
  s.FramePadding = {8, 5};
  s.ItemSpacing = {8, 7};
  s.ItemInnerSpacing = {6, 4};
  s.ScrollbarSize = 12;
  ImVec4* c = s.Colors;
  c[ImGuiCol_Text] = colour::text;
  c[ImGuiCol_TextDisabled] = colour::muted;
  c[ImGuiCol_WindowBg] = colour::panel_bg;
  // Panels are framed by their borders, not filled: on a CPU Vulkan device
  // (lavapipe) every filled full-panel layer costs frame rate, and the
  // render pass already clears to the panel colour.
  c[ImGuiCol_ChildBg] = {0, 0, 0, 0};
  c[ImGuiCol_PopupBg] = {0.12f, 0.13f, 0.16f, 0.98f};
  c[ImGuiCol_Border] = {0.22f, 0.24f, 0.29f, 1.00f};
  c[ImGuiCol_FrameBg] = {0.16f, 0.17f, 0.20f, 1.00f};
  c[ImGuiCol_FrameBgHovered] = {0.21f, 0.23f, 0.27f, 1.00f};
  c[ImGuiCol_FrameBgActive] = {0.24f, 0.27f, 0.32f, 1.00f};
  c[ImGuiCol_Button] = {0.19f, 0.33f, 0.52f, 1.00f};
  c[ImGuiCol_ButtonHovered] = {0.24f, 0.41f, 0.64f, 1.00f};
  c[ImGuiCol_ButtonActive] = {0.28f, 0.47f, 0.72f, 1.00f};
  c[ImGuiCol_Header] = {0.19f, 0.28f, 0.40f, 1.00f};
  c[ImGuiCol_HeaderHovered] = {0.23f, 0.34f, 0.48f, 1.00f};
  c[ImGuiCol_HeaderActive] = {0.26f, 0.38f, 0.54f, 1.00f};
  c[ImGuiCol_PlotHistogram] = colour::bar_fill;
  c[ImGuiCol_SliderGrab] = colour::bar_fill;
  c[ImGuiCol_CheckMark] = colour::pinned;
  c[ImGuiCol_Separator] = {0.20f, 0.22f, 0.26f, 1.00f};
  c[ImGuiCol_TitleBg] = c[ImGuiCol_TitleBgActive] = {0.10f, 0.11f, 0.13f, 1.00f};
  s.ScaleAllSizes(scale);
}

}  // namespace

Fonts setup_theme(float scale) {
  ImGuiIO& io = ImGui::GetIO();
  Fonts fonts;
  const char* text_path = first_existing({kTextFonts[0], kTextFonts[1], kTextFonts[2]});
  const float text_px = std::round(16.0f * scale), small_px = std::round(13.5f * scale);
  const float mono_px = std::round(15.0f * scale);
  ImFontConfig merge;
  merge.MergeMode = true;
  if (text_path) {
    fonts.text = io.Fonts->AddFontFromFileTTF(text_path, text_px, nullptr, glyph_ranges());
    if (std::filesystem::exists(kSymbolFont))
      io.Fonts->AddFontFromFileTTF(kSymbolFont, text_px, &merge, glyph_ranges());
    fonts.small = io.Fonts->AddFontFromFileTTF(text_path, small_px, nullptr, glyph_ranges());
    if (std::string(text_path).find("inter") == std::string::npos)
      fonts.note = "Inter not found (install fonts-inter): using DejaVu Sans";
  }
  if (std::filesystem::exists(kMonoFont))
    fonts.tokens = io.Fonts->AddFontFromFileTTF(kMonoFont, mono_px, nullptr, glyph_ranges());
  if (!fonts.text || !fonts.tokens) {
    // ImGui's built-in bitmap font covers ASCII only; say so in the window.
    ImFontConfig config;
    config.SizePixels = std::round(13.0f * scale);
    ImFont* fallback = io.Fonts->AddFontDefault(&config);
    if (!fonts.text) fonts.text = fonts.small = fallback;
    if (!fonts.tokens) fonts.tokens = fallback;
    fonts.note = "fonts-inter / fonts-dejavu-core not installed: using ImGui's built-in font "
                 "(run scripts/setup.sh)";
  }
  io.FontDefault = fonts.text;
  apply_style(scale);
  return fonts;
}

ImU32 viridis(float t) {
  // matplotlib's viridis sampled at 0, 0.1, ..., 1; linear in between.
  static const unsigned char stops[11][3] = {
      {68, 1, 84},    {72, 36, 117},  {65, 68, 135},  {53, 95, 141},  {42, 120, 142}, {33, 145, 140},
      {34, 168, 132}, {68, 191, 112}, {122, 209, 81}, {189, 223, 38}, {253, 231, 37},
  };
  t = std::clamp(t, 0.0f, 1.0f) * 10.0f;
  const int i = std::min(static_cast<int>(t), 9);
  const float f = t - static_cast<float>(i);
  auto mix = [&](int c) { return static_cast<int>(stops[i][c] + (stops[i + 1][c] - stops[i][c]) * f + 0.5f); };
  return IM_COL32(mix(0), mix(1), mix(2), 255);
}

}  // namespace kvscope::gui
