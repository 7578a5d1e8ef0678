// The window and what draws into it: a GLFW window, a Vulkan instance and
// device with a swapchain on its surface, and Dear ImGui's Vulkan backend.
//
// Why a Vulkan device of its own rather than the engine's gpu::Context: the
// window must outlive engines (a model that fails to load, or opening another
// one, replaces the Engine and its Context while the window stays), and the
// Context today has no option for surface extensions or a graphics queue.
// The renderer picks the same physical device the engine uses (same rule:
// discrete > integrated > virtual > cpu, or the index given), so both run on
// one GPU; only the VkDevice differs.
#pragma once
#include <vulkan/vulkan.h>

#include <cstdint>
#include <stdexcept>
#include <string>
#include <vector>

struct GLFWwindow;
struct ImDrawData;

namespace kvscope::gui {

// Thrown when no window can be opened (no display, no GLFW Vulkan support).
struct NoDisplay : std::runtime_error {
  using std::runtime_error::runtime_error;
};

// RGBA8 pixels of one frame, top row first.
struct Screenshot {
  uint32_t width = 0, height = 0;
  std::vector<uint8_t> rgba;
};

class Window {
 public:
  Window(int width, int height, const char* title);  // throws NoDisplay
  ~Window();
  Window(const Window&) = delete;
  Window& operator=(const Window&) = delete;
  GLFWwindow* handle() const { return window_; }
  bool should_close() const;
  float content_scale() const;  // the monitor's DPI scale (1 on a plain display)

 private:
  GLFWwindow* window_ = nullptr;
};

class Renderer {
 public:
  // device_index: the engine's --device (-1: the same automatic choice).
  Renderer(Window& window, int device_index);
  ~Renderer();
  Renderer(const Renderer&) = delete;
  Renderer& operator=(const Renderer&) = delete;

  // Uploads ImGui's font atlas; call after the fonts are added.
  void upload_fonts();
  // Draws one frame and presents it; with `capture`, also reads the frame
  // back (see take_screenshot). Rebuilds the swapchain when the window
  // changed size.
  void render(ImDrawData* draw_data, bool capture);
  // The frame captured by the last render(..., true).
  const Screenshot& screenshot() const { return screenshot_; }
  std::string device_name() const { return device_name_; }
  // Validation-layer warnings and errors so far (KVSCOPE_VALIDATION=1).
  uint64_t validation_messages() const { return validation_messages_; }

 private:
  void init(int device_index);
  void release();  // everything, in reverse order; safe on a half-made Renderer
  void create_swapchain();
  void destroy_swapchain();
  void read_back(uint32_t image_index);

  Window* window_;
  VkInstance instance_ = VK_NULL_HANDLE;
  VkDebugUtilsMessengerEXT messenger_ = VK_NULL_HANDLE;
  VkSurfaceKHR surface_ = VK_NULL_HANDLE;
  VkPhysicalDevice physical_ = VK_NULL_HANDLE;
  VkDevice device_ = VK_NULL_HANDLE;
  uint32_t family_ = 0;
  VkQueue queue_ = VK_NULL_HANDLE;
  VkDescriptorPool descriptor_pool_ = VK_NULL_HANDLE;
  VkRenderPass render_pass_ = VK_NULL_HANDLE;
  VkCommandPool command_pool_ = VK_NULL_HANDLE;
  VkSurfaceFormatKHR surface_format_{};
  bool imgui_ready_ = false;

  // Per swapchain: images, their views, framebuffers, command buffers,
  // fences and render-finished semaphores (indexed by image); acquire
  // semaphores rotate over one more than the images.
  VkSwapchainKHR swapchain_ = VK_NULL_HANDLE;
  VkExtent2D extent_{};
  uint32_t min_image_count_ = 2;
  std::vector<VkImage> images_;
  std::vector<VkImageView> views_;
  std::vector<VkFramebuffer> framebuffers_;
  std::vector<VkCommandBuffer> command_buffers_;
  std::vector<VkFence> fences_;
  std::vector<VkSemaphore> rendered_, acquired_;
  uint32_t acquire_index_ = 0;
  bool swapchain_stale_ = false;

  // Host-visible copy of one frame for screenshots.
  VkBuffer readback_ = VK_NULL_HANDLE;
  VkDeviceMemory readback_memory_ = VK_NULL_HANDLE;
  VkDeviceSize readback_bytes_ = 0;
  Screenshot screenshot_;

  std::string device_name_;
  uint64_t validation_messages_ = 0;
};

}  // namespace kvscope::gui
