// SPDX-License-Identifier: MIT
/*
 * pow, cat, stack, index_select, gather, scatter_add, embedding, where,
 * argmax, to and the comparisons: values and gradients against torch
 * (torch_refs_index.h, from gen_refs_index.py) in f32 and f64 over
 * contiguous, transposed and sliced inputs; gradcheck and gradgradcheck;
 * empty and 0-d inputs; and each bad input with its message.
 */
#include <stdint.h>
#include <stdlib.h>

#include <ag/mode.h>
#include <ag/pool.h>

#include "common.h"
#include "torch_refs_index.h"

#define SHAPE(...) ((const int64_t[]){ __VA_ARGS__ })
#define NDIM(...) ((int)(sizeof(SHAPE(__VA_ARGS__)) / sizeof(int64_t)))

static struct ag_generator *gen;

static void setup(void)
{
	gen = ag_generator_new(77);
}

static void teardown(void)
{
	ag_generator_free(gen);
}

TestSuite(ops_index, .init = setup, .fini = teardown);

enum layout { CONTIG, TRANSPOSED, SLICED, NLAYOUTS };

/*
 * A plain tensor of dtype dt holding the row-major values v, laid out as
 * asked: TRANSPOSED keeps it in its dims 0 and last swapped storage order,
 * SLICED every other element of a twice as long last dim.
 */
static struct ag_tensor *make(enum ag_dtype dt, enum layout l, int ndim,
			      const int64_t *shape, const double *v)
{
	struct ag_tensor *d = v ? ag_from_data(AG_F64, ndim, shape, v) :
				  ag_zeros(AG_F64, ndim, shape);
	struct ag_tensor *t, *r;
	struct ag_mode m = ag_no_grad_enter();

	cr_assert(d);
	t = ag_to(d, dt);
	ag_tensor_put(d);
	if (l == TRANSPOSED && ndim >= 2) {
		struct ag_tensor *a = ag_transpose(t, 0, ndim - 1);
		struct ag_tensor *c = ag_contiguous(a);

		r = ag_transpose(c, 0, ndim - 1);
		ag_tensor_put(a);
		ag_tensor_put(c);
		ag_tensor_put(t);
		t = r;
	} else if (l == SLICED && ndim >= 1 && ag_tensor_numel(t) > 1) {
		int64_t big[AG_MAX_DIMS];
		struct ag_tensor *z, *s;

		memcpy(big, shape, sizeof(*big) * (size_t)ndim);
		big[ndim - 1] *= 2;
		z = ag_zeros(dt, ndim, big);
		s = ag_slice(z, -1, 0, big[ndim - 1], 2);
		cr_assert_eq(ag_copy_(s, t), 0);
		ag_tensor_put(t);
		t = s;
		ag_tensor_put(z);
	}
	r = ag_detach(t); /* a plain view: can be made a leaf */
	ag_tensor_put(t);
	ag_mode_exit(m);
	return r;
}

static struct ag_tensor *leaf(enum ag_dtype dt, enum layout l, int ndim,
			      const int64_t *shape, const double *v)
{
	struct ag_tensor *t = make(dt, l, ndim, shape, v);

	cr_assert_eq(ag_tensor_set_requires_grad(t, true), 0);
	return t;
}

static struct ag_tensor *idx_of(int ndim, const int64_t *shape,
				const int64_t *v)
{
	struct ag_tensor *t = v ? ag_from_data(AG_I64, ndim, shape, v) :
				  ag_zeros(AG_I64, ndim, shape);

	cr_assert(t);
	return t;
}

/* A random f64 leaf in [lo, hi), for the gradient checks. */
static struct ag_tensor *rnd(int ndim, const int64_t *shape, double lo,
			     double hi)
{
	struct ag_tensor *t = ag_rand(gen, AG_F64, ndim, shape);
	double *p = ag_tensor_data(t);

	for (int64_t i = 0; i < ag_tensor_numel(t); i++)
		p[i] = lo + (hi - lo) * p[i];
	cr_assert_eq(ag_tensor_set_requires_grad(t, true), 0);
	return t;
}

/* t's elements (row-major) against want; NaN and inf must match exactly. */
static void expect(struct ag_tensor *t, const double *want, int64_t n,
		   double tol, const char *what)
{
	cr_assert(t, "%s: NULL (%s)", what, ag_errmsg());
	cr_assert_eq(ag_tensor_numel(t), n, "%s: %ld elements, want %ld", what,
		     (long)ag_tensor_numel(t), (long)n);
	for (int64_t i = 0; i < n; i++) {
		double g = ag__get(t, i), w = want[i];

		if (isnan(w) || isinf(w))
			cr_assert(isnan(w) ? isnan(g) : g == w,
				  "%s[%ld]: %g, want %g", what, (long)i, g, w);
		else
			cr_assert(fabs(g - w) <= tol * (1 + fabs(w)),
				  "%s[%ld]: %.17g, want %.17g", what, (long)i,
				  g, w);
	}
}

static void expect_shape(struct ag_tensor *t, int ndim, const int64_t *shape)
{
	struct ag__shape_str a, b;

	cr_assert(t, "NULL: %s", ag_errmsg());
	cr_assert(ag_tensor_ndim(t) == ndim &&
			  (!ndim || !memcmp(ag_tensor_shape(t), shape,
					    sizeof(*shape) * (size_t)ndim)),
		  "shape %s, want %s", ag__shape_of(&a, t),
		  ag__shape_fmt(&b, ndim, shape));
}

static double tol_of(enum ag_dtype dt)
{
	return dt == AG_F32 ? 2e-5 : 1e-12;
}

/*
 * y's values against yref, then the gradients of sum(y * w) with respect
 * to the leaves against gref.  Takes over y.
 */
static void against_torch(struct ag_tensor *y, const double *yref,
			  const double *w, struct ag_tensor *const *leaves,
			  const double *const *gref, int n, const char *what)
{
	enum ag_dtype dt = ag_tensor_dtype(y);
	struct ag_tensor *wt, *p, *loss;

	cr_assert(y, "%s: %s", what, ag_errmsg());
	expect(y, yref, ag_tensor_numel(y), tol_of(dt), what);
	wt = make(dt, CONTIG, ag_tensor_ndim(y), ag_tensor_shape(y), w);
	p = ag_mul(y, wt);
	loss = ag_sum(p);
	cr_assert_eq(ag_backward(loss, NULL, NULL), 0, "%s: %s", what,
		     ag_errmsg());
	for (int i = 0; i < n; i++) {
		struct ag_tensor *g = ag_tensor_grad(leaves[i]);

		cr_assert(g, "%s: no gradient for leaf %d", what, i);
		cr_assert_eq(ag_tensor_dtype(g), dt);
		expect(g, gref[i], ag_tensor_numel(leaves[i]), tol_of(dt),
		       what);
		ag_tensor_put(g);
	}
	ag_tensor_put(loss);
	ag_tensor_put(p);
	ag_tensor_put(wt);
	ag_tensor_put(y);
}

static void put_all(struct ag_tensor **t, int n)
{
	for (int i = 0; i < n; i++)
		ag_tensor_put(t[i]);
}

/* gradcheck and gradgradcheck of f at in (f64 leaves), then puts them. */
static void check_grads(ag_fn f, void *arg, struct ag_tensor **in, int nin,
			const struct ag_gradcheck_opts *o, const char *what)
{
	int rc = ag_gradcheck(f, arg, in, nin, o);

	cr_assert_eq(rc, 0, "%s: gradcheck: %s", what, ag_errmsg());
	rc = ag_gradgradcheck(f, arg, in, nin, o);
	cr_assert_eq(rc, 0, "%s: gradgradcheck: %s", what, ag_errmsg());
	put_all(in, nin);
}

