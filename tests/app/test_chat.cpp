// `kvscope chat` with its input piped in, on the default model (stories15M:
// no chat template, so each line continues one story).
#include <doctest/doctest.h>

#include <array>
#include <chrono>
#include <thread>
#include <cstdio>
#include <fstream>
#include <regex>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "app/core/conversation.h"
#include "app/core/worker.h"
#include "tests/app/cli_runner.h"
#include "tests/shared_engine.h"
#include "tests/worker_wait.h"
#include "tests/test_util.h"

using nlohmann::json;
using namespace kvscope;
using test::kvscope_cli;
using Result = test::CliResult;

namespace {

// Runs `kvscope chat ARGS` with `input` as its stdin.
Result chat_with_input(const test::TempDir& dir, const std::string& input, const std::string& args) {
  const std::string input_path = dir.file("input.txt");
  std::ofstream(input_path, std::ios::binary) << input;
  return kvscope_cli("chat " + args + " < " + input_path);
}

// The "N/CTX tokens" of every status line, in order.
std::vector<int> context_use(const std::string& out) {
  std::vector<int> used;
  static const std::regex status(R"(tok/s · (\d+)/(\d+) tokens)");
  for (auto it = std::sregex_iterator(out.begin(), out.end(), status); it != std::sregex_iterator(); ++it)
    used.push_back(std::stoi((*it)[1]));
  return used;
}

// The "prefill N tokens, M reused" of every --verbose line, in order.
std::vector<std::pair<int, int>> prefills(const std::string& out) {
  std::vector<std::pair<int, int>> rows;
  static const std::regex line(R"(\[prefill (\d+) tokens, (\d+) reused from the cache; (\d+) generated\])");
  for (auto it = std::sregex_iterator(out.begin(), out.end(), line); it != std::sregex_iterator(); ++it)
    rows.emplace_back(std::stoi((*it)[1]), std::stoi((*it)[2]));
  return rows;
}

const std::string kArgs = "-n 8 --temp 0 --verbose";

// A shell script that plays a person at the keyboard: a line, Ctrl-C while
// the reply streams, another line, then Ctrl-C at the prompt. Prints "rc=N".
// Each step waits for the output it needs (up to 30 s), never a fixed time.
std::string ctrl_c_script(const test::TempDir& dir) {
  const std::string fifo = dir.file("stdin.fifo"), out = dir.file("out.txt");
  return "set -u\n"
         "mkfifo '" + fifo + "'\n"
         "'" KVSCOPE_BINARY "' chat -n 400 --temp 0 < '" + fifo + "' > '" + out + "' 2>&1 &\n"
         "pid=$!\n"
         "exec 3> '" + fifo + "'\n"
         "wait_for() { i=0; until [ $(grep -c \"$1\" '" + out + "') -ge $2 ]; do sleep 0.05; i=$((i+1)); "
         "if [ $i -gt 600 ]; then echo timeout; kill $pid; exit 1; fi; done; }\n"
         "echo 'Once upon a time' >&3\n"
         "wait_for 'there was' 1\n"
         "kill -INT $pid\n"
         "wait_for 'stopped' 1\n"
         "echo 'The end.' >&3\n"
         "wait_for 'tok/s' 2\n"
         "sleep 0.2\n"
         "kill -INT $pid\n"
         "wait $pid; echo rc=$?\n";
}

}  // namespace

TEST_CASE("chat: two turns continue the story and the second feeds only its own tokens") {
  test::model_path();
  test::TempDir dir;
  const Result r = chat_with_input(dir, "Once upon a time\nThe dog was happy.\n", kArgs);
  REQUIRE_MESSAGE(r.code == 0, r.out);
  CHECK(r.out.find("stories15M has no chat template: each line continues the story") != std::string::npos);
  // The same greedy continuation as `kvscope run -p 'Once upon a time'`.
  CHECK_MESSAGE(r.out.find(", there was a little girl named L") != std::string::npos, r.out);

  const auto used = context_use(r.out);
  const auto fed = prefills(r.out);
  REQUIRE_MESSAGE(used.size() == 2, r.out);
  REQUIRE_MESSAGE(fed.size() == 2, r.out);
  CHECK(fed[0] == std::pair{5, 0});  // <s> Once upon a time
  CHECK(used[0] == 5 + 8);           // the prompt and 8 generated tokens, all in the cache
  // Turn two: "▁The ▁dog ▁was ▁happy ." on top of the cache, not the story again.
  CHECK(fed[1] == std::pair{5, used[0]});
  CHECK(used[1] == used[0] + 5 + 8);
}

