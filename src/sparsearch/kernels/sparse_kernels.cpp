// Sparse training kernels for a masked convolution (a linear layer is a 1x1 convolution over one "image" whose
// positions are the batch's rows): the forward, the gradient with respect to the input and the gradient with respect
// to the kept weights, each doing the work of the non-zero weights only. train/sparse.py lays the tensors out.
//
// Every convolution is made a stride-1 one over an input padded once (and split into its stride's phase planes). The
// forward and the input gradient are then the inference engine's tile (conv_tile.h): `tile_correlate` keeps R output
// rows x TX columns of one output plane in registers while each kept weight adds weight x its shifted read, and stores
// the tile straight into the dense output; a 1x1 stride-1 convolution (a linear layer among them) instead runs
// `pointwise`, tiles of positions over every output channel, unpadded. The weight gradient, `flat_dot`, lays each
// output row at the padded input's width, so a kept weight's gradient is one dot product of the gradient plane (zeros
// in the extra columns) with one contiguous shifted read of the input plane; kept weights of one output channel go in
// blocks that share each load of the gradient. Each kernel parallelises over what it alone writes (an output plane of
// one image, or `pointwise`'s tile of positions; for the weight gradient, images, with one accumulator row per
// thread), so no two threads write one float and the sums' order is fixed by the thread count alone. BatchNorm's
// training-mode forward and backward on the same NCHW planes close the file (train/batchnorm.py).
#include "conv_tile.h"
#include <math.h>
#include <omp.h>
#include <stddef.h>
#include <stdint.h>
#include <vector>
#if defined(__AVX512F__)
#include <immintrin.h>
#endif

enum { V = WIDEST };
typedef Vec<V>::type vec;
static inline vec load(const float* p) { return *(const vec*)p; }

static inline float hsum(vec a) {
    float s = 0.0f;
    for (int i = 0; i < V; ++i) s += a[i];
    return s;
}

// B kept weights of one output channel at once: each load of the gradient plane serves B products
template <int B>
static inline void dot_block(const float* grad, const float* base, const i64* off, i64 L, float* acc) {
    vec a[B][2];
    const float* s[B];
    for (int b = 0; b < B; ++b) a[b][0] = a[b][1] = (vec){}, s[b] = base + off[b];
    i64 p = 0;
    for (; p + 2 * V <= L; p += 2 * V) {
        const vec g0 = load(grad + p), g1 = load(grad + p + V);
        for (int b = 0; b < B; ++b) {
            a[b][0] += g0 * load(s[b] + p);
            a[b][1] += g1 * load(s[b] + p + V);
        }
    }
    if (p + V <= L) {
        const vec g0 = load(grad + p);
        for (int b = 0; b < B; ++b) a[b][0] += g0 * load(s[b] + p);
        p += V;
    }
#if defined(__AVX512F__)
    if (p < L) {  // the last L - p < 16 floats in one masked vector (masked-off lanes are not read: no fault past the end)
        const __mmask16 m = (__mmask16)((1u << (L - p)) - 1);
        const vec g0 = (vec)_mm512_maskz_loadu_ps(m, grad + p);
        for (int b = 0; b < B; ++b) a[b][1] += g0 * (vec)_mm512_maskz_loadu_ps(m, s[b] + p);
        p = L;
    }
#endif
    for (int b = 0; b < B; ++b) {
        float sum = hsum(a[b][0] + a[b][1]);
        for (i64 q = p; q < L; ++q) sum += grad[q] * s[b][q];
        acc[b] += sum;
    }
}

enum { BLOCK = V == 16 ? 8 : 4 };  // accumulators: 2 x BLOCK vector registers of the 32 (AVX-512) or 16

