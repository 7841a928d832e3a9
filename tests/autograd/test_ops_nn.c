// SPDX-License-Identifier: MIT
/*
 * The nn functional ops: linear, dropout, batch norm and the losses.
 * Values and gradients against PyTorch 1.13 (torch_refs_nn.h, written by
 * gen_refs_nn.py) in f32 and f64, with dense, sliced and transposed
 * inputs; gradcheck and gradgradcheck in f64; bad inputs with their
 * messages.
 */
#include <pthread.h>

#include <ag/pool.h>

#include "common.h"
#include "torch_refs_nn.h"

TestSuite(ops_nn);

#define SHAPE(...) ((const int64_t[]){ __VA_ARGS__ })
#define LEN(a) ((int64_t)(sizeof(a) / sizeof((a)[0])))

enum layout { DENSE, SLICED, TRANSPOSED, LAYOUTS };
static const char *const layout_name[] = { "dense", "sliced", "transposed" };
static const enum ag_dtype dtypes[] = { AG_F32, AG_F64 };

/* v (row-major doubles) as a dense tensor of dt */
static struct ag_tensor *from(enum ag_dtype dt, int nd, const int64_t *shape,
			      const double *v)
{
	int64_t n = 1;
	struct ag_tensor *t;

	for (int d = 0; d < nd; d++)
		n *= shape[d];
	if (dt == AG_F64)
		return ag_from_data(dt, nd, shape, v);
	t = ag_zeros(AG_F32, nd, shape);
	for (int64_t i = 0; i < n; i++)
		((float *)ag_tensor_data(t))[i] = (float)v[i];
	return t;
}

/*
 * The values v laid out as asked: sliced is every other element of a
 * buffer twice as wide in the last dim; transposed is the transpose of a
 * dense buffer with the last two dims swapped.  With rg, the buffer is a
 * leaf that requires grad and the result a view of it.
 */
static struct ag_tensor *mk(enum ag_dtype dt, int nd, const int64_t *shape,
			    const double *v, enum layout lay, bool rg)
{
	int64_t bshape[AG_MAX_DIMS], n = 1, last, view;
	struct ag_tensor *base;
	double *buf;

	if (nd < 1 || (lay == TRANSPOSED && nd < 2))
		lay = DENSE;
	for (int d = 0; d < nd; d++) {
		n *= shape[d];
		bshape[d] = shape[d];
	}
	if (lay == DENSE) {
		base = from(dt, nd, shape, v);
		if (rg)
			ag_tensor_set_requires_grad(base, true);
		return base;
	}
	last = shape[nd - 1];
	buf = calloc((size_t)(2 * n + 1), sizeof(double));
	if (lay == SLICED) {
		bshape[nd - 1] = 2 * last;
		for (int64_t i = 0; i < 2 * n; i++)
			buf[i] = 999; /* never read */
		for (int64_t i = 0; i < n; i++)
			buf[(i / last) * 2 * last + 2 * (i % last)] = v[i];
	} else {
		int64_t rows = shape[nd - 2], m = rows * last;

		bshape[nd - 2] = last;
		bshape[nd - 1] = rows;
		for (int64_t i = 0; i < n; i++) {
			int64_t b = i / m, ij = i % m, r = ij / last,
				c = ij % last;

			buf[b * m + c * rows + r] = v[i];
		}
	}
	base = from(dt, nd, bshape, buf);
	free(buf);
	if (rg)
		ag_tensor_set_requires_grad(base, true);
	view = lay == SLICED ? 0 : 1;
	{
		struct ag_tensor *r =
			view ? ag_transpose(base, nd - 2, nd - 1) :
			       ag_slice(base, nd - 1, 0, 2 * last, 2);

		ag_tensor_put(base);
		/* strides of dims of size 1 do not count */
		cr_assert(!ag_tensor_is_contiguous(r) || last == 1 ||
			  (view && shape[nd - 2] == 1));
		return r;
	}
}

static double tol_of(enum ag_dtype dt)
{
	return dt == AG_F32 ? 2e-5 : 1e-10;
}

/* t matches ref elementwise within tol relative (absolute near 0). */
static void expect(struct ag_tensor *t, const double *ref, int64_t n,
		   double tol, const char *what)
{
	cr_assert_not_null(t, "%s: %s", what, ag_errmsg());
	cr_assert_eq(ag_tensor_numel(t), n, "%s: %ld elements, want %ld", what,
		     (long)ag_tensor_numel(t), (long)n);
	for (int64_t i = 0; i < n; i++) {
		double v = ag__get(t, i);

		cr_assert(fabs(v - ref[i]) <= tol * (1 + fabs(ref[i])),
			  "%s[%ld] = %.17g, want %.17g", what, (long)i, v,
			  ref[i]);
	}
}

/*
 * The gradients of sum(y * up) for the inputs in[n] (up NULL: ones), into
 * g[n] (new references).
 */
static void grads(struct ag_tensor *y, const double *up, struct ag_tensor **in,
		  int n, struct ag_tensor **g)
{
	/* inputs may be views used in several graphs: keep their nodes */
	struct ag_grad_opts o = { .retain_graph = true };
	struct ag_tensor *u;
	int64_t numel = ag_tensor_numel(y);
	double *ones = calloc((size_t)numel + 1, sizeof(double));
	int rc;

	for (int64_t i = 0; i < numel; i++)
		ones[i] = up ? up[i] : 1.0;
	u = from(ag_tensor_dtype(y), ag_tensor_ndim(y), ag_tensor_shape(y),
		 ones);
	free(ones);
	rc = ag_grad(&y, &u, 1, in, n, g, &o);
	cr_assert_eq(rc, 0, "ag_grad: %s", ag_errmsg());
	ag_tensor_put(u);
}

static void put_all(struct ag_tensor **t, int n)
{
	for (int i = 0; i < n; i++) {
		ag_tensor_put(t[i]);
		t[i] = NULL;
	}
}

static int ret(struct ag_tensor *t, struct ag_tensor **out)
{
	*out = t;
	return t ? 0 : -ag_errcode();
}

/* gradcheck and gradgradcheck of f over in[n] (f64 leaves), put after. */
static void check2(ag_fn f, void *arg, struct ag_tensor **in, int n,
		   const char *what)
{
	int rc = ag_gradcheck(f, arg, in, n, NULL);

	cr_assert_eq(rc, 0, "%s: gradcheck: %s", what, ag_errmsg());
	rc = ag_gradgradcheck(f, arg, in, n, NULL);
	cr_assert_eq(rc, 0, "%s: gradgradcheck: %s", what, ag_errmsg());
	put_all(in, n);
}

/* ---- linear ---- */

Test(ops_nn, linear_matches_torch)
{
	for (int di = 0; di < 2; di++) {
		enum ag_dtype dt = dtypes[di];
		double tol = tol_of(dt);

		for (int lay = 0; lay < LAYOUTS; lay++) {
			struct ag_tensor *in[3], *g[3], *y;
			char what[96];

			snprintf(what, sizeof(what), "linear %s %s",
				 ag_dtype_name(dt), layout_name[lay]);
			in[0] = mk(dt, 2, SHAPE(3, 4), REF_LX, lay, true);
			in[1] = mk(dt, 2, SHAPE(5, 4), REF_LW, 2 - lay, true);
			in[2] = mk(dt, 1, SHAPE(5), REF_LB, lay, true);
			y = ag_linear(in[0], in[1], in[2]);
			expect(y, REF_LIN_Y, LEN(REF_LIN_Y), tol, what);
			cr_assert_str_eq(ag_node_name(ag_tensor_grad_fn(y)),
					 "LinearBackward");
			grads(y, REF_LR, in, 3, g);
			expect(g[0], REF_LIN_DX, LEN(REF_LIN_DX), tol, what);
			expect(g[1], REF_LIN_DW, LEN(REF_LIN_DW), tol, what);
			expect(g[2], REF_LIN_DB, LEN(REF_LIN_DB), tol, what);
			put_all(g, 3);
			ag_tensor_put(y);
			ag_tensor_put(in[0]);
			/* batched, no bias */
			in[0] = mk(dt, 3, SHAPE(2, 3, 4), REF_LX3, lay, true);
			y = ag_linear(in[0], in[1], NULL);
			expect(y, REF_LIN3_Y, LEN(REF_LIN3_Y), tol, what);
			grads(y, REF_LR3, in, 2, g);
			expect(g[0], REF_LIN3_DX, LEN(REF_LIN3_DX), tol, what);
			expect(g[1], REF_LIN3_DW, LEN(REF_LIN3_DW), tol, what);
			put_all(g, 2);
			ag_tensor_put(y);
			put_all(in, 3);
		}
	}
	AG_ASSERT_NO_LEAKS();
}

