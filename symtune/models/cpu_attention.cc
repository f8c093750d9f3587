// Fused masked attention for XLA:CPU, forward and backward, float32, called through jax.ffi from
// cpu_attention.py (which builds this file on first use).
//
// Layouts as the model holds them: q [B, T, H, D], k/v [B, S, K, D] (H a multiple of K), mask bool
// [B, T, S], lse float [B, H, T]. Each (batch, kv head) is one task on XLA's intra-op pool: its keys
// and values are copied once into contiguous buffers, and its queries go in blocks of kRows whose
// scores and probabilities stay in cache. Keys outside the block's allowed range (causal, packed
// segments) are skipped. A query with no allowed key gets the mean of all values, as a softmax
// over equally masked scores gives; its lse is NaN, which the backward pass reads.
#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <functional>
#include <memory>
#include <thread>
#include <vector>

#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

constexpr int64_t kRows = 64;  // queries per block
constexpr int64_t kCols = 32;  // score columns per register tile

struct Dims {
  int64_t b, t, s, h, kv, d;
  int64_t groups() const { return h / kv; }
};

// Runs fn(task) for task in [0, n) on the calling thread and XLA's intra-op pool. The caller
// waits only for tasks that were claimed, so a helper the pool starts late finds nothing to do.
void parallel_for(ffi::ThreadPool& pool, int64_t n, const std::function<void(int64_t)>& fn) {
  struct State {
    std::atomic<int64_t> next{0}, done{0};
    std::function<void(int64_t)> fn;
    int64_t n;
  };
  auto state = std::make_shared<State>();
  state->fn = fn;
  state->n = n;
  auto work = [state] {
    for (int64_t i; (i = state->next.fetch_add(1)) < state->n;) {
      state->fn(i);
      state->done.fetch_add(1, std::memory_order_release);
    }
  };
  int64_t helpers = std::min<int64_t>(pool.num_threads(), n - 1);
  for (int64_t i = 0; i < helpers; ++i) pool.Schedule([work] { work(); });
  work();
  while (state->done.load(std::memory_order_acquire) < n) std::this_thread::yield();
}

// exp(x) to about 2 ulp, branch-free so loops over it vectorize (Cephes' expf polynomial).
inline float fast_exp(float x) {
  x = std::min(std::max(x, -87.0f), 88.0f);
  float n = std::floor(x * 1.44269504088896341f + 0.5f);
  float r = x - n * 0.693359375f + n * 2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  int32_t bits = (static_cast<int32_t>(n) + 127) << 23;
  float scale;
  std::memcpy(&scale, &bits, sizeof scale);
  return p * scale;
}

// Key range [lo, hi) holding every allowed key of query rows [r0, r1); lo >= hi when none.
void key_range(const bool* mask, int64_t s, int64_t r0, int64_t r1, int64_t* lo, int64_t* hi) {
  *lo = s;
  *hi = 0;
  for (int64_t r = r0; r < r1; ++r) {
    const void* row = mask + r * s;
    auto* first = static_cast<const bool*>(std::memchr(row, 1, s));
    if (first == nullptr) continue;
    auto* last = static_cast<const bool*>(memrchr(row, 1, s));
    *lo = std::min(*lo, first - (mask + r * s));
    *hi = std::max(*hi, last - (mask + r * s) + 1);
  }
}

// out[r][j] = sum_e a[r][e] * bt[e][j]: a [rows][D] contiguous, bt row stride ldb, out row stride ldo.
template <int D>
void gemm_abt(const float* a, const float* bt, int64_t ldb, int64_t rows, int64_t cols, float* out,
              int64_t ldo) {
  int64_t j0 = 0;
  for (; j0 + kCols <= cols; j0 += kCols) {
    int64_t r = 0;
    for (; r + 4 <= rows; r += 4) {
      float acc[4][kCols] = {};
      for (int e = 0; e < D; ++e) {
        const float* brow = bt + e * ldb + j0;
        for (int rr = 0; rr < 4; ++rr) {
          float x = a[(r + rr) * D + e];
          for (int64_t j = 0; j < kCols; ++j) acc[rr][j] += x * brow[j];
        }
      }
      for (int rr = 0; rr < 4; ++rr) std::memcpy(out + (r + rr) * ldo + j0, acc[rr], sizeof acc[rr]);
    }
    for (; r < rows; ++r) {
      float acc[kCols] = {};
      for (int e = 0; e < D; ++e) {
        float x = a[r * D + e];
        const float* brow = bt + e * ldb + j0;
        for (int64_t j = 0; j < kCols; ++j) acc[j] += x * brow[j];
      }
      std::memcpy(out + r * ldo + j0, acc, sizeof acc);
    }
  }
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t j = j0; j < cols; ++j) {
      float acc = 0;
      for (int e = 0; e < D; ++e) acc += a[r * D + e] * bt[e * ldb + j];
      out[r * ldo + j] = acc;
    }
}

