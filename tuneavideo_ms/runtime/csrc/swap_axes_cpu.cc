// SwapAxes12(x) -> y: x [A, B, C, D] to y [A, C, B, D], any dtype, as a MindSpore
// "aot" custom operator. Every transpose of the video UNet has this form once
// reshaped ([b, c, f, h*w] <-> [b, f, c, h*w] around each per-frame layer,
// [n, c, h*w] <-> [n, h*w, c] around the transformers, frames <-> positions in
// temporal attention). MindSpore 2.10's CPU Transpose keeps a table of twice
// its output's size for as long as its graph lives, gigabytes in a training
// graph; this copy keeps nothing.
#include <cstring>

#include "kernels.h"

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

constexpr int64_t kThreadedBytes = 4 << 20;
constexpr int64_t kTile = 32;

// rows j0 .. j0 + kTile of x [b, c, row] to y [c, b, row]; T an element of `row`
// bytes, or char with rows of `row` bytes
template <typename T>
void swap_band(const char *x, char *y, int64_t b, int64_t c, int64_t j0, int64_t row) {
  const T *xt = reinterpret_cast<const T *>(x);
  T *yt = reinterpret_cast<T *>(y);
  const int64_t j1 = std::min(b, j0 + kTile);
  for (int64_t k0 = 0; k0 < c; k0 += kTile) {
    const int64_t k1 = std::min(c, k0 + kTile);
    if constexpr (sizeof(T) == 1) {
      for (int64_t j = j0; j < j1; ++j)
        for (int64_t k = k0; k < k1; ++k) std::memcpy(yt + (k * b + j) * row, xt + (j * c + k) * row, row);
    } else if (b >= c) {
      // single elements: the inner loop along the longer rows of the two sides
      // (measured, 2 MB of fp32 either way: 0.3 ms against 0.8-1.1 the other way round)
      for (int64_t k = k0; k < k1; ++k)
        for (int64_t j = j0; j < j1; ++j) yt[k * b + j] = xt[j * c + k];
    } else {
      for (int64_t j = j0; j < j1; ++j)
        for (int64_t k = k0; k < k1; ++k) yt[k * b + j] = xt[j * c + k];
    }
  }
}

}  // namespace

extern "C" int SwapAxes12(int nparam, void **params, int *ndims, int64_t **shapes, const char **dtypes, void *,
                          void *) {
  const int64_t size = nparam == 2 && ndims[0] == 4 ? element_size(dtypes[0]) : 0;
  if (size == 0) return 1;
  const int64_t a = shapes[0][0], b = shapes[0][1], c = shapes[0][2], row = shapes[0][3] * size;
  const char *x = static_cast<const char *>(params[0]);
  char *y = static_cast<char *>(params[1]);
  // tiles of (b, c) so that both sides' rows stay in cache when rows are short;
  // an item is a band of kTile rows b of one i
  const int64_t bands = (b + kTile - 1) / kTile;
  auto band = [&](int64_t item, NoState &) {
    const int64_t i = item / bands, j0 = item % bands * kTile;
    const char *xi = x + i * b * c * row;
    char *yi = y + i * b * c * row;
    switch (row) {  // rows of one element (the transformers' [n, c, h*w, 1]): copies, not memcpy calls
      case 2: return swap_band<uint16_t>(xi, yi, b, c, j0, 1);
      case 4: return swap_band<uint32_t>(xi, yi, b, c, j0, 1);
      case 8: return swap_band<uint64_t>(xi, yi, b, c, j0, 1);
      default: return swap_band<char>(xi, yi, b, c, j0, row);
    }
  };
  // threads only for copies that repay starting them (2 MB: 46 us alone, 65 with two threads)
  parallel_for<NoState>(a * bands, band, a * b * c * row < kThreadedBytes ? 1 : 0);
  return 0;
}
