// The eviction log (kv/event_log.h): replay rebuilds slot tables exactly,
// including recalls and truncation; a log that does not match the tables is
// caught at the event that diverges; the --trace JSONL round-trips and its
// errors name the file, the line and the field.
#include <doctest/doctest.h>

#include <algorithm>
#include <functional>
#include <sstream>
#include <string>

#include "kv/event_log.h"

using namespace kvscope;

namespace {
std::string error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const std::exception& e) {
    return e.what();
  }
  return "(no error)";
}

// 1 layer, 2 kv heads, 6 slots: write 0..4, head 1 evicts 2, head 0 evicts
// 1, write 5, recall of 2 in head 1, truncate at 5.
kv::EventLog sample_log() {
  kv::EventLog log(kv::TraceHeader{"h2o:budget=4,recent=1", 1, 2, 6, 1, {{0, 1}}});
  const std::vector<int32_t> p{0, 1, 2, 3, 4}, t{1, 10, 20, 30, 40};
  log.written(0, p, t);
  log.evicted({1, 0, 1, 2, 2, 20, 0.25f});
  log.evicted({1, 0, 0, 1, 1, 10, 0.5f});
  const std::vector<int32_t> p5{5}, t5{50};
  log.written(1, p5, t5);
  kv::RecallEvent recall;
  recall.step = 2;
  recall.kv_head = 1;
  recall.slot = 5;
  recall.position = 2;
  recall.token = 20;
  recall.score = 0.75f;
  log.recalled(recall);
  log.truncated(3, 5);
  return log;
}
}  // namespace

TEST_CASE("event log: replay applies writes, evictions, recalls and truncation in order") {
  const auto log = sample_log();
  const auto tables = kv::replay(log);
  REQUIRE(tables.size() == 2);
  // Head 0: 0..4 in slots 0..4, slot 1 freed, 5 into slot 1, truncated.
  CHECK(tables[0].positions()[0] == 0);
  CHECK(tables[0].positions()[1] == -1);
  CHECK(tables[0].live() == 4);
  // Head 1: slot 2 freed, 5 into slot 2, recall of 2 into slot 5, 5 truncated.
  CHECK(tables[1].positions()[2] == -1);
  CHECK(tables[1].positions()[5] == 2);
  CHECK(tables[1].live() == 5);
  CHECK(log.eviction_count() == 2);
}

TEST_CASE("event log: a log that does not match the tables names the event") {
  kv::EventLog log(kv::TraceHeader{"window:budget=2", 1, 1, 4, 1, {}});
  const std::vector<int32_t> p{0, 1}, t{5, 6};
  log.written(0, p, t);
  log.evicted({1, 0, 0, 1, 0, 5, 0});  // slot 1 holds position 1, not 0
  const auto e = error_of([&] { kv::replay(log); });
  CHECK(e.find("event 1") != std::string::npos);
  CHECK(e.find("slot 1 holds position 1") != std::string::npos);

  kv::EventLog bad_recall(kv::TraceHeader{"window:budget=2", 1, 1, 4, 1, {}});
  bad_recall.written(0, p, t);
  kv::RecallEvent r;
  r.slot = 3;  // the lowest free slot is 2
  r.position = 7;
  bad_recall.recalled(r);
  CHECK(error_of([&] { kv::replay(bad_recall); }).find("landed in slot 2") != std::string::npos);

  kv::EventLog overflow(kv::TraceHeader{"full", 1, 1, 1, 1, {}});
  overflow.written(0, p, t);
  CHECK(error_of([&] { kv::replay(overflow); }).find("no free slot for position 1") != std::string::npos);
}