// out[i][:] (+)= sum_r a[i][r] * b[r][:]: a row stride lda, b [n][D] and out [rows][D] contiguous.
template <int D>
void gemm_ab(const float* a, int64_t lda, const float* b, int64_t rows, int64_t n, float* out,
             bool accumulate) {
  constexpr int kTile = D <= 64 ? 4 : 2;
  int64_t i = 0;
  for (; i + kTile <= rows; i += kTile) {
    float acc[kTile][D];
    for (int t = 0; t < kTile; ++t)
      for (int e = 0; e < D; ++e) acc[t][e] = accumulate ? out[(i + t) * D + e] : 0.f;
    for (int64_t r = 0; r < n; ++r) {
      const float* brow = b + r * D;
      for (int t = 0; t < kTile; ++t) {
        float x = a[(i + t) * lda + r];
        for (int e = 0; e < D; ++e) acc[t][e] += x * brow[e];
      }
    }
    std::memcpy(out + i * D, acc, sizeof acc);
  }
  for (; i < rows; ++i) {
    float acc[D];
    for (int e = 0; e < D; ++e) acc[e] = accumulate ? out[i * D + e] : 0.f;
    for (int64_t r = 0; r < n; ++r)
      for (int e = 0; e < D; ++e) acc[e] += a[i * lda + r] * b[r * D + e];
    std::memcpy(out + i * D, acc, sizeof acc);
  }
}

// Copies rows [0, n) of head `head` from x [n, heads, D] to out [n][D], times `scale`.
template <int D>
void gather(const float* x, int64_t n, int64_t heads, int64_t head, float scale, float* out) {
  for (int64_t i = 0; i < n; ++i)
    for (int e = 0; e < D; ++e) out[i * D + e] = x[(i * heads + head) * D + e] * scale;
}

template <int D>
void scatter(const float* x, int64_t n, int64_t heads, int64_t head, float* out) {
  for (int64_t i = 0; i < n; ++i) std::memcpy(out + (i * heads + head) * D, x + i * D, D * sizeof(float));
}

// out [cols][rows] = x [rows][cols] with x's row stride ldx.
void transpose(const float* x, int64_t ldx, int64_t rows, int64_t cols, float* out) {
  for (int64_t r0 = 0; r0 < rows; r0 += 16)
    for (int64_t c = 0; c < cols; ++c)
      for (int64_t r = r0; r < std::min(rows, r0 + 16); ++r) out[c * rows + r] = x[r * ldx + c];
}

// max of x[0..n), in 16 lanes so that it vectorizes without -ffinite-math-only.
float row_max(const float* x, int64_t n) {
  float lanes[16];
  std::fill(lanes, lanes + 16, -INFINITY);
  int64_t j = 0;
  for (; j + 16 <= n; j += 16)
    for (int l = 0; l < 16; ++l) lanes[l] = x[j + l] > lanes[l] ? x[j + l] : lanes[l];
  float mx = -INFINITY;
  for (int l = 0; l < 16; ++l) mx = lanes[l] > mx ? lanes[l] : mx;
  for (; j < n; ++j) mx = x[j] > mx ? x[j] : mx;
  return mx;
}

