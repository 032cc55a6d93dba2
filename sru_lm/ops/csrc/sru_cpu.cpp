// CPU kernels for the SRU recurrence: forward, analytic backward, and one decode step.
//
// Layouts (all contiguous; D = directions, K = 3 or 4 projections per unit):
//   U (L, B, D, K, H) in scalar_t, gate blocks [U_x, U_f, U_r, (U_h)]
//   x (L, B, D, H) in scalar_t (K == 3 only), h like x
//   v, b (D, 2, H) [f, r] in acc_t; c0, dropout mask, c_last (B, D, H) in acc_t
//   mask_pad (L, B) bool, true = pad; c_all (L, B, D, H) acc_t: c after every step, for backward
// acc_t is float for fp16/bf16/fp32 inputs and double for fp64.
//
// Work split: a "column" is W consecutive units of one (batch, direction). Each thread owns a
// contiguous range of columns and walks time in its outer loop, all its columns in the inner loop.
// So at each step a thread reads one contiguous stretch of U's row t (friendly to the prefetcher),
// the columns' dependency chains are independent (the core overlaps their sigmoid latencies), and
// the unit loop is a plain `omp simd` loop over contiguous memory.

// ATen + torch's pybind11 glue rather than <torch/extension.h>: the build takes half the time.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <ATen/TracerMode.h>
#include <ATen/autocast_mode.h>
#include <torch/csrc/utils/pybind.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <vector>

#if defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>
#endif

namespace {

// exp(a) for float with a Cody-Waite range reduction and a degree-7 Taylor polynomial on
// |r| <= ln2/2 (truncation < 1e-8 relative): branch-free, so gcc vectorizes it inside `omp simd`
// loops, where std::exp would stay a scalar call.
static inline __attribute__((always_inline)) float fast_exp(float a) {
  a = std::min(std::max(a, -87.0f), 88.0f);
  const float n = std::floor(a * 1.44269504088896341f + 0.5f);  // vroundps: needs -fno-trapping-math
  float r = a - n * 0.693359375f;  // ln2 = 0.693359375 - 2.12194440e-4; n * the first part is exact
  r = r + n * 2.12194440e-4f;
  float p = 1.0f / 5040.0f;
  p = p * r + 1.0f / 720.0f;
  p = p * r + 1.0f / 120.0f;
  p = p * r + 1.0f / 24.0f;
  p = p * r + 1.0f / 6.0f;
  p = p * r + 0.5f;
  p = p * r + 1.0f;
  p = p * r + 1.0f;
  const int32_t bits = (static_cast<int32_t>(n) + 127) << 23;  // 2^n
  return p * __builtin_bit_cast(float, bits);
}

static inline __attribute__((always_inline)) float sigmoid(float z) {
  return 1.0f / (1.0f + fast_exp(-z));
}

static inline __attribute__((always_inline)) double sigmoid(double z) {
  return 1.0 / (1.0 + std::exp(-z));
}

// Storage type -> (raw element type the kernels read and write, state/accumulation type).
// bf16 goes through its bits so the conversions vectorize (c10::BFloat16 is a struct gcc will not
// vectorize loads and stores of). fp16 is not here: gcc 12 vectorizes fp16 <-> fp32 only with
// AVX512-FP16, so the Python side runs fp16 inputs through the fp32 kernel.
template <typename scalar_t>
struct IO {
  using raw = scalar_t;
  using acc = scalar_t;
  static inline __attribute__((always_inline)) acc load(raw x) { return x; }
  static inline __attribute__((always_inline)) raw store(acc x) { return x; }
};

template <>
struct IO<at::BFloat16> {
  using raw = uint16_t;
  using acc = float;
  static inline __attribute__((always_inline)) float load(uint16_t x) {
    return __builtin_bit_cast(float, static_cast<uint32_t>(x) << 16);
  }
  static inline __attribute__((always_inline)) uint16_t store(float x) {  // round to nearest even
    const uint32_t u = __builtin_bit_cast(uint32_t, x);
    const uint32_t rounded = x != x ? 0x7FC00000u : u + 0x7FFFu + ((u >> 16) & 1u);
    return static_cast<uint16_t>(rounded >> 16);
  }
};

template <typename scalar_t>
using acc_type = typename IO<scalar_t>::acc;
template <typename scalar_t>
using raw_type = typename IO<scalar_t>::raw;

template <typename scalar_t>
const raw_type<scalar_t>* raw_ptr(const at::Tensor& t) {
  return reinterpret_cast<const raw_type<scalar_t>*>(t.data_ptr<scalar_t>());
}
template <typename scalar_t>
raw_type<scalar_t>* raw_ptr(at::Tensor& t) {
  return reinterpret_cast<raw_type<scalar_t>*>(t.data_ptr<scalar_t>());
}

// Everything a kernel needs, as raw pointers. Optional inputs point at a buffer of H ones (mask)
// or zeros (state) with a zero batch stride, so the inner loops have no branches on them.
template <typename scalar_t>
struct Problem {
  using acc_t = acc_type<scalar_t>;
  int64_t L, B, D, K, H;
  acc_t scale;               // highway scale: scale_x for K == 3, 1 for K == 4
  const raw_type<scalar_t>* U;
  const raw_type<scalar_t>* hw;       // highway input: x (K == 3) or U + 3H (K == 4)
  int64_t hw_row;            // stride between (t, b, d) rows of hw: H or K*H
  const acc_t* v;
  const acc_t* b;
  const acc_t* c0;
  int64_t c0_bd;             // stride of c0 per (b, d): H, or 0 for the zeros buffer
  const acc_t* m;
  int64_t m_bd;              // same for the dropout mask
  const bool* pad;           // (L, B) or nullptr
};

// The split of (batch, direction, unit) into columns of w consecutive units.
struct Columns {
  int64_t D, H, w, per_bd, count;

