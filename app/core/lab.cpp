#include "app/core/lab.h"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cmath>
#include <charconv>
#include <cstring>
#include <fstream>
#include <set>
#include <sstream>

#include <fmt/format.h>

#include "app/core/atomic_file.h"
#include "app/core/worker.h"
#include "kv/policy.h"

namespace kvscope {

using nlohmann::json;

// ============================================================== the grid

namespace {

struct Preset {
  std::string_view name, description;
  std::vector<std::string> storages, policies;
  std::vector<uint32_t> budgets;
  std::vector<std::string> caches;  // whole specs added as they are
};

const std::vector<Preset>& presets() {
  static const std::vector<Preset> all = {
      {"quick", "f16, q8, q4 alone and with h2o and snapkv at budgets 64 and 128 (15 caches)",
       {"f16", "q8", "q4"}, {"none", "h2o", "snapkv"}, {64, 128}, {}},
      {"default",
       "f16, q8, q4 alone and with h2o, snapkv, tova and streamingllm at budgets 64 and 128; kivi2 (28 caches)",
       {"f16", "q8", "q4"}, {"none", "h2o", "snapkv", "tova", "streamingllm"}, {64, 128}, {"kivi2"}},
      {"full", "f16, q8, q4 alone and with every policy at budgets 32, 64 and 128; f32, kivi2 (59 caches)",
       {"f16", "q8", "q4"}, {"none", "*"}, {32, 64, 128}, {"f32", "kivi2"}},
      {"none", "only the storages, policies, budgets and caches given", {}, {}, {}, {}},
  };
  return all;
}

const Preset& preset(std::string_view name) {
  for (const Preset& p : presets())
    if (p.name == name) return p;
  std::string names;
  for (const Preset& p : presets()) names += (names.empty() ? "" : ", ") + std::string(p.name);
  throw std::invalid_argument(fmt::format("preset {}: unknown; the presets are {}", name, names));
}

std::string trim(std::string_view s) {
  while (!s.empty() && std::isspace(static_cast<unsigned char>(s.front()))) s.remove_prefix(1);
  while (!s.empty() && std::isspace(static_cast<unsigned char>(s.back()))) s.remove_suffix(1);
  return std::string(s);
}

std::vector<std::string> split(std::string_view text, char sep) {
  std::vector<std::string> out;
  size_t start = 0;
  while (start <= text.size()) {
    const size_t end = std::min(text.find(sep, start), text.size());
    std::string item = trim(text.substr(start, end - start));
    if (!item.empty()) out.push_back(std::move(item));
    start = end + 1;
  }
  return out;
}

// A storage's kv formats are not kivi2-keys-with-a-policy-that-spills etc.:
// the spec's own validator decides later; here only the grammar.
CacheSpec storage_spec(const std::string& storage) {
  CacheSpec s = parse_cache_spec(storage);
  if (!s.policy.empty() || !s.on_full.empty() || s.spill || !s.pins.empty())
    throw std::invalid_argument("a storage names formats and a group only (a policy goes in policies, a whole "
                                "cache in caches)");
  return s;
}

}  // namespace

std::vector<std::string_view> lab_preset_names() {
  std::vector<std::string_view> names;
  for (const Preset& p : presets()) names.push_back(p.name);
  return names;
}

std::string lab_preset_description(std::string_view name) { return std::string(preset(name).description); }

LabGrid parse_lab_grid(const LabGridText& text) {
  const Preset& p = preset(trim(text.preset).empty() ? "default" : trim(text.preset));
  LabGrid grid;
  const std::vector<std::string> storages = text.storages.empty() ? p.storages : split(text.storages, ';');
  for (const std::string& s : storages) {
    try {
      grid.storages.push_back(storage_spec(s).name());
    } catch (const std::invalid_argument& e) {
      throw std::invalid_argument(fmt::format("storages: {}: {}", s, e.what()));
    }
  }
  const std::vector<std::string> policies = text.policies.empty() ? p.policies : split(text.policies, ',');
  for (const std::string& name : policies) {
    if (name == "none") {
      grid.policies.push_back(name);
      continue;
    }
    if (name == "*") {  // every policy with a sweep form
      for (std::string_view n : kv::policy_names())
        if (kv::policy_at_budget(n, 64)) grid.policies.emplace_back(n);
      continue;
    }
    const auto names = kv::policy_names();
    if (std::find(names.begin(), names.end(), name) == names.end()) {
      std::string known = "none";
      for (std::string_view n : names)
        if (kv::policy_at_budget(n, 64)) known += ", " + std::string(n);
      throw std::invalid_argument(fmt::format("policies: {}: unknown; give policy names ({}), or whole caches in "
                                              "caches",
                                              name, known));
    }
    if (!kv::policy_at_budget(name, 64))
      throw std::invalid_argument(fmt::format(
          "policies: {}: has no budget to sweep (it keeps every token); list 'none' for the storage alone", name));
    grid.policies.push_back(name);
  }
  const std::vector<std::string> budgets =
      text.budgets.empty() ? std::vector<std::string>{} : split(text.budgets, ',');
  if (text.budgets.empty()) grid.budgets = p.budgets;
  for (const std::string& b : budgets) {
    uint32_t v = 0;
    const char* end = b.data() + b.size();
    const auto [ptr, ec] = std::from_chars(b.data(), end, v);
    if (ec != std::errc() || ptr != end || v == 0)
      throw std::invalid_argument(fmt::format("budgets: {}: expected a whole number of tokens (per kv head), "
                                              "at least 1",
                                              b));
    grid.budgets.push_back(v);
  }
  std::vector<std::string> caches = p.caches;
  for (std::string& c : split(text.caches, ';')) caches.push_back(std::move(c));
  for (const std::string& c : caches) {
    try {
      CacheSpec s = parse_cache_spec(c);
      s.check();
      grid.caches.push_back(std::move(s));
    } catch (const std::invalid_argument& e) {
      throw std::invalid_argument(fmt::format("caches: {}: {}", c, e.what()));
    }
  }
  const bool any_policy = std::any_of(grid.policies.begin(), grid.policies.end(),
                                      [](const std::string& n) { return n != "none"; });
  if (any_policy && grid.budgets.empty())
    throw std::invalid_argument("budgets: none given, and policies need a budget (for example budgets 64,128)");
  if (grid.specs(UINT32_MAX).empty())
    throw std::invalid_argument("the grid holds no cache: name storages (and policies), or caches");
  return grid;
}

std::vector<CacheSpec> LabGrid::specs(uint32_t n_ctx) const {
  std::vector<CacheSpec> out;
  std::set<std::string> seen;
  auto add = [&](CacheSpec s) {
    if (seen.insert(s.label()).second) out.push_back(std::move(s));
  };
  for (const std::string& storage : storages) {
    const CacheSpec base = parse_cache_spec(storage);
    for (const std::string& policy : policies) {
      if (policy == "none") {
        add(base);
        continue;
      }
      for (uint32_t b : budgets) {
        if (b >= n_ctx) continue;  // a budget of the whole context evicts nothing
        if (auto text = kv::policy_at_budget(policy, b)) {
          CacheSpec s = base;
          s.policy = kv::parse_policy_spec(*text).text();
          add(std::move(s));
        }
      }
    }
  }
  for (const CacheSpec& c : caches) add(c);
  return out;
}

// ============================================================== rows

size_t LabRow::probes_lost() const {
  return static_cast<size_t>(
      std::count_if(probes.begin(), probes.end(), [](const LabProbe& p) { return p.verdict == Verdict::Lost; }));
}
size_t LabRow::probes_degraded() const {
  return static_cast<size_t>(
      std::count_if(probes.begin(), probes.end(), [](const LabProbe& p) { return p.verdict == Verdict::Degraded; }));
}

namespace {

// Reading what a journal holds, every field checked for its type: a journal
// is a file a person may have edited, truncated or been sent.
struct Reader {
  const json& j;
  std::string where;

