// [SECTION] engine and sessions
// [SECTION] layout
// [SECTION] toolbar, banner, open model
// [SECTION] sessions panel
// [SECTION] inspector
#include "app/gui/app.h"

#include <fmt/format.h>
#include <imgui.h>

#include <algorithm>
#include <filesystem>
#include <utility>

#include "app/core/memory.h"
#include "kv/event_log.h"
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

App::App(const GuiOptions& options, const Settings& settings, const Fonts& fonts, std::string render_device)
    : options_(options), fonts_(fonts), render_device_(std::move(render_device)), settings_(settings) {
  if (!options.prompt.empty()) std::snprintf(prompt_buffer_, sizeof prompt_buffer_, "%s", options.prompt.c_str());
  std::snprintf(system_buffer_, sizeof system_buffer_, "%s", options.system.c_str());
  std::snprintf(forced_text_buffer_, sizeof forced_text_buffer_, "%s", options.forced_text.c_str());
  compare_mode_ = options.compare_specs.size() > 1;
  forced_mode_ = options.forced || !options.forced_text.empty();
  forced_on_text_ = !options.forced_text.empty();
  pending_drops_ = options.drops;
  lab_.set_fields(options.lab);
  lab_open_ = options.lab_run;
  if (options.log_events > 0) kv::EventLog::set_default_max_events(options.log_events);
  start_loading(options.model_path.empty() ? default_model_path() : options.model_path);
}

App::~App() {
  probes_.cancel();
  lab_.cancel();
  probes_.wait();
  lab_.wait();
  sessions_.clear();
  if (loading_.valid()) loading_.wait();
}

// The engine in use keeps running while another model loads: a file that
// fails to open leaves the window as it was, with the error in the banner.
void App::start_loading(const std::string& path) {
  if (loading_.valid()) {
    banner_ = fmt::format("{} is still loading; open another model once it is done", file_name(loading_path_));
    return;
  }
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
  if (probes_.running() || lab_.running()) return;  // they use the engine; it is replaced once they end
  std::unique_ptr<Engine> loaded;
  try {
    loaded = loading_.get();
  } catch (const std::exception& e) {
    // The message names the file already (models/ and gpu/ errors do).
    banner_ = fmt::format("{}  —  {}", one_line(e.what()),
                          engine_ ? "the model already open stays in use" : "open another model with the model button at the top left");
    prompt_sent_ = !options_.prompt.empty();  // a scripted run ends with the error shown
    return;
  }
  // The sessions of the old model come back on the new one, with the same
  // caches — and, when it is the same model again (another device, another
  // context, a reload after a lost device), with their conversations.
  std::vector<std::string> specs;
  std::vector<Conversation> carried;
  for (const auto& s : frame_snapshots_) {
    specs.push_back(s->spec.label());
    if (engine_ && loading_path_ == model_path_) carried.push_back(conversation_of(*s));
  }
  if (specs.empty() && !engine_) specs = options_.compare_specs;
  if (specs.empty()) specs.push_back("f16");
  frame_snapshots_.clear();
  sessions_.clear();
  comparisons_.clear();
  forced_pending_.reset();
  timeline_ = {};
  timeline_.step = std::exchange(options_.scrub, -1);  // --scrub applies to the first model only
  engine_ = std::move(loaded);
  model_path_ = loading_path_;
  settings_.add_recent_model(model_path_);
  std::string refused;  // one bad spec must not leave the model without a session
  for (const std::string& text : specs) {
    if (sessions_.size() == kMaxSessions) break;
    if (!add_session_from_text(text)) refused = banner_;
  }
  if (sessions_.empty()) add_session(CacheSpec{});
  if (!refused.empty()) banner_ = refused;
  context_field_ = static_cast<int>(engine_->n_ctx());
  std::optional<ChatTemplate> tmpl;
  try {
    tmpl = chat_template();
  } catch (const std::exception&) {
    // an unknown name was reported when it was chosen: plain text
  }
  for (size_t i = 0; i < carried.size() && i < sessions_.size(); ++i)
    if (!carried[i].turns.empty()) sessions_[i]->load(carried[i], tmpl);
  selected_ = std::min<size_t>(std::max(0, options_.select), sessions_.empty() ? 0 : sessions_.size() - 1);
  heatmap_.held_only = options_.held_columns;
  heatmap_.held_auto = !options_.held_columns;
  heatmap_.head = options_.heatmap_head;
  timeline_.map_layer = options_.map_layer;
  timeline_.map_head = options_.map_head;
  if (!options_.load_conversation.empty()) {
    load_conversation(options_.load_conversation);
    options_.load_conversation.clear();
  }
  if (!options_.load_every.empty()) {  // every session reads the same conversation (measurements at a context size)
    const size_t keep = selected_;
    for (selected_ = 0; selected_ < sessions_.size(); ++selected_) load_conversation(options_.load_every);
    selected_ = keep;
    options_.load_every.clear();
  }
  if (!options_.prompt.empty() && !prompt_sent_) {
    send_prompt(options_.prompt);
    prompt_sent_ = true;
  }
  if (!options_.run_probes.empty()) {
    probes_.start(*engine_, turns_, assets_dir() + "/scenarios", options_.run_probes, options_.probe_limit);
    probes_open_ = true;
    options_.run_probes.clear();
  }
  if (options_.lab_run) {
    lab_used_ = true;
    lab_.start(*engine_, turns_, model_path_);
    options_.lab_run = false;
  }
}

