// GGUF reader and writer: round trips of every metadata and tensor type,
// alignments, versions; every malformed input rejected with a GgufError that
// names the file and the field; the llama hyperparameter check.
//
// [SECTION] helpers          raw byte builder, error expectations
// [SECTION] round trips      metadata, tensors, alignment, v2, files on disk
// [SECTION] hostile input    one case per check in the reader, truncation loop
// [SECTION] hparams          synthetic llama model and each way it can be wrong
#include <doctest/doctest.h>

#include <cstring>
#include <filesystem>
#include <limits>
#include <memory>

#include <unistd.h>

#include "models/gguf.h"
#include "models/hparams.h"
#include "tests/models/synthetic_llama.h"

using namespace kvscope;
using kvscope::testing::SyntheticLlama;
using kvscope::testing::synthetic_llama_writer;
using kvscope::testing::synthetic_tensor_bytes;

namespace {

// ============================================================ [SECTION] helpers

// Builds GGUF bytes field by field, so tests can write what GgufWriter never would.
struct RawGguf {
  std::vector<uint8_t> bytes;
  template <typename T>
  RawGguf& put(T v) {
    const auto* p = reinterpret_cast<const uint8_t*>(&v);
    bytes.insert(bytes.end(), p, p + sizeof v);
    return *this;
  }
  RawGguf& str(const std::string& s) {
    put<uint64_t>(s.size());
    bytes.insert(bytes.end(), s.begin(), s.end());
    return *this;
  }
  RawGguf& header(uint64_t n_tensors, uint64_t n_kv, uint32_t version = 3) {
    put<uint32_t>(0x46554747).put<uint32_t>(version).put<uint64_t>(n_tensors).put<uint64_t>(n_kv);
    return *this;
  }
  RawGguf& kv_u32(const std::string& key, uint32_t v) {
    str(key).put<uint32_t>(static_cast<uint32_t>(GgufValueType::UINT32)).put<uint32_t>(v);
    return *this;
  }
  RawGguf& tensor_info(const std::string& name, std::vector<uint64_t> shape, GgmlType type, uint64_t offset) {
    str(name).put<uint32_t>(static_cast<uint32_t>(shape.size()));
    for (uint64_t ne : shape) put<uint64_t>(ne);
    put<uint32_t>(static_cast<uint32_t>(type)).put<uint64_t>(offset);
    return *this;
  }
  RawGguf& pad(uint64_t alignment = 32) {
    while (bytes.size() % alignment) bytes.push_back(0);
    return *this;
  }
  RawGguf& zeros(size_t n) {
    bytes.insert(bytes.end(), n, 0);
    return *this;
  }
};

// Parses from a heap block of exactly the file's size, so ASan catches any
// read one byte past the end.
GgufFile parse_exact(const std::vector<uint8_t>& bytes, size_t size, std::unique_ptr<uint8_t[]>& storage,
                     const std::string& name = "bad.gguf") {
  storage.reset(new uint8_t[size]);
  if (size) std::memcpy(storage.get(), bytes.data(), size);
  return GgufFile::from_memory({storage.get(), size}, name);
}

void expect_rejected(const std::vector<uint8_t>& bytes, const std::string& phrase) {
  std::unique_ptr<uint8_t[]> storage;
  try {
    parse_exact(bytes, bytes.size(), storage);
    FAIL("accepted a file that should fail with: " << phrase);
  } catch (const GgufError& e) {
    const std::string message = e.what();
    CHECK_MESSAGE(message.rfind("bad.gguf: ", 0) == 0, message);
    CHECK_MESSAGE(message.find(phrase) != std::string::npos, "expected '" << phrase << "' in: " << message);
  }
}

void expect_config_error(const GgufWriter& w, const std::string& phrase) {
  const std::vector<uint8_t> bytes = w.to_bytes();
  const GgufFile file = GgufFile::from_memory(bytes, "m.gguf");
  try {
    read_llama_config(file);
    FAIL("accepted a model that should fail with: " << phrase);
  } catch (const GgufError& e) {
    const std::string message = e.what();
    CHECK_MESSAGE(message.find(phrase) != std::string::npos, "expected '" << phrase << "' in: " << message);
  }
}

GgufValue scalar(GgufValueType t, decltype(GgufValue::value) v) {
  GgufValue value;
  value.type = t;
  value.value = std::move(v);
  return value;
}

GgufValue array_of(GgufValueType elem_type, std::vector<GgufValue> items) {
  auto a = std::make_shared<GgufArray>();
  a->elem_type = elem_type;
  a->items = std::move(items);
  return scalar(GgufValueType::ARRAY, std::move(a));
}

std::filesystem::path temp_dir() {
  auto dir = std::filesystem::temp_directory_path() / ("kvscope-test-gguf-" + std::to_string(::getpid()));
  std::filesystem::create_directories(dir);
  return dir;
}

}  // namespace

// ============================================================ [SECTION] round trips

