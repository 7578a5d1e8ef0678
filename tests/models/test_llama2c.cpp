// llama2.c -> GGUF conversion on small synthetic checkpoints the test writes:
// metadata, shapes, values at known positions (no transposition), tied and
// untied classifiers, and clear errors for truncated or oversized input.
#include <doctest/doctest.h>
#include <fmt/format.h>
#include <unistd.h>

#include <cstring>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "models/gguf.h"
#include "models/llama2c.h"
#include "models/tokenizer.h"

using namespace kvscope;
namespace fs = std::filesystem;

namespace {

// The synthetic model's shape: small, with GQA so q and k/v differ in size.
constexpr int32_t kDim = 16, kHidden = 32, kLayers = 2, kHeads = 2, kKvHeads = 1, kVocab = 260, kSeqLen = 8;
constexpr int32_t kHeadSize = kDim / kHeads, kQDim = kHeads * kHeadSize, kKvDim = kKvHeads * kHeadSize;

// Float offsets (after the header) of each array, in run.c's order.
struct Offsets {
  uint64_t embedding, rms_att, wq, wk, wv, wo, rms_ffn, w1, w2, w3, rms_final, wcls, total;
};

Offsets offsets(bool tied) {
  Offsets o{};
  uint64_t at = 0;
  auto take = [&at](uint64_t n) { const uint64_t s = at; at += n; return s; };
  o.embedding = take(uint64_t{kVocab} * kDim);
  o.rms_att = take(kLayers * kDim);
  o.wq = take(kLayers * kDim * kQDim);
  o.wk = take(kLayers * kDim * kKvDim);
  o.wv = take(kLayers * kDim * kKvDim);
  o.wo = take(kLayers * kQDim * kDim);
  o.rms_ffn = take(kLayers * kDim);
  o.w1 = take(kLayers * kDim * kHidden);
  o.w2 = take(kLayers * kHidden * kDim);
  o.w3 = take(kLayers * kDim * kHidden);
  o.rms_final = take(kDim);
  take(2 * kSeqLen * kHeadSize / 2);  // freq_cis real + imag
  o.wcls = take(tied ? 0 : uint64_t{kVocab} * kDim);
  o.total = at;
  return o;
}

// Every float in the file holds its own index, so a value tells where it came from.
float value_at(uint64_t float_index) { return static_cast<float>(float_index); }

class TempDir {
 public:
  TempDir() : path_(fs::temp_directory_path() / fmt::format("kvscope-test-llama2c-{}", ::getpid())) {
    fs::remove_all(path_);
    fs::create_directories(path_);
  }
  ~TempDir() {
    std::error_code ec;
    fs::remove_all(path_, ec);
  }
  std::string file(const std::string& name) const { return (path_ / name).string(); }

 private:
  fs::path path_;
};

void write_bytes(const std::string& path, const std::vector<char>& bytes) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  REQUIRE(out.good());
}

template <typename T>
void append(std::vector<char>& bytes, T value) {
  const char* p = reinterpret_cast<const char*>(&value);
  bytes.insert(bytes.end(), p, p + sizeof(T));
}

std::vector<char> checkpoint_bytes(bool tied) {
  std::vector<char> bytes;
  for (int32_t v : {kDim, kHidden, kLayers, kHeads, kKvHeads, tied ? kVocab : -kVocab, kSeqLen}) append(bytes, v);
  const Offsets o = offsets(tied);
  for (uint64_t i = 0; i < o.total; ++i) append(bytes, value_at(i));
  return bytes;
}

