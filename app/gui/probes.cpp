#include "app/gui/probes.h"

#include <fmt/format.h>
#include <imgui.h>

#include "app/core/paths.h"

namespace kvscope::gui {

namespace {

std::vector<std::string> split(const std::string& text, char sep) {
  std::vector<std::string> out;
  size_t start = 0;
  while (start <= text.size()) {
    size_t end = text.find(sep, start);
    if (end == std::string::npos) end = text.size();
    if (end > start) out.push_back(text.substr(start, end - start));
    start = end + 1;
  }
  return out;
}

ImVec4 verdict_colour(Verdict v) {
  return v == Verdict::Retained ? colour::model : v == Verdict::Degraded ? colour::recalled : colour::diverged;
}

}  // namespace

ProbePanel::~ProbePanel() {
  cancel_ = true;
  wait();
}

void ProbePanel::wait() {
  if (run_.valid()) run_.wait();
}

bool ProbePanel::running() const {
  return run_.valid() && run_.wait_for(std::chrono::seconds(0)) != std::future_status::ready;
}

void ProbePanel::start(Engine& engine, EngineTurns& turns, const std::string& folder, const std::string& policies,
                       size_t limit) {
  if (running()) return;
  std::snprintf(policies_, sizeof policies_, "%s", policies.c_str());
  {
    std::lock_guard lock(mutex_);
    results_.clear();
    error_.clear();
  }
  cancel_ = false;
  run_ = std::async(std::launch::async, [this, &engine, &turns, folder, policies, limit] {
    try {
      std::vector<std::filesystem::path> files = scenario_files(folder);
      if (limit && files.size() > limit) files.resize(limit);
      ProbeConfig config;
      config.policies = split(policies, ';');
      {
        std::lock_guard lock(mutex_);
        total_ = files.size();
      }
      for (const auto& file : files) {
        if (cancel_) break;
        const Scenario scenario = load_scenario(file);
        turns.lock();  // the sessions' forward passes share the model's buffers
        ProbeResult result;
        try {
          result = run_probe(engine, scenario, config);
        } catch (...) {
          turns.unlock();
          throw;
        }
        turns.unlock();
        std::lock_guard lock(mutex_);
        results_.push_back(std::move(result));
      }
    } catch (const std::exception& e) {
      std::lock_guard lock(mutex_);
      error_ = e.what();
    }
  });
}

std::vector<ProbeResult> ProbePanel::results() const {
  std::lock_guard lock(mutex_);
  return results_;
}

std::string ProbePanel::error() const {
  std::lock_guard lock(mutex_);
  return error_;
}

void ProbePanel::draw(Engine* engine, EngineTurns& turns, const Fonts& fonts) {
  ImGui::SetNextItemWidth(ImGui::GetContentRegionAvail().x - ImGui::GetFontSize() * 5);
  ImGui::InputText("##probe_policies", policies_, sizeof policies_);
  if (ImGui::IsItemHovered())
    ImGui::SetTooltip("Policies to probe, separated by ';' (each also against the full cache)");
  ImGui::SameLine();
  const bool busy = running();
  ImGui::BeginDisabled(!engine && !busy);
  if (ImGui::Button(busy ? "Cancel" : "Run", {-1, 0})) {
    if (busy)
      cancel();
    else if (engine)
      start(*engine, turns, assets_dir() + "/scenarios", policies_, 0);
  }
  ImGui::EndDisabled();
  if (ImGui::IsItemHovered())
    ImGui::SetTooltip("Each scenario places a fact, runs a story past it and asks for it: does the cache still\n"
                      "answer? retained / degraded / lost, from the answer's log-probability against the full cache");
  const std::vector<ProbeResult> results = this->results();
  const std::string error = this->error();
  if (!error.empty()) ImGui::TextColored(colour::diverged, "%s", error.c_str());
  if (busy) ImGui::TextColored(colour::muted, "running: %zu of %zu scenarios…", results.size(), total_);
  if (results.empty()) return;
  const int columns = 3 + static_cast<int>(results.front().policies.size());
  if (!ImGui::BeginTable("##verdicts", columns, ImGuiTableFlags_BordersInnerH | ImGuiTableFlags_SizingStretchProp))
    return;
  ImGui::TableSetupColumn("scenario");
  ImGui::TableSetupColumn("distance");
  ImGui::TableSetupColumn("full");
  for (const ProbeRun& run : results.front().policies) ImGui::TableSetupColumn(run.cache.c_str());
  ImGui::TableHeadersRow();
  ImGui::PushFont(fonts.small);
  for (const ProbeResult& r : results) {
    ImGui::TableNextRow();
    ImGui::TableSetColumnIndex(0);
    ImGui::TextUnformatted(r.scenario.name.c_str());
    if (ImGui::IsItemHovered()) ImGui::SetTooltip("%s\nanswer: \"%s\"", r.scenario.description.c_str(), r.scenario.answer.c_str());
    ImGui::TableSetColumnIndex(1);
    ImGui::Text("%u", r.measured_distance);
    ImGui::TableSetColumnIndex(2);
    ImGui::Text("%.2f", r.full.logprob);
    for (size_t i = 0; i < r.policies.size(); ++i) {
      ImGui::TableSetColumnIndex(3 + static_cast<int>(i));
      const ProbeRun& run = r.policies[i];
      ImGui::TextColored(verdict_colour(run.verdict), "%s %+.2f", verdict_name(run.verdict), run.logprob - r.full.logprob);
      if (ImGui::IsItemHovered())
        ImGui::SetTooltip("log-probability of the answer %.3f (full %.3f)\nfirst token %s top-1  ·  %llu evictions",
                          run.logprob, r.full.logprob, run.first_top1 ? "is" : "is not",
                          static_cast<unsigned long long>(run.evictions));
    }
  }
  ImGui::PopFont();
  ImGui::EndTable();
}

}  // namespace kvscope::gui
