// What a long run costs in memory, for the soak runs (`kvscope soak`, the
// window's --soak): the process's resident bytes, and the least-squares
// slope of a series of samples.
#pragma once
#include <cstdint>
#include <span>

namespace kvscope {

// Resident set size of this process in bytes (/proc/self/statm; 0 where
// that file does not exist).
uint64_t resident_bytes();
// Bytes the C heap has handed out and not had back (glibc's mallinfo2, every
// arena): what the program holds, as against what the allocator keeps
// resident (RSS also counts freed memory the allocator has not returned).
uint64_t heap_in_use_bytes();

// The least-squares slope of y over x (0 with fewer than two distinct x).
double least_squares_slope(std::span<const double> x, std::span<const double> y);

}  // namespace kvscope