TEST_CASE("event log: JSONL round trip") {
  auto log = sample_log();
  auto tables = kv::replay(log);
  log.occupancy(3, tables);
  std::stringstream file;
  kv::write_jsonl(log, file);
  const std::string text = file.str();
  CHECK(text.rfind("{\"kind\":\"header\",\"version\":1,", 0) == 0);
  CHECK(text.find("\"kind\":\"evict\"") != std::string::npos);
  CHECK(text.find("\"kind\":\"recall\"") != std::string::npos);
  CHECK(text.find("\"live\":[[4,5]]") != std::string::npos);
  const auto read = kv::read_jsonl(file, "t.jsonl");
  CHECK(read.header().policy == "h2o:budget=4,recent=1");
  CHECK(read.header().pins == std::vector<kv::PinnedSpan>{{0, 1}});
  CHECK(read.events().size() == log.events().size());
  CHECK(read.eviction_count() == 2);
  REQUIRE(read.occupancies().size() == 1);
  CHECK(read.occupancies().front().live == std::vector<uint32_t>{4, 5});
  const auto again = kv::replay(read);
  for (size_t i = 0; i < again.size(); ++i)
    CHECK(std::equal(again[i].positions().begin(), again[i].positions().end(), tables[i].positions().begin()));
}

TEST_CASE("event log: malformed traces name the file, line and field") {
  auto read = [](const std::string& text) {
    std::istringstream in(text);
    return error_of([&] { kv::read_jsonl(in, "run.jsonl"); });
  };
  const std::string header =
      R"({"kind":"header","version":1,"policy":"full","n_layer":1,"n_kv_head":1,"capacity":4,"block_slots":1,"pins":[]})"
      "\n";
  CHECK(read("").find("run.jsonl: empty trace") != std::string::npos);
  CHECK(read(R"({"kind":"write"})").find("run.jsonl:1: the first line must be the header") != std::string::npos);
  CHECK(read(header + "not json\n").find("run.jsonl:2: not JSON") != std::string::npos);
  CHECK(read(header + R"({"kind":"evict","step":0})").find("missing field \"layer\"") != std::string::npos);
  CHECK(read(header + R"({"kind":"oops"})").find("unknown kind \"oops\"") != std::string::npos);
  CHECK(read(header + R"({"kind":"occupancy","step":0,"live":[[1],[2]]})").find("one array per layer") !=
        std::string::npos);
  CHECK(read(header + R"({"kind":"truncate","step":-1,"position":0})").find("\"step\" must be an integer >= 0") !=
        std::string::npos);
}

namespace {
// A rolling window over 2 layers x 2 kv heads x 16 slots, `steps` long,
// recorded in `log` while `tables` follow it: every step evicts the oldest
// position of each table once it is full, then writes the next position.
void roll(kv::EventLog& log, std::vector<kv::SlotTable>& tables, uint32_t steps) {
  for (uint32_t step = 0; step < steps; ++step) {
    for (uint32_t i = 0; i < tables.size(); ++i) {
      kv::SlotTable& t = tables[i];
      if (t.live() < t.capacity()) continue;
      const auto positions = t.positions();
      const auto oldest = std::min_element(positions.begin(), positions.end());
      const auto slot = static_cast<uint32_t>(oldest - positions.begin());
      log.evicted({step, i / 2, i % 2, slot, *oldest, 7, 0.5f});
      t.release(slot);
    }
    const std::vector<int32_t> p{static_cast<int32_t>(step)}, tok{static_cast<int32_t>(step % 100)};
    for (auto& t : tables) t.assign(p[0]);
    log.written(step, p, tok);
    log.occupancy(step, tables);
  }
}

std::vector<std::vector<int32_t>> positions_of(const std::vector<kv::SlotTable>& tables) {
  std::vector<std::vector<int32_t>> out;
  for (const auto& t : tables) out.emplace_back(t.positions().begin(), t.positions().end());
  return out;
}
}  // namespace

