// SPDX-License-Identifier: MIT
/*
 * The module object: named parameters, buffers and children, a training
 * flag and a reference count, behind an ops table.
 */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "nn_internal.h"

char *ag__nn_strdup(const char *s)
{
	size_t len = strlen(s) + 1;
	char *d = malloc(len);

	if (d)
		memcpy(d, s, len);
	return d;
}

void ag_module_init(struct ag_module *m, const struct ag_module_ops *ops)
{
	NN_UNSCOPED();
	memset(m, 0, sizeof(*m));
	m->ops = ops;
	m->refs = 1;
	m->training = true;
}

static void flat_clear(struct ag_module_flat *f)
{
	for (int i = 0; i < f->n; i++)
		free((char *)f->names[i]);
	f->n = 0;
	f->valid = false;
}

static void flat_free(struct ag_module_flat *f)
{
	flat_clear(f);
	free(f->names);
	free(f->tensors);
	f->names = NULL;
	f->tensors = NULL;
	f->cap = 0;
}

/*
 * A change anywhere below invalidates the listings of every ancestor; the
 * module does not know its parents, so listings are rebuilt on each call
 * and the cache only owns the arrays handed out.
 */
static void invalidate(struct ag_module *m)
{
	m->flat_params.valid = false;
	m->flat_buffers.valid = false;
}

static int check_name(struct ag_module *m, const char *fn, const char *name)
{
	if (!m || !name || !*name || strchr(name, '.'))
		return ag_set_error(
			AG_EINVAL,
			"%s: needs a module and a non-empty name without '.', got \"%s\"",
			fn, name ? name : "(null)");
	for (int i = 0; i < m->n_params; i++)
		if (!strcmp(m->params[i].name, name))
			goto dup;
	for (int i = 0; i < m->n_buffers; i++)
		if (!strcmp(m->buffers[i].name, name))
			goto dup;
	for (int i = 0; i < m->n_children; i++)
		if (!strcmp(m->children[i].name, name))
			goto dup;
	return 0;
dup:
	return ag_set_error(AG_EINVAL,
			    "%s: module %s already has an entry \"%s\"", fn,
			    ag_module_name(m), name);
}

static int add_entry(struct ag_module *m, struct ag_module_entry **arr, int *n,
		     const char *fn, const char *name, struct ag_tensor *t)
{
	struct ag_module_entry *na;
	char *nm;
	int err = check_name(m, fn, name);

	if (err)
		return err;
	nm = ag__nn_strdup(name);
	na = realloc(*arr, sizeof(**arr) * (size_t)(*n + 1));
	if (!nm || !na) {
		free(nm);
		if (na)
			*arr = na;
		return ag_set_error(AG_ENOMEM, "%s: out of memory", fn);
	}
	*arr = na;
	na[*n].name = nm;
	na[*n].t = t ? ag_tensor_get(t) : NULL;
	(*n)++;
	invalidate(m);
	return 0;
}

int ag_module_add_parameter(struct ag_module *m, const char *name,
			    struct ag_tensor *t)
{
	NN_UNSCOPED();
	if (!m)
		return ag__nn_err_null(
			"ag_module_add_parameter: module is NULL");
	return add_entry(m, &m->params, &m->n_params, "ag_module_add_parameter",
			 name, t);
}

int ag_module_add_buffer(struct ag_module *m, const char *name,
			 struct ag_tensor *t)
{
	NN_UNSCOPED();
	if (!m)
		return ag__nn_err_null("ag_module_add_buffer: module is NULL");
	return add_entry(m, &m->buffers, &m->n_buffers, "ag_module_add_buffer",
			 name, t);
}

int ag_module_add_child(struct ag_module *m, const char *name,
			struct ag_module *child)
{
	NN_UNSCOPED();
	struct ag_module_child *na;
	char *nm;
	int err;

	if (!child) {
		ag_module_put(child);
		return ag__nn_err_null("ag_module_add_child: child is NULL");
	}
	err = check_name(m, "ag_module_add_child", name);
	if (err) {
		ag_module_put(child);
		return err;
	}
	nm = ag__nn_strdup(name);
	na = realloc(m->children, sizeof(*na) * (size_t)(m->n_children + 1));
	if (!nm || !na) {
		free(nm);
		if (na)
			m->children = na;
		ag_module_put(child);
		return ag_set_error(AG_ENOMEM,
				    "ag_module_add_child: out of memory");
	}
	m->children = na;
	na[m->n_children].name = nm;
	na[m->n_children].m = child;
	m->n_children++;
	invalidate(m);
	return 0;
}

static struct ag_module_entry *find(struct ag_module_entry *a, int n,
				    const char *name)
{
	for (int i = 0; i < n; i++)
		if (!strcmp(a[i].name, name))
			return &a[i];
	return NULL;
}

struct ag_tensor *ag_module_get_parameter(struct ag_module *m, const char *name)
{
	struct ag_module_entry *e =
		m && name ? find(m->params, m->n_params, name) : NULL;

