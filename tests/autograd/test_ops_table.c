// SPDX-License-Identifier: MIT
/*
 * Every elementwise, reduction and matrix op through one harness, one line
 * per op (as ggml's test-backend-ops does).  For each op and each input
 * layout (contiguous, transposed, every other column):
 *   - gradcheck and gradgradcheck in f64 against finite differences;
 *   - the f32 forward and the gradient of sum(y) against the f64 ones;
 *   - a NULL in each input slot fails with AG_EINVAL and leaks nothing;
 *     a binary op also refuses shapes that do not broadcast (AG_ESHAPE)
 *     and mixed dtypes (AG_EDTYPE).
 * A new op joins with one line in OPS below.  Values against torch live
 * in the other suites; this one checks that every op's backward agrees
 * with its forward on every layout.
 */
#include "common.h"

/* input domains: ANY is [-1, 1) kept 0.1 away from 0, POS is [0.2, 2.2) */
enum domain { ANY, POS };

#define M 3
#define N 4

/*
 * X(name, inputs, domain, broadcasts, expression over x[]): the expression
 * makes the op's output from inputs x[0..inputs) of shape [M, N]; when
 * broadcasts is true the second input is also tried as [1, N].
 */
#define OPS(X)                                                         \
	X(neg, 1, ANY, false, ag_neg(x[0]))                            \
	X(exp, 1, ANY, false, ag_exp(x[0]))                            \
	X(log, 1, POS, false, ag_log(x[0]))                            \
	X(tanh, 1, ANY, false, ag_tanh(x[0]))                          \
	X(sin, 1, ANY, false, ag_sin(x[0]))                            \
	X(cos, 1, ANY, false, ag_cos(x[0]))                            \
	X(tan, 1, ANY, false, ag_tan(x[0]))                            \
	X(sigmoid, 1, ANY, false, ag_sigmoid(x[0]))                    \
	X(relu, 1, ANY, false, ag_relu(x[0]))                          \
	X(abs, 1, ANY, false, ag_abs(x[0]))                            \
	X(expm1, 1, ANY, false, ag_expm1(x[0]))                        \
	X(log1p, 1, POS, false, ag_log1p(x[0]))                        \
	X(sqrt, 1, POS, false, ag_sqrt(x[0]))                          \
	X(rsqrt, 1, POS, false, ag_rsqrt(x[0]))                        \
	X(square, 1, ANY, false, ag_square(x[0]))                      \
	X(reciprocal, 1, POS, false, ag_reciprocal(x[0]))              \
	X(gelu, 1, ANY, false, ag_gelu(x[0]))                          \
	X(silu, 1, ANY, false, ag_silu(x[0]))                          \
	X(softplus, 1, ANY, false, ag_softplus(x[0]))                  \
	X(erf, 1, ANY, false, ag_erf(x[0]))                            \
	X(atan, 1, ANY, false, ag_atan(x[0]))                          \
	X(add_scalar, 1, ANY, false, ag_add_scalar(x[0], 0.75))        \
	X(mul_scalar, 1, ANY, false, ag_mul_scalar(x[0], -1.5))        \
	X(pow_scalar, 1, POS, false, ag_pow_scalar(x[0], 2.5))         \
	X(clamp, 1, ANY, false, ag_clamp(x[0], -0.55, 0.45))           \
	X(leaky_relu, 1, ANY, false, ag_leaky_relu(x[0], 0.1))         \
	X(add, 2, ANY, true, ag_add(x[0], x[1]))                       \
	X(sub, 2, ANY, true, ag_sub(x[0], x[1]))                       \
	X(mul, 2, ANY, true, ag_mul(x[0], x[1]))                       \
	X(div, 2, POS, true, ag_div(x[0], x[1]))                       \
	X(maximum, 2, ANY, true, ag_maximum(x[0], x[1]))               \
	X(minimum, 2, ANY, true, ag_minimum(x[0], x[1]))               \
	X(pow, 2, POS, true, ag_pow(x[0], x[1]))                       \
	X(where, 2, ANY, true, where_positive(x[0], x[1]))             \
	X(matmul, 2, ANY, true, matmul_bt(x[0], x[1]))                 \
	X(sum, 1, ANY, false, ag_sum(x[0]))                            \
	X(mean, 1, ANY, false, ag_mean(x[0]))                          \
	X(sum_dim, 1, ANY, false, ag_sum_dim(x[0], 1, false))          \
	X(mean_dim, 1, ANY, false, ag_mean_dim(x[0], 0, true))         \
	X(logsumexp, 1, ANY, false, ag_logsumexp(x[0], 1, false))      \
	X(max_dim, 1, ANY, false, ag_max_dim(x[0], 0, false))          \
	X(var_dim, 1, ANY, false, ag_var_dim(x[0], 1, true, false))    \
	X(softmax, 1, ANY, false, ag_softmax(x[0], 1))                 \
	X(log_softmax, 1, ANY, false, ag_log_softmax(x[0], 0))         \
	X(mse_loss, 2, ANY, true, ag_mse_loss(x[0], x[1]))             \
	X(bce_with_logits, 2, ANY, false, bce_prob_target(x[0], x[1])) \
	X(cat, 2, ANY, true, cat_rows(x[0], x[1]))                     \
	X(stack, 2, ANY, false, stack_last(x[0], x[1]))

