#include "app/core/worker.h"

#include <fmt/format.h>

#include <algorithm>
#include <chrono>

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
  row.probs.assign(size_t{n_head} * row.n_pos, 0.0f);
  row.slot_of_position.assign(row.n_pos, -1);
  const uint32_t heads_per_kv = std::max(1u, n_head / n_kv_head);  // grouped-query attention
  for (uint32_t kv_head = 0; kv_head < n_kv_head; ++kv_head) {
    const kv::SlotTable& table = cache.table(layer, kv_head);
    for (uint32_t slot = 0; slot < table.capacity(); ++slot) {
      const int32_t position = table.position(slot);
      if (position < 0 || static_cast<uint32_t>(position) > step) continue;
      if (kv_head == 0) row.slot_of_position[position] = static_cast<int32_t>(slot);
      for (uint32_t h = kv_head * heads_per_kv; h < (kv_head + 1) * heads_per_kv && h < n_head; ++h)
        row.probs[size_t{h} * row.n_pos + position] = probs_by_slot[size_t{h} * capacity + slot];
    }
  }
  return row;
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

void SessionWorker::generate(const GenerateRequest& request) {
  {
    std::lock_guard lock(mutex_);
    queue_.push_back({Command::Kind::Generate, request});
  }
  wake_.notify_all();
}

void SessionWorker::regenerate(uint32_t max_new, const SamplerConfig& sampling) {
  GenerateRequest request;
  request.max_new = max_new;
  request.sampling = sampling;
  {
    std::lock_guard lock(mutex_);
    queue_.push_back({Command::Kind::Regenerate, request});
  }
  wake_.notify_all();
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
    for (uint32_t layer = 0; layer < shape.n_layer; ++layer) {
      LayerOccupancy& o = working_.layers[layer];
      o.capacity = cache.capacity();
      o.live_min = UINT32_MAX;
      o.live_max = 0;
      for (uint32_t head = 0; head < shape.n_kv_head; ++head) {
        const uint32_t live = cache.table(layer, head).live();
        o.live_min = std::min(o.live_min, live);
        o.live_max = std::max(o.live_max, live);
      }
    }
    working_.layers_holding.assign(working_.tokens.size(), 0);
    working_.written_positions = 0;
    for (uint32_t layer = 0; layer < shape.n_layer; ++layer)
      for (int32_t position : cache.table(layer, 0).positions()) {
        if (position < 0) continue;
        working_.written_positions = std::max(working_.written_positions, static_cast<uint32_t>(position) + 1);
        if (static_cast<size_t>(position) < working_.layers_holding.size()) working_.layers_holding[position]++;
      }
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
  GpuModel& model = engine_->model();
  if (model.attention_probe() != probes_wanted_) model.set_attention_probe(probes_wanted_);
}

void SessionWorker::capture_probes() {
  const GpuModel& model = engine_->model();
  if (!model.attention_probe() || model.attention_probe_position() < 0) return;
  const uint32_t step = static_cast<uint32_t>(model.attention_probe_position());
  if (!working_.probes.empty() && working_.probes.back()->step == step) return;  // kept already
  const uint32_t n_head = engine_->config().n_head;
  for (uint32_t layer = 0; layer < engine_->config().n_layer; ++layer)
    working_.probes.push_back(std::make_shared<const ProbeRow>(
        probe_row_from_slots(session_->cache(), layer, n_head, step, model.attention_probe_row(layer))));
  while (working_.probes.size() > kProbeSteps * engine_->config().n_layer) working_.probes.pop_front();
}

void SessionWorker::run() {
  try {
    EngineHold hold(*turns_);
    session_ = std::make_unique<Session>(*engine_, working_.spec.config(engine_->n_ctx()));
    working_.state = SessionSnapshot::State::Idle;
  } catch (const std::exception& e) {
    working_.state = SessionSnapshot::State::Error;
    working_.error = fmt::format("session {} ({}): {}", working_.name, working_.spec.name(), e.what());
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
    if (session_) {
      working_.error.clear();
      try {
        execute(command);
      } catch (const std::exception& e) {
        working_.error = e.what();
      }
      for (Turn& t : working_.turns) t.streaming = false;
      // The context is what the session holds, whatever happened above.
      working_.tokens = session_->tokens();
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

void SessionWorker::execute(const Command& command) {
  const Tokenizer& tokenizer = engine_->tokenizer();
  switch (command.kind) {
    case Command::Kind::Reset: {
      EngineHold hold(*turns_);
      session_->reset();
      working_.turns.clear();
      working_.probes.clear();
      working_.last_tok_s = working_.last_ttft_seconds = 0;
      return;
    }
    case Command::Kind::Generate: {
      if (command.request.text.empty()) throw std::invalid_argument("type a prompt first");
      const bool first = session_->tokens().empty();
      std::vector<int32_t> ids = tokenizer.encode(command.request.text, first);
      Turn user;
      user.role = Turn::Role::User;
      user.text = command.request.text;
      user.first_token = static_cast<uint32_t>(session_->tokens().size());
      user.n_tokens = static_cast<uint32_t>(ids.size());
      working_.turns.push_back(std::move(user));
      generate_reply(ids, command.request);
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
      generate_reply(context, command.request);
      return;
    }
  }
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
  publish();

  Sampler sampler(request.sampling);
  Clock::time_point first_token_time{};
  EngineHold hold(*turns_);
  apply_probe_setting();
  session_->generate(prompt, request.max_new, sampler, [&](int32_t id, const std::string& text) {
    capture_probes();  // the step that produced this token, before another session's runs
    Turn& turn = working_.turns.back();
    if (stop_requested_) {
      turn.stopped = true;
      return false;  // the token is not in the cache: do not show it either
    }
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
    return true;   // a stop asked for meanwhile ends the reply at the next token
  });
  capture_probes();  // the last step's rows (no token callback follows it)
}

}  // namespace kvscope
