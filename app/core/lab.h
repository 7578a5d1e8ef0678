// The cache lab: which KV cache to pick for a text and a memory budget.
//
// A sweep measures a grid of caches (storages × policies × budgets, or a
// preset) against the baseline over a text, through the same Evaluator as
// `kvscope eval`, one cache at a time, and appends each cache's figures as a
// line of a JSONL journal the moment it finishes. A sweep stopped at any
// point (Ctrl-C, a crash, a closed window) resumes from the journal: the
// caches already there are not run again. The CLI (`kvscope lab`) and the
// window's Lab panel run this same code: one grid parser, one journal, one
// recommendation.
//
// Memory is counted as what a cache holds per token of context
// (PerplexityRun::held_bytes_per_token): every scale, min and f16 window of
// the format, times the share of entries an evicting policy keeps.
//
// Journal (DIR/rows.jsonl), one JSON object per line:
//   {"kvscope_lab": 1, "model": ..., "model_bytes": N, "text": ..., "text_fnv1a": "hex",
//    "n_tokens": N, "n_ctx": N, "n_chunks": N, "max_chunks": N, "baseline": "f16",
//    "pins": [...], "scenarios": [...], "device": ...}                      the sweep it belongs to
//   {"baseline_run": {...}}                                                 the baseline's figures
//   {"row": {...}}                                                          one cache, every figure
// A last line cut short (the process died while writing it) is dropped on
// resume; any other line that does not read is an error naming the line.
#pragma once
#include <atomic>
#include <cstdint>
#include <filesystem>
#include <functional>
#include <optional>
#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json.hpp>

#include "app/core/cache_spec.h"
#include "app/core/evaluation.h"
#include "app/core/probe.h"

namespace kvscope {

// ---------------------------------------------------------------- the grid

// What a sweep measures, as a person writes it (CLI flags, the panel's
// fields). Lists are separated by ';' (storages, caches: a storage holds
// commas) or ',' (policies, budgets).
struct LabGridText {
  std::string preset = "default";  // quick | default | full | none (only what the fields below name)
  std::string storages;            // "f16; q8; q4,group=8" (empty: the preset's)
  std::string policies;            // "none, h2o, snapkv" (none: the storage alone; empty: the preset's)
  std::string budgets;             // "64, 128" (empty: the preset's)
  std::string caches;              // whole cache specs, added as they are: "q4 + h2o:budget=100; k=q8,v=q4"
};

struct LabGrid {
  std::vector<std::string> storages;  // storage specs (the cache-spec grammar's storage part)
  std::vector<std::string> policies;  // "none" or a policy name of kv::policy_names()
  std::vector<uint32_t> budgets;
  std::vector<CacheSpec> caches;      // added as given

  // Every cache of the grid at a context of n_ctx: each storage alone (when
  // policies has "none"), and with each policy at each budget below n_ctx
  // that the policy has a sweep form for (kv::policy_at_budget); then the
  // caches; duplicates once, in that order.
  std::vector<CacheSpec> specs(uint32_t n_ctx) const;
};

// The presets' names and what each holds, for --help and the panel.
std::vector<std::string_view> lab_preset_names();
std::string lab_preset_description(std::string_view preset);

// Throws std::invalid_argument naming the field and the item that is wrong.
LabGrid parse_lab_grid(const LabGridText& text);

// ---------------------------------------------------------------- rows

// One scenario under one cache: its verdict against the baseline cache.
struct LabProbe {
  std::string scenario;
  Verdict verdict = Verdict::Retained;
  double logprob = 0;       // of the answer, under this cache
  double full_logprob = 0;  // under the baseline cache
};

struct LabRow {
  CacheEvaluation eval;
  std::vector<LabProbe> probes;  // one per scenario of the sweep, in its order
  double seconds = 0;            // wall time of the row, probes included
  std::string label() const { return eval.run.spec.label(); }
  // True when the row's cache has an eviction policy.
  bool evicting() const { return !eval.run.spec.policy.empty() || !eval.run.spec.on_full.empty(); }
  size_t probes_lost() const;
  size_t probes_degraded() const;
};

nlohmann::json lab_row_json(const LabRow& row);
// Throws LabFileError (below) for anything that is not a row as written.
LabRow lab_row_from_json(const nlohmann::json& j);

// ---------------------------------------------------------------- journal

// The journal does not read; the message names the file, the line, and what to do.
struct LabFileError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

// Which sweep a journal belongs to: a resumed sweep must measure the same
// thing as the one it continues.
struct LabIdentity {
  std::string model;        // the file's path as given
  uint64_t model_bytes = 0;
  std::string text;         // the text file's path as given
  uint64_t text_fnv1a = 0;  // of the text's bytes
  uint64_t n_tokens = 0;
  uint32_t n_ctx = 0;
  uint32_t n_chunks = 0;
  uint32_t max_chunks = 0;
  std::string baseline;      // the baseline's label
  std::vector<std::string> pins;       // "START:END"
  std::vector<std::string> scenarios;  // scenario names, in order
  std::string device;        // informative: a resume on another device is allowed and said

