// Tests of the GPU layer itself (gpu/): device listing and choice, buffers,
// pipelines and their checks, the recorder, timestamps, the pipeline cache.
// Every test runs with the validation layer on and requires it to stay silent.
#include <doctest/doctest.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <string>
#include <thread>
#include <vector>

#include <unistd.h>

#include "gpu/buffer.h"
#include "gpu/context.h"
#include "gpu/pipeline.h"
#include "gpu/recorder.h"
#include "gpu/timer.h"
#include "shaders/common/params.h"

using namespace kvscope::gpu;
namespace shaders = kvscope::shaders;

namespace {

// shaders/smoke.comp's push constants: out[i] = in[i] * 2 + add for i < n.
struct SmokePush {
  uint32_t n;
  float add;
};

ContextOptions validated(ContextOptions options = {}) {
  options.validation = true;
  return options;
}

Pipeline smoke_pipeline(const Context& ctx) {
  return Pipeline(ctx, {shaders::Id::smoke, 2, sizeof(SmokePush), {ctx.subgroup_size()}});
}

// A fresh path under the system temp folder, removed (with its folder) when
// the test ends.
struct TempDir {
  std::filesystem::path path;
  TempDir() {
    static std::atomic<int> counter{0};
    path = std::filesystem::temp_directory_path() /
           ("kvscope_test_gpu_" + std::to_string(getpid()) + "_" + std::to_string(counter++));
  }
  ~TempDir() {
    std::error_code ec;
    std::filesystem::remove_all(path, ec);
  }
};

// The exception's message, for checks on its wording; "" when none is thrown.
template <class E, class F>
std::string message_of(F&& f) {
  try {
    f();
  } catch (const E& e) {
    return e.what();
  }
  return "";
}

}  // namespace

TEST_CASE("gpu: list_devices finds a device with a subgroup size") {
  std::vector<DeviceInfo> devices = list_devices();
  REQUIRE(!devices.empty());
  for (const DeviceInfo& d : devices) {
    INFO(d.name << " (" << d.type << ", " << d.driver << ")");
    CHECK(!d.name.empty());
    CHECK(d.subgroup_size > 0);
    CHECK(d.max_storage_buffer_range > 0);
    CHECK(d.min_storage_buffer_offset_alignment > 0);
    CHECK(d.max_workgroup_size_x > 0);
    CHECK(d.device_local_bytes > 0);
  }
}

TEST_CASE("gpu: Context with validation") {
  Context ctx(validated());
  // scripts/setup.sh installs the layer; a machine without it (a user's, a
  // bare GPU box) runs unchecked rather than failing here.
  if (validation_wanted(true))
    CHECK(ctx.validation_enabled());
  else
    MESSAGE("VK_LAYER_KHRONOS_validation is not installed: Context runs without it");
  CHECK(ctx.device() != VK_NULL_HANDLE);
  CHECK(ctx.queue() != VK_NULL_HANDLE);
  CHECK(ctx.pipeline_cache() != VK_NULL_HANDLE);
  CHECK(ctx.subgroup_size() > 0);
  CHECK(ctx.max_binding_bytes() > 0);
  CHECK(ctx.max_binding_bytes() % 256 == 0);
  CHECK(ctx.max_binding_bytes() <= ctx.info().max_storage_buffer_range);

  // Moving keeps one live context.
  Context moved(std::move(ctx));
  CHECK(moved.device() != VK_NULL_HANDLE);
  CHECK(moved.validation_messages() == 0);
}

TEST_CASE("gpu: device_index out of range lists the devices") {
  std::string message = message_of<GpuError>([] {
    ContextOptions options = validated();
    options.device_index = 1000;
    Context ctx(options);
  });
  CHECK(message.find("device index 1000 is out of range") != std::string::npos);
  CHECK(message.find(list_devices().at(0).name) != std::string::npos);
}

