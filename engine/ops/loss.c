// SPDX-License-Identifier: MIT
/*
 * Losses.  Cross-entropy (log_softmax fused with NLL) and NLL are one node
 * over "rows": the lanes along the class dim 1 of [N, C, d...], or the
 * one lane of [C].  BCE with logits is one elementwise node.  MSE is
 * composed from public ops: its derivatives are theirs.
 *
 * Plain backward works on dense buffers with simd/ kernels; under
 * create_graph the same gradients are built from public ops (softmax,
 * sigmoid, mul) with the targets' parts as constants.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include <ag/mode.h>

#include "ops.h"

static double rd(const struct ag_tensor *t, int64_t i)
{
	if (t->dtype == AG_F32)
		return ((const float *)ag__data(t))[i];
	return ((const double *)ag__data(t))[i];
}

static void wr(struct ag_tensor *t, int64_t i, double v)
{
	if (t->dtype == AG_F32)
		((float *)ag__data(t))[i] = (float)v;
	else
		((double *)ag__data(t))[i] = v;
}

static struct ag_tensor *dense(struct ag_tensor *t)
{
	return ag_tensor_is_contiguous(t) ? ag_tensor_get(t) :
					    ag__contiguous_copy(t);
}

static const struct ag_loss_opts default_opts;

/* Rejects options the loss does not take. */
static int opts_check(const char *fn, const struct ag_loss_opts *o, bool weight,
		      bool pos_weight, bool smoothing, bool ignore)
{
	if (o->reduction != AG_REDUCTION_MEAN &&
	    o->reduction != AG_REDUCTION_SUM &&
	    o->reduction != AG_REDUCTION_NONE)
		return ag__err(AG_EINVAL, "%s: unknown reduction %d", fn,
			       (int)o->reduction);
	if (o->weight && !weight)
		return ag__err(AG_EINVAL, "%s: takes no weight", fn);
	if (o->pos_weight && !pos_weight)
		return ag__err(AG_EINVAL, "%s: takes no pos_weight", fn);
	if (o->label_smoothing != 0 && !smoothing)
		return ag__err(AG_EINVAL, "%s: takes no label_smoothing", fn);
	if (o->has_ignore_index && !ignore)
		return ag__err(AG_EINVAL, "%s: takes no ignore_index", fn);
	if (!(o->label_smoothing >= 0 && o->label_smoothing <= 1))
		return ag__err(
			AG_EINVAL,
			"%s: label_smoothing must be between 0.0 and 1.0, got %g",
			fn, o->label_smoothing);
	return 0;
}

/* ---- MSE ---- */

struct ag_tensor *ag_mse_loss_ex(struct ag_tensor *a, struct ag_tensor *b,
				 const struct ag_loss_opts *o)
{
	const char *fn = "ag_mse_loss";
	struct ag_tensor *d, *sq = NULL, *r = NULL;
	struct ag_scope *scope;

	if (!a)
		return ag__null_arg(fn, "a");
	if (!b)
		return ag__null_arg(fn, "b");
	if (!o)
		o = &default_opts;
	if (opts_check(fn, o, false, false, false, false) ||
	    ag__check_same_dtype(fn, a, b))
		return NULL;
	/* the temporaries are the library's, not the user's scope's */
	scope = ag__scope_suspend();
	d = ag_sub(a, b);
	sq = d ? ag_square(d) : NULL;
	if (sq && o->reduction == AG_REDUCTION_NONE)
		r = ag_tensor_get(sq);
	else if (sq)
		r = o->reduction == AG_REDUCTION_SUM ? ag_sum(sq) : ag_mean(sq);
	ag_tensor_put(d);
	ag_tensor_put(sq);
	ag__scope_resume(scope);
	return ag__scope_add(r);
}

struct ag_tensor *ag_mse_loss(struct ag_tensor *a, struct ag_tensor *b)
{
	return ag_mse_loss_ex(a, b, NULL);
}

/* ---- cross-entropy and NLL ---- */

/* A class loss's geometry: rows lanes of c classes, S apart. */
struct cl_geom {
	int64_t rows, c, s;
};

struct cl_node {
	struct ag_node node;
	bool ce;
	enum ag_reduction reduction;
	double smoothing;
	int64_t ignore;
	double scale; /* of the upstream gradient: 1 / divisor for a mean */
	struct cl_geom geo;
	int ndim; /* the input's shape, for NLL, which does not save it */
	int64_t shape[AG_MAX_DIMS];
	struct ag_saved saved[3]; /* input (CE only), target, weight */
};

static const char *const cl_saved[] = { "self", "target", "weight" };

