/* SPDX-License-Identifier: MIT */
#ifndef AG_NN_INTERNAL_H
#define AG_NN_INTERNAL_H

#include <stddef.h>
#include <ag/ag.h>

/*
 * nn/ builds on the public API only (tests/layers.sh): errors are set
 * with ag_set_error, as a user's own module would.
 */

#define nn_container_of(ptr, type, member) \
	((type *)((char *)(ptr)-offsetof(type, member)))

char *ag__nn_strdup(const char *s);

#endif /* AG_NN_INTERNAL_H */