void App::open_lab_point(const LabPanel::OpenRequest& request) {
  if (!engine_) return;
  frame_snapshots_.clear();
  sessions_.clear();
  comparisons_.clear();
  forced_pending_.reset();
  timeline_ = {};
  if (!add_session(request.baseline) || !add_session(request.cache)) return;  // the reason is in the banner
  selected_ = 1;
  compare_mode_ = true;
  forced_mode_ = true;
  forced_on_text_ = true;
  std::snprintf(forced_text_buffer_, sizeof forced_text_buffer_, "%s", request.forced.c_str());
  std::snprintf(prompt_buffer_, sizeof prompt_buffer_, "%s", request.prompt.c_str());
  send_prompt(request.prompt);
}

// Every session's cache goes through plan_cache (app/core/cache_spec.h), the
// validator `kvscope run` uses: a spec it refuses is refused here with the
// same words, in the banner, and adds no session; the others are unaffected.
bool App::add_session(const CacheSpec& spec) {
  if (!engine_ || sessions_.size() >= kMaxSessions) return false;
  try {
    plan_cache(spec, engine_->model().cache_shape(), engine_->n_ctx());
  } catch (const std::exception& e) {
    banner_ = fmt::format("cache \"{}\": {}", spec.label(), one_line(e.what()));
    return false;
  }
  sessions_.push_back(std::make_unique<SessionWorker>(*engine_, turns_, kSessionNames[sessions_.size()], spec));
  selected_ = sessions_.size() - 1;
  return true;
}

bool App::add_session_from_text(const std::string& text) {
  try {
    return add_session(parse_cache_spec(text));
  } catch (const std::exception& e) {
    banner_ = fmt::format("cache \"{}\": {}", text, one_line(e.what()));
    return false;
  }
}

CacheSpec App::new_session_spec() const {
  CacheSpec spec;
  spec.k_format = spec.v_format = kv::all_formats()[new_session_format_];
  if (!new_session_hadamard_ && is_quantized(spec.k_format)) spec.hadamard = false;
  const auto policies = kv::policy_names();
  if (new_session_policy_ > 0 && static_cast<size_t>(new_session_policy_) <= policies.size()) {
    const std::string_view name = policies[new_session_policy_ - 1];
    spec.policy = kv::parse_policy_spec(kv::policy_at_budget(name, new_session_budget_).value_or(std::string(name))).text();
  }
  return spec;
}

GenerateRequest App::request(const std::string& text) const {
  GenerateRequest r;
  r.text = text;
  r.max_new = options_.tokens;
  r.sampling = options_.sampling;
  r.system = system_buffer_;
  try {
    r.chat_template = chat_template();
  } catch (const std::exception&) {
    // An unknown name was reported when it was chosen; the text goes as is.
  }
  return r;
}

std::optional<ChatTemplate> App::chat_template() const {
  const std::string& choice = options_.chat_template;
  if (!engine_ || choice == "none") return std::nullopt;
  if (choice == "auto" || choice.empty()) {
    if (engine_->file().get_string_or("tokenizer.chat_template", "").empty()) return std::nullopt;
    return chat_template_for(engine_->file());
  }
  return chat_template_by_name(choice);
}

void App::draw_template_picker() {
  std::string current = options_.chat_template;
  std::optional<ChatTemplate> tmpl;
  std::string shown;
  try {
    tmpl = chat_template();
    shown = tmpl ? std::string(chat_family_name(tmpl->family)) : std::string("none");
  } catch (const std::exception& e) {
    shown = "unknown";
  }
  if (current == "auto") shown = "auto: " + shown;
  ImGui::SetNextItemWidth(ImGui::CalcTextSize(shown.c_str()).x + ImGui::GetFontSize() * 2.5f);
  if (ImGui::BeginCombo("##template", shown.c_str())) {
    if (ImGui::Selectable("auto (the model's tokenizer.chat_template)", current == "auto")) options_.chat_template = "auto";
    if (ImGui::Selectable("none: the text as typed (completion models)", current == "none")) options_.chat_template = "none";
    for (std::string_view name : chat_template_names())
      if (ImGui::Selectable(std::string(name).c_str(), current == name)) options_.chat_template = std::string(name);
    ImGui::EndCombo();
  }
  if (ImGui::IsItemHovered() && engine_) {
    ImGui::BeginTooltip();
    ImGui::TextColored(colour::muted, "Chat template: how a conversation becomes the model's tokens. A new message:");
    if (tmpl) {
      std::vector<ChatMessage> sample;
      if (system_buffer_[0]) sample.push_back({"system", system_buffer_});
      sample.push_back({"user", "Hello"});
      ImGui::PushFont(fonts_.tokens);
      ImGui::TextUnformatted(format_chat(*tmpl, sample, true, ChatTokens::from(engine_->tokenizer())).c_str());
      ImGui::PopFont();
      if (tmpl->fallback) ImGui::TextColored(colour::recalled, "%s", tmpl->warning.c_str());
    } else {
      ImGui::Text("none: the text is appended as typed (stories15M is a completion model)");
    }
    ImGui::EndTooltip();
  }
}

