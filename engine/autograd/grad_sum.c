// SPDX-License-Identifier: MIT
/*
 * Summing gradients: the engine adds up the gradients sent to one input
 * slot, and AccumulateGrad and retain_grad add into .grad.  The engine
 * checks every gradient against its slot's dtype and shape, so the two
 * operands of a sum always agree and nothing broadcasts here; that keeps
 * the engine off the ops' drivers (the layers run core -> autograd -> ops).
 * With create_graph the sum is the public, recorded ag_add, so .grad stays
 * differentiable.
 */
#include <ag/mode.h>
#include <ag/ops.h>

#include "graph.h"
#include "small.h"

/* out = a + b, all of one shape; out may be a. */
static void add_same_shape(struct ag_tensor *out, const struct ag_tensor *a,
			   const struct ag_tensor *b)
{
	const int64_t *strides[3] = { out->strides, a->strides, b->strides };
	int64_t base[3] = { out->offset, a->offset, b->offset };
	bool f64 = out->dtype == AG_F64;
	size_t es = ag_dtype_size(out->dtype);
	struct ag_walk w;

	/* gradients of one slot are dense nearly always: one kernel call */
	if (ag_tensor_is_contiguous(out) && ag_tensor_is_contiguous(a) &&
	    ag_tensor_is_contiguous(b)) {
		ag_k_binary_span(f64, AG_K_ADD, out->numel, ag__data(a), 1,
				 ag__data(b), 1, ag__data(out), 1);
		return;
	}
	ag__walk_init(&w, out->ndim, out->shape, 3, strides, base);
	while (ag__walk_next(&w))
		ag_k_binary_span(
			f64, AG_K_ADD, w.inner,
			(char *)a->storage->data + w.off[1] * es, w.inc[1],
			(char *)b->storage->data + w.off[2] * es, w.inc[2],
			(char *)out->storage->data + w.off[0] * es, w.inc[0]);
}

void ag__acc_into(struct ag_tensor *dst, struct ag_tensor *src)
{
	add_same_shape(dst, dst, src);
}

struct ag_tensor *ag__grad_add(struct ag_tensor *a, struct ag_tensor *b)
{
	struct ag_tensor *out;

	if (ag__mode.grad)
		return ag_add(a, b);
	out = ag__tensor_like(a);
	if (out)
		add_same_shape(out, a, b);
	return out;
}

int ag__grad_sum_into(struct ag_tensor **slot, struct ag_tensor *g)
{
	struct ag_tensor *sum;

	if (!g)
		return 0;
	if (!*slot) {
		*slot = g;
		return 0;
	}
	if (!ag__mode.grad && ag__exclusive(*slot)) {
		ag__acc_into(*slot, g);
		ag_tensor_put(g);
		return 0;
	}
	sum = ag__grad_add(*slot, g);
	ag_tensor_put(g);
	if (!sum)
		return -ag_errcode();
	ag_tensor_put(*slot);
	*slot = sum;
	return 0;
}