/* b transposed, so that both inputs have the table's one shape */
static struct ag_tensor *matmul_bt(struct ag_tensor *a, struct ag_tensor *b)
{
	struct ag_scope *s = ag_scope_begin();
	struct ag_tensor *y = ag_matmul(a, ag_transpose(b, 0, 1));

	ag_tensor_get(y);
	ag_scope_end(s);
	return y;
}

/* a where b > 0, else b: the condition is data, not differentiated */
static struct ag_tensor *where_positive(struct ag_tensor *a,
					struct ag_tensor *b)
{
	struct ag_scope *s = ag_scope_begin();
	struct ag_tensor *zero = ag_zeros(ag_tensor_dtype(b), 0, NULL);
	struct ag_tensor *y = ag_where(ag_gt(b, zero), a, b);

	ag_tensor_get(y);
	ag_scope_end(s);
	return y;
}

/* targets in (0, 1) made from b, so that they are probabilities */
static struct ag_tensor *bce_prob_target(struct ag_tensor *a,
					 struct ag_tensor *b)
{
	struct ag_scope *s = ag_scope_begin();
	struct ag_tensor *y = ag_bce_with_logits(a, ag_sigmoid(b));

	ag_tensor_get(y);
	ag_scope_end(s);
	return y;
}

static struct ag_tensor *cat_rows(struct ag_tensor *a, struct ag_tensor *b)
{
	struct ag_tensor *ts[2] = { a, b };

	return ag_cat(ts, 2, 0);
}

static struct ag_tensor *stack_last(struct ag_tensor *a, struct ag_tensor *b)
{
	struct ag_tensor *ts[2] = { a, b };

	return ag_stack(ts, 2, -1);
}

typedef struct ag_tensor *(*op_fn)(struct ag_tensor *const *x);

struct op_row {
	const char *name;
	int nin;
	enum domain dom;
	bool broadcasts; /* a second input of [1, N] is allowed */
	op_fn f;
};

#define DEFINE_OP(name, nin, dom, bc, expr)                            \
	static struct ag_tensor *op_##name(struct ag_tensor *const *x) \
	{                                                              \
		return expr;                                           \
	}
OPS(DEFINE_OP)

/* ---- layouts: the leaves are contiguous, the op sees a view ---- */

enum layout { CONTIGUOUS, TRANSPOSED, STRIDED, LAYOUTS };

static const char *const layout_name[LAYOUTS] = { "contiguous", "transposed",
						  "every other column" };

