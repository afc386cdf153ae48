/* gemv_xreg.cuh - the decode step's GEMV with x held in registers (T = 1): ops.cu's matmul (with
 * its input norm fused or not), moe.cu's swiglu halves and the routed experts' two launches, for FP8
 * weights of any size and F32 / BF16 / F16 ones of at most XREG_MAX_PLAIN_ROWS rows.
 *
 * Why: one warp a row (device.cuh's warp_dots_rows) reads 16 floats of x for every 16 codes it
 * loads, 4 bytes of x per byte of weight; at one row a warp that was the bound (1.2-1.9 TB/s on
 * 22016 x 2048, notes/cuda.md section 10), and more rows a warp cost the registers that kept loads
 * in flight. Here a block's warps split the columns instead of the rows:
 *
 *   out[r] = sum_c W[r][c] x[c],  c in chunks of 32 lanes x CW values (one 16-byte load a lane: CW =
 *   16 FP8 codes, 8 BF16 / F16, 4 F32); warp w of NW holds chunks w, w + NW, ..., CPW of them (CPW *
 *   NW * 32 * CW >= cols): its lanes keep those CW * CPW values of x in registers for the whole
 *   launch, and every row of the block costs a lane one 16-byte load per chunk and no x reads. With
 *   a norm, each block norms x itself (kernels.cuh's rmsnorm_inv: rmsnorm_kernel's bits) and block 0
 *   leaves h = rmsnorm(x) in memory for the kernels after it. Rows go B at a time: the B * CPW loads issued
 *   together, each chunk's 16 products summed (the order of warp_dots_rows), times its block scale
 *   (the block-sum order, as there), added over the lane's chunks; then the B rows' 32 lane sums meet
 *   in log2(32) shuffle steps (lanes_sum_rows: B values halve while the lanes pair up) and each warp
 *   leaves one partial per row in shared memory; after one barrier a thread per row adds the NW
 *   partials in warp order. Fixed orders: the same bits on every run, another order than C's.
 *
 * Shapes: W [rows, cols], cols % CW == 0; FP8 with block_c % 16 == 0 and block sizes powers of two,
 * the others without scales (xreg_fits says when); x [cols]; out [rows]. One launch covers `picks`
 * independent GEMVs (blockIdx.y): the routed experts' (weights from experts[idx[pick]]). */
#ifndef GEMV_XREG_CUH
#define GEMV_XREG_CUH

#include "device.cuh"

#define XREG_MAX_WARPS 16
#define XREG_MAX_CPW 4  /* FP8 cols <= 16 x 4 x 512 = 32768 */
#define XREG_MIN_COLS 1024 /* narrower rows are a warp or two a block: the bundled models (256-640 columns) decoded
                            * slower this way (BF16 183 us a token against 165, notes/cuda.md section 11) */
#define XREG_MAX_PLAIN_ROWS 256 /* F32 / BF16: the routers; the others stay on warp_dots_rows (the bundled BF16 model
                                  * decoded at 202 us a token with them all here, 161 without: notes/cuda.md section 11) */
template <int DT> struct XregCw { enum { CW = (DT == DT_F8_E4M3 || DT == DT_F8_E5M2) ? 16 : DT == DT_F32 ? 4 : 8 }; };

enum XregMode { XREG_STORE, XREG_ADD, XREG_SWIGLU };

/* One launch: MODE XREG_SWIGLU takes W (gate) and U (up) rows in pairs and writes
 * silu(gate . x) * (up . x) (moe.cu's silu_mul, the same expression); the others out (= or +=) W . x.
 * With experts: pick p's tensors are experts[idx[p]]'s gate and up (SWIGLU) or down (else), its x
 * is x + (p / x_div) * x_stride, its output out + p * out_stride. */
struct XregJob {
    DevTensor W, U;
    const DevFfn *experts;
    const int *idx;
    const float *x;
    size_t x_stride, out_stride;
    int x_div;
    float *out;
    int mode, rows, rows_per_block; /* output rows (all picks alike), rows a block */
    const float *norm_w; /* non-NULL: x is rmsnorm(x; norm_w, eps) first, and block 0 writes it to h */
    float eps;
    float *h;
};