	return e ? e->t : NULL;
}

struct ag_tensor *ag_module_get_buffer(struct ag_module *m, const char *name)
{
	struct ag_module_entry *e =
		m && name ? find(m->buffers, m->n_buffers, name) : NULL;

	return e ? e->t : NULL;
}

struct ag_module *ag_module_get_child(struct ag_module *m, const char *name)
{
	NN_UNSCOPED();
	if (!m || !name)
		return NULL;
	for (int i = 0; i < m->n_children; i++)
		if (!strcmp(m->children[i].name, name))
			return m->children[i].m;
	return NULL;
}

static int set_entry(struct ag_module *m, struct ag_module_entry *e,
		     const char *fn, const char *name, struct ag_tensor *t)
{
	if (!e)
		return ag_set_error(AG_EINVAL,
				    "%s: module %s has no entry \"%s\"", fn,
				    m ? ag_module_name(m) : "(null)",
				    name ? name : "(null)");
	if (t)
		ag_tensor_get(t);
	ag_tensor_put(e->t);
	e->t = t;
	invalidate(m);
	return 0;
}

int ag_module_set_parameter(struct ag_module *m, const char *name,
			    struct ag_tensor *t)
{
	NN_UNSCOPED();
	return set_entry(m,
			 m && name ? find(m->params, m->n_params, name) : NULL,
			 "ag_module_set_parameter", name, t);
}

int ag_module_set_buffer(struct ag_module *m, const char *name,
			 struct ag_tensor *t)
{
	NN_UNSCOPED();
	return set_entry(
		m, m && name ? find(m->buffers, m->n_buffers, name) : NULL,
		"ag_module_set_buffer", name, t);
}

const char *ag_module_name(const struct ag_module *m)
{
	return m && m->ops && m->ops->name ? m->ops->name : "Module";
}

struct ag_module *ag_module_get(struct ag_module *m)
{
	NN_UNSCOPED();
	if (m)
		__atomic_add_fetch(&m->refs, 1, __ATOMIC_RELAXED);
	return m;
}

void ag_module_put(struct ag_module *m)
{
	NN_UNSCOPED();
	if (!m || __atomic_sub_fetch(&m->refs, 1, __ATOMIC_ACQ_REL))
		return;
	for (int i = 0; i < m->n_params; i++) {
		free(m->params[i].name);
		ag_tensor_put(m->params[i].t);
	}
	for (int i = 0; i < m->n_buffers; i++) {
		free(m->buffers[i].name);
		ag_tensor_put(m->buffers[i].t);
	}
	for (int i = 0; i < m->n_children; i++) {
		free(m->children[i].name);
		ag_module_put(m->children[i].m);
	}
	free(m->params);
	free(m->buffers);
	free(m->children);
	flat_free(&m->flat_params);
	flat_free(&m->flat_buffers);
	if (m->ops && m->ops->destroy)
		m->ops->destroy(m);
	else
		free(m);
}

struct ag_tensor *ag_module_forward(struct ag_module *m, struct ag_tensor *x)
{
	struct ag_scope *scope;
	struct ag_tensor *y;

	if (!m || !m->ops || !m->ops->forward) {
		ag_set_error(
			AG_EINVAL,
			"ag_module_forward: module is NULL or has no forward");
		return NULL;
	}
	if (!x) {
		/* keeps the error that made x NULL, like the ops */
		if (!ag_errcode())
			ag__nn_err_null("ag_module_forward: %s: input is NULL",
					ag_module_name(m));
		return NULL;
	}
	/* the forward owns what it gets; its result goes to our caller */
	scope = ag_scope_suspend();
	y = m->ops->forward(m, x);
	ag_scope_resume(scope);
	return ag_scope_adopt(y);
}

void ag_module_train(struct ag_module *m, bool on)
{
	NN_UNSCOPED();
	if (!m)
		return;
	m->training = on;
	for (int i = 0; i < m->n_children; i++)
		ag_module_train(m->children[i].m, on);
}

void ag_module_eval(struct ag_module *m)
{
	NN_UNSCOPED();
	ag_module_train(m, false);
}

bool ag_module_is_training(const struct ag_module *m)
{
	NN_UNSCOPED();
	return m && m->training;
}

static int flat_push(struct ag_module_flat *f, const char *prefix,
		     const char *name, struct ag_tensor *t)
{
	size_t lp = strlen(prefix), ln = strlen(name);
	char *s;

	if (f->n == f->cap) {
		int cap = f->cap ? 2 * f->cap : 8;
		const char **nn = realloc(f->names, sizeof(*nn) * (size_t)cap);

		if (!nn)
			return -AG_ENOMEM;
		f->names = nn;
		struct ag_tensor **nt =
			realloc(f->tensors, sizeof(*nt) * (size_t)cap);
		if (!nt)
			return -AG_ENOMEM;
		f->tensors = nt;
		f->cap = cap;
	}
	s = malloc(lp + ln + 1);
	if (!s)
		return -AG_ENOMEM;
	memcpy(s, prefix, lp);
	memcpy(s + lp, name, ln + 1);
	f->names[f->n] = s;
	f->tensors[f->n] = t;
	f->n++;
	return 0;
}

