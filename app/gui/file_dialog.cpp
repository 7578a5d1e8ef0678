#include "app/gui/file_dialog.h"

#include <fmt/format.h>
#include <imgui.h>

#include <algorithm>
#include <vector>

#include "app/gui/theme.h"

namespace kvscope::gui {

void FileDialog::open(std::string title, std::string extension, bool save, std::filesystem::path folder) {
  title_ = std::move(title);
  extension_ = std::move(extension);
  save_ = save;
  std::error_code ec;
  if (folder.empty() || !std::filesystem::is_directory(folder, ec)) folder = std::filesystem::current_path(ec);
  folder_ = folder;
  std::snprintf(folder_buffer_, sizeof folder_buffer_, "%s", folder_.string().c_str());
  name_[0] = 0;
  open_requested_ = true;
}

std::optional<std::string> FileDialog::draw() {
  if (open_requested_) {
    ImGui::OpenPopup("##files");
    open_requested_ = false;
  }
  std::optional<std::string> chosen;
  const ImVec2 size{ImGui::GetFontSize() * 38, ImGui::GetFontSize() * 26};
  ImGui::SetNextWindowSize(size, ImGuiCond_Appearing);
  if (!ImGui::BeginPopupModal("##files", nullptr, ImGuiWindowFlags_NoSavedSettings)) return chosen;
  ImGui::TextColored(colour::muted, "%s", title_.c_str());
  ImGui::SetNextItemWidth(-1);
  if (ImGui::InputText("##folder", folder_buffer_, sizeof folder_buffer_, ImGuiInputTextFlags_EnterReturnsTrue))
    folder_ = folder_buffer_;
  if (ImGui::IsItemHovered()) ImGui::SetTooltip("The folder shown; type a path and press Enter");

  struct Entry {
    std::string name;
    bool folder;
    uintmax_t bytes;
  };
  std::vector<Entry> entries;
  std::error_code ec;
  for (const auto& e : std::filesystem::directory_iterator(folder_, std::filesystem::directory_options::skip_permission_denied, ec)) {
    const std::string name = e.path().filename().string();
    if (name.empty() || name[0] == '.') continue;
    std::error_code ec2;
    const bool folder = e.is_directory(ec2);
    if (!folder && (extension_.empty() || e.path().extension() != extension_)) continue;
    entries.push_back({name, folder, folder ? 0 : e.file_size(ec2)});
  }
  std::sort(entries.begin(), entries.end(),
            [](const Entry& a, const Entry& b) { return a.folder != b.folder ? a.folder : a.name < b.name; });
  const float footer = ImGui::GetFrameHeightWithSpacing() * 2;
  ImGui::BeginChild("##entries", {0, ImGui::GetContentRegionAvail().y - footer}, true);
  if (ec) ImGui::TextColored(colour::diverged, "cannot list %s: %s", folder_.string().c_str(), ec.message().c_str());
  if (ImGui::Selectable("..", false, ImGuiSelectableFlags_DontClosePopups)) folder_ = folder_.parent_path();
  for (const Entry& e : entries) {
    const std::string label = e.folder ? e.name + "/" : fmt::format("{}   ({:.1f} MiB)", e.name, e.bytes / 1048576.0);
    if (ImGui::Selectable(label.c_str(), false, ImGuiSelectableFlags_DontClosePopups | ImGuiSelectableFlags_AllowDoubleClick)) {
      if (e.folder) {
        folder_ /= e.name;
      } else {
        std::snprintf(name_, sizeof name_, "%s", e.name.c_str());
        if (ImGui::IsMouseDoubleClicked(ImGuiMouseButton_Left)) chosen = (folder_ / e.name).string();
      }
    }
  }
  if (entries.empty() && !ec)
    ImGui::TextColored(colour::muted, extension_.empty() ? "no folders here" : "no %s files here", extension_.c_str());
  ImGui::EndChild();
  std::snprintf(folder_buffer_, sizeof folder_buffer_, "%s", folder_.string().c_str());
  if (!extension_.empty()) {
    ImGui::SetNextItemWidth(ImGui::GetContentRegionAvail().x - ImGui::GetFontSize() * 11);
    ImGui::InputText("##name", name_, sizeof name_);
    ImGui::SameLine();
  }
  if (ImGui::Button(save_ ? "Save" : extension_.empty() ? "Choose this folder" : "Open")) {
    if (extension_.empty())
      chosen = folder_.string();
    else if (name_[0])
      chosen = (folder_ / name_).string();
  }
  ImGui::SameLine();
  if (ImGui::Button("Cancel")) ImGui::CloseCurrentPopup();
  if (chosen) ImGui::CloseCurrentPopup();
  ImGui::EndPopup();
  return chosen;
}

}  // namespace kvscope::gui
