// SPDX-License-Identifier: MIT
/*
 * Thread-local error state.  Messages are formatted into a fixed buffer so
 * reporting an error never allocates (it may be reporting AG_ENOMEM).
 */
#include <limits.h>
#include <stdio.h>
#include <string.h>

#include "internal.h"

#define AG_ERRMSG_MAX 512

static AG_TLS int err_code;
static AG_TLS unsigned err_seq; /* errors set on this thread, ever */
static _Thread_local char err_msg[AG_ERRMSG_MAX];

int ag__verr(int code, const char *fmt, va_list ap)
{
	err_code = code;
	err_seq++;
	vsnprintf(err_msg, sizeof(err_msg), fmt, ap);
	return -code;
}

unsigned ag__err_seq(void)
{
	return err_seq;
}

int ag_set_error(int code, const char *fmt, ...)
{
	va_list ap;

	if (!code) {
		ag_clear_error();
		return 0;
	}
	if (code < 0)
		code = code == INT_MIN ? AG_EINTERNAL : -code;
	if (!fmt)
		return ag__err(code, "%s", ag_strerror(code));
	va_start(ap, fmt);
	ag__verr(code, fmt, ap);
	va_end(ap);
	return -code;
}

int ag__err(int code, const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	ag__verr(code, fmt, ap);
	va_end(ap);
	return -code;
}

int ag__err_null(const char *fn, const char *arg)
{
	if (err_code)
		return -err_code;
	return ag__err(AG_EINVAL, "%s: argument '%s' is NULL", fn, arg);
}

int ag__err_last(void)
{
	if (err_code)
		return -err_code;
	return ag__err(
		AG_EINTERNAL,
		"internal error: a call failed without setting an error");
}

int ag_errcode(void)
{
	return err_code;
}

const char *ag_errmsg(void)
{
	return err_msg;
}

void ag_clear_error(void)
{
	err_code = 0;
	err_msg[0] = '\0';
}

const char *ag_strerror(int code)
{
	static const char *const names[] = {
		[0] = "OK",
		[AG_EINVAL] = "AG_EINVAL",
		[AG_ESHAPE] = "AG_ESHAPE",
		[AG_EDTYPE] = "AG_EDTYPE",
		[AG_ENOMEM] = "AG_ENOMEM",
		[AG_EVERSION] = "AG_EVERSION",
		[AG_EFREED] = "AG_EFREED",
		[AG_EINFERENCE] = "AG_EINFERENCE",
		[AG_ELEAF] = "AG_ELEAF",
		[AG_ENOGRAD] = "AG_ENOGRAD",
		[AG_ESCALAR] = "AG_ESCALAR",
		[AG_ENAN] = "AG_ENAN",
		[AG_EIO] = "AG_EIO",
		[AG_EINTERNAL] = "AG_EINTERNAL",
		[AG_EBUSY] = "AG_EBUSY",
	};

	const int n = (int)(sizeof(names) / sizeof(names[0]));

	/* -INT_MIN would overflow: compare before negating */
	if (code <= -n || code >= n)
		return "AG_E?";
	return names[code < 0 ? -code : code];
}

void ag__err_recovered(int before)
{
	if (!before)
		ag_clear_error();
}
