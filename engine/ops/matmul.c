// SPDX-License-Identifier: MIT
/*
 * Matrix product of 2-D tensors through simd/'s GEMM.  Transposed
 * operands (row stride 1) are passed to GEMM as transposed, not copied.
 */
#include <inttypes.h>

#include "ops.h"

struct mm_node {
	struct ag_node node;
	struct ag_saved saved[2]; /* self, other */
};

static const char *const mm_saved[] = { "self", "mat2" };

/* A 2-D operand GEMM can read in place: (transposed?, leading dim). */
static bool gemm_layout(const struct ag_tensor *t, bool *trans, int64_t *ld)
{
	if (t->strides[1] == 1 &&
	    t->strides[0] >= (t->shape[1] ? t->shape[1] : 1)) {
		*trans = false;
		*ld = t->strides[0];
		return true;
	}
	if (t->strides[0] == 1 &&
	    t->strides[1] >= (t->shape[0] ? t->shape[0] : 1)) {
		*trans = true;
		*ld = t->strides[1];
		return true;
	}
	return false;
}

static struct ag_tensor *mm_fwd(const char *fn, struct ag_tensor *a,
				struct ag_tensor *b)
{
	struct ag_tensor *ca = NULL, *cb = NULL, *out;
	int64_t m = a->shape[0], k = a->shape[1], n = b->shape[1], lda = 0,
		ldb = 0;
	int64_t shape[2] = { m, n };
	bool ta = false, tb = false;

	out = ag__tensor_new(fn, a->dtype, 2, shape);
	if (!out)
		return NULL;
	if (!gemm_layout(a, &ta, &lda)) {
		a = ca = ag__contiguous_copy(a);
		if (!a)
			goto fail;
		gemm_layout(a, &ta, &lda);
	}
	if (!gemm_layout(b, &tb, &ldb)) {
		b = cb = ag__contiguous_copy(b);
		if (!b)
			goto fail;
		gemm_layout(b, &tb, &ldb);
	}
	if (m && n) {
		if (a->dtype == AG_F32)
			ag_k_gemm_f32(ta, tb, m, n, k, 1.0f, ag__data(a), lda,
				      ag__data(b), ldb, 0.0f, ag__data(out), n);
		else
			ag_k_gemm_f64(ta, tb, m, n, k, 1.0, ag__data(a), lda,
				      ag__data(b), ldb, 0.0, ag__data(out), n);
	}
	ag_tensor_put(ca);
	ag_tensor_put(cb);
	return out;
fail:
	ag_tensor_put(ca);
	ag_tensor_put(out);
	return NULL;
}

static int mm_apply(struct ag_node *n, struct ag_tensor **grads,
		    struct ag_tensor **out)
{
	struct ag_tensor *g = grads[0], *x = NULL, *y = NULL, *t;
	int rc = 0;

	if (!g)
		return 0;
	if (n->next[0].node) { /* dA = g B^T */
		y = ag__unpack(n, 1);
		t = ag_transpose(y, 0, 1);
		out[0] = ag_matmul(g, t);
		ag_tensor_put(t);
		if (!out[0])
			rc = -ag_errcode();
	}
	if (!rc && n->next[1].node) { /* dB = A^T g */
		x = ag__unpack(n, 0);
		t = ag_transpose(x, 0, 1);
		out[1] = ag_matmul(t, g);
		ag_tensor_put(t);
		if (!out[1])
			rc = -ag_errcode();
	}
	ag_tensor_put(x);
	ag_tensor_put(y);
	return rc;
}

static const struct ag_node_ops mm_ops = {
	.name = "MmBackward",
	.apply = mm_apply,
	.saved_names = mm_saved,
};

struct ag_tensor *ag_matmul(struct ag_tensor *a, struct ag_tensor *b)
{
	struct ag_tensor *in[2] = { a, b }, *out;
	struct mm_node *n = NULL;
	struct ag__shape_str x, y;

	if (!a)
		return ag__null_arg("ag_matmul", "a");
	if (!b)
		return ag__null_arg("ag_matmul", "b");
	if (ag__check_same_dtype("ag_matmul", a, b))
		return NULL;
	if (a->ndim != 2 || b->ndim != 2 || a->shape[1] != b->shape[0]) {
		ag__err(AG_ESHAPE,
			"ag_matmul: mat1 and mat2 shapes cannot be multiplied (%s and %s); 2-D operands with matching inner size are supported",
			ag__shape_of(&x, a), ag__shape_of(&y, b));
		return NULL;
	}
	out = mm_fwd("ag_matmul", a, b);
	if (!out || !ag__should_record(in, 2))
		return ag__scope_add(out);
	n = (struct mm_node *)ag__node_alloc(&mm_ops, sizeof(*n), 0, 1, 2, NULL,
					     0);
	if (!n)
		goto fail;
	n->node.saved = n->saved;
	n->node.num_saved = 2;
	if ((ag__requires_grad(b) && ag__save(&n->node, 0, a, false, 0)) ||
	    (ag__requires_grad(a) && ag__save(&n->node, 1, b, false, 0)))
		goto fail;
	return ag__finish(out, &n->node, in, 2, "ag_matmul");
fail:
	if (n)
		ag__node_put(&n->node);
	ag_tensor_put(out);
	return NULL;
}
