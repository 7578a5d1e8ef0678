#include "app/core/atomic_file.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <stdexcept>
#include <string>

#include <fmt/format.h>

namespace kvscope {

namespace {
[[noreturn]] void fail(const std::filesystem::path& path, std::string_view what, int error) {
  throw std::runtime_error(fmt::format("cannot write {}: {} ({}); the previous file, if any, is unchanged",
                                       path.string(), what, std::strerror(error)));
}
}  // namespace

void write_file_atomically(const std::filesystem::path& path, std::string_view contents) {
  const std::filesystem::path folder = path.has_parent_path() ? path.parent_path() : std::filesystem::path(".");
  std::error_code ec;
  std::filesystem::create_directories(folder, ec);
  std::string temp = (folder / ("." + path.filename().string() + ".XXXXXX")).string();
  const int fd = ::mkstemp(temp.data());
  if (fd < 0) fail(path, "cannot create a temporary file in its folder", errno);
  auto give_up = [&](std::string_view what) {
    const int error = errno;
    ::close(fd);
    ::unlink(temp.c_str());
    fail(path, what, error);
  };
  for (size_t written = 0; written < contents.size();) {
    const ssize_t n = ::write(fd, contents.data() + written, contents.size() - written);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) give_up("writing failed (is the disk full?)");
    written += static_cast<size_t>(n);
  }
  if (::fsync(fd) != 0) give_up("flushing to the disk failed");
  ::fchmod(fd, 0644);  // mkstemp makes it 0600; a saved file reads like any other
  if (::close(fd) != 0) {
    const int error = errno;
    ::unlink(temp.c_str());
    fail(path, "closing the temporary file failed", error);
  }
  if (::rename(temp.c_str(), path.c_str()) != 0) {
    const int error = errno;
    ::unlink(temp.c_str());
    fail(path, "renaming the temporary file into place failed", error);
  }
}

AtomicFile::AtomicFile(std::filesystem::path path) : path_(std::move(path)) {
  const std::filesystem::path folder = path_.has_parent_path() ? path_.parent_path() : std::filesystem::path(".");
  std::error_code ec;
  std::filesystem::create_directories(folder, ec);
  temp_ = (folder / ("." + path_.filename().string() + ".XXXXXX")).string();
  const int fd = ::mkstemp(temp_.data());
  if (fd < 0) fail(path_, "cannot create a temporary file in its folder", errno);
  ::fchmod(fd, 0644);
  ::close(fd);
  out_.open(temp_, std::ios::binary | std::ios::trunc);
  if (!out_) {
    const int error = errno;
    ::unlink(temp_.c_str());
    fail(path_, "cannot open the temporary file", error);
  }
}

AtomicFile::~AtomicFile() {
  if (committed_) return;
  out_.close();
  ::unlink(temp_.c_str());
}

void AtomicFile::commit() {
  out_.flush();
  const bool written = static_cast<bool>(out_);
  out_.close();
  auto give_up = [&](std::string_view what, int error) {
    ::unlink(temp_.c_str());
    committed_ = true;  // nothing left to remove
    fail(path_, what, error);
  };
  if (!written || out_.fail()) give_up("writing failed (is the disk full?)", errno ? errno : EIO);
  const int fd = ::open(temp_.c_str(), O_RDONLY);
  if (fd < 0 || ::fsync(fd) != 0) {
    const int error = errno;
    if (fd >= 0) ::close(fd);
    give_up("flushing to the disk failed", error);
  }
  ::close(fd);
  if (::rename(temp_.c_str(), path_.c_str()) != 0) give_up("renaming the temporary file into place failed", errno);
  committed_ = true;
}

std::filesystem::path keep_aside(const std::filesystem::path& path) {
  for (int n = 1;; ++n) {
    const std::filesystem::path aside = path.string() + fmt::format(".broken-{}", n);
    std::error_code ec;
    if (std::filesystem::exists(aside, ec)) continue;
    std::filesystem::rename(path, aside, ec);
    if (ec)
      throw std::runtime_error(fmt::format("{} does not parse, and moving it aside to {} failed: {}", path.string(),
                                           aside.string(), ec.message()));
    return aside;
  }
}

}  // namespace kvscope