/* A 1-D input, a one-element bias, and empty sizes. */
Test(ops_nn, linear_shapes)
{
	struct ag_tensor *x = from(AG_F64, 1, SHAPE(4), REF_LX);
	struct ag_tensor *w = from(AG_F64, 2, SHAPE(5, 4), REF_LW);
	struct ag_tensor *b = from(AG_F64, 1, SHAPE(5), REF_LB);
	struct ag_tensor *b1 = ag_scalar(AG_F64, 0.5), *y, *e, *g[2];
	struct ag_tensor *in[2];

	y = ag_linear(x, w, b);
	cr_assert_eq(ag_tensor_ndim(y), 1);
	expect(y, REF_LIN_Y, 5, 1e-12, "1-D input"); /* row 0 of LIN_Y */
	ag_tensor_put(y);
	y = ag_linear(x, w, b1);
	for (int j = 0; j < 5; j++)
		cr_assert_float_eq(ag__get(y, j),
				   REF_LIN_Y[j] - REF_LB[j] + 0.5, 1e-12);
	ag_tensor_put(y);
	/* [0, 4] rows: [0, 5]; dw of nothing is zeros */
	e = ag_zeros(AG_F64, 2, SHAPE(0, 4));
	ag_tensor_set_requires_grad(w, true);
	y = ag_linear(e, w, b);
	cr_assert_eq(ag_tensor_shape(y)[0], 0);
	cr_assert_eq(ag_tensor_shape(y)[1], 5);
	in[0] = w;
	grads(y, NULL, in, 1, g);
	cr_assert_eq(ag_tensor_numel(g[0]), 20);
	for (int i = 0; i < 20; i++)
		cr_assert_eq(ag__get(g[0], i), 0.0);
	put_all(g, 1);
	ag_tensor_put(y);
	ag_tensor_put(e);
	ag_tensor_put(w);
	/* in = 0: the bias alone */
	e = ag_zeros(AG_F64, 2, SHAPE(3, 0));
	w = ag_zeros(AG_F64, 2, SHAPE(5, 0));
	ag_tensor_set_requires_grad(e, true);
	ag_tensor_set_requires_grad(b, true);
	y = ag_linear(e, w, b);
	for (int i = 0; i < 15; i++)
		cr_assert_eq(ag__get(y, i), REF_LB[i % 5]);
	in[0] = e;
	in[1] = b;
	grads(y, NULL, in, 2, g);
	cr_assert_eq(ag_tensor_numel(g[0]), 0);
	for (int j = 0; j < 5; j++)
		cr_assert_eq(ag__get(g[1], j), 3.0);
	put_all(g, 2);
	ag_tensor_put(y);
	ag_tensor_put(e);
	ag_tensor_put(w);
	ag_tensor_put(x);
	ag_tensor_put(b);
	ag_tensor_put(b1);
	AG_ASSERT_NO_LEAKS();
}

/* sum(linear(x)): the gradient arrives expanded (stride 0), copied once. */
Test(ops_nn, linear_backward_expanded_grad)
{
	for (int di = 0; di < 2; di++) {
		enum ag_dtype dt = dtypes[di];
		struct ag_tensor *x =
			mk(dt, 2, SHAPE(3, 4), REF_LX, DENSE, true);
		struct ag_tensor *w =
			mk(dt, 2, SHAPE(5, 4), REF_LW, DENSE, true);
		struct ag_tensor *b = mk(dt, 1, SHAPE(5), REF_LB, DENSE, true);
		struct ag_tensor *y = ag_linear(x, w, b), *s = ag_sum(y);
		struct ag_tensor *gx, *gw, *gb;

		cr_assert_eq(ag_backward(s, NULL, NULL), 0, "%s", ag_errmsg());
		gx = ag_tensor_grad(x);
		gw = ag_tensor_grad(w);
		gb = ag_tensor_grad(b);
		for (int i = 0; i < 3; i++)
			for (int k = 0; k < 4; k++) {
				double want = 0;

				for (int j = 0; j < 5; j++)
					want += REF_LW[j * 4 + k];
				cr_assert_float_eq(ag__get(gx, i * 4 + k), want,
						   1e-5);
			}
		for (int j = 0; j < 5; j++) {
			cr_assert_eq(ag__get(gb, j), 3.0);
			for (int k = 0; k < 4; k++)
				cr_assert_float_eq(ag__get(gw, j * 4 + k),
						   REF_LX[k] + REF_LX[4 + k] +
							   REF_LX[8 + k],
						   1e-5);
		}
		ag_tensor_put(gx);
		ag_tensor_put(gw);
		ag_tensor_put(gb);
		ag_tensor_put(s);
		ag_tensor_put(y);
		ag_tensor_put(x);
		ag_tensor_put(w);
		ag_tensor_put(b);
	}
	AG_ASSERT_NO_LEAKS();
}

static int f_linear(struct ag_tensor *const *in, int nin,
		    struct ag_tensor **out, void *arg)
{
	(void)arg;
	return ret(ag_linear(in[0], in[1], nin > 2 ? in[2] : NULL), out);
}

Test(ops_nn, linear_gradcheck)
{
	struct ag_tensor *in[3];

	in[0] = mk(AG_F64, 2, SHAPE(3, 4), REF_LX, DENSE, true);
	in[1] = mk(AG_F64, 2, SHAPE(5, 4), REF_LW, TRANSPOSED, true);
	in[2] = mk(AG_F64, 1, SHAPE(5), REF_LB, SLICED, true);
	check2(f_linear, NULL, in, 3, "linear");
	in[0] = mk(AG_F64, 3, SHAPE(2, 3, 4), REF_LX3, TRANSPOSED, true);
	in[1] = mk(AG_F64, 2, SHAPE(5, 4), REF_LW, SLICED, true);
	check2(f_linear, NULL, in, 2, "linear batched, no bias");
	in[0] = mk(AG_F64, 1, SHAPE(4), REF_LX, DENSE, true);
	in[1] = mk(AG_F64, 2, SHAPE(5, 4), REF_LW, DENSE, true);
	in[2] = ag_scalar(AG_F64, 0.25);
	ag_tensor_set_requires_grad(in[2], true);
	check2(f_linear, NULL, in, 3, "linear 1-D, 0-d bias");
	AG_ASSERT_NO_LEAKS();
}

Test(ops_nn, linear_errors)
{
	struct ag_scope *scope = ag_scope_begin();
	struct ag_tensor *x = ag_zeros(AG_F64, 2, SHAPE(3, 4));
	struct ag_tensor *w = ag_zeros(AG_F64, 2, SHAPE(5, 3));
	struct ag_tensor *w2 = ag_zeros(AG_F64, 2, SHAPE(5, 4));
	struct ag_tensor *b = ag_zeros(AG_F64, 1, SHAPE(4));
	struct ag_tensor *f = ag_zeros(AG_F32, 2, SHAPE(5, 4));
	struct ag_tensor *s = ag_scalar(AG_F64, 1);

	cr_assert_null(ag_linear(x, w, NULL));
	AG_ASSERT_ERR(
		AG_ESHAPE,
		"ag_linear: input [3, 4] and weight [5, 3] cannot be multiplied");
	cr_assert_null(ag_linear(x, w2, b));
	AG_ASSERT_ERR(AG_ESHAPE,
		      "ag_linear: bias [4] does not match 5 output features");
	cr_assert_null(ag_linear(x, f, NULL));
	AG_ASSERT_ERR(AG_EDTYPE, "ag_linear: expected both operands");
	cr_assert_null(ag_linear(s, w2, NULL));
	AG_ASSERT_ERR(AG_ESHAPE, "ag_linear: input [] and weight [5, 4]");
	cr_assert_null(ag_linear(NULL, w2, NULL));
	AG_ASSERT_ERR(AG_EINVAL, "ag_linear");
	ag_scope_end(scope);
	AG_ASSERT_NO_LEAKS();
}

/* ---- dropout ---- */

/* The fraction kept is 1 - p within 4 standard deviations; kept values
 * are a / (1 - p), and the gradient is the upstream through the mask. */
Test(ops_nn, dropout_fraction_and_values)
{
	const int64_t n = 1000000;
	const double p = 0.3;
	struct ag_generator *gen = ag_generator_new(7);

	for (int di = 0; di < 2; di++) {
		enum ag_dtype dt = dtypes[di];
		struct ag_tensor *a = ag_full(dt, 1, &n, 2.0), *y;
		double scale = dt == AG_F32 ? (double)(1.0f / (float)(1 - p)) :
					      1 / (1 - p);
		int64_t kept = 0;

		y = ag_dropout(a, p, true, gen);
		cr_assert_not_null(y, "%s", ag_errmsg());
		for (int64_t i = 0; i < n; i++) {
			double v = ag__get(y, i);

			if (v != 0) {
				cr_assert_eq(v, dt == AG_F32 ?
							(double)(2.0f *
								 (float)scale) :
							2.0 * scale);
				kept++;
			}
		}
		cr_assert(fabs((double)kept / (double)n - (1 - p)) <=
				  4 * sqrt(p * (1 - p) / (double)n),
			  "kept %ld of %ld", (long)kept, (long)n);
		ag_tensor_put(y);
		ag_tensor_put(a);
	}
	ag_generator_free(gen);
	AG_ASSERT_NO_LEAKS();
}

static struct ag_tensor *drop_seeded(int threads, uint64_t seed, double p)
{
	const int64_t n = 1000000;
	struct ag_tensor *a = ag_ones(AG_F32, 1, &n), *y;

	cr_assert_eq(ag_set_num_threads(threads), 0);
	ag_manual_seed(seed);
	y = ag_dropout(a, p, true, NULL);
	ag_tensor_put(a);
	cr_assert_not_null(y, "%s", ag_errmsg());
	return y;
}

