// SPDX-License-Identifier: MIT
/*
 * Indexing with AG_I64 index tensors: index_select and its adjoint
 * index_add (internal), gather and its adjoint scatter_add, and embedding
 * (index_select of rows).  Every index is checked against its bound before
 * anything is read.  Each op's backward is the adjoint op, itself recorded,
 * so double backward works.
 */
#include <inttypes.h>
#include <string.h>

#include <ag/pool.h>

#include "ops.h"

static const char *const saved_index[] = { "index" };

/* ---- index checks ---- */

static int check_index_dtype(const char *fn, const struct ag_tensor *idx)
{
	if (idx->dtype == AG_I64)
		return 0;
	return ag__err(AG_EDTYPE, "%s: index must be an i64 tensor, got %s", fn,
		       ag_dtype_name(idx->dtype));
}

/*
 * idx's values as a dense array (*copy holds them when idx is not
 * contiguous), each checked to lie in [0, bound).
 */
static const int64_t *index_data(const char *fn, struct ag_tensor *idx, int dim,
				 int64_t bound, struct ag_tensor **copy)
{
	const int64_t *v;

	*copy = NULL;
	if (!ag_tensor_is_contiguous(idx) &&
	    !(*copy = ag__contiguous_copy(idx)))
		return NULL;
	v = ag__data(*copy ? *copy : idx);
	for (int64_t i = 0; i < idx->numel; i++) {
		if (v[i] >= 0 && v[i] < bound)
			continue;
		ag__err(AG_EINVAL,
			"%s: index %" PRId64
			" is out of bounds for dim %d with size %" PRId64,
			fn, v[i], dim, bound);
		ag_tensor_put(*copy);
		*copy = NULL;
		return NULL;
	}
	return v;
}

/* t's dims with a 0-d tensor taken as [1], as torch's gather does. */
static int dims_of(const struct ag_tensor *t, int64_t *shape, int64_t *strides)
{
	if (!t->ndim) {
		shape[0] = 1;
		strides[0] = 1;
		return 1;
	}
	ag__dims_copy(shape, t->shape, t->ndim);
	ag__dims_copy(strides, t->strides, t->ndim);
	return t->ndim;
}

/* Sizes before and after dim of a contiguous layout. */
static void outer_inner(int ndim, const int64_t *shape, int dim, int64_t *outer,
			int64_t *inner)
{
	*outer = ag__dims_prod(ndim, shape, 0, dim);
	*inner = ag__dims_prod(ndim, shape, dim + 1, ndim);
}

static struct ag_tensor *zeros_of(const char *fn, enum ag_dtype dt, int ndim,
				  const int64_t *shape)
{
	struct ag_tensor *z = ag__tensor_new(fn, dt, ndim, shape);

	if (z)
		memset(z->storage->data, 0, z->storage->nbytes);
	return z;
}

/* ---- index_add: the adjoint of index_select ---- */

struct index_node {
	struct ag_node node;
	int dim;
	int ndim;
	int64_t shape[AG_MAX_DIMS]; /* the input's */
	struct ag_saved saved[1]; /* index */
};

/*
 * src is read in place through its strides (an expanded gradient, as a
 * mean's, is not copied): the dims before dim are decomposed per outer
 * row, those after it are one span of stride inc.
 */
struct add_ctx {
	const char *src; /* storage data */
	char *out;
	const int64_t *idx;
	int64_t n, outer, inner, size;
	int64_t off, step, inc; /* src's offset, stride along dim, span's */
	int nouter;
	const int64_t *shape, *strides; /* src's, nouter outer dims */
	enum ag_dtype dt;
};

static int64_t outer_off(const struct add_ctx *c, int64_t o)
{
	int64_t off = c->off;

	for (int d = c->nouter - 1; d >= 0; d--) {
		off += (o % c->shape[d]) * c->strides[d];
		o /= c->shape[d];
	}
	return off;
}

