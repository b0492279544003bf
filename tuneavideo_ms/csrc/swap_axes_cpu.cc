// SwapAxes12(x) -> y: x [A, B, C, D] to y [A, C, B, D], any dtype, as a MindSpore
// "aot" custom operator. Every transpose of the video UNet has this form once
// reshaped ([b, c, f, h*w] <-> [b, f, c, h*w] around each per-frame layer,
// [n, c, h*w] <-> [n, h*w, c] around the transformers, frames <-> positions in
// temporal attention). MindSpore 2.10's CPU Transpose keeps a table of twice
// its output's size for as long as its graph lives, gigabytes in a training
// graph; this copy keeps nothing.
#include <algorithm>
#include <cstdint>
#include <cstring>

namespace {

int64_t element_size(const char *dtype) {
  for (const char *name : {"float32", "int32", "uint32"})
    if (std::strcmp(dtype, name) == 0) return 4;
  for (const char *name : {"float16", "bfloat16", "int16", "uint16"})
    if (std::strcmp(dtype, name) == 0) return 2;
  for (const char *name : {"float64", "int64", "uint64"})
    if (std::strcmp(dtype, name) == 0) return 8;
  for (const char *name : {"bool", "int8", "uint8"})
    if (std::strcmp(dtype, name) == 0) return 1;
  return 0;
}

}  // namespace

extern "C" int SwapAxes12(int nparam, void **params, int *ndims, int64_t **shapes, const char **dtypes, void *,
                          void *) {
  const int64_t size = nparam == 2 && ndims[0] == 4 ? element_size(dtypes[0]) : 0;
  if (size == 0) return 1;
  const int64_t a = shapes[0][0], b = shapes[0][1], c = shapes[0][2], row = shapes[0][3] * size;
  const char *x = static_cast<const char *>(params[0]);
  char *y = static_cast<char *>(params[1]);
  // tiles of (b, c) so that both sides' rows stay in cache when rows are short
  constexpr int64_t kTile = 32;
  for (int64_t i = 0; i < a; ++i) {
    const char *xi = x + i * b * c * row;
    char *yi = y + i * b * c * row;
    for (int64_t j0 = 0; j0 < b; j0 += kTile) {
      for (int64_t k0 = 0; k0 < c; k0 += kTile) {
        const int64_t j1 = std::min(b, j0 + kTile), k1 = std::min(c, k0 + kTile);
        for (int64_t j = j0; j < j1; ++j)
          for (int64_t k = k0; k < k1; ++k) std::memcpy(yi + (k * b + j) * row, xi + (j * c + k) * row, row);
      }
    }
  }
  return 0;
}