TEST_CASE("event log: a bounded log folds its oldest events into base tables and still replays exactly") {
  const kv::TraceHeader header{"window:budget=16", 2, 2, 16, 1, {}};
  kv::EventLog log(header, 8192);
  kv::EventLog whole(header, 0);  // no limit: the reference
  std::vector<kv::SlotTable> tables(4, kv::SlotTable(16)), tables_whole(4, kv::SlotTable(16));
  std::ostringstream streamed;
  kv::TraceWriter writer(streamed, log);
  int folds = 0;
  log.on_fold([&](const kv::EventLog& l) {
    ++folds;
    writer.append(l);
  });
  roll(log, tables, 3000);  // 5 events a step once full: ~15,000 events
  roll(whole, tables_whole, 3000);
  writer.append(log);

  CHECK(folds > 0);
  CHECK(log.events().size() <= 8192);
  CHECK(log.folded_events() > 0);
  CHECK(log.recorded_events() == whole.recorded_events());
  CHECK(log.eviction_count() == whole.eviction_count());
  CHECK(log.last_step() == 2999);
  CHECK(log.base_step() > 0);
  CHECK(positions_of(kv::replay(log)) == positions_of(tables));
  // The scrubber's view of a past step (after the base) matches the whole log's.
  const uint32_t past = log.base_step() + 100;
  CHECK(positions_of(kv::replay(log.until(past))) == positions_of(kv::replay(whole.until(past))));
  // The trace streamed through the folds holds every event: it replays from empty tables.
  std::istringstream streamed_in(streamed.str());
  const kv::EventLog read = kv::read_jsonl(streamed_in, "streamed.jsonl");
  CHECK(read.recorded_events() == whole.recorded_events());
  CHECK(read.occupancies().size() + read.folded_occupancies() == 3000);
  CHECK(positions_of(kv::replay(read)) == positions_of(tables));
  // A trace written from the folded log starts from its base line and replays too.
  std::stringstream written;
  kv::write_jsonl(log, written);
  CHECK(written.str().find("\"kind\":\"base\"") != std::string::npos);
  const kv::EventLog reread = kv::read_jsonl(written, "folded.jsonl");
  CHECK(reread.base_step() == log.base_step());
  CHECK(positions_of(kv::replay(reread)) == positions_of(tables));
  // A copy shares full chunks but not the open one: appending to the
  // original leaves the copy as it was.
  const kv::EventLog copy = log;
  const uint64_t before = copy.recorded_events();
  roll(log, tables, 10);
  CHECK(copy.recorded_events() == before);
  CHECK(positions_of(kv::replay(copy)) != positions_of(kv::replay(log)));
}

TEST_CASE("event log: a base line that does not hold together is refused") {
  const std::string header =
      R"({"kind":"header","version":1,"policy":"window:budget=2","n_layer":1,"n_kv_head":1,"capacity":2,"block_slots":1,"pins":[]})"
      "\n";
  auto read = [&](const std::string& base) {
    std::istringstream in(header + base + "\n");
    return error_of([&] { kv::read_jsonl(in, "t.jsonl"); });
  };
  CHECK(read(R"({"kind":"base","step":3,"folded":9,"tables":[{"positions":[0,1],"open_block":-1}]})") == "(no error)");
  CHECK(read(R"({"kind":"base","step":3,"folded":9,"tables":[{"positions":[0],"open_block":-1}]})").find("one position per slot") != std::string::npos);
  CHECK(read(R"({"kind":"base","step":3,"folded":9,"tables":[]})").find("one table per layer") != std::string::npos);
  CHECK(read(R"({"kind":"base","step":3,"folded":9,"tables":[{"positions":[0,1],"open_block":1}]})").find("is full") != std::string::npos);
  CHECK(read(R"({"kind":"base","step":3,"folded":9,"tables":[{"positions":[0,-5],"open_block":-1}]})").find("holds position -5") != std::string::npos);
  CHECK(read(R"({"kind":"base","step":3,"folded":-1,"tables":[{"positions":[0,1],"open_block":-1}]})").find("folded") != std::string::npos);
}

TEST_CASE("event log: occupancies are bounded too, and a streamed trace still has every one") {
  const kv::TraceHeader header{"full", 1, 1, 4, 1, {}};
  kv::EventLog log(header, 4096);
  std::ostringstream streamed;
  kv::TraceWriter writer(streamed, log);
  log.on_fold([&](const kv::EventLog& l) { writer.append(l); });
  const std::vector<kv::SlotTable> tables(1, kv::SlotTable(4));
  for (uint32_t step = 0; step < 20000; ++step) log.occupancy(step, tables);  // steps that evict nothing
  writer.append(log);
  CHECK(log.occupancies().size() <= 2 * kv::ChunkedSequence<kv::Occupancy>::kChunk);
  CHECK(log.folded_occupancies() + log.occupancies().size() == 20000);
  std::istringstream in(streamed.str());
  const kv::EventLog read = kv::read_jsonl(in, "occupancies.jsonl");
  CHECK(read.folded_occupancies() + read.occupancies().size() == 20000);
}
