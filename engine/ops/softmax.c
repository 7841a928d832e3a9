// SPDX-License-Identifier: MIT
/*
 * Ops over the lanes along one dim: softmax, log_softmax and logsumexp.
 * A lane is every element of a tensor that differs only in `dim`; simd/'s
 * span kernels take one lane at a time, with any stride.
 */
#include <math.h>

#include <ag/mode.h>

#include "ops.h"

enum lane_op { LANE_SOFTMAX, LANE_LOG_SOFTMAX, LANE_LOGSUMEXP };

struct lane_node {
	struct ag_node node;
	enum lane_op op;
	int dim; /* wrapped; 0 for a 0-d input */
	bool keepdim; /* logsumexp */
	struct ag_saved saved[2]; /* result; logsumexp: self too */
};

static const char *const saved_result[] = { "result", "self" };

struct fwd_ctx {
	enum lane_op op;
	struct ag_tensor *x, *y;
	int dim;
};

static void fwd_lane(void *arg, const int64_t *off)
{
	struct fwd_ctx *c = arg;
	int64_t n = ag__lane_len(c->x, c->dim), ix = ag__lane_inc(c->x, c->dim);
	int64_t iy = ag__lane_inc(c->y, c->dim);
	bool f32 = c->x->dtype == AG_F32;
	float *xf = (float *)c->x->storage->data + off[0];
	double *xd = (double *)c->x->storage->data + off[0];
	float *yf = (float *)c->y->storage->data + off[1];
	double *yd = (double *)c->y->storage->data + off[1];

	if (!n)
		return;
	if (c->op == LANE_SOFTMAX) {
		if (f32)
			ag_k_softmax_f32(n, xf, ix, yf, iy);
		else
			ag_k_softmax_f64(n, xd, ix, yd, iy);
	} else {
		if (f32)
			ag_k_log_softmax_f32(n, xf, ix, yf, iy);
		else
			ag_k_log_softmax_f64(n, xd, ix, yd, iy);
	}
}

/* logsumexp: y has x's shape with dim kept as 1 (keepdim form). */
static void lse_lane(void *arg, const int64_t *off)
{
	struct fwd_ctx *c = arg;
	int64_t n = ag__lane_len(c->x, c->dim), ix = ag__lane_inc(c->x, c->dim);
	double v;

	if (c->x->dtype == AG_F32) {
		v = n ? ag_k_logsumexp_f32(
				n, (float *)c->x->storage->data + off[0], ix) :
			-INFINITY;
		((float *)c->y->storage->data)[off[1]] = (float)v;
	} else {
		v = n ? ag_k_logsumexp_f64(
				n, (double *)c->x->storage->data + off[0], ix) :
			-INFINITY;
		((double *)c->y->storage->data)[off[1]] = v;
	}
}

struct bwd_ctx {
	bool log;
	struct ag_tensor *g, *y, *gx;
	int dim;
};

static void bwd_lane(void *arg, const int64_t *off)
{
	struct bwd_ctx *c = arg;
	int64_t n = ag__lane_len(c->g, c->dim);
	int64_t ig = ag__lane_inc(c->g, c->dim),
		iy = ag__lane_inc(c->y, c->dim);
	int64_t io = ag__lane_inc(c->gx, c->dim);

	if (!n)
		return;
	if (c->g->dtype == AG_F32) {
		const float *g = (float *)c->g->storage->data + off[0];
		const float *y = (float *)c->y->storage->data + off[1];
		float *o = (float *)c->gx->storage->data + off[2];

		if (c->log)
			ag_k_log_softmax_bwd_f32(n, g, ig, y, iy, o, io);
		else
			ag_k_softmax_bwd_f32(n, g, ig, y, iy, o, io);
	} else {
		const double *g = (double *)c->g->storage->data + off[0];
		const double *y = (double *)c->y->storage->data + off[1];
		double *o = (double *)c->gx->storage->data + off[2];

		if (c->log)
			ag_k_log_softmax_bwd_f64(n, g, ig, y, iy, o, io);
		else
			ag_k_softmax_bwd_f64(n, g, ig, y, iy, o, io);
	}
}

/*
 * softmax: gx = y (g - sum(g y)); log_softmax: gx = g - exp(y) sum(g),
 * sums along dim.  As ops under create_graph, else the fused kernels.
 */
static struct ag_tensor *softmax_grad(struct lane_node *l, struct ag_tensor *g,
				      struct ag_tensor *y)
{
	struct ag_tensor *t[3] = { NULL }, *r = NULL;
	struct bwd_ctx c = { l->op == LANE_LOG_SOFTMAX, g, y, NULL, l->dim };
	struct ag_tensor *ts[3];

	if (ag__mode.grad) {
		if (l->op == LANE_SOFTMAX) {
			t[0] = ag_mul(g, y);
			t[1] = t[0] ? ag_sum_dim(t[0], l->dim, true) : NULL;
			t[2] = t[1] ? ag_sub(g, t[1]) : NULL;
			r = t[2] ? ag_mul(y, t[2]) : NULL;
		} else {
			t[0] = ag_sum_dim(g, l->dim, true);
			t[1] = t[0] ? ag_exp(y) : NULL;
			t[2] = t[1] ? ag_mul(t[1], t[0]) : NULL;
			r = t[2] ? ag_sub(g, t[2]) : NULL;
		}
		for (int i = 0; i < 3; i++)
			ag_tensor_put(t[i]);
		return r;
	}
	c.gx = ag__tensor_like(g);
	if (!c.gx)
		return NULL;
	ts[0] = g;
	ts[1] = y;
	ts[2] = c.gx;
	ag__for_lanes(g->ndim, g->shape, l->dim, 3, ts, bwd_lane, &c);
	return c.gx;
}

