// GGUF reader. The file is untrusted input: every count, length, type id,
// shape and offset is checked against what the remaining bytes could hold
// before anything is allocated or dereferenced, and every error names the
// file, the field and what is wrong.
//
// [SECTION] value accessors     GgufValue::as_*
// [SECTION] cursor              bounds-checked little-endian reads
// [SECTION] metadata            key/value pairs, arrays (nested, capped depth)
// [SECTION] known keys          the type of every key kvscope reads
// [SECTION] tensor infos        names, shapes, types, offsets
// [SECTION] data section        placement, alignment, overlap
// [SECTION] GgufFile            open (mmap), from_memory, lookups
#include "models/gguf.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <limits>
#include <string_view>
#include <utility>

#include <fmt/format.h>
#include <fmt/ranges.h>

namespace kvscope {

namespace {

std::string value_type_name(GgufValueType t) {
  switch (t) {
    case GgufValueType::UINT8: return "UINT8";
    case GgufValueType::INT8: return "INT8";
    case GgufValueType::UINT16: return "UINT16";
    case GgufValueType::INT16: return "INT16";
    case GgufValueType::UINT32: return "UINT32";
    case GgufValueType::INT32: return "INT32";
    case GgufValueType::FLOAT32: return "FLOAT32";
    case GgufValueType::BOOL: return "BOOL";
    case GgufValueType::STRING: return "STRING";
    case GgufValueType::ARRAY: return "ARRAY";
    case GgufValueType::UINT64: return "UINT64";
    case GgufValueType::INT64: return "INT64";
    case GgufValueType::FLOAT64: return "FLOAT64";
  }
  return fmt::format("type {}", static_cast<uint32_t>(t));
}

[[noreturn]] void wrong_type(const std::string& key, const GgufValue& v, const char* expected) {
  throw GgufError(fmt::format("metadata '{}' has type {}, expected {}", key, value_type_name(v.type), expected));
}

}  // namespace

// ============================================================ [SECTION] value accessors

uint64_t GgufValue::as_uint(const std::string& key) const {
  if (const auto* u = std::get_if<uint64_t>(&value)) return *u;
  if (const auto* i = std::get_if<int64_t>(&value)) {
    if (*i < 0) throw GgufError(fmt::format("metadata '{}' is {}, expected a value that is not negative", key, *i));
    return static_cast<uint64_t>(*i);
  }
  wrong_type(key, *this, "an unsigned integer");
}

int64_t GgufValue::as_int(const std::string& key) const {
  if (const auto* i = std::get_if<int64_t>(&value)) return *i;
  if (const auto* u = std::get_if<uint64_t>(&value)) {
    if (*u > static_cast<uint64_t>(std::numeric_limits<int64_t>::max()))
      throw GgufError(fmt::format("metadata '{}' is {}, too large for a signed 64-bit integer", key, *u));
    return static_cast<int64_t>(*u);
  }
  wrong_type(key, *this, "an integer");
}

double GgufValue::as_float(const std::string& key) const {
  if (const auto* d = std::get_if<double>(&value)) return *d;
  if (const auto* u = std::get_if<uint64_t>(&value)) return static_cast<double>(*u);
  if (const auto* i = std::get_if<int64_t>(&value)) return static_cast<double>(*i);
  wrong_type(key, *this, "a number");
}

bool GgufValue::as_bool(const std::string& key) const {
  if (const auto* b = std::get_if<bool>(&value)) return *b;
  wrong_type(key, *this, "BOOL");
}

const std::string& GgufValue::as_string(const std::string& key) const {
  if (const auto* s = std::get_if<std::string>(&value)) return *s;
  wrong_type(key, *this, "STRING");
}

const GgufArray& GgufValue::as_array(const std::string& key) const {
  if (const auto* a = std::get_if<std::shared_ptr<GgufArray>>(&value); a && *a) return **a;
  wrong_type(key, *this, "ARRAY");
}

namespace {

// ======================================================== [SECTION] known keys
//
// Every metadata key kvscope reads, with the type the GGUF specification (and
// llama.cpp's writer) gives it. A file that stores one of them with another
// type is refused at open, naming the key, the type found and the type
// expected, rather than read with silently converted or wrong data. Counts
// (head counts, lengths, token ids) may be any integer type, as writers
// differ, but never a float, a string or a bool.

enum class Expect { Integer, Float, Bool, String, StringArray, Float32Array, Int32Array };

struct KnownKey {
  std::string_view key;  // "ARCH." stands for general.architecture's value
  Expect expect;
};

constexpr KnownKey kKnownKeys[] = {
    {"general.architecture", Expect::String},
    {"general.name", Expect::String},
    {"ARCH.context_length", Expect::Integer},
    {"ARCH.embedding_length", Expect::Integer},
    {"ARCH.block_count", Expect::Integer},
    {"ARCH.feed_forward_length", Expect::Integer},
    {"ARCH.attention.head_count", Expect::Integer},
    {"ARCH.attention.head_count_kv", Expect::Integer},
    {"ARCH.attention.key_length", Expect::Integer},
    {"ARCH.rope.dimension_count", Expect::Integer},
    {"ARCH.attention.layer_norm_rms_epsilon", Expect::Float},
    {"ARCH.rope.freq_base", Expect::Float},
    {"tokenizer.ggml.model", Expect::String},
    {"tokenizer.ggml.pre", Expect::String},
    {"tokenizer.ggml.tokens", Expect::StringArray},
    {"tokenizer.ggml.scores", Expect::Float32Array},
    {"tokenizer.ggml.token_type", Expect::Int32Array},
    {"tokenizer.ggml.merges", Expect::StringArray},
    {"tokenizer.ggml.bos_token_id", Expect::Integer},
    {"tokenizer.ggml.eos_token_id", Expect::Integer},
    {"tokenizer.ggml.unknown_token_id", Expect::Integer},
    {"tokenizer.ggml.padding_token_id", Expect::Integer},
    {"tokenizer.ggml.add_bos_token", Expect::Bool},
    {"tokenizer.ggml.add_eos_token", Expect::Bool},
    {"tokenizer.ggml.add_space_prefix", Expect::Bool},
    {"tokenizer.chat_template", Expect::String},
};

bool is_integer_type(GgufValueType t) {
  switch (t) {
    case GgufValueType::UINT8: case GgufValueType::INT8: case GgufValueType::UINT16: case GgufValueType::INT16:
    case GgufValueType::UINT32: case GgufValueType::INT32: case GgufValueType::UINT64: case GgufValueType::INT64:
      return true;
    default:
      return false;
  }
}

// "" when `v` has the type `expect` asks for, else what was expected.
std::string type_mismatch(const GgufValue& v, Expect expect) {
  auto array_of = [&](GgufValueType elem) -> std::string {
    if (v.type != GgufValueType::ARRAY) return fmt::format("ARRAY of {}", value_type_name(elem));
    const auto& a = std::get<std::shared_ptr<GgufArray>>(v.value);
    return a && a->elem_type == elem ? std::string{} : fmt::format("ARRAY of {}", value_type_name(elem));
  };
  switch (expect) {
    case Expect::Integer: return is_integer_type(v.type) ? "" : "an integer (UINT32)";
    case Expect::Float: return v.type == GgufValueType::FLOAT32 || v.type == GgufValueType::FLOAT64 ? "" : "FLOAT32";
    case Expect::Bool: return v.type == GgufValueType::BOOL ? "" : "BOOL";
    case Expect::String: return v.type == GgufValueType::STRING ? "" : "STRING";
    case Expect::StringArray: return array_of(GgufValueType::STRING);
    case Expect::Float32Array: return array_of(GgufValueType::FLOAT32);
    case Expect::Int32Array: return array_of(GgufValueType::INT32);
  }
  return "";
}

std::string found_type(const GgufValue& v) {
  if (v.type != GgufValueType::ARRAY) return value_type_name(v.type);
  const auto& a = std::get<std::shared_ptr<GgufArray>>(v.value);
  return fmt::format("ARRAY of {}", a ? value_type_name(a->elem_type) : std::string("?"));
}

// ============================================================ [SECTION] cursor

constexpr uint32_t kGgufMagic = 0x46554747;  // "GGUF" read as little-endian uint32
constexpr uint64_t kHeaderBytes = 4 + 4 + 8 + 8;  // magic, version, n_tensors, n_kv
constexpr uint64_t kMinTensorInfoBytes = 8 + 4 + 8 + 4 + 8;  // name length, n_dims, one dim, type, offset
constexpr uint64_t kMinKvBytes = 8 + 1 + 4 + 1;  // key length, 1-byte key, type, smallest value
constexpr int kMaxArrayDepth = 4;  // ggml itself writes none nested; 4 is plenty, and bounds recursion
constexpr uint32_t kMaxDims = 4;

// Bytes one item of an array of this type takes at least: used to reject
// array lengths the rest of the file could not possibly hold.
uint64_t min_value_bytes(GgufValueType t) {
  switch (t) {
    case GgufValueType::UINT8:
    case GgufValueType::INT8:
    case GgufValueType::BOOL: return 1;
    case GgufValueType::UINT16:
    case GgufValueType::INT16: return 2;
    case GgufValueType::UINT32:
    case GgufValueType::INT32:
    case GgufValueType::FLOAT32: return 4;
    case GgufValueType::UINT64:
    case GgufValueType::INT64:
    case GgufValueType::FLOAT64:
    case GgufValueType::STRING: return 8;  // a string is at least its length field
    case GgufValueType::ARRAY: return 12;  // element type + length
  }
  return 1;
}

bool known_value_type(uint32_t t) { return t <= static_cast<uint32_t>(GgufValueType::FLOAT64); }

// Names the field being read; made into a string only when an error is
// reported (array items would otherwise cost one formatted string each, and a
// tokenizer holds 100k+ of them).
class FieldName {
 public:
  FieldName(const std::string& text) : text_(text) {}  // implicit on purpose, as are the next
  FieldName(const char* text) : text_(text) {}
  FieldName(const FieldName& array, uint64_t index) : parent_(&array), index_(index) {}
  std::string str() const { return parent_ ? fmt::format("{}[{}]", parent_->str(), index_) : std::string(text_); }

