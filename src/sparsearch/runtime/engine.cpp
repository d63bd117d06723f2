// The whole-network engine's kernels (see runtime/plan.py for the plan they run).
//
// A plan is an array of fixed-size int64 records, one per operation, run in one OpenMP parallel region:
// each operation splits its work with `omp for` (whose barrier orders it before the next), so an operation
// costs microseconds of overhead, not a Python call. Tensors live in buffers laid out channel-major,
// (C, N, H + 2P, W + 2P), zero-padded by as much as their consumers need, so convolutions read their padding
// from memory and concatenation is producers writing into channel slices of one buffer.
//
// The convolution is output-stationary, in tiles (conv_tile.h, shared with the sparse training kernels).
// Dense weights are the same loop with every tap present; depthwise and grouped layers differ only in which
// input channel a weight reads, which the plan folds into each non-zero's offset.
#include "sparsearch_layout.h"  // the record fields, generated from layout.py
#include "conv_tile.h"          // the convolution tile, shared with the sparse training kernels
#include <omp.h>
#include <stdint.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>


static tile_fn pick_tile(i64 S, bool in_relu, int r, int tx) {
    return S == 1 ? (in_relu ? pick<1, true>(r, tx) : pick<1, false>(r, tx)) : (in_relu ? pick<2, true>(r, tx) : pick<2, false>(r, tx));
}

// One output channel's plane: `in` is the channel's receptive origin (image and padding applied), `res` the
// residual's plane or null; tiles of R rows, the plane's last rows one at a time.
static void plane(const float* in, i64 irow, i64 S, bool in_relu, const int32_t* off, const float* val, int nnz, float b,
                  const float* res, i64 rrow, int act, float lo, float hi, float* out, i64 orow, i64 OH, i64 OW, int R, int TX) {
    const tile_fn full = pick_tile(S, in_relu, R, TX), row = pick_tile(S, in_relu, 1, TX);
    for (i64 y0 = 0; y0 < OH; y0 += R)
        for (i64 x0 = 0; x0 < OW; x0 += TX) {
            const int nx = (int)(OW - x0 < TX ? OW - x0 : TX);
            const float* src = in + y0 * S * irow + x0 * S;
            float* dst = out + y0 * orow + x0;
            const float* rs = res ? res + y0 * rrow + x0 : nullptr;
            if (y0 + R <= OH)
                full(src, irow, off, val, nnz, b, rs, rrow, act, lo, hi, dst, orow, nx);
            else
                for (i64 r = 0; y0 + r < OH; ++r)
                    row(src + r * S * irow, irow, off, val, nnz, b, rs ? rs + r * rrow : nullptr, rrow, act, lo, hi,
                        dst + r * orow, orow, nx);
        }
}

static void fused_depthwise(const i64* p);

static float mean(const float* plane, i64 row, i64 H, i64 W) {
    typedef Vec<WIDEST>::type vec;
    vec lanes = {};  // in vectors: a scalar sum is one dependent add per element
    float acc = 0.0f;
    for (i64 y = 0; y < H; ++y) {
        const float* r = plane + y * row;
        i64 x = 0;
        for (; x + WIDEST <= W; x += WIDEST) lanes += Load<WIDEST, 1>::at(r + x);
        for (; x < W; ++x) acc += r[x];
    }
    for (int j = 0; j < WIDEST; ++j) acc += lanes[j];
    return acc / (float)(H * W);
}

