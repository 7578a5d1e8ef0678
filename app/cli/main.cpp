// kvscope: the command line. Flags follow llama.cpp's where they overlap.
#include <CLI/CLI.hpp>
#include <cstdio>
#include <exception>

#include <fmt/format.h>

#include "app/cli/commands.h"
#include "app/core/lab.h"
#include "kv/policy.h"
#include "models/quantize.h"
#include "models/synthetic.h"

namespace {

void add_model_options(CLI::App* cmd, kvscope::cli::ModelOptions& m) {
  cmd->add_option("-m,--model", m.model, "GGUF model (default: the stories15M model in the cache directory)");
  cmd->add_option("-c,--ctx-size", m.n_ctx, "context length in tokens (default: the model's)");
  cmd->add_option("--device", m.device, "Vulkan device index (see `kvscope devices`)");
  auto* kv = cmd->add_option("--kv", m.kv,
                             "KV cache: a format for keys and values (f32 f16 q8 q4 kivi2), or items "
                             "k=FORMAT, v=FORMAT, group=N, hadamard=on|off, sparse_v=T joined by commas")
                 ->capture_default_str();
  cmd->add_option("--kv-k", m.kv_k, "format of the cached keys (f32 f16 q8 q4 kivi2)")->excludes(kv);
  cmd->add_option("--kv-v", m.kv_v, "format of the cached values (f32 f16 q8 q4 kivi2)")->excludes(kv);
  cmd->add_option("--kv-group", m.kv_group,
                  "quantization group along head_dim for q8, q4 and kivi2 values; must divide head_dim "
                  "(default: the largest of 32, 16, 8 that does, else the whole head)");
  cmd->add_option("--kv-hadamard", m.kv_hadamard,
                  "on|off: the Hadamard rotation of quantized keys (q8, q4, kivi2) before quantizing, queries "
                  "alike; default on")
      ->check(CLI::IsMember({"on", "off"}));
  cmd->add_option("--kv-sparse-v", m.kv_sparse_v,
                  "T: sparse-V, attention skips (neither dequantizes nor adds) every value whose weight is below T, "
                  "e.g. 0.001 (default 0: off)");
}

// --spill and --spill-max-mb (run, bench, chat, eval): a cache option of every policy.
void add_spill_options(CLI::App* cmd, kvscope::cli::ModelOptions& m) {
  cmd->add_flag("--spill", m.spill,
                "keep evicted entries in host memory and bring them back when the previous query would attend to "
                "them more than to the weakest live entry (works with every policy but rolling; not kivi2 keys)");
  cmd->add_option("--spill-max-mb", m.spill_max_mb, "cap on the --spill host memory in MiB (default: none)");
}

// --policy and --pin (run, bench, eval); --trace where a run has one log (run, bench).
void add_policy_options(CLI::App* cmd, kvscope::cli::ModelOptions& m, bool trace) {
  cmd->add_option("--policy", m.policy,
                  "KV eviction policy NAME[:KEY=VALUE,...], e.g. h2o:budget=64,recent=32 (default: none, keep "
                  "everything). Policies:\n" + kvscope::kv::policy_help());
  cmd->add_option("--pin", m.pins, "token positions START:END (end exclusive) that no policy may evict; repeatable");
  cmd->add_option("--on-full", m.on_full,
                  "with policy full (the default): once the context is full, evict with this policy, e.g. "
                  "streamingllm:sinks=4,window=252 (its budget must be the context); without it a full context "
                  "is an error");
  if (trace)
    cmd->add_option("--trace", m.trace, "write the eviction log (events and occupancy per step) to FILE.jsonl");
  add_spill_options(cmd, m);
}

}  // namespace

