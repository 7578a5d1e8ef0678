#include "models/weight_shaders.h"

#include <stdexcept>
#include <string>

#include <fmt/format.h>

namespace kvscope {

size_t weight_shader_index(GgmlType type) {
  for (size_t i = 0; i < kWeightTypeCount; ++i)
    if (kWeightShaders[i].type == type) return i;
  std::string known;
  for (const WeightShaders& w : kWeightShaders) known += fmt::format("{}{}", known.empty() ? "" : " ", type_traits(static_cast<uint32_t>(w.type))->name);
  const auto traits = type_traits(static_cast<uint32_t>(type));
  throw std::invalid_argument(fmt::format("no shader for weight type {}; the shaders read {}",
                                          traits ? std::string(traits->name) : fmt::format("#{}", uint32_t(type)),
                                          known));
}

}  // namespace kvscope
