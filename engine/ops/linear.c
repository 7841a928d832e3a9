// SPDX-License-Identifier: MIT
/*
 * ag_linear: x w^T + b as one node.  x's leading dims are read as the rows
 * of one matrix when their strides allow it, and every operand, also a
 * transposed one, goes to GEMM in place with a transpose flag: the only
 * copies are of operands GEMM cannot address.  The bias is the output's
 * initial value, added by GEMM's beta = 1.
 */
#include <ag/mode.h>

#include "ops.h"

struct linear_node {
	struct ag_node node;
	int bias_ndim; /* the bias's shape: [bias_len] or 0-d */
	int64_t bias_len;
	struct ag_saved saved[2]; /* input, weight */
};

static const char *const linear_saved[] = { "input", "weight" };

/* A matrix operand as GEMM reads it. */
struct mat {
	const void *data;
	int64_t ld;
	bool trans; /* stored as its transpose (column-major) */
	struct ag_tensor *copy; /* dense copy when the layout did not fit */
};

/*
 * The row and column strides of t read as [rows, cols]: its leading dims
 * by its last.  False when the leading dims do not collapse into one
 * stride.  With one row (or one column) that stride is free and is chosen
 * so that the matrix has a layout GEMM takes.
 */
static bool mat_strides(const struct ag_tensor *t, int64_t rows, int64_t cols,
			int64_t *rs, int64_t *cs)
{
	int64_t expect = -1;

	/* nothing is read: any layout serves, and an empty tensor's strides
	 * times its other sizes may not even fit */
	if (!rows || !cols) {
		*rs = cols > 1 ? cols : 1;
		*cs = 1;
		return true;
	}
	*rs = 0;
	*cs = t->strides[t->ndim - 1];
	for (int d = t->ndim - 2; d >= 0; d--) {
		if (t->shape[d] == 1)
			continue;
		if (expect < 0) {
			*rs = t->strides[d];
			expect = t->strides[d] * t->shape[d];
		} else if (t->strides[d] != expect) {
			return false;
		} else {
			expect *= t->shape[d];
		}
	}
	if (cols <= 1)
		*cs = 1;
	if (rows <= 1)
		*rs = *cs == 1 ? (cols > 1 ? cols : 1) : 1;
	return true;
}

static bool mat_layout(const struct ag_tensor *t, int64_t rows, int64_t cols,
		       struct mat *m)
{
	int64_t rs, cs;

	if (!mat_strides(t, rows, cols, &rs, &cs))
		return false;
	m->data = ag__data(t);
	if (cs == 1 && rs >= (cols > 1 ? cols : 1)) {
		m->trans = false;
		m->ld = rs;
		return true;
	}
	if (rs == 1 && cs >= (rows > 1 ? rows : 1)) {
		m->trans = true;
		m->ld = cs;
		return true;
	}
	return false;
}

/* t as a [rows, cols] GEMM operand, copied dense if it must be. */
static int mat_get(struct ag_tensor *t, int64_t rows, int64_t cols,
		   struct mat *m)
{
	m->copy = NULL;
	if (mat_layout(t, rows, cols, m))
		return 0;
	m->copy = ag__contiguous_copy(t);
	if (!m->copy)
		return -ag_errcode();
	mat_layout(m->copy, rows, cols, m);
	return 0;
}

/* C[m, n] = alpha op(A) op(B) + beta C, C dense with row length n. */
static void gemm(enum ag_dtype dt, const struct mat *a, bool ta,
		 const struct mat *b, bool tb, int64_t m, int64_t n, int64_t k,
		 double beta, void *c)
{
	if (!m || !n)
		return;
	if (dt == AG_F32)
		ag_k_gemm_f32(ta, tb, m, n, k, 1.0f, a->data, a->ld, b->data,
			      b->ld, (float)beta, c, n);
	else
		ag_k_gemm_f64(ta, tb, m, n, k, 1.0, a->data, a->ld, b->data,
			      b->ld, beta, c, n);
}

/* The rows of t read as a matrix: the product of its leading dims. */
static int64_t lead_rows(const struct ag_tensor *t)
{
	return ag__dims_prod(t->ndim, t->shape, 0, t->ndim - 1);
}

