// SPDX-License-Identifier: MIT
/*
 * Row walker over strided operands.  Every kernel in simd/ works on one
 * 1-D span; this is how the ops layer feeds them any layout without
 * materialising broadcasts or copies.
 */
#include "internal.h"

void ag__walk_init(struct ag_walk *w, int ndim, const int64_t *shape, int nop,
		   const int64_t *const *strides, const int64_t *base)
{
	w->nop = nop;
	w->started = false;
	w->empty = false;
	for (int d = 0; d < ndim; d++)
		if (shape[d] == 0)
			w->empty = true;
	if (ndim == 0) {
		/*
		 * One element.  Its increment is 1, not 0: the kernels read
		 * an output increment of 0 as "sum the span into one place"
		 * (+=), which would add into an uninitialised output.
		 */
		w->ndim = 0;
		w->inner = 1;
		for (int k = 0; k < nop; k++) {
			w->inc[k] = 1;
			w->base[k] = base ? base[k] : 0;
		}
		return;
	}
	w->ndim = ndim - 1;
	w->inner = shape[ndim - 1];
	for (int k = 0; k < nop; k++) {
		w->inc[k] = strides[k][ndim - 1];
		w->base[k] = base ? base[k] : 0;
		for (int d = 0; d < ndim - 1; d++)
			w->strides[k][d] = strides[k][d];
	}
	for (int d = 0; d < ndim - 1; d++) {
		w->shape[d] = shape[d];
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