/* The stride walking the dims after dim as one span, or false. */
static bool inner_span(int nd, const int64_t *shape, const int64_t *st, int dim,
		       int64_t *inc)
{
	int64_t want = 0;
	bool first = true;

	*inc = 1;
	for (int d = nd - 1; d > dim; d--) {
		if (shape[d] == 1)
			continue;
		if (!first && st[d] != want)
			return false;
		if (first)
			*inc = st[d];
		first = false;
		want = st[d] * shape[d];
	}
	return true;
}

/*
 * Adds the rows whose target row lies in [r0, r1).  A chunk owns its
 * target rows, so no two chunks write one element, and each element sums
 * its rows in index order: the same bits as one serial pass.
 */
static void add_rows(int64_t r0, int64_t r1, void *arg)
{
	const struct add_ctx *c = arg;

	for (int64_t o = 0; o < c->outer; o++) {
		int64_t base = outer_off(c, o);

		for (int64_t i = 0; i < c->n; i++) {
			int64_t t = c->idx[i];
			int64_t s = base + i * c->step;
			int64_t d = (o * c->size + t) * c->inner;

			if (t < r0 || t >= r1)
				continue;
			if (c->dt == AG_F32)
				ag_k_acc_f32(c->inner,
					     (const float *)c->src + s, c->inc,
					     (float *)c->out + d, 1);
			else
				ag_k_acc_f64(c->inner,
					     (const double *)c->src + s, c->inc,
					     (double *)c->out + d, 1);
		}
	}
}

static int index_select_apply(struct ag_node *n, struct ag_tensor **grads,
			      struct ag_tensor **out);

static const struct ag_node_ops index_add_ops = {
	.name = "IndexSelectBackwardBackward",
	.apply = index_select_apply,
	.saved_names = saved_index,
};

/* Elements a chunk adds at least: below that, splitting costs more. */
#define ADD_GRAIN 16384

/*
 * Target rows per chunk: about four chunks per thread for balance, none
 * adding fewer than ADD_GRAIN elements (the whole add when it is small).
 */
static int64_t add_grain(int64_t rows, int64_t work)
{
	int64_t chunks = 4 * (int64_t)ag_get_num_threads();

	if (work / ADD_GRAIN < chunks)
		chunks = work / ADD_GRAIN;
	if (chunks <= 1)
		return rows > 0 ? rows : 1;
	return (rows + chunks - 1) / chunks;
}

/*
 * zeros(shape) with the slices of src added at idx along dim; recorded
 * (its backward is index_select) when src requires grad.  idx is checked.
 */
static struct ag_tensor *index_add(int ndim, const int64_t *shape, int dim,
				   struct ag_tensor *idx, struct ag_tensor *src)
{
	struct add_ctx c = { 0 };
	struct ag_tensor *out, *sc = NULL, *ic = NULL;
	struct index_node *x;
	int64_t sshape[AG_MAX_DIMS], sstr[AG_MAX_DIMS];
	int nd = dims_of(src, sshape, sstr);

	c.size = ndim ? shape[dim] : 1;
	c.idx = index_data("IndexSelectBackward", idx, dim, c.size, &ic);
	out = c.idx ? zeros_of("IndexSelectBackward", src->dtype, ndim, shape) :
		      NULL;
	if (out && !inner_span(nd, sshape, sstr, dim, &c.inc)) {
		/* a layout the span cannot walk: read a dense copy */
		if (!(sc = ag__contiguous_copy(src))) {
			ag_tensor_put(out);
			out = NULL;
		} else {
			ag__contiguous_strides(nd, sshape, sstr);
			c.inc = 1;
		}
	}
	if (!out)
		goto done;
	c.src = (sc ? sc : src)->storage->data;
	c.off = (sc ? sc : src)->offset;
	c.step = sstr[dim];
	c.nouter = dim;
	c.shape = sshape;
	c.strides = sstr;
	c.out = ag__data(out);
	c.n = idx->numel;
	c.dt = src->dtype;
	outer_inner(nd, sshape, dim, &c.outer, &c.inner);
	ag_parallel_for(c.size, add_grain(c.size, src->numel), add_rows, &c);
	if (!ag__should_record(&src, 1))
		goto done;
	x = (struct index_node *)ag__node_alloc(&index_add_ops, sizeof(*x), 0,
						1, 1, NULL, 0);
	if (!x)
		goto fail;
	x->node.saved = x->saved;
	x->node.num_saved = 1;
	x->dim = dim;
	if (ag__save(&x->node, 0, idx, false, 0)) {
		ag__node_put(&x->node);
		goto fail;
	}
	if (!ag__record(&x->node, &src, 1, &out, 1, "IndexSelectBackward"))
		goto done;
fail:
	ag_tensor_put(out);
	out = NULL;
done:
	ag_tensor_put(sc);
	ag_tensor_put(ic);
	return out;
}