/* v [B] per lane -> each row's sum over the 32 lanes. Step off = 16, 8, ...: a lane keeps half of
 * its values (the upper half where lane & off) and adds its partner's copy of the same half, so B
 * values become one after log2(B) steps (B - 1 shuffles), then the plain butterfly over the offsets
 * left. Returns the sum of row lanes_row(lane), the same in every lane that holds that row. */
template <int B>
static __device__ __forceinline__ float lanes_sum_rows(float (&v)[B], int lane) {
    int off = 16;
#pragma unroll
    for (int n = B; n > 1; n /= 2, off /= 2) {
        bool upper = lane & off;
#pragma unroll
        for (int i = 0; i < n / 2; i++) {
            float send = upper ? v[i] : v[i + n / 2], keep = upper ? v[i + n / 2] : v[i];
            v[i] = keep + __shfl_xor_sync(FULL_MASK, send, off);
        }
    }
    float s = v[0];
    for (; off > 0; off /= 2) s += __shfl_xor_sync(FULL_MASK, s, off);
    return s;
}
template <int B>
static __device__ __forceinline__ int lanes_row(int lane) {
    int r = 0, off = 16;
#pragma unroll
    for (int n = B; n > 1; n /= 2, off /= 2)
        if (lane & off) r += n / 2;
    return r;
}