static void conv(const i64* p) {
    if (p[C_X_IN]) return fused_depthwise(p);
    const float* in = (const float*)p[C_IN];
    float* out = (float*)p[C_OUT];
    const float* res = (const float*)p[C_RES];
    const int32_t* indptr = (const int32_t*)p[C_INDPTR];
    const int32_t* off = (const int32_t*)p[C_OFF];
    const float* val = (const float*)p[C_VAL];
    const float* bias = (const float*)p[C_BIAS];
    const int32_t* chans = (const int32_t*)p[C_CHANS];  // the output channels to compute; all where null
    const i64 O = p[C_O], N = p[C_N], OH = p[C_OH], OW = p[C_OW], S = p[C_S], TX = p[C_TX], R = p[C_R];
    const int act = (int)p[C_RELU];
    float lo, hi;
    memcpy(&lo, &p[C_LO], sizeof(float));
    memcpy(&hi, &p[C_HI], sizeof(float));
    const bool ir = p[C_IN_RELU];
    const tile_fn full = pick_tile(S, ir, R, TX), row = pick_tile(S, ir, 1, TX);
    if (p[C_GATE]) {  // each image's weights times its gate, shared by the threads (the omp for's barrier)
        const float* gate = (const float*)p[C_GATE];
        const int32_t* cin = (const int32_t*)p[C_GATE_CIN];
        float* gated = (float*)p[C_GATE_VAL];
        const i64 nnz = p[C_NNZ];
#pragma omp for schedule(static)
        for (i64 i = 0; i < N * nnz; ++i)
            gated[i] = val[i % nnz] * gate[cin[i % nnz] * p[C_GATE_CH] + (i / nnz) * p[C_GATE_IMG]];
    }
    const i64 image_vals = p[C_GATE] ? p[C_NNZ] : 0;  // where the image's weights start
    const float* vals = p[C_GATE] ? (const float*)p[C_GATE_VAL] : val;
    const i64 YT = (OH + R - 1) / R, XT = (OW + TX - 1) / TX, items = N * YT * XT * O;
    // a contiguous share of the items per thread, decoded once and then stepped (no divisions per tile); output
    // channels innermost, so a tile's input rows stay in L1 across them
    const i64 nt = omp_get_num_threads(), id = omp_get_thread_num();
    const i64 begin = items * id / nt, end = items * (id + 1) / nt;
    i64 oi = begin % O, xt = (begin / O) % XT, yt = (begin / (O * XT)) % YT, n = begin / (O * XT * YT);
    for (i64 it = begin; it < end; ++it) {
        const i64 o = chans ? chans[oi] : oi;
        const i64 y0 = yt * R, x0 = xt * TX;
        const int nx = (int)(OW - x0 < TX ? OW - x0 : TX);
        const float b = bias ? bias[o] : 0.0f;
        const int32_t k0 = indptr[o], nnz = indptr[o + 1] - k0;
        const float* w = vals + n * image_vals + k0;
        const float* src = in + n * p[C_IN_IMG] + y0 * S * p[C_IN_ROW] + x0 * S;
        float* dst = out + o * p[C_OUT_CH] + n * p[C_OUT_IMG] + y0 * p[C_OUT_ROW] + x0;
        const float* rs = res ? res + o * p[C_RES_CH] + n * p[C_RES_IMG] + y0 * p[C_RES_ROW] + x0 : nullptr;
        if (y0 + R <= OH) {
            full(src, p[C_IN_ROW], off + k0, w, nnz, b, rs, p[C_RES_ROW], act, lo, hi, dst, p[C_OUT_ROW], nx);
        } else {
            for (i64 r = 0; y0 + r < OH; ++r)
                row(src + r * S * p[C_IN_ROW], p[C_IN_ROW], off + k0, w, nnz, b, rs ? rs + r * p[C_RES_ROW] : nullptr,
                    p[C_RES_ROW], act, lo, hi, dst + r * p[C_OUT_ROW], p[C_OUT_ROW], nx);
        }
        if (++oi == O) {
            oi = 0;
            if (++xt == XT) {
                xt = 0;
                if (++yt == YT) yt = 0, ++n;
            }
        }
    }
#pragma omp barrier
}

