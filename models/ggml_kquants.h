// The K-quant block formats (super-blocks of 256 elements), byte for byte as
// ggml lays them out, with the CPU reference dequantizers and kvscope's own
// quantizers. Reached through quantize_row / dequantize_row in ggml_types.h.
//
//   Q4_K (144 bytes): f16 d; f16 dmin; u8 scales[12]; u8 qs[128]
//     eight sub-blocks of 32, each with a 6-bit scale sc and 6-bit min m
//     (packed into `scales`, see kq_scale_min); x = d*sc * q - dmin*m, q in 0..15.
//     Sub-block 2g holds the low nibbles of qs[32g .. 32g+31], 2g+1 the high.
//   Q5_K (176 bytes): as Q4_K with u8 qh[32] between scales and qs: bit s of
//     qh[l] is the fifth bit of element l of sub-block s; q in 0..31.
//   Q6_K (210 bytes): u8 ql[128]; u8 qh[64]; i8 scales[16]; f16 d
//     sixteen groups of 16 with an int8 scale each; x = d*scales[e/16] * (q-32),
//     q in 0..63. Element e = 128h + 32k + l (h in 0..1, k in 0..3, l in 0..31):
//     low 4 bits in ql[64h + 32(k&1) + l] (low nibble for k < 2, high for k >= 2),
//     high 2 bits in bits 2k..2k+1 of qh[32h + l].
//   Q2_K (84 bytes): u8 scales[16]; u8 qs[64]; f16 d; f16 dmin
//     sixteen groups of 16; scales[i] holds a 4-bit scale (low nibble) and
//     min (high); x = d*sc * q - dmin*m, q in 0..3. Element e = 128h + 32k + l:
//     q in bits 2k..2k+1 of qs[32h + l], group 8h + 2k + (l >= 16).
//   Q3_K (110 bytes): u8 hmask[32]; u8 qs[64]; u8 scales[12]; f16 d
//     sixteen 6-bit scales sc (kq3_scale); x = d*(sc - 32) * q, q = the 2 bits
//     of qs as Q2_K's minus 4 unless bit 4h + k of hmask[l] is set, so q in -4..3.
#pragma once
#include <cstddef>
#include <cstdint>
#include <span>

namespace kvscope {

constexpr size_t kSuperBlock = 256;  // elements per K-quant block
constexpr size_t kQ4_KBlockBytes = 144;
constexpr size_t kQ5_KBlockBytes = 176;
constexpr size_t kQ6_KBlockBytes = 210;
constexpr size_t kQ2_KBlockBytes = 84;
constexpr size_t kQ3_KBlockBytes = 110;

// Q3_K: the 6-bit scale of group i (0..15) from the 12 packed bytes (ggml's
// unpacking: low nibbles of bytes 0..7 for groups 0..7, high nibbles for
// 8..15, and the top two bits from bytes 8..11).
int kq3_scale(const uint8_t* scales, int i);

// Q4_K / Q5_K: the 6-bit scale and min of sub-block j (0..7) from the
// 12 packed bytes (j < 4: low 6 bits of bytes j and j+4; j >= 4: a nibble of
// byte j+4 plus the top 2 bits of bytes j-4 and j).
void kq_scale_min(const uint8_t* scales, int j, uint8_t& scale, uint8_t& min);

// `src`/`dst` hold a whole number of super-blocks (the callers check sizes).
void quantize_q4_k(std::span<const float> src, uint8_t* dst);
void quantize_q5_k(std::span<const float> src, uint8_t* dst);
void quantize_q6_k(std::span<const float> src, uint8_t* dst);
void quantize_q2_k(std::span<const float> src, uint8_t* dst);
void quantize_q3_k(std::span<const float> src, uint8_t* dst);
void dequantize_q4_k(const uint8_t* src, std::span<float> dst);
void dequantize_q5_k(const uint8_t* src, std::span<float> dst);
void dequantize_q6_k(const uint8_t* src, std::span<float> dst);
void dequantize_q2_k(const uint8_t* src, std::span<float> dst);
void dequantize_q3_k(const uint8_t* src, std::span<float> dst);

}  // namespace kvscope
