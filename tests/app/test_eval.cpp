// `kvscope eval`: the statistics, cache specs, the evaluation against
// llama.cpp's perplexity on the default model, and the command's output and
// errors.
#include <doctest/doctest.h>

#include <cmath>
#include <fstream>
#include <memory>

#include <nlohmann/json.hpp>

#include "app/core/evaluation.h"
#include "tests/app/cli_runner.h"
#include "tests/test_util.h"

using namespace kvscope;
using nlohmann::json;

namespace {

// llama.cpp's perplexity on tests/data/corpus.txt, F32 weights, f16 cache,
// context 256 (tests/data/REFERENCE.md): 3.5631 ± 0.129.
constexpr double kLlamaCppPpl = 3.5631;
constexpr double kLlamaCppPplStderr = 0.129;

// A cut of the corpus long enough for -c 128 (more than 256 tokens: ~650)
// that keeps the CLI tests short.
std::string corpus_cut(const test::TempDir& dir) {
  const std::string corpus = test::read_text(test::data_path("corpus.txt"));
  const std::string path = dir.file("corpus-cut.txt");
  std::ofstream(path, std::ios::binary) << corpus.substr(0, corpus.find('\n', 2400) + 1);
  return path;
}

}  // namespace

// ------------------------------------------------------------- statistics

TEST_CASE("eval stats: log_softmax is normalized and shift-invariant") {
  const std::vector<float> logits{1.0f, 2.0f, -3.0f, 0.5f};
  std::vector<double> a(4), b(4);
  eval_stats::log_softmax(logits, a);
  double total = 0;
  for (double x : a) total += std::exp(x);
  CHECK(total == doctest::Approx(1.0).epsilon(1e-12));
  std::vector<float> shifted;
  for (float x : logits) shifted.push_back(x + 1000.0f);  // would overflow exp() without the max shift
  eval_stats::log_softmax(shifted, b);
  for (size_t i = 0; i < 4; ++i) CHECK(b[i] == doctest::Approx(a[i]).epsilon(1e-9));
}

TEST_CASE("eval stats: KL divergence") {
  SUBCASE("identical distributions give exactly 0") {
    const std::vector<float> logits{0.3f, -1.0f, 2.5f, 0.0f, 7.0f};
    std::vector<double> p(5);
    eval_stats::log_softmax(logits, p);
    CHECK(eval_stats::kl_divergence(p, p) == 0.0);
  }
  SUBCASE("known distributions: p = (1/2, 1/2), q = (1/4, 3/4)") {
    // From logits: (0, 0) -> (1/2, 1/2); (0, ln 3) -> (1/4, 3/4).
    std::vector<double> log_p(2), log_q(2);
    eval_stats::log_softmax(std::vector<float>{0.0f, 0.0f}, log_p);
    eval_stats::log_softmax(std::vector<float>{0.0f, float(std::log(3.0))}, log_q);
    // 1/2 ln(2) + 1/2 ln(2/3) = 1/2 ln(4/3)
    CHECK(eval_stats::kl_divergence(log_p, log_q) == doctest::Approx(0.5 * std::log(4.0 / 3.0)).epsilon(1e-6));
    // and the other direction: 1/4 ln(1/2) + 3/4 ln(3/2)
    CHECK(eval_stats::kl_divergence(log_q, log_p) ==
          doctest::Approx(0.25 * std::log(0.5) + 0.75 * std::log(1.5)).epsilon(1e-6));
  }
}

TEST_CASE("eval stats: argmax, median and p99") {
  CHECK(eval_stats::argmax(std::vector<float>{1, 5, 3, 5}) == 1);  // the first of equals
  CHECK(eval_stats::quantile({3, 1, 2}, 0.5) == 2.0);
  CHECK(eval_stats::quantile({4, 1, 3, 2}, 0.5) == 2.5);
  CHECK(eval_stats::quantile({7}, 0.99) == 7.0);
  CHECK(eval_stats::quantile({}, 0.5) == 0.0);
  // Ten values 0..9: the 0.99 point sits at 8.91 of 9 order-statistic steps.
  CHECK(eval_stats::quantile({9, 0, 8, 1, 7, 2, 6, 3, 5, 4}, 0.99) == doctest::Approx(8.91));
  std::vector<double> hundred_and_one;
  for (int i = 0; i <= 100; ++i) hundred_and_one.push_back(i);
  CHECK(eval_stats::quantile(hundred_and_one, 0.99) == doctest::Approx(99.0));
  CHECK(eval_stats::quantile(hundred_and_one, 1.0) == 100.0);
}

