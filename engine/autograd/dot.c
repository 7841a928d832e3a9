// SPDX-License-Identifier: MIT
/*
 * The backward graph in Graphviz dot.  An iterative depth-first walk from
 * the root's node numbers every node once (a pointer set with open
 * addressing) and writes one line per node and one per edge; an edge into
 * a node with several gradient inputs is labelled with the input number.
 */
#include <stdlib.h>

#include "graph.h"
#include "lib/ptrvec.h"

struct seen {
	struct ag_node **keys;
	size_t *ids;
	size_t cap, n;
};

static size_t slot_of(const struct seen *s, const struct ag_node *p)
{
	uint64_t x = (uint64_t)(uintptr_t)p;
	size_t i;

	x ^= x >> 31;
	x *= 0x9e3779b97f4a7c15ULL;
	x ^= x >> 29;
	for (i = (size_t)x & (s->cap - 1); s->keys[i] && s->keys[i] != p;
	     i = (i + 1) & (s->cap - 1))
		;
	return i;
}

static int seen_grow(struct seen *s)
{
	struct seen t = { .cap = s->cap ? s->cap * 2 : 64, .n = s->n };

	t.keys = ag__calloc(t.cap, sizeof(*t.keys));
	t.ids = t.keys ? ag__calloc(t.cap, sizeof(*t.ids)) : NULL;
	if (!t.ids) {
		ag__mfree(t.keys);
		return -AG_ENOMEM;
	}
	for (size_t i = 0; i < s->cap; i++) {
		size_t k;

		if (!s->keys[i])
			continue;
		k = slot_of(&t, s->keys[i]);
		t.keys[k] = s->keys[i];
		t.ids[k] = s->ids[i];
	}
	ag__mfree(s->keys);
	ag__mfree(s->ids);
	*s = t;
	return 0;
}

/* The id of n; *fresh tells whether n was seen for the first time. */
static int seen_add(struct seen *s, struct ag_node *n, size_t *id, bool *fresh)
{
	size_t k;

	if ((s->n + 1) * 2 > s->cap && seen_grow(s))
		return -AG_ENOMEM; /* seen_grow set the error */
	k = slot_of(s, n);
	*fresh = !s->keys[k];
	if (*fresh) {
		s->keys[k] = n;
		s->ids[k] = s->n++;
	}
	*id = s->ids[k];
	return 0;
}

static void write_node(FILE *f, size_t id, const struct ag_node *n)
{
	struct ag__shape_str shape;

	fprintf(f, "\tn%zu [label=\"%s", id, n->ops->name);
	if (n->ops == &ag__accumulate_ops)
		fprintf(f, "\\n%s %s", ag_dtype_name(n->in_meta[0].dtype),
			ag__shape_fmt(&shape, n->in_meta[0].ndim,
				      n->in_meta[0].shape));
	fprintf(f, "\"%s];\n",
		n->ops == &ag__accumulate_ops ? ", fillcolor=lightblue" : "");
}

int ag_graph_dot(struct ag_tensor *root, FILE *out)
{
	struct ag__ptrvec stack = { 0 };
	size_t id;
	struct seen seen = { 0 };
	struct ag_edge e;
	bool fresh;
	int rc = 0;

	if (!root)
		return ag__err_null("ag_graph_dot", "root");
	if (!out)
		return ag__err(AG_EINVAL, "ag_graph_dot: out is NULL");
	if (!ag__requires_grad(root))
		return ag__err(
			AG_ENOGRAD,
			"ag_graph_dot: the tensor does not require grad and has no grad_fn: there is no backward graph");
	e = ag__grad_edge(root);
	if (!e.node)
		return ag__err_last();
	fprintf(out,
		"digraph {\n\tnode [shape=box, style=filled, fillcolor=white];\n");
	if (seen_add(&seen, e.node, &id, &fresh))
		goto oom;
	write_node(out, id, e.node);
	if (ag__ptrvec_push(&stack, e.node))
		goto oom;
	while (stack.n) {
		struct ag_node *n = ag__ptrvec_pop(&stack);
		size_t from;

		if (seen_add(&seen, n, &from, &fresh))
			goto oom;
		for (int i = 0; i < n->num_next; i++) {
			struct ag_node *c = n->next[i].node;

			if (!c)
				continue;
			if (seen_add(&seen, c, &id, &fresh))
				goto oom;
			if (fresh) {
				write_node(out, id, c);
				if (ag__ptrvec_push(&stack, c))
					goto oom;
			}
			if (c->num_inputs > 1)
				fprintf(out, "\tn%zu -> n%zu [label=\"%d\"];\n",
					from, id, n->next[i].input_nr);
			else
				fprintf(out, "\tn%zu -> n%zu;\n", from, id);
		}
	}
	fprintf(out, "}\n");
	if (fflush(out) || ferror(out))
		rc = ag__err(AG_EIO, "ag_graph_dot: write error");
	goto done;
oom:
	rc = -AG_ENOMEM; /* the allocation that failed set the error */
done:
	ag__ptrvec_free(&stack);
	ag__mfree(seen.keys);
	ag__mfree(seen.ids);
	return rc;
}