 private:
  std::string_view text_;
  const FieldName* parent_ = nullptr;
  uint64_t index_ = 0;
};

class Cursor {
 public:
  Cursor(const std::string& path, const uint8_t* base, uint64_t size) : path_(path), base_(base), size_(size) {}

  uint64_t pos() const { return pos_; }
  uint64_t remaining() const { return size_ - pos_; }

  [[noreturn]] void fail(const FieldName& field, const std::string& what) const {
    throw GgufError(fmt::format("{}: {}: {}", path_, field.str(), what));
  }

  template <typename T>
  T read(const FieldName& field) {
    if (remaining() < sizeof(T))
      fail(field, fmt::format("the file ends at byte {}, in the middle of this field ({} bytes needed at offset {})",
                              size_, sizeof(T), pos_));
    T value;
    std::memcpy(&value, base_ + pos_, sizeof(T));
    pos_ += sizeof(T);
    return value;
  }

  std::string read_string(const FieldName& field) {
    const uint64_t length = read<uint64_t>(field);
    if (length > remaining())
      fail(field, fmt::format("string length {} runs past the end of the file", length));
    std::string s(reinterpret_cast<const char*>(base_ + pos_), length);
    pos_ += length;
    return s;
  }

 private:
  const std::string& path_;
  const uint8_t* base_;
  uint64_t size_;
  uint64_t pos_ = 0;
};

// ============================================================ [SECTION] metadata

GgufValue read_value(Cursor& in, GgufValueType type, const FieldName& field, int depth);

GgufValue read_array(Cursor& in, const FieldName& field, int depth) {
  if (depth >= kMaxArrayDepth)
    in.fail(field, fmt::format("arrays nested deeper than {} levels; kvscope does not read such files", kMaxArrayDepth));
  const uint32_t elem_type = in.read<uint32_t>(field);
  if (!known_value_type(elem_type)) in.fail(field, fmt::format("unknown array element type {}", elem_type));
  const uint64_t length = in.read<uint64_t>(field);
  const uint64_t min_bytes = min_value_bytes(static_cast<GgufValueType>(elem_type));
  if (length > in.remaining() / min_bytes)
    in.fail(field, fmt::format("array length {} runs past the end of the file (each {} takes at least {} bytes, "
                               "{} bytes remain)",
                               length, value_type_name(static_cast<GgufValueType>(elem_type)), min_bytes,
                               in.remaining()));
  auto array = std::make_shared<GgufArray>();
  array->elem_type = static_cast<GgufValueType>(elem_type);
  array->items.reserve(length);
  for (uint64_t i = 0; i < length; ++i)
    array->items.push_back(read_value(in, array->elem_type, FieldName(field, i), depth + 1));
  GgufValue v;
  v.type = GgufValueType::ARRAY;
  v.value = std::move(array);
  return v;
}

GgufValue read_value(Cursor& in, GgufValueType type, const FieldName& field, int depth) {
  GgufValue v;
  v.type = type;
  switch (type) {
    case GgufValueType::UINT8: v.value = uint64_t{in.read<uint8_t>(field)}; break;
    case GgufValueType::UINT16: v.value = uint64_t{in.read<uint16_t>(field)}; break;
    case GgufValueType::UINT32: v.value = uint64_t{in.read<uint32_t>(field)}; break;
    case GgufValueType::UINT64: v.value = in.read<uint64_t>(field); break;
    case GgufValueType::INT8: v.value = int64_t{in.read<int8_t>(field)}; break;
    case GgufValueType::INT16: v.value = int64_t{in.read<int16_t>(field)}; break;
    case GgufValueType::INT32: v.value = int64_t{in.read<int32_t>(field)}; break;
    case GgufValueType::INT64: v.value = in.read<int64_t>(field); break;
    case GgufValueType::FLOAT32: v.value = double{in.read<float>(field)}; break;
    case GgufValueType::FLOAT64: v.value = in.read<double>(field); break;
    case GgufValueType::BOOL: {
      const uint8_t b = in.read<uint8_t>(field);
      if (b > 1) in.fail(field, fmt::format("bool value {} is neither 0 nor 1", b));
      v.value = b == 1;
      break;
    }
    case GgufValueType::STRING: v.value = in.read_string(field); break;
    case GgufValueType::ARRAY: return read_array(in, field, depth);
  }
  return v;
}

std::string format_shape(const std::vector<uint64_t>& shape) {
  return fmt::format("[{}]", fmt::join(shape, ", "));
}

// a * b, or nullopt when it does not fit in 64 bits.
std::optional<uint64_t> checked_mul(uint64_t a, uint64_t b) {
  uint64_t product;
  if (__builtin_mul_overflow(a, b, &product)) return std::nullopt;
  return product;
}

std::optional<uint64_t> checked_add(uint64_t a, uint64_t b) {
  uint64_t sum;
  if (__builtin_add_overflow(a, b, &sum)) return std::nullopt;
  return sum;
}

}  // namespace

// ============================================================ [SECTION] parse

void GgufFile::parse() {
  Cursor in(path_, base_, size_);

  // ---- header
  auto too_short = [&] {
    in.fail("header", fmt::format("file is {} bytes, too short for a GGUF header ({} bytes)", size_, kHeaderBytes));
  };
  if (size_ < 4) too_short();
  const uint32_t magic = in.read<uint32_t>("header");
  if (magic != kGgufMagic) {
    std::string shown;
    for (int i = 0; i < 4; ++i) {
      const auto c = static_cast<unsigned char>(base_[i]);
      shown += (c >= 0x20 && c < 0x7F) ? fmt::format("{}", static_cast<char>(c)) : fmt::format("\\x{:02x}", c);
    }
    in.fail("header", fmt::format("bad magic '{}' (expected 'GGUF'); this is not a GGUF file", shown));
  }
  if (size_ < 8) too_short();
  version_ = in.read<uint32_t>("header");
  if (version_ == 1)
    in.fail("header", "GGUF version 1 is not supported (only 2 and 3); convert the model again with a current llama.cpp");
  if (version_ != 2 && version_ != 3) {
    const bool byte_swapped = version_ == 0x02000000u || version_ == 0x03000000u;
    in.fail("header", fmt::format("unsupported GGUF version {}{}; kvscope reads versions 2 and 3", version_,
                                  byte_swapped ? " (a big-endian file)" : ""));
  }
  if (size_ < kHeaderBytes) too_short();
  const uint64_t n_tensors = in.read<uint64_t>("header");
  const uint64_t n_kv = in.read<uint64_t>("header");
  if (n_tensors > in.remaining() / kMinTensorInfoBytes)
    in.fail("header", fmt::format("tensor count {} is more than the remaining {} bytes could hold", n_tensors,
                                  in.remaining()));
  if (n_kv > in.remaining() / kMinKvBytes)
    in.fail("header", fmt::format("metadata count {} is more than the remaining {} bytes could hold", n_kv,
                                  in.remaining()));
  if (n_tensors * kMinTensorInfoBytes + n_kv * kMinKvBytes > in.remaining())
    in.fail("header", fmt::format("{} tensors and {} metadata entries are more than the remaining {} bytes could hold",
                                  n_tensors, n_kv, in.remaining()));

  // ---- metadata
  std::map<std::string, uint64_t> key_index;
  for (uint64_t i = 0; i < n_kv; ++i) {
    const std::string key_field = fmt::format("metadata key #{}", i);
    std::string key = in.read_string(key_field);
    if (key.empty()) in.fail(key_field, "empty key");
    const std::string field = fmt::format("metadata '{}'", key);
    if (auto seen = key_index.find(key); seen != key_index.end())
      in.fail(fmt::format("{} '{}'", key_field, key), fmt::format("duplicate key (also key #{})", seen->second));
    const uint32_t type = in.read<uint32_t>(field);
    if (!known_value_type(type)) in.fail(field, fmt::format("unknown value type {}", type));
    GgufValue value = read_value(in, static_cast<GgufValueType>(type), field, 0);
    key_index.emplace(key, i);
    metadata_order_.push_back(key);
    metadata_.emplace(std::move(key), std::move(value));
  }

  // ---- the keys kvscope reads, each of its specified type
  std::string arch;
  if (auto it = metadata_.find("general.architecture"); it != metadata_.end() && it->second.type == GgufValueType::STRING)
    arch = std::get<std::string>(it->second.value);
  for (const KnownKey& known : kKnownKeys) {
    std::string key(known.key);
    if (key.starts_with("ARCH.")) {
      if (arch.empty()) continue;
      key = arch + key.substr(4);
    }
    const auto it = metadata_.find(key);
    if (it == metadata_.end()) continue;
    if (const std::string expected = type_mismatch(it->second, known.expect); !expected.empty())
      in.fail(fmt::format("metadata '{}'", key),
              fmt::format("has type {}, expected {}; the file does not follow the GGUF specification (re-convert it "
                          "with a current converter)",
                          found_type(it->second), expected));
  }

  if (auto it = metadata_.find("general.alignment"); it != metadata_.end()) {
    const GgufValue& v = it->second;
    if (v.type != GgufValueType::UINT32)
      in.fail("metadata 'general.alignment'",
              fmt::format("has type {}, expected UINT32", value_type_name(v.type)));
    const uint64_t a = std::get<uint64_t>(v.value);
    if (a == 0 || (a & (a - 1)) != 0) in.fail("metadata 'general.alignment'", fmt::format("{} is not a power of two", a));
    alignment_ = a;
  }

  // ---- tensor infos
  for (uint64_t i = 0; i < n_tensors; ++i) {
    GgufTensorInfo t;
    t.name = in.read_string(fmt::format("tensor #{} name", i));
    if (t.name.empty()) in.fail(fmt::format("tensor #{}", i), "empty name");
    const std::string field = fmt::format("tensor '{}'", t.name);
    if (auto seen = tensor_index_.find(t.name); seen != tensor_index_.end())
      in.fail(field, fmt::format("duplicate tensor name (tensors #{} and #{})", seen->second, i));

    const uint32_t n_dims = in.read<uint32_t>(field);
    if (n_dims == 0 || n_dims > kMaxDims)
      in.fail(field, fmt::format("n_dims {} is not between 1 and {}", n_dims, kMaxDims));
    for (uint32_t d = 0; d < n_dims; ++d) t.shape.push_back(in.read<uint64_t>(field));

    uint64_t n_elements = 1;
    for (uint32_t d = 0; d < n_dims; ++d) {
      // ggml keeps ne[] as int64: larger dimensions cannot be real.
      if (t.shape[d] == 0 || t.shape[d] > static_cast<uint64_t>(std::numeric_limits<int64_t>::max()))
        in.fail(field, fmt::format("dimension {} of shape {} is {}", d, format_shape(t.shape),
                                   t.shape[d] == 0 ? "zero" : "absurdly large"));
      auto product = checked_mul(n_elements, t.shape[d]);
      if (!product)
        in.fail(field, fmt::format("shape {} has more elements than fit in 64 bits", format_shape(t.shape)));
      n_elements = *product;
    }
    t.n_elements = n_elements;

    const uint32_t type_id = in.read<uint32_t>(field);
    const auto traits = type_traits(type_id);
    if (!traits) in.fail(field, fmt::format("unknown tensor type id {}", type_id));
    t.type = static_cast<GgmlType>(type_id);
    if (t.shape[0] % traits->block_elems != 0)
      in.fail(field, fmt::format("row length {} is not a multiple of the {} block size {}", t.shape[0], traits->name,
                                 traits->block_elems));
    auto n_bytes = checked_mul(n_elements / traits->block_elems, traits->block_bytes);
    if (!n_bytes) in.fail(field, fmt::format("shape {} of {} is more bytes than fit in 64 bits", format_shape(t.shape), traits->name));
    t.n_bytes = *n_bytes;

    t.offset = in.read<uint64_t>(field);
    if (t.offset % alignment_ != 0)
      in.fail(field, fmt::format("data offset {} is not a multiple of the alignment {}", t.offset, alignment_));

    tensor_index_.emplace(t.name, tensors_.size());
    tensors_.push_back(std::move(t));
  }

  // ---- data section: starts at the first multiple of the alignment after the infos
  const uint64_t infos_end = in.pos();
  const uint64_t data_start = (infos_end + alignment_ - 1) / alignment_ * alignment_;  // infos_end <= size_, no overflow
  if (!tensors_.empty() && data_start > size_)
    in.fail("data section", fmt::format("starts at byte {} (after the tensor infos, aligned to {}), past the end of the "
                                        "file ({} bytes)",
                                        data_start, alignment_, size_));

  struct Extent {
    uint64_t begin, end;
    size_t tensor;
  };
  std::vector<Extent> extents;
  extents.reserve(tensors_.size());
  for (size_t i = 0; i < tensors_.size(); ++i) {
    GgufTensorInfo& t = tensors_[i];
    const std::string field = fmt::format("tensor '{}'", t.name);
    const auto begin = checked_add(data_start, t.offset);
    const auto end = begin ? checked_add(*begin, t.n_bytes) : std::nullopt;
    if (!begin || !end)
      in.fail(field, fmt::format("data offset {} + {} bytes overflows a 64-bit file position", t.offset, t.n_bytes));
    if (*end > size_)
      in.fail(field, fmt::format("data [{}, {}) runs past the end of the file ({} bytes)", *begin, *end, size_));
    t.data = base_ + *begin;
    extents.push_back({*begin, *end, i});
  }
  std::sort(extents.begin(), extents.end(), [](const Extent& a, const Extent& b) { return a.begin < b.begin; });
  for (size_t i = 1; i < extents.size(); ++i) {
    const Extent& prev = extents[i - 1];
    const Extent& next = extents[i];
    if (next.begin < prev.end)
      in.fail(fmt::format("tensor '{}'", tensors_[next.tensor].name),
              fmt::format("data [{}, {}) overlaps tensor '{}' at [{}, {})", next.begin, next.end,
                          tensors_[prev.tensor].name, prev.begin, prev.end));
  }
}

// ============================================================ [SECTION] GgufFile

GgufFile GgufFile::open(const std::string& path) {
  GgufFile file;
  file.path_ = path;
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) throw GgufError(fmt::format("{}: cannot open: {}; check the path", path, std::strerror(errno)));
  struct stat st {};
  if (::fstat(fd, &st) != 0) {
    const int err = errno;
    ::close(fd);
    throw GgufError(fmt::format("{}: cannot stat: {}", path, std::strerror(err)));
  }
  if (!S_ISREG(st.st_mode)) {
    ::close(fd);
    throw GgufError(fmt::format("{}: not a regular file; give the path of a .gguf model", path));
  }
  file.size_ = static_cast<uint64_t>(st.st_size);
  if (file.size_ > 0) {
    void* mapping = ::mmap(nullptr, file.size_, PROT_READ, MAP_PRIVATE, fd, 0);
    const int err = errno;
    ::close(fd);  // the mapping keeps the file alive
    if (mapping == MAP_FAILED) throw GgufError(fmt::format("{}: cannot map into memory: {}", path, std::strerror(err)));
    file.base_ = static_cast<const uint8_t*>(mapping);
    file.mapped_ = true;
  } else {
    ::close(fd);
  }
  file.parse();  // on throw, ~GgufFile unmaps
  return file;
}

