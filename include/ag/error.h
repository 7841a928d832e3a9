/* SPDX-License-Identifier: MIT */
#ifndef AG_ERROR_H
#define AG_ERROR_H

#include <ag/export.h>

/*
 * Error reporting.
 *
 * A function that returns a tensor returns NULL on failure; one that returns
 * int returns 0 or a negative AG_E* code.  The code and a message a user can
 * act on are kept per thread.  Like errno, they are not cleared by a call
 * that succeeds: call ag_clear_error() before a sequence you want to check.
 *
 * An op given a NULL tensor argument returns NULL and keeps the error that
 * is already set, so a chain of calls can be checked once at its end:
 *
 *	y = ag_tanh(ag_mul(a, b));
 *	if (!y)
 *		fprintf(stderr, "%s\n", ag_errmsg());   // names the first failure
 */
enum {
	AG_EINVAL = 1, /* bad argument (NULL, out-of-range dim, bad option) */
	AG_ESHAPE, /* shapes do not match or cannot broadcast */
	AG_EDTYPE, /* dtypes do not match or are not supported */
	AG_ENOMEM,
	AG_EVERSION, /* a saved tensor was modified in place */
	AG_EFREED, /* backward through a graph whose buffers were freed */
	AG_EINFERENCE, /* inference tensor used where autograd needs state */
	AG_ELEAF, /* in-place write to a leaf that requires grad */
	AG_ENOGRAD, /* backward on a tensor with no grad_fn / no requires_grad */
	AG_ESCALAR, /* implicit gradient requested for a non-scalar root */
	AG_ENAN, /* anomaly mode found a NaN/Inf gradient */
	AG_EIO, /* file I/O or a corrupt checkpoint */
	AG_EINTERNAL,
	AG_EBUSY, /* the pool is in use by another thread; retry later */
};

/* Positive code of the last error on this thread, 0 if none. */
AG_API int ag_errcode(void);
/* Message of the last error on this thread, "" if none. */
AG_API const char *ag_errmsg(void);
AG_API void ag_clear_error(void);
/* Short symbolic name of a code: "AG_ESHAPE"; "AG_E?" for unknown codes. */
AG_API const char *ag_strerror(int code);

/*
 * Sets this thread's error, for user callbacks that must report a failure:
 * a tensor hook (set it, then return NULL: the backward fails with it), a
 * custom function's forward or backward (return what this returns).  code
 * is an AG_E* code, positive or negative; fmt is printf-style (NULL: the
 * code's name).  Returns -code.  ag_set_error(0, ...) is ag_clear_error()
 * and returns 0.
 */
AG_API int ag_set_error(int code, const char *fmt, ...)
#if defined(__GNUC__)
	__attribute__((format(printf, 2, 3)))
#endif
	;

#endif /* AG_ERROR_H */