/* Element offset of class k of row r in a dense input. */
static int64_t cl_off(const struct cl_geom *g, int64_t r, int64_t k)
{
	return (r / g->s) * g->c * g->s + k * g->s + r % g->s;
}

static int cl_check(const char *fn, struct ag_tensor *x, struct ag_tensor *t,
		    const struct ag_loss_opts *o)
{
	struct ag__shape_str s1, s2;
	bool ok;

	if (ag__check_float(fn, x))
		return -ag_errcode();
	if (t->dtype != AG_I64)
		return ag__err(AG_EDTYPE,
			       "%s: expected targets of dtype i64, got %s", fn,
			       ag_dtype_name(t->dtype));
	ok = x->ndim >= 1 && t->ndim == (x->ndim == 1 ? 0 : x->ndim - 1);
	for (int d = 0; ok && d < t->ndim; d++)
		ok = t->shape[d] == x->shape[d ? d + 1 : 0];
	if (!ok)
		return ag__err(
			AG_ESHAPE,
			"%s: input %s and targets %s do not match; expected input [N, C, d...] with targets [N, d...], or input [C] with 0-d targets",
			fn, ag__shape_of(&s1, x), ag__shape_of(&s2, t));
	if (o->weight) {
		int64_t c = x->ndim == 1 ? x->shape[0] : x->shape[1];

		if (o->weight->dtype != x->dtype)
			return ag__err(
				AG_EDTYPE,
				"%s: weight has dtype %s but the input has %s",
				fn, ag_dtype_name(o->weight->dtype),
				ag_dtype_name(x->dtype));
		if (o->weight->ndim != 1 || o->weight->shape[0] != c)
			return ag__err(
				AG_ESHAPE,
				"%s: weight %s should hold one value per class (%ld)",
				fn, ag__shape_of(&s1, o->weight), (long)c);
	}
	return 0;
}

static struct cl_geom cl_geom(const struct ag_tensor *x)
{
	struct cl_geom g = { 1, x->shape[x->ndim == 1 ? 0 : 1], 1 };

	if (x->ndim == 1)
		return g;
	g.s = ag__dims_prod(x->ndim, x->shape, 2, x->ndim);
	g.rows = ag__dims_prod(x->ndim, x->shape, 0, 1) * g.s;
	return g;
}

/* The targets dense; AG_EINVAL naming the first that is out of range. */
static int64_t *cl_targets(const char *fn, struct ag_tensor *t, int64_t c,
			   int64_t ignore)
{
	int64_t *v = ag__malloc((size_t)(t->numel ? t->numel : 1) * sizeof(*v));

	if (!v) {
		ag__err(AG_ENOMEM, "%s: out of memory", fn);
		return NULL;
	}
	ag__copy_dense(t, v);
	for (int64_t r = 0; r < t->numel; r++) {
		if (v[r] != ignore && (v[r] < 0 || v[r] >= c)) {
			ag__err(AG_EINVAL,
				"%s: target %ld at row %ld is out of range for %ld classes",
				fn, (long)v[r], (long)r, (long)c);
			ag__mfree(v);
			return NULL;
		}
	}
	return v;
}

struct cl_args {
	bool ce;
	double eps; /* label smoothing */
	int64_t ignore;
	struct cl_geom geo;
	const int64_t *tv;
	struct ag_tensor *x; /* dense */
	struct ag_tensor *w; /* dense or NULL */
};

static double wt(const struct cl_args *a, int64_t k)
{
	return a->w ? rd(a->w, k) : 1.0;
}

static double lane_lse(const struct ag_tensor *x, const struct cl_geom *g,
		       int64_t r)
{
	const char *p = (const char *)ag__data(x) +
			cl_off(g, r, 0) * (int64_t)ag_dtype_size(x->dtype);

	if (!g->c)
		return -INFINITY;
	if (x->dtype == AG_F32)
		return ag_k_logsumexp_f32(g->c, (const float *)p, g->s);
	return ag_k_logsumexp_f64(g->c, (const double *)p, g->s);
}

/* The loss of row r (0 if ignored); *wsum gets its weight in a mean. */
static double cl_row(const struct cl_args *a, int64_t r, double *wsum)
{
	int64_t t = a->tv[r];
	double lse, l, sm = 0;

	*wsum = 0;
	if (t == a->ignore)
		return 0;
	*wsum = wt(a, t);
	if (!a->ce)
		return -wt(a, t) * rd(a->x, cl_off(&a->geo, r, t));
	lse = lane_lse(a->x, &a->geo, r);
	l = wt(a, t) * (lse - rd(a->x, cl_off(&a->geo, r, t)));
	if (a->eps == 0)
		return l;
	for (int64_t k = 0; k < a->geo.c; k++)
		sm += wt(a, k) * (lse - rd(a->x, cl_off(&a->geo, r, k)));
	return (1 - a->eps) * l + a->eps / (double)a->geo.c * sm;
}