// ------------------------------------------------------------- cache specs

TEST_CASE("cache spec: grammar, canonical names and errors") {
  CacheSpec s = parse_cache_spec("f16");
  CHECK(s.k_format == kv::Format::F16);
  CHECK(s.v_format == kv::Format::F16);
  CHECK(s.name() == "f16");

  s = parse_cache_spec("k=f32,v=f16");
  CHECK(s.k_format == kv::Format::F32);
  CHECK(s.v_format == kv::Format::F16);
  CHECK(s.name() == "k=f32,v=f16");
  CHECK(parse_cache_spec(s.name()) == s);
  CHECK(parse_cache_spec("v=f32").name() == "k=f16,v=f32");  // what is unset stays f16
  CHECK(parse_cache_spec("k=f32,v=f32").name() == "f32");

  auto error_of = [](std::string_view text) {
    try {
      parse_cache_spec(text);
    } catch (const std::invalid_argument& e) {
      return std::string(e.what());
    }
    return std::string("(no error)");
  };
  CHECK(error_of("q9").find("unknown format 'q9'; choose one of: " + std::string(kv::format_names())) !=
        std::string::npos);
  CHECK(error_of("k=f32,k=f16").find("given twice") != std::string::npos);
  CHECK(error_of("f32,v=f16").find("given twice") != std::string::npos);
  CHECK(error_of("x=f16").find("unknown key 'x'") != std::string::npos);
  CHECK(error_of("").find("empty cache spec") != std::string::npos);
  CHECK(error_of("f16,").find("empty item") != std::string::npos);
  CHECK(error_of("group=0").find("whole number > 0") != std::string::npos);
  // A group size reaches the cache's configuration (which checks it against head_dim).
  const CacheSpec grouped = parse_cache_spec("k=q8,v=q4,group=16");
  CHECK(grouped.name() == "k=q8,v=q4,group=16");
  CHECK(grouped.config(256).group_size == 16);
  CHECK(parse_cache_spec("q8").config(256).group_size == 0);  // 0: the cache's default
  // f16 and f32 store floats: a group size means nothing for them.
  CHECK(error_of("f16,group=16").find("group size applies to quantized formats (q8, q4, kivi2)") !=
        std::string::npos);
}

TEST_CASE("cache spec: the sweep covers every format of kv::all_formats()") {
  const auto specs = sweep_specs(std::nullopt);
  REQUIRE(specs.size() == kv::all_formats().size());
  for (size_t i = 0; i < specs.size(); ++i) {
    CHECK(specs[i].k_format == kv::all_formats()[i]);
    CHECK(specs[i].v_format == kv::all_formats()[i]);
  }
  bool any_quantized = false;
  for (kv::Format f : kv::all_formats()) any_quantized |= is_quantized(f);
  if (any_quantized) {
    for (const CacheSpec& s : sweep_specs(16))
      CHECK(s.group_size == (is_quantized(s.k_format) ? std::optional<uint32_t>(16) : std::nullopt));
  } else {
    CHECK_THROWS_WITH_AS(sweep_specs(16), doctest::Contains("group size applies to quantized formats"),
                         std::invalid_argument);
  }
}

// ------------------------------------------------- the default model

