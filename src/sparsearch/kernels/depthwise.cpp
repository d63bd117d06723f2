// Depthwise convolution on channels-last (NHWC) activations, for training: a correlation (the gradient with respect
// to the input; the forward stays torch's, faster at these sizes) and the gradient with respect to the weights.
// kernels/depthwise.py lays the tensors out.
//
// The input is padded once and split into its stride's phase planes (as the sparse kernels do), so every tap of
// every output reads at a fixed offset: an output row of OW x C floats is, for tap t, the input row shifted by
// off[t] times the tap's weights, which repeat every C floats. The row goes in blocks of L = NV vectors (L a
// multiple of C, so a block's weights are the same for every block: `wrep` holds them repeated), the blocks of RB
// rows at once with their accumulators in registers over all taps, each tap's weights loaded once for the RB rows.
// The input gradient is the same correlation of the padded output gradient with the taps of each phase plane
// (offsets mirrored); the weight gradient is, per tap, a dot product of output-gradient rows with shifted input
// rows, kept per lane (L of them) and folded to C at the end. A row's last, partial block reads past the row's end
// (into the next row, or `slack` zeros after a buffer's last). Threads take whole rows (the weight gradient: with
// one accumulator set per thread), so no two threads write one float and the sums' order depends on the thread
// count alone.
#include "conv_tile.h"
#include <omp.h>
#include <stddef.h>
#include <string.h>
#include <vector>

enum { V = WIDEST };
typedef Vec<V>::type vec;
static inline vec load(const float* p) { return *(const vec*)p; }
static inline void store(float* p, vec a) { *(vec*)p = a; }

// RB rows of `out` from y, block j: acc[r][v] over all taps, each tap's weights loaded once for the RB rows
template <int NV, int RB>
static inline void block(const float* base, i64 row, int T, const i64* off, const float* wrep, i64 j, vec (&acc)[RB][NV]) {
    const i64 L = NV * V;
    for (int r = 0; r < RB; ++r)
        for (int v = 0; v < NV; ++v) acc[r][v] = (vec){};
    for (int t = 0; t < T; ++t) {
        vec w[NV];
        for (int v = 0; v < NV; ++v) w[v] = load(wrep + t * L + v * V);
        const float* s = base + off[t] + j;
        for (int r = 0; r < RB; ++r)
            for (int v = 0; v < NV; ++v) acc[r][v] += load(s + r * row + v * V) * w[v];
    }
}

// out rows y..y+RB of one image: full blocks stored in place, the last partial block (a row's R floats need not
// fill one; its reads run past the row, into the next row or the buffer's slack) through a local copy
template <int NV, int RB>
static inline void rows(const float* base, i64 row, i64 R, int T, const i64* off, const float* wrep, float* o) {
    const i64 L = NV * V;
    vec acc[RB][NV];
    i64 j = 0;
    for (; j + L <= R; j += L) {
        block<NV, RB>(base, row, T, off, wrep, j, acc);
        for (int r = 0; r < RB; ++r)
            for (int v = 0; v < NV; ++v) store(o + r * R + j + v * V, acc[r][v]);
    }
    if (j < R) {
        block<NV, RB>(base, row, T, off, wrep, j, acc);
        for (int r = 0; r < RB; ++r) {
            float tail[NV * V];
            for (int v = 0; v < NV; ++v) store(tail + v * V, acc[r][v]);
            memcpy(o + r * R + j, tail, sizeof(float) * (R - j));
        }
    }
}

// out[n, y, j] = sum over taps t of src[n * img + y * row + off[t] + j] * wrep[t * L + j % L], rows of R floats
template <int NV>
static void correlate(i64 N, i64 H, i64 R, i64 img, i64 row, const float* src, int T, const i64* off,
                      const float* wrep, float* out, int threads) {
    // rows sharing each weight load: RB x NV accumulators within half the vector registers (32 AVX-512, 16 else)
    enum { HALF = V == 16 ? 16 : 8, RB = 4 * NV <= HALF ? 4 : 2 * NV <= HALF ? 2 : 1 };
    const i64 groups = (H + RB - 1) / RB;
#pragma omp parallel for collapse(2) schedule(static) num_threads(threads)
    for (i64 n = 0; n < N; ++n)
        for (i64 q = 0; q < groups; ++q) {
            const i64 y = q * RB;
            const float* base = src + n * img + y * row;
            float* o = out + (n * H + y) * R;
            if (y + RB <= H) {
                rows<NV, RB>(base, row, R, T, off, wrep, o);
            } else {
                for (i64 r = 0; y + r < H; ++r) rows<NV, 1>(base + r * row, row, R, T, off, wrep, o + r * R);
            }
        }
}

