// Runs the built `kvscope` command as a person would, for the CLI tests.
#pragma once
#include <doctest/doctest.h>

#include <sys/wait.h>

#include <algorithm>
#include <array>
#include <cstdio>
#include <string>

#include <nlohmann/json.hpp>

namespace kvscope::test {

struct CliResult {
  int code = -1;
  std::string out;  // stdout and stderr together
};

// `env`: "NAME=VALUE " assignments put before the command.
inline CliResult kvscope_cli(const std::string& args, const std::string& env = "") {
  const std::string cmd = env + std::string(KVSCOPE_BINARY) + " " + args + " 2>&1";
  CliResult r;
  FILE* p = popen(cmd.c_str(), "r");
  REQUIRE(p != nullptr);
  std::array<char, 4096> buf{};
  size_t n;
  while ((n = fread(buf.data(), 1, buf.size(), p)) > 0) r.out.append(buf.data(), n);
  const int status = pclose(p);
  r.code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  return r;
}

// The JSON object that ends the output (anything before its '{' is ignored).
inline nlohmann::json last_json(const std::string& out) {
  const auto start = out.find('{');
  REQUIRE_MESSAGE(start != std::string::npos, out);
  return nlohmann::json::parse(out.substr(start));
}

inline size_t count_lines(const std::string& s) { return std::count(s.begin(), s.end(), '\n'); }

}  // namespace kvscope::test