// The mask row's allowed keys among [0, n) as 1/0 floats in keep; false when it allows none.
bool allowed_keys(const bool* mask_row, int64_t n, float* keep) {
  const auto* m = reinterpret_cast<const uint8_t*>(mask_row);
  if (n <= 0 || std::memchr(m, 1, n) == nullptr) return false;
  for (int64_t j = 0; j < n; ++j) keep[j] = static_cast<float>(m[j]);
  return true;
}

// row[j] = exp(row[j] - mx) for allowed keys and 0 for the others; returns their sum.
float exp_row(float* row, const float* keep, int64_t n, float mx) {
  float sum = 0;
  for (int64_t j = 0; j < n; ++j) {
    float e = fast_exp(row[j] - mx) * keep[j];
    row[j] = e;
    sum += e;
  }
  return sum;
}

// Softmax of score rows [0, rows) over keys [lo, hi) in place (row stride ld), masked by `mask`
// (row stride s), writing each row's log-sum-exp. A row with no allowed key gets probabilities 0
// here and lse NaN: callers spread it evenly.
void softmax_rows(const bool* mask, int64_t s, int64_t rows, int64_t lo, int64_t hi, float* probs,
                  int64_t ld, float* lse) {
  int64_t n = hi - lo;
  std::vector<float> keep(std::max<int64_t>(n, 0));
  for (int64_t r = 0; r < rows; ++r) {
    float* row = probs + r * ld + lo;
    if (!allowed_keys(mask + r * s + lo, n, keep.data())) {
      std::fill(row, row + std::max<int64_t>(n, 0), 0.f);
      lse[r] = NAN;
      continue;
    }
    for (int64_t j = 0; j < n; ++j) row[j] = row[j] * keep[j] + (keep[j] - 1.f) * 1e30f;
    float mx = row_max(row, n);
    float sum = exp_row(row, keep.data(), n, mx);
    float inv = 1.f / sum;
    for (int64_t j = 0; j < n; ++j) row[j] *= inv;
    lse[r] = mx + std::log(sum);
  }
}

// The forward pass's probabilities again, from its scores (in place) and log-sum-exps.
void probs_from_lse(const bool* mask, int64_t s, int64_t rows, int64_t lo, int64_t hi, float* probs,
                    int64_t ld, const float* lse) {
  int64_t n = hi - lo;
  std::vector<float> keep(std::max<int64_t>(n, 0));
  for (int64_t r = 0; r < rows; ++r) {
    float* row = probs + r * ld + lo;
    if (allowed_keys(mask + r * s + lo, n, keep.data())) exp_row(row, keep.data(), n, lse[r]);
    else std::fill(row, row + std::max<int64_t>(n, 0), 0.f);
  }
}

// One (batch, kv head)'s keys or values, contiguous [S][D] in rows and, if wanted, [D][S] in cols.
template <int D>
void load_head(const Dims& n, int64_t b, int64_t kh, const float* x, float* rows, float* cols) {
  gather<D>(x + b * n.s * n.kv * D, n.s, n.kv, kh, 1.f, rows);
  if (cols != nullptr) transpose(rows, D, n.s, D, cols);
}

template <int D>
void forward_task(const Dims& n, int64_t b, int64_t kh, float scale, const float* q, const float* k,
                  const float* v, const bool* mask, float* out, float* lse) {
  std::vector<float> kt(D * n.s), kc(n.s * D), vc(n.s * D), vmean(D, 0.f), qb(kRows * D),
      probs(kRows * n.s), ob(kRows * D);
  load_head<D>(n, b, kh, k, kc.data(), kt.data());
  load_head<D>(n, b, kh, v, vc.data(), nullptr);
  for (int64_t j = 0; j < n.s; ++j)
    for (int e = 0; e < D; ++e) vmean[e] += vc[j * D + e] / n.s;
  const bool* m = mask + b * n.t * n.s;
  for (int64_t g = 0; g < n.groups(); ++g) {
    int64_t h = kh * n.groups() + g;
    float* lrow = lse + (b * n.h + h) * n.t;
    for (int64_t r0 = 0; r0 < n.t; r0 += kRows) {
      int64_t rows = std::min(kRows, n.t - r0), lo, hi;
      key_range(m, n.s, r0, r0 + rows, &lo, &hi);
      const float* qrows = q + (b * n.t + r0) * n.h * D;
      gather<D>(qrows, rows, n.h, h, scale, qb.data());
      if (hi > lo) gemm_abt<D>(qb.data(), kt.data() + lo, n.s, rows, hi - lo, probs.data() + lo, n.s);
      softmax_rows(m + r0 * n.s, n.s, rows, lo, hi, probs.data(), n.s, lrow + r0);
      gemm_ab<D>(probs.data() + lo, n.s, vc.data() + lo * D, rows, std::max<int64_t>(hi - lo, 0), ob.data(), false);
      for (int64_t r = 0; r < rows; ++r)
        if (std::isnan(lrow[r0 + r])) std::memcpy(ob.data() + r * D, vmean.data(), D * sizeof(float));
      scatter<D>(ob.data(), rows, n.h, h, out + (b * n.t + r0) * n.h * D);
    }
  }
}

