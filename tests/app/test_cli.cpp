// The `kvscope` command as a person runs it: output formats, and one clear
// line with a non-zero exit for every kind of bad input.
#include <doctest/doctest.h>

#include <fstream>

#include <nlohmann/json.hpp>

#include "tests/app/cli_runner.h"
#include "tests/test_util.h"

using nlohmann::json;
using namespace kvscope;
using test::count_lines;
using test::kvscope_cli;
using test::last_json;
using Result = test::CliResult;

TEST_CASE("cli: run --json greedy gives the reference continuation") {
  test::model_path();
  const Result r = kvscope_cli("run -p 'Once upon a time' -n 12 --temp 0 --json");
  REQUIRE_MESSAGE(r.code == 0, r.out);
  const json j = last_json(r.out);
  CHECK(j["prompt_ids"] == json({1, 9038, 2501, 263, 931}));
  CHECK(j["ids"] == json({29892, 727, 471, 263, 2217, 7826, 4257, 365, 2354, 29889, 2296, 18012}));
  CHECK(j["text"].get<std::string>() == ", there was a little girl named Lily. She loved");
  CHECK(j["prefill_tok_s"].get<double>() > 0);
  CHECK(j["decode_tok_s"].get<double>() > 0);
  CHECK(!j["device"].get<std::string>().empty());
}

TEST_CASE("cli: run streams text and ends with speeds on stderr") {
  test::model_path();
  const Result r = kvscope_cli("run -p 'Once upon a time' -n 8 --temp 0");
  REQUIRE_MESSAGE(r.code == 0, r.out);
  CHECK(r.out.find("Once upon a time, there was a little girl named") != std::string::npos);
  CHECK(r.out.find("tokens/s") != std::string::npos);
}

TEST_CASE("cli: sampling with a seed is repeatable") {
  test::model_path();
  const Result a = kvscope_cli("run -n 16 --temp 1 --top-k 40 --top-p 0.9 --seed 7 --json");
  const Result b = kvscope_cli("run -n 16 --temp 1 --top-k 40 --top-p 0.9 --seed 7 --json");
  REQUIRE(a.code == 0);
  REQUIRE(b.code == 0);
  CHECK(last_json(a.out)["ids"] == last_json(b.out)["ids"]);
}

TEST_CASE("cli: tokenize --json and info") {
  test::model_path();
  Result r = kvscope_cli("tokenize --json 'Hello world'");
  REQUIRE_MESSAGE(r.code == 0, r.out);
  json j = last_json(r.out);
  CHECK(j["ids"] == json({1, 15043, 3186}));
  CHECK(j["pieces"] == json({"<s>", "▁Hello", "▁world"}));

  // a vocabulary-only GGUF (no tensors) written by llama.cpp
  r = kvscope_cli("tokenize --json -m " + test::data_path("vocab/ggml-vocab-llama-spm.gguf") + " 'Hello world'");
  REQUIRE_MESSAGE(r.code == 0, r.out);
  CHECK(last_json(r.out)["ids"] == json({1, 15043, 3186}));

  r = kvscope_cli("info");
  REQUIRE_MESSAGE(r.code == 0, r.out);
  CHECK(r.out.find("dim 288, layers 6, heads 6 (kv 6), head_dim 48") != std::string::npos);
  CHECK(r.out.find("KV bytes per token: f32 13824 f16 6912 q8 4032 q4 2592 kivi2 2394") != std::string::npos);
  CHECK(r.out.find("KV bits per value: f32 32.00 f16 16.00 q8 9.33 q4 6.00 kivi2 5.54") != std::string::npos);
  CHECK(r.out.find("blk.5.ffn_down.weight") != std::string::npos);
}

TEST_CASE("cli: devices lists at least one Vulkan device") {
  const Result r = kvscope_cli("devices --json");
  REQUIRE_MESSAGE(r.code == 0, r.out);
  const json j = json::parse(r.out.substr(r.out.find('[')));
  REQUIRE(j.size() >= 1);
  CHECK(j[0]["subgroup_size"].get<int>() > 0);
}

TEST_CASE("cli: bad input is one clear line and a non-zero exit") {
  test::TempDir dir;
  SUBCASE("prompt longer than the context") {
    const Result r = kvscope_cli("run -c 8 -p 'one two three four five six seven eight nine ten' -n 4");
    CHECK(r.code != 0);
    CHECK(r.out.find("context") != std::string::npos);
    CHECK(count_lines(r.out) == 1);
  }
  SUBCASE("missing model file") {
    const Result r = kvscope_cli("run -m " + dir.file("nope.gguf"));
    CHECK(r.code != 0);
    CHECK(r.out.find("nope.gguf: no such file") != std::string::npos);
    CHECK(count_lines(r.out) == 1);
  }
  SUBCASE("not a GGUF file") {
    const std::string bad = dir.file("bad.gguf");
    std::ofstream(bad) << "this is not a model";
    const Result r = kvscope_cli("info " + bad);
    CHECK(r.code != 0);
    CHECK(r.out.find("bad.gguf") != std::string::npos);
    CHECK(count_lines(r.out) == 1);
  }
  SUBCASE("truncated model file") {
    const std::string cut = dir.file("cut.gguf");
    const std::string whole = test::read_text(test::model_path());
    std::ofstream(cut, std::ios::binary).write(whole.data(), static_cast<std::streamsize>(whole.size() / 2));
    const Result r = kvscope_cli("run -n 1 -m " + cut);
    CHECK(r.code != 0);
    CHECK(r.out.find("cut.gguf: tensor") != std::string::npos);
    CHECK(r.out.find("runs past the end of the file") != std::string::npos);
    CHECK(count_lines(r.out) == 1);
  }
  SUBCASE("a context too large for the device") {
    // A billion tokens of cache is terabytes: too large for any device.
    const Result r = kvscope_cli("run -c 1000000000 -n 1");
    CHECK(r.code != 0);
    CHECK(r.out.find("use a smaller context") != std::string::npos);
    CHECK(count_lines(r.out) == 1);
  }
  SUBCASE("unknown cache format") {
    const Result r = kvscope_cli("run --kv q9 -n 1");
    CHECK(r.code != 0);
    CHECK(r.out.find("--kv q9") != std::string::npos);
  }
  SUBCASE("a KV group size that does not divide head_dim") {
    const Result r = kvscope_cli("run --kv q4 --kv-group 20 -n 1");
    CHECK(r.code != 0);
    CHECK(r.out.find("20 does not divide head_dim 48") != std::string::npos);
    CHECK(count_lines(r.out) == 1);
  }
  SUBCASE("device index out of range") {
    const Result r = kvscope_cli("run --device 99 -n 1");
    CHECK(r.code != 0);
    CHECK(count_lines(r.out) == 1);
  }
}

TEST_CASE("cli: run with quantized KV caches, keys and values in different formats") {
  for (const char* kv : {"--kv q8", "--kv q4", "--kv kivi2", "--kv-k kivi2 --kv-v q8 --kv-group 12", "--kv k=q4,v=f32"}) {
    const Result r = kvscope_cli(std::string("run --temp 0 -n 40 --json ") + kv);
    INFO(kv);
    REQUIRE(r.code == 0);
    const auto j = nlohmann::json::parse(r.out.substr(r.out.find('{')));
    CHECK(j["ids"].size() == 40);
  }
}