// A llama2.c tokenizer.bin laid out like the real one: <unk>, "\n<s>\n",
// "\n</s>\n", 256 byte tokens (raw for ASCII, Latin-1-as-UTF-8 above 0x7F, or
// "<0xNN>" text as newer exports write), then " t".
std::vector<char> tokenizer_bytes(bool bytes_as_hex_text) {
  std::vector<char> bytes;
  append(bytes, int32_t{8});
  auto token = [&](const std::string& text, float score) {
    append(bytes, score);
    append(bytes, static_cast<int32_t>(text.size()));
    bytes.insert(bytes.end(), text.begin(), text.end());
  };
  token("<unk>", 0.f);
  token("\n<s>\n", 0.f);
  token("\n</s>\n", 0.f);
  for (int b = 0; b < 256; ++b) {
    if (bytes_as_hex_text) token(fmt::format("<0x{:02X}>", b), 0.f);
    else if (b < 0x80) token(std::string(1, static_cast<char>(b)), 0.f);
    else token({static_cast<char>(0xC0 | (b >> 6)), static_cast<char>(0x80 | (b & 0x3F))}, 0.f);
  }
  token(" t", -1.5f);
  return bytes;
}

float tensor_float(const GgufTensorInfo& t, uint64_t index) {
  REQUIRE(index < t.n_elements);
  float f;
  std::memcpy(&f, t.data + 4 * index, 4);
  return f;
}

// Element (row `out`, column `in`) of a GGUF matrix with ne[0] = in.
float matrix_at(const GgufTensorInfo& t, uint64_t out, uint64_t in) { return tensor_float(t, out * t.shape[0] + in); }

using Shape = std::vector<uint64_t>;

}  // namespace

