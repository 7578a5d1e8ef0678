# The one table of shader variants. Each row: NAME SOURCE [DEFINES...].
# NAME becomes kvscope::shaders::Id::NAME in C++; DEFINES select dtype
# variants only (sizes are specialization constants, per-step values are push
# constants: see shaders/common/params.h).
set(KVSCOPE_SHADER_TABLE
  "smoke|smoke.comp|"
  "rmsnorm|rmsnorm.comp|"
  "kivi_key_write|kivi_key_write.comp|"
  "kivi_value_window|kivi_value_window.comp|"
  "attention_scores|attention_scores.comp|"
  "swiglu|swiglu.comp|"
  "add|add.comp|"
)

# Weight types the matrix shaders dequantize (ggml's type names, lower case):
# one embed, matvec and matmul per type, built with -DWTYPE_<TYPE> from
# shaders/common/weights.glsl. The list also generates
# kvscope_shaders_weight_types.inc, the one table C++ takes each (type, op)
# shader from (models/weight_shaders.h): adding a weight type is a row here,
# its decoding in weights.glsl, and its layout and CPU reference in models/.
set(KVSCOPE_WEIGHT_TYPES f32 f16 q8_0 q4_0 bf16 q4_1 q5_0 q5_1 iq4_nl q2_k q3_k iq4_xs q4_k q5_k q6_k)
set(_weight_rows "")
foreach(t IN LISTS KVSCOPE_WEIGHT_TYPES)
  string(TOUPPER "${t}" T)
  list(APPEND KVSCOPE_SHADER_TABLE
    "embed_${t}|embed.comp|WTYPE_${T}"
    "matvec_${t}|matvec.comp|WTYPE_${T}"
    "matmul_${t}|matmul.comp|WTYPE_${T}")
  string(APPEND _weight_rows "KVSCOPE_WEIGHT_TYPE(${T}, ${t})\n")
endforeach()

# KV cache formats, keys and values independent: one rope_kv_write and one
# attention per (key format, value format), e.g. Id::attention_q8_kivi2 for
# q8 keys and kivi2 values (kv/formats.h; models/forward.cpp picks them).
set(KVSCOPE_KV_FORMATS f32 f16 q8 q4 kivi2)
foreach(k IN LISTS KVSCOPE_KV_FORMATS)
  foreach(v IN LISTS KVSCOPE_KV_FORMATS)
    string(TOUPPER "K_${k},V_${v}" defs)
    list(APPEND KVSCOPE_SHADER_TABLE
      "rope_kv_write_${k}_${v}|rope_kv_write.comp|${defs}"
      "attention_${k}_${v}|attention.comp|${defs}")
  endforeach()
endforeach()

set(_gen ${CMAKE_BINARY_DIR}/generated)
file(MAKE_DIRECTORY ${_gen}/kvscope_shaders)
set(KVSCOPE_SHADER_SOURCES "")
set(_enum "")
set(_decls "")
set(_cases "")
set(_names "")
file(GLOB _includes ${CMAKE_SOURCE_DIR}/shaders/common/*)
foreach(row IN LISTS KVSCOPE_SHADER_TABLE)
  string(REPLACE "|" ";" fields "${row}")
  list(GET fields 0 name)
  list(GET fields 1 src)
  list(GET fields 2 defs)
  set(defflags "")
  if(defs)
    string(REPLACE "," ";" deflist "${defs}")
    foreach(d IN LISTS deflist)
      list(APPEND defflags "-D${d}")
    endforeach()
  endif()
  set(spv ${_gen}/kvscope_shaders/${name}.spv)
  set(cpp ${_gen}/kvscope_shaders/${name}.cpp)
  add_custom_command(
    OUTPUT ${spv}
    COMMAND ${GLSLANG} -V --target-env vulkan1.1 -I${CMAKE_SOURCE_DIR}/shaders/common
            ${defflags} -o ${spv} ${CMAKE_SOURCE_DIR}/shaders/${src}
    DEPENDS ${CMAKE_SOURCE_DIR}/shaders/${src} ${_includes}
    COMMENT "glslang ${name}"
    VERBATIM)
  add_custom_command(
    OUTPUT ${cpp}
    COMMAND ${CMAKE_COMMAND} -DSPV=${spv} -DOUT=${cpp} -DNAME=${name} -P ${CMAKE_SOURCE_DIR}/cmake/embed_spirv.cmake
    DEPENDS ${spv} ${CMAKE_SOURCE_DIR}/cmake/embed_spirv.cmake
    VERBATIM)
  list(APPEND KVSCOPE_SHADER_SOURCES ${cpp})
  string(APPEND _enum "  ${name},\n")
  string(APPEND _decls "extern const uint32_t ${name}[];\nextern const size_t ${name}_words;\n")
  string(APPEND _cases "    case Id::${name}: return {data::${name}, data::${name}_words};\n")
  string(APPEND _names "    case Id::${name}: return \"${name}\";\n")
endforeach()

set(_header "// generated from shaders/shaders.cmake — do not edit
#pragma once
#include <cstddef>
#include <cstdint>
#include <span>
#include <string_view>
namespace kvscope::shaders {
enum class Id {
${_enum}};
namespace data {
${_decls}}
inline std::span<const uint32_t> spirv(Id id) {
  switch (id) {
${_cases}  }
  return {};
}
inline std::string_view name(Id id) {
  switch (id) {
${_names}  }
  return \"?\";
}
}  // namespace kvscope::shaders
")
file(CONFIGURE OUTPUT ${_gen}/kvscope_shaders.h CONTENT "${_header}")
file(CONFIGURE OUTPUT ${_gen}/kvscope_shaders_weight_types.inc
     CONTENT "// generated from shaders/shaders.cmake's KVSCOPE_WEIGHT_TYPES — do not edit\n${_weight_rows}")
