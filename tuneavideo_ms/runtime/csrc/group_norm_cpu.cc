// GroupNorm for CPU as MindSpore "aot" custom operators; LayerNorm is its case
// of one group over the last axis. MindSpore 2.10's CPU LayerNormGrad took
// 450 ms of a 4.3 s mid training step (its forward 118 ms).
//
// GroupNormForward(x, weight, bias, eps) -> (y, mean, rstd)
// GroupNormBackward(x, weight, mean, rstd, dy) -> (dx, dweight, dbias)
// x, y, dy, dx: [n, groups, length]; weight, bias, dweight, dbias: [channels];
// eps: [1]; mean, rstd: [n, groups]; all float32. The statistics of row (i, g)
// are over its length = channels / groups x size values; scale and shift are
// per channel. The group count is in x's shape, not an attribute: MindSpore
// reuses an aot operator's output shapes for inputs of the same shapes.
#include <cmath>
#include <cstring>

#include "kernels.h"

namespace {

struct Layout {
  int64_t n, groups, length, channels;
  int64_t rows() const { return n * groups; }
  int64_t group_channels() const { return channels / groups; }
  int64_t size() const { return length / group_channels(); }
  bool valid() const { return channels % groups == 0 && length % group_channels() == 0; }
};

// Rows go in a fixed number of blocks, and each block sums its own share of
// dweight and dbias, added in block order: the same gradients for any number
// of threads and any schedule.
constexpr int64_t kBlocks = 64;

struct Blocks {
  int64_t total, count, rows;  // rows, blocks, rows per block
  explicit Blocks(int64_t total) : total(total), count(std::min(total, kBlocks)), rows((total + count - 1) / count) {}
  int64_t begin(int64_t block) const { return block * rows; }
  int64_t end(int64_t block) const { return std::min(total, (block + 1) * rows); }
};

}  // namespace

extern "C" int GroupNormForward(int nparam, void **params, int *ndims, int64_t **shapes, const char **dtypes,
                                void *, void *) {
  if (nparam != 7 || ndims[0] != 3 || ndims[1] != 1 || !all_float32(nparam, dtypes)) return 1;
  const Layout l{shapes[0][0], shapes[0][1], shapes[0][2], shapes[1][0]};
  if (!l.valid()) return 1;
  const float *x = static_cast<const float *>(params[0]);
  const float *weight = static_cast<const float *>(params[1]);
  const float *bias = static_cast<const float *>(params[2]);
  const float eps = *static_cast<const float *>(params[3]);
  float *y = static_cast<float *>(params[4]);
  float *mean = static_cast<float *>(params[5]);
  float *rstd = static_cast<float *>(params[6]);
  const Blocks blocks(l.rows());
  const int64_t length = l.length, cg = l.group_channels(), size = l.size();
  parallel_for<NoState>(blocks.count, [&](int64_t block, NoState &) {
    for (int64_t row = blocks.begin(block); row < blocks.end(block); ++row) {
      const float *xr = x + row * length;
      float *yr = y + row * length;
      const float *w = weight + (row % l.groups) * cg, *b = bias + (row % l.groups) * cg;
      // two passes in double: a group of SD's is up to 40 channels x 4096 positions
      double sum = 0.0;
#pragma omp simd reduction(+ : sum)
      for (int64_t j = 0; j < length; ++j) sum += xr[j];
      const double m = sum / length;
      double squares = 0.0;
#pragma omp simd reduction(+ : squares)
      for (int64_t j = 0; j < length; ++j) squares += (xr[j] - m) * (xr[j] - m);
      const float mf = static_cast<float>(m), r = static_cast<float>(1.0 / std::sqrt(squares / length + eps));
      mean[row] = mf;
      rstd[row] = r;
      if (size == 1) {
#pragma omp simd
        for (int64_t c = 0; c < cg; ++c) yr[c] = (xr[c] - mf) * r * w[c] + b[c];
      } else {
        for (int64_t c = 0; c < cg; ++c) {
          const float scale = r * w[c], shift = b[c] - mf * scale;
          const float *xc = xr + c * size;
          float *yc = yr + c * size;
#pragma omp simd
          for (int64_t s = 0; s < size; ++s) yc[s] = xc[s] * scale + shift;
        }
      }
    }
  });
  return 0;
}