// dw[t * C + c] = sum over n, y and j with j % C == c of g[n, y, j] * src[n * img + y * row + off[t] + j]
template <int NV>
static void weight_grad(i64 N, i64 H, i64 R, i64 C, i64 img, i64 row, const float* src, int T, const i64* off,
                        const float* g, float* dw, int threads) {
    const i64 L = NV * V, full = R - R % L;
    const int P = threads < 1 ? 1 : threads;
    std::vector<float> partial((size_t)P * T * L, 0.0f);
#pragma omp parallel num_threads(P)
    {
        float* mine = partial.data() + (size_t)omp_get_thread_num() * T * L;
#pragma omp for collapse(2) schedule(static)
        for (i64 n = 0; n < N; ++n)
            for (i64 y = 0; y < H; ++y) {
                const float* base = src + n * img + y * row;
                const float* grad = g + (n * H + y) * R;
                for (int t = 0; t < T; ++t) {
                    float* a = mine + t * L;
                    const float* s = base + off[t];
                    vec acc[NV];
                    for (int v = 0; v < NV; ++v) acc[v] = load(a + v * V);
                    for (i64 j = 0; j < full; j += L)
                        for (int v = 0; v < NV; ++v) acc[v] += load(grad + j + v * V) * load(s + j + v * V);
                    if (full < R) {  // the partial block: its gradient zero-padded, the input read past the row
                        float tail[NV * V] = {};
                        memcpy(tail, grad + full, sizeof(float) * (R - full));
                        for (int v = 0; v < NV; ++v) acc[v] += load(tail + v * V) * load(s + full + v * V);
                    }
                    for (int v = 0; v < NV; ++v) store(a + v * V, acc[v]);
                }
            }
    }
    for (int t = 0; t < T; ++t)
        for (i64 c = 0; c < C; ++c) {
            float sum = 0.0f;
            for (int p = 0; p < P; ++p)
                for (i64 m = c; m < L; m += C) sum += partial[((size_t)p * T + t) * L + m];
            dw[t * C + c] = sum;
        }
}

typedef void (*correlate_fn)(i64, i64, i64, i64, i64, const float*, int, const i64*, const float*, float*, int);
typedef void (*weight_fn)(i64, i64, i64, i64, i64, i64, const float*, int, const i64*, const float*, float*, int);
enum { MOST = 9 };  // blocks of up to 9 vectors: 9 accumulators and the loads fit AVX2's 16 registers
static const correlate_fn CORRELATE[MOST + 1] = {nullptr, correlate<1>, correlate<2>, correlate<3>, correlate<4>,
                                                 correlate<5>, correlate<6>, correlate<7>, correlate<8>, correlate<9>};
static const weight_fn WEIGHT[MOST + 1] = {nullptr, weight_grad<1>, weight_grad<2>, weight_grad<3>, weight_grad<4>,
                                           weight_grad<5>, weight_grad<6>, weight_grad<7>, weight_grad<8>, weight_grad<9>};

extern "C" {

int vector_width() { return V; }
int most_vectors() { return MOST; }
// the floats past a source buffer's last row that a partial block may read (zeros there)
int slack() { return MOST * V; }

// blocks of `nv` vectors (1 <= nv <= most_vectors(); nv * vector_width() a multiple of the channel count)
void depthwise_correlate(int nv, i64 N, i64 H, i64 R, i64 img, i64 row, const float* src, int T, const i64* off,
                         const float* wrep, float* out, int threads) {
    CORRELATE[nv](N, H, R, img, row, src, T, off, wrep, out, threads);
}

void depthwise_weight_grad(int nv, i64 N, i64 H, i64 R, i64 C, i64 img, i64 row, const float* src, int T,
                           const i64* off, const float* g, float* dw, int threads) {
    WEIGHT[nv](N, H, R, C, img, row, src, T, off, g, dw, threads);
}
}
