// One conversation for both front ends (app/core/conversation.h): the
// window's sessions feed a conversation by the same prefix-reuse rule as
// kvscope chat, pin the system prompt by the same rule, and save the same JSON.
#include <doctest/doctest.h>

#include <chrono>
#include <filesystem>
#include <thread>

#include "app/core/conversation.h"
#include "app/core/thinking.h"
#include "app/core/worker.h"
#include "tests/shared_engine.h"
#include "tests/worker_wait.h"
#include "tests/test_util.h"

using namespace kvscope;

namespace {
using test::wait_idle;

GenerateRequest message(const std::string& text, std::optional<ChatTemplate> tmpl = std::nullopt) {
  GenerateRequest r;
  r.text = text;
  r.max_new = 6;
  r.sampling.temperature = 0;
  r.chat_template = std::move(tmpl);
  return r;
}
}  // namespace

TEST_CASE("conversation: plan_feed continues what the cache stands for, else reads everything again") {
  const Tokenizer& tok = test::shared_engine().tokenizer();
  const PromptFormat chatml(tok, chat_template_by_name("chatml"));
  Dialogue d;
  d.system = "Be brief.";
  d.messages = {{"user", "Hi"}};
  const ChatPrompt first = chatml.render(d, true);
  const FeedPlan whole = plan_feed(chatml, first, std::nullopt, 0);
  CHECK(whole.from_scratch);
  CHECK(whole.tokens == chatml.encode_whole(first));
  d.messages.push_back({"assistant", "Hello there"});
  d.messages.push_back({"user", "Again"});
  const ChatPrompt second = chatml.render(d, true);
  const FeedPlan more = plan_feed(chatml, second, first.text + "Hello there", whole.tokens.size() + 3);
  CHECK_FALSE(more.from_scratch);
  CHECK(more.tokens == chatml.encode_continuation(second, first.text.size() + 11));
  // Another format renders the same turns differently: everything again.
  const PromptFormat plain(tok, std::nullopt);
  CHECK(plan_feed(plain, plain.render(d, true), first.text + "Hello there", 40).from_scratch);
  // The system prompt's pinned span is the start both encodings share.
  const kv::PinnedSpans pins = chatml.system_pins(d, whole.tokens);
  REQUIRE(pins.spans().size() == 1);
  CHECK(pins.spans().front().begin == 0);
  CHECK(pins.spans().front().end > 3);
  CHECK(static_cast<size_t>(pins.spans().front().end) < whole.tokens.size());
}

TEST_CASE("conversation: a window session keeps its cache across messages, with or without a template") {
  for (const bool templated : {false, true}) {
    CAPTURE(templated);
    const std::optional<ChatTemplate> tmpl =
        templated ? std::optional<ChatTemplate>(chat_template_by_name("chatml")) : std::nullopt;
    EngineTurns turns;
    SessionWorker w(test::shared_engine(), turns, "A", parse_cache_spec("f16"));
    GenerateRequest first = message("Once upon a time", tmpl);
    first.system = "A story.";
    w.generate(first);
    const auto one = wait_idle(w);
    REQUIRE_MESSAGE(one->error.empty(), one->error);
    w.generate(message("The cat sat.", tmpl));
    const auto two = wait_idle(w);
    REQUIRE_MESSAGE(two->error.empty(), two->error);
    // The second message continued the cache: what it held stays its beginning.
    REQUIRE(two->tokens.size() > one->tokens.size());
    CHECK(std::equal(one->tokens.begin(), one->tokens.end(), two->tokens.begin()));
    REQUIRE(two->turns.size() == 5);
    const Turn& user2 = two->turns[3];
    CHECK(user2.first_token == one->tokens.size());
    CHECK(two->turns[4].first_token == user2.first_token + user2.n_tokens);
  }
}