TEST_CASE("llama2c: converts a tied checkpoint with the right metadata, shapes and values") {
  TempDir dir;
  const std::string ckpt = dir.file("tiny.bin"), tok = dir.file("tok.bin"), out = dir.file("tiny.gguf");
  write_bytes(ckpt, checkpoint_bytes(/*tied=*/true));
  write_bytes(tok, tokenizer_bytes(/*bytes_as_hex_text=*/false));

  const Llama2cConvertResult r = convert_llama2c(ckpt, tok, out);
  CHECK(r.dim == kDim);
  CHECK(r.n_layer == kLayers);
  CHECK(r.n_head == kHeads);
  CHECK(r.n_kv_head == kKvHeads);
  CHECK(r.ffn_dim == kHidden);
  CHECK(r.n_vocab == kVocab);
  CHECK(r.seq_len == kSeqLen);
  CHECK(r.tied_output);
  CHECK(r.n_tensors == 2 + 9 * kLayers);

  const GgufFile f = GgufFile::open(out);
  CHECK(f.get_string("general.architecture") == "llama");
  CHECK(f.get_string("general.name") == "tiny");
  CHECK(f.get_uint("general.file_type") == 0);
  CHECK(f.get_uint("llama.context_length") == kSeqLen);
  CHECK(f.get_uint("llama.embedding_length") == kDim);
  CHECK(f.get_uint("llama.block_count") == kLayers);
  CHECK(f.get_uint("llama.feed_forward_length") == kHidden);
  CHECK(f.get_uint("llama.attention.head_count") == kHeads);
  CHECK(f.get_uint("llama.attention.head_count_kv") == kKvHeads);
  CHECK(f.get_uint("llama.rope.dimension_count") == kHeadSize);
  CHECK(f.get_uint("llama.vocab_size") == kVocab);
  CHECK(f.get_float_or("llama.attention.layer_norm_rms_epsilon", 0) == doctest::Approx(1e-5));
  CHECK(f.get_float_or("llama.rope.freq_base", 0) == 10000.0);
  CHECK(f.get("llama.attention.layer_norm_rms_epsilon").type == GgufValueType::FLOAT32);
  CHECK(f.get("llama.block_count").type == GgufValueType::UINT32);
  CHECK(f.get_string("tokenizer.ggml.model") == "llama");
  CHECK(f.get_uint("tokenizer.ggml.bos_token_id") == 1);
  CHECK(f.get_uint("tokenizer.ggml.eos_token_id") == 2);
  CHECK(f.get_uint("tokenizer.ggml.unknown_token_id") == 0);
  CHECK(f.get("tokenizer.ggml.add_bos_token").as_bool("add_bos") == true);
  CHECK(f.get("tokenizer.ggml.add_eos_token").as_bool("add_eos") == false);

  const GgufArray& tokens = f.get("tokenizer.ggml.tokens").as_array("tokens");
  const GgufArray& types = f.get("tokenizer.ggml.token_type").as_array("types");
  const GgufArray& scores = f.get("tokenizer.ggml.scores").as_array("scores");
  REQUIRE(tokens.items.size() == kVocab);
  REQUIRE(types.items.size() == kVocab);
  REQUIRE(scores.items.size() == kVocab);
  CHECK(types.elem_type == GgufValueType::INT32);
  CHECK(scores.elem_type == GgufValueType::FLOAT32);
  CHECK(tokens.items[0].as_string("t") == "<unk>");
  CHECK(tokens.items[1].as_string("t") == "<s>");
  CHECK(tokens.items[2].as_string("t") == "</s>");
  CHECK(types.items[0].as_int("t") == 2);
  CHECK(types.items[1].as_int("t") == 3);
  CHECK(types.items[2].as_int("t") == 3);
  for (int b = 0; b < 256; ++b) {
    CAPTURE(b);
    CHECK(tokens.items[3 + b].as_string("t") == fmt::format("<0x{:02X}>", b));
    CHECK(types.items[3 + b].as_int("t") == 6);
  }
  CHECK(tokens.items[259].as_string("t") == "\xE2\x96\x81t");  // " t" -> "▁t"
  CHECK(types.items[259].as_int("t") == 1);
  CHECK(scores.items[259].as_float("s") == -1.5);

  const Offsets o = offsets(true);
  CHECK(f.find_tensor("output.weight") == nullptr);
  const GgufTensorInfo& embd = f.tensor("token_embd.weight");
  CHECK(embd.shape == Shape{kDim, kVocab});
  CHECK(embd.type == GgmlType::F32);
  CHECK(matrix_at(embd, 259, 5) == value_at(o.embedding + 259 * kDim + 5));
  CHECK(f.tensor("output_norm.weight").shape == Shape{kDim});
  CHECK(tensor_float(f.tensor("output_norm.weight"), 7) == value_at(o.rms_final + 7));

  // Layer 1, so that a wrong per-layer stride shows too. (out, in) indices
  // are chosen asymmetric so a transposition cannot pass.
  const uint64_t layer = 1;
  const GgufTensorInfo& q = f.tensor("blk.1.attn_q.weight");
  CHECK(q.shape == Shape{kDim, kQDim});
  CHECK(matrix_at(q, 3, 11) == value_at(o.wq + layer * kDim * kQDim + 3 * kDim + 11));
  const GgufTensorInfo& k = f.tensor("blk.1.attn_k.weight");
  CHECK(k.shape == Shape{kDim, kKvDim});
  CHECK(matrix_at(k, 7, 2) == value_at(o.wk + layer * kDim * kKvDim + 7 * kDim + 2));
  const GgufTensorInfo& v = f.tensor("blk.1.attn_v.weight");
  CHECK(v.shape == Shape{kDim, kKvDim});
  CHECK(matrix_at(v, 0, 15) == value_at(o.wv + layer * kDim * kKvDim + 0 * kDim + 15));
  const GgufTensorInfo& wo = f.tensor("blk.1.attn_output.weight");
  CHECK(wo.shape == Shape{kQDim, kDim});
  CHECK(matrix_at(wo, 12, 4) == value_at(o.wo + layer * kQDim * kDim + 12 * kQDim + 4));
  const GgufTensorInfo& gate = f.tensor("blk.1.ffn_gate.weight");
  CHECK(gate.shape == Shape{kDim, kHidden});
  CHECK(matrix_at(gate, 30, 1) == value_at(o.w1 + layer * kDim * kHidden + 30 * kDim + 1));
  const GgufTensorInfo& down = f.tensor("blk.1.ffn_down.weight");
  CHECK(down.shape == Shape{kHidden, kDim});
  CHECK(matrix_at(down, 9, 27) == value_at(o.w2 + layer * kHidden * kDim + 9 * kHidden + 27));
  const GgufTensorInfo& up = f.tensor("blk.1.ffn_up.weight");
  CHECK(up.shape == Shape{kDim, kHidden});
  CHECK(matrix_at(up, 31, 14) == value_at(o.w3 + layer * kDim * kHidden + 31 * kDim + 14));
  CHECK(tensor_float(f.tensor("blk.1.attn_norm.weight"), 3) == value_at(o.rms_att + layer * kDim + 3));
  CHECK(tensor_float(f.tensor("blk.1.ffn_norm.weight"), 3) == value_at(o.rms_ffn + layer * kDim + 3));
  // Layer 0 starts where the array does.
  CHECK(matrix_at(f.tensor("blk.0.attn_q.weight"), 0, 0) == value_at(o.wq));
  CHECK(matrix_at(f.tensor("blk.0.ffn_down.weight"), kDim - 1, kHidden - 1) ==
        value_at(o.w2 + kHidden * kDim - 1));

  // The vocabulary works with the tokenizer: "t" -> "▁t", others fall back to bytes.
  const Tokenizer tokenizer = Tokenizer::from_gguf(f);
  CHECK(tokenizer.encode("t", true) == std::vector<int32_t>{1, 259});
  CHECK(tokenizer.encode("h", false) == std::vector<int32_t>{3 + 0xE2, 3 + 0x96, 3 + 0x81, 3 + 'h'});
  CHECK(tokenizer.decode({1, 259, 259, 3 + '\n'}) == "t t\n");
}

