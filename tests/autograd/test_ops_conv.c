// SPDX-License-Identifier: MIT
/*
 * ag_conv2d and the 2-D pools: values and first and second derivatives
 * against PyTorch 1.13 (torch_refs_conv.h, from gen_refs_conv.py) in f64 and
 * f32, for dense, permuted and sliced inputs; ag_gradcheck and
 * ag_gradgradcheck in f64; the same bits with 1 and 2 threads; errors.
 */
#include <ag/pool.h>

#include "common.h"
#include "torch_refs_conv.h"

#define SHAPE(...) ((const int64_t[]){ __VA_ARGS__ })
#define LEN(a) ((int64_t)(sizeof(a) / sizeof((a)[0])))

static struct ag_generator *gen;

static void setup(void)
{
	gen = ag_generator_new(4242);
}

static void teardown(void)
{
	ag_generator_free(gen);
	AG_ASSERT_NO_LEAKS();
}

TestSuite(conv, .init = setup, .fini = teardown);

/* ---- building inputs ---- */

enum layout {
	DENSE,
	PERMUTED, /* channels last in memory, viewed as channels first */
	SLICED, /* every other element of a wider last dim */
};

static void put_elem(struct ag_tensor *t, int64_t i, double v)
{
	int64_t off = ag__elem_offset(t, i);

	if (ag_tensor_dtype(t) == AG_F32)
		((float *)t->storage->data)[off] = (float)v;
	else
		((double *)t->storage->data)[off] = v;
}

/*
 * A leaf of dtype dt holding v (row-major for shape) in the given layout;
 * requires grad when grad.
 */
static struct ag_tensor *make(enum ag_dtype dt, int ndim, const int64_t *shape,
			      const double *v, enum layout lay, bool grad)
{
	int64_t bshape[4];
	struct ag_tensor *base, *view, *leaf;

	for (int d = 0; d < ndim; d++)
		bshape[d] = shape[d];
	if (lay == DENSE || ndim < 3) {
		base = ag_zeros(dt, ndim, shape);
		view = ag_tensor_get(base);
	} else if (lay == PERMUTED) {
		/* base [..., H, W, C] viewed as [..., C, H, W] */
		int perm[4];
		int c = ndim - 3;

		for (int d = 0; d < c; d++)
			perm[d] = d;
		bshape[c] = shape[c + 1];
		bshape[c + 1] = shape[c + 2];
		bshape[c + 2] = shape[c];
		perm[c] = c + 2;
		perm[c + 1] = c;
		perm[c + 2] = c + 1;
		base = ag_zeros(dt, ndim, bshape);
		view = ag_permute(base, perm);
	} else {
		bshape[ndim - 1] = 2 * shape[ndim - 1];
		base = ag_zeros(dt, ndim, bshape);
		view = ag_slice(base, ndim - 1, 1, bshape[ndim - 1], 2);
	}
	cr_assert(view, "%s", ag_errmsg());
	for (int64_t i = 0; i < ag_tensor_numel(view); i++)
		put_elem(view, i, v[i]);
	leaf = ag_detach(view);
	cr_assert(leaf);
	if (grad)
		cr_assert_eq(ag_tensor_set_requires_grad(leaf, true), 0);
	ag_tensor_put(view);
	ag_tensor_put(base);
	return leaf;
}

static void expect_close(const char *what, struct ag_tensor *t,
			 const double *ref, int64_t n, double tol)
{
	cr_assert(t, "%s: NULL (%s)", what, ag_errmsg());
	cr_assert_eq(ag_tensor_numel(t), n, "%s: %ld elements, want %ld", what,
		     (long)ag_tensor_numel(t), (long)n);
	for (int64_t i = 0; i < n; i++) {
		double a = ag__get(t, i), b = ref[i];

		if (isnan(b))
			cr_assert(isnan(a), "%s[%ld] = %g, want NaN", what,
				  (long)i, a);
		else
			cr_assert(fabs(a - b) <= tol * (1 + fabs(b)),
				  "%s[%ld] = %.17g, want %.17g", what, (long)i,
				  a, b);
	}
}

/* t's .grad (a new reference, put here) against ref */
static void expect_grad(const char *what, struct ag_tensor *t,
			const double *ref, int64_t n, double tol)
{
	struct ag_tensor *g = ag_tensor_grad(t);

	expect_close(what, g, ref, n, tol);
	ag_tensor_put(g);
}

static double tol_of(enum ag_dtype dt)
{
	return dt == AG_F32 ? 2e-5 : 1e-12;
}

/* sum(y * r) for r of y's shape */
static struct ag_tensor *weighted_sum(struct ag_tensor *y, const double *r)
{
	struct ag_tensor *rt = make(ag_tensor_dtype(y), ag_tensor_ndim(y),
				    ag_tensor_shape(y), r, DENSE, false);
	struct ag_tensor *p = ag_mul(y, rt), *s = ag_sum(p);

	ag_tensor_put(rt);
	ag_tensor_put(p);
	cr_assert(s, "%s", ag_errmsg());
	return s;
}

/* ---- convolution against torch ---- */

struct conv_case {
	const char *name;
	int xnd;
	const int64_t *xs, *ws;
	struct ag_conv2d_opts o;
	const double *x, *w, *b, *r, *y, *gx, *gw, *gb, *u, *v, *ggx, *ggw;
	int64_t ny, nx, nw, nb;
};

