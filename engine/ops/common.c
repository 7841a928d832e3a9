// SPDX-License-Identifier: MIT
/*
 * Shared machinery of the ops: checks, broadcasting and the elementwise
 * drivers that hand rows to simd/.
 */
#include <string.h>

#include <ag/mode.h>

#include "ops.h"
#include "small.h"

int ag__check_float(const char *fn, const struct ag_tensor *t)
{
	if (t->dtype == AG_F32 || t->dtype == AG_F64)
		return 0;
	return ag__err(
		AG_EDTYPE,
		"%s: expected a floating point tensor (f32 or f64), got %s", fn,
		ag_dtype_name(t->dtype));
}

int ag__check_same_dtype(const char *fn, const struct ag_tensor *a,
			 const struct ag_tensor *b)
{
	if (a->dtype != b->dtype)
		return ag__err(
			AG_EDTYPE,
			"%s: expected both operands to have the same dtype, got %s and %s",
			fn, ag_dtype_name(a->dtype), ag_dtype_name(b->dtype));
	return ag__check_float(fn, a);
}

int ag__wrap_dim(const char *fn, int dim, int ndim, int *out)
{
	int n = ndim ? ndim : 1;

	if (dim < -n || dim >= n)
		return ag__err(
			AG_EINVAL,
			"%s: dimension out of range (expected to be in range of [%d, %d], but got %d)",
			fn, -n, n - 1, dim);
	*out = dim < 0 ? dim + n : dim;
	return 0;
}

int ag__broadcast_shape(const char *fn, const struct ag_tensor *a,
			const struct ag_tensor *b, int *ndim, int64_t *shape)
{
	int n = a->ndim > b->ndim ? a->ndim : b->ndim;

	for (int i = 0; i < n; i++) {
		int da = a->ndim - n + i, db = b->ndim - n + i;
		int64_t sa = da >= 0 ? a->shape[da] : 1;
		int64_t sb = db >= 0 ? b->shape[db] : 1;

		if (sa != sb && sa != 1 && sb != 1) {
			struct ag__shape_str x, y;

			return ag__err(
				AG_ESHAPE,
				"%s: shapes %s and %s cannot be broadcast (dim %d: %ld vs %ld)",
				fn, ag__shape_of(&x, a), ag__shape_of(&y, b), i,
				(long)sa, (long)sb);
		}
		shape[i] = sa == 1 ? sb : sa;
	}
	*ndim = n;
	return 0;
}

void ag__broadcast_strides(const struct ag_tensor *t, int ndim,
			   const int64_t *shape, int64_t *strides)
{
	for (int i = 0; i < ndim; i++) {
		int d = t->ndim - ndim + i;

		strides[i] = (d < 0 || t->shape[d] == 1) ? 0 : t->strides[d];
		(void)shape;
	}
}

/* ---- the simd/ kernels for a tensor dtype (f32 or f64) ---- */

/* Element off of t's storage; NULL for an absent operand. */
static void *at(const struct ag_tensor *t, int64_t off)
{
	return t ? (char *)t->storage->data +
			       off * (int64_t)ag_dtype_size(t->dtype) :
		   NULL;
}

static void k_unary(enum ag_dtype dt, enum ag_k_unary op, int64_t n,
		    const void *x, int64_t ix, void *y, int64_t iy,
		    const struct ag_k_params *p)
{
	if (dt == AG_F32) {
		if (!ag_k_small_unary_f32(op, n, x, ix, y, iy, p))
			ag_k_unary_f32(op, n, x, ix, y, iy, p);
	} else {
		if (!ag_k_small_unary_f64(op, n, x, ix, y, iy, p))
			ag_k_unary_f64(op, n, x, ix, y, iy, p);
	}
}

static void k_binary(enum ag_dtype dt, enum ag_k_binary op, int64_t n,
		     const void *a, int64_t ia, const void *b, int64_t ib,
		     void *y, int64_t iy)
{
	ag_k_binary_span(dt == AG_F64, op, n, a, ia, b, ib, y, iy);
}

void ag__k_unary_bwd(enum ag_dtype dt, enum ag_k_unary op, int64_t n,
		     const void *g, int64_t ig, const void *x, int64_t ix,
		     const void *y, int64_t iy, void *gx, int64_t igx,
		     const struct ag_k_params *p)
{
	if (dt == AG_F32) {
		if (!ag_k_small_unary_bwd_f32(op, n, g, ig, y, iy, gx, igx, p))
			ag_k_unary_bwd_f32(op, n, g, ig, x, ix, y, iy, gx, igx,
					   p);
	} else {
		if (!ag_k_small_unary_bwd_f64(op, n, g, ig, y, iy, gx, igx, p))
			ag_k_unary_bwd_f64(op, n, g, ig, x, ix, y, iy, gx, igx,
					   p);
	}
}

void ag__k_binary_bwd(enum ag_dtype dt, enum ag_k_binary op, int64_t n,
		      const void *g, const void *a, const void *b, void *ga,
		      void *gb)
{
	if (dt == AG_F32)
		ag_k_binary_bwd_f32(op, n, g, 1, a, 1, b, 1, ga, 1, gb, 1);
	else
		ag_k_binary_bwd_f64(op, n, g, 1, a, 1, b, 1, ga, 1, gb, 1);
}

