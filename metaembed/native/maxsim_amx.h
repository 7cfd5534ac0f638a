/*
 * The AMX path of maxsim.c: Intel's tile matrix unit (AMX-TILE + AMX-BF16, Sapphire Rapids and
 * later) multiplies bf16 tiles into fp32 sums at several times the fp32 FMA rate of AVX-512. It
 * serves the compact storage whose values bf16 holds exactly, at fp32 accuracy:
 *
 * - A float16 value has an 11-bit significand, so it is the exact sum of two bf16 values
 *   (c = c_hi + c_lo: c_hi its value rounded to 8 bits, c_lo the remaining 3 bits); a bfloat16 one is
 *   its own c_hi; an int8 code is a small integer (c_hi), its group's scale applied to the group's sum.
 * - A query value (fp32) is split the same way into q_hi + q_mid + q_lo, the rest below 2^-24 |q|.
 * - Each product of bf16 values is exact in fp32, and the tiles accumulate in fp32. The scores use
 *   c_hi (q_hi + q_mid + q_lo) + c_lo (q_hi + q_mid): what is dropped, c_lo q_lo, is below 2^-24 |q| |c|,
 *   so the results agree with fp32 arithmetic to its own rounding (tests/native: float64 reference).
 *
 * Layout: for a block of candidates and each position j < r_c, the j-th vectors are converted into
 * bf16 rows (hi, and lo for float16) of D values padded to a multiple of 32, 16 rows per tile. Query
 * rows are packed once, in the pair-interleaved layout the tile unit wants for its right operand:
 * one 1 KiB tile per 16 query rows and 32 values of D, for each of the three parts. A pass holds four
 * 16 x 16 fp32 result tiles (16 candidates x 64 query rows) over one K block (AMX_KC values; for int8
 * one scale group), whose query tiles stay in L1 while the candidate tiles stream past; the sums go
 * to memory between K blocks, then are folded into the running maximum with AVX-512, and the r_q
 * sums are those of the other paths.
 */
#include <cpuid.h>
#include <sys/syscall.h>
#include <unistd.h>

#define TARGET_AMX __attribute__((target("amx-tile,amx-bf16,avx512f,avx512bw,avx512vl,avx2,fma,f16c")))

#define AMX_K 32          /* bf16 values of D per tile row */
#define AMX_TILE_VALUES 512 /* uint16 values in one 16 x 64-byte operand tile */
#ifndef AMX_KC
#define AMX_KC 128 /* values of D per K block (4 steps of 32) */
#endif
#define AMX_QT 4          /* query tiles (of 16 rows) per pass: result tiles 0-3 */
#ifndef AMX_BLOCK_BYTES
#define AMX_BLOCK_BYTES (512 * 1024) /* bf16 hi + lo bytes per candidate block */
#endif

#define ARCH_REQ_XCOMP_PERM 0x1023 /* arch_prctl request of <asm/prctl.h> (Linux 5.16+) */
#define XFEATURE_XTILEDATA 18

/* The 64-byte tile configuration of palette 1 (Intel SDM, LDTILECFG). */
typedef struct {
    uint8_t palette_id, start_row, reserved[14];
    uint16_t colsb[16];
    uint8_t rows[16];
} TileConfig;

static int amx_usable(void) {
    static int state = -1; /* -1 unknown, 0 no, 1 yes; races only write the same value */
    if (state < 0) {
        unsigned a, b, c, d;
        int yes = cpu_has_avx512() && __get_cpuid_max(0, NULL) >= 7;
        if (yes) {
            __cpuid_count(7, 0, a, b, c, d);
            yes = ((d >> 22) & 1) && ((d >> 24) & 1) && ((b >> 30) & 1) && ((b >> 31) & 1); /* AMX-BF16, AMX-TILE, AVX512BW, AVX512VL */
        }
        /* Linux hands out the 8 KiB of tile state only on request (ARCH_REQ_XCOMP_PERM, XTILEDATA);
         * without it the first tile instruction faults. The permission is the whole process's. */
        if (yes)
            yes = syscall(SYS_arch_prctl, ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA) == 0;
        state = yes;
    }
    return state;
}

/* Round fp32 bits to the nearest bf16 (ties to even) and return them as fp32 bits; values are finite. */
static inline uint32_t bf16_round_bits(uint32_t bits) { return (bits + 0x7FFFu + ((bits >> 16) & 1u)) & 0xFFFF0000u; }

/* Pack query rows (rows, dim) fp32 into right-operand tiles of their bf16 parts q_hi, q_mid, q_lo: for
 * query tile b (rows 16b..16b+15) and step s (values 32s..32s+31), tile (b * steps + s) of part p
 * holds at [r][2n + t] part p of value 32s + 2r + t of row 16b + n. Rows past `rows` and values past
 * `dim` are zero. */