extern "C" int GroupNormBackward(int nparam, void **params, int *ndims, int64_t **shapes, const char **dtypes,
                                 void *, void *) {
  if (nparam != 8 || ndims[0] != 3 || ndims[1] != 1 || !all_float32(nparam, dtypes)) return 1;
  const Layout l{shapes[0][0], shapes[0][1], shapes[0][2], shapes[1][0]};
  if (!l.valid()) return 1;
  const float *x = static_cast<const float *>(params[0]);
  const float *weight = static_cast<const float *>(params[1]);
  const float *mean = static_cast<const float *>(params[2]);
  const float *rstd = static_cast<const float *>(params[3]);
  const float *dy = static_cast<const float *>(params[4]);
  float *dx = static_cast<float *>(params[5]);
  float *dweight = static_cast<float *>(params[6]);
  float *dbias = static_cast<float *>(params[7]);
  const Blocks blocks(l.rows());
  const int64_t length = l.length, cg = l.group_channels(), size = l.size();
  // per block: dweight then dbias, channels each
  std::vector<float> partial(blocks.count * 2 * l.channels, 0.0f);
  parallel_for<NoState>(blocks.count, [&](int64_t block, NoState &) {
    float *pw = partial.data() + block * 2 * l.channels, *pb = pw + l.channels;
    for (int64_t row = blocks.begin(block); row < blocks.end(block); ++row) {
      const float *xr = x + row * length, *dyr = dy + row * length;
      float *dxr = dx + row * length;
      const int64_t c0 = (row % l.groups) * cg;
      const float *w = weight + c0;
      const float m = mean[row], r = rstd[row];
      // with g = dy * w and xhat = (x - mean) * rstd:
      // dx = rstd * (g - mean(g) - xhat * mean(g * xhat)), dweight = sum(dy * xhat), dbias = sum(dy)
      double g_sum = 0.0, gx_sum = 0.0;
      if (size == 1) {
#pragma omp simd reduction(+ : g_sum, gx_sum)
        for (int64_t c = 0; c < cg; ++c) {
          const float xhat = (xr[c] - m) * r;
          g_sum += dyr[c] * w[c];
          gx_sum += dyr[c] * w[c] * xhat;
          pw[c0 + c] += dyr[c] * xhat;
          pb[c0 + c] += dyr[c];
        }
      } else {
        for (int64_t c = 0; c < cg; ++c) {
          const float *xc = xr + c * size, *dyc = dyr + c * size;
          float dy_sum = 0.0f, dyx_sum = 0.0f;
#pragma omp simd reduction(+ : dy_sum, dyx_sum)
          for (int64_t s = 0; s < size; ++s) {
            dy_sum += dyc[s];
            dyx_sum += dyc[s] * (xc[s] - m) * r;
          }
          pw[c0 + c] += dyx_sum;
          pb[c0 + c] += dy_sum;
          g_sum += static_cast<double>(dy_sum) * w[c];
          gx_sum += static_cast<double>(dyx_sum) * w[c];
        }
      }
      const float g_mean = static_cast<float>(g_sum / length), gx_mean = static_cast<float>(gx_sum / length);
      if (size == 1) {
#pragma omp simd
        for (int64_t c = 0; c < cg; ++c) dxr[c] = r * (dyr[c] * w[c] - g_mean - (xr[c] - m) * r * gx_mean);
      } else {
        for (int64_t c = 0; c < cg; ++c) {
          const float *xc = xr + c * size, *dyc = dyr + c * size;
          float *dxc = dxr + c * size;
          const float wc = w[c];
#pragma omp simd
          for (int64_t s = 0; s < size; ++s) dxc[s] = r * (dyc[s] * wc - g_mean - (xc[s] - m) * r * gx_mean);
        }
      }
    }
  });
  std::fill(dweight, dweight + l.channels, 0.0f);
  std::fill(dbias, dbias + l.channels, 0.0f);
  for (int64_t block = 0; block < blocks.count; ++block) {
    const float *pw = partial.data() + block * 2 * l.channels, *pb = pw + l.channels;
    for (int64_t c = 0; c < l.channels; ++c) {
      dweight[c] += pw[c];
      dbias[c] += pb[c];
    }
  }
  return 0;
}