/*
 * Operands that are all contiguous are one span: a single kernel call,
 * without setting up the row walker (most of the cost of a small op).
 */
static bool flat2(const struct ag_tensor *a, const struct ag_tensor *b)
{
	return ag_tensor_is_contiguous(a) && ag_tensor_is_contiguous(b);
}

static void unary_rows(enum ag_k_unary op, const struct ag_k_params *p,
		       struct ag_tensor *a, struct ag_tensor *out)
{
	const int64_t *strides[2] = { a->strides, out->strides };
	int64_t base[2] = { a->offset, out->offset };
	struct ag_walk w;

	if (flat2(a, out)) {
		k_unary(a->dtype, op, a->numel, ag__data(a), 1, ag__data(out),
			1, p);
		return;
	}
	ag__walk_init(&w, a->ndim, a->shape, 2, strides, base);
	while (ag__walk_next(&w))
		k_unary(a->dtype, op, w.inner, at(a, w.off[0]), w.inc[0],
			at(out, w.off[1]), w.inc[1], p);
}

struct ag_tensor *ag__unary_fwd(const char *fn, enum ag_k_unary op,
				const struct ag_k_params *p,
				struct ag_tensor *a)
{
	struct ag_tensor *out;

	if (ag__check_float(fn, a))
		return NULL;
	/* a may be an expanded view whose dense size overflows */
	out = ag__tensor_new(fn, a->dtype, a->ndim, a->shape);
	if (out)
		unary_rows(op, p, a, out);
	return out;
}

void ag__unary_into(enum ag_k_unary op, const struct ag_k_params *p,
		    struct ag_tensor *dst)
{
	unary_rows(op, p, dst, dst);
}

static void binary_rows(enum ag_k_binary op, int ndim, const int64_t *shape,
			struct ag_tensor *a, const int64_t *sa,
			struct ag_tensor *b, const int64_t *sb,
			struct ag_tensor *out)
{
	const int64_t *strides[3] = { sa, sb, out->strides };
	int64_t base[3] = { a->offset, b->offset, out->offset };
	struct ag_walk w;

	/* same shape (no broadcast) and all contiguous: one span */
	if (a->numel == out->numel && b->numel == out->numel && flat2(a, b) &&
	    ag_tensor_is_contiguous(out)) {
		k_binary(a->dtype, op, out->numel, ag__data(a), 1, ag__data(b),
			 1, ag__data(out), 1);
		return;
	}
	ag__walk_init(&w, ndim, shape, 3, strides, base);
	while (ag__walk_next(&w))
		k_binary(a->dtype, op, w.inner, at(a, w.off[0]), w.inc[0],
			 at(b, w.off[1]), w.inc[1], at(out, w.off[2]),
			 w.inc[2]);
}

struct ag_tensor *ag__binary_fwd(const char *fn, enum ag_k_binary op,
				 struct ag_tensor *a, struct ag_tensor *b)
{
	int64_t shape[AG_MAX_DIMS], sa[AG_MAX_DIMS], sb[AG_MAX_DIMS];
	struct ag_tensor *out;
	int ndim;

	if (ag__check_same_dtype(fn, a, b) ||
	    ag__broadcast_shape(fn, a, b, &ndim, shape))
		return NULL;
	out = ag__tensor_new(fn, a->dtype, ndim, shape);
	if (!out)
		return NULL;
	ag__broadcast_strides(a, ndim, shape, sa);
	ag__broadcast_strides(b, ndim, shape, sb);
	binary_rows(op, ndim, shape, a, sa, b, sb, out);
	return out;
}

void ag__binary_into(enum ag_k_binary op, struct ag_tensor *dst,
		     struct ag_tensor *src)
{
	int64_t ss[AG_MAX_DIMS];

	ag__broadcast_strides(src, dst->ndim, dst->shape, ss);
	binary_rows(op, dst->ndim, dst->shape, dst, dst->strides, src, ss, dst);
}

struct ag_tensor *ag__unary_bwd(enum ag_k_unary op, const struct ag_k_params *p,
				struct ag_tensor **gp, struct ag_tensor *x,
				struct ag_tensor *y)
{
	struct ag_tensor *g = *gp, *out;
	const int64_t *strides[4];
	int64_t base[4] = { g->offset, x ? x->offset : 0, y ? y->offset : 0,
			    0 };
	struct ag_walk w;