// In side-by-side mode every session answers the same prompt: each its own
// reply (free), or all reading the same tokens (forced: A's reply once it is
// written, or the text given).
void App::send_prompt(const std::string& text) {
  comparisons_.assign(sessions_.size(), {});
  if (compare_mode_ && forced_mode_ && !sessions_.empty()) {
    GenerateRequest r = request(text);
    r.record = true;
    if (forced_on_text_ && engine_) {
      r.forced = engine_->tokenizer().encode(forced_text_buffer_, false);
      for (auto& s : sessions_) s->generate(r);
    } else {
      sessions_[0]->generate(r);
      forced_pending_ = r;
    }
  } else if (compare_mode_) {
    for (auto& s : sessions_) s->generate(request(text));
  } else if (selected_ < sessions_.size()) {
    sessions_[selected_]->generate(request(text));
  }
}

void App::dispatch_forced() {
  if (!forced_pending_ || sessions_.empty() || sessions_[0]->busy()) return;
  const auto a = sessions_[0]->snapshot();
  GenerateRequest r = *forced_pending_;
  forced_pending_.reset();
  if (a->turns.empty() || a->turns.back().role != Turn::Role::Model) return;  // A failed: its error shows
  const Turn& reply = a->turns.back();
  r.forced = std::vector<int32_t>(a->tokens.begin() + reply.first_token,
                                  a->tokens.begin() + reply.first_token + reply.n_tokens);
  for (size_t i = 1; i < sessions_.size(); ++i) sessions_[i]->generate(r);
}

void App::update_comparisons() {
  if (!compare_mode_ || !forced_mode_ || frame_snapshots_.size() < 2) return;
  comparisons_.resize(frame_snapshots_.size());
  for (size_t i = 1; i < frame_snapshots_.size(); ++i) comparisons_[i].update(*frame_snapshots_[0], *frame_snapshots_[i]);
}

std::vector<int32_t> App::regretted_positions(size_t session) const {
  std::vector<int32_t> out;
  if (!compare_mode_ || !forced_mode_ || session == 0 || session >= comparisons_.size()) return out;
  for (const RegrettedEviction& r : comparisons_[session].result().lost.regretted)
    if (r.lost_mass > 0) out.push_back(r.position);
  return out;
}

bool App::generating() const {
  return std::any_of(sessions_.begin(), sessions_.end(), [](const auto& s) { return s->busy(); });
}

bool App::script_done() const {
  if (loading_.valid()) return false;
  if (options_.soak_minutes > 0 && engine_ &&
      (!soak_started_ || std::chrono::steady_clock::now() - *soak_started_ <
                             std::chrono::duration<double>(options_.soak_minutes * 60)))
    return false;
  if (!options_.prompt.empty() && !prompt_sent_) return false;
  if (forced_pending_ || !pending_drops_.empty() || !options_.load_conversation.empty()) return false;
  if (!options_.run_probes.empty() || probes_.running()) return false;
  if (options_.lab_run || lab_.running()) return false;
  if (options_.lab_open >= 0) return false;  // opened (and generating) once the sweep is done
  return !generating();
}

void App::drive_soak() {
  if (options_.soak_minutes <= 0 || !engine_ || !prompt_sent_) return;
  const auto now = std::chrono::steady_clock::now();
  if (!soak_started_) soak_started_ = now;
  const double seconds = std::chrono::duration<double>(now - *soak_started_).count();
  // About 120 samples over the run, at least one every 10 s.
  const double every = std::clamp(options_.soak_minutes * 60 / 120, 0.5, 10.0);
  if (soak_samples_.empty() || seconds - soak_samples_.back().seconds >= every) {
    uint64_t tokens = 0;
    for (const auto& s : frame_snapshots_) tokens += s->tokens.size();
    soak_samples_.push_back(
        {seconds, resident_bytes(), heap_in_use_bytes(), engine_->context().bytes_allocated(), tokens, fps_now_});
  }
  if (seconds >= options_.soak_minutes * 60) return;
  for (auto& worker : sessions_) {
    if (worker->busy()) continue;
    const auto s = worker->snapshot();
    if (s->state == SessionSnapshot::State::Idle && !s->turns.empty()) worker->generate(request(" Then"));
  }
}