TEST_CASE("gguf: every metadata type round-trips, in insertion order") {
  GgufWriter w;
  w.set("u8", scalar(GgufValueType::UINT8, uint64_t{255}));
  w.set("i8", scalar(GgufValueType::INT8, int64_t{-128}));
  w.set("u16", scalar(GgufValueType::UINT16, uint64_t{65535}));
  w.set("i16", scalar(GgufValueType::INT16, int64_t{-32768}));
  w.set_uint32("u32", 4000000000u);
  w.set_int32("i32", -2000000000);
  w.set_float32("f32", 0.25f);
  w.set_bool("yes", true);
  w.set_bool("no", false);
  w.set_string("str", std::string("caf\xc3\xa9 \0nul", 10));
  w.set("u64", scalar(GgufValueType::UINT64, std::numeric_limits<uint64_t>::max()));
  w.set("i64", scalar(GgufValueType::INT64, std::numeric_limits<int64_t>::min()));
  w.set("f64", scalar(GgufValueType::FLOAT64, 3.141592653589793));
  w.set_string_array("strings", {"a", "", "\xe2\x96\x81hello"});
  w.set_float32_array("floats", {1.5f, -2.0f});
  w.set_int32_array("ints", {});
  w.set("nested", array_of(GgufValueType::ARRAY,
                           {array_of(GgufValueType::UINT16, {scalar(GgufValueType::UINT16, uint64_t{7})}),
                            array_of(GgufValueType::STRING, {scalar(GgufValueType::STRING, std::string("x")),
                                                             scalar(GgufValueType::STRING, std::string("yz"))})}));
  w.set_uint32("u32", 4000000001u);  // replacing keeps the first position

  const std::vector<uint8_t> bytes = w.to_bytes();
  const GgufFile f = GgufFile::from_memory(bytes, "meta.gguf");
  CHECK(f.version() == 3);
  CHECK(f.alignment() == 32);
  const std::vector<std::string> order = {"u8",  "i8",  "u16", "i16",     "u32",    "i32",  "f32",   "yes",   "no",
                                          "str", "u64", "i64", "f64", "strings", "floats", "ints", "nested"};
  CHECK(f.metadata_order() == order);
  CHECK(f.get("u8").type == GgufValueType::UINT8);
  CHECK(f.get_uint("u8") == 255);
  CHECK(f.get("i8").as_int("i8") == -128);
  CHECK(f.get_uint("u16") == 65535);
  CHECK(f.get("i16").as_int("i16") == -32768);
  CHECK(f.get_uint("u32") == 4000000001u);
  CHECK(f.get("i32").as_int("i32") == -2000000000);
  CHECK(f.get_float_or("f32", 0) == 0.25);
  CHECK(f.get("yes").as_bool("yes"));
  CHECK_FALSE(f.get("no").as_bool("no"));
  CHECK(f.get_string("str") == std::string("caf\xc3\xa9 \0nul", 10));
  CHECK(f.get_uint("u64") == std::numeric_limits<uint64_t>::max());
  CHECK(f.get("i64").as_int("i64") == std::numeric_limits<int64_t>::min());
  CHECK(f.get("f64").as_float("f64") == 3.141592653589793);
  CHECK(f.get("f64").type == GgufValueType::FLOAT64);

  const GgufArray& strings = f.get("strings").as_array("strings");
  CHECK(strings.elem_type == GgufValueType::STRING);
  REQUIRE(strings.items.size() == 3);
  CHECK(strings.items[1].as_string("s").empty());
  CHECK(strings.items[2].as_string("s") == "\xe2\x96\x81hello");
  const GgufArray& floats = f.get("floats").as_array("floats");
  REQUIRE(floats.items.size() == 2);
  CHECK(floats.items[1].as_float("f") == -2.0);
  CHECK(f.get("ints").as_array("ints").elem_type == GgufValueType::INT32);
  CHECK(f.get("ints").as_array("ints").items.empty());

  const GgufArray& nested = f.get("nested").as_array("nested");
  CHECK(nested.elem_type == GgufValueType::ARRAY);
  REQUIRE(nested.items.size() == 2);
  CHECK(nested.items[0].as_array("n0").elem_type == GgufValueType::UINT16);
  CHECK(nested.items[0].as_array("n0").items.at(0).as_uint("n00") == 7);
  CHECK(nested.items[1].as_array("n1").items.at(1).as_string("n11") == "yz");

  SUBCASE("typed accessors refuse the wrong type, naming the file and key") {
    CHECK_THROWS_WITH_AS(f.get_uint("str"), "meta.gguf: metadata 'str' has type STRING, expected an unsigned integer",
                         GgufError);
    CHECK_THROWS_WITH_AS(f.get_uint("i8"), doctest::Contains("is -128"), GgufError);
    CHECK_THROWS_WITH_AS(f.get_string("u8"), doctest::Contains("meta.gguf: metadata 'u8' has type UINT8"), GgufError);
    CHECK_THROWS_WITH_AS(f.get_uint("absent"), "meta.gguf: metadata absent is missing", GgufError);
    CHECK(f.get_uint_or("absent", 9) == 9);
    CHECK(f.get_string_or("absent", "dflt") == "dflt");
    CHECK_THROWS_AS(f.get("u8").as_array("u8"), GgufError);
    CHECK_THROWS_AS(f.get("u8").as_bool("u8"), GgufError);
  }
}