/*
 * dinput / d(loss of row r), the row's upstream gradient gi aside:
 *   CE:  softmax * S - q,  q_k = (1 - eps) w_t [k = t] + eps / C w_k,
 *        S = sum_k q_k;
 *   NLL: -w_t [k = t].
 * Written into lane r of dx (dense, zeroed for NLL).
 */
static void cl_row_grad(const struct cl_args *a, int64_t r, double gi,
			struct ag_tensor *dx)
{
	const struct cl_geom *g = &a->geo;
	int64_t t = a->tv[r], o = cl_off(g, r, 0);
	size_t es = ag_dtype_size(dx->dtype);
	struct ag_k_params p0 = { 0, 0 }, p1 = { 0, 0 };
	double wsum = 0, s;
	void *lane = (char *)ag__data(dx) + o * (int64_t)es;
	const void *xl;

	if (t == a->ignore)
		return;
	if (!a->ce) {
		wr(dx, cl_off(g, r, t), -gi * wt(a, t));
		return;
	}
	/*
	 * softmax of the lane, exp((x - max) - (lse - max)) by the simd/
	 * kernels: x - max is exact in the dtype, and lse - max is small,
	 * so logits of 1e4 in f32 keep their precision.
	 */
	xl = (const char *)ag__data(a->x) + o * (int64_t)es;
	if (dx->dtype == AG_F32)
		p0.p0 = -ag_k_max_f32(g->c, xl, g->s, NULL);
	else
		p0.p0 = -ag_k_max_f64(g->c, xl, g->s, NULL);
	p1.p0 = -(lane_lse(a->x, g, r) + p0.p0);
	if (dx->dtype == AG_F32) {
		ag_k_unary_f32(AG_K_ADD_SCALAR, g->c, xl, g->s, lane, g->s,
			       &p0);
		ag_k_unary_f32(AG_K_ADD_SCALAR, g->c, lane, g->s, lane, g->s,
			       &p1);
		ag_k_unary_f32(AG_K_EXP, g->c, lane, g->s, lane, g->s, NULL);
	} else {
		ag_k_unary_f64(AG_K_ADD_SCALAR, g->c, xl, g->s, lane, g->s,
			       &p0);
		ag_k_unary_f64(AG_K_ADD_SCALAR, g->c, lane, g->s, lane, g->s,
			       &p1);
		ag_k_unary_f64(AG_K_EXP, g->c, lane, g->s, lane, g->s, NULL);
	}
	if (a->eps != 0)
		for (int64_t k = 0; k < g->c; k++)
			wsum += wt(a, k);
	s = (1 - a->eps) * wt(a, t) + a->eps / (double)g->c * wsum;
	for (int64_t k = 0; k < g->c; k++) {
		int64_t i = cl_off(g, r, k);
		double q = a->eps / (double)g->c * wt(a, k) +
			   (k == t ? (1 - a->eps) * wt(a, t) : 0);

		wr(dx, i, gi * (rd(dx, i) * s - q));
	}
}

/* Fills q (dense, x's shape) with the constant of the rows' gradients:
 * CE: q; NLL: -w_t at the target.  s (CE, may be NULL) gets S per row. */
static void cl_consts(const struct cl_args *a, struct ag_tensor *q,
		      struct ag_tensor *s)
{
	const struct cl_geom *g = &a->geo;
	double wsum = 0;

	memset(ag__data(q), 0, (size_t)q->numel * ag_dtype_size(q->dtype));
	for (int64_t k = 0; a->ce && a->eps != 0 && k < g->c; k++)
		wsum += wt(a, k);
	for (int64_t r = 0; r < g->rows; r++) {
		int64_t t = a->tv[r];

		if (s)
			wr(s, r, 0);
		if (t == a->ignore)
			continue;
		if (!a->ce) {
			wr(q, cl_off(g, r, t), -wt(a, t));
			continue;
		}
		for (int64_t k = 0; k < g->c; k++)
			wr(q, cl_off(g, r, k),
			   a->eps / (double)g->c * wt(a, k) +
				   (k == t ? (1 - a->eps) * wt(a, t) : 0));
		if (s)
			wr(s, r,
			   (1 - a->eps) * wt(a, t) +
				   a->eps / (double)g->c * wsum);
	}
}