  [[noreturn]] void fail(std::string_view key, std::string_view expected) const {
    throw LabFileError(fmt::format("{}: \"{}\" {}", where, key, expected));
  }
  const json& at(std::string_view key) const {
    if (!j.is_object()) throw LabFileError(fmt::format("{}: expected an object", where));
    const auto it = j.find(key);
    if (it == j.end()) fail(key, "is missing");
    return *it;
  }
  double number(std::string_view key) const {
    const json& v = at(key);
    if (!v.is_number()) fail(key, "should be a number");
    const double d = v.get<double>();
    if (!std::isfinite(d)) fail(key, "should be a finite number");
    return d;
  }
  double non_negative(std::string_view key) const {
    const double d = number(key);
    if (d < 0) fail(key, "should not be negative");
    return d;
  }
  uint64_t count(std::string_view key, uint64_t max = UINT64_MAX) const {
    const json& v = at(key);
    if (!v.is_number_unsigned()) fail(key, "should be a whole number, not negative");
    const uint64_t n = v.get<uint64_t>();
    if (n > max) fail(key, fmt::format("is {}, more than {}", n, max));
    return n;
  }
  std::string string(std::string_view key) const {
    const json& v = at(key);
    if (!v.is_string()) fail(key, "should be a string");
    return v.get<std::string>();
  }
  const json& array(std::string_view key, size_t max) const {
    const json& v = at(key);
    if (!v.is_array()) fail(key, "should be an array");
    if (v.size() > max) fail(key, fmt::format("has {} items, more than {}", v.size(), max));
    return v;
  }
  Reader sub(const json& v, std::string_view name) const { return Reader{v, where + "." + std::string(name)}; }
};

constexpr size_t kMaxLayers = 4096;      // per-layer arrays
constexpr size_t kMaxListed = 1u << 16;  // regretted evictions, probes, pins, scenarios

json run_json(const PerplexityRun& r) {
  return json{{"cache", r.spec.label()},
              {"ppl", r.ppl},
              {"ppl_stderr", r.ppl_stderr},
              {"bytes_per_token", r.bytes_per_token},
              {"held_bytes_per_token", r.held_bytes_per_token},
              {"peak_live_entries", r.peak_live_entries},
              {"cache_bytes", r.cache_bytes},
              {"tokens_evaluated", r.tokens_evaluated},
              {"evictions", r.evictions},
              {"recalls", r.recalls},
              {"spill_host_bytes", r.spill_peak_bytes},
              {"seconds", r.seconds}};
}

PerplexityRun run_from(const Reader& r) {
  PerplexityRun run;
  const std::string cache = r.string("cache");
  try {
    run.spec = parse_cache_spec(cache);
  } catch (const std::invalid_argument& e) {
    throw LabFileError(fmt::format("{}: \"cache\" {}: {}", r.where, cache, e.what()));
  }
  run.ppl = r.non_negative("ppl");
  run.ppl_stderr = r.non_negative("ppl_stderr");
  run.bytes_per_token = r.non_negative("bytes_per_token");
  run.held_bytes_per_token = r.non_negative("held_bytes_per_token");
  run.peak_live_entries = r.count("peak_live_entries");
  run.cache_bytes = r.count("cache_bytes");
  run.tokens_evaluated = r.count("tokens_evaluated");
  run.evictions = r.count("evictions");
  run.recalls = r.count("recalls");
  run.spill_peak_bytes = r.count("spill_host_bytes");
  run.seconds = r.non_negative("seconds");
  return run;
}

Verdict verdict_from(const Reader& r) {
  const std::string v = r.string("verdict");
  for (Verdict x : {Verdict::Retained, Verdict::Degraded, Verdict::Lost})
    if (v == verdict_name(x)) return x;
  r.fail("verdict", "should be retained, degraded or lost");
}

}  // namespace

json lab_row_json(const LabRow& row) {
  const Divergence& d = row.eval.divergence;
  const LostAttentionSummary& lost = row.eval.lost;
  json regretted = json::array();
  for (const RegrettedEviction& e : lost.regretted)
    regretted.push_back(
        {{"chunk", e.sequence}, {"position", e.position}, {"token", e.token}, {"lost_mass", e.lost_mass}});
  json probes = json::array();
  for (const LabProbe& p : row.probes)
    probes.push_back({{"scenario", p.scenario},
                      {"verdict", verdict_name(p.verdict)},
                      {"logprob", p.logprob},
                      {"full_logprob", p.full_logprob}});
  return json{{"run", run_json(row.eval.run)},
              {"ppl_ratio", row.eval.ppl_ratio},
              {"kl_mean", d.kl_mean},
              {"kl_median", d.kl_median},
              {"kl_p99", d.kl_p99},
              {"kl_max", d.kl_max},
              {"top1_agreement", d.top1_agreement},
              {"dp_top_mean", d.dp_top_mean},
              {"lost_attention",
               {{"steps", lost.steps},
                {"mean", lost.mean},
                {"p99", lost.p99},
                {"max", lost.max},
                {"per_layer", lost.per_layer},
                {"regretted", regretted}}},
              {"probes", probes},
              {"seconds", row.seconds}};
}

LabRow lab_row_from_json(const json& j) {
  const Reader r{j, "row"};
  LabRow row;
  row.eval.run = run_from(r.sub(r.at("run"), "run"));
  row.eval.ppl_ratio = r.non_negative("ppl_ratio");
  Divergence& d = row.eval.divergence;
  d.kl_mean = r.non_negative("kl_mean");
  d.kl_median = r.non_negative("kl_median");
  d.kl_p99 = r.non_negative("kl_p99");
  d.kl_max = r.non_negative("kl_max");
  d.top1_agreement = r.non_negative("top1_agreement");
  if (d.top1_agreement > 1) r.fail("top1_agreement", "should be a fraction, 0 to 1");
  d.dp_top_mean = r.non_negative("dp_top_mean");
  const Reader lost = r.sub(r.at("lost_attention"), "lost_attention");
  LostAttentionSummary& l = row.eval.lost;
  l.steps = lost.count("steps");
  l.mean = lost.non_negative("mean");
  l.p99 = lost.non_negative("p99");
  l.max = lost.non_negative("max");
  const json& per_layer = lost.array("per_layer", kMaxLayers);
  for (size_t i = 0; i < per_layer.size(); ++i) {
    if (!per_layer[i].is_number()) lost.fail("per_layer", "should hold numbers");
    l.per_layer.push_back(per_layer[i].get<double>());
  }
  const json& regretted = lost.array("regretted", kMaxListed);
  for (const json& e : regretted) {
    const Reader x = lost.sub(e, "regretted[]");
    RegrettedEviction ev;
    ev.sequence = static_cast<uint32_t>(x.count("chunk", UINT32_MAX));
    ev.position = static_cast<int32_t>(x.count("position", INT32_MAX));
    const double token = x.number("token");
    if (token < -1 || token > INT32_MAX || token != std::floor(token)) x.fail("token", "should be a token id or -1");
    ev.token = static_cast<int32_t>(token);
    ev.lost_mass = x.non_negative("lost_mass");
    l.regretted.push_back(ev);
  }
  for (const json& p : r.array("probes", kMaxListed)) {
    const Reader x = r.sub(p, "probes[]");
    LabProbe probe;
    probe.scenario = x.string("scenario");
    probe.verdict = verdict_from(x);
    probe.logprob = x.number("logprob");
    probe.full_logprob = x.number("full_logprob");
    row.probes.push_back(std::move(probe));
  }
  row.seconds = r.non_negative("seconds");
  return row;
}

// ============================================================== journal

uint64_t fnv1a64(std::string_view bytes) {
  uint64_t h = 0xcbf29ce484222325ull;
  for (unsigned char c : bytes) {
    h ^= c;
    h *= 0x100000001b3ull;
  }
  return h;
}

json LabIdentity::json() const {
  return nlohmann::json{{"kvscope_lab", 1},
                        {"model", model},
                        {"model_bytes", model_bytes},
                        {"text", text},
                        {"text_fnv1a", fmt::format("{:016x}", text_fnv1a)},
                        {"n_tokens", n_tokens},
                        {"n_ctx", n_ctx},
                        {"n_chunks", n_chunks},
                        {"max_chunks", max_chunks},
                        {"baseline", baseline},
                        {"pins", pins},
                        {"scenarios", scenarios},
                        {"device", device}};
}

LabIdentity LabIdentity::from_json(const nlohmann::json& j) {
  const Reader r{j, "header"};
  if (r.count("kvscope_lab") != 1) r.fail("kvscope_lab", "should be 1 (a journal of this version)");
  LabIdentity id;
  id.model = r.string("model");
  id.model_bytes = r.count("model_bytes");
  id.text = r.string("text");
  const std::string hash = r.string("text_fnv1a");
  if (hash.size() != 16 || hash.find_first_not_of("0123456789abcdef") != std::string::npos)
    r.fail("text_fnv1a", "should be 16 hexadecimal digits");
  id.text_fnv1a = std::stoull(hash, nullptr, 16);
  id.n_tokens = r.count("n_tokens");
  id.n_ctx = static_cast<uint32_t>(r.count("n_ctx", UINT32_MAX));
  id.n_chunks = static_cast<uint32_t>(r.count("n_chunks", UINT32_MAX));
  id.max_chunks = static_cast<uint32_t>(r.count("max_chunks", UINT32_MAX));
  id.baseline = r.string("baseline");
  for (const char* key : {"pins", "scenarios"}) {
    for (const nlohmann::json& v : r.array(key, kMaxListed)) {
      if (!v.is_string()) r.fail(key, "should hold strings");
      (std::string_view(key) == "pins" ? id.pins : id.scenarios).push_back(v.get<std::string>());
    }
  }
  id.device = r.string("device");
  return id;
}

std::string LabIdentity::differences(const LabIdentity& o) const {
  std::vector<std::string> d;
  auto cmp = [&](std::string_view what, const auto& a, const auto& b) {
    if (a != b) d.push_back(fmt::format("{} {}, now {}", what, a, b));
  };
  cmp("model", model, o.model);
  cmp("model bytes", model_bytes, o.model_bytes);
  cmp("text", text, o.text);
  if (text_fnv1a != o.text_fnv1a) d.push_back("the text's contents changed");
  cmp("tokens", n_tokens, o.n_tokens);
  cmp("context", n_ctx, o.n_ctx);
  cmp("chunks", n_chunks, o.n_chunks);
  cmp("max chunks", max_chunks, o.max_chunks);
  cmp("baseline", baseline, o.baseline);
  if (pins != o.pins) d.push_back("the pinned spans differ");
  if (scenarios != o.scenarios) d.push_back("the scenarios differ");
  std::string out;
  for (const std::string& s : d) out += (out.empty() ? "" : "; ") + s;
  return out;
}

std::filesystem::path lab_journal_path(const std::filesystem::path& dir) { return dir / "rows.jsonl"; }

LabJournal parse_lab_journal(std::string_view text, const std::string& source) {
  LabJournal journal;
  bool have_header = false;
  size_t line_no = 0, start = 0;
  while (start < text.size()) {
    const size_t nl = text.find('\n', start);
    const bool last = nl == std::string_view::npos;
    const std::string_view line = text.substr(start, last ? std::string_view::npos : nl - start);
    start = last ? text.size() : nl + 1;
    ++line_no;
    if (trim(line).empty()) continue;
    json j;
    try {
      j = json::parse(line);
    } catch (const json::exception& e) {
      // Written whole with its newline, synced, then the next: a line
      // without its newline at the very end is one a crash cut short.
      if (last && have_header) {
        journal.dropped_torn_line = true;
        break;
      }
      throw LabFileError(fmt::format("{} line {}: not JSON ({}); move the file aside or start again with --fresh",
                                     source, line_no, e.what()));
    }
    try {
      if (!have_header) {
        journal.identity = LabIdentity::from_json(j);
        have_header = true;
      } else if (j.is_object() && j.contains("baseline_run")) {
        journal.baseline = run_from(Reader{j["baseline_run"], "baseline_run"});
      } else if (j.is_object() && j.contains("row")) {
        journal.rows.push_back(lab_row_from_json(j["row"]));
      } else {
        throw LabFileError("expected {\"row\": ...} or {\"baseline_run\": ...}");
      }
    } catch (const LabFileError& e) {
      throw LabFileError(fmt::format("{} line {}: {}; move the file aside or start again with --fresh", source,
                                     line_no, e.what()));
    }
  }
  if (!have_header) throw LabFileError(fmt::format("{}: empty, no header line; remove it or use --fresh", source));
  return journal;
}

std::optional<LabJournal> read_lab_journal(const std::filesystem::path& dir) {
  const std::filesystem::path path = lab_journal_path(dir);
  std::error_code ec;
  if (!std::filesystem::exists(path, ec)) return std::nullopt;
  std::ifstream in(path, std::ios::binary);
  if (!in) throw LabFileError(fmt::format("{}: cannot read it ({})", path.string(), std::strerror(errno)));
  std::stringstream ss;
  ss << in.rdbuf();
  return parse_lab_journal(ss.str(), path.string());
}

namespace {
json baseline_line(const PerplexityRun& run) { return json{{"baseline_run", run_json(run)}}; }
json row_line(const LabRow& row) { return json{{"row", lab_row_json(row)}}; }
}  // namespace

LabJournalWriter::LabJournalWriter(const std::filesystem::path& dir, const LabIdentity& identity)
    : path_(lab_journal_path(dir)) {
  std::filesystem::create_directories(dir);
  if (std::filesystem::exists(path_))
    throw std::logic_error(fmt::format("{} exists; continue it instead of starting over", path_.string()));
  write_file_atomically(path_, identity.json().dump() + "\n");
}

LabJournalWriter::LabJournalWriter(const std::filesystem::path& dir, const LabJournal& existing)
    : path_(lab_journal_path(dir)) {
  std::string text = existing.identity.json().dump() + "\n";
  if (existing.baseline) text += baseline_line(*existing.baseline).dump() + "\n";
  for (const LabRow& r : existing.rows) text += row_line(r).dump() + "\n";
  write_file_atomically(path_, text);  // without a torn last line, whole or not at all
}

void LabJournalWriter::baseline(const PerplexityRun& run) { append(baseline_line(run)); }
void LabJournalWriter::row(const LabRow& row) { append(row_line(row)); }

void LabJournalWriter::append(const json& line) {
  const std::string text = line.dump() + "\n";
  const int fd = ::open(path_.c_str(), O_WRONLY | O_APPEND | O_CLOEXEC);
  if (fd < 0) throw std::runtime_error(fmt::format("{}: cannot append ({})", path_.string(), std::strerror(errno)));
  size_t done = 0;
  while (done < text.size()) {
    const ssize_t n = ::write(fd, text.data() + done, text.size() - done);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) {
      const int err = errno;
      ::close(fd);
      throw std::runtime_error(fmt::format("{}: cannot append ({}); the rows before this one are kept",
                                           path_.string(), std::strerror(err)));
    }
    done += static_cast<size_t>(n);
  }
  ::fsync(fd);
  ::close(fd);
}

