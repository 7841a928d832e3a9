// SPDX-License-Identifier: MIT
/*
 * Dropout.  The mask is counter-based: one draw from the generator gives a
 * key, and element i is kept when the SplitMix64 output at position i of
 * the stream keyed by it, as a uniform in [0, 1), is below 1 - p.  Any
 * block of elements can then be drawn on any thread, and a seed gives the
 * same mask whatever the thread count.  The node keeps the mask as bits;
 * simd/ draws them (ag_k_dropout_bits).
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include <ag/mode.h>
#include <ag/pool.h>

#include "ops.h"

struct dropout_node {
	struct ag_node node;
	double scale; /* 1 / (1 - p), the factor of a kept element */
	int64_t numel;
	uint64_t *mask; /* bit i of word i / 64: element i is kept */
};

struct drop_ctx {
	uint64_t key;
	uint64_t below; /* kept when the draw's top 53 bits are below this */
	int64_t numel;
	uint64_t *mask;
	/* optional: dst[i] = src[i] * factor(bit i), both dense */
	enum ag_dtype dt;
	const void *src;
	void *dst;
	double scale;
};

/* Bit b of a 32-bit half word: a load the loops below vectorise. */
static const uint32_t bit_of[32] = {
	1u << 0,  1u << 1,  1u << 2,  1u << 3,	1u << 4,  1u << 5,  1u << 6,
	1u << 7,  1u << 8,  1u << 9,  1u << 10, 1u << 11, 1u << 12, 1u << 13,
	1u << 14, 1u << 15, 1u << 16, 1u << 17, 1u << 18, 1u << 19, 1u << 20,
	1u << 21, 1u << 22, 1u << 23, 1u << 24, 1u << 25, 1u << 26, 1u << 27,
	1u << 28, 1u << 29, 1u << 30, 1u << 31,
};

/*
 * 32 elements by half a mask word, y[b] = x[b] times f or 0 as bit b of h.
 * Shifting the word by the element's index kept these loops scalar; a
 * load from bit_of, with x and y apart (restrict) or the same (in place),
 * vectorises at -O2.  The product is torch's, x * scale or x * 0 (-0 for
 * negative x, NaN for inf).
 */
#define DEFINE_MASK32(T)                                                       \
	static void mask32_##T(const T *restrict x, T *restrict y, uint32_t h, \
			       T f)                                            \
	{                                                                      \
		for (int b = 0; b < 32; b++)                                   \
			y[b] = x[b] * (h & bit_of[b] ? f : (T)0);              \
	}                                                                      \
	static void mask32_inplace_##T(T *y, uint32_t h, T f)                  \
	{                                                                      \
		for (int b = 0; b < 32; b++)                                   \
			y[b] = y[b] * (h & bit_of[b] ? f : (T)0);              \
	}                                                                      \
	static void mask_tail_##T(const T *x, T *y, uint32_t h, T f, int n)    \
	{                                                                      \
		for (int b = 0; b < n; b++)                                    \
			y[b] = x[b] * (h & bit_of[b] ? f : (T)0);              \
	}                                                                      \
	static void apply_mask_##T(const struct drop_ctx *c, int64_t s,        \
				   int64_t e)                                  \
	{                                                                      \
		const T *x = c->src;                                           \
		T *y = c->dst, f = (T)c->scale;                                \
		for (int64_t i = s; i < e; i += 32) {                          \
			uint32_t h = (uint32_t)(c->mask[i >> 6] >> (i & 63));  \
			if (e - i < 32)                                        \
				mask_tail_##T(x + i, y + i, h, f,              \
					      (int)(e - i));                   \
			else if (x == y)                                       \
				mask32_inplace_##T(y + i, h, f);               \
			else                                                   \
				mask32_##T(x + i, y + i, h, f);                \
		}                                                              \
	}

DEFINE_MASK32(float)
DEFINE_MASK32(double)

/* dst[i] = src[i] times scale or 0 by the mask, over [s, e), s % 64 == 0. */
static void apply_mask(const struct drop_ctx *c, int64_t s, int64_t e)
{
	if (c->dt == AG_F32)
		apply_mask_float(c, s, e);
	else
		apply_mask_double(c, s, e);
}

/* Words [ws, we) of the mask, then their elements of dst. */
static void draw_words(int64_t ws, int64_t we, void *arg)
{
	struct drop_ctx *c = arg;
	int64_t end = we * 64 < c->numel ? we * 64 : c->numel;

	ag_k_dropout_bits(c->key, ws * 64, end - ws * 64, c->below,
			  c->mask + ws);
	if (c->dst)
		apply_mask(c, ws * 64, end);
}

static void mask_words(int64_t ws, int64_t we, void *arg)
{
	struct drop_ctx *c = arg;

	apply_mask(c, ws * 64, we * 64 < c->numel ? we * 64 : c->numel);
}

/* Runs fn over the mask's words, split over the pool when large. */
static void over_words(struct drop_ctx *c, void (*fn)(int64_t, int64_t, void *))
{
	int64_t words = (c->numel + 63) / 64;

	if (c->numel < ag__parallel_threshold())
		fn(0, words, c);
	else
		ag_parallel_for(words, 256, fn, c);
}

