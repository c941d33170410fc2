// Optimizer arithmetic on fp32 master weights and gradients (flat buffers or ZeRO-1 shards).
#pragma once
#include <cstddef>
#include <cstdint>

namespace metapo::cpu {

// One AdamW update of n elements: where decay[i], p -= wd * p (decoupled, before the Adam step); then
// m = b1 m + (1 - b1) g, v = b2 v + (1 - b2) g², p -= step_size * m / (√v * inv_bc2_sqrt + eps).
void adamw_step(float* p, const float* g, float* m, float* v, const uint8_t* decay, size_t n, float b1, float b2,
                float step_size, float inv_bc2_sqrt, float eps, float wd);
// x[i] *= f, i < n.
void scale(float* x, float f, size_t n);
// Σ x[i]² in double, summed in blocks of a fixed size in a fixed order: the same result whatever the
// thread count.
double sum_squares(const float* x, size_t n);
// Adam's direction for a gradient s given the second moment v: s[i] /= √((b2 v[i] + b2c s[i]²) / bc2)
// + eps, where b2c = 1 - b2 and bc2 = 1 - b2^(t+1) (MetaPO's preconditioned validation gradient).
void adam_precondition(float* s, const float* v, size_t n, float b2, float b2c, float bc2, float eps);

// Whether no element is inf or NaN: a bit test (exponent all ones) rather than std::isfinite, which
// the compiler does not vectorize (10 GB/s instead of 2; it scans the whole state before every
// checkpoint).
bool all_finite(const float* x, size_t n);

}  // namespace metapo::cpu