/* The upstream gradient per row, broadcastable to the input. */
static struct ag_tensor *cl_upstream(struct cl_node *l, struct ag_tensor *g)
{
	if (l->reduction != AG_REDUCTION_NONE)
		return ag_mul_scalar(g, l->scale);
	if (l->ndim == 1)
		return ag_tensor_get(g);
	return ag_unsqueeze(g, 1);
}

static int cl_graph_grad(struct cl_node *l, const struct cl_args *a,
			 struct ag_tensor *g, struct ag_tensor **out)
{
	struct ag_tensor *t[6] = { NULL };
	int64_t sshape[AG_MAX_DIMS];
	int rc = 0;

	ag__dims_copy(sshape, l->shape, l->ndim);
	sshape[l->ndim == 1 ? 0 : 1] = 1;
	t[0] = ag__tensor_new("ag_cross_entropy", g->dtype, l->ndim, l->shape);
	t[1] = ag__tensor_new("ag_cross_entropy", g->dtype, l->ndim, sshape);
	t[2] = cl_upstream(l, g);
	if (!t[0] || !t[1] || !t[2])
		goto fail;
	cl_consts(a, t[0], t[1]);
	if (l->ce) {
		struct ag_tensor *x = ag__unpack(&l->node, 0);

		t[3] = x ? ag_softmax(x, l->ndim == 1 ? 0 : 1) : NULL;
		ag_tensor_put(x);
		t[4] = t[3] ? ag_mul(t[3], t[1]) : NULL;
		t[5] = t[4] ? ag_sub(t[4], t[0]) : NULL;
		out[0] = t[5] ? ag_mul(t[5], t[2]) : NULL;
	} else {
		out[0] = ag_mul(t[0], t[2]);
	}
	if (out[0])
		goto done;
fail:
	rc = -ag_errcode();
	if (!rc)
		rc = -AG_ENOMEM;
done:
	for (int i = 0; i < 6; i++)
		ag_tensor_put(t[i]);
	return rc;
}

static int cl_plain_grad(struct cl_node *l, const struct cl_args *a,
			 struct ag_tensor *g, struct ag_tensor **out)
{
	struct ag_tensor *gc = dense(g), *dx;

	if (!gc)
		return -ag_errcode();
	dx = ag__tensor_new("ag_cross_entropy", g->dtype, l->ndim, l->shape);
	if (!dx) {
		ag_tensor_put(gc);
		return -ag_errcode();
	}
	memset(ag__data(dx), 0, (size_t)dx->numel * ag_dtype_size(dx->dtype));
	for (int64_t r = 0; r < a->geo.rows; r++)
		cl_row_grad(a, r,
			    l->reduction == AG_REDUCTION_NONE ?
				    rd(gc, r) :
				    rd(gc, 0) * l->scale,
			    dx);
	ag_tensor_put(gc);
	out[0] = dx;
	return 0;
}

static int cl_apply(struct ag_node *n, struct ag_tensor **grads,
		    struct ag_tensor **out)
{
	struct cl_node *l = ag_container_of(n, struct cl_node, node);
	struct ag_tensor *x = NULL, *t = NULL, *w = NULL, *wc = NULL;
	struct cl_args a = { .ce = l->ce,
			     .eps = l->smoothing,
			     .ignore = l->ignore,
			     .geo = l->geo };
	int64_t *tv = NULL;
	int rc;

	if (!grads[0] || !n->next[0].node)
		return 0;
	t = ag__unpack(n, 1);
	w = ag__unpack(n, 2);
	if (!t || (n->saved[2].defined && !w) ||
	    (l->ce && !(x = ag__unpack(n, 0))))
		goto fail;
	tv = ag__malloc((size_t)(t->numel ? t->numel : 1) * sizeof(*tv));
	a.x = x ? dense(x) : NULL;
	a.w = wc = w ? dense(w) : NULL;
	if (!tv || (x && !a.x) || (w && !wc)) {
		ag__err(AG_ENOMEM, "%s: out of memory", n->ops->name);
		goto fail;
	}
	ag__copy_dense(t, tv);
	a.tv = tv;
	rc = ag__mode.grad ? cl_graph_grad(l, &a, grads[0], out) :
			     cl_plain_grad(l, &a, grads[0], out);
	goto done;
fail:
	rc = -ag_errcode();
	if (!rc)
		rc = -AG_ENOMEM;
done:
	ag__mfree(tv);
	ag_tensor_put(a.x);
	ag_tensor_put(x);
	ag_tensor_put(t);
	ag_tensor_put(w);
	ag_tensor_put(wc);
	return rc;
}

static const struct ag_node_ops ce_ops = {
	.name = "CrossEntropyLossBackward",
	.apply = cl_apply,
	.saved_names = cl_saved,
};