static int ret(struct ag_tensor *t, struct ag_tensor **out)
{
	*out = t;
	return t ? 0 : -ag_errcode();
}

/* What the gradcheck callbacks need besides their inputs. */
struct args {
	int dim;
	struct ag_tensor *idx;
	struct ag_tensor *cond;
};

/* ---- pow ---- */

static int f_pow(struct ag_tensor *const *in, int nin, struct ag_tensor **out,
		 void *arg)
{
	(void)nin;
	(void)arg;
	return ret(ag_pow(in[0], in[1]), out);
}

Test(ops_index, pow_against_torch)
{
	for (int dt = AG_F32; dt <= AG_F64; dt++) {
		for (int l = 0; l < NLAYOUTS; l++) {
			struct ag_tensor *in[2] = {
				leaf(dt, l, 2, SHAPE(2, 3), POW_A),
				leaf(dt, l, 1, SHAPE(3), POW_B),
			};
			const double *g[2] = { POW_GA, POW_GB };

			against_torch(ag_pow(in[0], in[1]), POW_Y, POW_W, in, g,
				      2, "pow");
			put_all(in, 2);
		}
	}
	AG_ASSERT_NO_LEAKS();
}

Test(ops_index, pow_zero_base_as_torch)
{
	for (int dt = AG_F32; dt <= AG_F64; dt++) {
		struct ag_tensor *a = leaf(dt, CONTIG, 1, SHAPE(6), POW0_A);
		struct ag_tensor *b = leaf(dt, CONTIG, 1, SHAPE(6), POW0_B);
		struct ag_tensor *y = ag_pow(a, b), *s = ag_sum(y), *g;

		expect(y, POW0_Y, 6, tol_of(dt), "pow0 y");
		cr_assert_eq(ag_backward(s, NULL, NULL), 0, "%s", ag_errmsg());
		g = ag_tensor_grad(a);
		expect(g, POW0_GA, 6, tol_of(dt), "pow0 ga");
		ag_tensor_put(g);
		g = ag_tensor_grad(b);
		expect(g, POW0_GB, 6, tol_of(dt), "pow0 gb");
		ag_tensor_put(g);
		put_all((struct ag_tensor *[]){ a, b, y, s }, 4);
	}
	AG_ASSERT_NO_LEAKS();
}

/* The create_graph path (where-based) gives torch's zero-base values too. */
Test(ops_index, pow_zero_base_create_graph)
{
	struct ag_tensor *in[2] = {
		leaf(AG_F64, CONTIG, 1, SHAPE(6), POW0_A),
		leaf(AG_F64, CONTIG, 1, SHAPE(6), POW0_B),
	};
	struct ag_tensor *y = ag_pow(in[0], in[1]), *s = ag_sum(y), *g[2];
	struct ag_grad_opts o = { .create_graph = true };

	cr_assert_eq(ag_grad(&s, NULL, 1, in, 2, g, &o), 0, "%s", ag_errmsg());
	expect(g[0], POW0_GA, 6, 1e-12, "pow0 ga create_graph");
	expect(g[1], POW0_GB, 6, 1e-12, "pow0 gb create_graph");
	cr_assert(ag_tensor_requires_grad(g[0]) &&
		  ag_tensor_requires_grad(g[1]));
	{
		struct ag_tensor *e =
			ag_node_saved(ag_tensor_grad_fn(y), "exponent");

		cr_assert(e && ag_equal(e, in[1]));
		ag_tensor_put(e);
	}
	put_all(g, 2);
	put_all(in, 2);
	ag_tensor_put(y);
	ag_tensor_put(s);
	AG_ASSERT_NO_LEAKS();
}

Test(ops_index, pow_gradchecks)
{
	struct ag_tensor *in[2] = { rnd(2, SHAPE(3, 4), 0.5, 2),
				    rnd(1, SHAPE(4), -2, 2) };

	check_grads(f_pow, NULL, in, 2, NULL, "pow [3,4] ^ [4]");
	in[0] = rnd(1, SHAPE(3), 0.5, 2);
	in[1] = rnd(2, SHAPE(2, 1), -2, 2);
	check_grads(f_pow, NULL, in, 2, NULL, "pow [3] ^ [2,1]");
	in[0] = rnd(0, NULL, 0.5, 2);
	in[1] = rnd(0, NULL, -2, 2);
	check_grads(f_pow, NULL, in, 2, NULL, "pow 0-d");
	AG_ASSERT_NO_LEAKS();
}

Test(ops_index, pow_bad_inputs)
{
	struct ag_tensor *a = ag_ones(AG_F64, 2, SHAPE(2, 3));
	struct ag_tensor *b = ag_ones(AG_F32, 1, SHAPE(3));
	struct ag_tensor *c = ag_ones(AG_F64, 1, SHAPE(2));
	struct ag_tensor *i = ag_ones(AG_I64, 1, SHAPE(3));

	ag_clear_error();
	cr_assert_null(ag_pow(NULL, a));
	AG_ASSERT_ERR(AG_EINVAL, "ag_pow: argument 'a' is NULL");
	cr_assert_null(ag_pow(a, b));
	AG_ASSERT_ERR(
		AG_EDTYPE,
		"ag_pow: expected both operands to have the same dtype, got f64 and f32");
	cr_assert_null(ag_pow(a, c));
	AG_ASSERT_ERR(AG_ESHAPE,
		      "ag_pow: shapes [2, 3] and [2] cannot be broadcast");
	cr_assert_null(ag_pow(i, i));
	AG_ASSERT_ERR(AG_EDTYPE, "ag_pow: expected a floating point tensor");
	put_all((struct ag_tensor *[]){ a, b, c, i }, 4);
	AG_ASSERT_NO_LEAKS();
}

/* ---- cat and stack ---- */

static int f_cat(struct ag_tensor *const *in, int nin, struct ag_tensor **out,
		 void *arg)
{
	return ret(ag_cat(in, nin, ((struct args *)arg)->dim), out);
}

static int f_stack(struct ag_tensor *const *in, int nin, struct ag_tensor **out,
		   void *arg)
{
	return ret(ag_stack(in, nin, ((struct args *)arg)->dim), out);
}

Test(ops_index, cat_against_torch)
{
	for (int dt = AG_F32; dt <= AG_F64; dt++) {
		for (int l = 0; l < NLAYOUTS; l++) {
			struct ag_tensor *in[3] = {
				leaf(dt, l, 2, SHAPE(2, 3), CAT_X0),
				leaf(dt, l, 2, SHAPE(2, 1), CAT_X1),
				leaf(dt, l, 2, SHAPE(2, 2), CAT_X2),
			};
			/* a [0] between them is skipped, as torch */
			struct ag_tensor *e =
				leaf(dt, CONTIG, 1, SHAPE(0), NULL);
			struct ag_tensor *ts[4] = { in[0], e, in[1], in[2] };
			const double *g[3] = { CAT_G0, CAT_G1, CAT_G2 };
			struct ag_tensor *y = ag_cat(ts, 4, -1), *ge;

			expect_shape(y, 2, SHAPE(2, 6));
			against_torch(y, CAT_Y, CAT_W, in, g, 3, "cat");
			ge = ag_tensor_grad(e);
			expect_shape(ge, 1, SHAPE(0));
			ag_tensor_put(ge);
			put_all(in, 3);
			ag_tensor_put(e);
		}
	}
	AG_ASSERT_NO_LEAKS();
}