TEST_CASE("gguf: tensors of every supported type round-trip") {
  GgufWriter w;
  const std::vector<std::pair<GgmlType, std::vector<uint64_t>>> cases = {
      {GgmlType::F32, {7, 3}}, {GgmlType::F16, {5}}, {GgmlType::Q8_0, {64, 3}}, {GgmlType::Q4_0, {32, 2, 2}},
      {GgmlType::F32, {1, 1, 1, 2}}};
  std::vector<std::vector<uint8_t>> contents;
  for (size_t i = 0; i < cases.size(); ++i) {
    contents.push_back(synthetic_tensor_bytes(cases[i].first, cases[i].second, static_cast<uint32_t>(i)));
    w.add_tensor("t" + std::to_string(i), cases[i].first, cases[i].second, contents.back());
  }
  const std::vector<uint8_t> bytes = w.to_bytes();
  const GgufFile f = GgufFile::from_memory(bytes, "tensors.gguf");
  REQUIRE(f.tensors().size() == cases.size());
  for (size_t i = 0; i < cases.size(); ++i) {
    const GgufTensorInfo& t = f.tensor("t" + std::to_string(i));
    CHECK(t.type == cases[i].first);
    CHECK(t.shape == cases[i].second);
    CHECK(t.n_bytes == contents[i].size());
    CHECK(t.offset % 32 == 0);
    CHECK(static_cast<uint64_t>(t.data - bytes.data()) % 32 == 0);
    CHECK(std::memcmp(t.data, contents[i].data(), t.n_bytes) == 0);
  }
  CHECK(f.tensor("t3").n_elements == 128);
  CHECK(f.tensor("t3").n_bytes == 4 * 18);
  CHECK(f.find_tensor("nope") == nullptr);
  CHECK_THROWS_WITH_AS(f.tensor("nope"), "tensors.gguf: tensor 'nope' is missing", GgufError);
  CHECK(parameter_count(f) == 21 + 5 + 192 + 128 + 2);
}

TEST_CASE("gguf: unusual alignments (1, 64) are honoured both ways") {
  for (uint64_t alignment : {uint64_t{1}, uint64_t{8}, uint64_t{64}}) {
    CAPTURE(alignment);
    GgufWriter w(alignment);
    w.set_string("general.name", "aligned");
    const auto a = synthetic_tensor_bytes(GgmlType::F16, {3}, 1);  // 6 bytes: forces padding
    const auto b = synthetic_tensor_bytes(GgmlType::Q8_0, {32}, 2);
    w.add_tensor("a", GgmlType::F16, {3}, a);
    w.add_tensor("b", GgmlType::Q8_0, {32}, b);
    const std::vector<uint8_t> bytes = w.to_bytes();
    const GgufFile f = GgufFile::from_memory(bytes, "aligned.gguf");
    CHECK(f.alignment() == alignment);
    CHECK(f.has("general.alignment") == (alignment != 32));
    if (alignment != 32) CHECK(f.get_uint("general.alignment") == alignment);
    CHECK(f.tensor("b").offset % alignment == 0);
    CHECK(static_cast<uint64_t>(f.tensor("b").data - bytes.data()) % alignment == 0);
    CHECK(std::memcmp(f.tensor("a").data, a.data(), a.size()) == 0);
    CHECK(std::memcmp(f.tensor("b").data, b.data(), b.size()) == 0);
  }
  CHECK_THROWS_AS(GgufWriter(48), GgufError);
  CHECK_THROWS_AS(GgufWriter(0), GgufError);
}

TEST_CASE("gguf: version 2 files are read; version 1 is refused") {
  GgufWriter w;
  w.set_uint32("k", 5);
  w.add_tensor("t", GgmlType::F32, {2}, synthetic_tensor_bytes(GgmlType::F32, {2}, 3));
  std::vector<uint8_t> bytes = w.to_bytes();
  bytes[4] = 2;  // v2 has the same layout as v3 (64-bit counts); only the number differs
  const GgufFile f = GgufFile::from_memory(bytes, "v2.gguf");
  CHECK(f.version() == 2);
  CHECK(f.get_uint("k") == 5);
  CHECK(f.tensor("t").n_bytes == 8);

  bytes[4] = 1;
  expect_rejected(bytes, "header: GGUF version 1 is not supported");
}

TEST_CASE("gguf: write() replaces the file atomically and open() maps it") {
  const auto dir = temp_dir();
  const std::string path = (dir / "model.gguf").string();
  {
    GgufWriter first;
    first.set_string("general.name", "first");
    first.write(path);
  }
  GgufWriter w;
  w.set_string("general.name", "second");
  const auto t = synthetic_tensor_bytes(GgmlType::Q4_0, {64, 2}, 4);
  w.add_tensor("q", GgmlType::Q4_0, {64, 2}, t);
  w.write(path);
  {
    GgufFile f = GgufFile::open(path);
    CHECK(f.path() == path);
    CHECK(f.get_string("general.name") == "second");
    CHECK(f.file_size() == std::filesystem::file_size(path));
    CHECK(std::memcmp(f.tensor("q").data, t.data(), t.size()) == 0);
    CHECK(w.to_bytes().size() == f.file_size());
    GgufFile moved = std::move(f);  // the mapping moves with it; data pointers stay valid
    CHECK(std::memcmp(moved.tensor("q").data, t.data(), t.size()) == 0);
    GgufFile assigned = GgufFile::open(path);
    assigned = std::move(moved);
    CHECK(assigned.get_string("general.name") == "second");
  }
  size_t entries = 0;
  for ([[maybe_unused]] const auto& e : std::filesystem::directory_iterator(dir)) ++entries;
  CHECK(entries == 1);  // no temporary left beside it

  CHECK_THROWS_WITH_AS(GgufFile::open((dir / "absent.gguf").string()), doctest::Contains("absent.gguf: cannot open"),
                       GgufError);
  CHECK_THROWS_WITH_AS(GgufFile::open(dir.string()), doctest::Contains("not a regular file"), GgufError);
  {
    std::FILE* empty = std::fopen((dir / "empty.gguf").c_str(), "wb");
    std::fclose(empty);
  }
  CHECK_THROWS_WITH_AS(GgufFile::open((dir / "empty.gguf").string()),
                       doctest::Contains("empty.gguf: header: file is 0 bytes, too short for a GGUF header"), GgufError);
  CHECK_THROWS_AS(w.write((dir / "no-such-dir" / "x.gguf").string()), GgufError);
  std::filesystem::remove_all(dir);
}

// ============================================================ [SECTION] hostile input

