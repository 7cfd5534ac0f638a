/*
 * Fused budgeted MaxSim for x86-64 CPUs with AVX2 + FMA + F16C, AVX-512 where present, and Intel's
 * AMX tile unit for float16 / bfloat16 / int8 candidates where present (maxsim_amx.h).
 *
 * Why a hand-written kernel: scoring a query batch against candidates position by
 * position with a BLAS GEMM and a separate max pass leaves a third to a half of the
 * machine's fp32 peak unused at small query batches: every GEMM call re-packs its
 * (chunk, D) candidate block and writes a (chunk, Q*r_q) similarity block that the
 * max pass reads back. Here the max over candidate positions and the sum over query
 * vectors are folded into the register tiles of the matrix product, so the
 * similarities never leave the cache, and compact storage (fp16, bf16, int8 with
 * group scales) is upcast to fp32 one small block at a time right before use.
 *
 * Layout: for a block of candidates and each position j < r_c, the j-th vectors are
 * upcast into an fp32 buffer (rows of D values). The micro-kernel (maxsim_tile.h) multiplies
 * 6 candidate rows (broadcast one value at a time) by 16 query vectors packed k-major, keeping
 * 12 AVX2 accumulators; with AVX-512 it is 8 rows by 32 query vectors in 16 accumulators; D is split into blocks of KC
 * values whose partial sums stay in a small L1-resident tile. After the last K block
 * the tile is folded into the running maximum over positions. Once all positions are
 * done, each query's r_q maxima are summed into the output.
 *
 * Arithmetic is fp32 throughout (fp16/bf16/int8 storage loses nothing beyond its own
 * rounding; the AMX path multiplies exact bf16 parts of the values and sums in fp32).
 * The module compiles on any platform; `available()` says whether this CPU
 * can run the kernel, and the Python side falls back to the BLAS path when it cannot.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define METAEMBED_X86 1
#include <immintrin.h>
#endif

enum { DTYPE_F32 = 0, DTYPE_F16 = 1, DTYPE_BF16 = 2, DTYPE_I8 = 3 };

#ifndef KC
#define KC 256     /* values of D per K block: a 256 x 16 query panel is 16 KiB, half of L1 */
#endif
#ifndef BLOCK_BYTES
#define BLOCK_BYTES (192 * 1024) /* fp32 upcast bytes per candidate block: stays in L2 (512 KiB on Zen 3) */
#endif
#define CB_MAX 48  /* candidates per block at most: 8 micro tiles */
#ifndef PREFETCH_ROWS
#define PREFETCH_ROWS 8 /* rows ahead that a shortlist read (Job.index) prefetches: 4-16 measured alike */
#endif

typedef struct {
    const float *queries; /* (rows, dim) fp32, contiguous */
    int64_t rows, r_q, dim;
    const void *const *positions; /* r_c pointers to the first candidate's row of each position */
    int64_t r_c, row_stride;      /* row stride in elements, shared by every position */
    int dtype;
    const float *const *scales; /* int8: r_c pointers to (n, groups) fp32 scales */
    int64_t scale_stride, groups;
    int64_t count;     /* candidates to score */
    float *out;        /* (rows / r_q, out_stride) fp32; this call writes columns [0, count) */
    int64_t out_stride;
    const int64_t *index; /* NULL: candidate c is row c; else row index[c] (a shortlist read in place) */
} Job;

#ifdef METAEMBED_X86

#define TARGET __attribute__((target("avx2,fma,f16c")))

static const int64_t ELEMENT_BYTES[] = {4, 2, 2, 1}; /* by dtype */

