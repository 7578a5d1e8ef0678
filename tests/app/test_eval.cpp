// `kvscope eval`: the statistics, cache specs, the evaluation against
// llama.cpp's perplexity on the default model, and the command's output and
// errors.
#include <doctest/doctest.h>

#include <cmath>
#include <fstream>
#include <memory>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "app/core/evaluation.h"
#include "app/core/lost_attention.h"
#include "kv/policy.h"
#include "tests/app/cli_runner.h"
#include "tests/shared_engine.h"
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
  Engine& engine = test::shared_engine();
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

  // The whole corpus with the baseline alone (the slow part): llama.cpp's
  // perplexity on the same text.
  EvaluationOptions o;
  o.n_ctx = 256;
  CacheSpec f16, f32;
  f32.k_format = f32.v_format = kv::Format::F32;
  o.baseline = f16;
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
  CHECK(r.baseline.bits_per_value == 16.0);
  CHECK(r.baseline.cache_bytes == 6912ull * 256);
  CHECK(r.baseline.tokens_evaluated == uint64_t{r.n_chunks} * 256);
  CHECK(r.baseline.tok_s() > 0);
  CHECK(r.tests.empty());

  // The comparisons need no whole corpus: its first four chunks (508 scored
  // positions), the baseline against itself and against f32.
  o.tests = {f16, f32};
  o.max_chunks = 4;
  const EvaluationReport c = evaluate_caches(engine, tokens, o);
  CHECK(c.n_chunks == 4);
  REQUIRE(c.tests.size() == 2);

  // The baseline against itself: the same device computes the same logits.
  const CacheEvaluation& same = c.tests[0];
  CHECK(same.run.ppl == c.baseline.ppl);
  CHECK(same.ppl_ratio == 1.0);
  CHECK(same.divergence.kl_mean == 0.0);
  CHECK(same.divergence.kl_max == 0.0);
  CHECK(same.divergence.top1_agreement == 1.0);
  CHECK(same.divergence.dp_top_mean == 0.0);

  // f32 keys and values: a more exact cache, a little different, never negative.
  const CacheEvaluation& wide = c.tests[1];
  MESSAGE("f32 against f16: KL mean " << wide.divergence.kl_mean << " p99 " << wide.divergence.kl_p99 << " max "
                                      << wide.divergence.kl_max << ", top-1 " << wide.divergence.top1_agreement);
  CHECK(wide.divergence.kl_mean >= 0.0);
  CHECK(wide.divergence.kl_mean < 1e-3);
  CHECK(wide.divergence.kl_median <= wide.divergence.kl_p99);
  CHECK(wide.divergence.kl_p99 <= wide.divergence.kl_max);
  CHECK(wide.divergence.top1_agreement >= 0.99);
  CHECK(std::abs(wide.run.ppl - c.baseline.ppl) < 0.01);
  CHECK(wide.run.bytes_per_token == 2 * c.baseline.bytes_per_token);
  CHECK(wide.run.cache_bytes == 2 * c.baseline.cache_bytes);
}

// ------------------------------------------------------------ lost attention

namespace {

// Two layers, four query heads on two kv heads, three positions; every
// probability a dyadic fraction so that the sums below are exact.
AttentionRows hand_made_rows() {
  AttentionRows rows;
  rows.n_layer = 2, rows.n_head = 4, rows.n_positions = 3;
  rows.probs = {
      0.5f,  0.25f,  0.25f,  // layer 0, head 0 (kv head 0)
      0.125f, 0.125f, 0.75f, // head 1 (kv head 0)
      0.25f, 0.25f,  0.5f,   // head 2 (kv head 1)
      1.0f,  0.0f,   0.0f,   // head 3 (kv head 1)
      0.25f, 0.25f,  0.5f,   // layer 1, every head alike
      0.25f, 0.25f,  0.5f,  0.25f, 0.25f, 0.5f, 0.25f, 0.25f, 0.5f,
  };
  return rows;
}

HeldPositions hand_made_held() {
  HeldPositions held;
  held.n_layer = 2, held.n_kv_head = 2, held.n_positions = 3;
  held.held = {
      1, 0, 1,  // layer 0, kv head 0: position 1 evicted
      0, 1, 1,  // layer 0, kv head 1: position 0 evicted
      1, 1, 1,  // layer 1, kv head 0: everything held
      0, 0, 0,  // layer 1, kv head 1: nothing held
  };
  return held;
}

}  // namespace