TEST_CASE("gguf: malformed headers") {
  expect_rejected({}, "header: file is 0 bytes, too short for a GGUF header");
  expect_rejected(RawGguf().put<uint32_t>(0x46554747).put<uint32_t>(3).put<uint32_t>(0).bytes,
                  "header: file is 12 bytes, too short for a GGUF header");
  expect_rejected({'G', 'G', 'M', 'L', 3, 0, 0, 0}, "header: bad magic 'GGML'");
  expect_rejected(RawGguf().header(0, 0, 4).bytes, "header: unsupported GGUF version 4");
  expect_rejected(RawGguf().header(0, 0, 0x03000000).bytes, "big-endian");
  expect_rejected(RawGguf().header(1000, 0).bytes, "header: tensor count 1000 is more than the remaining 0 bytes");
  expect_rejected(RawGguf().header(std::numeric_limits<uint64_t>::max(), 0).zeros(64).bytes, "tensor count");
  expect_rejected(RawGguf().header(0, std::numeric_limits<uint64_t>::max()).zeros(64).bytes,
                  "header: metadata count 18446744073709551615 is more than");
  expect_rejected(RawGguf().header(2, 4).zeros(100).bytes, "more than the remaining 100 bytes could hold");
}

TEST_CASE("gguf: malformed metadata") {
  constexpr uint64_t kHuge = std::numeric_limits<uint64_t>::max();
  const auto u32 = [](GgufValueType t) { return static_cast<uint32_t>(t); };

  SUBCASE("key string length") {
    RawGguf r;
    r.header(0, 4).kv_u32("a", 1).kv_u32("b", 2).kv_u32("c", 3).put<uint64_t>(kHuge).zeros(16);
    expect_rejected(r.bytes, "bad.gguf: metadata key #3: string length 18446744073709551615 runs past the end of the file");
  }
  SUBCASE("value string length") {
    RawGguf r;
    r.header(0, 1).str("name").put<uint32_t>(u32(GgufValueType::STRING)).put<uint64_t>(40).zeros(8);
    expect_rejected(r.bytes, "metadata 'name': string length 40 runs past the end of the file");
  }
  SUBCASE("empty key") {
    RawGguf r;
    r.header(0, 1).kv_u32("", 1);
    expect_rejected(r.bytes, "metadata key #0: empty key");
  }
  SUBCASE("unknown value type") {
    RawGguf r;
    r.header(0, 1).str("k").put<uint32_t>(13).put<uint32_t>(0);
    expect_rejected(r.bytes, "metadata 'k': unknown value type 13");
  }
  SUBCASE("bool that is neither 0 nor 1") {
    RawGguf r;
    r.header(0, 1).str("flag").put<uint32_t>(u32(GgufValueType::BOOL)).put<uint8_t>(2).zeros(4);
    expect_rejected(r.bytes, "metadata 'flag': bool value 2 is neither 0 nor 1");
  }
  SUBCASE("array length past the end") {
    RawGguf r;
    r.header(0, 1).str("arr").put<uint32_t>(u32(GgufValueType::ARRAY)).put<uint32_t>(u32(GgufValueType::UINT32));
    r.put<uint64_t>(1000).zeros(40);
    expect_rejected(r.bytes, "metadata 'arr': array length 1000 runs past the end of the file");
  }
  SUBCASE("array length of absurd size") {
    RawGguf r;
    r.header(0, 1).str("arr").put<uint32_t>(u32(GgufValueType::ARRAY)).put<uint32_t>(u32(GgufValueType::STRING));
    r.put<uint64_t>(kHuge).zeros(40);
    expect_rejected(r.bytes, "array length 18446744073709551615 runs past the end of the file");
  }
  SUBCASE("string inside an array past the end") {
    RawGguf r;
    r.header(0, 1).str("toks").put<uint32_t>(u32(GgufValueType::ARRAY)).put<uint32_t>(u32(GgufValueType::STRING));
    r.put<uint64_t>(2).str("ok").put<uint64_t>(kHuge - 3).zeros(20);
    expect_rejected(r.bytes, "metadata 'toks'[1]: string length 18446744073709551612 runs past the end of the file");
  }
  SUBCASE("unknown array element type") {
    RawGguf r;
    r.header(0, 1).str("arr").put<uint32_t>(u32(GgufValueType::ARRAY)).put<uint32_t>(99).put<uint64_t>(0);
    expect_rejected(r.bytes, "metadata 'arr': unknown array element type 99");
  }
  SUBCASE("arrays nested too deep") {
    RawGguf r;
    r.header(0, 1).str("deep").put<uint32_t>(u32(GgufValueType::ARRAY));
    for (int level = 0; level < 6; ++level) r.put<uint32_t>(u32(GgufValueType::ARRAY)).put<uint64_t>(1);
    r.zeros(64);
    expect_rejected(r.bytes, "arrays nested deeper than 4 levels");
  }
  SUBCASE("duplicate key") {
    RawGguf r;
    r.header(0, 3).kv_u32("a", 1).kv_u32("b", 2).kv_u32("a", 3);
    expect_rejected(r.bytes, "metadata key #2 'a': duplicate key (also key #0)");
  }
  SUBCASE("general.alignment not a power of two") {
    RawGguf r;
    r.header(0, 1).kv_u32("general.alignment", 48);
    expect_rejected(r.bytes, "metadata 'general.alignment': 48 is not a power of two");
  }
  SUBCASE("general.alignment zero") {
    RawGguf r;
    r.header(0, 1).kv_u32("general.alignment", 0);
    expect_rejected(r.bytes, "metadata 'general.alignment': 0 is not a power of two");
  }
  SUBCASE("general.alignment of the wrong type") {
    RawGguf r;
    r.header(0, 1).str("general.alignment").put<uint32_t>(u32(GgufValueType::STRING)).str("32");
    expect_rejected(r.bytes, "metadata 'general.alignment': has type STRING, expected UINT32");
    RawGguf r64;
    r64.header(0, 1).str("general.alignment").put<uint32_t>(u32(GgufValueType::UINT64)).put<uint64_t>(32);
    expect_rejected(r64.bytes, "has type UINT64, expected UINT32");
  }
}