Test(ops_index, stack_against_torch)
{
	for (int dt = AG_F32; dt <= AG_F64; dt++) {
		for (int l = 0; l < NLAYOUTS; l++) {
			struct ag_tensor *in[3] = {
				leaf(dt, l, 2, SHAPE(2, 2), STACK_X0),
				leaf(dt, l, 2, SHAPE(2, 2), STACK_X1),
				leaf(dt, l, 2, SHAPE(2, 2), STACK_X2),
			};
			const double *g[3] = { STACK_G0, STACK_G1, STACK_G2 };
			struct ag_tensor *y = ag_stack(in, 3, 1);

			expect_shape(y, 3, SHAPE(2, 3, 2));
			against_torch(y, STACK_Y, STACK_W, in, g, 3, "stack");
			put_all(in, 3);
		}
	}
	AG_ASSERT_NO_LEAKS();
}

Test(ops_index, cat_stack_empty_and_0d)
{
	struct ag_tensor *e = ag_zeros(AG_F64, 1, SHAPE(0));
	struct ag_tensor *a = ag_ones(AG_F64, 2, SHAPE(2, 0));
	struct ag_tensor *b = ag_ones(AG_F64, 2, SHAPE(2, 3));
	struct ag_tensor *s0 = ag_scalar(AG_F64, 1.5);
	struct ag_tensor *s1 = ag_scalar(AG_F64, -2);
	struct ag_tensor *y;

	/* only [0]s: [0], whatever dim (torch does not check it then) */
	y = ag_cat((struct ag_tensor *[]){ e, e }, 2, 1);
	expect_shape(y, 1, SHAPE(0));
	ag_tensor_put(y);
	y = ag_cat((struct ag_tensor *[]){ a, b, e }, 3, 1);
	expect_shape(y, 2, SHAPE(2, 3));
	ag_tensor_put(y);
	y = ag_cat((struct ag_tensor *[]){ a, a }, 2, 0);
	expect_shape(y, 2, SHAPE(4, 0));
	ag_tensor_put(y);
	y = ag_stack((struct ag_tensor *[]){ s0, s1 }, 2, 0);
	expect(y, (const double[]){ 1.5, -2 }, 2, 0, "stack 0-d");
	expect_shape(y, 1, SHAPE(2));
	ag_tensor_put(y);
	y = ag_stack((struct ag_tensor *[]){ e, e, e }, 3, -1);
	expect_shape(y, 2, SHAPE(0, 3));
	ag_tensor_put(y);
	/* i64 joins too (not recorded) */
	{
		struct ag_tensor *i =
			idx_of(1, SHAPE(2), (const int64_t[]){ 7, -3 });

		y = ag_cat((struct ag_tensor *[]){ i, i }, 2, 0);
		expect(y, (const double[]){ 7, -3, 7, -3 }, 4, 0, "cat i64");
		cr_assert_eq(ag_tensor_dtype(y), AG_I64);
		ag_tensor_put(y);
		ag_tensor_put(i);
	}
	put_all((struct ag_tensor *[]){ e, a, b, s0, s1 }, 5);
	AG_ASSERT_NO_LEAKS();
}

Test(ops_index, cat_stack_gradchecks)
{
	struct args arg = { .dim = 1 };
	struct ag_tensor *in[3] = { rnd(2, SHAPE(2, 3), -1, 1),
				    rnd(2, SHAPE(2, 1), -1, 1),
				    rnd(2, SHAPE(2, 2), -1, 1) };

	check_grads(f_cat, &arg, in, 3, NULL, "cat dim 1");
	arg.dim = -3;
	in[0] = rnd(3, SHAPE(1, 2, 2), -1, 1);
	in[1] = rnd(3, SHAPE(3, 2, 2), -1, 1);
	check_grads(f_cat, &arg, in, 2, NULL, "cat dim -3");
	arg.dim = 0;
	in[0] = rnd(1, SHAPE(3), -1, 1);
	in[1] = rnd(1, SHAPE(0), -1, 1);
	in[2] = rnd(1, SHAPE(2), -1, 1);
	check_grads(f_cat, &arg, in, 3, NULL, "cat with [0]");
	arg.dim = -1;
	in[0] = rnd(2, SHAPE(2, 3), -1, 1);
	in[1] = rnd(2, SHAPE(2, 3), -1, 1);
	check_grads(f_stack, &arg, in, 2, NULL, "stack dim -1");
	arg.dim = 0;
	in[0] = rnd(0, NULL, -1, 1);
	in[1] = rnd(0, NULL, -1, 1);
	check_grads(f_stack, &arg, in, 2, NULL, "stack 0-d");
	AG_ASSERT_NO_LEAKS();
}

Test(ops_index, cat_stack_bad_inputs)
{
	struct ag_tensor *a = ag_ones(AG_F64, 2, SHAPE(2, 3));
	struct ag_tensor *b = ag_ones(AG_F64, 2, SHAPE(2, 4));
	struct ag_tensor *f = ag_ones(AG_F32, 2, SHAPE(2, 3));
	struct ag_tensor *v = ag_ones(AG_F64, 1, SHAPE(3));
	struct ag_tensor *s = ag_scalar(AG_F64, 1);

	ag_clear_error();
	cr_assert_null(ag_cat(NULL, 2, 0));
	AG_ASSERT_ERR(AG_EINVAL, "ag_cat: ts is NULL");
	cr_assert_null(ag_cat(&a, 0, 0));
	AG_ASSERT_ERR(AG_EINVAL,
		      "ag_cat: expected a non-empty list of tensors, got 0");
	cr_assert_null(ag_cat((struct ag_tensor *[]){ a, NULL }, 2, 0));
	AG_ASSERT_ERR(AG_EINVAL, "ag_cat: argument 'tensor 1' is NULL");
	cr_assert_null(ag_cat((struct ag_tensor *[]){ a, a, f }, 3, 0));
	AG_ASSERT_ERR(AG_EDTYPE,
		      "ag_cat: tensor 2 has dtype f32, expected f64");
	cr_assert_null(ag_cat((struct ag_tensor *[]){ a, a, b }, 3, 0));
	AG_ASSERT_ERR(
		AG_ESHAPE,
		"ag_cat: tensor 2 has shape [2, 4], expected [2, 3] except in dim 0");
	cr_assert_null(ag_cat((struct ag_tensor *[]){ a, v }, 2, 1));
	AG_ASSERT_ERR(
		AG_ESHAPE,
		"ag_cat: tensor 1 has shape [3], expected [2, 3] except in dim 1");
	cr_assert_null(ag_cat((struct ag_tensor *[]){ a, b }, 2, 2));
	AG_ASSERT_ERR(
		AG_EINVAL,
		"ag_cat: dimension out of range (expected to be in range of [-2, 1], but got 2)");
	cr_assert_null(ag_cat((struct ag_tensor *[]){ s, s }, 2, 0));
	AG_ASSERT_ERR(AG_EINVAL,
		      "ag_cat: tensor 0 is 0-d and cannot be concatenated");
	cr_assert_null(ag_stack((struct ag_tensor *[]){ a, b }, 2, 0));
	AG_ASSERT_ERR(AG_ESHAPE,
		      "ag_stack: tensor 1 has shape [2, 4], expected [2, 3]");
	cr_assert_null(ag_stack((struct ag_tensor *[]){ a, f }, 2, 0));
	AG_ASSERT_ERR(AG_EDTYPE,
		      "ag_stack: tensor 1 has dtype f32, expected f64");
	cr_assert_null(ag_stack((struct ag_tensor *[]){ a, a }, 2, 3));
	AG_ASSERT_ERR(
		AG_EINVAL,
		"ag_stack: dimension out of range (expected to be in range of [-3, 2], but got 3)");
	cr_assert_null(ag_stack(NULL, 1, 0));
	AG_ASSERT_ERR(AG_EINVAL, "ag_stack: ts is NULL");
	put_all((struct ag_tensor *[]){ a, b, f, v, s }, 5);
	AG_ASSERT_NO_LEAKS();
}

