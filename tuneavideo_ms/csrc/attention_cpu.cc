// Scaled dot-product attention for CPU as MindSpore "aot" custom operators:
// one query row at a time against all keys, so that no [lq, lk] matrix exists
// (a row of scores is a few KB and stays in cache), with the backward
// recomputing each row's probabilities from the saved log-sum-exp, as
// FlashAttention does. Loops run over keys so that they vectorise whatever
// the head dim; heads are read in place from the [batch, length, heads, dim]
// layout of the model's projections, so no transposes are needed around it.
//
// AttentionForward(q, k, v) -> (out, lse)       q is already scaled
// AttentionBackward(q, k, v, out, lse, dout) -> (dq, dk, dv)
// q, out, dout, dq: [b, lq, heads, dim]; k, v, dk, dv: [b, lk, heads, dim];
// lse: [b, heads, lq]; all float32.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <thread>
#include <vector>

namespace {

constexpr int kKeyTile = 64;  // key scores kept in registers while summing over the head dim

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

struct Shape {
  int64_t b, lq, lk, heads, dim;
  // element [batch, row, head, 0] of a [b, length, heads, dim] tensor
  int64_t at(int64_t batch, int64_t row, int64_t length, int64_t head) const {
    return ((batch * length + row) * heads + head) * dim;
  }
};

// x [b, length, heads, dim] of one (batch, head) -> xt [dim, length]
void gather_transposed(const float *x, const Shape &s, int64_t batch, int64_t head, int64_t length, float *xt) {
  for (int64_t j = 0; j < length; ++j) {
    const float *row = x + s.at(batch, j, length, head);
    for (int64_t d = 0; d < s.dim; ++d) xt[d * length + j] = row[d];
  }
}

void scatter_transposed(const float *xt, const Shape &s, int64_t batch, int64_t head, int64_t length, float *x) {
  for (int64_t j = 0; j < length; ++j) {
    float *row = x + s.at(batch, j, length, head);
    for (int64_t d = 0; d < s.dim; ++d) row[d] = xt[d * length + j];
  }
}

// out[j] = sum_d a[d] * bt[d, j] for j < n: the row of scores of one query (or of dout . v)
void row_times(const float *a, const float *bt, int64_t dim, int64_t n, float *out) {
  for (int64_t j0 = 0; j0 < n; j0 += kKeyTile) {
    const int64_t len = std::min<int64_t>(kKeyTile, n - j0);
    float acc[kKeyTile] = {};
    for (int64_t d = 0; d < dim; ++d) {
      const float ad = a[d], *col = bt + d * n + j0;
#pragma omp simd
      for (int64_t jj = 0; jj < len; ++jj) acc[jj] += ad * col[jj];
    }
    std::memcpy(out + j0, acc, len * sizeof(float));
  }
}

// out[d] = sum_j p[j] * bt[d, j]: probabilities times v, or dscores times k
void weights_times(const float *p, const float *bt, int64_t dim, int64_t n, float *out) {
  for (int64_t d = 0; d < dim; ++d) {
    const float *col = bt + d * n;
    float acc = 0.0f;
#pragma omp simd reduction(+ : acc)
    for (int64_t j = 0; j < n; ++j) acc += p[j] * col[j];
    out[d] = acc;
  }
}

// scores -> probabilities in place; returns the log-sum-exp
float softmax_row(float *s, int64_t n) {
  float m = -INFINITY;
#pragma omp simd reduction(max : m)
  for (int64_t j = 0; j < n; ++j) m = s[j] > m ? s[j] : m;
  float sum = 0.0f;
#pragma omp simd reduction(+ : sum)
  for (int64_t j = 0; j < n; ++j) {
    s[j] = exp_nonpositive(s[j] - m);
    sum += s[j];
  }
  const float inv = 1.0f / sum;
#pragma omp simd
  for (int64_t j = 0; j < n; ++j) s[j] *= inv;
  return m + std::log(sum);
}

int thread_count() {
  const char *env = std::getenv("OMP_NUM_THREADS");
  int n = env ? std::atoi(env) : static_cast<int>(std::thread::hardware_concurrency());
  return n > 0 ? n : 1;
}

// per-thread buffers, allocated once per call rather than once per (batch, head)
struct Scratch {
  std::vector<float> kt, vt, p, ds, dkt, dvt;
};

// run fn(item, scratch) for item in [0, items) on the threads, each taking every n-th item
template <typename Fn>
void parallel_for(int64_t items, Fn fn) {
  const int n = static_cast<int>(std::min<int64_t>(thread_count(), items));
  auto work = [=](int t) {
    Scratch scratch;
    for (int64_t i = t; i < items; i += n) fn(i, scratch);
  };
  std::vector<std::thread> pool;
  for (int t = 1; t < n; ++t) pool.emplace_back(work, t);
  work(0);
  for (auto &th : pool) th.join();
}

Shape shape_of(int64_t **shapes) {
  return Shape{shapes[0][0], shapes[0][1], shapes[1][1], shapes[0][2], shapes[0][3]};
}

bool all_float32(int nparam, const char **dtypes) {
  for (int i = 0; i < nparam; ++i)
    if (std::strcmp(dtypes[i], "float32") != 0) return false;
  return true;
}

}  // namespace

