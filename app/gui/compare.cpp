// Side by side: every session's last reply to the same prompt in a column,
// the first token where a session departs from session A marked in both.
#include <fmt/format.h>
#include <imgui.h>

#include <algorithm>

#include "app/gui/app.h"

namespace kvscope::gui {

namespace {

// The last reply's token range [begin, end) in the snapshot's context.
std::pair<size_t, size_t> last_reply(const SessionSnapshot& s) {
  for (auto t = s.turns.rbegin(); t != s.turns.rend(); ++t)
    if (t->role == Turn::Role::Model) {
      const size_t begin = std::min<size_t>(t->first_token, s.tokens.size());
      return {begin, std::min<size_t>(begin + t->n_tokens, s.tokens.size())};
    }
  return {s.tokens.size(), s.tokens.size()};
}

// Index within the reply of the first token that differs from `base`'s, or
// -1 when one is a prefix of the other so far.
long first_difference(const SessionSnapshot& base, const SessionSnapshot& s) {
  const auto [b0, b1] = last_reply(base);
  const auto [s0, s1] = last_reply(s);
  const size_t n = std::min(b1 - b0, s1 - s0);
  for (size_t i = 0; i < n; ++i)
    if (base.tokens[b0 + i] != s.tokens[s0 + i]) return static_cast<long>(i);
  return -1;
}

}  // namespace

void App::draw_compare() {
  const float input_h = ImGui::GetFrameHeightWithSpacing() * 4.2f;
  const SessionSnapshot& base = *frame_snapshots_[0];
  ImGui::BeginChild("compare", {0, ImGui::GetContentRegionAvail().y - input_h}, true);
  ImGui::TextColored(colour::muted, "SIDE BY SIDE  ·  same prompt, same sampling, one cache each");
  ImGui::Separator();
  for (auto t = base.turns.rbegin(); t != base.turns.rend(); ++t)
    if (t->role == Turn::Role::User) {
      ImGui::TextColored(colour::user, "You");
      ImGui::SameLine();
      ImGui::PushTextWrapPos(0);
      ImGui::TextUnformatted(t->text.c_str());
      ImGui::PopTextWrapPos();
      break;
    }
  const int n = static_cast<int>(frame_snapshots_.size());
  if (ImGui::BeginTable("columns", n, ImGuiTableFlags_BordersInnerV | ImGuiTableFlags_ScrollY)) {
    for (int i = 0; i < n; ++i) ImGui::TableSetupColumn(frame_snapshots_[i]->name.c_str());
    ImGui::TableNextRow();
    for (int i = 0; i < n; ++i) {
      ImGui::TableSetColumnIndex(i);
      const SessionSnapshot& s = *frame_snapshots_[i];
      ImGui::TextColored(colour::model, "%s  ·  %s", s.name.c_str(), s.spec.name().c_str());
      ImGui::PushFont(fonts_.small);
      ImGui::TextColored(colour::muted, "%.1f tok/s · TTFT %.2f s", s.last_tok_s, s.last_ttft_seconds);
      ImGui::TextColored(colour::muted, "cache %s of %s", format_bytes(s.bytes_per_token * s.used_tokens).c_str(),
                         format_bytes(static_cast<double>(s.cache_bytes_full)).c_str());
      const long diff = i == 0 ? -1 : first_difference(base, s);
      if (i > 0)
        ImGui::TextColored(diff < 0 ? colour::muted : colour::diverged, "%s",
                           diff < 0 ? "same tokens as A so far" : fmt::format("departs from A at token {}", diff).c_str());
      else
        ImGui::TextColored(colour::muted, "the reference column");
      ImGui::PopFont();
      // Where any session departs from A, A's column marks its first
      // departure too, so the eye finds both sides.
      long base_mark = -1;
      for (int j = 1; j < n; ++j) {
        const long d = first_difference(base, *frame_snapshots_[j]);
        if (d >= 0 && (base_mark < 0 || d < base_mark)) base_mark = d;
      }
      const long mark = i == 0 ? base_mark : diff;
      const auto [begin, end] = last_reply(s);
      draw_token_flow(
          s.pieces, begin, end, fonts_.tokens,
          [&](size_t k) {
            TokenStyle st;
            if (mark >= 0 && static_cast<long>(k - begin) == mark) {
              st.background = ImGui::ColorConvertFloat4ToU32(colour::diverged);
              st.colour = {0.08f, 0.08f, 0.10f, 1};
            } else if (mark >= 0 && static_cast<long>(k - begin) > mark) {
              st.colour = colour::text;
            }
            return st;
          },
          [&](size_t k) {
            ImGui::Text("%s: token %zu of the reply, id %d", s.name.c_str(), k - begin, s.tokens[k]);
            if (mark >= 0 && static_cast<long>(k - begin) == mark)
              ImGui::TextColored(colour::diverged, "first token that differs from session A");
          });
    }
    ImGui::EndTable();
  }
  ImGui::EndChild();
  draw_prompt_box(base, *sessions_[0]);
}

}  // namespace kvscope::gui