/* the leaf's shape for a layout: the view of it is [rows, N] */
static void leaf_shape(enum layout l, int64_t rows, int64_t shape[2])
{
	shape[0] = l == TRANSPOSED ? N : rows;
	shape[1] = l == TRANSPOSED ? rows : l == STRIDED ? 2 * N : N;
}

/* a new [rows, N] view of leaf in layout l */
static struct ag_tensor *view_of(struct ag_tensor *leaf, enum layout l)
{
	switch (l) {
	case TRANSPOSED:
		return ag_transpose(leaf, 0, 1);
	case STRIDED:
		return ag_slice(leaf, 1, 0, 2 * N, 2);
	default:
		return ag_tensor_get(leaf);
	}
}

struct call {
	const struct op_row *row;
	enum layout layout;
};

/* ag_fn: the views, then the op */
static int run_op(struct ag_tensor *const *in, int nin, struct ag_tensor **out,
		  void *arg)
{
	const struct call *c = arg;
	struct ag_tensor *v[2] = { NULL, NULL };
	int rc = 0;

	for (int i = 0; i < nin; i++)
		v[i] = view_of(in[i], c->layout);
	*out = c->row->f(v);
	if (!*out)
		rc = -ag_errcode();
	for (int i = 0; i < nin; i++)
		ag_tensor_put(v[i]);
	return rc;
}

static struct ag_tensor *leaf(struct ag_generator *g, enum domain dom,
			      enum layout l, int64_t rows)
{
	int64_t shape[2];
	struct ag_tensor *t;
	double *p;

	leaf_shape(l, rows, shape);
	t = ag_rand(g, AG_F64, 2, shape);
	cr_assert_not_null(t, "%s", ag_errmsg());
	p = ag_tensor_data(t);
	for (int64_t i = 0; i < ag_tensor_numel(t); i++) {
		if (dom == POS) {
			p[i] = 0.2 + 2 * p[i];
			continue;
		}
		p[i] = 2 * p[i] - 1;
		if (fabs(p[i]) < 0.1)
			p[i] = p[i] < 0 ? -0.1 - p[i] : 0.1 + p[i];
	}
	cr_assert_eq(ag_tensor_set_requires_grad(t, true), 0, "%s",
		     ag_errmsg());
	return t;
}

/* |a - b| <= atol + rtol |b| elementwise, over two tensors of one shape */
static void assert_close(struct ag_tensor *a, struct ag_tensor *b, double atol,
			 double rtol, const char *what)
{
	struct ag_scope *s = ag_scope_begin();
	struct ag_tensor *a64 = ag_contiguous(ag_to(a, AG_F64));
	struct ag_tensor *b64 = ag_contiguous(ag_to(b, AG_F64));
	const double *pa, *pb;
	int64_t n;

	cr_assert(a64 && b64, "%s: %s", what, ag_errmsg());
	cr_assert_eq(ag_tensor_numel(a64), ag_tensor_numel(b64), "%s", what);
	pa = ag_tensor_data(a64);
	pb = ag_tensor_data(b64);
	n = ag_tensor_numel(a64);
	for (int64_t i = 0; i < n; i++)
		cr_assert(fabs(pa[i] - pb[i]) <= atol + rtol * fabs(pb[i]),
			  "%s: element %lld is %.9g, want %.9g", what,
			  (long long)i, pa[i], pb[i]);
	ag_scope_end(s);
}

/* forward and d(sum y)/dx of one dtype; grads[] get new references */
static struct ag_tensor *forward_backward(struct call *c, struct ag_tensor **x,
					  struct ag_tensor **grads)
{
	struct ag_tensor *y = NULL, *s;

	cr_assert_eq(run_op(x, c->row->nin, &y, c), 0, "%s", ag_errmsg());
	s = ag_sum(y);
	cr_assert_eq(ag_backward(s, NULL, NULL), 0, "%s", ag_errmsg());
	ag_tensor_put(s);
	for (int i = 0; i < c->row->nin; i++) {
		grads[i] = ag_tensor_grad(x[i]);
		cr_assert_not_null(grads[i], "input %d has no gradient", i);
	}
	return y;
}

