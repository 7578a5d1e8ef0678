// `kvscope chat`: a conversation in the terminal, one line of stdin per turn.
//
// The session's KV cache lives across turns: each turn feeds only the text
// the conversation gained since the last one (the end of the previous reply's
// turn, the new user message, the opening of the assistant's turn), found by
// rendering the whole conversation and cutting off what the session already
// holds, as llama.cpp's chat does. A template that re-renders earlier turns
// (the rendered text no longer starts with what was fed) falls back to a
// reset and a full prefill, which is slower but never wrong.
//
// A model without tokenizer.chat_template (the default stories15M) is not a
// chat model: each line is appended to one running story and continued.
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <optional>
#include <string>
#include <vector>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "app/cli/commands.h"
#include "app/core/atomic_file.h"
#include "app/core/cache_spec.h"
#include "app/core/conversation.h"
#include "app/core/paths.h"
#include "app/core/worker.h"
#include "app/core/session.h"
#include "gpu/context.h"
#include "models/chat_template.h"

namespace kvscope::cli {

using nlohmann::json;

namespace {

// [SECTION] Ctrl-C: stops a reply; at the prompt, ends the chat.

volatile std::sig_atomic_t g_interrupted = 0;

extern "C" void on_sigint(int) { g_interrupted = 1; }

// Installs on_sigint for the chat's lifetime and restores the previous
// handler after. No SA_RESTART: a Ctrl-C at the prompt must interrupt the
// blocking read so that the chat can end.
class SigintHandler {
 public:
  SigintHandler() {
    struct sigaction sa {};
    sa.sa_handler = on_sigint;
    sigemptyset(&sa.sa_mask);
    sa.sa_flags = 0;
    sigaction(SIGINT, &sa, &previous_);
  }
  ~SigintHandler() { sigaction(SIGINT, &previous_, nullptr); }
  SigintHandler(const SigintHandler&) = delete;
  SigintHandler& operator=(const SigintHandler&) = delete;

 private:
  struct sigaction previous_ {};
};

enum class LineRead { Line, EndOfInput, Interrupted };

// One line of stdin without its newline; getline(3) rather than iostreams so
// that an interrupted read is seen as such (EINTR) and not as end of input.
LineRead read_line(std::string& line) {
  char* buffer = nullptr;
  size_t capacity = 0;
  errno = 0;
  const ssize_t n = ::getline(&buffer, &capacity, stdin);
  const int read_errno = errno;
  if (n >= 0) line.assign(buffer, static_cast<size_t>(n));
  std::free(buffer);
  if (n < 0) {
    const bool interrupted = read_errno == EINTR || g_interrupted;
    std::clearerr(stdin);
    return interrupted ? LineRead::Interrupted : LineRead::EndOfInput;
  }
  while (!line.empty() && (line.back() == '\n' || line.back() == '\r')) line.pop_back();
  return LineRead::Line;
}

// [SECTION] the chat loop

class Chat {
 public:
  Chat(const ChatOptions& o, Engine& engine, Session& session, Sampler& sampler, PromptFormat format)
      : o_(o), engine_(engine), session_(session), sampler_(sampler), format_(std::move(format)) {
    conv_.system = o.system;
  }

  // Returns when the input ends, on /quit, or on Ctrl-C at the prompt.
  void run() {
    const bool interactive = ::isatty(STDIN_FILENO);
    for (;;) {
      if (interactive) {
        std::fputs("> ", stdout);
        std::fflush(stdout);
      }
      g_interrupted = 0;
      std::string line;
      const LineRead r = read_line(line);
      if (r == LineRead::Interrupted) {
        if (interactive) std::fputs("\n", stdout);
        return;
      }
      if (r == LineRead::EndOfInput) return;
      if (line.empty()) continue;
      if (line.front() == '/') {
        if (!command(line)) return;
        continue;
      }
      turn(line);
    }
  }

 private:
  const ChatOptions& o_;
  Engine& engine_;
  Session& session_;
  Sampler& sampler_;
  PromptFormat format_;
  Dialogue conv_;
  std::optional<std::string> fed_text_;  // the rendered text the session's tokens stand for (plan_feed)

  uint32_t capacity() { return session_.cache().capacity(); }
  size_t used() const { return session_.tokens().size(); }

  static void note(const std::string& text) {
    std::fflush(stdout);
    std::fprintf(stderr, "%s\n", text.c_str());
  }

  // --pin-system: the system prompt's tokens as the whole conversation
  // starts with them (PromptFormat::system_pins, the window's rule too).
  kv::PinnedSpans system_pins(const std::vector<int32_t>& whole) const {
    if (!o_.pin_system) return {};
    return format_.system_pins(conv_, whole);
  }