// A depthwise convolution fused with the convolution producing its input (MobileNet's 1x1 expansion): a depthwise
// channel reads one channel, so each (image, channel) computes that channel's input plane into a zero-bordered
// scratch of its own thread (in L2) and convolves it there; the input map is never written out. The X_ fields
// describe the producer (its input, weights, epilogue and tile), X_H x X_W its plane, X_PAD the scratch's border.
static void fused_depthwise(const i64* p) {
    const i64 O = p[C_O], N = p[C_N], XH = p[C_X_H], XW = p[C_X_W], PAD = p[C_X_PAD];
    const i64 srow = XW + 2 * PAD, size = (XH + 2 * PAD) * srow + 4096;  // + a tile's reach past a row's end
    static thread_local float* scratch = nullptr;
    static thread_local i64 held = 0, shape[3] = {0, 0, 0};
    if (held < size) {
        free(scratch);
        scratch = (float*)aligned_alloc(64, (size_t)((size * 4 + 63) / 64 * 64));
        held = size, shape[0] = 0;
    }
    if (shape[0] != srow || shape[1] != PAD || shape[2] != XH) {  // borders (another plane's interior before) read as zeros
        memset(scratch, 0, (size_t)size * 4);
        shape[0] = srow, shape[1] = PAD, shape[2] = XH;
    }
    const int32_t* chans = (const int32_t*)p[C_CHANS];
    const int32_t *xptr = (const int32_t*)p[C_X_INDPTR], *xoff = (const int32_t*)p[C_X_OFF], *indptr = (const int32_t*)p[C_INDPTR],
                  *off = (const int32_t*)p[C_OFF];
    const float *xval = (const float*)p[C_X_VAL], *xbias = (const float*)p[C_X_BIAS], *val = (const float*)p[C_VAL],
                *bias = (const float*)p[C_BIAS], *res = (const float*)p[C_RES];
    float lo, hi, xlo, xhi;
    memcpy(&lo, &p[C_LO], sizeof(float));
    memcpy(&hi, &p[C_HI], sizeof(float));
    memcpy(&xlo, &p[C_X_LO], sizeof(float));
    memcpy(&xhi, &p[C_X_HI], sizeof(float));
#pragma omp for schedule(static)
    for (i64 it = 0; it < N * O; ++it) {
        const i64 n = it / O, o = chans ? chans[it % O] : it % O;
        const int32_t k0 = indptr[o], nnz = indptr[o + 1] - k0;
        if (nnz) {  // a channel without weights never reads its input
            const int32_t x0 = xptr[o];
            plane((const float*)p[C_X_IN] + n * p[C_X_IN_IMG], p[C_X_IN_ROW], p[C_X_S], p[C_X_IN_RELU], xoff + x0, xval + x0,
                  xptr[o + 1] - x0, xbias ? xbias[o] : 0.0f, nullptr, 0, (int)p[C_X_RELU], xlo, xhi,
                  scratch + PAD * srow + PAD, srow, XH, XW, (int)p[C_X_R], (int)p[C_X_TX]);
        }
        float* dst = (float*)p[C_OUT] + o * p[C_OUT_CH] + n * p[C_OUT_IMG];
        plane(scratch, srow, p[C_S], p[C_IN_RELU], off + k0, val + k0, nnz, bias ? bias[o] : 0.0f,
              res ? res + o * p[C_RES_CH] + n * p[C_RES_IMG] : nullptr, p[C_RES_ROW], (int)p[C_RELU], lo, hi,
              dst, p[C_OUT_ROW], p[C_OH], p[C_OW], (int)p[C_R], (int)p[C_TX]);
        if (p[C_SUM])  // the squeeze-excitation's pool, from the plane just written
            ((float*)p[C_SUM])[o * p[C_SUM_CH] + n * p[C_SUM_IMG]] = mean(dst, p[C_OUT_ROW], p[C_OH], p[C_OW]);
    }
}

// POOL fields: in (interior origin), in strides (ch, img, row), out, out strides, C, N, H, W, OH, OW, k, stride, pad,
// mode (0 max, 1 average over the window's in-bounds part, 2 average over the whole window)

