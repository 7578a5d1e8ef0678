// KV cache bindings and element access for KV_F32 / KV_F16, layout
// [n_kv_head][capacity][head_dim] (params.h). The including shader defines
// K_BINDING and V_BINDING, and KV_WRITER for the shader that writes the cache
// (it gets the store functions; readers get the loads).
// F16 stores two halves per uint (no 16-bit storage features needed); head_dim
// is even, so a (slot, pair) never straddles rows.
#ifndef KVSCOPE_KV_GLSL
#define KVSCOPE_KV_GLSL

#ifdef KV_WRITER
#define KV_ACCESS writeonly
#else
#define KV_ACCESS readonly
#endif

#if defined(KV_F32)
layout(std430, binding = K_BINDING) KV_ACCESS buffer KeyCache { float k_cache[]; };
layout(std430, binding = V_BINDING) KV_ACCESS buffer ValueCache { float v_cache[]; };
#elif defined(KV_F16)
layout(std430, binding = K_BINDING) KV_ACCESS buffer KeyCache { uint k_cache[]; };
layout(std430, binding = V_BINDING) KV_ACCESS buffer ValueCache { uint v_cache[]; };
#else
#error "define KV_F32 or KV_F16 (see shaders/shaders.cmake)"
#endif

// `e` is an element index into the cache; the pair functions take an even one.
#if defined(KV_WRITER)
#if defined(KV_F32)
void k_store2(uint e, vec2 x) { k_cache[e] = x.x; k_cache[e + 1u] = x.y; }
void v_store2(uint e, vec2 x) { v_cache[e] = x.x; v_cache[e + 1u] = x.y; }
#else
void k_store2(uint e, vec2 x) { k_cache[e / 2u] = packHalf2x16(x); }
void v_store2(uint e, vec2 x) { v_cache[e / 2u] = packHalf2x16(x); }
#endif
#else
#if defined(KV_F32)
vec2 k_load2(uint e) { return vec2(k_cache[e], k_cache[e + 1u]); }
float v_load(uint e) { return v_cache[e]; }
#else
vec2 k_load2(uint e) { return unpackHalf2x16(k_cache[e / 2u]); }
float v_load(uint e) {
  const vec2 pair = unpackHalf2x16(v_cache[e / 2u]);
  return (e & 1u) == 0u ? pair.x : pair.y;
}
#endif
#endif

#endif
