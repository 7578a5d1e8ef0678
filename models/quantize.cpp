// `kvscope quantize`: every 2-D *.weight matrix (token embedding included)
// is converted row by row through f32 to the target type; norms and other
// 1-D tensors are copied untouched; all metadata is kept and
// general.file_type says what the weights now are.
#include "models/quantize.h"

#include <filesystem>
#include <stdexcept>
#include <vector>

#include <fmt/format.h>

#include "models/gguf.h"

namespace kvscope {

namespace {

// llama.cpp's LLAMA_FTYPE numbers, the values general.file_type holds.
uint32_t llama_file_type(GgmlType t) {
  switch (t) {
    case GgmlType::F32: return 0;
    case GgmlType::F16: return 1;
    case GgmlType::Q4_0: return 2;
    case GgmlType::Q8_0: return 7;
    default: break;
  }
  throw std::runtime_error(fmt::format("kvscope cannot quantize to {}; choose one of F32 F16 Q8_0 Q4_0",
                                       type_traits(static_cast<uint32_t>(t)) ? type_traits(static_cast<uint32_t>(t))->name
                                                                              : std::string_view("an unknown type")));
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

QuantizeResult quantize_model(const std::string& in_path, const std::string& out_path, GgmlType type) {
  const uint32_t file_type = llama_file_type(type);  // rejects unsupported targets before any work
  const GgufFile in = GgufFile::open(in_path);

  GgufWriter out(in.alignment());
  for (const std::string& key : in.metadata_order()) out.set(key, in.get(key));
  out.set_uint32("general.file_type", file_type);

  QuantizeResult result;
  for (const GgufTensorInfo& t : in.tensors()) {
    if (is_weight_matrix(t) && t.type != type) {
      const std::vector<uint8_t> bytes = convert(in, t, type);
      out.add_tensor(t.name, type, t.shape, bytes);
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
