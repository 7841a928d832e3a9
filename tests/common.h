/* SPDX-License-Identifier: MIT */
#ifndef AG_TESTS_COMMON_H
#define AG_TESTS_COMMON_H

/*
 * Shared by the Criterion suites.  A leak does not fail a Criterion test,
 * so every test ends with AG_ASSERT_NO_LEAKS(): libag's own live-object
 * counters must be back to zero.
 */
#include <criterion/criterion.h>
#include <math.h>
#include <string.h>

#include <ag/ag.h>

#include "internal.h"

#define AG_ASSERT_NO_LEAKS()                                                \
	do {                                                                \
		cr_assert_eq(ag__live_tensors(), 0, "%ld tensors leaked",   \
			     ag__live_tensors());                           \
		cr_assert_eq(ag__live_storages(), 0, "%ld storages leaked", \
			     ag__live_storages());                          \
		cr_assert_eq(ag__live_bytes(), 0, "%ld bytes leaked",       \
			     ag__live_bytes());                             \
		cr_assert_eq(ag__live_nodes(), 0, "%ld nodes leaked",       \
			     ag__live_nodes());                             \
		cr_assert_eq(ag__live_hooks(), 0, "%ld hooks leaked",       \
			     ag__live_hooks());                             \
	} while (0)

/* The last error has this code and its message contains this text. */
#define AG_ASSERT_ERR(code, substr)                                          \
	do {                                                                 \
		cr_assert_eq(ag_errcode(), (code), "error %s (%s), want %s", \
			     ag_strerror(ag_errcode()), ag_errmsg(),         \
			     ag_strerror(code));                             \
		cr_assert(strstr(ag_errmsg(), (substr)) != NULL,             \
			  "message \"%s\" lacks \"%s\"", ag_errmsg(),        \
			  (substr));                                         \
		ag_clear_error();                                            \
	} while (0)

#endif /* AG_TESTS_COMMON_H */
