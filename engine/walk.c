// SPDX-License-Identifier: MIT
/*
 * Row walker over strided operands.  Every kernel in simd/ works on one
 * 1-D span; this is how the ops layer feeds them any layout without
 * materialising broadcasts or copies.
 */
#include "internal.h"

/*
 * Dims of size 1 are dropped and neighbouring dims that every operand
 * steps through as one run are merged, so a contiguous operand of any
 * shape is one row: one kernel call, no odometer.
 */
void ag__walk_init(struct ag_walk *w, int ndim, const int64_t *shape, int nop,
		   const int64_t *const *strides, const int64_t *base)
{
	int64_t size[AG_MAX_DIMS], st[AG_WALK_MAX_OPS][AG_MAX_DIMS];
	int n = 0; /* merged dims, innermost first */

	w->nop = nop;
	w->started = false;
	w->empty = false;
	for (int k = 0; k < nop; k++)
		w->base[k] = base ? base[k] : 0;
	/*
	 * An empty shape visits nothing; its other sizes may be anything up
	 * to INT64_MAX (only the element count is bounded), so nothing below
	 * may multiply them.
	 */
	for (int d = 0; d < ndim; d++) {
		if (shape[d] == 0) {
			w->empty = true;
			w->ndim = 0;
			w->inner = 0;
			return;
		}
	}
	for (int d = ndim - 1; d >= 0; d--) {
		bool merge = n > 0;

		if (shape[d] <= 1)
			continue;
		for (int k = 0; k < nop && merge; k++) {
			int64_t run;

			/* a run too long to address is no run */
			merge = !__builtin_mul_overflow(st[k][n - 1],
							size[n - 1], &run) &&
				strides[k][d] == run;
		}
		if (merge) {
			size[n - 1] *= shape[d];
			continue;
		}
		size[n] = shape[d];
		for (int k = 0; k < nop; k++)
			st[k][n] = strides[k][d];
		n++;
	}
	if (n == 0) {
		/*
		 * One element.  Its increment is 1, not 0: the kernels read
		 * an output increment of 0 as "sum the span into one place"
		 * (+=), which would add into an uninitialised output.
		 */
		w->ndim = 0;
		w->inner = 1;
		for (int k = 0; k < nop; k++)
			w->inc[k] = 1;
		return;
	}
	w->ndim = n - 1;
	w->inner = size[0];
	for (int k = 0; k < nop; k++) {
		w->inc[k] = st[k][0];
		/* outer dims outermost first, as the odometer expects */
		for (int d = 0; d < n - 1; d++)
			w->strides[k][d] = st[k][n - 1 - d];
	}
	for (int d = 0; d < n - 1; d++) {
		w->shape[d] = size[n - 1 - d];
		w->idx[d] = 0;
	}
}

bool ag__walk_next(struct ag_walk *w)
{
	int d;

	if (w->empty)
		return false;
	if (!w->started) {
		w->started = true;
		for (int k = 0; k < w->nop; k++)
			w->off[k] = w->base[k];
		return true;
	}
	/* odometer increment over the outer dims, last dim fastest */
	for (d = w->ndim - 1; d >= 0; d--) {
		if (++w->idx[d] < w->shape[d]) {
			for (int k = 0; k < w->nop; k++)
				w->off[k] += w->strides[k][d];
			return true;
		}
		for (int k = 0; k < w->nop; k++)
			w->off[k] -= w->strides[k][d] * (w->shape[d] - 1);
		w->idx[d] = 0;
	}
	return false;
}
