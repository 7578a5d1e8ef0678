#include "app/core/worker.h"

#include "gpu/context.h"

#include <fmt/format.h>

#include <nlohmann/json.hpp>

#include <algorithm>
#include <chrono>
#include <cmath>

namespace kvscope {

// ================================================================ EngineTurns

void EngineTurns::lock() {
  std::unique_lock lock(mutex_);
  const uint64_t ticket = next_ticket_++;
  turn_changed_.wait(lock, [&] { return serving_ == ticket; });
}

void EngineTurns::unlock() {
  {
    std::lock_guard lock(mutex_);
    ++serving_;
  }
  turn_changed_.notify_all();
}

namespace {

// Holds the engine for a scope; yield() lets every waiting session run one
// step before this one continues.
class EngineHold {
 public:
  explicit EngineHold(EngineTurns& turns) : turns_(&turns) { turns_->lock(); }
  ~EngineHold() { turns_->unlock(); }
  EngineHold(const EngineHold&) = delete;
  EngineHold& operator=(const EngineHold&) = delete;
  void yield() {
    turns_->unlock();
    turns_->lock();
  }

 private:
  EngineTurns* turns_;
};

using Clock = std::chrono::steady_clock;

double seconds_between(Clock::time_point a, Clock::time_point b) {
  return std::chrono::duration<double>(b - a).count();
}

// Appends `s` replacing a UTF-8 "▁" (U+2581) with a space.
std::string spaces_for_underscores(const std::string& s) {
  std::string out;
  for (size_t i = 0; i < s.size();) {
    if (s.compare(i, 3, "\xE2\x96\x81") == 0) {
      out += ' ';
      i += 3;
    } else {
      out += s[i++];
    }
  }
  return out;
}

}  // namespace

std::string token_display_text(const Tokenizer& tokenizer, int32_t id) {
  if (id < 0 || id >= tokenizer.n_vocab()) return "?";
  const TokenType type = tokenizer.type(id);
  if (type == TokenType::Control) return tokenizer.piece(id);  // <s>, </s>
  if (type == TokenType::Byte) {
    const std::string bytes = tokenizer.token_bytes(id);
    if (bytes == "\n") return "\xE2\x86\xB5";  // ↵
    if (bytes.size() == 1 && static_cast<unsigned char>(bytes[0]) < 0x80) return bytes;
    return tokenizer.piece(id);  // a part of a multi-byte character: <0xE2>
  }
  return spaces_for_underscores(tokenizer.piece(id));
}

ProbeRow probe_row_from_slots(const kv::KvCache& cache, uint32_t layer, uint32_t n_head, uint32_t step,
                              std::span<const float> probs_by_slot) {
  const uint32_t capacity = cache.capacity();
  const uint32_t n_kv_head = cache.shape().n_kv_head;
  if (probs_by_slot.size() < size_t{n_head} * capacity)
    throw std::invalid_argument(fmt::format("attention probe of layer {}: {} values, expected {} heads x {} slots",
                                            layer, probs_by_slot.size(), n_head, capacity));
  ProbeRow row;
  row.step = step;
  row.layer = layer;
  row.n_head = n_head;
  row.n_pos = step + 1;
  // The union of what the kv heads hold (per-head policies differ), sorted.
  for (uint32_t kv_head = 0; kv_head < n_kv_head; ++kv_head)
    for (int32_t position : cache.table(layer, kv_head).positions())
      if (position >= 0 && static_cast<uint32_t>(position) <= step) row.positions.push_back(position);
  std::sort(row.positions.begin(), row.positions.end());
  row.positions.erase(std::unique(row.positions.begin(), row.positions.end()), row.positions.end());
  const size_t n = row.positions.size();
  row.probs.assign(size_t{n_head} * n, 0.0f);
  row.slots.assign(n, -1);
  const uint32_t heads_per_kv = std::max(1u, n_head / n_kv_head);  // grouped-query attention
  for (uint32_t kv_head = 0; kv_head < n_kv_head; ++kv_head) {
    const kv::SlotTable& table = cache.table(layer, kv_head);
    for (uint32_t slot = 0; slot < table.capacity(); ++slot) {
      const int32_t position = table.position(slot);
      if (position < 0 || static_cast<uint32_t>(position) > step) continue;
      const size_t k = static_cast<size_t>(row.index_of(static_cast<uint32_t>(position)));
      if (kv_head == 0) row.slots[k] = static_cast<int32_t>(slot);
      for (uint32_t h = kv_head * heads_per_kv; h < (kv_head + 1) * heads_per_kv && h < n_head; ++h)
        row.probs[size_t{h} * n + k] = probs_by_slot[size_t{h} * capacity + slot];
    }
  }
  return row;
}

int ProbeRow::index_of(uint32_t position) const {
  const auto it = std::lower_bound(positions.begin(), positions.end(), static_cast<int32_t>(position));
  return it != positions.end() && *it == static_cast<int32_t>(position) ? static_cast<int>(it - positions.begin()) : -1;
}

float ProbeRow::prob(int head, uint32_t position) const {
  const int k = index_of(position);
  if (k < 0) return 0;
  const size_t n = positions.size();
  if (head >= 0) return head < static_cast<int>(n_head) ? probs[size_t(head) * n + k] : 0;
  float sum = 0;
  for (uint32_t h = 0; h < n_head; ++h) sum += probs[size_t{h} * n + k];
  return sum / std::max(1u, n_head);
}

int32_t ProbeRow::slot_of(uint32_t position) const {
  const int k = index_of(position);
  return k < 0 ? -1 : slots[k];
}

// ============================================================== SessionWorker

SessionWorker::SessionWorker(Engine& engine, EngineTurns& turns, std::string name, const CacheSpec& spec)
    : engine_(&engine), turns_(&turns) {
  working_.name = std::move(name);
  working_.spec = spec;
  working_.capacity = engine.n_ctx();
  working_.n_kv_head = engine.config().n_kv_head;
  working_.probes_supported = true;
  published_ = std::make_shared<SessionSnapshot>(working_);
  thread_ = std::thread([this] { run(); });
}

SessionWorker::~SessionWorker() {
  {
    std::lock_guard lock(mutex_);
    quit_ = true;
    queue_.clear();
  }
  stop_requested_ = true;
  wake_.notify_all();
  thread_.join();
  // The session's cache is freed here, on this thread, after the worker has
  // stopped using the device.
  if (session_) {
    EngineHold hold(*turns_);
    session_.reset();
  }
}

void SessionWorker::push(Command command) {
  {
    std::lock_guard lock(mutex_);
    queue_.push_back(std::move(command));
  }
  wake_.notify_all();
}

void SessionWorker::generate(const GenerateRequest& request) { push({Command::Kind::Generate, request}); }

void SessionWorker::regenerate(uint32_t max_new, const SamplerConfig& sampling) {
  GenerateRequest request;
  request.max_new = max_new;
  request.sampling = sampling;
  push({Command::Kind::Regenerate, request});
}

void SessionWorker::edit(size_t turn_index, const std::string& text, const GenerateRequest& request) {
  Command command{Command::Kind::Edit, request};
  command.request.text = text;
  command.turn_index = turn_index;
  push(std::move(command));
}

void SessionWorker::set_pins(const kv::PinnedSpans& pins) {
  Command command{Command::Kind::Pins, {}};
  command.pins = pins;
  push(std::move(command));
}

void SessionWorker::load(const Conversation& conversation, std::optional<ChatTemplate> chat_template) {
  Command command{Command::Kind::Load, {}};
  command.request.chat_template = std::move(chat_template);
  command.conversation = conversation;
  push(std::move(command));
}

void SessionWorker::stop() {
  std::lock_guard lock(mutex_);
  queue_.clear();  // a stop also cancels what was queued behind the reply
  stop_requested_ = true;
}

void SessionWorker::reset() {
  {
    std::lock_guard lock(mutex_);
    queue_.clear();
    queue_.push_back({Command::Kind::Reset, {}});
    stop_requested_ = true;
  }
  wake_.notify_all();
}

std::shared_ptr<const SessionSnapshot> SessionWorker::snapshot() const {
  std::lock_guard lock(mutex_);
  return published_;
}

bool SessionWorker::busy() const {
  std::lock_guard lock(mutex_);
  return running_ || !queue_.empty();
}

void SessionWorker::publish() {
  working_.version++;
  if (session_) {
    const kv::KvCache& cache = session_->cache();
    const kv::CacheShape& shape = cache.shape();
    working_.layers.resize(shape.n_layer);
    working_.head_live.assign(size_t{shape.n_layer} * shape.n_kv_head, 0);
    working_.head_budget.assign(size_t{shape.n_layer} * shape.n_kv_head, 0);
    working_.cache_bytes_used = 0;
    for (uint32_t layer = 0; layer < shape.n_layer; ++layer) {
      LayerOccupancy& o = working_.layers[layer];
      o.capacity = cache.layer_slots(layer);
      o.window = shape.window(layer);
      o.live_min = UINT32_MAX;
      o.live_max = 0;
      for (uint32_t head = 0; head < shape.n_kv_head; ++head) {
        const uint32_t live = cache.table(layer, head).live();
        working_.head_live[size_t{layer} * shape.n_kv_head + head] = live;
        if (const kv::EvictionDriver* eviction = cache.eviction(); eviction && o.window == 0)
          working_.head_budget[size_t{layer} * shape.n_kv_head + head] =
              std::min(eviction->policy().budget(layer, head), cache.capacity());
        o.live_min = std::min(o.live_min, live);
        o.live_max = std::max(o.live_max, live);
        const kv::TensorLayout &k = cache.key_layout(layer), &v = cache.value_layout(layer);
        o.slot_bytes = double(k.bytes() + v.bytes()) / shape.n_kv_head / o.capacity;
        working_.cache_bytes_used += o.slot_bytes * live;
      }
    }
    working_.layers_holding.assign(working_.tokens.size(), 0);
    working_.written_positions = 0;
    working_.global_layers = 0;
    for (uint32_t layer = 0; layer < shape.n_layer; ++layer) {
      const bool global = shape.window(layer) == 0;
      working_.global_layers += global;
      for (int32_t position : cache.table(layer, 0).positions()) {
        if (position < 0) continue;
        working_.written_positions = std::max(working_.written_positions, static_cast<uint32_t>(position) + 1);
        if (global && static_cast<size_t>(position) < working_.layers_holding.size())
          working_.layers_holding[position]++;
      }
    }
    if (const kv::EvictionDriver* eviction = cache.eviction()) {
      const kv::EventLog* log = &eviction->log();
      if (log->recorded_events() != published_log_events_) {
        working_.log = std::make_shared<const kv::EventLog>(*log);  // shares its full chunks
        published_log_events_ = log->recorded_events();
      }
    } else {
      working_.log.reset();
      published_log_events_ = SIZE_MAX;
    }
    working_.pins = cache.eviction() ? cache.eviction()->pins() : kv::PinnedSpans{};
    working_.used_tokens = cache.tokens();
    working_.capacity = cache.capacity();
    working_.cache_bytes_full = cache.device_bytes();
    working_.bytes_per_token = cache.bytes_per_token();
  }
  auto snapshot = std::make_shared<const SessionSnapshot>(working_);
  std::lock_guard lock(mutex_);
  published_ = std::move(snapshot);
}

void SessionWorker::apply_probe_setting() {
  session_->attention_probe().on = probes_wanted_ && (!alternate_probes_ || probe_steps_++ % 2 == 0);
}

void SessionWorker::capture_probes() {
  const AttentionProbe& probe = session_->attention_probe();
  if (!probe.on || probe.position() < 0) return;
  const uint32_t step = static_cast<uint32_t>(probe.position());
  if (!working_.probes.empty() && working_.probes.back()->step == step) return;  // kept already
  const uint32_t n_head = engine_->config().n_head;
  for (uint32_t layer = 0; layer < engine_->config().n_layer; ++layer)
    working_.probes.push_back(std::make_shared<const ProbeRow>(
        probe_row_from_slots(session_->cache(), layer, n_head, step, probe.row(layer))));
  while (working_.probes.size() > kProbeSteps * engine_->config().n_layer) working_.probes.pop_front();
}

void SessionWorker::run() {
  try {
    EngineHold hold(*turns_);
    // The cache exactly as specified, or no session at all: a spec the model
    // cannot run (a budget too small for its recent window, ...) is an error
    // in the session's banner, never a session that runs without its policy.
    session_ = std::make_unique<Session>(*engine_, working_.spec);
    working_.state = SessionSnapshot::State::Idle;
  } catch (const std::exception& e) {
    working_.state = SessionSnapshot::State::Error;
    working_.error = fmt::format("session {} ({}): {}", working_.name, working_.spec.name(), e.what());
    working_.device_lost = dynamic_cast<const gpu::DeviceLost*>(&e) != nullptr;
  }
  publish();

  for (;;) {
    Command command;
    {
      std::unique_lock lock(mutex_);
      wake_.wait(lock, [&] { return quit_ || !queue_.empty(); });
      if (quit_) return;
      command = std::move(queue_.front());
      queue_.pop_front();
      running_ = true;
      stop_requested_ = false;
    }
    if (!session_ && command.kind == Command::Kind::Load) {
      // No cache (the spec or the device refused it): the conversation is
      // still shown and can be saved, and a reload carries it on.
      working_.turns = command.conversation.turns;
      working_.tokens = command.conversation.tokens;
      working_.pieces.clear();
      for (int32_t id : working_.tokens) working_.pieces.push_back(token_display_text(engine_->tokenizer(), id));
      publish();
    }
    if (session_) {
      working_.error.clear();
      try {
        execute(command);
      } catch (const gpu::DeviceLost& e) {
        working_.error = e.what();
        working_.device_lost = true;
      } catch (const std::exception& e) {
        working_.error = e.what();
      }
      for (Turn& t : working_.turns) t.streaming = false;
      // The context is what the session holds, whatever happened above; a
      // reply cut short by an error spans only the tokens that were written.
      working_.tokens = session_->tokens();
      for (Turn& t : working_.turns) {
        const auto size = static_cast<uint32_t>(working_.tokens.size());
        t.first_token = std::min(t.first_token, size);
        t.n_tokens = std::min(t.n_tokens, size - t.first_token);
      }
      working_.pieces.resize(working_.tokens.size());
      for (size_t i = 0; i < working_.tokens.size(); ++i)
        working_.pieces[i] = token_display_text(engine_->tokenizer(), working_.tokens[i]);
      working_.state = working_.error.empty() ? SessionSnapshot::State::Idle : SessionSnapshot::State::Error;
      publish();
    }
    std::lock_guard lock(mutex_);
    running_ = false;
  }
}

namespace {
// What a cache that holds `turns` stands for, rendered: up to the reply's
// generation prompt and the reply's text when the last turn is a reply (its
// end-of-turn markup was never fed), else the conversation as it stands.
std::string fed_text_of(const PromptFormat& format, std::span<const Turn> turns) {
  if (!turns.empty() && turns.back().role == Turn::Role::Model)
    return format.render(dialogue_of(turns.first(turns.size() - 1)), true).text + turns.back().text;
  return format.render(dialogue_of(turns), false).text;
}
}  // namespace

void SessionWorker::execute(const Command& command) {
  switch (command.kind) {
    case Command::Kind::Reset: {
      EngineHold hold(*turns_);
      fed_text_.reset();
      if (!extra_pins_.empty() || !system_pins_.empty()) {  // a new conversation: its system prompt is pinned anew
        system_pins_ = {};
        apply_policy({});
      }
      session_->reset();
      working_.turns.clear();
      working_.probes.clear();
      working_.last_tok_s = working_.last_ttft_seconds = 0;
      return;
    }
    case Command::Kind::Generate: {
      if (command.request.text.empty()) throw std::invalid_argument("type a prompt first");
      if (working_.turns.empty() && !command.request.system.empty()) {
        // The system prompt opens the conversation (pinned when the cache
        // has a policy: send_message).
        Turn system;
        system.role = Turn::Role::System;
        system.text = command.request.system;
        working_.turns.push_back(std::move(system));
        working_.system_prompt = command.request.system;
      }
      send_message(command.request.text, command.request);
      return;
    }
    case Command::Kind::Edit: {
      if (command.turn_index >= working_.turns.size() || working_.turns[command.turn_index].role != Turn::Role::User)
        throw std::invalid_argument("only your own messages can be edited");
      if (command.request.text.empty()) throw std::invalid_argument("the edited message is empty");
      working_.turns.erase(working_.turns.begin() + static_cast<std::ptrdiff_t>(command.turn_index),
                           working_.turns.end());
      fed_text_.reset();  // what follows the edit is gone: the conversation is read again
      working_.probes.clear();
      send_message(command.request.text, command.request);
      return;
    }
    case Command::Kind::Pins: {
      if (working_.spec.policy.empty())
        throw std::invalid_argument(fmt::format(
            "session {} keeps every token (no eviction policy), so there is nothing to pin against; add a "
            "session with a policy, e.g. \"f16 + h2o:budget=64\"",
            working_.name));
      const std::vector<int32_t> context = session_->tokens();
      EngineHold hold(*turns_);
      apply_policy(command.pins);
      working_.probes.clear();
      refill(context);
      return;
    }
    case Command::Kind::Load: {
      const Conversation& c = command.conversation;
      EngineHold hold(*turns_);
      session_->reset();
      system_pins_ = {};  // the saved pins hold the system prompt's
      apply_policy(working_.spec.policy.empty() && working_.spec.on_full.empty() ? kv::PinnedSpans{} : c.pins);
      working_.probes.clear();
      working_.steps.clear();
      working_.turns = c.turns;
      working_.system_prompt.clear();
      for (const Turn& t : c.turns)
        if (t.role == Turn::Role::System) working_.system_prompt = t.text;
      refill(c.tokens);
      // The saved tokens are the conversation as its format rendered it: the
      // next message continues them (plan_feed).
      chat_template_ = command.request.chat_template;
      fed_text_ = fed_text_of(PromptFormat(engine_->tokenizer(), chat_template_), working_.turns);
      return;
    }
    case Command::Kind::Regenerate: {
      // The context up to the last reply is run again from an empty cache:
      // the session keeps no per-token undo, and a prefill is cheap next to
      // the reply.
      auto last_model = std::find_if(working_.turns.rbegin(), working_.turns.rend(),
                                     [](const Turn& t) { return t.role == Turn::Role::Model; });
      if (last_model == working_.turns.rend()) throw std::invalid_argument("there is no reply to regenerate");
      std::vector<int32_t> context(session_->tokens().begin(),
                                   session_->tokens().begin() + last_model->first_token);
      working_.turns.erase(std::next(last_model).base(), working_.turns.end());
      {
        EngineHold hold(*turns_);
        session_->reset();
      }
      working_.probes.clear();
      GenerateRequest request = command.request;
      request.chat_template = chat_template_;  // the conversation's format, as its last message used
      const PromptFormat format(engine_->tokenizer(), chat_template_);
      fed_text_.reset();
      generate_reply(context, request);
      fed_text_ = fed_text_of(format, working_.turns);
      return;
    }
  }
}


void SessionWorker::send_message(const std::string& text, const GenerateRequest& request) {
  chat_template_ = request.chat_template;
  const PromptFormat format(engine_->tokenizer(), chat_template_);
  Dialogue dialogue = dialogue_of(working_.turns);
  const ChatPrompt before = format.render(dialogue, false);
  dialogue.messages.push_back({"user", text});
  const ChatPrompt prompt = format.render(dialogue, true);
  // The one prefix-reuse rule (app/core/conversation.h), as kvscope chat's:
  // the new message's tokens when the cache holds the conversation so far,
  // else the whole conversation from an empty cache.
  FeedPlan feed = plan_feed(format, prompt, fed_text_, session_->tokens().size());
  uint32_t first_token = static_cast<uint32_t>(session_->tokens().size());
  if (feed.from_scratch) {
    EngineHold hold(*turns_);
    // The system prompt is pinned whenever the cache has a policy, by the
    // one pinning rule (the same as kvscope chat's --pin-system).
    const bool has_policy = !working_.spec.policy.empty() || !working_.spec.on_full.empty();
    const kv::PinnedSpans system_pins = has_policy ? format.system_pins(dialogue, feed.tokens) : kv::PinnedSpans{};
    if (system_pins != system_pins_ || !session_->tokens().empty()) {
      system_pins_ = system_pins;
      apply_policy(extra_pins_);  // resets the session
    }
    session_->reset();
    // Where the earlier turns end in the whole encoding (the new message begins).
    first_token = before.text.empty() ? 0u
                                      : static_cast<uint32_t>(std::min(format.encode_whole(before).size(),
                                                                       feed.tokens.size()));
    for (Turn& t : working_.turns)
      if (t.role == Turn::Role::System) t.first_token = 0, t.n_tokens = system_pins.empty() ? first_token
                                                                                           : uint32_t(system_pins.spans().front().end);
  }
  Turn user;
  user.role = Turn::Role::User;
  user.text = text;
  user.first_token = first_token;
  user.n_tokens = static_cast<uint32_t>(session_->tokens().size() + feed.tokens.size() - first_token);
  working_.turns.push_back(std::move(user));
  fed_text_.reset();  // until the reply is in the cache
  generate_reply(feed.tokens, request);
  fed_text_ = prompt.text + working_.turns.back().text;
}

void SessionWorker::apply_policy(const kv::PinnedSpans& pins) {
  extra_pins_ = pins;
  kv::PinnedSpans all = extra_pins_;
  for (const kv::PinnedSpan& span : system_pins_.spans()) all.add(span);
  session_->set_extra_pins(all);
}

void SessionWorker::refill(const std::vector<int32_t>& ids) {
  if (ids.empty()) return;
  // In pieces, handing the engine to the other sessions between them (a
  // 32K-token conversation loading in one session must not stop the others'
  // replies for minutes), with the progress in the snapshot.
  constexpr size_t kPiece = 512;
  working_.prefill_total = static_cast<uint32_t>(ids.size());
  for (size_t i = 0; i < ids.size(); i += kPiece) {
    if (i > 0) {
      working_.state = SessionSnapshot::State::Prefill;
      working_.prefill_done = static_cast<uint32_t>(i);
      publish();
      turns_->unlock();  // the caller holds the engine; this is EngineHold::yield
      turns_->lock();
    }
    session_->feed({ids.begin() + static_cast<std::ptrdiff_t>(i),
                    ids.begin() + static_cast<std::ptrdiff_t>(std::min(ids.size(), i + kPiece))});
  }
  working_.prefill_done = working_.prefill_total = 0;
  session_->end_prefill();
}

std::shared_ptr<const StepRecord> SessionWorker::record_step(uint32_t index, int32_t token,
                                                             std::span<const float> logits) {
  auto r = std::make_shared<StepRecord>();
  r->index = index;
  r->token = token;
  const auto max_it = std::max_element(logits.begin(), logits.end());
  r->argmax = static_cast<int32_t>(max_it - logits.begin());
  const float max = *max_it;
  double sum = 0;
  for (float l : logits) sum += std::exp(static_cast<double>(l - max));
  const float log_sum = static_cast<float>(std::log(sum));
  r->log_probs.resize(logits.size());
  for (size_t i = 0; i < logits.size(); ++i) r->log_probs[i] = logits[i] - max - log_sum;

  const kv::KvCache& cache = session_->cache();
  r->n_pos = static_cast<uint32_t>(session_->tokens().size());
  r->held = held_positions(cache, r->n_pos);
  const AttentionProbe& probe = session_->attention_probe();
  if (probe.on && probe.position() + 1 == static_cast<int32_t>(r->n_pos))
    r->attention = probe_attention_rows(probe, engine_->config(), cache, r->n_pos);
  return r;
}

void SessionWorker::recorded_reply(const std::vector<int32_t>& prompt, const GenerateRequest& request) {
  const Clock::time_point start = Clock::now();
  const Tokenizer& tokenizer = engine_->tokenizer();
  const uint32_t n_vocab = engine_->config().n_vocab;
  const uint32_t capacity = session_->cache().capacity();
  Sampler sampler(request.sampling);
  Detokenizer detok(tokenizer);
  Clock::time_point first_token_time{};
  working_.steps.clear();
  EngineHold hold(*turns_);
  apply_probe_setting();
  std::vector<float> logits = session_->feed(prompt);
  if (logits.size() < n_vocab) throw std::invalid_argument("a recorded reply needs a prompt to continue");
  session_->end_prefill();
  capture_probes();
  const size_t n = request.forced ? request.forced->size() : request.max_new;
  for (size_t i = 0; i < n; ++i) {
    const std::span<const float> last(logits.data() + logits.size() - n_vocab, n_vocab);
    const int32_t token = request.forced ? (*request.forced)[i] : sampler.sample(last);
    Turn& turn = working_.turns.back();
    if (stop_requested_) {
      turn.stopped = true;
      break;
    }
    if (!request.forced && token == tokenizer.eos()) break;
    working_.steps.push_back(record_step(static_cast<uint32_t>(i), token, last));
    const Clock::time_point now = Clock::now();
    if (turn.n_tokens == 0) {
      first_token_time = now;
      turn.ttft_seconds = working_.last_ttft_seconds = seconds_between(start, now);
    }
    turn.n_tokens++;
    if (turn.n_tokens > 1) turn.tok_s = working_.last_tok_s = (turn.n_tokens - 1) / seconds_between(first_token_time, now);
    working_.tokens.push_back(token);
    working_.pieces.push_back(token_display_text(tokenizer, token));
    turn.text += detok.push(token);
    working_.state = SessionSnapshot::State::Generating;
    // The context is full: stop, as Session::generate does.
    if (!session_->evicting() && session_->tokens().size() >= capacity) break;
    logits = session_->logits_all({token});
    capture_probes();
    publish();
    hold.yield();
    apply_probe_setting();
  }
  working_.turns.back().text += detok.flush();
}

void SessionWorker::generate_reply(const std::vector<int32_t>& prompt, const GenerateRequest& request) {
  const Clock::time_point start = Clock::now();
  const Tokenizer& tokenizer = engine_->tokenizer();
  working_.state = SessionSnapshot::State::Prefill;
  working_.tokens = session_->tokens();
  working_.tokens.insert(working_.tokens.end(), prompt.begin(), prompt.end());
  working_.pieces.clear();
  for (int32_t id : working_.tokens) working_.pieces.push_back(token_display_text(tokenizer, id));
  Turn reply;
  reply.role = Turn::Role::Model;
  reply.streaming = true;
  reply.first_token = static_cast<uint32_t>(working_.tokens.size());
  working_.turns.push_back(reply);
  working_.prefill_total = static_cast<uint32_t>(prompt.size());
  publish();
  if (request.record || request.forced) {
    recorded_reply(prompt, request);
    return;
  }

  Sampler sampler(request.sampling);
  Clock::time_point first_token_time{};
  const std::vector<int32_t> end_of_turn =
      request.chat_template ? stop_token_ids(*request.chat_template, tokenizer) : std::vector<int32_t>{};
  EngineHold hold(*turns_);
  apply_probe_setting();
  Clock::time_point step_start{};  // after the last token's callback: the next forward pass begins
  session_->generate(prompt, request.max_new, sampler, [&](int32_t id, const std::string& text) {
    if (step_start != Clock::time_point{}) {
      const double seconds = seconds_between(step_start, Clock::now());
      if (session_->attention_probe().on)
        working_.probe_on_seconds += seconds, working_.probe_on_steps++;
      else
        working_.probe_off_seconds += seconds, working_.probe_off_steps++;
    }
    capture_probes();  // the step that produced this token, before another session's runs
    Turn& turn = working_.turns.back();
    if (stop_requested_) {
      turn.stopped = true;
      return false;  // the token is not in the cache: do not show it either
    }
    if (std::find(end_of_turn.begin(), end_of_turn.end(), id) != end_of_turn.end()) return false;  // end of the reply
    const Clock::time_point now = Clock::now();
    if (id >= 0) {
      if (turn.n_tokens == 0) {
        first_token_time = now;
        turn.ttft_seconds = seconds_between(start, now);
        working_.last_ttft_seconds = turn.ttft_seconds;
      }
      turn.n_tokens++;
      if (turn.n_tokens > 1) turn.tok_s = (turn.n_tokens - 1) / seconds_between(first_token_time, now);
      working_.last_tok_s = turn.tok_s;
      working_.tokens.push_back(id);
      working_.pieces.push_back(token_display_text(tokenizer, id));
    }
    turn.text += text;
    working_.state = SessionSnapshot::State::Generating;
    publish();
    hold.yield();  // other sessions on this engine run a step
    apply_probe_setting();
    step_start = Clock::now();
    return true;   // a stop asked for meanwhile ends the reply at the next token
  });
  capture_probes();  // the last step's rows (no token callback follows it)
}

}  // namespace kvscope