TEST_CASE("llama2c: an untied checkpoint gets output.weight; hex-text byte tokens are recognised") {
  TempDir dir;
  const std::string ckpt = dir.file("untied.bin"), tok = dir.file("tok.bin"), out = dir.file("untied.gguf");
  write_bytes(ckpt, checkpoint_bytes(/*tied=*/false));
  write_bytes(tok, tokenizer_bytes(/*bytes_as_hex_text=*/true));

  const Llama2cConvertResult r = convert_llama2c(ckpt, tok, out);
  CHECK_FALSE(r.tied_output);
  CHECK(r.n_vocab == kVocab);
  CHECK(r.n_tensors == 3 + 9 * kLayers);

  const GgufFile f = GgufFile::open(out);
  CHECK(f.get_uint("llama.vocab_size") == kVocab);
  const Offsets o = offsets(false);
  const GgufTensorInfo& output = f.tensor("output.weight");
  CHECK(output.shape == Shape{kDim, kVocab});
  CHECK(matrix_at(output, 0, 0) == value_at(o.wcls));
  CHECK(matrix_at(output, 200, 9) == value_at(o.wcls + 200 * kDim + 9));
  CHECK(matrix_at(f.tensor("token_embd.weight"), 200, 9) == value_at(o.embedding + 200 * kDim + 9));

  const GgufArray& tokens = f.get("tokenizer.ggml.tokens").as_array("tokens");
  const GgufArray& types = f.get("tokenizer.ggml.token_type").as_array("types");
  CHECK(tokens.items[3 + 0x0A].as_string("t") == "<0x0A>");
  CHECK(types.items[3 + 0x0A].as_int("t") == 6);
  CHECK(tokens.items[3 + 0xFF].as_string("t") == "<0xFF>");
  CHECK(types.items[3 + 0xFF].as_int("t") == 6);
}