/* ---- index_select ---- */

static int index_select_apply(struct ag_node *n, struct ag_tensor **grads,
			      struct ag_tensor **out)
{
	struct index_node *x = ag_container_of(n, struct index_node, node);
	struct ag_tensor *idx;

	if (!grads[0] || !n->next[0].node)
		return 0;
	idx = ag__unpack(n, 0);
	if (!idx)
		return -ag_errcode();
	if (n->ops == &index_add_ops)
		out[0] = ag_index_select(grads[0], x->dim, idx);
	else
		out[0] = index_add(x->ndim, x->shape, x->dim, idx, grads[0]);
	ag_tensor_put(idx);
	return out[0] ? 0 : -ag_errcode();
}

static const struct ag_node_ops index_select_ops = {
	.name = "IndexSelectBackward",
	.apply = index_select_apply,
	.saved_names = saved_index,
};

static struct ag_tensor *record_index(const struct ag_node_ops *ops,
				      struct ag_tensor *out,
				      struct ag_tensor *const *in, int nin,
				      struct ag_tensor *a, int dim,
				      struct ag_tensor *idx, const char *fn)
{
	struct index_node *x = (struct index_node *)ag__node_alloc(
		ops, sizeof(*x), 0, 1, nin, NULL, 0);

	if (!x) {
		ag_tensor_put(out);
		return NULL;
	}
	x->node.saved = x->saved;
	x->node.num_saved = 1;
	x->dim = dim;
	x->ndim = a->ndim;
	ag__dims_copy(x->shape, a->shape, a->ndim);
	if (ag__save(&x->node, 0, idx, false, 0)) {
		ag__node_put(&x->node);
		ag_tensor_put(out);
		return NULL;
	}
	return ag__finish(out, &x->node, in, nin, fn);
}

static struct ag_tensor *select_fwd(struct ag_tensor *a, int dim,
				    const int64_t *iv, int64_t n)
{
	int64_t shape[AG_MAX_DIMS], ashape[AG_MAX_DIMS], astr[AG_MAX_DIMS];
	int64_t outer, inner, size;
	size_t es = ag_dtype_size(a->dtype);
	struct ag_tensor *out, *ac = NULL;
	const char *src;
	char *dst;
	int nd = dims_of(a, ashape, astr);

	ag__dims_copy(shape, a->shape, a->ndim);
	if (a->ndim)
		shape[dim] = n;
	out = ag__tensor_new("ag_index_select", a->dtype, a->ndim, shape);
	if (!out ||
	    (!ag_tensor_is_contiguous(a) && !(ac = ag__contiguous_copy(a)))) {
		ag_tensor_put(out);
		return NULL;
	}
	outer_inner(nd, ashape, dim, &outer, &inner);
	size = ashape[dim];
	src = ag__data(ac ? ac : a);
	dst = ag__data(out);
	for (int64_t o = 0; o < outer && inner; o++)
		for (int64_t i = 0; i < n; i++)
			memcpy(dst + (size_t)((o * n + i) * inner) * es,
			       src + (size_t)((o * size + iv[i]) * inner) * es,
			       (size_t)inner * es);
	ag_tensor_put(ac);
	return out;
}

struct ag_tensor *ag_index_select(struct ag_tensor *a, int dim,
				  struct ag_tensor *idx)
{
	const char *fn = "ag_index_select";
	struct ag_tensor *ic, *out;
	const int64_t *iv;
	struct ag__shape_str buf;