/* The row of candidate `first + i` (of n read in order) at one position, through job->index when set. */
static inline int64_t candidate_row(const Job *job, int64_t position, int64_t first, int64_t i, int64_t n) {
    const int64_t row = job->index ? job->index[first + i] : first + i;
    const int64_t bytes = ELEMENT_BYTES[job->dtype], row_bytes = job->dim * bytes, stride_bytes = job->row_stride * bytes;
    if ((job->index || stride_bytes > 2 * row_bytes) && i + PREFETCH_ROWS < n) {
        /* A shortlist's rows come in no order the hardware prefetcher can follow, and a prefix of
         * long rows leaves gaps (a page apart) that it does not cross: ask for a later row now,
         * so that its cache (and TLB) misses overlap the work on this one. */
        const int64_t ahead = job->index ? job->index[first + i + PREFETCH_ROWS] : first + i + PREFETCH_ROWS;
        const char *next = (const char *)job->positions[position] + ahead * stride_bytes;
        for (int64_t byte = 0; byte < row_bytes; byte += 64)
            _mm_prefetch(next + byte, _MM_HINT_T0);
    }
    return row;
}

/* Upcast `n` candidate rows of one position into dst (n, dim) fp32 (through job->index when set). */
TARGET static void upcast_rows(const Job *job, int64_t position, int64_t first, int64_t n, float *dst) {
    const int64_t dim = job->dim;
    const char *base = (const char *)job->positions[position];
    for (int64_t i = 0; i < n; i++) {
        const int64_t row = candidate_row(job, position, first, i, n);
        float *out = dst + i * dim;
        int64_t k = 0;
        switch (job->dtype) {
        case DTYPE_F32: {
            const float *src = (const float *)base + row * job->row_stride;
            memcpy(out, src, (size_t)dim * sizeof(float));
            k = dim;
            break;
        }
        case DTYPE_F16: {
            const uint16_t *src = (const uint16_t *)base + row * job->row_stride;
            for (; k + 8 <= dim; k += 8)
                _mm256_storeu_ps(out + k, _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(src + k))));
            for (; k < dim; k++)
                out[k] = _cvtsh_ss(src[k]);
            break;
        }
        case DTYPE_BF16: {
            const uint16_t *src = (const uint16_t *)base + row * job->row_stride;
            for (; k + 8 <= dim; k += 8) {
                __m256i wide = _mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)(src + k)));
                _mm256_storeu_ps(out + k, _mm256_castsi256_ps(_mm256_slli_epi32(wide, 16)));
            }
            for (; k < dim; k++) {
                uint32_t bits = (uint32_t)src[k] << 16;
                memcpy(out + k, &bits, sizeof(float));
            }
            break;
        }
        default: { /* DTYPE_I8: value = code * scale of its group */
            const int8_t *src = (const int8_t *)base + row * job->row_stride;
            const float *scale = job->scales[position] + row * job->scale_stride;
            const int64_t width = dim / job->groups;
            for (int64_t g = 0; g < job->groups; g++) {
                const __m256 s = _mm256_set1_ps(scale[g]);
                const int64_t stop = (g + 1) * width;
                for (k = g * width; k + 8 <= stop; k += 8) {
                    __m256i codes = _mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i *)(src + k)));
                    _mm256_storeu_ps(out + k, _mm256_mul_ps(_mm256_cvtepi32_ps(codes), s));
                }
                for (; k < stop; k++)
                    out[k] = (float)src[k] * scale[g];
            }
            break;
        }
        }
    }
}

#define TILE_TARGET TARGET
#define TILE_SUFFIX avx2
#define TILE_VEC __m256
#define TILE_LANES 8
#define TILE_MR 6
#define TILE_ROWS(X) X(0) X(1) X(2) X(3) X(4) X(5)
#define TILE_ZERO _mm256_setzero_ps
#define TILE_LOAD _mm256_load_ps
#define TILE_LOADU _mm256_loadu_ps
#define TILE_STOREU _mm256_storeu_ps
#define TILE_BROADCAST _mm256_broadcast_ss
#define TILE_FMA _mm256_fmadd_ps
#define TILE_MAX _mm256_max_ps
#include "maxsim_tile.h"
#undef TILE_TARGET
#undef TILE_SUFFIX
#undef TILE_VEC
#undef TILE_LANES
#undef TILE_MR
#undef TILE_ROWS
#undef TILE_ZERO
#undef TILE_LOAD
#undef TILE_LOADU
#undef TILE_STOREU
#undef TILE_BROADCAST
#undef TILE_FMA
#undef TILE_MAX