TEST_CASE("gguf: malformed tensor infos and data placement") {
  constexpr uint64_t kHuge = std::numeric_limits<uint64_t>::max();
  // One tensor info, then the aligned data section holding `data_bytes` zeros.
  const auto one_tensor = [](const std::string& name, std::vector<uint64_t> shape, GgmlType type, uint64_t offset,
                             size_t data_bytes) {
    RawGguf r;
    r.header(1, 0).tensor_info(name, std::move(shape), type, offset).pad().zeros(data_bytes);
    return r.bytes;
  };

  SUBCASE("name length") {
    RawGguf r;
    r.header(1, 0).put<uint64_t>(kHuge).zeros(40);
    expect_rejected(r.bytes, "tensor #0 name: string length 18446744073709551615 runs past the end of the file");
  }
  SUBCASE("empty name") { expect_rejected(one_tensor("", {4}, GgmlType::F32, 0, 16), "tensor #0: empty name"); }
  SUBCASE("n_dims") {
    expect_rejected(one_tensor("t", {}, GgmlType::F32, 0, 64), "tensor 't': n_dims 0 is not between 1 and 4");
    expect_rejected(one_tensor("t", {1, 1, 1, 1, 1}, GgmlType::F32, 0, 64), "tensor 't': n_dims 5 is not between 1 and 4");
    RawGguf r;
    r.header(1, 0).str("t").put<uint32_t>(0xFFFFFFFF).zeros(64);
    expect_rejected(r.bytes, "n_dims 4294967295 is not between 1 and 4");
  }
  SUBCASE("zero and absurd dimensions") {
    expect_rejected(one_tensor("t", {4, 0}, GgmlType::F32, 0, 64), "tensor 't': dimension 1 of shape [4, 0] is zero");
    expect_rejected(one_tensor("t", {kHuge}, GgmlType::F32, 0, 64), "dimension 0 of shape [18446744073709551615] is absurdly large");
  }
  SUBCASE("element count overflow") {
    expect_rejected(one_tensor("t", {1ull << 40, 1ull << 40}, GgmlType::F32, 0, 64),
                    "tensor 't': shape [1099511627776, 1099511627776] has more elements than fit in 64 bits");
    expect_rejected(one_tensor("t", {1ull << 62, 2}, GgmlType::F32, 0, 64), "more bytes than fit in 64 bits");
  }
  SUBCASE("unknown tensor type id") {
    expect_rejected(one_tensor("t", {4}, static_cast<GgmlType>(99), 0, 64), "tensor 't': unknown tensor type id 99");
    expect_rejected(one_tensor("t", {4}, static_cast<GgmlType>(4), 0, 64), "unknown tensor type id 4");
  }
  SUBCASE("row length not a multiple of the block size") {
    expect_rejected(one_tensor("t", {33, 2}, GgmlType::Q8_0, 0, 128),
                    "tensor 't': row length 33 is not a multiple of the Q8_0 block size 32");
    expect_rejected(one_tensor("t", {128}, GgmlType::Q4_K, 0, 256), "row length 128 is not a multiple of the Q4_K block size 256");
  }
  SUBCASE("data past the end of the file") {
    const auto bytes = one_tensor("blk.0.attn_q.weight", {256}, GgmlType::F32, 0, 1000);
    const size_t data_start = bytes.size() - 1000;
    expect_rejected(bytes, "tensor 'blk.0.attn_q.weight': data [" + std::to_string(data_start) + ", " +
                               std::to_string(data_start + 1024) + ") runs past the end of the file (" +
                               std::to_string(bytes.size()) + " bytes)");
    expect_rejected(one_tensor("t", {4}, GgmlType::F32, 1ull << 40, 64), "runs past the end of the file");
    expect_rejected(one_tensor("t", {4}, GgmlType::F32, kHuge - 31, 64), "overflows a 64-bit file position");
  }
  SUBCASE("data section past the end of the file") {
    RawGguf r;
    r.header(1, 0).tensor_info("t", {1}, GgmlType::I8, 0);  // infos end unaligned, nothing after
    expect_rejected(r.bytes, "data section: starts at byte");
  }
  SUBCASE("offset not aligned") {
    expect_rejected(one_tensor("t", {4}, GgmlType::F32, 4, 64), "tensor 't': data offset 4 is not a multiple of the alignment 32");
    RawGguf r;
    r.header(1, 1).kv_u32("general.alignment", 64).tensor_info("t", {4}, GgmlType::F32, 32).pad(64).zeros(128);
    expect_rejected(r.bytes, "data offset 32 is not a multiple of the alignment 64");
  }
  SUBCASE("overlapping tensors") {
    RawGguf r;
    r.header(2, 0).tensor_info("a", {16}, GgmlType::F32, 0).tensor_info("b", {8}, GgmlType::F32, 32).pad().zeros(128);
    expect_rejected(r.bytes, "tensor 'b': data");
    expect_rejected(r.bytes, "overlaps tensor 'a'");
  }
  SUBCASE("duplicate tensor names") {
    RawGguf r;
    r.header(2, 0).tensor_info("w", {8}, GgmlType::F32, 0).tensor_info("w", {8}, GgmlType::F32, 32).pad().zeros(64);
    expect_rejected(r.bytes, "tensor 'w': duplicate tensor name (tensors #0 and #1)");
  }
  SUBCASE("well-formed hand-built file is accepted") {
    RawGguf r;
    r.header(2, 1).kv_u32("general.alignment", 16).tensor_info("a", {4}, GgmlType::F32, 0);
    r.tensor_info("b", {2}, GgmlType::F32, 16).pad(16).zeros(24);
    const GgufFile f = GgufFile::from_memory(r.bytes, "good.gguf");
    CHECK(f.tensors().size() == 2);
    CHECK(f.alignment() == 16);
  }
}

