// The cache lab: the grid parser, budgets, the Pareto front and the
// recommendation on hand-made rows; the journal's reading (torn lines, lies,
// another sweep's); and on the default model, a sweep whose rows equal
// `evaluate_caches`' figures, that resumes, stops when asked, and writes a
// report whose data are those rows.
#include <doctest/doctest.h>

#include <atomic>
#include <cmath>
#include <fstream>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "app/core/lab.h"
#include "app/core/lab_report.h"
#include "tests/app/cli_runner.h"
#include "tests/shared_engine.h"
#include "tests/test_util.h"

using namespace kvscope;
using nlohmann::json;

namespace {

LabRow row(const std::string& spec, double held, double kl, double top1) {
  LabRow r;
  r.eval.run.spec = parse_cache_spec(spec);
  r.eval.run.held_bytes_per_token = held;
  r.eval.run.bytes_per_token = 6912;
  r.eval.divergence.kl_mean = kl;
  r.eval.divergence.top1_agreement = top1;
  r.eval.lost.per_layer = {0.1, 0.2};
  return r;
}

PerplexityRun f16_baseline() {
  PerplexityRun b;
  b.spec = parse_cache_spec("f16");
  b.bytes_per_token = 6912;
  b.ppl = 3.5;
  return b;
}

std::string corpus_text() { return test::read_text(test::data_path("corpus.txt")); }

}  // namespace

TEST_CASE("lab grid: presets, fields, and errors that name the field") {
  const LabGrid quick = parse_lab_grid({"quick", "", "", "", ""});
  CHECK(quick.specs(256).size() == 15);
  const LabGrid standard = parse_lab_grid({});
  const std::vector<CacheSpec> specs = standard.specs(256);
  CHECK(specs.size() == 28);
  CHECK(specs.front().label() == "f16");
  CHECK(specs.back().label() == "kivi2");
  // Budgets at or past the context evict nothing and are left out.
  CHECK(standard.specs(128).size() == 28 - 12);

  const LabGrid custom = parse_lab_grid({"none", "f16; q4,group=8", "none, h2o", "48", "q8 + tova:budget=100; f16"});
  const std::vector<CacheSpec> c = custom.specs(256);
  REQUIRE(c.size() == 5);  // f16, f16+h2o, q4, q4+h2o, q8+tova; "f16" once
  CHECK(c[1].label() == "f16 + h2o:budget=48,recent=24");
  CHECK(c[2].label() == "q4,group=8");
  CHECK(c[4].label() == "q8 + tova:budget=100");

  CHECK_THROWS_WITH_AS(parse_lab_grid({"none", "f16", "none, lru", "64", ""}),
                       doctest::Contains("policies: lru: unknown"), std::invalid_argument);
  CHECK_THROWS_WITH_AS(parse_lab_grid({"none", "f16", "h2o", "64, x", ""}), doctest::Contains("budgets: x"),
                       std::invalid_argument);
  CHECK_THROWS_WITH_AS(parse_lab_grid({"none", "f16 + h2o:budget=4", "none", "", ""}),
                       doctest::Contains("storages: f16 + h2o:budget=4"), std::invalid_argument);
  CHECK_THROWS_WITH_AS(parse_lab_grid({"none", "f16", "h2o", "", ""}), doctest::Contains("budgets: none given"),
                       std::invalid_argument);
  CHECK_THROWS_WITH_AS(parse_lab_grid({"tiny", "", "", "", ""}), doctest::Contains("quick, default, full"),
                       std::invalid_argument);
  CHECK_THROWS_WITH_AS(parse_lab_grid({"none", "", "", "", ""}), doctest::Contains("holds no cache"),
                       std::invalid_argument);
  CHECK_THROWS_WITH_AS(parse_lab_grid({"none", "", "", "", "q9"}), doctest::Contains("caches: q9"),
                       std::invalid_argument);
}

