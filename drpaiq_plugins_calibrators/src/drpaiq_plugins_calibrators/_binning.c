/*
 * The inner loop of drpaiq's histogram calibrators, compiled.
 *
 * count_bins(values, scale, offset, counts) -> zeros
 *
 *   values  C-contiguous float32 buffer (finite values only)
 *   scale   a power of two, as float32
 *   offset  added to every bin index
 *   counts  C-contiguous, writable int64 buffer
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
 * An index outside counts (a caller's bug, or a NaN) raises ValueError and leaves
 * counts untouched.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

/* Interleaved counter sets. */
#define LANES 4
/* Values per flush of the 32-bit lane counters into the 64-bit counts (no overflow). */
#define CHUNK ((Py_ssize_t)1 << 30)

static int
get_buffer(PyObject *obj, Py_buffer *view, int writable, char kind, const char *what)
{
    int flags = PyBUF_C_CONTIGUOUS | PyBUF_FORMAT | (writable ? PyBUF_WRITABLE : 0);
    if (PyObject_GetBuffer(obj, view, flags) != 0)
        return -1;
    const char *format = view->format ? view->format : "B";
    /* Native byte order, with or without the '=' / '@' prefix. */
    if (format[0] == '@' || format[0] == '=')
        format++;
    int ok = 0;
    if (kind == 'f')
        ok = view->itemsize == 4 && format[0] == 'f' && format[1] == '\0';
    else
        ok = view->itemsize == 8 && (format[0] == 'q' || format[0] == 'l') && format[1] == '\0';
    if (!ok) {
        PyErr_Format(PyExc_TypeError, "count_bins: %s must be a contiguous %s array", what,
                     kind == 'f' ? "float32" : "int64");
        PyBuffer_Release(view);
        return -1;
    }
    return 0;
}

/* Adds value v to counts; returns 0, counting nothing, when its bin is outside
 * 0 .. nbins - 1 (checked as a float first: casting a NaN or a huge value is undefined). */
static inline int
bin_value(float v, float scale, Py_ssize_t offset, Py_ssize_t nbins, uint32_t *counts,
          Py_ssize_t *zeros)
{
    const float product = v * scale;
    if (!(product > -9.0e15f && product < 9.0e15f))
        return 0;
    const Py_ssize_t j = (Py_ssize_t)product + offset;
    if (j < 0 || j >= nbins)
        return 0;
    *zeros += (v == 0.0f);
    counts[j]++;
    return 1;
}

static PyObject *
count_bins(PyObject *self, PyObject *args)
{
    PyObject *values_obj, *counts_obj;
    float scale;
    Py_ssize_t offset;
    if (!PyArg_ParseTuple(args, "OfnO", &values_obj, &scale, &offset, &counts_obj))
        return NULL;
    Py_buffer values, counts;
    if (get_buffer(values_obj, &values, 0, 'f', "values") != 0)
        return NULL;
    if (get_buffer(counts_obj, &counts, 1, 'q', "counts") != 0) {
        PyBuffer_Release(&values);
        return NULL;
    }
    const Py_ssize_t n = values.len / 4;
    const Py_ssize_t nbins = counts.len / 8;
    const float *x = (const float *)values.buf;
    int64_t *out = (int64_t *)counts.buf;
    uint32_t *lanes = NULL;
    int64_t *total = NULL;
    Py_ssize_t zeros = 0;
    int bad = 0;

    if (nbins > 0) {
        lanes = (uint32_t *)calloc((size_t)LANES * (size_t)nbins, sizeof(uint32_t));
        total = (int64_t *)calloc((size_t)nbins, sizeof(int64_t));
    }
    if (nbins > 0 && (lanes == NULL || total == NULL)) {
        free(lanes);
        free(total);
        PyBuffer_Release(&values);
        PyBuffer_Release(&counts);
        return PyErr_NoMemory();
    }

    Py_BEGIN_ALLOW_THREADS
    Py_ssize_t i = 0;
    while (i < n && !bad) {
        const Py_ssize_t stop = n - i > CHUNK ? i + CHUNK : n;
        for (; i + LANES <= stop && !bad; i += LANES)
            for (int lane = 0; lane < LANES; lane++)
                bad |= !bin_value(x[i + lane], scale, offset, nbins,
                                  lanes + (size_t)lane * (size_t)nbins, &zeros);
        for (; i < stop && !bad; i++)
            bad |= !bin_value(x[i], scale, offset, nbins, lanes, &zeros);
        if (bad)
            break;
        for (int lane = 0; lane < LANES; lane++) {
            uint32_t *row = lanes + (size_t)lane * (size_t)nbins;
            for (Py_ssize_t b = 0; b < nbins; b++)
                total[b] += row[b];
        }
        if (nbins > 0)
            memset(lanes, 0, (size_t)LANES * (size_t)nbins * sizeof(uint32_t));
    }
    if (!bad)
        for (Py_ssize_t b = 0; b < nbins; b++)
            out[b] += total[b];
    Py_END_ALLOW_THREADS

    free(lanes);
    free(total);
    PyBuffer_Release(&values);
    PyBuffer_Release(&counts);
    if (bad) {
        PyErr_SetString(PyExc_ValueError,
                        "count_bins: a value falls outside the counts (NaN, or a scale or "
                        "offset that does not fit the data)");
        return NULL;
    }
    return PyLong_FromSsize_t(zeros);
}

static PyMethodDef binning_methods[] = {
    {"count_bins", count_bins, METH_VARARGS,
     "count_bins(values, scale, offset, counts) -> zeros\n\n"
     "Add 1 to counts[int(float32(x * scale)) + offset] for every float32 value x "
     "(truncating toward zero); return how many values were exactly zero."},
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