  // w = 256 where that still gives each thread two columns: long simd loops beat w = 64 by ~15%
  // (measured at L=128 B=16 H=256, one thread: 0.54 vs 0.63 ms forward). Otherwise 64 or 16, so that
  // few long sequences (B=1) still spread over the threads.
  Columns(int64_t B, int64_t D_, int64_t H_) : D(D_), H(H_) {
    const int64_t want = 2 * at::get_num_threads();
    for (w = 256; w > 16 && B * D * ((H + w - 1) / w) < want; w /= 4) {
    }
    per_bd = (H + w - 1) / w;
    count = B * D * per_bd;
  }

  // Column index -> (b, d, first unit, unit count).
  void at(int64_t col, int64_t& b, int64_t& d, int64_t& j0, int64_t& n) const {
    const int64_t bd = col / per_bd;
    b = bd / D;
    d = bd % D;
    j0 = (col % per_bd) * w;
    n = std::min(w, H - j0);
  }

  // Threads get whole columns; split only when each gets enough work to pay for waking it.
  int64_t grain(int64_t L) const { return std::max<int64_t>(1, 16384 / std::max<int64_t>(1, L * w)); }

  // Runs body(cb, ce, state) on each thread's columns [cb, ce), with w carried values per column: read
  // from init (B, D, H) (stride init_bd per (b, d); zeros when null) before, written to out (B, D, H) after.
  template <typename acc_t, typename Body>
  void scan(int64_t L, const acc_t* init, int64_t init_bd, acc_t* out, const Body& body) const {
    at::parallel_for(0, count, grain(L), [&](int64_t cb, int64_t ce) {
      std::vector<acc_t> state((ce - cb) * w, acc_t(0));
      int64_t b, d, j0, n;
      for (int64_t col = cb; col < ce && init; ++col) {
        at(col, b, d, j0, n);
        std::copy(init + (b * D + d) * init_bd + j0, init + (b * D + d) * init_bd + j0 + n,
                  state.data() + (col - cb) * w);
      }
      body(cb, ce, state.data());
      for (int64_t col = cb; col < ce; ++col) {
        at(col, b, d, j0, n);
        std::copy(state.data() + (col - cb) * w, state.data() + (col - cb) * w + n, out + (b * D + d) * H + j0);
      }
    });
  }
};

// One column at one step (s counts steps in the column's direction): where its inputs are, and its gates.
template <typename scalar_t>
struct Cell {
  using acc_t = acc_type<scalar_t>;
  using raw_t = raw_type<scalar_t>;
  using io = IO<scalar_t>;
  int64_t b, d, j0, n, t, row;  // row: (t, b, d)
  bool pad;
  const raw_t* u;  // [U_x, U_f, U_r] at stride H
  const raw_t* xq;
  const acc_t *vf, *vr, *bf, *br, *m;
  acc_t scale;
  int64_t H;

  Cell(const Problem<scalar_t>& p, const Columns& cols, int64_t col, int64_t s) : scale(p.scale), H(p.H) {
    cols.at(col, b, d, j0, n);
    t = d ? p.L - 1 - s : s;
    row = (t * p.B + b) * p.D + d;
    pad = p.pad && p.pad[t * p.B + b];
    u = p.U + row * p.K * H + j0;
    xq = p.hw + row * p.hw_row + j0;
    vf = p.v + d * 2 * H + j0;
    vr = vf + H;
    bf = p.b + d * 2 * H + j0;
    br = bf + H;
    m = p.m + (b * p.D + d) * p.m_bd + j0;
  }