// ============================================================== the sweep

namespace {
// A probe's runs hold the engine for one scenario at a time when it is shared.
ProbeResult probe_in_turn(Engine& engine, const Scenario& s, const ProbeConfig& config, EngineTurns* turns) {
  if (turns) turns->lock();
  try {
    ProbeResult r = run_probe(engine, s, config);
    if (turns) turns->unlock();
    return r;
  } catch (...) {
    if (turns) turns->unlock();
    throw;
  }
}
}  // namespace

std::vector<ProbeRun> probe_full_runs(Engine& engine, const CacheSpec& baseline,
                                      const std::vector<Scenario>& scenarios, EngineTurns* turns) {
  std::vector<ProbeRun> out;
  for (const Scenario& s : scenarios) {
    ProbeConfig config;
    config.cache = baseline;
    out.push_back(probe_in_turn(engine, s, config, turns).full);
  }
  return out;
}

std::vector<LabProbe> probe_cache(Engine& engine, const CacheSpec& spec, const std::vector<Scenario>& scenarios,
                                  const std::vector<ProbeRun>& full_runs, EngineTurns* turns) {
  std::vector<LabProbe> out;
  CacheSpec storage = spec;
  storage.policy.clear();
  storage.on_full.clear();
  storage.pins = {};
  storage.spill = false;
  for (size_t i = 0; i < scenarios.size(); ++i) {
    ProbeConfig config;
    config.cache = storage;
    config.pins = spec.pins;
    // The cache's own policy, or none ("full" keeps every token): a storage
    // alone is probed for what its rounding costs.
    config.policies = {spec.policy.empty() ? (spec.on_full.empty() ? "full" : spec.on_full) : spec.policy};
    const ProbeResult r = probe_in_turn(engine, scenarios[i], config, turns);
    const ProbeRun& run = r.policies.front();
    const ProbeRun& full = full_runs[i];
    LabProbe p;
    p.scenario = scenarios[i].name;
    p.logprob = run.logprob;
    p.full_logprob = full.logprob;
    p.verdict = verdict_for(run.logprob, run.first_top1, full.logprob, full.first_top1);
    out.push_back(std::move(p));
  }
  return out;
}