RunReport App::report() const {
  RunReport r;
  if (!soak_samples_.empty()) {
    std::vector<double> minutes, rss, heap, device;
    nlohmann::json samples = nlohmann::json::array();
    for (const SoakSample& s : soak_samples_) {
      samples.push_back({{"seconds", s.seconds}, {"rss", s.rss}, {"heap", s.heap}, {"device", s.device},
                         {"tokens", s.tokens}, {"fps", s.fps}});
      // The slope after the first fifth (warm-up: pipelines, caches filling).
      if (s.seconds < 0.2 * soak_samples_.back().seconds) continue;
      minutes.push_back(s.seconds / 60);
      rss.push_back(static_cast<double>(s.rss));
      heap.push_back(static_cast<double>(s.heap));
      device.push_back(static_cast<double>(s.device));
    }
    r.soak = {{"minutes", options_.soak_minutes},
              {"samples", samples},
              {"rss_slope_bytes_per_minute", least_squares_slope(minutes, rss)},
              {"heap_slope_bytes_per_minute", least_squares_slope(minutes, heap)},
              {"device_slope_bytes_per_minute", least_squares_slope(minutes, device)}};
  }
  r.sessions = nlohmann::json::array();
  for (const auto& worker : sessions_) {
    auto s = worker->snapshot();
    uint32_t turns = 0;
    for (const Turn& t : s->turns) {
      if (t.role == Turn::Role::Model) r.generated_tokens += t.n_tokens;
      ++turns;
    }
    if (!s->error.empty()) r.errors.push_back(s->error);
    r.tok_s.push_back(s->last_tok_s);
    std::vector<std::string> pins;
    for (const kv::PinnedSpan& span : s->pins.spans()) pins.push_back(kv::to_string(span));
    std::vector<std::string> texts;
    for (const Turn& t : s->turns) texts.push_back(t.text);
    r.sessions.push_back({{"name", s->name},
                          {"cache", s->spec.label()},
                          {"tokens", s->tokens},
                          {"turns", texts},
                          {"evictions", s->log ? s->log->eviction_count() : 0},
                          {"device_lost", s->device_lost},
                          {"capacity", s->capacity},
                          {"pins", pins},
                          {"cache_bytes", s->cache_bytes_full},
                          {"tok_s", s->last_tok_s},
                          {"decode_ms_probe_on", s->probe_on_steps ? 1000 * s->probe_on_seconds / s->probe_on_steps : 0},
                          {"decode_ms_probe_off", s->probe_off_steps ? 1000 * s->probe_off_seconds / s->probe_off_steps : 0},
                          {"steps_probe_on", s->probe_on_steps},
                          {"steps_probe_off", s->probe_off_steps}});
  }
  if (!banner_.empty()) r.errors.push_back(banner_);
  r.heatmap_rect = heatmap_.last_rect;
  {
    const EvictionMap& m = timeline_.map;
    const ImVec4 mr = timeline_.map_rect;
    r.views = {{"map", {{"rect", {mr.x, mr.y, mr.z, mr.w}},
                        {"layer", m.layer},
                        {"head", m.head},
                        {"positions", m.spans.size()},
                        {"steps", m.last_step + 1},
                        {"rows", m.rows},
                        {"cols", m.cols},
                        {"runs", m.runs.size()},
                        {"first_step", m.first_step}}},
               {"occupancy", {{"rect", {occupancy_drawn_.rect.x, occupancy_drawn_.rect.y, occupancy_drawn_.rect.z,
                                         occupancy_drawn_.rect.w}},
                              {"layers", occupancy_drawn_.layers},
                              {"heads", occupancy_drawn_.heads},
                              {"own_budget_layers", occupancy_drawn_.own_budget_layers},
                              {"local_layers", occupancy_drawn_.local_layers}}},
               {"heatmap", {{"held_only", heatmap_.held_only},
                            {"columns", heatmap_.cache.held_only ? heatmap_.cache.columns.size() : heatmap_.cache.n_pos},
                            {"cells", heatmap_.cache.n_cells},
                            {"runs", heatmap_.cache.runs.size()}}}};
  }
  r.heatmap_cells = heatmap_.drew_cells;
  for (size_t i = 1; i < comparisons_.size(); ++i) r.forced.push_back(comparisons_[i].result());
  r.exports = exported_;
  if (selected_ < sessions_.size()) {
    TimelineView view;
    view.step = timeline_.step;
    const auto live = sessions_[selected_]->snapshot();
    const SessionSnapshot& at = scrubbed(*live, view);
    std::vector<uint32_t> live_per_layer;
    for (const LayerOccupancy& o : at.layers) live_per_layer.push_back(o.live_max);
    r.scrubbed = {{"session", at.name},
                  {"step", view.step},
                  {"last_step", live->log ? last_step(*live->log) : -1},
                  {"positions", at.written_positions},
                  {"live_per_layer", live_per_layer},
                  {"layers_holding", at.layers_holding}};
  }
  r.probes = nlohmann::json::array();
  for (const ProbeResult& p : probes_.results()) {
    nlohmann::json runs = nlohmann::json::array();
    for (const ProbeRun& run : p.policies)
      runs.push_back({{"cache", run.cache}, {"verdict", verdict_name(run.verdict)}, {"logprob", run.logprob}});
    r.probes.push_back({{"scenario", p.scenario.name},
                        {"distance", p.measured_distance},
                        {"full_logprob", p.full.logprob},
                        {"runs", runs}});
  }
  if (!probes_.error().empty()) r.errors.push_back(probes_.error());
  if (lab_used_) r.lab = lab_.report();
  if (!lab_.error().empty()) r.errors.push_back(lab_.error());
  std::vector<std::string> specs;
  for (const auto& w : sessions_) specs.push_back(w->snapshot()->spec.label());
  r.effective = {{"temperature", options_.sampling.temperature},
                 {"top_k", options_.sampling.top_k},
                 {"top_p", options_.sampling.top_p},
                 {"seed", options_.sampling.seed},
                 {"tokens", options_.tokens},
                 {"system", std::string(system_buffer_)},
                 {"caches", specs},
                 {"model", model_path_}};
  return r;
}

