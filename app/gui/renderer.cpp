// [SECTION] window
// [SECTION] instance and device
// [SECTION] swapchain
// [SECTION] frame and screenshot
#include "app/gui/renderer.h"

#define GLFW_INCLUDE_NONE
#define GLFW_INCLUDE_VULKAN
#include <GLFW/glfw3.h>
#include <fmt/format.h>
#include <imgui.h>
#include <imgui_impl_glfw.h>
#include <imgui_impl_vulkan.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string_view>

#include "gpu/context.h"  // gpu::check: one message style for Vulkan failures

namespace kvscope::gui {

using gpu::check;

// ===================================================================== window

Window::Window(int width, int height, const char* title) {
  const char* display = std::getenv("DISPLAY");
  const char* wayland = std::getenv("WAYLAND_DISPLAY");
  if ((!display || !*display) && (!wayland || !*wayland))
    throw NoDisplay("no display (DISPLAY is not set)");
  if (!glfwInit()) throw NoDisplay(fmt::format("cannot connect to the display {}", display ? display : wayland));
  if (!glfwVulkanSupported()) {
    glfwTerminate();
    throw NoDisplay("GLFW finds no Vulkan loader or no surface support: install libvulkan1 and "
                    "mesa-vulkan-drivers");
  }
  glfwWindowHint(GLFW_CLIENT_API, GLFW_NO_API);
  window_ = glfwCreateWindow(width, height, title, nullptr, nullptr);
  if (!window_) {
    glfwTerminate();
    throw NoDisplay("cannot create a window on this display");
  }
}

Window::~Window() {
  glfwDestroyWindow(window_);
  glfwTerminate();
}

bool Window::should_close() const { return glfwWindowShouldClose(window_); }

float Window::content_scale() const {
  float x = 1, y = 1;
  glfwGetWindowContentScale(window_, &x, &y);
  return std::clamp(std::max(x, y), 1.0f, 3.0f);
}

// ======================================================== instance and device

namespace {

VKAPI_ATTR VkBool32 VKAPI_CALL on_validation_message(VkDebugUtilsMessageSeverityFlagBitsEXT severity,
                                                     VkDebugUtilsMessageTypeFlagsEXT,
                                                     const VkDebugUtilsMessengerCallbackDataEXT* data,
                                                     void* user) {
  if (severity & (VK_DEBUG_UTILS_MESSAGE_SEVERITY_WARNING_BIT_EXT | VK_DEBUG_UTILS_MESSAGE_SEVERITY_ERROR_BIT_EXT))
    ++*static_cast<uint64_t*>(user);
  // Same prefix as gpu::Context, so a test greps one string for both devices.
  std::fprintf(stderr, "vulkan validation: %s\n", data && data->pMessage ? data->pMessage : "?");
  return VK_FALSE;
}

// A queue family that draws and presents to `surface`; -1 if none.
int graphics_present_family(VkPhysicalDevice pd, VkSurfaceKHR surface) {
  uint32_t n = 0;
  vkGetPhysicalDeviceQueueFamilyProperties(pd, &n, nullptr);
  std::vector<VkQueueFamilyProperties> families(n);
  vkGetPhysicalDeviceQueueFamilyProperties(pd, &n, families.data());
  for (uint32_t i = 0; i < n; ++i) {
    VkBool32 present = VK_FALSE;
    vkGetPhysicalDeviceSurfaceSupportKHR(pd, i, surface, &present);
    if ((families[i].queueFlags & VK_QUEUE_GRAPHICS_BIT) && present) return static_cast<int>(i);
  }
  return -1;
}

void check_imgui(VkResult r) { check(r, "Dear ImGui's Vulkan backend"); }

}  // namespace

Renderer::Renderer(Window& window, int device_index) : window_(&window) {
  // The destructor does not run for a constructor that throws: release what
  // was made so far here (every handle starts as VK_NULL_HANDLE).
  try {
    init(device_index);
  } catch (...) {
    release();
    throw;
  }
}

void Renderer::init(int device_index) {
  Window& window = *window_;
  const bool validation = gpu::validation_wanted(false);
  uint32_t glfw_count = 0;
  const char** glfw_extensions = glfwGetRequiredInstanceExtensions(&glfw_count);
  if (!glfw_extensions) throw NoDisplay("this display offers no Vulkan surface extensions");
  std::vector<const char*> extensions(glfw_extensions, glfw_extensions + glfw_count);
  if (validation) extensions.push_back(VK_EXT_DEBUG_UTILS_EXTENSION_NAME);

  VkApplicationInfo app{VK_STRUCTURE_TYPE_APPLICATION_INFO};
  app.pApplicationName = "kvscope-gui";
  app.apiVersion = VK_API_VERSION_1_1;
  VkDebugUtilsMessengerCreateInfoEXT messenger_info{VK_STRUCTURE_TYPE_DEBUG_UTILS_MESSENGER_CREATE_INFO_EXT};
  messenger_info.messageSeverity =
      VK_DEBUG_UTILS_MESSAGE_SEVERITY_WARNING_BIT_EXT | VK_DEBUG_UTILS_MESSAGE_SEVERITY_ERROR_BIT_EXT;
  messenger_info.messageType = VK_DEBUG_UTILS_MESSAGE_TYPE_GENERAL_BIT_EXT |
                               VK_DEBUG_UTILS_MESSAGE_TYPE_VALIDATION_BIT_EXT |
                               VK_DEBUG_UTILS_MESSAGE_TYPE_PERFORMANCE_BIT_EXT;
  messenger_info.pfnUserCallback = on_validation_message;
  messenger_info.pUserData = &validation_messages_;
  const char* layer = "VK_LAYER_KHRONOS_validation";
  VkInstanceCreateInfo info{VK_STRUCTURE_TYPE_INSTANCE_CREATE_INFO};
  info.pApplicationInfo = &app;
  info.enabledExtensionCount = static_cast<uint32_t>(extensions.size());
  info.ppEnabledExtensionNames = extensions.data();
  if (validation) {
    info.enabledLayerCount = 1;
    info.ppEnabledLayerNames = &layer;
    info.pNext = &messenger_info;
  }
  check(vkCreateInstance(&info, nullptr, &instance_), "vkCreateInstance for the window");
  if (validation) {
    auto create = reinterpret_cast<PFN_vkCreateDebugUtilsMessengerEXT>(
        vkGetInstanceProcAddr(instance_, "vkCreateDebugUtilsMessengerEXT"));
    if (create) check(create(instance_, &messenger_info, nullptr, &messenger_), "vkCreateDebugUtilsMessengerEXT");
  }
  check(glfwCreateWindowSurface(instance_, window.handle(), nullptr, &surface_), "glfwCreateWindowSurface");

  // ---- the engine's physical device, if it can present here
  uint32_t n = 0;
  check(vkEnumeratePhysicalDevices(instance_, &n, nullptr), "vkEnumeratePhysicalDevices");
  std::vector<VkPhysicalDevice> devices(n);
  check(vkEnumeratePhysicalDevices(instance_, &n, devices.data()), "vkEnumeratePhysicalDevices");
  int chosen = -1, best_rank = -1;
  for (uint32_t i = 0; i < n; ++i) {
    if (graphics_present_family(devices[i], surface_) < 0) continue;
    VkPhysicalDeviceProperties p;
    vkGetPhysicalDeviceProperties(devices[i], &p);
    const int rank = device_index == static_cast<int>(i) ? 100 : gpu::device_type_rank(p.deviceType);
    if (rank > best_rank) best_rank = rank, chosen = static_cast<int>(i);
  }
  if (chosen < 0)
    throw gpu::GpuError("no Vulkan device can draw to this window: install a GPU driver, or "
                        "mesa-vulkan-drivers for the CPU device (lavapipe)");
  physical_ = devices[chosen];
  family_ = static_cast<uint32_t>(graphics_present_family(physical_, surface_));
  VkPhysicalDeviceProperties props;
  vkGetPhysicalDeviceProperties(physical_, &props);
  device_name_ = props.deviceName;

  const float priority = 1.0f;
  VkDeviceQueueCreateInfo queue_info{VK_STRUCTURE_TYPE_DEVICE_QUEUE_CREATE_INFO};
  queue_info.queueFamilyIndex = family_;
  queue_info.queueCount = 1;
  queue_info.pQueuePriorities = &priority;
  const char* device_extensions[] = {VK_KHR_SWAPCHAIN_EXTENSION_NAME};
  VkDeviceCreateInfo device_info{VK_STRUCTURE_TYPE_DEVICE_CREATE_INFO};
  device_info.queueCreateInfoCount = 1;
  device_info.pQueueCreateInfos = &queue_info;
  device_info.enabledExtensionCount = 1;
  device_info.ppEnabledExtensionNames = device_extensions;
  check(vkCreateDevice(physical_, &device_info, nullptr, &device_), "vkCreateDevice for the window");
  vkGetDeviceQueue(device_, family_, 0, &queue_);

  // ImGui needs one combined image sampler (the font atlas); room for a few
  // more textures later (heatmap export previews).
  VkDescriptorPoolSize pool_size{VK_DESCRIPTOR_TYPE_COMBINED_IMAGE_SAMPLER, 16};
  VkDescriptorPoolCreateInfo pool_info{VK_STRUCTURE_TYPE_DESCRIPTOR_POOL_CREATE_INFO};
  pool_info.flags = VK_DESCRIPTOR_POOL_CREATE_FREE_DESCRIPTOR_SET_BIT;
  pool_info.maxSets = 16;
  pool_info.poolSizeCount = 1;
  pool_info.pPoolSizes = &pool_size;
  check(vkCreateDescriptorPool(device_, &pool_info, nullptr, &descriptor_pool_), "vkCreateDescriptorPool");

  VkCommandPoolCreateInfo command_pool_info{VK_STRUCTURE_TYPE_COMMAND_POOL_CREATE_INFO};
  command_pool_info.flags = VK_COMMAND_POOL_CREATE_RESET_COMMAND_BUFFER_BIT;
  command_pool_info.queueFamilyIndex = family_;
  check(vkCreateCommandPool(device_, &command_pool_info, nullptr, &command_pool_), "vkCreateCommandPool");

  // UNORM rather than SRGB: ImGui's colours are authored for a UNORM target.
  uint32_t format_count = 0;
  vkGetPhysicalDeviceSurfaceFormatsKHR(physical_, surface_, &format_count, nullptr);
  std::vector<VkSurfaceFormatKHR> formats(format_count);
  vkGetPhysicalDeviceSurfaceFormatsKHR(physical_, surface_, &format_count, formats.data());
  if (formats.empty()) throw gpu::GpuError("the window's surface offers no pixel formats");
  surface_format_ = formats[0];
  for (const VkSurfaceFormatKHR& f : formats)
    if (f.format == VK_FORMAT_B8G8R8A8_UNORM || f.format == VK_FORMAT_R8G8B8A8_UNORM) {
      surface_format_ = f;
      break;
    }

  VkAttachmentDescription attachment{};
  attachment.format = surface_format_.format;
  attachment.samples = VK_SAMPLE_COUNT_1_BIT;
  attachment.loadOp = VK_ATTACHMENT_LOAD_OP_CLEAR;
  attachment.storeOp = VK_ATTACHMENT_STORE_OP_STORE;
  attachment.stencilLoadOp = VK_ATTACHMENT_LOAD_OP_DONT_CARE;
  attachment.stencilStoreOp = VK_ATTACHMENT_STORE_OP_DONT_CARE;
  attachment.initialLayout = VK_IMAGE_LAYOUT_UNDEFINED;
  attachment.finalLayout = VK_IMAGE_LAYOUT_PRESENT_SRC_KHR;
  VkAttachmentReference color{0, VK_IMAGE_LAYOUT_COLOR_ATTACHMENT_OPTIMAL};
  VkSubpassDescription subpass{};
  subpass.pipelineBindPoint = VK_PIPELINE_BIND_POINT_GRAPHICS;
  subpass.colorAttachmentCount = 1;
  subpass.pColorAttachments = &color;
  VkSubpassDependency dependency{};
  dependency.srcSubpass = VK_SUBPASS_EXTERNAL;
  dependency.dstSubpass = 0;
  dependency.srcStageMask = VK_PIPELINE_STAGE_COLOR_ATTACHMENT_OUTPUT_BIT;
  dependency.dstStageMask = VK_PIPELINE_STAGE_COLOR_ATTACHMENT_OUTPUT_BIT;
  dependency.dstAccessMask = VK_ACCESS_COLOR_ATTACHMENT_WRITE_BIT;
  VkRenderPassCreateInfo render_pass_info{VK_STRUCTURE_TYPE_RENDER_PASS_CREATE_INFO};
  render_pass_info.attachmentCount = 1;
  render_pass_info.pAttachments = &attachment;
  render_pass_info.subpassCount = 1;
  render_pass_info.pSubpasses = &subpass;
  render_pass_info.dependencyCount = 1;
  render_pass_info.pDependencies = &dependency;
  check(vkCreateRenderPass(device_, &render_pass_info, nullptr, &render_pass_), "vkCreateRenderPass");

  create_swapchain();

  ImGui_ImplGlfw_InitForVulkan(window.handle(), true);
  ImGui_ImplVulkan_InitInfo init{};
  init.Instance = instance_;
  init.PhysicalDevice = physical_;
  init.Device = device_;
  init.QueueFamily = family_;
  init.Queue = queue_;
  init.DescriptorPool = descriptor_pool_;
  init.MinImageCount = min_image_count_;
  init.ImageCount = static_cast<uint32_t>(images_.size());
  init.MSAASamples = VK_SAMPLE_COUNT_1_BIT;
  init.CheckVkResultFn = check_imgui;
  ImGui_ImplVulkan_Init(&init, render_pass_);
  imgui_ready_ = true;
}

Renderer::~Renderer() { release(); }

void Renderer::release() {
  if (device_) vkDeviceWaitIdle(device_);
  if (imgui_ready_) {
    ImGui_ImplVulkan_Shutdown();
    ImGui_ImplGlfw_Shutdown();
  }
  if (device_) {
    destroy_swapchain();
    if (readback_) vkDestroyBuffer(device_, readback_, nullptr);
    if (readback_memory_) vkFreeMemory(device_, readback_memory_, nullptr);
    if (command_pool_) vkDestroyCommandPool(device_, command_pool_, nullptr);
    if (render_pass_) vkDestroyRenderPass(device_, render_pass_, nullptr);
    if (descriptor_pool_) vkDestroyDescriptorPool(device_, descriptor_pool_, nullptr);
    vkDestroyDevice(device_, nullptr);
  }
  if (surface_) vkDestroySurfaceKHR(instance_, surface_, nullptr);
  if (messenger_) {
    auto destroy = reinterpret_cast<PFN_vkDestroyDebugUtilsMessengerEXT>(
        vkGetInstanceProcAddr(instance_, "vkDestroyDebugUtilsMessengerEXT"));
    if (destroy) destroy(instance_, messenger_, nullptr);
  }
  if (instance_) vkDestroyInstance(instance_, nullptr);
  imgui_ready_ = false;
  device_ = VK_NULL_HANDLE, instance_ = VK_NULL_HANDLE, surface_ = VK_NULL_HANDLE, messenger_ = VK_NULL_HANDLE;
}

// ================================================================== swapchain

void Renderer::create_swapchain() {
  VkSurfaceCapabilitiesKHR caps;
  check(vkGetPhysicalDeviceSurfaceCapabilitiesKHR(physical_, surface_, &caps),
        "vkGetPhysicalDeviceSurfaceCapabilitiesKHR");
  int width = 0, height = 0;
  glfwGetFramebufferSize(window_->handle(), &width, &height);
  if (caps.currentExtent.width != UINT32_MAX) {
    extent_ = caps.currentExtent;
  } else {
    extent_.width = std::clamp(static_cast<uint32_t>(width), caps.minImageExtent.width, caps.maxImageExtent.width);
    extent_.height = std::clamp(static_cast<uint32_t>(height), caps.minImageExtent.height, caps.maxImageExtent.height);
  }
  min_image_count_ = std::max(2u, caps.minImageCount);
  uint32_t image_count = min_image_count_ + 1;
  if (caps.maxImageCount > 0) image_count = std::min(image_count, caps.maxImageCount);

  VkSwapchainCreateInfoKHR info{VK_STRUCTURE_TYPE_SWAPCHAIN_CREATE_INFO_KHR};
  info.surface = surface_;
  info.minImageCount = image_count;
  info.imageFormat = surface_format_.format;
  info.imageColorSpace = surface_format_.colorSpace;
  info.imageExtent = extent_;
  info.imageArrayLayers = 1;
  // TRANSFER_SRC: --screenshot copies the presented image to the host.
  info.imageUsage = VK_IMAGE_USAGE_COLOR_ATTACHMENT_BIT |
                    (caps.supportedUsageFlags & VK_IMAGE_USAGE_TRANSFER_SRC_BIT);
  info.imageSharingMode = VK_SHARING_MODE_EXCLUSIVE;
  info.preTransform = caps.currentTransform;
  info.compositeAlpha = VK_COMPOSITE_ALPHA_OPAQUE_BIT_KHR;
  info.presentMode = VK_PRESENT_MODE_FIFO_KHR;  // always offered; paces the UI to the display
  info.clipped = VK_TRUE;
  info.oldSwapchain = swapchain_;
  VkSwapchainKHR swapchain = VK_NULL_HANDLE;
  check(vkCreateSwapchainKHR(device_, &info, nullptr, &swapchain), "vkCreateSwapchainKHR");
  destroy_swapchain();
  swapchain_ = swapchain;

  uint32_t count = 0;
  vkGetSwapchainImagesKHR(device_, swapchain_, &count, nullptr);
  images_.resize(count);
  vkGetSwapchainImagesKHR(device_, swapchain_, &count, images_.data());
  views_.resize(count);
  framebuffers_.resize(count);
  command_buffers_.resize(count);
  fences_.resize(count);
  rendered_.resize(count);
  acquired_.resize(count + 1);
  VkCommandBufferAllocateInfo alloc{VK_STRUCTURE_TYPE_COMMAND_BUFFER_ALLOCATE_INFO};
  alloc.commandPool = command_pool_;
  alloc.level = VK_COMMAND_BUFFER_LEVEL_PRIMARY;
  alloc.commandBufferCount = count;
  check(vkAllocateCommandBuffers(device_, &alloc, command_buffers_.data()), "vkAllocateCommandBuffers");
  VkSemaphoreCreateInfo semaphore_info{VK_STRUCTURE_TYPE_SEMAPHORE_CREATE_INFO};
  VkFenceCreateInfo fence_info{VK_STRUCTURE_TYPE_FENCE_CREATE_INFO};
  fence_info.flags = VK_FENCE_CREATE_SIGNALED_BIT;
  for (uint32_t i = 0; i < count; ++i) {
    VkImageViewCreateInfo view{VK_STRUCTURE_TYPE_IMAGE_VIEW_CREATE_INFO};
    view.image = images_[i];
    view.viewType = VK_IMAGE_VIEW_TYPE_2D;
    view.format = surface_format_.format;
    view.subresourceRange = {VK_IMAGE_ASPECT_COLOR_BIT, 0, 1, 0, 1};
    check(vkCreateImageView(device_, &view, nullptr, &views_[i]), "vkCreateImageView");
    VkFramebufferCreateInfo fb{VK_STRUCTURE_TYPE_FRAMEBUFFER_CREATE_INFO};
    fb.renderPass = render_pass_;
    fb.attachmentCount = 1;
    fb.pAttachments = &views_[i];
    fb.width = extent_.width;
    fb.height = extent_.height;
    fb.layers = 1;
    check(vkCreateFramebuffer(device_, &fb, nullptr, &framebuffers_[i]), "vkCreateFramebuffer");
    check(vkCreateFence(device_, &fence_info, nullptr, &fences_[i]), "vkCreateFence");
    check(vkCreateSemaphore(device_, &semaphore_info, nullptr, &rendered_[i]), "vkCreateSemaphore");
  }
  for (VkSemaphore& s : acquired_)
    check(vkCreateSemaphore(device_, &semaphore_info, nullptr, &s), "vkCreateSemaphore");
  acquire_index_ = 0;
  swapchain_stale_ = false;
  if (imgui_ready_) ImGui_ImplVulkan_SetMinImageCount(min_image_count_);
}

// Everything but the VkSwapchainKHR handle, which create_swapchain hands to
// the new swapchain as oldSwapchain before destroying it here.
void Renderer::destroy_swapchain() {
  vkDeviceWaitIdle(device_);
  for (VkFence f : fences_) vkDestroyFence(device_, f, nullptr);
  for (VkSemaphore s : rendered_) vkDestroySemaphore(device_, s, nullptr);
  for (VkSemaphore s : acquired_) vkDestroySemaphore(device_, s, nullptr);
  for (VkFramebuffer f : framebuffers_) vkDestroyFramebuffer(device_, f, nullptr);
  for (VkImageView v : views_) vkDestroyImageView(device_, v, nullptr);
  if (!command_buffers_.empty())
    vkFreeCommandBuffers(device_, command_pool_, static_cast<uint32_t>(command_buffers_.size()),
                         command_buffers_.data());
  fences_.clear(), rendered_.clear(), acquired_.clear(), framebuffers_.clear(), views_.clear();
  command_buffers_.clear(), images_.clear();
  if (swapchain_) vkDestroySwapchainKHR(device_, swapchain_, nullptr);
  swapchain_ = VK_NULL_HANDLE;
}

// ========================================================= frame and screenshot

void Renderer::upload_fonts() {
  VkCommandBuffer cb = command_buffers_[0];
  check(vkWaitForFences(device_, 1, &fences_[0], VK_TRUE, UINT64_MAX), "vkWaitForFences");
  check(vkResetCommandBuffer(cb, 0), "vkResetCommandBuffer");
  VkCommandBufferBeginInfo begin{VK_STRUCTURE_TYPE_COMMAND_BUFFER_BEGIN_INFO};
  begin.flags = VK_COMMAND_BUFFER_USAGE_ONE_TIME_SUBMIT_BIT;
  check(vkBeginCommandBuffer(cb, &begin), "vkBeginCommandBuffer");
  ImGui_ImplVulkan_CreateFontsTexture(cb);
  check(vkEndCommandBuffer(cb), "vkEndCommandBuffer");
  VkSubmitInfo submit{VK_STRUCTURE_TYPE_SUBMIT_INFO};
  submit.commandBufferCount = 1;
  submit.pCommandBuffers = &cb;
  check(vkQueueSubmit(queue_, 1, &submit, VK_NULL_HANDLE), "vkQueueSubmit (fonts)");
  check(vkDeviceWaitIdle(device_), "vkDeviceWaitIdle");
  ImGui_ImplVulkan_DestroyFontUploadObjects();
}

void Renderer::render(ImDrawData* draw_data, bool capture) {
  int width = 0, height = 0;
  glfwGetFramebufferSize(window_->handle(), &width, &height);
  if (width == 0 || height == 0) return;  // minimized
  if (swapchain_stale_ || static_cast<uint32_t>(width) != extent_.width ||
      static_cast<uint32_t>(height) != extent_.height)
    create_swapchain();

  VkSemaphore acquired = acquired_[acquire_index_];
  uint32_t image = 0;
  VkResult r = vkAcquireNextImageKHR(device_, swapchain_, UINT64_MAX, acquired, VK_NULL_HANDLE, &image);
  if (r == VK_ERROR_OUT_OF_DATE_KHR) {
    swapchain_stale_ = true;
    return;
  }
  if (r != VK_SUBOPTIMAL_KHR) check(r, "vkAcquireNextImageKHR");
  acquire_index_ = (acquire_index_ + 1) % static_cast<uint32_t>(acquired_.size());

  check(vkWaitForFences(device_, 1, &fences_[image], VK_TRUE, UINT64_MAX), "vkWaitForFences");
  check(vkResetFences(device_, 1, &fences_[image]), "vkResetFences");
  VkCommandBuffer cb = command_buffers_[image];
  check(vkResetCommandBuffer(cb, 0), "vkResetCommandBuffer");
  VkCommandBufferBeginInfo begin{VK_STRUCTURE_TYPE_COMMAND_BUFFER_BEGIN_INFO};
  begin.flags = VK_COMMAND_BUFFER_USAGE_ONE_TIME_SUBMIT_BIT;
  check(vkBeginCommandBuffer(cb, &begin), "vkBeginCommandBuffer");
  VkClearValue clear{};
  clear.color = {{0.10f, 0.11f, 0.13f, 1.0f}};  // colour::panel_bg: the window's background
  VkRenderPassBeginInfo pass{VK_STRUCTURE_TYPE_RENDER_PASS_BEGIN_INFO};
  pass.renderPass = render_pass_;
  pass.framebuffer = framebuffers_[image];
  pass.renderArea.extent = extent_;
  pass.clearValueCount = 1;
  pass.pClearValues = &clear;
  vkCmdBeginRenderPass(cb, &pass, VK_SUBPASS_CONTENTS_INLINE);
  ImGui_ImplVulkan_RenderDrawData(draw_data, cb);
  vkCmdEndRenderPass(cb);
  if (capture) read_back(image);
  check(vkEndCommandBuffer(cb), "vkEndCommandBuffer");

  const VkPipelineStageFlags wait_stage = VK_PIPELINE_STAGE_COLOR_ATTACHMENT_OUTPUT_BIT;
  VkSubmitInfo submit{VK_STRUCTURE_TYPE_SUBMIT_INFO};
  submit.waitSemaphoreCount = 1;
  submit.pWaitSemaphores = &acquired;
  submit.pWaitDstStageMask = &wait_stage;
  submit.commandBufferCount = 1;
  submit.pCommandBuffers = &cb;
  submit.signalSemaphoreCount = 1;
  submit.pSignalSemaphores = &rendered_[image];
  check(vkQueueSubmit(queue_, 1, &submit, fences_[image]), "vkQueueSubmit (frame)");

  VkPresentInfoKHR present{VK_STRUCTURE_TYPE_PRESENT_INFO_KHR};
  present.waitSemaphoreCount = 1;
  present.pWaitSemaphores = &rendered_[image];
  present.swapchainCount = 1;
  present.pSwapchains = &swapchain_;
  present.pImageIndices = &image;
  r = vkQueuePresentKHR(queue_, &present);
  if (r == VK_ERROR_OUT_OF_DATE_KHR || r == VK_SUBOPTIMAL_KHR)
    swapchain_stale_ = true;
  else
    check(r, "vkQueuePresentKHR");

  if (capture) {
    check(vkWaitForFences(device_, 1, &fences_[image], VK_TRUE, UINT64_MAX), "vkWaitForFences");
    void* mapped = nullptr;
    check(vkMapMemory(device_, readback_memory_, 0, readback_bytes_, 0, &mapped), "vkMapMemory");
    const auto* bgra = static_cast<const uint8_t*>(mapped);
    const bool swap_red_blue = surface_format_.format == VK_FORMAT_B8G8R8A8_UNORM ||
                               surface_format_.format == VK_FORMAT_B8G8R8A8_SRGB;
    screenshot_.width = extent_.width;
    screenshot_.height = extent_.height;
    screenshot_.rgba.resize(size_t{extent_.width} * extent_.height * 4);
    for (size_t i = 0; i < screenshot_.rgba.size(); i += 4) {
      screenshot_.rgba[i + 0] = bgra[i + (swap_red_blue ? 2 : 0)];
      screenshot_.rgba[i + 1] = bgra[i + 1];
      screenshot_.rgba[i + 2] = bgra[i + (swap_red_blue ? 0 : 2)];
      screenshot_.rgba[i + 3] = 255;
    }
    vkUnmapMemory(device_, readback_memory_);
  }
}

// Records, after the render pass, a copy of the swapchain image into a
// host-visible buffer (the image goes PRESENT -> TRANSFER_SRC -> PRESENT).
void Renderer::read_back(uint32_t image_index) {
  const VkDeviceSize bytes = VkDeviceSize{extent_.width} * extent_.height * 4;
  if (bytes > readback_bytes_) {
    if (readback_) vkDestroyBuffer(device_, readback_, nullptr);
    if (readback_memory_) vkFreeMemory(device_, readback_memory_, nullptr);
    readback_ = VK_NULL_HANDLE;
    readback_memory_ = VK_NULL_HANDLE;
    VkBufferCreateInfo info{VK_STRUCTURE_TYPE_BUFFER_CREATE_INFO};
    info.size = bytes;
    info.usage = VK_BUFFER_USAGE_TRANSFER_DST_BIT;
    check(vkCreateBuffer(device_, &info, nullptr, &readback_), "vkCreateBuffer (screenshot)");
    VkMemoryRequirements req;
    vkGetBufferMemoryRequirements(device_, readback_, &req);
    VkPhysicalDeviceMemoryProperties memory;
    vkGetPhysicalDeviceMemoryProperties(physical_, &memory);
    const VkMemoryPropertyFlags wanted = VK_MEMORY_PROPERTY_HOST_VISIBLE_BIT | VK_MEMORY_PROPERTY_HOST_COHERENT_BIT;
    uint32_t type = UINT32_MAX;
    for (uint32_t i = 0; i < memory.memoryTypeCount && type == UINT32_MAX; ++i)
      if ((req.memoryTypeBits & (1u << i)) && (memory.memoryTypes[i].propertyFlags & wanted) == wanted) type = i;
    if (type == UINT32_MAX) throw gpu::GpuError("no host-visible memory for the screenshot");
    VkMemoryAllocateInfo alloc{VK_STRUCTURE_TYPE_MEMORY_ALLOCATE_INFO};
    alloc.allocationSize = req.size;
    alloc.memoryTypeIndex = type;
    check(vkAllocateMemory(device_, &alloc, nullptr, &readback_memory_), "vkAllocateMemory (screenshot)");
    check(vkBindBufferMemory(device_, readback_, readback_memory_, 0), "vkBindBufferMemory");
    readback_bytes_ = bytes;
  }
  VkCommandBuffer cb = command_buffers_[image_index];
  VkImageMemoryBarrier barrier{VK_STRUCTURE_TYPE_IMAGE_MEMORY_BARRIER};
  barrier.srcAccessMask = VK_ACCESS_COLOR_ATTACHMENT_WRITE_BIT;
  barrier.dstAccessMask = VK_ACCESS_TRANSFER_READ_BIT;
  barrier.oldLayout = VK_IMAGE_LAYOUT_PRESENT_SRC_KHR;
  barrier.newLayout = VK_IMAGE_LAYOUT_TRANSFER_SRC_OPTIMAL;
  barrier.srcQueueFamilyIndex = barrier.dstQueueFamilyIndex = VK_QUEUE_FAMILY_IGNORED;
  barrier.image = images_[image_index];
  barrier.subresourceRange = {VK_IMAGE_ASPECT_COLOR_BIT, 0, 1, 0, 1};
  vkCmdPipelineBarrier(cb, VK_PIPELINE_STAGE_COLOR_ATTACHMENT_OUTPUT_BIT, VK_PIPELINE_STAGE_TRANSFER_BIT, 0, 0,
                       nullptr, 0, nullptr, 1, &barrier);
  VkBufferImageCopy region{};
  region.imageSubresource = {VK_IMAGE_ASPECT_COLOR_BIT, 0, 0, 1};
  region.imageExtent = {extent_.width, extent_.height, 1};
  vkCmdCopyImageToBuffer(cb, images_[image_index], VK_IMAGE_LAYOUT_TRANSFER_SRC_OPTIMAL, readback_, 1, &region);
  barrier.srcAccessMask = VK_ACCESS_TRANSFER_READ_BIT;
  barrier.dstAccessMask = 0;
  barrier.oldLayout = VK_IMAGE_LAYOUT_TRANSFER_SRC_OPTIMAL;
  barrier.newLayout = VK_IMAGE_LAYOUT_PRESENT_SRC_KHR;
  vkCmdPipelineBarrier(cb, VK_PIPELINE_STAGE_TRANSFER_BIT, VK_PIPELINE_STAGE_BOTTOM_OF_PIPE_BIT, 0, 0, nullptr, 0,
                       nullptr, 1, &barrier);
  VkBufferMemoryBarrier host{VK_STRUCTURE_TYPE_BUFFER_MEMORY_BARRIER};
  host.srcAccessMask = VK_ACCESS_TRANSFER_WRITE_BIT;
  host.dstAccessMask = VK_ACCESS_HOST_READ_BIT;
  host.srcQueueFamilyIndex = host.dstQueueFamilyIndex = VK_QUEUE_FAMILY_IGNORED;
  host.buffer = readback_;
  host.size = VK_WHOLE_SIZE;
  vkCmdPipelineBarrier(cb, VK_PIPELINE_STAGE_TRANSFER_BIT, VK_PIPELINE_STAGE_HOST_BIT, 0, 0, nullptr, 1, &host, 0,
                       nullptr);
}

}  // namespace kvscope::gui