/* torch's named_parameters / state_dict walk: own entries, then children */
static int collect(struct ag_module *m, struct ag_module_flat *f,
		   const char *prefix, bool buffers)
{
	struct ag_module_entry *e = buffers ? m->buffers : m->params;
	int n = buffers ? m->n_buffers : m->n_params;
	int err;

	for (int i = 0; i < n; i++) {
		if (!e[i].t)
			continue;
		err = flat_push(f, prefix, e[i].name, e[i].t);
		if (err)
			return err;
	}
	for (int i = 0; i < m->n_children; i++) {
		size_t lp = strlen(prefix), lc = strlen(m->children[i].name);
		char *p = malloc(lp + lc + 2);

		if (!p)
			return -AG_ENOMEM;
		memcpy(p, prefix, lp);
		memcpy(p + lp, m->children[i].name, lc);
		p[lp + lc] = '.';
		p[lp + lc + 1] = 0;
		err = collect(m->children[i].m, f, p, buffers);
		free(p);
		if (err)
			return err;
	}
	return 0;
}

static int named(struct ag_module *m, bool buffers, const char *fn,
		 const char *const **names, struct ag_tensor *const **tensors,
		 int *n)
{
	struct ag_module_flat *f;
	int err;

	if (!m)
		return ag__nn_err_null("%s: module is NULL", fn);
	f = buffers ? &m->flat_buffers : &m->flat_params;
	flat_clear(f);
	err = collect(m, f, "", buffers);
	if (err) {
		flat_clear(f);
		return ag_set_error(AG_ENOMEM, "%s: out of memory", fn);
	}
	f->valid = true;
	if (names)
		*names = f->names;
	if (tensors)
		*tensors = f->tensors;
	if (n)
		*n = f->n;
	return 0;
}

int ag_module_named_parameters(struct ag_module *m, const char *const **names,
			       struct ag_tensor *const **tensors, int *n)
{
	NN_UNSCOPED();
	return named(m, false, "ag_module_named_parameters", names, tensors, n);
}

int ag_module_named_buffers(struct ag_module *m, const char *const **names,
			    struct ag_tensor *const **tensors, int *n)
{
	NN_UNSCOPED();
	return named(m, true, "ag_module_named_buffers", names, tensors, n);
}

int ag_module_parameters(struct ag_module *m, struct ag_tensor ***params,
			 int *n)
{
	NN_UNSCOPED();
	int err = named(m, false, "ag_module_parameters", NULL, NULL, n);

	if (!err && params)
		*params = m->flat_params.tensors;
	return err;
}

void ag_module_requires_grad(struct ag_module *m, bool on)
{
	NN_UNSCOPED();
	if (!m)
		return;
	for (int i = 0; i < m->n_params; i++)
		if (m->params[i].t)
			ag_tensor_set_requires_grad(m->params[i].t, on);
	for (int i = 0; i < m->n_children; i++)
		ag_module_requires_grad(m->children[i].m, on);
}

int ag_module_prepack(struct ag_module *m)
{
	NN_UNSCOPED();
	int total = 0, rc;

	if (!m)
		return ag__nn_err_null("ag_module_prepack: module is NULL");
	if (m->ops->prepack) {
		rc = m->ops->prepack(m);
		if (rc < 0)
			return rc;
		total += rc;
	}
	for (int i = 0; i < m->n_children; i++) {
		rc = ag_module_prepack(m->children[i].m);
		if (rc < 0)
			return rc;
		total += rc;
	}
	return total;
}

void ag_module_zero_grad(struct ag_module *m)
{
	NN_UNSCOPED();
	if (!m)
		return;
	for (int i = 0; i < m->n_params; i++)
		if (m->params[i].t)
			ag_tensor_zero_grad(m->params[i].t);
	for (int i = 0; i < m->n_children; i++)
		ag_module_zero_grad(m->children[i].m);
}

struct ag_tensor *ag_parameter(struct ag_tensor *t)
{
	struct ag_tensor *p;

	if (!t) {
		if (!ag_errcode())
			ag__nn_err_null("ag_parameter: tensor is NULL");
		return NULL;
	}
	p = ag_detach(t);
	if (p && ag_tensor_set_requires_grad(p, true)) {
		ag_tensor_put(p);
		return NULL;
	}
	return p;
}

int ag__nn_err_null(const char *fmt, ...)
{
	char msg[256];
	va_list ap;

	if (ag_errcode())
		return -ag_errcode();
	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	return ag_set_error(AG_EINVAL, "%s", msg);
}
