// The window's visual language in one place (shared/UI.md): one meaning, one
// colour, everywhere; fonts from Debian's packages, scaled for the monitor.
#pragma once
#include <imgui.h>

#include <string>

namespace kvscope::gui {

namespace colour {
// Meanings, not hues: a panel asks for `evicted`, never for "grey".
inline const ImVec4 text{0.90f, 0.91f, 0.93f, 1.00f};
inline const ImVec4 muted{0.56f, 0.59f, 0.65f, 1.00f};     // labels, units, captions
inline const ImVec4 evicted{0.42f, 0.44f, 0.48f, 1.00f};   // dimmed and struck through
inline const ImVec4 pinned{0.38f, 0.68f, 1.00f, 1.00f};    // cool accent, with a lock glyph
inline const ImVec4 recalled{1.00f, 0.66f, 0.30f, 1.00f};  // warm accent
inline const ImVec4 diverged{0.95f, 0.40f, 0.48f, 1.00f};  // first differing token
inline const ImVec4 user{0.62f, 0.80f, 0.98f, 1.00f};      // the person's turns
inline const ImVec4 model{0.68f, 0.90f, 0.70f, 1.00f};     // the model's turns
inline const ImVec4 error_bg{0.45f, 0.12f, 0.14f, 1.00f};
inline const ImVec4 panel_bg{0.10f, 0.11f, 0.13f, 1.00f};
inline const ImVec4 bar_bg{0.17f, 0.18f, 0.21f, 1.00f};
inline const ImVec4 bar_fill{0.30f, 0.56f, 0.85f, 1.00f};
inline const ImVec4 window_fill{0.30f, 0.70f, 0.66f, 1.00f};  // a sliding-window layer: the model's own forgetting
}  // namespace colour

struct Fonts {
  ImFont* text = nullptr;    // Inter (or DejaVu Sans, or ImGui's default)
  ImFont* tokens = nullptr;  // DejaVu Sans Mono: token strips, where widths line up
  ImFont* small = nullptr;   // captions under replies
  std::string note;          // non-empty when a fallback was used: shown in the window
};

// Loads the fonts at `scale` (the monitor's content scale) and applies the
// style. Call once, before the renderer uploads the font atlas.
Fonts setup_theme(float scale);

// Viridis at t in [0, 1] (perceptually uniform, colour-blind safe).
ImU32 viridis(float t);

}  // namespace kvscope::gui
