/*
 * The inner loop of drpaiq's histogram calibrators, compiled.
 *
 * count_bins(values, scale, offset, counts, low, high) -> zeros
 *
 *   values     C-contiguous float32 buffer
 *   scale      a power of two, as float32
 *   offset     added to every bin index
 *   counts     C-contiguous, writable int64 buffer
 *   low, high  the smallest and the largest of the values, as the caller measured them
 *
 * For every value x: counts[(int64)(x * scale) + offset] += 1, where the product is a
 * float32 product and the cast truncates toward zero. This is exactly what the NumPy
 * path of histogram.py computes with `(values * scale).astype(intp)` and np.bincount,
 * so both give the same counts, bit for bit. Returns how many values were exactly zero
 * (+0.0 or -0.0).
 *
 * Why it exists: on a small model the NumPy path (a product array, an index array and
 * np.bincount, which first scans for the largest index) costs more than running the
 * model. This loop reads each value once, keeps four interleaved sets of counters so that
 * runs of equal values do not wait on each other's increments, and releases the GIL.
 *
 * The loop itself checks nothing (a check per value cost a third of its time): the
 * bins of `low` and `high` are checked once, and truncation is monotonic, so every
 * value between them lands inside the counts. A caller must pass the true extremes
 * (histogram.count_bins measures them when it is not given them); extremes that are
 * not finite or whose bins fall outside the counts raise ValueError and leave counts
 * untouched.
 */
#include "_buffers.h"

#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

/* Interleaved counter sets. */
#define LANES 4
/* Values per flush of the 32-bit lane counters into the 64-bit counts (no overflow). */
#define CHUNK ((Py_ssize_t)1 << 30)

/* Whether the bin of x (x * scale truncated, plus offset) is one of nbins counts. */
static int
fits(float x, float scale, Py_ssize_t offset, Py_ssize_t nbins)
{
    const float product = x * scale;
    /* Checked as a float first: casting a NaN or a huge value is undefined. */
    if (!(product > -9.0e15f && product < 9.0e15f))
        return 0;
    const Py_ssize_t bin = (Py_ssize_t)product + offset;
    return bin >= 0 && bin < nbins;
}

static PyObject *
count_bins(PyObject *self, PyObject *args)
{
    PyObject *values_obj, *counts_obj;
    float scale, low, high;
    Py_ssize_t offset;
    if (!PyArg_ParseTuple(args, "OfnOff", &values_obj, &scale, &offset, &counts_obj, &low,
                          &high))
        return NULL;
    Py_buffer values, counts;
    if (get_buffer(values_obj, &values, 0, 'f', "count_bins", "values") != 0)
        return NULL;
    if (get_buffer(counts_obj, &counts, 1, 'q', "count_bins", "counts") != 0) {
        PyBuffer_Release(&values);
        return NULL;
    }
    const Py_ssize_t n = values.len / 4;
    const Py_ssize_t nbins = counts.len / 8;
    if (n == 0) {
        PyBuffer_Release(&values);
        PyBuffer_Release(&counts);
        return PyLong_FromLong(0);
    }
    if (!(low <= high) || !fits(low, scale, offset, nbins) || !fits(high, scale, offset, nbins)) {
        PyBuffer_Release(&values);
        PyBuffer_Release(&counts);
        PyErr_SetString(PyExc_ValueError,
                        "count_bins: a value falls outside the counts (NaN, or a scale or "
                        "offset that does not fit the data)");
        return NULL;
    }
    const float *x = (const float *)values.buf;
    int64_t *out = (int64_t *)counts.buf;
    uint32_t *lanes = (uint32_t *)calloc((size_t)LANES * (size_t)nbins, sizeof(uint32_t));
    if (lanes == NULL) {
        PyBuffer_Release(&values);
        PyBuffer_Release(&counts);
        return PyErr_NoMemory();
    }
    Py_ssize_t zeros = 0;

    Py_BEGIN_ALLOW_THREADS
    Py_ssize_t i = 0;
    while (i < n) {
        const Py_ssize_t stop = n - i > CHUNK ? i + CHUNK : n;
        for (; i + LANES <= stop; i += LANES) {
            for (int lane = 0; lane < LANES; lane++) {
                const float v = x[i + lane];
                zeros += (v == 0.0f);
                lanes[(size_t)lane * (size_t)nbins + (size_t)((Py_ssize_t)(v * scale) + offset)]++;
            }
        }
        for (; i < stop; i++) {
            const float v = x[i];
            zeros += (v == 0.0f);
            lanes[(Py_ssize_t)(v * scale) + offset]++;
        }
        for (int lane = 0; lane < LANES; lane++) {
            uint32_t *row = lanes + (size_t)lane * (size_t)nbins;
            for (Py_ssize_t b = 0; b < nbins; b++) {
                out[b] += row[b];
                row[b] = 0;
            }
        }
    }
    Py_END_ALLOW_THREADS

    free(lanes);
    PyBuffer_Release(&values);
    PyBuffer_Release(&counts);
    return PyLong_FromSsize_t(zeros);
}

static PyMethodDef binning_methods[] = {
    {"count_bins", count_bins, METH_VARARGS,
     "count_bins(values, scale, offset, counts, low, high) -> zeros\n\n"
     "Add 1 to counts[int(float32(x * scale)) + offset] for every float32 value x "
     "(truncating toward zero), where low and high are the smallest and largest x; "
     "return how many values were exactly zero."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef binning_module = {
    PyModuleDef_HEAD_INIT,
    "_binning",
    "The compiled inner loop of drpaiq's histogram calibrators (see histogram.py).",
    -1,
    binning_methods,
};

PyMODINIT_FUNC
PyInit__binning(void)
{
    return PyModule_Create(&binning_module);
}
