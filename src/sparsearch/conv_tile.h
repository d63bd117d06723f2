// The convolution tile both native libraries run (the inference engine, runtime/engine.cpp, and the sparse training
// kernels, kernels/sparse_kernels.cpp; `native.shared_headers` puts this file beside each when it is built): output-stationary, a tile of R output rows x TX columns of one output channel
// in registers while every kept weight adds weight x the shifted input (one broadcast and R x TX / vector-width fused
// multiply-adds), stored once with bias, residual and activation applied. `pick` returns the compiled tile shapes.
#pragma once
#include <stdint.h>

typedef int64_t i64;

// Activations by code (runtime/graph.py's ACT): 1 clamp to [lo, hi] (ReLU, ReLU6), 2 SiLU, 3 sigmoid; 0 none.
enum { CLAMP = 1, SILU = 2, SIGMOID = 3 };

// e^x for a vector (or a float) of any width: 2^k e^f with k = round(x / ln 2), ln 2 split in two so f is exact, e^f
// by its Taylor series to degree 6 (|f| <= ln 2 / 2: relative error ~1e-7), 2^k built in the exponent bits.
template <class vec> static inline vec splat(float x) { return (vec){} + x; }  // every lane x (a float: x)
template <class ivec, class vec> static inline ivec to_ints(vec k) { return __builtin_convertvector(k, ivec); }
template <> inline int32_t to_ints<int32_t, float>(float k) { return (int32_t)k; }

template <class vec, class ivec>
static inline vec exp_approx(vec x) {
    x = x < splat<vec>(-87.0f) ? splat<vec>(-87.0f) : x;
    x = x > splat<vec>(88.0f) ? splat<vec>(88.0f) : x;
    const vec k = (x * 1.44269504f + 12582912.0f) - 12582912.0f;  // round to nearest (the 1.5 * 2^23 trick)
    const vec f = (x - k * 0.693145751953125f) - k * 1.428606765330187e-06f;
    vec p = splat<vec>(1.0f / 720);
    p = p * f + 1.0f / 120;
    p = p * f + 1.0f / 24;
    p = p * f + 1.0f / 6;
    p = p * f + 0.5f;
    p = p * f + 1.0f;
    p = p * f + 1.0f;
    const ivec bits = (to_ints<ivec, vec>(k) + 127) << 23;
    vec scale;
    __builtin_memcpy(&scale, &bits, sizeof scale);
    return p * scale;
}

template <class vec, class ivec>
static inline vec activate(vec v, int act, float lo, float hi) {
    if (act == CLAMP) {
        v = v < splat<vec>(lo) ? splat<vec>(lo) : v;
        return v > splat<vec>(hi) ? splat<vec>(hi) : v;
    }
    if (act == SILU || act == SIGMOID) {
        const vec s = 1.0f / (1.0f + exp_approx<vec, ivec>(-v));
        return act == SILU ? v * s : s;
    }
    return v;
}

// Explicit vectors (GCC/Clang vector extensions; unaligned: rows start anywhere): the tile's shape is fixed at
// compile time, so its accumulators are registers whatever the auto-vectoriser would have done.
#if defined(__AVX512F__)
enum { WIDEST = 16 };
#elif defined(__AVX__)
enum { WIDEST = 8 };
#else
enum { WIDEST = 4 };
#endif
template <int V> struct Vec;
template <> struct Vec<16> {
    typedef float type __attribute__((vector_size(64), aligned(4)));
    typedef int32_t ints __attribute__((vector_size(64)));
};
template <> struct Vec<8> {
    typedef float type __attribute__((vector_size(32), aligned(4)));
    typedef int32_t ints __attribute__((vector_size(32)));
};
template <> struct Vec<4> {
    typedef float type __attribute__((vector_size(16), aligned(4)));
    typedef int32_t ints __attribute__((vector_size(16)));
};
template <> struct Vec<1> {
    typedef float type;
    typedef int32_t ints;
};