/* ---- index_select, gather, scatter_add, embedding ---- */

static int f_index_select(struct ag_tensor *const *in, int nin,
			  struct ag_tensor **out, void *arg)
{
	struct args *a = arg;

	(void)nin;
	return ret(ag_index_select(in[0], a->dim, a->idx), out);
}

static int f_gather(struct ag_tensor *const *in, int nin,
		    struct ag_tensor **out, void *arg)
{
	struct args *a = arg;

	(void)nin;
	return ret(ag_gather(in[0], a->dim, a->idx), out);
}

static int f_scatter_add(struct ag_tensor *const *in, int nin,
			 struct ag_tensor **out, void *arg)
{
	struct args *a = arg;

	(void)nin;
	return ret(ag_scatter_add(in[0], a->dim, a->idx, in[1]), out);
}

static int f_embedding(struct ag_tensor *const *in, int nin,
		       struct ag_tensor **out, void *arg)
{
	(void)nin;
	return ret(ag_embedding(in[0], ((struct args *)arg)->idx), out);
}

Test(ops_index, index_select_against_torch)
{
	struct ag_tensor *idx = idx_of(1, SHAPE(5), ISEL_I);

	for (int dt = AG_F32; dt <= AG_F64; dt++) {
		for (int l = 0; l < NLAYOUTS; l++) {
			struct ag_tensor *a =
				leaf(dt, l, 2, SHAPE(3, 4), ISEL_A);
			const double *g[1] = { ISEL_GA };
			struct ag_tensor *y =
				ag_index_select(a, l ? -1 : 1, idx);

			expect_shape(y, 2, SHAPE(3, 5));
			against_torch(y, ISEL_Y, ISEL_W, &a, g, 1,
				      "index_select");
			ag_tensor_put(a);
		}
	}
	ag_tensor_put(idx);
	AG_ASSERT_NO_LEAKS();
}

Test(ops_index, gather_against_torch)
{
	for (int dt = AG_F32; dt <= AG_F64; dt++) {
		for (int l = 0; l < NLAYOUTS; l++) {
			struct ag_tensor *a =
				leaf(dt, l, 2, SHAPE(3, 4), GATH_A);
			/* the index strided too */
			struct ag_tensor *idx = idx_of(2, SHAPE(2, 3), GATH_I);
			const double *g[1] = { GATH_GA };
			struct ag_tensor *y = ag_gather(a, 1, idx);

			expect_shape(y, 2, SHAPE(2, 3));
			against_torch(y, GATH_Y, GATH_W, &a, g, 1, "gather");
			ag_tensor_put(a);
			ag_tensor_put(idx);
		}
	}
	AG_ASSERT_NO_LEAKS();
}

Test(ops_index, scatter_add_against_torch)
{
	struct ag_tensor *idx = idx_of(2, SHAPE(2, 4), SCAT_I);

	for (int dt = AG_F32; dt <= AG_F64; dt++) {
		for (int l = 0; l < NLAYOUTS; l++) {
			struct ag_tensor *in[2] = {
				leaf(dt, l, 2, SHAPE(3, 4), SCAT_A),
				leaf(dt, l, 2, SHAPE(2, 4), SCAT_S),
			};
			const double *g[2] = { SCAT_GA, SCAT_GS };
			struct ag_tensor *y =
				ag_scatter_add(in[0], l ? -2 : 0, idx, in[1]);

			against_torch(y, SCAT_Y, SCAT_W, in, g, 2,
				      "scatter_add");
			put_all(in, 2);
		}
	}
	ag_tensor_put(idx);
	AG_ASSERT_NO_LEAKS();
}

Test(ops_index, embedding_against_torch)
{
	for (int dt = AG_F32; dt <= AG_F64; dt++) {
		for (int l = 0; l < NLAYOUTS; l++) {
			struct ag_tensor *w =
				leaf(dt, l, 2, SHAPE(5, 3), EMB_WT);
			struct ag_tensor *i = idx_of(2, SHAPE(2, 4), EMB_I);
			struct ag_tensor *it = ag_transpose(i, 0, 1), *y;
			const double *g[1] = { EMB_GW };

			y = ag_embedding(w, i);
			expect_shape(y, 3, SHAPE(2, 4, 3));
			against_torch(y, EMB_Y, EMB_W, &w, g, 1, "embedding");
			/* a transposed index: rows in its logical order */
			y = ag_embedding(w, it);
			expect_shape(y, 3, SHAPE(4, 2, 3));
			for (int r = 0; r < 4; r++)
				for (int c = 0; c < 2; c++)
					for (int k = 0; k < 3; k++)
						cr_assert_eq(
							ag__get(y, (r * 2 +
								    c) * 3 +
									   k),
							ag__get(w,
								EMB_I[c * 4 +
								      r] * 3 +
									k));
			ag_tensor_put(y);
			put_all((struct ag_tensor *[]){ w, i, it }, 3);
		}
	}
	AG_ASSERT_NO_LEAKS();
}

Test(ops_index, index_empty_and_0d)
{
	struct ag_tensor *a = ag_arange(AG_F64, 0, 12, 1), *b, *y, *i, *g;
	struct ag_tensor *s = ag_scalar(AG_F64, 4.5);

	cr_assert_eq(ag_tensor_set_requires_grad(a, true), 0);
	b = ag_reshape(a, 2, SHAPE(3, 4));
	/* empty index: empty result, zero gradient */
	i = idx_of(1, SHAPE(0), NULL);
	y = ag_index_select(b, 0, i);
	expect_shape(y, 2, SHAPE(0, 4));
	{
		struct ag_tensor *sum = ag_sum(y);

		cr_assert_eq(ag_backward(sum, NULL, NULL), 0, "%s",
			     ag_errmsg());
		g = ag_tensor_grad(a);
		for (int k = 0; k < 12; k++)
			cr_assert_eq(ag__get(g, k), 0);
		ag_tensor_put(g);
		ag_tensor_put(sum);
	}
	ag_tensor_put(y);
	ag_tensor_put(i);
	/* 0-d index: the dim goes, as torch; 0-d input with index [0] */
	i = idx_of(0, NULL, (const int64_t[]){ 2 });
	y = ag_index_select(b, 0, i);
	expect(y, (const double[]){ 8, 9, 10, 11 }, 4, 0, "0-d index");
	expect_shape(y, 2, SHAPE(1, 4));
	ag_tensor_put(y);
	y = ag_gather(a, 0, i);
	expect(y, (const double[]){ 2 }, 1, 0, "gather 0-d index");
	expect_shape(y, 0, NULL);
	ag_tensor_put(y);
	ag_tensor_put(i);
	i = idx_of(1, SHAPE(1), (const int64_t[]){ 0 });
	y = ag_index_select(s, 0, i);
	expect(y, (const double[]){ 4.5 }, 1, 0, "0-d input");
	expect_shape(y, 0, NULL);
	ag_tensor_put(y);
	ag_tensor_put(i);
	/* embedding of a 0-d index: one row */
	i = idx_of(0, NULL, (const int64_t[]){ 1 });
	y = ag_embedding(b, i);
	expect(y, (const double[]){ 4, 5, 6, 7 }, 4, 0, "embedding 0-d");
	expect_shape(y, 1, SHAPE(4));
	ag_tensor_put(y);
	ag_tensor_put(i);
	/* gather and scatter_add of an empty index */
	i = idx_of(2, SHAPE(0, 4), NULL);
	y = ag_gather(b, 0, i);
	expect_shape(y, 2, SHAPE(0, 4));
	ag_tensor_put(y);
	g = ag_detach(b);
	y = ag_scatter_add(b, 0, i, g);
	expect_shape(y, 2, SHAPE(3, 4));
	for (int k = 0; k < 12; k++)
		cr_assert_eq(ag__get(y, k), k);
	ag_tensor_put(y);
	ag_tensor_put(g);
	ag_tensor_put(i);
	put_all((struct ag_tensor *[]){ a, b, s }, 3);
	AG_ASSERT_NO_LEAKS();
}