GgufFile GgufFile::from_memory(std::span<const uint8_t> bytes, std::string display_name) {
  GgufFile file;
  file.path_ = std::move(display_name);
  file.base_ = bytes.data();
  file.size_ = bytes.size();
  file.parse();
  return file;
}

GgufFile::GgufFile(GgufFile&& other) noexcept
    : path_(std::move(other.path_)),
      base_(std::exchange(other.base_, nullptr)),
      size_(std::exchange(other.size_, 0)),
      mapped_(std::exchange(other.mapped_, false)),
      version_(other.version_),
      alignment_(other.alignment_),
      metadata_(std::move(other.metadata_)),
      metadata_order_(std::move(other.metadata_order_)),
      tensors_(std::move(other.tensors_)),
      tensor_index_(std::move(other.tensor_index_)) {}

GgufFile& GgufFile::operator=(GgufFile&& other) noexcept {
  if (this != &other) {
    GgufFile old(std::move(*this));  // releases our mapping at scope end
    path_ = std::move(other.path_);
    base_ = std::exchange(other.base_, nullptr);
    size_ = std::exchange(other.size_, 0);
    mapped_ = std::exchange(other.mapped_, false);
    version_ = other.version_;
    alignment_ = other.alignment_;
    metadata_ = std::move(other.metadata_);
    metadata_order_ = std::move(other.metadata_order_);
    tensors_ = std::move(other.tensors_);
    tensor_index_ = std::move(other.tensor_index_);
  }
  return *this;
}