  // Unit j given the previous state cp: U_x, the gates f and r, the highway input x'.
  inline __attribute__((always_inline)) void gates(int64_t j, acc_t cp, acc_t& u0, acc_t& f, acc_t& r,
                                                   acc_t& xp) const {
    u0 = io::load(u[j]);
    f = sigmoid(io::load(u[H + j]) + vf[j] * cp + bf[j]);
    r = sigmoid(io::load(u[2 * H + j]) + vr[j] * cp + br[j]);
    xp = scale * io::load(xq[j]);
  }
};

template <typename scalar_t, bool SAVE_C>
void forward_kernel(const Problem<scalar_t>& p, raw_type<scalar_t>* h, acc_type<scalar_t>* c_last,
                    acc_type<scalar_t>* c_all) {
  using acc_t = acc_type<scalar_t>;
  using io = IO<scalar_t>;
  const Columns cols(p.B, p.D, p.H);
  cols.scan(p.L, p.c0, p.c0_bd, c_last, [&](int64_t cb, int64_t ce, acc_t* state) {
    for (int64_t s = 0; s < p.L; ++s) {
      for (int64_t col = cb; col < ce; ++col) {
        const Cell<scalar_t> e(p, cols, col, s);
        acc_t* __restrict__ c = state + (col - cb) * cols.w;
        raw_type<scalar_t>* __restrict__ hp = h + e.row * p.H + e.j0;
        acc_t* __restrict__ cs = SAVE_C ? c_all + e.row * p.H + e.j0 : nullptr;
        if (e.pad) {  // padding: c carried, h zero
          for (int64_t j = 0; j < e.n; ++j) {
            hp[j] = io::store(acc_t(0));
            if (SAVE_C) cs[j] = c[j];
          }
          continue;
        }
#pragma omp simd
        for (int64_t j = 0; j < e.n; ++j) {
          acc_t u0, f, r, xp;
          e.gates(j, c[j], u0, f, r, xp);
          const acc_t cn = u0 + f * (c[j] - u0);
          hp[j] = io::store(xp + e.m[j] * r * (cn - xp));
          c[j] = cn;
          if (SAVE_C) cs[j] = cn;
        }
      }
    }
  });
}

// Reverse-time loop. Per step (unpadded), with g = dL/dc_t carried from the future:
//   g += gh*m*r;  gr = gh*m*(c - x');  gx' = gh*(1 - m*r)
//   gU_x = g*(1-f);  gz_f = g*(c_prev - U_x)*f*(1-f);  gz_r = gr*r*(1-r)
//   dv_f += gz_f*c_prev; dv_r += gz_r*c_prev; db += gz;  g_prev = g*f + gz_f*v_f + gz_r*v_r
// A padded step passes g through and has zero gradients.
template <typename scalar_t>
void backward_kernel(const Problem<scalar_t>& p, const acc_type<scalar_t>* c_all,
                     const raw_type<scalar_t>* grad_h, const acc_type<scalar_t>* grad_c_last,
                     raw_type<scalar_t>* gU, raw_type<scalar_t>* ghw, int64_t ghw_row, acc_type<scalar_t>* gvb,
                     acc_type<scalar_t>* gc0) {
  using acc_t = acc_type<scalar_t>;
  using raw_t = raw_type<scalar_t>;
  using io = IO<scalar_t>;
  const int64_t B = p.B, D = p.D, K = p.K, H = p.H;
  const Columns cols(B, D, H);
  cols.scan(p.L, grad_c_last, H, gc0, [&](int64_t cb, int64_t ce, acc_t* state) {
    for (int64_t s = p.L - 1; s >= 0; --s) {
      for (int64_t col = cb; col < ce; ++col) {
        const Cell<scalar_t> e(p, cols, col, s);
        acc_t* __restrict__ g = state + (col - cb) * cols.w;
        raw_t* __restrict__ gu = gU + e.row * K * H + e.j0;
        raw_t* __restrict__ gx = ghw + e.row * ghw_row + e.j0;
        if (e.pad) {
          for (int64_t q = 0; q < K; ++q)
            for (int64_t j = 0; j < e.n; ++j) gu[q * H + j] = io::store(acc_t(0));
          if (ghw_row == H)  // K == 3: x's gradient lives in its own tensor
            for (int64_t j = 0; j < e.n; ++j) gx[j] = io::store(acc_t(0));
          continue;
        }
        const int64_t tp = e.d ? e.t + 1 : e.t - 1;  // the step before t in this direction's order
        const acc_t* __restrict__ cprev = s == 0 ? p.c0 + (e.b * D + e.d) * p.c0_bd + e.j0
                                                 : c_all + ((tp * B + e.b) * D + e.d) * H + e.j0;
        const acc_t* __restrict__ cc = c_all + e.row * H + e.j0;
        const raw_t* __restrict__ gh = grad_h + e.row * H + e.j0;
        acc_t* __restrict__ acc = gvb + (e.b * D + e.d) * 4 * H + e.j0;  // [dv_f, dv_r, db_f, db_r]
#pragma omp simd
        for (int64_t j = 0; j < e.n; ++j) {
          const acc_t cp = cprev[j];
          acc_t u0, f, r, xp;
          e.gates(j, cp, u0, f, r, xp);
          const acc_t ghj = io::load(gh[j]);
          const acc_t mr = e.m[j] * r;
          const acc_t gc = g[j] + ghj * mr;
          const acc_t gr = ghj * e.m[j] * (cc[j] - xp);
          const acc_t gzf = gc * (cp - u0) * f * (acc_t(1) - f);
          const acc_t gzr = gr * r * (acc_t(1) - r);
          gu[j] = io::store(gc * (acc_t(1) - f));
          gu[H + j] = io::store(gzf);
          gu[2 * H + j] = io::store(gzr);
          gx[j] = io::store(e.scale * ghj * (acc_t(1) - mr));
          acc[j] += gzf * cp;
          acc[H + j] += gzr * cp;
          acc[2 * H + j] += gzf;
          acc[3 * H + j] += gzr;
          g[j] = gc * f + gzf * e.vf[j] + gzr * e.vr[j];
        }
      }
    }
  });
}

void check(bool ok, const char* what) {
  TORCH_CHECK(ok, "sru_lm cpu kernel: ", what);
}

// Fill a Problem from tensors; the ones/zeros buffers must outlive the kernel call.
template <typename scalar_t>
Problem<scalar_t> make_problem(const at::Tensor& U, const c10::optional<at::Tensor>& x,
                               const at::Tensor& v, const at::Tensor& b,
                               const c10::optional<at::Tensor>& c0,
                               const c10::optional<at::Tensor>& mask_pad,
                               const c10::optional<at::Tensor>& dropout_mask, int64_t L, int64_t B,
                               int64_t D, double scale_x, std::vector<acc_type<scalar_t>>& ones,
                               std::vector<acc_type<scalar_t>>& zeros) {
  using acc_t = acc_type<scalar_t>;
  const int64_t H = v.size(-1);
  Problem<scalar_t> p;
  p.L = L;
  p.B = B;
  p.D = D;
  p.H = H;
  p.K = U.size(-1) / std::max<int64_t>(1, D * H);
  check(p.K == 3 || p.K == 4, "U must hold 3 or 4 projections per unit");
  check(U.is_contiguous() && v.is_contiguous() && b.is_contiguous(), "inputs must be contiguous");
  check(v.scalar_type() == c10::CppTypeToScalarType<acc_t>::value, "v must be in the state dtype");
  check(b.scalar_type() == v.scalar_type(), "b must be in the state dtype");
  p.U = raw_ptr<scalar_t>(U);
  if (p.K == 3) {
    check(x.has_value() && x->is_contiguous() && x->scalar_type() == U.scalar_type(),
          "x must be contiguous, in U's dtype, when K == 3");
    p.hw = raw_ptr<scalar_t>(*x);
    p.hw_row = H;
    p.scale = static_cast<acc_t>(scale_x);
  } else {
    p.hw = p.U + 3 * H;
    p.hw_row = 4 * H;
    p.scale = acc_t(1);
  }
  p.v = v.data_ptr<acc_t>();
  p.b = b.data_ptr<acc_t>();
  ones.assign(H, acc_t(1));
  zeros.assign(H, acc_t(0));
  // An optional (B, D, H) input: its data with stride H per (b, d), else the fallback row with stride 0.
  const auto per_row = [&](const c10::optional<at::Tensor>& t, const std::vector<acc_t>& fallback, const char* what,
                           const acc_t*& ptr, int64_t& bd) {
    check(!t.has_value() || (t->is_contiguous() && t->scalar_type() == v.scalar_type()), what);
    ptr = t.has_value() ? t->data_ptr<acc_t>() : fallback.data();
    bd = t.has_value() ? H : 0;
  };
  per_row(c0, zeros, "c0 must be contiguous, in the state dtype", p.c0, p.c0_bd);
  per_row(dropout_mask, ones, "dropout_mask must be contiguous, in the state dtype", p.m, p.m_bd);
  if (mask_pad.has_value()) {
    check(mask_pad->is_contiguous() && mask_pad->scalar_type() == at::kBool, "mask_pad must be contiguous bool");
    p.pad = mask_pad->data_ptr<bool>();
  } else {
    p.pad = nullptr;
  }
  return p;
}

#define SRU_DISPATCH(TYPE, NAME, ...) \
  AT_DISPATCH_FLOATING_TYPES_AND(at::kBFloat16, TYPE, NAME, __VA_ARGS__)

// Returns (h (L, B, D*H), c_last (B, D*H), c_all (L, B, D*H), or (0, B, D*H) without save_c).
std::vector<at::Tensor> forward(const at::Tensor& U, const c10::optional<at::Tensor>& x,
                                const at::Tensor& v, const at::Tensor& b,
                                const c10::optional<at::Tensor>& c0,
                                const c10::optional<at::Tensor>& mask_pad,
                                const c10::optional<at::Tensor>& dropout_mask, bool bidirectional,
                                double scale_x, bool save_c, bool poison) {
  check(U.dim() == 3, "U must be (L, B, D*K*H)");
  const int64_t L = U.size(0), B = U.size(1), D = bidirectional ? 2 : 1, H = v.size(-1);
  const auto acc_dtype = v.scalar_type();
  at::Tensor h = at::empty({L, B, D * H}, U.options());
  at::Tensor c_last = at::empty({B, D * H}, U.options().dtype(acc_dtype));
  at::Tensor c_all = at::empty({save_c ? L : 0, B, D * H}, U.options().dtype(acc_dtype));
  if (poison) {  // tests: an element the kernel forgets to write shows up as NaN
    h.fill_(NAN);
    c_last.fill_(NAN);
    if (save_c) c_all.fill_(NAN);
  }
  SRU_DISPATCH(U.scalar_type(), "sru_forward", [&] {
    std::vector<acc_type<scalar_t>> ones, zeros;
    auto p = make_problem<scalar_t>(U, x, v, b, c0, mask_pad, dropout_mask, L, B, D, scale_x, ones, zeros);
    if (save_c)
      forward_kernel<scalar_t, true>(p, raw_ptr<scalar_t>(h), c_last.data_ptr<acc_type<scalar_t>>(),
                                     c_all.data_ptr<acc_type<scalar_t>>());
    else
      forward_kernel<scalar_t, false>(p, raw_ptr<scalar_t>(h), c_last.data_ptr<acc_type<scalar_t>>(),
                                      nullptr);
  });
  return {h, c_last, c_all};
}

// Returns (grad_U, grad_x or an empty tensor for K == 4, grad_v (D, 2, H), grad_b (D, 2, H),
// grad_c0 (B, D*H)), each a fresh contiguous tensor (gradients laid out like their parameters).
std::vector<at::Tensor> backward(const at::Tensor& U, const c10::optional<at::Tensor>& x,
                                 const at::Tensor& v, const at::Tensor& b,
                                 const c10::optional<at::Tensor>& c0,
                                 const c10::optional<at::Tensor>& mask_pad,
                                 const c10::optional<at::Tensor>& dropout_mask, bool bidirectional,
                                 double scale_x, const at::Tensor& c_all, const at::Tensor& grad_h,
                                 const c10::optional<at::Tensor>& grad_c_last, bool poison) {
  const int64_t L = U.size(0), B = U.size(1), D = bidirectional ? 2 : 1, H = v.size(-1);
  check(grad_h.is_contiguous() && grad_h.scalar_type() == U.scalar_type(), "grad_h must be contiguous in U's dtype");
  check(c_all.is_contiguous() && c_all.scalar_type() == v.scalar_type(), "c_all must be contiguous");
  at::Tensor gU = at::empty_like(U);
  at::Tensor gvb = at::zeros({B, D, 4, H}, v.options());
  at::Tensor gc0 = at::empty({B, D * H}, v.options());
  const int64_t K = U.size(2) / (D * H);
  at::Tensor gx = at::empty({K == 3 ? L : 0, B, D * H}, U.options());
  if (poison) {
    gU.fill_(NAN);
    gc0.fill_(NAN);
    if (K == 3) gx.fill_(NAN);
  }
  SRU_DISPATCH(U.scalar_type(), "sru_backward", [&] {
    using acc_t = acc_type<scalar_t>;
    std::vector<acc_t> ones, zeros;
    auto p = make_problem<scalar_t>(U, x, v, b, c0, mask_pad, dropout_mask, L, B, D, scale_x, ones, zeros);
    const acc_t* gcl = nullptr;
    if (grad_c_last.has_value()) {
      check(grad_c_last->is_contiguous() && grad_c_last->scalar_type() == v.scalar_type(),
            "grad_c_last must be contiguous in the state dtype");
      gcl = grad_c_last->data_ptr<acc_t>();
    }
    raw_type<scalar_t>* ghw = K == 3 ? raw_ptr<scalar_t>(gx) : raw_ptr<scalar_t>(gU) + 3 * H;
    backward_kernel<scalar_t>(p, c_all.data_ptr<acc_t>(), raw_ptr<scalar_t>(grad_h), gcl,
                              raw_ptr<scalar_t>(gU), ghw, K == 3 ? H : 4 * H, gvb.data_ptr<acc_t>(),
                              gc0.data_ptr<acc_t>());
  });
  const at::Tensor g = gvb.sum(0);  // (D, 4, H): per-batch partial sums [v_f, v_r, b_f, b_r]
  return {gU, gx, g.narrow(1, 0, 2).clone(at::MemoryFormat::Contiguous),
          g.narrow(1, 2, 2).clone(at::MemoryFormat::Contiguous), gc0};
}

// One unidirectional decode step: U (B, K*H), x (B, H) or None, c_in (B, H) -> h_out (B, H), c_out (B, H).
// Takes the caller's tensors as they are (any float dtype, strides) and normalizes them here, where a
// no-op cast costs nanoseconds instead of the microsecond of a Python-level `.to()`: per-call overhead
// is most of the cost of a decode step. c_out may be c_in (the kernel reads a column's state before it
// writes it, in the same thread); both must be contiguous in the state dtype, h_out contiguous.
void step_into(const at::Tensor& U_in, const c10::optional<at::Tensor>& x_in, const at::Tensor& v_in,
               const at::Tensor& b_in, const at::Tensor& c_in, const c10::optional<at::Tensor>& mask_pad_in,
               const c10::optional<at::Tensor>& dropout_mask_in, double scale_x, at::Tensor& c_out,
               at::Tensor& h_out) {
  const auto in_dtype = U_in.scalar_type();
  const auto run_dtype = in_dtype == at::kHalf ? at::kFloat : in_dtype;  // fp16 runs in fp32 (see IO)
  const auto acc = in_dtype == at::kDouble ? at::kDouble : at::kFloat;
  check(c_out.is_contiguous() && c_out.scalar_type() == acc, "the new state must be contiguous in the state dtype");
  check(h_out.is_contiguous() && h_out.scalar_type() == in_dtype, "h must be contiguous in U's dtype");
  const at::Tensor U = U_in.to(run_dtype).contiguous();
  c10::optional<at::Tensor> x;
  if (x_in.has_value()) x = x_in->to(run_dtype).contiguous();
  const at::Tensor v = v_in.to(acc).contiguous(), b = b_in.to(acc).contiguous(), c = c_in.to(acc).contiguous();
  c10::optional<at::Tensor> mask_pad, dropout_mask;
  if (mask_pad_in.has_value()) mask_pad = mask_pad_in->contiguous();
  if (dropout_mask_in.has_value()) dropout_mask = dropout_mask_in->to(acc).contiguous();
  const int64_t B = U.size(0), H = v.size(-1);
  at::Tensor h = run_dtype == in_dtype ? h_out : at::empty({B, H}, U.options());
  SRU_DISPATCH(U.scalar_type(), "sru_step", [&] {
    std::vector<acc_type<scalar_t>> ones, zeros;
    auto p = make_problem<scalar_t>(U, x, v, b, c, mask_pad, dropout_mask, 1, B, 1, scale_x, ones, zeros);
    forward_kernel<scalar_t, false>(p, raw_ptr<scalar_t>(h), c_out.data_ptr<acc_type<scalar_t>>(), nullptr);
  });
  if (run_dtype != in_dtype) h_out.copy_(h);
}

std::vector<at::Tensor> step(const at::Tensor& U, const c10::optional<at::Tensor>& x, const at::Tensor& v,
                             const at::Tensor& b, const at::Tensor& c,
                             const c10::optional<at::Tensor>& mask_pad,
                             const c10::optional<at::Tensor>& dropout_mask, double scale_x) {
  const int64_t B = U.size(0), H = v.size(-1);
  at::Tensor h = at::empty({B, H}, U.options());
  at::Tensor c_new = at::empty({B, H}, U.options().dtype(U.scalar_type() == at::kDouble ? at::kDouble : at::kFloat));
  step_into(U, x, v, b, c, mask_pad, dropout_mask, scale_x, c_new, h);
  return {h, c_new};
}

// The in-place decode step: c (B, H) updated where it lies, h written into h_out (B, H).
void step_(const at::Tensor& U, const c10::optional<at::Tensor>& x, const at::Tensor& v, const at::Tensor& b,
           at::Tensor& c, at::Tensor& h_out, const c10::optional<at::Tensor>& mask_pad,
           const c10::optional<at::Tensor>& dropout_mask, double scale_x) {
  step_into(U, x, v, b, c, mask_pad, dropout_mask, scale_x, c, h_out);
}

// ---- small-batch linear: y = x W^T (+ bias) for a few rows of x ---------------------------------------------
//
// Decoding multiplies 1 row (a step) or a few (a speculative verification) by each weight matrix. MKL's sgemm
// costs about M times a GEMV there, although reading the weights dominates: a kernel that streams each weight
// once and uses it for all M rows costs about the same for M = 1..4.
//
// A block is R weight rows x G input rows: R*G independent FMA chains (8 to 12, enough to hide the FMA latency
// on two FMA ports), plus G x vectors and one weight vector in registers (at most 16). Per M, (R, groups):
//   M=1 (8, 1)  M=2 (6, 2)  M=3 (4, 3)  M=4 (3, 4)  M=5 (4, 3+2)  M=6 (4, 3+3)  M=7 (3, 4+3)  M=8 (3, 4+4)
// Above 4 rows the input rows go in two groups over the same R weight rows, the second group reading them
// from L1: still one pass over the weights from memory.
//
// Bit-identity across M: every output is one 8-lane accumulator fed by the same FMAs in the same order (8
// columns at a time, then the tail as one masked chunk), summed across lanes the same way, whatever the block,
// group or thread: row m of y is the same whether it was computed alone or with other rows, so a verification
// forward over k tokens gives exactly the logits of k single-token steps.

constexpr int64_t kSmallLinearMaxRows = 8;
// A thread gets at least this many weights: a small matrix stays on one thread (a fork costs a few us).
constexpr int64_t kSmallLinearWeightsPerThread = 65536;  // 4 MiB of fp32: past L2, from DRAM
// Kernel runs, read by the tests to tell which path a call took.
std::atomic<int64_t> small_linear_runs{0};

#if defined(__AVX2__) && defined(__FMA__)
static inline float lane_sum(__m256 v) {  // ((l0+l4)+(l2+l6)) + ((l1+l5)+(l3+l7))
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

static inline __m256i first_lanes(int64_t n) {  // lanes [0, n) set, 0 < n < 8
  static const int32_t ones_then_zeros[16] = {-1, -1, -1, -1, -1, -1, -1, -1, 0, 0, 0, 0, 0, 0, 0, 0};
  return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(ones_then_zeros + 8 - n));
}

// G input rows from m0 against weight rows o..o+R-1 into y[m0.., o..]; with `next`, prefetches the R weight
// rows there (the next block's) as it goes.
template <int R, int G>
static inline __attribute__((always_inline)) void linear_block(const float* __restrict x, const float* __restrict w,
                                                               const float* bias, float* __restrict y, int64_t in,
                                                               int64_t out, int64_t o, int64_t m0,
                                                               const float* next = nullptr) {
  if constexpr (G > 0) {
    const float* xg = x + m0 * in;
    const float* wo = w + o * in;
    __m256 acc[R][G];
    for (int r = 0; r < R; ++r)
      for (int g = 0; g < G; ++g) acc[r][g] = _mm256_setzero_ps();
    int64_t i = 0;
    for (; i + 8 <= in; i += 8) {
      if (next && (i & 15) == 0)  // a 64-byte line of each row every other chunk
        for (int r = 0; r < R; ++r) _mm_prefetch(reinterpret_cast<const char*>(next + r * in + i), _MM_HINT_T0);
      __m256 xv[G];
      for (int g = 0; g < G; ++g) xv[g] = _mm256_loadu_ps(xg + g * in + i);
      for (int r = 0; r < R; ++r) {
        __m256 wv = _mm256_loadu_ps(wo + r * in + i);
#if defined(__GNUC__)
        // one register load per weight vector: left alone, gcc folds it into each of the G FMAs (G loads)
        asm("" : "+x"(wv));
#endif
        for (int g = 0; g < G; ++g) acc[r][g] = _mm256_fmadd_ps(xv[g], wv, acc[r][g]);
      }
    }
    if (i < in) {  // the tail: one more chunk, zeros beyond `in`
      const __m256i mask = first_lanes(in - i);
      __m256 xv[G];
      for (int g = 0; g < G; ++g) xv[g] = _mm256_maskload_ps(xg + g * in + i, mask);
      for (int r = 0; r < R; ++r) {
        const __m256 wv = _mm256_maskload_ps(wo + r * in + i, mask);
        for (int g = 0; g < G; ++g) acc[r][g] = _mm256_fmadd_ps(xv[g], wv, acc[r][g]);
      }
    }
    for (int r = 0; r < R; ++r)
      for (int g = 0; g < G; ++g) {
        const float s = lane_sum(acc[r][g]);
        y[(m0 + g) * out + o + r] = bias ? s + bias[o + r] : s;
      }
  }
}
#else
// Portable: the same 8-lane order, one output at a time. Not inlined, so every output runs the same code
// (where the compiler contracts a*b+c into an FMA, it does so for all of them).
__attribute__((noinline)) static float dot_lanes(const float* __restrict x, const float* __restrict w,
                                                 int64_t in) {
  float lane[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  int64_t i = 0;
  for (; i + 8 <= in; i += 8)
    for (int j = 0; j < 8; ++j) lane[j] += x[i + j] * w[i + j];
  for (int j = 0; i + j < in; ++j) lane[j] += x[i + j] * w[i + j];
  return ((lane[0] + lane[4]) + (lane[2] + lane[6])) + ((lane[1] + lane[5]) + (lane[3] + lane[7]));
}

template <int R, int G>
static inline void linear_block(const float* x, const float* w, const float* bias, float* y, int64_t in,
                                int64_t out, int64_t o, int64_t m0, const float* /*next*/ = nullptr) {
  for (int r = 0; r < R; ++r)
    for (int g = 0; g < G; ++g) {
      const float s = dot_lanes(x + (m0 + g) * in, w + (o + r) * in, in);
      y[(m0 + g) * out + o + r] = bias ? s + bias[o + r] : s;
    }
}
#endif

// All of y: blocks of R weight rows split over threads; input row groups [0, G0) and [G0, G0 + G1). With 2 or
// more rows a block's compute outlasts the hardware prefetcher's lead on its R (3 to 6) streams, so each block
// prefetches the next: 2 rows (a one-token speculative verification) cost 1.0-1.05x one row with it, 1.10-1.18x
// without, weights from DRAM as a whole model's come (EPYC, one thread). With 1 row it only costs load slots.
template <int R, int G0, int G1>
static void linear_rows(const float* x, const float* w, const float* bias, float* y, int64_t in, int64_t out) {
  constexpr bool prefetch = G0 + G1 >= 2;
  const int64_t blocks = (out + R - 1) / R;  // the last one may be short
  const int64_t grain = std::max<int64_t>(1, kSmallLinearWeightsPerThread / (R * std::max<int64_t>(in, 1)));
  at::parallel_for(0, blocks, grain, [&](int64_t begin, int64_t end) {
    for (int64_t k = begin; k < end; ++k) {
      const int64_t o = k * R;
      if (o + R <= out) {
        const float* next = prefetch && k + 1 < end && o + 2 * R <= out ? w + (o + R) * in : nullptr;
        linear_block<R, G0>(x, w, bias, y, in, out, o, 0, next);
        linear_block<R, G1>(x, w, bias, y, in, out, o, G0);
      } else {
        for (int64_t p = o; p < out; ++p) {
          linear_block<1, G0>(x, w, bias, y, in, out, p, 0);
          linear_block<1, G1>(x, w, bias, y, in, out, p, G0);
        }
      }
    }
  });
}

// y (M, out) = x (M, in) W^T (+ bias), all contiguous, 1 <= M <= 8.
static void small_linear_into(const float* x, const float* w, const float* bias, float* y, int64_t M, int64_t in,
                              int64_t out) {
  switch (M) {
    case 1: linear_rows<8, 1, 0>(x, w, bias, y, in, out); break;
    case 2: linear_rows<6, 2, 0>(x, w, bias, y, in, out); break;
    case 3: linear_rows<4, 3, 0>(x, w, bias, y, in, out); break;
    case 4: linear_rows<3, 4, 0>(x, w, bias, y, in, out); break;
    case 5: linear_rows<4, 3, 2>(x, w, bias, y, in, out); break;
    case 6: linear_rows<4, 3, 3>(x, w, bias, y, in, out); break;
    case 7: linear_rows<3, 4, 3>(x, w, bias, y, in, out); break;
    default: linear_rows<3, 4, 4>(x, w, bias, y, in, out); break;
  }
  small_linear_runs.fetch_add(1, std::memory_order_relaxed);
}

// x (M, in), weight (out, in), bias (out,) or none, all contiguous fp32 on the CPU, 1 <= M <= 8 -> (M, out).
at::Tensor small_linear(const at::Tensor& x, const at::Tensor& weight, const c10::optional<at::Tensor>& bias,
                        bool poison) {
  TORCH_CHECK(x.dim() == 2 && weight.dim() == 2 && x.size(1) == weight.size(1),
              "small_linear: x (M, in) and weight (out, in), got ", x.sizes(), " and ", weight.sizes());
  TORCH_CHECK(x.scalar_type() == at::kFloat && weight.scalar_type() == at::kFloat && x.device().is_cpu() &&
              weight.device().is_cpu() && x.is_contiguous() && weight.is_contiguous(),
              "small_linear: contiguous float32 CPU x and weight, got ", x.scalar_type(), " and ",
              weight.scalar_type());
  const int64_t M = x.size(0), in = x.size(1), out = weight.size(0);
  TORCH_CHECK(M >= 1 && M <= kSmallLinearMaxRows, "small_linear: 1 to ", kSmallLinearMaxRows, " rows, got ", M);
  const float* b = nullptr;
  if (bias.has_value() && bias->defined()) {
    TORCH_CHECK(bias->scalar_type() == at::kFloat && bias->device().is_cpu() && bias->is_contiguous() &&
                bias->numel() == out, "small_linear: bias must be contiguous float32 of ", out, " elements");
    b = bias->data_ptr<float>();
  }
  at::Tensor y = poison ? at::full({M, out}, NAN, x.options()) : at::empty({M, out}, x.options());
  small_linear_into(x.data_ptr<float>(), weight.data_ptr<float>(), b, y.data_ptr<float>(), M, in, out);
  return y;
}

// A plain strided fp32 CPU tensor, no wrapper that must see the op (vmap, functorch grad, functionalization,
// a Python subclass), no lazy negation bit.
static bool plain_float_cpu(const at::Tensor& t) {
  static const c10::DispatchKeySet wrapped({c10::DispatchKey::Python, c10::DispatchKey::FuncTorchBatched,
                                            c10::DispatchKey::FuncTorchGradWrapper,
                                            c10::DispatchKey::Functionalize});
  return t.scalar_type() == at::kFloat && t.device().is_cpu() && t.layout() == at::kStrided && !t.is_neg() &&
         !t.key_set().has_any(wrapped);
}

// Where small_linear computes F.linear(x, weight, bias): see sru_lm.ops.cpu.linear.
static bool small_linear_applies(const at::Tensor& x, const at::Tensor& weight, const at::Tensor* bias) {
  if (x.dim() < 1 || weight.dim() != 2 || weight.size(1) == 0 || x.size(-1) != weight.size(1)) return false;
  const int64_t M = x.numel() / weight.size(1);
  if (M < 1 || M > kSmallLinearMaxRows) return false;
  if (!plain_float_cpu(x) || !plain_float_cpu(weight)) return false;
  if (bias && (!plain_float_cpu(*bias) || bias->dim() != 1 || bias->size(0) != weight.size(0))) return false;
  if (at::GradMode::is_enabled() && (x.requires_grad() || weight.requires_grad() || (bias && bias->requires_grad())))
    return false;
  // modes that change or record the op: autocast, a Python dispatch mode, the JIT tracer, a functorch transform
  return !at::autocast::is_autocast_enabled(at::kCPU) &&
         !c10::impl::tls_is_dispatch_key_included(c10::DispatchKey::Python) &&
         !c10::impl::tls_is_dispatch_key_included(c10::DispatchKey::FuncTorchDynamicLayerFrontMode) &&
         !at::tracer::impl::is_dispatch_enabled();
}

// F.linear(x, weight, bias) for x (..., in): small_linear where it applies, at::linear (autograd and all) elsewhere.
// One C++ call, so the decision costs no Python per projection of a decode step.
at::Tensor linear(const at::Tensor& x, const at::Tensor& weight, const c10::optional<at::Tensor>& bias,
                  bool poison) {
  const at::Tensor* b = bias.has_value() && bias->defined() ? &*bias : nullptr;
  if (!small_linear_applies(x, weight, b)) return at::linear(x, weight, bias);
  const int64_t in = weight.size(1), out = weight.size(0);
  // no-ops (no new tensor) when already contiguous, as in a model
  const at::Tensor xc = x.contiguous(), wc = weight.contiguous(), bc = b ? b->contiguous() : at::Tensor();
  std::vector<int64_t> shape = x.sizes().vec();  // (..., in) -> (..., out)
  shape.back() = out;
  at::Tensor y = poison ? at::full(shape, NAN, x.options()) : at::empty(shape, x.options());
  small_linear_into(xc.data_ptr<float>(), wc.data_ptr<float>(), b ? bc.data_ptr<float>() : nullptr,
                    y.data_ptr<float>(), x.numel() / in, in, out);
  return y;
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("forward", &forward, "SRU recurrence forward (CPU)");
  m.def("backward", &backward, "SRU recurrence backward (CPU)");
  m.def("step", &step, "one SRU decode step (CPU)");
  m.def("step_", &step_, "one SRU decode step (CPU), updating c in place and writing h_out");
  m.def("small_linear", &small_linear, "x W^T (+ bias) for 1..8 rows of x, each weight read once (CPU, fp32)");
  m.def("small_linear_runs", [] { return small_linear_runs.load(); }, "small_linear kernel runs so far (tests)");
  m.def("linear", &linear, "F.linear on small_linear where it applies (see sru_lm.ops.cpu.linear), else at::linear");
}