TEST_CASE("lab budgets: shares, bytes per token, a whole cache at a context") {
  CHECK(parse_lab_budget("25%").resolve(6912) == doctest::Approx(1728));
  CHECK(parse_lab_budget("0.25").resolve(6912) == doctest::Approx(1728));
  CHECK(parse_lab_budget("1728").resolve(1) == doctest::Approx(1728));
  CHECK(parse_lab_budget("1.5KiB").resolve(1) == doctest::Approx(1536));
  CHECK(parse_lab_budget("1.5 KiB/token").resolve(1) == doctest::Approx(1536));
  CHECK(parse_lab_budget("2GiB@32768").resolve(1) == doctest::Approx(65536));
  CHECK(lab_duration(-1) == "?");
  CHECK(lab_duration(42.4) == "42s");
  CHECK(lab_duration(185) == "3m05s");
  CHECK(lab_duration(4980) == "1h23m");
  for (const char* bad : {"", "-5", "abc", "5 parsecs", "25%@100", "1GiB@x", "0"})
    CHECK_THROWS_WITH_AS(parse_lab_budget(bad), doctest::Contains("--budget"), std::invalid_argument);
}

TEST_CASE("lab: the Pareto front and the recommendation") {
  std::vector<LabRow> rows = {
      row("f16", 6912, 0, 1.0),                          // 0: the baseline itself
      row("q8", 4032, 1.5e-4, 0.994),                    // 1
      row("q4", 2592, 0.0165, 0.937),                    // 2: dominated by 4
      row("q4 + h2o:budget=128,recent=64", 1296, 0.03, 0.92),  // 3
      row("q8 + h2o:budget=128,recent=64", 2016, 0.015, 0.953),  // 4
      row("f16 + h2o:budget=64,recent=32", 1728, 0.13, 0.84),  // 5: dominated by 3
  };
  CHECK(pareto_front(rows) == std::vector<size_t>{3, 4, 1, 0});
  // By top-1, q4 (0.937 at 2592) is still dominated by 4 (0.953 at 2016).
  CHECK(pareto_front(rows, true) == std::vector<size_t>{3, 4, 1, 0});

  // 25% of 6912 = 1728: rows 3 and 5 fit; 3 is closer, and not safe.
  const LabRecommendation tight = recommend_cache(rows, f16_baseline(), parse_lab_budget("25%"));
  REQUIRE(tight.pick);
  CHECK(*tight.pick == 3);
  CHECK_FALSE(tight.safe);
  REQUIRE(tight.shortfalls.size() == 1);
  CHECK(tight.shortfalls[0] == "top-1 92.0% < 95%");
  REQUIRE(tight.safe_pick);
  CHECK(*tight.safe_pick == 4);
  CHECK(tight.text.find("Nothing in this budget is safe") != std::string::npos);
  CHECK(tight.text.find("q8 + h2o:budget=128,recent=64") != std::string::npos);

  // 30%: row 4 fits and is safe.
  const LabRecommendation roomy = recommend_cache(rows, f16_baseline(), parse_lab_budget("30%"));
  REQUIRE(roomy.pick);
  CHECK(*roomy.pick == 4);
  CHECK(roomy.safe);
  CHECK(roomy.text.find("Recommended: q8 + h2o") != std::string::npos);

  // A lost probe makes a cache unsafe, and says which.
  rows[4].probes = {{"lily-red-ball", Verdict::Lost, -9, -1}};
  const LabRecommendation lost = recommend_cache(rows, f16_baseline(), parse_lab_budget("30%"));
  CHECK_FALSE(lost.safe);
  CHECK(lost.shortfalls.back() == "loses the fact of lily-red-ball");

  // Nothing fits.
  const LabRecommendation none = recommend_cache(rows, f16_baseline(), parse_lab_budget("100"));
  CHECK_FALSE(none.pick);
  CHECK(none.text.find("Nothing measured fits") != std::string::npos);
}

