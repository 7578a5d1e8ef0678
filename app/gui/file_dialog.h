// A file chooser drawn with ImGui (no platform dialog to depend on): a
// folder's entries, folders first, filtered by extension, with a name field
// for saving.
#pragma once
#include <filesystem>
#include <optional>
#include <string>

namespace kvscope::gui {

class FileDialog {
 public:
  // Opens the dialog at the next draw(). `extension` like ".gguf" ("" for
  // folders only: picks a folder).
  void open(std::string title, std::string extension, bool save, std::filesystem::path folder);
  // The chosen path, once, in the frame it is chosen.
  std::optional<std::string> draw();

 private:
  std::string title_, extension_;
  bool save_ = false, open_requested_ = false;
  std::filesystem::path folder_;
  char name_[512] = "";
  char folder_buffer_[1024] = "";
};

}  // namespace kvscope::gui
