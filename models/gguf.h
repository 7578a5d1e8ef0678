// GGUF files: reading (v2 and v3, memory-mapped, every metadata type,
// validated against hostile input) and writing (v3).
//
// Every error is a GgufError whose message names the file, the field and what
// is wrong, e.g. "model.gguf: tensor 'blk.0.attn_q.weight': data [1024, 4096)
// runs past the end of the file (3000 bytes)".
#pragma once
#include <cstdint>
#include <map>
#include <memory>
#include <span>
#include <stdexcept>
#include <string>
#include <variant>
#include <vector>

#include "models/ggml_types.h"

namespace kvscope {

struct GgufError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

// Metadata value types as numbered by the format.
enum class GgufValueType : uint32_t {
  UINT8 = 0, INT8 = 1, UINT16 = 2, INT16 = 3, UINT32 = 4, INT32 = 5,
  FLOAT32 = 6, BOOL = 7, STRING = 8, ARRAY = 9, UINT64 = 10, INT64 = 11,
  FLOAT64 = 12,
};

struct GgufArray;
struct GgufValue {
  GgufValueType type = GgufValueType::UINT32;
  // Scalars are widened: unsigned -> uint64_t, signed -> int64_t,
  // floats -> double, bool -> bool, string -> std::string.
  std::variant<uint64_t, int64_t, double, bool, std::string, std::shared_ptr<GgufArray>> value;

  // Typed access with conversion checks; throw GgufError naming `key` when the
  // stored type does not fit.
  uint64_t as_uint(const std::string& key) const;
  int64_t as_int(const std::string& key) const;
  double as_float(const std::string& key) const;
  bool as_bool(const std::string& key) const;
  const std::string& as_string(const std::string& key) const;
  const GgufArray& as_array(const std::string& key) const;
};

struct GgufArray {
  GgufValueType elem_type = GgufValueType::UINT8;
  std::vector<GgufValue> items;  // strings/nested arrays/scalars alike
};

struct GgufTensorInfo {
  std::string name;
  std::vector<uint64_t> shape;  // ne[0] first: ne[0] is the contiguous (row) length
  GgmlType type = GgmlType::F32;
  uint64_t offset = 0;          // relative to the data section
  uint64_t n_elements = 0;
  uint64_t n_bytes = 0;
  const uint8_t* data = nullptr;  // into the mapping, valid while the file lives
};

// A memory-mapped GGUF file. Move-only; unmaps on destruction.
class GgufFile {
 public:
  // Throws GgufError on anything malformed: truncation anywhere, absurd counts
  // or sizes, bad strings, unknown value or tensor types, offsets out of the
  // file or misaligned, overlapping tensors, duplicate names.
  static GgufFile open(const std::string& path);
  // Same validation over bytes in memory (the buffer must outlive the file).
  static GgufFile from_memory(std::span<const uint8_t> bytes, std::string display_name);

  GgufFile(GgufFile&&) noexcept;
  GgufFile& operator=(GgufFile&&) noexcept;
  GgufFile(const GgufFile&) = delete;
  GgufFile& operator=(const GgufFile&) = delete;
  ~GgufFile();

  const std::string& path() const { return path_; }
  uint32_t version() const { return version_; }
  uint64_t alignment() const { return alignment_; }
  uint64_t file_size() const { return size_; }

  const std::map<std::string, GgufValue>& metadata() const { return metadata_; }
  const std::vector<std::string>& metadata_order() const { return metadata_order_; }
  bool has(const std::string& key) const { return metadata_.count(key) != 0; }
  const GgufValue& get(const std::string& key) const;  // GgufError if missing
  // Conveniences that throw GgufError "PATH: metadata KEY is missing" etc.
  uint64_t get_uint(const std::string& key) const;
  uint64_t get_uint_or(const std::string& key, uint64_t fallback) const;
  double get_float_or(const std::string& key, double fallback) const;
  std::string get_string(const std::string& key) const;
  std::string get_string_or(const std::string& key, const std::string& fallback) const;

  const std::vector<GgufTensorInfo>& tensors() const { return tensors_; }
  const GgufTensorInfo* find_tensor(const std::string& name) const;  // nullptr if absent
  const GgufTensorInfo& tensor(const std::string& name) const;       // GgufError if absent

  // Lets the kernel drop the mapped pages once the weights live elsewhere
  // (madvise DONTNEED on a read-only file mapping: touched again, they are
  // re-read from the file). No effect on files read from memory.
  void release_pages() const;

 private:
  GgufFile() = default;
  void parse();
  std::string path_;
  const uint8_t* base_ = nullptr;
  uint64_t size_ = 0;
  bool mapped_ = false;  // true: munmap(base_, size_) on destruction
  uint32_t version_ = 0;
  uint64_t alignment_ = 32;
  std::map<std::string, GgufValue> metadata_;
  std::vector<std::string> metadata_order_;
  std::vector<GgufTensorInfo> tensors_;
  std::map<std::string, size_t> tensor_index_;
};

// Writes GGUF v3. Metadata in insertion order; tensors' data aligned to
// `alignment` (general.alignment is written when it is not 32).
class GgufWriter {
 public:
  explicit GgufWriter(uint64_t alignment = 32);
  void set(const std::string& key, GgufValue value);
  void set_uint32(const std::string& key, uint32_t v);
  void set_int32(const std::string& key, int32_t v);
  void set_float32(const std::string& key, float v);
  void set_bool(const std::string& key, bool v);
  void set_string(const std::string& key, const std::string& v);
  void set_string_array(const std::string& key, const std::vector<std::string>& v);
  void set_float32_array(const std::string& key, const std::vector<float>& v);
  void set_int32_array(const std::string& key, const std::vector<int32_t>& v);
  // `bytes` is copied; shape ne[0] first; n_bytes must match type and shape.
  void add_tensor(const std::string& name, GgmlType type, std::vector<uint64_t> shape,
                  std::span<const uint8_t> bytes);
  // Writes to a temporary file beside `path`, then renames it into place.
  void write(const std::string& path) const;
  std::vector<uint8_t> to_bytes() const;

 private:
  struct Tensor {
    std::string name;
    GgmlType type;
    std::vector<uint64_t> shape;
    std::vector<uint8_t> bytes;
  };
  uint64_t alignment_;
  std::vector<std::pair<std::string, GgufValue>> metadata_;
  std::vector<Tensor> tensors_;
};

}  // namespace kvscope
