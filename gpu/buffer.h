// A VkBuffer with its own memory. Move-only.
#pragma once
#include <vulkan/vulkan.h>

#include <cstdint>
#include <span>

#include "gpu/context.h"

namespace kvscope::gpu {

enum class MemoryUse {
  Device,    // device-local; written through staging if not host-visible
  Upload,    // host-visible, coherent, for small per-step inputs (token ids, slots)
  Readback,  // host-visible, cached where possible, for logits and scores
};

class Buffer {
 public:
  Buffer() = default;
  // Throws OutOfMemory with the size and what to do when allocation fails.
  Buffer(const Context& ctx, uint64_t bytes, MemoryUse use, const char* label = "buffer");
  ~Buffer();
  Buffer(Buffer&&) noexcept;
  Buffer& operator=(Buffer&&) noexcept;
  Buffer(const Buffer&) = delete;
  Buffer& operator=(const Buffer&) = delete;

  VkBuffer handle() const { return buffer_; }
  // Unique for the life of the process, unlike handle(), which the driver may
  // hand out again after this buffer is destroyed (descriptor-set cache key).
  uint64_t id() const { return id_; }
  uint64_t size() const { return size_; }
  bool host_visible() const { return mapped_ != nullptr; }
  void* mapped() const { return mapped_; }  // nullptr unless host-visible

  // Copies host bytes in at `offset` (through a staging buffer when the memory
  // is not host-visible) and reads them back out. Bounds are checked.
  void write(std::span<const uint8_t> bytes, uint64_t offset = 0);
  void read(std::span<uint8_t> bytes, uint64_t offset = 0) const;
  template <class T> void write_as(std::span<const T> v, uint64_t offset = 0) {
    write({reinterpret_cast<const uint8_t*>(v.data()), v.size_bytes()}, offset);
  }
  template <class T> void read_as(std::span<T> v, uint64_t offset = 0) const {
    read({reinterpret_cast<uint8_t*>(v.data()), v.size_bytes()}, offset);
  }
  void fill_zero();

 private:
  const Context* ctx_ = nullptr;
  VkBuffer buffer_ = VK_NULL_HANDLE;
  VkDeviceMemory memory_ = VK_NULL_HANDLE;
  uint64_t accounted_ = 0;  // bytes counted in the Context's bytes_allocated()
  uint64_t size_ = 0;
  void* mapped_ = nullptr;
  bool coherent_ = true;
  uint64_t id_ = 0;
};

// What one binding of a dispatch sees: a range of a buffer.
struct Binding {
  const Buffer* buffer = nullptr;
  uint64_t offset = 0;
  uint64_t range = VK_WHOLE_SIZE;  // bytes from offset; WHOLE_SIZE: to the end
  Binding() = default;
  Binding(const Buffer& b) : buffer(&b) {}  // NOLINT: a whole buffer binds implicitly
  Binding(const Buffer& b, uint64_t off, uint64_t len) : buffer(&b), offset(off), range(len) {}
};

}  // namespace kvscope::gpu