static void pool(const i64* p) {
    const float* in = (const float*)p[P_IN];
    float* out = (float*)p[P_OUT];
    const i64 C = p[P_C], N = p[P_N], H = p[P_H], W = p[P_W], OH = p[P_OH], OW = p[P_OW], K = p[P_K], S = p[P_S],
              PAD = p[P_PAD], mode = p[P_MODE];
    // the columns whose window lies inside the row: at stride 1 a vectorised pass per window row and column
    const i64 x0 = (PAD + S - 1) / S, x1 = W - K + PAD >= 0 ? (W - K + PAD) / S + 1 : 0;
    const i64 inner0 = S == 1 ? (x0 < OW ? x0 : OW) : OW, inner1 = S == 1 ? (x1 > inner0 ? (x1 < OW ? x1 : OW) : inner0) : OW;
#pragma omp for schedule(static)
    for (i64 it = 0; it < C * N * OH; ++it) {
        const i64 y = it % OH, n = (it / OH) % N, c = it / (OH * N);
        const float* plane = in + c * p[P_IN_CH] + n * p[P_IN_IMG];
        float* o = out + c * p[P_OUT_CH] + n * p[P_OUT_IMG] + y * p[P_OUT_ROW];
        const i64 ya = y * S - PAD, yb0 = ya < 0 ? 0 : ya, yb1 = ya + K > H ? H : ya + K;
        auto window = [&](i64 x) {  // one output, its window clipped to the map
            const i64 xa = x * S - PAD, xb0 = xa < 0 ? 0 : xa, xb1 = xa + K > W ? W : xa + K;
            float acc = mode == 0 ? -INFINITY : 0.0f;
            for (i64 yy = yb0; yy < yb1; ++yy) {
                const float* r = plane + yy * p[P_IN_ROW];
                if (mode == 0)
                    for (i64 xx = xb0; xx < xb1; ++xx) acc = acc < r[xx] ? r[xx] : acc;
                else
                    for (i64 xx = xb0; xx < xb1; ++xx) acc += r[xx];
            }
            if (mode == 1) acc /= (float)((yb1 - yb0) * (xb1 - xb0));
            if (mode == 2) acc /= (float)(K * K);
            o[x] = acc;
        };
        for (i64 x = 0; x < inner0; ++x) window(x);
        if (inner1 > inner0) {
            float* oi = o + inner0;
            const i64 n_in = inner1 - inner0;
            for (i64 x = 0; x < n_in; ++x) oi[x] = mode == 0 ? -INFINITY : 0.0f;
            for (i64 yy = yb0; yy < yb1; ++yy)
                for (i64 kx = 0; kx < K; ++kx) {
                    const float* r = plane + yy * p[P_IN_ROW] + inner0 - PAD + kx;
                    if (mode == 0)
                        for (i64 x = 0; x < n_in; ++x) oi[x] = oi[x] < r[x] ? r[x] : oi[x];
                    else
                        for (i64 x = 0; x < n_in; ++x) oi[x] += r[x];
                }
            if (mode != 0) {
                const float scale = 1.0f / (float)(mode == 1 ? (yb1 - yb0) * K : K * K);
                for (i64 x = 0; x < n_in; ++x) oi[x] *= scale;
            }
        }
        for (i64 x = inner1; x < OW; ++x) window(x);
    }
}

// EWISE fields: out[c, n, y, x] = act(scale[c] * (a[c, n, y, x] (+ or x) b[c, n, y, x]) + shift[c]), each operand
// with its own four strides (channel, image, row, column; b's row and column strides 0 where it is one value per
// channel and image: squeeze-excitation's gate); b, scale, shift optional. Covers activations, add, the gate,
// copies into slices, subsampling, flattening, the network's input and output, and BatchNorms no convolution absorbed.