TEST_CASE("lost attention: hand-made rows and held positions give exact values") {
  const AttentionRows rows = hand_made_rows();
  const HeldPositions held = hand_made_held();
  // Layer 0: heads lose 0.25, 0.125, 0.25 and 1 of their mass: mean 1.625 / 4.
  // Layer 1: heads 2 and 3 lose everything: 2 / 4.
  const std::vector<double> lost = lost_attention(rows, held);
  REQUIRE(lost.size() == 2);
  CHECK(lost[0] == 0.40625);
  CHECK(lost[1] == 0.5);

  // Holding everything loses nothing, exactly.
  HeldPositions all = held;
  std::fill(all.held.begin(), all.held.end(), uint8_t{1});
  CHECK(lost_attention(rows, all) == std::vector<double>{0.0, 0.0});

  // The accumulator: this step, then one where nothing was lost.
  LostAttentionAccumulator acc;
  const std::vector<int32_t> tokens{1, 500, 600};
  CHECK(acc.add(rows, held, tokens, 7) == lost);
  acc.add_nothing_lost(2);
  const LostAttentionSummary s = acc.summary(2);
  CHECK(s.steps == 2);
  CHECK(s.mean == 0.2265625);  // (0.453125 + 0) / 2
  CHECK(s.max == 0.453125);
  CHECK(s.p99 == doctest::Approx(0.99 * 0.453125).epsilon(1e-12));
  CHECK(s.per_layer == std::vector<double>{0.203125, 0.25});
  // Per position, the mean over layers of its share: position 0 (0.3125 in
  // layer 0, 0.125 in layer 1) before position 2 (0, 0.25) before 1 (0.09375, 0.125).
  REQUIRE(s.regretted.size() == 2);
  CHECK(s.regretted[0].sequence == 7);
  CHECK(s.regretted[0].position == 0);
  CHECK(s.regretted[0].token == 1);
  CHECK(s.regretted[0].lost_mass == 0.21875);
  CHECK(s.regretted[1].position == 2);
  CHECK(s.regretted[1].token == 600);
  CHECK(s.regretted[1].lost_mass == 0.125);
  CHECK(acc.summary(10).regretted.size() == 3);

  // Shapes that do not describe the same step are refused.
  HeldPositions wrong = held;
  wrong.n_positions = 2;
  wrong.held.resize(8);
  CHECK_THROWS_WITH_AS(lost_attention(rows, wrong), doctest::Contains("must describe the same model"),
                       std::invalid_argument);
  HeldPositions three_kv = held;
  three_kv.n_kv_head = 3;  // 4 heads do not group onto 3 kv heads
  CHECK_THROWS_AS(lost_attention(rows, three_kv), std::invalid_argument);
}

