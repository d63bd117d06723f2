// Sparse training kernels for a masked convolution (a linear layer is a 1x1 convolution over one "image" whose
// positions are the batch's rows): the forward, the gradient with respect to the input and the gradient with respect
// to the kept weights, each doing the work of the non-zero weights only. train/sparse.py lays the tensors out.
//
// Two kernels do all three. On an input padded once (and split into its stride's phase planes, so every convolution
// is a stride-1 one), an output row laid out at the padded input's width makes each kept weight one contiguous
// shifted read of the whole plane: `flat_correlate` sums weight x shifted plane in vector registers with no bounds
// at all (the columns past the output's width are computed and dropped), and `flat_dot` dots a gradient plane (zeros
// in those columns) with each shifted plane. A kernel gets the kept weights grouped by the plane they write (`rows`:
// output channels for the forward and the weight gradient, input channels for the input gradient) with each one's
// offset into the flat source. Each parallelises over planes it alone writes (an output channel of one image; for
// the weight gradient, images, with one accumulator row per thread), so no two threads write one float and the
// sums' order is fixed by the thread count alone.
#include <omp.h>
#include <stddef.h>
#include <stdint.h>
#include <vector>

typedef int64_t i64;

#if defined(__AVX512F__)
enum { V = 16 };
#elif defined(__AVX__)
enum { V = 8 };
#else
enum { V = 4 };
#endif
enum { CHUNK = 4 * V };  // floats a plane is processed in: four vector registers of accumulators
typedef float vec __attribute__((vector_size(4 * V), aligned(4)));
static inline vec load(const float* p) { return *(const vec*)p; }

extern "C" {

int sparsearch_training_chunk() { return CHUNK; }

// The layout moves around the kernels, in one parallel pass each: `planes` planes of H x W into planes of h x w at
// (top, left) with zeros around them, and back (the first `rows` x `cols` of planes `plane` floats apart whose rows
// are `stride` apart).
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

void crop_planes(i64 planes, i64 rows, i64 cols, const float* src, i64 stride, i64 plane, float* dst, int threads) {
#pragma omp parallel for schedule(static) num_threads(threads)
    for (i64 q = 0; q < planes; ++q)
        for (i64 y = 0; y < rows; ++y)
            for (i64 x = 0; x < cols; ++x) dst[(q * rows + y) * cols + x] = src[q * plane + y * stride + x];
}

// out[n, o, p] = bias[o] + sum over kept k of row o: val[k] * src[n, p + off[k]], for p in [0, L) rounded up to CHUNK;
// planes of `out` are `L` apart (a multiple of CHUNK), images of `src` `src_img` apart, with slack past the end
void flat_correlate(i64 N, i64 O, i64 L, i64 src_img, const float* src, const i64* rows, const i64* off,
                    const float* val, const float* bias, float* out, int threads) {
#pragma omp parallel for collapse(2) schedule(static) num_threads(threads)
    for (i64 n = 0; n < N; ++n)
        for (i64 o = 0; o < O; ++o) {
            const float* base = src + n * src_img;
            float* dst = out + (n * O + o) * L;
            const vec b = (vec){} + (bias ? bias[o] : 0.0f);
            for (i64 p0 = 0; p0 < L; p0 += CHUNK) {
                vec a0 = b, a1 = b, a2 = b, a3 = b;
                for (i64 k = rows[o]; k < rows[o + 1]; ++k) {
                    const float* s = base + off[k] + p0;
                    const vec w = (vec){} + val[k];
                    a0 += w * load(s);
                    a1 += w * load(s + V);
                    a2 += w * load(s + 2 * V);
                    a3 += w * load(s + 3 * V);
                }
                *(vec*)(dst + p0) = a0;
                *(vec*)(dst + p0 + V) = a1;
                *(vec*)(dst + p0 + 2 * V) = a2;
                *(vec*)(dst + p0 + 3 * V) = a3;
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
                for (i64 k = rows[o]; k < rows[o + 1]; ++k) {
                    const float* s = base + off[k];
                    vec a0 = (vec){}, a1 = (vec){}, a2 = (vec){}, a3 = (vec){};
                    i64 p0 = 0;
                    for (; p0 + CHUNK <= L; p0 += CHUNK) {
                        a0 += load(grad + p0) * load(s + p0);
                        a1 += load(grad + p0 + V) * load(s + p0 + V);
                        a2 += load(grad + p0 + 2 * V) * load(s + p0 + 2 * V);
                        a3 += load(grad + p0 + 3 * V) * load(s + p0 + 3 * V);
                    }
                    for (; p0 + V <= L; p0 += V) a0 += load(grad + p0) * load(s + p0);
                    const vec a = (a0 + a1) + (a2 + a3);
                    float sum = 0.0f;
                    for (int i = 0; i < V; ++i) sum += a[i];
                    for (; p0 < L; ++p0) sum += grad[p0] * s[p0];
                    mine[k] += sum;
                }
            }
    }
    for (i64 k = 0; k < nnz; ++k) {
        float s = 0.0f;
        for (int t = 0; t < T; ++t) s += partial[(size_t)t * nnz + k];
        dw[k] = s;
    }
}
}
