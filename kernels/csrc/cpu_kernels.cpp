// CPU kernels for proxy training, forward and backward (fp32 unless said): the recurrent forms of the (gated) delta
// rule and Mamba2's SSD scan, the short causal depthwise conv + SiLU, causal / sliding-window attention for small
// heads, and the SwiGLU activation on bf16 GEMM outputs. Registered as the torch operators flashsearch::* (schemas
// at the end of this file); kernels/cpu.py adds their fake (shape) functions and autograd formulas.
//
// Why recurrent on CPU: a proxy head's state is tiny (16 x 16 floats, in L1), so a token costs a few hundred
// multiply-adds, while the chunked torch forms pay for [L, L] intra-chunk tensors, a triangular solve and ~100
// small ops per layer (each one a memory pass and a dispatch). The recurrence does the same maths exactly; it is
// the form fla and mamba_ssm use for decoding.
//
// The scans' backward recomputes: the forward keeps the state at every SEG-th token only ([.., T/SEG, dk, dv]),
// the backward re-runs each segment forward from its checkpoint into a local buffer and walks it back. Memory
// O(T/SEG) states per head, compute ~1 extra forward. Attention keeps each row's log-sum-exp instead.
//
// Layouts are fla's / mamba_ssm's: activations [B, T, H, d] (time-major, heads inner), contiguous; attention takes
// SDPA's [B, H, T, d]. Work is split over (batch, head) - over (batch, group) or (batch, kv head) where gradients
// sum over heads - with at::parallel_for, so one torch thread runs it serially.
//
// Compiled without -ffast-math (kernels/cpu.py): a NaN or inf in the inputs must reach the outputs, since the
// proxy stops a run on a non-finite loss; -ffinite-math-only would let the compiler assume them away.

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#ifdef __AVX512F__
#include <immintrin.h>
#endif

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <optional>
#include <tuple>
#include <type_traits>
#include <vector>

