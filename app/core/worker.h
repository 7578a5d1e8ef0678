// A Session driven from its own thread, for front ends that must never wait
// on the device (the GUI): commands go in (generate, stop, regenerate, reset),
// immutable snapshots come out (conversation, tokens, per-layer occupancy,
// cache bytes, timings, attention probe rows). Nothing here knows about
// windows or ImGui.
//
// Several workers may share one Engine (the weights are on the device once):
// GpuModel's activations and command buffer are shared, so their forward
// passes take turns through EngineTurns, handed over after every token so
// side-by-side sessions advance together.
#pragma once
#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <memory>
#include <mutex>
#include <optional>
#include <span>
#include <string>
#include <thread>
#include <vector>

#include "app/core/cache_spec.h"
#include "app/core/conversation.h"
#include "app/core/lost_attention.h"
#include "app/core/session.h"
#include "kv/event_log.h"
#include "kv/pins.h"
#include "models/chat_template.h"
#include "models/sampler.h"

namespace kvscope {

// A fair (first come, first served) lock: a session that releases the engine
// after a token and asks again goes behind the sessions already waiting.
class EngineTurns {
 public:
  void lock();
  void unlock();

 private:
  std::mutex mutex_;
  std::condition_variable turn_changed_;
  uint64_t next_ticket_ = 0, serving_ = 0;
};

// Occupancy of one layer: live slots over its kv heads (equal today; an
// evicting policy may keep different tokens per head), of the layer's slots.
// A sliding-window layer (gemma3's local layers) has its window and holds
// fewer slots than the context; policies leave it alone.
struct LayerOccupancy {
  uint32_t live_min = 0, live_max = 0, capacity = 0;
  uint32_t window = 0;  // 0: a global layer
  double slot_bytes = 0;  // device bytes of keys and values per slot of one kv head
};

// Attention of one decode step in one layer, over the positions the cache
// holds — at most its slots, however long the context: a row at token 32,000
// of a 256-slot cache is 256 entries per head, not 32,000.
struct ProbeRow {
  uint32_t step = 0;       // position of the query token
  uint32_t layer = 0;
  uint32_t n_head = 0, n_pos = 0;  // positions 0..n_pos-1 existed at this step
  std::vector<int32_t> positions;  // held by some kv head, ascending
  std::vector<float> probs;        // [n_head][positions.size()]; 0 where the head's kv head does not hold it
  std::vector<int32_t> slots;      // [positions.size()]: slot in kv head 0's table, -1: head 0 does not hold it