static void amx_pack_queries(const Job *job, int64_t tiles, int64_t steps, uint16_t *const parts[3]) {
    for (int64_t b = 0; b < tiles; b++)
        for (int64_t s = 0; s < steps; s++)
            for (int64_t r = 0; r < 16; r++)
                for (int64_t n = 0; n < 16; n++)
                    for (int64_t t = 0; t < 2; t++) {
                        const int64_t row = 16 * b + n, k = AMX_K * s + 2 * r + t;
                        const int64_t at = (b * steps + s) * AMX_TILE_VALUES + r * 32 + 2 * n + t;
                        float rest = row < job->rows && k < job->dim ? job->queries[row * job->dim + k] : 0.0f;
                        for (int p = 0; p < 3; p++) {
                            uint32_t bits, rounded;
                            float part;
                            memcpy(&bits, &rest, sizeof bits);
                            rounded = bf16_round_bits(bits);
                            memcpy(&part, &rounded, sizeof part);
                            parts[p][at] = (uint16_t)(rounded >> 16);
                            rest -= part;
                        }
                    }
}

/* Candidates `first`..`first + n - 1` of one position (through job->index when set) as bf16 rows
 * (`kp` values, zero padded) that hold each value exactly: float16 as hi + lo (11 significant bits:
 * the first 8, rounded to nearest, and the remaining 3 or fewer), bfloat16 as itself, int8 as its code
 * (a small integer; `scale` receives each row's group scales). Returns whether a lo part was written. */
TARGET_AMX static int amx_split_rows(const Job *job, int64_t position, int64_t first, int64_t n, int64_t kp,
                                     uint16_t *hi, uint16_t *lo, float *scale) {
    const int64_t dim = job->dim;
    const __m512i bias = _mm512_set1_epi32(0x7FFF), one = _mm512_set1_epi32(1), top = _mm512_set1_epi32((int)0xFFFF0000u);
    for (int64_t i = 0; i < n; i++) {
        const int64_t row = candidate_row(job, position, first, i, n);
        uint16_t *h = hi + i * kp, *l = lo + i * kp;
        if (job->dtype == DTYPE_I8) {
            const int8_t *src = (const int8_t *)job->positions[position] + row * job->row_stride;
            memcpy(scale + i * job->groups, job->scales[position] + row * job->scale_stride,
                   (size_t)job->groups * sizeof(float));
            for (int64_t k = 0; k < kp; k += 16) {
                const __mmask16 valid = k + 16 <= dim ? (__mmask16)0xFFFF : k < dim ? (__mmask16)((1u << (dim - k)) - 1) : 0;
                const __m512 value = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_maskz_loadu_epi8(valid, src + k)));
                _mm256_storeu_si256((__m256i *)(h + k), _mm512_cvtepi32_epi16(_mm512_srli_epi32(_mm512_castps_si512(value), 16)));
            }
            continue;
        }
        const uint16_t *src = (const uint16_t *)job->positions[position] + row * job->row_stride;
        for (int64_t k = 0; k < kp; k += 16) {
            const __mmask16 valid = k + 16 <= dim ? (__mmask16)0xFFFF : k < dim ? (__mmask16)((1u << (dim - k)) - 1) : 0;
            const __m256i raw = _mm256_maskz_loadu_epi16(valid, src + k);
            if (job->dtype == DTYPE_BF16) {
                _mm256_storeu_si256((__m256i *)(h + k), raw);
                continue;
            }
            const __m512 value = _mm512_cvtph_ps(raw);
            const __m512i bits = _mm512_castps_si512(value);
            const __m512i rounded = _mm512_and_si512(
                _mm512_add_epi32(bits, _mm512_add_epi32(bias, _mm512_and_si512(_mm512_srli_epi32(bits, 16), one))), top);
            const __m512 rest = _mm512_sub_ps(value, _mm512_castsi512_ps(rounded)); /* exact: <= 3 bits */
            _mm256_storeu_si256((__m256i *)(h + k), _mm512_cvtepi32_epi16(_mm512_srli_epi32(rounded, 16)));
            _mm256_storeu_si256((__m256i *)(l + k),
                                _mm512_cvtepi32_epi16(_mm512_srli_epi32(_mm512_castps_si512(rest), 16)));
        }
    }
    return job->dtype == DTYPE_F16;
}

/* kk steps of D for 16 candidates (hi / lo rows at stride `a_bytes`) against `nq` <= 4 query tiles
 * (part p's tile of query tile t and step s at parts[p] + (t * steps + s) tiles), into result tiles
 * 0..nq-1: c_hi q_hi + c_lo q_hi + c_hi q_mid + c_lo q_mid + c_hi q_lo (c_lo q_lo is below 2^-24);
 * without a lo part (`lo` 0) the three c_hi products. */