namespace {

constexpr int64_t SEG = 32;  // tokens between saved states

// Saved states of a T-token scan: one per SEG-token segment (at least one slot, also for T = 0).
inline int64_t num_segments(int64_t T) { return std::max<int64_t>((T + SEG - 1) / SEG, 1); }

using at::Tensor;
using Opt = std::optional<Tensor>;
using Tensors2 = std::tuple<Tensor, Tensor>;
using Tensors3 = std::tuple<Tensor, Tensor, Tensor>;
using Tensors6 = std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor>;

// The kernels index raw pointers: every input is a contiguous fp32 CPU tensor of the shape they assume.
void check_dims(const Tensor& t, const char* name, int64_t dim) {
  TORCH_CHECK(t.device().is_cpu() && t.scalar_type() == at::kFloat && t.is_contiguous(),
              name, " must be a contiguous fp32 CPU tensor");
  TORCH_CHECK(t.dim() == dim, name, " must have ", dim, " dims, got ", t.dim());
}

void check_shape(const Tensor& t, const char* name, at::IntArrayRef shape) {
  check_dims(t, name, static_cast<int64_t>(shape.size()));
  TORCH_CHECK(t.sizes() == shape, name, " must have shape ", shape, ", got ", t.sizes());
}

// What a backward returns for an input that was None (a gate, a bias): an empty tensor, since a schema's
// returns cannot be optional.
Tensor no_grad_for(const Tensor& like) { return at::empty({0}, like.options()); }

// exp for the inner loops (attention's probabilities, the sigmoids): plain arithmetic, which GCC vectorizes, where a
// call to libm's expf stays scalar (glibc declares its vector expf only under -ffast-math). Cephes' expf:
// x = n ln2 + r with |r| <= ln2 / 2 (ln2 in two parts, with fmas, which reassociation leaves alone), exp(r) by a
// degree-7 polynomial (~1 ulp), 2^n written into the exponent bits.
// NaN -> NaN; above 88.37 -> inf (2^128: the true value is over 2.4e38); below -86.5 -> 0 (it is under 2.7e-38).
inline float vexp(float x) {
  const float xc = x > 88.8f ? 88.8f : (x < -86.5f ? -86.5f : x);     // a NaN fails both tests and stays
  const float n = std::floor(xc * 1.44269504f + 0.5f);                 // in [-125, 128]
  const float r = std::fma(n, 2.12194440e-4f, std::fma(n, -0.693359375f, xc));
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  const uint32_t bits = static_cast<uint32_t>(static_cast<int32_t>(n == n ? n : 0.0f) + 127) << 23;
  float scale;                                                         // 2^n; n = 128 gives the bits of inf
  std::memcpy(&scale, &bits, 4);
  return x < -86.5f ? 0.0f : scale * p;
}

inline float sigmoid(float z) { return 1.0f / (1.0f + vexp(-z)); }

// ---- (gated) delta rule --------------------------------------------------------------------------------------
// Per head:  S~ = exp(g_t) S_{t-1};  u_t = beta_t (v_t - S~^T k_t);  S_t = S~ + k_t u_t^T;  o_t = scale S_t^T q_t.
// Without g (DeltaNet) the decay is 1. S: [dk, dv] row-major.

// Compile-time head sizes (0 = the runtime value): at the proxy's 16 x 16 the whole state lives in registers.
template <int64_t DKc, int64_t DVc, typename F>
bool dispatch_sizes(int64_t dk, int64_t dv, F&& body) {
  if ((DKc == 0 || dk == DKc) && (DVc == 0 || dv == DVc)) { body(std::integral_constant<int64_t, DKc>(),
                                                                 std::integral_constant<int64_t, DVc>()); return true; }
  return false;
}

template <typename F>
void with_sizes(int64_t dk, int64_t dv, F&& body) {
  dispatch_sizes<16, 16>(dk, dv, body) || dispatch_sizes<32, 32>(dk, dv, body) ||
      dispatch_sizes<64, 64>(dk, dv, body) || dispatch_sizes<0, 0>(dk, dv, body);
}

// body(std::integral_constant dk, std::integral_constant dv, task) for every task in [0, n), split over threads.
template <typename F>
void for_each_task(int64_t n, int64_t dk, int64_t dv, F&& body) {
  with_sizes(dk, dv, [&](auto dkc, auto dvc) {
    at::parallel_for(0, n, 1, [&](int64_t lo, int64_t hi) {
      for (int64_t task = lo; task < hi; ++task) body(dkc, dvc, task);
    });
  });
}

struct DeltaArgs {
  int64_t B, T, H, dk, dv, NS;
  const float *q, *k, *v, *beta, *g, *s0;
  float sc;
};

// A head's scratch: a std::array at compile-time sizes (a local the compiler keeps in registers), else a vector.
template <int64_t Nc>
using Buf = std::conditional_t<(Nc > 0), std::array<float, (Nc > 0 ? Nc : 1)>, std::vector<float>>;

template <int64_t Nc>
Buf<Nc> make_buf(int64_t n) {
  if constexpr (Nc > 0) return Buf<Nc>{};
  else return std::vector<float>(n);
}

template <int64_t DKc, int64_t DVc>
void delta_fwd_head(const DeltaArgs& a, int64_t bh, float* __restrict__ o, float* __restrict__ sf,
                    float* __restrict__ cp) {
  const int64_t DK = DKc ? DKc : a.dk, DV = DVc ? DVc : a.dv, T = a.T, H = a.H, NS = a.NS;
  const int64_t b = bh / H, h = bh % H;
  const float sc = a.sc;
  const float *q = a.q, *k = a.k, *v = a.v, *beta = a.beta, *g = a.g;
  auto Sbuf = make_buf<DKc * DVc>(DK * DV);
  auto ubuf = make_buf<DVc>(DV);
  auto abuf = make_buf<DVc>(DV);
  float* __restrict__ S = Sbuf.data();
  float* __restrict__ u = ubuf.data();
  float* __restrict__ acc = abuf.data();
  if (a.s0) std::copy(a.s0 + bh * DK * DV, a.s0 + (bh + 1) * DK * DV, S);
  else std::fill(S, S + DK * DV, 0.0f);
  for (int64_t t = 0; t < T; ++t) {
    if (t % SEG == 0) std::copy(S, S + DK * DV, cp + (bh * NS + t / SEG) * DK * DV);
    const int64_t row = (b * T + t) * H + h;
    const float* __restrict__ kt = k + row * DK;
    const float* __restrict__ qt = q + row * DK;
    const float* __restrict__ vt = v + row * DV;
    const float bt = beta[row];
    if (g) {
      const float dec = std::exp(g[row]);
      for (int64_t e = 0; e < DK * DV; ++e) S[e] *= dec;
    }
    for (int64_t j = 0; j < DV; ++j) u[j] = 0.0f;
    for (int64_t i = 0; i < DK; ++i)
      for (int64_t j = 0; j < DV; ++j) u[j] += S[i * DV + j] * kt[i];            // S~^T k
    for (int64_t j = 0; j < DV; ++j) { u[j] = bt * (vt[j] - u[j]); acc[j] = 0.0f; }
    for (int64_t i = 0; i < DK; ++i) {
      const float ki = kt[i], qi = sc * qt[i];
      for (int64_t j = 0; j < DV; ++j) {
        const float st = S[i * DV + j] + ki * u[j];
        S[i * DV + j] = st;
        acc[j] += st * qi;
      }
    }
    std::copy(acc, acc + DV, o + row * DV);
  }
  std::copy(S, S + DK * DV, sf + bh * DK * DV);
}

void check_delta(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& beta, const Opt& g) {
  check_dims(q, "q", 4); check_dims(v, "v", 4);
  const int64_t B = q.size(0), T = q.size(1), H = q.size(2);
  check_shape(k, "k", q.sizes()); check_shape(v, "v", {B, T, H, v.size(3)}); check_shape(beta, "beta", {B, T, H});
  if (g) check_shape(*g, "g", {B, T, H});
}

// Returns o [B, T, H, dv], the final state [B, H, dk, dv] and the backward's checkpoints [B, H, NS, dk, dv].
Tensors3 delta_fwd(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& beta, const Opt& g_opt,
                   const Opt& s0_opt, double scale) {
  check_delta(q, k, v, beta, g_opt);
  const int64_t B = q.size(0), T = q.size(1), H = q.size(2), DK = q.size(3), DV = v.size(3);
  if (s0_opt) check_shape(*s0_opt, "initial_state", {B, H, DK, DV});
  const int64_t NS = num_segments(T);
  auto o = at::empty({B, T, H, DV}, q.options());
  auto S_final = at::empty({B, H, DK, DV}, q.options());
  auto ckpt = at::empty({B, H, NS, DK, DV}, q.options());
  const DeltaArgs a{B, T, H, DK, DV, NS, q.data_ptr<float>(), k.data_ptr<float>(), v.data_ptr<float>(),
                    beta.data_ptr<float>(), g_opt.has_value() ? g_opt->data_ptr<float>() : nullptr,
                    s0_opt.has_value() ? s0_opt->data_ptr<float>() : nullptr, static_cast<float>(scale)};
  float *op = o.data_ptr<float>(), *sf = S_final.data_ptr<float>(), *cp = ckpt.data_ptr<float>();
  for_each_task(B * H, DK, DV, [&](auto dkc, auto dvc, int64_t bh) {
    delta_fwd_head<decltype(dkc)::value, decltype(dvc)::value>(a, bh, op, sf, cp);
  });
  return {o, S_final, ckpt};
}

struct DeltaGrads {
  const float *ckpt, *d_o, *dS;
  float *dq, *dk, *dv, *dbeta, *dg, *dS0;
};

template <int64_t DKc, int64_t DVc>
void delta_bwd_head(const DeltaArgs& a, const DeltaGrads& r, int64_t bh) {
  const int64_t DK = DKc ? DKc : a.dk, DV = DVc ? DVc : a.dv, T = a.T, H = a.H, NS = a.NS;
  const int64_t b = bh / H, h = bh % H;
  const float sc = a.sc;
  const float *q = a.q, *k = a.k, *v = a.v, *beta = a.beta, *g = a.g, *d_o = r.d_o;
  float *dq = r.dq, *dk = r.dk, *dv = r.dv, *dbeta = r.dbeta, *dg = r.dg;
  // Segment buffers: Sd[l] = decayed state S~ before token t0+l writes, U[l] = u, R[l] = v - S~^T k.
  std::vector<float> Sd(SEG * DK * DV), U(SEG * DV), R(SEG * DV);
  auto Sbuf = make_buf<DKc * DVc>(DK * DV);
  auto dSbuf = make_buf<DKc * DVc>(DK * DV);
  auto dubuf = make_buf<DVc>(DV);
  auto dpbuf = make_buf<DVc>(DV);
  float* __restrict__ S = Sbuf.data();
  float* __restrict__ dS = dSbuf.data();
  float* __restrict__ du = dubuf.data();
  float* __restrict__ dp = dpbuf.data();
  if (r.dS) std::copy(r.dS + bh * DK * DV, r.dS + (bh + 1) * DK * DV, dS);
  else std::fill(dS, dS + DK * DV, 0.0f);
  for (int64_t s = NS - 1; s >= 0; --s) {
    const int64_t t0 = s * SEG, t1 = std::min(T, t0 + SEG);
    std::copy(r.ckpt + (bh * NS + s) * DK * DV, r.ckpt + (bh * NS + s + 1) * DK * DV, S);
    for (int64_t t = t0; t < t1; ++t) {                     // recompute the segment forward
      const int64_t row = (b * T + t) * H + h, l = t - t0;
      const float* __restrict__ kt = k + row * DK;
      const float* __restrict__ vt = v + row * DV;
      const float dec = g ? std::exp(g[row]) : 1.0f;
      float* __restrict__ sd = Sd.data() + l * DK * DV;
      float* __restrict__ rr = R.data() + l * DV;
      float* __restrict__ u = U.data() + l * DV;
      for (int64_t e = 0; e < DK * DV; ++e) sd[e] = dec * S[e];
      for (int64_t j = 0; j < DV; ++j) rr[j] = 0.0f;
      for (int64_t i = 0; i < DK; ++i)
        for (int64_t j = 0; j < DV; ++j) rr[j] += sd[i * DV + j] * kt[i];
      for (int64_t j = 0; j < DV; ++j) { rr[j] = vt[j] - rr[j]; u[j] = beta[row] * rr[j]; }
      for (int64_t i = 0; i < DK; ++i)
        for (int64_t j = 0; j < DV; ++j) S[i * DV + j] = sd[i * DV + j] + kt[i] * u[j];
    }
    for (int64_t t = t1 - 1; t >= t0; --t) {                // walk it back; dS = dL/dS_t
      const int64_t row = (b * T + t) * H + h, l = t - t0;
      const float* __restrict__ kt = k + row * DK;
      const float* __restrict__ qt = q + row * DK;
      const float* __restrict__ dot = d_o + row * DV;
      const float* __restrict__ sd = Sd.data() + l * DK * DV;
      const float* __restrict__ u = U.data() + l * DV;
      const float* __restrict__ rr = R.data() + l * DV;
      const float bt = beta[row];
      float* __restrict__ dqt = dq + row * DK;
      float* __restrict__ dkt = dk + row * DK;
      float* __restrict__ dvt = dv + row * DV;
      // o_t = scale S_t^T q_t  and  S_t = S~ + k u^T
      for (int64_t j = 0; j < DV; ++j) du[j] = 0.0f;
      for (int64_t i = 0; i < DK; ++i) {
        float aq = 0.0f, ak = 0.0f;
        const float ki = kt[i], qi = sc * qt[i];
        for (int64_t j = 0; j < DV; ++j) {
          aq += (sd[i * DV + j] + ki * u[j]) * dot[j];
          const float ds = dS[i * DV + j] + qi * dot[j];
          dS[i * DV + j] = ds;
          ak += ds * u[j];
          du[j] += ds * ki;
        }
        dqt[i] = sc * aq;
        dkt[i] = ak;
      }
      // u = beta (v - S~^T k)
      float dbt = 0.0f;
      for (int64_t j = 0; j < DV; ++j) {
        dbt += du[j] * rr[j];
        dvt[j] = bt * du[j];
        dp[j] = -bt * du[j];
      }
      dbeta[row] = dbt;
      // S~^T k: dS~ = dS + k dp^T, dk += S~ dp;  S~ = a S_{t-1}: dS_{t-1} = a dS~, dg = <dS~, S~>
      const float dec = g ? std::exp(g[row]) : 1.0f;
      float dgt = 0.0f;
      for (int64_t i = 0; i < DK; ++i) {
        float ak = 0.0f;
        const float ki = kt[i];
        for (int64_t j = 0; j < DV; ++j) {
          ak += sd[i * DV + j] * dp[j];
          const float dsd = dS[i * DV + j] + ki * dp[j];
          dgt += dsd * sd[i * DV + j];
          dS[i * DV + j] = dec * dsd;
        }
        dkt[i] += ak;
      }
      if (g) dg[row] = dgt;
    }
  }
  std::copy(dS, dS + DK * DV, r.dS0 + bh * DK * DV);
}

// Returns dq, dk, dv, dbeta, dg (empty if not gated), dS0.
Tensors6 delta_bwd(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& beta, const Opt& g_opt,
                   const Tensor& ckpt, const Tensor& d_o, const Opt& dS_opt, double scale) {
  check_delta(q, k, v, beta, g_opt);
  const int64_t B = q.size(0), T = q.size(1), H = q.size(2), DK = q.size(3), DV = v.size(3);
  check_shape(ckpt, "checkpoints", {B, H, num_segments(T), DK, DV}); check_shape(d_o, "grad_o", v.sizes());
  if (dS_opt) check_shape(*dS_opt, "grad_state", {B, H, DK, DV});
  const bool gated = g_opt.has_value();
  auto dq = at::empty_like(q), dk = at::empty_like(k), dv = at::empty_like(v);
  auto dbeta = at::empty_like(beta);
  auto dg = gated ? at::empty_like(*g_opt) : no_grad_for(q);
  auto dS0 = at::empty({B, H, DK, DV}, q.options());
  const DeltaArgs a{B, T, H, DK, DV, ckpt.size(2), q.data_ptr<float>(), k.data_ptr<float>(), v.data_ptr<float>(),
                    beta.data_ptr<float>(), gated ? g_opt->data_ptr<float>() : nullptr, nullptr,
                    static_cast<float>(scale)};
  const DeltaGrads r{ckpt.data_ptr<float>(), d_o.data_ptr<float>(),
                     dS_opt.has_value() ? dS_opt->data_ptr<float>() : nullptr, dq.data_ptr<float>(),
                     dk.data_ptr<float>(), dv.data_ptr<float>(), dbeta.data_ptr<float>(),
                     gated ? dg.data_ptr<float>() : nullptr, dS0.data_ptr<float>()};
  for_each_task(B * H, DK, DV, [&](auto dkc, auto dvc, int64_t bh) {
    delta_bwd_head<decltype(dkc)::value, decltype(dvc)::value>(a, r, bh);
  });
  return {dq, dk, dv, dbeta, dg, dS0};
}

// ---- Mamba2 SSD scan ----------------------------------------------------------------------------------------
// Per head h of group g:  h_t = exp(dt_t A_h) h_{t-1} + dt_t x_t B_t^T  ([P, N]);  y_t = h_t C_t  (no D skip).

struct SSDArgs {
  int64_t B, T, H, G, P, N, NS;
  const float *x, *dt, *A, *Bm, *Cm, *s0;
};

// The forward keeps the state transposed, St[n][p], so that y_t = h_t C_t accumulates over n as a vector over p
// (no horizontal sums); checkpoints and the final state are written in the [p][n] layout the backward reads.
template <int64_t Pc, int64_t Nc>
void ssd_fwd_head(const SSDArgs& a, int64_t bh, float* __restrict__ y, float* __restrict__ sf,
                  float* __restrict__ cp) {
  const int64_t P = Pc ? Pc : a.P, N = Nc ? Nc : a.N, T = a.T, H = a.H, G = a.G, NS = a.NS;
  const int64_t b = bh / H, h = bh % H, grp = h / (H / G);
  const float Ah = a.A[h];
  const float *x = a.x, *dt = a.dt, *Bm = a.Bm, *Cm = a.Cm;
  auto Sbuf = make_buf<Pc * Nc>(P * N);
  auto ybuf = make_buf<Pc>(P);
  float* __restrict__ St = Sbuf.data();
  float* __restrict__ acc = ybuf.data();
  if (a.s0) {
    const float* s0 = a.s0 + bh * P * N;
    for (int64_t p = 0; p < P; ++p)
      for (int64_t n = 0; n < N; ++n) St[n * P + p] = s0[p * N + n];
  } else {
    std::fill(St, St + P * N, 0.0f);
  }
  auto store = [&](float* dst) {
    for (int64_t p = 0; p < P; ++p)
      for (int64_t n = 0; n < N; ++n) dst[p * N + n] = St[n * P + p];
  };
  for (int64_t t = 0; t < T; ++t) {
    if (t % SEG == 0) store(cp + (bh * NS + t / SEG) * P * N);
    const int64_t row = (b * T + t) * H + h, grow = (b * T + t) * G + grp;
    const float d = dt[row], dec = std::exp(d * Ah);
    const float* __restrict__ xt = x + row * P;
    const float* __restrict__ Bt = Bm + grow * N;
    const float* __restrict__ Ct = Cm + grow * N;
    for (int64_t p = 0; p < P; ++p) acc[p] = 0.0f;
    for (int64_t n = 0; n < N; ++n) {
      const float bn = d * Bt[n], cn = Ct[n];
      float* __restrict__ Sn = St + n * P;
      for (int64_t p = 0; p < P; ++p) {
        const float st = dec * Sn[p] + bn * xt[p];
        Sn[p] = st;
        acc[p] += st * cn;
      }
    }
    std::copy(acc, acc + P, y + row * P);
  }
  store(sf + bh * P * N);
}

void check_ssd(const Tensor& x, const Tensor& dt, const Tensor& A, const Tensor& Bm, const Tensor& Cm) {
  check_dims(x, "x", 4); check_dims(Bm, "B", 4);
  const int64_t Bsz = x.size(0), T = x.size(1), H = x.size(2), G = Bm.size(2), N = Bm.size(3);
  check_shape(dt, "dt", {Bsz, T, H}); check_shape(A, "A", {H}); check_shape(Bm, "B", {Bsz, T, G, N});
  check_shape(Cm, "C", Bm.sizes());
  TORCH_CHECK(G > 0 && H % G == 0, "SSD: groups must divide heads");
}

// Returns y [B, T, H, P], the final state [B, H, P, N] and the backward's checkpoints [B, H, NS, P, N].
Tensors3 ssd_fwd(const Tensor& x, const Tensor& dt, const Tensor& A, const Tensor& Bm, const Tensor& Cm,
                 const Opt& s0_opt) {
  check_ssd(x, dt, A, Bm, Cm);
  const int64_t Bsz = x.size(0), T = x.size(1), H = x.size(2), P = x.size(3), G = Bm.size(2), N = Bm.size(3);
  if (s0_opt) check_shape(*s0_opt, "initial_state", {Bsz, H, P, N});
  const int64_t NS = num_segments(T);
  auto y = at::empty_like(x);
  auto S_final = at::empty({Bsz, H, P, N}, x.options());
  auto ckpt = at::empty({Bsz, H, NS, P, N}, x.options());
  const SSDArgs a{Bsz, T, H, G, P, N, NS, x.data_ptr<float>(), dt.data_ptr<float>(), A.data_ptr<float>(),
                  Bm.data_ptr<float>(), Cm.data_ptr<float>(), s0_opt.has_value() ? s0_opt->data_ptr<float>() : nullptr};
  float *yp = y.data_ptr<float>(), *sf = S_final.data_ptr<float>(), *cp = ckpt.data_ptr<float>();
  for_each_task(Bsz * H, P, N, [&](auto pc, auto nc, int64_t bh) {
    ssd_fwd_head<decltype(pc)::value, decltype(nc)::value>(a, bh, yp, sf, cp);
  });
  return {y, S_final, ckpt};
}

struct SSDGrads {
  const float *ckpt, *dy, *dS;
  float *dx, *ddt, *dA, *dB, *dC, *dS0;
};

// One (batch, group): its heads in turn, since they add into the same dB / dC rows.
template <int64_t Pc, int64_t Nc>
void ssd_bwd_group(const SSDArgs& a, const SSDGrads& r, int64_t bg) {
  const int64_t P = Pc ? Pc : a.P, N = Nc ? Nc : a.N, T = a.T, H = a.H, G = a.G, NS = a.NS, R = H / G;
  const int64_t b = bg / G, grp = bg % G;
  const float *x = a.x, *dt = a.dt, *Bm = a.Bm, *Cm = a.Cm, *dy = r.dy;
  float *dx = r.dx, *ddt = r.ddt, *dB = r.dB, *dC = r.dC;
  std::vector<float> Sp(SEG * P * N);
  auto Sbuf = make_buf<Pc * Nc>(P * N);
  auto dSbuf = make_buf<Pc * Nc>(P * N);
  auto dBbuf = make_buf<Nc>(N);
  auto dCbuf = make_buf<Nc>(N);
  float* __restrict__ S = Sbuf.data();
  float* __restrict__ dS = dSbuf.data();
  float* __restrict__ dBh = dBbuf.data();
  float* __restrict__ dCh = dCbuf.data();
  for (int64_t h = grp * R; h < (grp + 1) * R; ++h) {
    const int64_t bh = b * H + h;
    const float Ah = a.A[h];
    float dA_acc = 0.0f;
    if (r.dS) std::copy(r.dS + bh * P * N, r.dS + (bh + 1) * P * N, dS);
    else std::fill(dS, dS + P * N, 0.0f);
    for (int64_t s = NS - 1; s >= 0; --s) {
      const int64_t t0 = s * SEG, t1 = std::min(T, t0 + SEG);
      std::copy(r.ckpt + (bh * NS + s) * P * N, r.ckpt + (bh * NS + s + 1) * P * N, S);
      for (int64_t t = t0; t < t1; ++t) {                   // recompute: Sp[l] = state before token t0+l
        const int64_t row = (b * T + t) * H + h, grow = (b * T + t) * G + grp;
        float* __restrict__ sp = Sp.data() + (t - t0) * P * N;
        std::copy(S, S + P * N, sp);
        const float d = dt[row], dec = std::exp(d * Ah);
        const float* __restrict__ xt = x + row * P;
        const float* __restrict__ Bt = Bm + grow * N;
        for (int64_t p = 0; p < P; ++p)
          for (int64_t n = 0; n < N; ++n) S[p * N + n] = dec * S[p * N + n] + d * xt[p] * Bt[n];
      }
      for (int64_t t = t1 - 1; t >= t0; --t) {
        const int64_t row = (b * T + t) * H + h, grow = (b * T + t) * G + grp;
        const float d = dt[row], dec = std::exp(d * Ah);
        const float* __restrict__ xt = x + row * P;
        const float* __restrict__ Bt = Bm + grow * N;
        const float* __restrict__ Ct = Cm + grow * N;
        const float* __restrict__ dyt = dy + row * P;
        const float* __restrict__ sp = Sp.data() + (t - t0) * P * N;
        float* __restrict__ dxt = dx + row * P;
        float ddt_in = 0.0f, da = 0.0f;
        for (int64_t n = 0; n < N; ++n) { dBh[n] = 0.0f; dCh[n] = 0.0f; }
        for (int64_t p = 0; p < P; ++p) {
          float dxb = 0.0f;
          const float xp = xt[p], dyp = dyt[p];
          for (int64_t n = 0; n < N; ++n) {
            dCh[n] += (dec * sp[p * N + n] + d * xp * Bt[n]) * dyp;         // h_t . dy
            const float ds = dS[p * N + n] + dyp * Ct[n];                   // dL/dh_t
            dxb += ds * Bt[n];
            dBh[n] += ds * xp;
            da += ds * sp[p * N + n];
            dS[p * N + n] = dec * ds;                                       // -> dL/dh_{t-1}
          }
          dxt[p] = d * dxb;
          ddt_in += xp * dxb;
        }
        float* __restrict__ dBt = dB + grow * N;
        float* __restrict__ dCt = dC + grow * N;
        for (int64_t n = 0; n < N; ++n) { dBt[n] += d * dBh[n]; dCt[n] += dCh[n]; }
        const float dlog = dec * da;                                        // d(dt * A)
        ddt[row] = ddt_in + Ah * dlog;
        dA_acc += d * dlog;
      }
    }
    r.dA[bh] = dA_acc;
    std::copy(dS, dS + P * N, r.dS0 + bh * P * N);
  }
}

// Returns dx, ddt, dA [H], dB, dC, dS0.
Tensors6 ssd_bwd(const Tensor& x, const Tensor& dt, const Tensor& A, const Tensor& Bm, const Tensor& Cm,
                 const Tensor& ckpt, const Tensor& dy, const Opt& dS_opt) {
  check_ssd(x, dt, A, Bm, Cm);
  const int64_t Bsz = x.size(0), T = x.size(1), H = x.size(2), P = x.size(3), G = Bm.size(2), N = Bm.size(3);
  check_shape(ckpt, "checkpoints", {Bsz, H, num_segments(T), P, N}); check_shape(dy, "grad_y", x.sizes());
  if (dS_opt) check_shape(*dS_opt, "grad_state", {Bsz, H, P, N});
  auto dx = at::empty_like(x), ddt = at::empty_like(dt);
  auto dB = at::zeros_like(Bm), dC = at::zeros_like(Cm);
  auto dA_part = at::zeros({Bsz, H}, x.options());
  auto dS0 = at::empty({Bsz, H, P, N}, x.options());
  const SSDArgs a{Bsz, T, H, G, P, N, ckpt.size(2), x.data_ptr<float>(), dt.data_ptr<float>(), A.data_ptr<float>(),
                  Bm.data_ptr<float>(), Cm.data_ptr<float>(), nullptr};
  const SSDGrads r{ckpt.data_ptr<float>(), dy.data_ptr<float>(),
                   dS_opt.has_value() ? dS_opt->data_ptr<float>() : nullptr, dx.data_ptr<float>(),
                   ddt.data_ptr<float>(), dA_part.data_ptr<float>(), dB.data_ptr<float>(), dC.data_ptr<float>(),
                   dS0.data_ptr<float>()};
  for_each_task(Bsz * G, P, N, [&](auto pc, auto nc, int64_t bg) {
    ssd_bwd_group<decltype(pc)::value, decltype(nc)::value>(a, r, bg);
  });
  return {dx, ddt, dA_part.sum(0), dB, dC, dS0};
}

// ---- short causal depthwise conv + SiLU ---------------------------------------------------------------------
// y[t, c] = silu(bias[c] + sum_k w[c, k] x[t - K + 1 + k, c]), x [B, T, C] channels-last, w [C, K].

// The weight transposed to [K, C], so that the inner loops run over contiguous channels.
std::vector<float> transposed_weight(const float* wp, int64_t C, int64_t K) {
  std::vector<float> wt(K * C);
  for (int64_t c = 0; c < C; ++c)
    for (int64_t k = 0; k < K; ++k) wt[k * C + c] = wp[c * K + k];
  return wt;
}

// z = bias + sum_k w[k] x[t - K + 1 + k] for the row bt = b * T + t (zero history before t = 0).
inline void conv_preactivation(const float* xp, const float* wt, const float* bp, int64_t T, int64_t C, int64_t K,
                               int64_t bt, float* __restrict__ z) {
  const int64_t b = bt / T, t = bt % T;
  for (int64_t c = 0; c < C; ++c) z[c] = bp ? bp[c] : 0.0f;
  for (int64_t k = 0; k < K; ++k) {
    const int64_t src = t - (K - 1) + k;
    if (src < 0) continue;
    const float* __restrict__ xs = xp + (b * T + src) * C;
    const float* __restrict__ wk = wt + k * C;
    for (int64_t c = 0; c < C; ++c) z[c] += wk[c] * xs[c];
  }
}

void check_conv(const Tensor& x, const Tensor& w, const Opt& bias) {
  check_dims(x, "x", 3); check_dims(w, "weight", 2);
  check_shape(w, "weight", {x.size(2), w.size(1)});
  if (bias) check_shape(*bias, "bias", {x.size(2)});
}

Tensor conv_silu_fwd(const Tensor& x, const Tensor& w, const Opt& bias) {
  check_conv(x, w, bias);
  const int64_t B = x.size(0), T = x.size(1), C = x.size(2), K = w.size(1);
  auto y = at::empty_like(x);
  const float *xp = x.data_ptr<float>(), *wp = w.data_ptr<float>();
  const float* bp = bias.has_value() ? bias->data_ptr<float>() : nullptr;
  float* yp = y.data_ptr<float>();
  const std::vector<float> wt = transposed_weight(wp, C, K);
  at::parallel_for(0, B * T, 16, [&](int64_t lo, int64_t hi) {
    std::vector<float> z(C);
    for (int64_t bt = lo; bt < hi; ++bt) {
      conv_preactivation(xp, wt.data(), bp, T, C, K, bt, z.data());
      float* yt = yp + bt * C;
      for (int64_t c = 0; c < C; ++c) yt[c] = z[c] * sigmoid(z[c]);
    }
  });
  return y;
}

// Returns dx, dw [C, K], dbias (empty without bias).
Tensors3 conv_silu_bwd(const Tensor& x, const Tensor& w, const Opt& bias, const Tensor& dy) {
  check_conv(x, w, bias); check_shape(dy, "grad_y", x.sizes());
  const int64_t B = x.size(0), T = x.size(1), C = x.size(2), K = w.size(1);
  const float *xp = x.data_ptr<float>(), *wp = w.data_ptr<float>(), *dyp = dy.data_ptr<float>();
  const float* bp = bias.has_value() ? bias->data_ptr<float>() : nullptr;
  auto dz = at::empty_like(x);
  float* dzp = dz.data_ptr<float>();
  const std::vector<float> wt = transposed_weight(wp, C, K);
  // dz = dy * silu'(z), z recomputed.
  at::parallel_for(0, B * T, 16, [&](int64_t lo, int64_t hi) {
    std::vector<float> z(C);
    for (int64_t bt = lo; bt < hi; ++bt) {
      conv_preactivation(xp, wt.data(), bp, T, C, K, bt, z.data());
      const float* dyt = dyp + bt * C;
      float* dzt = dzp + bt * C;
      for (int64_t c = 0; c < C; ++c) {
        const float s = sigmoid(z[c]);
        dzt[c] = dyt[c] * s * (1.0f + z[c] * (1.0f - s));
      }
    }
  });
  // dx[t] = sum_k w[k] dz[t + K - 1 - k];  dw[k] = sum_t dz[t] x[t - K + 1 + k];  db = sum_t dz[t].
  auto dx = at::empty_like(x);
  float* dxp = dx.data_ptr<float>();
  at::parallel_for(0, B * T, 16, [&](int64_t lo, int64_t hi) {
    for (int64_t bt = lo; bt < hi; ++bt) {
      const int64_t b = bt / T, t = bt % T;
      float* dxt = dxp + bt * C;
      for (int64_t c = 0; c < C; ++c) dxt[c] = 0.0f;
      for (int64_t k = 0; k < K; ++k) {
        const int64_t dst = t + (K - 1) - k;
        if (dst >= T) continue;
        const float* dzs = dzp + (b * T + dst) * C;
        const float* wk = wt.data() + k * C;
        for (int64_t c = 0; c < C; ++c) dxt[c] += wk[c] * dzs[c];
      }
    }
  });
  std::vector<float> dwt(K * C, 0.0f), db(C, 0.0f);
  for (int64_t b = 0; b < B; ++b)
    for (int64_t t = 0; t < T; ++t) {
      const float* dzt = dzp + (b * T + t) * C;
      for (int64_t c = 0; c < C; ++c) db[c] += dzt[c];
      for (int64_t k = 0; k < K; ++k) {
        const int64_t src = t - (K - 1) + k;
        if (src < 0) continue;
        const float* xs = xp + (b * T + src) * C;
        float* dwk = dwt.data() + k * C;
        for (int64_t c = 0; c < C; ++c) dwk[c] += dzt[c] * xs[c];
      }
    }
  auto dw = at::empty({C, K}, x.options());
  float* dwp = dw.data_ptr<float>();
  for (int64_t c = 0; c < C; ++c)
    for (int64_t k = 0; k < K; ++k) dwp[c * K + k] = dwt[k * C + c];
  Tensor dbias = no_grad_for(x);
  if (bp) dbias = at::from_blob(db.data(), {C}, x.options()).clone();
  return {dx, dw, dbias};
}

// ---- causal (optionally sliding-window) softmax attention, small heads ------------------------------------------
// q [B, H, T, D], k, v [B, Hkv, T, D] (GQA: query head h reads kv head h / (H / Hkv)); query i attends keys
// j in [i - window + 1, i] (window 0 = all j <= i). Forward returns o and the row log-sum-exp; the backward
// recomputes the probabilities from it. One task per (batch, kv head): its query heads add into the same dK, dV.
// Keys and values are transposed once per task ([D, T]) so that the score and dP rows vectorize over keys.

struct AttnArgs {
  int64_t B, H, HKV, T, D, window;
  float scale;
  const float *q, *k, *v;
};

// Keys are visited in fixed blocks of BLK (one vector register of scores), the partial blocks at both ends masked:
// a fixed trip count, where a per-row key count made every row's loops branch differently.
constexpr int64_t BLK = 16;
constexpr float MASKED_BELOW = 80.0f;                // masked scores: row max - 80, exp ~1.8e-35 (masked keys are
                                                     // never read; a finite value keeps the exp loop branch-free)

inline int64_t first_key(int64_t i, int64_t window) { return window > 0 ? std::max<int64_t>(0, i - window + 1) : 0; }

// s[j] = sum_c w[c] * XT[c][j] for the key blocks jb0 .. jb1 (XT: [D, Tp] transposed keys or values). One vector
// register per block, written with intrinsics where AVX-512 is there (the auto-vectorizer spilled this loop nest).
inline void block_dots(const float* __restrict__ w, const float* __restrict__ XT, int64_t D, int64_t Tp, int64_t jb0,
                       int64_t jb1, float* __restrict__ s) {
  for (int64_t jb = jb0; jb <= jb1; ++jb) {
#ifdef __AVX512F__
    static_assert(BLK == 16, "one AVX-512 register of fp32 per key block");
    __m512 acc = _mm512_setzero_ps();
    for (int64_t c = 0; c < D; ++c)
      acc = _mm512_fmadd_ps(_mm512_set1_ps(w[c]), _mm512_loadu_ps(XT + c * Tp + jb * BLK), acc);
    _mm512_storeu_ps(s + jb * BLK, acc);
#else
    float acc[BLK] = {0.0f};
    for (int64_t c = 0; c < D; ++c)
      for (int64_t l = 0; l < BLK; ++l) acc[l] += w[c] * XT[c * Tp + jb * BLK + l];
    std::copy(acc, acc + BLK, s + jb * BLK);
#endif
  }
}

// max over s[lo, hi), hi - lo a multiple of BLK. Without -ffinite-math-only the compiler keeps a max reduction
// scalar (its result with a NaN depends on the order), so it is written out; a NaN among the scores reaches the
// output through exp(score - max) whatever max makes of it.
inline float block_max(const float* __restrict__ s, int64_t lo, int64_t hi) {
#ifdef __AVX512F__
  __m512 acc = _mm512_set1_ps(-INFINITY);
  for (int64_t j = lo; j < hi; j += BLK) acc = _mm512_max_ps(acc, _mm512_loadu_ps(s + j));
  return _mm512_reduce_max_ps(acc);
#else
  float m = -INFINITY;
  for (int64_t j = lo; j < hi; ++j) m = s[j] > m ? s[j] : m;
  return m;
#endif
}

inline void transpose_padded(const float* __restrict__ X, int64_t T, int64_t D, int64_t Tp, float* __restrict__ XT) {
  std::fill(XT, XT + D * Tp, 0.0f);
  for (int64_t j = 0; j < T; ++j)
    for (int64_t c = 0; c < D; ++c) XT[c * Tp + j] = X[j * D + c];
}

template <int64_t Dc>
void attn_fwd_group(const AttnArgs& a, int64_t bk, float* __restrict__ o, float* __restrict__ lse) {
  const int64_t D = Dc ? Dc : a.D, T = a.T, R = a.H / a.HKV, b = bk / a.HKV, kh = bk % a.HKV;
  const int64_t Tp = (T + BLK - 1) / BLK * BLK;
  const float* __restrict__ V = a.v + bk * T * D;
  std::vector<float> KT(D * Tp), s(Tp), qs(D);
  transpose_padded(a.k + bk * T * D, T, D, Tp, KT.data());
  auto obuf = make_buf<Dc>(D);
  float* __restrict__ acc = obuf.data();
  for (int64_t h = kh * R; h < (kh + 1) * R; ++h) {
    const int64_t bh = b * a.H + h;
    for (int64_t i = 0; i < T; ++i) {
      const float* __restrict__ qi = a.q + (bh * T + i) * D;
      for (int64_t c = 0; c < D; ++c) qs[c] = a.scale * qi[c];
      const int64_t j0 = first_key(i, a.window), jb0 = j0 / BLK, jb1 = i / BLK;
      const int64_t lo = jb0 * BLK, hi = (jb1 + 1) * BLK;
      float* __restrict__ sr = s.data();
      block_dots(qs.data(), KT.data(), D, Tp, jb0, jb1, sr);
      for (int64_t j = lo; j < j0; ++j) sr[j] = -INFINITY;
      for (int64_t j = i + 1; j < hi; ++j) sr[j] = -INFINITY;
      const float m = block_max(sr, lo, hi);
      for (int64_t j = lo; j < j0; ++j) sr[j] = m - MASKED_BELOW;
      for (int64_t j = i + 1; j < hi; ++j) sr[j] = m - MASKED_BELOW;
      float l = 0.0f;
      for (int64_t j = lo; j < hi; ++j) { sr[j] = vexp(sr[j] - m); l += sr[j]; }
      for (int64_t c = 0; c < D; ++c) acc[c] = 0.0f;
      for (int64_t j = j0; j <= i; ++j) {
        const float pj = sr[j];
        const float* __restrict__ vj = V + j * D;
        for (int64_t c = 0; c < D; ++c) acc[c] += pj * vj[c];
      }
      float* __restrict__ oi = o + (bh * T + i) * D;
      const float inv = 1.0f / l;
      for (int64_t c = 0; c < D; ++c) oi[c] = acc[c] * inv;
      lse[bh * T + i] = m + std::log(l);
    }
  }
}

template <int64_t Dc>
void attn_bwd_group(const AttnArgs& a, int64_t bk, const float* __restrict__ o, const float* __restrict__ lse,
                    const float* __restrict__ dO, float* __restrict__ dq, float* __restrict__ dk,
                    float* __restrict__ dv) {
  const int64_t D = Dc ? Dc : a.D, T = a.T, R = a.H / a.HKV, b = bk / a.HKV, kh = bk % a.HKV;
  const int64_t Tp = (T + BLK - 1) / BLK * BLK;
  const float* __restrict__ K = a.k + bk * T * D;
  std::vector<float> KT(D * Tp), VT(D * Tp), p(Tp), dp(Tp), qs(D);
  transpose_padded(K, T, D, Tp, KT.data());
  transpose_padded(a.v + bk * T * D, T, D, Tp, VT.data());
  float* __restrict__ dK = dk + bk * T * D;
  float* __restrict__ dV = dv + bk * T * D;
  std::fill(dK, dK + T * D, 0.0f);
  std::fill(dV, dV + T * D, 0.0f);
  auto qbuf = make_buf<Dc>(D);
  float* __restrict__ dqa = qbuf.data();
  for (int64_t h = kh * R; h < (kh + 1) * R; ++h) {
    const int64_t bh = b * a.H + h;
    for (int64_t i = 0; i < T; ++i) {
      const float* __restrict__ qi = a.q + (bh * T + i) * D;
      const float* __restrict__ doi = dO + (bh * T + i) * D;
      const float* __restrict__ oi = o + (bh * T + i) * D;
      for (int64_t c = 0; c < D; ++c) qs[c] = a.scale * qi[c];
      const int64_t j0 = first_key(i, a.window), jb0 = j0 / BLK, jb1 = i / BLK;
      float di = 0.0f;
      for (int64_t c = 0; c < D; ++c) di += doi[c] * oi[c];
      float* __restrict__ pr = p.data();
      float* __restrict__ dpr = dp.data();
      block_dots(qs.data(), KT.data(), D, Tp, jb0, jb1, pr);   // scaled scores
      block_dots(doi, VT.data(), D, Tp, jb0, jb1, dpr);        // dP = dO V^T
      const float li = lse[bh * T + i];
      for (int64_t j = jb0 * BLK; j < j0; ++j) pr[j] = li - MASKED_BELOW;   // as in the forward: no exp slow path
      for (int64_t j = i + 1; j < (jb1 + 1) * BLK; ++j) pr[j] = li - MASKED_BELOW;
      for (int64_t j = jb0 * BLK; j < (jb1 + 1) * BLK; ++j) {
        pr[j] = vexp(pr[j] - li);                                      // P_ij (masked keys are skipped below)
        dpr[j] = pr[j] * (dpr[j] - di);                               // dS_ij before the scale
      }
      for (int64_t c = 0; c < D; ++c) dqa[c] = 0.0f;
      for (int64_t j = j0; j <= i; ++j) {
        const float ds = dpr[j], pj = pr[j], dss = a.scale * ds;
        const float* __restrict__ kj = K + j * D;
        float* __restrict__ dkj = dK + j * D;
        float* __restrict__ dvj = dV + j * D;
        for (int64_t c = 0; c < D; ++c) {
          dqa[c] += ds * kj[c];
          dkj[c] += dss * qi[c];
          dvj[c] += pj * doi[c];
        }
      }
      float* __restrict__ dqi = dq + (bh * T + i) * D;
      for (int64_t c = 0; c < D; ++c) dqi[c] = a.scale * dqa[c];
    }
  }
}

void check_attn(const Tensor& q, const Tensor& k, const Tensor& v) {
  check_dims(q, "q", 4); check_dims(k, "k", 4); check_dims(v, "v", 4);
  TORCH_CHECK(k.sizes() == v.sizes() && q.size(0) == k.size(0) && q.size(2) == k.size(2) && q.size(3) == k.size(3)
              && k.size(1) > 0 && q.size(1) % k.size(1) == 0,
              "attention: q [B, H, T, D], k and v [B, Hkv, T, D] with Hkv | H");
}

// Returns o [B, H, T, D] and the rows' log-sum-exp [B, H, T].
Tensors2 attn_fwd(const Tensor& q, const Tensor& k, const Tensor& v, double scale, int64_t window) {
  check_attn(q, k, v);
  const AttnArgs a{q.size(0), q.size(1), k.size(1), q.size(2), q.size(3), window, static_cast<float>(scale),
                   q.data_ptr<float>(), k.data_ptr<float>(), v.data_ptr<float>()};
  auto o = at::empty_like(q);
  auto lse = at::empty({a.B, a.H, a.T}, q.options());
  float *op = o.data_ptr<float>(), *lp = lse.data_ptr<float>();
  for_each_task(a.B * a.HKV, a.D, a.D, [&](auto dc, auto, int64_t bk) {
    attn_fwd_group<decltype(dc)::value>(a, bk, op, lp);
  });
  return {o, lse};
}

Tensors3 attn_bwd(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& o, const Tensor& lse,
                  const Tensor& dO, double scale, int64_t window) {
  check_attn(q, k, v); check_shape(o, "o", q.sizes()); check_shape(dO, "grad_o", q.sizes());
  check_shape(lse, "lse", {q.size(0), q.size(1), q.size(2)});
  const AttnArgs a{q.size(0), q.size(1), k.size(1), q.size(2), q.size(3), window, static_cast<float>(scale),
                   q.data_ptr<float>(), k.data_ptr<float>(), v.data_ptr<float>()};
  auto dq = at::empty_like(q), dk = at::empty_like(k), dv = at::empty_like(v);
  const float *op = o.data_ptr<float>(), *lp = lse.data_ptr<float>(), *dop = dO.data_ptr<float>();
  float *dqp = dq.data_ptr<float>(), *dkp = dk.data_ptr<float>(), *dvp = dv.data_ptr<float>();
  for_each_task(a.B * a.HKV, a.D, a.D, [&](auto dc, auto, int64_t bk) {
    attn_bwd_group<decltype(dc)::value>(a, bk, op, lp, dop, dqp, dkp, dvp);
  });
  return {dq, dk, dv};
}

// ---- SwiGLU activation on bf16 GEMM outputs -----------------------------------------------------------------
// h = [gate | up] as the fused gate|up GEMM writes it ([N, 2F], bf16); a = silu(gate) * up, in fp32, rounded to bf16.
// bf16 <-> fp32 by bit shifts (round to nearest even), so the loops vectorize.

inline float bf16_to_float(uint16_t b) {
  uint32_t u = static_cast<uint32_t>(b) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

inline uint16_t float_to_bf16(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  if ((u & 0x7FFFFFFFu) > 0x7F800000u) return static_cast<uint16_t>((u >> 16) | 0x0040u);  // NaN stays NaN
  u += 0x7FFFu + ((u >> 16) & 1u);                   // round to nearest even (inf stays inf)
  return static_cast<uint16_t>(u >> 16);
}

void check_bf16(const Tensor& t, const char* name) {
  TORCH_CHECK(t.device().is_cpu() && t.scalar_type() == at::kBFloat16 && t.is_contiguous() && t.dim() == 2,
              name, " must be a contiguous 2-d bf16 CPU tensor");
}

Tensor swiglu_fwd(const Tensor& h) {
  check_bf16(h, "h");
  TORCH_CHECK(h.size(1) % 2 == 0, "h must be [N, 2F] = [gate | up]");
  const int64_t N = h.size(0), F2 = h.size(1), F = F2 / 2;
  auto a = at::empty({N, F}, h.options());
  const uint16_t* hp = reinterpret_cast<const uint16_t*>(h.data_ptr<at::BFloat16>());
  uint16_t* ap = reinterpret_cast<uint16_t*>(a.data_ptr<at::BFloat16>());
  at::parallel_for(0, N, 16, [&](int64_t lo, int64_t hi) {
    for (int64_t r = lo; r < hi; ++r) {
      const uint16_t* __restrict__ g = hp + r * F2;
      const uint16_t* __restrict__ u = g + F;
      uint16_t* __restrict__ out = ap + r * F;
      for (int64_t c = 0; c < F; ++c) {
        const float z = bf16_to_float(g[c]);
        out[c] = float_to_bf16(z * sigmoid(z) * bf16_to_float(u[c]));
      }
    }
  });
  return a;
}

// Returns dh = [d gate | d up], bf16 [N, 2F].
Tensor swiglu_bwd(const Tensor& h, const Tensor& da) {
  check_bf16(h, "h"); check_bf16(da, "grad_a");
  TORCH_CHECK(h.size(1) % 2 == 0 && da.size(0) == h.size(0) && da.size(1) == h.size(1) / 2,
              "h must be [N, 2F] = [gate | up] and grad_a [N, F]");
  const int64_t N = h.size(0), F2 = h.size(1), F = F2 / 2;
  auto dh = at::empty({N, F2}, h.options());
  const uint16_t* hp = reinterpret_cast<const uint16_t*>(h.data_ptr<at::BFloat16>());
  const uint16_t* dap = reinterpret_cast<const uint16_t*>(da.data_ptr<at::BFloat16>());
  uint16_t* dhp = reinterpret_cast<uint16_t*>(dh.data_ptr<at::BFloat16>());
  at::parallel_for(0, N, 16, [&](int64_t lo, int64_t hi) {
    for (int64_t r = lo; r < hi; ++r) {
      const uint16_t* __restrict__ g = hp + r * F2;
      const uint16_t* __restrict__ u = g + F;
      const uint16_t* __restrict__ d = dap + r * F;
      uint16_t* __restrict__ dg = dhp + r * F2;
      uint16_t* __restrict__ du = dg + F;
      for (int64_t c = 0; c < F; ++c) {
        const float z = bf16_to_float(g[c]), s = sigmoid(z), dv = bf16_to_float(d[c]);
        du[c] = float_to_bf16(dv * z * s);
        dg[c] = float_to_bf16(dv * bf16_to_float(u[c]) * s * (1.0f + z * (1.0f - s)));
      }
    }
  });
  return dh;
}

}  // namespace

// Schemas: the optional tensors are the gate g, an initial state, a bias and an incoming state gradient. A backward
// returns an empty tensor for an input that was None. Fake (shape) functions and autograd: kernels/cpu.py.
TORCH_LIBRARY(flashsearch, m) {
  m.def("delta_fwd(Tensor q, Tensor k, Tensor v, Tensor beta, Tensor? g, Tensor? initial_state, float scale)"
        " -> (Tensor o, Tensor final_state, Tensor checkpoints)");
  m.def("delta_bwd(Tensor q, Tensor k, Tensor v, Tensor beta, Tensor? g, Tensor checkpoints, Tensor grad_o,"
        " Tensor? grad_state, float scale) -> (Tensor, Tensor, Tensor, Tensor, Tensor, Tensor)");
  m.def("ssd_fwd(Tensor x, Tensor dt, Tensor A, Tensor B, Tensor C, Tensor? initial_state)"
        " -> (Tensor y, Tensor final_state, Tensor checkpoints)");
  m.def("ssd_bwd(Tensor x, Tensor dt, Tensor A, Tensor B, Tensor C, Tensor checkpoints, Tensor grad_y,"
        " Tensor? grad_state) -> (Tensor, Tensor, Tensor, Tensor, Tensor, Tensor)");
  m.def("conv_silu_fwd(Tensor x, Tensor weight, Tensor? bias) -> Tensor");
  m.def("conv_silu_bwd(Tensor x, Tensor weight, Tensor? bias, Tensor grad_y) -> (Tensor, Tensor, Tensor)");
  m.def("attn_fwd(Tensor q, Tensor k, Tensor v, float scale, int window) -> (Tensor o, Tensor lse)");
  m.def("attn_bwd(Tensor q, Tensor k, Tensor v, Tensor o, Tensor lse, Tensor grad_o, float scale, int window)"
        " -> (Tensor, Tensor, Tensor)");
  m.def("swiglu_fwd(Tensor h) -> Tensor");
  m.def("swiglu_bwd(Tensor h, Tensor grad_a) -> Tensor");
}

TORCH_LIBRARY_IMPL(flashsearch, CPU, m) {
  m.impl("delta_fwd", &delta_fwd);
  m.impl("delta_bwd", &delta_bwd);
  m.impl("ssd_fwd", &ssd_fwd);
  m.impl("ssd_bwd", &ssd_bwd);
  m.impl("conv_silu_fwd", &conv_silu_fwd);
  m.impl("conv_silu_bwd", &conv_silu_bwd);
  m.impl("attn_fwd", &attn_fwd);
  m.impl("attn_bwd", &attn_bwd);
  m.impl("swiglu_fwd", &swiglu_fwd);
  m.impl("swiglu_bwd", &swiglu_bwd);
}
