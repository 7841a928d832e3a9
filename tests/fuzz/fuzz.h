/* SPDX-License-Identifier: MIT */
#ifndef AG_TESTS_FUZZ_H
#define AG_TESTS_FUZZ_H

/*
 * Helpers for the libFuzzer targets: a reader that turns the fuzzer's
 * bytes into small integers (running out of bytes gives zeros, so every
 * input is a complete program), and the leak check every input ends with.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <ag/ag.h>

#include "internal.h"

struct fuzz_in {
	const uint8_t *p;
	size_t n;
};

static inline uint8_t fuzz_u8(struct fuzz_in *in)
{
	uint8_t v = 0;

	if (in->n) {
		v = *in->p++;
		in->n--;
	}
	return v;
}

/* A value in [0, n), n <= 256. */
static inline int fuzz_pick(struct fuzz_in *in, int n)
{
	return fuzz_u8(in) % n;
}

/*
 * A dimension size or index: mostly small, sometimes negative, sometimes
 * near the int64 limits, where overflow checks are needed.
 */
static inline int64_t fuzz_i64(struct fuzz_in *in)
{
	uint8_t k = fuzz_u8(in);

	switch (k >> 5) {
	case 0:
		return INT64_MAX - (k & 7);
	case 1:
		return ((int64_t)1 << (30 + (k & 31))) + (k & 1);
	case 2:
		return -(int64_t)(k & 7) - 1;
	default:
		return k & 7;
	}
}

/* A dim argument: in range, negative, or out of range. */
static inline int fuzz_dim(struct fuzz_in *in)
{
	return (int)(int8_t)fuzz_u8(in) % 10;
}

/* Aborts, so libFuzzer reports the input, when an input left objects live. */
static inline void fuzz_check_no_leaks(void)
{
	if (ag__live_tensors() || ag__live_storages() || ag__live_nodes() ||
	    ag__live_bytes() || ag__live_hooks()) {
		fprintf(stderr,
			"fuzz: leak: %ld tensors, %ld storages, %ld nodes, %ld bytes, %ld hooks\n",
			ag__live_tensors(), ag__live_storages(),
			ag__live_nodes(), ag__live_bytes(), ag__live_hooks());
		abort();
	}
}

#endif /* AG_TESTS_FUZZ_H */