TARGET_AMX static inline __attribute__((always_inline)) void amx_steps(
    const uint16_t *ahi, const uint16_t *alo, int64_t a_bytes, const uint16_t *const parts[3], int64_t steps,
    int64_t kk, int nq, int lo) {
    for (int64_t s = 0; s < kk; s++) {
        _tile_loadd(4, ahi + s * AMX_K, a_bytes);
        if (lo) _tile_loadd(5, alo + s * AMX_K, a_bytes);
#define AMX_QUERY_TILE(t)                                                                                 \
    if (t < nq) {                                                                                         \
        const int64_t at = ((int64_t)t * steps + s) * AMX_TILE_VALUES;                                    \
        _tile_loadd(6, parts[0] + at, 64);                                                                \
        _tile_loadd(7, parts[1] + at, 64);                                                                \
        _tile_dpbf16ps(t, 4, 6);                                                                          \
        if (lo) _tile_dpbf16ps(t, 5, 6);                                                                  \
        _tile_dpbf16ps(t, 4, 7);                                                                          \
        if (lo) _tile_dpbf16ps(t, 5, 7);                                                                  \
        _tile_loadd(6, parts[2] + at, 64);                                                                \
        _tile_dpbf16ps(t, 4, 6);                                                                          \
    }
        AMX_QUERY_TILE(0) AMX_QUERY_TILE(1) AMX_QUERY_TILE(2) AMX_QUERY_TILE(3)
#undef AMX_QUERY_TILE
    }
}

/* One K block of one pass: result tiles 0..nq-1 start at zero (`fresh`) or from `sums` (nq x 16 x 16
 * fp32), run kk steps, and go back to `sums`. */
TARGET_AMX static void amx_pass(const uint16_t *ahi, const uint16_t *alo, int64_t a_bytes,
                                const uint16_t *const parts[3], int64_t steps, int64_t kk, int nq, float *sums,
                                int fresh, int lo) {
#define AMX_RESUME(t) if (t < nq) { if (fresh) _tile_zero(t); else _tile_loadd(t, sums + t * 256, 64); }
    AMX_RESUME(0) AMX_RESUME(1) AMX_RESUME(2) AMX_RESUME(3)
#undef AMX_RESUME
    switch (nq + 4 * !lo) { /* tile numbers are immediates: one copy per count */
    case 1: amx_steps(ahi, alo, a_bytes, parts, steps, kk, 1, 1); break;
    case 2: amx_steps(ahi, alo, a_bytes, parts, steps, kk, 2, 1); break;
    case 3: amx_steps(ahi, alo, a_bytes, parts, steps, kk, 3, 1); break;
    case 4: amx_steps(ahi, alo, a_bytes, parts, steps, kk, 4, 1); break;
    case 5: amx_steps(ahi, alo, a_bytes, parts, steps, kk, 1, 0); break;
    case 6: amx_steps(ahi, alo, a_bytes, parts, steps, kk, 2, 0); break;
    case 7: amx_steps(ahi, alo, a_bytes, parts, steps, kk, 3, 0); break;
    default: amx_steps(ahi, alo, a_bytes, parts, steps, kk, 4, 0); break;
    }
#define AMX_STORE(t) if (t < nq) _tile_stored(t, sums + t * 256, 64);
    AMX_STORE(0) AMX_STORE(1) AMX_STORE(2) AMX_STORE(3)
#undef AMX_STORE
}

/* The storage the tiles hold exactly: float16, bfloat16, and int8 whose scale groups are whole tile steps. */
static int amx_serves(const Job *job) {
    return job->dtype == DTYPE_F16 || job->dtype == DTYPE_BF16 ||
           (job->dtype == DTYPE_I8 && job->dim / job->groups % AMX_K == 0);
}