template <int V, int S> struct Load {  // V lanes from p, p + S, p + 2S, ...
    static inline typename Vec<V>::type at(const float* p) { return *(const typename Vec<V>::type*)p; }
};
template <> struct Load<1, 2> { static inline float at(const float* p) { return *p; } };
template <> struct Load<4, 2> {
    static inline Vec<4>::type at(const float* p) {
        Vec<4>::type a = Load<4, 1>::at(p), b = Load<4, 1>::at(p + 4);
        return __builtin_shufflevector(a, b, 0, 2, 4, 6);
    }
};
template <> struct Load<8, 2> {
    static inline Vec<8>::type at(const float* p) {
        Vec<8>::type a = Load<8, 1>::at(p), b = Load<8, 1>::at(p + 8);
        return __builtin_shufflevector(a, b, 0, 2, 4, 6, 8, 10, 12, 14);
    }
};
template <> struct Load<16, 2> {
    static inline Vec<16>::type at(const float* p) {
        Vec<16>::type a = Load<16, 1>::at(p), b = Load<16, 1>::at(p + 16);
        return __builtin_shufflevector(a, b, 0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
    }
};

#if defined(__AVX512F__)
#include <immintrin.h>
// One output (a linear layer or a convolution on a 1x1 map, one image): a dot product of the kept weights with the
// inputs they read, 16 at a time, gathered unless consecutive (MobileNetV2's dense 1280 x 1000 classifier: 1.4 ms as
// one scalar multiply-add a weight, 0.49 gathered, 0.29 loaded).
template <bool IN_RELU>
static inline float gathered_dot(const float* __restrict in, const int32_t* __restrict off, const float* __restrict val,
                                 int nnz) {
    __m512 acc = _mm512_setzero_ps();
    int k = 0;
    for (; k + 16 <= nnz; k += 16) {
        // offsets ascend, so 16 spanning 15 are consecutive (a dense row): one load, not a gather
        __m512 x = off[k + 15] - off[k] == 15 ? _mm512_loadu_ps(in + off[k])
                                              : _mm512_i32gather_ps(_mm512_loadu_si512((const void*)(off + k)), in, 4);
        if (IN_RELU) x = _mm512_max_ps(x, _mm512_setzero_ps());
        acc = _mm512_fmadd_ps(_mm512_loadu_ps(val + k), x, acc);
    }
    float sum = _mm512_reduce_add_ps(acc);
    for (; k < nnz; ++k) {
        float x = in[off[k]];
        if (IN_RELU) x = x < 0 ? 0.0f : x;
        sum += val[k] * x;
    }
    return sum;
}
#endif

template <int R, int TX, int S, bool IN_RELU>
static void conv_tile(const float* __restrict in, i64 irow, const int32_t* __restrict off, const float* __restrict val,
                      int nnz, float bias, const float* __restrict res, i64 rrow, int act, float lo, float hi,
                      float* __restrict out, i64 orow, int nx) {
#if defined(__AVX512F__)
    if constexpr (R == 1 && TX == 1) {
        float v = bias + gathered_dot<IN_RELU>(in, off, val, nnz);
        if (res) v += *res;
        *out = activate<float, int32_t>(v, act, lo, hi);
        return;
    }
#endif
    constexpr int V = TX < WIDEST ? TX : WIDEST, J = TX / V;
    typedef typename Vec<V>::type vec;
    vec acc[R][J];
    for (int r = 0; r < R; ++r)
        for (int j = 0; j < J; ++j) acc[r][j] = (vec){} + bias;
    for (int k = 0; k < nnz; ++k) {
        const vec w = (vec){} + val[k];
        const float* src = in + off[k];
        for (int r = 0; r < R; ++r)
            for (int j = 0; j < J; ++j) {
                vec x = Load<V, S>::at(src + r * S * irow + j * V * S);
                if (IN_RELU) x = x < 0 ? (vec){} : x;  // the ReLU a DARTS operation starts with, applied as it reads
                acc[r][j] += w * x;
            }
    }
    const vec lov = splat<vec>(lo), hiv = splat<vec>(hi);
    for (int r = 0; r < R; ++r) {
        float* o = out + r * orow;
        for (int j = 0; j < J; ++j) {
            vec v = acc[r][j];
            if (res) v += Load<V, 1>::at(res + r * rrow + j * V);
            if (act == CLAMP) {  // the common case inline (as `activate` has it), the exp ones out of the way
                v = v < lov ? lov : v;
                v = v > hiv ? hiv : v;
            } else if (act) {
                v = activate<vec, typename Vec<V>::ints>(v, act, lo, hi);
            }
            if (nx == TX) {
                *(vec*)(o + j * V) = v;
            } else {
                float lanes[V];
                __builtin_memcpy(lanes, &v, sizeof lanes);
                for (int x = j * V; x < nx && x < (j + 1) * V; ++x) o[x] = lanes[x - j * V];
            }
        }
    }
}

typedef void (*tile_fn)(const float*, i64, const int32_t*, const float*, int, float, const float*, i64, int, float, float,
                        float*, i64, int);

template <int S, bool IN_RELU>
static tile_fn pick(int r, int tx) {
#define CASE(RR, TT) if (r == RR && tx == TT) return conv_tile<RR, TT, S, IN_RELU>;
    // native.py's ROWS: every shape tile_shape can pick
    CASE(1, 64) CASE(2, 64) CASE(4, 64) CASE(1, 32) CASE(2, 32) CASE(4, 32) CASE(7, 32) CASE(8, 32)
    CASE(1, 16) CASE(2, 16) CASE(4, 16) CASE(7, 16) CASE(8, 16) CASE(14, 16) CASE(16, 16)
    CASE(1, 8) CASE(2, 8) CASE(4, 8) CASE(7, 8) CASE(8, 8) CASE(1, 4) CASE(2, 4) CASE(4, 4) CASE(8, 4) CASE(1, 1)
#undef CASE
    return nullptr;
}

