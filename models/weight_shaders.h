// The shaders of each weight type: one row per type of shaders.cmake's
// KVSCOPE_WEIGHT_TYPES (generated into kvscope_shaders_weight_types.inc),
// with what each op binds. The only place C++ maps a weight type to its
// shaders — the forward pass and the op tests both read it — so a type
// without shaders is an error naming it, never another type's shader.
#pragma once
#include <cstddef>
#include <cstdint>
#include <iterator>

#include "kvscope_shaders.h"
#include "models/ggml_types.h"
#include "shaders/common/params.h"

namespace kvscope {

// What one op's pipeline binds: how many bindings, the push-constant bytes,
// and which bindings are uniform texel buffers (bit i: binding i). Every
// weight type's shader of an op binds the same.
struct WeightOp {
  uint32_t bindings;
  uint32_t push_bytes;
  uint32_t texel_bindings;
};
// embed: tokens, values (texels), scales, x. matvec / matmul: values (texels), scales, x, y.
inline constexpr WeightOp kEmbedOp{4, sizeof(params::EmbedParams), 1u << 1};
inline constexpr WeightOp kMatvecOp{4, sizeof(params::MatVecParams), 1u << 0};
inline constexpr WeightOp kMatmulOp{4, sizeof(params::MatMulParams), 1u << 0};

struct WeightShaders {
  GgmlType type;
  shaders::Id embed, matvec, matmul;
};

inline constexpr WeightShaders kWeightShaders[] = {
#define KVSCOPE_WEIGHT_TYPE(T, t) {GgmlType::T, shaders::Id::embed_##t, shaders::Id::matvec_##t, shaders::Id::matmul_##t},
#include "kvscope_shaders_weight_types.inc"
#undef KVSCOPE_WEIGHT_TYPE
};
inline constexpr size_t kWeightTypeCount = std::size(kWeightShaders);

// The row of `type` in kWeightShaders; std::invalid_argument naming the type
// and the types that have shaders.
size_t weight_shader_index(GgmlType type);
inline const WeightShaders& weight_shaders(GgmlType type) { return kWeightShaders[weight_shader_index(type)]; }

}  // namespace kvscope
