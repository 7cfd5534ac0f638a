/*
 * The micro tile of maxsim.c, written once for both vector widths: maxsim.c includes this file
 * twice, with TILE_* set for AVX2 (8 lanes, 6 candidate rows) and for AVX-512 (16 lanes, 8 rows).
 * TILE_ROWS(X) expands X(r) for every candidate row r < TILE_MR.
 *
 * One micro tile: `mr` candidate rows (a, row stride lda) times a packed query panel
 * (kc x width, k-major) over kc values of D. `partial` holds the running sums of earlier
 * K blocks (mr x width, read unless `fresh`); when `last`, the sums are folded into
 * `best` (max, or plain store when `first_position`), otherwise written to `partial`.
 *
 * The accumulators are named variables (acc<r>_<half>), not an array: GCC keeps an array of
 * vectors in memory and stored all twelve AVX2 accumulators to the stack on every k step
 * (one 256-bit store per FMA; three times slower on Zen 3). `mr` and `width` are
 * compile-time constants at every call site, so the unused rows and halves fold away.
 * tests/native/test_kernel_build.py disassembles the built tiles and fails on any vector
 * store to the stack.
 */
#define TILE_CAT2(a, b) a##_##b
#define TILE_CAT(a, b) TILE_CAT2(a, b)
#define TILE_FN(name) TILE_CAT(name, TILE_SUFFIX)

#define TILE_DECLARE(r) TILE_VEC acc##r##_0 = TILE_ZERO(), acc##r##_1 = TILE_ZERO();
#define TILE_RESUME(r)                                                                                    \
    if (r < mr) {                                                                                         \
        acc##r##_0 = TILE_LOADU(partial + r * ld);                                                        \
        if (two) acc##r##_1 = TILE_LOADU(partial + r * ld + TILE_LANES);                                  \
    }
#define TILE_STEP(r)                                                                                      \
    if (r < mr) {                                                                                         \
        const TILE_VEC value = TILE_BROADCAST(a + r * lda + k);                                           \
        acc##r##_0 = TILE_FMA(value, b0, acc##r##_0);                                                     \
        if (two) acc##r##_1 = TILE_FMA(value, b1, acc##r##_1);                                            \
    }
#define TILE_STORE_ONE(slot, value)                                                                       \
    TILE_STOREU((slot), last && !first_position ? TILE_MAX(TILE_LOADU(slot), (value)) : (value))
#define TILE_FINISH(r)                                                                                    \
    if (r < mr) {                                                                                         \
        float *slot = (last ? best : partial) + r * ld;                                                   \
        TILE_STORE_ONE(slot, acc##r##_0);                                                                 \
        if (two) TILE_STORE_ONE(slot + TILE_LANES, acc##r##_1);                                           \
    }

TILE_TARGET static inline __attribute__((always_inline)) void TILE_FN(micro_tile)(
    const int mr, const int width, const float *a, int64_t lda, const float *panel, int64_t kc,
    float *partial, float *best, int64_t ld, int fresh, int last, int first_position) {
    const int two = width > TILE_LANES;
    TILE_ROWS(TILE_DECLARE)
    if (!fresh) {
        TILE_ROWS(TILE_RESUME)
    }
    for (int64_t k = 0; k < kc; k++) {
        const TILE_VEC b0 = TILE_LOAD(panel + k * width);
        const TILE_VEC b1 = two ? TILE_LOAD(panel + k * width + TILE_LANES) : b0;
        TILE_ROWS(TILE_STEP)
    }
    TILE_ROWS(TILE_FINISH)
}

#undef TILE_DECLARE
#undef TILE_RESUME
#undef TILE_STEP
#undef TILE_STORE_ONE
#undef TILE_FINISH

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