TEST_CASE("chat: /save, then /load in a new process restores the conversation") {
  test::model_path();
  test::TempDir dir;
  const std::string saved = dir.file("conversation.json");
  Result r = chat_with_input(dir, "Once upon a time\nThe cat sat.\n/save " + saved + "\n", kArgs + " --system 'A story.'");
  REQUIRE_MESSAGE(r.code == 0, r.out);
  // The one conversation format the window reads too (app/core/conversation.h).
  const json j = json::parse(test::read_text(saved));
  CHECK(j["kvscope_conversation"] == 1);
  CHECK(j["template"] == "none");
  CHECK(j["cache"] == "f16");
  CHECK(j["model"].get<std::string>() == test::model_path());
  const Conversation c = read_conversation_json(test::read_text(saved), saved);
  REQUIRE(c.turns.size() == 5);
  CHECK(c.turns[0].role == Turn::Role::System);
  CHECK(c.turns[0].text == "A story.");
  CHECK(c.turns[1].role == Turn::Role::User);
  CHECK(c.turns[1].text == "Once upon a time");
  CHECK(c.turns[2].role == Turn::Role::Model);
  CHECK(!c.turns[2].text.empty());
  CHECK(c.turns[3].text == "The cat sat.");
  CHECK(c.turns[4].role == Turn::Role::Model);
  // The turns' token spans follow one another and cover the context.
  for (size_t i = 1; i < c.turns.size(); ++i)
    CHECK(c.turns[i].first_token == c.turns[i - 1].first_token + c.turns[i - 1].n_tokens);
  CHECK(c.turns.back().first_token + c.turns.back().n_tokens <= c.tokens.size());
  CHECK(c.tokens.size() > 20);

  // A new process loads it, re-feeds it, and saves the same conversation back.
  const std::string again = dir.file("again.json");
  r = chat_with_input(dir, "/load " + saved + "\n/save " + again + "\n", kArgs);
  REQUIRE_MESSAGE(r.code == 0, r.out);
  CHECK(r.out.find("[loaded 4 messages from") != std::string::npos);
  const json k = json::parse(test::read_text(again));
  CHECK(k["turns"] == j["turns"]);
  CHECK(k["tokens"] == j["tokens"]);

  // ... and the next turn continues it from the cache.
  r = chat_with_input(dir, "/load " + saved + "\nThen it rained.\n", kArgs);
  REQUIRE_MESSAGE(r.code == 0, r.out);
  const auto fed = prefills(r.out);
  REQUIRE_MESSAGE(fed.size() == 1, r.out);
  CHECK(fed[0].second > 10);  // the loaded story stayed in the cache

  // A file that is not a conversation: one clear line, and the chat goes on.
  std::ofstream(dir.file("bad.json")) << R"({"messages": [{"role": "robot", "content": "hi"}]})";
  r = chat_with_input(dir, "/load " + dir.file("bad.json") + "\nOnce upon a time\n", kArgs);
  REQUIRE_MESSAGE(r.code == 0, r.out);
  CHECK(r.out.find("messages[0] must be") != std::string::npos);
  CHECK(context_use(r.out).size() == 1);
}

TEST_CASE("chat: /reset empties the conversation and the cache") {
  test::model_path();
  test::TempDir dir;
  const std::string saved = dir.file("after_reset.json");
  const Result r =
      chat_with_input(dir, "Once upon a time\n/reset\n/save " + saved + "\nOnce upon a time\n/quit\nNot read.\n", kArgs);
  REQUIRE_MESSAGE(r.code == 0, r.out);
  CHECK(r.out.find("[conversation cleared]") != std::string::npos);
  CHECK(json::parse(test::read_text(saved))["turns"] == json::array());
  // After the reset the same line starts from an empty cache again.
  const auto used = context_use(r.out);
  REQUIRE_MESSAGE(used.size() == 2, r.out);
  CHECK(used[0] == used[1]);
  CHECK(prefills(r.out)[1] == std::pair{5, 0});
}

TEST_CASE("chat: a turn that overflows the context says so and the chat goes on") {
  test::model_path();
  test::TempDir dir;
  const std::string long_line =
      "The little girl went to the park with her mother and her brother and they played on the swings all day long "
      "until the sun went down. Then they walked home together, ate a big dinner and went to sleep.";
  const Result r = chat_with_input(dir, long_line + "\nOnce upon a time\n", "-c 32 " + kArgs);
  REQUIRE_MESSAGE(r.code == 0, r.out);
  CHECK(r.out.find("[the context is full: ") != std::string::npos);
  CHECK(r.out.find("/reset starts a new conversation") != std::string::npos);
  CHECK(r.out.find("/reset") != std::string::npos);
  // The next line still gets its reply.
  const auto used = context_use(r.out);
  REQUIRE_MESSAGE(used.size() == 1, r.out);
  CHECK(used[0] == 13);
}