extern "C" int AttentionForward(int nparam, void **params, int *ndims, int64_t **shapes, const char **dtypes,
                                void *, void *) {
  if (nparam != 5 || ndims[0] != 4 || !all_float32(nparam, dtypes)) return 1;
  const Shape s = shape_of(shapes);
  const float *q = static_cast<const float *>(params[0]);
  const float *k = static_cast<const float *>(params[1]);
  const float *v = static_cast<const float *>(params[2]);
  float *out = static_cast<float *>(params[3]);
  float *lse = static_cast<float *>(params[4]);
  // (batch, head, chunk of query rows) items: chunks so that every thread has work
  const int64_t pairs = s.b * s.heads;
  const int64_t chunks = std::min<int64_t>(s.lq, (4 * thread_count() + pairs - 1) / pairs);
  const int64_t rows = (s.lq + chunks - 1) / chunks;
  parallel_for(pairs * chunks, [&](int64_t item, Scratch &scratch) {
    const int64_t pair = item / chunks, batch = pair / s.heads, head = pair % s.heads;
    const int64_t first = (item % chunks) * rows, last = std::min(s.lq, first + rows);
    std::vector<float> &kt = scratch.kt, &vt = scratch.vt, &p = scratch.p;
    kt.resize(s.dim * s.lk);
    vt.resize(s.dim * s.lk);
    p.resize(s.lk);
    gather_transposed(k, s, batch, head, s.lk, kt.data());
    gather_transposed(v, s, batch, head, s.lk, vt.data());
    for (int64_t i = first; i < last; ++i) {
      const int64_t at = s.at(batch, i, s.lq, head);
      row_times(q + at, kt.data(), s.dim, s.lk, p.data());
      lse[pair * s.lq + i] = softmax_row(p.data(), s.lk);
      weights_times(p.data(), vt.data(), s.dim, s.lk, out + at);
    }
  });
  return 0;
}

extern "C" int AttentionBackward(int nparam, void **params, int *ndims, int64_t **shapes, const char **dtypes,
                                 void *, void *) {
  if (nparam != 9 || ndims[0] != 4 || !all_float32(nparam, dtypes)) return 1;
  const Shape s = shape_of(shapes);
  const float *q = static_cast<const float *>(params[0]);
  const float *k = static_cast<const float *>(params[1]);
  const float *v = static_cast<const float *>(params[2]);
  const float *out = static_cast<const float *>(params[3]);
  const float *lse = static_cast<const float *>(params[4]);
  const float *dout = static_cast<const float *>(params[5]);
  float *dq = static_cast<float *>(params[6]);
  float *dk = static_cast<float *>(params[7]);
  float *dv = static_cast<float *>(params[8]);
  // dk and dv sum over every query row, so one item is a whole (batch, head)
  parallel_for(s.b * s.heads, [&](int64_t pair, Scratch &scratch) {
    const int64_t batch = pair / s.heads, head = pair % s.heads, n = s.lk;
    std::vector<float> &kt = scratch.kt, &vt = scratch.vt, &dkt = scratch.dkt, &dvt = scratch.dvt, &p = scratch.p,
                       &ds = scratch.ds;
    kt.resize(s.dim * n);
    vt.resize(s.dim * n);
    p.resize(n);
    ds.resize(n);
    dkt.assign(s.dim * n, 0.0f);
    dvt.assign(s.dim * n, 0.0f);
    gather_transposed(k, s, batch, head, n, kt.data());
    gather_transposed(v, s, batch, head, n, vt.data());
    for (int64_t i = 0; i < s.lq; ++i) {
      const int64_t at = s.at(batch, i, s.lq, head);
      const float *qi = q + at, *oi = out + at, *doi = dout + at;
      row_times(qi, kt.data(), s.dim, n, p.data());
      const float row_lse = lse[pair * s.lq + i];
#pragma omp simd
      for (int64_t j = 0; j < n; ++j) p[j] = exp_nonpositive(p[j] - row_lse);
      // dscores = p * (dout . v - dout . out): softmax's backward
      row_times(doi, vt.data(), s.dim, n, ds.data());
      float rowsum = 0.0f;
      for (int64_t d = 0; d < s.dim; ++d) rowsum += doi[d] * oi[d];
#pragma omp simd
      for (int64_t j = 0; j < n; ++j) ds[j] = p[j] * (ds[j] - rowsum);
      weights_times(ds.data(), kt.data(), s.dim, n, dq + at);
      for (int64_t d = 0; d < s.dim; ++d) {
        const float qd = qi[d], dod = doi[d];
        float *dkd = dkt.data() + d * n, *dvd = dvt.data() + d * n;
#pragma omp simd
        for (int64_t j = 0; j < n; ++j) {
          dkd[j] += ds[j] * qd;
          dvd[j] += p[j] * dod;
        }
      }
    }
    scatter_transposed(dkt.data(), s, batch, head, n, dk);
    scatter_transposed(dvt.data(), s, batch, head, n, dv);
  });
  return 0;
}