TEST_CASE("gpu: smoke shader over odd sizes, guard region untouched") {
  Context ctx(validated());
  Pipeline smoke = smoke_pipeline(ctx);
  Recorder rec(ctx);
  const uint32_t wg = ctx.subgroup_size();
  constexpr uint32_t kGuard = 64;  // floats after the output that must stay as they were
  constexpr float kSentinel = -12345.0f;
  for (uint32_t n : {1u, 7u, 1000u, 100003u}) {
    CAPTURE(n);
    std::vector<float> in(n);
    for (uint32_t i = 0; i < n; ++i) in[i] = static_cast<float>(i % 1000) * 0.5f - 3.0f;
    Buffer x(ctx, n * sizeof(float), MemoryUse::Device, "x");
    Buffer y(ctx, (n + kGuard) * sizeof(float), MemoryUse::Device, "y");
    x.write_as<float>(in);
    std::vector<float> sentinel(n + kGuard, kSentinel);
    y.write_as<float>(sentinel);

    rec.begin();
    // The output binding covers only n floats; the guard lies past it.
    rec.dispatch(smoke, {x, Binding(y, 0, n * sizeof(float))}, SmokePush{n, 1.5f},
                 ceil_div(n, wg));
    rec.submit_and_wait();
    CHECK(rec.dispatch_count() == 1);

    std::vector<float> out(n + kGuard);
    y.read_as<float>(out);
    uint32_t wrong = 0, first_wrong = n;
    for (uint32_t i = 0; i < n; ++i)
      if (out[i] != in[i] * 2.0f + 1.5f && wrong++ == 0) first_wrong = i;
    CHECK_MESSAGE(wrong == 0, "first wrong index " << first_wrong);
    for (uint32_t i = n; i < n + kGuard; ++i) REQUIRE(out[i] == kSentinel);
  }
  CHECK(ctx.validation_messages() == 0);
}

TEST_CASE("gpu: repeated steps reuse descriptor sets, barriers chain dispatches") {
  Context ctx(validated());
  Pipeline smoke = smoke_pipeline(ctx);
  Recorder rec(ctx);
  const uint32_t n = 37;
  Buffer a(ctx, n * sizeof(float), MemoryUse::Upload, "a");
  Buffer b(ctx, n * sizeof(float), MemoryUse::Device, "b");
  Buffer c(ctx, n * sizeof(float), MemoryUse::Readback, "c");
  std::vector<float> ones(n, 1.0f);
  a.write_as<float>(ones);
  for (int step = 0; step < 3; ++step) {
    rec.begin();
    rec.fill_zero(c);
    rec.dispatch(smoke, {a, b}, SmokePush{n, 0.0f}, ceil_div(n, ctx.subgroup_size()));  // 2
    rec.barrier();
    rec.dispatch(smoke, {b, c}, SmokePush{n, 1.0f}, ceil_div(n, ctx.subgroup_size()));  // 5
    rec.barrier();
    rec.copy(c, 0, b, 0, n * sizeof(float));
    rec.submit_and_wait();
    std::vector<float> out(n);
    b.read_as<float>(out);
    for (float v : out) REQUIRE(v == 5.0f);
  }
  CHECK(ctx.validation_messages() == 0);
}

TEST_CASE("gpu: dispatch checks bindings and push constants against the pipeline") {
  Context ctx(validated());
  Pipeline smoke = smoke_pipeline(ctx);
  Recorder rec(ctx);
  Buffer x(ctx, 1024, MemoryUse::Device, "x");
  Buffer y(ctx, 1024, MemoryUse::Device, "y");
  rec.begin();

  SUBCASE("binding count") {
    std::string m = message_of<GpuError>(
        [&] { rec.dispatch(smoke, {x}, SmokePush{1, 0.0f}, 1); });
    CHECK(m.find("'smoke'") != std::string::npos);
    CHECK(m.find("2 bindings, got 1") != std::string::npos);
  }
  SUBCASE("push-constant size") {
    struct Wrong {
      uint32_t n, m, k;
    };
    std::string m = message_of<GpuError>([&] { rec.dispatch(smoke, {x, y}, Wrong{}, 1); });
    CHECK(m.find("'smoke'") != std::string::npos);
    CHECK(m.find("8 bytes of push constants, got 12") != std::string::npos);
  }
  SUBCASE("misaligned offset") {
    const uint64_t alignment = ctx.info().min_storage_buffer_offset_alignment;
    if (alignment > 1) {
      std::string m = message_of<GpuError>(
          [&] { rec.dispatch(smoke, {x, Binding(y, alignment / 2, 64)}, SmokePush{1, 0.0f}, 1); });
      CHECK(m.find("'smoke' binding 1") != std::string::npos);
      CHECK(m.find("alignment") != std::string::npos);
    }
  }
  SUBCASE("range past the end of the buffer") {
    std::string m = message_of<GpuError>(
        [&] { rec.dispatch(smoke, {Binding(x, 0, 2048), y}, SmokePush{1, 0.0f}, 1); });
    CHECK(m.find("'smoke' binding 0") != std::string::npos);
  }
  SUBCASE("too many workgroups") {
    const uint32_t too_many = ctx.properties().limits.maxComputeWorkGroupCount[0] + 1u;
    if (too_many != 0) {  // the limit may be UINT32_MAX
      std::string m = message_of<GpuError>(
          [&] { rec.dispatch(smoke, {x, y}, SmokePush{1, 0.0f}, too_many); });
      CHECK(m.find("exceed the device limit") != std::string::npos);
    }
  }
  // An abandoned step is recorded over by the next begin().
  rec.begin();
  rec.dispatch(smoke, {x, y}, SmokePush{1, 0.0f}, 1);
  rec.submit_and_wait();
  CHECK(ctx.validation_messages() == 0);
}