TEST_CASE("gguf: a valid file truncated at every length is rejected, never crashes") {
  GgufWriter w;
  w.set_string("general.name", "truncate me");
  w.set_string_array("tokenizer.ggml.tokens", {"<unk>", "a", "bc"});
  w.set("nested", array_of(GgufValueType::ARRAY, {array_of(GgufValueType::INT8, {scalar(GgufValueType::INT8, int64_t{-1})})}));
  w.set_float32_array("scores", {0.5f, -1.0f});
  w.set_bool("flag", true);
  // Data sizes are multiples of the alignment, so the file ends exactly at the
  // last tensor's last byte: every shorter length cuts something needed.
  w.add_tensor("a", GgmlType::F32, {8}, synthetic_tensor_bytes(GgmlType::F32, {8}, 1));
  w.add_tensor("b", GgmlType::F16, {16, 2}, synthetic_tensor_bytes(GgmlType::F16, {16, 2}, 2));
  w.add_tensor("c", GgmlType::Q4_0, {32, 16}, synthetic_tensor_bytes(GgmlType::Q4_0, {32, 16}, 3));
  const std::vector<uint8_t> bytes = w.to_bytes();
  std::unique_ptr<uint8_t[]> storage;
  REQUIRE_NOTHROW(parse_exact(bytes, bytes.size(), storage));
  size_t rejected = 0;
  for (size_t size = 0; size < bytes.size(); ++size) {
    try {
      parse_exact(bytes, size, storage, "cut.gguf");
      FAIL("a file cut to " << size << " of " << bytes.size() << " bytes was accepted");
    } catch (const GgufError& e) {
      ++rejected;
      if (std::string(e.what()).rfind("cut.gguf: ", 0) != 0) FAIL("message without the path: " << e.what());
    }
  }
  CHECK(rejected == bytes.size());
}

TEST_CASE("gguf: corrupting any single header byte never crashes") {
  GgufWriter w;
  w.set_string("general.name", "flip");
  w.set_string_array("toks", {"x", "y"});
  w.add_tensor("a", GgmlType::Q8_0, {32, 2}, synthetic_tensor_bytes(GgmlType::Q8_0, {32, 2}, 1));
  const std::vector<uint8_t> clean = w.to_bytes();
  std::unique_ptr<uint8_t[]> storage;
  const GgufFile parsed = GgufFile::from_memory(clean, "flip.gguf");
  const auto head = static_cast<size_t>(parsed.tensor("a").data - clean.data());  // everything before the data
  for (size_t i = 0; i < head; ++i) {
    for (uint8_t value : {uint8_t{0x00}, uint8_t{0x7F}, uint8_t{0xFF}}) {
      std::vector<uint8_t> bytes = clean;
      bytes[i] = value;
      try {
        parse_exact(bytes, bytes.size(), storage, "flip.gguf");
      } catch (const GgufError&) {
        // rejecting is fine; crashing or another exception type is not
      }
    }
  }
}

// ======================================================= [SECTION] metadata lies

// A valid synthetic model whose key `key` is replaced by `value`: what a file
// that lies about one key's type looks like.
namespace {
std::vector<uint8_t> with_key(const std::string& key, GgufValue value) {
  const auto good = synthetic_llama_writer().to_bytes();
  const GgufFile f = GgufFile::from_memory(good, "good.gguf");
  GgufWriter w;
  for (const auto& k : f.metadata_order()) w.set(k, k == key ? value : f.get(k));
  if (!f.has(key)) w.set(key, value);
  for (const auto& t : f.tensors()) w.add_tensor(t.name, t.type, t.shape, {t.data, t.n_bytes});
  return w.to_bytes();
}
}  // namespace

