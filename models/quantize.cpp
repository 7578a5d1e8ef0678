// `kvscope quantize`: every 2-D *.weight matrix (token embedding included)
// is converted row by row through f32 to the type the scheme picks for it;
// norms and other 1-D tensors are copied untouched; all metadata is kept and
// general.file_type says what the weights now are.
#include "models/quantize.h"

#include <algorithm>
#include <array>
#include <cctype>
#include <charconv>
#include <filesystem>
#include <stdexcept>
#include <vector>

#include <fmt/format.h>

#include "models/gguf.h"

namespace kvscope {

namespace {

constexpr std::array kSchemes = {
    QuantizeScheme{"F16", GgmlType::F16},   QuantizeScheme{"Q8_0", GgmlType::Q8_0},
    QuantizeScheme{"Q4_0", GgmlType::Q4_0}, QuantizeScheme{"Q4_1", GgmlType::Q4_1},
    QuantizeScheme{"Q5_0", GgmlType::Q5_0}, QuantizeScheme{"Q5_1", GgmlType::Q5_1},
    QuantizeScheme{"Q3_K", GgmlType::Q3_K}, QuantizeScheme{"Q4_K", GgmlType::Q4_K},
    QuantizeScheme{"Q5_K", GgmlType::Q5_K}, QuantizeScheme{"Q6_K", GgmlType::Q6_K},
    QuantizeScheme{"Q2_K", GgmlType::Q2_K, QuantizeMix::Q2_K},
    QuantizeScheme{"Q3_K_M", GgmlType::Q3_K, QuantizeMix::Q3_K_M},
    QuantizeScheme{"Q4_K_M", GgmlType::Q4_K, QuantizeMix::KM}, QuantizeScheme{"Q5_K_M", GgmlType::Q5_K, QuantizeMix::KM},
};

// llama.cpp's LLAMA_FTYPE numbers, the values general.file_type holds. A
// model that is Q4_K or Q5_K throughout is marked as llama.cpp's "_S" mix of
// that type, the nearest it has.
uint32_t llama_file_type(const QuantizeScheme& scheme) {
  if (scheme.name == "Q4_K_M") return 15;
  if (scheme.name == "Q5_K_M") return 17;
  if (scheme.name == "Q3_K_M") return 12;
  if (scheme.name == "Q2_K") return 10;
  switch (scheme.base) {
    case GgmlType::F32: return 0;
    case GgmlType::F16: return 1;
    case GgmlType::Q4_0: return 2;
    case GgmlType::Q4_1: return 3;
    case GgmlType::Q8_0: return 7;
    case GgmlType::Q5_0: return 8;
    case GgmlType::Q5_1: return 9;
    case GgmlType::Q3_K: return 11;  // Q3_K_S, the nearest
    case GgmlType::Q4_K: return 14;
    case GgmlType::Q5_K: return 16;
    case GgmlType::Q6_K: return 18;
    default: break;
  }
  throw std::runtime_error(fmt::format("kvscope cannot quantize to {}; choose one of {}", scheme.name,
                                       quantize_scheme_list()));
}

// The layer of "blk.<n>.<rest>", or -1.
int layer_of(std::string_view name) {
  if (!name.starts_with("blk.")) return -1;
  int layer = -1;
  const char* begin = name.data() + 4;
  const auto [end, ec] = std::from_chars(begin, name.data() + name.size(), layer);
  return ec == std::errc() && end != begin && *end == '.' ? layer : -1;
}

// The type a mix gives one weight matrix before the row-length check
// (llama_tensor_get_type's rules that apply to dense llama-family models).
GgmlType mix_type(const QuantizeScheme& scheme, std::string_view name, const TensorPlace& at) {
  const GgmlType base = scheme.base;
  if (scheme.mix == QuantizeMix::None) return base;
  // The output, and a tied token_embd (the output too): Q6_K, or Q8_0 when
  // its rows are not whole blocks of the base type.
  if (name == "output.weight" || (at.tied_output && name == "token_embd.weight"))
    return at.cols % type_traits(uint32_t(base))->block_elems != 0 ? GgmlType::Q8_0 : GgmlType::Q6_K;
  const bool attn_v = name.ends_with(".attn_v.weight"), ffn_down = name.ends_with(".ffn_down.weight");
  const bool attn_output = name.ends_with(".attn_output.weight"), attn_qkv = name.ends_with(".attn_qkv.weight");
  switch (scheme.mix) {
    case QuantizeMix::KM:
      if ((attn_v || ffn_down) && at.layer >= 0 && use_more_bits(at.layer, at.n_layers)) return GgmlType::Q6_K;
      if (attn_qkv) return base == GgmlType::Q4_K ? GgmlType::Q5_K : GgmlType::Q6_K;
      return base;
    case QuantizeMix::Q3_K_M:
      if (attn_v) return at.layer < 2 ? GgmlType::Q5_K : GgmlType::Q4_K;
      if (ffn_down) return at.layer < at.n_layers / 16 ? GgmlType::Q5_K : GgmlType::Q4_K;
      if (attn_output || attn_qkv) return GgmlType::Q4_K;
      return base;
    case QuantizeMix::Q2_K:
      if (attn_v) return at.n_gqa >= 4 ? GgmlType::Q4_K : GgmlType::Q3_K;
      if (ffn_down || attn_output) return GgmlType::Q3_K;
      return base;
    case QuantizeMix::None: break;
  }
  return base;
}

bool is_weight_matrix(const GgufTensorInfo& t) {
  constexpr std::string_view suffix = ".weight";
  return t.shape.size() == 2 && t.name.size() > suffix.size() && t.name.ends_with(suffix);
}

std::vector<uint8_t> convert(const GgufFile& in, const GgufTensorInfo& t, GgmlType target) {
  const std::string_view from = type_traits(static_cast<uint32_t>(t.type))->name;
  const std::string_view to = type_traits(static_cast<uint32_t>(target))->name;
  if (!type_supported(t.type))
    throw std::runtime_error(fmt::format("{}: tensor {} has type {}, which kvscope cannot convert; supported: {}",
                                         in.path(), t.name, from, supported_types_list()));
  const uint64_t row_len = t.shape[0];
  const uint32_t block = type_traits(static_cast<uint32_t>(target))->block_elems;
  if (row_len % block != 0)
    throw std::runtime_error(fmt::format("{}: tensor '{}' has rows of {} elements, not a multiple of the {} block size "
                                         "{}; quantize this model to F16 instead",
                                         in.path(), t.name, row_len, to, block));
  const size_t in_row = row_bytes(t.type, row_len);
  const size_t out_row = row_bytes(target, row_len);
  const uint64_t n_rows = t.n_elements / row_len;
  std::vector<uint8_t> out(n_rows * out_row);
  std::vector<float> row(row_len);
  for (uint64_t r = 0; r < n_rows; ++r) {
    dequantize_row(t.type, {t.data + r * in_row, in_row}, row);
    quantize_row(target, row, {out.data() + r * out_row, out_row});
  }
  return out;
}

}  // namespace

std::optional<QuantizeScheme> quantize_scheme(std::string_view name) {
  for (const QuantizeScheme& scheme : kSchemes) {
    if (scheme.name.size() != name.size()) continue;
    bool same = true;
    for (size_t i = 0; i < name.size() && same; ++i)
      same = std::toupper(static_cast<unsigned char>(name[i])) == static_cast<unsigned char>(scheme.name[i]);
    if (same) return scheme;
  }
  return std::nullopt;
}

std::string_view quantize_scheme_list() {
  return "F16 Q8_0 Q4_0 Q4_1 Q5_0 Q5_1 Q3_K Q4_K Q5_K Q6_K Q2_K Q3_K_M Q4_K_M Q5_K_M";
}

GgmlType scheme_tensor_type(const QuantizeScheme& scheme, std::string_view name, const TensorPlace& place,
                            bool* fell_back) {
  GgmlType target = mix_type(scheme, name, place);
  if (fell_back) *fell_back = false;
  const uint32_t block = type_traits(uint32_t(target))->block_elems;
  if (place.cols % block == 0) return target;
  // As llama.cpp's tensor_type_fallback: a 32-element type of about the same
  // bits, F16 when not even those fit.
  GgmlType fallback;
  switch (target) {
    case GgmlType::Q2_K: case GgmlType::Q3_K: fallback = GgmlType::Q4_0; break;
    case GgmlType::Q4_K: fallback = GgmlType::Q5_0; break;
    case GgmlType::Q5_K: fallback = GgmlType::Q5_1; break;
    case GgmlType::Q6_K: fallback = GgmlType::Q8_0; break;
    default: return target;  // a 32-element type asked for by name: the conversion says the rows do not fit
  }
  if (place.cols % 32 != 0) fallback = GgmlType::F16;
  if (fell_back) *fell_back = true;
  return fallback;
}

bool use_more_bits(int layer, int n_layers) {
  return layer < n_layers / 8 || layer >= 7 * n_layers / 8 || (layer - n_layers / 8) % 3 == 2;
}

QuantizeResult quantize_model(const std::string& in_path, const std::string& out_path, GgmlType type) {
  for (const QuantizeScheme& scheme : kSchemes)
    if (scheme.base == type && scheme.mix == QuantizeMix::None) return quantize_model(in_path, out_path, scheme);
  const auto traits = type_traits(static_cast<uint32_t>(type));
  throw std::runtime_error(fmt::format("kvscope cannot quantize to {}; choose one of {}",
                                       traits ? traits->name : std::string_view("an unknown type"),
                                       quantize_scheme_list()));
}

QuantizeResult quantize_model(const std::string& in_path, const std::string& out_path, const QuantizeScheme& scheme) {
  const uint32_t file_type = llama_file_type(scheme);  // rejects unsupported targets before any work
  const GgufFile in = GgufFile::open(in_path);

  GgufWriter out(in.alignment());
  for (const std::string& key : in.metadata_order()) out.set(key, in.get(key));
  out.set_uint32("general.file_type", file_type);

  TensorPlace place;
  for (const GgufTensorInfo& t : in.tensors()) place.n_layers = std::max(place.n_layers, layer_of(t.name) + 1);
  place.tied_output = in.find_tensor("output.weight") == nullptr;
  {  // query heads per kv head, for Q2_K's attn_v
    const std::string arch = in.get_string_or("general.architecture", "");
    const uint64_t heads = in.get_uint_or(arch + ".attention.head_count", 1);
    const uint64_t kv_heads = in.get_uint_or(arch + ".attention.head_count_kv", heads);
    place.n_gqa = kv_heads > 0 && heads >= kv_heads ? static_cast<uint32_t>(heads / kv_heads) : 1;
  }

  QuantizeResult result;
  for (const GgufTensorInfo& t : in.tensors()) {
    GgmlType target = t.type;
    if (is_weight_matrix(t)) {
      place.layer = layer_of(t.name);
      place.cols = t.shape[0];
      bool fell_back = false;
      target = scheme_tensor_type(scheme, t.name, place, &fell_back);
      result.n_fallback += fell_back;
    }
    if (is_weight_matrix(t) && t.type != target) {
      const std::vector<uint8_t> bytes = convert(in, t, target);
      out.add_tensor(t.name, target, t.shape, bytes);
      ++result.n_quantized;
    } else {
      out.add_tensor(t.name, t.type, t.shape, {t.data, t.n_bytes});
      ++result.n_kept;
    }
  }
  out.write(out_path);
  result.bytes_in = in.file_size();
  result.bytes_out = std::filesystem::file_size(out_path);
  return result;
}

}  // namespace kvscope
