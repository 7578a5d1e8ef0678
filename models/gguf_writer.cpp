// GGUF v3 writer. Layout, as ggml writes it: header, metadata in insertion
// order, tensor infos, padding to the alignment, then each tensor's data
// padded to the alignment (the last one too, so readers that load the data
// section as one padded block find every byte they expect).
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <limits>

#include <fmt/format.h>

#include "models/gguf.h"

namespace kvscope {

namespace {

constexpr uint32_t kGgufMagic = 0x46554747;  // "GGUF" little-endian
constexpr uint32_t kGgufVersion = 3;
constexpr uint64_t kDefaultAlignment = 32;
constexpr const char* kAlignmentKey = "general.alignment";

[[noreturn]] void writer_error(const std::string& field, const std::string& what) {
  throw GgufError(fmt::format("gguf writer: {}: {}", field, what));
}

class ByteSink {
 public:
  explicit ByteSink(std::vector<uint8_t>& out) : out_(out) {}
  template <typename T>
  void put(T value) {
    const auto* p = reinterpret_cast<const uint8_t*>(&value);
    out_.insert(out_.end(), p, p + sizeof(T));
  }
  void put_string(const std::string& s) {
    put<uint64_t>(s.size());
    out_.insert(out_.end(), s.begin(), s.end());
  }
  void pad_to(uint64_t alignment) {
    while (out_.size() % alignment != 0) out_.push_back(0);
  }