	if (!a)
		return ag__null_arg(fn, "a");
	if (!idx)
		return ag__null_arg(fn, "idx");
	if (check_index_dtype(fn, idx) || ag__wrap_dim(fn, dim, a->ndim, &dim))
		return NULL;
	if (idx->ndim > 1 || (!a->ndim && idx->numel != 1)) {
		ag__err(AG_ESHAPE,
			"%s: index must be 0-d or 1-d (one element for a 0-d input), got %s",
			fn, ag__shape_of(&buf, idx));
		return NULL;
	}
	iv = index_data(fn, idx, dim, a->ndim ? a->shape[dim] : 1, &ic);
	if (!iv)
		return NULL;
	out = select_fwd(a, dim, iv, idx->numel);
	ag_tensor_put(ic);
	if (!out || !ag__should_record(&a, 1))
		return ag__scope_add(out);
	return record_index(&index_select_ops, out, &a, 1, a, dim, idx, fn);
}

/* ---- gather and scatter_add ---- */

/*
 * The walk of gather and scatter_add: over the positions p of idx in
 * row-major order, *off[k] is the element offset in operand k, for k < nt,
 * with operand 0 taking idx's value along dim.
 */
struct pos_walk {
	int nd, dim, nt;
	int64_t shape[AG_MAX_DIMS];
	int64_t strides[3][AG_MAX_DIMS];
	int64_t coord[AG_MAX_DIMS];
	int64_t off[3]; /* with 0 along dim */
};

static void walk_init(struct pos_walk *w, int nd, const int64_t *shape, int dim,
		      int nt, struct ag_tensor *const *t)
{
	int64_t sh[AG_MAX_DIMS];

	memset(w, 0, sizeof(*w));
	w->nd = nd;
	w->dim = dim;
	w->nt = nt;
	memcpy(w->shape, shape, sizeof(*shape) * (size_t)nd);
	for (int k = 0; k < nt; k++) {
		dims_of(t[k], sh, w->strides[k]);
		w->off[k] = t[k]->offset;
	}
}

static void walk_step(struct pos_walk *w)
{
	for (int d = w->nd - 1; d >= 0; d--) {
		for (int k = 0; k < w->nt; k++)
			w->off[k] += w->strides[k][d];
		if (++w->coord[d] < w->shape[d])
			return;
		for (int k = 0; k < w->nt; k++)
			w->off[k] -= w->coord[d] * w->strides[k][d];
		w->coord[d] = 0;
	}
}

/* Offset in operand k of position p: dim's coordinate replaced by v. */
static int64_t walk_at(const struct pos_walk *w, int k, int64_t v)
{
	return w->off[k] + (v - w->coord[w->dim]) * w->strides[k][w->dim];
}

/*
 * Shapes as torch's gather/scatter check them: the same number of dims
 * (0-d counting as 1), idx no larger than a outside dim, nor than src.
 */
static int check_gather_shapes(const char *fn, struct ag_tensor *a, int dim,
			       struct ag_tensor *idx, struct ag_tensor *src)
{
	int64_t as[AG_MAX_DIMS], is[AG_MAX_DIMS], ss[AG_MAX_DIMS];
	int64_t st[AG_MAX_DIMS];
	int na = dims_of(a, as, st), ni = dims_of(idx, is, st);
	int ns = src ? dims_of(src, ss, st) : ni;
	struct ag__shape_str x, y;

	if (na != ni || ns != ni)
		return ag__err(
			AG_ESHAPE,
			"%s: index %s must have as many dims as the input %s%s",
			fn, ag__shape_of(&x, idx), ag__shape_of(&y, a),
			src ? " and src" : "");
	for (int d = 0; d < ni; d++) {
		if (d != dim && is[d] > as[d])
			return ag__err(
				AG_ESHAPE,
				"%s: index %s is larger than the input %s in dim %d",
				fn, ag__shape_of(&x, idx), ag__shape_of(&y, a),
				d);
		if (src && is[d] > ss[d])
			return ag__err(
				AG_ESHAPE,
				"%s: index %s is larger than src %s in dim %d",
				fn, ag__shape_of(&x, idx),
				ag__shape_of(&y, src), d);
	}
	return 0;
}