TEST_CASE("lab journal: rows round-trip, a torn last line is dropped, a lie is an error with its line") {
  LabRow r = row("q4 + snapkv:budget=64", 648, 0.14, 0.86);
  r.eval.lost.regretted = {{1, 40, 123, 0.5}};
  r.probes = {{"bird-name", Verdict::Degraded, -2.5, -1.0}};
  r.seconds = 12.5;
  const LabRow back = lab_row_from_json(json::parse(lab_row_json(r).dump()));
  CHECK(back.label() == r.label());
  CHECK(back.eval.divergence.kl_mean == r.eval.divergence.kl_mean);
  CHECK(back.eval.lost.regretted.at(0).position == 40);
  CHECK(back.probes.at(0).verdict == Verdict::Degraded);
  CHECK(lab_row_json(back) == lab_row_json(r));

  LabIdentity id;
  id.model = "m.gguf";
  id.text = "t.txt";
  id.text_fnv1a = fnv1a64("hello");
  id.n_ctx = 256;
  id.baseline = "f16";
  const std::string header = id.json().dump() + "\n";
  const std::string line = json{{"row", lab_row_json(r)}}.dump() + "\n";

  const LabJournal whole = parse_lab_journal(header + line + line, "rows.jsonl");
  CHECK(whole.rows.size() == 2);
  CHECK_FALSE(whole.dropped_torn_line);
  const LabJournal torn = parse_lab_journal(header + line + line.substr(0, line.size() / 2), "rows.jsonl");
  CHECK(torn.rows.size() == 1);
  CHECK(torn.dropped_torn_line);

  CHECK_THROWS_WITH_AS(parse_lab_journal(header + "{oops\n" + line, "rows.jsonl"),
                       doctest::Contains("rows.jsonl line 2: not JSON"), LabFileError);
  json lie = json::parse(line);
  lie["row"]["kl_mean"] = "small";
  CHECK_THROWS_WITH_AS(parse_lab_journal(header + lie.dump() + "\n", "rows.jsonl"),
                       doctest::Contains("line 2: row: \"kl_mean\" should be a number"), LabFileError);
  lie = json::parse(line);
  lie["row"]["top1_agreement"] = 7;
  CHECK_THROWS_WITH_AS(parse_lab_journal(header + lie.dump() + "\n", "rows.jsonl"),
                       doctest::Contains("top1_agreement"), LabFileError);
  lie = json::parse(line);
  lie["row"]["run"]["cache"] = "q4 + nonsense";
  CHECK_THROWS_AS(parse_lab_journal(header + lie.dump() + "\n", "rows.jsonl"), LabFileError);
  CHECK_THROWS_WITH_AS(parse_lab_journal("", "rows.jsonl"), doctest::Contains("no header"), LabFileError);

  LabIdentity other = id;
  other.n_ctx = 128;
  other.device = "another GPU";
  CHECK(id.differences(id).empty());
  CHECK(id.differences(other) == "context 256, now 128");
}