Test(ops_index, index_gradchecks)
{
	struct args arg = { .dim = 1 };
	struct ag_tensor *in[2];

	arg.idx = idx_of(1, SHAPE(6), (const int64_t[]){ 2, 0, 2, 2, 3, 0 });
	in[0] = rnd(3, SHAPE(2, 4, 3), -1, 1);
	check_grads(f_index_select, &arg, in, 1, NULL, "index_select");
	ag_tensor_put(arg.idx);
	arg.dim = -1;
	arg.idx = idx_of(2, SHAPE(2, 3), (const int64_t[]){ 0, 2, 2, 1, 1, 1 });
	in[0] = rnd(2, SHAPE(3, 4), -1, 1);
	check_grads(f_gather, &arg, in, 1, NULL, "gather");
	arg.dim = 0;
	in[0] = rnd(2, SHAPE(3, 4), -1, 1);
	in[1] = rnd(2, SHAPE(2, 3), -1, 1);
	check_grads(f_scatter_add, &arg, in, 2, NULL, "scatter_add");
	ag_tensor_put(arg.idx);
	arg.idx = idx_of(3, SHAPE(2, 2, 2),
			 (const int64_t[]){ 0, 3, 3, 3, 1, 0, 3, 3 });
	in[0] = rnd(2, SHAPE(4, 3), -1, 1);
	check_grads(f_embedding, &arg, in, 1, NULL, "embedding");
	ag_tensor_put(arg.idx);
	AG_ASSERT_NO_LEAKS();
}

Test(ops_index, index_bad_inputs)
{
	struct ag_tensor *a = ag_ones(AG_F64, 2, SHAPE(3, 4));
	struct ag_tensor *f = ag_ones(AG_F32, 2, SHAPE(2, 4));
	struct ag_tensor *v = ag_ones(AG_F64, 1, SHAPE(4));
	struct ag_tensor *fi = ag_ones(AG_F64, 1, SHAPE(2));
	struct ag_tensor *big = idx_of(1, SHAPE(2), (const int64_t[]){ 1, 5 });
	struct ag_tensor *neg = idx_of(1, SHAPE(2), (const int64_t[]){ -1, 0 });
	struct ag_tensor *i2 = idx_of(
		2, SHAPE(2, 4), (const int64_t[]){ 0, 1, 2, 0, 1, 1, 3, 0 });
	struct ag_tensor *i5 =
		idx_of(2, SHAPE(1, 5), (const int64_t[]){ 0, 0, 0, 0, 0 });
	struct ag_tensor *src;

	ag_clear_error();
	cr_assert_null(ag_index_select(NULL, 0, big));
	AG_ASSERT_ERR(AG_EINVAL, "ag_index_select: argument 'a' is NULL");
	cr_assert_null(ag_index_select(a, 0, NULL));
	AG_ASSERT_ERR(AG_EINVAL, "ag_index_select: argument 'idx' is NULL");
	cr_assert_null(ag_index_select(a, 0, fi));
	AG_ASSERT_ERR(AG_EDTYPE,
		      "ag_index_select: index must be an i64 tensor, got f64");
	cr_assert_null(ag_index_select(a, 0, big));
	AG_ASSERT_ERR(
		AG_EINVAL,
		"ag_index_select: index 5 is out of bounds for dim 0 with size 3");
	cr_assert_null(ag_index_select(a, 1, neg));
	AG_ASSERT_ERR(
		AG_EINVAL,
		"ag_index_select: index -1 is out of bounds for dim 1 with size 4");
	cr_assert_null(ag_index_select(a, 2, big));
	AG_ASSERT_ERR(AG_EINVAL, "ag_index_select: dimension out of range");
	cr_assert_null(ag_index_select(a, 0, i2));
	AG_ASSERT_ERR(AG_ESHAPE, "ag_index_select: index must be 0-d or 1-d");

	cr_assert_null(ag_gather(a, 0, big));
	AG_ASSERT_ERR(
		AG_ESHAPE,
		"ag_gather: index [2] must have as many dims as the input [3, 4]");
	cr_assert_null(ag_gather(a, 0, i5));
	AG_ASSERT_ERR(
		AG_ESHAPE,
		"ag_gather: index [1, 5] is larger than the input [3, 4] in dim 1");
	put_all(&i2, 1);
	i2 = idx_of(2, SHAPE(2, 2), (const int64_t[]){ 0, 1, 4, 0 });
	cr_assert_null(ag_gather(a, 1, i2));
	AG_ASSERT_ERR(
		AG_EINVAL,
		"ag_gather: index 4 is out of bounds for dim 1 with size 4");
	cr_assert_null(ag_gather(a, -3, i2));
	AG_ASSERT_ERR(
		AG_EINVAL,
		"ag_gather: dimension out of range (expected to be in range of [-2, 1], but got -3)");
	cr_assert_null(ag_scatter_add(a, 2, i2, a));
	AG_ASSERT_ERR(
		AG_EINVAL,
		"ag_scatter_add: dimension out of range (expected to be in range of [-2, 1], but got 2)");
	cr_assert_null(ag_gather(a, 1, fi));
	AG_ASSERT_ERR(AG_EDTYPE,
		      "ag_gather: index must be an i64 tensor, got f64");

	cr_assert_null(ag_scatter_add(a, 0, i2, f));
	AG_ASSERT_ERR(
		AG_EDTYPE,
		"ag_scatter_add: src has dtype f32, expected f64 (the input's)");
	cr_assert_null(ag_scatter_add(a, 0, i2, v));
	AG_ASSERT_ERR(
		AG_ESHAPE,
		"ag_scatter_add: index [2, 2] must have as many dims as the input [3, 4] and src");
	cr_assert_null(ag_scatter_add(a, 0, i5, a));
	AG_ASSERT_ERR(
		AG_ESHAPE,
		"ag_scatter_add: index [1, 5] is larger than the input [3, 4] in dim 1");
	cr_assert_null(ag_scatter_add(a, 1, i2, a));
	AG_ASSERT_ERR(
		AG_EINVAL,
		"ag_scatter_add: index 4 is out of bounds for dim 1 with size 4");
	cr_assert_null(ag_scatter_add(a, 0, i2, NULL));
	AG_ASSERT_ERR(AG_EINVAL, "ag_scatter_add: argument 'src' is NULL");
	/* a larger src is fine without grad, refused when it needs one */
	src = rnd(2, SHAPE(3, 4), -1, 1);
	cr_assert_null(ag_scatter_add(a, 0, neg, src));
	AG_ASSERT_ERR(AG_ESHAPE,
		      "ag_scatter_add: index [2] must have as many dims");
	ag_tensor_put(i2);
	i2 = idx_of(2, SHAPE(1, 2), (const int64_t[]){ 2, 0 });
	cr_assert_null(ag_scatter_add(a, 0, i2, src));
	AG_ASSERT_ERR(
		AG_ESHAPE,
		"ag_scatter_add: src [3, 4] requires grad, so it must have the index's shape [1, 2]");
	{
		struct ag_tensor *d = ag_detach(src);
		struct ag_tensor *y = ag_scatter_add(a, 0, i2, d);

		cr_assert(y, "%s", ag_errmsg());
		/* a is ones: row 2 col 0 gets src[0][0], row 0 col 1 src[0][1] */
		cr_assert_float_eq(ag__get(y, 8), 1 + ag__get(src, 0), 1e-15);
		cr_assert_float_eq(ag__get(y, 1), 1 + ag__get(src, 1), 1e-15);
		cr_assert_float_eq(ag__get(y, 0), 1, 1e-15);
		put_all((struct ag_tensor *[]){ d, y }, 2);
	}

	cr_assert_null(ag_embedding(v, big));
	AG_ASSERT_ERR(
		AG_ESHAPE,
		"ag_embedding: weight must be 2-d and indices at most 7-d, got weight [4]");
	cr_assert_null(ag_embedding(a, fi));
	AG_ASSERT_ERR(AG_EDTYPE,
		      "ag_embedding: index must be an i64 tensor, got f64");
	cr_assert_null(ag_embedding(a, big));
	AG_ASSERT_ERR(
		AG_EINVAL,
		"ag_embedding: index 5 is out of bounds for dim 0 with size 3");
	cr_assert_null(ag_embedding(a, neg));
	AG_ASSERT_ERR(
		AG_EINVAL,
		"ag_embedding: index -1 is out of bounds for dim 0 with size 3");
	cr_assert_null(ag_embedding(NULL, neg));
	AG_ASSERT_ERR(AG_EINVAL, "ag_embedding: argument 'weight' is NULL");
	put_all((struct ag_tensor *[]){ a, f, v, fi, big, neg, i2, i5, src },
		9);
	AG_ASSERT_NO_LEAKS();
}

