// Files written whole or not at all, and files that do not parse kept aside.
//
// Everything kvscope writes for a person to keep (settings, saved
// conversations, eviction traces, exports) goes through write_file_atomically:
// the contents go to a temporary file in the same folder, are flushed to the
// disk, and only then renamed over the target — so a crash or a full disk
// leaves the previous file as it was, never half of a new one.
#pragma once
#include <filesystem>
#include <fstream>
#include <string>
#include <string_view>

namespace kvscope {

// Throws std::runtime_error naming `path` and what failed (the temporary file
// is removed; the target is untouched).
void write_file_atomically(const std::filesystem::path& path, std::string_view contents);

// The same for a file written as it grows (a --trace streamed through a long
// run): stream() writes to the temporary file; commit() flushes it to the
// disk and renames it over `path`. Destroyed without commit() (an error, a
// crash), it removes the temporary file and leaves `path` as it was.
class AtomicFile {
 public:
  explicit AtomicFile(std::filesystem::path path);  // throws as write_file_atomically does
  AtomicFile(const AtomicFile&) = delete;
  AtomicFile& operator=(const AtomicFile&) = delete;
  ~AtomicFile();
  std::ostream& stream() { return out_; }
  void commit();

 private:
  std::filesystem::path path_;
  std::string temp_;
  std::ofstream out_;
  bool committed_ = false;
};

// Moves a file that does not parse out of the way — to PATH.broken-N, the
// first N not taken, so no earlier copy is overwritten — and returns the new
// name, for the message that tells the person where it went.
std::filesystem::path keep_aside(const std::filesystem::path& path);

}  // namespace kvscope