static void ewise(const i64* p) {
    const float* a = (const float*)p[E_A];
    const float* b = (const float*)p[E_B];
    float* out = (float*)p[E_OUT];
    const float* scale = (const float*)p[E_SCALE];
    const float* shift = (const float*)p[E_SHIFT];
    const i64 C = p[E_C], N = p[E_N], H = p[E_H], W = p[E_W];
    const int act = (int)p[E_ACT];
    const bool mul = p[E_MUL];
    float lo, hi;
    memcpy(&lo, &p[E_LO], sizeof(float));
    memcpy(&hi, &p[E_HI], sizeof(float));
    const i64 ac = p[E_A_COL], bc = p[E_B_COL], oc = p[E_OUT_COL];
    typedef Vec<WIDEST>::type vec;
    typedef Vec<WIDEST>::ints ints;
#pragma omp for schedule(static)
    for (i64 it = 0; it < C * N * H; ++it) {
        const i64 y = it % H, n = (it / H) % N, c = it / (H * N);
        const float* ar = a + c * p[E_A_CH] + n * p[E_A_IMG] + y * p[E_A_ROW];
        const float* br = b ? b + c * p[E_B_CH] + n * p[E_B_IMG] + y * p[E_B_ROW] : nullptr;
        float* orow = out + c * p[E_OUT_CH] + n * p[E_OUT_IMG] + y * p[E_OUT_ROW];
        const float sc = scale ? scale[c] : 1.0f, sh = shift ? shift[c] : 0.0f;
        i64 x = 0;
        if (ac == 1 && oc == 1 && (!br || bc <= 1))  // the common case, in vectors (b a row or one value)
            for (; x + WIDEST <= W; x += WIDEST) {
                vec v = Load<WIDEST, 1>::at(ar + x);
                if (br) {
                    const vec bv = bc ? Load<WIDEST, 1>::at(br + x) : splat<vec>(*br);
                    v = mul ? v * bv : v + bv;
                }
                *(vec*)(orow + x) = activate<vec, ints>(sc * v + sh, act, lo, hi);
            }
        for (; x < W; ++x) {
            float v = ar[x * ac];
            if (br) v = mul ? v * br[x * bc] : v + br[x * bc];
            orow[x * oc] = activate<float, int32_t>(sc * v + sh, act, lo, hi);
        }
    }
}

// GAP fields: in (interior origin), in strides (ch, img, row), out, out strides (ch, img), C, N, H, W

static void gap(const i64* p) {
    const float* in = (const float*)p[G_IN];
    float* out = (float*)p[G_OUT];
    const i64 C = p[G_C], N = p[G_N], H = p[G_H], W = p[G_W];
#pragma omp for schedule(static)
    for (i64 it = 0; it < C * N; ++it) {
        const i64 n = it % N, c = it / N;
        const float* plane = in + c * p[G_IN_CH] + n * p[G_IN_IMG];
        out[c * p[G_OUT_CH] + n * p[G_OUT_IMG]] = mean(plane, p[G_IN_ROW], H, W);
    }
}

extern "C" {

const char* sparsearch_layout() { return SPARSEARCH_LAYOUT; }

// Runs the plan's operations in order on `threads` threads; `seconds`, if given, receives each operation's
// wall time (taken by thread 0 after the operation's closing barrier).
void sparsearch_run(const i64* plan, i64 count, int threads, double* seconds) {
#pragma omp parallel num_threads(threads)
    {
        double t0 = seconds ? omp_get_wtime() : 0.0;
        for (i64 i = 0; i < count; ++i) {
            const i64* p = plan + i * RECORD;
            switch (p[0]) {
                case CONV: conv(p); break;
                case POOL: pool(p); break;
                case EWISE: ewise(p); break;
                case GAP: gap(p); break;
            }
            if (seconds) {
#pragma omp master
                {
                    double t1 = omp_get_wtime();
                    seconds[i] += t1 - t0;
                    t0 = t1;
                }
            }
        }
    }
}
}
