// SPDX-License-Identifier: MIT
/*
 * In-place ops.  Each bumps the storage version (also under no-grad),
 * refuses a leaf that requires grad unless grad mode is off, and on a
 * non-leaf records a node that becomes the tensor's grad_fn (a rebase of
 * its history).  Writing through a view of a tensor that requires grad
 * would need PyTorch's CopySlices; libag refuses it with AG_EINVAL rather
 * than produce a wrong gradient.
 */
#include <string.h>

#include <ag/mode.h>

#include "ops.h"

int ag__inplace_check(const char *fn, struct ag_tensor *self, bool rmw)
{
	if (self->inference && !ag__mode.inference)
		return ag__err(
			AG_EINFERENCE,
			"%s: inplace update to inference tensor outside InferenceMode is not allowed; make a clone to get a normal tensor first",
			fn);
	if (ag__mode.grad && ag__requires_grad(self) &&
	    ag_tensor_is_leaf(self) && !(self->meta && self->meta->view_base))
		return ag__err(
			AG_ELEAF,
			"%s: a leaf tensor that requires grad is being used in an in-place operation; do it under no-grad (AG_NO_GRAD_SCOPE) or on a clone",
			fn);
	/*
	 * An expanded view has elements sharing one memory location: a
	 * read-modify-write through it would apply the op several times to
	 * the same element.  Filling is idempotent and stays allowed.
	 */
	for (int d = 0; rmw && d < self->ndim; d++)
		if (self->strides[d] == 0 && self->shape[d] > 1)
			return ag__err(
				AG_EINVAL,
				"%s: unsupported operation: more than one element of the written-to tensor refers to a single memory location. Please clone() the tensor before performing the operation.",
				fn);
	return 0;
}

/*
 * Overlap of the written tensor with a source.  torch refuses a source
 * that partially overlaps self: elements written early would be read
 * later.  The rule here, exact where torch gives up on strided views:
 *
 *   - another storage, an empty operand, or exact aliasing (same offset,
 *     and src broadcast to self's shape has self's stride on every dim of
 *     size > 1, as in a.add_(a)): allowed, each element reads only itself;
 *   - element address ranges that do not intersect: allowed;
 *   - addresses in different residue classes modulo the gcd of all the
 *     strides (interleaved slices such as a[::2] and a[1::2], columns):
 *     allowed;
 *   - otherwise the smaller operand's addresses are walked and each is
 *     looked up in the other's, exactly: allowed when none is shared.
 *     The walk costs at most what the op does, and only views whose
 *     ranges interleave come to it.
 *
 * The lookup reads an address as mixed-radix digits of the strides, which
 * needs strides that nest (each larger than the reach of the smaller
 * ones); libag's views always do, and an operand that did not would be
 * taken as overlapping.
 */
struct span {
	int n; /* dims of size > 1 and stride != 0, by stride descending */
	int64_t numel; /* distinct addresses when the strides nest */
	int64_t off, lo, hi; /* first address, range [lo, hi] */
	int64_t shape[AG_MAX_DIMS], strides[AG_MAX_DIMS];
	bool nested;
};

static void span_of(const struct ag_tensor *t, struct span *sp)
{
	int64_t reach = 0;

	sp->n = 0;
	sp->numel = 1;
	sp->off = t->offset;
	for (int d = 0; d < t->ndim; d++) {
		int64_t n = t->shape[d], s = t->strides[d];
		int k;

		if (n == 1 || !s)
			continue; /* no new addresses */
		if (s < 0) { /* the same addresses, walked upwards */
			sp->off += (n - 1) * s;
			s = -s;
		}
		for (k = sp->n; k > 0 && sp->strides[k - 1] < s; k--) {
			sp->shape[k] = sp->shape[k - 1];
			sp->strides[k] = sp->strides[k - 1];
		}
		sp->shape[k] = n;
		sp->strides[k] = s;
		sp->n++;
		sp->numel *= n;
	}
	sp->nested = true;
	for (int d = sp->n - 1; d >= 0; d--) {
		if (sp->strides[d] <= reach)
			sp->nested = false;
		reach += (sp->shape[d] - 1) * sp->strides[d];
	}
	sp->lo = sp->off;
	sp->hi = sp->off + reach;
}