template <int D>
void backward_task(const Dims& n, int64_t b, int64_t kh, float scale, const float* q, const float* k,
                   const float* v, const bool* mask, const float* out, const float* lse,
                   const float* dout, float* dq, float* dk, float* dv) {
  std::vector<float> kt(D * n.s), vt(D * n.s), kc(n.s * D), vc(n.s * D), qb(kRows * D), ob(kRows * D),
      dob(kRows * D), dqb(kRows * D), probs(kRows * n.s), ds(kRows * n.s), tr(n.s * kRows),
      delta(kRows), dkc(n.s * D, 0.f), dvc(n.s * D, 0.f);
  load_head<D>(n, b, kh, k, kc.data(), kt.data());
  load_head<D>(n, b, kh, v, vc.data(), vt.data());
  const bool* m = mask + b * n.t * n.s;
  for (int64_t g = 0; g < n.groups(); ++g) {
    int64_t h = kh * n.groups() + g;
    const float* lrow = lse + (b * n.h + h) * n.t;
    for (int64_t r0 = 0; r0 < n.t; r0 += kRows) {
      int64_t rows = std::min(kRows, n.t - r0), lo, hi;
      key_range(m, n.s, r0, r0 + rows, &lo, &hi);
      int64_t at = (b * n.t + r0) * n.h * D;
      gather<D>(q + at, rows, n.h, h, scale, qb.data());
      gather<D>(out + at, rows, n.h, h, 1.f, ob.data());
      gather<D>(dout + at, rows, n.h, h, 1.f, dob.data());
      for (int64_t r = 0; r < rows; ++r) {
        float acc = 0;
        for (int e = 0; e < D; ++e) acc += dob[r * D + e] * ob[r * D + e];
        delta[r] = acc;
      }
      for (int64_t r = 0; r < rows; ++r)
        if (std::isnan(lrow[r0 + r]))  // no allowed key: the output was the mean of all values
          for (int64_t j = 0; j < n.s; ++j)
            for (int e = 0; e < D; ++e) dvc[j * D + e] += dob[r * D + e] / n.s;
      int64_t cols = hi - lo;
      if (cols <= 0) {
        std::fill(dqb.begin(), dqb.end(), 0.f);
        scatter<D>(dqb.data(), rows, n.h, h, dq + at);
        continue;
      }
      gemm_abt<D>(qb.data(), kt.data() + lo, n.s, rows, cols, probs.data() + lo, n.s);
      gemm_abt<D>(dob.data(), vt.data() + lo, n.s, rows, cols, ds.data() + lo, n.s);
      probs_from_lse(m + r0 * n.s, n.s, rows, lo, hi, probs.data(), n.s, lrow + r0);
      for (int64_t r = 0; r < rows; ++r) {
        float* p = probs.data() + r * n.s;
        float* d = ds.data() + r * n.s;
        for (int64_t j = lo; j < hi; ++j) d[j] = p[j] * (d[j] - delta[r]) * scale;
      }
      gemm_ab<D>(ds.data() + lo, n.s, kc.data() + lo * D, rows, cols, dqb.data(), false);
      scatter<D>(dqb.data(), rows, n.h, h, dq + at);
      transpose(probs.data() + lo, n.s, rows, cols, tr.data());
      gemm_ab<D>(tr.data(), rows, dob.data(), cols, rows, dvc.data() + lo * D, true);
      transpose(ds.data() + lo, n.s, rows, cols, tr.data());
      gemm_ab<D>(tr.data(), rows, qb.data(), cols, rows, dkc.data() + lo * D, true);
    }
  }
  // qb held q * scale, so dk carries one factor of scale too many.
  for (auto& x : dkc) x /= scale;
  scatter<D>(dkc.data(), n.s, n.kv, kh, dk + b * n.s * n.kv * D);
  scatter<D>(dvc.data(), n.s, n.kv, kh, dv + b * n.s * n.kv * D);
}