/* An index modified in place after the forward is caught at backward. */
Test(ops_index, index_saved_version_checked)
{
	struct ag_tensor *a = rnd(2, SHAPE(3, 2), -1, 1);
	struct ag_tensor *i = idx_of(1, SHAPE(2), (const int64_t[]){ 0, 2 });
	struct ag_tensor *y = ag_index_select(a, 0, i), *s = ag_sum(y);
	struct ag_tensor *saved = ag_node_saved(ag_tensor_grad_fn(y), "index");

	cr_assert(saved && ag_equal(saved, i));
	ag_tensor_put(saved);
	{
		struct ag_tensor *o =
			idx_of(1, SHAPE(2), (const int64_t[]){ 1, 1 });

		cr_assert_eq(ag_copy_(i, o), 0, "%s", ag_errmsg());
		ag_tensor_put(o);
	}
	cr_assert_eq(ag_backward(s, NULL, NULL), -AG_EVERSION);
	ag_clear_error();
	put_all((struct ag_tensor *[]){ a, i, y, s }, 4);
	AG_ASSERT_NO_LEAKS();
}

/* ---- where ---- */

static int f_where(struct ag_tensor *const *in, int nin, struct ag_tensor **out,
		   void *arg)
{
	(void)nin;
	return ret(ag_where(((struct args *)arg)->cond, in[0], in[1]), out);
}

Test(ops_index, where_against_torch)
{
	for (int dt = AG_F32; dt <= AG_F64; dt++) {
		for (int l = 0; l < NLAYOUTS; l++) {
			struct ag_tensor *in[2] = {
				leaf(dt, l, 2, SHAPE(2, 3), WHERE_A),
				leaf(dt, l, 1, SHAPE(3), WHERE_B),
			};
			const double *g[2] = { WHERE_GA, WHERE_GB };
			/* the condition in each dtype; i64 for l == 2 */
			struct ag_tensor *c =
				l == SLICED ?
					idx_of(2, SHAPE(2, 1),
					       (const int64_t[]){ 5, 0 }) :
					make(l ? AG_F64 : AG_F32, CONTIG, 2,
					     SHAPE(2, 1), WHERE_C);

			against_torch(ag_where(c, in[0], in[1]), WHERE_Y,
				      WHERE_W, in, g, 2, "where");
			put_all(in, 2);
			ag_tensor_put(c);
		}
	}
	AG_ASSERT_NO_LEAKS();
}

Test(ops_index, where_gradchecks_and_errors)
{
	struct args arg;
	struct ag_tensor *in[2] = { rnd(2, SHAPE(3, 1), -1, 1),
				    rnd(1, SHAPE(4), -1, 1) };
	struct ag_tensor *a = ag_ones(AG_F64, 2, SHAPE(2, 3));
	struct ag_tensor *f = ag_ones(AG_F32, 1, SHAPE(3));
	struct ag_tensor *b = ag_ones(AG_F64, 1, SHAPE(2));
	struct ag_tensor *y;

	arg.cond =
		idx_of(2, SHAPE(3, 4),
		       (const int64_t[]){ 1, 0, 0, 1, 0, 1, 1, 0, 1, 1, 0, 0 });
	check_grads(f_where, &arg, in, 2, NULL, "where [3,1] [4]");
	ag_tensor_put(arg.cond);
	arg.cond = ag_scalar(AG_F64, NAN); /* NaN is true */
	in[0] = rnd(0, NULL, -1, 1);
	in[1] = rnd(1, SHAPE(2), -1, 1);
	y = ag_where(arg.cond, in[0], in[1]);
	expect_shape(y, 1, SHAPE(2));
	{
		struct ag_tensor *c =
			ag_node_saved(ag_tensor_grad_fn(y), "condition");

		cr_assert(c && isnan(ag_tensor_item(c)), "%s", ag_errmsg());
		ag_tensor_put(c);
	}
	cr_assert_eq(ag__get(y, 1), ag__get(in[0], 0));
	ag_tensor_put(y);
	check_grads(f_where, &arg, in, 2, NULL, "where 0-d");
	ag_tensor_put(arg.cond);

	ag_clear_error();
	cr_assert_null(ag_where(NULL, a, a));
	AG_ASSERT_ERR(AG_EINVAL, "ag_where: argument 'cond' is NULL");
	cr_assert_null(ag_where(a, a, f));
	AG_ASSERT_ERR(AG_EDTYPE,
		      "ag_where: a has dtype f64 and b f32; they must match");
	cr_assert_null(ag_where(a, a, b));
	AG_ASSERT_ERR(
		AG_ESHAPE,
		"ag_where: shapes [2, 3], [2, 3] and [2] cannot be broadcast (dim 1)");
	cr_assert_null(ag_where(b, a, a));
	AG_ASSERT_ERR(
		AG_ESHAPE,
		"ag_where: shapes [2], [2, 3] and [2, 3] cannot be broadcast (dim 1)");
	put_all((struct ag_tensor *[]){ a, f, b }, 3);
	AG_ASSERT_NO_LEAKS();
}

/* ---- argmax ---- */