Test(ops_nn, dropout_seed_reproducible_over_threads)
{
	struct ag_tensor *y1 = drop_seeded(1, 42, 0.5);
	struct ag_tensor *y2 = drop_seeded(2, 42, 0.5);
	struct ag_tensor *y3 = drop_seeded(2, 43, 0.5);
	struct ag_tensor *y4;
	struct ag_generator *g1 = ag_generator_new(5),
			    *g2 = ag_generator_new(5);
	struct ag_tensor *a = ag_ones(AG_F64, 2, SHAPE(30, 40)), *d1, *d2;

	cr_assert(ag_equal(y1, y2), "the mask depends on the thread count");
	cr_assert(!ag_equal(y1, y3), "another seed gives the same mask");
	/* the default generator moves on: a second call differs */
	y4 = ag_dropout(y1, 0.5, true, NULL);
	cr_assert(!ag_equal(y4, y2));
	d1 = ag_dropout(a, 0.5, true, g1);
	d2 = ag_dropout(a, 0.5, true, g2);
	cr_assert(ag_equal(d1, d2));
	ag_tensor_put(d1);
	ag_tensor_put(d2);
	ag_generator_free(g1);
	ag_generator_free(g2);
	ag_tensor_put(a);
	ag_tensor_put(y1);
	ag_tensor_put(y2);
	ag_tensor_put(y3);
	ag_tensor_put(y4);
	ag_set_num_threads(0);
	AG_ASSERT_NO_LEAKS();
}

static void *drop_on_thread(void *arg)
{
	const int64_t n = 1000;
	struct ag_tensor *a = ag_ones(AG_F64, 1, &n);

	*(struct ag_tensor **)arg = ag_dropout(a, 0.5, true, NULL);
	ag_tensor_put(a);
	return NULL;
}

/* Each thread's default generator starts from the ag_manual_seed seed. */
Test(ops_nn, dropout_default_generator_per_thread)
{
	struct ag_tensor *mine = NULL, *theirs = NULL;
	pthread_t th;

	ag_manual_seed(1234);
	drop_on_thread(&mine);
	cr_assert_eq(pthread_create(&th, NULL, drop_on_thread, &theirs), 0);
	pthread_join(th, NULL);
	cr_assert_not_null(mine);
	cr_assert_not_null(theirs);
	cr_assert(ag_equal(mine, theirs));
	ag_tensor_put(mine);
	ag_tensor_put(theirs);
	AG_ASSERT_NO_LEAKS();
}

Test(ops_nn, dropout_identity_and_edges)
{
	struct ag_tensor *a = ag_ones(AG_F64, 2, SHAPE(3, 4)), *y, *g[1];
	struct ag_tensor *e = ag_zeros(AG_F32, 1, SHAPE(0));
	struct ag_tensor *i64 = ag_zeros(AG_I64, 1, SHAPE(3));

	ag_tensor_set_requires_grad(a, true);
	y = ag_dropout(a, 0.5, false, NULL); /* eval */
	cr_assert_eq(y, a);
	ag_tensor_put(y);
	y = ag_dropout(a, 0.0, true, NULL);
	cr_assert_eq(y, a);
	ag_tensor_put(y);
	y = ag_dropout(e, 0.5, true, NULL);
	cr_assert_eq(y, e);
	ag_tensor_put(y);
	/* p = 1: zeros, and a zero gradient */
	y = ag_dropout(a, 1.0, true, NULL);
	for (int i = 0; i < 12; i++)
		cr_assert_eq(ag__get(y, i), 0.0);
	grads(y, NULL, &a, 1, g);
	for (int i = 0; i < 12; i++)
		cr_assert_eq(ag__get(g[0], i), 0.0);
	put_all(g, 1);
	ag_tensor_put(y);
	cr_assert_null(ag_dropout(a, 1.5, true, NULL));
	AG_ASSERT_ERR(
		AG_EINVAL,
		"ag_dropout: dropout probability has to be between 0 and 1, but got 1.5");
	cr_assert_null(ag_dropout(a, -0.1, false, NULL));
	AG_ASSERT_ERR(AG_EINVAL, "between 0 and 1, but got -0.1");
	cr_assert_null(ag_dropout(a, NAN, true, NULL));
	AG_ASSERT_ERR(AG_EINVAL, "between 0 and 1, but got nan");
	cr_assert_null(ag_dropout(i64, 0.5, true, NULL));
	AG_ASSERT_ERR(AG_EDTYPE, "ag_dropout: expected a floating point");
	cr_assert_null(ag_dropout(NULL, 0.5, true, NULL));
	AG_ASSERT_ERR(AG_EINVAL, "ag_dropout");
	ag_tensor_put(a);
	ag_tensor_put(e);
	ag_tensor_put(i64);
	AG_ASSERT_NO_LEAKS();
}

/* The stream of dropout.c's header, written out again: SplitMix64. */
static uint64_t splitmix_at(uint64_t key, int64_t i)
{
	uint64_t z = key + (uint64_t)(i + 1) * 0x9e3779b97f4a7c15ULL;

	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
	z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
	return z ^ (z >> 31);
}

/* a and b are the same value: NaN both, or equal with the same sign */
static bool same(double a, double b)
{
	return (isnan(a) && isnan(b)) || (a == b && !signbit(a) == !signbit(b));
}

/* The product as dt computes it: x times (kept ? scale : 0). */
static double masked(enum ag_dtype dt, double x, bool kept, double scale)
{
	if (dt == AG_F32)
		return (double)((float)x * (kept ? (float)scale : 0.0f));
	return x * (kept ? scale : 0.0);
}

/*
 * Element i is kept exactly when the stream's i-th draw, as a uniform
 * (k >> 11) 2^-53, is below 1 - p; kept values are x / (1 - p), dropped
 * ones x * 0 (-0 for negative x, NaN for inf, as torch's x * mask), in the
 * forward and both backward paths (a gradient of its own, scaled in place,
 * and one still held, copied).  1073 elements: whole words and a tail.
 */
Test(ops_nn, dropout_mask_is_the_documented_stream)
{
	const double ps[] = { 0.2, 0.5, 0.7 };
	const int64_t n = 37 * 29;
	double *v = calloc((size_t)n, sizeof(double));
	double *up = calloc((size_t)n, sizeof(double));

	for (int64_t i = 0; i < n; i++) {
		v[i] = (double)(i % 9) - 4 + 0.25 * (i % 3);
		up[i] = (double)(i % 5) - 2.5;
	}
	v[5] = INFINITY;
	v[17] = -INFINITY;
	v[40] = -0.0;
	for (int k = 0; k < 12; k++) {
		enum ag_dtype dt = dtypes[k % 2];
		enum layout lay = k / 2 % 2 ? TRANSPOSED : DENSE;
		double p = ps[k / 4],
		       scale = dt == AG_F32 ?
				       (double)(1.0f / (float)(1.0 - p)) :
				       1.0 / (1.0 - p);
		struct ag_generator *gen = ag_generator_new(100 + (uint64_t)k);
		struct ag_generator *twin = ag_generator_new(100 + (uint64_t)k);
		uint64_t key = ag_generator_next(twin);
		struct ag_tensor *a = mk(dt, 2, SHAPE(37, 29), v, lay, true);
		struct ag_tensor *y = ag_dropout(a, p, true, gen), *g[1],
				 *g2[1];
		struct ag_tensor *w, *wy, *l;
		struct ag_grad_opts o = { .retain_graph = true };
		int64_t kept_n = 0;

		cr_assert_not_null(y, "%s", ag_errmsg());
		grads(y, up, &a, 1, g); /* up is still held: the copy path */
		w = from(dt, 2, SHAPE(37, 29), up);
		wy = ag_mul(y, w);
		l = ag_sum(wy); /* mul's gradient, its own: scaled in place */
		cr_assert_eq(ag_grad(&l, NULL, 1, &a, 1, g2, &o), 0, "%s",
			     ag_errmsg());
		for (int64_t i = 0; i < n; i++) {
			bool kept =
				(double)(splitmix_at(key, i) >> 11) * 0x1p-53 <
				1.0 - p;
			double want = masked(dt, v[i], kept, scale);
			double gwant = masked(dt, up[i], kept, scale);
			double got = ag__get(y, i);

			kept_n += kept;
			cr_assert(same(got, want),
				  "%s %s p %g: y[%ld] = %g, want %g",
				  dt == AG_F32 ? "f32" : "f64",
				  layout_name[lay], p, (long)i, got, want);
			cr_assert(same(ag__get(g[0], i), gwant),
				  "grad[%ld] = %g, want %g", (long)i,
				  ag__get(g[0], i), gwant);
			cr_assert(same(ag__get(g2[0], i), gwant),
				  "in-place grad[%ld] = %g, want %g", (long)i,
				  ag__get(g2[0], i), gwant);
		}
		cr_assert(kept_n > 0 && kept_n < n);
		put_all(g, 1);
		put_all(g2, 1);
		ag_tensor_put(l);
		ag_tensor_put(wy);
		ag_tensor_put(w);
		ag_tensor_put(y);
		ag_tensor_put(a);
		ag_generator_free(gen);
		ag_generator_free(twin);
	}
	free(v);
	free(up);
	AG_ASSERT_NO_LEAKS();
}

