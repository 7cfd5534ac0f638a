/*
 * The encoder of the score-aware product quantiser apq2 (metaembed/index/codecs/anisotropic.py).
 *
 * For each unit vector x, cut into M runs of `run` values, it picks one of 256 centroids per run
 * to minimise the anisotropic loss |r|^2 + (eta - 1) (r . x)^2, r = x - x_hat, by coordinate
 * descent over the runs, started from the nearest centroids; each step tries all 256 centroids
 * of its run. It is the same arithmetic as the module's torch path (which stays the fallback
 * where this extension is not built): with p = x_m . c and A = (r . x with run m's error left out)
 * + |x_m|^2, changing run m to c gives a loss, up to terms that do not depend on c, of
 *     |c|^2 - 2 p + (eta - 1) (A - p)^2.
 * Why C: the torch path materialises an (n, M, 256) table of inner products and walks it with
 * M x passes small elementwise ops and an argmin over 256 (training and coding the 99k passages
 * of benchmarks/results/codecs-scale-zen5-avx512.md took 541 s with it, 40 s with this); here
 * the table of one vector (M x 256 floats, 96 KiB at D = 384) stays in L2 and each step is one
 * pass over 256 floats.
 *
 * Portable C (the compiler vectorises the inner loops); fp32 throughout. The caller checks shapes
 * and hands each thread its own rows; the GIL is released while it runs.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <stdlib.h>

#define CENTROIDS 256
#define LANES 16

/* Compiled for AVX-512, AVX2 + FMA and the baseline; the loader picks the widest this CPU runs. The
 * x86-64 levels (GCC 11+) also bring FMA and AVX-512 VL/BW; older GCC gets the plain feature clones. */
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && __GNUC__ >= 11
#define WIDEST __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#elif defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define WIDEST __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define WIDEST
#endif

/* The first position of the smallest of 256 values: LANES running minima (kept in vector
 * registers), their minimum, then the first position holding it, as a minimum over positions
 * (both passes vectorise; one loop with a branch per value would not, and mispredicts). */
static inline int argmin256(const float *values) {
    float lanes[LANES];
    for (int k = 0; k < LANES; k++)
        lanes[k] = values[k];
    for (int c = LANES; c < CENTROIDS; c += LANES)
        for (int k = 0; k < LANES; k++)
            lanes[k] = values[c + k] < lanes[k] ? values[c + k] : lanes[k];
    float lowest = lanes[0];
    for (int k = 1; k < LANES; k++)
        lowest = lanes[k] < lowest ? lanes[k] : lowest;
    int first = CENTROIDS;
    for (int c = 0; c < CENTROIDS; c++) {
        const int here = values[c] == lowest ? c : CENTROIDS;
        first = here < first ? here : first;
    }
    return first < CENTROIDS ? first : 0; /* only NaNs find none; the codec never passes them */
}

/* Codes (n, M) for vectors (n, M * run), codebooks transposed (M, run, 256) so the 256 centroids'
 * inner products are one vectorised loop per value, lengths (M, 256) = |c|^2. */
WIDEST static int encode(const float *vectors, int64_t n, int64_t width, int64_t run, const float *centroids,
                  const float *lengths, float eta, int passes, uint8_t *codes) {
    float *products = malloc(sizeof(float) * (size_t)(width * CENTROIDS));
    float *squares = malloc(sizeof(float) * (size_t)width);
    float *parallel = malloc(sizeof(float) * (size_t)width);
    int *chosen = malloc(sizeof(int) * (size_t)width);
    if (!products || !squares || !parallel || !chosen) {
        free(products); free(squares); free(parallel); free(chosen);
        return -1;
    }
    const float weight = eta - 1.0f;
    for (int64_t v = 0; v < n; v++) {
        const float *x = vectors + v * width * run;
        float along = 0.0f; /* r . x, summed over the runs */
        for (int64_t m = 0; m < width; m++) {
            const float *xm = x + m * run, *cm = centroids + m * CENTROIDS * run;
            float *pm = products + m * CENTROIDS;
            float square = 0.0f;
            for (int64_t r = 0; r < run; r++)
                square += xm[r] * xm[r];
            for (int c = 0; c < CENTROIDS; c++)
                pm[c] = xm[0] * cm[c];
            for (int64_t r = 1; r < run; r++)
                for (int c = 0; c < CENTROIDS; c++)
                    pm[c] += xm[r] * cm[r * CENTROIDS + c];
            const float *lm = lengths + m * CENTROIDS;
            float distance[CENTROIDS];
            for (int c = 0; c < CENTROIDS; c++)
                distance[c] = lm[c] - 2.0f * pm[c];
            const int best = argmin256(distance); /* the nearest centroid: pq2's code */
            chosen[m] = best;
            squares[m] = square;
            parallel[m] = square - pm[best];
            along += parallel[m];
        }
        for (int pass = 0; pass < passes; pass++) {
            for (int64_t m = 0; m < width; m++) {
                const float *pm = products + m * CENTROIDS, *lm = lengths + m * CENTROIDS;
                const float rest = along - parallel[m];
                const float offset = rest + squares[m];
                float loss[CENTROIDS];
                for (int c = 0; c < CENTROIDS; c++) {
                    const float shifted = offset - pm[c];
                    loss[c] = lm[c] - 2.0f * pm[c] + weight * shifted * shifted;
                }
                const int best = argmin256(loss);
                chosen[m] = best;
                parallel[m] = squares[m] - pm[best];
                along = rest + parallel[m];
            }
        }
        for (int64_t m = 0; m < width; m++)
            codes[v * width + m] = (uint8_t)chosen[m];
    }
    free(products); free(squares); free(parallel); free(chosen);
    return 0;
}

/*
 * encode(vectors, n, width, run, centroids, lengths, eta, passes, codes)
 * Pointers are integers (tensor.data_ptr()) of contiguous fp32 arrays (centroids transposed to
 * (M, run, 256)) and a uint8 output; the caller validates their shapes. A NaN never reaches here
 * (the codec refuses vectors whose norm is not 1), so the search for the minimum ends.
 */
static PyObject *py_encode(PyObject *self, PyObject *args) {
    (void)self;
    unsigned long long vectors, centroids, lengths, codes;
    long long n, width, run;
    float eta;
    int passes;
    if (!PyArg_ParseTuple(args, "KLLLKKfiK", &vectors, &n, &width, &run, &centroids, &lengths, &eta, &passes, &codes))
        return NULL;
    if (n < 0 || width <= 0 || run <= 0 || passes < 0) {
        PyErr_SetString(PyExc_ValueError, "apq encoder: inconsistent arguments");
        return NULL;
    }
    int status;
    Py_BEGIN_ALLOW_THREADS
    status = encode((const float *)(uintptr_t)vectors, n, width, run, (const float *)(uintptr_t)centroids,
                    (const float *)(uintptr_t)lengths, eta, passes, (uint8_t *)(uintptr_t)codes);
    Py_END_ALLOW_THREADS
    if (status != 0)
        return PyErr_NoMemory();
    Py_RETURN_NONE;
}

static PyMethodDef methods[] = {
    {"encode", py_encode, METH_VARARGS, "apq2 codes of unit vectors by anisotropic coordinate descent (see apq.c)."},
    {NULL, NULL, 0, NULL}};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, .m_name = "_apq", .m_doc = "The apq2 encoder.", .m_size = -1, .m_methods = methods};

PyMODINIT_FUNC PyInit__apq(void) { return PyModule_Create(&module); }