static void dropout_release(struct ag_node *n)
{
	struct dropout_node *d = ag_container_of(n, struct dropout_node, node);

	ag__mfree(d->mask);
	d->mask = NULL;
}

/* The mask as a tensor of scale and 0, for a backward that is recorded. */
static struct ag_tensor *mask_tensor(struct dropout_node *d,
				     struct ag_tensor *g)
{
	struct ag_tensor *ones = ag__tensor_like(g);
	struct drop_ctx c = { 0 };

	if (!ones)
		return NULL;
	if (g->dtype == AG_F32)
		ag_k_fill_f32(g->numel, 1.0f, ag__data(ones), 1);
	else
		ag_k_fill_f64(g->numel, 1.0, ag__data(ones), 1);
	c.numel = d->numel;
	c.mask = d->mask;
	c.dt = g->dtype;
	c.src = c.dst = ag__data(ones);
	c.scale = d->scale;
	over_words(&c, mask_words);
	return ones;
}

/* gx = g * mask * scale: linear in g, so the same mask again under grad. */
static int dropout_apply(struct ag_node *n, struct ag_tensor **grads,
			 struct ag_tensor **out)
{
	struct dropout_node *d = ag_container_of(n, struct dropout_node, node);
	struct ag_tensor *g = grads[0], *m;
	struct drop_ctx c = { 0 };

	if (!g || !n->next[0].node)
		return 0;
	if (!d->mask)
		return ag__err_freed(n);
	if (ag__mode.grad) {
		m = mask_tensor(d, g);
		out[0] = m ? ag_mul(g, m) : NULL;
		ag_tensor_put(m);
		return out[0] ? 0 : -ag_errcode();
	}
	if (ag__exclusive(g)) {
		out[0] = g; /* nobody else sees it: scale in place */
		grads[0] = NULL;
	} else {
		out[0] = ag__contiguous_copy(g);
		if (!out[0])
			return -ag_errcode();
	}
	c.numel = d->numel;
	c.mask = d->mask;
	c.dt = g->dtype;
	c.src = c.dst = ag__data(out[0]);
	c.scale = d->scale;
	over_words(&c, mask_words);
	return 0;
}

static const struct ag_node_ops dropout_ops = {
	.name = "DropoutBackward",
	.apply = dropout_apply,
	.release = dropout_release, /* also run when the node is freed */
};

static double kept_scale(enum ag_dtype dt, double p)
{
	/* the factor as torch forms it: 1 / (1 - p) in the dtype */
	if (dt == AG_F32)
		return (double)(1.0f / (float)(1.0 - p));
	return 1.0 / (1.0 - p);
}

struct ag_tensor *ag_dropout(struct ag_tensor *a, double p, bool training,
			     struct ag_generator *g)
{
	const char *fn = "ag_dropout";
	struct drop_ctx c = { 0 };
	struct ag_tensor *out = NULL;
	struct dropout_node *d = NULL;

	if (!a)
		return ag__null_arg(fn, "a");
	if (!(p >= 0 && p <= 1)) {
		ag__err(AG_EINVAL,
			"%s: dropout probability has to be between 0 and 1, but got %g",
			fn, p);
		return NULL;
	}
	if (ag__check_float(fn, a))
		return NULL;
	if (!training || p == 0 || !a->numel)
		return ag__scope_add(ag_tensor_get(a));
	c.numel = a->numel;
	/*
	 * The draw k >> 11 as u = k 2^-53 is kept when u < 1 - p, that is
	 * when the integer k < (1 - p) 2^53 (exact: a power of two apart),
	 * k < ceil((1 - p) 2^53): no conversion per element.
	 */
	c.below = (uint64_t)ceil((1.0 - p) * 0x1p53);
	c.dt = a->dtype;
	c.scale = kept_scale(a->dtype, p);
	c.mask = ag__malloc((size_t)((a->numel + 63) / 64) * sizeof(uint64_t));
	out = ag_tensor_is_contiguous(a) ? ag__tensor_like(a) :
					   ag__contiguous_copy(a);
	if (!c.mask || !out) {
		if (!c.mask)
			ag__err(AG_ENOMEM, "%s: out of memory for the mask",
				fn);
		goto fail;
	}
	c.src = ag_tensor_is_contiguous(a) ? ag__data(a) : ag__data(out);
	c.dst = ag__data(out);
	if (p == 1) { /* nothing kept, and as torch, nothing drawn */
		memset(c.mask, 0, (size_t)((a->numel + 63) / 64) * 8);
		over_words(&c, mask_words);
	} else {
		c.key = ag_generator_next(g ? g : ag_default_generator());
		over_words(&c, draw_words);
	}
	if (!ag__should_record(&a, 1)) {
		ag__mfree(c.mask);
		return ag__scope_add(out);
	}
	d = (struct dropout_node *)ag__node_alloc(&dropout_ops, sizeof(*d), 0,
						  1, 1, NULL, 0);
	if (!d)
		goto fail;
	d->scale = c.scale;
	d->numel = a->numel;
	d->mask = c.mask;
	return ag__finish(out, &d->node, &a, 1, fn);
fail:
	ag__mfree(c.mask);
	ag_tensor_put(out);
	return NULL;
}
