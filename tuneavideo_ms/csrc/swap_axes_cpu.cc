// SwapAxes12(x) -> y: x [A, B, C, D] to y [A, C, B, D], float32, as a MindSpore
// "aot" custom operator. Every transpose of the video UNet has this form once
// reshaped ([b, c, f, h*w] <-> [b, f, c, h*w] around each per-frame layer,
// [n, c, h*w] <-> [n, h*w, c] around the transformers, frames <-> positions in
// temporal attention). MindSpore 2.10's CPU Transpose keeps a table of twice
// its output's size for as long as its graph lives, gigabytes in a training
// graph; this copy keeps nothing.
#include <algorithm>
#include <cstdint>
#include <cstring>

extern "C" int SwapAxes12(int nparam, void **params, int *ndims, int64_t **shapes, const char **dtypes, void *,
                          void *) {
  if (nparam != 2 || ndims[0] != 4 || std::strcmp(dtypes[0], "float32") != 0) return 1;
  const int64_t a = shapes[0][0], b = shapes[0][1], c = shapes[0][2], d = shapes[0][3];
  const float *x = static_cast<const float *>(params[0]);
  float *y = static_cast<float *>(params[1]);
  // tiles of (b, c) so that both sides' rows stay in cache when d is small
  constexpr int64_t kTile = 32;
  for (int64_t i = 0; i < a; ++i) {
    const float *xi = x + i * b * c * d;
    float *yi = y + i * b * c * d;
    for (int64_t j0 = 0; j0 < b; j0 += kTile) {
      for (int64_t k0 = 0; k0 < c; k0 += kTile) {
        const int64_t j1 = std::min(b, j0 + kTile), k1 = std::min(c, k0 + kTile);
        for (int64_t j = j0; j < j1; ++j) {
          for (int64_t k = k0; k < k1; ++k) {
            const float *from = xi + (j * c + k) * d;
            float *to = yi + (k * b + j) * d;
            for (int64_t e = 0; e < d; ++e) to[e] = from[e];
          }
        }
      }
    }
  }
  return 0;
}
