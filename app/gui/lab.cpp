#include "app/gui/lab.h"

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <sstream>

#include <fmt/format.h>
#include <imgui.h>

#include "app/core/lab_report.h"
#include "app/core/paths.h"

namespace kvscope::gui {

namespace {

// The policy colours of the report are drawn for a white page; on the
// window's dark panel they are lifted toward white a little.
ImU32 point_colour(const CacheSpec& spec) {
  const std::string name = lab_policy_name(spec);
  if (name.empty() || name == "full") return ImGui::GetColorU32(colour::text);
  unsigned v = 0;
  std::sscanf(lab_policy_colour(name) + 1, "%x", &v);
  auto lift = [](unsigned c) { return (float(c) / 255) * 0.75f + 0.25f; };
  return ImGui::GetColorU32(ImVec4(lift((v >> 16) & 255), lift((v >> 8) & 255), lift(v & 255), 1));
}

std::string read_file(const std::string& path) {
  std::error_code ec;
  if (!std::filesystem::is_regular_file(path, ec))
    throw std::runtime_error(fmt::format("text {}: {}", path, std::filesystem::exists(path, ec) ? "not a regular file"
                                                                                                : "no such file"));
  std::ifstream in(path, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

// The evaluation text shipped with the sources, when the window runs from them.
std::string default_text() {
  const std::filesystem::path p = std::filesystem::path(assets_dir()) / ".." / "tests" / "data" / "corpus.txt";
  std::error_code ec;
  return std::filesystem::exists(p, ec) ? std::filesystem::weakly_canonical(p, ec).string() : "";
}

void marker(ImDrawList* dl, const CacheSpec& spec, ImVec2 c, float r, ImU32 fill, bool outline) {
  const ImU32 edge = ImGui::GetColorU32(ImVec4(1, 1, 1, 0.9f));
  switch (spec.k_format) {
    case kv::Format::Q8:
      dl->AddRectFilled({c.x - r * 0.9f, c.y - r * 0.9f}, {c.x + r * 0.9f, c.y + r * 0.9f}, fill);
      if (outline) dl->AddRect({c.x - r * 0.9f, c.y - r * 0.9f}, {c.x + r * 0.9f, c.y + r * 0.9f}, edge);
      break;
    case kv::Format::Q4:
      dl->AddTriangleFilled({c.x, c.y - r * 1.15f}, {c.x - r, c.y + r * 0.75f}, {c.x + r, c.y + r * 0.75f}, fill);
      if (outline) dl->AddTriangle({c.x, c.y - r * 1.15f}, {c.x - r, c.y + r * 0.75f}, {c.x + r, c.y + r * 0.75f}, edge);
      break;
    case kv::Format::Kivi2:
      dl->AddQuadFilled({c.x, c.y - r * 1.2f}, {c.x + r, c.y}, {c.x, c.y + r * 1.2f}, {c.x - r, c.y}, fill);
      if (outline) dl->AddQuad({c.x, c.y - r * 1.2f}, {c.x + r, c.y}, {c.x, c.y + r * 1.2f}, {c.x - r, c.y}, edge);
      break;
    default:
      dl->AddCircleFilled(c, r, fill);
      if (outline) dl->AddCircle(c, r, edge);
  }
}

}  // namespace

LabPanel::LabPanel() {
  std::snprintf(text_path_, sizeof text_path_, "%s", default_text().c_str());
}

LabPanel::~LabPanel() {
  cancel_ = true;
  wait();
}

void LabPanel::wait() {
  if (run_.valid()) run_.wait();
}

bool LabPanel::running() const {
  return run_.valid() && run_.wait_for(std::chrono::seconds(0)) != std::future_status::ready;
}

void LabPanel::set_fields(const LabFields& f) {
  if (!f.text.empty()) std::snprintf(text_path_, sizeof text_path_, "%s", f.text.c_str());
  std::snprintf(out_, sizeof out_, "%s", f.out.c_str());
  out_auto_ = false;
  const auto names = lab_preset_names();
  const auto it = std::find(names.begin(), names.end(), f.preset);
  preset_ = it == names.end() ? 0 : int(it - names.begin());
  std::snprintf(storages_, sizeof storages_, "%s", f.storages.c_str());
  std::snprintf(policies_, sizeof policies_, "%s", f.policies.c_str());
  std::snprintf(budgets_, sizeof budgets_, "%s", f.budgets.c_str());
  std::snprintf(caches_, sizeof caches_, "%s", f.caches.c_str());
  max_chunks_ = int(f.max_chunks);
  std::snprintf(budget_, sizeof budget_, "%s", f.budget.c_str());
  probes_ = f.probes;
}

LabFields LabPanel::fields() const {
  LabFields f;
  f.text = text_path_;
  f.out = out_auto_ ? "" : out_;
  f.preset = std::string(lab_preset_names()[size_t(preset_)]);
  f.storages = storages_;
  f.policies = policies_;
  f.budgets = budgets_;
  f.caches = caches_;
  f.max_chunks = uint32_t(std::max(0, max_chunks_));
  f.budget = budget_;
  f.probes = probes_;
  return f;
}

std::string LabPanel::error() const {
  std::lock_guard lock(mutex_);
  return error_;
}

bool LabPanel::start(Engine& engine, EngineTurns& turns, const std::string& model_path) {
  if (running()) return false;
  const LabFields f = fields();
  LabOptions options;
  try {
    // The CLI's parser and validators, so a grid refused there is refused here.
    const LabGrid grid = parse_lab_grid({f.preset, f.storages, f.policies, f.budgets, f.caches});
    (void)parse_lab_budget(f.budget);
    if (f.text.empty()) throw std::invalid_argument("the lab needs a text file to measure on");
    options.text = read_file(f.text);
    options.text_path = f.text;
    options.model_path = model_path;
    options.eval.max_chunks = f.max_chunks;
    options.eval.turns = &turns;
    if (f.probes)
      for (const auto& file : scenario_files(std::filesystem::path(assets_dir()) / "scenarios"))
        options.scenarios.push_back(load_scenario(file));
    const uint32_t n_ctx = engine.n_ctx();
    options.caches = grid.specs(n_ctx);
    std::string out = f.out;
    if (out.empty()) {
      out_auto_ = true;
      out = (std::filesystem::path(cache_dir()) / "lab" /
             fmt::format("{}-c{}-{}", std::filesystem::path(f.text).stem().string(), n_ctx,
                         f.max_chunks ? fmt::format("{}chunks", f.max_chunks) : "all"))
                .string();
      std::snprintf(out_, sizeof out_, "%s", out.c_str());
    }
    options.dir = out;
    std::lock_guard lock(mutex_);
    rows_.clear();
    written_.clear();
    error_.clear();
    note_.clear();
    progress_ = {};
    progress_.rows_total = options.caches.size();
    done_ = false;
    selected_ = -1;
    n_ctx_ = n_ctx;
    baseline_ = options.eval.baseline;
    // The first chunk, as forced side by side reads it: a few tokens as the
    // prompt, the rest forced (at most what the window's field holds).
    const std::vector<int32_t> tokens = engine.tokenizer().encode(options.text, false);
    const size_t n = std::min<size_t>(tokens.size(), n_ctx > 1 ? n_ctx - 1 : 1);
    const size_t head = std::min<size_t>(n, 8);
    const Tokenizer& tok = engine.tokenizer();
    prompt_ = tok.decode({tokens.begin(), tokens.begin() + static_cast<std::ptrdiff_t>(head)});
    forced_.clear();
    for (size_t i = head; i < n; ++i) {
      const std::string piece = tok.decode({tokens.begin() + static_cast<std::ptrdiff_t>(head),
                                            tokens.begin() + static_cast<std::ptrdiff_t>(i + 1)});
      if (piece.size() > 2000) break;
      forced_ = piece;
    }
  } catch (const std::exception& e) {
    std::lock_guard lock(mutex_);
    error_ = e.what();
    return false;
  }
  cancel_ = false;
  run_ = std::async(std::launch::async, [this, &engine, options, f] {
    try {
      const LabRunResult result = run_lab(
          engine, options,
          [this](const LabProgress& p) {
            std::lock_guard lock(mutex_);
            progress_ = p;
          },
          [this](const LabRow& r) {
            std::lock_guard lock(mutex_);
            rows_.push_back(r);
          },
          &cancel_);
      std::vector<std::string> written;
      if (!result.cancelled && result.journal.baseline) {
        LabReportInput in;
        in.identity = result.journal.identity;
        in.baseline = *result.journal.baseline;
        in.rows = result.journal.rows;
        in.budget = parse_lab_budget(f.budget);
        in.recommendation = recommend_cache(in.rows, in.baseline, *in.budget);
        in.command = "kvscope-gui Lab panel";
        for (const auto& p : write_lab_report(in, options.dir)) written.push_back(p.string());
      }
      std::lock_guard lock(mutex_);
      note_ = result.note;
      if (result.cancelled) note_ += fmt::format("stopped; the finished caches are in {}", lab_journal_path(options.dir).string());
      written_ = std::move(written);
      done_ = !result.cancelled;
    } catch (const std::exception& e) {
      std::lock_guard lock(mutex_);
      error_ = e.what();
    }
  });
  return true;
}

std::optional<LabPanel::OpenRequest> LabPanel::open_request(size_t index) const {
  std::lock_guard lock(mutex_);
  if (index >= rows_.size() || prompt_.empty()) return std::nullopt;
  return OpenRequest{baseline_, rows_[index].eval.run.spec, prompt_, forced_};
}

std::optional<LabPanel::OpenRequest> LabPanel::draw(Engine* engine, EngineTurns& turns, const std::string& model_path,
                                                    const Fonts& fonts) {
  std::optional<OpenRequest> open;
  const bool busy = running();
  const float label_w = ImGui::GetFontSize() * 6;
  auto field = [&](const char* label, const char* id, char* buf, size_t size, const char* tip) {
    ImGui::AlignTextToFramePadding();
    ImGui::TextColored(colour::muted, "%s", label);
    ImGui::SameLine(label_w);
    ImGui::SetNextItemWidth(-1);
    const bool edited = ImGui::InputText(id, buf, size);
    if (ImGui::IsItemHovered()) ImGui::SetTooltip("%s", tip);
    return edited;
  };
  ImGui::BeginDisabled(busy);
  field("text", "##lab_text", text_path_, sizeof text_path_,
        "The text every cache runs over, in chunks of the context, teacher-forced (as `kvscope eval -f`)");
  ImGui::AlignTextToFramePadding();
  ImGui::TextColored(colour::muted, "grid");
  ImGui::SameLine(label_w);
  const auto presets = lab_preset_names();
  ImGui::SetNextItemWidth(ImGui::GetFontSize() * 7);
  if (ImGui::BeginCombo("##lab_preset", std::string(presets[size_t(preset_)]).c_str())) {
    for (size_t i = 0; i < presets.size(); ++i) {
      if (ImGui::Selectable(std::string(presets[i]).c_str(), int(i) == preset_)) preset_ = int(i);
      if (ImGui::IsItemHovered()) ImGui::SetTooltip("%s", lab_preset_description(presets[i]).c_str());
    }
    ImGui::EndCombo();
  }
  ImGui::SameLine();
  ImGui::TextColored(colour::muted, "chunks");
  ImGui::SameLine();
  ImGui::SetNextItemWidth(ImGui::GetFontSize() * 5);
  ImGui::InputInt("##lab_chunks", &max_chunks_);
  max_chunks_ = std::max(0, max_chunks_);
  if (ImGui::IsItemHovered()) ImGui::SetTooltip("Only the first N chunks of the text (0: all of it; more is slower and surer)");
  ImGui::SameLine();
  ImGui::TextColored(colour::muted, "budget");
  ImGui::SameLine();
  ImGui::SetNextItemWidth(-1);
  ImGui::InputText("##lab_budget", budget_, sizeof budget_);
  if (ImGui::IsItemHovered())
    ImGui::SetTooltip("Memory for the recommendation: 25%% (of the baseline), 1728 or 1.5KiB (bytes per token),\n"
                      "2GiB@32768 (a whole cache at a context)");
  ImGui::AlignTextToFramePadding();
  ImGui::TextColored(colour::muted, "probes");
  ImGui::SameLine(label_w);
  ImGui::Checkbox("##lab_probes", &probes_);
  if (ImGui::IsItemHovered())
    ImGui::SetTooltip("Also run every scenario of assets/scenarios under every cache: does it still recall\n"
                      "a fact placed early? (retained / degraded / lost against the baseline; slower)");
  field("storages", "##lab_storages", storages_, sizeof storages_,
        "Instead of the preset's, separated by ';': f16; q8; q4,group=8; k=q8,v=q4");
  field("policies", "##lab_policies", policies_, sizeof policies_,
        "Instead of the preset's, separated by ',': none (the storage alone), h2o, snapkv, tova, ... or *");
  field("budgets", "##lab_budgets", budgets_, sizeof budgets_, "Policy budgets in tokens per kv head, separated by ','");
  field("caches", "##lab_caches", caches_, sizeof caches_, "Whole cache specs added to the grid, separated by ';'");
  if (field("folder", "##lab_out", out_, sizeof out_,
        "Journal (rows.jsonl, one line per finished cache: a stopped sweep resumes here) and report\n"
        "(report.html, charts as PNG, CSV, JSON). Empty: under the cache folder, named after the text,\n"
        "the context and the chunks"))
    out_auto_ = out_[0] == '\0';
  ImGui::EndDisabled();

  ImGui::BeginDisabled(!engine && !busy);
  if (ImGui::Button(busy ? "Stop" : "Run sweep", {ImGui::GetFontSize() * 8, 0})) {
    if (busy)
      cancel();
    else if (engine)
      start(*engine, turns, model_path);
  }
  ImGui::EndDisabled();
  if (ImGui::IsItemHovered())
    ImGui::SetTooltip(busy ? "Stops after the chunk running now; the finished caches stay in the journal"
                           : "Measures every cache of the grid against the baseline (f16) on the text;\n"
                             "sessions keep generating meanwhile, taking the engine in turn");
  ImGui::SameLine();
  ImGui::Checkbox("top-1", &top1_);
  if (ImGui::IsItemHovered()) ImGui::SetTooltip("Chart top-1 agreement instead of mean KL");

  LabProgress p;
  std::string error, note;
  std::vector<std::string> written;
  {
    std::lock_guard lock(mutex_);
    p = progress_;
    error = error_;
    note = note_;
    written = written_;
  }
  if (busy || p.rows_done) {
    ImGui::SameLine();
    const float fraction = p.rows_total ? (float(p.rows_done) + (p.n_chunks ? float(p.chunk) / float(p.n_chunks) : 0)) /
                                              float(p.rows_total)
                                        : 0;
    const std::string overlay =
        busy ? fmt::format("{}/{} caches · {} chunk {}/{} · {} left", p.rows_done, p.rows_total,
                           p.current.size() > 40 ? p.current.substr(0, 40) + "…" : p.current, p.chunk, p.n_chunks,
                           lab_duration(p.eta_s))
             : fmt::format("{}/{} caches", p.rows_done, p.rows_total);
    ImGui::ProgressBar(std::min(fraction, 1.0f), {-1, 0}, overlay.c_str());
  }
  if (!error.empty()) ImGui::TextColored(colour::diverged, "%s", error.c_str());
  if (!note.empty()) ImGui::TextColored(colour::muted, "%s", note.c_str());
  if (!written.empty()) ImGui::TextColored(colour::muted, "report: %s", written.front().c_str());

  draw_chart(fonts);

  // The selected point, and the way to watch it diverge.
  std::optional<LabRow> chosen;
  {
    std::lock_guard lock(mutex_);
    if (selected_ >= 0 && size_t(selected_) < rows_.size()) chosen = rows_[size_t(selected_)];
  }
  if (chosen) {
    const LabRow& r = *chosen;
    ImGui::TextUnformatted(r.label().c_str());
    ImGui::PushFont(fonts.small);
    ImGui::TextColored(colour::muted, "%.0f bytes per token held · mean KL %.3g nats · KL p99 %.3g · top-1 %.2f%% · "
                                      "ppl %.3f%s",
                       r.eval.run.held_bytes_per_token, r.eval.divergence.kl_mean, r.eval.divergence.kl_p99,
                       100 * r.eval.divergence.top1_agreement, r.eval.run.ppl,
                       r.evicting() ? fmt::format(" · lost attention {:.3f}", r.eval.lost.mean).c_str() : "");
    ImGui::PopFont();
    ImGui::BeginDisabled(!engine);
    if (ImGui::Button("Open side by side with the full cache")) open = open_request(size_t(selected_));
    ImGui::EndDisabled();
    if (ImGui::IsItemHovered())
      ImGui::SetTooltip("Closes the current sessions; opens the baseline as A and this cache as B,\n"
                        "both reading the sweep's first chunk (forced): per-step KL, top-1, lost attention");
  }
  // The recommendation over the rows so far.
  std::vector<LabRow> rows;
  {
    std::lock_guard lock(mutex_);
    rows = rows_;
  }
  if (!rows.empty() && p.baseline_bytes_per_token > 0) {
    try {
      PerplexityRun base;
      base.bytes_per_token = p.baseline_bytes_per_token;
      const LabRecommendation rec = recommend_cache(rows, base, parse_lab_budget(budget_));
      ImGui::Separator();
      ImGui::PushTextWrapPos(0);
      ImGui::TextColored(rec.safe ? colour::model : colour::recalled, "%s", rec.text.c_str());
      ImGui::PopTextWrapPos();
    } catch (const std::invalid_argument& e) {
      ImGui::TextColored(colour::diverged, "%s", e.what());
    }
  }
  return open;
}

void LabPanel::draw_chart(const Fonts& fonts) {
  std::vector<LabRow> rows;
  double base_bpt = 0;
  {
    std::lock_guard lock(mutex_);
    rows = rows_;
    base_bpt = progress_.baseline_bytes_per_token;
  }
  const float scale = ImGui::GetFontSize() / 16.0f;
  const ImVec2 avail = ImGui::GetContentRegionAvail();
  const ImVec2 size{avail.x, std::clamp(avail.y - 110 * scale, 200 * scale, 420 * scale)};
  const ImVec2 p0 = ImGui::GetCursorScreenPos();
  ImGui::InvisibleButton("##lab_chart", size);
  const bool hovered = ImGui::IsItemHovered();
  const bool clicked = ImGui::IsItemClicked();
  ImDrawList* dl = ImGui::GetWindowDrawList();
  chart_rect_ = {p0.x, p0.y, size.x, size.y};
  const float left = 62 * scale, bottom = 40 * scale, top = 10 * scale, right = 12 * scale;
  const ImVec2 a{p0.x + left, p0.y + top}, b{p0.x + size.x - right, p0.y + size.y - bottom};
  dl->AddRectFilled(a, b, ImGui::GetColorU32(colour::panel_bg));
  dl->AddRect(a, b, ImGui::GetColorU32(colour::bar_bg));
  points_drawn_ = 0;
  if (rows.empty()) {
    dl->AddText({a.x + 12 * scale, a.y + 12 * scale}, ImGui::GetColorU32(colour::muted),
                "Each cache appears here as it finishes: memory across, divergence from the full cache up.");
    return;
  }
  std::optional<double> budget;
  try {
    if (base_bpt > 0) budget = parse_lab_budget(budget_).resolve(base_bpt);
  } catch (const std::invalid_argument&) {
  }
  LabScatterAxes axes = lab_scatter_axes(rows, base_bpt, budget, top1_);
  axes.x.a = a.x + 8 * scale;
  axes.x.b = b.x - 8 * scale;
  axes.y.a = b.y - 8 * scale;
  axes.y.b = a.y + 8 * scale;
  ImGui::PushFont(fonts.small);
  const ImU32 grid = ImGui::GetColorU32(ImVec4(1, 1, 1, 0.07f));
  const ImU32 muted = ImGui::GetColorU32(colour::muted);
  for (double v : axes.x.ticks()) {
    const float x = float(axes.x.map(v));
    dl->AddLine({x, a.y}, {x, b.y}, grid);
    const std::string t = fmt::format("{:g}", v);
    dl->AddText({x - ImGui::CalcTextSize(t.c_str()).x / 2, b.y + 3 * scale}, muted, t.c_str());
  }
  for (double v : axes.y.ticks()) {
    const float y = float(axes.y.map(v));
    dl->AddLine({a.x, y}, {b.x, y}, grid);
    const std::string t = top1_ ? fmt::format("{:g}%", std::round(v * 1000) / 10) : fmt::format("{:g}", v);
    dl->AddText({a.x - ImGui::CalcTextSize(t.c_str()).x - 4 * scale, y - ImGui::GetFontSize() / 2}, muted, t.c_str());
  }
  const std::string x_name = fmt::format("KV memory held, bytes per token of context{}", axes.x.log ? " (log)" : "");
  dl->AddText({(a.x + b.x) / 2 - ImGui::CalcTextSize(x_name.c_str()).x / 2, b.y + 18 * scale}, muted, x_name.c_str());
  const char* y_name = top1_ ? "top-1 agreement" : "mean KL, nats (log)";
  dl->AddText({a.x + 4 * scale, a.y + 2 * scale}, muted, y_name);
  if (budget) {
    const float x = float(axes.x.map(*budget));
    const ImU32 amber = ImGui::GetColorU32(colour::recalled);
    for (float y = a.y; y < b.y; y += 9 * scale) dl->AddLine({x, y}, {x, std::min(y + 5 * scale, b.y)}, amber, 1.5f);
    dl->AddText({x + 4 * scale, a.y + 16 * scale}, amber, fmt::format("budget {}", budget_).c_str());
  }
  auto at = [&](const LabRow& r) {
    const double q = top1_ ? r.eval.divergence.top1_agreement
                           : (r.eval.divergence.kl_mean > 0 ? r.eval.divergence.kl_mean : axes.y.lo);
    return ImVec2(float(axes.x.map(r.eval.run.held_bytes_per_token)), float(axes.y.map(q)));
  };
  const std::vector<size_t> front = pareto_front(rows, top1_);
  for (size_t k = 1; k < front.size(); ++k)
    dl->AddLine(at(rows[front[k - 1]]), at(rows[front[k]]), ImGui::GetColorU32(ImVec4(1, 1, 1, 0.45f)), 1.5f);
  // The point under the mouse: the nearest within 10 px.
  int hot = -1;
  float best = 100 * scale * scale;
  const ImVec2 mouse = ImGui::GetIO().MousePos;
  if (hovered)
    for (size_t i = 0; i < rows.size(); ++i) {
      const ImVec2 c = at(rows[i]);
      const float d = (c.x - mouse.x) * (c.x - mouse.x) + (c.y - mouse.y) * (c.y - mouse.y);
      if (d < best) best = d, hot = int(i);
    }
  for (size_t i = 0; i < rows.size(); ++i) {
    const bool on_front = std::find(front.begin(), front.end(), i) != front.end();
    marker(dl, rows[i].eval.run.spec, at(rows[i]), (on_front ? 6.0f : 4.5f) * scale, point_colour(rows[i].eval.run.spec),
           on_front);
    ++points_drawn_;
  }
  for (size_t i : front) {
    const ImVec2 c = at(rows[i]);
    const std::string label = lab_short_label(rows[i].eval.run.spec);
    const float w = ImGui::CalcTextSize(label.c_str()).x;
    const float x = c.x + 8 * scale + w < b.x ? c.x + 8 * scale : c.x - 8 * scale - w;
    dl->AddText({x, c.y - ImGui::GetFontSize() / 2}, ImGui::GetColorU32(colour::text), label.c_str());
  }
  if (selected_ >= 0 && size_t(selected_) < rows.size())
    dl->AddCircle(at(rows[size_t(selected_)]), 11 * scale, ImGui::GetColorU32(colour::recalled), 0, 2.5f);
  ImGui::PopFont();
  if (hot >= 0) {
    const LabRow& r = rows[size_t(hot)];
    ImGui::SetTooltip("%s\n%.0f bytes per token held (%.0f%% of the baseline)\nmean KL %.3g nats · top-1 %.2f%%\n"
                      "click to select; open it side by side below",
                      r.label().c_str(), r.eval.run.held_bytes_per_token,
                      base_bpt > 0 ? 100 * r.eval.run.held_bytes_per_token / base_bpt : 0.0, r.eval.divergence.kl_mean,
                      100 * r.eval.divergence.top1_agreement);
    if (clicked) selected_ = hot;
  }
}

nlohmann::json LabPanel::report() const {
  std::lock_guard lock(mutex_);
  nlohmann::json rows = nlohmann::json::array();
  for (const LabRow& r : rows_)
    rows.push_back({{"cache", r.label()},
                    {"held_bytes_per_token", r.eval.run.held_bytes_per_token},
                    {"kl_mean", r.eval.divergence.kl_mean},
                    {"top1_agreement", r.eval.divergence.top1_agreement}});
  return {{"rows", rows},
          {"rows_total", progress_.rows_total},
          {"done", done_},
          {"error", error_},
          {"chart", chart_rect_},
          {"points_drawn", points_drawn_},
          {"files", written_},
          {"folder", std::string(out_)}};
}

}  // namespace kvscope::gui