TEST_CASE("llama2c: conversion is deterministic") {
  TempDir dir;
  write_bytes(dir.file("m.bin"), checkpoint_bytes(true));
  write_bytes(dir.file("t.bin"), tokenizer_bytes(false));
  // Same output name in two folders: general.name comes from the name.
  fs::create_directories(dir.file("a"));
  fs::create_directories(dir.file("b"));
  convert_llama2c(dir.file("m.bin"), dir.file("t.bin"), dir.file("a/same.gguf"));
  convert_llama2c(dir.file("m.bin"), dir.file("t.bin"), dir.file("b/same.gguf"));
  auto slurp = [](const std::string& p) {
    std::ifstream in(p, std::ios::binary);
    return std::string(std::istreambuf_iterator<char>(in), {});
  };
  CHECK(slurp(dir.file("a/same.gguf")) == slurp(dir.file("b/same.gguf")));
}

TEST_CASE("llama2c: bad input gives errors that name the file") {
  TempDir dir;
  const std::string ckpt = dir.file("model.bin"), tok = dir.file("tokenizer.bin"), out = dir.file("out.gguf");
  const std::vector<char> good_ckpt = checkpoint_bytes(true);
  const std::vector<char> good_tok = tokenizer_bytes(false);

  auto error_of = [&]() -> std::string {
    try {
      convert_llama2c(ckpt, tok, out);
    } catch (const std::runtime_error& e) {
      return e.what();
    }
    return "";
  };
  auto contains = [](const std::string& haystack, const std::string& needle) {
    return haystack.find(needle) != std::string::npos;
  };

  SUBCASE("truncated checkpoint") {
    std::vector<char> bytes = good_ckpt;
    bytes.resize(bytes.size() - 4);
    write_bytes(ckpt, bytes);
    write_bytes(tok, good_tok);
    const std::string e = error_of();
    CAPTURE(e);
    CHECK(contains(e, ckpt));
    CHECK(contains(e, "truncated"));
  }
  SUBCASE("checkpoint with extra bytes") {
    std::vector<char> bytes = good_ckpt;
    bytes.resize(bytes.size() + 4);
    write_bytes(ckpt, bytes);
    write_bytes(tok, good_tok);
    const std::string e = error_of();
    CAPTURE(e);
    CHECK(contains(e, ckpt));
    CHECK(contains(e, "longer than expected"));
  }
  SUBCASE("checkpoint shorter than its header") {
    write_bytes(ckpt, std::vector<char>(good_ckpt.begin(), good_ckpt.begin() + 10));
    write_bytes(tok, good_tok);
    const std::string e = error_of();
    CAPTURE(e);
    CHECK(contains(e, ckpt));
  }
  SUBCASE("impossible header") {
    std::vector<char> bytes = good_ckpt;
    const int32_t three_heads = 3;  // does not divide dim 16
    std::memcpy(bytes.data() + 12, &three_heads, 4);
    write_bytes(ckpt, bytes);
    write_bytes(tok, good_tok);
    const std::string e = error_of();
    CAPTURE(e);
    CHECK(contains(e, ckpt));
    CHECK(contains(e, "n_heads"));
  }
  SUBCASE("truncated tokenizer") {
    write_bytes(ckpt, good_ckpt);
    for (size_t cut : {size_t{2}, size_t{100}, good_tok.size() - 1}) {
      CAPTURE(cut);
      write_bytes(tok, std::vector<char>(good_tok.begin(), good_tok.begin() + static_cast<long>(cut)));
      const std::string e = error_of();
      CAPTURE(e);
      CHECK(contains(e, tok));
    }
  }
  SUBCASE("tokenizer with more tokens than the checkpoint's vocabulary") {
    write_bytes(ckpt, good_ckpt);
    std::vector<char> bytes = good_tok;
    bytes.insert(bytes.end(), {0, 0, 0, 0, 1, 0, 0, 0, 'x'});
    write_bytes(tok, bytes);
    const std::string e = error_of();
    CAPTURE(e);
    CHECK(contains(e, tok));
  }
  SUBCASE("missing files") {
    write_bytes(tok, good_tok);
    CHECK(contains(error_of(), ckpt));
    write_bytes(ckpt, good_ckpt);
    fs::remove(tok);
    CHECK(contains(error_of(), tok));
  }
  CHECK_FALSE(fs::exists(out));
}