static int gather_scatter_args(const char *fn, struct ag_tensor *a, int *dim,
			       struct ag_tensor *idx, struct ag_tensor *src)
{
	if (check_index_dtype(fn, idx) || ag__wrap_dim(fn, *dim, a->ndim, dim))
		return -ag_errcode();
	if (src && src->dtype != a->dtype)
		return ag__err(
			AG_EDTYPE,
			"%s: src has dtype %s, expected %s (the input's)", fn,
			ag_dtype_name(src->dtype), ag_dtype_name(a->dtype));
	return check_gather_shapes(fn, a, *dim, idx, src);
}

static const struct ag_node_ops gather_ops;

static int gather_apply(struct ag_node *n, struct ag_tensor **grads,
			struct ag_tensor **out)
{
	struct index_node *x = ag_container_of(n, struct index_node, node);
	struct ag_tensor *idx, *z;

	if (!grads[0])
		return 0;
	idx = ag__unpack(n, 0);
	if (!idx)
		return -ag_errcode();
	if (n->ops == &gather_ops) {
		z = zeros_of("GatherBackward", grads[0]->dtype, x->ndim,
			     x->shape);
		out[0] = z ? ag_scatter_add(z, x->dim, idx, grads[0]) : NULL;
		ag_tensor_put(z);
		ag_tensor_put(idx);
		return out[0] ? 0 : -ag_errcode();
	}
	/* scatter_add: a's gradient passes, src's is gathered */
	if (n->next[0].node)
		out[0] = ag_tensor_get(grads[0]);
	if (n->next[1].node && !(out[1] = ag_gather(grads[0], x->dim, idx))) {
		ag_tensor_put(idx);
		return -ag_errcode();
	}
	ag_tensor_put(idx);
	return 0;
}

static const struct ag_node_ops gather_ops = {
	.name = "GatherBackward",
	.apply = gather_apply,
	.saved_names = saved_index,
};

static const struct ag_node_ops scatter_add_ops = {
	.name = "ScatterAddBackward",
	.apply = gather_apply,
	.saved_names = saved_index,
};

struct ag_tensor *ag_gather(struct ag_tensor *a, int dim, struct ag_tensor *idx)
{
	const char *fn = "ag_gather";
	struct ag_tensor *ic, *out, *t[1];
	int64_t shape[AG_MAX_DIMS], st[AG_MAX_DIMS];
	size_t es;
	const int64_t *iv;
	struct pos_walk w;
	int nd;

	if (!a)
		return ag__null_arg(fn, "a");
	if (!idx)
		return ag__null_arg(fn, "idx");
	if (gather_scatter_args(fn, a, &dim, idx, NULL))
		return NULL;
	iv = index_data(fn, idx, dim, a->ndim ? a->shape[dim] : 1, &ic);
	if (!iv)
		return NULL;
	out = ag__tensor_new(fn, a->dtype, idx->ndim, idx->shape);
	if (!out) {
		ag_tensor_put(ic);
		return NULL;
	}
	es = ag_dtype_size(a->dtype);
	nd = dims_of(idx, shape, st);
	t[0] = a;
	walk_init(&w, nd, shape, dim, 1, t);
	for (int64_t p = 0; p < idx->numel; p++, walk_step(&w))
		memcpy((char *)ag__data(out) + (size_t)p * es,
		       (char *)a->storage->data +
			       (size_t)walk_at(&w, 0, iv[p]) * es,
		       es);
	ag_tensor_put(ic);
	if (!ag__should_record(&a, 1))
		return ag__scope_add(out);
	return record_index(&gather_ops, out, &a, 1, a, dim, idx, fn);
}

static void add_elem(enum ag_dtype dt, char *dst, int64_t d, const char *src,
		     int64_t s)
{
	if (dt == AG_F32)
		((float *)dst)[d] += ((const float *)src)[s];
	else if (dt == AG_F64)
		((double *)dst)[d] += ((const double *)src)[s];
	else /* wraps like torch's two's complement, without C's UB */
		((int64_t *)dst)[d] =
			(int64_t)((uint64_t)((int64_t *)dst)[d] +
				  (uint64_t)((const int64_t *)src)[s]);
}