 private:
  std::vector<uint8_t>& out_;
};

uint64_t unsigned_value(const GgufValue& v, uint64_t max, const std::string& field) {
  uint64_t u;
  if (const auto* p = std::get_if<uint64_t>(&v.value)) {
    u = *p;
  } else if (const auto* i = std::get_if<int64_t>(&v.value); i && *i >= 0) {
    u = static_cast<uint64_t>(*i);
  } else {
    writer_error(field, "an unsigned integer type holds a value that is not a non-negative integer");
  }
  if (u > max) writer_error(field, fmt::format("value {} does not fit the declared type", u));
  return u;
}

int64_t signed_value(const GgufValue& v, int64_t min, int64_t max, const std::string& field) {
  int64_t s;
  if (const auto* i = std::get_if<int64_t>(&v.value)) {
    s = *i;
  } else if (const auto* p = std::get_if<uint64_t>(&v.value);
             p && *p <= static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) {
    s = static_cast<int64_t>(*p);
  } else {
    writer_error(field, "a signed integer type holds a value that is not an integer in range");
  }
  if (s < min || s > max) writer_error(field, fmt::format("value {} does not fit the declared type", s));
  return s;
}

double float_value(const GgufValue& v, const std::string& field) {
  if (const auto* d = std::get_if<double>(&v.value)) return *d;
  writer_error(field, "a float type holds a value that is not a float");
}

void put_value(ByteSink& out, const GgufValue& v, const std::string& field, int depth) {
  switch (v.type) {
    case GgufValueType::UINT8: out.put<uint8_t>(static_cast<uint8_t>(unsigned_value(v, UINT8_MAX, field))); return;
    case GgufValueType::UINT16: out.put<uint16_t>(static_cast<uint16_t>(unsigned_value(v, UINT16_MAX, field))); return;
    case GgufValueType::UINT32: out.put<uint32_t>(static_cast<uint32_t>(unsigned_value(v, UINT32_MAX, field))); return;
    case GgufValueType::UINT64: out.put<uint64_t>(unsigned_value(v, UINT64_MAX, field)); return;
    case GgufValueType::INT8: out.put<int8_t>(static_cast<int8_t>(signed_value(v, INT8_MIN, INT8_MAX, field))); return;
    case GgufValueType::INT16: out.put<int16_t>(static_cast<int16_t>(signed_value(v, INT16_MIN, INT16_MAX, field))); return;
    case GgufValueType::INT32: out.put<int32_t>(static_cast<int32_t>(signed_value(v, INT32_MIN, INT32_MAX, field))); return;
    case GgufValueType::INT64: out.put<int64_t>(signed_value(v, INT64_MIN, INT64_MAX, field)); return;
    case GgufValueType::FLOAT32: out.put<float>(static_cast<float>(float_value(v, field))); return;
    case GgufValueType::FLOAT64: out.put<double>(float_value(v, field)); return;
    case GgufValueType::BOOL: {
      const auto* b = std::get_if<bool>(&v.value);
      if (!b) writer_error(field, "a BOOL holds a value that is not a bool");
      out.put<uint8_t>(*b ? 1 : 0);
      return;
    }
    case GgufValueType::STRING: {
      const auto* s = std::get_if<std::string>(&v.value);
      if (!s) writer_error(field, "a STRING holds a value that is not a string");
      out.put_string(*s);
      return;
    }
    case GgufValueType::ARRAY: {
      const auto* a = std::get_if<std::shared_ptr<GgufArray>>(&v.value);
      if (!a || !*a) writer_error(field, "an ARRAY holds no array");
      if (depth >= 4) writer_error(field, "arrays nested deeper than 4 levels cannot be read back");
      const GgufArray& array = **a;
      out.put<uint32_t>(static_cast<uint32_t>(array.elem_type));
      out.put<uint64_t>(array.items.size());
      for (size_t i = 0; i < array.items.size(); ++i) {
        const std::string item_field = fmt::format("{}[{}]", field, i);
        if (array.items[i].type != array.elem_type)
          writer_error(item_field, "item type differs from the array's element type");
        put_value(out, array.items[i], item_field, depth + 1);
      }
      return;
    }
  }
  writer_error(field, fmt::format("unknown value type {}", static_cast<uint32_t>(v.type)));
}

GgufValue make_scalar(GgufValueType type, decltype(GgufValue::value) value) {
  GgufValue v;
  v.type = type;
  v.value = std::move(value);
  return v;
}

template <typename T, typename Convert>
GgufValue make_array(GgufValueType elem_type, const std::vector<T>& items, Convert convert) {
  auto array = std::make_shared<GgufArray>();
  array->elem_type = elem_type;
  array->items.reserve(items.size());
  for (const T& item : items) array->items.push_back(make_scalar(elem_type, convert(item)));
  return make_scalar(GgufValueType::ARRAY, std::move(array));
}

}  // namespace

GgufWriter::GgufWriter(uint64_t alignment) : alignment_(alignment) {
  if (alignment == 0 || (alignment & (alignment - 1)) != 0 || alignment > UINT32_MAX)
    writer_error("alignment", fmt::format("{} is not a power of two that fits in 32 bits", alignment));
}

void GgufWriter::set(const std::string& key, GgufValue value) {
  if (key.empty()) writer_error("metadata", "empty key");
  for (auto& [existing, old] : metadata_) {
    if (existing == key) {  // replace in place: keeps the file's key order stable
      old = std::move(value);
      return;
    }
  }
  metadata_.emplace_back(key, std::move(value));
}

void GgufWriter::set_uint32(const std::string& key, uint32_t v) { set(key, make_scalar(GgufValueType::UINT32, uint64_t{v})); }
void GgufWriter::set_int32(const std::string& key, int32_t v) { set(key, make_scalar(GgufValueType::INT32, int64_t{v})); }
void GgufWriter::set_float32(const std::string& key, float v) { set(key, make_scalar(GgufValueType::FLOAT32, double{v})); }
void GgufWriter::set_bool(const std::string& key, bool v) { set(key, make_scalar(GgufValueType::BOOL, v)); }
void GgufWriter::set_string(const std::string& key, const std::string& v) {
  set(key, make_scalar(GgufValueType::STRING, v));
}
void GgufWriter::set_string_array(const std::string& key, const std::vector<std::string>& v) {
  set(key, make_array(GgufValueType::STRING, v, [](const std::string& s) { return s; }));
}
void GgufWriter::set_float32_array(const std::string& key, const std::vector<float>& v) {
  set(key, make_array(GgufValueType::FLOAT32, v, [](float f) { return double{f}; }));
}
void GgufWriter::set_int32_array(const std::string& key, const std::vector<int32_t>& v) {
  set(key, make_array(GgufValueType::INT32, v, [](int32_t i) { return int64_t{i}; }));
}

void GgufWriter::add_tensor(const std::string& name, GgmlType type, std::vector<uint64_t> shape,
                            std::span<const uint8_t> bytes) {
  const std::string field = fmt::format("tensor '{}'", name);
  if (name.empty()) writer_error("tensor", "empty name");
  for (const Tensor& t : tensors_)
    if (t.name == name) writer_error(field, "added twice");
  const auto traits = type_traits(static_cast<uint32_t>(type));
  if (!traits) writer_error(field, fmt::format("unknown type id {}", static_cast<uint32_t>(type)));
  if (shape.empty() || shape.size() > 4) writer_error(field, fmt::format("{} dimensions, expected 1 to 4", shape.size()));
  uint64_t n_elements = 1;
  for (uint64_t ne : shape) {
    if (ne == 0) writer_error(field, "a dimension is zero");
    if (__builtin_mul_overflow(n_elements, ne, &n_elements)) writer_error(field, "element count overflows");
  }
  if (shape[0] % traits->block_elems != 0)
    writer_error(field, fmt::format("row length {} is not a multiple of the {} block size {}", shape[0], traits->name,
                                    traits->block_elems));
  const uint64_t expected = n_elements / traits->block_elems * traits->block_bytes;
  if (bytes.size() != expected)
    writer_error(field, fmt::format("{} bytes given, {} of {} need {}", bytes.size(), n_elements, traits->name, expected));
  tensors_.push_back({name, type, std::move(shape), std::vector<uint8_t>(bytes.begin(), bytes.end())});
}

// Everything before the data section: header, metadata, tensor infos, padding.
static std::vector<uint8_t> head_bytes(uint64_t alignment,
                                       const std::vector<std::pair<std::string, GgufValue>>& metadata,
                                       const auto& tensors) {
  std::vector<uint8_t> bytes;
  ByteSink out(bytes);
  // general.alignment always carries the writer's alignment: a stale copied
  // value would make readers look for the data in the wrong place.
  bool has_alignment_key = false;
  for (const auto& [key, value] : metadata) has_alignment_key |= key == kAlignmentKey;
  const bool add_alignment_key = !has_alignment_key && alignment != kDefaultAlignment;

  out.put<uint32_t>(kGgufMagic);
  out.put<uint32_t>(kGgufVersion);
  out.put<uint64_t>(tensors.size());
  out.put<uint64_t>(metadata.size() + (add_alignment_key ? 1 : 0));
  const GgufValue alignment_value = make_scalar(GgufValueType::UINT32, alignment);
  for (const auto& [key, value] : metadata) {
    out.put_string(key);
    const GgufValue& v = key == kAlignmentKey ? alignment_value : value;
    out.put<uint32_t>(static_cast<uint32_t>(v.type));
    put_value(out, v, fmt::format("metadata '{}'", key), 0);
  }
  if (add_alignment_key) {
    out.put_string(kAlignmentKey);
    out.put<uint32_t>(static_cast<uint32_t>(GgufValueType::UINT32));
    out.put<uint32_t>(static_cast<uint32_t>(alignment));
  }

  uint64_t offset = 0;
  for (const auto& t : tensors) {
    out.put_string(t.name);
    out.put<uint32_t>(static_cast<uint32_t>(t.shape.size()));
    for (uint64_t ne : t.shape) out.put<uint64_t>(ne);
    out.put<uint32_t>(static_cast<uint32_t>(t.type));
    out.put<uint64_t>(offset);
    offset += (t.bytes.size() + alignment - 1) / alignment * alignment;
  }
  out.pad_to(alignment);
  return bytes;
}

std::vector<uint8_t> GgufWriter::to_bytes() const {
  std::vector<uint8_t> bytes = head_bytes(alignment_, metadata_, tensors_);
  ByteSink out(bytes);
  for (const Tensor& t : tensors_) {
    bytes.insert(bytes.end(), t.bytes.begin(), t.bytes.end());
    out.pad_to(alignment_);
  }
  return bytes;
}

void GgufWriter::write(const std::string& path) const {
  const std::vector<uint8_t> head = head_bytes(alignment_, metadata_, tensors_);
  // Write beside the target and rename: a crash or a full disk never leaves a
  // half-written model under the real name.
  const std::string temp = fmt::format("{}.tmp-{}", path, ::getpid());
  std::FILE* f = std::fopen(temp.c_str(), "wb");
  if (!f) throw GgufError(fmt::format("{}: cannot create {}: {}", path, temp, std::strerror(errno)));
  const std::vector<uint8_t> zeros(alignment_, 0);
  bool ok = std::fwrite(head.data(), 1, head.size(), f) == head.size();
  for (const Tensor& t : tensors_) {
    if (!ok) break;
    ok = std::fwrite(t.bytes.data(), 1, t.bytes.size(), f) == t.bytes.size();
    const size_t padding = (alignment_ - t.bytes.size() % alignment_) % alignment_;
    if (ok && padding) ok = std::fwrite(zeros.data(), 1, padding, f) == padding;
  }
  int err = ok ? 0 : errno;
  if (ok && (std::fflush(f) != 0 || ::fsync(::fileno(f)) != 0)) {
    ok = false;
    err = errno;
  }
  if (std::fclose(f) != 0 && ok) {
    ok = false;
    err = errno;
  }
  if (!ok) {
    std::remove(temp.c_str());
    throw GgufError(fmt::format("{}: cannot write: {}; check the disk space and permissions", path,
                                std::strerror(err)));
  }
  std::error_code ec;
  std::filesystem::rename(temp, path, ec);
  if (ec) {
    std::remove(temp.c_str());
    throw GgufError(fmt::format("{}: cannot rename {} into place: {}", path, temp, ec.message()));
  }
}

}  // namespace kvscope
