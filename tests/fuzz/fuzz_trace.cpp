// libFuzzer target: eviction traces (--trace FILE.jsonl, the window's
// exports): the reader, replay onto slot tables, and writing back.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <sstream>
#include <stdexcept>
#include <string>

#include "kv/event_log.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace kvscope::kv;
  std::istringstream in(std::string(reinterpret_cast<const char*>(data), size));
  EventLog log;
  try {
    log = read_jsonl(in, "fuzz.jsonl");
  } catch (const std::runtime_error&) {
    return 0;  // refused, naming the line and the field
  }
  const TraceHeader& h = log.header();
  // Replay allocates the header's tables: only shapes a small input could mean.
  if (uint64_t{h.n_layer} * h.n_kv_head * h.capacity <= (1u << 16)) {
    try {
      (void)replay(log);
    } catch (const std::runtime_error&) {
      // a trace that does not match its tables, named by event
    }
  }
  std::stringstream out;
  write_jsonl(log, out);
  const EventLog again = read_jsonl(out, "again.jsonl");  // what it wrote, it reads
  if (again.recorded_events() != log.recorded_events() || again.occupancies().size() != log.occupancies().size())
    std::abort();
  return 0;
}