static void check_f32(struct call *c, struct ag_tensor **x64)
{
	struct ag_tensor *x32[2] = { NULL, NULL }, *g64[2] = { NULL, NULL };
	struct ag_tensor *g32[2] = { NULL, NULL }, *y64, *y32;
	char what[96];

	for (int i = 0; i < c->row->nin; i++) {
		struct ag_tensor *d = ag_detach(x64[i]);

		x32[i] = ag_to(d, AG_F32);
		ag_tensor_put(d);
		cr_assert_eq(ag_tensor_set_requires_grad(x32[i], true), 0, "%s",
			     ag_errmsg());
	}
	y64 = forward_backward(c, x64, g64);
	y32 = forward_backward(c, x32, g32);
	cr_assert_eq(ag_tensor_dtype(y32), AG_F32);
	snprintf(what, sizeof(what), "%s f32 forward", c->row->name);
	assert_close(y32, y64, 1e-5, 1e-5, what);
	for (int i = 0; i < c->row->nin; i++) {
		snprintf(what, sizeof(what), "%s f32 gradient %d", c->row->name,
			 i);
		assert_close(g32[i], g64[i], 1e-4, 1e-4, what);
		ag_tensor_put(g32[i]);
		ag_tensor_put(g64[i]);
		ag_tensor_put(x32[i]);
	}
	ag_tensor_put(y32);
	ag_tensor_put(y64);
}

static void check_bad_inputs(const struct op_row *row, struct ag_tensor **x)
{
	struct ag_scope *s = ag_scope_begin();
	struct ag_tensor *v[2];

	for (int k = 0; k < row->nin; k++) {
		for (int i = 0; i < row->nin; i++)
			v[i] = i == k ? NULL : x[i];
		ag_clear_error();
		cr_assert_null(row->f(v), "%s: NULL input %d accepted",
			       row->name, k);
		cr_assert_eq(ag_errcode(), AG_EINVAL,
			     "%s: NULL input %d: %s (%s)", row->name, k,
			     ag_strerror(ag_errcode()), ag_errmsg());
	}
	if (row->nin == 2) {
		struct ag_tensor *odd =
			ag_zeros(AG_F64, 2, (int64_t[]){ 5, 2 });
		struct ag_tensor *f32 = ag_to(x[1], AG_F32);

		v[0] = x[0];
		v[1] = odd;
		cr_assert_null(row->f(v),
			       "%s: shapes [3, 4] and [5, 2] accepted",
			       row->name);
		cr_assert_eq(ag_errcode(), AG_ESHAPE, "%s: %s", row->name,
			     ag_errmsg());
		v[1] = f32;
		cr_assert_null(row->f(v), "%s: f64 with f32 accepted",
			       row->name);
		cr_assert_eq(ag_errcode(), AG_EDTYPE, "%s: %s", row->name,
			     ag_errmsg());
	}
	ag_scope_end(s);
	ag_clear_error();
}

/*
 * Shapes: every input [M, N]; then, for a binary op that broadcasts, the
 * second input [1, N], which exercises the sum back to a broadcast shape.
 */
enum shapes { SAME, BROADCAST_ROW, SHAPES };

static void run_case(const struct op_row *row, struct ag_generator *g,
		     enum layout l, enum shapes sh)
{
	struct call c = { row, l };
	struct ag_tensor *x[2] = { NULL, NULL };
	int rc;

