/* SPDX-License-Identifier: MIT */
#ifndef AG_NN_INTERNAL_H
#define AG_NN_INTERNAL_H

#include <stddef.h>
#include <ag/ag.h>

/*
 * nn/ builds on the public API only (tests/layers.sh): errors are set
 * with ag_set_error, as a user's own module would.
 */

static inline void nn_scope_restore(struct ag_scope **s)
{
	ag_scope_resume(*s);
}

/*
 * First line of every public nn/ function that returns no tensor: the
 * caller's scope is suspended until the function returns, so every
 * reference nn/ gets is its own (it keeps or puts each one), whether or
 * not the caller has a scope open.
 */
#define NN_UNSCOPED()                                                \
	struct ag_scope *nn_scope__                                  \
		__attribute__((unused, cleanup(nn_scope_restore))) = \
			ag_scope_suspend()

#define nn_container_of(ptr, type, member) \
	((type *)((char *)(ptr)-offsetof(type, member)))

char *ag__nn_strdup(const char *s);

/*
 * For a NULL object argument (a module, tensor or optimiser that a failed
 * call returned): keeps the error already set, so a chain of calls
 * reports its first failure, as the ops do; else sets AG_EINVAL with the
 * message.  Returns -code, like ag_set_error.
 */
int ag__nn_err_null(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

#endif /* AG_NN_INTERNAL_H */