  nlohmann::json json() const;
  static LabIdentity from_json(const nlohmann::json& j);  // throws LabFileError
  // What differs from `other` (device excepted), as "context 256, now 128; ..."; empty: the same sweep.
  std::string differences(const LabIdentity& other) const;
};

uint64_t fnv1a64(std::string_view bytes);

struct LabJournal {
  LabIdentity identity;
  std::optional<PerplexityRun> baseline;
  std::vector<LabRow> rows;
  bool dropped_torn_line = false;  // the last line was cut short and left out
};

// Reads a journal's text; `source` names it in errors. Throws LabFileError.
LabJournal parse_lab_journal(std::string_view text, const std::string& source);
// Reads DIR/rows.jsonl; nullopt when there is none.
std::optional<LabJournal> read_lab_journal(const std::filesystem::path& dir);

// Appends lines to DIR/rows.jsonl, each written whole and synced to disk
// before the call returns, so a crash loses at most the row being measured.
class LabJournalWriter {
 public:
  // Starts a journal (replacing none: the file must not exist), or continues
  // `existing` (rewriting it first without a torn last line).
  LabJournalWriter(const std::filesystem::path& dir, const LabIdentity& identity);
  LabJournalWriter(const std::filesystem::path& dir, const LabJournal& existing);
  void baseline(const PerplexityRun& run);
  void row(const LabRow& row);
  const std::filesystem::path& path() const { return path_; }

 private:
  void append(const nlohmann::json& line);
  std::filesystem::path path_;
};

std::filesystem::path lab_journal_path(const std::filesystem::path& dir);

// ---------------------------------------------------------------- the sweep

struct LabProgress {
  size_t rows_done = 0, rows_total = 0;  // of the grid, resumed rows counted as done
  size_t rows_resumed = 0;
  std::string current;                   // the cache running now ("baseline" first)
  uint32_t chunk = 0, n_chunks = 0;      // of the current cache
  double elapsed_s = 0;                  // this run
  double eta_s = -1;                     // left, from this run's pace per chunk; -1: not known yet
  double baseline_bytes_per_token = 0;   // once the baseline ran (0 before)
};

// A time for progress lines: "42s", "3m05s", "1h23m"; "?" for a negative one (not known yet).
std::string lab_duration(double seconds);

struct LabOptions {
  std::filesystem::path dir;          // where the journal goes (created)
  std::string model_path, text_path;  // for the identity
  std::string text;                   // the text itself
  EvaluationOptions eval;             // n_ctx, max_chunks, baseline, pins (tests unused)
  std::vector<CacheSpec> caches;      // the grid's (LabGrid::specs)
  std::vector<Scenario> scenarios;    // probes run under every cache; may be empty
  bool fresh = false;                 // a journal that belongs to another sweep is moved aside, not an error
};

struct LabRunResult {
  LabJournal journal;           // everything measured, resumed rows included, in grid order
  size_t resumed = 0;           // rows read back instead of run
  bool cancelled = false;
  std::string note;             // what the run decided on the way (a journal moved aside, another device)
};

// Runs the caches of the grid that the journal does not have yet. Calls
// on_progress after every chunk and row, and on_row with each finished row
// (resumed rows first, at once). Stops between chunks when `cancel` becomes
// true (the journal keeps every finished row). Throws LabFileError when the
// journal belongs to another sweep and `fresh` is false, std::invalid_argument
// for a cache the model cannot take (before anything runs) or a text too short.
LabRunResult run_lab(Engine& engine, const LabOptions& options,
                     const std::function<void(const LabProgress&)>& on_progress = {},
                     const std::function<void(const LabRow&)>& on_row = {},
                     const std::atomic<bool>* cancel = nullptr);

// Every probe of `scenarios` under `spec` against the baseline cache's
// verdicts (full_runs, one per scenario, from probe_full_runs).
// Each scenario holds the engine in turn (`turns`, when shared).
std::vector<ProbeRun> probe_full_runs(Engine& engine, const CacheSpec& baseline, const std::vector<Scenario>& scenarios,
                                      EngineTurns* turns = nullptr);
std::vector<LabProbe> probe_cache(Engine& engine, const CacheSpec& spec, const std::vector<Scenario>& scenarios,
                                  const std::vector<ProbeRun>& full_runs, EngineTurns* turns = nullptr);

// ---------------------------------------------------------------- reading it

// Indices of the rows on the Pareto front of (held bytes per token: less is
// better, `kl_mean`: less is better) — or, with `by_top1`, top-1 agreement
// (more is better): no other row is at least as good on both and better on
// one. Sorted by bytes.
std::vector<size_t> pareto_front(const std::vector<LabRow>& rows, bool by_top1 = false);

// A memory budget per token of context: "25%" or "0.25" (of the baseline's
// bytes per token), "1728" / "1.5KiB" (bytes per token), "2GiB@32768" (the
// cache's whole size at that context). Throws std::invalid_argument.
struct LabBudget {
  double fraction = 0;        // of the baseline, when given as one
  double bytes_per_token = 0; // when given as bytes
  std::string text;
  double resolve(double baseline_bytes_per_token) const;
};
LabBudget parse_lab_budget(std::string_view text);

// When a cache counts as safe: mean KL at most max_kl, top-1 agreement at
// least min_top1, and no probe lost.
struct LabSafety {
  double max_kl = 0.05;
  double min_top1 = 0.95;
};

struct LabRecommendation {
  double budget_bytes_per_token = 0;
  std::optional<size_t> pick;       // the row: within budget, lowest mean KL (on the KL front)
  bool safe = false;                // the pick meets the safety bar
  std::vector<std::string> shortfalls;  // why the pick is not safe ("top-1 92.2% < 95%", "loses lily-red-ball")
  std::optional<size_t> safe_pick;  // the smallest safe row, when the pick is not safe (above the budget)
  std::string text;                 // the whole verdict, a few lines, as the CLI prints it
};

LabRecommendation recommend_cache(const std::vector<LabRow>& rows, const PerplexityRun& baseline,
                                  const LabBudget& budget, const LabSafety& safety = {});

}  // namespace kvscope
