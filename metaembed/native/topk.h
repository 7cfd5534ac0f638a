/*
 * Each row's k largest scores, for exact search's running top-k (included by maxsim.c).
 *
 * Why: torch.topk over a (16, 100k) score block took 2.4 ms of a 17 ms budget-(1,1) search on
 * 2 cores. Here a row is scanned once, 8 values per compare against the current k-th best; a
 * value above it is inserted into a sorted list of k. Past the first few thousand values that
 * almost never happens (about k ln(n / k) insertions in all for scores in random order), so
 * the scan runs at the speed of reading the row.
 *
 * Order: best first; equal scores keep the lower column first. NaN ranks below every number
 * (torch.topk ranks it first), which exact search never sees: stored and query vectors are
 * finite. k is small (the caller uses torch.topk above TOPK_MAX): an insertion shifts up to k
 * entries. Scores that rise along the row would insert nearly every value (ascending scores: 6x
 * torch.topk's time at k = 10), so a row that needs more than TOPK_BUDGET(n, k) insertions is
 * abandoned and the call reports it; the caller then asks torch.topk.
 */
#define TOPK_BUDGET(n, k) ((n) / 16 + 16 * (k))
#define TOPK_MAX 128

/* Insert (value, column) into the sorted (descending) first `filled` entries, keeping at most k. */
static inline int64_t topk_insert(float *values, int64_t *columns, int64_t filled, int64_t k, float value,
                                  int64_t column) {
    int64_t at = filled < k ? filled : k - 1;
    while (at > 0 && values[at - 1] < value) { /* strict: an equal earlier score stays ahead */
        values[at] = values[at - 1];
        columns[at] = columns[at - 1];
        at--;
    }
    values[at] = value;
    columns[at] = column;
    return filled < k ? filled + 1 : k;
}

/* Returns 0, or -1 when the row ran out of its insertion budget (values/columns then undefined). */
TARGET static int topk_row(const float *row, int64_t n, int64_t k, float *values, int64_t *columns) {
    int64_t filled = 0, c = 0, budget = TOPK_BUDGET(n, k);
    for (; c < k; c++) /* k <= n: the first k fill the list */
        filled = topk_insert(values, columns, filled, k, row[c] == row[c] ? row[c] : -INFINITY, c);
    float threshold = values[k - 1];
    for (; c + 8 <= n; c += 8) {
        int mask = _mm256_movemask_ps(_mm256_cmp_ps(_mm256_loadu_ps(row + c), _mm256_set1_ps(threshold), _CMP_GT_OQ));
        while (mask) {
            const int lane = __builtin_ctz(mask);
            mask &= mask - 1;
            if (row[c + lane] > threshold) { /* the threshold may have risen since the compare */
                if (--budget < 0)
                    return -1;
                topk_insert(values, columns, k, k, row[c + lane], c + lane);
                threshold = values[k - 1];
            }
        }
    }
    for (; c < n; c++)
        if (row[c] > threshold) {
            if (--budget < 0)
                return -1;
            topk_insert(values, columns, k, k, row[c], c);
            threshold = values[k - 1];
        }
    return 0;
}

/*
 * topk(scores, rows, cols, stride, k, values, columns): for each of `rows` rows of fp32 `scores`
 * (row r at scores + r * stride), its k best values and their columns into the contiguous
 * (rows, k) fp32 `values` and int64 `columns`. The GIL is released while it runs. Returns True, or
 * False when a row ran out of its insertion budget (the outputs are then incomplete).
 */
static PyObject *py_topk(PyObject *self, PyObject *args) {
    (void)self;
    unsigned long long scores, values, columns;
    long long rows, cols, stride, k;
    if (!PyArg_ParseTuple(args, "KLLLLKK", &scores, &rows, &cols, &stride, &k, &values, &columns))
        return NULL;
    if (!cpu_ok()) {
        PyErr_SetString(PyExc_RuntimeError, "this CPU lacks AVX2; use torch.topk");
        return NULL;
    }
    if (rows < 0 || k < 1 || k > TOPK_MAX || cols < k || stride < cols) {
        PyErr_SetString(PyExc_ValueError, "topk: inconsistent arguments");
        return NULL;
    }
    int status = 0;
    Py_BEGIN_ALLOW_THREADS
    for (int64_t r = 0; r < rows && status == 0; r++)
        status = topk_row((const float *)(uintptr_t)scores + r * stride, cols, k, (float *)(uintptr_t)values + r * k,
                          (int64_t *)(uintptr_t)columns + r * k);
    Py_END_ALLOW_THREADS
    return PyBool_FromLong(status == 0);
}