/* Address p is one of sp's (sp nested). */
static bool span_has(const struct span *sp, int64_t p)
{
	int64_t r = p - sp->off;

	if (p < sp->lo || p > sp->hi)
		return false;
	for (int d = 0; d < sp->n; d++) {
		int64_t i = r / sp->strides[d];

		if (i >= sp->shape[d])
			return false;
		r -= i * sp->strides[d];
	}
	return r == 0;
}

/* Some address of a is one of b's (b nested). */
static bool span_meets(const struct span *a, const struct span *b)
{
	int64_t idx[AG_MAX_DIMS] = { 0 }, p = a->off;
	int d;

	for (;;) {
		if (span_has(b, p))
			return true;
		for (d = a->n - 1; d >= 0; d--) {
			if (++idx[d] < a->shape[d]) {
				p += a->strides[d];
				break;
			}
			idx[d] = 0;
			p -= (a->shape[d] - 1) * a->strides[d];
		}
		if (d < 0)
			return false;
	}
}

static int64_t gcd64(int64_t a, int64_t b)
{
	while (b) {
		int64_t t = a % b;

		a = b;
		b = t;
	}
	return a;
}

static bool partial_overlap(const struct ag_tensor *self,
			    const struct ag_tensor *src)
{
	int64_t ss[AG_MAX_DIMS], g = 0;
	struct span a, b;
	bool alias = self->offset == src->offset;

	if (self->storage != src->storage || !self->numel || !src->numel)
		return false;
	ag__broadcast_strides(src, self->ndim, self->shape, ss);
	for (int d = 0; d < self->ndim && alias; d++)
		if (self->shape[d] > 1 && ss[d] != self->strides[d])
			alias = false;
	if (alias)
		return false;
	span_of(self, &a);
	span_of(src, &b);
	if (a.hi < b.lo || b.hi < a.lo)
		return false;
	for (int d = 0; d < a.n; d++)
		g = gcd64(g, a.strides[d]);
	for (int d = 0; d < b.n; d++)
		g = gcd64(g, b.strides[d]);
	if (g > 1 && (a.off - b.off) % g)
		return false;
	/* walk the smaller; the other must nest for the lookup */
	if (b.nested && (a.numel <= b.numel || !a.nested))
		return span_meets(&a, &b);
	if (a.nested)
		return span_meets(&b, &a);
	return true;
}

static int overlap_check(const char *fn, struct ag_tensor *self,
			 struct ag_tensor *src)
{
	if (!partial_overlap(self, src))
		return 0;
	return ag__err(
		AG_EINVAL,
		"%s: unsupported operation: some elements of the input tensor and the written-to tensor refer to a single memory location. Please clone() the tensor before performing the operation.",
		fn);
}

static int view_check(const char *fn, struct ag_tensor *self, bool record)
{
	struct ag_tensor *base;

	if (!record || !self->meta || !self->meta->view_base)
		return 0;
	base = self->meta->view_base;
	if (ag__requires_grad(base) && ag_tensor_is_leaf(base))
		return ag__err(
			AG_ELEAF,
			"%s: a view of a leaf tensor that requires grad is being used in an in-place operation",
			fn);
	return ag__err(
		AG_EINVAL,
		"%s: in-place write through a view of a tensor that autograd tracks is not supported (it needs CopySlices); write to the base tensor, or use out-of-place ops",
		fn);
}

struct inplace_node {
	struct ag_node node;
	enum ag_k_binary op;
	int ndim;
	int64_t shape[AG_MAX_DIMS]; /* other's shape */
	double s;
	struct ag_saved saved[2]; /* self (before the write), other */
};

static const char *const inplace_saved[] = { "self", "other" };

