// One work item of the LoRA linear op: up to `chunk` rows of one adapter, shrink then expand.
//
// Included several times by lora_linear.cpp, each time inside a `#pragma GCC target` region and
// with LORAMUX_ISA naming a namespace, so the same source is compiled for AVX-512, AVX2 and plain
// x86-64 and one build runs on every CPU (the op picks the widest the CPU has at load). The loops
// use GCC's vector extensions (LORAMUX_LANES floats for the shrink's long dot products, eight for
// the expand), not intrinsics: one source, no per-ISA code paths to keep in step, lowered to
// AVX-512, AVX2 or SSE by the region it is compiled in. Everything accumulates in fp32.
//
// Memory layout (vLLM's stacked slot weights, read in place): A of slice j for slot s, rank row
// k is `a + s * a_slot + k * a_row` (`in` values); B for output column o is
// `b + s * b_slot + o * b_row` (`rank` values). Rows of x and y are `x_row`/`y_row` apart.

namespace loramux {
namespace LORAMUX_ISA {

#define LORAMUX_INLINE inline __attribute__((always_inline))

LORAMUX_INLINE float widen(float v) { return v; }
LORAMUX_INLINE float widen(uint16_t v) {  // bf16 -> fp32: the top half of the fp32 bits
  uint32_t bits = uint32_t(v) << 16;
  float out;
  std::memcpy(&out, &bits, sizeof out);
  return out;
}

LORAMUX_INLINE float narrow(float v, const float*) { return v; }
LORAMUX_INLINE uint16_t narrow(float v, const uint16_t*) {  // round to nearest even, as torch
  uint32_t bits;
  std::memcpy(&bits, &v, sizeof bits);
  if ((bits & 0x7fffffffu) > 0x7f800000u) return 0x7fc0;  // NaN
  return uint16_t((bits + 0x7fffu + ((bits >> 16) & 1u)) >> 16);
}

// The widest vector of this ISA (LORAMUX_LANES floats) for the long dot products of the shrink.
typedef float vf __attribute__((vector_size(4 * LORAMUX_LANES)));
typedef uint32_t vu __attribute__((vector_size(4 * LORAMUX_LANES)));
typedef uint16_t vh __attribute__((vector_size(2 * LORAMUX_LANES)));
constexpr int64_t kLanes = LORAMUX_LANES;

LORAMUX_INLINE vf loadv(const float* p) {
  vf v;
  std::memcpy(&v, p, sizeof v);
  return v;
}
LORAMUX_INLINE vf loadv(const uint16_t* p) {
  vh v;
  std::memcpy(&v, p, sizeof v);
  return (vf)(__builtin_convertvector(v, vu) << 16);
}
LORAMUX_INLINE float hsum(vf v) {
  float s = 0.f;
  for (int64_t i = 0; i < kLanes; ++i) s += v[i];
  return s;
}

// w . x, fp32. Four accumulators: one would wait on its own latency every step.
template <typename W>
LORAMUX_INLINE float dot(const W* __restrict w, const float* __restrict x, int64_t n) {
  vf s0 = {}, s1 = {}, s2 = {}, s3 = {};
  int64_t i = 0;
  for (; i + 4 * kLanes <= n; i += 4 * kLanes) {
    s0 += loadv(w + i) * loadv(x + i);
    s1 += loadv(w + i + kLanes) * loadv(x + i + kLanes);
    s2 += loadv(w + i + 2 * kLanes) * loadv(x + i + 2 * kLanes);
    s3 += loadv(w + i + 3 * kLanes) * loadv(x + i + 3 * kLanes);
  }
  for (; i + kLanes <= n; i += kLanes) s0 += loadv(w + i) * loadv(x + i);
  float s = hsum((s0 + s1) + (s2 + s3));
  for (; i < n; ++i) s += widen(w[i]) * x[i];
  return s;
}

// Four rows against one weight row: the row is read once for all four.
template <typename W>
LORAMUX_INLINE void dot4(const W* __restrict w, const float* __restrict x0,
                         const float* __restrict x1, const float* __restrict x2,
                         const float* __restrict x3, int64_t n, float* out) {
  vf s0 = {}, s1 = {}, s2 = {}, s3 = {};
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes) {
    const vf a = loadv(w + i);
    s0 += a * loadv(x0 + i);
    s1 += a * loadv(x1 + i);
    s2 += a * loadv(x2 + i);
    s3 += a * loadv(x3 + i);
  }
  out[0] = hsum(s0);
  out[1] = hsum(s1);
  out[2] = hsum(s2);
  out[3] = hsum(s3);
  for (; i < n; ++i) {
    const float a = widen(w[i]);
    out[0] += a * x0[i];
    out[1] += a * x1[i];
    out[2] += a * x2[i];
    out[3] += a * x3[i];
  }
}

template <typename T>
LORAMUX_INLINE void to_float(const T* __restrict src, float* __restrict dst, int64_t n) {
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) dst[i] = widen(src[i]);
}