struct ag_tensor *ag_scatter_add(struct ag_tensor *a, int dim,
				 struct ag_tensor *idx, struct ag_tensor *src)
{
	const char *fn = "ag_scatter_add";
	struct ag_tensor *in[2] = { a, src }, *t[2], *ic, *out;
	int64_t shape[AG_MAX_DIMS], st[AG_MAX_DIMS];
	const int64_t *iv;
	struct pos_walk w;
	int nd;

	if (!a)
		return ag__null_arg(fn, "a");
	if (!idx)
		return ag__null_arg(fn, "idx");
	if (!src)
		return ag__null_arg(fn, "src");
	if (gather_scatter_args(fn, a, &dim, idx, src))
		return NULL;
	if (ag__should_record(&src, 1) && ag__requires_grad(src) &&
	    (src->ndim != idx->ndim ||
	     !ag__shape_eq(src->ndim, src->shape, idx->shape))) {
		struct ag__shape_str x, y;

		ag__err(AG_ESHAPE,
			"%s: src %s requires grad, so it must have the index's shape %s",
			fn, ag__shape_of(&x, src), ag__shape_of(&y, idx));
		return NULL;
	}
	iv = index_data(fn, idx, dim, a->ndim ? a->shape[dim] : 1, &ic);
	if (!iv)
		return NULL;
	out = ag__contiguous_copy(a);
	if (!out) {
		ag_tensor_put(ic);
		return NULL;
	}
	nd = dims_of(idx, shape, st);
	t[0] = out;
	t[1] = src;
	walk_init(&w, nd, shape, dim, 2, t);
	for (int64_t p = 0; p < idx->numel; p++, walk_step(&w))
		add_elem(a->dtype, out->storage->data, walk_at(&w, 0, iv[p]),
			 src->storage->data, w.off[1]);
	ag_tensor_put(ic);
	if (!ag__should_record(in, 2))
		return ag__scope_add(out);
	return record_index(&scatter_add_ops, out, in, 2, a, dim, idx, fn);
}

/* ---- embedding ---- */

/*
 * index_select of weight's rows at idx flattened, reshaped to idx's shape
 * plus the row: its gradient sums repeated rows in index order (add_rows).
 */
struct ag_tensor *ag_embedding(struct ag_tensor *weight, struct ag_tensor *idx)
{
	const char *fn = "ag_embedding";
	int64_t shape[AG_MAX_DIMS], n;
	struct ag_tensor *flat = NULL, *sel = NULL, *out = NULL, *ic;
	struct ag_scope *scope;
	struct ag__shape_str buf;

	if (!weight)
		return ag__null_arg(fn, "weight");
	if (!idx)
		return ag__null_arg(fn, "idx");
	if (check_index_dtype(fn, idx))
		return NULL;
	if (weight->ndim != 2 || idx->ndim >= AG_MAX_DIMS) {
		ag__err(AG_ESHAPE,
			"%s: weight must be 2-d and indices at most %d-d, got weight %s and indices of %d dims",
			fn, AG_MAX_DIMS - 1, ag__shape_of(&buf, weight),
			idx->ndim);
		return NULL;
	}
	if (!index_data(fn, idx, 0, weight->shape[0], &ic))
		return NULL;
	ag_tensor_put(ic);
	n = idx->numel;
	ag__dims_copy(shape, idx->shape, idx->ndim);
	shape[idx->ndim] = weight->shape[1];
	scope = ag__scope_suspend();
	flat = ag_reshape(idx, 1, &n);
	sel = flat ? ag_index_select(weight, 0, flat) : NULL;
	out = sel ? ag_reshape(sel, idx->ndim + 1, shape) : NULL;
	ag_tensor_put(flat);
	ag_tensor_put(sel);
	ag__scope_resume(scope);
	return ag__scope_add(out);
}
