// GPU timestamps per dispatch: a query pool the Recorder writes before and
// after each dispatch while a Timer is attached; results are summed by
// pipeline name.
#pragma once
#include <vulkan/vulkan.h>

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "gpu/context.h"

namespace kvscope::gpu {

class Timer {
 public:
  Timer(const Context& ctx, uint32_t max_dispatches = 1024);
  ~Timer();
  Timer(Timer&&) noexcept;
  Timer& operator=(Timer&&) noexcept;
  Timer(const Timer&) = delete;
  Timer& operator=(const Timer&) = delete;

  bool supported() const { return pool_ != VK_NULL_HANDLE; }
  // Called by Recorder.
  void reset(VkCommandBuffer cb);
  void before(VkCommandBuffer cb, std::string_view name);
  void after(VkCommandBuffer cb);
  // After the submit completes: milliseconds per pipeline name for that submit
  // (added to totals()). Call it only after submit_and_wait() of a step begun
  // with this Timer (it waits for the results); a second call returns {}.
  // Dispatches beyond max_dispatches in one step go untimed.
  std::map<std::string, double> collect();
  const std::map<std::string, double>& totals() const { return totals_; }

 private:
  const Context* ctx_ = nullptr;
  VkQueryPool pool_ = VK_NULL_HANDLE;
  uint32_t capacity_ = 0, used_ = 0;
  std::vector<std::string> names_;
  std::map<std::string, double> totals_;
  std::vector<uint64_t> results_;  // reused by collect()
  uint64_t valid_mask_ = ~0ull;    // the queue's timestampValidBits
  void release();
};

}  // namespace kvscope::gpu