TEST_CASE("lab journal: ten thousand mangled journals are read or refused with LabFileError, nothing else") {
  // A journal is a file on disk a person may edit, truncate or be sent: every
  // mutation of a valid one must read, or be refused with the one error type
  // whose message names the line (std::bad_alloc, a crash or another
  // exception type would fail here; the sanitized run checks memory).
  LabRow r = row("q4 + snapkv:budget=64", 648, 0.14, 0.86);
  r.eval.lost.regretted = {{1, 40, 123, 0.5}};
  r.probes = {{"bird-name", Verdict::Degraded, -2.5, -1.0}};
  LabIdentity id;
  id.model = "m.gguf";
  id.pins = {"0:16"};
  id.scenarios = {"bird-name"};
  const std::string valid = id.json().dump() + "\n" + json{{"baseline_run", {{"cache", "f16"}, {"ppl", 3.5},
      {"ppl_stderr", 0.1}, {"bytes_per_token", 6912}, {"held_bytes_per_token", 6912}, {"peak_live_entries", 9216},
      {"cache_bytes", 1769472}, {"tokens_evaluated", 512}, {"evictions", 0}, {"recalls", 0},
      {"spill_host_bytes", 0}, {"seconds", 1.5}}}}.dump() + "\n" + json{{"row", lab_row_json(r)}}.dump() + "\n";
  const LabJournal clean = parse_lab_journal(valid, "rows.jsonl");
  REQUIRE(clean.baseline);
  REQUIRE(clean.rows.size() == 1);
  uint64_t state = 0x9e3779b97f4a7c15ull;
  auto next = [&] {
    state ^= state << 13;
    state ^= state >> 7;
    state ^= state << 17;
    return state;
  };
  const std::string alphabet = "{}[]\":,0123456789-.eE truefalsn\\\n\x00\xff";
  size_t read = 0, refused = 0;
  for (int i = 0; i < 10000; ++i) {
    std::string text = valid;
    const int edits = 1 + int(next() % 4);
    for (int e = 0; e < edits && !text.empty(); ++e) {
      const size_t at = next() % text.size();
      switch (next() % 4) {
        case 0: text[at] = alphabet[next() % alphabet.size()]; break;
        case 1: text.erase(at, 1 + next() % 8); break;
        case 2: text.insert(at, 1, alphabet[next() % alphabet.size()]); break;
        default: text.resize(at); break;
      }
    }
    try {
      const LabJournal j = parse_lab_journal(text, "rows.jsonl");
      for (const LabRow& x : j.rows) (void)lab_row_json(x).dump();
      ++read;
    } catch (const LabFileError&) {
      ++refused;
    }
  }
  MESSAGE(read << " mangled journals read, " << refused << " refused");
  CHECK(read + refused == 10000);
  CHECK(refused > 1000);
}