TEST_CASE("lost attention on the default model: 0 when nothing is evicted, rising as the budget shrinks") {
  Engine& engine = test::shared_engine();
  const std::vector<int32_t> tokens = engine.tokenizer().encode(test::read_text(test::data_path("corpus.txt")), true);

  // The probe rows by position: every head's row sums to 1, and a cache that
  // holds everything loses nothing of it.
  {
    Session session(engine, CacheSpec{}.config(128));
    session.logits_all({tokens.begin(), tokens.begin() + 40});
    session.attention_probe().on = true;
    session.logits_all({tokens[40]});
    const AttentionRows rows = probe_attention_rows(session.attention_probe(), engine.config(), session.cache(), 41);
    for (uint32_t l = 0; l < rows.n_layer; ++l)
      for (uint32_t h = 0; h < rows.n_head; ++h) {
        double sum = 0;
        for (uint32_t p = 0; p < 41; ++p) sum += rows.at(l, h, p);
        CHECK(sum == doctest::Approx(1.0).epsilon(1e-4));
      }
    for (double lost : lost_attention(rows, held_positions(session.cache(), 41))) CHECK(lost == 0.0);
  }

  EvaluationOptions o;
  o.n_ctx = 64;  // 31 scored positions: short on lavapipe
  o.max_chunks = 1;
  auto with_policy = [](const char* policy) {
    CacheSpec spec;
    spec.policy = kv::parse_policy_spec(policy).text();
    return spec;
  };
  o.tests = {CacheSpec{}, with_policy("window:budget=64"), with_policy("window:budget=32"),
             with_policy("window:budget=16")};
  const EvaluationReport r = evaluate_caches(engine, tokens, o);
  REQUIRE(r.tests.size() == 4);
  // Budget = context: nothing evicted, nothing lost; then the window shrinks.
  const LostAttentionSummary &none = r.tests[0].lost, &all = r.tests[1].lost, &w32 = r.tests[2].lost,
                             &w16 = r.tests[3].lost;
  CHECK(none.mean == 0.0);
  CHECK(all.steps == 31);  // every scored position, inside the prompt the budget held
  CHECK(all.mean == 0.0);
  CHECK(all.max == 0.0);
  MESSAGE("lost attention: window 32 mean " << w32.mean << " p99 " << w32.p99 << "; window 16 mean " << w16.mean
                                            << " p99 " << w16.p99);
  CHECK(w32.steps == 31);
  CHECK(w32.mean > 0.0);
  CHECK(w16.mean > w32.mean);
  CHECK(w16.p99 >= w16.mean);
  CHECK(w16.max <= 1.0);
  REQUIRE(w16.per_layer.size() == 6);
  REQUIRE(w16.regretted.size() == 10);
  // Position 0 (BOS, the attention sink the window drops) is the most regretted.
  CHECK(w16.regretted[0].position == 0);
  CHECK(w16.regretted[0].token == engine.tokenizer().bos());
  CHECK(r.tests[3].divergence.kl_mean > r.tests[2].divergence.kl_mean);

  // Pinned positions are never evicted: no attention is lost on them.
  EvaluationOptions pinned = o;
  pinned.tests = {with_policy("window:budget=16")};
  pinned.pins = kv::PinnedSpans({{0, 8}});
  pinned.regretted_top = 1000;  // every position that lost anything
  const EvaluationReport p = evaluate_caches(engine, tokens, pinned);
  const LostAttentionSummary& lost = p.tests[0].lost;
  REQUIRE(!lost.regretted.empty());
  for (const RegrettedEviction& e : lost.regretted) {
    CAPTURE(e.position);
    CHECK(e.position >= 8);
  }
  // (The pins take 8 of the 16 slots, so the rest of the window is shorter:
  // the total lost is not necessarily smaller.)
  CHECK(engine.context().validation_messages() == 0);
}

// ------------------------------------------------------------ the command

