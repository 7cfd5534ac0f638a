/*
 * The micro tile of maxsim.c, written once for both vector widths: maxsim.c includes this file
 * twice, with TILE_* set for AVX2 (8 lanes, 6 candidate rows) and for AVX-512 (16 lanes, 8 rows).
 *
 * One micro tile: `mr` candidate rows (a, row stride lda) times a packed query panel
 * (kc x width, k-major) over kc values of D. `partial` holds the running sums of earlier
 * K blocks (mr x width, read unless `fresh`); when `last`, the sums are folded into
 * `best` (max, or plain store when `first_position`), otherwise written to `partial`.
 * `mr` and `width` are compile-time constants at every call site, so each variant
 * keeps its accumulators in registers.
 */
#define TILE_CAT2(a, b) a##_##b
#define TILE_CAT(a, b) TILE_CAT2(a, b)
#define TILE_FN(name) TILE_CAT(name, TILE_SUFFIX)

TILE_TARGET static inline __attribute__((always_inline)) void TILE_FN(micro_tile)(
    const int mr, const int width, const float *a, int64_t lda, const float *panel, int64_t kc,
    float *partial, float *best, int64_t ld, int fresh, int last, int first_position) {
    TILE_VEC acc[TILE_MR][2];
    const int halves = width / TILE_LANES;
    for (int r = 0; r < mr; r++)
        for (int h = 0; h < halves; h++)
            acc[r][h] = fresh ? TILE_ZERO() : TILE_LOADU(partial + r * ld + h * TILE_LANES);
    for (int64_t k = 0; k < kc; k++) {
        const TILE_VEC b0 = TILE_LOAD(panel + k * width);
        const TILE_VEC b1 = halves > 1 ? TILE_LOAD(panel + k * width + TILE_LANES) : b0;
        for (int r = 0; r < mr; r++) {
            const TILE_VEC value = TILE_BROADCAST(a + r * lda + k);
            acc[r][0] = TILE_FMA(value, b0, acc[r][0]);
            if (halves > 1)
                acc[r][1] = TILE_FMA(value, b1, acc[r][1]);
        }
    }
    for (int r = 0; r < mr; r++)
        for (int h = 0; h < halves; h++) {
            float *slot = (last ? best : partial) + r * ld + h * TILE_LANES;
            if (last && !first_position)
                TILE_STOREU(slot, TILE_MAX(TILE_LOADU(slot), acc[r][h]));
            else
                TILE_STOREU(slot, acc[r][h]);
        }
}

#define TILE_CASE(M, W)                                                                                   \
    case M:                                                                                               \
        TILE_FN(micro_tile)(M, W, a, lda, panel, kc, partial, best, ld, fresh, last, first_position);     \
        break;

/* A panel of two vectors of query rows (16 for AVX2, 32 for AVX-512). */
TILE_TARGET static void TILE_FN(tile_wide)(int mr, const float *a, int64_t lda, const float *panel, int64_t kc,
                                           float *partial, float *best, int64_t ld, int fresh, int last,
                                           int first_position) {
    switch (mr) {
        TILE_CASE(1, 2 * TILE_LANES) TILE_CASE(2, 2 * TILE_LANES) TILE_CASE(3, 2 * TILE_LANES)
        TILE_CASE(4, 2 * TILE_LANES) TILE_CASE(5, 2 * TILE_LANES) TILE_CASE(6, 2 * TILE_LANES)
#if TILE_MR > 6
        TILE_CASE(7, 2 * TILE_LANES) TILE_CASE(8, 2 * TILE_LANES)
#endif
    }
}

/* The last panel when the (padded) query rows leave one vector's worth. */
TILE_TARGET static void TILE_FN(tile_narrow)(int mr, const float *a, int64_t lda, const float *panel, int64_t kc,
                                             float *partial, float *best, int64_t ld, int fresh, int last,
                                             int first_position) {
    switch (mr) {
        TILE_CASE(1, TILE_LANES) TILE_CASE(2, TILE_LANES) TILE_CASE(3, TILE_LANES)
        TILE_CASE(4, TILE_LANES) TILE_CASE(5, TILE_LANES) TILE_CASE(6, TILE_LANES)
#if TILE_MR > 6
        TILE_CASE(7, TILE_LANES) TILE_CASE(8, TILE_LANES)
#endif
    }
}

#undef TILE_CASE
#undef TILE_FN
#undef TILE_CAT
#undef TILE_CAT2