/* AVX-512: 16 lanes, 8 candidate rows x 32 query vectors = 16 of the 32 zmm registers. */
#define TARGET512 __attribute__((target("avx512f,avx2,fma,f16c")))
#define TILE_TARGET TARGET512
#define TILE_SUFFIX avx512
#define TILE_VEC __m512
#define TILE_LANES 16
#define TILE_MR 8
#define TILE_ROWS(X) X(0) X(1) X(2) X(3) X(4) X(5) X(6) X(7)
#define TILE_ZERO _mm512_setzero_ps
#define TILE_LOAD _mm512_load_ps
#define TILE_LOADU _mm512_loadu_ps
#define TILE_STOREU _mm512_storeu_ps
#define TILE_BROADCAST(p) _mm512_set1_ps(*(p))
#define TILE_FMA _mm512_fmadd_ps
#define TILE_MAX _mm512_max_ps
#include "maxsim_tile.h"

typedef void (*TileFn)(int, const float *, int64_t, const float *, int64_t, float *, float *, int64_t, int, int, int);

/* What differs between the two instruction sets: vector lanes, rows per tile, the tile functions. */
typedef struct Isa {
    int64_t lanes, mr;
    TileFn wide, narrow;
    int64_t amx_rows; /* jobs of at least this many query rows on storage the tiles hold exactly go to the
                       * tile unit (maxsim_amx.h), the rest to the AVX-512 tiles; 0: never */
} Isa;

#ifndef AMX_MIN_ROWS
#define AMX_MIN_ROWS 64 /* below four 16-row query tiles, splitting the candidates into bf16 costs more than
                         * the tile unit saves (budget (2,4) x 16 queries: 10% slower than AVX-512) */
#endif

static const Isa ISA_AVX2 = {8, 6, tile_wide_avx2, tile_narrow_avx2, 0};
static const Isa ISA_AVX512 = {16, 8, tile_wide_avx512, tile_narrow_avx512, 0};
static const Isa ISA_AMX = {16, 8, tile_wide_avx512, tile_narrow_avx512, 1};             /* pinned: every job */
static const Isa ISA_AMX_AUTO = {16, 8, tile_wide_avx512, tile_narrow_avx512, AMX_MIN_ROWS}; /* where it pays */

/* Pack query rows (rows, dim) into panels of two vectors of query rows (and a last one of one vector),
 * k-major, zero padded. */
static void pack_queries(const Job *job, const Isa *isa, int64_t padded, float *packed) {
    const int64_t dim = job->dim;
    for (int64_t p0 = 0; p0 < padded;) {
        const int64_t width = padded - p0 >= 2 * isa->lanes ? 2 * isa->lanes : isa->lanes;
        float *panel = packed + p0 * dim;
        for (int64_t k = 0; k < dim; k++)
            for (int64_t c = 0; c < width; c++) {
                const int64_t row = p0 + c;
                panel[k * width + c] = row < job->rows ? job->queries[row * dim + k] : 0.0f;
            }
        p0 += width;
    }
}

/* 64-byte aligned fp32 scratch (aligned_alloc wants a size that is a multiple of the alignment). */
static float *scratch(int64_t values) {
    const size_t bytes = ((size_t)values * sizeof(float) + 63) / 64 * 64;
    return aligned_alloc(64, bytes ? bytes : 64);
}

/* out[q0 + k, i0 + r] = src[r * stride + q0 + k] for r, k < 8: an 8 x 8 block of a row-major
 * (candidates, queries) array into the query-major output. Each 128-bit half is loaded into the
 * lane it ends up in, so the transpose needs only in-lane shuffles (cross-lane permutes are
 * slow on Zen 1). */
