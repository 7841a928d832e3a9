// SPDX-License-Identifier: MIT
/*
 * Recording ops into the graph, and saved tensors with version checks.
 */
#include <inttypes.h>
#include <string.h>

#include <ag/mode.h>

#include "graph.h"

bool ag__should_record(struct ag_tensor *const *in, int n)
{
	if (!ag__mode.grad)
		return false;
	for (int i = 0; i < n; i++)
		if (in[i] && ag__requires_grad(in[i]))
			return true;
	return false;
}

static void set_input_meta(struct ag_input_meta *m, const struct ag_tensor *t)
{
	m->dtype = t->dtype;
	m->ndim = t->ndim;
	ag__dims_copy(m->shape, t->shape, t->ndim);
}

/* The blocks of the last AG_HINT_DIST nodes this thread recorded. */
static AG_TLS const void *recent[AG_HINT_DIST];
static AG_TLS unsigned recent_pos;

int ag__record(struct ag_node *n, struct ag_tensor *const *in, int nin,
	       struct ag_tensor *const *out, int nout, const char *fwd_op)
{
	unsigned r = recent_pos++ % AG_HINT_DIST;

	n->hint = recent[r];
	recent[r] = (const char *)n - n->mem_off;
	n->fwd_op = fwd_op;
	for (int i = 0; i < nin && i < n->num_next; i++) {
		struct ag_edge e = { NULL, 0 };

		if (in[i]) {
			if (ag__requires_grad(in[i]) && in[i]->inference) {
				ag__node_put(n);
				return ag__err(
					AG_EINFERENCE,
					"%s: inference tensors cannot be used in a computation that autograd records; clone it outside inference mode first",
					fwd_op);
			}
			e = ag__grad_edge(in[i]);
			if (ag__requires_grad(in[i]) && !e.node) {
				ag__node_put(n);
				return ag__err_last();
			}
		}
		if (e.node)
			ag__node_get(e.node);
		n->next[i] = e;
	}
	for (int j = 0; j < nout; j++) {
		struct ag_autograd_meta *m = ag__meta(out[j]);

		if (!m) {
			ag__node_put(n);
			return ag__err_last();
		}
		set_input_meta(&n->in_meta[j], out[j]);
		if (j)
			ag__node_get(n);
		ag__node_put(m->grad_fn);
		m->grad_fn = n;
		m->output_nr = j;
		m->requires_grad = false;
	}
	if (!nout)
		ag__node_put(n);
	return 0;
}

int ag__save(struct ag_node *n, int slot, struct ag_tensor *t, bool is_output,
	     int out_nr)
{
	struct ag_saved *s = &n->saved[slot];

	if (!t) {
		s->defined = false;
		return 0;
	}
	if (t->inference)
		return ag__err(
			AG_EINFERENCE,
			"%s: inference tensors cannot be saved for backward; make a clone outside inference mode to use it in autograd",
			n->ops->name);
	s->defined = true;
	s->is_output = is_output;
	s->output_nr = out_nr;
	s->version = atomic_load_explicit(&t->storage->version,
					  memory_order_acquire);
	if (is_output) {
		/* no reference to the output itself: it owns n */
		s->producer = n->ops->name;
		if (!t->offset && ag_tensor_is_contiguous(t) &&
		    (size_t)t->numel * ag_dtype_size(t->dtype) ==
			    t->storage->nbytes) {
			s->compact = true;
			s->storage = t->storage;
			ag__storage_get(s->storage);
			return 0;
		}
		/* else an alias without autograd state */
		s->t = ag__tensor_view(t, t->ndim, t->shape, t->strides,
				       t->offset);
		return s->t ? 0 : ag__err_last();
	}
	s->t = ag_tensor_get(t);
	if (t->meta && t->meta->grad_fn) {
		s->producer = t->meta->grad_fn->ops->name;
		s->output_nr = t->meta->output_nr;
	}
	return 0;
}

