// Side by side: every session's last reply to the same prompt in a column,
// the first token where a session departs from session A marked in both.
// Forced mode: every session read the same tokens; under the columns, per
// step, the KL divergence from A, top-1 agreement and the lost attention.
#include <fmt/format.h>
#include <imgui.h>

#include <algorithm>
#include <cmath>

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

void App::draw_forced_metrics() {
  ImGui::TextColored(colour::muted, "AGAINST A, PER STEP  ·  bars: KL (log)  ·  red: top-1 differs  ·  line: lost attention");
  if (ImGui::IsItemHovered())
    ImGui::SetTooltip("KL(A || session) of the next-token distributions at each step of the forced reply.\n"
                      "Lost attention: A's attention mass (mean over layers and heads) on positions this cache\n"
                      "no longer holds. The first divergence is the first step whose most likely tokens differ.");
  ImDrawList* draw = ImGui::GetWindowDrawList();
  for (size_t i = 1; i < comparisons_.size() && i < frame_snapshots_.size(); ++i) {
    const SessionComparison& c = comparisons_[i].result();
    const std::string first = c.first_divergence < 0 ? std::string("none")
                                                     : fmt::format("step {}", c.first_divergence);
    ImGui::Text("%s  %s", c.name.c_str(), c.cache.c_str());
    ImGui::SameLine();
    ImGui::PushTextWrapPos(0);
    ImGui::TextColored(colour::muted, "KL %.4f nats mean  ·  top-1 agrees %.0f%%  ·  first divergence %s  ·  lost attention %s",
                       c.mean_kl(), 100 * c.top1_agreement(), first.c_str(),
                       c.lost.steps ? fmt::format("{:.3f} mean, {:.3f} max", c.lost.mean, c.lost.max).c_str() : "n/a");
    ImGui::PopTextWrapPos();
    const float width = ImGui::GetContentRegionAvail().x, height = ImGui::GetTextLineHeight() * 2.2f;
    const ImVec2 p = ImGui::GetCursorScreenPos();
    draw->AddRectFilled(p, {p.x + width, p.y + height}, ImGui::ColorConvertFloat4ToU32(colour::bar_bg), 2);
    const size_t n = std::max<size_t>(c.steps.size(), 1);
    const float step_w = width / std::max<size_t>(n, options_.tokens);
    // log10(KL) from 1e-4 to 10 nats fills the height.
    auto kl_height = [&](double kl) {
      return static_cast<float>(std::clamp((std::log10(std::max(kl, 1e-4)) + 4) / 5, 0.0, 1.0)) * height;
    };
    ImVec2 last_lost{-1, -1};
    for (size_t k = 0; k < c.steps.size(); ++k) {
      const StepComparison& st = c.steps[k];
      const float x0 = p.x + k * step_w, x1 = x0 + std::max(1.0f, step_w - 1);
      draw->AddRectFilled({x0, p.y + height - kl_height(st.kl)}, {x1, p.y + height},
                          ImGui::ColorConvertFloat4ToU32(st.top1_agree ? colour::bar_fill : colour::diverged));
      if (st.lost_attention >= 0) {
        const ImVec2 q{x0 + step_w / 2, p.y + height - static_cast<float>(std::min(1.0, st.lost_attention)) * height};
        if (last_lost.x >= 0) draw->AddLine(last_lost, q, ImGui::ColorConvertFloat4ToU32(colour::recalled), 1.5f);
        last_lost = q;
      }
    }
    if (c.first_divergence >= 0) {
      const float x = p.x + (c.first_divergence + 0.5f) * step_w;
      draw->AddLine({x, p.y}, {x, p.y + height}, ImGui::ColorConvertFloat4ToU32(colour::text), 1.5f);
    }
    ImGui::PushID(static_cast<int>(i));
    ImGui::InvisibleButton("##steps", {width, height});
    if (ImGui::IsItemHovered() && !c.steps.empty()) {
      const size_t k = std::min(c.steps.size() - 1, static_cast<size_t>((ImGui::GetIO().MousePos.x - p.x) / step_w));
      const StepComparison& st = c.steps[k];
      const SessionSnapshot& s = *frame_snapshots_[i];
      ImGui::BeginTooltip();
      ImGui::Text("step %u  ·  token %d", st.index, st.token);
      ImGui::Text("KL %.5f nats  ·  top-1 %s", st.kl, st.top1_agree ? "agrees" : "differs");
      if (st.lost_attention >= 0) ImGui::Text("lost attention %.4f", st.lost_attention);
      (void)s;
      ImGui::EndTooltip();
    }
    ImGui::PopID();
  }
}

