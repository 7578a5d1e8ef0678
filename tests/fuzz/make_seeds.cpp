// Writes the seed corpora of the fuzz targets (tests/fuzz/corpus/TARGET/):
// small valid inputs that reach deep into each reader, so the fuzzer starts
// from files that parse rather than from nothing. Run by scripts/fuzz.sh
// --seeds; the output is committed.
//   fuzz_seeds OUT_DIR
#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "app/core/conversation.h"
#include "app/gui/settings.h"
#include "kv/event_log.h"
#include "models/gguf.h"
#include "tests/models/synthetic_llama.h"

namespace fs = std::filesystem;
using namespace kvscope;

namespace {

void write(const fs::path& path, const std::string& bytes) {
  fs::create_directories(path.parent_path());
  std::ofstream(path, std::ios::binary) << bytes;
}

std::string as_string(const std::vector<uint8_t>& v) { return std::string(v.begin(), v.end()); }

std::string read(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream s;
  s << in.rdbuf();
  return s.str();
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 2) {
    std::fprintf(stderr, "usage: fuzz_seeds OUT_DIR\n");
    return 2;
  }
  const fs::path out = argv[1];
  const fs::path data = KVSCOPE_TEST_DATA;

  // gguf: tiny llama models (F32 and quantized), with a vocabulary.
  testing::SyntheticLlama tiny;
  tiny.dim = 32, tiny.n_layer = 1, tiny.n_head = 2, tiny.n_kv_head = 1, tiny.ffn = 32, tiny.n_vocab = 12, tiny.n_ctx = 16;
  GgufWriter f32 = testing::synthetic_llama_writer(tiny);
  f32.set_string("tokenizer.ggml.model", "llama");
  f32.set_float32_array("tokenizer.ggml.scores", std::vector<float>(12, 0.0f));
  f32.set_int32_array("tokenizer.ggml.token_type", {3, 3, 3, 6, 6, 1, 1, 1, 1, 1, 1, 1});
  f32.set_string("tokenizer.chat_template", "{% for m in messages %}<|im_start|>{{ m['role'] }}{% endfor %}");
  write(out / "gguf" / "tiny-llama-f32.gguf", as_string(f32.to_bytes()));
  tiny.matrix_type = GgmlType::Q8_0;
  tiny.tied_output = true;
  write(out / "gguf" / "tiny-llama-q8_0.gguf", as_string(testing::synthetic_llama_writer(tiny).to_bytes()));
  GgufWriter bpe;
  bpe.set_string("general.architecture", "llama");
  bpe.set_string("tokenizer.ggml.model", "gpt2");
  bpe.set_string("tokenizer.ggml.pre", "gpt2");
  bpe.set_string_array("tokenizer.ggml.tokens", {"a", "b", "ab", "\xC4\xA0", "\xC4\xA0" "a", "<|endoftext|>"});
  bpe.set_int32_array("tokenizer.ggml.token_type", {1, 1, 1, 1, 1, 3});
  bpe.set_string_array("tokenizer.ggml.merges", {"a b", "\xC4\xA0 a"});
  bpe.set_uint32("tokenizer.ggml.eos_token_id", 5);
  bpe.set_bool("tokenizer.ggml.add_bos_token", false);
  write(out / "gguf" / "vocab-gpt2.gguf", as_string(bpe.to_bytes()));

  // Tokenizers: the strings llama.cpp's tokenizer tests use.
  std::ifstream strings(data / "tokenize-strings.txt");
  std::string line;
  for (int i = 0; std::getline(strings, line); ++i)
    for (const char* target : {"tokenizer_spm", "tokenizer_bpe"})
      write(out / target / ("string-" + std::to_string(i)), line);

  // Chat templates: the shipped reference templates up to 6 KB.
  for (const auto& entry : fs::directory_iterator(data / "chat-templates"))
    if (entry.file_size() <= 6144) write(out / "chat_template" / entry.path().filename(), read(entry.path()));

