// Context: instance (+ validation), physical-device choice, logical device,
// compute queue, pipeline cache, one-shot command buffers.
//
// [SECTION] errors
// [SECTION] instance
// [SECTION] device description and choice
// [SECTION] pipeline cache file
// [SECTION] Context
#include "gpu/context.h"

#include <fmt/format.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <optional>
#include <string_view>
#include <unistd.h>

namespace kvscope::gpu {

// ====================================================================== errors

namespace {

const char* result_name(VkResult r) {
  switch (r) {
    case VK_SUCCESS: return "VK_SUCCESS";
    case VK_NOT_READY: return "VK_NOT_READY";
    case VK_TIMEOUT: return "VK_TIMEOUT";
    case VK_INCOMPLETE: return "VK_INCOMPLETE";
    case VK_ERROR_OUT_OF_HOST_MEMORY: return "VK_ERROR_OUT_OF_HOST_MEMORY";
    case VK_ERROR_OUT_OF_DEVICE_MEMORY: return "VK_ERROR_OUT_OF_DEVICE_MEMORY";
    case VK_ERROR_INITIALIZATION_FAILED: return "VK_ERROR_INITIALIZATION_FAILED";
    case VK_ERROR_DEVICE_LOST: return "VK_ERROR_DEVICE_LOST";
    case VK_ERROR_MEMORY_MAP_FAILED: return "VK_ERROR_MEMORY_MAP_FAILED";
    case VK_ERROR_LAYER_NOT_PRESENT: return "VK_ERROR_LAYER_NOT_PRESENT";
    case VK_ERROR_EXTENSION_NOT_PRESENT: return "VK_ERROR_EXTENSION_NOT_PRESENT";
    case VK_ERROR_FEATURE_NOT_PRESENT: return "VK_ERROR_FEATURE_NOT_PRESENT";
    case VK_ERROR_INCOMPATIBLE_DRIVER: return "VK_ERROR_INCOMPATIBLE_DRIVER";
    case VK_ERROR_TOO_MANY_OBJECTS: return "VK_ERROR_TOO_MANY_OBJECTS";
    case VK_ERROR_FORMAT_NOT_SUPPORTED: return "VK_ERROR_FORMAT_NOT_SUPPORTED";
    case VK_ERROR_FRAGMENTED_POOL: return "VK_ERROR_FRAGMENTED_POOL";
    case VK_ERROR_OUT_OF_POOL_MEMORY: return "VK_ERROR_OUT_OF_POOL_MEMORY";
    case VK_ERROR_INVALID_EXTERNAL_HANDLE: return "VK_ERROR_INVALID_EXTERNAL_HANDLE";
    case VK_ERROR_FRAGMENTATION: return "VK_ERROR_FRAGMENTATION";
    case VK_ERROR_INVALID_SHADER_NV: return "VK_ERROR_INVALID_SHADER_NV";
    default: return "VK_ERROR_UNKNOWN";
  }
}

}  // namespace

void check(VkResult r, const char* what) {
  if (r == VK_SUCCESS) return;
  std::string message = fmt::format("{}: {} ({})", what, result_name(r), static_cast<int>(r));
  if (r == VK_ERROR_OUT_OF_DEVICE_MEMORY || r == VK_ERROR_OUT_OF_HOST_MEMORY)
    throw OutOfMemory(message);
  if (r == VK_ERROR_DEVICE_LOST)
    throw DeviceLost(message + "; the GPU stopped responding (a driver reset, a hang, or the device was removed) "
                               "and nothing more can run on it: reopen the model, or restart kvscope");
  throw GpuError(message);
}

// ==================================================================== instance

namespace {

constexpr const char* kValidationLayer = "VK_LAYER_KHRONOS_validation";
constexpr const char* kNoDevice =
    "no Vulkan device found: install a GPU driver, or mesa-vulkan-drivers for the CPU "
    "device (lavapipe)";

bool env_flag(const char* name) {
  const char* v = std::getenv(name);
  return v && *v && std::string_view(v) != "0";
}

// A positive integer from the environment, 0 when unset or not a number.
uint64_t env_count(const char* name) {
  const char* v = std::getenv(name);
  if (!v || !*v) return 0;
  char* end = nullptr;
  const unsigned long long n = std::strtoull(v, &end, 10);
  return end && *end == '\0' && n < (uint64_t{1} << 40) ? n : 0;
}

bool has_layer(const char* layer) {
  uint32_t n = 0;
  if (vkEnumerateInstanceLayerProperties(&n, nullptr) != VK_SUCCESS) return false;
  std::vector<VkLayerProperties> layers(n);
  if (vkEnumerateInstanceLayerProperties(&n, layers.data()) != VK_SUCCESS) return false;
  return std::any_of(layers.begin(), layers.begin() + n,
                     [&](const VkLayerProperties& p) { return std::strcmp(p.layerName, layer) == 0; });
}

// Instance extensions offered by the loader/drivers, plus those of `layer`.
bool has_instance_extension(const char* ext, const char* layer = nullptr) {
  uint32_t n = 0;
  if (vkEnumerateInstanceExtensionProperties(layer, &n, nullptr) != VK_SUCCESS) return false;
  std::vector<VkExtensionProperties> exts(n);
  if (vkEnumerateInstanceExtensionProperties(layer, &n, exts.data()) != VK_SUCCESS) return false;
  return std::any_of(exts.begin(), exts.begin() + n, [&](const VkExtensionProperties& p) {
    return std::strcmp(p.extensionName, ext) == 0;
  });
}

bool has_device_extension(VkPhysicalDevice pd, const char* ext) {
  uint32_t n = 0;
  if (vkEnumerateDeviceExtensionProperties(pd, nullptr, &n, nullptr) != VK_SUCCESS) return false;
  std::vector<VkExtensionProperties> exts(n);
  if (vkEnumerateDeviceExtensionProperties(pd, nullptr, &n, exts.data()) != VK_SUCCESS)
    return false;
  return std::any_of(exts.begin(), exts.begin() + n, [&](const VkExtensionProperties& p) {
    return std::strcmp(p.extensionName, ext) == 0;
  });
}

uint32_t instance_api_version() {
  uint32_t v = VK_API_VERSION_1_0;
  if (vkEnumerateInstanceVersion(&v) != VK_SUCCESS) v = VK_API_VERSION_1_0;
  if (v < VK_API_VERSION_1_1)
    throw GpuError(fmt::format(
        "the Vulkan loader supports only Vulkan {}.{}; kvscope needs 1.1: update the "
        "Vulkan loader (libvulkan1)",
        VK_API_VERSION_MAJOR(v), VK_API_VERSION_MINOR(v)));
  // 1.2 gives VkPhysicalDeviceDriverProperties as core; nothing newer is used.
  return v >= VK_API_VERSION_1_2 ? VK_API_VERSION_1_2 : VK_API_VERSION_1_1;
}

// An instance with the portability flag (MoltenVK) and, when asked, the
// validation layer with `messenger` chained in so that instance creation and
// destruction are reported too.
VkInstance create_instance(uint32_t api_version, bool validation, bool debug_utils,
                           const VkDebugUtilsMessengerCreateInfoEXT* messenger) {
  VkApplicationInfo app{VK_STRUCTURE_TYPE_APPLICATION_INFO};
  app.pApplicationName = "kvscope";
  app.pEngineName = "kvscope";
  app.apiVersion = api_version;

  std::vector<const char*> extensions;
  VkInstanceCreateInfo info{VK_STRUCTURE_TYPE_INSTANCE_CREATE_INFO};
  if (has_instance_extension(VK_KHR_PORTABILITY_ENUMERATION_EXTENSION_NAME)) {
    extensions.push_back(VK_KHR_PORTABILITY_ENUMERATION_EXTENSION_NAME);
    info.flags |= VK_INSTANCE_CREATE_ENUMERATE_PORTABILITY_BIT_KHR;
  }
  if (debug_utils) extensions.push_back(VK_EXT_DEBUG_UTILS_EXTENSION_NAME);
  info.pApplicationInfo = &app;
  info.enabledExtensionCount = static_cast<uint32_t>(extensions.size());
  info.ppEnabledExtensionNames = extensions.data();
  if (validation) {
    info.enabledLayerCount = 1;
    info.ppEnabledLayerNames = &kValidationLayer;
  }
  if (debug_utils && messenger) info.pNext = messenger;

  VkInstance instance = VK_NULL_HANDLE;
  VkResult r = vkCreateInstance(&info, nullptr, &instance);
  if (r == VK_ERROR_INCOMPATIBLE_DRIVER) throw GpuError(kNoDevice);
  check(r, "vkCreateInstance");
  return instance;
}

std::vector<VkPhysicalDevice> physical_devices(VkInstance instance) {
  uint32_t n = 0;
  check(vkEnumeratePhysicalDevices(instance, &n, nullptr), "vkEnumeratePhysicalDevices");
  std::vector<VkPhysicalDevice> devices(n);
  check(vkEnumeratePhysicalDevices(instance, &n, devices.data()), "vkEnumeratePhysicalDevices");
  devices.resize(n);
  if (devices.empty()) throw GpuError(kNoDevice);
  return devices;
}

// ================================================= device description and choice

const char* type_name(VkPhysicalDeviceType t) {
  switch (t) {
    case VK_PHYSICAL_DEVICE_TYPE_DISCRETE_GPU: return "discrete";
    case VK_PHYSICAL_DEVICE_TYPE_INTEGRATED_GPU: return "integrated";
    case VK_PHYSICAL_DEVICE_TYPE_VIRTUAL_GPU: return "virtual";
    case VK_PHYSICAL_DEVICE_TYPE_CPU: return "cpu";
    default: return "other";
  }
}


// The compute queue family: the first with COMPUTE whose queues write
// timestamps, else the first with COMPUTE. nullopt when there is none.
std::optional<uint32_t> compute_family(VkPhysicalDevice pd, bool* timestamps) {
  uint32_t n = 0;
  vkGetPhysicalDeviceQueueFamilyProperties(pd, &n, nullptr);
  std::vector<VkQueueFamilyProperties> families(n);
  vkGetPhysicalDeviceQueueFamilyProperties(pd, &n, families.data());
  std::optional<uint32_t> any;
  for (uint32_t i = 0; i < n; ++i) {
    if (!(families[i].queueFlags & VK_QUEUE_COMPUTE_BIT) || families[i].queueCount == 0) continue;
    if (families[i].timestampValidBits > 0) {
      *timestamps = true;
      return i;
    }
    if (!any) any = i;
  }
  *timestamps = false;
  return any;
}

struct DeviceFacts {
  DeviceInfo info;
  VkPhysicalDeviceProperties properties{};
  uint64_t max_allocation_bytes = 0;
  std::optional<uint32_t> family;
};

DeviceFacts describe(VkPhysicalDevice pd, uint32_t index) {
  DeviceFacts f;
  vkGetPhysicalDeviceProperties(pd, &f.properties);
  const VkPhysicalDeviceProperties& p = f.properties;

  VkPhysicalDeviceSubgroupProperties subgroup{VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_SUBGROUP_PROPERTIES};
  VkPhysicalDeviceMaintenance3Properties maintenance3{
      VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_MAINTENANCE_3_PROPERTIES};
  VkPhysicalDeviceDriverProperties driver{VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_DRIVER_PROPERTIES};
  subgroup.pNext = &maintenance3;
  bool has_driver = p.apiVersion >= VK_API_VERSION_1_2 ||
                    has_device_extension(pd, VK_KHR_DRIVER_PROPERTIES_EXTENSION_NAME);
  if (has_driver) maintenance3.pNext = &driver;
  VkPhysicalDeviceProperties2 props2{VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_PROPERTIES_2};
  props2.pNext = &subgroup;
  vkGetPhysicalDeviceProperties2(pd, &props2);

  DeviceInfo& d = f.info;
  d.index = index;
  d.name = p.deviceName;
  d.type = type_name(p.deviceType);
  if (has_driver) {
    d.driver = driver.driverName;
    if (driver.driverInfo[0]) d.driver += std::string(" ") + driver.driverInfo;
  } else {
    d.driver = fmt::format("driver version {:#x}", p.driverVersion);
  }
  d.vendor_id = p.vendorID;
  VkPhysicalDeviceMemoryProperties memory{};
  vkGetPhysicalDeviceMemoryProperties(pd, &memory);
  for (uint32_t h = 0; h < memory.memoryHeapCount; ++h)
    if (memory.memoryHeaps[h].flags & VK_MEMORY_HEAP_DEVICE_LOCAL_BIT)
      d.device_local_bytes = std::max<uint64_t>(d.device_local_bytes, memory.memoryHeaps[h].size);
  d.subgroup_size = subgroup.subgroupSize;
  d.max_storage_buffer_range = p.limits.maxStorageBufferRange;
  d.min_storage_buffer_offset_alignment = p.limits.minStorageBufferOffsetAlignment;
  d.max_workgroup_size_x = p.limits.maxComputeWorkGroupSize[0];
  d.max_shared_memory_bytes = p.limits.maxComputeSharedMemorySize;
  bool family_timestamps = false;
  f.family = compute_family(pd, &family_timestamps);
  d.timestamps = family_timestamps && p.limits.timestampPeriod > 0;
  d.timestamp_period_ns = p.limits.timestampPeriod;
  f.max_allocation_bytes = maintenance3.maxMemoryAllocationSize;
  return f;
}

std::string device_list_text(const std::vector<DeviceFacts>& devices) {
  // One line: errors are shown as a single line by the CLI and the GUI.
  std::string text;
  for (const DeviceFacts& f : devices)
    text += fmt::format("{} {}: {} ({})", text.empty() ? "" : ";", f.info.index, f.info.name, f.info.type);
  return text;
}

// ========================================================= pipeline cache file

// The header Vulkan writes at the start of pipeline-cache data
// (VkPipelineCacheHeaderVersionOne). Data from another device or driver is
// dropped here rather than handed to the driver.
bool cache_header_matches(const std::vector<char>& data, const VkPhysicalDeviceProperties& p) {
  VkPipelineCacheHeaderVersionOne header{};
  if (data.size() < sizeof(header)) return false;
  std::memcpy(&header, data.data(), sizeof(header));
  return header.headerVersion == VK_PIPELINE_CACHE_HEADER_VERSION_ONE &&
         header.vendorID == p.vendorID && header.deviceID == p.deviceID &&
         std::memcmp(header.pipelineCacheUUID, p.pipelineCacheUUID, VK_UUID_SIZE) == 0;
}

std::vector<char> read_file_if_present(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return {};
  return std::vector<char>(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

}  // namespace

std::vector<DeviceInfo> list_devices() {
  VkInstance instance = create_instance(instance_api_version(), false, false, nullptr);
  std::vector<DeviceInfo> out;
  try {
    std::vector<VkPhysicalDevice> devices = physical_devices(instance);
    for (uint32_t i = 0; i < devices.size(); ++i) out.push_back(describe(devices[i], i).info);
  } catch (...) {
    vkDestroyInstance(instance, nullptr);
    throw;
  }
  vkDestroyInstance(instance, nullptr);
  return out;
}

int device_type_rank(VkPhysicalDeviceType type) {
  switch (type) {
    case VK_PHYSICAL_DEVICE_TYPE_DISCRETE_GPU: return 4;
    case VK_PHYSICAL_DEVICE_TYPE_INTEGRATED_GPU: return 3;
    case VK_PHYSICAL_DEVICE_TYPE_VIRTUAL_GPU: return 2;
    case VK_PHYSICAL_DEVICE_TYPE_CPU: return 1;
    default: return 0;
  }
}

namespace {
std::atomic<uint64_t> g_process_validation_messages{0};
}  // namespace

uint64_t process_validation_messages() { return g_process_validation_messages.load(std::memory_order_relaxed); }

bool validation_wanted(bool requested) {
  return (requested || env_flag("KVSCOPE_VALIDATION")) && has_layer(kValidationLayer);
}

// ===================================================================== Context

struct Context::State {
  ContextOptions options;
  VkInstance instance = VK_NULL_HANDLE;
  VkDebugUtilsMessengerEXT messenger = VK_NULL_HANDLE;
  VkPhysicalDevice physical = VK_NULL_HANDLE;
  VkDevice device = VK_NULL_HANDLE;
  VkQueue queue = VK_NULL_HANDLE;
  uint32_t family = 0;
  VkPipelineCache pipeline_cache = VK_NULL_HANDLE;
  VkCommandPool one_shot_pool = VK_NULL_HANDLE;
  VkFence one_shot_fence = VK_NULL_HANDLE;
  DeviceInfo info;
  VkPhysicalDeviceProperties properties{};
  VkPhysicalDeviceMemoryProperties memory{};
  uint64_t max_allocation_bytes = 0;
  uint64_t max_binding_bytes = 0;
  uint64_t max_texel_binding_bytes = 0;
  bool validation = false;
  std::atomic<uint64_t> validation_messages{0};
  mutable std::mutex queue_mutex;
  mutable std::atomic<uint64_t> bytes_allocated{0};
  std::atomic<uint64_t> memory_budget{0};
  mutable std::atomic<bool> lost{false};
  mutable std::atomic<int64_t> submissions_until_lost{-1};  // -1: no simulated loss
  // Held from begin_one_shot to end_one_shot: the pool and fence are shared.
  std::mutex one_shot_mutex;

  ~State();
  void save_pipeline_cache() const;
};

namespace {

VKAPI_ATTR VkBool32 VKAPI_CALL on_validation_message(
    VkDebugUtilsMessageSeverityFlagBitsEXT severity, VkDebugUtilsMessageTypeFlagsEXT,
    const VkDebugUtilsMessengerCallbackDataEXT* data, void* user) {
  auto* counter = static_cast<std::atomic<uint64_t>*>(user);
  if (severity & (VK_DEBUG_UTILS_MESSAGE_SEVERITY_WARNING_BIT_EXT |
                  VK_DEBUG_UTILS_MESSAGE_SEVERITY_ERROR_BIT_EXT))
  {
    counter->fetch_add(1, std::memory_order_relaxed);
    g_process_validation_messages.fetch_add(1, std::memory_order_relaxed);
  }
  std::fprintf(stderr, "vulkan validation: %s\n", data && data->pMessage ? data->pMessage : "?");
  return VK_FALSE;  // never abort the call that triggered it
}

}  // namespace

Context::State::~State() {
  if (device) {
    vkDeviceWaitIdle(device);
    save_pipeline_cache();
    if (one_shot_fence) vkDestroyFence(device, one_shot_fence, nullptr);
    if (one_shot_pool) vkDestroyCommandPool(device, one_shot_pool, nullptr);
    if (pipeline_cache) vkDestroyPipelineCache(device, pipeline_cache, nullptr);
    vkDestroyDevice(device, nullptr);
  }
  if (messenger) {
    auto destroy = reinterpret_cast<PFN_vkDestroyDebugUtilsMessengerEXT>(
        vkGetInstanceProcAddr(instance, "vkDestroyDebugUtilsMessengerEXT"));
    if (destroy) destroy(instance, messenger, nullptr);
  }
  if (instance) vkDestroyInstance(instance, nullptr);
}

void Context::State::save_pipeline_cache() const {
  if (options.pipeline_cache_path.empty() || !pipeline_cache) return;
  namespace fs = std::filesystem;
  const fs::path path = options.pipeline_cache_path;
  size_t size = 0;
  if (vkGetPipelineCacheData(device, pipeline_cache, &size, nullptr) != VK_SUCCESS || size == 0)
    return;
  std::vector<char> data(size);
  if (vkGetPipelineCacheData(device, pipeline_cache, &size, data.data()) != VK_SUCCESS) return;
  data.resize(size);
  // Written to a temporary file and renamed, so a crash or a second process
  // never leaves a half-written cache behind.
  const fs::path temp = path.string() + fmt::format(".tmp{}", static_cast<long>(getpid()));
  std::error_code ec;
  if (path.has_parent_path()) fs::create_directories(path.parent_path(), ec);
  {
    std::ofstream out(temp, std::ios::binary | std::ios::trunc);
    out.write(data.data(), static_cast<std::streamsize>(data.size()));
    out.close();
    if (!out) {
      std::fprintf(stderr, "warning: cannot write the pipeline cache %s; shaders will be "
                   "compiled again next run\n", temp.string().c_str());
      fs::remove(temp, ec);
      return;
    }
  }
  fs::rename(temp, path, ec);
  if (ec) {
    std::fprintf(stderr, "warning: cannot write the pipeline cache %s: %s\n",
                 path.string().c_str(), ec.message().c_str());
    fs::remove(temp, ec);
  }
}

Context::Context(const ContextOptions& options) : s_(std::make_unique<State>()) {
  State& s = *s_;
  s.options = options;

  // ---- instance, validation
  const uint32_t api = instance_api_version();
  bool want_validation = options.validation || env_flag("KVSCOPE_VALIDATION");
  if (want_validation && !has_layer(kValidationLayer)) {
    std::fprintf(stderr, "warning: validation requested but %s is not installed "
                 "(install vulkan-validationlayers); running without it\n", kValidationLayer);
    want_validation = false;
  }
  s.validation = want_validation;
  bool debug_utils = want_validation &&
                     (has_instance_extension(VK_EXT_DEBUG_UTILS_EXTENSION_NAME) ||
                      has_instance_extension(VK_EXT_DEBUG_UTILS_EXTENSION_NAME, kValidationLayer));
  VkDebugUtilsMessengerCreateInfoEXT messenger_info{
      VK_STRUCTURE_TYPE_DEBUG_UTILS_MESSENGER_CREATE_INFO_EXT};
  messenger_info.messageSeverity = VK_DEBUG_UTILS_MESSAGE_SEVERITY_WARNING_BIT_EXT |
                                   VK_DEBUG_UTILS_MESSAGE_SEVERITY_ERROR_BIT_EXT;
  messenger_info.messageType = VK_DEBUG_UTILS_MESSAGE_TYPE_GENERAL_BIT_EXT |
                               VK_DEBUG_UTILS_MESSAGE_TYPE_VALIDATION_BIT_EXT |
                               VK_DEBUG_UTILS_MESSAGE_TYPE_PERFORMANCE_BIT_EXT;
  messenger_info.pfnUserCallback = on_validation_message;
  messenger_info.pUserData = &s.validation_messages;
  s.instance = create_instance(api, want_validation, debug_utils, &messenger_info);
  if (debug_utils) {
    auto create = reinterpret_cast<PFN_vkCreateDebugUtilsMessengerEXT>(
        vkGetInstanceProcAddr(s.instance, "vkCreateDebugUtilsMessengerEXT"));
    if (create) check(create(s.instance, &messenger_info, nullptr, &s.messenger),
                      "vkCreateDebugUtilsMessengerEXT");
  }

  // ---- physical device
  std::vector<VkPhysicalDevice> devices = physical_devices(s.instance);
  std::vector<DeviceFacts> facts;
  for (uint32_t i = 0; i < devices.size(); ++i) facts.push_back(describe(devices[i], i));
  int chosen = -1;
  if (options.device_index >= 0) {
    if (options.device_index >= static_cast<int>(devices.size()))
      throw GpuError(fmt::format("device index {} is out of range; the Vulkan devices are:{}",
                                 options.device_index, device_list_text(facts)));
    chosen = options.device_index;
    if (!facts[chosen].family)
      throw GpuError(fmt::format("device {} ({}) has no compute queue; choose another:{}",
                                 chosen, facts[chosen].info.name, device_list_text(facts)));
  } else {
    int best_rank = -1;
    for (uint32_t i = 0; i < facts.size(); ++i) {
      int rank = device_type_rank(facts[i].properties.deviceType);
      if (facts[i].family && rank > best_rank) best_rank = rank, chosen = static_cast<int>(i);
    }
    if (chosen < 0)
      throw GpuError("no Vulkan device with a compute queue found: install a GPU driver, or "
                     "mesa-vulkan-drivers for the CPU device (lavapipe)" + device_list_text(facts));
  }
  s.physical = devices[chosen];
  s.info = facts[chosen].info;
  if (options.max_device_bytes > 0)
    s.info.device_local_bytes = std::min(s.info.device_local_bytes, options.max_device_bytes);
  s.memory_budget = options.device_memory_budget;
  if (const uint64_t mib = env_count("KVSCOPE_DEVICE_MEMORY_BUDGET_MB"); mib > 0 && s.memory_budget == 0)
    s.memory_budget = mib << 20;
  if (const uint64_t n = env_count("KVSCOPE_LOSE_DEVICE_AFTER"); n > 0) s.submissions_until_lost = static_cast<int64_t>(n);
  s.properties = facts[chosen].properties;
  s.family = *facts[chosen].family;
  s.max_allocation_bytes = facts[chosen].max_allocation_bytes;
  vkGetPhysicalDeviceMemoryProperties(s.physical, &s.memory);
  uint64_t binding = s.info.max_storage_buffer_range;
  if (options.max_binding_bytes > 0) binding = std::min(binding, options.max_binding_bytes);
  s.max_binding_bytes = binding / 256 * 256;
  // Texel buffers of 16-byte texels (R32G32B32A32_UINT); the same test cap.
  uint64_t texel_binding = uint64_t{s.properties.limits.maxTexelBufferElements} * 16;
  if (options.max_binding_bytes > 0) texel_binding = std::min(texel_binding, options.max_binding_bytes);
  s.max_texel_binding_bytes = texel_binding / 256 * 256;

  // ---- logical device, queue
  const float priority = 1.0f;
  VkDeviceQueueCreateInfo queue_info{VK_STRUCTURE_TYPE_DEVICE_QUEUE_CREATE_INFO};
  queue_info.queueFamilyIndex = s.family;
  queue_info.queueCount = 1;
  queue_info.pQueuePriorities = &priority;
  std::vector<const char*> device_extensions;
  // The spec requires enabling it on devices that offer it (MoltenVK).
  if (has_device_extension(s.physical, "VK_KHR_portability_subset"))
    device_extensions.push_back("VK_KHR_portability_subset");
  VkDeviceCreateInfo device_info{VK_STRUCTURE_TYPE_DEVICE_CREATE_INFO};
  device_info.queueCreateInfoCount = 1;
  device_info.pQueueCreateInfos = &queue_info;
  device_info.enabledExtensionCount = static_cast<uint32_t>(device_extensions.size());
  device_info.ppEnabledExtensionNames = device_extensions.data();
  check(vkCreateDevice(s.physical, &device_info, nullptr, &s.device),
        fmt::format("vkCreateDevice on {}", s.info.name).c_str());
  vkGetDeviceQueue(s.device, s.family, 0, &s.queue);

  // ---- pipeline cache: reuse the file when it came from this device+driver
  VkPipelineCacheCreateInfo cache_info{VK_STRUCTURE_TYPE_PIPELINE_CACHE_CREATE_INFO};
  std::vector<char> cached;
  if (!options.pipeline_cache_path.empty()) {
    cached = read_file_if_present(options.pipeline_cache_path);
    if (!cache_header_matches(cached, s.properties)) cached.clear();
  }
  cache_info.initialDataSize = cached.size();
  cache_info.pInitialData = cached.empty() ? nullptr : cached.data();
  if (vkCreatePipelineCache(s.device, &cache_info, nullptr, &s.pipeline_cache) != VK_SUCCESS) {
    cache_info.initialDataSize = 0;
    cache_info.pInitialData = nullptr;
    check(vkCreatePipelineCache(s.device, &cache_info, nullptr, &s.pipeline_cache),
          "vkCreatePipelineCache");
  }

  // ---- one-shot submissions (uploads, tests)
  VkCommandPoolCreateInfo pool_info{VK_STRUCTURE_TYPE_COMMAND_POOL_CREATE_INFO};
  pool_info.flags = VK_COMMAND_POOL_CREATE_TRANSIENT_BIT;
  pool_info.queueFamilyIndex = s.family;
  check(vkCreateCommandPool(s.device, &pool_info, nullptr, &s.one_shot_pool), "vkCreateCommandPool");
  VkFenceCreateInfo fence_info{VK_STRUCTURE_TYPE_FENCE_CREATE_INFO};
  check(vkCreateFence(s.device, &fence_info, nullptr, &s.one_shot_fence), "vkCreateFence");
}

Context::~Context() = default;
Context::Context(Context&&) noexcept = default;
Context& Context::operator=(Context&&) noexcept = default;

VkInstance Context::instance() const { return s_->instance; }
VkPhysicalDevice Context::physical_device() const { return s_->physical; }
VkDevice Context::device() const { return s_->device; }
VkQueue Context::queue() const { return s_->queue; }
uint32_t Context::queue_family() const { return s_->family; }
VkPipelineCache Context::pipeline_cache() const { return s_->pipeline_cache; }
const DeviceInfo& Context::info() const { return s_->info; }
const VkPhysicalDeviceProperties& Context::properties() const { return s_->properties; }
const VkPhysicalDeviceMemoryProperties& Context::memory_properties() const { return s_->memory; }
uint64_t Context::max_allocation_bytes() const { return s_->max_allocation_bytes; }

uint64_t Context::bytes_allocated() const { return s_->bytes_allocated.load(); }
uint64_t Context::device_memory_budget() const { return s_->memory_budget.load(); }
void Context::set_device_memory_budget(uint64_t bytes) { s_->memory_budget = bytes; }

void Context::reserve_device_bytes(uint64_t bytes, const std::function<void()>& fail) const {
  if (lost()) check(VK_ERROR_DEVICE_LOST, "vkAllocateMemory");
  const uint64_t budget = s_->memory_budget.load();
  const uint64_t before = s_->bytes_allocated.fetch_add(bytes);
  if (budget > 0 && before + bytes > budget) {
    s_->bytes_allocated.fetch_sub(bytes);
    fail();
  }
}

void Context::release_device_bytes(uint64_t bytes) const { s_->bytes_allocated.fetch_sub(bytes); }

bool Context::lost() const { return s_->lost.load(); }

void Context::simulate_device_lost() const { s_->submissions_until_lost = 1; }

VkResult Context::observe_submission(VkResult r, bool counted) const {
  if (r == VK_ERROR_DEVICE_LOST) s_->lost = true;
  if (counted && s_->submissions_until_lost.load() > 0 && --s_->submissions_until_lost == 0) s_->lost = true;
  return s_->lost.load() ? VK_ERROR_DEVICE_LOST : r;
}
uint64_t Context::max_binding_bytes() const { return s_->max_binding_bytes; }
uint64_t Context::max_texel_binding_bytes() const { return s_->max_texel_binding_bytes; }
uint64_t Context::validation_messages() const { return s_->validation_messages.load(); }
bool Context::validation_enabled() const { return s_->validation; }
void Context::save_pipeline_cache() const { s_->save_pipeline_cache(); }
std::mutex& Context::queue_mutex() const { return s_->queue_mutex; }

uint32_t Context::memory_type(uint32_t type_bits, VkMemoryPropertyFlags required,
                              VkMemoryPropertyFlags preferred) const {
  const VkPhysicalDeviceMemoryProperties& m = s_->memory;
  for (VkMemoryPropertyFlags want : {required | preferred, required})
    for (uint32_t i = 0; i < m.memoryTypeCount; ++i)
      if ((type_bits & (1u << i)) && (m.memoryTypes[i].propertyFlags & want) == want) return i;
  throw GpuError(fmt::format("{} has no memory type with properties {:#x} (allowed types {:#x})",
                             s_->info.name, required, type_bits));
}

VkCommandBuffer Context::begin_one_shot() const {
  State& s = *s_;
  s.one_shot_mutex.lock();
  VkCommandBuffer cb = VK_NULL_HANDLE;
  try {
    VkCommandBufferAllocateInfo alloc{VK_STRUCTURE_TYPE_COMMAND_BUFFER_ALLOCATE_INFO};
    alloc.commandPool = s.one_shot_pool;
    alloc.level = VK_COMMAND_BUFFER_LEVEL_PRIMARY;
    alloc.commandBufferCount = 1;
    check(vkAllocateCommandBuffers(s.device, &alloc, &cb), "vkAllocateCommandBuffers (one-shot)");
    VkCommandBufferBeginInfo begin{VK_STRUCTURE_TYPE_COMMAND_BUFFER_BEGIN_INFO};
    begin.flags = VK_COMMAND_BUFFER_USAGE_ONE_TIME_SUBMIT_BIT;
    check(vkBeginCommandBuffer(cb, &begin), "vkBeginCommandBuffer (one-shot)");
  } catch (...) {
    if (cb) vkFreeCommandBuffers(s.device, s.one_shot_pool, 1, &cb);
    s.one_shot_mutex.unlock();
    throw;
  }
  return cb;
}

void Context::end_one_shot(VkCommandBuffer cb) const {
  State& s = *s_;
  // Frees the command buffer and releases the lock however this ends.
  struct Release {
    State& s;
    VkCommandBuffer cb;
    ~Release() {
      vkFreeCommandBuffers(s.device, s.one_shot_pool, 1, &cb);
      s.one_shot_mutex.unlock();
    }
  } release{s, cb};
  check(vkEndCommandBuffer(cb), "vkEndCommandBuffer (one-shot)");
  VkSubmitInfo submit{VK_STRUCTURE_TYPE_SUBMIT_INFO};
  submit.commandBufferCount = 1;
  submit.pCommandBuffers = &cb;
  {
    std::lock_guard lock(s.queue_mutex);
    if (lost()) check(VK_ERROR_DEVICE_LOST, "vkQueueSubmit (one-shot)");
    check(vkQueueSubmit(s.queue, 1, &submit, s.one_shot_fence), "vkQueueSubmit (one-shot)");
  }
  VkResult r = vkWaitForFences(s.device, 1, &s.one_shot_fence, VK_TRUE, UINT64_MAX);
  vkResetFences(s.device, 1, &s.one_shot_fence);
  check(observe_submission(r, /*counted=*/false), "vkWaitForFences (one-shot)");
}

void Context::abandon_one_shot(VkCommandBuffer cb) const {
  State& s = *s_;
  vkFreeCommandBuffers(s.device, s.one_shot_pool, 1, &cb);
  s.one_shot_mutex.unlock();
}

}  // namespace kvscope::gpu
