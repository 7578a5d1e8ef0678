// Files written whole or not at all, and files that do not parse kept aside.
//
// Everything kvscope writes for a person to keep (settings, saved
// conversations, eviction traces, exports) goes through write_file_atomically:
// the contents go to a temporary file in the same folder, are flushed to the
// disk, and only then renamed over the target — so a crash or a full disk
// leaves the previous file as it was, never half of a new one.
#pragma once
#include <filesystem>
#include <string_view>

namespace kvscope {

// Throws std::runtime_error naming `path` and what failed (the temporary file
// is removed; the target is untouched).
void write_file_atomically(const std::filesystem::path& path, std::string_view contents);

// Moves a file that does not parse out of the way — to PATH.broken-N, the
// first N not taken, so no earlier copy is overwritten — and returns the new
// name, for the message that tells the person where it went.
std::filesystem::path keep_aside(const std::filesystem::path& path);

}  // namespace kvscope
