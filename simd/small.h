/* SPDX-License-Identifier: MIT */
#ifndef AG_SIMD_SMALL_H
#define AG_SIMD_SMALL_H

/*
 * Spans of a few elements, computed in place of a kernel call.  For a
 * one-element op the ISA table, the parallel check and a masked vector
 * loop cost ten times the arithmetic (docs/engine.md).  Only ops that are
 * one IEEE operation per step, or a fixed sequence of them, come here, and
 * each is written one operation per statement so that no compiler fuses
 * two into an FMA: the result is bit for bit what the vector kernels give,
 * whatever the size.  Everything else returns false and takes the kernel.
 */
#include <stdbool.h>

#include "simd.h"

#define AG_K_SMALL_MAX 8

#define T float
#define F(x) x##_f32
#include "small_tmpl.h"
#undef T
#undef F

#define T double
#define F(x) x##_f64
#include "small_tmpl.h"
#undef T
#undef F

/*
 * y = a op b over n elements at the given increments, in doubles when f64
 * else floats: the inline loop for short spans, the vector kernel past
 * them.  The one entry point for callers that hold a dtype flag (the ops'
 * drivers and the engine's gradient sums).
 */
static inline void ag_k_binary_span(bool f64, enum ag_k_binary op, int64_t n,
				    const void *a, int64_t ia, const void *b,
				    int64_t ib, void *y, int64_t iy)
{
	if (!f64) {
		if (!ag_k_small_binary_f32(op, n, a, ia, b, ib, y, iy))
			ag_k_binary_f32(op, n, a, ia, b, ib, y, iy);
	} else {
		if (!ag_k_small_binary_f64(op, n, a, ia, b, ib, y, iy))
			ag_k_binary_f64(op, n, a, ia, b, ib, y, iy);
	}
}

#endif /* AG_SIMD_SMALL_H */