TEST_CASE("lab on the default model: rows equal eval's figures, resume, stop, report") {
  Engine& engine = test::shared_engine();
  const test::TempDir dir;
  LabOptions options;
  options.dir = dir.file("lab");
  options.model_path = test::model_path();
  options.text_path = "corpus.txt";
  options.text = corpus_text();
  options.eval.n_ctx = 128;
  options.eval.max_chunks = 2;
  options.caches = {parse_cache_spec("q8"), parse_cache_spec("h2o:budget=32,recent=16")};

  std::vector<LabProgress> seen;
  std::vector<std::string> rows_seen;
  const LabRunResult first = run_lab(
      engine, options, [&](const LabProgress& p) { seen.push_back(p); },
      [&](const LabRow& r) { rows_seen.push_back(r.label()); });
  REQUIRE(first.journal.rows.size() == 2);
  CHECK(first.resumed == 0);
  CHECK_FALSE(first.cancelled);
  CHECK(rows_seen == std::vector<std::string>{"q8", "f16 + h2o:budget=32,recent=16"});
  REQUIRE(!seen.empty());
  CHECK(seen.front().current == "baseline");
  CHECK(seen.back().rows_done == 2);
  CHECK(seen.back().rows_total == 2);
  CHECK(seen.back().eta_s == doctest::Approx(0));

  // The same figures as `kvscope eval` measures for those caches.
  EvaluationOptions eo = options.eval;
  eo.tests = options.caches;
  const EvaluationReport report = evaluate_caches(engine, engine.tokenizer().encode(options.text, true), eo);
  for (size_t i = 0; i < 2; ++i) {
    const LabRow& r = first.journal.rows[i];
    const CacheEvaluation& e = report.tests[i];
    CHECK(r.eval.divergence.kl_mean == doctest::Approx(e.divergence.kl_mean).epsilon(1e-9));
    CHECK(r.eval.divergence.top1_agreement == e.divergence.top1_agreement);
    CHECK(r.eval.run.ppl == doctest::Approx(e.run.ppl).epsilon(1e-9));
    CHECK(r.eval.lost.mean == doctest::Approx(e.lost.mean).epsilon(1e-9));
  }
  // Held bytes: q8 holds every position; h2o at 32 of 128 a quarter of them.
  CHECK(first.journal.rows[0].eval.run.held_bytes_per_token == first.journal.rows[0].eval.run.bytes_per_token);
  CHECK(first.journal.rows[1].eval.run.held_bytes_per_token ==
        doctest::Approx(first.journal.rows[1].eval.run.bytes_per_token * 32 / 128));

  // Resumed: the two rows are read back, only the new cache runs.
  options.caches.push_back(parse_cache_spec("q4"));
  rows_seen.clear();
  const LabRunResult second = run_lab(engine, options, {}, [&](const LabRow& r) { rows_seen.push_back(r.label()); });
  CHECK(second.resumed == 2);
  REQUIRE(second.journal.rows.size() == 3);
  CHECK(rows_seen == std::vector<std::string>{"q8", "f16 + h2o:budget=32,recent=16", "q4"});
  CHECK(second.journal.rows[0].eval.divergence.kl_mean == first.journal.rows[0].eval.divergence.kl_mean);
  const auto journal = read_lab_journal(options.dir);
  REQUIRE(journal);
  CHECK(journal->rows.size() == 3);
  CHECK(journal->baseline.has_value());
  // Everything resumed: nothing runs, and the progress still says so, with the baseline's bytes.
  std::vector<LabProgress> resumed_progress;
  const LabRunResult all = run_lab(engine, options, [&](const LabProgress& p) { resumed_progress.push_back(p); });
  CHECK(all.resumed == 3);
  REQUIRE(!resumed_progress.empty());
  CHECK(resumed_progress.back().current == "done");
  CHECK(resumed_progress.back().rows_done == 3);
  CHECK(resumed_progress.back().baseline_bytes_per_token == journal->baseline->bytes_per_token);

  // A crash while writing a row: the torn line is dropped and that cache runs again.
  {
    std::ofstream(lab_journal_path(options.dir), std::ios::app) << "{\"row\": {\"run\": {\"cache\": \"q4 + h2";
  }
  options.caches.push_back(parse_cache_spec("q4 + h2o:budget=32,recent=16"));
  std::atomic<bool> stop{false};
  // Stopped during the first chunk of that cache: nothing of it is kept.
  const LabRunResult stopped = run_lab(
      engine, options, [&](const LabProgress& p) {
        if (p.current != "baseline" && p.chunk == 1) stop = true;
      },
      {}, &stop);
  CHECK(stopped.cancelled);
  CHECK(stopped.resumed == 3);
  CHECK(stopped.note.find("cut short") != std::string::npos);
  CHECK(read_lab_journal(options.dir)->rows.size() == 3);

  // Another sweep's journal is refused, or with fresh set aside.
  LabOptions other = options;
  other.eval.max_chunks = 3;
  CHECK_THROWS_WITH_AS(run_lab(engine, other), doctest::Contains("another sweep's (chunks 2, now 3; max chunks 2, now 3)"),
                       LabFileError);
  // A cache the model cannot take is refused before anything runs.
  other.caches = {parse_cache_spec("h2o:budget=500")};
  CHECK_THROWS_WITH_AS(run_lab(engine, other), doctest::Contains("h2o:budget=500"), std::invalid_argument);

  // The report: its data are the journal's rows.
  LabReportInput in;
  in.identity = journal->identity;
  in.baseline = *journal->baseline;
  in.rows = journal->rows;
  in.budget = parse_lab_budget("30%");
  in.recommendation = recommend_cache(in.rows, in.baseline, *in.budget);
  const auto written = write_lab_report(in, dir.file("report"));
  CHECK(written.size() == 9);  // html, 3 charts x (svg, png), csv, json (no probes: no probe chart)
  const json data = json::parse(test::read_text(dir.file("report/results.json")));
  REQUIRE(data["rows"].size() == 3);
  for (size_t i = 0; i < 3; ++i) {
    CHECK(data["rows"][i]["kl_mean"].get<double>() == in.rows[i].eval.divergence.kl_mean);
    CHECK(data["rows"][i]["label"] == in.rows[i].label());
  }
  const std::string csv = test::read_text(dir.file("report/results.csv"));
  CHECK(std::count(csv.begin(), csv.end(), '\n') == 4);
  const std::string html = test::read_text(dir.file("report/report.html"));
  CHECK(html.find("<svg") != std::string::npos);
  CHECK(html.find("http") == html.find("http://www.w3.org/2000/svg"));  // nothing fetched: only the SVG namespace
  const std::string png = test::read_text(dir.file("report/kl-vs-bytes.png"));
  REQUIRE(png.size() > 1000);
  CHECK(png.substr(1, 3) == "PNG");
}

