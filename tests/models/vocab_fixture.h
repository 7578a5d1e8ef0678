// Vocabulary fixtures shared by the tokenizer and synthetic-model tests:
// gzip-compressed files from tests/data and a GGUF vocabulary built from a
// Hugging Face tokenizer.json (Llama 3's and Qwen 2's GGUF vocabularies are
// not public; their tokenizer.json files are in tests/data/vocab).
#pragma once
#include <doctest/doctest.h>
#include <zlib.h>

#include <cstdint>
#include <map>
#include <string>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include "models/gguf.h"

namespace kvscope::test {

// The whole decompressed content of a .gz file.
inline std::vector<uint8_t> read_gzip(const std::string& path) {
  gzFile file = gzopen(path.c_str(), "rb");
  REQUIRE_MESSAGE(file != nullptr, "cannot open " << path);
  std::vector<uint8_t> out;
  std::vector<uint8_t> chunk(1 << 20);
  for (;;) {
    const int n = gzread(file, chunk.data(), static_cast<unsigned>(chunk.size()));
    if (n < 0) {
      int errnum = 0;
      const std::string message = gzerror(file, &errnum);
      gzclose(file);
      FAIL("cannot decompress " << path << ": " << message);
    }
    if (n == 0) break;
    out.insert(out.end(), chunk.begin(), chunk.begin() + n);
  }
  gzclose(file);
  return out;
}

// A GGUF vocabulary (no tensors) from a Hugging Face tokenizer.json of a
// byte-level BPE model, written as llama.cpp's converter writes one: tokens
// by id; added tokens marked "special" are control tokens (3), other added
// tokens user-defined (4), the rest normal (1); merges as "left right".
inline std::vector<uint8_t> gguf_from_tokenizer_json(const nlohmann::json& tj, const std::string& pre,
                                              const std::string& bos, const std::string& eos) {
  const nlohmann::json& model = tj.at("model");
  REQUIRE(model.at("type") == "BPE");
  std::map<int64_t, std::pair<std::string, int32_t>> by_id;  // id -> (text, type)
  for (const auto& [text, id] : model.at("vocab").items()) by_id[id.get<int64_t>()] = {text, 1};
  for (const auto& added : tj.at("added_tokens")) {
    by_id[added.at("id").get<int64_t>()] = {added.at("content").get<std::string>(),
                                            added.at("special").get<bool>() ? 3 : 4};
  }
  std::vector<std::string> tokens;
  std::vector<int32_t> types;
  std::map<std::string, uint32_t> id_of;
  for (const auto& [id, entry] : by_id) {
    REQUIRE_MESSAGE(id == static_cast<int64_t>(tokens.size()), "tokenizer.json ids are not contiguous at " << id);
    id_of[entry.first] = static_cast<uint32_t>(tokens.size());
    tokens.push_back(entry.first);
    types.push_back(entry.second);
  }
  std::vector<std::string> merges;
  for (const auto& merge : model.at("merges")) {
    // Older files write "a b", newer ones ["a", "b"].
    merges.push_back(merge.is_string() ? merge.get<std::string>()
                                       : merge.at(0).get<std::string>() + " " + merge.at(1).get<std::string>());
  }
  REQUIRE(id_of.count(bos) == 1);
  REQUIRE(id_of.count(eos) == 1);
  GgufWriter writer;
  writer.set_string("general.architecture", "llama");
  writer.set_string("tokenizer.ggml.model", "gpt2");
  writer.set_string("tokenizer.ggml.pre", pre);
  writer.set_string_array("tokenizer.ggml.tokens", tokens);
  writer.set_int32_array("tokenizer.ggml.token_type", types);
  writer.set_string_array("tokenizer.ggml.merges", merges);
  writer.set_uint32("tokenizer.ggml.bos_token_id", id_of.at(bos));
  writer.set_uint32("tokenizer.ggml.eos_token_id", id_of.at(eos));
  return writer.to_bytes();
}

}  // namespace kvscope::test