/* g's shape with the last dim of size last: the shape of dx. */
static struct ag_tensor *new_like_last(struct ag_tensor *g, int64_t last)
{
	int64_t shape[AG_MAX_DIMS];

	ag__dims_copy(shape, g->shape, g->ndim);
	shape[g->ndim - 1] = last;
	return ag__tensor_new("ag_linear", g->dtype, g->ndim, shape);
}

/*
 * A pack is w^T as it was at ag_linear_prepack; any in-place write since
 * (an optimiser step, a load, ag_tensor_bump_version) bumped the version
 * and the weight is read unpacked again.  A batch of one row stays on
 * GEMV, which reads the weight once anyway.
 */
static bool pack_valid(const struct ag_tensor *w)
{
	return w->ext && w->ext->pack &&
	       w->ext->pack_version == ag_tensor_version(w);
}

static const struct ag_k_mem pack_mem = {
	.aligned_alloc = ag__aligned_alloc,
	.free = ag__mfree,
};

int ag_linear_prepack(struct ag_tensor *w)
{
	struct ag_k_gemm_pack *p;
	struct mat mw;
	int rc;

	if (!w)
		return ag__err_null("ag_linear_prepack", "weight");
	if (w->ndim != 2)
		return ag__err(AG_EINVAL,
			       "ag_linear_prepack: weight must be 2-D [out, "
			       "in], got %d dims",
			       w->ndim);
	if (w->inference)
		return ag__err(
			AG_EINVAL,
			"ag_linear_prepack: an inference tensor has no "
			"version counter to tell when its pack is stale");
	if (!w->ext) {
		w->ext = ag__calloc(1, sizeof(*w->ext));
		if (!w->ext)
			return ag__err(AG_ENOMEM,
				       "ag_linear_prepack: out of memory");
	}
	ag_k_gemm_pack_free(w->ext->pack);
	w->ext->pack = NULL;
	w->ext->pack_free = ag_k_gemm_pack_free;
	if (w->dtype != AG_F32 || !mat_layout(w, w->shape[0], w->shape[1], &mw))
		return 0;
	w->ext->pack_version = ag_tensor_version(w);
	rc = ag_k_gemm_pack_f32(&pack_mem, !mw.trans, w->shape[1], w->shape[0],
				mw.data, mw.ld, &p);
	if (rc < 0)
		return ag__err(AG_ENOMEM,
			       "ag_linear_prepack: out of memory packing a "
			       "[%lld, %lld] weight",
			       (long long)w->shape[0], (long long)w->shape[1]);
	w->ext->pack = p;
	return rc == 0;
}

static struct ag_tensor *linear_fwd(struct ag_tensor *x, struct ag_tensor *w,
				    struct ag_tensor *b)
{
	int64_t rows = lead_rows(x), in = w->shape[1], nout = w->shape[0];
	size_t es = ag_dtype_size(x->dtype);
	struct ag_tensor *out = new_like_last(x, nout);
	struct mat mx, mw;

	if (!out)
		return NULL;
	if (!rows || !nout)
		return out;
	if (b) {
		char *o = out->storage->data;

		for (int64_t j = 0; j < nout; j++) {
			double v = ag__get(b, b->numel == 1 ? 0 : j);

			if (x->dtype == AG_F32)
				((float *)o)[j] = (float)v;
			else
				((double *)o)[j] = v;
		}
		for (int64_t i = 1; i < rows; i++)
			__builtin_memcpy(o + i * nout * es, o, nout * es);
	}
	if (mat_get(x, rows, in, &mx))
		goto fail;
	if (mat_get(w, nout, in, &mw)) {
		ag_tensor_put(mx.copy);
		goto fail;
	}
	/* op(B) = w^T: w's own layout read the other way round */
	if (x->dtype == AG_F32 && rows > 1 && pack_valid(w))
		ag_k_gemm_packed_f32(w->ext->pack, mx.trans, rows, mx.data,
				     mx.ld, b ? 1.0f : 0.0f,
				     out->storage->data);
	else
		gemm(x->dtype, &mx, mx.trans, &mw, !mw.trans, rows, nout, in,
		     b ? 1.0 : 0.0, out->storage->data);
	ag_tensor_put(mx.copy);
	ag_tensor_put(mw.copy);
	return out;
fail:
	ag_tensor_put(out);
	return NULL;
}

