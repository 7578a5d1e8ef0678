// `kvscope lab`: which KV cache to pick for a text and a memory budget. A
// sweep of caches (app/core/lab.h) with a progress bar, journaled row by row
// into --out so an interrupted run resumes, then the report (HTML, PNG, CSV,
// JSON: app/core/lab_report.h) and the recommendation.
#include <unistd.h>

#include <atomic>
#include <csignal>
#include <cstdio>
#include <filesystem>
#include <iostream>

#include <fmt/format.h>

#include "app/cli/commands.h"
#include "app/core/lab.h"
#include "app/core/lab_report.h"
#include "app/core/paths.h"
#include "app/core/session.h"

namespace kvscope::cli {

namespace {

std::atomic<bool> g_stop{false};

extern "C" void on_interrupt(int) {
  g_stop.store(true);
  std::signal(SIGINT, SIG_DFL);  // a second Ctrl-C stops at once (the journal keeps every finished row)
}

std::vector<Scenario> lab_scenarios(const LabCommandOptions& o) {
  std::vector<std::filesystem::path> files(o.scenarios.begin(), o.scenarios.end());
  if (o.probes)
    for (const auto& f : scenario_files(std::filesystem::path(assets_dir()) / "scenarios")) files.push_back(f);
  std::vector<Scenario> out;
  for (const auto& f : files) out.push_back(load_scenario(f));
  return out;
}

LabReportInput report_input(const LabJournal& journal, const LabCommandOptions& o, std::string command) {
  if (!journal.baseline)
    throw LabFileError(fmt::format("{}: the baseline never finished, so there is nothing to report; run the sweep",
                                   lab_journal_path(o.out).string()));
  LabReportInput in;
  in.identity = journal.identity;
  in.baseline = *journal.baseline;
  in.rows = journal.rows;
  in.safety.max_kl = o.max_kl;
  in.safety.min_top1 = o.min_top1;
  in.budget = parse_lab_budget(o.budget.empty() ? "25%" : o.budget);
  if (!in.rows.empty()) in.recommendation = recommend_cache(in.rows, in.baseline, *in.budget, in.safety);
  in.command = std::move(command);
  return in;
}

void print_summary(const LabReportInput& in, const std::filesystem::path& dir, bool default_budget) {
  const auto front = pareto_front(in.rows);
  fmt::print("{} caches; on the Pareto front of mean KL against bytes per token:\n", in.rows.size());
  for (size_t i : front) {
    const LabRow& r = in.rows[i];
    fmt::print("  {:<44} {:>7.0f} B/token ({:>5.1f}%)  KL {:<9.3g} top-1 {:6.2f}%\n", r.label(),
               r.eval.run.held_bytes_per_token, 100 * r.eval.run.held_bytes_per_token / in.baseline.bytes_per_token,
               r.eval.divergence.kl_mean, 100 * r.eval.divergence.top1_agreement);
  }
  if (in.recommendation) {
    fmt::print("\n{}", in.recommendation->text);
    if (default_budget) fmt::print("(the budget is the default, 25% of the baseline: --budget to change it)\n");
  }
  fmt::print("\nReport: {}\n", (dir / "report.html").string());
}

// The report into `dir`, then results.json (--json) or the summary on stdout.
int write_and_print(const LabReportInput& in, const LabCommandOptions& o, const std::filesystem::path& dir) {
  write_lab_report(in, dir);
  if (o.json)
    std::cout << lab_report_json(in).dump(2) << "\n";
  else
    print_summary(in, dir, o.budget.empty());
  return 0;
}

}  // namespace

int lab(const LabCommandOptions& o) {
  if (o.out.empty()) throw std::invalid_argument("lab needs a folder for its journal and report: --out DIR");
  if (o.max_kl <= 0) throw std::invalid_argument("--max-kl: must be above 0");
  if (o.min_top1 < 0 || o.min_top1 > 1) throw std::invalid_argument("--min-top1: a fraction, 0 to 1 (0.95 for 95%)");
  if (!o.budget.empty()) (void)parse_lab_budget(o.budget);  // a bad budget fails before an hour of sweep
  const std::filesystem::path dir(o.out);
  const std::string command = "kvscope lab " + std::string(o.text_file.empty() ? "" : "-f " + o.text_file) +
                              " --out " + o.out;

  if (o.report_only) {
    const auto journal = read_lab_journal(dir);
    if (!journal)
      throw std::runtime_error(fmt::format("{}: no journal to report from; run the sweep first (without --report)",
                                           lab_journal_path(dir).string()));
    return write_and_print(report_input(*journal, o, command), o, dir);
  }

  // Everything a person typed is checked before the model loads.
  const LabGrid grid = parse_lab_grid({o.preset, o.storages, o.policies, o.budgets, o.caches});
  LabOptions options;
  options.dir = dir;
  options.text = read_text_file(o.text_file, "lab");
  options.text_path = o.text_file;
  options.fresh = o.fresh;
  options.eval.n_ctx = o.m.n_ctx;
  options.eval.max_chunks = o.max_chunks;
  try {
    options.eval.baseline = parse_cache_spec(o.baseline);
  } catch (const std::invalid_argument& e) {
    throw std::invalid_argument(fmt::format("--baseline {}: {}", o.baseline, e.what()));
  }
  for (const std::string& text : o.m.pins) {
    try {
      options.eval.pins.add(kv::parse_pinned_span(text));
    } catch (const std::invalid_argument& e) {
      throw std::invalid_argument(fmt::format("--pin: {}", e.what()));
    }
  }
  options.scenarios = lab_scenarios(o);

  const EngineOptions engine_o = engine_options(o.m);
  options.model_path = engine_o.model_path;
  Engine engine(engine_o);
  options.caches = grid.specs(o.m.n_ctx ? o.m.n_ctx : engine.n_ctx());

  const bool tty = ::isatty(STDERR_FILENO) && !o.json;
  g_stop.store(false);
  std::signal(SIGINT, on_interrupt);
  size_t last_done = SIZE_MAX;
  auto on_progress = [&](const LabProgress& p) {
    if (tty) {
      const int width = 24;
      const int filled = p.rows_total ? int(width * p.rows_done / p.rows_total) : 0;
      std::fprintf(stderr, "\r\033[K[%s%s] %zu/%zu caches · %s chunk %u/%u · %s elapsed, %s left",
                   std::string(size_t(filled), '#').c_str(), std::string(size_t(width - filled), '.').c_str(),
                   p.rows_done, p.rows_total, p.current.c_str(), p.chunk, p.n_chunks, lab_duration(p.elapsed_s).c_str(),
                   lab_duration(p.eta_s).c_str());
      std::fflush(stderr);
    } else if (p.rows_done != last_done && p.chunk == p.n_chunks && p.current != "baseline") {
      // Into a log: a line per finished cache.
      std::fprintf(stderr, "%zu/%zu caches: %s done, %s elapsed, %s left\n", p.rows_done, p.rows_total,
                   p.current.c_str(), lab_duration(p.elapsed_s).c_str(), lab_duration(p.eta_s).c_str());
      std::fflush(stderr);
    }
    last_done = p.rows_done;
  };
  const LabRunResult result = run_lab(engine, options, on_progress, {}, &g_stop);
  std::signal(SIGINT, SIG_DFL);
  if (tty) std::fprintf(stderr, "\r\033[K");
  if (!result.note.empty()) std::fprintf(stderr, "note: %s\n", result.note.c_str());
  if (result.resumed) std::fprintf(stderr, "resumed: %zu of %zu caches were already in %s\n", result.resumed,
                                   options.caches.size(), lab_journal_path(dir).string().c_str());
  if (result.cancelled) {
    std::fprintf(stderr,
                 "stopped: %zu of %zu caches are in %s; run the same command again to go on from there\n",
                 result.journal.rows.size(), options.caches.size(), lab_journal_path(dir).string().c_str());
    return 130;
  }

  return write_and_print(report_input(result.journal, o, command), o, dir);
}

}  // namespace kvscope::cli
