// What kvscope writes for a person to keep is written whole or not at all
// (app/core/atomic_file.h), and a file that does not parse is kept aside.
#include <doctest/doctest.h>

#include <filesystem>
#include <fstream>
#include <string>

#include "app/core/atomic_file.h"
#include "tests/test_util.h"

using namespace kvscope;
namespace fs = std::filesystem;

TEST_CASE("atomic file: replaces the whole file, leaves no temporary behind") {
  test::TempDir dir;
  const fs::path path = dir.file("conversation.json");
  write_file_atomically(path, "first");
  write_file_atomically(path, std::string(100000, 'x'));
  CHECK(test::read_text(path.string()) == std::string(100000, 'x'));
  size_t files = 0;
  for (const auto& entry : fs::directory_iterator(path.parent_path())) files += entry.is_regular_file() ? 1 : 0;
  CHECK(files == 1);
  // Its folder is made when missing.
  write_file_atomically(dir.file("exports/a/b.csv"), "x,y\n");
  CHECK(test::read_text(dir.file("exports/a/b.csv")) == "x,y\n");
}

TEST_CASE("atomic file: a write that cannot happen names the file and leaves the old one") {
  test::TempDir dir;
  const fs::path blocker = dir.file("not-a-folder");
  std::ofstream(blocker) << "a file where a folder should be";
  CHECK_THROWS_WITH_AS(write_file_atomically(blocker / "trace.jsonl", "data"),
                       doctest::Contains("cannot write"), std::runtime_error);
  CHECK(test::read_text(blocker.string()) == "a file where a folder should be");
}

TEST_CASE("atomic file: a file that does not parse is kept aside under a name not taken") {
  test::TempDir dir;
  const fs::path path = dir.file("settings.json");
  std::ofstream(path) << "{ broken";
  CHECK(keep_aside(path) == fs::path(path.string() + ".broken-1"));
  std::ofstream(path) << "{ broken again";
  CHECK(keep_aside(path) == fs::path(path.string() + ".broken-2"));
  CHECK_FALSE(fs::exists(path));
  CHECK(test::read_text(path.string() + ".broken-1") == "{ broken");
}

TEST_CASE("atomic file: a file written as it grows appears only when committed") {
  test::TempDir dir;
  const fs::path path = dir.file("trace.jsonl");
  write_file_atomically(path, "the previous trace\n");
  auto files_in_folder = [&] {
    size_t n = 0;
    for (const auto& entry : fs::directory_iterator(path.parent_path())) n += entry.is_regular_file() ? 1 : 0;
    return n;
  };
  {
    AtomicFile file(path);
    file.stream() << "half of a new trace";
    CHECK(files_in_folder() == 2);  // the old file and the temporary one
    // Destroyed without commit (an error mid-run): the old file stays, nothing else.
  }
  CHECK(test::read_text(path.string()) == "the previous trace\n");
  CHECK(files_in_folder() == 1);
  {
    AtomicFile file(path);
    for (int i = 0; i < 1000; ++i) file.stream() << "line " << i << "\n";
    CHECK(test::read_text(path.string()) == "the previous trace\n");
    file.commit();
  }
  CHECK(test::read_text(path.string()).rfind("line 999\n") != std::string::npos);
  CHECK(files_in_folder() == 1);
  CHECK_THROWS_WITH_AS(AtomicFile(dir.file("trace.jsonl/inside")), doctest::Contains("cannot write"),
                       std::runtime_error);
}