TEST_CASE("gpu: a binding above max_binding_bytes is refused") {
  ContextOptions options = validated();
  options.max_binding_bytes = 4096 + 100;  // rounded down to 4096
  Context ctx(options);
  CHECK(ctx.max_binding_bytes() == 4096);
  Pipeline smoke = smoke_pipeline(ctx);
  Recorder rec(ctx);
  Buffer big(ctx, 8192, MemoryUse::Device, "big");
  Buffer out(ctx, 4096, MemoryUse::Device, "out");
  rec.begin();
  std::string m = message_of<GpuError>(
      [&] { rec.dispatch(smoke, {big, out}, SmokePush{1, 0.0f}, 1); });
  CHECK(m.find("'smoke' binding 0") != std::string::npos);
  CHECK(m.find("limit of 4096 bytes") != std::string::npos);
  // Halves of it bind fine.
  rec.dispatch(smoke, {Binding(big, 4096, 4096), out}, SmokePush{1024, 0.0f}, ceil_div(1024, ctx.subgroup_size()));
  rec.submit_and_wait();
  CHECK(ctx.validation_messages() == 0);
}

TEST_CASE("gpu: texel bindings (weights) are checked: mask, whole texels, alignment, limit") {
  ContextOptions options = validated();
  options.max_binding_bytes = 4096;  // caps texel bindings too
  Context ctx(options);
  CHECK(ctx.max_texel_binding_bytes() == 4096);
  using kvscope::params::MatVecParams;
  using kvscope::shaders::Id;
  const uint32_t wg = std::max(8u, ctx.subgroup_size());
  // A mask naming a binding the pipeline does not have.
  std::string m = message_of<GpuError>(
      [&] { Pipeline bad(ctx, {Id::matvec_f32, 4, sizeof(MatVecParams), {wg, wg}, 1u << 4}); });
  CHECK(m.find("beyond its 4 bindings") != std::string::npos);

  Pipeline matvec(ctx, {Id::matvec_f32, 4, sizeof(MatVecParams), {wg, wg}, 1u << 0});
  Buffer weights(ctx, 8192, MemoryUse::Device, "weights");
  Buffer scales(ctx, 16, MemoryUse::Device, "scales");
  Buffer x(ctx, 64, MemoryUse::Device, "x");
  Buffer y(ctx, 64, MemoryUse::Device, "y");
  weights.fill_zero();
  x.fill_zero();
  Recorder rec(ctx);
  rec.begin();
  const MatVecParams p{4, 4, 1, 4, 0, 0};  // 4 rows of 4 floats: one texel each
  m = message_of<GpuError>([&] { rec.dispatch(matvec, {Binding(weights, 0, 40), scales, x, y}, p, 1); });
  CHECK(m.find("whole 16-byte texels") != std::string::npos);
  m = message_of<GpuError>([&] { rec.dispatch(matvec, {weights, scales, x, y}, p, 1); });
  CHECK(m.find("per texel-buffer binding") != std::string::npos);
  const uint64_t align = ctx.properties().limits.minTexelBufferOffsetAlignment;
  if (align > 1) {
    m = message_of<GpuError>([&] { rec.dispatch(matvec, {Binding(weights, align / 2, 64), scales, x, y}, p, 1); });
    CHECK(m.find("texel-buffer offset alignment") != std::string::npos);
  }
  rec.dispatch(matvec, {Binding(weights, 4096, 64), scales, x, y}, p, 1);
  rec.submit_and_wait();
  std::vector<float> out(4, 1.0f);
  y.read_as<float>(out);
  CHECK(out == std::vector<float>(4, 0.0f));
  CHECK(ctx.validation_messages() == 0);
}

