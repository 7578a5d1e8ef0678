// Buffer: a VkBuffer with its own VkDeviceMemory, persistently mapped when the
// memory is host-visible (always on lavapipe and integrated GPUs, where device
// memory is host memory: writes are then a memcpy, no staging copy).
#include "gpu/buffer.h"

#include <fmt/format.h>

#include <algorithm>
#include <atomic>
#include <cstring>
#include <utility>

namespace kvscope::gpu {

namespace {

std::string human_bytes(uint64_t bytes) {
  if (bytes >= (1ull << 30)) return fmt::format("{:.1f} GiB", bytes / double(1ull << 30));
  if (bytes >= (1ull << 20)) return fmt::format("{:.1f} MiB", bytes / double(1ull << 20));
  if (bytes >= (1ull << 10)) return fmt::format("{:.1f} KiB", bytes / double(1ull << 10));
  return fmt::format("{} bytes", bytes);
}

[[noreturn]] void throw_out_of_memory(const Context& ctx, uint64_t bytes, const char* label,
                                      const std::string& why) {
  throw OutOfMemory(fmt::format(
      "cannot allocate {} for '{}' on {}: {}; use a smaller context (-c) or a smaller model",
      human_bytes(bytes), label, ctx.info().name, why));
}

// Staging copies are done in pieces so that uploading a multi-GiB weight to a
// discrete GPU does not need as much again in host-visible memory.
constexpr uint64_t kStagingChunk = 64ull << 20;

std::atomic<uint64_t> next_buffer_id{1};

}  // namespace

Buffer::Buffer(const Context& ctx, uint64_t bytes, MemoryUse use, const char* label)
    : ctx_(&ctx), id_(next_buffer_id.fetch_add(1, std::memory_order_relaxed)) {
  // A zero-size VkBuffer is invalid; empty tensors still get a bindable buffer.
  size_ = std::max<uint64_t>(bytes, 16);
  VkDevice device = ctx.device();

  VkMemoryPropertyFlags required = 0, preferred = 0;
  switch (use) {
    case MemoryUse::Device: preferred = VK_MEMORY_PROPERTY_DEVICE_LOCAL_BIT; break;
    case MemoryUse::Upload:
      required = VK_MEMORY_PROPERTY_HOST_VISIBLE_BIT | VK_MEMORY_PROPERTY_HOST_COHERENT_BIT;
      preferred = VK_MEMORY_PROPERTY_DEVICE_LOCAL_BIT;
      break;
    case MemoryUse::Readback:
      required = VK_MEMORY_PROPERTY_HOST_VISIBLE_BIT;
      preferred = VK_MEMORY_PROPERTY_HOST_CACHED_BIT;
      break;
  }

  // Sizes the driver would refuse anyway get a message that names them.
  if (ctx.max_allocation_bytes() > 0 && size_ > ctx.max_allocation_bytes())
    throw_out_of_memory(ctx, size_, label,
                        fmt::format("larger than the largest allocation the driver allows ({})",
                                    human_bytes(ctx.max_allocation_bytes())));

  VkBufferCreateInfo info{VK_STRUCTURE_TYPE_BUFFER_CREATE_INFO};
  info.size = size_;
  // Any buffer may be bound as a storage buffer or, for pipelines that read it
  // through texels (PipelineDesc::texel_bindings: weights), a uniform texel buffer.
  info.usage = VK_BUFFER_USAGE_STORAGE_BUFFER_BIT | VK_BUFFER_USAGE_UNIFORM_TEXEL_BUFFER_BIT |
               VK_BUFFER_USAGE_TRANSFER_SRC_BIT | VK_BUFFER_USAGE_TRANSFER_DST_BIT;
  info.sharingMode = VK_SHARING_MODE_EXCLUSIVE;
  VkResult r = vkCreateBuffer(device, &info, nullptr, &buffer_);
  if (r == VK_ERROR_OUT_OF_DEVICE_MEMORY || r == VK_ERROR_OUT_OF_HOST_MEMORY)
    throw_out_of_memory(ctx, size_, label, "vkCreateBuffer failed: out of memory");
  check(r, fmt::format("vkCreateBuffer for '{}' ({})", label, human_bytes(size_)).c_str());

  // From here on a throw must release the buffer: the destructor won't run.
  try {
    VkMemoryRequirements req{};
    vkGetBufferMemoryRequirements(device, buffer_, &req);
    uint32_t type = ctx.memory_type(req.memoryTypeBits, required, preferred);
    const VkPhysicalDeviceMemoryProperties& mem = ctx.memory_properties();
    const VkMemoryPropertyFlags flags = mem.memoryTypes[type].propertyFlags;
    const uint64_t heap = mem.memoryHeaps[mem.memoryTypes[type].heapIndex].size;
    if (req.size > heap)
      throw_out_of_memory(ctx, req.size, label,
                          fmt::format("larger than the whole memory heap ({})", human_bytes(heap)));

    VkMemoryAllocateInfo alloc{VK_STRUCTURE_TYPE_MEMORY_ALLOCATE_INFO};
    alloc.allocationSize = req.size;
    alloc.memoryTypeIndex = type;
    ctx.reserve_device_bytes(req.size, [&] { throw_out_of_memory(ctx, req.size, label, "out of device memory"); });
    accounted_ = req.size;
    r = vkAllocateMemory(device, &alloc, nullptr, &memory_);
    if (r == VK_ERROR_OUT_OF_DEVICE_MEMORY)
      throw_out_of_memory(ctx, req.size, label, "out of device memory");
    if (r == VK_ERROR_OUT_OF_HOST_MEMORY)
      throw_out_of_memory(ctx, req.size, label, "out of host memory");
    check(r, fmt::format("vkAllocateMemory for '{}' ({})", label, human_bytes(req.size)).c_str());
    check(vkBindBufferMemory(device, buffer_, memory_, 0),
          fmt::format("vkBindBufferMemory for '{}'", label).c_str());

    if (flags & VK_MEMORY_PROPERTY_HOST_VISIBLE_BIT) {
      check(vkMapMemory(device, memory_, 0, VK_WHOLE_SIZE, 0, &mapped_),
            fmt::format("vkMapMemory for '{}'", label).c_str());
      coherent_ = (flags & VK_MEMORY_PROPERTY_HOST_COHERENT_BIT) != 0;
    }
  } catch (...) {
    if (memory_) vkFreeMemory(device, memory_, nullptr);
    if (accounted_) ctx.release_device_bytes(std::exchange(accounted_, 0));
    vkDestroyBuffer(device, buffer_, nullptr);
    buffer_ = VK_NULL_HANDLE;
    memory_ = VK_NULL_HANDLE;
    mapped_ = nullptr;
    throw;
  }
}

Buffer::~Buffer() {
  if (!ctx_) return;
  VkDevice device = ctx_->device();
  // Freeing the memory unmaps it.
  if (buffer_) vkDestroyBuffer(device, buffer_, nullptr);
  if (memory_) vkFreeMemory(device, memory_, nullptr);
  if (accounted_) ctx_->release_device_bytes(accounted_);
}

Buffer::Buffer(Buffer&& o) noexcept
    : ctx_(std::exchange(o.ctx_, nullptr)),
      buffer_(std::exchange(o.buffer_, VK_NULL_HANDLE)),
      memory_(std::exchange(o.memory_, VK_NULL_HANDLE)),
      accounted_(std::exchange(o.accounted_, 0)),
      size_(std::exchange(o.size_, 0)),
      mapped_(std::exchange(o.mapped_, nullptr)),
      coherent_(std::exchange(o.coherent_, true)),
      id_(std::exchange(o.id_, 0)) {}

Buffer& Buffer::operator=(Buffer&& o) noexcept {
  if (this != &o) {
    Buffer old(std::move(*this));  // releases what this held
    ctx_ = std::exchange(o.ctx_, nullptr);
    buffer_ = std::exchange(o.buffer_, VK_NULL_HANDLE);
    memory_ = std::exchange(o.memory_, VK_NULL_HANDLE);
    accounted_ = std::exchange(o.accounted_, 0);
    size_ = std::exchange(o.size_, 0);
    mapped_ = std::exchange(o.mapped_, nullptr);
    coherent_ = std::exchange(o.coherent_, true);
    id_ = std::exchange(o.id_, 0);
  }
  return *this;
}

namespace {

void check_range(uint64_t size, uint64_t offset, uint64_t bytes, const char* what) {
  if (offset > size || bytes > size - offset)
    throw GpuError(fmt::format("Buffer::{}: {} bytes at offset {} run past the end of a "
                               "{}-byte buffer",
                               what, bytes, offset, size));
}

}  // namespace

void Buffer::write(std::span<const uint8_t> bytes, uint64_t offset) {
  if (!buffer_) throw GpuError("Buffer::write on an empty (moved-from or default) Buffer");
  check_range(size_, offset, bytes.size(), "write");
  if (bytes.empty()) return;
  if (mapped_) {
    std::memcpy(static_cast<uint8_t*>(mapped_) + offset, bytes.data(), bytes.size());
    if (!coherent_) {
      VkMappedMemoryRange range{VK_STRUCTURE_TYPE_MAPPED_MEMORY_RANGE};
      range.memory = memory_;
      range.size = VK_WHOLE_SIZE;  // whole range: no nonCoherentAtomSize rounding
      check(vkFlushMappedMemoryRanges(ctx_->device(), 1, &range), "vkFlushMappedMemoryRanges");
    }
    return;
  }
  Buffer staging(*ctx_, std::min<uint64_t>(bytes.size(), kStagingChunk), MemoryUse::Upload,
                 "staging upload");
  for (uint64_t done = 0; done < bytes.size(); done += kStagingChunk) {
    const uint64_t n = std::min<uint64_t>(bytes.size() - done, kStagingChunk);
    std::memcpy(staging.mapped_, bytes.data() + done, n);
    ctx_->run_once([&](VkCommandBuffer cb) {
      VkBufferCopy region{0, offset + done, n};
      vkCmdCopyBuffer(cb, staging.buffer_, buffer_, 1, &region);
    });
  }
}

void Buffer::read(std::span<uint8_t> bytes, uint64_t offset) const {
  if (!buffer_) throw GpuError("Buffer::read on an empty (moved-from or default) Buffer");
  check_range(size_, offset, bytes.size(), "read");
  if (bytes.empty()) return;
  if (mapped_) {
    if (!coherent_) {
      VkMappedMemoryRange range{VK_STRUCTURE_TYPE_MAPPED_MEMORY_RANGE};
      range.memory = memory_;
      range.size = VK_WHOLE_SIZE;
      check(vkInvalidateMappedMemoryRanges(ctx_->device(), 1, &range),
            "vkInvalidateMappedMemoryRanges");
    }
    std::memcpy(bytes.data(), static_cast<const uint8_t*>(mapped_) + offset, bytes.size());
    return;
  }
  Buffer staging(*ctx_, std::min<uint64_t>(bytes.size(), kStagingChunk), MemoryUse::Readback,
                 "staging readback");
  for (uint64_t done = 0; done < bytes.size(); done += kStagingChunk) {
    const uint64_t n = std::min<uint64_t>(bytes.size() - done, kStagingChunk);
    ctx_->run_once([&](VkCommandBuffer cb) {
      VkBufferCopy region{offset + done, 0, n};
      vkCmdCopyBuffer(cb, buffer_, staging.buffer_, 1, &region);
      // The fence alone does not make device writes visible to the host.
      VkMemoryBarrier to_host{VK_STRUCTURE_TYPE_MEMORY_BARRIER};
      to_host.srcAccessMask = VK_ACCESS_TRANSFER_WRITE_BIT;
      to_host.dstAccessMask = VK_ACCESS_HOST_READ_BIT;
      vkCmdPipelineBarrier(cb, VK_PIPELINE_STAGE_TRANSFER_BIT, VK_PIPELINE_STAGE_HOST_BIT, 0, 1,
                           &to_host, 0, nullptr, 0, nullptr);
    });
    staging.read(bytes.subspan(done, n), 0);
  }
}

void Buffer::fill_zero() {
  if (!buffer_) throw GpuError("Buffer::fill_zero on an empty (moved-from or default) Buffer");
  if (mapped_) {
    std::memset(mapped_, 0, size_);
    if (!coherent_) {
      VkMappedMemoryRange range{VK_STRUCTURE_TYPE_MAPPED_MEMORY_RANGE};
      range.memory = memory_;
      range.size = VK_WHOLE_SIZE;
      check(vkFlushMappedMemoryRanges(ctx_->device(), 1, &range), "vkFlushMappedMemoryRanges");
    }
    return;
  }
  ctx_->run_once([&](VkCommandBuffer cb) { vkCmdFillBuffer(cb, buffer_, 0, VK_WHOLE_SIZE, 0); });
}

}  // namespace kvscope::gpu