/* Blocks of NW = blockDim.x / 32 warps; shared memory: NW * (rows_per_block << (MODE == SWIGLU)) floats. */
template <int DT, int CPW, int B, int MODE>
__global__ void __launch_bounds__(XREG_MAX_WARPS * 32) gemv_xreg_kernel(XregJob j) {
    extern __shared__ float part[]; /* [NW][dot rows of the block] */
    __shared__ float red[32];
    const int PAIRS = MODE == XREG_SWIGLU ? 1 : 0, CW = XregCw<DT>::CW, ES = 16 / CW; /* bytes a value */
    const bool FP8 = DT == DT_F8_E4M3 || DT == DT_F8_E5M2;
    int pick = blockIdx.y, nw = blockDim.x / 32, w = threadIdx.x / 32, lane = threadIdx.x % 32;
    const DevTensor *Wp = &j.W, *Up = &j.U;
    if (j.experts) {
        const DevFfn &f = j.experts[j.idx[pick]];
        Wp = PAIRS ? &f.gate : &f.down;
        Up = &f.up;
    }
    const DevTensor W = *Wp, U = PAIRS ? *Up : *Wp;
    const float *x = j.x + (size_t)(pick / j.x_div) * j.x_stride;
    float *out = j.out + (size_t)pick * j.out_stride;
    int cols = W.cols, o0 = blockIdx.x * j.rows_per_block, n_out = min(j.rows_per_block, j.rows - o0);
    int n_dot = n_out << PAIRS, dot_stride = j.rows_per_block << PAIRS;
    int br_shift = __ffs(W.block_r) - 1, bc_shift = __ffs(W.block_c) - 1, n_bc = FP8 && W.scale ? (cols + W.block_c - 1) >> bc_shift : 0;
    int col[CPW];
#pragma unroll
    for (int c = 0; c < CPW; c++) col[c] = ((c * nw + w) * 32 + lane) * CW;

    uint4 u[B][CPW];
    float scl[B][CPW]; /* FP8: the chunks' block scales, loaded with the codes */
    auto load_batch = [&](uint4 (*dst)[CPW], float (*sdst)[CPW], int q0) { /* the B dot rows from q0 (clamped to the last) */
#pragma unroll
        for (int i = 0; i < B; i++) {
            int q = min(q0 + i, n_dot - 1), r = o0 + (q >> PAIRS);
            bool up = PAIRS && (q & 1);
            const uint8_t *row = (const uint8_t *)(up ? U.data : W.data) + (size_t)r * cols * ES;
            const float *sc = up ? U.scale : W.scale;
#pragma unroll
            for (int c = 0; c < CPW; c++) {
                dst[i][c] = col[c] < cols ? __ldg((const uint4 *)(row + (size_t)col[c] * ES)) : make_uint4(0, 0, 0, 0);
                sdst[i][c] = FP8 && sc && col[c] < cols ? __ldg(sc + (size_t)(r >> br_shift) * n_bc + (col[c] >> bc_shift)) : 1.0f;
            }
        }
    };
    load_batch(u, scl, 0); /* the weights do not wait for x (nor for its norm) */
    float inv = j.norm_w ? rmsnorm_inv(x, cols, j.eps, red) : 1.0f;
    if (j.norm_w && blockIdx.x == 0 && blockIdx.y == 0)
        for (int i = threadIdx.x; i < cols; i += blockDim.x) j.h[i] = j.norm_w[i] * (x[i] * inv); /* rmsnorm_row's */
    float xr[CPW][CW];
#pragma unroll
    for (int c = 0; c < CPW; c++)
#pragma unroll
        for (int k = 0; k < CW / 4; k++) {
            float4 a = col[c] < cols ? ((const float4 *)(x + col[c]))[k] : make_float4(0, 0, 0, 0);
            float v[4] = {a.x, a.y, a.z, a.w};
#pragma unroll
            for (int e = 0; e < 4; e++) {
                int i = col[c] + 4 * k + e;
                xr[c][4 * k + e] = j.norm_w && col[c] < cols ? j.norm_w[i] * (v[e] * inv) : v[e];
            }
        }
    for (int q0 = 0; q0 < n_dot; q0 += B) {
        float acc[B];
#pragma unroll
        for (int i = 0; i < B; i++) {
            acc[i] = 0.0f;
#pragma unroll
            for (int c = 0; c < CPW; c++) {
                float wv[CW], s = 0.0f;
                chunk_values<DT>(wv, u[i][c]);
#pragma unroll
                for (int k = 0; k < CW / 4; k++)
                    s += wv[4 * k] * xr[c][4 * k] + wv[4 * k + 1] * xr[c][4 * k + 1] + wv[4 * k + 2] * xr[c][4 * k + 2] +
                         wv[4 * k + 3] * xr[c][4 * k + 3];
                if (col[c] < cols) acc[i] += FP8 ? s * scl[i][c] : s; /* x 1 without scales: exact */
            }
        }
        if (q0 + B < n_dot) load_batch(u, scl, q0 + B); /* in flight while the sums meet */
        float s = lanes_sum_rows<B>(acc, lane);
        int q = q0 + lanes_row<B>(lane);
        if (lane % (32 / B) == 0 && q < n_dot) part[w * dot_stride + q] = s;
    }
    __syncthreads();
    for (int o = threadIdx.x; o < n_out; o += blockDim.x) {
        if (PAIRS) {
            float g = 0.0f, v = 0.0f;
            for (int k = 0; k < nw; k++) { g += part[k * dot_stride + 2 * o]; v += part[k * dot_stride + 2 * o + 1]; }
            out[o0 + o] = g / (1.0f + expf(-g)) * v;
        } else {
            float v = 0.0f;
            for (int k = 0; k < nw; k++) v += part[k * dot_stride + o];
            out[o0 + o] = MODE == XREG_ADD ? out[o0 + o] + v : v;
        }
    }
}

/* Whether W takes this path: FP8 as the header says; F32 / BF16 / F16 unscaled, at most
 * XREG_MAX_PLAIN_ROWS rows (the small GEMVs, latency-bound; the large ones stream at the copy
 * bandwidth a warp a row already). */
static inline bool xreg_fits(const DevTensor &W) {
    int cw = W.dtype == DT_F32 ? 4 : W.dtype == DT_BF16 || W.dtype == DT_F16 ? 8 : 16;
    if (W.cols < XREG_MIN_COLS) return false;
    if (W.dtype == DT_F8_E4M3 || W.dtype == DT_F8_E5M2) {
        bool pow2 = !W.scale || ((W.block_r & (W.block_r - 1)) == 0 && (W.block_c & (W.block_c - 1)) == 0 && W.block_c % 16 == 0);
        return W.cols % 16 == 0 && pow2 && W.cols <= XREG_MAX_WARPS * XREG_MAX_CPW * 32 * 16;
    }
    return (W.dtype == DT_F32 || W.dtype == DT_BF16 || W.dtype == DT_F16) && !W.scale && W.cols % cw == 0 &&
           W.rows <= XREG_MAX_PLAIN_ROWS && W.cols <= XREG_MAX_WARPS * XREG_MAX_CPW * 32 * cw;
}

