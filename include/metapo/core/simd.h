// METAPO_WIDE_LOOPS: lets GCC vectorize a loop's function with 512-bit registers where the target
// has them (-march=native on an AVX-512 machine; GCC's default caps auto-vectorization at 256 bits).
// For memory-bound scans over the whole training state (the checkpoint's checksum and finite test),
// where the 512-bit form is ~1.6x faster; elsewhere a no-op.
#pragma once

#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__)
#define METAPO_WIDE_LOOPS __attribute__((target("prefer-vector-width=512")))
#else
#define METAPO_WIDE_LOOPS
#endif
