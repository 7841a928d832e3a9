/* SPDX-License-Identifier: MIT */
#ifndef AG_ENGINE_LIB_ENV_H
#define AG_ENGINE_LIB_ENV_H

/*
 * The environment variables libag reads (AG_NUM_THREADS, AG_PAR_THRESHOLD,
 * AG_DETERMINISTIC, AG_TRACE; simd/ reads AG_ISA itself) all parse here,
 * the same way: unset or empty means "not given", and a value that does
 * not parse is ignored rather than half-used, so a typo can never make a
 * service run with 0 threads.
 */
#include <stdbool.h>

/*
 * *out = the decimal integer in name, clamped to [lo, hi], and true; false
 * (and *out untouched) when name is unset, empty, not a whole integer or
 * below lo.
 */
bool ag__env_int(const char *name, long long lo, long long hi, long long *out);

/* true when name is set, non-empty and not "0" */
bool ag__env_flag(const char *name);

/* the value of name, or NULL when unset or empty */
const char *ag__env_str(const char *name);

#endif /* AG_ENGINE_LIB_ENV_H */