static const struct ag_node_ops nll_ops = {
	.name = "NllLossBackward",
	.apply = cl_apply,
	.saved_names = cl_saved,
};

/* The reduced (or per-row) loss; *scale gets 1 / divisor for a mean. */
static struct ag_tensor *cl_fwd(const char *fn, const struct cl_args *a,
				struct ag_tensor *t, enum ag_reduction red,
				double *scale)
{
	struct ag_tensor *out;
	double sum = 0, div = 0, w;

	*scale = 1;
	if (red == AG_REDUCTION_NONE) {
		out = ag__tensor_new(fn, a->x->dtype, t->ndim, t->shape);
		for (int64_t r = 0; out && r < a->geo.rows; r++)
			wr(out, r, cl_row(a, r, &w));
		return out;
	}
	out = ag__tensor_new(fn, a->x->dtype, 0, NULL);
	if (!out)
		return NULL;
	for (int64_t r = 0; r < a->geo.rows; r++) {
		sum += cl_row(a, r, &w);
		div += w;
	}
	if (red == AG_REDUCTION_MEAN) {
		*scale = 1 / div; /* nothing counted: 0 / 0, NaN, as torch */
		sum *= *scale;
	}
	wr(out, 0, sum);
	return out;
}

static struct ag_tensor *class_loss(const char *fn, bool ce,
				    struct ag_tensor *x, struct ag_tensor *t,
				    const struct ag_loss_opts *o)
{
	struct cl_args a = { .ce = ce };
	struct ag_tensor *out = NULL, *xc = NULL, *wc = NULL;
	struct cl_node *l = NULL;
	int64_t *tv = NULL;
	double scale;

	if (!x)
		return ag__null_arg(fn, "x");
	if (!t)
		return ag__null_arg(fn, "t");
	if (!o)
		o = &default_opts;
	if (opts_check(fn, o, true, false, ce, true) || cl_check(fn, x, t, o))
		return NULL;
	a.eps = o->label_smoothing;
	a.ignore = o->has_ignore_index ? o->ignore_index : -100;
	a.geo = cl_geom(x);
	tv = cl_targets(fn, t, a.geo.c, a.ignore);
	if (!tv)
		return NULL;
	a.tv = tv;
	a.x = xc = dense(x);
	a.w = wc = o->weight ? dense(o->weight) : NULL;
	if (xc && (wc || !o->weight))
		out = cl_fwd(fn, &a, t, o->reduction, &scale);
	ag__mfree(tv);
	ag_tensor_put(xc);
	ag_tensor_put(wc);
	if (!out || !ag__should_record(&x, 1))
		return ag__scope_add(out);
	l = (struct cl_node *)ag__node_alloc(ce ? &ce_ops : &nll_ops,
					     sizeof(*l), 0, 1, 1, NULL, 0);
	if (!l)
		goto fail;
	l->node.saved = l->saved;
	l->node.num_saved = 3;
	l->ce = ce;
	l->reduction = o->reduction;
	l->smoothing = a.eps;
	l->ignore = a.ignore;
	l->scale = scale;
	l->geo = a.geo;
	l->ndim = x->ndim;
	ag__dims_copy(l->shape, x->shape, x->ndim);
	if ((ce && ag__save(&l->node, 0, x, false, 0)) ||
	    ag__save(&l->node, 1, t, false, 0) ||
	    ag__save(&l->node, 2, o->weight, false, 0))
		goto fail;
	return ag__finish(out, &l->node, &x, 1, fn);
fail:
	if (l)
		ag__node_put(&l->node);
	ag_tensor_put(out);
	return NULL;
}

struct ag_tensor *ag_cross_entropy_ex(struct ag_tensor *logits,
				      struct ag_tensor *targets,
				      const struct ag_loss_opts *o)
{
	return class_loss("ag_cross_entropy", true, logits, targets, o);
}

struct ag_tensor *ag_cross_entropy(struct ag_tensor *logits,
				   struct ag_tensor *targets)
{
	return ag_cross_entropy_ex(logits, targets, NULL);
}

struct ag_tensor *ag_nll_loss_ex(struct ag_tensor *logp,
				 struct ag_tensor *targets,
				 const struct ag_loss_opts *o)
{
	return class_loss("ag_nll_loss", false, logp, targets, o);
}

struct ag_tensor *ag_nll_loss(struct ag_tensor *logp, struct ag_tensor *targets)
{
	return ag_nll_loss_ex(logp, targets, NULL);
}

/* ---- BCE with logits ---- */

enum { BCE_X, BCE_T, BCE_W, BCE_PW };