/* The gradient is the upstream where kept, times 1 / (1 - p). */
Test(ops_nn, dropout_backward_strided)
{
	struct ag_generator *gen = ag_generator_new(11);

	for (int di = 0; di < 2; di++) {
		for (int lay = 0; lay < LAYOUTS; lay++) {
			enum ag_dtype dt = dtypes[di];
			struct ag_tensor *a, *y, *g[1];
			double scale = dt == AG_F32 ? (double)(1.0f / 0.75f) :
						      1 / 0.75;

			a = mk(dt, 2, SHAPE(3, 4), REF_MA, lay, true);
			y = ag_dropout(a, 0.25, true, gen);
			cr_assert_str_eq(ag_node_name(ag_tensor_grad_fn(y)),
					 "DropoutBackward");
			grads(y, REF_MR, &a, 1, g);
			for (int i = 0; i < 12; i++) {
				bool kept = ag__get(y, i) != 0;
				double want =
					kept ? (dt == AG_F32 ?
							(double)((float)REF_MR[i] *
								 (float)scale) :
							REF_MR[i] * scale) :
					       0;

				cr_assert_eq(
					ag__get(y, i),
					kept ? (dt == AG_F32 ?
							(double)((float)REF_MA[i] *
								 (float)scale) :
							REF_MA[i] * scale) :
					       0);
				cr_assert_eq(ag__get(g[0], i), want);
			}
			put_all(g, 1);
			ag_tensor_put(y);
			ag_tensor_put(a);
		}
	}
	ag_generator_free(gen);
	AG_ASSERT_NO_LEAKS();
}

/* f must be the same function at every call: a generator with one seed. */
static int f_dropout(struct ag_tensor *const *in, int nin,
		     struct ag_tensor **out, void *arg)
{
	struct ag_generator *g = ag_generator_new(99);
	int rc;

	(void)nin;
	(void)arg;
	rc = ret(ag_dropout(in[0], 0.4, true, g), out);
	ag_generator_free(g);
	return rc;
}

Test(ops_nn, dropout_gradcheck)
{
	struct ag_tensor *in[1];

	in[0] = mk(AG_F64, 2, SHAPE(3, 4), REF_MA, TRANSPOSED, true);
	check2(f_dropout, NULL, in, 1, "dropout");
	AG_ASSERT_NO_LEAKS();
}

/* A second backward through a freed graph fails: the mask is gone. */
Test(ops_nn, dropout_freed_mask)
{
	struct ag_scope *scope = ag_scope_begin();
	struct ag_tensor *a = ag_ones(AG_F64, 1, SHAPE(8)), *y, *s;

	ag_tensor_set_requires_grad(a, true);
	y = ag_dropout(a, 0.5, true, NULL);
	s = ag_sum(y);
	cr_assert_eq(ag_backward(s, NULL, NULL), 0, "%s", ag_errmsg());
	cr_assert_lt(ag_backward(s, NULL, NULL), 0);
	AG_ASSERT_ERR(AG_EFREED, "backward through the graph a second time");
	ag_scope_end(scope);
	AG_ASSERT_NO_LEAKS();
}

/* ---- batch norm ---- */

/* Three training steps, then eval; running stats and gradients. */
Test(ops_nn, batch_norm_matches_torch)
{
	for (int di = 0; di < 2; di++) {
		enum ag_dtype dt = dtypes[di];
		double tol = tol_of(dt) * 10;

		for (int lay = 0; lay < LAYOUTS; lay++) {
			struct ag_tensor *rm = ag_zeros(dt, 1, SHAPE(3));
			struct ag_tensor *rv = ag_ones(dt, 1, SHAPE(3));
			struct ag_tensor *in[3], *g[3], *y = NULL;
			double xs[12];
			uint64_t v0 = ag_tensor_version(rm);
			char what[96];

			snprintf(what, sizeof(what), "batch_norm %s %s",
				 ag_dtype_name(dt), layout_name[lay]);
			in[1] = mk(dt, 1, SHAPE(3), REF_BNW, lay, true);
			in[2] = mk(dt, 1, SHAPE(3), REF_BNB, lay, true);
			for (int k = 0; k < 3; k++) {
				for (int i = 0; i < 12; i++)
					xs[i] = REF_BNX[i] * (1 + k / 2.0);
				in[0] = mk(dt, 2, SHAPE(4, 3), xs, lay, true);
				ag_tensor_put(y);
				y = ag_batch_norm(in[0], rm, rv, in[1], in[2],
						  true, 0.1, 1e-5);
				cr_assert_not_null(y, "%s", ag_errmsg());
				if (k < 2)
					ag_tensor_put(in[0]);
			}
			cr_assert_eq(ag_tensor_version(rm), v0 + 3);
			cr_assert_null(ag_tensor_grad_fn(rm));
			cr_assert(!ag_tensor_requires_grad(rv));
			expect(rm, REF_BN_RM, 3, tol, what);
			expect(rv, REF_BN_RV, 3, tol, what);
			expect(y, REF_BN_Y, 12, tol, what);
			grads(y, REF_BNR, in, 3, g);
			expect(g[0], REF_BN_DX, 12, tol, what);
			expect(g[1], REF_BN_DW, 3, tol, what);
			expect(g[2], REF_BN_DB, 3, tol, what);
			put_all(g, 3);
			ag_tensor_put(y);
			ag_tensor_put(in[0]);
			/* eval: the stored stats, no update */
			in[0] = mk(dt, 2, SHAPE(4, 3), REF_BNX, lay, true);
			y = ag_batch_norm(in[0], rm, rv, in[1], in[2], false,
					  0.1, 1e-5);
			cr_assert_eq(ag_tensor_version(rm), v0 + 3);
			expect(y, REF_BN_EVAL_Y, 12, tol, what);
			for (int i = 0; i < 12; i++) {
				int c = i % 3;
				double f = (REF_BNX[i] - ag__get(rm, c)) /
						   sqrt(ag__get(rv, c) + 1e-5) *
						   REF_BNW[c] +
					   REF_BNB[c];

				cr_assert(fabs(ag__get(y, i) - f) <=
						  tol * (1 + fabs(f)),
					  "eval formula [%d]", i);
			}
			grads(y, REF_BNR, in, 3, g);
			expect(g[0], REF_BN_EVAL_DX, 12, tol, what);
			expect(g[1], REF_BN_EVAL_DW, 3, tol, what);
			expect(g[2], REF_BN_EVAL_DB, 3, tol, what);
			put_all(g, 3);
			ag_tensor_put(y);
			put_all(in, 3);
			ag_tensor_put(rm);
			ag_tensor_put(rv);
		}
	}
	AG_ASSERT_NO_LEAKS();
}

/* [N, C, L] with weight and bias, [N, C, H, W] with and without. */
Test(ops_nn, batch_norm_nd_matches_torch)
{
	for (int di = 0; di < 2; di++) {
		enum ag_dtype dt = dtypes[di];
		double tol = tol_of(dt) * 10;

		for (int lay = 0; lay < LAYOUTS; lay++) {
			struct ag_tensor *rm, *rv, *in[3], *g[3], *y;

			rm = from(dt, 1, SHAPE(3), REF_BN3_RM0);
			rv = from(dt, 1, SHAPE(3), REF_BN3_RV0);
			in[0] = mk(dt, 3, SHAPE(2, 3, 5), REF_BN3_X, lay, true);
			in[1] = mk(dt, 1, SHAPE(3), REF_BNW, lay, true);
			in[2] = mk(dt, 1, SHAPE(3), REF_BNB, DENSE, true);
			y = ag_batch_norm(in[0], rm, rv, in[1], in[2], true,
					  0.3, 1e-3);
			expect(y, REF_BN3_Y, 30, tol, "bn [2, 3, 5]");
			expect(rm, REF_BN3_RM, 3, tol, "bn [2, 3, 5] mean");
			expect(rv, REF_BN3_RV, 3, tol, "bn [2, 3, 5] var");
			grads(y, REF_BN3_R, in, 3, g);
			expect(g[0], REF_BN3_DX, 30, tol, "bn [2, 3, 5] dx");
			expect(g[1], REF_BN3_DW, 3, tol, "bn [2, 3, 5] dw");
			expect(g[2], REF_BN3_DB, 3, tol, "bn [2, 3, 5] db");
			put_all(g, 3);
			ag_tensor_put(y);
			put_all(in, 3);
			ag_tensor_put(rm);
			ag_tensor_put(rv);

			/* runs of 20: the span kernels' path */
			rm = from(dt, 1, SHAPE(3), REF_BN5_RM0);
			rv = from(dt, 1, SHAPE(3), REF_BN5_RV0);
			in[0] = mk(dt, 4, SHAPE(2, 3, 4, 5), REF_BN5_X, lay,
				   true);
			in[1] = mk(dt, 1, SHAPE(3), REF_BNW, DENSE, true);
			in[2] = mk(dt, 1, SHAPE(3), REF_BNB, lay, true);
			y = ag_batch_norm(in[0], rm, rv, in[1], in[2], true,
					  0.3, 1e-3);
			expect(y, REF_BN5_Y, 120, tol, "bn [2, 3, 4, 5]");
			expect(rm, REF_BN5_RM, 3, tol, "bn [2, 3, 4, 5] mean");
			expect(rv, REF_BN5_RV, 3, tol, "bn [2, 3, 4, 5] var");
			grads(y, REF_BN5_R, in, 3, g);
			expect(g[0], REF_BN5_DX, 120, tol,
			       "bn [2, 3, 4, 5] dx");
			expect(g[1], REF_BN5_DW, 3, tol, "bn [2, 3, 4, 5] dw");
			expect(g[2], REF_BN5_DB, 3, tol, "bn [2, 3, 4, 5] db");
			put_all(g, 3);
			ag_tensor_put(y);
			put_all(in, 3);
			ag_tensor_put(rm);
			ag_tensor_put(rv);

			rm = from(dt, 1, SHAPE(3), REF_BN4_RM0);
			rv = from(dt, 1, SHAPE(3), REF_BN4_RV0);
			in[0] = mk(dt, 4, SHAPE(2, 3, 2, 2), REF_BN4_X, lay,
				   true);
			y = ag_batch_norm(in[0], rm, rv, NULL, NULL, true, 0.3,
					  1e-3);
			expect(y, REF_BN4_Y, 24, tol, "bn [2, 3, 2, 2]");
			expect(rm, REF_BN4_RM, 3, tol, "bn 4-D mean");
			expect(rv, REF_BN4_RV, 3, tol, "bn 4-D var");
			grads(y, REF_BN4_R, in, 1, g);
			expect(g[0], REF_BN4_DX, 24, tol, "bn 4-D dx");
			put_all(g, 1);
			ag_tensor_put(y);
			put_all(in, 1);
			ag_tensor_put(rm);
			ag_tensor_put(rv);
		}
	}
	AG_ASSERT_NO_LEAKS();
}