static const char freed_msg[] =
	"Trying to backward through the graph a second time (or directly access saved tensors after they have already been freed). Saved intermediate values of the graph are freed when you call ag_backward() or ag_grad(). Set retain_graph in the options if you need to backward through the graph a second time or if you need to access saved tensors after calling backward.";

int ag__err_freed(const struct ag_node *n)
{
	return ag__err(AG_EFREED, "%s: %s", n->ops->name, freed_msg);
}

/* The storage a saved tensor reads. */
static struct ag_storage *saved_storage(const struct ag_saved *s)
{
	return s->compact ? s->storage : s->t->storage;
}

static int version_error(const struct ag_saved *s, int ndim,
			 const int64_t *dims, enum ag_dtype dtype, uint64_t now)
{
	struct ag__shape_str shape;
	char who[160] = "";
	const char *writer = atomic_load_explicit(
		&saved_storage(s)->last_writer, memory_order_relaxed);

	ag__shape_fmt(&shape, ndim, dims);
	if (s->producer)
		snprintf(who, sizeof(who), ", which is output %d of %s",
			 s->output_nr, s->producer);
	return ag__err(
		AG_EVERSION,
		"one of the variables needed for gradient computation has been modified by an inplace operation: [%s %s]%s, is at version %" PRIu64
		"; expected version %" PRIu64
		" instead. It was last modified in place by %s. Hint: do that write out of place (or on a clone), or after backward.",
		ag_dtype_name(dtype), shape.s, who, now, s->version,
		writer ? writer : "a write through ag_tensor_data");
}

/* A new plain tensor over what s keeps. */
static struct ag_tensor *saved_tensor(struct ag_node *n, struct ag_saved *s)
{
	const struct ag_input_meta *im = &n->in_meta[s->output_nr];

	if (!s->compact)
		return ag__tensor_view(s->t, s->t->ndim, s->t->shape,
				       s->t->strides, s->t->offset);
	return ag__tensor_on(s->storage, im->dtype, im->ndim, im->shape);
}

/* 0 when slot s of n can be read, else -AG_EFREED or -AG_EVERSION. */
static int saved_check(struct ag_node *n, struct ag_saved *s)
{
	const struct ag_input_meta *im = &n->in_meta[s->output_nr];
	uint64_t now;

	if (atomic_load_explicit(&n->released, memory_order_acquire))
		return ag__err_freed(n);
	now = atomic_load_explicit(&saved_storage(s)->version,
				   memory_order_acquire);
	if (now == s->version)
		return 0;
	if (s->compact)
		return version_error(s, im->ndim, im->shape, im->dtype, now);
	return version_error(s, s->t->ndim, s->t->shape, s->t->dtype, now);
}

int ag__saved_span(struct ag_node *n, int slot, const void **data)
{
	struct ag_saved *s = &n->saved[slot];
	int rc;

	if (!s->defined)
		return 1;
	rc = saved_check(n, s);
	if (rc)
		return rc;
	if (s->compact) {
		*data = s->storage->data;
		return 0;
	}
	if (!ag_tensor_is_contiguous(s->t))
		return 1;
	*data = ag__data(s->t);
	return 0;
}

struct ag_tensor *ag__unpack(struct ag_node *n, int slot)
{
	struct ag_saved *s = &n->saved[slot];
	struct ag_tensor *t;

	if (!s->defined) {
		/* an error only if the node is gone */
		if (atomic_load_explicit(&n->released, memory_order_acquire))
			ag__err_freed(n);
		return NULL;
	}
	if (saved_check(n, s))
		return NULL;
	if (!s->is_output)
		return ag_tensor_get(s->t);
	if (!ag__mode.grad)
		return s->compact ? saved_tensor(n, s) : ag_tensor_get(s->t);
	/* double backward through our own output: it must lead back to n */
	t = saved_tensor(n, s);
	if (!t || !ag__meta(t)) {
		ag_tensor_put(t);
		return NULL;
	}
	ag__node_get(n);
	t->meta->grad_fn = n;
	t->meta->output_nr = s->output_nr;
	return t;
}