LabRunResult run_lab(Engine& engine, const LabOptions& options, const std::function<void(const LabProgress&)>& on_progress,
                     const std::function<void(const LabRow&)>& on_row, const std::atomic<bool>* cancel) {
  using clock = std::chrono::steady_clock;
  const auto t0 = clock::now();
  LabRunResult result;
  if (options.caches.empty()) throw std::invalid_argument("the lab has no cache to measure");
  // Every cache checked against the model before anything runs.
  for (const CacheSpec& spec : options.caches) {
    try {
      plan_cache(spec, engine.model().cache_shape(), options.eval.n_ctx ? options.eval.n_ctx : engine.n_ctx());
    } catch (const std::invalid_argument& e) {
      throw std::invalid_argument(fmt::format("{}: {}", spec.label(), e.what()));
    }
  }
  const std::vector<int32_t> tokens = engine.tokenizer().encode(options.text, true);
  Evaluator evaluator(engine, tokens, options.eval);
  const EvaluationReport& header = evaluator.header();

  LabIdentity id;
  id.model = options.model_path;
  std::error_code ec;
  id.model_bytes = options.model_path.empty() ? 0 : std::filesystem::file_size(options.model_path, ec);
  if (ec) id.model_bytes = 0;
  id.text = options.text_path;
  id.text_fnv1a = fnv1a64(options.text);
  id.n_tokens = header.n_tokens;
  id.n_ctx = header.n_ctx;
  id.n_chunks = header.n_chunks;
  id.max_chunks = options.eval.max_chunks;
  id.baseline = options.eval.baseline.label();
  for (const kv::PinnedSpan& s : options.eval.pins.spans()) id.pins.push_back(kv::to_string(s));
  for (const Scenario& s : options.scenarios) id.scenarios.push_back(s.name);
  id.device = header.device;

  // The journal: continued when it is this sweep's, else an error (or, with
  // fresh, moved aside).
  std::optional<LabJournal> existing;
  try {
    existing = read_lab_journal(options.dir);
  } catch (const LabFileError& e) {
    if (!options.fresh) throw;
    const auto aside = keep_aside(lab_journal_path(options.dir));
    result.note = fmt::format("{} did not read; kept as {}. ", lab_journal_path(options.dir).string(), aside.string());
  }
  if (existing) {
    const std::string diff = existing->identity.differences(id);
    if (!diff.empty()) {
      if (!options.fresh)
        throw LabFileError(fmt::format("{} is another sweep's ({}): use another --out folder, or --fresh to move it "
                                       "aside and start again",
                                       lab_journal_path(options.dir).string(), diff));
      const auto aside = keep_aside(lab_journal_path(options.dir));
      result.note += fmt::format("{} was another sweep's ({}); kept as {}. ", lab_journal_path(options.dir).string(),
                                 diff, aside.string());
      existing.reset();
    } else if (existing->identity.device != id.device) {
      result.note += fmt::format("the rows already measured ran on {}, the rest run on {}. ",
                                 existing->identity.device, id.device);
    }
  }
  if (existing && existing->dropped_torn_line)
    result.note += "the journal's last line was cut short (a run stopped while writing it): that cache runs again. ";
  std::optional<LabJournalWriter> writer;
  if (existing) {
    writer.emplace(options.dir, *existing);
    existing->identity.device = id.device;
  } else {
    writer.emplace(options.dir, id);
  }

  // Resumed rows, in grid order; the rest to run.
  std::vector<std::optional<LabRow>> rows(options.caches.size());
  if (existing)
    for (const LabRow& r : existing->rows)
      for (size_t i = 0; i < options.caches.size(); ++i)
        if (!rows[i] && r.eval.run.spec == options.caches[i]) rows[i] = r;
  LabProgress progress;
  progress.rows_total = options.caches.size();
  if (existing && existing->baseline) progress.baseline_bytes_per_token = existing->baseline->bytes_per_token;
  for (const auto& r : rows)
    if (r) {
      ++progress.rows_resumed;
      if (on_row) on_row(*r);
    }
  progress.rows_done = progress.rows_resumed;
  result.resumed = progress.rows_resumed;

  // The pace: chunks run by this process, for the time left.
  const uint32_t n_chunks = header.n_chunks;
  size_t chunks_left = (options.caches.size() - progress.rows_resumed) * n_chunks;
  uint64_t chunks_run = 0;
  double chunk_seconds = 0;
  auto report = [&](std::string current, uint32_t chunk) {
    progress.current = std::move(current);
    progress.chunk = chunk;
    progress.n_chunks = n_chunks;
    progress.elapsed_s = std::chrono::duration<double>(clock::now() - t0).count();
    progress.eta_s = chunks_run ? chunk_seconds / double(chunks_run) * double(chunks_left) : -1;
    if (on_progress) on_progress(progress);
  };
  auto cancelled = [&] { return cancel && cancel->load(); };

  if (progress.rows_done < progress.rows_total || !existing || !existing->baseline) {
    // The baseline runs whenever a cache does (its logits are what caches are
    // compared with), and first.
    report("baseline", 0);
    const PerplexityRun& base = evaluator.baseline([&](uint32_t done, uint32_t) { report("baseline", done); });
    progress.baseline_bytes_per_token = base.bytes_per_token;
    if (!existing || !existing->baseline) writer->baseline(base);
  }
  std::vector<ProbeRun> full_runs;
  if (!options.scenarios.empty() && progress.rows_done < progress.rows_total)
    full_runs = probe_full_runs(engine, options.eval.baseline, options.scenarios, options.eval.turns);

  for (size_t i = 0; i < options.caches.size(); ++i) {
    if (rows[i]) continue;
    if (cancelled()) {
      result.cancelled = true;
      break;
    }
    const CacheSpec& spec = options.caches[i];
    const auto row_t0 = clock::now();
    auto chunk_t0 = clock::now();
    report(spec.label(), 0);
    // Stopping mid-row drops that row's chunks: a row is journaled whole.
    struct Stop {};
    LabRow row;
    try {
      row.eval = evaluator.evaluate(spec, [&](uint32_t done, uint32_t) {
        const auto now = clock::now();
        chunk_seconds += std::chrono::duration<double>(now - chunk_t0).count();
        chunk_t0 = now;
        ++chunks_run;
        if (chunks_left) --chunks_left;
        report(spec.label(), done);
        if (cancelled()) throw Stop{};
      });
    } catch (const Stop&) {
      result.cancelled = true;
      break;
    }
    if (!options.scenarios.empty()) row.probes = probe_cache(engine, spec, options.scenarios, full_runs, options.eval.turns);
    row.seconds = std::chrono::duration<double>(clock::now() - row_t0).count();
    writer->row(row);
    rows[i] = row;
    ++progress.rows_done;
    if (on_row) on_row(row);
    report(spec.label(), n_chunks);
  }
  if (cancelled() && progress.rows_done < progress.rows_total) result.cancelled = true;
  report(result.cancelled ? "stopped" : "done", result.cancelled ? 0 : n_chunks);  // the last word, even when every row was resumed

  result.journal.identity = id;
  result.journal.baseline = header.baseline.ppl > 0 ? std::optional<PerplexityRun>(header.baseline)
                                                    : (existing ? existing->baseline : std::nullopt);
  for (auto& r : rows)
    if (r) result.journal.rows.push_back(std::move(*r));
  return result;
}