struct bn_arg {
	bool training, affine;
	struct ag_tensor *rm, *rv;
};

static int f_bn(struct ag_tensor *const *in, int nin, struct ag_tensor **out,
		void *arg)
{
	struct bn_arg *a = arg;

	(void)nin;
	return ret(ag_batch_norm(in[0], a->rm, a->rv, a->affine ? in[1] : NULL,
				 a->affine ? in[2] : NULL, a->training, 0.1,
				 1e-5),
		   out);
}

Test(ops_nn, batch_norm_gradcheck)
{
	struct bn_arg a = { true, true, NULL, NULL };
	struct ag_tensor *in[3];

	in[0] = mk(AG_F64, 2, SHAPE(4, 3), REF_BNX, TRANSPOSED, true);
	in[1] = mk(AG_F64, 1, SHAPE(3), REF_BNW, DENSE, true);
	in[2] = mk(AG_F64, 1, SHAPE(3), REF_BNB, SLICED, true);
	check2(f_bn, &a, in, 3, "batch_norm training [4, 3]");
	a.affine = false;
	in[0] = mk(AG_F64, 4, SHAPE(2, 3, 2, 2), REF_BN4_X, SLICED, true);
	check2(f_bn, &a, in, 1, "batch_norm training [2, 3, 2, 2]");
	a.training = false;
	a.affine = true;
	a.rm = from(AG_F64, 1, SHAPE(3), REF_BN3_RM0);
	a.rv = from(AG_F64, 1, SHAPE(3), REF_BN3_RV0);
	in[0] = mk(AG_F64, 3, SHAPE(2, 3, 5), REF_BN3_X, DENSE, true);
	in[1] = mk(AG_F64, 1, SHAPE(3), REF_BNW, DENSE, true);
	in[2] = mk(AG_F64, 1, SHAPE(3), REF_BNB, DENSE, true);
	check2(f_bn, &a, in, 3, "batch_norm eval [2, 3, 5]");
	ag_tensor_put(a.rm);
	ag_tensor_put(a.rv);
	AG_ASSERT_NO_LEAKS();
}

/*
 * Images (runs of 35, channel by channel, in parallel) against the
 * definition in f64: a mean far from 0 (a cancelling formula loses f32's
 * digits), weight, bias and running stats, every gradient.
 */
static void bn_vs_definition(enum ag_dtype dt, enum layout lay)
{
	enum { N = 3, C = 4, S = 35, NX = N * C * S };
	double x0[NX], r[NX], dx0[NX], y0[NX], w0[C], b0[C], rm0[C], rv0[C];
	double rm1[C], rv1[C], dw0[C], db0[C];
	struct ag_tensor *in[3], *g[3], *y, *rm, *rv;
	double tol = dt == AG_F32 ? 2e-4 : 1e-10;

	for (int i = 0; i < NX; i++) {
		x0[i] = 300 + ((i * 37) % 23) / 7.0;
		r[i] = ((i * 11) % 13) / 5.0 - 1;
	}
	for (int c = 0; c < C; c++) {
		double m = 0, v = 0, mr = 0, mrx = 0, is;

		w0[c] = 0.5 + c;
		b0[c] = c - 1.5;
		rm0[c] = c;
		rv0[c] = 1 + c;
		for (int n = 0; n < N; n++)
			for (int e = 0; e < S; e++)
				m += x0[(n * C + c) * S + e] / (N * S);
		for (int n = 0; n < N; n++)
			for (int e = 0; e < S; e++) {
				double t = x0[(n * C + c) * S + e] - m;

				v += t * t / (N * S);
			}
		is = 1 / sqrt(v + 1e-5);
		db0[c] = dw0[c] = 0;
		for (int n = 0; n < N; n++)
			for (int e = 0; e < S; e++) {
				int i = (n * C + c) * S + e;
				double xh = (x0[i] - m) * is;

				y0[i] = xh * w0[c] + b0[c];
				db0[c] += r[i];
				dw0[c] += r[i] * xh;
			}
		mr = db0[c] / (N * S);
		mrx = dw0[c] / (N * S);
		for (int n = 0; n < N; n++)
			for (int e = 0; e < S; e++) {
				int i = (n * C + c) * S + e;
				double xh = (x0[i] - m) * is;

				dx0[i] = w0[c] * is * (r[i] - mr - xh * mrx);
			}
		rm1[c] = 0.9 * rm0[c] + 0.1 * m;
		rv1[c] = 0.9 * rv0[c] + 0.1 * v * (N * S) / (N * S - 1);
	}
	rm = from(dt, 1, SHAPE(C), rm0);
	rv = from(dt, 1, SHAPE(C), rv0);
	in[0] = mk(dt, 3, SHAPE(N, C, S), x0, lay, true);
	in[1] = mk(dt, 1, SHAPE(C), w0, DENSE, true);
	in[2] = mk(dt, 1, SHAPE(C), b0, DENSE, true);
	y = ag_batch_norm(in[0], rm, rv, in[1], in[2], true, 0.1, 1e-5);
	expect(y, y0, NX, tol, "bn y");
	expect(rm, rm1, C, tol, "bn running mean");
	expect(rv, rv1, C, tol, "bn running var");
	grads(y, r, in, 3, g);
	expect(g[0], dx0, NX, tol, "bn dx");
	expect(g[1], dw0, C, tol, "bn dw");
	expect(g[2], db0, C, tol, "bn db");
	put_all(g, 3);
	ag_tensor_put(y);
	put_all(in, 3);
	ag_tensor_put(rm);
	ag_tensor_put(rv);
}

Test(ops_nn, batch_norm_images_vs_definition)
{
	for (int di = 0; di < 2; di++)
		for (int lay = 0; lay < LAYOUTS; lay++)
			bn_vs_definition(dtypes[di], lay);
	AG_ASSERT_NO_LEAKS();
}

/* Channels split over threads: the same bits with 1 and 2 threads. */
Test(ops_nn, batch_norm_same_for_threads)
{
	for (int di = 0; di < 2; di++) {
		enum ag_dtype dt = dtypes[di];
		struct ag_tensor *out[2][6];

		for (int t = 0; t < 2; t++) {
			struct ag_tensor *x, *w, *b, *in[3], *g[3], *y;

			struct ag_generator *gen = ag_generator_new(3);

			x = ag_randn(gen, dt, 4, SHAPE(4, 6, 64, 72));
			w = ag_randn(gen, dt, 1, SHAPE(6));
			b = ag_randn(gen, dt, 1, SHAPE(6));
			ag_generator_free(gen);
			out[t][4] = ag_zeros(dt, 1, SHAPE(6));
			out[t][5] = ag_ones(dt, 1, SHAPE(6));
			cr_assert_eq(ag_set_num_threads(t + 1), 0);
			in[0] = x;
			in[1] = w;
			in[2] = b;
			for (int i = 0; i < 3; i++)
				ag_tensor_set_requires_grad(in[i], true);
			y = ag_batch_norm(x, out[t][4], out[t][5], w, b, true,
					  0.1, 1e-5);
			grads(y, NULL, in, 3, g);
			out[t][0] = y;
			for (int i = 0; i < 3; i++)
				out[t][i + 1] = g[i];
			put_all(in, 3);
		}
		ag_set_num_threads(0);
		for (int i = 0; i < 6; i++) {
			struct ag_tensor *a = out[0][i], *b = out[1][i];
			size_t n =
				(size_t)ag_tensor_numel(a) * ag_dtype_size(dt);

			cr_assert(a && b);
			cr_assert(
				memcmp(ag_tensor_data(a), ag_tensor_data(b),
				       n) == 0,
				"batch_norm output %d differs between 1 and 2 threads",
				i);
			ag_tensor_put(a);
			ag_tensor_put(b);
		}
	}
	AG_ASSERT_NO_LEAKS();
}