  // Before feeding a whole conversation from an empty cache: the policy of
  // --policy/--pin/--on-full, with the system prompt pinned (resets the session).
  void start_policy(const std::vector<int32_t>& whole) {
    const kv::PinnedSpans pins = system_pins(whole);
    if (!wants_policy(o_.m) && pins.empty()) return;
    session_.set_extra_pins(pins);
    fed_text_.reset();
    if (o_.verbose && !pins.empty())
      note(fmt::format("[system prompt pinned: tokens 0:{}]", pins.spans().front().end));
  }

  // The one context-fit message (kv::ContextFull), with chat's way to start over.
  std::string overflow_message(size_t held, size_t incoming) {
    const kv::ContextFull full(static_cast<uint32_t>(held), static_cast<uint32_t>(incoming), capacity());
    return fmt::format("[{}; /reset starts a new conversation here]", full.what());
  }

  // Brings the session to `prompt`: only the new text when the session holds
  // a prefix of it, else everything after a reset. Returns false (nothing
  // changed) when it would not leave room for one new token.
  bool plan(const ChatPrompt& prompt, std::vector<int32_t>& tokens, bool& from_scratch) {
    FeedPlan feed = plan_feed(format_, prompt, fed_text_, used());  // the window's rule too
    from_scratch = feed.from_scratch;
    tokens = std::move(feed.tokens);
    const size_t needed = (from_scratch ? 0 : used()) + tokens.size();
    if (tokens.empty()) return false;
    // An evicting cache never fills (the pinned system prompt stays).
    if (!session_.evicting() && needed >= capacity()) {
      note(overflow_message(from_scratch ? 0 : used(), tokens.size()));
      return false;
    }
    if (from_scratch && used() != 0) {
      if (o_.verbose) note("[the template re-renders earlier turns: feeding the whole conversation again]");
      session_.reset();
      fed_text_.reset();
    }
    if (from_scratch) start_policy(tokens);
    return true;
  }

  void turn(const std::string& line) {
    Dialogue next = conv_;
    next.messages.push_back({"user", line});
    const ChatPrompt prompt = format_.render(next, /*add_generation_prompt=*/true);
    std::vector<int32_t> tokens;
    bool from_scratch = false;
    if (!plan(prompt, tokens, from_scratch)) return;

    const size_t reused = used();
    const GenerationStats before = session_.stats();
    const Tokenizer& tok = engine_.tokenizer();
    std::string reply;
    bool stopped_by_user = false;
    bool first_piece = true;
    auto on_token = [&](int32_t id, const std::string& text) {
      if (id >= 0 && g_interrupted) {
        stopped_by_user = true;
        return false;  // this token is neither shown nor fed
      }
      if (id >= 0 && format_.is_stop(id)) return false;
      std::string shown = text;
      // A reply starts a fresh detokenizer, which drops the first piece's
      // leading space as at the start of a text; in a story it separates words.
      if (format_.plain() && first_piece && id >= 0 && !shown.starts_with(' ') && tok.token_bytes(id).starts_with(' '))
        shown.insert(0, 1, ' ');
      if (id >= 0) first_piece = false;
      std::fwrite(shown.data(), 1, shown.size(), stdout);
      std::fflush(stdout);
      reply += shown;
      return true;
    };
    try {
      session_.generate(tokens, static_cast<uint32_t>(o_.n_predict), sampler_, on_token);
    } catch (const kv::ContextFull&) {
      note(overflow_message(used(), tokens.size()));
      return;
    } catch (const gpu::DeviceLost& lost) {
      // Nothing more runs on this device: the conversation (with the message
      // just typed and what came of the reply) goes to a file first.
      std::fputs("\n", stdout);
      next.messages.push_back({"assistant", reply});
      conv_ = std::move(next);
      throw gpu::DeviceLost(fmt::format("{}\n{}", lost.what(), save_for_recovery()));
    }
    std::fputs("\n", stdout);

    next.messages.push_back({"assistant", reply});
    conv_ = std::move(next);
    fed_text_ = prompt.text + reply;

    const GenerationStats& after = session_.stats();
    const uint32_t generated = after.generated_tokens - before.generated_tokens;
    const double seconds = after.decode_seconds - before.decode_seconds;
    if (o_.verbose)
      note(fmt::format("[prefill {} tokens, {} reused from the cache; {} generated]", tokens.size(),
                       from_scratch ? 0 : reused, generated));
    std::string status = fmt::format("[{:.1f} tok/s · {}/{} tokens", seconds > 0 ? generated / seconds : 0.0, used(),
                                     capacity());
    if (stopped_by_user) status += " · stopped";
    if (session_.evicting())
      status += fmt::format(" · {} held", session_.cache().tokens());
    else if (used() >= capacity())
      status += " · context full: type /reset to start over";
    note(status + "]");
  }