Test(ops_index, argmax_values)
{
	/* [[1, 3, 3], [NaN, 5, NaN]] (transposed storage), ties: the first */
	const double v[] = { 1, 3, 3, NAN, 5, NAN };

	for (int dt = AG_F32; dt <= AG_F64; dt++) {
		for (int l = 0; l < NLAYOUTS; l++) {
			struct ag_tensor *a = make(dt, l, 2, SHAPE(2, 3), v);
			struct ag_tensor *y = ag_argmax(a, 1, false);

			cr_assert_eq(ag_tensor_dtype(y), AG_I64);
			expect_shape(y, 1, SHAPE(2));
			expect(y, (const double[]){ 1, 0 }, 2, 0,
			       "argmax dim 1");
			ag_tensor_put(y);
			y = ag_argmax(a, -2, true);
			expect_shape(y, 2, SHAPE(1, 3));
			expect(y, (const double[]){ 1, 1, 1 }, 3, 0,
			       "argmax dim 0");
			ag_tensor_put(y);
			ag_tensor_put(a);
		}
	}
	{
		struct ag_tensor *i =
			idx_of(1, SHAPE(4), (const int64_t[]){ -5, 9, 2, 9 });
		struct ag_tensor *s = ag_scalar(AG_F64, 3);
		struct ag_tensor *e = ag_zeros(AG_F64, 2, SHAPE(0, 3));
		struct ag_tensor *y = ag_argmax(i, 0, false);

		expect(y, (const double[]){ 1 }, 1, 0, "argmax i64");
		expect_shape(y, 0, NULL);
		ag_tensor_put(y);
		y = ag_argmax(s, -1, true);
		expect(y, (const double[]){ 0 }, 1, 0, "argmax 0-d");
		expect_shape(y, 0, NULL);
		ag_tensor_put(y);
		y = ag_argmax(e, 1, false);
		expect_shape(y, 1, SHAPE(0));
		ag_tensor_put(y);
		ag_clear_error();
		cr_assert_null(ag_argmax(e, 0, false));
		AG_ASSERT_ERR(
			AG_EINVAL,
			"ag_argmax: cannot take the argmax over dim 0 of size 0");
		cr_assert_null(ag_argmax(e, 2, false));
		AG_ASSERT_ERR(AG_EINVAL, "ag_argmax: dimension out of range");
		cr_assert_null(ag_argmax(NULL, 0, false));
		AG_ASSERT_ERR(AG_EINVAL, "ag_argmax: argument 'a' is NULL");
		put_all((struct ag_tensor *[]){ i, s, e }, 3);
	}
	AG_ASSERT_NO_LEAKS();
}

/* ---- to ---- */

static int f_to_f32_and_back(struct ag_tensor *const *in, int nin,
			     struct ag_tensor **out, void *arg)
{
	struct ag_tensor *f = ag_to(in[0], AG_F32), *t, *d;

	(void)nin;
	(void)arg;
	/* a product in f32 so the second derivative is not zero */
	t = f ? ag_mul(f, f) : NULL;
	d = t ? ag_to(t, AG_F64) : NULL;
	ag_tensor_put(f);
	ag_tensor_put(t);
	return ret(d, out);
}

Test(ops_index, to_values_and_grads)
{
	const double v[] = { 1.5, -2.75, 1e30, NAN, -0.5, 3 };
	struct ag_tensor *a = leaf(AG_F64, TRANSPOSED, 2, SHAPE(2, 3), v);
	struct ag_tensor *f = ag_to(a, AG_F32), *i, *s, *g, *same;
	const struct ag_gradcheck_opts o = { 1e-2, 1e-3, 1e-3 };
	struct ag_tensor *in[1];

	cr_assert_eq(ag_tensor_dtype(f), AG_F32);
	expect(f, (const double[]){ 1.5, -2.75, (float)1e30, NAN, -0.5, 3 }, 6,
	       0, "to f32");
	cr_assert(ag_tensor_requires_grad(f));
	cr_assert_str_eq(ag_node_name(ag_tensor_grad_fn(f)), "ToCopyBackward");
	s = ag_sum(f);
	cr_assert_eq(ag_backward(s, NULL, NULL), 0, "%s", ag_errmsg());
	g = ag_tensor_grad(a);
	cr_assert_eq(ag_tensor_dtype(g), AG_F64);
	expect(g, (const double[]){ 1, 1, 1, 1, 1, 1 }, 6, 0, "to grad");
	put_all((struct ag_tensor *[]){ s, g, f }, 3);
	/* to i64: truncation, NaN and overflow to INT64_MIN, no grad */
	i = ag_to(a, AG_I64);
	cr_assert(!ag_tensor_requires_grad(i));
	{
		int64_t got[6];

		cr_assert_eq(ag_tensor_copy_to(i, got, sizeof(got)), 0);
		cr_assert(got[0] == 1 && got[1] == -2 && got[2] == INT64_MIN &&
			  got[3] == INT64_MIN && got[4] == 0 && got[5] == 3);
	}
	f = ag_to(i, AG_F32);
	cr_assert(!ag_tensor_requires_grad(f));
	cr_assert_eq(ag__get(f, 1), -2);
	put_all((struct ag_tensor *[]){ i, f }, 2);
	/* same dtype: a itself */
	same = ag_to(a, AG_F64);
	cr_assert_eq(same, a);
	ag_tensor_put(same);
	ag_clear_error();
	cr_assert_null(ag_to(a, (enum ag_dtype)7));
	AG_ASSERT_ERR(AG_EDTYPE, "ag_to: unknown dtype 7");
	cr_assert_null(ag_to(NULL, AG_F32));
	AG_ASSERT_ERR(AG_EINVAL, "ag_to: argument 'a' is NULL");
	ag_tensor_put(a);
	/* values exact in f32, steps that f32 resolves */
	in[0] = leaf(AG_F64, SLICED, 1, SHAPE(3),
		     (const double[]){ 0.5, -1.25, 2 });
	check_grads(f_to_f32_and_back, NULL, in, 1, &o, "to f32 and back");
	AG_ASSERT_NO_LEAKS();
}

/* ---- comparisons ---- */

Test(ops_index, comparisons)
{
	const double x[] = { 1, 2, NAN, 4, 5, 6 };
	const double y[] = { 2, 2, 2 };

	for (int dt = AG_F32; dt <= AG_F64; dt++) {
		for (int l = 0; l < NLAYOUTS; l++) {
			struct ag_tensor *a = leaf(dt, l, 2, SHAPE(2, 3), x);
			struct ag_tensor *b = make(dt, l, 1, SHAPE(3), y);
			struct ag_tensor *r = ag_eq(a, b);

			cr_assert_eq((int)ag_tensor_dtype(r), dt);
			cr_assert(!ag_tensor_requires_grad(r));
			expect(r, (const double[]){ 0, 1, 0, 0, 0, 0 }, 6, 0,
			       "eq");
			ag_tensor_put(r);
			r = ag_lt(a, b);
			expect(r, (const double[]){ 1, 0, 0, 0, 0, 0 }, 6, 0,
			       "lt");
			ag_tensor_put(r);
			r = ag_gt(b, a);
			expect(r, (const double[]){ 1, 0, 0, 0, 0, 0 }, 6, 0,
			       "gt");
			ag_tensor_put(r);
			r = ag_gt(a, b);
			expect(r, (const double[]){ 0, 0, 0, 1, 1, 1 }, 6, 0,
			       "gt");
			ag_tensor_put(r);
			put_all((struct ag_tensor *[]){ a, b }, 2);
		}
	}
	{
		/* i64 exactly, beyond a double's 53 bits; 0-d broadcast */
		struct ag_tensor *i =
			idx_of(1, SHAPE(2),
			       (const int64_t[]){ INT64_MAX, INT64_MAX - 1 });
		struct ag_tensor *j =
			idx_of(0, NULL, (const int64_t[]){ INT64_MAX - 1 });
		struct ag_tensor *e = ag_zeros(AG_F64, 2, SHAPE(0, 3));
		struct ag_tensor *v = ag_zeros(AG_F64, 1, SHAPE(3));
		struct ag_tensor *w = ag_zeros(AG_F64, 1, SHAPE(2));
		struct ag_tensor *f = ag_zeros(AG_F32, 1, SHAPE(3));
		struct ag_tensor *r = ag_eq(i, j);

		cr_assert_eq(ag_tensor_dtype(r), AG_I64);
		expect(r, (const double[]){ 0, 1 }, 2, 0, "eq i64");
		ag_tensor_put(r);
		r = ag_gt(i, j);
		expect(r, (const double[]){ 1, 0 }, 2, 0, "gt i64");
		ag_tensor_put(r);
		r = ag_lt(e, v);
		expect_shape(r, 2, SHAPE(0, 3));
		ag_tensor_put(r);
		ag_clear_error();
		cr_assert_null(ag_eq(v, f));
		AG_ASSERT_ERR(
			AG_EDTYPE,
			"ag_eq: expected both operands to have the same dtype, got f64 and f32");
		cr_assert_null(ag_lt(v, w));
		AG_ASSERT_ERR(
			AG_ESHAPE,
			"ag_lt: shapes [3], [2] cannot be broadcast (dim 0)");
		cr_assert_null(ag_gt(NULL, w));
		AG_ASSERT_ERR(AG_EINVAL, "ag_gt: argument 'a' is NULL");
		put_all((struct ag_tensor *[]){ i, j, e, v, w, f }, 6);
	}
	AG_ASSERT_NO_LEAKS();
}