	/*
	 * A gradient nobody else can see is overwritten with the result and
	 * passed on: a chain of elementwise nodes then runs in one buffer.
	 * The kernels are elementwise, so out aliasing g is safe.
	 */
	if (ag__exclusive(g)) {
		out = g;
		*gp = NULL;
	} else {
		out = ag__tensor_like(g);
		if (!out)
			return NULL;
	}
	if (flat2(g, out) && (!x || ag_tensor_is_contiguous(x)) &&
	    (!y || ag_tensor_is_contiguous(y))) {
		ag__k_unary_bwd(g->dtype, op, g->numel, ag__data(g), 1,
				x ? ag__data(x) : NULL, 1,
				y ? ag__data(y) : NULL, 1, ag__data(out), 1, p);
		return out;
	}
	/* absent operands walk g's geometry; the kernel does not read them */
	strides[0] = g->strides;
	strides[1] = x ? x->strides : g->strides;
	strides[2] = y ? y->strides : g->strides;
	strides[3] = out->strides;
	ag__walk_init(&w, g->ndim, g->shape, 4, strides, base);
	while (ag__walk_next(&w))
		ag__k_unary_bwd(g->dtype, op, w.inner, at(g, w.off[0]),
				w.inc[0], at(x, w.off[1]), w.inc[1],
				at(y, w.off[2]), w.inc[2], at(out, w.off[3]),
				w.inc[3], p);
	return out;
}

void ag__for_lanes(int ndim, const int64_t *shape, int dim, int nt,
		   struct ag_tensor *const *t,
		   void (*fn)(void *ctx, const int64_t *off), void *ctx)
{
	int64_t kshape[AG_MAX_DIMS], base[AG_WALK_MAX_OPS];
	const int64_t *strides[AG_WALK_MAX_OPS];
	struct ag_walk w;

	int64_t lanes = 1;

	for (int d = 0; d < ndim; d++) {
		kshape[d] = d == dim ? 1 : shape[d];
		/*
		 * An empty lane dim leaves the others unbounded (only the
		 * element count is): so many lanes cannot have an output to
		 * fill, and an op without one (softmax of an empty tensor)
		 * has nothing to do.
		 */
		if (__builtin_mul_overflow(lanes, kshape[d], &lanes))
			return;
	}
	for (int k = 0; k < nt; k++) {
		strides[k] = t[k]->strides;
		base[k] = t[k]->offset;
	}
	ag__walk_init(&w, ndim, kshape, nt, strides, base);
	while (ag__walk_next(&w)) {
		for (int64_t i = 0; i < w.inner; i++) {
			int64_t off[AG_WALK_MAX_OPS];

			for (int k = 0; k < nt; k++)
				off[k] = w.off[k] + i * w.inc[k];
			fn(ctx, off);
		}
	}
}

struct ag_tensor *ag__lanes_out(const char *fn, struct ag_tensor *x, int dim)
{
	int64_t kshape[AG_MAX_DIMS];

	for (int d = 0; d < x->ndim; d++)
		kshape[d] = d == dim ? 1 : x->shape[d];
	return ag__tensor_new(fn, x->dtype, x->ndim, kshape);
}

struct ag_tensor *ag__lanes_result(struct ag_tensor *kept, int dim,
				   bool keepdim)
{
	int64_t shape[AG_MAX_DIMS];
	struct ag_tensor *r;
	int n = 0;

	if (!kept || keepdim || !kept->ndim)
		return kept;
	for (int d = 0; d < kept->ndim; d++)
		if (d != dim)
			shape[n++] = kept->shape[d];
	/* the same dense values, one dim fewer */
	r = ag__tensor_on(kept->storage, kept->dtype, n, shape);
	ag_tensor_put(kept);
	return r;
}

struct ag_tensor *ag__sum_to(struct ag_tensor *g, int ndim,
			     const int64_t *shape)
{
	struct ag_tensor *cur = ag_tensor_get(g);
	int lead = g->ndim - ndim;

	if (g->ndim == ndim && ag__shape_eq(ndim, g->shape, shape))
		return cur;
	for (int d = g->ndim - 1; d >= 0 && cur; d--) {
		int sd = d - lead;
		struct ag_tensor *next;

		if (sd >= 0 && shape[sd] == g->shape[d])
			continue;
		/* leading dims vanish; broadcast dims of size 1 stay */
		next = ag_sum_dim(cur, d, sd >= 0);
		ag_tensor_put(cur);
		cur = next;
	}
	return cur;
}

struct ag_tensor *ag__finish(struct ag_tensor *out, struct ag_node *n,
			     struct ag_tensor *const *in, int nin,
			     const char *fwd_op)
{
	if (!out) {
		ag__node_put(n);
		return NULL;
	}
	if (n && ag__record(n, in, nin, &out, 1, fwd_op)) {
		ag_tensor_put(out);
		return NULL;
	}
	return ag__scope_add(out);
}

/*
 * 0 where x <= 0, else 1: a constant, not recorded.  NaN gets 1, as the
 * gradient passes there in torch's threshold_backward (result <= 0 ? 0 : g).
 */
struct ag_tensor *ag__positive_mask(struct ag_tensor *x)
{
	struct ag_tensor *one =
		ag__tensor_new("relu", x->dtype, x->ndim, x->shape);

	if (!one)
		return NULL;
	for (int64_t i = 0; i < x->numel; i++) {
		double v = ag__get(x, i) <= 0 ? 0.0 : 1.0;

		if (x->dtype == AG_F32)
			((float *)one->storage->data)[i] = (float)v;
		else
			((double *)one->storage->data)[i] = v;
	}
	return one;
}