  // Returns false to end the chat.
  bool command(const std::string& line) {
    const size_t space = line.find(' ');
    const std::string name = line.substr(0, space);
    std::string arg = space == std::string::npos ? "" : line.substr(space + 1);
    while (!arg.empty() && arg.front() == ' ') arg.erase(0, 1);
    if (name == "/quit" || name == "/exit") return false;
    if (name == "/reset") {
      reset();
      note("[conversation cleared]");
    } else if (name == "/save" && !arg.empty()) {
      save(arg);
    } else if (name == "/load" && !arg.empty()) {
      load(arg);
    } else {
      note("commands: /reset (clear the conversation and the cache), /save FILE, /load FILE (conversation as "
           "JSON), /quit; Ctrl-C stops a reply, and at the prompt ends the chat");
    }
    return true;
  }

  void reset() {
    session_.reset();
    conv_.messages.clear();
    fed_text_.reset();
  }

  // The conversation in the one format the window reads too
  // (app/core/conversation.h): its turns with the token span each covers in
  // the context, the context's tokens, the cache and its pins.
  kvscope::Conversation to_conversation() const {
    kvscope::Conversation c;
    c.model = engine_.file().path();
    c.cache = session_.spec().label();
    c.chat_template = format_.name();
    if (const kv::EvictionDriver* eviction = session_.cache().eviction()) c.pins = eviction->pins();
    c.tokens = session_.tokens();
    std::vector<Turn> turns;
    if (!conv_.system.empty()) turns.push_back({Turn::Role::System, conv_.system});
    for (const ChatMessage& m : conv_.messages)
      turns.push_back({m.role == "user" ? Turn::Role::User : Turn::Role::Model, m.content});
    // Each turn's span: where the conversation rendered up to it ends.
    Dialogue prefix;
    prefix.system = conv_.system;
    uint32_t begin = 0;
    for (size_t i = 0; i < turns.size(); ++i) {
      if (turns[i].role != Turn::Role::System) prefix.messages.push_back(conv_.messages[prefix.messages.size()]);
      const ChatPrompt rendered = format_.render(prefix, false);
      const size_t end = std::min(rendered.text.empty() ? 0 : format_.encode_whole(rendered).size(), c.tokens.size());
      turns[i].first_token = begin;
      turns[i].n_tokens = static_cast<uint32_t>(end > begin ? end - begin : 0);
      begin = std::max<uint32_t>(begin, static_cast<uint32_t>(end));
    }
    c.turns = std::move(turns);
    return c;
  }

  // After a device loss: the conversation in <cache>/recovered-chat-TIME.json,
  // and the line that says how to continue it.
  std::string save_for_recovery() const {
    const std::string path = fmt::format("{}/recovered-chat-{}.json", cache_dir(),
                                         std::chrono::system_clock::now().time_since_epoch().count() / 1000000);
    try {
      write_file_atomically(path, write_conversation_json(to_conversation()));
    } catch (const std::exception& e) {
      return fmt::format("the conversation could not be saved: {}", e.what());
    }
    return fmt::format("the conversation is saved in {}: start kvscope chat again and type /load {}", path, path);
  }

  void save(const std::string& path) {
    try {
      write_file_atomically(path, write_conversation_json(to_conversation()));
    } catch (const std::exception& e) {
      return note(fmt::format("[not saved: {}]", e.what()));
    }
    note(fmt::format("[saved {} messages to {}]", conv_.messages.size(), path));
  }

  // A file written by /save or by the window (app/core/conversation.h); files
  // of earlier versions of /save ({"system", "messages": [{role, content}]})
  // are read too. Throws std::runtime_error naming the file and what is wrong.
  static Dialogue parse_conversation(const std::string& path, const std::string& text, std::string& template_name,
                                         std::string& model) {
    const json j = json::parse(text, nullptr, false);
    if (!j.is_discarded() && j.is_object() && !j.contains("kvscope_conversation") && j.contains("messages"))
      return parse_legacy_conversation(path, j, template_name, model);
    const kvscope::Conversation saved = read_conversation_json(text, path);
    template_name = saved.chat_template;
    model = saved.model;
    Dialogue conv;
    for (const Turn& t : saved.turns) {
      if (t.role == Turn::Role::System) conv.system = t.text;
      else conv.messages.push_back({t.role == Turn::Role::User ? "user" : "assistant", t.text});
    }
    return conv;
  }