TARGET_AMX static int run_job_amx(const Job *job) {
    const int64_t steps = (job->dim + AMX_K - 1) / AMX_K, kp = steps * AMX_K;
    const int64_t tiles = (job->rows + 15) / 16, padded = tiles * 16, groups = (tiles + AMX_QT - 1) / AMX_QT;
    /* int8: a K block is one group of values under one scale, whose sums are scaled on the way out */
    const int scaled = job->dtype == DTYPE_I8;
    const int64_t block = scaled ? job->dim / job->groups / AMX_K : AMX_KC / AMX_K;
    int64_t cb = AMX_BLOCK_BYTES / (kp * 4) / 16 * 16;
    cb = cb < 16 ? 16 : cb > 256 ? 256 : cb;
    float *query_parts = scratch(3 * tiles * steps * AMX_TILE_VALUES / 2);
    uint16_t *ahi = (uint16_t *)scratch(cb * kp / 2), *alo = (uint16_t *)scratch(cb * kp / 2);
    float *best = scratch(cb * padded), *sums = scratch(cb * groups * AMX_QT * 16);
    float *scale = scratch(cb * job->groups), *group_sums = scratch(AMX_QT * 256);
    if (!query_parts || !ahi || !alo || !best || !sums || !scale || !group_sums) {
        free(query_parts); free(ahi); free(alo); free(best); free(sums); free(scale); free(group_sums);
        return -1;
    }
    uint16_t *const parts[3] = {(uint16_t *)query_parts, (uint16_t *)query_parts + tiles * steps * AMX_TILE_VALUES,
                                (uint16_t *)query_parts + 2 * tiles * steps * AMX_TILE_VALUES};
    TileConfig config;
    memset(&config, 0, sizeof config);
    config.palette_id = 1;
    for (int t = 0; t < 8; t++) {
        config.rows[t] = 16;
        config.colsb[t] = 64;
    }
    _tile_loadconfig(&config);
    amx_pack_queries(job, tiles, steps, parts);
    for (int64_t c0 = 0; c0 < job->count; c0 += cb) {
        const int64_t n = job->count - c0 < cb ? job->count - c0 : cb, n16 = (n + 15) / 16 * 16;
        if (n16 > n) { /* the last tile's missing candidates: zero rows, results ignored */
            memset(ahi + n * kp, 0, (size_t)((n16 - n) * kp) * sizeof(uint16_t));
            memset(alo + n * kp, 0, (size_t)((n16 - n) * kp) * sizeof(uint16_t));
        }
        for (int64_t j = 0; j < job->r_c; j++) {
            const int lo = amx_split_rows(job, j, c0, n, kp, ahi, alo, scale);
            /* K block outer, then query group, then candidate tile: a K block of a query group's tiles
             * (4 x 4 steps x 3 parts x 1 KiB = 48 KiB at most) is reused by every candidate tile. */
            for (int64_t s0 = 0; s0 < steps; s0 += block) {
                const int64_t kk = steps - s0 < block ? steps - s0 : block;
                for (int64_t g = 0; g < groups; g++) {
                    const int nq = (int)(tiles - g * AMX_QT < AMX_QT ? tiles - g * AMX_QT : AMX_QT);
                    const int64_t at = (g * AMX_QT * steps + s0) * AMX_TILE_VALUES;
                    const uint16_t *const group_parts[3] = {parts[0] + at, parts[1] + at, parts[2] + at};
                    for (int64_t m0 = 0; m0 < n16; m0 += 16) {
                        float *tile_sums = sums + (m0 / 16 * groups + g) * AMX_QT * 256;
                        amx_pass(ahi + m0 * kp + s0 * AMX_K, alo + m0 * kp + s0 * AMX_K, kp * 2, group_parts, steps,
                                 kk, nq, scaled ? group_sums : tile_sums, scaled || s0 == 0, lo);
                        if (scaled) /* tile_sums[t][i] (+)= candidate m0 + i's scale of this group x its sums */
                            for (int64_t i = 0; i < 16; i++) {
                                const __m512 factor = _mm512_set1_ps(m0 + i < n ? scale[(m0 + i) * job->groups + s0 / block] : 0.0f);
                                for (int t = 0; t < nq; t++) {
                                    float *slot = tile_sums + t * 256 + i * 16;
                                    const __m512 part = _mm512_mul_ps(factor, _mm512_loadu_ps(group_sums + t * 256 + i * 16));
                                    _mm512_storeu_ps(slot, s0 == 0 ? part : _mm512_add_ps(_mm512_loadu_ps(slot), part));
                                }
                            }
                    }
                }
            }
            /* sums[(tile m, group g)][t][i][n]: candidate 16m + i, query row 16 (4g + t) + n */
            for (int64_t m0 = 0; m0 < n16; m0 += 16)
                for (int64_t b = 0; b < tiles; b++) {
                    const float *tile = sums + ((m0 / 16 * groups + b / AMX_QT) * AMX_QT + b % AMX_QT) * 256;
                    for (int64_t i = 0; i < 16 && m0 + i < n; i++) {
                        float *slot = best + (m0 + i) * padded + b * 16;
                        const __m512 value = _mm512_loadu_ps(tile + i * 16);
                        _mm512_storeu_ps(slot, j == 0 ? value : _mm512_max_ps(_mm512_loadu_ps(slot), value));
                    }
                }
        }
        sum_maxima(job, best, padded, c0, n, sums); /* sums (>= cb x padded values) is free again here */
    }
    _tile_release();
    free(query_parts); free(ahi); free(alo); free(best); free(sums); free(scale); free(group_sums);
    return 0;
}
