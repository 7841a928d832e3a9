// SPDX-License-Identifier: MIT
/*
 * Conversion between dtypes.  Between f32 and f64 the gradient converts
 * back; through i64 nothing is recorded, as torch's integer tensors take
 * no gradient.
 */
#include <math.h>
#include <string.h>

#include "ops.h"

/* Rounded toward zero; NaN and out-of-range values give INT64_MIN. */
static int64_t to_i64(double v)
{
	if (!(v >= -0x1p63 && v < 0x1p63))
		return INT64_MIN;
	return (int64_t)v;
}

static void convert(const struct ag_tensor *a, struct ag_tensor *out)
{
	const void *p = a->storage->data;
	void *q = out->storage->data;
	const int64_t *strides[1] = { a->strides };
	int64_t base[1] = { a->offset }, k = 0;
	struct ag_walk w;

	ag__walk_init(&w, a->ndim, a->shape, 1, strides, base);
	while (ag__walk_next(&w)) {
		for (int64_t i = 0; i < w.inner; i++, k++) {
			int64_t o = w.off[0] + i * w.inc[0];

			if (a->dtype == AG_I64 && out->dtype == AG_F32)
				((float *)q)[k] =
					(float)((const int64_t *)p)[o];
			else if (a->dtype == AG_I64)
				((double *)q)[k] =
					(double)((const int64_t *)p)[o];
			else if (out->dtype == AG_I64)
				((int64_t *)q)[k] = to_i64(
					a->dtype == AG_F32 ?
						(double)((const float *)p)[o] :
						((const double *)p)[o]);
			else if (out->dtype == AG_F32)
				((float *)q)[k] = (float)((const double *)p)[o];
			else
				((double *)q)[k] = ((const float *)p)[o];
		}
	}
}

struct to_node {
	struct ag_node node;
	enum ag_dtype from;
};

static int to_apply(struct ag_node *n, struct ag_tensor **grads,
		    struct ag_tensor **out)
{
	struct to_node *t = ag_container_of(n, struct to_node, node);

	if (!grads[0] || !n->next[0].node)
		return 0;
	out[0] = ag_to(grads[0], t->from);
	return out[0] ? 0 : -ag_errcode();
}

static const struct ag_node_ops to_ops = {
	.name = "ToCopyBackward",
	.apply = to_apply,
};

struct ag_tensor *ag_to(struct ag_tensor *a, enum ag_dtype dtype)
{
	struct ag_tensor *out;
	struct to_node *t;

	if (!a)
		return ag__null_arg("ag_to", "a");
	if (ag__check_dtype("ag_to", dtype))
		return NULL;
	if (a->dtype == dtype)
		return ag__scope_add(ag_tensor_get(a));
	out = ag__tensor_new("ag_to", dtype, a->ndim, a->shape);
	if (!out)
		return NULL;
	convert(a, out);
	if (dtype == AG_I64 || a->dtype == AG_I64 || !ag__should_record(&a, 1))
		return ag__scope_add(out);
	t = (struct to_node *)ag__node_alloc(&to_ops, sizeof(*t), 0, 1, 1, NULL,
					     0);
	if (!t) {
		ag_tensor_put(out);
		return NULL;
	}
	t->from = a->dtype;
	return ag__finish(out, &t->node, &a, 1, "ag_to");
}
