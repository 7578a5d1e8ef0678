// The `kvscope` subcommands. Each takes its parsed options and returns the
// process exit code; errors are thrown and turned into one line by main().
#pragma once
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

namespace kvscope {
struct EngineOptions;
}

namespace kvscope::cli {

struct ModelOptions {
  std::string model;   // -m; empty: the default model
  uint32_t n_ctx = 0;  // -c; 0: the model's trained context
  int device = -1;     // --device
  std::string kv = "f16";  // --kv SPEC: a format for K and V, or k=F,v=F,group=N (app/core/cache_spec.h)
  std::string kv_k, kv_v;            // --kv-k, --kv-v: the key / value format (empty: from --kv)
  std::optional<uint32_t> kv_group;  // --kv-group: quantization group along head_dim
  std::string policy;                // --policy SPEC (kv/policy.h); empty: no eviction
  std::vector<std::string> pins;     // --pin START:END, repeatable
  std::string trace;                 // --trace FILE.jsonl: the eviction log (run, bench)
};

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
  uint32_t n_prompt = 128;
  uint32_t n_gen = 128;
  uint32_t reps = 3;
  bool json = false;
  bool profile = false;
};
int bench(const BenchOptions& o);

struct EvalOptions {
  ModelOptions m;                   // -m -c --device, and --kv/--kv-k/--kv-v/--kv-group/--policy: the cache under test
  std::string text_file;            // -f: the text to evaluate on
  std::string baseline = "f16";     // --baseline SPEC
  bool json = false;
  bool sweep = false;               // every format against the baseline, as a markdown table
  uint32_t max_chunks = 0;          // --max-chunks: only the first N chunks of the text (0: all)
};
int eval(const EvalOptions& o);

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
};
int chat(const ChatOptions& o);

int convert_llama2c(const std::string& checkpoint, const std::string& tokenizer, const std::string& out);
int quantize(const std::string& in, const std::string& out, const std::string& type);

// Shared by the subcommands' files.
EngineOptions engine_options(const ModelOptions& m, uint32_t max_batch = 256);
// True when --policy, --pin or --trace asks for a policy on the cache.
bool wants_policy(const ModelOptions& m);
std::string human_bytes(double bytes);

}  // namespace kvscope::cli