  // Index of `position` in `positions`, -1 when no kv head holds it.
  int index_of(uint32_t position) const;
  // The probability at `position` for `head` (-1: the mean of heads); 0 when not held.
  float prob(int head, uint32_t position) const;
  int32_t slot_of(uint32_t position) const;  // kv head 0's slot, -1: not held there
};

// One step of a recorded reply (side by side, forced mode): the distribution
// that predicted the reply's token `index`, and the cache as that step's
// attention saw it. Shared between snapshots (a publish copies pointers).
struct StepRecord {
  uint32_t index = 0;             // token index within the reply
  int32_t token = -1;             // the token that came next (sampled or forced)
  int32_t argmax = -1;            // the most likely token of log_probs
  std::vector<float> log_probs;   // [n_vocab], log-softmax of the logits
  uint32_t n_pos = 0;             // positions 0..n_pos-1 existed at this step
  HeldPositions held;             // what each (layer, kv head) held
  AttentionRows attention;        // by position; probs empty when probes were off
};

struct SessionSnapshot {
  enum class State { Starting, Idle, Prefill, Generating, Error };
  uint64_t version = 0;  // increases with every publish
  State state = State::Starting;
  std::string error;     // last failure, one line; kept until the next command
  // The device under the engine was lost (gpu::DeviceLost): nothing more
  // runs here; the conversation stays in `turns` for a reload to carry over.
  bool device_lost = false;
  std::string name;      // "A", "B", ...
  CacheSpec spec;
  std::vector<Turn> turns;
  std::vector<int32_t> tokens;       // the context
  std::vector<std::string> pieces;   // display text of each token
  std::vector<LayerOccupancy> layers;
  // Per (layer, kv head), [layer][head]: live slots, and the policy's budget
  // for that head (0: no policy; capacity for `full`). Per-head policies and
  // per-layer budgets (PyramidKV) make them differ.
  std::vector<uint32_t> head_live, head_budget;
  // Per context position: how many global layers hold it (kv head 0's
  // table). All of them until a policy evicts; the token strip shades by it.
  // Sliding-window layers are not counted: they let go of every position
  // their window has passed, by the model's design.
  std::vector<uint16_t> layers_holding;
  uint32_t global_layers = 0;
  // One past the highest position written to the cache: the newest sampled
  // token is shown before it is written, and is not "evicted".
  uint32_t written_positions = 0;
  uint32_t n_kv_head = 0;
  uint32_t used_tokens = 0, capacity = 0;
  uint64_t cache_bytes_full = 0;     // device bytes of the whole cache
  double cache_bytes_used = 0;       // of those, the live slots' (each layer's bytes per slot x its live slots)
  double bytes_per_token = 0;        // over all layers
  double last_tok_s = 0, last_ttft_seconds = 0;
  // Recent decode steps' rows, oldest first; shared between snapshots so a
  // publish copies pointers, not probabilities.
  std::deque<std::shared_ptr<const ProbeRow>> probes;
  bool probes_supported = false;     // the forward pass can read attention back
  // Prefill progress of a long prompt: tokens read of the prompt's.
  uint32_t prefill_done = 0, prefill_total = 0;
  // The eviction log (null without a policy); copied only when it changed.
  std::shared_ptr<const kv::EventLog> log;
  kv::PinnedSpans pins;
  std::string system_prompt;         // the conversation's first turn, when it has one
  // Decode steps' time (forward pass and sampling) with the attention
  // readback on and off: what the inspector costs the decoder.
  double probe_on_seconds = 0, probe_off_seconds = 0;
  uint32_t probe_on_steps = 0, probe_off_steps = 0;
  // The last reply's steps when it was recorded (GenerateRequest::record).
  std::vector<std::shared_ptr<const StepRecord>> steps;
};

struct GenerateRequest {
  std::string text;            // appended to the conversation (empty: continue)
  uint32_t max_new = 128;
  SamplerConfig sampling;
  // Put before the first message of an empty conversation, pinned when the
  // cache evicts (an evicting policy never drops it).
  std::string system;
  // Keep every step's distribution, held positions and attention (forced
  // comparison). Decodes with logits read back per step, as the CLI's eval.
  bool record = false;
  // Forced mode: the reply is these tokens, not sampled ones (implies record).
  std::optional<std::vector<int32_t>> forced;
  // The conversation goes through this chat template (none: the text is
  // appended as is, for completion models); its end-of-turn tokens end a reply.
  std::optional<ChatTemplate> chat_template;
};



class SessionWorker {
 public:
  // Creates the session's cache on the worker thread (a failure shows in the
  // snapshot's error). `engine` and `turns` must outlive the worker.
  SessionWorker(Engine& engine, EngineTurns& turns, std::string name, const CacheSpec& spec);
  ~SessionWorker();  // stops generation and joins
  SessionWorker(const SessionWorker&) = delete;
  SessionWorker& operator=(const SessionWorker&) = delete;

  void generate(const GenerateRequest& request);
  // Drops the last reply and writes it again with `sampling`.
  void regenerate(uint32_t max_new, const SamplerConfig& sampling);
  void stop();   // returns at once; the reply ends after the current token
  // Whether a view shows this session's attention: only then does the
  // forward pass read attention rows back (no cost otherwise).
  void set_probes_wanted(bool wanted) { probes_wanted_ = wanted; }
  // Measurement: the readback only every other decode step, so steps with
  // and without it interleave under the same machine load.
  void set_alternate_probes(bool alternate) { alternate_probes_ = alternate; }
  void reset();  // empties the conversation and the cache
  // Turn `turn_index` (a user message) gets `text`: the conversation after
  // it is dropped, the cache refilled up to it, and a new reply written.
  void edit(size_t turn_index, const std::string& text, const GenerateRequest& request);
  // Pins these spans from now on: the policy is made again with them and
  // the context read again into an empty cache.
  void set_pins(const kv::PinnedSpans& pins);
  // Replaces the conversation with a saved one (the context is read again).
  // Replaces the conversation with a saved one (its tokens fed as they were
  // saved); `chat_template`: the format its next messages continue in.
  void load(const Conversation& conversation, std::optional<ChatTemplate> chat_template = std::nullopt);

