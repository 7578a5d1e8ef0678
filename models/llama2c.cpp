// llama2.c checkpoint + tokenizer -> GGUF (llama architecture, F32).
//
// The checkpoint layout is Karpathy's run.c (memory_map_weights): a header of
// 7 int32, then F32 arrays, each holding one kind of weight for all layers.
// llama2.c computes y = W @ x with W stored (out, in) row-major, which is
// exactly GGUF's layout with ne[0] = in, ne[1] = out: weights copy as they are.
// q/k are not permuted: llama2.c rotates adjacent pairs (2i, 2i+1), which is
// the rotation llama.cpp's llama architecture uses for GGUF.
#include "models/llama2c.h"

#include <fmt/format.h>

#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <stdexcept>
#include <string>
#include <vector>

#include "models/gguf.h"

namespace kvscope {

namespace {

constexpr std::string_view kSpaceMark = "\xE2\x96\x81";  // U+2581 "▁"

struct Header {
  int32_t dim, hidden_dim, n_layers, n_heads, n_kv_heads, vocab_size, seq_len;
};

// Element offsets (in floats, after the header) of each array in the file.
struct Layout {
  uint64_t dim, hidden, n_layers, n_heads, n_kv_heads, vocab, seq_len, head_size;
  bool tied;
  uint64_t token_embedding;  // (vocab, dim)
  uint64_t rms_att;          // (layer, dim)
  uint64_t wq;               // (layer, n_heads * head_size, dim)  [out, in]
  uint64_t wk;               // (layer, n_kv_heads * head_size, dim)
  uint64_t wv;               // (layer, n_kv_heads * head_size, dim)
  uint64_t wo;               // (layer, dim, n_heads * head_size)
  uint64_t rms_ffn;          // (layer, dim)
  uint64_t w1;               // (layer, hidden, dim)  gate
  uint64_t w2;               // (layer, dim, hidden)  down
  uint64_t w3;               // (layer, hidden, dim)  up
  uint64_t rms_final;        // (dim)
  uint64_t wcls;             // (vocab, dim), after the unused freq_cis tables
  uint64_t total_floats;
};

constexpr uint64_t kHeaderBytes = sizeof(Header);

uint64_t file_size_of(const std::string& path) {
  std::error_code ec;
  const uint64_t size = std::filesystem::file_size(path, ec);
  if (ec) throw std::runtime_error(fmt::format("{}: cannot read the file: {}", path, ec.message()));
  return size;
}

void read_exact(std::ifstream& in, const std::string& path, uint64_t offset, void* dst, uint64_t n_bytes,
                std::string_view what) {
  in.seekg(static_cast<std::streamoff>(offset));
  in.read(static_cast<char*>(dst), static_cast<std::streamsize>(n_bytes));
  if (!in || static_cast<uint64_t>(in.gcount()) != n_bytes) {
    throw std::runtime_error(
        fmt::format("{}: could not read {} ({} bytes at offset {}); the file is truncated or unreadable",
                    path, what, n_bytes, offset));
  }
}

Layout layout_of(const Header& h, const std::string& path, uint64_t file_bytes) {
  const std::string shape = fmt::format(
      "dim={} hidden_dim={} n_layers={} n_heads={} n_kv_heads={} vocab_size={} seq_len={}", h.dim,
      h.hidden_dim, h.n_layers, h.n_heads, h.n_kv_heads, h.vocab_size, h.seq_len);
  auto bad = [&](std::string_view why) {
    return std::runtime_error(
        fmt::format("{}: not a llama2.c checkpoint: header {} {}", path, shape, why));
  };
  // Limits far above any llama2.c model; they keep the size arithmetic in range.
  constexpr int32_t kMaxDim = 1 << 16, kMaxVocab = 1 << 22, kMaxLayers = 1024, kMaxSeq = 1 << 20;
  if (h.dim <= 0 || h.dim > kMaxDim || h.hidden_dim <= 0 || h.hidden_dim > 4 * kMaxDim)
    throw bad("has an impossible dim or hidden_dim");
  if (h.n_layers <= 0 || h.n_layers > kMaxLayers) throw bad("has an impossible n_layers");
  if (h.n_heads <= 0 || h.dim % h.n_heads != 0) throw bad("has n_heads that does not divide dim");
  if (h.n_kv_heads <= 0 || h.n_heads % h.n_kv_heads != 0)
    throw bad("has n_kv_heads that does not divide n_heads");
  if ((h.dim / h.n_heads) % 2 != 0) throw bad("has an odd head size (RoPE needs pairs)");
  if (h.vocab_size == 0 || h.vocab_size < -kMaxVocab || h.vocab_size > kMaxVocab)
    throw bad("has an impossible vocab_size");
  if (h.seq_len <= 0 || h.seq_len > kMaxSeq) throw bad("has an impossible seq_len");

  Layout l{};
  l.dim = h.dim;
  l.hidden = h.hidden_dim;
  l.n_layers = h.n_layers;
  l.n_heads = h.n_heads;
  l.n_kv_heads = h.n_kv_heads;
  l.tied = h.vocab_size > 0;
  l.vocab = static_cast<uint64_t>(h.vocab_size > 0 ? h.vocab_size : -static_cast<int64_t>(h.vocab_size));
  l.seq_len = h.seq_len;
  l.head_size = l.dim / l.n_heads;
  const uint64_t q_dim = l.n_heads * l.head_size, kv_dim = l.n_kv_heads * l.head_size;

  uint64_t at = 0;
  auto take = [&at](uint64_t n) { const uint64_t start = at; at += n; return start; };
  l.token_embedding = take(l.vocab * l.dim);
  l.rms_att = take(l.n_layers * l.dim);
  l.wq = take(l.n_layers * l.dim * q_dim);
  l.wk = take(l.n_layers * l.dim * kv_dim);
  l.wv = take(l.n_layers * l.dim * kv_dim);
  l.wo = take(l.n_layers * q_dim * l.dim);
  l.rms_ffn = take(l.n_layers * l.dim);
  l.w1 = take(l.n_layers * l.dim * l.hidden);
  l.w2 = take(l.n_layers * l.hidden * l.dim);
  l.w3 = take(l.n_layers * l.dim * l.hidden);
  l.rms_final = take(l.dim);
  take(l.seq_len * l.head_size / 2);  // freq_cis_real: unused, RoPE is computed
  take(l.seq_len * l.head_size / 2);  // freq_cis_imag
  l.wcls = take(l.tied ? 0 : l.vocab * l.dim);
  l.total_floats = at;

  const uint64_t expected = kHeaderBytes + 4 * l.total_floats;
  if (file_bytes != expected) {
    throw std::runtime_error(fmt::format(
        "{}: is {} bytes, but a llama2.c checkpoint with header {} ({} classifier) is {} bytes; "
        "the file is {} or does not belong to this header",
        path, file_bytes, shape, l.tied ? "shared" : "separate", expected,
        file_bytes < expected ? "truncated" : "longer than expected"));
  }
  return l;
}

struct Vocab {
  std::vector<std::string> tokens;
  std::vector<float> scores;
  std::vector<int32_t> types;
};

// Whether `piece` (as stored by llama2.c) is the byte `value`: llama2.c files
// store byte tokens as the raw byte, as that byte read as Latin-1 and written
// as UTF-8, or (newer exports) as the text "<0xNN>".
bool is_byte_piece(const std::string& piece, int value) {
  if (piece.size() == 1 && static_cast<uint8_t>(piece[0]) == value) return true;
  if (value >= 0x80 && piece.size() == 2 && static_cast<uint8_t>(piece[0]) == (0xC0 | (value >> 6)) &&
      static_cast<uint8_t>(piece[1]) == (0x80 | (value & 0x3F)))
    return true;
  return piece == fmt::format("<0x{:02X}>", value);
}

Vocab read_tokenizer(const std::string& path, uint64_t n_vocab) {
  const uint64_t file_bytes = file_size_of(path);
  std::ifstream in(path, std::ios::binary);
  if (!in) throw std::runtime_error(fmt::format("{}: cannot open the tokenizer file", path));

  // Token type ids as GGUF numbers them.
  constexpr int32_t kNormal = 1, kUnknown = 2, kControl = 3, kByte = 6;
  Vocab v;
  v.tokens.reserve(n_vocab);
  v.scores.reserve(n_vocab);
  v.types.reserve(n_vocab);

  int32_t max_token_length = 0;
  uint64_t at = 0;
  read_exact(in, path, at, &max_token_length, 4, "the header (max_token_length)");
  at += 4;
  for (uint64_t id = 0; id < n_vocab; ++id) {
    float score = 0;
    int32_t len = 0;
    const std::string what = fmt::format("token {} of {}", id, n_vocab);
    read_exact(in, path, at, &score, 4, what + " (score)");
    read_exact(in, path, at + 4, &len, 4, what + " (length)");
    at += 8;
    if (len < 0 || static_cast<uint64_t>(len) > file_bytes - std::min(at, file_bytes)) {
      throw std::runtime_error(fmt::format(
          "{}: {} claims {} bytes but only {} remain; the tokenizer file is truncated or corrupt",
          path, what, len, file_bytes - std::min(at, file_bytes)));
    }
    std::string text(static_cast<size_t>(len), '\0');
    if (len > 0) read_exact(in, path, at, text.data(), static_cast<uint64_t>(len), what + " (text)");
    at += static_cast<uint64_t>(len);

    int32_t type = kNormal;
    if (id == 0) {
      text = "<unk>";
      type = kUnknown;
    } else if (id == 1) {
      text = "<s>";  // llama2.c stores "\n<s>\n" so that run.c prints it on its own line
      type = kControl;
    } else if (id == 2) {
      text = "</s>";
      type = kControl;
    } else if (id >= 3 && id < 3 + 256 && is_byte_piece(text, static_cast<int>(id - 3))) {
      // The Llama 2 vocabulary puts the 256 byte-fallback tokens at ids 3..258.
      text = fmt::format("<0x{:02X}>", id - 3);
      type = kByte;
    } else if (text.empty()) {
      type = kControl;
    } else {
      std::string spaced;
      spaced.reserve(text.size() * 3);
      for (char c : text) {
        if (c == ' ') spaced += kSpaceMark;
        else spaced += c;
      }
      text = std::move(spaced);
    }
    v.tokens.push_back(std::move(text));
    v.scores.push_back(score);
    v.types.push_back(type);
  }
  if (at != file_bytes) {
    throw std::runtime_error(fmt::format(
        "{}: has {} bytes after the last of {} tokens; the tokenizer does not match the checkpoint's "
        "vocabulary size",
        path, file_bytes - at, n_vocab));
  }
  return v;
}

// general.name: the name the user gives the GGUF (stories15M.gguf ->
// "stories15M"). The checkpoint's own name is usually the generic "model.bin".
std::string model_name_from(const std::string& out_gguf) {
  const std::string stem = std::filesystem::path(out_gguf).stem().string();
  return stem.empty() ? "llama2.c" : stem;
}

}  // namespace

Llama2cConvertResult convert_llama2c(const std::string& checkpoint, const std::string& tokenizer,
                                     const std::string& out_gguf) {
  const uint64_t file_bytes = file_size_of(checkpoint);
  std::ifstream in(checkpoint, std::ios::binary);
  if (!in) throw std::runtime_error(fmt::format("{}: cannot open the checkpoint", checkpoint));
  Header h{};
  read_exact(in, checkpoint, 0, &h, kHeaderBytes, "the header (7 int32)");
  const Layout l = layout_of(h, checkpoint, file_bytes);
  const Vocab vocab = read_tokenizer(tokenizer, l.vocab);

  GgufWriter w;
  w.set_string("general.architecture", "llama");
  w.set_string("general.name", model_name_from(out_gguf));
  w.set_uint32("general.file_type", 0);  // all F32
  w.set_uint32("llama.vocab_size", static_cast<uint32_t>(l.vocab));
  w.set_uint32("llama.context_length", static_cast<uint32_t>(l.seq_len));
  w.set_uint32("llama.embedding_length", static_cast<uint32_t>(l.dim));
  w.set_uint32("llama.block_count", static_cast<uint32_t>(l.n_layers));
  w.set_uint32("llama.feed_forward_length", static_cast<uint32_t>(l.hidden));
  w.set_uint32("llama.attention.head_count", static_cast<uint32_t>(l.n_heads));
  w.set_uint32("llama.attention.head_count_kv", static_cast<uint32_t>(l.n_kv_heads));
  w.set_uint32("llama.rope.dimension_count", static_cast<uint32_t>(l.head_size));
  w.set_float32("llama.attention.layer_norm_rms_epsilon", 1e-5f);  // run.c's rmsnorm
  w.set_float32("llama.rope.freq_base", 10000.0f);                  // run.c's RoPE
  w.set_string("tokenizer.ggml.model", "llama");
  w.set_string_array("tokenizer.ggml.tokens", vocab.tokens);
  w.set_float32_array("tokenizer.ggml.scores", vocab.scores);
  w.set_int32_array("tokenizer.ggml.token_type", vocab.types);
  w.set_uint32("tokenizer.ggml.bos_token_id", 1);
  w.set_uint32("tokenizer.ggml.eos_token_id", 2);
  w.set_uint32("tokenizer.ggml.unknown_token_id", 0);
  w.set_bool("tokenizer.ggml.add_bos_token", true);
  w.set_bool("tokenizer.ggml.add_eos_token", false);

  // Reads `n_floats` at float offset `first` and adds them as one tensor.
  std::vector<uint8_t> buffer;
  uint64_t n_tensors = 0;
  auto add = [&](const std::string& name, uint64_t first, std::vector<uint64_t> shape) {
    uint64_t n_floats = 1;
    for (uint64_t d : shape) n_floats *= d;
    buffer.resize(n_floats * 4);
    read_exact(in, checkpoint, kHeaderBytes + 4 * first, buffer.data(), buffer.size(), name);
    w.add_tensor(name, GgmlType::F32, std::move(shape), buffer);
    ++n_tensors;
  };

  const uint64_t q_dim = l.n_heads * l.head_size, kv_dim = l.n_kv_heads * l.head_size;
  // Shapes are GGUF's: ne[0] (the contiguous, input dimension) first.
  add("token_embd.weight", l.token_embedding, {l.dim, l.vocab});
  for (uint64_t layer = 0; layer < l.n_layers; ++layer) {
    const std::string blk = fmt::format("blk.{}.", layer);
    add(blk + "attn_norm.weight", l.rms_att + layer * l.dim, {l.dim});
    add(blk + "attn_q.weight", l.wq + layer * l.dim * q_dim, {l.dim, q_dim});
    add(blk + "attn_k.weight", l.wk + layer * l.dim * kv_dim, {l.dim, kv_dim});
    add(blk + "attn_v.weight", l.wv + layer * l.dim * kv_dim, {l.dim, kv_dim});
    add(blk + "attn_output.weight", l.wo + layer * q_dim * l.dim, {q_dim, l.dim});
    add(blk + "ffn_norm.weight", l.rms_ffn + layer * l.dim, {l.dim});
    add(blk + "ffn_gate.weight", l.w1 + layer * l.dim * l.hidden, {l.dim, l.hidden});
    add(blk + "ffn_down.weight", l.w2 + layer * l.hidden * l.dim, {l.hidden, l.dim});
    add(blk + "ffn_up.weight", l.w3 + layer * l.dim * l.hidden, {l.dim, l.hidden});
  }
  add("output_norm.weight", l.rms_final, {l.dim});
  if (!l.tied) add("output.weight", l.wcls, {l.dim, l.vocab});
  buffer = {};

  w.write(out_gguf);

  Llama2cConvertResult result{};
  result.dim = static_cast<uint32_t>(l.dim);
  result.n_layer = static_cast<uint32_t>(l.n_layers);
  result.n_head = static_cast<uint32_t>(l.n_heads);
  result.n_kv_head = static_cast<uint32_t>(l.n_kv_heads);
  result.ffn_dim = static_cast<uint32_t>(l.hidden);
  result.n_vocab = static_cast<uint32_t>(l.vocab);
  result.seq_len = static_cast<uint32_t>(l.seq_len);
  result.tied_output = l.tied;
  result.n_tensors = n_tensors;
  return result;
}

}  // namespace kvscope
