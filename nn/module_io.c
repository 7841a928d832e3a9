// SPDX-License-Identifier: MIT
/*
 * Module checkpoints: a module's state dict (torch's names, parameters then
 * buffers) as a safetensors file.  Loading checks the whole file against
 * the module before it copies anything, so a file that does not fit leaves
 * every parameter as it was.
 *
 * Built on two functions of ag/nn.h (nn/ modules):
 *	ag_module_named_parameters(m, &names, &tensors, &n)
 *	ag_module_named_buffers(m, &names, &tensors, &n)
 * each giving borrowed arrays in state_dict order.
 */
#include <stdlib.h>
#include <string.h>

#include <ag/checkpoint.h>
#include <ag/error.h>
#include <ag/mode.h>
#include <ag/nn.h>
#include <ag/ops.h>
#include <ag/tensor.h>

#include "safetensors.h"
#include "nn_internal.h"

/* The state dict, parameters then buffers, in arrays the caller frees. */
struct state {
	const char **names;
	struct ag_tensor **ts;
	int n;
};

static int state_of(struct ag_module *m, const char *fn, struct state *s)
{
	const char *const *pn, *const *bn;
	struct ag_tensor *const *pt, *const *bt;
	int np, nb, err;

	memset(s, 0, sizeof(*s));
	if (!m)
		return ag__nn_err_null("%s: module is NULL", fn);
	err = ag_module_named_parameters(m, &pn, &pt, &np);
	if (!err)
		err = ag_module_named_buffers(m, &bn, &bt, &nb);
	if (err)
		return err;
	s->names = malloc(sizeof(*s->names) * ((size_t)np + nb + 1));
	s->ts = malloc(sizeof(*s->ts) * ((size_t)np + nb + 1));
	if (!s->names || !s->ts) {
		free(s->names);
		free(s->ts);
		return ag_set_error(AG_ENOMEM, "%s: out of memory", fn);
	}
	for (int i = 0; i < np; i++) {
		s->names[s->n] = pn[i];
		s->ts[s->n++] = pt[i];
	}
	for (int i = 0; i < nb; i++) {
		s->names[s->n] = bn[i];
		s->ts[s->n++] = bt[i];
	}
	return 0;
}

static void state_free(struct state *s)
{
	free(s->names);
	free(s->ts);
}

int ag_module_save(struct ag_module *m, const char *path)
{
	NN_UNSCOPED();
	struct state s;
	int err = state_of(m, "ag_module_save", &s);

	if (err)
		return err;
	err = ag_safetensors_save(path, s.names, s.ts, s.n);
	state_free(&s);
	return err;
}

int ag_module_load(struct ag_module *m, const char *path)
{
	NN_UNSCOPED();
	struct ag_load_opts o = AG_LOAD_OPTS_DEFAULT;

	return ag_module_load_ex(m, path, &o);
}

void ag_load_keys_free(char **keys, int n)
{
	NN_UNSCOPED();
	if (!keys)
		return;
	for (int i = 0; i < n; i++)
		free(keys[i]);
	free(keys);
}

/* A list of key names for the caller, and for messages. */
struct keys {
	char **k;
	int n;
};

static int keys_add(struct keys *l, const char *name)
{
	char **k = realloc(l->k, sizeof(*k) * ((size_t)l->n + 1));

	if (!k)
		return ag_set_error(AG_ENOMEM, "ag_module_load: out of memory");
	l->k = k;
	k[l->n] = strdup(name);
	if (!k[l->n])
		return ag_set_error(AG_ENOMEM, "ag_module_load: out of memory");
	l->n++;
	return 0;
}

/* "'a', 'b', 'c'" cut to fit buf. */
static const char *keys_text(const struct keys *l, char *buf, size_t size)
{
	size_t at = 0;

	buf[0] = 0;
	for (int i = 0; i < l->n && at < size; i++)
		at += (size_t)snprintf(buf + at, size - at, "%s'%s'",
				       i ? ", " : "", l->k[i]);
	if (at >= size && size > 4)
		strcpy(buf + size - 4, "...");
	return buf;
}

static int find_name(const char *const *names, int n, const char *name)
{
	for (int i = 0; i < n; i++)
		if (!strcmp(names[i], name))
			return i;
	return -1;
}

static void shape_text(char *buf, size_t size, enum ag_dtype dt, int ndim,
		       const int64_t *shape)
{
	size_t at = (size_t)snprintf(buf, size, "%s [", ag_dtype_name(dt));

	for (int d = 0; d < ndim && at < size; d++)
		at += (size_t)snprintf(buf + at, size - at, "%s%lld",
				       d ? ", " : "", (long long)shape[d]);
	if (at < size)
		snprintf(buf + at, size - at, "]");
}