TEST_CASE("chat: Ctrl-C stops a reply and the chat goes on; Ctrl-C at the prompt ends it") {
  test::model_path();
  test::TempDir dir;
  // SIGINT is sent only once the reply is streaming (the handler is in place),
  // and the second only once the next reply's status line is out (at the prompt);
  // stdin stays open, so only the second Ctrl-C can end the chat.
  const std::string script = ctrl_c_script(dir);
  std::ofstream(dir.file("ctrl_c.sh")) << script;
  FILE* p = popen(("sh " + dir.file("ctrl_c.sh") + " 2>&1").c_str(), "r");
  REQUIRE(p != nullptr);
  std::string rc_text;
  std::array<char, 256> buf{};
  size_t n;
  while ((n = fread(buf.data(), 1, buf.size(), p)) > 0) rc_text.append(buf.data(), n);
  pclose(p);
  const std::string out = test::read_text(dir.file("out.txt"));
  CHECK_MESSAGE(rc_text.find("rc=0") != std::string::npos, rc_text << out);
  const auto used = context_use(out);
  REQUIRE_MESSAGE(used.size() == 2, out);
  // The first reply was cut short, the second continued the same story.
  const size_t first_status = out.find("tok/s");
  CHECK(out.substr(first_status, out.find('\n', first_status) - first_status).find("· stopped]") != std::string::npos);
  CHECK(used[0] < 256);
  CHECK(used[1] > used[0]);
}

TEST_CASE("chat: a conversation saved by chat opens in a window session, and one saved there opens in chat") {
  test::TempDir dir;
  const std::string saved = dir.file("from_chat.json");
  Result r = chat_with_input(dir, "Once upon a time\n/save " + saved + "\n", kArgs);
  REQUIRE_MESSAGE(r.code == 0, r.out);
  const Conversation from_chat = read_conversation_json(test::read_text(saved), saved);

  // The window's path: a session worker loads it (App::load_conversation).
  EngineTurns turns;
  SessionWorker worker(test::shared_engine(), turns, "A", parse_cache_spec("f16"));
  worker.load(from_chat);
  const auto s = test::wait_idle(worker);
  REQUIRE_MESSAGE(s->error.empty(), s->error);
  CHECK(s->tokens == from_chat.tokens);
  CHECK(s->turns.size() == from_chat.turns.size());

  // ... and what the window saves (App::save_conversation) opens in chat.
  Conversation from_window;
  from_window.model = test::model_path();
  from_window.cache = s->spec.label();
  from_window.chat_template = "none";
  from_window.turns = s->turns;
  from_window.tokens = s->tokens;
  const std::string window_file = dir.file("from_window.json");
  std::ofstream(window_file, std::ios::binary) << write_conversation_json(from_window);
  r = chat_with_input(dir, "/load " + window_file + "\nThen it rained.\n", kArgs);
  REQUIRE_MESSAGE(r.code == 0, r.out);
  CHECK(r.out.find("[loaded 2 messages from") != std::string::npos);
  const auto fed = prefills(r.out);
  REQUIRE_MESSAGE(fed.size() == 1, r.out);
  CHECK(fed[0].second > 4);  // the loaded story stayed in the cache
}

TEST_CASE("chat: a device lost mid-reply ends the chat with one clear message and the conversation saved") {
  const std::string model = test::model_path();
  test::TempDir dir;
  // The 12th forward pass fails as a lost device does (gpu::Context's
  // simulated loss): inside the second reply (-n 8: ~9 passes a turn).
  const std::string input_path = dir.file("input.txt");
  std::ofstream(input_path) << "Once upon a time\nThe cat sat.\nNever read.\n";
  const Result r = kvscope_cli("chat -m '" + model + "' " + kArgs + " < '" + input_path + "'", 
                               "XDG_CACHE_HOME='" + dir.file("cache") + "' KVSCOPE_LOSE_DEVICE_AFTER=12 ");
  CHECK(r.code == 1);
  CHECK_MESSAGE(r.out.find("VK_ERROR_DEVICE_LOST") != std::string::npos, r.out);
  CHECK(r.out.find("the GPU stopped responding") != std::string::npos);
  CHECK(context_use(r.out).size() == 1);  // the first reply finished, the second did not
  // The conversation so far is in the file the message names, and loads.
  static const std::regex saved_in(R"(the conversation is saved in (\S+\.json))");
  std::smatch m;
  REQUIRE_MESSAGE(std::regex_search(r.out, m, saved_in), r.out);
  const Conversation c = read_conversation_json(test::read_text(m[1].str()), m[1].str());
  REQUIRE(c.turns.size() == 4);
  CHECK(c.turns[0].text == "Once upon a time");
  CHECK(c.turns[2].text == "The cat sat.");
}