TEST_CASE("cli: eval --json has every figure the issue names") {
  test::TempDir dir;
  const std::string text = corpus_cut(dir);
  const test::CliResult r = test::kvscope_cli("eval -f " + text + " -c 128 --kv f32 --json");
  REQUIRE_MESSAGE(r.code == 0, r.out);
  const json j = test::last_json(r.out);
  for (const char* key : {"ppl_base", "ppl", "kl_mean", "kl_median", "kl_p99", "kl_max", "top1_agreement",
                          "dp_top_mean", "bytes_per_token_base", "bytes_per_token", "bits_per_value_base",
                          "bits_per_value", "cache_bytes_base", "cache_bytes",
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
  CHECK(j["bits_per_value"].get<double>() == 2 * j["bits_per_value_base"].get<double>());
  CHECK(j["top1_agreement"].get<double>() <= 1.0);
}

TEST_CASE("cli: eval --sweep=formats prints a markdown table sorted by bytes per token") {
  test::TempDir dir;
  const test::CliResult r = test::kvscope_cli("eval --sweep=formats -f " + corpus_cut(dir) + " -c 128 --max-chunks 2");
  REQUIRE_MESSAGE(r.code == 0, r.out);
  CHECK(r.out.find("| cache | bytes/token | bits/value | cache MiB | ppl | Δppl | KL mean | KL p99 | top-1 | lost attn | "
                   "tok/s |") != std::string::npos);
  const size_t f16_row = r.out.find("| f16 (baseline) | 6912 |");
  const size_t f32_row = r.out.find("| f32 | 13824 |");
  CHECK(f16_row != std::string::npos);
  CHECK(f32_row != std::string::npos);
  CHECK(f16_row < f32_row);
  CHECK(r.out.find("| f16 (baseline) | 6912 | 16.00 | 0.84 |") != std::string::npos);  // 6912 B x 128 slots
  // kivi2 at 128 slots: its two f16 windows of 32 are a quarter of the cache each.
  CHECK(r.out.find("| kivi2 | 3276 | 7.58 |") != std::string::npos);
  CHECK(r.out.find("not perplexity") != std::string::npos);
  CHECK(r.out.find("budget=") == std::string::npos);  // formats only
  // Progress, a line per cache and chunk, goes to stderr (merged here).
  CHECK(r.out.find("chunk 2/2: cache 5/5") != std::string::npos);
}

TEST_CASE("cli: eval --sweep=policies runs every policy on f16, q8 and q4 with its lost attention") {
  test::TempDir dir;
  // Context 64: only budget 32 is below it; one chunk keeps the 18 rows short.
  const test::CliResult r =
      test::kvscope_cli("eval --sweep=policies -f " + corpus_cut(dir) + " -c 64 --max-chunks 1");
  REQUIRE_MESSAGE(r.code == 0, r.out);
  for (const char* policy : {"window:budget=32", "streamingllm:sinks=4,window=28", "h2o:budget=32,recent=16",
                             "tova:budget=32", "snapkv:budget=32", "pyramidkv:budget=32"})
    for (const char* storage : {"f16", "q8", "q4"}) {
      const std::string row = fmt::format("| {} + {} |", storage, kv::parse_policy_spec(policy).text());
      CHECK_MESSAGE(r.out.find(row) != std::string::npos, row);
    }
  CHECK(r.out.find("budget=64") == std::string::npos);
  CHECK(r.out.find("| f32 |") == std::string::npos);  // no format rows
  // Every row has a lost-attention figure above 0 (a window of 32 in a context of 64 loses some).
  const size_t row = r.out.find("| f16 + window:budget=32 |");
  REQUIRE(row != std::string::npos);
  const std::string line = r.out.substr(row, r.out.find('\n', row) - row);
  std::vector<std::string> cells;
  for (size_t at = 1, next; (next = line.find('|', at)) != std::string::npos; at = next + 1)
    cells.push_back(line.substr(at, next - at));
  REQUIRE(cells.size() == 11);
  CHECK(std::stod(cells[9]) > 0);
  const test::CliResult bad = test::kvscope_cli("eval --sweep=everything -f " + corpus_cut(dir));
  CHECK(bad.code != 0);
  CHECK(bad.out.find("--sweep=everything: expected formats, policies or all") != std::string::npos);
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
  // Lost attention: what the baseline looked at that the window had dropped.
  CHECK(j["lost_attention_mean"].get<double>() > 0);
  CHECK(j["lost_attention_p99"].get<double>() >= j["lost_attention_mean"].get<double>());
  REQUIRE(j["lost_attention_per_layer"].size() == 6);
  REQUIRE(j["regretted_evictions"].is_array());
  REQUIRE(j["regretted_evictions"].size() == 10);
  double previous = 1e9;
  for (const json& e : j["regretted_evictions"]) {
    CHECK(e["lost_mass"].get<double>() <= previous);
    previous = e["lost_mass"].get<double>();
    CHECK(e["position"].get<int>() < 64);
    CHECK(e["text"].is_string());
  }
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