static int inplace_apply(struct ag_node *n, struct ag_tensor **grads,
			 struct ag_tensor **out)
{
	struct inplace_node *p = ag_container_of(n, struct inplace_node, node);
	struct ag_tensor *g = grads[0], *x = NULL, *y = NULL, *t = NULL;
	bool need0 = n->next[0].node,
	     need1 = n->num_next > 1 && n->next[1].node;
	int rc = 0;

	if (!g)
		return 0;
	if (p->saved[0].defined && !(x = ag__unpack(n, 0)))
		return -ag_errcode();
	if (p->saved[1].defined && !(y = ag__unpack(n, 1))) {
		ag_tensor_put(x);
		return -ag_errcode();
	}
	switch (p->op) {
	case AG_K_ADD:
		out[0] = need0 ? ag_tensor_get(g) : NULL;
		if (need1)
			t = ag_tensor_get(g);
		break;
	case AG_K_SUB:
		out[0] = need0 ? ag_tensor_get(g) : NULL;
		if (need1)
			t = ag_neg(g);
		break;
	case AG_K_MUL:
		out[0] = need0 ? (y ? ag_mul(g, y) : ag_mul_scalar(g, p->s)) :
				 NULL;
		if (need1)
			t = ag_mul(g, x);
		break;
	case AG_K_DIV:
		out[0] = need0 ? ag_div(g, y) : NULL;
		if (need1) { /* -g * x / y^2 */
			struct ag_tensor *q = ag_div(x, y), *gq = ag_mul(g, q);
			struct ag_tensor *r = ag_div(gq, y);

			t = ag_neg(r);
			ag_tensor_put(q);
			ag_tensor_put(gq);
			ag_tensor_put(r);
		}
		break;
	case AG_K_MAXIMUM: /* relu_: g where the result is positive */
		if (need0) {
			t = ag__positive_mask(y);
			out[0] = t ? ag_mul(g, t) : NULL;
			ag_tensor_put(t);
			t = NULL;
		}
		break;
	default: /* fill, zero, copy: self's old value does not matter */
		out[0] = NULL;
		if (need1)
			t = ag_tensor_get(g);
		break;
	}
	if (need1 && t) {
		out[1] = ag__sum_to(t, p->ndim, p->shape);
		ag_tensor_put(t);
	}
	ag_tensor_put(x);
	ag_tensor_put(y);
	if ((need0 && !out[0] && p->op <= AG_K_MAXIMUM) || (need1 && !out[1]))
		rc = ag_errcode() ? -ag_errcode() : 0;
	return rc;
}

#define INPLACE_OPS(ident, label)                 \
	static const struct ag_node_ops ident = { \
		.name = label,                    \
		.apply = inplace_apply,           \
		.saved_names = inplace_saved,     \
	}

INPLACE_OPS(add_ops, "AddBackward");
INPLACE_OPS(sub_ops, "SubBackward");
INPLACE_OPS(mul_ops, "MulBackward");
INPLACE_OPS(div_ops, "DivBackward");
INPLACE_OPS(fill_ops, "FillBackward");
INPLACE_OPS(copy_ops, "CopyBackwards");
INPLACE_OPS(relu_ops, "ReluBackward");

/* A node for self op= other, before the write; NULL with error set. */
static struct inplace_node *inplace_node(const struct ag_node_ops *ops,
					 enum ag_k_binary op,
					 struct ag_tensor *self,
					 struct ag_tensor *other, double s)
{
	struct inplace_node *p;
	struct ag_tensor *old = NULL;

	p = (struct inplace_node *)ag__node_alloc(ops, sizeof(*p), 0, 1,
						  other ? 2 : 1, NULL, 0);
	if (!p)
		return NULL;
	p->op = op;
	p->s = s;
	p->node.saved = p->saved;
	p->node.num_saved = 2;
	if (other) {
		p->ndim = other->ndim;
		for (int d = 0; d < other->ndim; d++)
			p->shape[d] = other->shape[d];
	}
	if ((op == AG_K_MUL || op == AG_K_DIV) && other &&
	    ag__requires_grad(other)) {
		/* the write destroys self: keep a copy of its old value */
		old = ag__contiguous_copy(self);
		if (!old || ag__save(&p->node, 0, old, false, 0))
			goto fail;
		ag_tensor_put(old);
		old = NULL;
	}
	/*
	 * a.mul_(a): other is self, whose grad_fn this node becomes; a
	 * strong reference would be a cycle (found by fuzz_ops).  Saved as
	 * the output instead, its version moves with the write, so backward
	 * fails with the version error, as torch's does.
	 */
	if ((op == AG_K_MUL || op == AG_K_DIV) && other &&
	    ag__save(&p->node, 1, other, other == self, 0))
		goto fail;
	return p;
fail:
	ag_tensor_put(old);
	ag__node_put(&p->node);
	return NULL;
}

