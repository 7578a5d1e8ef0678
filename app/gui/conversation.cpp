// The conversation pane: turns (system, you, model) with timings under each
// reply and an editor for past messages; the prompt box with Stop /
// Generate / Regenerate / Clear; the context meter; the token strip.
#include <fmt/format.h>
#include <imgui.h>

#include <algorithm>

#include "app/core/thinking.h"
#include "app/gui/app.h"

namespace kvscope::gui {

namespace {

void help_marker(const char* text) {
  if (ImGui::IsItemHovered()) ImGui::SetTooltip("%s", text);
}

}  // namespace

void App::draw_turn(const SessionSnapshot& s, SessionWorker& worker, size_t index) {
  const Turn& t = s.turns[index];
  ImGui::PushID(static_cast<int>(index));
  if (t.role == Turn::Role::System) {
    ImGui::TextColored(colour::pinned, "System");
    ImGui::SameLine();
    ImGui::TextColored(colour::muted, "%s", s.pins.empty() ? "(kept by a full cache)" : "(pinned: never evicted)");
  } else if (t.role == Turn::Role::User) {
    ImGui::TextColored(colour::user, "You");
    if (!worker.busy() && editing_turn_ != static_cast<int>(index)) {
      ImGui::SameLine();
      if (ImGui::SmallButton("edit")) {
        editing_turn_ = static_cast<int>(index);
        std::snprintf(edit_buffer_, sizeof edit_buffer_, "%s", t.text.c_str());
      }
      help_marker("Change this message: what follows it is dropped and a new reply written");
    }
  } else {
    ImGui::TextColored(colour::model, "Model");
  }
  if (editing_turn_ == static_cast<int>(index)) {
    ImGui::InputTextMultiline("##edit", edit_buffer_, sizeof edit_buffer_,
                              {-1, ImGui::GetFrameHeightWithSpacing() * 2.5f});
    if (ImGui::Button("Send edited")) {
      GenerateRequest r = request(edit_buffer_);
      worker.edit(index, edit_buffer_, r);
      editing_turn_ = -1;
    }
    help_marker("Replaces the message, drops the conversation after it, refills the cache and writes a reply");
    ImGui::SameLine();
    if (ImGui::Button("Cancel")) editing_turn_ = -1;
  } else {
    // A reasoning model's <think> part, folded under a header (open it to read).
    const ThinkingSplit split = t.role == Turn::Role::Model ? split_thinking(t.text, thinking_opened_by_prompt_)
                                                            : ThinkingSplit{{}, t.text};
    if (split.has_thinking) {
      const std::string header =
          split.open ? fmt::format("Thinking… ({} characters so far)###thinking", split.thinking.size())
                     : fmt::format("Thought for {} characters###thinking", split.thinking.size());
      ImGui::PushStyleColor(ImGuiCol_Text, colour::muted);
      if (ImGui::TreeNodeEx(header.c_str(), ImGuiTreeNodeFlags_SpanAvailWidth)) {
        ImGui::PushTextWrapPos(0);
        ImGui::TextUnformatted(split.thinking.data(), split.thinking.data() + split.thinking.size());
        ImGui::PopTextWrapPos();
        ImGui::TreePop();
      }
      ImGui::PopStyleColor();
    }
    ImGui::PushTextWrapPos(0);
    if (split.answer.empty() && t.streaming && !split.open)
      ImGui::TextUnformatted("…");
    else
      ImGui::TextUnformatted(split.answer.data(), split.answer.data() + split.answer.size());
    ImGui::PopTextWrapPos();
  }
  if (t.role == Turn::Role::Model) {
    ImGui::PushFont(fonts_.small);
    if (t.n_tokens > 0) {
      ImGui::TextColored(colour::muted, "%.1f tok/s  ·  TTFT %.2f s  ·  %u tokens%s", t.tok_s, t.ttft_seconds,
                         t.n_tokens, t.stopped ? "  ·  stopped" : t.streaming ? "  ·  writing…" : "");
    } else if (t.streaming) {
      // One forward call reads the whole prompt: its length says how long.
      ImGui::TextColored(colour::muted, "reading the prompt: %u tokens…", s.prefill_total);
      const float phase = static_cast<float>(ImGui::GetTime() * 1.5 - static_cast<int>(ImGui::GetTime() * 1.5));
      ImGui::ProgressBar(-phase, {ImGui::GetFontSize() * 12, ImGui::GetFontSize() * 0.5f}, "");
    }
    ImGui::PopFont();
  }
  ImGui::Spacing();
  ImGui::PopID();
}

void App::draw_conversation(const SessionSnapshot& s, SessionWorker& worker) {
  const float strip_h = ImGui::GetContentRegionAvail().y * 0.26f;
  const float input_h = ImGui::GetFrameHeightWithSpacing() * 4.2f;
  ImGui::BeginChild("conversation", {0, ImGui::GetContentRegionAvail().y - strip_h - input_h}, true);
  ImGui::AlignTextToFramePadding();
  ImGui::TextColored(colour::muted, "CONVERSATION  ·  session %s  ·  %s", s.name.c_str(), s.spec.label().c_str());
  // The template picker at the right, or under the title when it does not fit.
  ImGui::SameLine();
  const float picker_x = ImGui::GetWindowContentRegionMax().x - ImGui::GetFontSize() * 13;
  if (ImGui::GetCursorPosX() > picker_x) ImGui::NewLine();
  ImGui::SetCursorPosX(std::max(picker_x, ImGui::GetStyle().WindowPadding.x));
  ImGui::TextColored(colour::muted, "template");
  ImGui::SameLine();
  draw_template_picker();
  ImGui::Separator();
  if (s.turns.empty()) {
    ImGui::TextColored(colour::muted, "Type a prompt below and press Enter. stories15M continues stories.");
    ImGui::TextColored(colour::muted, "System prompt (put first, pinned when the cache evicts):");
    ImGui::SetNextItemWidth(-1);
    ImGui::InputText("##system", system_buffer_, sizeof system_buffer_);
    help_marker("Opens the next conversation; an evicting policy never drops it");
  }
  {  // DeepSeek-R1's generation prompt opens <think> itself: its replies start inside.
    const std::optional<ChatTemplate> tmpl = chat_template();
    thinking_opened_by_prompt_ = tmpl && tmpl->family == ChatFamily::DeepSeekR1;
  }
  size_t text_size = 0;
  for (size_t i = 0; i < s.turns.size(); ++i) {
    text_size += s.turns[i].text.size();
    draw_turn(s, worker, i);
  }
  // Follow the reply while it grows, unless the person scrolled up.
  if (text_size != last_turn_text_size_ && ImGui::GetScrollY() >= ImGui::GetScrollMaxY() - 40)
    ImGui::SetScrollHereY(1.0f);
  last_turn_text_size_ = text_size;
  ImGui::EndChild();

  draw_prompt_box(s, worker);

  const SessionSnapshot& shown = scrubbed(s, timeline_);
  ImGui::BeginChild("strip", {0, 0}, true);
  ImGui::TextColored(colour::muted, "TOKEN STRIP  ·  %zu tokens in the context%s", s.pieces.size(),
                     timeline_.step >= 0 ? fmt::format("  ·  cache at step {}", timeline_.step).c_str() : "");
  help_marker("Each token of the context, shaded by how many layers still hold it;\n"
              "evicted tokens are dimmed and struck through, pinned ones underlined.\n"
              "Hover a token for its fate per layer; drag across tokens to pin them.");
  ImGui::Separator();
  SessionWorker* target = &worker;
  draw_token_strip(shown, fonts_, strip_drag_, regretted_positions(selected_), timeline_.step,
                   [&, target](kv::PinnedSpan span) {
                     kv::PinnedSpans pins = s.pins;
                     pins.add(span);
                     target->set_pins(pins);
                     status_ = fmt::format("pinning {}: the cache is refilled with the new pins", kv::to_string(span));
                   });
  ImGui::EndChild();
}

void App::draw_prompt_box(const SessionSnapshot& s, SessionWorker& worker) {
  const bool busy = compare_mode_ ? generating() : worker.busy();
  const float buttons_w = ImGui::GetFontSize() * 7.5f;
  const float box_h = ImGui::GetFrameHeightWithSpacing() * 2.2f;
  ImGui::SetNextItemWidth(ImGui::GetContentRegionAvail().x - buttons_w);
  const bool enter = ImGui::InputTextMultiline("##prompt", prompt_buffer_, sizeof prompt_buffer_, {0, box_h},
                                               ImGuiInputTextFlags_EnterReturnsTrue |
                                                   ImGuiInputTextFlags_CtrlEnterForNewLine);
  help_marker("Enter sends, Ctrl+Enter starts a new line, Esc stops");
  ImGui::SameLine();
  ImGui::BeginGroup();
  if (busy) {
    if (ImGui::Button("Stop", {buttons_w - 8, 0})) {
      forced_pending_.reset();
      if (compare_mode_)
        for (auto& w : sessions_) w->stop();
      else
        worker.stop();
    }
    help_marker("Ends the reply after the current token (Esc)");
  } else {
    if ((ImGui::Button("Generate", {buttons_w - 8, 0}) || enter) && prompt_buffer_[0]) {
      send_prompt(prompt_buffer_);
      prompt_buffer_[0] = 0;
    }
    help_marker("Appends the prompt to the conversation and writes a reply (Enter)");
  }
  ImGui::BeginDisabled(busy || s.turns.empty());
  if (ImGui::Button("Regenerate", {buttons_w - 8, 0})) {
    if (compare_mode_)
      for (auto& w : sessions_) w->regenerate(options_.tokens, options_.sampling);
    else
      worker.regenerate(options_.tokens, options_.sampling);
  }
  help_marker("Drops the last reply and writes it again (the cache is refilled from the prompt)");
  if (ImGui::Button("Clear", {buttons_w - 8, 0})) {
    if (compare_mode_)
      for (auto& w : sessions_) w->reset();
    else
      worker.reset();
    timeline_.step = -1;
  }
  help_marker("Empties the conversation and the cache");
  ImGui::EndDisabled();
  ImGui::EndGroup();
  draw_context_meter(s);
}

void App::draw_context_meter(const SessionSnapshot& s) {
  const double used = s.bytes_per_token * s.used_tokens;
  const std::string overlay =
      fmt::format("{} / {} tokens   ·   {} of {} ({})", s.used_tokens, s.capacity, format_bytes(used),
                  format_bytes(static_cast<double>(s.cache_bytes_full)), s.spec.name());
  ImGui::ProgressBar(s.capacity ? static_cast<float>(s.used_tokens) / s.capacity : 0, {-1, 0}, overlay.c_str());
  help_marker("Context used by this session, and its cache's bytes used of the whole cache's");
}

}  // namespace kvscope::gui