#define CONV_REFS(P, bias)                                              \
	.xs = P##_XS, .xnd = LEN(P##_XS), .ws = P##_WS, .x = P##_X,     \
	.w = P##_W, .r = P##_R, .y = P##_Y, .gx = P##_GX, .gw = P##_GW, \
	.u = P##_U, .v = P##_V, .ggx = P##_GGX, .ggw = P##_GGW,         \
	.ny = LEN(P##_Y), .nx = LEN(P##_X), .nw = LEN(P##_W), bias

static const struct conv_case conv_cases[] = {
	{ "A",
	  .o = { .stride = { 2, 1 }, .padding = { 1, 0 }, .dilation = { 1, 2 } },
	  CONV_REFS(CONV_A, .b = CONV_A_B), .gb = CONV_A_GB,
	  .nb = LEN(CONV_A_GB) },
	{ "groups", .o = { .padding = { 1, 1 }, .groups = 2 },
	  CONV_REFS(CONV_G, .b = NULL) },
	{ "pointwise", .o = { .groups = 0 }, CONV_REFS(CONV_P, .b = CONV_P_B),
	  .gb = CONV_P_GB, .nb = LEN(CONV_P_GB) },
	{ "unbatched", .o = { .stride = { 2, 2 }, .padding = { 1, 1 } },
	  CONV_REFS(CONV_U, .b = CONV_U_B), .gb = CONV_U_GB,
	  .nb = LEN(CONV_U_GB) },
	{ "depthwise",
	  .o = { .stride = { 1, 2 },
		 .padding = { 2, 2 },
		 .dilation = { 2, 2 },
		 .groups = 3 },
	  CONV_REFS(CONV_D, .b = CONV_D_B), .gb = CONV_D_GB,
	  .nb = LEN(CONV_D_GB) },
};

static void conv_vs_torch(const struct conv_case *c, enum ag_dtype dt,
			  enum layout lay)
{
	double tol = tol_of(dt);
	struct ag_tensor *x = make(dt, c->xnd, c->xs, c->x, lay, true);
	/* a permuted input also gets a permuted weight and a sliced bias */
	struct ag_tensor *w = make(dt, 4, c->ws, c->w, lay, true);
	struct ag_tensor *b =
		c->b ? make(dt, 1, SHAPE(c->ws[0]), c->b, lay, true) : NULL;
	struct ag_tensor *y = ag_conv2d(x, w, b, &c->o), *loss;

	cr_assert(y, "%s: %s", c->name, ag_errmsg());
	cr_assert_eq(ag_tensor_is_contiguous(x), lay == DENSE);
	cr_assert_str_eq(ag_node_name(ag_tensor_grad_fn(y)),
			 "ConvolutionBackward");
	cr_assert_eq(ag_tensor_ndim(y), c->xnd);
	expect_close(c->name, y, c->y, c->ny, tol);
	loss = weighted_sum(y, c->r);
	cr_assert_eq(ag_backward(loss, NULL, NULL), 0, "%s", ag_errmsg());
	expect_grad("x.grad", x, c->gx, c->nx, tol);
	expect_grad("w.grad", w, c->gw, c->nw, tol);
	if (b)
		expect_grad("b.grad", b, c->gb, c->nb, tol);
	ag_tensor_put(loss);
	ag_tensor_put(y);
	ag_tensor_put(x);
	ag_tensor_put(w);
	ag_tensor_put(b);
}

Test(conv, values_and_grads_vs_torch)
{
	for (size_t i = 0; i < sizeof(conv_cases) / sizeof(conv_cases[0]); i++)
		for (int dt = AG_F32; dt <= AG_F64; dt++)
			for (int lay = DENSE; lay <= SLICED; lay++)
				conv_vs_torch(&conv_cases[i], dt, lay);
}

/* d/d(x, w) of sum(gx * u) + sum(gw * v), gx and gw built with create_graph */
static void conv_double_vs_torch(const struct conv_case *c, enum layout lay)
{
	struct ag_tensor *x = make(AG_F64, c->xnd, c->xs, c->x, lay, true);
	struct ag_tensor *w = make(AG_F64, 4, c->ws, c->w, DENSE, true);
	struct ag_tensor *b =
		c->b ? make(AG_F64, 1, SHAPE(c->ws[0]), c->b, DENSE, true) :
		       NULL;
	struct ag_tensor *y = ag_conv2d(x, w, b, &c->o), *loss, *l2[3];
	struct ag_tensor *in[2] = { x, w }, *g[2], *gg[2];
	struct ag_grad_opts cg = { .create_graph = true };

	cr_assert(y, "%s", ag_errmsg());
	loss = weighted_sum(y, c->r);
	cr_assert_eq(ag_grad(&loss, NULL, 1, in, 2, g, &cg), 0, "%s",
		     ag_errmsg());
	expect_close("gx", g[0], c->gx, c->nx, 1e-12);
	cr_assert_str_eq(ag_node_name(ag_tensor_grad_fn(g[0])),
			 "ConvolutionBackwardInputBackward");
	cr_assert_str_eq(ag_node_name(ag_tensor_grad_fn(g[1])),
			 "ConvolutionBackwardWeightBackward");
	l2[0] = weighted_sum(g[0], c->u);
	l2[1] = weighted_sum(g[1], c->v);
	l2[2] = ag_add(l2[0], l2[1]);
	cr_assert_eq(ag_grad(&l2[2], NULL, 1, in, 2, gg, NULL), 0, "%s",
		     ag_errmsg());
	expect_close("ggx", gg[0], c->ggx, c->nx, 1e-12);
	expect_close("ggw", gg[1], c->ggw, c->nw, 1e-12);
	for (int i = 0; i < 3; i++)
		ag_tensor_put(l2[i]);
	for (int i = 0; i < 2; i++) {
		ag_tensor_put(g[i]);
		ag_tensor_put(gg[i]);
	}
	ag_tensor_put(loss);
	ag_tensor_put(y);
	ag_tensor_put(x);
	ag_tensor_put(w);
	ag_tensor_put(b);
}

Test(conv, double_backward_vs_torch)
{
	for (size_t i = 0; i < sizeof(conv_cases) / sizeof(conv_cases[0]);
	     i++) {
		conv_double_vs_torch(&conv_cases[i], DENSE);
		conv_double_vs_torch(&conv_cases[i], SLICED);
	}
}

/* ---- gradcheck ---- */

static struct ag_tensor *rand_leaf(int ndim, const int64_t *shape)
{
	struct ag_tensor *t = ag_rand(gen, AG_F64, ndim, shape);
	double *p = ag_tensor_data(t);

	for (int64_t i = 0; i < ag_tensor_numel(t); i++)
		p[i] = 2 * p[i] - 1;
	cr_assert_eq(ag_tensor_set_requires_grad(t, true), 0);
	return t;
}

static int f_conv(struct ag_tensor *const *in, int nin, struct ag_tensor **out,
		  void *arg)
{
	*out = ag_conv2d(in[0], in[1], nin > 2 ? in[2] : NULL, arg);
	return *out ? 0 : -ag_errcode();
}

static void check_both(ag_fn f, void *arg, struct ag_tensor **in, int nin,
		       const char *what)
{
	cr_assert_eq(ag_gradcheck(f, arg, in, nin, NULL), 0, "%s: %s", what,
		     ag_errmsg());
	cr_assert_eq(ag_gradgradcheck(f, arg, in, nin, NULL), 0, "%s: %s", what,
		     ag_errmsg());
	for (int i = 0; i < nin; i++)
		ag_tensor_put(in[i]);
}

static void gradcheck_conv(int xnd, const int64_t *xs, const int64_t *ws,
			   bool bias, struct ag_conv2d_opts o, const char *what)
{
	struct ag_tensor *in[3] = { rand_leaf(xnd, xs), rand_leaf(4, ws),
				    bias ? rand_leaf(1, ws) : NULL };

	check_both(f_conv, &o, in, bias ? 3 : 2, what);
}

Test(conv, gradcheck_options)
{
	gradcheck_conv(4, SHAPE(2, 2, 4, 5), SHAPE(3, 2, 2, 3), true,
		       (struct ag_conv2d_opts){ .groups = 0 }, "plain");
	gradcheck_conv(4, SHAPE(1, 2, 5, 5), SHAPE(2, 2, 3, 2), true,
		       (struct ag_conv2d_opts){ .stride = { 2, 3 },
						.padding = { 1, 2 } },
		       "stride+padding");
	gradcheck_conv(4, SHAPE(2, 1, 6, 5), SHAPE(2, 1, 2, 2), false,
		       (struct ag_conv2d_opts){ .dilation = { 2, 3 },
						.padding = { 1, 0 } },
		       "dilation");
	gradcheck_conv(4, SHAPE(2, 4, 4, 4), SHAPE(4, 2, 2, 2), true,
		       (struct ag_conv2d_opts){ .groups = 2,
						.stride = { 1, 2 } },
		       "groups");
	gradcheck_conv(4, SHAPE(2, 3, 3, 4), SHAPE(2, 3, 1, 1), true,
		       (struct ag_conv2d_opts){ .groups = 0 }, "pointwise");
	gradcheck_conv(3, SHAPE(2, 4, 3), SHAPE(2, 2, 2, 2), true,
		       (struct ag_conv2d_opts){ .padding = { 1, 1 } },
		       "unbatched");
}

/* a non-contiguous x, and an x that is no leaf */
static int f_conv_t(struct ag_tensor *const *in, int nin,
		    struct ag_tensor **out, void *arg)
{
	struct ag_tensor *xt = ag_transpose(in[0], 2, 3);

	(void)nin;
	*out = ag_conv2d(xt, in[1], NULL, arg);
	ag_tensor_put(xt);
	return *out ? 0 : -ag_errcode();
}

/* every other channel of x: a 1x1 kernel reads the columns in place */
static int f_conv_c(struct ag_tensor *const *in, int nin,
		    struct ag_tensor **out, void *arg)
{
	struct ag_tensor *xs = ag_slice(in[0], -3, 0, INT64_MAX, 2);

	*out = ag_conv2d(xs, in[1], nin > 2 ? in[2] : NULL, arg);
	ag_tensor_put(xs);
	return *out ? 0 : -ag_errcode();
}

Test(conv, gradcheck_strided)
{
	struct ag_conv2d_opts o = { .padding = { 1, 0 }, .stride = { 1, 2 } };
	struct ag_conv2d_opts g2 = { .groups = 2 };
	struct ag_tensor *in[3] = { rand_leaf(4, SHAPE(2, 2, 5, 4)),
				    rand_leaf(4, SHAPE(3, 2, 2, 2)) };

	check_both(f_conv_t, &o, in, 2, "transposed x");
	in[0] = rand_leaf(4, SHAPE(2, 8, 3, 2));
	in[1] = rand_leaf(4, SHAPE(4, 2, 1, 1));
	in[2] = rand_leaf(1, SHAPE(4));
	check_both(f_conv_c, &g2, in, 3, "pointwise, channel-sliced x");
	in[0] = rand_leaf(3, SHAPE(6, 1, 3));
	in[1] = rand_leaf(4, SHAPE(2, 3, 1, 1));
	check_both(f_conv_c, NULL, in, 2, "pointwise, unbatched");
}

/* ---- pools against torch ---- */

enum pool_kind { MAXP, AVGP, ADAP };

struct pool_case {
	const char *name;
	enum pool_kind kind;
	int xnd;
	const int64_t *xs;
	int64_t k[2];
	const int64_t *s, *p;
	const double *x, *r, *y, *gx;
	int64_t nx, ny;
};

#define POOL_REFS(P)                                                          \
	.xs = P##_XS, .xnd = LEN(P##_XS), .x = P##_X, .r = P##_R, .y = P##_Y, \
	.gx = P##_GX, .nx = LEN(P##_X), .ny = LEN(P##_Y)

static const struct pool_case pool_cases[] = {
	{ "max A", MAXP, .k = { 3, 2 }, .s = SHAPE(2, 2), .p = SHAPE(1, 1),
	  POOL_REFS(MAXP_A) },
	{ "max K", MAXP, .k = { 2, 3 }, .p = SHAPE(0, 0), POOL_REFS(MAXP_K) },
	{ "max U", MAXP, .k = { 3, 3 }, .s = SHAPE(1, 2), .p = SHAPE(1, 0),
	  POOL_REFS(MAXP_U) },
	{ "max 2", MAXP, .k = { 2, 2 }, .p = SHAPE(0, 0), POOL_REFS(MAXP_2) },
	{ "max 2 odd", MAXP, .k = { 2, 2 }, .p = SHAPE(0, 0),
	  POOL_REFS(MAXP_2O) },
	{ "avg A", AVGP, .k = { 3, 3 }, .s = SHAPE(2, 1), .p = SHAPE(1, 1),
	  POOL_REFS(AVGP_A) },
	{ "avg U", AVGP, .k = { 2, 2 }, .s = SHAPE(0, 0), .p = SHAPE(1, 0),
	  POOL_REFS(AVGP_U) },
	{ "adaptive A", ADAP, .k = { 3, 4 }, POOL_REFS(ADAP_A) },
	{ "adaptive B", ADAP, .k = { 3, 2 }, POOL_REFS(ADAP_B) },
	{ "adaptive U", ADAP, .k = { 4, 3 }, POOL_REFS(ADAP_U) },
};

static struct ag_tensor *pool(enum pool_kind kind, struct ag_tensor *x,
			      const int64_t *k, const int64_t *s,
			      const int64_t *p)
{
	if (kind == MAXP)
		return ag_max_pool2d(x, k, s, p);
	if (kind == AVGP)
		return ag_avg_pool2d(x, k, s, p);
	return ag_adaptive_avg_pool2d(x, k[0], k[1]);
}

static const char *const pool_node[] = { "MaxPool2DWithIndicesBackward",
					 "AvgPool2DBackward",
					 "AdaptiveAvgPool2DBackward" };

/*
 * The same op under inference mode: nothing recorded, and a max pool
 * makes no indices, so its forward runs without them.
 */
static void
expect_inference(const char *what, struct ag_tensor *x,
		 struct ag_tensor *(*op)(struct ag_tensor *, const void *),
		 const void *arg, const double *want, int64_t n, double tol)
{
	struct ag_mode prev = ag_inference_mode_enter();
	struct ag_tensor *y = op(x, arg);

	ag_mode_exit(prev);
	cr_assert(y, "%s: %s", what, ag_errmsg());
	cr_assert_null(ag_tensor_grad_fn(y), "%s", what);
	expect_close(what, y, want, n, tol);
	ag_tensor_put(y);
}

static struct ag_tensor *pool_case_op(struct ag_tensor *x, const void *arg)
{
	const struct pool_case *c = arg;

	return pool(c->kind, x, c->k, c->s, c->p);
}

static struct ag_tensor *max2_op(struct ag_tensor *x, const void *arg)
{
	(void)arg;
	return ag_max_pool2d(x, SHAPE(2, 2), NULL, NULL);
}

static void pool_vs_torch(const struct pool_case *c, enum ag_dtype dt,
			  enum layout lay)
{
	double tol = tol_of(dt);
	struct ag_tensor *x = make(dt, c->xnd, c->xs, c->x, lay, true);
	struct ag_tensor *y = pool(c->kind, x, c->k, c->s, c->p), *loss;

	cr_assert(y, "%s: %s", c->name, ag_errmsg());
	cr_assert_str_eq(ag_node_name(ag_tensor_grad_fn(y)),
			 pool_node[c->kind]);
	expect_close(c->name, y, c->y, c->ny, tol);
	expect_inference(c->name, x, pool_case_op, c, c->y, c->ny, tol);
	loss = weighted_sum(y, c->r);
	cr_assert_eq(ag_backward(loss, NULL, NULL), 0, "%s", ag_errmsg());
	expect_grad("x.grad", x, c->gx, c->nx, tol);
	ag_tensor_put(loss);
	ag_tensor_put(y);
	ag_tensor_put(x);
}

Test(conv, pools_vs_torch)
{
	for (size_t i = 0; i < sizeof(pool_cases) / sizeof(pool_cases[0]); i++)
		for (int dt = AG_F32; dt <= AG_F64; dt++)
			for (int lay = DENSE; lay <= SLICED; lay++)
				pool_vs_torch(&pool_cases[i], dt, lay);
}

/*
 * NaN is a window's max (its last NaN takes the gradient); ties: the first.
 * s NULL: the 2x2 stride-2 windows, which libag runs apart.
 */
static void max_pool_nan(int64_t w, const int64_t *s, const int64_t *p,
			 const double *x0, const double *y0, size_t ny,
			 const double *gx0, size_t ngx)
{
	for (int dt = AG_F32; dt <= AG_F64; dt++) {
		struct ag_tensor *x =
			make(dt, 4, SHAPE(1, 1, 4, w), x0, DENSE, true);
		struct ag_tensor *y = ag_max_pool2d(x, SHAPE(2, 2), s, p);
		struct ag_tensor *r =
			ag_arange(dt, 1, 1 + (double)ag_tensor_numel(y), 1);
		struct ag_tensor *rr = ag_reshape(r, 4, ag_tensor_shape(y));
		struct ag_tensor *pr = ag_mul(y, rr), *sum = ag_sum(pr);

		expect_close("y", y, y0, ny, 0);
		cr_assert_eq(ag_backward(sum, NULL, NULL), 0, "%s",
			     ag_errmsg());
		expect_grad("x.grad", x, gx0, ngx, 0);
		ag_tensor_put(sum);
		ag_tensor_put(pr);
		ag_tensor_put(rr);
		ag_tensor_put(r);
		ag_tensor_put(y);
		ag_tensor_put(x);
	}
}

Test(conv, max_pool_nan_and_ties)
{
	max_pool_nan(5, SHAPE(1, 2), SHAPE(0, 1), MAXP_NAN_X, MAXP_NAN_Y,
		     LEN(MAXP_NAN_Y), MAXP_NAN_GX, LEN(MAXP_NAN_GX));
	max_pool_nan(8, NULL, NULL, MAXP_NAN2_X, MAXP_NAN2_Y, LEN(MAXP_NAN2_Y),
		     MAXP_NAN2_GX, LEN(MAXP_NAN2_GX));
}

/*
 * The 2x2 stride-2 max pool, which runs vectorized four windows at a time
 * with the last group overlapping, against the definition: widths that
 * leave 3, 0 and 1 window(s) after whole groups, odd sizes, ties and NaNs
 * everywhere, and strided inputs (which the forward reads another way).
 */
static void max_pool2_vs_definition(enum ag_dtype dt, enum layout lay,
				    int64_t h, int64_t w)
{
	int64_t xs[4] = { 2, 3, h, w }, oh = h / 2, ow = w / 2;
	int64_t nx = 2 * 3 * h * w, ny = 2 * 3 * oh * ow;
	double *x0 = calloc((size_t)nx, sizeof(double));
	double *y0 = calloc((size_t)ny, sizeof(double));
	double *r = calloc((size_t)ny, sizeof(double));
	double *gx0 = calloc((size_t)nx, sizeof(double));
	struct ag_tensor *x, *y, *loss;

	cr_assert(x0 && y0 && r && gx0);
	for (int64_t i = 0; i < nx; i++)
		x0[i] = i % 11 == 3 ? NAN : (double)((i * 7919) % 5) - 2;
	for (int64_t p = 0, o = 0; p < 6; p++) {
		for (int64_t oy = 0; oy < oh; oy++) {
			for (int64_t ox = 0; ox < ow; ox++, o++) {
				int64_t at = -1;

				/* torch: the first largest or the last NaN */
				for (int64_t k = 0; k < 4; k++) {
					int64_t i = p * h * w +
						    (2 * oy + k / 2) * w +
						    2 * ox + k % 2;

					if (at < 0 || x0[i] > x0[at] ||
					    isnan(x0[i]))
						at = i;
				}
				y0[o] = x0[at];
				r[o] = (double)(o + 1);
				gx0[at] += r[o];
			}
		}
	}
	x = make(dt, 4, xs, x0, lay, true);
	y = ag_max_pool2d(x, SHAPE(2, 2), NULL, NULL);
	expect_close("y", y, y0, ny, 0);
	expect_inference("y, inference", x, max2_op, NULL, y0, ny, 0);
	loss = weighted_sum(y, r);
	cr_assert_eq(ag_backward(loss, NULL, NULL), 0, "%s", ag_errmsg());
	expect_grad("x.grad", x, gx0, nx, 0);
	ag_tensor_put(loss);
	ag_tensor_put(y);
	ag_tensor_put(x);
	free(gx0);
	free(r);
	free(y0);
	free(x0);
}

Test(conv, max_pool2_vs_definition)
{
	static const int64_t hw[][2] = { { 5, 15 }, { 6, 16 }, { 4, 8 },
					 { 7, 9 },  { 3, 7 },  { 2, 2 } };

	for (size_t i = 0; i < sizeof(hw) / sizeof(hw[0]); i++)
		for (int dt = AG_F32; dt <= AG_F64; dt++)
			for (int lay = DENSE; lay <= SLICED; lay++)
				max_pool2_vs_definition(dt, lay, hw[i][0],
							hw[i][1]);
}

struct pool_args {
	enum pool_kind kind;
	int64_t k[2], s[2], p[2];
	bool transpose;
};

static int f_pool(struct ag_tensor *const *in, int nin, struct ag_tensor **out,
		  void *arg)
{
	struct pool_args *a = arg;
	struct ag_tensor *x = a->transpose ? ag_transpose(in[0], -1, -2) :
					     ag_tensor_get(in[0]);

	(void)nin;
	*out = pool(a->kind, x, a->k, a->s, a->p);
	ag_tensor_put(x);
	return *out ? 0 : -ag_errcode();
}

static void gradcheck_pool(struct pool_args a, int xnd, const int64_t *xs,
			   const char *what)
{
	struct ag_tensor *in[1] = { rand_leaf(xnd, xs) };

	check_both(f_pool, &a, in, 1, what);
}

Test(conv, gradcheck_pools)
{
	gradcheck_pool((struct pool_args){ .kind = MAXP,
					   .k = { 3, 2 },
					   .s = { 2, 1 },
					   .p = { 1, 1 } },
		       4, SHAPE(2, 2, 5, 6), "max");
	gradcheck_pool((struct pool_args){ .kind = MAXP,
					   .k = { 2, 2 },
					   .s = { 0, 0 },
					   .p = { 0, 0 },
					   .transpose = true },
		       3, SHAPE(2, 4, 5), "max transposed");
	gradcheck_pool((struct pool_args){ .kind = AVGP,
					   .k = { 3, 3 },
					   .s = { 2, 2 },
					   .p = { 1, 1 } },
		       4, SHAPE(2, 2, 5, 6), "avg");
	gradcheck_pool((struct pool_args){ .kind = AVGP,
					   .k = { 2, 3 },
					   .s = { 1, 0 },
					   .p = { 0, 1 },
					   .transpose = true },
		       3, SHAPE(2, 5, 4), "avg transposed");
	gradcheck_pool((struct pool_args){ .kind = ADAP, .k = { 3, 2 } }, 4,
		       SHAPE(2, 2, 5, 7), "adaptive");
	gradcheck_pool((struct pool_args){ .kind = ADAP,
					   .k = { 4, 5 },
					   .transpose = true },
		       3, SHAPE(2, 3, 4), "adaptive transposed, upsampling");
}

/* Third order: the gradient of a max pool's double backward is a scatter */
Test(conv, max_pool_third_order)
{
	struct ag_tensor *x = rand_leaf(4, SHAPE(1, 1, 4, 4));
	struct ag_tensor *y = ag_max_pool2d(x, SHAPE(2, 2), NULL, NULL);
	struct ag_tensor *gy = ag_ones(AG_F64, 4, SHAPE(1, 1, 2, 2)), *gx, *ggy;
	struct ag_grad_opts cg = { .create_graph = true };

	cr_assert_eq(ag_tensor_set_requires_grad(gy, true), 0);
	cr_assert_eq(ag_grad(&y, &gy, 1, &x, 1, &gx, &cg), 0, "%s",
		     ag_errmsg());
	cr_assert_str_eq(ag_node_name(ag_tensor_grad_fn(gx)),
			 "MaxPool2DWithIndicesBackwardBackward");
	/* d gx / d gy, weighted by x: x gathered at each window's max */
	cr_assert_eq(ag_grad(&gx, &x, 1, &gy, 1, &ggy, &cg), 0, "%s",
		     ag_errmsg());
	for (int64_t i = 0; i < 4; i++)
		cr_assert_eq(ag__get(ggy, i), ag__get(y, i));
	cr_assert_str_eq(ag_node_name(ag_tensor_grad_fn(ggy)),
			 "MaxPool2DGatherBackward");
	ag_tensor_put(ggy);
	ag_tensor_put(gx);
	ag_tensor_put(gy);
	ag_tensor_put(y);
	ag_tensor_put(x);
}

/* ---- the same bits with 1 and 2 threads ---- */

struct run_out {
	struct ag_tensor *y, *gx, *gw, *gb, *py, *pgx;
};

static struct run_out run_net(struct ag_tensor *x, struct ag_tensor *w,
			      struct ag_tensor *b)
{
	struct ag_conv2d_opts o = { .padding = { 1, 1 } };
	struct run_out r;
	struct ag_tensor *in[3] = { x, w, b }, *g[3], *s, *m, *a;

	r.y = ag_conv2d(x, w, b, &o);
	s = ag_sum(r.y);
	cr_assert_eq(ag_grad(&s, NULL, 1, in, 3, g, NULL), 0, "%s",
		     ag_errmsg());
	r.gx = g[0];
	r.gw = g[1];
	r.gb = g[2];
	m = ag_max_pool2d(x, SHAPE(2, 2), NULL, NULL);
	a = ag_avg_pool2d(m, SHAPE(3, 3), SHAPE(1, 1), SHAPE(1, 1));
	r.py = ag_adaptive_avg_pool2d(a, 3, 5);
	ag_tensor_put(s);
	s = ag_sum(r.py);
	cr_assert_eq(ag_grad(&s, NULL, 1, &x, 1, &r.pgx, NULL), 0, "%s",
		     ag_errmsg());
	ag_tensor_put(s);
	ag_tensor_put(m);
	ag_tensor_put(a);
	return r;
}

static void same_bits(const char *what, struct ag_tensor *a,
		      struct ag_tensor *b)
{
	size_t n =
		(size_t)ag_tensor_numel(a) * ag_dtype_size(ag_tensor_dtype(a));

	cr_assert(a && b);
	cr_assert_eq(ag_tensor_numel(a), ag_tensor_numel(b));
	cr_assert(memcmp(ag_tensor_data(a), ag_tensor_data(b), n) == 0,
		  "%s differs between 1 and 2 threads", what);
}

static void same_for_threads(enum ag_dtype dt, const int64_t *xs,
			     const int64_t *ws)
{
	struct ag_tensor *x = ag_randn(gen, dt, 4, xs);
	struct ag_tensor *w = ag_randn(gen, dt, 4, ws);
	struct ag_tensor *b = ag_randn(gen, dt, 1, ws);
	struct run_out r[2];

	ag_tensor_set_requires_grad(x, true);
	ag_tensor_set_requires_grad(w, true);
	ag_tensor_set_requires_grad(b, true);
	for (int t = 0; t < 2; t++) {
		cr_assert_eq(ag_set_num_threads(t + 1), 0);
		r[t] = run_net(x, w, b);
	}
	same_bits("y", r[0].y, r[1].y);
	same_bits("gx", r[0].gx, r[1].gx);
	same_bits("gw", r[0].gw, r[1].gw);
	same_bits("gb", r[0].gb, r[1].gb);
	same_bits("pool y", r[0].py, r[1].py);
	same_bits("pool gx", r[0].pgx, r[1].pgx);
	for (int t = 0; t < 2; t++) {
		struct ag_tensor **p = &r[t].y;

		for (int i = 0; i < 6; i++)
			ag_tensor_put(p[i]);
	}
	ag_tensor_put(x);
	ag_tensor_put(w);
	ag_tensor_put(b);
}

Test(conv, same_result_for_1_and_2_threads)
{
	for (int dt = AG_F32; dt <= AG_F64; dt++) {
		/* 37 images: blocks of the weight gradient's sum are uneven */
		same_for_threads(dt, SHAPE(37, 8, 12, 12), SHAPE(16, 8, 3, 3));
		/* products large enough for GEMM to split them itself */
		same_for_threads(dt, SHAPE(3, 64, 16, 16), SHAPE(64, 64, 3, 3));
	}
}

/* ---- saved tensors ---- */

Test(conv, modified_input_is_refused_in_backward)
{
	struct ag_tensor *x = ag_randn(gen, AG_F64, 4, SHAPE(1, 1, 3, 3));
	struct ag_tensor *w = ag_randn(gen, AG_F64, 4, SHAPE(1, 1, 2, 2));
	struct ag_tensor *y, *s;

	ag_tensor_set_requires_grad(w, true);
	y = ag_conv2d(x, w, NULL, NULL);
	s = ag_sum(y);
	cr_assert_eq(ag_mul_scalar_(x, 2), 0);
	cr_assert_eq(ag_backward(s, NULL, NULL), -AG_EVERSION);
	AG_ASSERT_ERR(AG_EVERSION, "modified by an inplace operation");
	ag_tensor_put(s);
	ag_tensor_put(y);
	ag_tensor_put(x);
	ag_tensor_put(w);
}

/* ---- errors ---- */

static void conv_err(int code, const char *text, int xnd, const int64_t *xs,
		     const int64_t *ws, int bnd, const int64_t *bs,
		     struct ag_conv2d_opts o)
{
	struct ag_tensor *x = ag_zeros(AG_F32, xnd, xs);
	struct ag_tensor *w = ag_zeros(AG_F32, 4, ws);
	struct ag_tensor *b = bs ? ag_zeros(AG_F32, bnd, bs) : NULL;

	ag_tensor_set_requires_grad(w, true);
	ag_clear_error();
	cr_assert_null(ag_conv2d(x, w, b, &o), "%s", text);
	AG_ASSERT_ERR(code, text);
	ag_tensor_put(x);
	ag_tensor_put(w);
	ag_tensor_put(b);
}

Test(conv, conv_errors)
{
	struct ag_conv2d_opts d = { .groups = 0 };
	struct ag_tensor *x = ag_zeros(AG_F32, 4, SHAPE(1, 1, 3, 3));
	struct ag_tensor *w = ag_zeros(AG_F64, 4, SHAPE(1, 1, 2, 2));

	conv_err(
		AG_ESHAPE,
		"ag_conv2d: expected 3-D (unbatched) or 4-D (batched) input, but got input of size [3, 3]",
		2, SHAPE(3, 3), SHAPE(1, 1, 1, 1), 0, NULL, d);
	conv_err(
		AG_ESHAPE,
		"given groups=1, weight of size [4, 4, 3, 3], expected input[2, 3, 5, 5] to have 4 channels, but got 3 channels",
		4, SHAPE(2, 3, 5, 5), SHAPE(4, 4, 3, 3), 0, NULL, d);
	conv_err(
		AG_ESHAPE,
		"given groups=2, expected weight to be divisible by 2 at dimension 0, but got weight of size [3, 2, 3, 3]",
		4, SHAPE(2, 4, 5, 5), SHAPE(3, 2, 3, 3), 0, NULL,
		(struct ag_conv2d_opts){ .groups = 2 });
	conv_err(
		AG_ESHAPE,
		"expected bias to be 1-dimensional with 4 elements, but got bias of size [3]",
		4, SHAPE(2, 3, 5, 5), SHAPE(4, 3, 3, 3), 1, SHAPE(3), d);
	conv_err(
		AG_ESHAPE,
		"calculated padded input size per channel: (4 x 3). Kernel size: (5 x 3)",
		4, SHAPE(1, 1, 2, 3), SHAPE(1, 1, 3, 3), 0, NULL,
		(struct ag_conv2d_opts){ .padding = { 1, 0 },
					 .dilation = { 2, 1 } });
	conv_err(AG_EINVAL, "ag_conv2d: stride must be positive, got (1, -1)",
		 4, SHAPE(1, 1, 3, 3), SHAPE(1, 1, 1, 1), 0, NULL,
		 (struct ag_conv2d_opts){ .stride = { 1, -1 } });
	conv_err(AG_EINVAL,
		 "ag_conv2d: padding must be non-negative, got (-1, 0)", 4,
		 SHAPE(1, 1, 3, 3), SHAPE(1, 1, 1, 1), 0, NULL,
		 (struct ag_conv2d_opts){ .padding = { -1, 0 } });
	conv_err(AG_EINVAL, "ag_conv2d: dilation must be positive, got (-2, 1)",
		 4, SHAPE(1, 1, 3, 3), SHAPE(1, 1, 1, 1), 0, NULL,
		 (struct ag_conv2d_opts){ .dilation = { -2, 1 } });
	conv_err(AG_EINVAL, "ag_conv2d: groups must be positive, got -3", 4,
		 SHAPE(1, 1, 3, 3), SHAPE(1, 1, 1, 1), 0, NULL,
		 (struct ag_conv2d_opts){ .groups = -3 });
	conv_err(AG_EINVAL, "integer overflow", 4, SHAPE(1, 1, 3, 3),
		 SHAPE(1, 1, 1, 1), 0, NULL,
		 (struct ag_conv2d_opts){ .padding = { INT64_MAX / 2, 0 } });
	conv_err(AG_EINVAL, "is too large", 4, SHAPE(1, 1, 1, 1),
		 SHAPE(1, 1, 1, 1), 0, NULL,
		 (struct ag_conv2d_opts){ .padding = { 1L << 40, 1L << 40 } });

	ag_clear_error();
	cr_assert_null(ag_conv2d(x, w, NULL, NULL));
	AG_ASSERT_ERR(
		AG_EDTYPE,
		"ag_conv2d: expected both operands to have the same dtype, got f32 and f64");
	cr_assert_null(ag_conv2d(NULL, w, NULL, NULL));
	AG_ASSERT_ERR(AG_EINVAL, "ag_conv2d");
	ag_tensor_put(x);
	ag_tensor_put(w);
}

static void pool_err(int code, const char *text, enum pool_kind kind, int xnd,
		     const int64_t *xs, const int64_t *k, const int64_t *s,
		     const int64_t *p)
{
	struct ag_tensor *x = ag_zeros(AG_F64, xnd, xs);

	ag_tensor_set_requires_grad(x, true);
	ag_clear_error();
	cr_assert_null(pool(kind, x, k, s, p), "%s", text);
	AG_ASSERT_ERR(code, text);
	ag_tensor_put(x);
}

Test(conv, pool_errors)
{
	const int64_t *x4 = SHAPE(1, 2, 4, 4);
	struct ag_tensor *xi = ag_zeros(AG_I64, 4, x4);

	pool_err(
		AG_ESHAPE,
		"ag_max_pool2d: expected a 3-D [C, H, W] or 4-D [N, C, H, W] input with non-zero C, H and W, but got input of size [4, 4]",
		MAXP, 2, SHAPE(4, 4), SHAPE(2, 2), NULL, NULL);
	pool_err(AG_ESHAPE, "but got input of size [1, 2, 0, 4]", AVGP, 4,
		 SHAPE(1, 2, 0, 4), SHAPE(2, 2), NULL, NULL);
	pool_err(
		AG_EINVAL,
		"ag_max_pool2d: kernel size must be greater than zero, but got (0, 2)",
		MAXP, 4, x4, SHAPE(0, 2), NULL, NULL);
	pool_err(
		AG_EINVAL,
		"ag_avg_pool2d: stride must be greater than zero, but got (2, -1)",
		AVGP, 4, x4, SHAPE(2, 2), SHAPE(2, -1), NULL);
	pool_err(
		AG_EINVAL,
		"ag_max_pool2d: pad should be non-negative and at most half of kernel size, but got pad=2 and kernel_size=3",
		MAXP, 4, x4, SHAPE(3, 3), NULL, SHAPE(0, 2));
	pool_err(AG_EINVAL, "but got pad=-1 and kernel_size=2", AVGP, 4, x4,
		 SHAPE(2, 2), NULL, SHAPE(-1, 0));
	pool_err(
		AG_ESHAPE,
		"ag_avg_pool2d: given input size (2x4x4), calculated output size (2x0x1); output size is too small",
		AVGP, 4, x4, SHAPE(5, 4), NULL, NULL);
	pool_err(AG_EINVAL, "ag_max_pool2d: kernel is NULL", MAXP, 4, x4, NULL,
		 NULL, NULL);
	pool_err(
		AG_EINVAL,
		"ag_adaptive_avg_pool2d: output size must be non-negative, got (-1, 2)",
		ADAP, 4, x4, SHAPE(-1, 2), NULL, NULL);
	pool_err(AG_EINVAL, "ag_adaptive_avg_pool2d: output size", ADAP, 4, x4,
		 SHAPE(INT64_MAX / 2, 1), NULL, NULL);
	cr_assert_null(ag_max_pool2d(xi, SHAPE(2, 2), NULL, NULL));
	AG_ASSERT_ERR(AG_EDTYPE,
		      "ag_max_pool2d: expected a floating point tensor");
	cr_assert_null(ag_avg_pool2d(NULL, SHAPE(2, 2), NULL, NULL));
	AG_ASSERT_ERR(AG_EINVAL, "ag_avg_pool2d");
	ag_tensor_put(xi);
}

/* Empty batches and zero output sizes give empty results, as torch. */
Test(conv, empty)
{
	struct ag_tensor *x = ag_zeros(AG_F32, 4, SHAPE(0, 2, 4, 4));
	struct ag_tensor *w = ag_ones(AG_F32, 4, SHAPE(3, 2, 3, 3));
	struct ag_tensor *y, *s, *p = ag_ones(AG_F32, 4, SHAPE(1, 2, 4, 4));
	struct ag_tensor *a;

	ag_tensor_set_requires_grad(w, true);
	y = ag_conv2d(x, w, NULL, NULL);
	cr_assert(y, "%s", ag_errmsg());
	cr_assert_eq(ag_tensor_numel(y), 0);
	cr_assert_eq(ag_tensor_shape(y)[1], 3);
	s = ag_sum(y);
	cr_assert_eq(ag_backward(s, NULL, NULL), 0, "%s", ag_errmsg());
	expect_grad("w.grad", w, (const double[54]){ 0 }, 54, 0);
	a = ag_adaptive_avg_pool2d(p, 0, 3);
	cr_assert(a, "%s", ag_errmsg());
	cr_assert_eq(ag_tensor_numel(a), 0);
	ag_tensor_put(a);
	ag_tensor_put(s);
	ag_tensor_put(y);
	ag_tensor_put(x);
	ag_tensor_put(w);
	ag_tensor_put(p);
}