// Eight floats: the expand's unit. GCC lowers it to one AVX register, or two SSE ones.
typedef float v8f __attribute__((vector_size(32)));
typedef int v8i __attribute__((vector_size(32)));
typedef uint32_t v8u __attribute__((vector_size(32)));
typedef uint16_t v8h __attribute__((vector_size(16)));

LORAMUX_INLINE v8f load8(const float* p) {
  v8f v;
  std::memcpy(&v, p, sizeof v);
  return v;
}
LORAMUX_INLINE v8f load8(const uint16_t* p) {
  v8h v;
  std::memcpy(&v, p, sizeof v);
  return (v8f)(__builtin_convertvector(v, v8u) << 16);
}

LORAMUX_INLINE v8f hadd(v8f a, v8f b) {  // as _mm256_hadd_ps
  const v8i even = {0, 2, 8, 10, 4, 6, 12, 14}, odd = {1, 3, 9, 11, 5, 7, 13, 15};
  return __builtin_shuffle(a, b, even) + __builtin_shuffle(a, b, odd);
}

// Lane i: the sum of a[i]'s lanes (eight dot products finished at once).
LORAMUX_INLINE v8f sums8(const v8f* a) {
  const v8f u0 = hadd(hadd(a[0], a[1]), hadd(a[2], a[3]));
  const v8f u1 = hadd(hadd(a[4], a[5]), hadd(a[6], a[7]));
  const v8i low = {0, 1, 2, 3, 8, 9, 10, 11}, high = {4, 5, 6, 7, 12, 13, 14, 15};
  return __builtin_shuffle(u0, u1, low) + __builtin_shuffle(u0, u1, high);
}

LORAMUX_INLINE void add8(float* y, v8f v) {
  v += load8(y);
  std::memcpy(y, &v, sizeof v);
}
LORAMUX_INLINE void add8(uint16_t* y, v8f v) {  // round to nearest even, NaN stays NaN
  v += load8(y);
  v8u bits;
  std::memcpy(&bits, &v, sizeof bits);
  const v8u rounded = (bits + 0x7fffu + ((bits >> 16) & 1u)) >> 16;
  const v8u nan = (bits & 0x7fffffffu) > 0x7f800000u;  // all ones where NaN
  const v8h out = __builtin_convertvector((rounded & ~nan) | (0x7fc0u & nan), v8h);
  std::memcpy(y, &out, sizeof out);
}

constexpr int64_t kMaxQuads = 8;  // ranks up to 64 keep h in registers

// y[o] += B[o] . h for the n outputs of one slice and one row. A rank is short (8 to 64), so a
// dot per output would spend more on its horizontal sum than on its products: eight outputs'
// sums are finished together instead. `quads` eight-value pieces of each B row are read (the
// rank rounded up to 8: h is zero-padded there, and the caller checked B's rows are that long).
template <typename W, typename T>
LORAMUX_INLINE void expand_row(const W* __restrict b, int64_t b_row, const float* __restrict h,
                               int64_t rank, int64_t quads, T* __restrict y, int64_t n) {
  int64_t o = 0;
  if (quads > 0 && quads <= kMaxQuads) {
    v8f hq[kMaxQuads];
    for (int64_t q = 0; q < quads; ++q) hq[q] = load8(h + 8 * q);
    for (; o + 8 <= n; o += 8) {
      v8f acc[8];
      for (int i = 0; i < 8; ++i) {
        const W* row = b + (o + i) * b_row;
        v8f s = load8(row) * hq[0];
        for (int64_t q = 1; q < quads; ++q) s += load8(row + 8 * q) * hq[q];
        acc[i] = s;
      }
      add8(y + o, sums8(acc));
    }
  }
  for (; o < n; ++o) y[o] = narrow(widen(y[o]) + dot(b + o * b_row, h, rank), y);
}