  // The latest snapshot; cheap (a pointer copy under a lock), never waits on
  // the device.
  std::shared_ptr<const SessionSnapshot> snapshot() const;
  bool busy() const;  // a command is queued or running

  // How many recent decode steps of probe rows the snapshot keeps.
  static constexpr size_t kProbeSteps = 64;

 private:
  struct Command {
    enum class Kind { Generate, Regenerate, Reset, Edit, Pins, Load } kind;
    GenerateRequest request;
    size_t turn_index = 0;
    kv::PinnedSpans pins;
    Conversation conversation;
  };
  void push(Command command);
  void run();
  void execute(const Command& command);
  void generate_reply(const std::vector<int32_t>& prompt, const GenerateRequest& request);
  // generate_reply for record/forced requests: one step at a time with every
  // step's logits read back.
  void recorded_reply(const std::vector<int32_t>& prompt, const GenerateRequest& request);
  // Reads `ids` into the cache without sampling (a refill after a change of
  // pins, or a loaded conversation), with the engine held.
  void refill(const std::vector<int32_t>& ids);
  // The policy of the spec with `pins` (no-op without a policy); resets.
  void apply_policy(const kv::PinnedSpans& pins);
  // A user message: rendered with the conversation through the request's
  // format, fed by the one prefix-reuse rule (plan_feed), then the reply.
  void send_message(const std::string& text, const GenerateRequest& request);
  kv::PinnedSpans extra_pins_;   // besides the spec's: the user's pins (Pins, a loaded conversation's)
  kv::PinnedSpans system_pins_;  // the system prompt's span (send_message), pinned with them
  std::optional<ChatTemplate> chat_template_;  // the format of the conversation's last message
  std::optional<std::string> fed_text_;        // what the cache stands for, rendered (plan_feed)
  std::shared_ptr<const StepRecord> record_step(uint32_t index, int32_t token, std::span<const float> logits);
  void publish();  // copies the working state into a new snapshot
  // With the engine held: turns the model's probe readback on or off for
  // this session's next step, and keeps the rows of the step just run.
  void apply_probe_setting();
  void capture_probes();

  Engine* engine_;
  EngineTurns* turns_;
  std::unique_ptr<Session> session_;  // made on the worker thread
  SessionSnapshot working_;           // worker thread only
  size_t published_log_events_ = SIZE_MAX;

  mutable std::mutex mutex_;          // guards queue_, published_, running_
  std::condition_variable wake_;
  std::deque<Command> queue_;
  bool running_ = false, quit_ = false;
  std::shared_ptr<const SessionSnapshot> published_;
  std::atomic<bool> stop_requested_{false};
  std::atomic<bool> probes_wanted_{false};
  std::atomic<bool> alternate_probes_{false};
  uint64_t probe_steps_ = 0;  // worker thread: decode steps seen by apply_probe_setting
  std::thread thread_;
};

// One layer's attention probe (probabilities [n_head][capacity] indexed by
// cache slot, as the attention shader writes them) turned into a ProbeRow
// indexed by token position 0..step, through the layer's slot tables.
ProbeRow probe_row_from_slots(const kv::KvCache& cache, uint32_t layer, uint32_t n_head, uint32_t step,
                              std::span<const float> probs_by_slot);

// Display text of a token for strips and tooltips: "▁" as a space, byte
// tokens as their character or "↵" for a newline, control tokens as <s>.
std::string token_display_text(const Tokenizer& tokenizer, int32_t id);

}  // namespace kvscope
