// Timer: two timestamps per dispatch (query 2i before, 2i+1 after dispatch i),
// summed per pipeline name after the submit completes.
#include "gpu/timer.h"

#include <fmt/format.h>

#include <utility>

namespace kvscope::gpu {

Timer::Timer(const Context& ctx, uint32_t max_dispatches)
    : ctx_(&ctx), capacity_(max_dispatches) {
  if (!ctx.info().timestamps || max_dispatches == 0) return;  // no-ops from here on
  uint32_t n = 0;
  vkGetPhysicalDeviceQueueFamilyProperties(ctx.physical_device(), &n, nullptr);
  std::vector<VkQueueFamilyProperties> families(n);
  vkGetPhysicalDeviceQueueFamilyProperties(ctx.physical_device(), &n, families.data());
  const uint32_t bits = families.at(ctx.queue_family()).timestampValidBits;
  valid_mask_ = bits >= 64 ? ~0ull : (1ull << bits) - 1;

  VkQueryPoolCreateInfo info{VK_STRUCTURE_TYPE_QUERY_POOL_CREATE_INFO};
  info.queryType = VK_QUERY_TYPE_TIMESTAMP;
  info.queryCount = 2 * max_dispatches;
  check(vkCreateQueryPool(ctx.device(), &info, nullptr, &pool_), "Timer: vkCreateQueryPool");
  names_.reserve(max_dispatches);
  results_.reserve(2 * max_dispatches);
}

void Timer::release() {
  if (ctx_ && pool_) vkDestroyQueryPool(ctx_->device(), pool_, nullptr);
  pool_ = VK_NULL_HANDLE;
  ctx_ = nullptr;
}

Timer::~Timer() { release(); }

Timer::Timer(Timer&& o) noexcept
    : ctx_(std::exchange(o.ctx_, nullptr)),
      pool_(std::exchange(o.pool_, VK_NULL_HANDLE)),
      capacity_(std::exchange(o.capacity_, 0)),
      used_(std::exchange(o.used_, 0)),
      names_(std::move(o.names_)),
      totals_(std::move(o.totals_)),
      results_(std::move(o.results_)),
      valid_mask_(o.valid_mask_) {}

Timer& Timer::operator=(Timer&& o) noexcept {
  if (this != &o) {
    release();
    ctx_ = std::exchange(o.ctx_, nullptr);
    pool_ = std::exchange(o.pool_, VK_NULL_HANDLE);
    capacity_ = std::exchange(o.capacity_, 0);
    used_ = std::exchange(o.used_, 0);
    names_ = std::move(o.names_);
    totals_ = std::move(o.totals_);
    results_ = std::move(o.results_);
    valid_mask_ = o.valid_mask_;
  }
  return *this;
}

void Timer::reset(VkCommandBuffer cb) {
  used_ = 0;
  if (!pool_) return;
  vkCmdResetQueryPool(cb, pool_, 0, 2 * capacity_);
}

void Timer::before(VkCommandBuffer cb, std::string_view name) {
  // Dispatches past the capacity go untimed rather than failing the step.
  if (!pool_ || used_ + 2 > 2 * capacity_) return;
  const uint32_t index = used_ / 2;
  if (index < names_.size())
    names_[index].assign(name);  // reuses the string's storage after warm-up
  else
    names_.emplace_back(name);
  // COMPUTE_SHADER for both ends: the start waits for earlier compute work,
  // so each interval is this dispatch rather than its overlap with others.
  vkCmdWriteTimestamp(cb, VK_PIPELINE_STAGE_COMPUTE_SHADER_BIT, pool_, used_++);
}

void Timer::after(VkCommandBuffer cb) {
  if (!pool_ || used_ % 2 == 0) return;  // before() skipped this dispatch
  vkCmdWriteTimestamp(cb, VK_PIPELINE_STAGE_COMPUTE_SHADER_BIT, pool_, used_++);
}

std::map<std::string, double> Timer::collect() {
  std::map<std::string, double> ms;
  if (!pool_ || used_ < 2) return ms;
  const uint32_t queries = used_ / 2 * 2;
  results_.resize(queries);
  check(vkGetQueryPoolResults(ctx_->device(), pool_, 0, queries, queries * sizeof(uint64_t),
                              results_.data(), sizeof(uint64_t),
                              VK_QUERY_RESULT_64_BIT | VK_QUERY_RESULT_WAIT_BIT),
        "Timer: vkGetQueryPoolResults");
  const double ns_per_tick = ctx_->info().timestamp_period_ns;
  for (uint32_t i = 0; i < queries / 2; ++i) {
    // Masked difference: counters narrower than 64 bits may wrap.
    const uint64_t ticks = (results_[2 * i + 1] - results_[2 * i]) & valid_mask_;
    ms[names_[i]] += ticks * ns_per_tick * 1e-6;
  }
  for (const auto& [name, value] : ms) totals_[name] += value;
  used_ = 0;  // collected once; the next begin() resets the pool
  return ms;
}

}  // namespace kvscope::gpu