TARGET static inline void transpose_8x8(const float *src, int64_t stride, float *dst, int64_t dst_stride) {
    __m256 t[8];
    for (int h = 0; h < 2; h++) /* h = 0: queries q0..q0+3, 1: q0+4..q0+7 */
        for (int r = 0; r < 4; r++)
            t[4 * h + r] = _mm256_insertf128_ps(_mm256_castps128_ps256(_mm_loadu_ps(src + r * stride + 4 * h)),
                                                _mm_loadu_ps(src + (r + 4) * stride + 4 * h), 1);
    for (int h = 0; h < 2; h++) {
        const __m256 *u = t + 4 * h;
        const __m256 ab_lo = _mm256_unpacklo_ps(u[0], u[1]), ab_hi = _mm256_unpackhi_ps(u[0], u[1]);
        const __m256 cd_lo = _mm256_unpacklo_ps(u[2], u[3]), cd_hi = _mm256_unpackhi_ps(u[2], u[3]);
        float *row = dst + 4 * h * dst_stride;
        _mm256_storeu_ps(row, _mm256_shuffle_ps(ab_lo, cd_lo, _MM_SHUFFLE(1, 0, 1, 0)));
        _mm256_storeu_ps(row + dst_stride, _mm256_shuffle_ps(ab_lo, cd_lo, _MM_SHUFFLE(3, 2, 3, 2)));
        _mm256_storeu_ps(row + 2 * dst_stride, _mm256_shuffle_ps(ab_hi, cd_hi, _MM_SHUFFLE(1, 0, 1, 0)));
        _mm256_storeu_ps(row + 3 * dst_stride, _mm256_shuffle_ps(ab_hi, cd_hi, _MM_SHUFFLE(3, 2, 3, 2)));
    }
}

/* Sum each query's r_q maxima: out[q, c0 + i] = sum_t best[i, q * r_q + t] for the n candidates of a
 * block (best: n rows of `padded` query rows). Vectorised by transposing 8 x 8 blocks: for r_q = 1
 * straight into the query-major output; otherwise into `columns` (scratch of n x padded values, one
 * row per query row), whose r_q consecutive rows are then added as vectors, in the order t = 0, 1,
 * ... (the same sums, bit for bit, as a scalar loop). The scalar walk this replaces (a load a cache
 * line apart per value) took a fifth of the time at budget (1,1). */
TARGET static void sum_maxima(const Job *job, const float *best, int64_t padded, int64_t c0, int64_t n,
                              float *columns) {
    const int64_t r_q = job->r_q, queries = job->rows / r_q, ld = job->out_stride, n8 = n / 8 * 8;
    float *out = job->out + c0;
    if (r_q == 1) {
        const int64_t q8 = queries / 8 * 8;
        for (int64_t i0 = 0; i0 < n8; i0 += 8)
            for (int64_t q0 = 0; q0 < q8; q0 += 8)
                transpose_8x8(best + i0 * padded + q0, padded, out + q0 * ld + i0, ld);
        for (int64_t q = q8; q < queries; q++)
            for (int64_t i = 0; i < n8; i++)
                out[q * ld + i] = best[i * padded + q];
    } else {
        for (int64_t i0 = 0; i0 < n8; i0 += 8)
            for (int64_t p0 = 0; p0 < job->rows; p0 += 8) /* padded is a multiple of 8: p0 + 8 <= padded */
                transpose_8x8(best + i0 * padded + p0, padded, columns + p0 * n8 + i0, n8);
        for (int64_t q = 0; q < queries; q++) {
            const float *first = columns + q * r_q * n8;
            for (int64_t i0 = 0; i0 < n8; i0 += 8) {
                __m256 total = _mm256_loadu_ps(first + i0);
                for (int64_t t = 1; t < r_q; t++)
                    total = _mm256_add_ps(total, _mm256_loadu_ps(first + t * n8 + i0));
                _mm256_storeu_ps(out + q * ld + i0, total);
            }
        }
    }
    for (int64_t q = 0; q < queries; q++) /* the last n % 8 candidates */
        for (int64_t i = n8; i < n; i++) {
            float total = 0.0f;
            for (int64_t t = 0; t < r_q; t++)
                total += best[i * padded + q * r_q + t];
            out[q * ld + i] = total;
        }
}

static int cpu_ok(void) {
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c");
}

static int cpu_has_avx512(void) {
    __builtin_cpu_init();
    return cpu_ok() && __builtin_cpu_supports("avx512f");
}

#include "maxsim_amx.h"
#include "topk.h"