// W: weight element (float or bf16 bits); T: activation element.
template <typename W, typename T>
void run_item(const Layer& L, const Item& item, const int64_t* order, Scratch& scratch) {
  const int64_t slot = item.slot, m = item.rows, in = L.in;
  const int64_t rank = std::min<int64_t>(L.ranks[slot], L.padded_rank);
  if (rank <= 0 || m <= 0) return;
  const int64_t* rows = order + item.begin;

  // The rows' inputs as fp32 (read in place when they already are).
  scratch.inputs.resize(m);
  if constexpr (std::is_same_v<T, float>) {
    for (int64_t c = 0; c < m; ++c)
      scratch.inputs[c] = static_cast<const float*>(L.x) + rows[c] * L.x_row;
  } else {
    scratch.x.resize(m * in);
    for (int64_t c = 0; c < m; ++c) {
      to_float(static_cast<const T*>(L.x) + rows[c] * L.x_row, scratch.x.data() + c * in, in);
      scratch.inputs[c] = scratch.x.data() + c * in;
    }
  }
  const float* const* xs = scratch.inputs.data();

  // Shrink: h[c, j * stride + k] = scale * A_j[slot][k] . x[c], zero from `rank` to `stride`.
  const int64_t padded = (rank + 7) / 8 * 8;
  const bool vector = padded <= L.padded_rank;  // B's rows hold the rounded-up rank
  const int64_t stride = vector ? padded : rank, quads = vector ? padded / 8 : 0;
  const int64_t width = L.slices * stride;
  scratch.h.assign(m * width, 0.f);
  float* h = scratch.h.data();
  for (int64_t j = 0; j < L.slices; ++j) {
    const Slice& s = L.s[j];
    for (int64_t k = 0; k < rank; ++k) {
      const W* a = static_cast<const W*>(s.a) + slot * s.a_slot + k * s.a_row;
      float* hk = h + j * stride + k;
      int64_t c = 0;
      for (; c + 4 <= m; c += 4) {
        float out[4];
        dot4(a, xs[c], xs[c + 1], xs[c + 2], xs[c + 3], in, out);
        for (int q = 0; q < 4; ++q) hk[(c + q) * width] = L.scale * out[q];
      }
      for (; c < m; ++c) hk[c * width] = L.scale * dot(a, xs[c], in);
    }
  }

  // Expand: y[c, offset_j + o] += B_j[slot][o] . h[c, j * stride :]
  for (int64_t j = 0; j < L.slices; ++j) {
    const Slice& s = L.s[j];
    const W* b = static_cast<const W*>(s.b) + slot * s.b_slot;
    for (int64_t c = 0; c < m; ++c)
      expand_row(b, s.b_row, h + c * width + j * stride, rank, quads,
                 static_cast<T*>(L.y) + rows[c] * L.y_row + s.offset, s.common);
  }
}

// The entry point of this ISA: one item, the element types picked at run time.
inline void run(const Layer& L, const Item& item, const int64_t* order, Scratch& scratch) {
  if (L.bf16_weights) {
    if (L.bf16_activations) run_item<uint16_t, uint16_t>(L, item, order, scratch);
    else run_item<uint16_t, float>(L, item, order, scratch);
  } else {
    if (L.bf16_activations) run_item<float, uint16_t>(L, item, order, scratch);
    else run_item<float, float>(L, item, order, scratch);
  }
}

#undef LORAMUX_INLINE

}  // namespace LORAMUX_ISA
}  // namespace loramux