  // Conversations: one as the window and chat save it.
  Conversation c;
  c.model = "stories15M.gguf";
  c.cache = "f16 + h2o:budget=64,recent=32 + pin=0:4";
  c.chat_template = "none";
  c.pins.add({0, 4});
  c.turns = {{Turn::Role::System, "A story.", 0, 4}, {Turn::Role::User, "Once upon a time", 4, 5},
             {Turn::Role::Model, " there was a cat.", 9, 6}};
  c.tokens = {1, 319, 5828, 29889, 9038, 2501, 263, 931, 727, 471, 263, 6635, 29889, 13, 2};
  write(out / "conversation" / "story.json", write_conversation_json(c));

  // Settings: the defaults, and one with every field set.
  gui::Settings settings;
  write(out / "settings" / "defaults.json", gui::settings_json(settings));
  settings.add_recent_model("/models/a.gguf");
  settings.add_recent_model("/models/b.gguf");
  settings.device_index = 1;
  settings.sampling = {0.7f, 20, 0.9f, 42};
  settings.system_prompt = "A story.";
  settings.cache_specs = {"f16", "q8 + h2o:budget=64,recent=32"};
  write(out / "settings" / "full.json", gui::settings_json(settings));

  // Traces: writes, evictions, a recall, a truncation and occupancies on 1
  // layer x 2 kv heads; then a rolling window long enough to fold (base line).
  kv::EventLog log(kv::TraceHeader{"h2o:budget=4,recent=1", 1, 2, 6, 1, {{0, 1}}});
  const std::vector<int32_t> p{0, 1, 2, 3, 4}, t{1, 10, 20, 30, 40}, p5{5}, t5{50};
  log.written(0, p, t);
  log.evicted({1, 0, 1, 2, 2, 20, 0.25f});
  log.evicted({1, 0, 0, 1, 1, 10, 0.5f});
  log.written(1, p5, t5);
  kv::RecallEvent recall;
  recall.step = 2, recall.kv_head = 1, recall.slot = 5, recall.position = 2, recall.token = 20;
  log.recalled(recall);
  log.occupancy(2, std::vector<kv::SlotTable>(2, kv::SlotTable(6)));
  log.truncated(3, 5);
  std::stringstream trace;
  kv::write_jsonl(log, trace);
  write(out / "trace" / "events.jsonl", trace.str());
  kv::EventLog rolling(kv::TraceHeader{"window:budget=4", 1, 1, 4, 1, {}}, 4096);
  kv::SlotTable table(4);
  for (uint32_t step = 0; step < 3000; ++step) {
    if (table.live() == 4) {
      const auto positions = table.positions();
      const auto oldest = static_cast<uint32_t>(std::min_element(positions.begin(), positions.end()) - positions.begin());
      rolling.evicted({step, 0, 0, oldest, positions[oldest], 7, 0.5f});
      table.release(oldest);
    }
    const std::vector<int32_t> pos{static_cast<int32_t>(step)}, tok{7};
    table.assign(pos[0]);
    rolling.written(step, pos, tok);
  }
  // Only what follows the base: the seed stays small.
  rolling.set_max_events(4096);
  std::stringstream folded;
  kv::TraceWriter writer(folded, rolling);
  writer.append(rolling);
  std::string folded_text = folded.str();
  size_t lines = 0, cut = 0;
  while (cut < folded_text.size() && lines < 40) cut = folded_text.find('\n', cut) + 1, ++lines;
  write(out / "trace" / "folded.jsonl", folded_text.substr(0, cut));

  // Scenarios: the ones shipped.
  for (const auto& entry : fs::directory_iterator(fs::path(KVSCOPE_TEST_DATA) / ".." / ".." / "assets" / "scenarios"))
    if (entry.path().extension() == ".json") write(out / "scenario" / entry.path().filename(), read(entry.path()));
  return 0;
}