TEST_CASE("gguf: every key kvscope reads must have its specified type, or the file is refused naming it") {
  struct Lie {
    std::string key;
    GgufValue value;
    std::string found, expected;
  };
  const std::vector<Lie> lies = {
      {"general.architecture", scalar(GgufValueType::UINT32, uint64_t{7}), "UINT32", "expected STRING"},
      {"llama.block_count", scalar(GgufValueType::STRING, std::string("2")), "STRING", "expected an integer"},
      {"llama.context_length", scalar(GgufValueType::FLOAT32, 128.0), "FLOAT32", "expected an integer"},
      {"llama.rope.freq_base", scalar(GgufValueType::STRING, std::string("1e4")), "STRING", "expected FLOAT32"},
      {"tokenizer.ggml.model", scalar(GgufValueType::UINT8, uint64_t{1}), "UINT8", "expected STRING"},
      {"tokenizer.ggml.bos_token_id", scalar(GgufValueType::STRING, std::string("1")), "STRING",
       "expected an integer"},
      {"tokenizer.ggml.add_bos_token", scalar(GgufValueType::UINT8, uint64_t{1}), "UINT8", "expected BOOL"},
      {"tokenizer.chat_template", scalar(GgufValueType::INT32, int64_t{3}), "INT32", "expected STRING"},
      // Arrays declared with another element type than the format's.
      {"tokenizer.ggml.token_type", array_of(GgufValueType::FLOAT32, {scalar(GgufValueType::FLOAT32, 1.0)}),
       "ARRAY of FLOAT32", "expected ARRAY of INT32"},
      {"tokenizer.ggml.scores", array_of(GgufValueType::INT32, {scalar(GgufValueType::INT32, int64_t{0})}),
       "ARRAY of INT32", "expected ARRAY of FLOAT32"},
      {"tokenizer.ggml.tokens", array_of(GgufValueType::UINT8, {scalar(GgufValueType::UINT8, uint64_t{65})}),
       "ARRAY of UINT8", "expected ARRAY of STRING"},
      {"tokenizer.ggml.merges", scalar(GgufValueType::STRING, std::string("a b")), "STRING",
       "expected ARRAY of STRING"},
  };
  for (const Lie& lie : lies) {
    CAPTURE(lie.key);
    const auto bytes = with_key(lie.key, lie.value);
    try {
      GgufFile::from_memory(bytes, "lie.gguf");
      FAIL("a file with a lying key was opened");
    } catch (const GgufError& e) {
      const std::string message = e.what();
      CHECK_MESSAGE(message.find("metadata '" + lie.key + "'") != std::string::npos, message);
      CHECK_MESSAGE(message.find("has type " + lie.found) != std::string::npos, message);
      CHECK_MESSAGE(message.find(lie.expected) != std::string::npos, message);
    }
  }
  // Counts may be any integer type: writers differ (u32 is usual, u64 is the specification's).
  CHECK_NOTHROW(GgufFile::from_memory(with_key("llama.block_count", scalar(GgufValueType::UINT64, uint64_t{2})),
                                      "u64.gguf"));
  // Keys kvscope does not read are not its business.
  CHECK_NOTHROW(
      GgufFile::from_memory(with_key("general.url", scalar(GgufValueType::UINT32, uint64_t{1})), "other.gguf"));
}

// ============================================================ [SECTION] hparams

TEST_CASE("hparams: the synthetic llama model validates") {
  const std::vector<uint8_t> bytes = synthetic_llama_writer().to_bytes();
  const GgufFile f = GgufFile::from_memory(bytes, "m.gguf");
  const LlamaConfig cfg = read_llama_config(f);
  CHECK(cfg.arch == "llama");
  CHECK(cfg.name == "synthetic");
  CHECK(cfg.dim == 64);
  CHECK(cfg.n_layer == 2);
  CHECK(cfg.n_head == 4);
  CHECK(cfg.n_kv_head == 2);
  CHECK(cfg.head_dim == 16);
  CHECK(cfg.rope_dim == 16);
  CHECK(cfg.ffn_dim == 96);
  CHECK(cfg.n_vocab == 100);
  CHECK(cfg.n_ctx_train == 128);
  CHECK(cfg.norm_eps == doctest::Approx(1e-5));
  CHECK(cfg.rope_theta == 10000.0f);
  CHECK_FALSE(cfg.tied_output);
  CHECK(cfg.kv_dim() == 32);
  CHECK(cfg.q_dim() == 64);
  CHECK(kv_bytes_per_token(cfg, 2.0) == 2.0 * 2 * 32 * 2);
  const uint64_t per_layer = 64 + 64 * 64 + 2 * 64 * 32 + 64 * 64 + 64 + 3 * 64 * 96;
  CHECK(parameter_count(f) == 2 * 64 * 100 + 64 + 2 * per_layer);
  CHECK(layer_tensor(3, "attn_q.weight") == "blk.3.attn_q.weight");
}

TEST_CASE("hparams: variants that are still valid") {
  SUBCASE("tied output, vocabulary from token_embd, quantized matrices") {
    SyntheticLlama s;
    s.tied_output = true;
    s.with_tokens = false;
    s.matrix_type = GgmlType::Q8_0;
    s.type_of["blk.1.ffn_up.weight"] = GgmlType::Q4_0;
    s.type_of["token_embd.weight"] = GgmlType::F16;
    const auto bytes = synthetic_llama_writer(s).to_bytes();
    const LlamaConfig cfg = read_llama_config(GgufFile::from_memory(bytes, "m.gguf"));
    CHECK(cfg.tied_output);
    CHECK(cfg.n_vocab == 100);
  }
  SUBCASE("defaults: head_count_kv, epsilon, rope base") {
    SyntheticLlama mha;
    mha.n_kv_head = 4;  // without head_count_kv the model is multi-head attention
    const auto full_bytes = synthetic_llama_writer(mha).to_bytes();
    const GgufFile full = GgufFile::from_memory(full_bytes, "full.gguf");
    GgufWriter w;
    for (const auto& key : full.metadata_order())
      if (key != "llama.attention.head_count_kv" && key != "llama.attention.layer_norm_rms_epsilon" &&
          key != "llama.rope.freq_base")
        w.set(key, full.get(key));
    for (const auto& t : full.tensors()) w.add_tensor(t.name, t.type, t.shape, {t.data, t.n_bytes});
    const auto bytes = w.to_bytes();
    const LlamaConfig cfg = read_llama_config(GgufFile::from_memory(bytes, "m.gguf"));
    CHECK(cfg.n_kv_head == 4);
    CHECK(cfg.norm_eps == 1e-5f);
    CHECK(cfg.rope_theta == 10000.0f);
  }
}