/* One launch of gemv_xreg_kernel<...>: the batches of all picks spread evenly over the blocks that
 * fit the GPU at once (one wave: no half-empty second one), at least one batch a block. */
template <int DT, int CPW, int B, int MODE>
static void xreg_go(XregJob j, int nw, int picks, cudaStream_t st) {
    static int fit = 0, sms = 0; /* blocks an SM (registers, threads), per instantiation; SMs */
    auto kern = gemv_xreg_kernel<DT, CPW, B, MODE>;
    if (!fit) {
        cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, 0);
        cudaOccupancyMaxActiveBlocksPerMultiprocessor(&fit, kern, nw * 32, sizeof(float) * nw * 2 * B);
        if (fit < 1) fit = 1;
        if (sms < 1) sms = 132;
    }
    int pairs = MODE == XREG_SWIGLU;
    long batches_per_pick = ((long)(j.rows << pairs) + B - 1) / B, slots = (long)fit * sms;
    long per_block = (batches_per_pick * picks + slots - 1) / slots; /* batches a block */
    int rpb = (int)((per_block * B) >> pairs);
    if (rpb < 1) rpb = 1;
    j.rows_per_block = rpb;
    dim3 grid((unsigned)((j.rows + rpb - 1) / rpb), (unsigned)picks);
    kern<<<grid, nw * 32, sizeof(float) * nw * ((size_t)rpb << pairs), st>>>(j);
}

/* Launch j over `picks` GEMVs of rows output rows and cols columns (every pick's tensor of W's dtype
 * and shape). CPW: the fewest chunks a warp with at most 16 warps; B: 8 rows a batch at one chunk a
 * warp, fewer with more (the loads in flight stay 8 a lane). */
template <int DT>
static void gemv_xreg_launch(XregJob j, int cols, int picks, cudaStream_t st) {
    int chunk = 32 * XregCw<DT>::CW, chunks = (cols + chunk - 1) / chunk;
    int cpw = (chunks + XREG_MAX_WARPS - 1) / XREG_MAX_WARPS, nw = (chunks + cpw - 1) / cpw;
#define XREG_GO(CPW_, B_)                                                                                              \
    do {                                                                                                               \
        if (j.mode == XREG_SWIGLU) xreg_go<DT, CPW_, B_, XREG_SWIGLU>(j, nw, picks, st);                               \
        else if (j.mode == XREG_ADD) xreg_go<DT, CPW_, B_, XREG_ADD>(j, nw, picks, st);                                \
        else xreg_go<DT, CPW_, B_, XREG_STORE>(j, nw, picks, st);                                                      \
    } while (0)
    if (cpw == 1) XREG_GO(1, 8);
    else if (cpw == 2) XREG_GO(2, 4);
    else if (cpw == 3) XREG_GO(3, 2);
    else XREG_GO(4, 2);
#undef XREG_GO
}

/* A job of one GEMV a launch: W's rows (U's too, for XREG_SWIGLU) against x [cols], out [rows]; the
 * MoE and norm fields, zero here, are set after by the callers that use them. */
static inline XregJob xreg_job(const DevTensor &W, const DevTensor &U, const float *x, float *out, int mode, int rows) {
    XregJob j = {};
    j.W = W;
    j.U = U;
    j.x = x;
    j.x_div = 1;
    j.out = out;
    j.mode = mode;
    j.rows = rows;
    return j;
}

/* The plain launch: out [rows] (= or +=) W . x; with norm_w, W . rmsnorm(x; norm_w, eps), h = that
 * rmsnorm. */
static inline void gemv_xreg_matmul(float *out, const float *x, const DevTensor &W, int accumulate, cudaStream_t st,
                                    const float *norm_w = NULL, float eps = 0.0f, float *h = NULL) {
    XregJob j = xreg_job(W, W, x, out, accumulate ? XREG_ADD : XREG_STORE, W.rows);
    j.norm_w = norm_w;
    j.eps = eps;
    j.h = h;
    with_dtype(W.dtype, [&](auto dt) { gemv_xreg_launch<decltype(dt)::value>(j, W.cols, 1, st); });
}

#endif