TEST_CASE("eval: the corpus at context 256 agrees with llama.cpp; f16 against itself and f32") {
  EngineOptions eo;
  eo.model_path = test::model_path();
  Engine engine(eo);
  const std::vector<int32_t> tokens = engine.tokenizer().encode(test::read_text(test::data_path("corpus.txt")), true);

  // A text shorter than two chunks is refused, saying how many tokens are needed.
  {
    EvaluationOptions o;
    o.n_ctx = 256;
    o.tests = {CacheSpec{}};
    const std::vector<int32_t> short_text(tokens.begin(), tokens.begin() + 511);
    CHECK_THROWS_WITH_AS(evaluate_caches(engine, short_text, o),
                         doctest::Contains("the text is 511 tokens; evaluating with a context of 256 needs at least 512"),
                         TextTooShort);
  }

  // One evaluation (the slow part), several checks.
  EvaluationOptions o;
  o.n_ctx = 256;
  CacheSpec f16, f32;
  f32.k_format = f32.v_format = kv::Format::F32;
  o.baseline = f16;
  o.tests = {f16, f32};
  uint32_t chunks_seen = 0;
  o.on_chunk = [&](uint32_t done, uint32_t) { chunks_seen = done; };
  const EvaluationReport r = evaluate_caches(engine, tokens, o);

  CHECK(r.n_tokens == tokens.size());
  CHECK(r.n_chunks == tokens.size() / 256);
  CHECK(chunks_seen == r.n_chunks);
  CHECK(r.n_scored == uint64_t{r.n_chunks} * 127);
  MESSAGE("perplexity " << r.baseline.ppl << " ± " << r.baseline.ppl_stderr << " (llama.cpp " << kLlamaCppPpl
                        << " ± " << kLlamaCppPplStderr << ")");
  CHECK(std::abs(r.baseline.ppl - kLlamaCppPpl) < 0.002);
  CHECK(r.baseline.ppl_stderr == doctest::Approx(kLlamaCppPplStderr).epsilon(0.01));
  CHECK(r.baseline.bytes_per_token == 6912);  // 6 layers x 6 kv heads x 48 x (2 + 2) bytes
  CHECK(r.baseline.cache_bytes == 6912ull * 256);
  CHECK(r.baseline.tokens_evaluated == uint64_t{r.n_chunks} * 256);
  CHECK(r.baseline.tok_s() > 0);
  REQUIRE(r.tests.size() == 2);

  // The baseline against itself: the same device computes the same logits.
  const CacheEvaluation& same = r.tests[0];
  CHECK(same.run.ppl == r.baseline.ppl);
  CHECK(same.ppl_ratio == 1.0);
  CHECK(same.divergence.kl_mean == 0.0);
  CHECK(same.divergence.kl_max == 0.0);
  CHECK(same.divergence.top1_agreement == 1.0);
  CHECK(same.divergence.dp_top_mean == 0.0);

  // f32 keys and values: a more exact cache, a little different, never negative.
  const CacheEvaluation& wide = r.tests[1];
  MESSAGE("f32 against f16: KL mean " << wide.divergence.kl_mean << " p99 " << wide.divergence.kl_p99 << " max "
                                      << wide.divergence.kl_max << ", top-1 " << wide.divergence.top1_agreement);
  CHECK(wide.divergence.kl_mean >= 0.0);
  CHECK(wide.divergence.kl_mean < 1e-3);
  CHECK(wide.divergence.kl_median <= wide.divergence.kl_p99);
  CHECK(wide.divergence.kl_p99 <= wide.divergence.kl_max);
  CHECK(wide.divergence.top1_agreement >= 0.99);
  CHECK(std::abs(wide.run.ppl - r.baseline.ppl) < 0.01);
  CHECK(wide.run.bytes_per_token == 2 * r.baseline.bytes_per_token);
  CHECK(wide.run.cache_bytes == 2 * r.baseline.cache_bytes);
}

// ------------------------------------------------------------ the command

TEST_CASE("cli: eval --json has every figure the issue names") {
  test::TempDir dir;
  const std::string text = corpus_cut(dir);
  const test::CliResult r = test::kvscope_cli("eval -f " + text + " -c 128 --kv f32 --json");
  REQUIRE_MESSAGE(r.code == 0, r.out);
  const json j = test::last_json(r.out);
  for (const char* key : {"ppl_base", "ppl", "kl_mean", "kl_median", "kl_p99", "kl_max", "top1_agreement",
                          "dp_top_mean", "bytes_per_token_base", "bytes_per_token", "cache_bytes_base", "cache_bytes",
                          "tok_s_base", "tok_s"}) {
    CAPTURE(key);
    REQUIRE(j.contains(key));
    CHECK(j[key].is_number());
    CHECK(j[key].get<double>() >= 0);
  }
  CHECK(j["kv_base"] == "f16");
  CHECK(j["kv"] == "f32");
  CHECK(j["n_ctx"] == 128);
  CHECK(j["n_chunks"].get<int>() >= 2);
  CHECK(j["bytes_per_token"].get<double>() == 2 * j["bytes_per_token_base"].get<double>());
  CHECK(j["top1_agreement"].get<double>() <= 1.0);
}

