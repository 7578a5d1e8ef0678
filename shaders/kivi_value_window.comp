#version 450
// kivi2 values, after attention: the step's last tokens into the values' f16
// window (KIVI's full-precision residual), position p in row p % v_window,
// tagged with p so a reader knows which position a row holds. After
// attention, not before: the step's queries still read the positions before
// the step from the window, and their own from the qkv rows. One workgroup
// per (kv head, token). The CPU reference is kv::TensorImage::write_window
// (kv/formats.cpp); the layout is specified in kv/formats.h.
#extension GL_GOOGLE_include_directive : require
#include "params.h"

layout(local_size_x_id = 0) in;
layout(constant_id = 0) const uint WG = 64;

layout(std430, binding = 0) readonly buffer Qkv { float qkv[]; };
layout(std430, binding = 1) readonly buffer Positions { int positions[]; };
layout(std430, binding = 2) writeonly buffer ValueCache { uint v_cache[]; };

layout(push_constant) uniform Push { KiviValueWindowParams p; };

void main() {
  const uint kv_head = gl_WorkGroupID.x, W = p.kv.v_window;
  const uint last = min(p.n_tokens, W);
  if (kv_head >= p.n_kv_head || gl_WorkGroupID.y >= last) return;
  const uint t = p.n_tokens - last + gl_WorkGroupID.y;  // the step's last W positions: distinct rows
  const int position = positions[t];
  const uint row = p.kv.v_recent_offset + (kv_head * W + uint(position) % W) * (1u + p.head_dim / 2u);
  const uint src = t * p.qkv_stride + p.v_offset + kv_head * p.head_dim;
  if (gl_LocalInvocationID.x == 0u) v_cache[row] = uint(position);
  for (uint i = gl_LocalInvocationID.x; i < p.head_dim / 2u; i += WG)
    v_cache[row + 1u + i] = packHalf2x16(vec2(qkv[src + 2u * i], qkv[src + 2u * i + 1u]));
}