/* d logsumexp(x) / dx = g exp(x - out), g and out with dim kept. */
static struct ag_tensor *logsumexp_grad(struct lane_node *l,
					struct ag_tensor *g,
					struct ag_tensor *out,
					struct ag_tensor *x)
{
	struct ag_tensor *t[5] = { NULL }, *r = NULL;
	bool squeeze = !l->keepdim && x->ndim > 0;

	t[0] = squeeze ? ag_unsqueeze(g, l->dim) : ag_tensor_get(g);
	t[1] = squeeze ? ag_unsqueeze(out, l->dim) : ag_tensor_get(out);
	t[2] = t[0] && t[1] ? ag_sub(x, t[1]) : NULL;
	t[3] = t[2] ? ag_exp(t[2]) : NULL;
	r = t[3] ? ag_mul(t[3], t[0]) : NULL;
	for (int i = 0; i < 5; i++)
		ag_tensor_put(t[i]);
	return r;
}

static int lane_apply(struct ag_node *n, struct ag_tensor **grads,
		      struct ag_tensor **out)
{
	struct lane_node *l = ag_container_of(n, struct lane_node, node);
	struct ag_tensor *y, *x = NULL;

	if (!grads[0] || !n->next[0].node)
		return 0;
	y = ag__unpack(n, 0);
	if (!y)
		return -ag_errcode();
	if (l->op == LANE_LOGSUMEXP) {
		x = ag__unpack(n, 1);
		out[0] = x ? logsumexp_grad(l, grads[0], y, x) : NULL;
	} else {
		out[0] = softmax_grad(l, grads[0], y);
	}
	ag_tensor_put(x);
	ag_tensor_put(y);
	return out[0] ? 0 : -ag_errcode();
}

static const struct ag_node_ops softmax_ops = {
	.name = "SoftmaxBackward",
	.apply = lane_apply,
	.saved_names = saved_result,
};

static const struct ag_node_ops log_softmax_ops = {
	.name = "LogSoftmaxBackward",
	.apply = lane_apply,
	.saved_names = saved_result,
};

static const struct ag_node_ops logsumexp_ops = {
	.name = "LogsumexpBackward",
	.apply = lane_apply,
	.saved_names = saved_result,
};

/* The plain result: x's shape, or logsumexp's reduced one. */
static struct ag_tensor *lane_fwd(const char *fn, enum lane_op op,
				  struct ag_tensor *x, int dim, bool keepdim)
{
	struct fwd_ctx c = { op, x, NULL, dim };
	struct ag_tensor *ts[2];

	if (op != LANE_LOGSUMEXP) {
		/* x may be an expand whose dense size overflows */
		c.y = ag__tensor_new(fn, x->dtype, x->ndim, x->shape);
		if (!c.y)
			return NULL;
		ts[0] = x;
		ts[1] = c.y;
		ag__for_lanes(x->ndim, x->shape, dim, 2, ts, fwd_lane, &c);
		return c.y;
	}
	c.y = ag__lanes_out(fn, x, dim);
	if (!c.y)
		return NULL;
	ts[0] = x;
	ts[1] = c.y; /* same walk: its lane dim has size 1 */
	ag__for_lanes(x->ndim, x->shape, dim, 2, ts, lse_lane, &c);
	return ag__lanes_result(c.y, dim, keepdim);
}

static struct ag_tensor *lane(const char *fn, const struct ag_node_ops *ops,
			      enum lane_op op, struct ag_tensor *x, int dim,
			      bool keepdim)
{
	struct lane_node *l = NULL;
	struct ag_tensor *out;

	if (!x)
		return ag__null_arg(fn, "x");
	if (ag__check_float(fn, x) || ag__wrap_dim(fn, dim, x->ndim, &dim))
		return NULL;
	if (!x->ndim)
		dim = 0;
	out = lane_fwd(fn, op, x, dim, keepdim);
	if (!out || !ag__should_record(&x, 1))
		return ag__scope_add(out);
	l = (struct lane_node *)ag__node_alloc(ops, sizeof(*l), 0, 1, 1, NULL,
					       0);
	if (!l)
		goto fail;
	l->op = op;
	l->dim = dim;
	l->keepdim = keepdim;
	l->node.saved = l->saved;
	l->node.num_saved = op == LANE_LOGSUMEXP ? 2 : 1;
	if (ag__save(&l->node, 0, out, true, 0) ||
	    (op == LANE_LOGSUMEXP && ag__save(&l->node, 1, x, false, 0)))
		goto fail;
	return ag__finish(out, &l->node, &x, 1, fn);
fail:
	if (l)
		ag__node_put(&l->node);
	ag_tensor_put(out);
	return NULL;
}

struct ag_tensor *ag_softmax(struct ag_tensor *a, int dim)
{
	return lane("ag_softmax", &softmax_ops, LANE_SOFTMAX, a, dim, true);
}

struct ag_tensor *ag_log_softmax(struct ag_tensor *a, int dim)
{
	return lane("ag_log_softmax", &log_softmax_ops, LANE_LOG_SOFTMAX, a,
		    dim, true);
}

struct ag_tensor *ag_logsumexp(struct ag_tensor *a, int dim, bool keepdim)
{
	return lane("ag_logsumexp", &logsumexp_ops, LANE_LOGSUMEXP, a, dim,
		    keepdim);
}
