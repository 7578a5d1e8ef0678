// [SECTION] engine and sessions
// [SECTION] layout
// [SECTION] toolbar, banner, open model
// [SECTION] sessions panel
// [SECTION] conversation
// [SECTION] inspector
#include "app/gui/app.h"

#include <fmt/format.h>
#include <imgui.h>

#include <algorithm>
#include <filesystem>

#include "app/core/paths.h"

namespace kvscope::gui {

namespace {

constexpr size_t kMaxSessions = 4;
const char* const kSessionNames[] = {"A", "B", "C", "D"};

std::string file_name(const std::string& path) { return std::filesystem::path(path).filename().string(); }

// Errors are one line in the banner; the first line of a message is its gist.
std::string one_line(std::string s) {
  std::replace(s.begin(), s.end(), '\n', ' ');
  return s;
}

void help_marker(const char* text) {
  if (ImGui::IsItemHovered()) ImGui::SetTooltip("%s", text);
}

}  // namespace

// ======================================================== engine and sessions

App::App(const GuiOptions& options, const Fonts& fonts, std::string render_device)
    : options_(options), fonts_(fonts), render_device_(std::move(render_device)) {
  if (!options.prompt.empty()) std::snprintf(prompt_buffer_, sizeof prompt_buffer_, "%s", options.prompt.c_str());
  compare_mode_ = options.compare_specs.size() > 1;
  start_loading(options.model_path.empty() ? default_model_path() : options.model_path);
}

App::~App() {
  sessions_.clear();
  if (loading_.valid()) loading_.wait();
}

void App::start_loading(const std::string& path) {
  sessions_.clear();
  engine_.reset();
  banner_.clear();
  loading_path_ = path;
  std::snprintf(model_buffer_, sizeof model_buffer_, "%s", path.c_str());
  load_started_ = std::chrono::steady_clock::now();
  EngineOptions engine_options;
  engine_options.model_path = path;
  engine_options.device_index = options_.device_index;
  engine_options.n_ctx = options_.n_ctx;
  loading_ = std::async(std::launch::async, [engine_options] { return std::make_unique<Engine>(engine_options); });
}

void App::poll_loading() {
  if (!loading_.valid() || loading_.wait_for(std::chrono::seconds(0)) != std::future_status::ready) return;
  try {
    engine_ = loading_.get();
    model_path_ = loading_path_;
  } catch (const std::exception& e) {
    // The message names the file already (models/ and gpu/ errors do).
    banner_ = fmt::format("{}  —  open another model with the model button at the top left", one_line(e.what()));
    prompt_sent_ = !options_.prompt.empty();  // a scripted run ends with the error shown
    return;
  }
  std::vector<std::string> specs = options_.compare_specs;
  if (specs.empty()) specs.push_back("f16");
  for (const std::string& text : specs) {
    if (sessions_.size() == kMaxSessions) break;
    try {
      add_session(parse_cache_spec(text));
    } catch (const std::exception& e) {
      banner_ = fmt::format("--compare: {}", one_line(e.what()));
    }
  }
  selected_ = 0;
  if (!options_.prompt.empty() && !prompt_sent_) {
    send_prompt(options_.prompt);
    prompt_sent_ = true;
  }
}

void App::add_session(const CacheSpec& spec) {
  if (!engine_ || sessions_.size() >= kMaxSessions) return;
  sessions_.push_back(std::make_unique<SessionWorker>(*engine_, turns_, kSessionNames[sessions_.size()], spec));
  selected_ = sessions_.size() - 1;
}

GenerateRequest App::request(const std::string& text) const {
  GenerateRequest r;
  r.text = text;
  r.max_new = options_.tokens;
  r.sampling = options_.sampling;
  return r;
}

// In side-by-side mode every session writes a reply to the same prompt.
void App::send_prompt(const std::string& text) {
  if (compare_mode_) {
    for (auto& s : sessions_) s->generate(request(text));
  } else if (selected_ < sessions_.size()) {
    sessions_[selected_]->generate(request(text));
  }
}

bool App::generating() const {
  return std::any_of(sessions_.begin(), sessions_.end(), [](const auto& s) { return s->busy(); });
}

bool App::script_done() const {
  if (loading_.valid()) return false;
  if (!options_.prompt.empty() && !prompt_sent_) return false;
  return !generating();
}

RunReport App::report() const {
  RunReport r;
  for (const auto& worker : sessions_) {
    auto s = worker->snapshot();
    for (const Turn& t : s->turns)
      if (t.role == Turn::Role::Model) r.generated_tokens += t.n_tokens;
    if (!s->error.empty()) r.errors.push_back(s->error);
    r.tok_s.push_back(s->last_tok_s);
  }
  if (!banner_.empty()) r.errors.push_back(banner_);
  r.heatmap_rect = heatmap_.last_rect;
  r.heatmap_cells = heatmap_.drew_cells;
  return r;
}

uint64_t App::engine_validation_messages() const {
  return engine_ ? engine_->context().validation_messages() : 0;
}

// ===================================================================== layout

void App::draw() {
  poll_loading();
  frame_snapshots_.clear();
  for (size_t i = 0; i < sessions_.size(); ++i) {
    frame_snapshots_.push_back(sessions_[i]->snapshot());
    sessions_[i]->set_probes_wanted(options_.probes && i == selected_);  // the inspector shows the selected session
  }
  for (const auto& s : frame_snapshots_)
    if (s->state == SessionSnapshot::State::Error && !s->error.empty() && banner_.empty())
      banner_ = fmt::format("Session {}: {}", s->name, one_line(s->error));

  // Keyboard: Esc stops every reply, Ctrl+N adds a session.
  const ImGuiIO& io = ImGui::GetIO();
  if (ImGui::IsKeyPressed(ImGui::GetKeyIndex(ImGuiKey_Escape)))
    for (auto& s : sessions_) s->stop();
  if (io.KeyCtrl && ImGui::IsKeyPressed('N') && sessions_.size() < kMaxSessions && engine_)
    add_session(parse_cache_spec(std::string(kv::format_name(kv::all_formats()[new_session_format_]))));

  const ImGuiViewport* viewport = ImGui::GetMainViewport();
  ImGui::SetNextWindowPos(viewport->WorkPos);
  ImGui::SetNextWindowSize(viewport->WorkSize);
  ImGui::Begin("kvscope", nullptr,
               ImGuiWindowFlags_NoDecoration | ImGuiWindowFlags_NoMove | ImGuiWindowFlags_NoSavedSettings |
                   ImGuiWindowFlags_NoBringToFrontOnFocus |
                   // The render pass clears to the same colour: on a CPU device
                   // every full-window layer costs frame rate.
                   ImGuiWindowFlags_NoBackground);
  draw_toolbar();
  draw_banner();
  draw_open_model_popup();

  const float scale = ImGui::GetFontSize() / 16.0f;
  const float left_w = 250 * scale;
  const float avail_w = ImGui::GetContentRegionAvail().x;
  const float right_w = std::max(360 * scale, avail_w * 0.36f);
  const float gap = ImGui::GetStyle().ItemSpacing.x;
  const float height = ImGui::GetContentRegionAvail().y;
  const SessionSnapshot* selected =
      selected_ < frame_snapshots_.size() ? frame_snapshots_[selected_].get() : nullptr;

  ImGui::BeginChild("left", {left_w, height}, true);
  draw_sessions_panel();
  ImGui::EndChild();
  ImGui::SameLine();
  const float center_w = avail_w - left_w - right_w - 2 * gap;
  ImGui::BeginChild("center", {center_w, height}, false);
  if (!selected) {
    ImGui::BeginChild("empty", {0, 0}, true);
    const bool loading = loading_.valid();
    const std::string note = loading ? fmt::format("Loading {} …", file_name(loading_path_))
                                     : std::string("No model loaded: click the model button at the top left "
                                                   "to open a GGUF file.");
    ImGui::TextColored(colour::muted, "%s", note.c_str());
    ImGui::EndChild();
  } else if (compare_mode_ && sessions_.size() > 1) {
    draw_compare();
  } else {
    draw_conversation(*selected, *sessions_[selected_]);
  }
  ImGui::EndChild();
  ImGui::SameLine();
  ImGui::BeginChild("right", {right_w, height}, true);
  if (selected)
    draw_inspector(*selected);
  else
    ImGui::TextColored(colour::muted, "The cache inspector shows the selected session.");
  ImGui::EndChild();
  ImGui::End();
}

// ================================================= toolbar, banner, open model

void App::draw_toolbar() {
  ImGui::AlignTextToFramePadding();
  ImGui::TextColored(colour::pinned, "kvscope");
  ImGui::SameLine();
  const std::string model = engine_ ? file_name(model_path_)
                            : loading_.valid() ? fmt::format("loading {}…", file_name(loading_path_))
                                               : std::string("no model");
  if (ImGui::Button(fmt::format("{} ▾", model).c_str())) ImGui::OpenPopup("Open model");
  help_marker("The model: click to open another GGUF file");
  if (engine_ && ImGui::IsItemHovered()) {
    const LlamaConfig& c = engine_->config();
    ImGui::SetTooltip("%s\n%u layers · %u heads (%u kv) · head_dim %u · context %u\nweights %s on the device",
                      model_path_.c_str(), c.n_layer, c.n_head, c.n_kv_head, c.head_dim, engine_->n_ctx(),
                      format_bytes(static_cast<double>(engine_->model().weight_bytes())).c_str());
  }
  ImGui::SameLine();
  ImGui::TextColored(colour::muted, "on");
  ImGui::SameLine();
  ImGui::Text("%s", engine_ ? engine_->device_name().c_str() : render_device_.c_str());
  ImGui::SameLine();
  ImGui::BeginDisabled(!engine_ || sessions_.size() >= kMaxSessions);
  if (ImGui::Button("New session")) {
    add_session(parse_cache_spec(std::string(kv::format_name(kv::all_formats()[new_session_format_]))));
  }
  help_marker("Another session on the same weights, with its own KV cache (Ctrl+N)");
  ImGui::EndDisabled();
  ImGui::SameLine();
  ImGui::BeginDisabled(sessions_.size() < 2);
  ImGui::Checkbox("Side by side", &compare_mode_);
  help_marker("Every session answers the same prompt; replies in columns, first difference marked");
  ImGui::EndDisabled();

  // Right-aligned figures: speed of the selected session, memory, UI rate.
  double tok_s = 0;
  uint64_t cache_bytes = 0;
  for (size_t i = 0; i < frame_snapshots_.size(); ++i) {
    cache_bytes += frame_snapshots_[i]->cache_bytes_full;
    if (i == selected_) tok_s = frame_snapshots_[i]->last_tok_s;
  }
  const uint64_t weights = engine_ ? engine_->model().weight_bytes() : 0;
  const std::string figures =
      fmt::format("{:.1f} tok/s   ·   weights {} + caches {}   ·   UI {:.0f} fps", tok_s,
                  format_bytes(static_cast<double>(weights)), format_bytes(static_cast<double>(cache_bytes)),
                  fps_now_);
  ImGui::SameLine(ImGui::GetWindowContentRegionMax().x - ImGui::CalcTextSize(figures.c_str()).x);
  ImGui::TextColored(colour::muted, "%s", figures.c_str());
  if (fonts_.note.size()) {
    ImGui::TextColored(colour::recalled, "%s", fonts_.note.c_str());
  }
}

void App::draw_banner() {
  if (banner_.empty()) return;
  ImGui::PushStyleColor(ImGuiCol_ChildBg, colour::error_bg);
  const float h = ImGui::GetFrameHeightWithSpacing() + 6;
  ImGui::BeginChild("banner", {0, h}, false);
  ImGui::SetCursorPos({10, 5});
  ImGui::AlignTextToFramePadding();
  ImGui::TextUnformatted(banner_.c_str());
  ImGui::SameLine(ImGui::GetWindowContentRegionMax().x - 80);
  if (ImGui::Button("Dismiss")) banner_.clear();
  ImGui::EndChild();
  ImGui::PopStyleColor();
}

void App::draw_open_model_popup() {
  if (!ImGui::BeginPopup("Open model")) return;
  ImGui::TextColored(colour::muted, "A GGUF model file (Llama family):");
  ImGui::SetNextItemWidth(ImGui::GetFontSize() * 30);
  const bool enter = ImGui::InputText("##path", model_buffer_, sizeof model_buffer_,
                                      ImGuiInputTextFlags_EnterReturnsTrue);
  if (ImGui::Selectable(fmt::format("default: {}", default_model_path()).c_str()))
    std::snprintf(model_buffer_, sizeof model_buffer_, "%s", default_model_path().c_str());
  if (ImGui::Button("Open") || enter) {
    start_loading(model_buffer_);
    ImGui::CloseCurrentPopup();
  }
  ImGui::SameLine();
  if (ImGui::Button("Cancel")) ImGui::CloseCurrentPopup();
  ImGui::EndPopup();
}

// ============================================================= sessions panel

void App::draw_sessions_panel() {
  ImGui::TextColored(colour::muted, "SESSIONS");
  for (size_t i = 0; i < frame_snapshots_.size(); ++i) {
    const SessionSnapshot& s = *frame_snapshots_[i];
    const char* state = s.state == SessionSnapshot::State::Starting     ? "starting"
                        : s.state == SessionSnapshot::State::Prefill    ? "reading prompt"
                        : s.state == SessionSnapshot::State::Generating ? "writing"
                        : s.state == SessionSnapshot::State::Error      ? "error"
                                                                        : "idle";
    const std::string label = fmt::format("{}   {}##session{}", s.name, s.spec.name(), i);
    if (ImGui::Selectable(label.c_str(), i == selected_, 0, {0, ImGui::GetTextLineHeight() * 2.2f})) selected_ = i;
    help_marker("Select to inspect its cache");
    ImGui::SameLine(ImGui::GetContentRegionAvail().x * 0.45f);
    ImGui::BeginGroup();
    ImGui::TextColored(s.state == SessionSnapshot::State::Error ? colour::diverged : colour::muted, "%s", state);
    ImGui::PushFont(fonts_.small);
    ImGui::TextColored(colour::muted, "%u / %u tok", s.used_tokens, s.capacity);
    ImGui::PopFont();
    ImGui::EndGroup();
  }
  ImGui::Spacing();
  const auto formats = kv::all_formats();
  ImGui::SetNextItemWidth(ImGui::GetContentRegionAvail().x * 0.45f);
  const std::string current(kv::format_name(formats[new_session_format_]));
  if (ImGui::BeginCombo("##format", current.c_str())) {
    for (size_t i = 0; i < formats.size(); ++i)
      if (ImGui::Selectable(std::string(kv::format_name(formats[i])).c_str(), static_cast<int>(i) == new_session_format_))
        new_session_format_ = static_cast<int>(i);
    ImGui::EndCombo();
  }
  help_marker("Storage format of the new session's keys and values:\n"
              "f32 reference, f16, q8 (int8 groups of 32), q4 (int4), kivi2 (2-bit)");
  ImGui::SameLine();
  ImGui::BeginDisabled(!engine_ || sessions_.size() >= kMaxSessions);
  if (ImGui::Button("+ Add")) add_session(parse_cache_spec(current));
  help_marker("A new session with this cache format, on the same weights (up to 4)");
  ImGui::EndDisabled();
  if (sessions_.size() > 1) {
    if (ImGui::Button(fmt::format("Remove {}", selected_ < frame_snapshots_.size() ? frame_snapshots_[selected_]->name : "").c_str())) {
      sessions_.erase(sessions_.begin() + static_cast<std::ptrdiff_t>(selected_));
      frame_snapshots_.erase(frame_snapshots_.begin() + static_cast<std::ptrdiff_t>(selected_));
      selected_ = std::min(selected_, sessions_.size() - 1);
    }
    help_marker("Stops the session and frees its cache");
  }

  ImGui::Separator();
  ImGui::TextColored(colour::muted, "SAMPLING");
  const float w = ImGui::GetContentRegionAvail().x * 0.6f;
  SamplerConfig& sc = options_.sampling;
  ImGui::SetNextItemWidth(w);
  ImGui::SliderFloat("temperature", &sc.temperature, 0.0f, 2.0f, "%.2f");
  help_marker("0 is greedy: always the most likely token");
  ImGui::SetNextItemWidth(w);
  ImGui::SliderInt("top-k", &sc.top_k, 0, 200);
  help_marker("Sample among the k most likely tokens (0: all)");
  ImGui::SetNextItemWidth(w);
  ImGui::SliderFloat("top-p", &sc.top_p, 0.05f, 1.0f, "%.2f");
  help_marker("Sample among the most likely tokens whose probabilities sum to p");
  int seed = static_cast<int>(sc.seed);
  ImGui::SetNextItemWidth(w);
  if (ImGui::InputInt("seed", &seed)) sc.seed = static_cast<uint64_t>(std::max(0, seed));
  help_marker("Same seed, same cache, same prompt: same reply");
  int tokens = static_cast<int>(options_.tokens);
  ImGui::SetNextItemWidth(w);
  if (ImGui::SliderInt("max tokens", &tokens, 1, 512)) options_.tokens = static_cast<uint32_t>(tokens);
  help_marker("Most new tokens per reply");
}

// =============================================================== conversation

void App::draw_conversation(const SessionSnapshot& s, SessionWorker& worker) {
  const float strip_h = ImGui::GetContentRegionAvail().y * 0.26f;
  const float input_h = ImGui::GetFrameHeightWithSpacing() * 4.2f;
  ImGui::BeginChild("conversation", {0, ImGui::GetContentRegionAvail().y - strip_h - input_h}, true);
  ImGui::TextColored(colour::muted, "CONVERSATION  ·  session %s  ·  %s cache", s.name.c_str(), s.spec.name().c_str());
  ImGui::Separator();
  if (s.turns.empty())
    ImGui::TextColored(colour::muted, "Type a prompt below and press Enter. stories15M continues stories.");
  size_t text_size = 0;
  for (const Turn& t : s.turns) {
    text_size += t.text.size();
    const bool user = t.role == Turn::Role::User;
    ImGui::TextColored(user ? colour::user : colour::model, user ? "You" : "Model");
    ImGui::PushTextWrapPos(0);
    ImGui::TextUnformatted(t.text.empty() && t.streaming ? "…" : t.text.c_str());
    ImGui::PopTextWrapPos();
    if (!user) {
      ImGui::PushFont(fonts_.small);
      if (t.n_tokens > 0)
        ImGui::TextColored(colour::muted, "%.1f tok/s  ·  TTFT %.2f s  ·  %u tokens%s", t.tok_s, t.ttft_seconds,
                           t.n_tokens, t.stopped ? "  ·  stopped" : t.streaming ? "  ·  writing…" : "");
      else if (t.streaming)
        ImGui::TextColored(colour::muted, "reading the prompt…");
      ImGui::PopFont();
    }
    ImGui::Spacing();
  }
  // Follow the reply while it grows, unless the person scrolled up.
  if (text_size != last_turn_text_size_ && ImGui::GetScrollY() >= ImGui::GetScrollMaxY() - 40)
    ImGui::SetScrollHereY(1.0f);
  last_turn_text_size_ = text_size;
  ImGui::EndChild();

  draw_prompt_box(s, worker);

  ImGui::BeginChild("strip", {0, 0}, true);
  ImGui::TextColored(colour::muted, "TOKEN STRIP  ·  %zu tokens in the context", s.pieces.size());
  help_marker("Each token of the context, shaded by how many layers still hold it;\n"
              "evicted tokens are dimmed and struck through. Hover a token for details.");
  ImGui::Separator();
  draw_token_strip(s, fonts_);
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

// ================================================================== inspector

void App::draw_inspector(const SessionSnapshot& s) {
  ImGui::TextColored(colour::muted, "CACHE INSPECTOR  ·  session %s", s.name.c_str());
  ImGui::Separator();
  ImGui::Text("Layer occupancy");
  help_marker("Live slots per layer (over its kv heads) of the cache's capacity");
  draw_occupancy(s);
  ImGui::Spacing();
  ImGui::Separator();
  ImGui::Text("Attention");
  help_marker("Rows: recent decode steps (newest at the bottom). Columns: token positions.\n"
              "Colour: probability on a power scale; hatched: evicted. Hover for details.");
  draw_heatmap(s, heatmap_, fonts_);
}

}  // namespace kvscope::gui
