/*
 * Shared by drpaiq's compiled calibrator loops: taking an array argument as a buffer.
 */
#ifndef DRPAIQ_BUFFERS_H
#define DRPAIQ_BUFFERS_H

#define PY_SSIZE_T_CLEAN
#include <Python.h>

/*
 * Get obj's C-contiguous buffer of 8-byte or 4-byte items of one kind: 'f' float32,
 * 'd' float64, 'q' int64 (NumPy's int64 reports 'q' or 'l'). On a mismatch, raise
 * TypeError naming the function and the argument, and return -1 with nothing held.
 */
static int
get_buffer(PyObject *obj, Py_buffer *view, int writable, char kind, const char *function,
           const char *what)
{
    int flags = PyBUF_C_CONTIGUOUS | PyBUF_FORMAT | (writable ? PyBUF_WRITABLE : 0);
    if (PyObject_GetBuffer(obj, view, flags) != 0)
        return -1;
    const char *format = view->format ? view->format : "B";
    /* Native byte order, with or without the '=' / '@' prefix. */
    if (format[0] == '@' || format[0] == '=')
        format++;
    int ok = format[1] == '\0';
    if (kind == 'f')
        ok = ok && view->itemsize == 4 && format[0] == 'f';
    else if (kind == 'd')
        ok = ok && view->itemsize == 8 && format[0] == 'd';
    else
        ok = ok && view->itemsize == 8 && (format[0] == 'q' || format[0] == 'l');
    if (!ok) {
        PyErr_Format(PyExc_TypeError, "%s: %s must be a contiguous %s array", function, what,
                     kind == 'f' ? "float32" : kind == 'd' ? "float64" : "int64");
        PyBuffer_Release(view);
        return -1;
    }
    return 0;
}

#endif