std::string lab_duration(double s) {
  if (s < 0) return "?";
  const long t = long(s + 0.5);
  if (t >= 3600) return fmt::format("{}h{:02}m", t / 3600, (t / 60) % 60);
  if (t >= 60) return fmt::format("{}m{:02}s", t / 60, t % 60);
  return fmt::format("{}s", t);
}

// ============================================================== reading it

std::vector<size_t> pareto_front(const std::vector<LabRow>& rows, bool by_top1) {
  auto quality = [&](const LabRow& r) {  // less is better
    return by_top1 ? -r.eval.divergence.top1_agreement : r.eval.divergence.kl_mean;
  };
  std::vector<size_t> front;
  for (size_t i = 0; i < rows.size(); ++i) {
    const double xi = rows[i].eval.run.held_bytes_per_token, yi = quality(rows[i]);
    bool dominated = false;
    for (size_t k = 0; k < rows.size() && !dominated; ++k) {
      if (k == i) continue;
      const double xk = rows[k].eval.run.held_bytes_per_token, yk = quality(rows[k]);
      dominated = xk <= xi && yk <= yi && (xk < xi || yk < yi);
    }
    if (!dominated) front.push_back(i);
  }
  std::sort(front.begin(), front.end(), [&](size_t a, size_t b) {
    const double xa = rows[a].eval.run.held_bytes_per_token, xb = rows[b].eval.run.held_bytes_per_token;
    return xa != xb ? xa < xb : a < b;
  });
  return front;
}