/*
 * Under create_graph the gradients are built from public ops (matmul,
 * transpose, sum), so that they can be differentiated again.
 */
static int linear_graph_grads(struct linear_node *l, struct ag_tensor *g,
			      struct ag_tensor **out)
{
	struct ag_node *n = &l->node;
	struct ag_tensor *g2, *x = NULL, *w = NULL, *t[3] = { NULL };
	int64_t nout = g->shape[g->ndim - 1], rows = lead_rows(g);
	int64_t gs[2] = { rows, nout };
	int rc = 0;

	g2 = ag_reshape(g, 2, gs);
	if (!g2)
		return -ag_errcode();
	if (ag__grad_wanted(n, 0)) {
		w = ag__unpack(n, 1);
		t[0] = w ? ag_matmul(g2, w) : NULL;
		if (t[0]) {
			int64_t xs[AG_MAX_DIMS];

			ag__dims_copy(xs, g->shape, g->ndim);
			xs[g->ndim - 1] = w->shape[1];
			out[0] = ag_reshape(t[0], g->ndim, xs);
		}
		rc = out[0] ? 0 : -ag_errcode();
		ag_tensor_put(w);
	}
	if (!rc && ag__grad_wanted(n, 1)) {
		x = ag__unpack(n, 0);
		if (x) {
			int64_t xs[2] = { rows, x->shape[x->ndim - 1] };

			t[1] = ag_reshape(x, 2, xs);
		}
		t[2] = t[1] ? ag_transpose(g2, 0, 1) : NULL;
		out[1] = t[2] ? ag_matmul(t[2], t[1]) : NULL;
		rc = out[1] ? 0 : -ag_errcode();
		ag_tensor_put(x);
	}
	if (!rc && ag__grad_wanted(n, 2)) {
		struct ag_tensor *s = ag_sum_dim(g2, 0, false);

		out[2] = s ? ag__sum_to(s, l->bias_ndim, &l->bias_len) : NULL;
		ag_tensor_put(s);
		rc = out[2] ? 0 : -ag_errcode();
	}
	for (int i = 0; i < 3; i++)
		ag_tensor_put(t[i]);
	ag_tensor_put(g2);
	return rc;
}

/* dx = g w, dw = g^T x, db = 1^T g: GEMMs on the operands in place. */
static int linear_plain_grads(struct linear_node *l, struct ag_tensor *g,
			      struct ag_tensor **out)
{
	struct ag_node *n = &l->node;
	struct ag_tensor *x = NULL, *w = NULL, *ones = NULL, *db = NULL;
	struct mat mg = { 0 }, mx = { 0 }, mw = { 0 }, m1;
	int64_t nout = g->shape[g->ndim - 1], rows = lead_rows(g), in;
	enum ag_dtype dt = g->dtype;
	int rc = 0;

