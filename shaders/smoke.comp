#version 450
// Smoke test of the GPU layer: out[i] = in[i] * 2 + push.add
layout(local_size_x_id = 0) in;
layout(std430, binding = 0) readonly buffer In { float x[]; };
layout(std430, binding = 1) writeonly buffer Out { float y[]; };
layout(push_constant) uniform P { uint n; float add; } p;
void main() {
  uint i = gl_GlobalInvocationID.x;
  if (i < p.n) y[i] = x[i] * 2.0 + p.add;
}