extern "C" {

// The layout the kernels read, in one parallel pass: `planes` planes of H x W into planes of h x w at (top, left)
// with zeros around them.
void pad_planes(i64 planes, i64 H, i64 W, const float* src, i64 top, i64 left, i64 h, i64 w, float* dst, int threads) {
#pragma omp parallel for schedule(static) num_threads(threads)
    for (i64 q = 0; q < planes; ++q) {
        const float* in = src + q * H * W;
        float* out = dst + q * h * w;
        for (i64 y = 0; y < h; ++y) {
            float* row = out + y * w;
            const i64 iy = y - top;
            if (iy < 0 || iy >= H) {
                for (i64 x = 0; x < w; ++x) row[x] = 0.0f;
                continue;
            }
            for (i64 x = 0; x < left; ++x) row[x] = 0.0f;
            for (i64 x = 0; x < W; ++x) row[left + x] = in[iy * W + x];
            for (i64 x = left + W; x < w; ++x) row[x] = 0.0f;
        }
    }
}

// out[n, o, y, x] (dense planes of OH x OW) = bias[o] + sum over kept k of row o: val[k] * src[n, y * src_row + x +
// off[k]], images of `src` `src_img` apart, in tiles of R x TX (a shape conv_tile.h compiles)
void tile_correlate(i64 N, i64 O, i64 OH, i64 OW, i64 src_img, i64 src_row, const float* src, const i64* rows,
                    const int32_t* off, const float* val, const float* bias, float* out, int R, int TX, int threads) {
    const tile_fn full = pick<1, false>(R, TX), row = pick<1, false>(1, TX);
#pragma omp parallel for collapse(2) schedule(static) num_threads(threads)
    for (i64 n = 0; n < N; ++n)
        for (i64 o = 0; o < O; ++o) {
            const float b = bias ? bias[o] : 0.0f;
            const i64 k0 = rows[o];
            const int nnz = (int)(rows[o + 1] - k0);
            const float* base = src + n * src_img;
            float* plane = out + (n * O + o) * OH * OW;
            for (i64 y0 = 0; y0 < OH; y0 += R)
                for (i64 x0 = 0; x0 < OW; x0 += TX) {
                    const int nx = (int)(OW - x0 < TX ? OW - x0 : TX);
                    const float* s = base + y0 * src_row + x0;
                    float* d = plane + y0 * OW + x0;
                    if (y0 + R <= OH) {
                        full(s, src_row, off + k0, val + k0, nnz, b, nullptr, 0, 0, 0.0f, 0.0f, d, OW, nx);
                    } else {
                        for (i64 r = 0; y0 + r < OH; ++r)
                            row(s + r * src_row, src_row, off + k0, val + k0, nnz, b, nullptr, 0, 0, 0.0f, 0.0f,
                                d + r * OW, OW, nx);
                    }
                }
        }
}

// A 1x1 stride-1 convolution (and its input gradient): out[n, o, p] = bias[o] + sum over kept k of row o: val[k] *
// x[n, col[k], p], p < P, planes Ps floats apart (Ps a multiple of 16 at least P: a tile's last vector reads and writes
// whole vectors inside its plane). Threads take tiles of TP positions of one image and run every output channel over
// them, so the tile's input columns (C x TP floats) stay in cache across all the output channels; the whole-plane tile
// above would stream each input plane from L2 once per output channel that keeps it.
enum { TP = 64, NT = TP / V };
}  // extern "C": templates next
template <int NV>  // NV vectors of positions: a plane's last, partial tile computes only the vectors it has
static void pointwise_tile(i64 O, i64 Ps, const float* xs, const i64* rows, const int32_t* col, const float* val,
                           const float* bias, float* os) {
    for (i64 o = 0; o < O; ++o) {
        const float b = bias ? bias[o] : 0.0f;
        vec acc[NV];
        for (int v = 0; v < NV; ++v) acc[v] = (vec){} + b;
        for (i64 k = rows[o]; k < rows[o + 1]; ++k) {
            const float w = val[k];
            const float* src = xs + col[k] * Ps;
            for (int v = 0; v < NV; ++v) acc[v] += w * load(src + v * V);
        }
        for (int v = 0; v < NV; ++v) *(vec*)(os + o * Ps + v * V) = acc[v];
    }
}
extern "C" {

void pointwise(i64 N, i64 O, i64 C, i64 P, i64 Ps, const float* x, const i64* rows, const int32_t* col, const float* val,
               const float* bias, float* out, int threads) {
    const i64 tiles = (P + TP - 1) / TP;
#pragma omp parallel for collapse(2) schedule(static) num_threads(threads)
    for (i64 n = 0; n < N; ++n)
        for (i64 t = 0; t < tiles; ++t) {
            const i64 p0 = t * TP, width = P - p0 < TP ? P - p0 : TP;
            const float* xs = x + n * C * Ps + p0;
            float* os = out + n * O * Ps + p0;
            switch ((width + V - 1) / V) {  // up to NT: 4 vectors of AVX-512, 8 of AVX2, 16 of SSE
#define TILE(K) case K: pointwise_tile<(K < NT ? K : NT)>(O, Ps, xs, rows, col, val, bias, os); break;
                TILE(1) TILE(2) TILE(3) TILE(4) TILE(5) TILE(6) TILE(7) TILE(8)
                TILE(9) TILE(10) TILE(11) TILE(12) TILE(13) TILE(14) TILE(15) TILE(16)
#undef TILE
            }
        }
}

// A linear layer on rows (inference): out[t, o] = bias[o] + sum over kept k of row o: val[k] * x[t, col[k]], x (T x C)
// and out (T x O) row-major, as a transformer's tokens are. x is transposed once into `xt` (C x T, shared), then
// `pointwise`'s tiles run over it, each block of OB output channels kept in a small buffer and written back as rows:
// torch's transposing copies of the same tensors took longer than the product itself.
enum { OB = 16 };
}  // extern "C": a template next
template <int NV>  // NV vectors of positions: a tile's last, partial one computes only the vectors it has
static void rows_block(const float* xt, i64 T, i64 p0, i64 o0, i64 n_o, const i64* rows, const int32_t* col,
                       const float* val, const float* bias, float (*buf)[TP]) {
    for (i64 j = 0; j < n_o; ++j) {
        const i64 o = o0 + j;
        const float bo = bias ? bias[o] : 0.0f;
        vec acc[NV];
        for (int v = 0; v < NV; ++v) acc[v] = (vec){} + bo;
        for (i64 k = rows[o]; k < rows[o + 1]; ++k) {  // reads past the tile's width stay inside xt's slack
            const float w = val[k];
            const float* src = xt + col[k] * T + p0;
            for (int v = 0; v < NV; ++v) acc[v] += w * load(src + v * V);
        }
        for (int v = 0; v < NV; ++v) *(vec*)(&buf[j][v * V]) = acc[v];
    }
}
extern "C" {

void linear_rows(i64 T, i64 O, i64 C, const float* x, const i64* rows, const int32_t* col, const float* val,
                 const float* bias, float* xt, float* out, int threads) {
    const i64 tiles = (T + TP - 1) / TP, blocks = (O + OB - 1) / OB;
#pragma omp parallel num_threads(threads)
    {
#pragma omp for schedule(static)
        for (i64 c0 = 0; c0 < C; c0 += 16)
            for (i64 t = 0; t < T; ++t)
                for (i64 c = c0; c < c0 + 16 && c < C; ++c) xt[c * T + t] = x[t * C + c];
#pragma omp for collapse(2) schedule(static)
        for (i64 tile = 0; tile < tiles; ++tile)
            for (i64 b = 0; b < blocks; ++b) {
                const i64 p0 = tile * TP, width = T - p0 < TP ? T - p0 : TP, o0 = b * OB, n_o = O - o0 < OB ? O - o0 : OB;
                float buf[OB][TP];
                switch ((width + V - 1) / V) {
                    case 1: rows_block<1>(xt, T, p0, o0, n_o, rows, col, val, bias, buf); break;
                    case 2: rows_block<2 < NT ? 2 : NT>(xt, T, p0, o0, n_o, rows, col, val, bias, buf); break;
                    case 3: rows_block<3 < NT ? 3 : NT>(xt, T, p0, o0, n_o, rows, col, val, bias, buf); break;
                    default: rows_block<NT>(xt, T, p0, o0, n_o, rows, col, val, bias, buf); break;
                }
                for (i64 q = 0; q < width; ++q)
                    for (i64 j = 0; j < n_o; ++j) out[(p0 + q) * O + o0 + j] = buf[j][q];
            }
    }
}

// dw[k] = sum over images of sum over p < L of g[n, row(k), p] * src[n, p + off[k]]; g's planes are `g_plane` apart and
// hold zeros where there is no value (the columns past the output's width); reads stop at L
void flat_dot(i64 N, i64 O, i64 L, i64 g_plane, i64 src_img, const float* g, const float* src, const i64* rows,
              const i64* off, i64 nnz, float* dw, int threads) {
    const int T = threads < 1 ? 1 : threads;
    std::vector<float> partial((size_t)T * nnz, 0.0f);
#pragma omp parallel num_threads(T)
    {
        float* mine = partial.data() + (size_t)omp_get_thread_num() * nnz;
#pragma omp for schedule(static)
        for (i64 n = 0; n < N; ++n)
            for (i64 o = 0; o < O; ++o) {
                const float* grad = g + (n * O + o) * g_plane;
                const float* base = src + n * src_img;
                i64 k = rows[o];
                for (; k + BLOCK <= rows[o + 1]; k += BLOCK) dot_block<BLOCK>(grad, base, off + k, L, mine + k);
                for (; k < rows[o + 1]; ++k) dot_block<1>(grad, base, off + k, L, mine + k);
            }
    }
    for (i64 k = 0; k < nnz; ++k) {
        float s = 0.0f;
        for (int t = 0; t < T; ++t) s += partial[(size_t)t * nnz + k];
        dw[k] = s;
    }
}

// BatchNorm in training mode on NCHW planes (x: N x C x P), the statistics the batch's: PyTorch's CPU kernel for this
// layout takes 3-5x longer (one pass for the sums, one for the output, in each direction). Sums are of x minus the
// channel's first value, so E[d^2] - E[d]^2 keeps its precision whatever the mean; each channel is one thread's.
void batchnorm_forward(i64 N, i64 C, i64 P, const float* x, const float* gamma, const float* beta, float eps, float* y,
                       float* mean, float* invstd, float* var, int threads) {
#pragma omp parallel for schedule(static) num_threads(threads)
    for (i64 c = 0; c < C; ++c) {
        const float k = x[c * P];
        double s1 = 0.0, s2 = 0.0;
        for (i64 n = 0; n < N; ++n) {
            const float* p = x + (n * C + c) * P;
            float a1 = 0.0f, a2 = 0.0f;
#pragma omp simd reduction(+ : a1, a2)
            for (i64 i = 0; i < P; ++i) {
                const float d = p[i] - k;
                a1 += d;
                a2 += d * d;
            }
            s1 += a1, s2 += a2;
        }
        const double M = (double)N * P, m1 = s1 / M, v = s2 / M - m1 * m1 > 0 ? s2 / M - m1 * m1 : 0.0;
        mean[c] = (float)(k + m1), var[c] = (float)v, invstd[c] = (float)(1.0 / sqrt(v + eps));
        const float scale = invstd[c] * (gamma ? gamma[c] : 1.0f), shift = (beta ? beta[c] : 0.0f) - mean[c] * scale;
        for (i64 n = 0; n < N; ++n) {
            const float* p = x + (n * C + c) * P;
            float* q = y + (n * C + c) * P;
#pragma omp simd
            for (i64 i = 0; i < P; ++i) q[i] = p[i] * scale + shift;
        }
    }
}

// dx = gamma * invstd * (dy - mean(dy) - xhat * mean(dy * xhat)), dgamma = sum(dy * xhat), dbeta = sum(dy); any of the
// three outputs may be null
void batchnorm_backward(i64 N, i64 C, i64 P, const float* x, const float* dy, const float* mean, const float* invstd,
                        const float* gamma, float* dx, float* dgamma, float* dbeta, int threads) {
#pragma omp parallel for schedule(static) num_threads(threads)
    for (i64 c = 0; c < C; ++c) {
        const float mu = mean[c];
        double s1 = 0.0, s2 = 0.0;
        for (i64 n = 0; n < N; ++n) {
            const float* p = x + (n * C + c) * P;
            const float* d = dy + (n * C + c) * P;
            float a1 = 0.0f, a2 = 0.0f;
#pragma omp simd reduction(+ : a1, a2)
            for (i64 i = 0; i < P; ++i) {
                a1 += d[i];
                a2 += d[i] * (p[i] - mu);
            }
            s1 += a1, s2 += a2;
        }
        const float is = invstd[c];
        if (dbeta) dbeta[c] = (float)s1;
        if (dgamma) dgamma[c] = (float)(s2 * is);
        if (!dx) continue;
        const double M = (double)N * P;
        const float k1 = (gamma ? gamma[c] : 1.0f) * is, mean_dy = (float)(s1 / M), k2 = (float)(s2 / M) * is * is;
        for (i64 n = 0; n < N; ++n) {
            const float* p = x + (n * C + c) * P;
            const float* d = dy + (n * C + c) * P;
            float* q = dx + (n * C + c) * P;
#pragma omp simd
            for (i64 i = 0; i < P; ++i) q[i] = k1 * (d[i] - mean_dy - (p[i] - mu) * k2);
        }
    }
}
}