TEST_CASE("gpu: Timer measures the smoke shader") {
  Context ctx(validated());
  Timer timer(ctx, 8);
  if (!timer.supported()) {
    MESSAGE("timestamps not supported on " << ctx.info().name << "; Timer is a no-op");
    return;
  }
  Pipeline smoke = smoke_pipeline(ctx);
  Recorder rec(ctx);
  const uint32_t n = 1 << 18;
  Buffer x(ctx, n * sizeof(float), MemoryUse::Device, "x");
  Buffer y(ctx, n * sizeof(float), MemoryUse::Device, "y");
  x.fill_zero();
  for (int step = 0; step < 2; ++step) {
    rec.begin(&timer);
    rec.dispatch(smoke, {x, y}, SmokePush{n, 1.0f}, ceil_div(n, ctx.subgroup_size()));
    rec.barrier();
    rec.dispatch(smoke, {y, x}, SmokePush{n, 1.0f}, ceil_div(n, ctx.subgroup_size()));
    rec.submit_and_wait();
    std::map<std::string, double> ms = timer.collect();
    REQUIRE(ms.count("smoke") == 1);
    CHECK(ms["smoke"] > 0.0);
    CHECK(ms["smoke"] < 10'000.0);
  }
  CHECK(timer.totals().at("smoke") > 0.0);
  CHECK(timer.collect().empty());  // already collected
  CHECK(ctx.validation_messages() == 0);
}

TEST_CASE("gpu: pipeline cache file is written and loaded again") {
  TempDir dir;
  ContextOptions options = validated();
  options.pipeline_cache_path = (dir.path / "nested" / "pipelines.bin").string();
  {
    Context ctx(options);
    Pipeline smoke = smoke_pipeline(ctx);
    ctx.save_pipeline_cache();
    CHECK(std::filesystem::exists(options.pipeline_cache_path));
    CHECK(ctx.validation_messages() == 0);
  }
  const auto size = std::filesystem::file_size(options.pipeline_cache_path);
  CHECK(size >= sizeof(VkPipelineCacheHeaderVersionOne));
  {
    Context ctx(options);  // loads the file
    // The file carries this device's header, so the driver takes its contents.
    VkPipelineCacheHeaderVersionOne header{};
    std::FILE* f = std::fopen(options.pipeline_cache_path.c_str(), "rb");
    REQUIRE(f);
    REQUIRE(std::fread(&header, sizeof(header), 1, f) == 1);
    std::fclose(f);
    CHECK(header.vendorID == ctx.properties().vendorID);
    CHECK(header.deviceID == ctx.properties().deviceID);
    Pipeline smoke = smoke_pipeline(ctx);
    CHECK(ctx.validation_messages() == 0);
  }
  // A file from elsewhere (wrong header) is ignored rather than failing.
  {
    std::FILE* f = std::fopen(options.pipeline_cache_path.c_str(), "wb");
    REQUIRE(f);
    std::fputs("not a pipeline cache", f);
    std::fclose(f);
    Context ctx(options);
    Pipeline smoke = smoke_pipeline(ctx);
    CHECK(ctx.validation_messages() == 0);
  }
}

TEST_CASE("gpu: buffer write/read round trip with offsets and bounds") {
  Context ctx(validated());
  for (MemoryUse use : {MemoryUse::Device, MemoryUse::Upload, MemoryUse::Readback}) {
    CAPTURE(static_cast<int>(use));
    Buffer b(ctx, 1000, use, "round trip");
    CHECK(b.size() == 1000);
    b.fill_zero();
    std::vector<uint8_t> bytes(100);
    for (size_t i = 0; i < bytes.size(); ++i) bytes[i] = static_cast<uint8_t>(i * 7 + 1);
    b.write(bytes, 900);
    b.write(std::span<const uint8_t>(bytes).first(10), 3);

    std::vector<uint8_t> all(1000);
    b.read(all);
    for (size_t i = 0; i < 1000; ++i) {
      uint8_t expect = 0;
      if (i >= 900) expect = bytes[i - 900];
      else if (i >= 3 && i < 13) expect = bytes[i - 3];
      REQUIRE(all[i] == expect);
    }
    std::vector<uint8_t> part(5);
    b.read(part, 905);
    CHECK(part[0] == bytes[5]);

    CHECK_THROWS_AS(b.write(bytes, 901), GpuError);
    CHECK_THROWS_AS(b.read(part, 996), GpuError);
    CHECK_THROWS_AS(b.read(part, ~0ull - 2), GpuError);  // offset + size overflows
    std::string m = message_of<GpuError>([&] { b.write(bytes, 950); });
    CHECK(m.find("run past the end of a 1000-byte buffer") != std::string::npos);
  }
  // Zero-size buffers still exist and bind.
  Buffer empty(ctx, 0, MemoryUse::Device, "empty");
  CHECK(empty.handle() != VK_NULL_HANDLE);
  // Moves leave one owner.
  Buffer a(ctx, 64, MemoryUse::Device, "a");
  Buffer moved = std::move(a);
  CHECK(a.handle() == VK_NULL_HANDLE);
  CHECK(moved.handle() != VK_NULL_HANDLE);
  moved = Buffer(ctx, 32, MemoryUse::Upload, "replacement");
  CHECK(moved.size() == 32);
  CHECK(ctx.validation_messages() == 0);
}

TEST_CASE("gpu: an absurd allocation throws OutOfMemory with a clear message") {
  Context ctx(validated());
  std::string m = message_of<OutOfMemory>(
      [&] { Buffer huge(ctx, 1ull << 50, MemoryUse::Device, "kv cache"); });
  CHECK(m.find("cannot allocate 1048576.0 GiB for 'kv cache' on " + ctx.info().name) !=
        std::string::npos);
  CHECK(m.find("smaller") != std::string::npos);
  // The context stays usable.
  Buffer fine(ctx, 1024, MemoryUse::Device, "after");
  CHECK(ctx.validation_messages() == 0);
}

TEST_CASE("gpu: two threads submit to one context through the queue lock") {
  Context ctx(validated());
  auto worker = [&ctx](float add, std::vector<float>* result) {
    Pipeline smoke = smoke_pipeline(ctx);
    Recorder rec(ctx);
    const uint32_t n = 1001;
    Buffer x(ctx, n * sizeof(float), MemoryUse::Device, "x");
    Buffer y(ctx, n * sizeof(float), MemoryUse::Readback, "y");
    x.fill_zero();  // through run_once, also shared
    for (int step = 0; step < 20; ++step) {
      rec.begin();
      rec.dispatch(smoke, {x, y}, SmokePush{n, add}, ceil_div(n, ctx.subgroup_size()));
      rec.submit_and_wait();
    }
    result->resize(n);
    y.read_as<float>(*result);
  };
  std::vector<float> first, second;
  std::thread a(worker, 1.0f, &first), b(worker, 2.0f, &second);
  a.join();
  b.join();
  for (float v : first) REQUIRE(v == 1.0f);
  for (float v : second) REQUIRE(v == 2.0f);
  CHECK(ctx.validation_messages() == 0);
}

TEST_CASE("gpu: Pipeline and Recorder move") {
  Context ctx(validated());
  Pipeline smoke = smoke_pipeline(ctx);
  Pipeline moved(std::move(smoke));
  CHECK(smoke.handle() == VK_NULL_HANDLE);
  Recorder rec(ctx);
  Recorder rec2 = std::move(rec);
  Buffer x(ctx, 64, MemoryUse::Device, "x");
  Buffer y(ctx, 64, MemoryUse::Device, "y");
  rec2.begin();
  rec2.dispatch(moved, {x, y}, SmokePush{16, 0.0f}, ceil_div(16, ctx.subgroup_size()));
  rec2.submit_and_wait();
  moved = smoke_pipeline(ctx);  // releases the old one
  CHECK(moved.name() == "smoke");
  CHECK(ctx.validation_messages() == 0);
}

TEST_CASE("gpu: run_once releases its lock when the recording throws") {
  Context ctx(validated());
  CHECK_THROWS_AS(ctx.run_once([](VkCommandBuffer) { throw GpuError("recording failed"); }),
                  GpuError);
  Buffer b(ctx, 64, MemoryUse::Device, "b");
  ctx.run_once([&](VkCommandBuffer cb) { vkCmdFillBuffer(cb, b.handle(), 0, VK_WHOLE_SIZE, 0); });
  CHECK(ctx.validation_messages() == 0);
}