TARGET static int run_job(const Job *job, const Isa *isa) {
    if (isa->amx_rows && job->rows >= isa->amx_rows && amx_serves(job))
        return run_job_amx(job);
    const int64_t dim = job->dim, rows = job->rows, mr_full = isa->mr;
    const int64_t padded = (rows + isa->lanes - 1) / isa->lanes * isa->lanes;
    float *packed = scratch(padded * dim);
    int64_t cb = BLOCK_BYTES / (dim * (int64_t)sizeof(float)) / mr_full * mr_full;
    cb = cb < mr_full ? mr_full : cb > CB_MAX ? CB_MAX : cb;
    float *upcast = scratch(cb * dim);
    float *partial = scratch(cb * padded);
    float *best = scratch(cb * padded), *columns = scratch(cb * padded);
    if (!packed || !upcast || !partial || !best || !columns) {
        free(packed); free(upcast); free(partial); free(best); free(columns);
        return -1;
    }
    pack_queries(job, isa, padded, packed);
    const int direct = job->dtype == DTYPE_F32 && !job->index; /* fp32 runs are read in place, no copy */
    for (int64_t c0 = 0; c0 < job->count; c0 += cb) {
        const int64_t n = job->count - c0 < cb ? job->count - c0 : cb;
        for (int64_t j = 0; j < job->r_c; j++) {
            const float *a;
            int64_t lda;
            if (direct) {
                a = (const float *)job->positions[j] + c0 * job->row_stride;
                lda = job->row_stride;
            } else {
                upcast_rows(job, j, c0, n, upcast);
                a = upcast;
                lda = dim;
            }
            for (int64_t k0 = 0; k0 < dim; k0 += KC) {
                const int64_t kc = dim - k0 < KC ? dim - k0 : KC;
                const int fresh = k0 == 0, last = k0 + kc == dim;
                /* Tile-outer, panel-inner: a tile's six candidate rows stay in L1 while the packed
                 * query panels stream past them in order (what the hardware prefetcher reads best). */
                for (int64_t m0 = 0; m0 < n; m0 += mr_full) {
                    const int mr = (int)(n - m0 < mr_full ? n - m0 : mr_full);
                    const float *tile_a = a + m0 * lda + k0;
                    for (int64_t p0 = 0; p0 < padded;) {
                        const int64_t width = padded - p0 >= 2 * isa->lanes ? 2 * isa->lanes : isa->lanes;
                        const float *panel = packed + p0 * dim + k0 * width;
                        float *tile_partial = partial + m0 * padded + p0;
                        float *tile_best = best + m0 * padded + p0;
                        (width == isa->lanes ? isa->narrow : isa->wide)(mr, tile_a, lda, panel, kc, tile_partial,
                                                                         tile_best, padded, fresh, last, j == 0);
                        p0 += width;
                    }
                }
            }
        }
        sum_maxima(job, best, padded, c0, n, columns);
    }
    free(packed); free(upcast); free(partial); free(best); free(columns);
    return 0;
}

/* ISA wanted: 0 = the widest this CPU has, 1 = AVX2, 2 = AVX-512, 3 = AMX (NULL if this CPU lacks it). */
static const Isa *pick_isa(int wanted) {
    if (wanted == 1)
        return &ISA_AVX2;
    if (wanted == 3 || wanted == 0) {
        if (amx_usable())
            return wanted == 3 ? &ISA_AMX : &ISA_AMX_AUTO;
        if (wanted == 3)
            return NULL;
    }
    if (wanted == 2 || wanted == 0)
        return cpu_has_avx512() ? &ISA_AVX512 : wanted == 0 ? &ISA_AVX2 : NULL;
    return NULL;
}

#else /* not x86-64 */

typedef struct Isa Isa;
static int run_job(const Job *job, const Isa *isa) { (void)job; (void)isa; return -2; }
static int cpu_ok(void) { return 0; }
static int cpu_has_avx512(void) { return 0; }
static int amx_usable(void) { return 0; }
static const Isa *pick_isa(int wanted) { (void)wanted; return NULL; }
static PyObject *py_topk(PyObject *self, PyObject *args) {
    (void)self; (void)args;
    PyErr_SetString(PyExc_RuntimeError, "the compiled top-k needs an x86-64 CPU; use torch.topk");
    return NULL;
}

