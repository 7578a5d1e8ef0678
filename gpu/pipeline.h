// A compute pipeline built from embedded SPIR-V: module, descriptor set
// layout (n storage or uniform texel buffers), push-constant range, specialization constants.
// Move-only. Knows its binding count and push-constant size so that
// Recorder::dispatch can check every call against them.
#pragma once
#include <vulkan/vulkan.h>

#include <cstdint>
#include <map>
#include <span>
#include <string>
#include <vector>

#include "gpu/buffer.h"
#include "gpu/context.h"
#include "kvscope_shaders.h"

namespace kvscope::gpu {

struct PipelineDesc {
  shaders::Id shader;
  uint32_t n_bindings = 0;          // storage buffers, bindings 0..n-1 of set 0
  uint32_t push_bytes = 0;          // size of the push-constant struct (<= 128)
  std::vector<uint32_t> spec = {};  // specialization constants, constant_id 0..n-1
  // Bit i set: binding i is a uniform texel buffer of 16-byte texels
  // (R32G32B32A32_UINT; GLSL `uniform usamplerBuffer`, texelFetch -> uvec4)
  // instead of a storage buffer. Weights are read this way: texel fetches run
  // 3-7x faster than storage-buffer loads on lavapipe and are cached reads on
  // GPUs. The bound range must be whole texels at an offset aligned to
  // minTexelBufferOffsetAlignment, at most Context::max_texel_binding_bytes().
  uint32_t texel_bindings = 0;
};

class Pipeline {
 public:
  Pipeline() = default;
  // Throws GpuError naming the shader when creation fails.
  Pipeline(const Context& ctx, const PipelineDesc& desc);
  ~Pipeline();
  Pipeline(Pipeline&&) noexcept;
  Pipeline& operator=(Pipeline&&) noexcept;
  Pipeline(const Pipeline&) = delete;
  Pipeline& operator=(const Pipeline&) = delete;

  VkPipeline handle() const { return pipeline_; }
  VkPipelineLayout layout() const { return layout_; }
  uint32_t n_bindings() const { return desc_.n_bindings; }
  uint32_t push_bytes() const { return desc_.push_bytes; }
  std::string_view name() const { return shaders::name(desc_.shader); }

  // A descriptor set holding these bindings; sets are cached by their exact
  // buffer ranges, so a step graph that repeats allocates nothing after the
  // first step. Checks count, alignment and the binding-range limit.
  VkDescriptorSet descriptor_set(std::span<const Binding> bindings);

 private:
  const Context* ctx_ = nullptr;
  PipelineDesc desc_{};
  VkShaderModule module_ = VK_NULL_HANDLE;
  VkDescriptorSetLayout set_layout_ = VK_NULL_HANDLE;
  VkPipelineLayout layout_ = VK_NULL_HANDLE;
  VkPipeline pipeline_ = VK_NULL_HANDLE;
  std::vector<VkDescriptorPool> pools_;
  uint32_t sets_in_last_pool_ = 0;
  std::map<std::vector<uint64_t>, VkDescriptorSet> sets_;  // key: (buffer id, offset, range)...
  std::vector<VkBufferView> views_;  // of texel bindings, made with their sets, live as long
  std::vector<uint64_t> key_scratch_;  // reused so that a cache hit allocates nothing
  uint32_t last_pool_capacity_ = 0;    // sets the newest pool holds; pools grow
  VkDescriptorPool new_pool();
  bool is_texel(uint32_t binding) const { return (desc_.texel_bindings >> binding) & 1u; }
  uint32_t n_texel_bindings() const;
  void release();
};

}  // namespace kvscope::gpu