TEST_CASE("hparams: each way a llama model can be wrong is named") {
  SUBCASE("architecture") {
    SyntheticLlama s;
    s.arch = "gpt2";
    expect_config_error(synthetic_llama_writer(s), "m.gguf: general.architecture is 'gpt2', which kvscope does not run; supported: llama qwen2 qwen3 phi3");
    GgufWriter none;
    expect_config_error(none, "m.gguf: metadata general.architecture is missing");
  }
  SUBCASE("wrong shape") {
    SyntheticLlama s;
    s.shape_of["blk.1.attn_q.weight"] = {64, 100};
    expect_config_error(synthetic_llama_writer(s),
                        "m.gguf: tensor 'blk.1.attn_q.weight' has shape [64, 100], expected [64, 64] for this llama model");
    SyntheticLlama k;
    k.shape_of["blk.0.attn_k.weight"] = {64, 64};
    expect_config_error(synthetic_llama_writer(k), "tensor 'blk.0.attn_k.weight' has shape [64, 64], expected [64, 32]");
    SyntheticLlama down;
    down.shape_of["blk.0.ffn_down.weight"] = {64, 96};
    expect_config_error(synthetic_llama_writer(down), "tensor 'blk.0.ffn_down.weight' has shape [64, 96], expected [96, 64]");
    SyntheticLlama norm;
    norm.shape_of["output_norm.weight"] = {64, 1};
    expect_config_error(synthetic_llama_writer(norm), "tensor 'output_norm.weight' has shape [64, 1], expected [64]");
    SyntheticLlama out;
    out.shape_of["output.weight"] = {64, 99};
    expect_config_error(synthetic_llama_writer(out), "tensor 'output.weight' has shape [64, 99], expected [64, 100]");
    SyntheticLlama embd;
    embd.shape_of["token_embd.weight"] = {64, 101};
    expect_config_error(synthetic_llama_writer(embd), "tensor 'token_embd.weight' has shape [64, 101], expected [64, 100]");
  }
  SUBCASE("missing tensor") {
    for (const char* name : {"token_embd.weight", "output_norm.weight", "blk.1.ffn_gate.weight", "blk.0.attn_norm.weight"}) {
      SyntheticLlama s;
      s.omit.insert(name);
      expect_config_error(synthetic_llama_writer(s), std::string("m.gguf: tensor '") + name + "' is missing");
    }
  }
  SUBCASE("unsupported type") {
    SyntheticLlama s;
    s.dim = 256;  // Q8_K needs rows of 256
    s.n_head = 16;
    s.n_kv_head = 8;
    s.ffn = 256;
    s.type_of["blk.1.attn_q.weight"] = GgmlType::Q8_K;
    expect_config_error(synthetic_llama_writer(s),
                        "m.gguf: tensor blk.1.attn_q.weight has type Q8_K, which kvscope does not support yet; "
                        "supported: F32 F16 BF16 Q8_0 Q4_0 Q4_1 Q5_0 Q5_1 IQ4_NL Q2_K Q3_K Q4_K Q5_K Q6_K IQ4_XS");
    SyntheticLlama norm;
    norm.type_of["blk.0.ffn_norm.weight"] = GgmlType::F16;
    expect_config_error(synthetic_llama_writer(norm), "tensor 'blk.0.ffn_norm.weight' has type F16; norm weights must be F32");
  }
  SUBCASE("hyperparameters") {
    SyntheticLlama heads;
    heads.n_head = 4;
    heads.n_kv_head = 3;
    expect_config_error(synthetic_llama_writer(heads), "llama.attention.head_count 4 is not a multiple of llama.attention.head_count_kv 3");
    GgufWriter zero = synthetic_llama_writer();
    zero.set_uint32("llama.block_count", 0);
    expect_config_error(zero, "m.gguf: llama.block_count is 0");
    GgufWriter huge = synthetic_llama_writer();
    huge.set_uint32("llama.embedding_length", 1u << 20);
    expect_config_error(huge, "llama.embedding_length is 1048576, more than kvscope accepts (65536)");
    GgufWriter text = synthetic_llama_writer();
    text.set_string("llama.feed_forward_length", "96");
    // Refused when the file is opened, before any reader sees it.
    const std::vector<uint8_t> text_bytes = text.to_bytes();
    CHECK_THROWS_WITH_AS(GgufFile::from_memory(text_bytes, "m.gguf"),
                         doctest::Contains("m.gguf: metadata 'llama.feed_forward_length': has type STRING, expected an "
                                           "integer"),
                         GgufError);
    GgufWriter odd = synthetic_llama_writer();
    odd.set_uint32("llama.attention.key_length", 15);
    expect_config_error(odd, "head dimension 15 is odd");
    GgufWriter eps = synthetic_llama_writer();
    eps.set_float32("llama.attention.layer_norm_rms_epsilon", -1.0f);
    expect_config_error(eps, "llama.attention.layer_norm_rms_epsilon is -1, expected a positive number");
    SyntheticLlama vocab;
    vocab.n_vocab = 100;
    GgufWriter tokens = synthetic_llama_writer(vocab);
    tokens.set_string_array("tokenizer.ggml.tokens", {"a", "b"});
    expect_config_error(tokens, "tensor 'token_embd.weight' has shape [64, 100], expected [64, 2]");
  }
  SUBCASE("missing key") {
    const GgufWriter full = synthetic_llama_writer();
    const auto full_bytes = full.to_bytes();
    const GgufFile f = GgufFile::from_memory(full_bytes, "m.gguf");
    GgufWriter w;
    for (const auto& key : f.metadata_order())
      if (key != "llama.context_length") w.set(key, f.get(key));
    expect_config_error(w, "m.gguf: metadata llama.context_length is missing");
  }
}