int main(int argc, char** argv) {
  using namespace kvscope::cli;
  CLI::App app{"kvscope: run local language models on Vulkan and watch their KV cache"};
  app.require_subcommand(1);
  app.set_version_flag("--version", "kvscope 0.1.0");

  RunOptions run_o;
  auto* run_cmd = app.add_subcommand("run", "generate text from a prompt");
  add_model_options(run_cmd, run_o.m);
  add_policy_options(run_cmd, run_o.m, true);
  run_cmd->add_option("-p,--prompt", run_o.prompt, "prompt text")->capture_default_str();
  run_cmd->add_option("-n,--n-predict", run_o.n_predict, "tokens to generate")->capture_default_str();
  run_cmd->add_option("--temp", run_o.temp, "temperature; 0 is greedy")->capture_default_str();
  run_cmd->add_option("--top-k", run_o.top_k, "top-k sampling (0: off)")->capture_default_str();
  run_cmd->add_option("--top-p", run_o.top_p, "top-p sampling (1: off)")->capture_default_str();
  auto* seed_opt = run_cmd->add_option("--seed", run_o.seed, "random seed (default: from the clock)");
  run_cmd->add_flag("--json", run_o.json, "print one JSON object instead of streaming text");

  ChatOptions chat_o;
  auto* chat_cmd = app.add_subcommand("chat", "an interactive chat, one line of stdin per turn (/reset /save /load /quit)");
  add_model_options(chat_cmd, chat_o.m);
  chat_cmd->add_option("--system", chat_o.system, "system prompt");
  chat_cmd->add_option("--chat-template", chat_o.chat_template,
                       "conversation format, overriding the model's (chatml, llama3, llama2, mistral-v1, zephyr, "
                       "gemma, phi3, ...)");
  chat_cmd->add_option("-n,--n-predict", chat_o.n_predict, "most tokens per reply")->capture_default_str();
  chat_cmd->add_option("--temp", chat_o.temp, "temperature; 0 is greedy")->capture_default_str();
  chat_cmd->add_option("--top-k", chat_o.top_k, "top-k sampling (0: off)")->capture_default_str();
  chat_cmd->add_option("--top-p", chat_o.top_p, "top-p sampling (1: off)")->capture_default_str();
  auto* chat_seed_opt = chat_cmd->add_option("--seed", chat_o.seed, "random seed (default: from the clock)");
  chat_cmd->add_flag("--verbose", chat_o.verbose, "after each reply, the tokens prefilled and reused from the cache");
  add_policy_options(chat_cmd, chat_o.m, true);
  chat_cmd->add_flag("--pin-system", chat_o.pin_system,
                     "pin the system prompt's tokens: no policy evicts them (they count in its budget)");

  std::string info_model;
  bool info_json = false;
  auto* info_cmd = app.add_subcommand("info", "metadata, tensors and KV cost of a GGUF model");
  info_cmd->add_option("model", info_model, "GGUF file (default: the default model)");
  info_cmd->add_option("-m,--model", info_model, "GGUF file");
  info_cmd->add_flag("--json", info_json, "print JSON");

  TokenizeOptions tok_o;
  auto* tok_cmd = app.add_subcommand("tokenize", "token ids and pieces of a text");
  tok_cmd->add_option("-m,--model", tok_o.model, "GGUF model or vocabulary file");
  tok_cmd->add_option("text", tok_o.text, "text to tokenize")->required();
  tok_cmd->add_flag("--json", tok_o.json, "print {ids, pieces}");

  bool dev_json = false;
  auto* dev_cmd = app.add_subcommand("devices", "list Vulkan devices");
  dev_cmd->add_flag("--json", dev_json, "print JSON");

  BenchOptions bench_o;
  auto* bench_cmd = app.add_subcommand("bench", "prefill and decode speed (median of repetitions)");
  add_model_options(bench_cmd, bench_o.m);
  add_policy_options(bench_cmd, bench_o.m, true);
  bench_cmd->add_option("-p,--n-prompt", bench_o.n_prompt, "prompt tokens")->capture_default_str();
  bench_cmd->add_option("-n,--n-gen", bench_o.n_gen, "generated tokens")->capture_default_str();
  bench_cmd->add_option("-r,--repetitions", bench_o.reps, "repetitions")->capture_default_str();
  bench_cmd->add_option("--synthetic", bench_o.synthetic,
                        "time a model of this shape with random weights, built in memory: llama-1b, qwen-0.5b, "
                        "tiny-llama3, tiny-qwen2, tiny-head48");
  bench_cmd->add_option("--type", bench_o.type, "--synthetic's weight type (F32 F16 Q8_0 Q4_0 Q4_K_M ...)")
      ->capture_default_str();
  bench_cmd->add_flag("--json", bench_o.json, "print JSON");
  bench_cmd->add_flag("--profile", bench_o.profile, "GPU time per shader (timestamp queries)");
  bench_cmd->add_flag("--ops", bench_o.ops,
                      "the matrix shaders alone per weight type (2048 x 2048, as the forward pass dispatches them): "
                      "matvec GB/s of weights, matmul tokens/s over -p tokens");

  EvalOptions eval_o;
  auto* eval_cmd = app.add_subcommand(
      "eval", "perplexity, KL divergence and top-1 agreement of a KV cache against a baseline cache over a text");
  add_model_options(eval_cmd, eval_o.m);
  auto* eval_kv = eval_cmd->get_option("--kv");
  eval_kv->description("KV cache under test: a format, or a spec such as k=f32,v=f16 (see --baseline)");
  eval_cmd->add_option("-f,--file", eval_o.text_file, "text to evaluate on (at least 2 x context tokens)");
  auto* eval_kv_k = eval_cmd->get_option("--kv-k");
  auto* eval_kv_v = eval_cmd->get_option("--kv-v");
  eval_kv_k->description("format of the keys under test");
  eval_kv_v->description("format of the values under test");
  eval_cmd->add_option("--baseline", eval_o.baseline,
                       "baseline cache: FORMAT or items k=FORMAT, v=FORMAT, group=N joined by commas")
      ->capture_default_str();
  auto* eval_policy = eval_cmd->add_option(
      "--policy", eval_o.m.policy,
      "eviction policy of the cache under test (the baseline keeps everything); once its budget is reached the "
      "text is fed one token per step, as decoding would. Policies:\n" + kvscope::kv::policy_help());
  eval_cmd->add_option("--pin", eval_o.m.pins,
                       "token positions START:END of every chunk (end exclusive) that the policy under test may not "
                       "evict; repeatable");
  add_spill_options(eval_cmd, eval_o.m);
  eval_cmd->add_option("--max-chunks", eval_o.max_chunks,
                       "evaluate only the first N chunks of the text (eviction runs token by token: slower)");
  eval_cmd->add_flag("--json", eval_o.json, "print one JSON object");
  eval_cmd->add_flag("--sweep{all}", eval_o.sweep,
                     "many caches against the baseline, as a markdown table: --sweep (or --sweep=all) every cache "
                     "format, then every eviction policy at budgets 32, 64 and 128 (those below the context) on f16, "
                     "q8 and q4 keys and values; --sweep=formats or --sweep=policies for one half. Progress on stderr")
      ->excludes(eval_kv)
      ->excludes(eval_kv_k)
      ->excludes(eval_kv_v)
      ->excludes(eval_policy);

  ProbeOptions probe_o;
  auto* probe_cmd = app.add_subcommand(
      "probe", "what eviction silently breaks: scenarios (a fact early, a question late) under the full cache and "
               "each --policy, with the log-probability of the right answer and where the fact's tokens went");
  add_model_options(probe_cmd, probe_o.m);
  probe_cmd->add_option("scenarios", probe_o.scenarios, "scenario files (JSON, see assets/scenarios/)");
  probe_cmd->add_flag("--all", probe_o.all, "every scenario in assets/scenarios");
  probe_cmd->add_option("--policy", probe_o.policies,
                        "eviction policy to probe (repeatable), compared with the full cache. Policies:\n" +
                            kvscope::kv::policy_help());
  probe_cmd->add_flag("--json", probe_o.json, "print one JSON object");

  LabCommandOptions lab_o;
  auto* lab_cmd = app.add_subcommand(
      "lab", "which KV cache for your text and memory: a sweep of caches against the baseline (progress, resumable: "
             "each cache's figures go to DIR/rows.jsonl as it finishes), then a report (DIR/report.html with Pareto "
             "charts, PNGs, CSV, JSON) and a recommendation for --budget");
  add_model_options(lab_cmd, lab_o.m);
  lab_cmd->add_option("-f,--file", lab_o.text_file, "text to measure on (at least 2 x context tokens)");
  lab_cmd->add_option("--out", lab_o.out, "folder for the journal and the report (a sweep there is resumed)");
  std::string presets_help;
  for (std::string_view p : kvscope::lab_preset_names())
    presets_help += fmt::format("\n  {}: {}", p, kvscope::lab_preset_description(p));
  lab_cmd->add_option("--preset", lab_o.preset, "the grid to start from:" + presets_help)->capture_default_str();
  lab_cmd->add_option("--storages", lab_o.storages,
                      "storages instead of the preset's, separated by ';' (\"f16; q8; q4,group=8; k=q8,v=q4\")");
  lab_cmd->add_option("--policies", lab_o.policies,
                      "policy names instead of the preset's, separated by ',' (none: the storage alone; *: every policy)");
  lab_cmd->add_option("--budgets", lab_o.budgets, "policy budgets in tokens per kv head, separated by ','");
  lab_cmd->add_option("--caches", lab_o.caches, "whole cache specs added to the grid, separated by ';'");
  lab_cmd->add_option("--baseline", lab_o.baseline, "the cache every other is compared with")->capture_default_str();
  lab_cmd->add_option("--pin", lab_o.m.pins, "pin START:END in every cache with a policy (repeatable)");
  lab_cmd->add_option("--max-chunks", lab_o.max_chunks, "only the first N chunks of the text (0: all)");
  lab_cmd->add_option("--scenario", lab_o.scenarios, "probe scenario run under every cache (repeatable)");
  lab_cmd->add_flag("--probes", lab_o.probes, "run every scenario of assets/scenarios under every cache");
  lab_cmd->add_option("--budget", lab_o.budget,
                      "memory budget for the recommendation: 25% (of the baseline), 1728 or 1.5KiB (bytes per token), "
                      "2GiB@32768 (a whole cache at a context); default 25%");
  lab_cmd->add_option("--max-kl", lab_o.max_kl, "safe: mean KL at most this (nats)")->capture_default_str();
  lab_cmd->add_option("--min-top1", lab_o.min_top1, "safe: top-1 agreement at least this (0 to 1)")->capture_default_str();
  lab_cmd->add_flag("--fresh", lab_o.fresh, "a journal in --out from another sweep is kept aside and a new one started");
  lab_cmd->add_flag("--report", lab_o.report_only, "only write the report again from the journal (no model needed)");
  lab_cmd->add_flag("--json", lab_o.json, "print results.json on stdout");

  SoakOptions soak_o;
  auto* soak_cmd = app.add_subcommand(
      "soak", "memory over a long generation: each cache generates -n tokens while the process's resident memory and "
              "kvscope's device memory are sampled; prints the slopes (growth per 1000 tokens after warm-up)");
  add_model_options(soak_cmd, soak_o.m);
  soak_cmd->add_option("--policy", soak_o.policies,
                       "cache to soak (a policy or a whole spec, repeatable; default: rolling StreamingLLM and every "
                       "evicting policy at half the context)");
  soak_cmd->add_option("-n,--tokens", soak_o.tokens, "tokens to generate per cache")->capture_default_str()
      ->check(CLI::Range(1u, 100000000u));
  soak_cmd->add_option("--sample-every", soak_o.sample_every, "tokens between memory samples")->capture_default_str()
      ->check(CLI::Range(1u, 100000000u));
  soak_cmd->add_option("--log-events", soak_o.log_events,
                       "events the eviction log keeps in memory before folding the oldest (default 262144)");
  soak_cmd->add_flag("--json", soak_o.json, "print one JSON object");

  std::string ck, tk, out;
  auto* conv_cmd = app.add_subcommand("convert-llama2c", "convert a llama2.c checkpoint + tokenizer to GGUF");
  conv_cmd->add_option("checkpoint", ck, "llama2.c model.bin")->required();
  conv_cmd->add_option("tokenizer", tk, "llama2.c tokenizer.bin")->required();
  conv_cmd->add_option("out", out, "output GGUF")->required();

  std::string q_in, q_out, q_type;
  auto* q_cmd = app.add_subcommand("quantize", "rewrite a GGUF model's weight matrices as F16, Q8_0, Q4_0, K-quants or a K-quant mix");
  q_cmd->add_option("in", q_in, "input GGUF")->required();
  q_cmd->add_option("out", q_out, "output GGUF")->required();
  q_cmd->add_option("type", q_type, std::string(kvscope::quantize_scheme_list()))->required();

  SyntheticOptions syn_o;
  auto* syn_cmd = app.add_subcommand(
      "synthetic", "write a model file of a real architecture's shape with pseudo-random weights (for the window and "
                   "benchmarks at sizes no download is needed for)");
  syn_cmd->add_option("preset", syn_o.preset, "shape: " + kvscope::synthetic_preset_list())->required();
  syn_cmd->add_option("out", syn_o.out, "output GGUF")->required();
  syn_cmd->add_option("--vocab-from", syn_o.vocab_from, "copy the tokenizer (vocabulary, scores, types) of this GGUF");
  syn_cmd->add_option("--type", syn_o.type, "weight type (F32, Q8_0, Q4_K_M, ...)");
  syn_cmd->add_option("--layers", syn_o.layers, "layers")->check(CLI::Range(1u, 512u));
  syn_cmd->add_option("--heads", syn_o.heads, "query heads")->check(CLI::Range(1u, 512u));
  syn_cmd->add_option("--kv-heads", syn_o.kv_heads, "key/value heads")->check(CLI::Range(1u, 512u));
  syn_cmd->add_option("--dim", syn_o.dim, "model width")->check(CLI::Range(8u, 65536u));
  syn_cmd->add_option("--window", syn_o.window, "sliding window of the local layers (gemma3 presets)")
      ->check(CLI::Range(1u, 1u << 24));
  syn_cmd->add_option("--head-dim", syn_o.head_dim, "head size")->check(CLI::Range(4u, 1024u));
  syn_cmd->add_option("--ffn", syn_o.ffn, "feed-forward width")->check(CLI::Range(8u, 262144u));
  syn_cmd->add_option("--ctx", syn_o.ctx, "trained context")->check(CLI::Range(16u, 1u << 24));

  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e);
  }

  try {
    if (*run_cmd) {
      run_o.seed_set = seed_opt->count() > 0;
      return run(run_o);
    }
    if (*chat_cmd) {
      chat_o.seed_set = chat_seed_opt->count() > 0;
      return chat(chat_o);
    }
    if (*info_cmd) return info(info_model, info_json);
    if (*tok_cmd) return tokenize(tok_o);
    if (*dev_cmd) return devices(dev_json);
    if (*bench_cmd) return bench(bench_o);
    if (*eval_cmd) return eval(eval_o);
    if (*probe_cmd) return probe(probe_o);
    if (*soak_cmd) return soak(soak_o);
    if (*lab_cmd) return lab(lab_o);
    if (*conv_cmd) return convert_llama2c(ck, tk, out);
    if (*q_cmd) return quantize(q_in, q_out, q_type);
    if (*syn_cmd) return synthetic(syn_o);
  } catch (const std::exception& e) {
    std::fflush(stdout);
    std::fprintf(stderr, "kvscope: error: %s\n", e.what());
    return 1;
  }
  return 0;
}
