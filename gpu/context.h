// The Vulkan instance, the chosen physical device, its logical device and
// compute queue. Move-only; everything else in gpu/ borrows a Context (and
// must be destroyed before it).
//
// The gpu/ layer in one paragraph: a Context picks a device and owns the
// queue; Buffers are VkBuffers with their own memory (device, upload or
// readback); a Pipeline is one shader of the build table (shaders/shaders.cmake,
// embedded as SPIR-V) with its binding count, push-constant size and
// specialization constants; a Recorder records many checked dispatches into one
// command buffer and submits it once; a Timer attached to a Recorder sums GPU
// time per pipeline name. Errors are GpuError (OutOfMemory for allocations),
// with messages that say what to do. With KVSCOPE_VALIDATION=1 the Khronos
// validation layer runs and its warnings/errors are counted
// (validation_messages()), so tests can require zero.
#pragma once
#include <vulkan/vulkan.h>

#include <atomic>
#include <cstdint>
#include <memory>
#include <functional>
#include <mutex>
#include <stdexcept>
#include <string>
#include <vector>

namespace kvscope::gpu {

// Thrown for every Vulkan failure; the message says what failed and what to do
// ("no Vulkan device found: install mesa-vulkan-drivers for the CPU device").
struct GpuError : std::runtime_error {
  using std::runtime_error::runtime_error;
};
// Thrown when an allocation fails for lack of device or host memory.
struct OutOfMemory : GpuError {
  using GpuError::GpuError;
};
// Thrown when the device is lost (VK_ERROR_DEVICE_LOST: a driver reset, a
// hang, the GPU removed). Nothing more runs on that VkDevice: every later
// submission and allocation on it throws this too; the Engine must be made
// again (the window reloads the model and keeps its conversations).
struct DeviceLost : GpuError {
  using GpuError::GpuError;
};

struct DeviceInfo {
  uint32_t index = 0;               // position in vkEnumeratePhysicalDevices
  std::string name;
  std::string type;                 // "discrete", "integrated", "virtual", "cpu", "other"
  std::string driver;               // driver name + info
  uint32_t vendor_id = 0;
  uint64_t device_local_bytes = 0;  // largest DEVICE_LOCAL heap
  uint32_t subgroup_size = 0;
  uint64_t max_storage_buffer_range = 0;
  uint64_t min_storage_buffer_offset_alignment = 0;
  uint32_t max_workgroup_size_x = 0;
  uint32_t max_shared_memory_bytes = 0;
  bool timestamps = false;          // compute queue supports timestamps
  float timestamp_period_ns = 0;
};

// Lists every Vulkan device. Throws GpuError when there is no loader or no
// device, with what to install.
std::vector<DeviceInfo> list_devices();

struct ContextOptions {
  int device_index = -1;  // -1: discrete > integrated > virtual > cpu
  // Enable VK_LAYER_KHRONOS_validation when installed; also turned on by the
  // environment variable KVSCOPE_VALIDATION=1 (the tests set it).
  bool validation = false;
  // Where the VkPipelineCache lives between runs; empty: no cache file.
  std::string pipeline_cache_path;
  // Cap on bytes bound per storage-buffer binding, below the device's
  // maxStorageBufferRange (0: the device limit). Tests lower it to exercise
  // the splitting of large tensors across bindings.
  uint64_t max_binding_bytes = 0;
  // Cap on the device memory reported in DeviceInfo::device_local_bytes (0:
  // the largest device-local heap). Tests lower it to exercise the check that
  // a model fits before anything is uploaded.
  uint64_t max_device_bytes = 0;
  // Device memory kvscope may allocate on this context, in bytes (0: what
  // the driver gives). An allocation beyond it fails as the driver's own
  // VK_ERROR_OUT_OF_DEVICE_MEMORY does (the same OutOfMemory, same path):
  // how the tests and a person (KVSCOPE_DEVICE_MEMORY_BUDGET_MB=N) make a
  // session run out of memory part way through on any machine.
  uint64_t device_memory_budget = 0;
};

class Context {
 public:
  explicit Context(const ContextOptions& options = {});
  ~Context();
  Context(Context&&) noexcept;
  Context& operator=(Context&&) noexcept;
  Context(const Context&) = delete;
  Context& operator=(const Context&) = delete;

