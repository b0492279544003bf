// Im2col of a whole clip, as MindSpore "aot" custom operators: the per-frame
// convolution of the video UNet becomes one MatMul, weight [c', c*k*k] times
// columns [c*k*k, f*h'*w'], whose output is already [c', f, h', w'], the
// layout of the video. MindSpore's Im2Col wants the frames in the batch
// ([b*f, c, h, w]: a transpose of the input and of the output) and then one
// product per frame, with the weight broadcast to every frame and kept for
// the backward (100 MB in a mid training step).
//
// VideoIm2Col(x, settings) -> cols        x [b, c, f, h, w], cols [b, c*k*k, f*h'*w']
// VideoCol2Im(dcols, settings, frame) -> dx
// all float32. The convolution's settings are in shapes, never values: settings [k, stride,
// padding + 1] and frame [h, w] are placeholders whose shapes carry them, since
// MindSpore infers an aot operator's output shape from its inputs' shapes.
#include <cstring>

#include "kernels.h"

namespace {

struct Settings {
  int64_t b, c, f, h, w, k, stride, pad, out_h, out_w;

  Settings(const int64_t *x, const int64_t *settings)
      : b(x[0]), c(x[1]), f(x[2]), h(x[3]), w(x[4]), k(settings[0]), stride(settings[1]), pad(settings[2] - 1),
        out_h((h + 2 * pad - k) / stride + 1), out_w((w + 2 * pad - k) / stride + 1) {}

  int64_t cols() const { return f * out_h * out_w; }
  // the output columns [first, last) whose input column ox * stride - pad + kx is inside the frame
  void valid(int64_t kx, int64_t &first, int64_t &last) const {
    first = std::max<int64_t>(0, (pad - kx + stride - 1) / stride);
    last = std::min<int64_t>(out_w, (w + pad - kx + stride - 1) / stride);
    last = std::max(first, last);
  }
};

bool valid_call(int nparam, int inputs, int *ndims, const char **dtypes) {
  return nparam == inputs + 1 && ndims[0] >= 3 && ndims[1] == 3 && all_float32(nparam, dtypes);
}

}  // namespace

extern "C" int VideoIm2Col(int nparam, void **params, int *ndims, int64_t **shapes, const char **dtypes, void *,
                           void *) {
  if (!valid_call(nparam, 2, ndims, dtypes) || ndims[0] != 5) return 1;
  const Settings g(shapes[0], shapes[1]);
  const float *x = static_cast<const float *>(params[0]);
  float *cols = static_cast<float *>(params[2]);
  // an item: the k*k rows of one channel of one clip
  parallel_for<NoState>(g.b * g.c, [&](int64_t item, NoState &) {
    const float *plane = x + item * g.f * g.h * g.w;
    for (int64_t ky = 0; ky < g.k; ++ky)
      for (int64_t kx = 0; kx < g.k; ++kx) {
        float *row = cols + (item * g.k * g.k + ky * g.k + kx) * g.cols();
        int64_t first, last;
        g.valid(kx, first, last);
        for (int64_t fi = 0; fi < g.f; ++fi)
          for (int64_t oy = 0; oy < g.out_h; ++oy) {
            float *out = row + (fi * g.out_h + oy) * g.out_w;
            const int64_t iy = oy * g.stride - g.pad + ky;
            if (iy < 0 || iy >= g.h) {
              std::memset(out, 0, g.out_w * sizeof(float));
              continue;
            }
            const float *in = plane + (fi * g.h + iy) * g.w - g.pad + kx;
            std::memset(out, 0, first * sizeof(float));
            if (g.stride == 1) {
              std::memcpy(out + first, in + first, (last - first) * sizeof(float));
            } else {
              for (int64_t ox = first; ox < last; ++ox) out[ox] = in[ox * g.stride];
            }
            std::memset(out + last, 0, (g.out_w - last) * sizeof(float));
          }
      }
  });
  return 0;
}

extern "C" int VideoCol2Im(int nparam, void **params, int *ndims, int64_t **shapes, const char **dtypes, void *,
                           void *) {
  if (!valid_call(nparam, 3, ndims, dtypes) || ndims[2] != 2 || ndims[3] != 5) return 1;
  const Settings g(shapes[3], shapes[1]);
  const float *dcols = static_cast<const float *>(params[0]);
  float *dx = static_cast<float *>(params[3]);
  // an item: one channel of one clip, the sum over its k*k rows (no two items write the same plane)
  parallel_for<NoState>(g.b * g.c, [&](int64_t item, NoState &) {
    float *plane = dx + item * g.f * g.h * g.w;
    std::memset(plane, 0, g.f * g.h * g.w * sizeof(float));
    for (int64_t ky = 0; ky < g.k; ++ky)
      for (int64_t kx = 0; kx < g.k; ++kx) {
        const float *row = dcols + (item * g.k * g.k + ky * g.k + kx) * g.cols();
        int64_t first, last;
        g.valid(kx, first, last);
        for (int64_t fi = 0; fi < g.f; ++fi)
          for (int64_t oy = 0; oy < g.out_h; ++oy) {
            const int64_t iy = oy * g.stride - g.pad + ky;
            if (iy < 0 || iy >= g.h) continue;
            const float *in = row + (fi * g.out_h + oy) * g.out_w;
            float *out = plane + (fi * g.h + iy) * g.w - g.pad + kx;
            if (g.stride == 1) {
#pragma omp simd
              for (int64_t ox = first; ox < last; ++ox) out[ox] += in[ox];
            } else {
              for (int64_t ox = first; ox < last; ++ox) out[ox * g.stride] += in[ox];
            }
          }
      }
  });
  return 0;
}