Settings App::settings() const {
  Settings s = settings_;
  s.sampling = options_.sampling;
  s.tokens = options_.tokens;
  s.system_prompt = system_buffer_;
  s.device_index = options_.device_index;
  s.lab = lab_.fields();
  if (!sessions_.empty()) {
    s.cache_specs.clear();
    for (const auto& w : sessions_) s.cache_specs.push_back(w->snapshot()->spec.label());
  }
  return s;
}

uint64_t App::engine_validation_messages() const {
  return engine_ ? engine_->context().validation_messages() : 0;
}

// ===================================================================== layout

void App::draw() {
  poll_loading();
  if (engine_ && !loading_.valid() && !pending_drops_.empty() && !generating()) {
    on_drop(pending_drops_);
    pending_drops_.clear();
  }
  dispatch_forced();
  drive_soak();
  frame_snapshots_.clear();
  const bool forced = compare_mode_ && forced_mode_;
  for (size_t i = 0; i < sessions_.size(); ++i) {
    frame_snapshots_.push_back(sessions_[i]->snapshot());
    // The inspector shows the selected session; forced mode also needs A's
    // attention for the lost attention of the others.
    sessions_[i]->set_probes_wanted(options_.probes && (i == selected_ || (forced && i == 0)));
    sessions_[i]->set_alternate_probes(options_.alternate_probes);
  }
  update_comparisons();
  for (const auto& s : frame_snapshots_)
    if (s->state == SessionSnapshot::State::Error && !s->error.empty() && banner_.empty())
      banner_ = fmt::format("Session {}: {}", s->name, one_line(s->error));

  // Keyboard: Esc stops every reply, Ctrl+N adds a session.
  const ImGuiIO& io = ImGui::GetIO();
  if (ImGui::IsKeyPressed(ImGui::GetKeyIndex(ImGuiKey_Escape))) {
    forced_pending_.reset();
    for (auto& s : sessions_) s->stop();
  }
  if (io.KeyCtrl && ImGui::IsKeyPressed('N') && sessions_.size() < kMaxSessions && engine_)
    add_session(new_session_spec());
  if (io.KeyCtrl && ImGui::IsKeyPressed('O')) {
    file_purpose_ = FilePurpose::OpenModel;
    file_dialog_.open("Open a GGUF model", ".gguf", false, std::filesystem::path(model_path_).parent_path());
  }

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
  draw_file_dialog();
  draw_lab_window();
  if (probes_open_) {
    ImGui::SetNextWindowSize({ImGui::GetFontSize() * 44, ImGui::GetFontSize() * 22}, ImGuiCond_FirstUseEver);
    ImGui::SetNextWindowPos({viewport->WorkPos.x + viewport->WorkSize.x * 0.2f, viewport->WorkPos.y + 60},
                            ImGuiCond_FirstUseEver);
    // Opaque: it floats over the panels.
    ImGui::PushStyleColor(ImGuiCol_WindowBg, colour::panel_bg);
    if (ImGui::Begin("Probe scenarios", &probes_open_, ImGuiWindowFlags_NoSavedSettings))
      probes_.draw(engine_.get(), turns_, fonts_);
    ImGui::End();
    ImGui::PopStyleColor();
  }

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
  const std::string device = engine_ ? engine_->device_name() : render_device_;
  ImGui::SetNextItemWidth(ImGui::CalcTextSize(device.c_str()).x + ImGui::GetFontSize() * 2);
  if (ImGui::BeginCombo("##device", device.c_str())) {
    if (devices_.empty()) {
      try {
        devices_ = gpu::list_devices();
      } catch (const std::exception& e) {
        banner_ = one_line(e.what());
      }
    }
    if (ImGui::Selectable("automatic (discrete > integrated > virtual > cpu)", options_.device_index < 0)) {
      options_.device_index = -1;
      if (engine_) start_loading(model_path_);
    }
    for (const gpu::DeviceInfo& d : devices_)
      if (ImGui::Selectable(fmt::format("{}: {} ({}, {})", d.index, d.name, d.type,
                                        format_bytes(static_cast<double>(d.device_local_bytes))).c_str(),
                            options_.device_index == static_cast<int>(d.index))) {
        options_.device_index = static_cast<int>(d.index);
        if (engine_) start_loading(model_path_);
      }
    ImGui::EndCombo();
  }
  help_marker("The Vulkan device the model runs on: choosing one loads the model again there");
  ImGui::SameLine();
  ImGui::TextColored(colour::muted, "context");
  ImGui::SameLine();
  if (context_field_ == 0 && engine_) context_field_ = static_cast<int>(engine_->n_ctx());
  ImGui::SetNextItemWidth(ImGui::GetFontSize() * 4.5f);
  ImGui::InputInt("##context", &context_field_, 0, 0);
  if (ImGui::IsItemDeactivatedAfterEdit() && engine_ && context_field_ != static_cast<int>(engine_->n_ctx())) {
    if (context_field_ < 16 || context_field_ > (1 << 24)) {
      banner_ = fmt::format("context {}: give 16 to 16777216 tokens", context_field_);
      context_field_ = static_cast<int>(engine_->n_ctx());
    } else {
      options_.n_ctx = static_cast<uint32_t>(context_field_);
      start_loading(model_path_);
    }
  }
  help_marker("Tokens each session's cache holds: changing it loads the model again with every cache at the new "
              "size; the conversations carry over. A size the device cannot hold is refused with the reason, and "
              "what was open stays in use");
  ImGui::SameLine();
  ImGui::BeginDisabled(!engine_ || sessions_.empty());
  if (ImGui::Button("Save chat")) {
    file_purpose_ = FilePurpose::SaveConversation;
    file_dialog_.open("Save the selected session's conversation as JSON", ".json", true, {});
  }
  help_marker("Writes the conversation (turns, tokens, pins) to a JSON file");
  ImGui::SameLine();
  if (ImGui::Button("Load chat")) {
    file_purpose_ = FilePurpose::LoadConversation;
    file_dialog_.open("Load a conversation into the selected session", ".json", false, {});
  }
  help_marker("Replaces the selected session's conversation with a saved one (its cache is refilled)");
  ImGui::SameLine();
  if (ImGui::Button("Export")) {
    file_purpose_ = FilePurpose::ExportDir;
    file_dialog_.open("Export the heatmap (PNG), eviction traces (JSONL) and comparison (CSV) to a folder", "", false, {});
  }
  help_marker("Heatmap as PNG, each session's eviction log as JSONL, the forced comparison as CSV");
  ImGui::SameLine();
  if (ImGui::Button("Probes")) probes_open_ = !probes_open_;
  help_marker("Scenarios that place a fact early and ask for it later: which policies still answer?");
  ImGui::SameLine();
  if (ImGui::Button("Lab")) lab_open_ = !lab_open_;
  help_marker("The cache lab: a sweep of caches over a text, a Pareto chart of divergence against memory,\n"
              "and the cache to pick for a memory budget (the same sweep as `kvscope lab`)");
  ImGui::EndDisabled();
  ImGui::SameLine();
  ImGui::BeginDisabled(!engine_ || sessions_.size() >= kMaxSessions);
  if (ImGui::Button("New session")) {
    add_session(new_session_spec());
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
  // Right-aligned when there is room after the buttons, else on a line of its own.
  ImGui::SameLine();
  const float figures_x = ImGui::GetWindowContentRegionMax().x - ImGui::CalcTextSize(figures.c_str()).x;
  if (ImGui::GetCursorPosX() > figures_x) ImGui::NewLine();
  ImGui::SetCursorPosX(std::max(figures_x, ImGui::GetStyle().WindowPadding.x));
  ImGui::TextColored(colour::muted, "%s", figures.c_str());
  if (fonts_.note.size()) {
    ImGui::TextColored(colour::recalled, "%s", fonts_.note.c_str());
  }
  if (!status_.empty()) ImGui::TextColored(colour::muted, "%s", status_.c_str());
}

void App::draw_file_dialog() {
  const std::optional<std::string> chosen = file_dialog_.draw();
  if (!chosen) return;
  switch (file_purpose_) {
    case FilePurpose::OpenModel: start_loading(*chosen); break;
    case FilePurpose::LoadConversation: load_conversation(*chosen); break;
    case FilePurpose::SaveConversation: save_conversation(*chosen); break;
    case FilePurpose::ExportDir: {
      const auto files = export_files(*chosen);
      status_ = fmt::format("exported {} files to {}", files.size(), *chosen);
      break;
    }
  }
}

void App::draw_banner() {
  const bool lost = std::any_of(frame_snapshots_.begin(), frame_snapshots_.end(),
                                [](const auto& s) { return s->device_lost; });
  if (lost && !loading_.valid()) {
    ImGui::PushStyleColor(ImGuiCol_ChildBg, colour::error_bg);
    ImGui::BeginChild("device-lost", {0, ImGui::GetFrameHeightWithSpacing() + 6}, false);
    ImGui::SetCursorPos({10, 5});
    ImGui::AlignTextToFramePadding();
    ImGui::TextUnformatted("The GPU stopped responding (device lost): nothing more runs on it. Every conversation "
                           "is kept — reload the model to go on, or save them first.");
    ImGui::SameLine();
    if (ImGui::Button("Reload the model")) start_loading(model_path_);
    ImGui::EndChild();
    ImGui::PopStyleColor();
    return;
  }
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
  if (!settings_.recent_models.empty()) ImGui::TextColored(colour::muted, "Recent:");
  for (const std::string& recent : settings_.recent_models)
    if (ImGui::Selectable(recent.c_str())) std::snprintf(model_buffer_, sizeof model_buffer_, "%s", recent.c_str());
  if (ImGui::Button("Browse…")) {
    file_purpose_ = FilePurpose::OpenModel;
    file_dialog_.open("Open a GGUF model", ".gguf", false, std::filesystem::path(model_buffer_).parent_path());
    ImGui::CloseCurrentPopup();
  }
  ImGui::SameLine();
  ImGui::TextColored(colour::muted, "or drop a .gguf on the window (Ctrl+O)");
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
    // The policy's name only: its options are in the tooltip and the conversation's title.
    const std::string policy = s.spec.policy.substr(0, s.spec.policy.find(':')) + (s.spec.on_full.empty() ? "" : " (on full)");
    const std::string cache = fmt::format("{}   {}{}", s.name, s.spec.name(), policy.empty() ? "" : " + " + policy);
    // Two lines, so a long cache name never runs into the state: the name
    // (clipped to the panel) above, the state and the tokens held below.
    const float line = ImGui::GetTextLineHeight();
    if (ImGui::Selectable(fmt::format("##session{}", i).c_str(), i == selected_, 0, {0, line * 2.3f})) selected_ = i;
    if (ImGui::IsItemHovered())
      ImGui::SetTooltip("%s\nSelect to inspect its cache", s.spec.label().c_str());
    const ImVec2 min = ImGui::GetItemRectMin(), max = ImGui::GetItemRectMax();
    ImDrawList* draw = ImGui::GetWindowDrawList();
    draw->PushClipRect(min, {max.x - 4, max.y}, true);
    draw->AddText({min.x + 4, min.y + 1}, ImGui::GetColorU32(ImGuiCol_Text), cache.c_str());
    const ImU32 state_colour =
        ImGui::ColorConvertFloat4ToU32(s.state == SessionSnapshot::State::Error ? colour::diverged : colour::muted);
    draw->AddText({min.x + 4 + ImGui::CalcTextSize(s.name.c_str()).x + ImGui::CalcTextSize("   ").x, min.y + line * 1.15f},
                  state_colour, fmt::format("{}  ·  {} / {} tok", state, s.used_tokens, s.capacity).c_str());
    draw->PopClipRect();
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
  help_marker("Storage format of the new session's keys and values: f32 reference, f16, q8 (int8 groups),\n"
              "q4 (int4 groups), kivi2 (2-bit KIVI: keys per channel, values per token, the newest 32 in f16)");
  // The policies come from the registry (kv/policies/registry.h): a policy
  // added there is offered here with no change to the window.
  const auto policies = kv::policy_names();
  ImGui::SetNextItemWidth(ImGui::GetContentRegionAvail().x * 0.45f);
  const std::string policy_shown =
      new_session_policy_ == 0 ? std::string("no policy") : std::string(policies[new_session_policy_ - 1]);
  ImGui::SameLine();
  if (ImGui::BeginCombo("##policy", policy_shown.c_str())) {
    if (ImGui::Selectable("no policy", new_session_policy_ == 0)) new_session_policy_ = 0;
    if (ImGui::IsItemHovered()) ImGui::SetTooltip("keep every token until the context is full");
    for (size_t i = 0; i < policies.size(); ++i) {
      if (ImGui::Selectable(std::string(policies[i]).c_str(), new_session_policy_ == static_cast<int>(i + 1)))
        new_session_policy_ = static_cast<int>(i + 1);
      if (ImGui::IsItemHovered()) ImGui::SetTooltip("%s", std::string(kv::policy_summary(policies[i])).c_str());
    }
    ImGui::EndCombo();
  }
  help_marker("Eviction policy of the new session: which tokens its cache keeps once it holds its budget");
  const bool has_budget = new_session_policy_ > 0 && kv::policy_at_budget(policies[new_session_policy_ - 1], 64);
  ImGui::BeginDisabled(!has_budget);
  ImGui::SetNextItemWidth(ImGui::GetContentRegionAvail().x * 0.75f);
  const int max_budget = engine_ ? static_cast<int>(engine_->n_ctx()) : 256;
  ImGui::SliderInt("##budget", &new_session_budget_, 8, std::max(8, max_budget), "budget %d tokens");
  ImGui::EndDisabled();
  help_marker("Live tokens per layer and kv head that the policy keeps (sinks, pins and the recent window included)");
  ImGui::BeginDisabled(!is_quantized(kv::all_formats()[new_session_format_]));
  ImGui::Checkbox("Hadamard rotation of keys", &new_session_hadamard_);
  ImGui::EndDisabled();
  help_marker("Quantized keys and queries mixed by an orthogonal transform: no channel sets a group's step (hadamard=)");
  ImGui::BeginDisabled(!engine_ || sessions_.size() >= kMaxSessions);
  if (ImGui::Button("+ Add")) add_session(new_session_spec());
  if (ImGui::IsItemHovered()) ImGui::SetTooltip("%s", new_session_spec().label().c_str());
  help_marker("A new session with this cache format and policy, on the same weights (up to 4)");
  ImGui::SetNextItemWidth(ImGui::GetContentRegionAvail().x * 0.75f);
  const bool spec_enter =
      ImGui::InputText("##spec", spec_buffer_, sizeof spec_buffer_, ImGuiInputTextFlags_EnterReturnsTrue);
  help_marker("A whole cache spec, as kvscope run --kv takes it: \"FORMAT + POLICY + pin=A:B + spill\", e.g.\n"
              "f16 + h2o:budget=64   q8 + streamingllm:sinks=4,window=60   tova:budget=48   f16 + on-full=window:budget=256\n"
              "Enter or + adds it as a new session");
  ImGui::SameLine();
  if ((ImGui::Button("+##spec") || spec_enter) && spec_buffer_[0]) add_session_from_text(spec_buffer_);
  help_marker("Adds a session with this cache and policy");
  ImGui::EndDisabled();
  if (sessions_.size() > 1) {
    if (ImGui::Button(fmt::format("Remove {}", selected_ < frame_snapshots_.size() ? frame_snapshots_[selected_]->name : "").c_str())) {
      sessions_.erase(sessions_.begin() + static_cast<std::ptrdiff_t>(selected_));
      frame_snapshots_.erase(frame_snapshots_.begin() + static_cast<std::ptrdiff_t>(selected_));
      selected_ = std::min(selected_, sessions_.size() - 1);
      comparisons_.clear();
      forced_pending_.reset();
    }
    help_marker("Stops the session and frees its cache");
  }
  if (sessions_.size() > 1) {
    ImGui::Separator();
    ImGui::TextColored(colour::muted, "SIDE BY SIDE  (toolbar)");
    ImGui::BeginDisabled(!compare_mode_);
    ImGui::Checkbox("forced: same tokens", &forced_mode_);
    help_marker("Every session reads the same tokens (A's reply, or the text below), so their\n"
                "next-token distributions compare step by step: KL against A, top-1 agreement,\n"
                "first divergence, and the lost attention (A's attention on what a cache evicted)");
    if (forced_mode_) {
      ImGui::Checkbox("on this text:", &forced_on_text_);
      help_marker("Off: the others read A's sampled reply. On: every session reads this text");
      ImGui::SetNextItemWidth(-1);
      ImGui::InputText("##forced_text", forced_text_buffer_, sizeof forced_text_buffer_);
    }
    ImGui::EndDisabled();
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

// ================================================================== inspector

void App::draw_inspector(const SessionSnapshot& s) {
  ImGui::TextColored(colour::muted, "CACHE INSPECTOR  ·  session %s", s.name.c_str());
  ImGui::Separator();
  ImGui::Text("Layer occupancy");
  help_marker("Live slots per layer (rows) and kv head (columns) of the cache's capacity; the tick is the\n"
              "policy's budget for that head. Layers with budgets of their own are marked. Hover for the numbers.");
  if (timeline_.step >= 0) {
    ImGui::SameLine();
    ImGui::TextColored(colour::recalled, "at step %d", timeline_.step);
  }
  occupancy_drawn_ = draw_occupancy(scrubbed(s, timeline_));
  ImGui::Spacing();
  ImGui::Separator();
  ImGui::Text("Eviction map");
  help_marker("The eviction map of one layer and kv head: token positions (down) held at each step (across).\n"
              "Blue: held; red: written, then evicted; a span that comes back was recalled. A window policy\n"
              "draws a diagonal band, H2O scattered survivors. Click or drag to see the cache at a step.");
  draw_timeline(s, timeline_);
  ImGui::Spacing();
  ImGui::Separator();
  ImGui::Text("Attention");
  help_marker("Rows: recent decode steps (newest at the bottom). Columns: token positions.\n"
              "Colour: probability on a power scale; hatched: evicted. Hover for details.");
  draw_heatmap(s, heatmap_, fonts_);
  const ImVec4 r = heatmap_.last_rect;
  const ImVec2 m = ImGui::GetIO().MousePos;
  if (ImGui::IsMouseClicked(ImGuiMouseButton_Right) && m.x >= r.x && m.x < r.x + r.z && m.y >= r.y && m.y < r.y + r.w)
    ImGui::OpenPopup("##heatmap_menu");
  if (ImGui::BeginPopup("##heatmap_menu")) {
    if (ImGui::MenuItem("Export heatmap as PNG")) {
      const std::string path = fmt::format("kvscope-heatmap-{}-L{}.png", s.name, heatmap_.layer);
      status_ = export_heatmap_png(path);
    }
    ImGui::EndPopup();
  }
}

void App::draw_lab_window() {
  // Scripted: once the sweep is done, open the row asked for.
  if (options_.lab_open >= 0 && lab_used_ && !options_.lab_run && !lab_.running()) {
    const int row = std::exchange(options_.lab_open, -1);
    if (auto request = lab_.open_request(static_cast<size_t>(row))) open_lab_point(*request);
  }
  if (!lab_open_) return;
  const ImGuiViewport* viewport = ImGui::GetMainViewport();
  ImGui::SetNextWindowSize({viewport->WorkSize.x * 0.62f, viewport->WorkSize.y * 0.86f}, ImGuiCond_FirstUseEver);
  ImGui::SetNextWindowPos({viewport->WorkPos.x + viewport->WorkSize.x * 0.19f, viewport->WorkPos.y + 48},
                          ImGuiCond_FirstUseEver);
  ImGui::PushStyleColor(ImGuiCol_WindowBg, colour::panel_bg);  // opaque: it floats over the panels
  std::optional<LabPanel::OpenRequest> open;
  if (ImGui::Begin("Cache lab", &lab_open_, ImGuiWindowFlags_NoSavedSettings)) {
    open = lab_.draw(engine_.get(), turns_, model_path_, fonts_);
    if (lab_.running()) lab_used_ = true;
  }
  ImGui::End();
  ImGui::PopStyleColor();
  if (open) {
    open_lab_point(*open);
    lab_open_ = false;  // the sessions are what to look at now
  }
}

}  // namespace kvscope::gui
