// Records a whole step (many dispatches) into one command buffer and submits
// it once. Every dispatch is checked against its pipeline.
#pragma once
#include <vulkan/vulkan.h>

#include <cstdint>
#include <initializer_list>
#include <span>

#include "gpu/buffer.h"
#include "gpu/context.h"
#include "gpu/pipeline.h"

namespace kvscope::gpu {

class Timer;

class Recorder {
 public:
  explicit Recorder(const Context& ctx);
  ~Recorder();
  Recorder(Recorder&&) noexcept;
  Recorder& operator=(Recorder&&) noexcept;
  Recorder(const Recorder&) = delete;
  Recorder& operator=(const Recorder&) = delete;

  // Starts a new command buffer (waits for the previous submit if needed).
  void begin(Timer* timer = nullptr);

  // One dispatch of `groups_x * groups_y * groups_z` workgroups. Throws
  // GpuError (naming the pipeline) when the binding count or push-constant size
  // does not match the pipeline, or a binding exceeds the binding-range limit.
  template <class Push>
  void dispatch(Pipeline& p, std::initializer_list<Binding> bindings, const Push& push,
                uint32_t groups_x, uint32_t groups_y = 1, uint32_t groups_z = 1) {
    dispatch_raw(p, {bindings.begin(), bindings.size()}, &push, sizeof(Push), groups_x, groups_y,
                 groups_z);
  }
  void dispatch_raw(Pipeline& p, std::span<const Binding> bindings, const void* push,
                    uint32_t push_bytes, uint32_t groups_x, uint32_t groups_y, uint32_t groups_z);

  // Compute->compute (and transfer) memory barrier: later dispatches see
  // earlier writes.
  void barrier();
  void copy(const Buffer& src, uint64_t src_offset, const Buffer& dst, uint64_t dst_offset,
            uint64_t bytes);
  // Many ranges between the same two buffers in one command (each checked as copy() checks).
  struct CopyRange {
    uint64_t src_offset, dst_offset, bytes;
  };
  void copy(const Buffer& src, const Buffer& dst, std::span<const CopyRange> ranges);
  void fill_zero(const Buffer& dst, uint64_t offset = 0, uint64_t bytes = VK_WHOLE_SIZE);

  // Ends, submits under the context's queue lock, waits on the fence.
  void submit_and_wait();

  uint32_t dispatch_count() const { return dispatches_; }

 private:
  const Context* ctx_ = nullptr;
  VkCommandPool pool_ = VK_NULL_HANDLE;
  VkCommandBuffer cb_ = VK_NULL_HANDLE;
  VkFence fence_ = VK_NULL_HANDLE;
  Timer* timer_ = nullptr;
  uint32_t dispatches_ = 0;
  bool recording_ = false;
  VkPipeline bound_pipeline_ = VK_NULL_HANDLE;  // skips rebinding in runs of one op
  void release();
};

}  // namespace kvscope::gpu