	for (int i = 0; i < row->nin; i++)
		x[i] = leaf(g, row->dom, l, sh == BROADCAST_ROW && i ? 1 : M);
	rc = ag_gradcheck(run_op, &c, x, row->nin, NULL);
	cr_assert_eq(rc, 0, "%s, %s%s: gradcheck: %s", row->name,
		     layout_name[l], sh ? ", broadcast" : "", ag_errmsg());
	rc = ag_gradgradcheck(run_op, &c, x, row->nin, NULL);
	cr_assert_eq(rc, 0, "%s, %s%s: gradgradcheck: %s", row->name,
		     layout_name[l], sh ? ", broadcast" : "", ag_errmsg());
	check_f32(&c, x);
	if (l == CONTIGUOUS && sh == SAME)
		check_bad_inputs(row, x);
	for (int i = 0; i < row->nin; i++)
		ag_tensor_put(x[i]);
}

static void run_row(const struct op_row *row)
{
	struct ag_generator *g = ag_generator_new(2024);

	for (int sh = 0; sh < SHAPES; sh++) {
		if (sh == BROADCAST_ROW && (row->nin < 2 || !row->broadcasts))
			continue;
		for (int l = 0; l < LAYOUTS; l++)
			run_case(row, g, (enum layout)l, (enum shapes)sh);
	}
	ag_generator_free(g);
	AG_ASSERT_NO_LEAKS();
}

#define TEST_OP(name, nin, dom, bc, expr)                               \
	Test(ops_table, name)                                           \
	{                                                               \
		static const struct op_row row = { #name, nin, dom, bc, \
						   op_##name };         \
		run_row(&row);                                          \
	}
OPS(TEST_OP)

/*
 * An empty tensor may have other dims of any size ([0, 2^40, 2^40] holds
 * nothing): no op may multiply those sizes together, which overflows
 * int64_t (undefined behaviour that UBSan stops on).  Each op runs forward
 * and backward on such shapes and must give an empty result.
 */
Test(ops_table, empty_tensors_with_huge_dims)
{
	const int64_t big = INT64_C(1) << 40;
	int64_t s3[3] = { 0, big, big }, s4[4] = { 0, big, big, 4 };
	int64_t sr[3] = { big, big, 0 };
	struct ag_scope *s = ag_scope_begin();
	struct ag_tensor *a = ag_zeros(AG_F32, 3, s3);
	struct ag_tensor *x = ag_zeros(AG_F32, 4, s4);
	struct ag_tensor *r = ag_zeros(AG_F32, 3, sr);
	struct ag_tensor *w = ag_ones(AG_F32, 2, (int64_t[]){ 3, 4 });
	struct ag_tensor *idx = ag_zeros(AG_I64, 1, (int64_t[]){ 0 });
	struct ag_tensor *ts[2];
	struct ag_tensor *y[8];
	int ny = 0;

	cr_assert(a && x && r && w && idx, "%s", ag_errmsg());
	ag_tensor_set_requires_grad(a, true);
	ag_tensor_set_requires_grad(x, true);
	ag_tensor_set_requires_grad(r, true);
	ag_tensor_set_requires_grad(w, true);
	y[ny++] = ag_index_select(a, 0, idx);
	y[ny++] = ag_index_select(r, 2, idx);
	y[ny++] = ag_linear(x, w, NULL);
	ts[0] = a;
	ts[1] = a;
	y[ny++] = ag_cat(ts, 2, 1);
	y[ny++] = ag_stack(ts, 2, 0);
	y[ny++] = ag_sum_dim(r, 0, false);
	y[ny++] = ag_softmax(a, 1);
	y[ny++] = ag_reshape(a, 2, (int64_t[]){ big, 0 });
	for (int i = 0; i < ny; i++) {
		cr_assert_not_null(y[i], "op %d: %s", i, ag_errmsg());
		cr_assert_eq(ag_tensor_numel(y[i]), 0, "op %d", i);
		cr_assert_eq(ag_backward(ag_sum(y[i]), NULL, NULL), 0,
			     "op %d backward: %s", i, ag_errmsg());
	}
	ag_scope_end(s);
	AG_ASSERT_NO_LEAKS();
}