Test(ops_nn, batch_norm_errors_and_empty)
{
	struct ag_tensor *x = ag_ones(AG_F64, 2, SHAPE(1, 3));
	struct ag_tensor *x2 = ag_ones(AG_F64, 2, SHAPE(4, 3));
	struct ag_tensor *v3 = ag_ones(AG_F64, 1, SHAPE(3));
	struct ag_tensor *v4 = ag_ones(AG_F64, 1, SHAPE(4));
	struct ag_tensor *f3 = ag_ones(AG_F32, 1, SHAPE(3));
	struct ag_tensor *x1 = ag_ones(AG_F64, 1, SHAPE(3));
	struct ag_tensor *e = ag_zeros(AG_F64, 2, SHAPE(0, 3)), *y;
	uint64_t v0 = ag_tensor_version(v3);

	cr_assert_null(
		ag_batch_norm(x, NULL, NULL, NULL, NULL, true, 0.1, 1e-5));
	AG_ASSERT_ERR(
		AG_EINVAL,
		"ag_batch_norm: Expected more than 1 value per channel when training, got input size [1, 3]");
	/* eval with one value is fine */
	y = ag_batch_norm(x, v3, v3, NULL, NULL, false, 0.1, 1e-5);
	cr_assert_not_null(y, "%s", ag_errmsg());
	ag_tensor_put(y);
	cr_assert_null(
		ag_batch_norm(x2, NULL, NULL, NULL, NULL, false, 0.1, 1e-5));
	AG_ASSERT_ERR(
		AG_EINVAL,
		"ag_batch_norm: running_mean must be defined in evaluation mode");
	cr_assert_null(ag_batch_norm(x2, v4, v3, NULL, NULL, true, 0.1, 1e-5));
	AG_ASSERT_ERR(
		AG_ESHAPE,
		"ag_batch_norm: running_mean should contain 3 elements not 4");
	cr_assert_null(ag_batch_norm(x2, v3, v3, v4, NULL, true, 0.1, 1e-5));
	AG_ASSERT_ERR(AG_ESHAPE,
		      "ag_batch_norm: weight should contain 3 elements not 4");
	cr_assert_null(
		ag_batch_norm(x2, v3, NULL, NULL, NULL, true, 0.1, 1e-5));
	AG_ASSERT_ERR(AG_EINVAL,
		      "running_mean and running_var must be given together");
	cr_assert_null(
		ag_batch_norm(x2, NULL, NULL, NULL, f3, true, 0.1, 1e-5));
	AG_ASSERT_ERR(
		AG_EDTYPE,
		"ag_batch_norm: bias has dtype f32 but the input has f64");
	cr_assert_null(
		ag_batch_norm(x1, NULL, NULL, NULL, NULL, true, 0.1, 1e-5));
	AG_ASSERT_ERR(
		AG_ESHAPE,
		"ag_batch_norm: expected an input of 2 or more dims [N, C, ...], got [3]");
	cr_assert_eq(ag_tensor_version(v3), v0, "a failed call wrote a stat");
	/* an empty batch: an empty result, the stats untouched */
	y = ag_batch_norm(e, v3, v3, NULL, NULL, true, 0.1, 1e-5);
	cr_assert_not_null(y, "%s", ag_errmsg());
	cr_assert_eq(ag_tensor_numel(y), 0);
	cr_assert_eq(ag__get(v3, 0), 1.0);
	ag_tensor_put(y);
	ag_tensor_put(x);
	ag_tensor_put(x2);
	ag_tensor_put(v3);
	ag_tensor_put(v4);
	ag_tensor_put(f3);
	ag_tensor_put(x1);
	ag_tensor_put(e);
	AG_ASSERT_NO_LEAKS();
}

/* Modifying the running stats after an eval forward breaks its backward. */
Test(ops_nn, batch_norm_saved_stats_versioned)
{
	struct ag_scope *scope = ag_scope_begin();
	struct ag_tensor *x = mk(AG_F64, 2, SHAPE(4, 3), REF_BNX, DENSE, true);
	struct ag_tensor *rm = ag_zeros(AG_F64, 1, SHAPE(3));
	struct ag_tensor *rv = ag_ones(AG_F64, 1, SHAPE(3)), *y, *s;

	y = ag_batch_norm(x, rm, rv, NULL, NULL, false, 0.1, 1e-5);
	s = ag_sum(y);
	cr_assert_eq(ag_add_scalar_(rv, 1), 0);
	cr_assert_lt(ag_backward(s, NULL, NULL), 0);
	AG_ASSERT_ERR(AG_EVERSION, "modified by an inplace operation");
	ag_scope_end(scope);
	AG_ASSERT_NO_LEAKS();
}

/* ---- losses ---- */

static struct ag_tensor *i64s(int nd, const int64_t *shape, const int64_t *v)
{
	return ag_from_data(AG_I64, nd, shape, v);
}

Test(ops_nn, mse_matches_torch)
{
	static const struct {
		enum ag_reduction red;
		const double *y, *da, *db, *up;
		int64_t ny;
	} cases[] = {
		{ AG_REDUCTION_MEAN, REF_MSE_MEAN_Y, REF_MSE_MEAN_DA,
		  REF_MSE_MEAN_DB, NULL, 1 },
		{ AG_REDUCTION_SUM, REF_MSE_SUM_Y, REF_MSE_SUM_DA,
		  REF_MSE_SUM_DB, NULL, 1 },
		{ AG_REDUCTION_NONE, REF_MSE_NONE_Y, REF_MSE_NONE_DA,
		  REF_MSE_NONE_DB, REF_MR, 12 },
	};

	for (int di = 0; di < 2; di++) {
		for (int lay = 0; lay < LAYOUTS; lay++) {
			enum ag_dtype dt = dtypes[di];
			double tol = tol_of(dt);
			struct ag_tensor *in[2], *g[2], *y;

			for (int c = 0; c < 3; c++) {
				struct ag_loss_opts o = {
					.reduction = cases[c].red
				};

				in[0] = mk(dt, 2, SHAPE(3, 4), REF_MA, lay,
					   true);
				in[1] = mk(dt, 2, SHAPE(3, 4), REF_MB, DENSE,
					   true);
				y = ag_mse_loss_ex(in[0], in[1], &o);
				expect(y, cases[c].y, cases[c].ny, tol, "mse");
				grads(y, cases[c].up, in, 2, g);
				expect(g[0], cases[c].da, 12, tol, "mse da");
				expect(g[1], cases[c].db, 12, tol, "mse db");
				put_all(g, 2);
				ag_tensor_put(y);
				put_all(in, 2);
			}
			in[0] = mk(dt, 2, SHAPE(3, 4), REF_MA, lay, true);
			in[1] = mk(dt, 1, SHAPE(4), REF_MB4, lay, true);
			y = ag_mse_loss(in[0], in[1]);
			expect(y, REF_MSE_BC_Y, 1, tol, "mse broadcast");
			grads(y, NULL, in, 2, g);
			expect(g[0], REF_MSE_BC_DA, 12, tol, "mse bc da");
			expect(g[1], REF_MSE_BC_DB, 4, tol, "mse bc db");
			put_all(g, 2);
			ag_tensor_put(y);
			put_all(in, 2);
		}
	}
	AG_ASSERT_NO_LEAKS();
}

struct ce_case {
	const char *name;
	bool nll;
	int nd;
	int64_t shape[3];
	const double *x;
	const int64_t *t;
	struct ag_loss_opts o;
	bool weighted;
	const double *up, *y, *dx;
	int64_t ny;
};

static const struct ce_case ce_cases[] = {
	{ "CE_A",
	  false,
	  2,
	  { 4, 5 },
	  REF_CL,
	  REF_CT,
	  { 0 },
	  false,
	  NULL,
	  REF_CE_A_Y,
	  REF_CE_A_DX,
	  1 },
	{ "CE_B",
	  false,
	  2,
	  { 4, 5 },
	  REF_CL,
	  REF_CT,
	  { .has_ignore_index = true,
	    .ignore_index = 2,
	    .label_smoothing = 0.1 },
	  true,
	  NULL,
	  REF_CE_B_Y,
	  REF_CE_B_DX,
	  1 },
	{ "CE_C",
	  false,
	  2,
	  { 4, 5 },
	  REF_CL,
	  REF_CT,
	  { .reduction = AG_REDUCTION_NONE, .label_smoothing = 0.2 },
	  true,
	  REF_CR,
	  REF_CE_C_Y,
	  REF_CE_C_DX,
	  4 },
	{ "CE_D",
	  false,
	  2,
	  { 4, 5 },
	  REF_CL,
	  REF_CT,
	  { .reduction = AG_REDUCTION_SUM,
	    .has_ignore_index = true,
	    .ignore_index = 4 },
	  false,
	  NULL,
	  REF_CE_D_Y,
	  REF_CE_D_DX,
	  1 },
	{ "CE_E",
	  false,
	  3,
	  { 2, 3, 4 },
	  REF_CL3,
	  REF_CT3,
	  { .label_smoothing = 0.3 },
	  false,
	  NULL,
	  REF_CE_E_Y,
	  REF_CE_E_DX,
	  1 },
	{ "CE_F",
	  false,
	  2,
	  { 3, 4 },
	  REF_CLB,
	  REF_CTB,
	  { 0 },
	  false,
	  NULL,
	  REF_CE_F_Y,
	  REF_CE_F_DX,
	  1 },
	{ "NLL_A",
	  true,
	  2,
	  { 4, 5 },
	  REF_NL,
	  REF_CT,
	  { 0 },
	  true,
	  NULL,
	  REF_NLL_A_Y,
	  REF_NLL_A_DX,
	  1 },
	{ "NLL_B",
	  true,
	  2,
	  { 4, 5 },
	  REF_NL,
	  REF_CT,
	  { .reduction = AG_REDUCTION_NONE,
	    .has_ignore_index = true,
	    .ignore_index = 0 },
	  true,
	  REF_CR,
	  REF_NLL_B_Y,
	  REF_NLL_B_DX,
	  4 },
};

static struct ag_tensor *ce_targets(const struct ce_case *c)
{
	return i64s(c->nd - 1, (int64_t[]){ c->shape[0], c->shape[2] }, c->t);
}