struct bce_node {
	struct ag_node node;
	enum ag_reduction reduction;
	double scale; /* of the upstream gradient: 1 / numel for a mean */
	struct ag_saved saved[4]; /* self, target, weight, pos_weight */
};

static const char *const bce_saved[] = { "self", "target", "weight",
					 "pos_weight" };

/* t broadcast to x's shape, as a dense copy; NULL stays NULL. */
static int bcast_dense(struct ag_tensor *t, const struct ag_tensor *x,
		       struct ag_tensor **out)
{
	int64_t st[AG_MAX_DIMS];
	struct ag_tensor *v;

	*out = NULL;
	if (!t)
		return 0;
	ag__broadcast_strides(t, x->ndim, x->shape, st);
	v = ag__tensor_view(t, x->ndim, x->shape, st, t->offset);
	*out = v ? ag__contiguous_copy(v) : NULL;
	ag_tensor_put(v);
	return *out ? 0 : -AG_ENOMEM;
}

/* softplus(-x) = max(-x, 0) + log1p(exp(-|x|)), x dense; new tensor */
static struct ag_tensor *softplus_neg(struct ag_tensor *x)
{
	struct ag_tensor *s =
		ag__unary_fwd("ag_bce_with_logits", AG_K_ABS, NULL, x);

	if (!s)
		return NULL;
	ag__unary_into(AG_K_NEG, NULL, s);
	ag__unary_into(AG_K_EXP, NULL, s);
	ag__unary_into(AG_K_LOG1P, NULL, s);
	for (int64_t i = 0; i < x->numel; i++) {
		double v = rd(x, i);

		if (v < 0)
			wr(s, i, rd(s, i) - v);
	}
	return s;
}

/* Dense copies of what the formulas read; pw and w may be NULL. */
struct bce_in {
	struct ag_tensor *x, *t, *w, *pw;
};

static void bce_in_put(struct bce_in *b)
{
	ag_tensor_put(b->x);
	ag_tensor_put(b->t);
	ag_tensor_put(b->w);
	ag_tensor_put(b->pw);
}

static int bce_in_get(struct bce_in *b, struct ag_tensor *x,
		      struct ag_tensor *t, struct ag_tensor *w,
		      struct ag_tensor *pw)
{
	*b = (struct bce_in){ dense(x), dense(t), NULL, NULL };
	if (!b->x || !b->t || bcast_dense(w, x, &b->w) ||
	    bcast_dense(pw, x, &b->pw)) {
		bce_in_put(b);
		return ag__err(AG_ENOMEM, "ag_bce_with_logits: out of memory");
	}
	return 0;
}

/* w ((1 - t) x + (1 + (pw - 1) t) softplus(-x)), element i */
static double bce_elem(const struct bce_in *b, const struct ag_tensor *sp,
		       int64_t i)
{
	double x = rd(b->x, i), t = rd(b->t, i);
	double lw = b->pw ? 1 + (rd(b->pw, i) - 1) * t : 1;
	double l = (1 - t) * x + lw * rd(sp, i);

	return b->w ? l * rd(b->w, i) : l;
}

static struct ag_tensor *bce_fwd(const struct bce_in *b, enum ag_reduction red,
				 const struct ag_tensor *x)
{
	const char *fn = "ag_bce_with_logits";
	struct ag_tensor *sp = softplus_neg(b->x), *out;
	double sum = 0;

	if (!sp)
		return NULL;
	if (red == AG_REDUCTION_NONE)
		out = ag__tensor_new(fn, x->dtype, x->ndim, x->shape);
	else
		out = ag__tensor_new(fn, x->dtype, 0, NULL);
	for (int64_t i = 0; out && i < x->numel; i++) {
		double v = bce_elem(b, sp, i);

		if (red == AG_REDUCTION_NONE)
			wr(out, i, v);
		else
			sum += v;
	}
	if (out && red != AG_REDUCTION_NONE)
		wr(out, 0,
		   red == AG_REDUCTION_MEAN ? sum / (double)x->numel : sum);
	ag_tensor_put(sp);
	return out;
}

/*
 * dx = gi w ((1 + (pw - 1) t) sigmoid(x) - pw t)   (sigmoid(x) - t: no pw)
 * dt = gi w (-x + (pw - 1) softplus(-x))           (-x: no pw)
 */
static int bce_plain_grads(struct bce_node *bn, const struct bce_in *b,
			   struct ag_tensor *g, struct ag_tensor **out)
{
	struct ag_node *n = &bn->node;
	struct ag_tensor *gc = dense(g), *sig = NULL, *sp = NULL;
	int64_t numel = b->x->numel;
	int rc = 0;