/* The file's entry for a module tensor has its dtype and shape. */
static int check_entry(const char *path, struct ag_safetensors *st,
		       const char *name, struct ag_tensor *t)
{
	const int64_t *shape;
	enum ag_dtype dt;
	char fs[160], ms[160];
	int ndim, err;
	bool same;

	err = ag_safetensors_info(st, name, &dt, &ndim, &shape);
	if (err)
		return err;
	same = dt == ag_tensor_dtype(t) && ndim == ag_tensor_ndim(t);
	for (int d = 0; same && d < ndim; d++)
		same = shape[d] == ag_tensor_shape(t)[d];
	if (same)
		return 0;
	shape_text(fs, sizeof(fs), dt, ndim, shape);
	shape_text(ms, sizeof(ms), ag_tensor_dtype(t), ag_tensor_ndim(t),
		   ag_tensor_shape(t));
	return ag_set_error(
		AG_EINVAL,
		"ag_module_load: %s: '%s' is %s in the file but %s in the module",
		path, name, fs, ms);
}

/*
 * Sorts the keys into missing and unexpected and checks every present
 * one; srcs[i] is set to the file's copy of module tensor i (NULL when
 * missing).
 */
static int plan(const char *path, struct ag_safetensors *st,
		const struct state *s, struct ag_tensor **srcs,
		struct keys *missing, struct keys *unexpected)
{
	int nf = ag_safetensors_count(st), err = 0;
	const char **fnames = calloc((size_t)nf + 1, sizeof(*fnames));

	if (!fnames)
		return ag_set_error(AG_ENOMEM, "ag_module_load: out of memory");
	for (int i = 0; i < nf; i++)
		fnames[i] = ag_safetensors_name(st, i);
	for (int i = 0; !err && i < s->n; i++) {
		if (find_name(fnames, nf, s->names[i]) < 0)
			err = keys_add(missing, s->names[i]);
		else
			err = check_entry(path, st, s->names[i], s->ts[i]);
	}
	for (int i = 0; !err && i < nf; i++)
		if (find_name(s->names, s->n, fnames[i]) < 0)
			err = keys_add(unexpected, fnames[i]);
	for (int i = 0; !err && i < s->n; i++) {
		if (find_name(fnames, nf, s->names[i]) < 0)
			continue;
		srcs[i] = ag_safetensors_get(st, s->names[i]);
		if (!srcs[i])
			err = -ag_errcode();
	}
	free(fnames);
	return err;
}

static int strict_error(const char *path, const struct keys *missing,
			const struct keys *unexpected)
{
	char a[512], b[512];

	return ag_set_error(
		AG_EINVAL,
		"ag_module_load: %s: missing keys: [%s]; unexpected keys: [%s]",
		path, keys_text(missing, a, sizeof(a)),
		keys_text(unexpected, b, sizeof(b)));
}

/* Copies every source into its parameter or buffer, bumping versions. */
static int copy_all(const struct state *s, struct ag_tensor **srcs)
{
	AG_NO_GRAD_SCOPE();
	int err = 0;

	for (int i = 0; !err && i < s->n; i++)
		if (srcs[i])
			err = ag_copy_(s->ts[i], srcs[i]);
	return err;
}

static void hand_out(const struct ag_load_opts *o, struct keys *missing,
		     struct keys *unexpected)
{
	if (o->missing) {
		*o->missing = missing->k;
		missing->k = NULL;
	}
	if (o->n_missing)
		*o->n_missing = missing->n;
	if (o->unexpected) {
		*o->unexpected = unexpected->k;
		unexpected->k = NULL;
	}
	if (o->n_unexpected)
		*o->n_unexpected = unexpected->n;
}

int ag_module_load_ex(struct ag_module *m, const char *path,
		      const struct ag_load_opts *o)
{
	NN_UNSCOPED();
	struct keys missing = { 0 }, unexpected = { 0 };
	struct ag_load_opts def = AG_LOAD_OPTS_DEFAULT;
	struct ag_tensor **srcs = NULL;
	struct ag_safetensors *st;
	struct state s;
	int err;

	if (!o)
		o = &def;
	if (o->missing)
		*o->missing = NULL;
	if (o->unexpected)
		*o->unexpected = NULL;
	err = state_of(m, "ag_module_load", &s);
	if (err)
		return err;
	st = ag_safetensors_open(path);
	if (!st) {
		state_free(&s);
		return -ag_errcode();
	}
	srcs = calloc((size_t)s.n + 1, sizeof(*srcs));
	if (!srcs) {
		err = ag_set_error(AG_ENOMEM, "ag_module_load: out of memory");
		goto out;
	}
	err = plan(path, st, &s, srcs, &missing, &unexpected);
	if (!err && o->strict && (missing.n || unexpected.n))
		err = strict_error(path, &missing, &unexpected);
	if (!err)
		err = copy_all(&s, srcs);
	hand_out(o, &missing, &unexpected);
out:
	for (int i = 0; srcs && i < s.n; i++)
		ag_tensor_put(srcs[i]);
	free(srcs);
	ag_load_keys_free(missing.k, missing.n);
	ag_load_keys_free(unexpected.k, unexpected.n);
	ag_safetensors_close(st);
	state_free(&s);
	return err;
}