void App::draw_compare() {
  const bool forced = forced_mode_ && comparisons_.size() > 1;
  const float input_h = ImGui::GetFrameHeightWithSpacing() * 4.2f;
  const float metrics_h = forced ? (ImGui::GetTextLineHeightWithSpacing() * 3.4f) * (comparisons_.size() - 1) +
                                       ImGui::GetTextLineHeightWithSpacing() * 8
                                 : 0;
  const SessionSnapshot& base = *frame_snapshots_[0];
  ImGui::BeginChild("compare", {0, ImGui::GetContentRegionAvail().y - input_h - metrics_h}, true);
  ImGui::TextColored(colour::muted, "%s", forced_mode_ ? "SIDE BY SIDE, FORCED  ·  every session reads the same tokens"
                                                       : "SIDE BY SIDE  ·  same prompt, same sampling, one cache each");
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
      ImGui::TextColored(colour::model, "%s  ·  %s", s.name.c_str(), s.spec.label().c_str());
      ImGui::PushFont(fonts_.small);
      ImGui::TextColored(colour::muted, "%.1f tok/s · TTFT %.2f s", s.last_tok_s, s.last_ttft_seconds);
      ImGui::TextColored(colour::muted, "cache %s of %s", format_bytes(s.bytes_per_token * s.used_tokens).c_str(),
                         format_bytes(static_cast<double>(s.cache_bytes_full)).c_str());
      const long diff = i == 0 ? -1
                        : forced ? (static_cast<size_t>(i) < comparisons_.size() ? comparisons_[i].result().first_divergence : -1)
                                 : first_difference(base, s);
      if (i > 0)
        ImGui::TextColored(diff < 0 ? colour::muted : colour::diverged, "%s",
                           diff < 0 ? (forced ? "same top-1 as A so far" : "same tokens as A so far")
                                    : forced ? fmt::format("top-1 first differs from A at step {}", diff).c_str()
                                             : fmt::format("departs from A at token {}", diff).c_str());
      else
        ImGui::TextColored(colour::muted, "the reference column");
      ImGui::PopFont();
      // Where any session departs from A, A's column marks its first
      // departure too, so the eye finds both sides.
      long base_mark = -1;
      for (int j = 1; j < n; ++j) {
        const long d = forced ? (static_cast<size_t>(j) < comparisons_.size() ? comparisons_[j].result().first_divergence : -1)
                              : first_difference(base, *frame_snapshots_[j]);
        if (d >= 0 && (base_mark < 0 || d < base_mark)) base_mark = d;
      }
      const long mark = i == 0 ? base_mark : diff;
      const auto [begin, end] = last_reply(s);
      ImGui::PushID(i);  // each column keeps its own token layout
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
      ImGui::PopID();
    }
    ImGui::EndTable();
  }
  ImGui::EndChild();
  if (forced) {
    ImGui::BeginChild("forced_metrics", {0, metrics_h}, true);
    draw_forced_metrics();
    // The selected session's strip, its regretted evictions on a warm background.
    const SessionSnapshot& sel = *frame_snapshots_[std::min(selected_, frame_snapshots_.size() - 1)];
    ImGui::TextColored(colour::muted, "TOKEN STRIP of %s  ·  warm: regretted evictions", sel.name.c_str());
    if (ImGui::IsItemHovered())
      ImGui::SetTooltip("Positions A attended to after this cache had evicted them, the most lost attention first");
    draw_token_strip(scrubbed(sel, timeline_), fonts_, strip_drag_, regretted_positions(selected_), timeline_.step, {});
    ImGui::EndChild();
  }
  draw_prompt_box(base, *sessions_[0]);
}

}  // namespace kvscope::gui