	if (!gc)
		return -ag_errcode();
	if (n->next[0].node) {
		sig = ag__unary_fwd("ag_bce_with_logits", AG_K_SIGMOID, NULL,
				    b->x);
		out[0] = sig ? ag__tensor_like(b->x) : NULL;
	}
	if (n->next[1].node) {
		sp = b->pw ? softplus_neg(b->x) : NULL;
		out[1] = !b->pw || sp ? ag__tensor_like(b->x) : NULL;
	}
	if ((n->next[0].node && !out[0]) || (n->next[1].node && !out[1])) {
		rc = -ag_errcode();
		goto done;
	}
	for (int64_t i = 0; i < numel; i++) {
		double gi = bn->reduction == AG_REDUCTION_NONE ?
				    rd(gc, i) :
				    rd(gc, 0) * bn->scale;
		double t = rd(b->t, i), pw = b->pw ? rd(b->pw, i) : 1;

		if (b->w)
			gi *= rd(b->w, i);
		if (out[0])
			wr(out[0], i,
			   gi * ((1 + (pw - 1) * t) * rd(sig, i) - pw * t));
		if (out[1])
			wr(out[1], i,
			   gi * (-rd(b->x, i) +
				 (b->pw ? (pw - 1) * rd(sp, i) : 0)));
	}
done:
	ag_tensor_put(gc);
	ag_tensor_put(sig);
	ag_tensor_put(sp);
	return rc;
}

/* The same from public ops, for create_graph. */
static int bce_graph_grads(struct bce_node *bn, struct ag_tensor *g,
			   struct ag_tensor **out)
{
	struct ag_node *n = &bn->node;
	struct ag_tensor *x = ag__unpack(n, BCE_X), *t = ag__unpack(n, BCE_T);
	struct ag_tensor *w = ag__unpack(n, BCE_W), *pw = ag__unpack(n, BCE_PW);
	struct ag_tensor *u[12] = { NULL }, *gi, *pwm1 = NULL, *r;
	int k = 0, rc = 0;

	if (!x || !t || (n->saved[BCE_W].defined && !w) ||
	    (n->saved[BCE_PW].defined && !pw))
		goto fail;
	gi = u[k++] = bn->reduction == AG_REDUCTION_NONE ?
			      ag_tensor_get(g) :
			      ag_mul_scalar(g, bn->scale);
	if (gi && w)
		gi = u[k++] = ag_mul(gi, w);
	if (pw)
		pwm1 = u[k++] = ag_add_scalar(pw, -1);
	if (!gi || (pw && !pwm1))
		goto fail;
	if (n->next[0].node) {
		struct ag_tensor *sig = u[k++] = ag_sigmoid(x);

		if (pw && sig) {
			struct ag_tensor *lw, *a, *c;

			lw = u[k++] = ag_mul(pwm1, t);
			lw = u[k++] = lw ? ag_add_scalar(lw, 1) : NULL;
			a = u[k++] = lw ? ag_mul(lw, sig) : NULL;
			c = u[k++] = a ? ag_mul(pw, t) : NULL;
			r = c ? ag_sub(a, c) : NULL;
		} else {
			r = sig ? ag_sub(sig, t) : NULL;
		}
		out[0] = r ? ag_mul(r, gi) : NULL;
		ag_tensor_put(r);
		if (!out[0])
			goto fail;
	}
	if (n->next[1].node) {
		if (pw) {
			/* torch's softplus: its threshold is far past where
			 * the difference shows in a gradient */
			struct ag_tensor *nx = ag_neg(x), *sp, *c;

			sp = nx ? ag_softplus(nx) : NULL;
			c = sp ? ag_mul(pwm1, sp) : NULL;
			r = c ? ag_sub(c, x) : NULL;
			ag_tensor_put(nx);
			ag_tensor_put(sp);
			ag_tensor_put(c);
		} else {
			r = ag_neg(x);
		}
		out[1] = r ? ag_mul(r, gi) : NULL;
		ag_tensor_put(r);
		if (!out[1])
			goto fail;
	}
	goto done;
fail:
	rc = -ag_errcode();
	if (!rc)
		rc = -AG_ENOMEM;
done:
	for (int i = 0; i < k; i++)
		ag_tensor_put(u[i]);
	ag_tensor_put(x);
	ag_tensor_put(t);
	ag_tensor_put(w);
	ag_tensor_put(pw);
	return rc;
}

static int bce_apply(struct ag_node *n, struct ag_tensor **grads,
		     struct ag_tensor **out)
{
	struct bce_node *bn = ag_container_of(n, struct bce_node, node);
	struct ag_tensor *x, *t, *w, *pw;
	struct bce_in b;
	int rc;