#endif

static PyObject *py_available(PyObject *self, PyObject *args) {
    (void)self; (void)args;
    return PyBool_FromLong(cpu_ok());
}

static PyObject *py_has_avx512(PyObject *self, PyObject *args) {
    (void)self; (void)args;
    return PyBool_FromLong(cpu_has_avx512());
}

/*
 * score(queries, rows, r_q, dim, positions, row_stride, dtype, scales, scale_stride, groups,
 *       count, out, out_stride, isa)
 * Pointers are integers (tensor.data_ptr()); `positions` and `scales` are bytes holding r_c
 * native uint64 pointers (scales may be empty unless dtype is int8). The GIL is released
 * while the kernel runs. The caller validates shapes; this only guards against values that
 * would make the kernel index out of range.
 */
static PyObject *py_has_amx(PyObject *self, PyObject *args) {
    (void)self; (void)args;
    return PyBool_FromLong(cpu_ok() && amx_usable());
}

static PyObject *py_score(PyObject *self, PyObject *args) {
    (void)self;
    unsigned long long queries, out, index = 0;
    long long rows, r_q, dim, row_stride, scale_stride, groups, count, out_stride;
    int dtype, wanted = 0;
    Py_buffer positions, scales;
    if (!PyArg_ParseTuple(args, "KLLLy*Liy*LLLKL|iK", &queries, &rows, &r_q, &dim, &positions, &row_stride,
                          &dtype, &scales, &scale_stride, &groups, &count, &out, &out_stride, &wanted, &index))
        return NULL;
    PyObject *result = NULL;
    const int64_t r_c = (int64_t)(positions.len / (Py_ssize_t)sizeof(void *));
    const Isa *isa = cpu_ok() ? pick_isa(wanted) : NULL;
    if (!isa) {
        PyErr_SetString(PyExc_RuntimeError, "this CPU lacks the instructions asked for; use the BLAS path");
    } else if (rows <= 0 || r_q <= 0 || rows % r_q != 0 || dim <= 0 || r_c <= 0 || count < 0 ||
               dtype < DTYPE_F32 || dtype > DTYPE_I8 || out_stride < count ||
               (dtype == DTYPE_I8 && (groups <= 0 || dim % groups != 0 ||
                                       scales.len != positions.len))) {
        PyErr_SetString(PyExc_ValueError, "maxsim kernel: inconsistent arguments");
    } else {
        Job job = {(const float *)(uintptr_t)queries, rows, r_q, dim, (const void *const *)positions.buf, r_c,
                   row_stride, dtype, (const float *const *)scales.buf, scale_stride, groups, count,
                   (float *)(uintptr_t)out, out_stride, (const int64_t *)(uintptr_t)index};
        int status;
        Py_BEGIN_ALLOW_THREADS
        status = run_job(&job, isa);
        Py_END_ALLOW_THREADS
        if (status == 0) {
            Py_INCREF(Py_None);
            result = Py_None;
        } else {
            PyErr_NoMemory();
        }
    }
    PyBuffer_Release(&positions);
    PyBuffer_Release(&scales);
    return result;
}

static PyMethodDef methods[] = {
    {"available", py_available, METH_NOARGS, "True when this CPU can run the fused kernel (AVX2, FMA, F16C)."},
    {"has_avx512", py_has_avx512, METH_NOARGS, "True when this CPU also runs the AVX-512 variant."},
    {"has_amx", py_has_amx, METH_NOARGS, "True when this CPU and OS run the AMX path (float16 / bfloat16 / int8 candidates)."},
    {"score", py_score, METH_VARARGS, "Fused budgeted MaxSim over one run of candidates (see maxsim.c)."},
    {"topk", py_topk, METH_VARARGS, "Each row's k largest fp32 scores, best first (see topk.h)."},
    {NULL, NULL, 0, NULL}};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, .m_name = "_maxsim", .m_doc = "Fused budgeted MaxSim kernel.", .m_size = -1, .m_methods = methods};

PyMODINIT_FUNC PyInit__maxsim(void) { return PyModule_Create(&module); }
