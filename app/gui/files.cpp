// What the window reads and writes: dropped files, conversations as JSON,
// and the exports (heatmap PNG, eviction traces JSONL, comparison CSV).
#include <fmt/format.h>
#include <stb_image_write.h>

#include <filesystem>
#include <fstream>
#include <sstream>

#include "app/gui/app.h"

#include "app/core/atomic_file.h"

namespace kvscope::gui {

std::string png_bytes(const uint8_t* rgba, int width, int height) {
  std::string out;
  auto append = [](void* context, void* data, int size) {
    static_cast<std::string*>(context)->append(static_cast<const char*>(data), static_cast<size_t>(size));
  };
  if (!stbi_write_png_to_func(append, &out, width, height, 4, rgba, width * 4))
    throw std::runtime_error(fmt::format("cannot encode a {} x {} PNG", width, height));
  return out;
}

namespace {

std::string lower_extension(const std::string& path) {
  std::string ext = std::filesystem::path(path).extension().string();
  for (char& c : ext) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return ext;
}

}  // namespace

void App::on_drop(const std::vector<std::string>& paths) {
  for (const std::string& path : paths) {
    const std::string ext = lower_extension(path);
    if (ext == ".gguf")
      start_loading(path);
    else if (ext == ".json")
      load_conversation(path);
    else
      banner_ = fmt::format("{}: not a GGUF model (.gguf) or a saved conversation (.json); drop one of those", path);
  }
}

void App::load_conversation(const std::string& path) {
  if (selected_ >= sessions_.size()) {
    banner_ = fmt::format("{}: no session to load it into; open a model first", path);
    return;
  }
  try {
    std::ifstream in(path);
    if (!in) throw std::runtime_error(fmt::format("{}: cannot open the file", path));
    std::stringstream text;
    text << in.rdbuf();
    Conversation c = read_conversation_json(text.str(), path);
    if (engine_)
      for (int32_t id : c.tokens)
        if (id < 0 || id >= engine_->tokenizer().n_vocab())
          throw std::runtime_error(fmt::format("{}: token id {} is outside this model's vocabulary of {}; it was "
                                               "saved with another model ({})",
                                               path, id, engine_->tokenizer().n_vocab(), c.model));
    std::optional<ChatTemplate> tmpl;
    try {
      tmpl = chat_template();
    } catch (const std::exception&) {
      // an unknown name was reported when it was chosen: plain text
    }
    sessions_[selected_]->load(c, tmpl);
    for (const Turn& t : c.turns)
      if (t.role == Turn::Role::System) std::snprintf(system_buffer_, sizeof system_buffer_, "%s", t.text.c_str());
    status_ = fmt::format("loaded {} ({} turns, {} tokens) into session {}", path, c.turns.size(), c.tokens.size(),
                          frame_snapshots_.size() > selected_ ? frame_snapshots_[selected_]->name : "");
  } catch (const std::exception& e) {
    banner_ = e.what();
  }
}

Conversation App::conversation_of(const SessionSnapshot& s) const {
  Conversation c;
  c.model = model_path_;
  c.cache = s.spec.label();
  try {
    const std::optional<ChatTemplate> tmpl = chat_template();
    c.chat_template = tmpl ? std::string(chat_family_name(tmpl->family)) : "none";
  } catch (const std::exception&) {
    c.chat_template.clear();  // an unknown name: reported when it was chosen
  }
  c.turns = s.turns;
  c.tokens = s.tokens;
  c.pins = s.pins;
  return c;
}

void App::save_conversation(const std::string& path) {
  if (selected_ >= sessions_.size()) return;
  const auto s = sessions_[selected_]->snapshot();
  const Conversation c = conversation_of(*s);
  try {
    write_file_atomically(path, write_conversation_json(c));
    status_ = fmt::format("saved session {}'s conversation to {}", s->name, path);
  } catch (const std::exception& e) {
    banner_ = e.what();
  }
}

std::string App::export_heatmap_png(const std::string& path) {
  if (selected_ >= sessions_.size()) return "no session to export";
  const auto s = sessions_[selected_]->snapshot();
  const int w = static_cast<int>(heatmap_.last_rect.z), h = static_cast<int>(heatmap_.last_rect.w);
  const std::vector<uint8_t> rgba = heatmap_pixels(*s, heatmap_, w, h);
  if (rgba.empty()) return "the heatmap has no rows yet: generate first";
  try {
    write_file_atomically(path, png_bytes(rgba.data(), w, h));
  } catch (const std::exception& e) {
    banner_ = e.what();
    return {};
  }
  return fmt::format("heatmap written to {} ({} x {})", path, w, h);
}

std::vector<std::string> App::export_files(const std::string& dir) {
  std::vector<std::string> written;
  std::error_code ec;
  std::filesystem::create_directories(dir, ec);
  if (ec) {
    banner_ = fmt::format("cannot create {}: {}", dir, ec.message());
    return written;
  }
  const std::filesystem::path folder(dir);
  const std::string png = (folder / "heatmap.png").string();
  if (export_heatmap_png(png).rfind("heatmap written", 0) == 0) written.push_back(png);
  for (const auto& worker : sessions_) {
    const auto s = worker->snapshot();
    if (!s->log) continue;
    const std::string path = (folder / fmt::format("trace-{}.jsonl", s->name)).string();
    std::ostringstream text;
    kv::write_jsonl(*s->log, text);
    try {
      write_file_atomically(path, text.str());
      written.push_back(path);
    } catch (const std::exception& e) {
      banner_ = e.what();
    }
  }
  if (comparisons_.size() > 1) {
    std::vector<SessionComparison> results;
    for (size_t i = 1; i < comparisons_.size(); ++i) results.push_back(comparisons_[i].result());
    const std::string path = (folder / "comparison.csv").string();
    try {
      write_file_atomically(path, comparison_csv(results));
      written.push_back(path);
    } catch (const std::exception& e) {
      banner_ = e.what();
    }
  }
  return written;
}

void App::finish_script() {
  if (script_finished_) return;
  script_finished_ = true;
  if (!options_.export_dir.empty()) exported_ = export_files(options_.export_dir);
  if (!options_.save_conversation.empty()) save_conversation(options_.save_conversation);
}

}  // namespace kvscope::gui