	if (!grads[0])
		return 0;
	if (ag__mode.grad)
		return bce_graph_grads(bn, grads[0], out);
	x = ag__unpack(n, BCE_X);
	t = ag__unpack(n, BCE_T);
	w = ag__unpack(n, BCE_W);
	pw = ag__unpack(n, BCE_PW);
	if (!x || !t || (n->saved[BCE_W].defined && !w) ||
	    (n->saved[BCE_PW].defined && !pw))
		rc = -ag_errcode();
	else
		rc = bce_in_get(&b, x, t, w, pw);
	if (!rc) {
		rc = bce_plain_grads(bn, &b, grads[0], out);
		bce_in_put(&b);
	}
	ag_tensor_put(x);
	ag_tensor_put(t);
	ag_tensor_put(w);
	ag_tensor_put(pw);
	return rc;
}

static const struct ag_node_ops bce_ops = {
	.name = "BinaryCrossEntropyWithLogitsBackward",
	.apply = bce_apply,
	.saved_names = bce_saved,
};

static int bce_check_bcast(const char *fn, const char *what,
			   struct ag_tensor *v, const struct ag_tensor *x)
{
	int64_t shape[AG_MAX_DIMS];
	struct ag__shape_str s1, s2;
	int nd;

	if (!v)
		return 0;
	if (v->dtype != x->dtype)
		return ag__err(AG_EDTYPE,
			       "%s: %s has dtype %s but the input has %s", fn,
			       what, ag_dtype_name(v->dtype),
			       ag_dtype_name(x->dtype));
	if (ag__broadcast_shape(fn, x, v, &nd, shape))
		return -ag_errcode();
	if (nd != x->ndim || !ag__shape_eq(nd, shape, x->shape))
		return ag__err(AG_ESHAPE,
			       "%s: %s %s does not broadcast to the input %s",
			       fn, what, ag__shape_of(&s1, v),
			       ag__shape_of(&s2, x));
	return 0;
}

struct ag_tensor *ag_bce_with_logits_ex(struct ag_tensor *logits,
					struct ag_tensor *targets,
					const struct ag_loss_opts *o)
{
	const char *fn = "ag_bce_with_logits";
	struct ag_tensor *in[2] = { logits, targets }, *out;
	struct bce_node *bn = NULL;
	struct bce_in b;
	struct ag__shape_str s1, s2;

	if (!logits)
		return ag__null_arg(fn, "logits");
	if (!targets)
		return ag__null_arg(fn, "targets");
	if (!o)
		o = &default_opts;
	if (opts_check(fn, o, true, true, false, false) ||
	    ag__check_same_dtype(fn, logits, targets))
		return NULL;
	if (logits->ndim != targets->ndim ||
	    !ag__shape_eq(logits->ndim, logits->shape, targets->shape)) {
		ag__err(AG_ESHAPE,
			"%s: target size %s must be the same as input size %s",
			fn, ag__shape_of(&s1, targets),
			ag__shape_of(&s2, logits));
		return NULL;
	}
	if (bce_check_bcast(fn, "weight", o->weight, logits) ||
	    bce_check_bcast(fn, "pos_weight", o->pos_weight, logits) ||
	    bce_in_get(&b, logits, targets, o->weight, o->pos_weight))
		return NULL;
	out = bce_fwd(&b, o->reduction, logits);
	bce_in_put(&b);
	if (!out || !ag__should_record(in, 2))
		return ag__scope_add(out);
	bn = (struct bce_node *)ag__node_alloc(&bce_ops, sizeof(*bn), 0, 1, 2,
					       NULL, 0);
	if (!bn)
		goto fail;
	bn->node.saved = bn->saved;
	bn->node.num_saved = 4;
	bn->reduction = o->reduction;
	bn->scale = o->reduction == AG_REDUCTION_MEAN ?
			    1.0 / (double)logits->numel :
			    1.0;
	if (ag__save(&bn->node, BCE_X, logits, false, 0) ||
	    ag__save(&bn->node, BCE_T, targets, false, 0) ||
	    ag__save(&bn->node, BCE_W, o->weight, false, 0) ||
	    ag__save(&bn->node, BCE_PW, o->pos_weight, false, 0))
		goto fail;
	return ag__finish(out, &bn->node, in, 2, fn);
fail:
	if (bn)
		ag__node_put(&bn->node);
	ag_tensor_put(out);
	return NULL;
}

struct ag_tensor *ag_bce_with_logits(struct ag_tensor *logits,
				     struct ag_tensor *targets)
{
	return ag_bce_with_logits_ex(logits, targets, NULL);
}
