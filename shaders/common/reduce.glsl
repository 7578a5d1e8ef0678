// Workgroup-wide reductions through shared memory (no subgroup features, so
// they work for any subgroup size: lavapipe 8, NVIDIA 32, AMD 64).
// The including shader declares `layout(constant_id = 0) const uint WG` (the
// workgroup size, a power of two) before including this file.
// Every invocation of the workgroup must call these (they contain barriers).
#ifndef KVSCOPE_REDUCE_GLSL
#define KVSCOPE_REDUCE_GLSL

shared float reduce_scratch[WG];

float workgroup_sum(float v) {
  const uint tid = gl_LocalInvocationID.x;
  reduce_scratch[tid] = v;
  barrier();
  for (uint stride = WG / 2; stride > 0; stride >>= 1) {
    if (tid < stride) reduce_scratch[tid] += reduce_scratch[tid + stride];
    barrier();
  }
  const float total = reduce_scratch[0];
  barrier();  // the scratch may be reused right after
  return total;
}

float workgroup_max(float v) {
  const uint tid = gl_LocalInvocationID.x;
  reduce_scratch[tid] = v;
  barrier();
  for (uint stride = WG / 2; stride > 0; stride >>= 1) {
    if (tid < stride) reduce_scratch[tid] = max(reduce_scratch[tid], reduce_scratch[tid + stride]);
    barrier();
  }
  const float result = reduce_scratch[0];
  barrier();
  return result;
}

#endif