Test(ops_nn, cross_entropy_nll_match_torch)
{
	for (size_t k = 0; k < sizeof(ce_cases) / sizeof(ce_cases[0]); k++) {
		const struct ce_case *c = &ce_cases[k];

		for (int di = 0; di < 2; di++) {
			for (int lay = 0; lay < LAYOUTS; lay++) {
				enum ag_dtype dt = dtypes[di];
				struct ag_loss_opts o = c->o;
				struct ag_tensor *x, *t, *y, *g[1];
				int64_t n = c->shape[0] * c->shape[1] *
					    (c->nd == 3 ? c->shape[2] : 1);
				char what[96];

				snprintf(what, sizeof(what), "%s %s %s",
					 c->name, ag_dtype_name(dt),
					 layout_name[lay]);
				x = mk(dt, c->nd, c->shape, c->x, lay, true);
				t = ce_targets(c);
				o.weight = c->weighted ?
						   mk(dt, 1, SHAPE(5), REF_CW,
						      lay, false) :
						   NULL;
				y = c->nll ? ag_nll_loss_ex(x, t, &o) :
					     ag_cross_entropy_ex(x, t, &o);
				expect(y, c->y, c->ny, tol_of(dt), what);
				cr_assert_str_eq(
					ag_node_name(ag_tensor_grad_fn(y)),
					c->nll ? "NllLossBackward" :
						 "CrossEntropyLossBackward");
				/* one node: straight to the leaf (or view) */
				cr_assert_eq(
					ag_node_num_next(ag_tensor_grad_fn(y)),
					1);
				grads(y, c->up, &x, 1, g);
				expect(g[0], c->dx, n, tol_of(dt), what);
				put_all(g, 1);
				ag_tensor_put(y);
				ag_tensor_put(x);
				ag_tensor_put(t);
				ag_tensor_put(o.weight);
			}
		}
	}
	AG_ASSERT_NO_LEAKS();
}

/* Logits near +-1e4: finite, no overflow in f32 either. */
Test(ops_nn, cross_entropy_large_logits_finite)
{
	for (int di = 0; di < 2; di++) {
		struct ag_tensor *x = from(dtypes[di], 2, SHAPE(3, 4), REF_CLB);
		struct ag_tensor *t = i64s(1, SHAPE(3), REF_CTB), *y;

		y = ag_cross_entropy(x, t);
		cr_assert(isfinite(ag__get(y, 0)));
		cr_assert_float_eq(ag__get(y, 0), REF_CE_F_Y[0],
				   1e-6 * REF_CE_F_Y[0]);
		ag_tensor_put(y);
		ag_tensor_put(x);
		ag_tensor_put(t);
	}
	AG_ASSERT_NO_LEAKS();
}

/* Unbatched [C] with a 0-d target, and empty batches. */
Test(ops_nn, cross_entropy_shapes)
{
	struct ag_tensor *x1 = from(AG_F64, 1, SHAPE(5), REF_CL);
	struct ag_tensor *t0 = i64s(0, NULL, REF_CT), *y, *yr;
	struct ag_tensor *x2 = from(AG_F64, 2, SHAPE(1, 5), REF_CL);
	struct ag_tensor *t1 = i64s(1, SHAPE(1), REF_CT);
	struct ag_tensor *e = ag_zeros(AG_F64, 2, SHAPE(0, 5));
	struct ag_tensor *et = ag_zeros(AG_I64, 1, SHAPE(0));
	struct ag_loss_opts none = { .reduction = AG_REDUCTION_NONE };
	struct ag_loss_opts sum = { .reduction = AG_REDUCTION_SUM };

	y = ag_cross_entropy_ex(x1, t0, &none);
	cr_assert_eq(ag_tensor_ndim(y), 0);
	yr = ag_cross_entropy(x2, t1);
	cr_assert_float_eq(ag__get(y, 0), ag__get(yr, 0), 1e-15);
	ag_tensor_put(y);
	ag_tensor_put(yr);
	y = ag_cross_entropy(e, et); /* mean of nothing: NaN, as torch */
	cr_assert(isnan(ag__get(y, 0)));
	ag_tensor_put(y);
	y = ag_cross_entropy_ex(e, et, &sum);
	cr_assert_eq(ag__get(y, 0), 0.0);
	ag_tensor_put(y);
	ag_tensor_put(x1);
	ag_tensor_put(t0);
	ag_tensor_put(x2);
	ag_tensor_put(t1);
	ag_tensor_put(e);
	ag_tensor_put(et);
	AG_ASSERT_NO_LEAKS();
}

struct ce_arg {
	const struct ce_case *c;
	struct ag_tensor *t, *w;
};

static int f_ce(struct ag_tensor *const *in, int nin, struct ag_tensor **out,
		void *arg)
{
	struct ce_arg *a = arg;
	struct ag_loss_opts o = a->c->o;

	(void)nin;
	o.weight = a->w;
	return ret(a->c->nll ? ag_nll_loss_ex(in[0], a->t, &o) :
			       ag_cross_entropy_ex(in[0], a->t, &o),
		   out);
}

Test(ops_nn, cross_entropy_nll_gradcheck)
{
	for (size_t k = 0; k < sizeof(ce_cases) / sizeof(ce_cases[0]); k++) {
		const struct ce_case *c = &ce_cases[k];
		struct ce_arg a = { c, NULL, NULL };
		struct ag_tensor *in[1];

		if (c->x == REF_CLB)
			continue; /* its gradients are 0 or 1/3 to 1e-4000 */
		a.t = ce_targets(c);
		if (c->weighted)
			a.w = from(AG_F64, 1, SHAPE(5), REF_CW);
		in[0] = mk(AG_F64, c->nd, c->shape, c->x, SLICED, true);
		check2(f_ce, &a, in, 1, c->name);
		ag_tensor_put(a.t);
		ag_tensor_put(a.w);
	}
	AG_ASSERT_NO_LEAKS();
}

Test(ops_nn, class_loss_errors)
{
	struct ag_tensor *x = ag_zeros(AG_F64, 2, SHAPE(4, 10));
	struct ag_tensor *t = i64s(1, SHAPE(4), (int64_t[]){ 1, 2, 3, 12 });
	struct ag_tensor *tn = i64s(1, SHAPE(4), (int64_t[]){ 1, -1, 3, 2 });
	struct ag_tensor *ok = i64s(1, SHAPE(4), (int64_t[]){ 1, 2, 3, 4 });
	struct ag_tensor *t3 = i64s(1, SHAPE(3), (int64_t[]){ 1, 2, 3 });
	struct ag_tensor *tf = ag_zeros(AG_F64, 1, SHAPE(4));
	struct ag_tensor *w = ag_ones(AG_F64, 1, SHAPE(9));
	struct ag_loss_opts o = { 0 };

	cr_assert_null(ag_cross_entropy(x, t));
	AG_ASSERT_ERR(
		AG_EINVAL,
		"ag_cross_entropy: target 12 at row 3 is out of range for 10 classes");
	cr_assert_null(ag_nll_loss(x, tn));
	AG_ASSERT_ERR(
		AG_EINVAL,
		"ag_nll_loss: target -1 at row 1 is out of range for 10 classes");
	o.has_ignore_index = true;
	o.ignore_index = -1;
	{
		/* the result is the scope's: ending it frees it */
		struct ag_scope *s = ag_scope_begin();

		cr_assert_not_null(ag_nll_loss_ex(x, tn, &o), "%s",
				   ag_errmsg());
		ag_scope_end(s);
	}
	cr_assert_null(ag_cross_entropy(x, tf));
	AG_ASSERT_ERR(
		AG_EDTYPE,
		"ag_cross_entropy: expected targets of dtype i64, got f64");
	cr_assert_null(ag_cross_entropy(x, t3));
	AG_ASSERT_ERR(
		AG_ESHAPE,
		"ag_cross_entropy: input [4, 10] and targets [3] do not match");
	o = (struct ag_loss_opts){ .weight = w };
	cr_assert_null(ag_cross_entropy_ex(x, ok, &o));
	AG_ASSERT_ERR(
		AG_ESHAPE,
		"ag_cross_entropy: weight [9] should hold one value per class (10)");
	o = (struct ag_loss_opts){ .label_smoothing = 1.5 };
	cr_assert_null(ag_cross_entropy_ex(x, ok, &o));
	AG_ASSERT_ERR(
		AG_EINVAL,
		"ag_cross_entropy: label_smoothing must be between 0.0 and 1.0, got 1.5");
	o = (struct ag_loss_opts){ .label_smoothing = 0.1 };
	cr_assert_null(ag_nll_loss_ex(x, ok, &o));
	AG_ASSERT_ERR(AG_EINVAL, "ag_nll_loss: takes no label_smoothing");
	o = (struct ag_loss_opts){ .pos_weight = w };
	cr_assert_null(ag_cross_entropy_ex(x, ok, &o));
	AG_ASSERT_ERR(AG_EINVAL, "ag_cross_entropy: takes no pos_weight");
	o = (struct ag_loss_opts){ .reduction = (enum ag_reduction)7 };
	cr_assert_null(ag_nll_loss_ex(x, ok, &o));
	AG_ASSERT_ERR(AG_EINVAL, "ag_nll_loss: unknown reduction 7");
	cr_assert_null(ag_cross_entropy(NULL, ok));
	AG_ASSERT_ERR(AG_EINVAL, "ag_cross_entropy");
	ag_tensor_put(x);
	ag_tensor_put(t);
	ag_tensor_put(tn);
	ag_tensor_put(ok);
	ag_tensor_put(t3);
	ag_tensor_put(tf);
	ag_tensor_put(w);
	AG_ASSERT_NO_LEAKS();
}

