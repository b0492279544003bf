// Elementwise math written so that loops over it vectorise (no calls, no
// branches: gcc vectorises neither expf nor erff without -ffast-math; the
// library is built with -fno-trapping-math, without which gcc keeps the
// selects below as branches).
#pragma once
#include <cstdint>

// exp for x <= 0, as Cephes' expf (about 1 ulp), written so that loops over it vectorise
inline float exp_nonpositive(float x) {
  x = x < -87.0f ? -87.0f : x;
  // n = round(x / ln 2) by the float-rounding trick: floor() would not vectorise
  float n = (x * 1.44269504088896341f + 12582912.0f) - 12582912.0f;
  float r = x - n * 0.693359375f + n * 2.12194440e-4f;
  float y = 1.9875691500e-4f;
  y = y * r + 1.3981999507e-3f;
  y = y * r + 8.3334519073e-3f;
  y = y * r + 4.1665795894e-2f;
  y = y * r + 1.6666665459e-1f;
  y = y * r + 5.0000001201e-1f;
  y = y * r * r + r + 1.0f;
  return y * __builtin_bit_cast(float, (static_cast<int32_t>(n) + 127) << 23);  // y * 2^n
}

// The standard normal distribution's CDF Phi(x) = (1 + erf(x / sqrt 2)) / 2,
// within 1.3e-7 of it (absolute; relative 2e-6 in the lower tail): erf(z) =
// z P(z^2) for |z| < 1 and erfc(|z|) = exp(-z^2 + Q(|z|)) above, P and Q
// least-squares fits (degrees 5 and 8; Q on [1, 4], where erfc falls to 1.5e-8)
inline float normal_cdf(float x) {
  const float z = x * 0.70710678118654752f, s = z * z;
  const float t = z < 0.0f ? -z : z, tq = t < 4.0f ? t : 4.0f;
  float p = -5.696655947e-04f;
  p = p * s + 4.934506852e-03f;
  p = p * s - 2.672698146e-02f;
  p = p * s + 1.128078875e-01f;
  p = p * s - 3.761241472e-01f;
  p = p * s + 1.128379150e+00f;
  float q = 1.614049315e-06f;
  q = q * tq - 4.559039228e-05f;
  q = q * tq + 5.927677086e-04f;
  q = q * tq - 4.740214309e-03f;
  q = q * tq + 2.636469611e-02f;
  q = q * tq - 1.099782105e-01f;
  q = q * tq + 3.680628726e-01f;
  q = q * tq - 1.130166658e+00f;
  q = q * tq + 3.032090093e-04f;
  const float erfc_t = exp_nonpositive(q - s);
  const float tail = z > 0.0f ? 1.0f - 0.5f * erfc_t : 0.5f * erfc_t;
  return t < 1.0f ? 0.5f + 0.5f * z * p : tail;
}

// Phi's derivative, the standard normal density
inline float normal_pdf(float x) { return 0.398942280401432678f * exp_nonpositive(-0.5f * x * x); }