TEST_CASE("kvscope lab: the command's sweep, its report, and its errors") {
  const test::TempDir dir;
  const std::string out = dir.file("lab");
  const auto r = test::kvscope_cli(fmt::format(
      "lab -f {} -c 128 --max-chunks 2 --out {} --preset none --storages 'q8' --policies none,h2o --budgets 32 "
      "--scenario {}/scenarios/lily-red-ball.json --budget 40%",
      test::data_path("corpus.txt"), out, KVSCOPE_SOURCE_DIR "/assets"));
  REQUIRE_MESSAGE(r.code == 0, r.out);
  CHECK(r.out.find("2/2 caches") != std::string::npos);
  CHECK(r.out.find("Budget: 2765 bytes per token (40% of the baseline's 6912)") != std::string::npos);
  CHECK(r.out.find("Report: " + out + "/report.html") != std::string::npos);
  const json data = json::parse(test::read_text(out + "/results.json"));
  REQUIRE(data["rows"].size() == 2);
  CHECK(data["rows"][1]["probes"].size() == 1);
  CHECK(data["rows"][1]["probes"][0]["scenario"] == "lily-red-ball");
  CHECK(std::filesystem::exists(out + "/probes.png"));

  // Run again: everything is resumed, nothing runs, the same report.
  const auto again = test::kvscope_cli(fmt::format(
      "lab -f {} -c 128 --max-chunks 2 --out {} --preset none --storages 'q8' --policies none,h2o --budgets 32 "
      "--scenario {}/scenarios/lily-red-ball.json --budget 40%",
      test::data_path("corpus.txt"), out, KVSCOPE_SOURCE_DIR "/assets"));
  REQUIRE_MESSAGE(again.code == 0, again.out);
  CHECK(again.out.find("resumed: 2 of 2 caches") != std::string::npos);
  // The report alone, from the journal, no model.
  const auto report = test::kvscope_cli(fmt::format("lab --out {} --report --budget 10% --json", out));
  REQUIRE_MESSAGE(report.code == 0, report.out);
  CHECK(test::last_json(report.out)["recommendation"]["budget"] == "10%");

  for (const auto& [args, message] : std::vector<std::pair<std::string, std::string>>{
           {"lab -f x.txt", "--out DIR"},
           {"lab --out " + out + " --budget lots", "--budget lots"},
           {"lab --out " + out + " --policies h2o,lru -f " + test::data_path("corpus.txt"), "policies: lru: unknown"},
           {"lab --out " + dir.file("none") + " --report", "no journal to report from"},
       }) {
    const auto bad = test::kvscope_cli(args);
    CHECK_MESSAGE(bad.code == 1, args);
    CHECK_MESSAGE(bad.out.find(message) != std::string::npos, bad.out);
    CHECK(std::count(bad.out.begin(), bad.out.end(), '\n') == 1);
  }
}
