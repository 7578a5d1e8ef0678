# cmake -DSPV=in.spv -DOUT=out.cpp -DNAME=name -P embed_spirv.cmake
# Writes the SPIR-V words as a uint32_t array the binary carries.
file(READ "${SPV}" hex HEX)
string(LENGTH "${hex}" len)
math(EXPR rem "${len} % 8")
if(NOT rem EQUAL 0 OR len EQUAL 0)
  message(FATAL_ERROR "${SPV}: not a SPIR-V module (size not a multiple of 4)")
endif()
# SPIR-V is little-endian words: reverse each group of 4 bytes.
string(REGEX REPLACE "(..)(..)(..)(..)" "0x\\4\\3\\2\\1u," words "${hex}")
string(REGEX REPLACE "((0x[0-9a-f]+u,){8})" "\\1\n  " words "${words}")
file(WRITE "${OUT}" "// generated from ${SPV} — do not edit\n#include <cstdint>\n#include <cstddef>\nnamespace kvscope::shaders::data {\nextern const uint32_t ${NAME}[];\nextern const size_t ${NAME}_words;\nconst uint32_t ${NAME}[] = {\n  ${words}\n};\nconst size_t ${NAME}_words = sizeof(${NAME}) / 4;\n}\n")