TEST_CASE("conversation: switching the template reads the conversation again; the system prompt stays pinned") {
  EngineTurns turns;
  SessionWorker w(test::shared_engine(), turns, "A", parse_cache_spec("f16 + window:budget=64"));
  GenerateRequest first = message("Once upon a time");
  first.system = "A story about a cat.";
  w.generate(first);
  const auto one = wait_idle(w);
  REQUIRE_MESSAGE(one->error.empty(), one->error);
  REQUIRE(one->pins.spans().size() == 1);
  const int32_t plain_pin = one->pins.spans().front().end;
  CHECK(plain_pin > 2);
  w.generate(message("Then?", chat_template_by_name("chatml")));
  const auto two = wait_idle(w);
  REQUIRE_MESSAGE(two->error.empty(), two->error);
  const std::vector<int32_t> rendered = PromptFormat(test::shared_engine().tokenizer(), chat_template_by_name("chatml"))
                                            .encode_whole(PromptFormat(test::shared_engine().tokenizer(),
                                                                       chat_template_by_name("chatml"))
                                                              .render(dialogue_of({two->turns.data(), 4}), true));
  REQUIRE(two->tokens.size() >= rendered.size());
  CHECK(std::equal(rendered.begin(), rendered.end(), two->tokens.begin()));  // read again, whole, in chatml
  REQUIRE(two->pins.spans().size() == 1);
  CHECK(two->pins.spans().front().begin == 0);
  CHECK(two->pins.spans().front().end > 3);
}

TEST_CASE("conversation: numbers that are not token ids are refused by name (fuzz_conversation's findings)") {
  // Every input a fuzz target found stays here as a regression test.
  const std::filesystem::path regressions = std::string(KVSCOPE_SOURCE_DIR) + "/tests/fuzz/regressions/conversation";
  size_t files = 0;
  for (const auto& entry : std::filesystem::directory_iterator(regressions)) {
    CAPTURE(entry.path().string());
    ++files;
    CHECK_THROWS_AS(read_conversation_json(test::read_text(entry.path().string()), "found.json"), std::runtime_error);
  }
  CHECK(files >= 1);
  auto error_of = [](const std::string& tokens, const std::string& first_token) {
    const std::string text = R"({"kvscope_conversation": 1, "pins": [], "tokens": )" + tokens +
                             R"(, "turns": [{"role": "user", "text": "x", "first_token": )" + first_token +
                             R"(, "n_tokens": 1}]})";
    try {
      read_conversation_json(text, "c.json");
    } catch (const std::runtime_error& e) {
      return std::string(e.what());
    }
    return std::string("(accepted)");
  };
  CHECK(error_of("[1, 2]", "0") == "(accepted)");
  CHECK(error_of("[1, 1.66e64]", "0").find("tokens[1] is 1.66e+64, expected a whole number") != std::string::npos);
  CHECK(error_of("[1, 166666666666666666666666]", "0").find("tokens[1]") != std::string::npos);
  CHECK(error_of("[1, -3]", "0").find("tokens[1] is -3") != std::string::npos);
  CHECK(error_of("[1, 2147483648]", "0").find("tokens[1]") != std::string::npos);
  CHECK(error_of("[1, \"2\"]", "0").find("tokens[1]") != std::string::npos);
  CHECK(error_of("[1, 2]", "-1").find("first_token is -1") != std::string::npos);
  CHECK(error_of("[1, 2]", "0.5").find("first_token is 0.5") != std::string::npos);
  CHECK(error_of("[1, 2]", "4294967296").find("first_token") != std::string::npos);
}

// ------------------------------------------------------- thinking (Qwen 3, DeepSeek-R1)

TEST_CASE("split_thinking: a reply's <think> part and its answer, while it is written and after") {
  using kvscope::split_thinking;
  auto check = [](std::string_view reply, bool opened, std::string_view thinking, std::string_view answer, bool has,
                  bool open) {
    CAPTURE(std::string(reply));
    const kvscope::ThinkingSplit s = split_thinking(reply, opened);
    CHECK(s.thinking == thinking);
    CHECK(s.answer == answer);
    CHECK(s.has_thinking == has);
    CHECK(s.open == open);
  };
  check("Paris.", false, "", "Paris.", false, false);
  check("<think>\nThe capital of France.\n</think>\n\nParis.", false, "The capital of France.", "Paris.", true, false);
  check("<think>\nStill going", false, "Still going", "", true, true);  // streaming: no answer yet
  check("\n<think></think>\n\nHi", false, "", "Hi", true, false);      // Qwen 3 with thinking off
  check("I wrote <think> as an example.", false, "", "I wrote <think> as an example.", false, false);
  // DeepSeek-R1: the generation prompt opened <think>; the reply starts inside it.
  check("Let me see.\n</think>\n\n4", true, "Let me see.", "4", true, false);
  check("Let me see", true, "Let me see", "", true, true);
}
