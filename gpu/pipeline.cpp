// Pipeline: one shader of the build table as a compute pipeline, plus the
// descriptor sets its dispatches bind, cached by exact buffer ranges.
#include "gpu/pipeline.h"

#include <fmt/format.h>

#include <algorithm>
#include <utility>

namespace kvscope::gpu {

namespace {

// Descriptor pools start small and double, so a pipeline used with a few
// binding sets costs little and one used with many needs few pools.
constexpr uint32_t kFirstPoolSets = 64;
constexpr uint32_t kMaxPoolSets = 1024;

// The one texel format of texel bindings (PipelineDesc::texel_bindings).
constexpr VkFormat kTexelFormat = VK_FORMAT_R32G32B32A32_UINT;
constexpr uint64_t kTexelBytes = 16;

}  // namespace

Pipeline::Pipeline(const Context& ctx, const PipelineDesc& desc) : ctx_(&ctx), desc_(desc) {
  const std::string shader(shaders::name(desc.shader));
  const VkDevice device = ctx.device();
  const VkPhysicalDeviceLimits& limits = ctx.properties().limits;
  if (desc.push_bytes % 4 != 0 || desc.push_bytes > limits.maxPushConstantsSize)
    throw GpuError(fmt::format("pipeline '{}': push-constant size {} must be a multiple of 4 "
                               "and at most {} (the device limit)",
                               shader, desc.push_bytes, limits.maxPushConstantsSize));
  if (desc.n_bindings < 32 && (desc.texel_bindings >> desc.n_bindings) != 0)
    throw GpuError(fmt::format("pipeline '{}': texel_bindings mask {:#x} names bindings beyond its {} bindings",
                               shader, desc.texel_bindings, desc.n_bindings));
  if (desc.texel_bindings != 0) {
    VkFormatProperties format{};
    vkGetPhysicalDeviceFormatProperties(ctx.physical_device(), kTexelFormat, &format);
    if (!(format.bufferFeatures & VK_FORMAT_FEATURE_UNIFORM_TEXEL_BUFFER_BIT))
      throw GpuError(fmt::format("pipeline '{}': device {} cannot read R32G32B32A32_UINT uniform texel "
                                 "buffers, which Vulkan requires of every device; update its driver",
                                 shader, ctx.info().name));
  }
  std::span<const uint32_t> spirv = shaders::spirv(desc.shader);
  if (spirv.empty())
    throw GpuError(fmt::format("pipeline '{}': no SPIR-V embedded for this shader; was the "
                               "build configured with KVSCOPE_SHADER_ONLY_SMOKE=ON?",
                               shader));

  // Partly built pipelines are released by release(), since the destructor
  // does not run when the constructor throws.
  try {
    VkShaderModuleCreateInfo module_info{VK_STRUCTURE_TYPE_SHADER_MODULE_CREATE_INFO};
    module_info.codeSize = spirv.size_bytes();
    module_info.pCode = spirv.data();
    check(vkCreateShaderModule(device, &module_info, nullptr, &module_),
          fmt::format("pipeline '{}': vkCreateShaderModule", shader).c_str());

    std::vector<VkDescriptorSetLayoutBinding> bindings(desc.n_bindings);
    for (uint32_t i = 0; i < desc.n_bindings; ++i) {
      bindings[i].binding = i;
      bindings[i].descriptorType =
          is_texel(i) ? VK_DESCRIPTOR_TYPE_UNIFORM_TEXEL_BUFFER : VK_DESCRIPTOR_TYPE_STORAGE_BUFFER;
      bindings[i].descriptorCount = 1;
      bindings[i].stageFlags = VK_SHADER_STAGE_COMPUTE_BIT;
    }
    VkDescriptorSetLayoutCreateInfo set_info{VK_STRUCTURE_TYPE_DESCRIPTOR_SET_LAYOUT_CREATE_INFO};
    set_info.bindingCount = desc.n_bindings;
    set_info.pBindings = bindings.data();
    check(vkCreateDescriptorSetLayout(device, &set_info, nullptr, &set_layout_),
          fmt::format("pipeline '{}': vkCreateDescriptorSetLayout", shader).c_str());

    VkPushConstantRange push{VK_SHADER_STAGE_COMPUTE_BIT, 0, desc.push_bytes};
    VkPipelineLayoutCreateInfo layout_info{VK_STRUCTURE_TYPE_PIPELINE_LAYOUT_CREATE_INFO};
    layout_info.setLayoutCount = 1;
    layout_info.pSetLayouts = &set_layout_;
    layout_info.pushConstantRangeCount = desc.push_bytes > 0 ? 1 : 0;
    layout_info.pPushConstantRanges = &push;
    check(vkCreatePipelineLayout(device, &layout_info, nullptr, &layout_),
          fmt::format("pipeline '{}': vkCreatePipelineLayout", shader).c_str());

    std::vector<VkSpecializationMapEntry> entries(desc.spec.size());
    for (uint32_t i = 0; i < entries.size(); ++i)
      entries[i] = {i, static_cast<uint32_t>(i * sizeof(uint32_t)), sizeof(uint32_t)};
    VkSpecializationInfo spec{};
    spec.mapEntryCount = static_cast<uint32_t>(entries.size());
    spec.pMapEntries = entries.data();
    spec.dataSize = desc.spec.size() * sizeof(uint32_t);
    spec.pData = desc.spec.data();

    VkComputePipelineCreateInfo info{VK_STRUCTURE_TYPE_COMPUTE_PIPELINE_CREATE_INFO};
    info.stage.sType = VK_STRUCTURE_TYPE_PIPELINE_SHADER_STAGE_CREATE_INFO;
    info.stage.stage = VK_SHADER_STAGE_COMPUTE_BIT;
    info.stage.module = module_;
    info.stage.pName = "main";
    info.stage.pSpecializationInfo = desc.spec.empty() ? nullptr : &spec;
    info.layout = layout_;
    check(vkCreateComputePipelines(device, ctx.pipeline_cache(), 1, &info, nullptr, &pipeline_),
          fmt::format("pipeline '{}': vkCreateComputePipelines", shader).c_str());
  } catch (...) {
    release();
    throw;
  }
  key_scratch_.reserve(3 * desc.n_bindings);
}

void Pipeline::release() {
  if (!ctx_) return;
  VkDevice device = ctx_->device();
  // Destroying a pool frees its sets; the views they point at go after them.
  for (VkDescriptorPool pool : pools_) vkDestroyDescriptorPool(device, pool, nullptr);
  for (VkBufferView view : views_) vkDestroyBufferView(device, view, nullptr);
  views_.clear();
  if (pipeline_) vkDestroyPipeline(device, pipeline_, nullptr);
  if (layout_) vkDestroyPipelineLayout(device, layout_, nullptr);
  if (set_layout_) vkDestroyDescriptorSetLayout(device, set_layout_, nullptr);
  if (module_) vkDestroyShaderModule(device, module_, nullptr);
  pools_.clear();
  sets_.clear();
  pipeline_ = VK_NULL_HANDLE;
  layout_ = VK_NULL_HANDLE;
  set_layout_ = VK_NULL_HANDLE;
  module_ = VK_NULL_HANDLE;
  ctx_ = nullptr;
}

Pipeline::~Pipeline() { release(); }

Pipeline::Pipeline(Pipeline&& o) noexcept
    : ctx_(std::exchange(o.ctx_, nullptr)),
      desc_(std::move(o.desc_)),
      module_(std::exchange(o.module_, VK_NULL_HANDLE)),
      set_layout_(std::exchange(o.set_layout_, VK_NULL_HANDLE)),
      layout_(std::exchange(o.layout_, VK_NULL_HANDLE)),
      pipeline_(std::exchange(o.pipeline_, VK_NULL_HANDLE)),
      pools_(std::move(o.pools_)),
      sets_in_last_pool_(std::exchange(o.sets_in_last_pool_, 0)),
      sets_(std::move(o.sets_)),
      views_(std::move(o.views_)),
      key_scratch_(std::move(o.key_scratch_)),
      last_pool_capacity_(std::exchange(o.last_pool_capacity_, 0)) {
  o.pools_.clear();
  o.sets_.clear();
  o.views_.clear();
}

Pipeline& Pipeline::operator=(Pipeline&& o) noexcept {
  if (this != &o) {
    release();
    ctx_ = std::exchange(o.ctx_, nullptr);
    desc_ = std::move(o.desc_);
    module_ = std::exchange(o.module_, VK_NULL_HANDLE);
    set_layout_ = std::exchange(o.set_layout_, VK_NULL_HANDLE);
    layout_ = std::exchange(o.layout_, VK_NULL_HANDLE);
    pipeline_ = std::exchange(o.pipeline_, VK_NULL_HANDLE);
    pools_ = std::move(o.pools_);
    sets_in_last_pool_ = std::exchange(o.sets_in_last_pool_, 0);
    sets_ = std::move(o.sets_);
    views_ = std::move(o.views_);
    key_scratch_ = std::move(o.key_scratch_);
    last_pool_capacity_ = std::exchange(o.last_pool_capacity_, 0);
    o.pools_.clear();
    o.sets_.clear();
    o.views_.clear();
  }
  return *this;
}

VkDescriptorPool Pipeline::new_pool() {
  const uint32_t sets = last_pool_capacity_ == 0
                            ? kFirstPoolSets
                            : std::min(last_pool_capacity_ * 2, kMaxPoolSets);
  const uint32_t texel = n_texel_bindings();
  VkDescriptorPoolSize sizes[2];
  uint32_t n_sizes = 0;
  if (desc_.n_bindings > texel)
    sizes[n_sizes++] = {VK_DESCRIPTOR_TYPE_STORAGE_BUFFER, sets * (desc_.n_bindings - texel)};
  if (texel > 0) sizes[n_sizes++] = {VK_DESCRIPTOR_TYPE_UNIFORM_TEXEL_BUFFER, sets * texel};
  VkDescriptorPoolCreateInfo info{VK_STRUCTURE_TYPE_DESCRIPTOR_POOL_CREATE_INFO};
  info.maxSets = sets;
  info.poolSizeCount = n_sizes;
  info.pPoolSizes = sizes;
  VkDescriptorPool pool = VK_NULL_HANDLE;
  check(vkCreateDescriptorPool(ctx_->device(), &info, nullptr, &pool),
        fmt::format("pipeline '{}': vkCreateDescriptorPool", name()).c_str());
  pools_.push_back(pool);
  last_pool_capacity_ = sets;
  sets_in_last_pool_ = 0;
  return pool;
}

uint32_t Pipeline::n_texel_bindings() const {
  uint32_t n = 0;
  for (uint32_t i = 0; i < desc_.n_bindings; ++i) n += is_texel(i) ? 1 : 0;
  return n;
}

VkDescriptorSet Pipeline::descriptor_set(std::span<const Binding> bindings) {
  if (!pipeline_) throw GpuError("descriptor_set on an empty (moved-from or default) Pipeline");
  if (bindings.size() != desc_.n_bindings)
    throw GpuError(fmt::format("pipeline '{}' takes {} bindings, got {}", name(),
                               desc_.n_bindings, bindings.size()));
  // No bindings: the layout has an empty set and nothing needs binding.
  if (desc_.n_bindings == 0) return VK_NULL_HANDLE;

  const uint64_t storage_alignment = ctx_->info().min_storage_buffer_offset_alignment;
  const uint64_t texel_alignment = ctx_->properties().limits.minTexelBufferOffsetAlignment;
  key_scratch_.clear();
  for (size_t i = 0; i < bindings.size(); ++i) {
    const Binding& b = bindings[i];
    if (!b.buffer || !b.buffer->handle())
      throw GpuError(fmt::format("pipeline '{}' binding {}: no buffer (null or moved-from)",
                                 name(), i));
    const uint64_t size = b.buffer->size();
    if (b.offset >= size)
      throw GpuError(fmt::format("pipeline '{}' binding {}: offset {} is not inside the "
                                 "{}-byte buffer",
                                 name(), i, b.offset, size));
    const bool texel = is_texel(uint32_t(i));
    const uint64_t alignment = texel ? texel_alignment : storage_alignment;
    if (alignment > 0 && b.offset % alignment != 0)
      throw GpuError(fmt::format("pipeline '{}' binding {}: offset {} is not a multiple of "
                                 "the device's {} offset alignment ({} bytes)",
                                 name(), i, b.offset, texel ? "texel-buffer" : "storage-buffer",
                                 alignment));
    const uint64_t range = b.range == VK_WHOLE_SIZE ? size - b.offset : b.range;
    if (range == 0 || range > size - b.offset)
      throw GpuError(fmt::format("pipeline '{}' binding {}: range {} at offset {} does not fit "
                                 "in the {}-byte buffer",
                                 name(), i, range, b.offset, size));
    const uint64_t max_range = texel ? ctx_->max_texel_binding_bytes() : ctx_->max_binding_bytes();
    if (range > max_range)
      throw GpuError(fmt::format("pipeline '{}' binding {}: {} bytes bound, above the limit of "
                                 "{} bytes per {} binding; split the tensor across bindings",
                                 name(), i, range, max_range, texel ? "texel-buffer" : "storage-buffer"));
    if (texel && range % kTexelBytes != 0)
      throw GpuError(fmt::format("pipeline '{}' binding {}: a texel binding must cover whole "
                                 "{}-byte texels, got {} bytes; pad the rows of the data",
                                 name(), i, kTexelBytes, range));
    key_scratch_.push_back(b.buffer->id());
    key_scratch_.push_back(b.offset);
    key_scratch_.push_back(range);
  }
  if (auto hit = sets_.find(key_scratch_); hit != sets_.end()) return hit->second;

  // Miss: a new set from the newest pool (a new pool when it is full).
  VkDescriptorPool pool = pools_.empty() || sets_in_last_pool_ == last_pool_capacity_
                              ? new_pool()
                              : pools_.back();
  VkDescriptorSetAllocateInfo alloc{VK_STRUCTURE_TYPE_DESCRIPTOR_SET_ALLOCATE_INFO};
  alloc.descriptorPool = pool;
  alloc.descriptorSetCount = 1;
  alloc.pSetLayouts = &set_layout_;
  VkDescriptorSet set = VK_NULL_HANDLE;
  check(vkAllocateDescriptorSets(ctx_->device(), &alloc, &set),
        fmt::format("pipeline '{}': vkAllocateDescriptorSets", name()).c_str());
  ++sets_in_last_pool_;

  std::vector<VkDescriptorBufferInfo> infos(bindings.size());
  std::vector<VkBufferView> views(bindings.size(), VK_NULL_HANDLE);
  std::vector<VkWriteDescriptorSet> writes(bindings.size());
  for (uint32_t i = 0; i < bindings.size(); ++i) {
    writes[i] = {VK_STRUCTURE_TYPE_WRITE_DESCRIPTOR_SET};
    writes[i].dstSet = set;
    writes[i].dstBinding = i;
    writes[i].descriptorCount = 1;
    if (is_texel(i)) {
      VkBufferViewCreateInfo view_info{VK_STRUCTURE_TYPE_BUFFER_VIEW_CREATE_INFO};
      view_info.buffer = bindings[i].buffer->handle();
      view_info.format = kTexelFormat;
      view_info.offset = key_scratch_[3 * i + 1];
      view_info.range = key_scratch_[3 * i + 2];
      check(vkCreateBufferView(ctx_->device(), &view_info, nullptr, &views[i]),
            fmt::format("pipeline '{}' binding {}: vkCreateBufferView", name(), i).c_str());
      views_.push_back(views[i]);  // owned from here on, even if a later view fails
      writes[i].descriptorType = VK_DESCRIPTOR_TYPE_UNIFORM_TEXEL_BUFFER;
      writes[i].pTexelBufferView = &views[i];
    } else {
      infos[i] = {bindings[i].buffer->handle(), key_scratch_[3 * i + 1], key_scratch_[3 * i + 2]};
      writes[i].descriptorType = VK_DESCRIPTOR_TYPE_STORAGE_BUFFER;
      writes[i].pBufferInfo = &infos[i];
    }
  }
  vkUpdateDescriptorSets(ctx_->device(), static_cast<uint32_t>(writes.size()), writes.data(), 0,
                         nullptr);
  sets_.emplace(key_scratch_, set);
  return set;
}

}  // namespace kvscope::gpu