static int record_inplace(struct inplace_node *p, struct ag_tensor *self,
			  struct ag_tensor *other, const char *fn)
{
	struct ag_tensor *in[2] = { self, other };

	if (!p)
		return 0;
	return ag__record(&p->node, in, other ? 2 : 1, &self, 1, fn);
}

static int binary_(const char *fn, const struct ag_node_ops *ops,
		   enum ag_k_binary op, struct ag_tensor *self,
		   struct ag_tensor *other)
{
	struct ag_tensor *in[2] = { self, other };
	struct inplace_node *p = NULL;
	int64_t shape[AG_MAX_DIMS];
	bool record;
	int ndim, rc;

	if (!self)
		return ag__err_null(fn, "self");
	if (!other)
		return ag__err_null(fn, "other");
	if (ag__check_same_dtype(fn, self, other) ||
	    ag__broadcast_shape(fn, self, other, &ndim, shape))
		return -ag_errcode();
	if (ndim != self->ndim || !ag__shape_eq(ndim, shape, self->shape)) {
		struct ag__shape_str a, b;

		return ag__err(
			AG_ESHAPE,
			"%s: output with shape %s doesn't match the broadcast shape %s",
			fn, ag__shape_of(&a, self),
			ag__shape_fmt(&b, ndim, shape));
	}
	rc = ag__inplace_check(fn, self, true);
	if (!rc)
		rc = overlap_check(fn, self, other);
	if (rc)
		return rc;
	record = ag__should_record(in, 2);
	rc = view_check(fn, self, record);
	if (rc)
		return rc;
	if (record) {
		p = inplace_node(ops, op, self, other, 0);
		if (!p)
			return -ag_errcode();
	}
	ag__binary_into(op, self, other);
	ag__storage_bump(self->storage, fn);
	return record_inplace(p, self, other, fn);
}

int ag_add_(struct ag_tensor *self, struct ag_tensor *other)
{
	return binary_("ag_add_", &add_ops, AG_K_ADD, self, other);
}

int ag_sub_(struct ag_tensor *self, struct ag_tensor *other)
{
	return binary_("ag_sub_", &sub_ops, AG_K_SUB, self, other);
}

int ag_mul_(struct ag_tensor *self, struct ag_tensor *other)
{
	return binary_("ag_mul_", &mul_ops, AG_K_MUL, self, other);
}

int ag_div_(struct ag_tensor *self, struct ag_tensor *other)
{
	return binary_("ag_div_", &div_ops, AG_K_DIV, self, other);
}

/* self = f(self) for the scalar and fill family. */
static int unary_(const char *fn, const struct ag_node_ops *ops,
		  enum ag_k_binary node_op, enum ag_k_unary op, double s,
		  struct ag_tensor *self)
{
	struct ag_k_params kp = { s, 0 };
	struct inplace_node *p = NULL;
	bool record;
	int rc;