Test(ops_nn, bce_with_logits_matches_torch)
{
	static const struct {
		const char *name;
		struct ag_loss_opts o;
		bool w, pw;
		const double *up, *y, *dx, *dt;
		int64_t ny;
	} cases[] = {
		{ "BCE_A",
		  { 0 },
		  false,
		  false,
		  NULL,
		  REF_BCE_A_Y,
		  REF_BCE_A_DX,
		  REF_BCE_A_DT,
		  1 },
		{ "BCE_B",
		  { .reduction = AG_REDUCTION_SUM },
		  true,
		  true,
		  NULL,
		  REF_BCE_B_Y,
		  REF_BCE_B_DX,
		  REF_BCE_B_DT,
		  1 },
		{ "BCE_C",
		  { .reduction = AG_REDUCTION_NONE },
		  false,
		  true,
		  REF_BR,
		  REF_BCE_C_Y,
		  REF_BCE_C_DX,
		  REF_BCE_C_DT,
		  12 },
	};

	for (int k = 0; k < 3; k++) {
		for (int di = 0; di < 2; di++) {
			for (int lay = 0; lay < LAYOUTS; lay++) {
				enum ag_dtype dt = dtypes[di];
				struct ag_loss_opts o = cases[k].o;
				struct ag_tensor *in[2], *g[2], *y;
				char what[96];

				snprintf(what, sizeof(what), "%s %s %s",
					 cases[k].name, ag_dtype_name(dt),
					 layout_name[lay]);
				in[0] = mk(dt, 2, SHAPE(3, 4), REF_BX, lay,
					   true);
				in[1] = mk(dt, 2, SHAPE(3, 4), REF_BT, 2 - lay,
					   true);
				o.weight = cases[k].w ? mk(dt, 2, SHAPE(3, 1),
							   REF_BW, lay, false) :
							NULL;
				o.pos_weight = cases[k].pw ?
						       mk(dt, 1, SHAPE(4),
							  REF_BPW, lay, false) :
						       NULL;
				y = ag_bce_with_logits_ex(in[0], in[1], &o);
				expect(y, cases[k].y, cases[k].ny, tol_of(dt),
				       what);
				grads(y, cases[k].up, in, 2, g);
				expect(g[0], cases[k].dx, 12, tol_of(dt), what);
				expect(g[1], cases[k].dt, 12, tol_of(dt), what);
				put_all(g, 2);
				ag_tensor_put(y);
				put_all(in, 2);
				ag_tensor_put(o.weight);
				ag_tensor_put(o.pos_weight);
			}
		}
	}
	AG_ASSERT_NO_LEAKS();
}

struct bce_arg {
	struct ag_loss_opts o;
};

static int f_bce(struct ag_tensor *const *in, int nin, struct ag_tensor **out,
		 void *arg)
{
	struct bce_arg *a = arg;

	(void)nin;
	return ret(ag_bce_with_logits_ex(in[0], in[1], &a->o), out);
}

static int f_mse(struct ag_tensor *const *in, int nin, struct ag_tensor **out,
		 void *arg)
{
	(void)nin;
	return ret(ag_mse_loss_ex(in[0], in[1], arg), out);
}

Test(ops_nn, bce_mse_gradcheck)
{
	struct bce_arg a = { { 0 } };
	struct ag_loss_opts none = { .reduction = AG_REDUCTION_NONE };
	struct ag_tensor *in[2];

	in[0] = mk(AG_F64, 2, SHAPE(3, 4), REF_BX, TRANSPOSED, true);
	in[1] = mk(AG_F64, 2, SHAPE(3, 4), REF_BT, SLICED, true);
	check2(f_bce, &a, in, 2, "bce");
	a.o.reduction = AG_REDUCTION_NONE;
	a.o.weight = from(AG_F64, 2, SHAPE(3, 1), REF_BW);
	a.o.pos_weight = from(AG_F64, 1, SHAPE(4), REF_BPW);
	in[0] = mk(AG_F64, 2, SHAPE(3, 4), REF_BX, DENSE, true);
	in[1] = mk(AG_F64, 2, SHAPE(3, 4), REF_BT, DENSE, true);
	check2(f_bce, &a, in, 2, "bce weight pos_weight");
	ag_tensor_put(a.o.weight);
	ag_tensor_put(a.o.pos_weight);
	in[0] = mk(AG_F64, 2, SHAPE(3, 4), REF_MA, SLICED, true);
	in[1] = mk(AG_F64, 1, SHAPE(4), REF_MB4, DENSE, true);
	check2(f_mse, NULL, in, 2, "mse broadcast");
	in[0] = mk(AG_F64, 2, SHAPE(3, 4), REF_MA, TRANSPOSED, true);
	in[1] = mk(AG_F64, 2, SHAPE(3, 4), REF_MB, DENSE, true);
	check2(f_mse, &none, in, 2, "mse none");
	AG_ASSERT_NO_LEAKS();
}

Test(ops_nn, bce_mse_errors_and_empty)
{
	struct ag_tensor *x = ag_zeros(AG_F64, 2, SHAPE(3, 4));
	struct ag_tensor *t = ag_zeros(AG_F64, 2, SHAPE(4, 3));
	struct ag_tensor *w5 = ag_ones(AG_F64, 1, SHAPE(5));
	struct ag_tensor *f = ag_zeros(AG_F32, 2, SHAPE(3, 4));
	struct ag_tensor *e = ag_zeros(AG_F64, 1, SHAPE(0)), *y;
	struct ag_loss_opts o = { .pos_weight = w5 };

	cr_assert_null(ag_bce_with_logits(x, t));
	AG_ASSERT_ERR(
		AG_ESHAPE,
		"ag_bce_with_logits: target size [4, 3] must be the same as input size [3, 4]");
	cr_assert_null(ag_bce_with_logits(x, f));
	AG_ASSERT_ERR(AG_EDTYPE, "ag_bce_with_logits: expected both operands");
	cr_assert_null(ag_bce_with_logits_ex(x, x, &o));
	AG_ASSERT_ERR(
		AG_ESHAPE,
		"ag_bce_with_logits: shapes [3, 4] and [5] cannot be broadcast");
	o = (struct ag_loss_opts){ .has_ignore_index = true };
	cr_assert_null(ag_bce_with_logits_ex(x, x, &o));
	AG_ASSERT_ERR(AG_EINVAL, "ag_bce_with_logits: takes no ignore_index");
	o = (struct ag_loss_opts){ .weight = w5 };
	cr_assert_null(ag_mse_loss_ex(x, x, &o));
	AG_ASSERT_ERR(AG_EINVAL, "ag_mse_loss: takes no weight");
	cr_assert_null(ag_mse_loss(x, t));
	AG_ASSERT_ERR(AG_ESHAPE,
		      "shapes [3, 4] and [4, 3] cannot be broadcast");
	cr_assert_null(ag_mse_loss(x, NULL));
	AG_ASSERT_ERR(AG_EINVAL, "ag_mse_loss");
	/* means of nothing are NaN, sums 0, as torch */
	y = ag_bce_with_logits(e, e);
	cr_assert(isnan(ag__get(y, 0)));
	ag_tensor_put(y);
	y = ag_mse_loss(e, e);
	cr_assert(isnan(ag__get(y, 0)));
	ag_tensor_put(y);
	o = (struct ag_loss_opts){ .reduction = AG_REDUCTION_SUM };
	y = ag_bce_with_logits_ex(e, e, &o);
	cr_assert_eq(ag__get(y, 0), 0.0);
	ag_tensor_put(y);
	/* 0-d */
	{
		struct ag_tensor *z = ag_scalar(AG_F64, 0);
		struct ag_tensor *one = ag_scalar(AG_F64, 1);

		y = ag_bce_with_logits(z, one);
		cr_assert_float_eq(ag__get(y, 0), log(2.0), 1e-15);
		ag_tensor_put(y);
		ag_tensor_put(z);
		ag_tensor_put(one);
	}
	ag_tensor_put(x);
	ag_tensor_put(t);
	ag_tensor_put(w5);
	ag_tensor_put(f);
	ag_tensor_put(e);
	AG_ASSERT_NO_LEAKS();
}

/* Every op's result belongs to the open scope, and only the result. */
Test(ops_nn, ops_under_a_scope)
{
	struct ag_tensor *x = mk(AG_F64, 2, SHAPE(3, 4), REF_MA, DENSE, true);
	struct ag_tensor *w = from(AG_F64, 2, SHAPE(5, 4), REF_LW);
	struct ag_tensor *t = i64s(1, SHAPE(3), REF_CTB);
	struct ag_tensor *rm = ag_zeros(AG_F64, 1, SHAPE(4));
	struct ag_tensor *rv = ag_ones(AG_F64, 1, SHAPE(4));
	struct ag_scope *s = ag_scope_begin();
	struct ag_tensor *y[7];

	y[0] = ag_linear(x, w, NULL);
	y[1] = ag_dropout(x, 0.5, true, NULL);
	y[2] = ag_batch_norm(x, rm, rv, NULL, NULL, true, 0.1, 1e-5);
	y[3] = ag_mse_loss(x, x);
	y[4] = ag_cross_entropy(x, t);
	y[5] = ag_nll_loss(x, t);
	y[6] = ag_bce_with_logits(x, x);
	for (int i = 0; i < 7; i++)
		cr_assert_not_null(y[i], "op %d: %s", i, ag_errmsg());
	ag_scope_end(s);
	ag_tensor_put(x);
	ag_tensor_put(w);
	ag_tensor_put(t);
	ag_tensor_put(rm);
	ag_tensor_put(rv);
	AG_ASSERT_NO_LEAKS();
}