TEST_CASE("cli: eval --sweep prints a markdown table sorted by bytes per token") {
  test::TempDir dir;
  // Two chunks: the eviction rows run token by token once their budget is reached.
  const test::CliResult r = test::kvscope_cli("eval --sweep -f " + corpus_cut(dir) + " -c 128 --max-chunks 2");
  REQUIRE_MESSAGE(r.code == 0, r.out);
  CHECK(r.out.find("| cache | bytes/token | cache MiB | ppl | Δppl | KL mean | KL p99 | top-1 | tok/s |") !=
        std::string::npos);
  const size_t f16_row = r.out.find("| f16 (baseline) | 6912 |");
  const size_t f32_row = r.out.find("| f32 | 13824 |");
  CHECK(f16_row != std::string::npos);
  CHECK(f32_row != std::string::npos);
  CHECK(f16_row < f32_row);
  CHECK(r.out.find("| f16 (baseline) | 6912 | 0.84 |") != std::string::npos);  // 6912 B x 128 slots
  CHECK(r.out.find("not perplexity") != std::string::npos);
  // Every policy at the budgets below the context, on f16 storage.
  for (const char* row : {"| f16 + window:budget=32 | 6912 |", "| f16 + h2o:budget=64,recent=32 | 6912 |",
                          "| f16 + pyramidkv:budget=64 | 6912 |"})
    CHECK_MESSAGE(r.out.find(row) != std::string::npos, row);
  CHECK(r.out.find("budget=128") == std::string::npos);
}

TEST_CASE("cli: eval --policy evicts in the cache under test only, and --json says so") {
  test::TempDir dir;
  const test::CliResult r = test::kvscope_cli("eval -f " + corpus_cut(dir) +
                                              " -c 64 --max-chunks 2 --policy window:budget=32 --json");
  REQUIRE_MESSAGE(r.code == 0, r.out);
  const json j = test::last_json(r.out);
  CHECK(j["policy"] == "window:budget=32");
  CHECK(j["kv"] == "f16");
  CHECK(j["n_chunks"] == 2);
  CHECK(j["evictions"].get<uint64_t>() > 0);
  CHECK(j["kl_mean"].get<double>() > 0);
  const test::CliResult bad = test::kvscope_cli("eval -f " + corpus_cut(dir) + " --policy window:size=3");
  CHECK(bad.code != 0);
  CHECK(test::count_lines(bad.out) == 1);
  CHECK(bad.out.find("--policy") != std::string::npos);
}

TEST_CASE("cli: eval errors are one clear line and a non-zero exit") {
  test::TempDir dir;
  SUBCASE("no text") {
    const test::CliResult r = test::kvscope_cli("eval");
    CHECK(r.code != 0);
    CHECK(r.out.find("-f FILE") != std::string::npos);
    CHECK(test::count_lines(r.out) == 1);
  }
  SUBCASE("missing text file") {
    const test::CliResult r = test::kvscope_cli("eval -f " + dir.file("nope.txt"));
    CHECK(r.code != 0);
    CHECK(r.out.find("nope.txt: cannot read the file") != std::string::npos);
    CHECK(test::count_lines(r.out) == 1);
  }
  SUBCASE("text shorter than two chunks") {
    const std::string path = dir.file("short.txt");
    std::ofstream(path) << "Once upon a time, there was a little girl named Lily.";
    const test::CliResult r = test::kvscope_cli("eval -f " + path + " -c 128");
    CHECK(r.code != 0);
    CHECK(r.out.find("short.txt: the text is") != std::string::npos);
    CHECK(r.out.find("needs at least 256") != std::string::npos);
    CHECK(test::count_lines(r.out) == 1);
  }
  SUBCASE("a group size for an unquantized cache") {
    const test::CliResult r =
        test::kvscope_cli("eval -f " + test::data_path("corpus.txt") + " --kv f16 --kv-group 16");
    CHECK(r.code != 0);
    CHECK(r.out.find("--kv-group 16: group size applies to quantized formats (q8, q4, kivi2)") != std::string::npos);
    CHECK(test::count_lines(r.out) == 1);
  }
  SUBCASE("a bad baseline spec") {
    const test::CliResult r = test::kvscope_cli("eval -f " + test::data_path("corpus.txt") + " --baseline k=q9");
    CHECK(r.code != 0);
    CHECK(r.out.find("--baseline k=q9") != std::string::npos);
    CHECK(r.out.find("unknown format 'q9'") != std::string::npos);
    CHECK(test::count_lines(r.out) == 1);
  }
}