double LabBudget::resolve(double baseline_bytes_per_token) const {
  return fraction > 0 ? fraction * baseline_bytes_per_token : bytes_per_token;
}

LabBudget parse_lab_budget(std::string_view text) {
  LabBudget b;
  b.text = trim(text);
  std::string_view s = b.text;
  auto bad = [&](std::string_view why) {
    return std::invalid_argument(fmt::format(
        "--budget {}: {}; give a share of the baseline (25%, 0.25), bytes per token (1728, 1.5KiB), or a whole "
        "cache at a context (2GiB@32768)",
        b.text, why));
  };
  auto number = [&](std::string_view t, double& out) {
    const std::string str(t);
    char* end = nullptr;
    errno = 0;
    out = std::strtod(str.c_str(), &end);
    return end != str.c_str() && errno == 0 && std::isfinite(out) ? size_t(end - str.c_str()) : size_t(0);
  };
  if (s.empty()) throw bad("empty");
  std::string_view ctx_part;
  if (const size_t at = s.find('@'); at != std::string_view::npos) {
    ctx_part = s.substr(at + 1);
    s = s.substr(0, at);
  }
  double v = 0;
  const size_t used = number(s, v);
  if (!used || v <= 0) throw bad("not a positive number");
  std::string unit = trim(s.substr(used));
  if (unit == "%") {
    if (!ctx_part.empty()) throw bad("a share takes no context");
    if (v > 1000) throw bad("more than 1000%");
    b.fraction = v / 100;
    return b;
  }
  double scale = 1;
  if (unit.size() > 6 && unit.substr(unit.size() - 6) == "/token") unit = trim(unit.substr(0, unit.size() - 6));
  if (unit.empty() || unit == "B") scale = 1;
  else if (unit == "KiB" || unit == "K") scale = 1024;
  else if (unit == "MiB" || unit == "M") scale = 1024.0 * 1024;
  else if (unit == "GiB" || unit == "G") scale = 1024.0 * 1024 * 1024;
  else throw bad(fmt::format("unknown unit '{}' (B, KiB, MiB, GiB or %)", unit));
  if (unit.empty() && ctx_part.empty() && v <= 1) {  // 0.25: a share
    b.fraction = v;
    return b;
  }
  double bytes = v * scale;
  if (!ctx_part.empty()) {
    double ctx = 0;
    const size_t u = number(ctx_part, ctx);
    if (!u || u != ctx_part.size() || ctx < 1 || ctx != std::floor(ctx)) throw bad("the context after @ is not a whole number of tokens");
    bytes /= ctx;
  }
  b.bytes_per_token = bytes;
  return b;
}