template <template <int> class F, typename... Args>
ffi::Error dispatch(int64_t d, Args&&... args) {
  switch (d) {
    case 8: F<8>::run(args...); break;
    case 16: F<16>::run(args...); break;
    case 32: F<32>::run(args...); break;
    case 64: F<64>::run(args...); break;
    case 80: F<80>::run(args...); break;
    case 96: F<96>::run(args...); break;
    case 128: F<128>::run(args...); break;
    case 256: F<256>::run(args...); break;
    default: return ffi::Error::InvalidArgument("fused attention supports head_dim 8, 16, 32, 64, 80, 96, 128, 256");
  }
  return ffi::Error::Success();
}

template <int D>
struct ForwardAll {
  static void run(ffi::ThreadPool& pool, const Dims& n, float scale, const float* q, const float* k,
                  const float* v, const bool* m, float* o, float* l) {
    parallel_for(pool, n.b * n.kv, [&](int64_t i) { forward_task<D>(n, i / n.kv, i % n.kv, scale, q, k, v, m, o, l); });
  }
};

template <int D>
struct BackwardAll {
  static void run(ffi::ThreadPool& pool, const Dims& n, float scale, const float* q, const float* k,
                  const float* v, const bool* m, const float* o, const float* l, const float* d_o,
                  float* dq, float* dk, float* dv) {
    parallel_for(pool, n.b * n.kv, [&](int64_t i) {
      backward_task<D>(n, i / n.kv, i % n.kv, scale, q, k, v, m, o, l, d_o, dq, dk, dv);
    });
  }
};

Dims dims_of(ffi::Buffer<ffi::F32>& q, ffi::Buffer<ffi::F32>& k) {
  auto qd = q.dimensions(), kd = k.dimensions();
  return {qd[0], qd[1], kd[1], qd[2], kd[2], qd[3]};
}

ffi::Error Forward(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> q, ffi::Buffer<ffi::F32> k,
                   ffi::Buffer<ffi::F32> v, ffi::Buffer<ffi::PRED> mask, float scale,
                   ffi::ResultBuffer<ffi::F32> out, ffi::ResultBuffer<ffi::F32> lse) {
  Dims n = dims_of(q, k);
  return dispatch<ForwardAll>(n.d, pool, n, scale, q.typed_data(), k.typed_data(), v.typed_data(),
                              mask.typed_data(), out->typed_data(), lse->typed_data());
}

ffi::Error Backward(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> q, ffi::Buffer<ffi::F32> k,
                    ffi::Buffer<ffi::F32> v, ffi::Buffer<ffi::PRED> mask, ffi::Buffer<ffi::F32> out,
                    ffi::Buffer<ffi::F32> lse, ffi::Buffer<ffi::F32> dout, float scale,
                    ffi::ResultBuffer<ffi::F32> dq, ffi::ResultBuffer<ffi::F32> dk,
                    ffi::ResultBuffer<ffi::F32> dv) {
  Dims n = dims_of(q, k);
  return dispatch<BackwardAll>(n.d, pool, n, scale, q.typed_data(), k.typed_data(), v.typed_data(),
                               mask.typed_data(), out.typed_data(), lse.typed_data(), dout.typed_data(),
                               dq->typed_data(), dk->typed_data(), dv->typed_data());
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(SymtuneAttentionForward, Forward,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::PRED>>()
                                  .Attr<float>("scale")
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>());

XLA_FFI_DEFINE_HANDLER_SYMBOL(SymtuneAttentionBackward, Backward,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::PRED>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Attr<float>("scale")
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>());
