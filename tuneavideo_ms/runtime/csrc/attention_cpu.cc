// Scaled dot-product attention for CPU as MindSpore "aot" custom operators:
// a few query rows at a time against all keys, so that no [lq, lk] matrix
// exists (a row of scores is a few KB and stays in cache), with the backward
// recomputing each row's probabilities from the saved log-sum-exp, as
// FlashAttention does. Loops run over keys so that they vectorise whatever
// the head dim; heads are read in place from the [batch, length, heads, dim]
// layout of the model's projections, so no transposes are needed around it.
//
// AttentionForward(q, k, v) -> (out, lse)       q is already scaled
// AttentionBackward(q, k, v, out, lse, dout) -> (dq, dk, dv)
// q, out, dout, dq: [b, lq, heads, dim]; k, v, dk, dv: [b, lk, heads, dim];
// lse: [b, heads, lq]; all float32.
#include <cmath>
#include <cstring>

#include "kernels.h"
#include "vector_math.h"

namespace {

// Tiles sized to the vector registers: AVX-512 has 32 of 16 floats, AVX2 16 of 8. Accumulators that
// outgrow them spill to memory on every step of the inner loops (AVX2 with AVX-512's tiles ran the
// forward measurably slower).
#ifdef __AVX512F__
constexpr int kVectorFloats = 16;
#else
constexpr int kVectorFloats = 8;
#endif
// key scores kept in registers while summing over the head dim: kRows x kKeyTile floats
constexpr int kKeyTile = kVectorFloats == 16 ? 64 : 16;

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

constexpr int kRows = 4;  // query rows sharing each load of keys and values
static_assert(kRows == 4, "rows_weights_times and the backward's dk/dv update spell out four rows");

template <bool kFullTile>
inline void rows_tile(const float *const *a, const float *bt, int64_t ldb, int64_t dim, int64_t j0, int64_t len,
                      float *out, int64_t ldo) {
  float acc[kRows][kKeyTile] = {};
  for (int64_t d = 0; d < dim; ++d) {
    const float *col = bt + d * ldb + j0;
    for (int r = 0; r < kRows; ++r) {
      const float ad = a[r][d];
#pragma omp simd
      for (int64_t jj = 0; jj < (kFullTile ? kKeyTile : len); ++jj) acc[r][jj] += ad * col[jj];
    }
  }
  for (int r = 0; r < kRows; ++r)
    std::memcpy(out + r * ldo + j0, acc[r], (kFullTile ? kKeyTile : len) * sizeof(float));
}

// out[r, j] = sum_d a[r][d] * bt[d, j] for kRows rows a and n columns j of bt, whose rows are ldb apart
void rows_times(const float *const *a, const float *bt, int64_t ldb, int64_t dim, int64_t n, float *out,
                int64_t ldo) {
  int64_t j0 = 0;
  for (; j0 + kKeyTile <= n; j0 += kKeyTile) rows_tile<true>(a, bt, ldb, dim, j0, kKeyTile, out, ldo);
  if (j0 < n) rows_tile<false>(a, bt, ldb, dim, j0, n - j0, out, ldo);
}

typedef float Vec __attribute__((vector_size(kVectorFloats * sizeof(float))));
constexpr int kLanes = kVectorFloats;
constexpr int kDims = kVectorFloats == 16 ? 8 : 4;  // head dims summed at once: 2 x kDims accumulators

inline Vec load(const float *x) {
  Vec v;
  std::memcpy(&v, x, sizeof(v));
  return v;
}

inline float lane_sum(Vec v) {
  float s = 0.0f;
  for (int i = 0; i < kLanes; ++i) s += v[i];
  return s;
}

// rows_weights_times for dims d0 .. d0 + kDims (bt at d0), two rows at a time: each
// load of p and of bt feeds 2 x kDims accumulators held in registers (one mid
// sparse-causal layer's forward on AVX-512, dim 8, against one dim at a time: 86-95 ms -> 75-78;
// SD's dim 40: 54 -> 37)
template <bool kAccumulate>
void rows_weights_times_dims(const float *p, int64_t ldp, const float *bt, int64_t ldb, int64_t d0, int64_t n,
                          const float *scale, float *const *out) {
  for (int r = 0; r < kRows; r += 2) {
    const float *pa = p + r * ldp, *pb = pa + ldp;
    Vec acc_a[kDims] = {}, acc_b[kDims] = {};
    int64_t j = 0;
    for (; j + kLanes <= n; j += kLanes) {
      const Vec va = load(pa + j), vb = load(pb + j);
      for (int d = 0; d < kDims; ++d) {
        const Vec c = load(bt + d * ldb + j);
        acc_a[d] += va * c;
        acc_b[d] += vb * c;
      }
    }
    for (int d = 0; d < kDims; ++d) {
      float a = lane_sum(acc_a[d]), b = lane_sum(acc_b[d]);
      for (int64_t jj = j; jj < n; ++jj) {
        a += pa[jj] * bt[d * ldb + jj];
        b += pb[jj] * bt[d * ldb + jj];
      }
      out[r][d0 + d] = (kAccumulate ? out[r][d0 + d] : 0.0f) + a * scale[r];
      out[r + 1][d0 + d] = (kAccumulate ? out[r + 1][d0 + d] : 0.0f) + b * scale[r + 1];
    }
  }
}

// out[r][d] (+)= scale[r] * sum_j p[r, j] * bt[d, j], p's rows ldp apart, bt's
// ldb: kDims dims at a time in registers, the rest (head dims not a multiple of kDims) one by one
template <bool kAccumulate>
void rows_weights_times(const float *p, int64_t ldp, const float *bt, int64_t ldb, int64_t dim, int64_t n,
                        const float *scale, float *const *out) {
  int64_t d0 = 0;
  if (n >= kLanes) {
    for (; d0 + kDims <= dim; d0 += kDims)
      rows_weights_times_dims<kAccumulate>(p, ldp, bt + d0 * ldb, ldb, d0, n, scale, out);
  }
  const float *p0 = p, *p1 = p + ldp, *p2 = p + 2 * ldp, *p3 = p + 3 * ldp;
  for (int64_t d = d0; d < dim; ++d) {
    const float *col = bt + d * ldb;
    float a0 = 0.0f, a1 = 0.0f, a2 = 0.0f, a3 = 0.0f;
#pragma omp simd reduction(+ : a0, a1, a2, a3)
    for (int64_t j = 0; j < n; ++j) {
      a0 += p0[j] * col[j];
      a1 += p1[j] * col[j];
      a2 += p2[j] * col[j];
      a3 += p3[j] * col[j];
    }
    out[0][d] = (kAccumulate ? out[0][d] : 0.0f) + a0 * scale[0];
    out[1][d] = (kAccumulate ? out[1][d] : 0.0f) + a1 * scale[1];
    out[2][d] = (kAccumulate ? out[2][d] : 0.0f) + a2 * scale[2];
    out[3][d] = (kAccumulate ? out[3][d] : 0.0f) + a3 * scale[3];
  }
}

// keys per chunk of the backward: the chunk's keys, values and their gradients
// (4 x dim x chunk floats) in a quarter of a 1 MB L2, at most 512 keys. Measured
// on one mid sparse-causal layer (dim 8, 2048 keys): 236 ms with all keys at
// once, 150 ms with chunks of 512, 245 ms with chunks of 1024.
int64_t chunk_keys(int64_t dim, int64_t n) {
  const int64_t tiles = std::max<int64_t>(1, (1 << 16) / (4 * dim * kKeyTile));
  return std::min<int64_t>({n, 512, tiles * kKeyTile});
}

// scores -> unnormalised probabilities exp(s - max) in place; returns the sum and sets the log-sum-exp
float exp_row(float *s, int64_t n, float *lse) {
  float m = -INFINITY;
#pragma omp simd reduction(max : m)
  for (int64_t j = 0; j < n; ++j) m = s[j] > m ? s[j] : m;
  float sum = 0.0f;
#pragma omp simd reduction(+ : sum)
  for (int64_t j = 0; j < n; ++j) {
    s[j] = exp_nonpositive(s[j] - m);
    sum += s[j];
  }
  *lse = m + std::log(sum);
  return sum;
}

// per-thread buffers of the attention kernels
struct Scratch {
  std::vector<float> kt, vt, p, ds, dkt, dvt, spare;
};

Shape shape_of(int64_t **shapes) {
  return Shape{shapes[0][0], shapes[0][1], shapes[1][1], shapes[0][2], shapes[0][3]};
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
  parallel_for<Scratch>(pairs * chunks, [&](int64_t item, Scratch &scratch) {
    const int64_t pair = item / chunks, batch = pair / s.heads, head = pair % s.heads;
    const int64_t first = (item % chunks) * rows, last = std::min(s.lq, first + rows);
    std::vector<float> &kt = scratch.kt, &vt = scratch.vt, &p = scratch.p;
    kt.resize(s.dim * s.lk);
    vt.resize(s.dim * s.lk);
    p.resize(kRows * s.lk);
    gather_transposed(k, s, batch, head, s.lk, kt.data());
    gather_transposed(v, s, batch, head, s.lk, vt.data());
    for (int64_t i0 = first; i0 < last; i0 += kRows) {
      const float *qr[kRows];
      float *outr[kRows], inv[kRows], lser[kRows];
      for (int r = 0; r < kRows; ++r) {
        // a last, short group repeats its last row
        const int64_t at = s.at(batch, std::min(i0 + r, last - 1), s.lq, head);
        qr[r] = q + at;
        outr[r] = out + at;
      }
      rows_times(qr, kt.data(), s.lk, s.dim, s.lk, p.data(), s.lk);
      for (int r = 0; r < kRows; ++r) inv[r] = 1.0f / exp_row(p.data() + r * s.lk, s.lk, lser + r);
      rows_weights_times<false>(p.data(), s.lk, vt.data(), s.lk, s.dim, s.lk, inv, outr);
      for (int r = 0; r < kRows && i0 + r < last; ++r) lse[pair * s.lq + i0 + r] = lser[r];
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
  // dk and dv sum over every query row, so one item is a whole (batch, head);
  // within it, keys a chunk at a time: the chunk's keys, values and their
  // gradients stay in cache while every query row passes over them
  const int64_t chunk = chunk_keys(s.dim, s.lk);
  parallel_for<Scratch>(s.b * s.heads, [&](int64_t pair, Scratch &scratch) {
    const int64_t batch = pair / s.heads, head = pair % s.heads, n = s.lk;
    std::vector<float> &kt = scratch.kt, &vt = scratch.vt, &dkt = scratch.dkt, &dvt = scratch.dvt, &p = scratch.p,
                       &ds = scratch.ds, &rowsum = scratch.spare;
    kt.resize(s.dim * n);
    vt.resize(s.dim * n);
    p.resize(kRows * chunk);
    ds.resize(kRows * chunk);
    dkt.assign(s.dim * n, 0.0f);
    dvt.assign(s.dim * n, 0.0f);
    rowsum.assign(s.lq + s.dim, 0.0f);  // and a row for the dq of a short group's repeated rows
    float *spare = rowsum.data() + s.lq;
    gather_transposed(k, s, batch, head, n, kt.data());
    gather_transposed(v, s, batch, head, n, vt.data());
    for (int64_t i = 0; i < s.lq; ++i) {
      const int64_t at = s.at(batch, i, s.lq, head);
      for (int64_t d = 0; d < s.dim; ++d) {
        rowsum[i] += dout[at + d] * out[at + d];
        dq[at + d] = 0.0f;
      }
    }
    const float ones[kRows] = {1.0f, 1.0f, 1.0f, 1.0f};
    for (int64_t c0 = 0; c0 < n; c0 += chunk) {
      const int64_t len = std::min(chunk, n - c0);
      const float *ktc = kt.data() + c0, *vtc = vt.data() + c0;
      for (int64_t i0 = 0; i0 < s.lq; i0 += kRows) {
        const float *qr[kRows], *dor[kRows];
        float *dqr[kRows], row_lse[kRows], row_sum[kRows];
        for (int r = 0; r < kRows; ++r) {
          const int64_t i = std::min(i0 + r, s.lq - 1), at = s.at(batch, i, s.lq, head);
          qr[r] = q + at;
          dor[r] = dout + at;
          // a last, short group repeats its last row with zero probabilities, and its dq goes nowhere
          dqr[r] = i0 + r < s.lq ? dq + at : spare;
          row_lse[r] = i0 + r < s.lq ? lse[pair * s.lq + i] : INFINITY;
          row_sum[r] = rowsum[i];
        }
        rows_times(qr, ktc, n, s.dim, len, p.data(), chunk);
        for (int r = 0; r < kRows; ++r) {
          float *pr = p.data() + r * chunk;
          const float m = row_lse[r];
#pragma omp simd
          for (int64_t j = 0; j < len; ++j) pr[j] = m == INFINITY ? 0.0f : exp_nonpositive(pr[j] - m);
        }
        // dscores = p * (dout . v - dout . out): softmax's backward
        rows_times(dor, vtc, n, s.dim, len, ds.data(), chunk);
        for (int r = 0; r < kRows; ++r) {
          float *sr = ds.data() + r * chunk;
          const float *pr = p.data() + r * chunk;
          const float m = row_sum[r];
#pragma omp simd
          for (int64_t j = 0; j < len; ++j) sr[j] = pr[j] * (sr[j] - m);
        }
        rows_weights_times<true>(ds.data(), chunk, ktc, n, s.dim, len, ones, dqr);
        const float *p0 = p.data(), *p1 = p0 + chunk, *p2 = p1 + chunk, *p3 = p2 + chunk;
        const float *s0 = ds.data(), *s1 = s0 + chunk, *s2 = s1 + chunk, *s3 = s2 + chunk;
        for (int64_t d = 0; d < s.dim; ++d) {
          const float q0 = qr[0][d], q1 = qr[1][d], q2 = qr[2][d], q3 = qr[3][d];
          const float o0 = dor[0][d], o1 = dor[1][d], o2 = dor[2][d], o3 = dor[3][d];
          float *dkd = dkt.data() + d * n + c0, *dvd = dvt.data() + d * n + c0;
#pragma omp simd
          for (int64_t j = 0; j < len; ++j) {
            dkd[j] += s0[j] * q0 + s1[j] * q1 + s2[j] * q2 + s3[j] * q3;
            dvd[j] += p0[j] * o0 + p1[j] * o1 + p2[j] * o2 + p3[j] * o3;
          }
        }
      }
    }
    scatter_transposed(dkt.data(), s, batch, head, n, dk);
    scatter_transposed(dvt.data(), s, batch, head, n, dv);
  });
  return 0;
}