/* index_select's backward over many duplicates, split over threads, sums
 * each row in index order: the same bits as one thread. */
Test(ops_index, index_backward_threads_match_serial)
{
	enum { V = 7, D = 64, N = 4096 };
	int64_t iv[N];
	struct ag_tensor *w = rnd(2, SHAPE(V, D), -1, 1), *g[2];

	for (int k = 0; k < N; k++)
		iv[k] = (k * 5 + k / 3) % V;
	for (int t = 0; t < 2; t++) {
		struct ag_tensor *i = idx_of(1, SHAPE(N), iv);
		struct ag_tensor *y, *c, *s;

		cr_assert_eq(ag_set_num_threads(t ? 4 : 1), 0);
		y = ag_embedding(w, i);
		c = ag_cos(y); /* gradients that differ per element */
		s = ag_sum(c);
		cr_assert_eq(ag_backward(s, NULL, NULL), 0, "%s", ag_errmsg());
		g[t] = ag_tensor_grad(w);
		cr_assert_eq(ag_tensor_zero_grad(w), 0);
		put_all((struct ag_tensor *[]){ i, y, c, s }, 4);
	}
	cr_assert(ag_equal(g[0], g[1]));
	put_all(g, 2);
	ag_tensor_put(w);
	cr_assert_eq(ag_set_num_threads(0), 0);
	AG_ASSERT_NO_LEAKS();
}

/*
 * stack and embedding are built from public ops: their temporaries must
 * stay out of the caller's scope (each would be put twice).
 */
Test(ops_index, composites_under_a_scope)
{
	struct ag_tensor *w = rnd(2, SHAPE(4, 3), -1, 1), *y, *s;
	struct ag_tensor *i = idx_of(1, SHAPE(3), (const int64_t[]){ 3, 3, 0 });
	struct ag_scope *sc = ag_scope_begin();

	y = ag_stack((struct ag_tensor *[]){ w, w }, 2, 0);
	expect_shape(y, 3, SHAPE(2, 4, 3));
	y = ag_embedding(w, i);
	expect_shape(y, 2, SHAPE(3, 3));
	s = ag_sum(y);
	cr_assert_eq(ag_backward(s, NULL, NULL), 0, "%s", ag_errmsg());
	ag_scope_end(sc);
	put_all((struct ag_tensor *[]){ w, i }, 2);
	AG_ASSERT_NO_LEAKS();
}

/* Empty operands: empty results, and empty gradients of the right shape. */
Test(ops_index, elementwise_empty)
{
	struct ag_tensor *a = rnd(2, SHAPE(0, 3), 0.5, 1);
	struct ag_tensor *b = rnd(1, SHAPE(3), -1, 1);
	struct ag_tensor *c = ag_zeros(AG_I64, 2, SHAPE(0, 1));
	struct ag_tensor *y[3], *s, *g;

	y[0] = ag_pow(a, b);
	y[1] = ag_where(c, a, b);
	y[2] = ag_to(a, AG_F32);
	for (int k = 0; k < 3; k++)
		expect_shape(y[k], 2, SHAPE(0, 3));
	s = ag_sum(y[1]);
	cr_assert_eq(ag_backward(s, NULL, NULL), 0, "%s", ag_errmsg());
	g = ag_tensor_grad(b); /* no element of b was chosen */
	expect(g, (const double[]){ 0, 0, 0 }, 3, 0, "where empty grad");
	ag_tensor_put(g);
	g = ag_tensor_grad(a);
	expect_shape(g, 2, SHAPE(0, 3));
	ag_tensor_put(g);
	put_all(y, 3);
	put_all((struct ag_tensor *[]){ a, b, c, s }, 4);
	AG_ASSERT_NO_LEAKS();
}

/*
 * index_select's backward reads the gradient through its strides: an
 * expanded one (a sum's), a transposed inner span, permuted outer dims,
 * and inner dims that are no single span (read from a copy), each against
 * a loop over the index.
 */
static void strided_grad_case(int nd, const int64_t *ashape, int dim, int t0,
			      int t1)
{
	const int64_t iv[4] = { 4, 1, 4, 0 };
	int64_t ys[AG_MAX_DIMS], zs[AG_MAX_DIMS], n = 1, ostr[AG_MAX_DIMS];
	struct ag_tensor *a = rnd(nd, ashape, -1, 1);
	struct ag_tensor *i = idx_of(1, SHAPE(4), iv), *y, *z, *w, *p, *s, *g;
	double *want, *wv;

	memcpy(ys, ashape, sizeof(*ys) * (size_t)nd);
	ys[dim] = 4;
	memcpy(zs, ys, sizeof(*zs) * (size_t)nd);
	zs[t0] = ys[t1];
	zs[t1] = ys[t0];
	for (int d = 0; d < nd; d++)
		n *= ys[d];
	wv = malloc(sizeof(double) * (size_t)n);
	for (int k = 0; k < n; k++)
		wv[k] = 0.5 * (k + 1);
	y = ag_index_select(a, dim, i);
	z = t0 == t1 ? ag_tensor_get(y) : ag_transpose(y, t0, t1);
	w = ag_from_data(AG_F64, nd, zs, wv);
	/* t0 == t1: sum(y) alone, an expanded gradient of ones */
	p = t0 == t1 ? ag_tensor_get(z) : ag_mul(z, w);
	s = ag_sum(p);
	cr_assert_eq(ag_backward(s, NULL, NULL), 0, "%s", ag_errmsg());
	g = ag_tensor_grad(a);
	want = calloc((size_t)ag_tensor_numel(a), sizeof(double));
	ag__contiguous_strides(nd, ashape, ostr);
	for (int64_t e = 0; e < n; e++) { /* e: element of y, row-major */
		int64_t c[AG_MAX_DIMS], r = e, zo = 0, zstr[AG_MAX_DIMS],
					ao = 0;

		for (int d = nd - 1; d >= 0; d--) {
			c[d] = r % ys[d];
			r /= ys[d];
		}
		ag__contiguous_strides(nd, zs, zstr);
		for (int d = 0; d < nd; d++) {
			int zd = d == t0 ? t1 : d == t1 ? t0 : d;

			zo += c[d] * zstr[zd];
			ao += (d == dim ? iv[c[d]] : c[d]) * ostr[d];
		}
		want[ao] += t0 == t1 ? 1 : wv[zo];
	}
	expect(g, want, ag_tensor_numel(a), 1e-15, "strided gradient");
	free(want);
	free(wv);
	put_all((struct ag_tensor *[]){ a, i, y, z, w, p, s, g }, 8);
}

Test(ops_index, index_select_strided_gradients)
{
	strided_grad_case(2, SHAPE(5, 3), 0, 0, 0); /* expanded */
	strided_grad_case(2, SHAPE(5, 3), 0, 0, 1); /* inner stride 4 */
	strided_grad_case(3, SHAPE(2, 5, 3), 1, 0, 2); /* outer permuted */
	strided_grad_case(3, SHAPE(5, 2, 3), 0, 1, 2); /* no single span */
	AG_ASSERT_NO_LEAKS();
}