LabRecommendation recommend_cache(const std::vector<LabRow>& rows, const PerplexityRun& baseline,
                                  const LabBudget& budget, const LabSafety& safety) {
  LabRecommendation rec;
  rec.budget_bytes_per_token = budget.resolve(baseline.bytes_per_token);
  const double share = baseline.bytes_per_token > 0 ? rec.budget_bytes_per_token / baseline.bytes_per_token : 0;
  auto fits = [&](const LabRow& r) { return r.eval.run.held_bytes_per_token <= rec.budget_bytes_per_token * (1 + 1e-9); };
  auto shortfalls = [&](const LabRow& r) {
    std::vector<std::string> out;
    const Divergence& d = r.eval.divergence;
    if (d.kl_mean > safety.max_kl) out.push_back(fmt::format("mean KL {:.3g} > {:.3g}", d.kl_mean, safety.max_kl));
    if (d.top1_agreement < safety.min_top1)
      out.push_back(fmt::format("top-1 {:.1f}% < {:.0f}%", 100 * d.top1_agreement, 100 * safety.min_top1));
    for (const LabProbe& p : r.probes)
      if (p.verdict == Verdict::Lost) out.push_back(fmt::format("loses the fact of {}", p.scenario));
    return out;
  };
  // Lowest mean KL among the rows within the budget, fewer bytes on a tie:
  // on the KL front by construction.
  for (size_t i = 0; i < rows.size(); ++i) {
    if (!fits(rows[i])) continue;
    if (!rec.pick) {
      rec.pick = i;
      continue;
    }
    const LabRow& a = rows[i];
    const LabRow& b = rows[*rec.pick];
    if (a.eval.divergence.kl_mean < b.eval.divergence.kl_mean ||
        (a.eval.divergence.kl_mean == b.eval.divergence.kl_mean &&
         a.eval.run.held_bytes_per_token < b.eval.run.held_bytes_per_token))
      rec.pick = i;
  }
  const std::string budget_text =
      fmt::format("{:.0f} bytes per token ({:.0f}% of the baseline's {:.0f})", rec.budget_bytes_per_token,
                  100 * share, baseline.bytes_per_token);
  if (rec.pick) {
    rec.shortfalls = shortfalls(rows[*rec.pick]);
    rec.safe = rec.shortfalls.empty();
  }
  if (!rec.safe) {  // the smallest safe cache measured, whatever its size (the closer one on a tie)
    for (size_t i = 0; i < rows.size(); ++i) {
      if (!shortfalls(rows[i]).empty()) continue;
      if (!rec.safe_pick) {
        rec.safe_pick = i;
        continue;
      }
      const LabRow& a = rows[i];
      const LabRow& b = rows[*rec.safe_pick];
      if (a.eval.run.held_bytes_per_token < b.eval.run.held_bytes_per_token ||
          (a.eval.run.held_bytes_per_token == b.eval.run.held_bytes_per_token &&
           a.eval.divergence.kl_mean < b.eval.divergence.kl_mean))
        rec.safe_pick = i;
    }
  }

  auto describe = [&](const LabRow& r) {
    const Divergence& d = r.eval.divergence;
    std::string s = fmt::format("{}: {:.0f} bytes per token ({:.0f}% of the baseline), mean KL {:.3g}, KL p99 {:.3g}, "
                                "top-1 agreement {:.2f}%",
                                r.label(), r.eval.run.held_bytes_per_token,
                                100 * r.eval.run.held_bytes_per_token / baseline.bytes_per_token, d.kl_mean, d.kl_p99,
                                100 * d.top1_agreement);
    if (r.evicting()) s += fmt::format(", lost attention {:.3f}", r.eval.lost.mean);
    return s;
  };
  std::string text = fmt::format("Budget: {}.\n", budget_text);
  if (!rec.pick) {
    text += "Nothing measured fits: the smallest cache of the sweep needs more. Add smaller caches to the grid "
            "(lower budgets, q4 or kivi2 storage).\n";
  } else {
    const LabRow& r = rows[*rec.pick];
    text += fmt::format("{}: {}\n", rec.safe ? "Recommended" : "Closest to the full cache within the budget",
                        describe(r));
    if (r.evicting() && !r.eval.lost.regretted.empty()) {
      text += "  what it forgets most (regretted evictions: chunk:position, lost attention mass):";
      for (size_t k = 0; k < std::min<size_t>(5, r.eval.lost.regretted.size()); ++k)
        text += fmt::format(" {}:{} {:.2f}", r.eval.lost.regretted[k].sequence, r.eval.lost.regretted[k].position,
                            r.eval.lost.regretted[k].lost_mass);
      text += "\n";
    }
    if (!r.probes.empty())
      text += fmt::format("  probes: {} retained, {} degraded, {} lost of {}\n",
                          r.probes.size() - r.probes_lost() - r.probes_degraded(), r.probes_degraded(),
                          r.probes_lost(), r.probes.size());
    if (!rec.safe) {
      std::string why;
      for (const std::string& s : rec.shortfalls) why += (why.empty() ? "" : ", ") + s;
      text += fmt::format("Nothing in this budget is safe (mean KL at most {:.3g}, top-1 at least {:.0f}%, no probe "
                          "lost): {}.\n",
                          safety.max_kl, 100 * safety.min_top1, why);
    }
  }
  if (!rec.safe) {
    if (rec.safe_pick)
      text += fmt::format("The smallest safe cache measured: {}\n", describe(rows[*rec.safe_pick]));
    else
      text += "No cache of the sweep is safe but the baseline itself.\n";
  }
  rec.text = text;
  return rec;
}

}  // namespace kvscope