GgufFile::~GgufFile() {
  if (mapped_ && base_) ::munmap(const_cast<uint8_t*>(base_), size_);
}

void GgufFile::release_pages() const {
  if (mapped_ && base_) ::madvise(const_cast<uint8_t*>(base_), size_, MADV_DONTNEED);
}

const GgufValue& GgufFile::get(const std::string& key) const {
  auto it = metadata_.find(key);
  if (it == metadata_.end()) throw GgufError(fmt::format("{}: metadata {} is missing", path_, key));
  return it->second;
}

namespace {
// Accessor errors do not know the file; add it.
template <typename F>
auto with_path(const std::string& path, F&& f) {
  try {
    return f();
  } catch (const GgufError& e) {
    throw GgufError(fmt::format("{}: {}", path, e.what()));
  }
}
}  // namespace

uint64_t GgufFile::get_uint(const std::string& key) const {
  const GgufValue& v = get(key);
  return with_path(path_, [&] { return v.as_uint(key); });
}

uint64_t GgufFile::get_uint_or(const std::string& key, uint64_t fallback) const {
  return has(key) ? get_uint(key) : fallback;
}

double GgufFile::get_float_or(const std::string& key, double fallback) const {
  if (!has(key)) return fallback;
  const GgufValue& v = get(key);
  return with_path(path_, [&] { return v.as_float(key); });
}

std::string GgufFile::get_string(const std::string& key) const {
  const GgufValue& v = get(key);
  return with_path(path_, [&] { return v.as_string(key); });
}

std::string GgufFile::get_string_or(const std::string& key, const std::string& fallback) const {
  return has(key) ? get_string(key) : fallback;
}

const GgufTensorInfo* GgufFile::find_tensor(const std::string& name) const {
  auto it = tensor_index_.find(name);
  return it == tensor_index_.end() ? nullptr : &tensors_[it->second];
}

const GgufTensorInfo& GgufFile::tensor(const std::string& name) const {
  const GgufTensorInfo* t = find_tensor(name);
  if (!t) throw GgufError(fmt::format("{}: tensor '{}' is missing", path_, name));
  return *t;
}

}  // namespace kvscope