  static Dialogue parse_legacy_conversation(const std::string& path, const json& j, std::string& template_name,
                                                std::string& model) {
    Dialogue conv;
    template_name = j.value("template", "");
    model = j.value("model", "");
    if (j.contains("system")) {
      if (!j["system"].is_string()) throw std::runtime_error(path + ": \"system\" must be a string");
      conv.system = j["system"].get<std::string>();
    }
    if (!j["messages"].is_array())
      throw std::runtime_error(path + ": \"messages\" must be an array of {role, content}");
    for (size_t i = 0; i < j["messages"].size(); ++i) {
      const json& m = j["messages"][i];
      const bool ok = m.is_object() && m.contains("role") && m["role"].is_string() && m.contains("content") &&
                      m["content"].is_string() && (m["role"] == "user" || m["role"] == "assistant");
      if (!ok)
        throw std::runtime_error(fmt::format(
            "{}: messages[{}] must be {{\"role\": \"user\" or \"assistant\", \"content\": string}}", path, i));
      conv.messages.push_back({m["role"].get<std::string>(), m["content"].get<std::string>()});
    }
    return conv;
  }

  void load(const std::string& path) {
    Dialogue conv;
    std::string template_name, model;
    try {
      std::ifstream in(path, std::ios::binary);
      if (!in) throw std::runtime_error(fmt::format("cannot read {}: {}", path, std::strerror(errno)));
      std::stringstream text;
      text << in.rdbuf();
      conv = parse_conversation(path, text.str(), template_name, model);
    } catch (const std::exception& e) {
      return note(fmt::format("[not loaded: {}]", e.what()));
    }
    if (!template_name.empty() && template_name != format_.name())
      note(fmt::format("[{} was saved with template {}; continuing with {}]", path, template_name, format_.name()));
    if (!model.empty() && model != engine_.file().path())
      note(fmt::format("[{} was saved with model {}; continuing with {}]", path, model, engine_.file().path()));

    // Re-feed the conversation so that the next turn continues it.
    const ChatPrompt prompt = format_.render(conv, /*add_generation_prompt=*/false);
    std::vector<int32_t> tokens;
    if (!prompt.text.empty()) tokens = format_.encode_whole(prompt);
    if (!session_.evicting() && tokens.size() >= capacity()) {
      return note(fmt::format("[not loaded: {}: {}]", path,
                              kv::ContextFull(0, static_cast<uint32_t>(tokens.size()), capacity()).what()));
    }
    reset();
    conv_ = std::move(conv);
    start_policy(tokens);
    if (!tokens.empty()) {
      session_.generate(tokens, 0, sampler_);
      fed_text_ = prompt.text;
    }
    note(fmt::format("[loaded {} messages from {} · {}/{} tokens]", conv_.messages.size(), path, used(), capacity()));
  }
};

}  // namespace

int chat(const ChatOptions& o) {
  if (o.n_predict <= 0) throw std::invalid_argument("-n must be >= 1 (tokens per reply)");
  Engine engine(engine_options(o.m));
  // Every cache flag (--spill included) through the one spec and validator: a
  // bad one is an error before the first turn, worded as `run` words it.
  Session session(engine, cache_spec_from_options(o.m), o.m.n_ctx);
  SamplerConfig sc;
  sc.temperature = o.temp;
  sc.top_k = o.top_k;
  sc.top_p = o.top_p;
  sc.seed = o.seed_set ? o.seed : static_cast<uint64_t>(std::chrono::system_clock::now().time_since_epoch().count());
  Sampler sampler(sc);

  std::optional<ChatTemplate> tmpl;
  const bool has_template = !engine.file().get_string_or("tokenizer.chat_template", "").empty();
  if (has_template || !o.chat_template.empty()) {
    tmpl = chat_template_for(engine.file(), o.chat_template);
    if (tmpl->fallback) std::fprintf(stderr, "warning: %s\n", tmpl->warning.c_str());
    std::fprintf(stderr, "[chat template %s · context %u tokens · /reset /save FILE /load FILE /quit]\n",
                 std::string(chat_family_name(tmpl->family)).c_str(), session.cache().capacity());
  } else {
    const std::string model_name = std::filesystem::path(engine.file().path()).stem().string();
    std::fprintf(stderr,
                 "%s has no chat template: each line continues the story (--chat-template NAME to force one)\n",
                 model_name.c_str());
  }

  SigintHandler sigint;
  Chat chat(o, engine, session, sampler, PromptFormat(engine.tokenizer(), std::move(tmpl)));
  chat.run();
  write_trace(session, o.m);
  return 0;
}

}  // namespace kvscope::cli
