// Recorder: one command pool, one primary command buffer, one fence. A step
// is begin() → many dispatch()/barrier()/copy() → submit_and_wait().
#include "gpu/recorder.h"

#include <fmt/format.h>

#include <algorithm>
#include <utility>
#include <vector>

#include "gpu/timer.h"

namespace kvscope::gpu {

Recorder::Recorder(const Context& ctx) : ctx_(&ctx) {
  try {
    VkCommandPoolCreateInfo pool_info{VK_STRUCTURE_TYPE_COMMAND_POOL_CREATE_INFO};
    pool_info.queueFamilyIndex = ctx.queue_family();
    check(vkCreateCommandPool(ctx.device(), &pool_info, nullptr, &pool_),
          "Recorder: vkCreateCommandPool");
    VkCommandBufferAllocateInfo alloc{VK_STRUCTURE_TYPE_COMMAND_BUFFER_ALLOCATE_INFO};
    alloc.commandPool = pool_;
    alloc.level = VK_COMMAND_BUFFER_LEVEL_PRIMARY;
    alloc.commandBufferCount = 1;
    check(vkAllocateCommandBuffers(ctx.device(), &alloc, &cb_), "Recorder: vkAllocateCommandBuffers");
    VkFenceCreateInfo fence_info{VK_STRUCTURE_TYPE_FENCE_CREATE_INFO};
    check(vkCreateFence(ctx.device(), &fence_info, nullptr, &fence_), "Recorder: vkCreateFence");
  } catch (...) {
    release();
    throw;
  }
}

void Recorder::release() {
  if (!ctx_) return;
  // submit_and_wait always waits, so nothing recorded here is still running.
  if (fence_) vkDestroyFence(ctx_->device(), fence_, nullptr);
  if (pool_) vkDestroyCommandPool(ctx_->device(), pool_, nullptr);  // frees cb_
  fence_ = VK_NULL_HANDLE;
  pool_ = VK_NULL_HANDLE;
  cb_ = VK_NULL_HANDLE;
  ctx_ = nullptr;
}

Recorder::~Recorder() { release(); }

Recorder::Recorder(Recorder&& o) noexcept
    : ctx_(std::exchange(o.ctx_, nullptr)),
      pool_(std::exchange(o.pool_, VK_NULL_HANDLE)),
      cb_(std::exchange(o.cb_, VK_NULL_HANDLE)),
      fence_(std::exchange(o.fence_, VK_NULL_HANDLE)),
      timer_(std::exchange(o.timer_, nullptr)),
      dispatches_(std::exchange(o.dispatches_, 0)),
      recording_(std::exchange(o.recording_, false)),
      bound_pipeline_(std::exchange(o.bound_pipeline_, VK_NULL_HANDLE)) {}

Recorder& Recorder::operator=(Recorder&& o) noexcept {
  if (this != &o) {
    release();
    ctx_ = std::exchange(o.ctx_, nullptr);
    pool_ = std::exchange(o.pool_, VK_NULL_HANDLE);
    cb_ = std::exchange(o.cb_, VK_NULL_HANDLE);
    fence_ = std::exchange(o.fence_, VK_NULL_HANDLE);
    timer_ = std::exchange(o.timer_, nullptr);
    dispatches_ = std::exchange(o.dispatches_, 0);
    recording_ = std::exchange(o.recording_, false);
    bound_pipeline_ = std::exchange(o.bound_pipeline_, VK_NULL_HANDLE);
  }
  return *this;
}

void Recorder::begin(Timer* timer) {
  if (!ctx_) throw GpuError("Recorder::begin on an empty (moved-from) Recorder");
  // A step abandoned by an exception is simply recorded over.
  check(vkResetCommandPool(ctx_->device(), pool_, 0), "Recorder: vkResetCommandPool");
  VkCommandBufferBeginInfo begin{VK_STRUCTURE_TYPE_COMMAND_BUFFER_BEGIN_INFO};
  begin.flags = VK_COMMAND_BUFFER_USAGE_ONE_TIME_SUBMIT_BIT;
  check(vkBeginCommandBuffer(cb_, &begin), "Recorder: vkBeginCommandBuffer");
  recording_ = true;
  dispatches_ = 0;
  bound_pipeline_ = VK_NULL_HANDLE;
  timer_ = timer && timer->supported() ? timer : nullptr;
  if (timer_) timer_->reset(cb_);
}

void Recorder::dispatch_raw(Pipeline& p, std::span<const Binding> bindings, const void* push,
                            uint32_t push_bytes, uint32_t groups_x, uint32_t groups_y,
                            uint32_t groups_z) {
  if (!recording_)
    throw GpuError(fmt::format("dispatch of '{}' outside begin()/submit_and_wait()", p.name()));
  if (push_bytes != p.push_bytes())
    throw GpuError(fmt::format("pipeline '{}' takes {} bytes of push constants, got {}; the "
                               "struct passed does not match the shader's",
                               p.name(), p.push_bytes(), push_bytes));
  if (bindings.size() != p.n_bindings())
    throw GpuError(fmt::format("pipeline '{}' takes {} bindings, got {}", p.name(),
                               p.n_bindings(), bindings.size()));
  const uint32_t* max_groups = ctx_->properties().limits.maxComputeWorkGroupCount;
  if (groups_x > max_groups[0] || groups_y > max_groups[1] || groups_z > max_groups[2])
    throw GpuError(fmt::format("pipeline '{}': {} x {} x {} workgroups exceed the device "
                               "limit of {} x {} x {}; split the dispatch",
                               p.name(), groups_x, groups_y, groups_z, max_groups[0],
                               max_groups[1], max_groups[2]));
  VkDescriptorSet set = p.descriptor_set(bindings);

  if (bound_pipeline_ != p.handle()) {
    vkCmdBindPipeline(cb_, VK_PIPELINE_BIND_POINT_COMPUTE, p.handle());
    bound_pipeline_ = p.handle();
  }
  if (set)
    vkCmdBindDescriptorSets(cb_, VK_PIPELINE_BIND_POINT_COMPUTE, p.layout(), 0, 1, &set, 0,
                            nullptr);
  if (push_bytes > 0)
    vkCmdPushConstants(cb_, p.layout(), VK_SHADER_STAGE_COMPUTE_BIT, 0, push_bytes, push);
  if (timer_) timer_->before(cb_, p.name());
  vkCmdDispatch(cb_, groups_x, groups_y, groups_z);
  if (timer_) timer_->after(cb_);
  ++dispatches_;
}

void Recorder::barrier() {
  if (!recording_) throw GpuError("Recorder::barrier outside begin()/submit_and_wait()");
  VkMemoryBarrier b{VK_STRUCTURE_TYPE_MEMORY_BARRIER};
  b.srcAccessMask = VK_ACCESS_SHADER_WRITE_BIT | VK_ACCESS_TRANSFER_WRITE_BIT;
  b.dstAccessMask = VK_ACCESS_SHADER_READ_BIT | VK_ACCESS_SHADER_WRITE_BIT |
                    VK_ACCESS_TRANSFER_READ_BIT | VK_ACCESS_TRANSFER_WRITE_BIT;
  const VkPipelineStageFlags stages =
      VK_PIPELINE_STAGE_COMPUTE_SHADER_BIT | VK_PIPELINE_STAGE_TRANSFER_BIT;
  vkCmdPipelineBarrier(cb_, stages, stages, 0, 1, &b, 0, nullptr, 0, nullptr);
}

void Recorder::copy(const Buffer& src, const Buffer& dst, std::span<const CopyRange> ranges) {
  if (!recording_) throw GpuError("Recorder::copy outside begin()/submit_and_wait()");
  if (!src.handle() || !dst.handle()) throw GpuError("Recorder::copy: empty buffer");
  std::vector<VkBufferCopy> regions;
  regions.reserve(ranges.size());
  for (const CopyRange& r : ranges) {
    if (r.src_offset > src.size() || r.bytes > src.size() - r.src_offset || r.dst_offset > dst.size() ||
        r.bytes > dst.size() - r.dst_offset)
      throw GpuError(fmt::format("Recorder::copy: {} bytes from offset {} of a {}-byte buffer to "
                                 "offset {} of a {}-byte buffer run past an end",
                                 r.bytes, r.src_offset, src.size(), r.dst_offset, dst.size()));
    if (r.bytes > 0) regions.push_back({r.src_offset, r.dst_offset, r.bytes});
  }
  if (!regions.empty()) vkCmdCopyBuffer(cb_, src.handle(), dst.handle(), uint32_t(regions.size()), regions.data());
}

void Recorder::copy(const Buffer& src, uint64_t src_offset, const Buffer& dst,
                    uint64_t dst_offset, uint64_t bytes) {
  if (!recording_) throw GpuError("Recorder::copy outside begin()/submit_and_wait()");
  if (!src.handle() || !dst.handle()) throw GpuError("Recorder::copy: empty buffer");
  if (src_offset > src.size() || bytes > src.size() - src_offset || dst_offset > dst.size() ||
      bytes > dst.size() - dst_offset)
    throw GpuError(fmt::format("Recorder::copy: {} bytes from offset {} of a {}-byte buffer to "
                               "offset {} of a {}-byte buffer run past an end",
                               bytes, src_offset, src.size(), dst_offset, dst.size()));
  if (bytes == 0) return;
  VkBufferCopy region{src_offset, dst_offset, bytes};
  vkCmdCopyBuffer(cb_, src.handle(), dst.handle(), 1, &region);
}

void Recorder::fill_zero(const Buffer& dst, uint64_t offset, uint64_t bytes) {
  if (!recording_) throw GpuError("Recorder::fill_zero outside begin()/submit_and_wait()");
  if (!dst.handle()) throw GpuError("Recorder::fill_zero: empty buffer");
  const uint64_t n = bytes == VK_WHOLE_SIZE ? (dst.size() - std::min(offset, dst.size())) / 4 * 4
                                            : bytes;
  if (offset % 4 != 0 || n % 4 != 0 || offset > dst.size() || n > dst.size() - offset)
    throw GpuError(fmt::format("Recorder::fill_zero: {} bytes at offset {} of a {}-byte buffer: "
                               "offset and size must be multiples of 4 and inside the buffer",
                               n, offset, dst.size()));
  if (n == 0) return;
  vkCmdFillBuffer(cb_, dst.handle(), offset, n, 0);
}

void Recorder::submit_and_wait() {
  if (!recording_) throw GpuError("Recorder::submit_and_wait without begin()");
  recording_ = false;
  // Results are read on the host next: the fence alone does not make device
  // writes visible there.
  VkMemoryBarrier to_host{VK_STRUCTURE_TYPE_MEMORY_BARRIER};
  to_host.srcAccessMask = VK_ACCESS_SHADER_WRITE_BIT | VK_ACCESS_TRANSFER_WRITE_BIT;
  to_host.dstAccessMask = VK_ACCESS_HOST_READ_BIT;
  vkCmdPipelineBarrier(cb_, VK_PIPELINE_STAGE_COMPUTE_SHADER_BIT | VK_PIPELINE_STAGE_TRANSFER_BIT,
                       VK_PIPELINE_STAGE_HOST_BIT, 0, 1, &to_host, 0, nullptr, 0, nullptr);
  check(vkEndCommandBuffer(cb_), "Recorder: vkEndCommandBuffer");
  VkSubmitInfo submit{VK_STRUCTURE_TYPE_SUBMIT_INFO};
  submit.commandBufferCount = 1;
  submit.pCommandBuffers = &cb_;
  {
    std::lock_guard lock(ctx_->queue_mutex());
    if (ctx_->lost()) check(VK_ERROR_DEVICE_LOST, "Recorder: vkQueueSubmit");
    check(vkQueueSubmit(ctx_->queue(), 1, &submit, fence_), "Recorder: vkQueueSubmit");
  }
  VkResult r = vkWaitForFences(ctx_->device(), 1, &fence_, VK_TRUE, UINT64_MAX);
  vkResetFences(ctx_->device(), 1, &fence_);
  check(ctx_->observe_submission(r), "Recorder: vkWaitForFences");
}

}  // namespace kvscope::gpu
