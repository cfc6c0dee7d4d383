/*
 * The candidate loop of drpaiq's Entropy search, compiled.
 *
 * group_sums(table, widths, narrowest, levels, first, out)
 *
 *   table      C-contiguous float64, (n + 1) x widths: table[s][k] is the term of the
 *              group of bins s .. s + narrowest + k - 1
 *   widths     columns of table
 *   narrowest  the group width of column 0
 *   levels     groups per candidate
 *   first      the first candidate i, levels <= first <= n
 *   out        C-contiguous, writable float64, n - first + 1 entries
 *
 * For every candidate i = first .. n, out[i - first] is the sum of the terms of its
 * groups 0 .. levels - 2 (group g holds bins floor(i * g / levels) .. floor(i * (g + 1)
 * / levels) - 1), added in group order, one after the other: exactly what the NumPy path
 * of divergence.py computes with a cumulative sum, so both give the same sums bit for
 * bit. The group bounds are stepped without a division. Releases the GIL.
 *
 * Why it exists: the NumPy path builds and gathers a (candidates x levels) index matrix;
 * this loop does the same additions in one pass, several times faster, which leaves room
 * to search every side with the levels it really gets.
 */
#include "_buffers.h"

/* Candidates summed side by side. */
#define LANES 4

static PyObject *
group_sums(PyObject *self, PyObject *args)
{
    PyObject *table_obj, *out_obj;
    Py_ssize_t widths, narrowest, levels, first;
    if (!PyArg_ParseTuple(args, "OnnnnO", &table_obj, &widths, &narrowest, &levels, &first,
                          &out_obj))
        return NULL;
    Py_buffer table, out;
    if (get_buffer(table_obj, &table, 0, 'd', "group_sums", "table") != 0)
        return NULL;
    if (get_buffer(out_obj, &out, 1, 'd', "group_sums", "out") != 0) {
        PyBuffer_Release(&table);
        return NULL;
    }
    const char *problem = NULL;
    Py_ssize_t n = -1;
    if (widths < 1 || table.len / 8 % widths != 0)
        problem = "table must have widths columns";
    else {
        n = table.len / 8 / widths - 1;
        if (levels < 2 || first < levels || first > n)
            problem = "2 <= levels <= first <= n is required";
        else if (narrowest != first / levels || n / levels + 1 - narrowest >= widths)
            problem = "the table's widths do not cover the candidates' groups";
        else if (out.len / 8 != n - first + 1)
            problem = "out needs n - first + 1 entries";
    }
    if (problem != NULL) {
        PyBuffer_Release(&table);
        PyBuffer_Release(&out);
        PyErr_Format(PyExc_ValueError, "group_sums: %s", problem);
        return NULL;
    }
    const double *terms = (const double *)table.buf;
    double *sums = (double *)out.buf;

    Py_BEGIN_ALLOW_THREADS
    /* LANES candidates at a time: each sum is still added in group order, but the
       additions of different candidates do not wait on each other. */
    Py_ssize_t i = first;
    for (; i + LANES - 1 <= n; i += LANES) {
        Py_ssize_t whole[LANES], part[LANES], lo[LANES], carry[LANES];
        double sum[LANES];
        for (int k = 0; k < LANES; k++) {
            whole[k] = (i + k) / levels;
            part[k] = (i + k) % levels;
            lo[k] = 0;
            carry[k] = 0;
            sum[k] = 0.0;
        }
        for (Py_ssize_t g = 0; g < levels - 1; g++) {
            for (int k = 0; k < LANES; k++) {
                Py_ssize_t hi = lo[k] + whole[k];
                carry[k] += part[k];
                if (carry[k] >= levels) {
                    carry[k] -= levels;
                    hi++;
                }
                const double term = terms[lo[k] * widths + (hi - lo[k] - narrowest)];
                sum[k] = g == 0 ? term : sum[k] + term;
                lo[k] = hi;
            }
        }
        for (int k = 0; k < LANES; k++)
            sums[i + k - first] = sum[k];
    }
    for (; i <= n; i++) {
        const Py_ssize_t whole = i / levels, part = i % levels;
        Py_ssize_t lo = 0, carry = 0;
        double sum = 0.0;
        for (Py_ssize_t g = 0; g < levels - 1; g++) {
            Py_ssize_t hi = lo + whole;
            carry += part;
            if (carry >= levels) {
                carry -= levels;
                hi++;
            }
            const double term = terms[lo * widths + (hi - lo - narrowest)];
            sum = g == 0 ? term : sum + term;
            lo = hi;
        }
        sums[i - first] = sum;
    }
    Py_END_ALLOW_THREADS

    PyBuffer_Release(&table);
    PyBuffer_Release(&out);
    Py_RETURN_NONE;
}

static PyMethodDef divergence_methods[] = {
    {"group_sums", group_sums, METH_VARARGS,
     "group_sums(table, widths, narrowest, levels, first, out)\n\n"
     "For every candidate i = first .. n, write the in-order sum of the table terms of "
     "its groups but the last into out[i - first] (see divergence.py)."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef divergence_module = {
    PyModuleDef_HEAD_INIT,
    "_divergence",
    "The compiled candidate loop of drpaiq's Entropy search (see divergence.py).",
    -1,
    divergence_methods,
};

PyMODINIT_FUNC
PyInit__divergence(void)
{
    return PyModule_Create(&divergence_module);
}