	if (mat_get(g, rows, nout, &mg))
		return -ag_errcode();
	if (ag__grad_wanted(n, 0)) {
		w = ag__unpack(n, 1);
		if (!w)
			goto fail;
		in = w->shape[1];
		out[0] = new_like_last(g, in);
		if (!out[0] || mat_get(w, nout, in, &mw))
			goto fail;
		gemm(dt, &mg, mg.trans, &mw, mw.trans, rows, in, nout, 0.0,
		     ag__data(out[0]));
	}
	if (ag__grad_wanted(n, 1)) {
		int64_t ws[2];

		x = ag__unpack(n, 0);
		if (!x)
			goto fail;
		in = x->shape[x->ndim - 1];
		ws[0] = nout;
		ws[1] = in;
		out[1] = ag__tensor_new("ag_linear", dt, 2, ws);
		if (!out[1] || mat_get(x, rows, in, &mx))
			goto fail;
		gemm(dt, &mg, !mg.trans, &mx, mx.trans, nout, in, rows, 0.0,
		     ag__data(out[1]));
	}
	if (ag__grad_wanted(n, 2)) {
		ones = ag__tensor_new("ag_linear", dt, 1, &rows);
		db = ag__tensor_new("ag_linear", dt, 1, &nout);
		if (!ones || !db)
			goto fail;
		if (dt == AG_F32)
			ag_k_fill_f32(rows, 1.0f, ag__data(ones), 1);
		else
			ag_k_fill_f64(rows, 1.0, ag__data(ones), 1);
		m1.data = ag__data(ones);
		m1.ld = rows > 1 ? rows : 1;
		gemm(dt, &m1, false, &mg, mg.trans, 1, nout, rows, 0.0,
		     ag__data(db));
		out[2] = ag__sum_to(db, l->bias_ndim, &l->bias_len);
		if (!out[2])
			goto fail;
	}
	goto done;
fail:
	rc = -ag_errcode();
	if (!rc)
		rc = -AG_ENOMEM;
done:
	ag_tensor_put(ones);
	ag_tensor_put(db);
	ag_tensor_put(x);
	ag_tensor_put(w);
	ag_tensor_put(mg.copy);
	ag_tensor_put(mx.copy);
	ag_tensor_put(mw.copy);
	return rc;
}

static int linear_apply(struct ag_node *n, struct ag_tensor **grads,
			struct ag_tensor **out)
{
	struct linear_node *l = ag_container_of(n, struct linear_node, node);

	if (!grads[0])
		return 0;
	if (ag__mode.grad)
		return linear_graph_grads(l, grads[0], out);
	return linear_plain_grads(l, grads[0], out);
}

static const struct ag_node_ops linear_ops = {
	.name = "LinearBackward",
	.apply = linear_apply,
	.saved_names = linear_saved,
};

static int linear_check(struct ag_tensor *x, struct ag_tensor *w,
			struct ag_tensor *b)
{
	const char *fn = "ag_linear";
	struct ag__shape_str s1, s2;

	if (ag__check_same_dtype(fn, x, w) ||
	    (b && ag__check_same_dtype(fn, x, b)))
		return -ag_errcode();
	if (x->ndim < 1 || w->ndim != 2 || x->shape[x->ndim - 1] != w->shape[1])
		return ag__err(
			AG_ESHAPE,
			"%s: input %s and weight %s cannot be multiplied; expected input [*, in] and weight [out, in]",
			fn, ag__shape_of(&s1, x), ag__shape_of(&s2, w));
	if (b && (b->ndim > 1 || (b->numel != w->shape[0] && b->numel != 1)))
		return ag__err(
			AG_ESHAPE,
			"%s: bias %s does not match %ld output features; expected [%ld] (or one element)",
			fn, ag__shape_of(&s1, b), (long)w->shape[0],
			(long)w->shape[0]);
	return 0;
}

struct ag_tensor *ag_linear(struct ag_tensor *x, struct ag_tensor *w,
			    struct ag_tensor *b)
{
	struct ag_tensor *in[3] = { x, w, b }, *out;
	struct linear_node *l = NULL;

	if (!x)
		return ag__null_arg("ag_linear", "x");
	if (!w)
		return ag__null_arg("ag_linear", "w");
	if (linear_check(x, w, b))
		return NULL;
	out = linear_fwd(x, w, b);
	if (!out || !ag__should_record(in, 3))
		return ag__scope_add(out);
	l = (struct linear_node *)ag__node_alloc(&linear_ops, sizeof(*l), 0, 1,
						 3, NULL, 0);
	if (!l)
		goto fail;
	l->node.saved = l->saved;
	l->node.num_saved = 2;
	l->bias_ndim = b ? b->ndim : 1;
	l->bias_len = b && b->ndim ? b->shape[0] : w->shape[0];
	if ((ag__requires_grad(w) && ag__save(&l->node, 0, x, false, 0)) ||
	    (ag__requires_grad(x) && ag__save(&l->node, 1, w, false, 0)))
		goto fail;
	return ag__finish(out, &l->node, in, 3, "ag_linear");
fail:
	if (l)
		ag__node_put(&l->node);
	ag_tensor_put(out);
	return NULL;
}