	if (!self)
		return ag__err_null(fn, "self");
	if (self->dtype == AG_I64 && ops != &fill_ops)
		return ag__check_float(fn, self);
	rc = ag__inplace_check(fn, self, ops != &fill_ops);
	if (rc)
		return rc;
	record = ag__should_record(&self, 1);
	rc = view_check(fn, self, record);
	if (rc)
		return rc;
	if (record) {
		p = inplace_node(ops, node_op, self, NULL, s);
		if (!p)
			return -ag_errcode();
	}
	if (ops == &fill_ops) {
		for (int64_t i = 0; i < self->numel; i++) {
			int64_t off = ag__elem_offset(self, i);

			if (self->dtype == AG_F32)
				((float *)self->storage->data)[off] = (float)s;
			else if (self->dtype == AG_F64)
				((double *)self->storage->data)[off] = s;
			else
				((int64_t *)self->storage->data)[off] =
					(int64_t)s;
		}
	} else {
		ag__unary_into(op, &kp, self);
	}
	ag__storage_bump(self->storage, fn);
	if (p && ops == &relu_ops && ag__save(&p->node, 1, self, true, 0)) {
		ag__node_put(&p->node);
		return -ag_errcode();
	}
	return record_inplace(p, self, NULL, fn);
}

int ag_add_scalar_(struct ag_tensor *self, double s)
{
	return unary_("ag_add_scalar_", &add_ops, AG_K_ADD, AG_K_ADD_SCALAR, s,
		      self);
}

int ag_mul_scalar_(struct ag_tensor *self, double s)
{
	return unary_("ag_mul_scalar_", &mul_ops, AG_K_MUL, AG_K_MUL_SCALAR, s,
		      self);
}

int ag_zero_(struct ag_tensor *self)
{
	return unary_("ag_zero_", &fill_ops, AG_K_BINARY_COUNT, AG_K_NEG, 0,
		      self);
}

int ag_fill_(struct ag_tensor *self, double v)
{
	return unary_("ag_fill_", &fill_ops, AG_K_BINARY_COUNT, AG_K_NEG, v,
		      self);
}

int ag_relu_(struct ag_tensor *self)
{
	return unary_("ag_relu_", &relu_ops, AG_K_MAXIMUM, AG_K_RELU, 0, self);
}

int ag_copy_(struct ag_tensor *self, struct ag_tensor *src)
{
	struct ag_tensor *in[2] = { self, src };
	struct inplace_node *p = NULL;
	int64_t shape[AG_MAX_DIMS];
	bool record;
	int ndim, rc;

	if (!self)
		return ag__err_null("ag_copy_", "self");
	if (!src)
		return ag__err_null("ag_copy_", "src");
	if (self->dtype != src->dtype)
		return ag__check_same_dtype("ag_copy_", self, src);
	if (ag__broadcast_shape("ag_copy_", self, src, &ndim, shape) ||
	    ndim != self->ndim || !ag__shape_eq(ndim, shape, self->shape)) {
		struct ag__shape_str a, b;

		return ag__err(
			AG_ESHAPE,
			"ag_copy_: source of shape %s cannot be broadcast to %s",
			ag__shape_of(&a, src), ag__shape_of(&b, self));
	}
	rc = ag__inplace_check("ag_copy_", self, true);
	if (!rc)
		rc = overlap_check("ag_copy_", self, src);
	if (rc)
		return rc;
	record = ag__should_record(in, 2);
	rc = view_check("ag_copy_", self, record);
	if (rc)
		return rc;
	if (record) {
		p = inplace_node(&copy_ops, AG_K_BINARY_COUNT, self, src, 0);
		if (!p)
			return -ag_errcode();
	}
	{
		int64_t ss[AG_MAX_DIMS];
		const int64_t *strides[2] = { self->strides, ss };
		int64_t base[2] = { self->offset, src->offset };
		size_t es = ag_dtype_size(self->dtype);
		struct ag_walk w;

		ag__broadcast_strides(src, self->ndim, self->shape, ss);
		ag__walk_init(&w, self->ndim, self->shape, 2, strides, base);
		while (ag__walk_next(&w))
			for (int64_t i = 0; i < w.inner; i++)
				memcpy((char *)self->storage->data +
					       (w.off[0] + i * w.inc[0]) * es,
				       (char *)src->storage->data +
					       (w.off[1] + i * w.inc[1]) * es,
				       es);
	}
	ag__storage_bump(self->storage, "ag_copy_");
	return record_inplace(p, self, src, "ag_copy_");
}