  VkInstance instance() const;
  VkPhysicalDevice physical_device() const;
  VkDevice device() const;
  VkQueue queue() const;
  uint32_t queue_family() const;
  VkPipelineCache pipeline_cache() const;
  const DeviceInfo& info() const;

  // Largest range one storage-buffer binding may cover (device limit or the
  // ContextOptions cap, whichever is smaller), rounded down to 256 bytes.
  uint64_t max_binding_bytes() const;
  // Largest range one uniform-texel-buffer binding may cover:
  // maxTexelBufferElements 16-byte texels (PipelineDesc::texel_bindings), with
  // the same ContextOptions cap, rounded down to 256 bytes.
  uint64_t max_texel_binding_bytes() const;
  uint32_t subgroup_size() const { return info().subgroup_size; }

  const VkPhysicalDeviceProperties& properties() const;  // limits, ids
  const VkPhysicalDeviceMemoryProperties& memory_properties() const;
  // Largest single allocation the driver accepts (maxMemoryAllocationSize).
  uint64_t max_allocation_bytes() const;

  // Memory type index with all of `required` (and `preferred` if possible);
  // throws GpuError if none.
  uint32_t memory_type(uint32_t type_bits, VkMemoryPropertyFlags required,
                       VkMemoryPropertyFlags preferred = 0) const;

  // Messages of severity warning or error from the validation layer so far
  // (0 when validation is off). Each is also printed to stderr.
  uint64_t validation_messages() const;
  bool validation_enabled() const;

  // Writes the pipeline cache file (also done by the destructor).
  void save_pipeline_cache() const;

  // Submissions to the queue go through this lock (sessions share a device).
  std::mutex& queue_mutex() const;

  // Device memory held by kvscope's buffers on this context now, in bytes
  // (the soak command samples it), and the budget (ContextOptions).
  uint64_t bytes_allocated() const;
  uint64_t device_memory_budget() const;
  void set_device_memory_budget(uint64_t bytes);
  // Buffers report their allocations here; throws OutOfMemory (through
  // `fail`) when `bytes` more would pass the budget.
  void reserve_device_bytes(uint64_t bytes, const std::function<void()>& fail) const;
  void release_device_bytes(uint64_t bytes) const;

  // Device loss. A queue submission or wait that returns
  // VK_ERROR_DEVICE_LOST marks the context lost for good (lost() true; every
  // later submission and allocation throws DeviceLost). simulate_device_lost()
  // makes the next Recorder submission (a forward pass) end so — a real GPU
  // cannot be made to reset on demand — as does KVSCOPE_LOSE_DEVICE_AFTER=N
  // (the N-th Recorder submission; uploads do not count) for a person trying
  // the window's recovery.
  bool lost() const;
  void simulate_device_lost() const;
  // Filters a submission's wait result through the above (gpu/ only);
  // `counted`: a Recorder submission, which the simulated loss counts.
  VkResult observe_submission(VkResult r, bool counted = true) const;

  // Runs `record` in a one-shot command buffer and waits (uploads, tests).
  // Thread-safe; const because Buffers borrow a const Context for uploads.
  template <class F>
  void run_once(F&& record) const;

 private:
  struct State;
  std::unique_ptr<State> s_;
  VkCommandBuffer begin_one_shot() const;
  void end_one_shot(VkCommandBuffer cb) const;
  void abandon_one_shot(VkCommandBuffer cb) const;  // `record` threw
};

template <class F>
void Context::run_once(F&& record) const {
  VkCommandBuffer cb = begin_one_shot();
  try {
    record(cb);
  } catch (...) {
    abandon_one_shot(cb);
    throw;
  }
  end_one_shot(cb);
}

// How the Context ranks device types when none is asked for: higher is
// better (discrete > integrated > virtual > cpu > other). The window's own
// device choice uses the same order.
int device_type_rank(VkPhysicalDeviceType type);
// Whether the validation layer should be on: asked for by `requested` or by
// KVSCOPE_VALIDATION=1, and VK_LAYER_KHRONOS_validation is installed.
bool validation_wanted(bool requested);
// Warnings and errors from the validation layer over every Context this
// process made, those already destroyed included: what a test executable
// checks once after all its cases.
uint64_t process_validation_messages();

// Throws GpuError("what: VK_ERROR_...") or OutOfMemory for non-success codes.
void check(VkResult r, const char* what);

inline uint32_t ceil_div(uint64_t a, uint64_t b) { return static_cast<uint32_t>((a + b - 1) / b); }

}  // namespace kvscope::gpu
