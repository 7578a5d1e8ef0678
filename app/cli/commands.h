// The `kvscope` subcommands. Each takes its parsed options and returns the
// process exit code; errors are thrown and turned into one line by main().
#pragma once
#include <cstdint>
#include <optional>
#include <string_view>
#include <string>
#include <vector>

#include "app/core/cache_spec.h"
#include "kv/pins.h"

namespace kvscope {
struct EngineOptions;
class Session;
}

namespace kvscope::cli {

struct ModelOptions {
  std::string model;   // -m; empty: the default model
  uint32_t n_ctx = 0;  // -c; 0: the model's trained context
  int device = -1;     // --device
  std::string kv = "f16";  // --kv SPEC: a format for K and V, or k=F,v=F,group=N (app/core/cache_spec.h)
  std::string kv_k, kv_v;            // --kv-k, --kv-v: the key / value format (empty: from --kv)
  std::optional<uint32_t> kv_group;  // --kv-group: quantization group along head_dim
  std::string kv_hadamard;           // --kv-hadamard on|off
  std::string kv_sparse_v;           // --kv-sparse-v T
  std::string policy;                // --policy SPEC (kv/policy.h); empty: no eviction
  std::vector<std::string> pins;     // --pin START:END, repeatable
  std::string on_full;               // --on-full SPEC: policy `full` evicts with SPEC once the context is full
  std::string trace;                 // --trace FILE.jsonl: the eviction log (run, bench)
  bool spill = false;                // --spill: evicted entries to host memory, recalled when attended (kv/spill.h)
  double spill_max_mb = 0;           // --spill-max-mb: cap on that host memory (0: none)
};

// The cache the flags describe (--kv, --kv-k, --kv-v, --kv-group, --policy,
// --pin, --on-full, --spill, --spill-max-mb; --trace asks for `full` when no
// policy is named): cache_spec_from_flags, the same CacheSpec the window reads
// from its session field, checked by the same plan_cache.
CacheSpec cache_spec_from_options(const ModelOptions& m);

struct RunOptions {
  ModelOptions m;
  std::string prompt = "Once upon a time";
  int32_t n_predict = 128;
  float temp = 0.8f;
  int32_t top_k = 40;
  float top_p = 0.95f;
  uint64_t seed = 0;
  bool seed_set = false;
  bool json = false;
};
int run(const RunOptions& o);

int info(const std::string& model, bool json);

struct TokenizeOptions {
  std::string model;
  std::string text;
  bool json = false;
};
int tokenize(const TokenizeOptions& o);

int devices(bool json);

struct BenchOptions {
  ModelOptions m;
  std::string synthetic;      // --synthetic NAME: a model of that shape with random weights (models/synthetic.h)
  std::string type = "Q8_0";  // --type: its weight type (F32, Q8_0, Q4_K_M, ...)
  uint32_t n_prompt = 128;
  uint32_t n_gen = 128;
  uint32_t reps = 3;
  bool json = false;
  bool profile = false;
  bool ops = false;  // --ops: the matrix shaders per weight type instead of a model
};
int bench(const BenchOptions& o);

struct EvalOptions {
  ModelOptions m;                   // -m -c --device, and --kv/--kv-k/--kv-v/--kv-group/--policy: the cache under test
  std::string text_file;            // -f: the text to evaluate on
  std::string baseline = "f16";     // --baseline SPEC
  bool json = false;
  std::string sweep;                // --sweep[=all|formats|policies]: many caches as a markdown table ("": one cache)
  uint32_t max_chunks = 0;          // --max-chunks: only the first N chunks of the text (0: all)
};
int eval(const EvalOptions& o);

// `kvscope probe` (app/cli/probe_command.cpp): scenarios under the full cache and each policy.
struct ProbeOptions {
  ModelOptions m;                   // -m -c --device --kv
  std::vector<std::string> scenarios;  // scenario files
  bool all = false;                 // --all: every file in assets/scenarios
  std::vector<std::string> policies;   // --policy SPEC, repeatable
  bool json = false;
};
int probe(const ProbeOptions& o);

// `kvscope lab` (app/cli/lab_command.cpp): a sweep of caches over a text,
// journaled row by row (resumable), then a report and a recommendation.
struct LabCommandOptions {
  ModelOptions m;                      // -m -c --device; --pin applies to every cache
  std::string text_file;               // -f
  std::string out;                     // --out DIR
  std::string baseline = "f16";        // --baseline SPEC
  uint32_t max_chunks = 0;             // --max-chunks
  std::string preset = "default";      // --preset
  std::string storages, policies, budgets, caches;  // --storages --policies --budgets --caches
  std::vector<std::string> scenarios;  // --scenario FILE (repeatable)
  bool probes = false;                 // --probes: every scenario of assets/scenarios
  std::string budget;                  // --budget: the recommendation's memory budget
  double max_kl = 0.05, min_top1 = 0.95;  // --max-kl --min-top1: what counts as safe
  bool fresh = false;                  // --fresh: set a journal of another sweep aside
  bool report_only = false;            // --report: only rewrite the report from the journal
  bool json = false;                   // --json: results.json on stdout
};
int lab(const LabCommandOptions& o);

// Memory over a long generation (app/cli/soak_command.cpp): each cache
// generates `tokens` tokens while resident and device memory are sampled.
struct SoakOptions {
  ModelOptions m;                      // -m -c --device --kv
  std::vector<std::string> policies;   // --policy SPEC, repeatable (default: rolling StreamingLLM and every evicting policy)
  uint32_t tokens = 10000;             // -n
  uint32_t sample_every = 500;         // --sample-every
  uint64_t log_events = 0;             // --log-events: the eviction log's limit (0: its default)
  bool json = false;
};
int soak(const SoakOptions& o);

// An interactive chat on stdin/stdout (app/cli/chat_command.cpp).
struct ChatOptions {
  ModelOptions m;
  std::string system;         // --system
  std::string chat_template;  // --chat-template NAME; empty: from the model file
  int32_t n_predict = 256;    // -n: most tokens per reply
  float temp = 0.8f;
  int32_t top_k = 40;
  float top_p = 0.95f;
  uint64_t seed = 0;
  bool seed_set = false;
  bool verbose = false;       // a line per turn: tokens prefilled and reused from the cache
  bool pin_system = false;    // --pin-system: no policy may evict the system prompt's tokens
};
int chat(const ChatOptions& o);

int convert_llama2c(const std::string& checkpoint, const std::string& tokenizer, const std::string& out);
int quantize(const std::string& in, const std::string& out, const std::string& type);

// `kvscope synthetic NAME OUT.gguf`: a model file of a preset's shape (with
// overrides) and pseudo-random weights, with the vocabulary of another model
// when --vocab-from names one: what the window needs to show a 32-layer,
// 8-kv-head cache without a download.
struct SyntheticOptions {
  std::string preset, out, vocab_from, type;
  std::optional<uint32_t> layers, heads, kv_heads, dim, head_dim, ffn, ctx, window;
};
int synthetic(const SyntheticOptions& o);

// Shared by the subcommands' files.
EngineOptions engine_options(const ModelOptions& m, uint32_t max_batch = 256);
// True when --policy, --pin, --on-full, --trace or a --kv spec with '+' asks for a policy on the cache.
bool wants_policy(const ModelOptions& m);
// --trace FILE.jsonl: writes the session's eviction log there (nothing without --trace or a policy):
// what the log holds at the end (since the last reset; from its base line when it folded).
void write_trace(const Session& session, const ModelOptions& m);
// --trace for one long generation: the log streamed to the file as it folds
// (nothing of the run is lost however long it is), renamed into place by
// finish(); a run that fails leaves the previous file.
class StreamedTrace {
 public:
  StreamedTrace(Session& session, const ModelOptions& m);
  ~StreamedTrace();
  void finish();

 private:
  struct Open;
  std::unique_ptr<Open> open_;
};
std::string human_bytes(double bytes);
// The whole of a text file (eval's and lab's -f); errors name the flag and, when
// no file was given, the command that needs one.
std::string read_text_file(const std::string& path, std::string_view command);

}  // namespace kvscope::cli
