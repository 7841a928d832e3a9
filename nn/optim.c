// SPDX-License-Identifier: MIT
/*
 * SGD, Adam and AdamW with torch 1.13's single-tensor update formulas,
 * each a fused loop over a parameter's contiguous data (ag_sgd_update_,
 * ag_adam_update_: simd/ kernels, dispatched as every kernel); parameter
 * groups, named state, StepLR, CosineAnnealingLR and clip_grad_norm_.
 *
 * The updates count their write as an in-place op does (the parameter's
 * version), so a graph that saved the old parameter reports the change as
 * torch does (one atomic add, no pass over the data).
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include "nn_internal.h"

enum optim_kind { OPT_SGD, OPT_ADAM, OPT_ADAMW };

struct optim_group {
	double lr, weight_decay, initial_lr;
	int first, n; /* parameters [first, first + n) */
};

struct optim_state {
	struct ag_tensor *momentum_buffer;
	struct ag_tensor *step, *exp_avg, *exp_avg_sq, *max_exp_avg_sq;
};

struct ag_optim {
	enum optim_kind kind;
	double momentum, dampening, beta1, beta2, eps;
	bool nesterov, amsgrad;
	int n_groups, n_params;
	struct optim_group *groups;
	struct ag_tensor **params; /* owned references */
	struct optim_state *state;
	/* the borrowed arrays of ag_optim_state */
	int n_named;
	char **names;
	struct ag_tensor **named;
};

static const char *kind_name(const struct ag_optim *o)
{
	static const char *const names[] = { "SGD", "Adam", "AdamW" };

	return names[o->kind];
}

static int check_params(const char *fn, struct ag_tensor *const *params, int n)
{
	if (n < 0 || (n > 0 && !params))
		return ag_set_error(AG_EINVAL, "%s: %d parameters at %p", fn, n,
				    (const void *)params);
	for (int i = 0; i < n; i++) {
		enum ag_dtype dt;

		if (!params[i])
			return ag__nn_err_null("%s: parameter %d is NULL", fn,
					       i);
		dt = ag_tensor_dtype(params[i]);
		if (dt != AG_F32 && dt != AG_F64)
			return ag_set_error(
				AG_EDTYPE,
				"%s: parameter %d is %s; optimisers update f32 or f64",
				fn, i, ag_dtype_name(dt));
		if (!ag_tensor_is_leaf(params[i]) ||
		    !ag_tensor_is_contiguous(params[i]))
			return ag_set_error(
				AG_EINVAL,
				"%s: parameter %d must be a contiguous leaf",
				fn, i);
	}
	return 0;
}

static int add_group(struct ag_optim *o, const char *fn,
		     struct ag_tensor *const *params, int n, double lr,
		     double wd)
{
	struct optim_group *ng;
	struct ag_tensor **np;
	struct optim_state *ns;
	int err = check_params(fn, params, n);

	if (err)
		return err;
	if (!(lr >= 0) || !(wd >= 0))
		return ag_set_error(
			AG_EINVAL, "%s: lr %g and weight_decay %g must be >= 0",
			fn, lr, wd);
	for (int i = 0; i < n; i++)
		for (int j = 0; j < o->n_params; j++)
			if (o->params[j] == params[i])
				return ag_set_error(
					AG_EINVAL,
					"%s: parameter %d is already in a group",
					fn, i);
	ng = realloc(o->groups, sizeof(*ng) * (size_t)(o->n_groups + 1));
	if (!ng)
		goto nomem;
	o->groups = ng;
	np = realloc(o->params, sizeof(*np) * (size_t)(o->n_params + n + 1));
	if (!np)
		goto nomem;
	o->params = np;
	ns = realloc(o->state, sizeof(*ns) * (size_t)(o->n_params + n + 1));
	if (!ns)
		goto nomem;
	o->state = ns;
	memset(&ns[o->n_params], 0, sizeof(*ns) * (size_t)n);
	ng[o->n_groups] = (struct optim_group){ .lr = lr,
						.weight_decay = wd,
						.initial_lr = lr,
						.first = o->n_params,
						.n = n };
	for (int i = 0; i < n; i++)
		np[o->n_params + i] = ag_tensor_get(params[i]);
	o->n_params += n;
	return o->n_groups++;
nomem:
	return ag_set_error(AG_ENOMEM, "%s: out of memory", fn);
}

int ag_optim_add_param_group(struct ag_optim *o,
			     struct ag_tensor *const *params, int n, double lr,
			     double weight_decay)
{
	NN_UNSCOPED();
	if (!o)
		return ag_set_error(
			AG_EINVAL,
			"ag_optim_add_param_group: optimiser is NULL");
	return add_group(o, "ag_optim_add_param_group", params, n, lr,
			 weight_decay);
}

static struct ag_optim *optim_new(const char *fn, enum optim_kind kind,
				  struct ag_tensor *const *params, int n,
				  double lr, double wd)
{
	struct ag_optim *o = calloc(1, sizeof(*o));

	if (!o) {
		ag_set_error(AG_ENOMEM, "%s: out of memory", fn);
		return NULL;
	}
	o->kind = kind;
	if (add_group(o, fn, params, n, lr, wd) < 0) {
		ag_optim_free(o);
		return NULL;
	}
	return o;
}

struct ag_optim *ag_sgd_new_ex(struct ag_tensor *const *params, int n,
			       const struct ag_sgd_opts *so)
{
	NN_UNSCOPED();
	struct ag_optim *o;

	if (!so) {
		ag_set_error(AG_EINVAL, "ag_sgd_new_ex: options are NULL");
		return NULL;
	}
	if (!(so->momentum >= 0) || !isfinite(so->dampening) ||
	    (so->nesterov && (so->momentum <= 0 || so->dampening != 0))) {
		ag_set_error(
			AG_EINVAL,
			"ag_sgd_new_ex: momentum %g must be >= 0; nesterov needs momentum > 0 and dampening 0 (dampening %g)",
			so->momentum, so->dampening);
		return NULL;
	}
	o = optim_new("ag_sgd_new", OPT_SGD, params, n, so->lr,
		      so->weight_decay);
	if (!o)
		return NULL;
	o->momentum = so->momentum;
	o->dampening = so->dampening;
	o->nesterov = so->nesterov;
	return o;
}

struct ag_optim *ag_sgd_new(struct ag_tensor *const *params, int n, double lr,
			    double momentum, double weight_decay)
{
	NN_UNSCOPED();
	struct ag_sgd_opts so = { .lr = lr,
				  .momentum = momentum,
				  .weight_decay = weight_decay };

	return ag_sgd_new_ex(params, n, &so);
}

static struct ag_optim *adam_new(const char *fn, enum optim_kind kind,
				 struct ag_tensor *const *params, int n,
				 const struct ag_adam_opts *ao)
{
	struct ag_optim *o;

	if (!ao) {
		ag_set_error(AG_EINVAL, "%s: options are NULL", fn);
		return NULL;
	}
	if (!(ao->beta1 >= 0 && ao->beta1 < 1) ||
	    !(ao->beta2 >= 0 && ao->beta2 < 1) || !(ao->eps >= 0)) {
		ag_set_error(
			AG_EINVAL,
			"%s: betas (%g, %g) must be in [0, 1) and eps %g >= 0",
			fn, ao->beta1, ao->beta2, ao->eps);
		return NULL;
	}
	o = optim_new(fn, kind, params, n, ao->lr, ao->weight_decay);
	if (!o)
		return NULL;
	o->beta1 = ao->beta1;
	o->beta2 = ao->beta2;
	o->eps = ao->eps;
	o->amsgrad = ao->amsgrad;
	return o;
}

struct ag_optim *ag_adam_new_ex(struct ag_tensor *const *params, int n,
				const struct ag_adam_opts *ao)
{
	NN_UNSCOPED();
	return adam_new("ag_adam_new", OPT_ADAM, params, n, ao);
}

struct ag_optim *ag_adamw_new_ex(struct ag_tensor *const *params, int n,
				 const struct ag_adam_opts *ao)
{
	NN_UNSCOPED();
	return adam_new("ag_adamw_new", OPT_ADAMW, params, n, ao);
}

struct ag_optim *ag_adam_new(struct ag_tensor *const *params, int n, double lr,
			     double beta1, double beta2, double eps,
			     double weight_decay)
{
	NN_UNSCOPED();
	struct ag_adam_opts ao = { lr, beta1, beta2, eps, weight_decay, false };

	return ag_adam_new_ex(params, n, &ao);
}

struct ag_optim *ag_adamw_new(struct ag_tensor *const *params, int n, double lr,
			      double beta1, double beta2, double eps,
			      double weight_decay)
{
	NN_UNSCOPED();
	struct ag_adam_opts ao = { lr, beta1, beta2, eps, weight_decay, false };

	return ag_adamw_new_ex(params, n, &ao);
}

static void named_clear(struct ag_optim *o)
{
	for (int i = 0; i < o->n_named; i++)
		free(o->names[i]);
	free(o->names);
	free(o->named);
	o->names = NULL;
	o->named = NULL;
	o->n_named = 0;
}

static void state_clear(struct optim_state *s)
{
	ag_tensor_put(s->momentum_buffer);
	ag_tensor_put(s->step);
	ag_tensor_put(s->exp_avg);
	ag_tensor_put(s->exp_avg_sq);
	ag_tensor_put(s->max_exp_avg_sq);
	memset(s, 0, sizeof(*s));
}

void ag_optim_free(struct ag_optim *o)
{
	NN_UNSCOPED();
	if (!o)
		return;
	for (int i = 0; i < o->n_params; i++) {
		ag_tensor_put(o->params[i]);
		state_clear(&o->state[i]);
	}
	named_clear(o);
	free(o->params);
	free(o->state);
	free(o->groups);
	free(o);
}

void ag_optim_zero_grad(struct ag_optim *o)
{
	NN_UNSCOPED();
	for (int i = 0; o && i < o->n_params; i++)
		ag_tensor_zero_grad(o->params[i]);
}

void ag_optim_set_lr(struct ag_optim *o, double lr)
{
	NN_UNSCOPED();
	for (int i = 0; o && i < o->n_groups; i++)
		o->groups[i].lr = lr;
}

double ag_optim_get_lr(const struct ag_optim *o)
{
	NN_UNSCOPED();
	return o && o->n_groups ? o->groups[0].lr : NAN;
}

int ag_optim_group_set_lr(struct ag_optim *o, int group, double lr)
{
	NN_UNSCOPED();
	if (!o || group < 0 || group >= o->n_groups)
		return ag_set_error(
			AG_EINVAL, "ag_optim_group_set_lr: no group %d", group);
	o->groups[group].lr = lr;
	return 0;
}

double ag_optim_group_get_lr(const struct ag_optim *o, int group)
{
	NN_UNSCOPED();
	if (!o || group < 0 || group >= o->n_groups)
		return NAN;
	return o->groups[group].lr;
}

static struct ag_tensor *zeros_like(struct ag_tensor *p)
{
	return ag_zeros(ag_tensor_dtype(p), ag_tensor_ndim(p),
			ag_tensor_shape(p));
}

/* makes p's missing state; on failure nothing is kept */
static int ensure_state(struct ag_optim *o, int i)
{
	struct optim_state *s = &o->state[i];
	struct ag_tensor *p = o->params[i];

	if (o->kind == OPT_SGD)
		return 0; /* the momentum buffer starts as a copy of d */
	if (s->step)
		return 0;
	s->step = ag_zeros(AG_F32, 0, NULL);
	s->exp_avg = zeros_like(p);
	s->exp_avg_sq = zeros_like(p);
	if (o->amsgrad)
		s->max_exp_avg_sq = zeros_like(p);
	if (!s->step || !s->exp_avg || !s->exp_avg_sq ||
	    (o->amsgrad && !s->max_exp_avg_sq)) {
		state_clear(s);
		return -ag_errcode();
	}
	return 0;
}

static int step_one(struct ag_optim *o, const struct optim_group *gr, int i)
{
	struct ag_tensor *p = o->params[i], *g = ag_tensor_grad(p), *gc;
	struct optim_state *s = &o->state[i];
	int64_t n = ag_tensor_numel(p);
	int err;

	if (!g)
		return 0;
	if (ag_tensor_dtype(g) != ag_tensor_dtype(p) ||
	    ag_tensor_numel(g) != n) {
		ag_tensor_put(g);
		return ag_set_error(
			AG_EDTYPE,
			"ag_optim_step: parameter %d's grad does not match it in dtype or size",
			i);
	}
	gc = ag_contiguous(g);
	ag_tensor_put(g);
	if (!gc)
		return -ag_errcode();
	err = ensure_state(o, i);
	if (err)
		goto out;
	if (o->kind == OPT_SGD) {
		struct ag_sgd_update u = { gr->lr,	 o->momentum,
					   o->dampening, gr->weight_decay,
					   o->nesterov,	 false };

		if (o->momentum != 0 && !s->momentum_buffer) {
			s->momentum_buffer = zeros_like(p);
			if (!s->momentum_buffer) {
				err = -ag_errcode();
				goto out;
			}
			u.first = true;
		}
		err = ag_sgd_update_(p, gc, s->momentum_buffer, &u);
	} else {
		float *st = ag_tensor_data(s->step), next = *st + 1;

		err = ag_adam_update_(
			p, gc, s->exp_avg, s->exp_avg_sq, s->max_exp_avg_sq,
			&(struct ag_adam_update){ gr->lr, o->beta1, o->beta2,
						  o->eps, gr->weight_decay,
						  next, o->kind == OPT_ADAMW });
		if (!err)
			*st = next;
	}
out:
	ag_tensor_put(gc);
	return err;
}

int ag_optim_step(struct ag_optim *o)
{
	NN_UNSCOPED();
	struct ag_mode prev;
	int err = 0;

	if (!o)
		return ag__nn_err_null("ag_optim_step: optimiser is NULL");
	prev = ag_no_grad_enter();
	for (int k = 0; k < o->n_groups && !err; k++) {
		const struct optim_group *gr = &o->groups[k];

		for (int i = gr->first; i < gr->first + gr->n && !err; i++)
			err = step_one(o, gr, i);
	}
	ag_mode_exit(prev);
	return err;
}

/* ---- named state ---- */

static const char *const state_keys[] = { "momentum_buffer", "step", "exp_avg",
					  "exp_avg_sq", "max_exp_avg_sq" };

static struct ag_tensor **state_slot(struct optim_state *s, int key)
{
	switch (key) {
	case 0:
		return &s->momentum_buffer;
	case 1:
		return &s->step;
	case 2:
		return &s->exp_avg;
	case 3:
		return &s->exp_avg_sq;
	default:
		return &s->max_exp_avg_sq;
	}
}

/* torch's order inside a parameter's state: step first for Adam */
static const int adam_order[] = { 1, 2, 3, 4 };

int ag_optim_state(struct ag_optim *o, const char *const **names,
		   struct ag_tensor *const **tensors, int *n)
{
	NN_UNSCOPED();
	int cap;

	if (!o)
		return ag_set_error(AG_EINVAL,
				    "ag_optim_state: optimiser is NULL");
	named_clear(o);
	cap = 4 * o->n_params + 1;
	o->names = calloc((size_t)cap, sizeof(*o->names));
	o->named = calloc((size_t)cap, sizeof(*o->named));
	if (!o->names || !o->named)
		goto nomem;
	for (int i = 0; i < o->n_params; i++) {
		int nk = o->kind == OPT_SGD ? 1 : 4;

		for (int k = 0; k < nk; k++) {
			int key = o->kind == OPT_SGD ? 0 : adam_order[k];
			struct ag_tensor *t = *state_slot(&o->state[i], key);
			char buf[64];

			if (!t)
				continue;
			snprintf(buf, sizeof(buf), "state.%d.%s", i,
				 state_keys[key]);
			o->names[o->n_named] = ag__nn_strdup(buf);
			if (!o->names[o->n_named])
				goto nomem;
			o->named[o->n_named++] = t;
		}
	}
	if (names)
		*names = (const char *const *)o->names;
	if (tensors)
		*tensors = o->named;
	if (n)
		*n = o->n_named;
	return 0;
nomem:
	named_clear(o);
	return ag_set_error(AG_ENOMEM, "ag_optim_state: out of memory");
}

/* parses "state.<i>.<key>"; returns the key index or -1 */
static int parse_name(const struct ag_optim *o, const char *name, int *idx)
{
	char *end;
	long i;

	if (!name || strncmp(name, "state.", 6))
		return -1;
	i = strtol(name + 6, &end, 10);
	if (end == name + 6 || *end != '.' || i < 0 || i >= o->n_params)
		return -1;
	*idx = (int)i;
	for (int k = 0; k < 5; k++) {
		if (strcmp(end + 1, state_keys[k]))
			continue;
		if (o->kind == OPT_SGD ? k != 0 || o->momentum == 0 :
					 k == 0 || (k == 4 && !o->amsgrad))
			return -1;
		return k;
	}
	return -1;
}

static int check_entry(const struct ag_optim *o, const char *name,
		       struct ag_tensor *t, int *idx, int *key)
{
	struct ag_tensor *p;
	enum ag_dtype dt;

	*key = parse_name(o, name, idx);
	if (*key < 0)
		return ag_set_error(
			AG_EINVAL,
			"ag_optim_load_state: \"%s\" is not a state entry of this %s optimiser",
			name ? name : "(null)", kind_name(o));
	if (!t)
		return ag_set_error(
			AG_EINVAL,
			"ag_optim_load_state: tensor of \"%s\" is NULL", name);
	p = o->params[*idx];
	dt = ag_tensor_dtype(t);
	if (*key == 1) {
		if (ag_tensor_numel(t) != 1 || dt == AG_I64)
			return ag_set_error(
				AG_ESHAPE,
				"ag_optim_load_state: \"%s\" must be one floating value",
				name);
		return 0;
	}
	if (dt != ag_tensor_dtype(p))
		return ag_set_error(
			AG_EDTYPE,
			"ag_optim_load_state: \"%s\" is %s, its parameter %s",
			name, ag_dtype_name(dt),
			ag_dtype_name(ag_tensor_dtype(p)));
	if (ag_tensor_ndim(t) != ag_tensor_ndim(p) ||
	    memcmp(ag_tensor_shape(t), ag_tensor_shape(p),
		   sizeof(int64_t) * (size_t)ag_tensor_ndim(p)))
		return ag_set_error(
			AG_ESHAPE,
			"ag_optim_load_state: \"%s\" does not have its parameter's shape",
			name);
	return 0;
}

int ag_optim_load_state(struct ag_optim *o, const char *const *names,
			struct ag_tensor *const *tensors, int n)
{
	NN_UNSCOPED();
	struct optim_state *fresh;
	struct ag_mode prev;
	int err = 0, idx, key;

	if (!o || n < 0 || (n > 0 && (!names || !tensors)))
		return ag_set_error(
			AG_EINVAL,
			"ag_optim_load_state: bad arguments (%d entries)", n);
	for (int i = 0; i < n; i++) {
		err = check_entry(o, names[i], tensors[i], &idx, &key);
		if (err)
			return err;
	}
	/* build the whole new state aside, then swap it in */
	fresh = calloc((size_t)o->n_params + 1, sizeof(*fresh));
	if (!fresh)
		return ag_set_error(AG_ENOMEM,
				    "ag_optim_load_state: out of memory");
	prev = ag_no_grad_enter();
	for (int i = 0; i < n && !err; i++) {
		struct ag_tensor **slot, *c;

		check_entry(o, names[i], tensors[i], &idx, &key);
		slot = state_slot(&fresh[idx], key);
		if (key == 1)
			c = ag_scalar(AG_F32, ag_tensor_item(tensors[i]));
		else {
			struct ag_tensor *d = ag_detach(tensors[i]);

			c = ag_clone(d);
			ag_tensor_put(d);
		}
		if (!c) {
			err = -ag_errcode();
			break;
		}
		ag_tensor_put(*slot);
		*slot = c;
	}
	ag_mode_exit(prev);
	/* Adam needs all its state for a parameter, or none */
	for (int i = 0; i < o->n_params && !err && o->kind != OPT_SGD; i++) {
		struct optim_state *s = &fresh[i];
		bool any = s->step || s->exp_avg || s->exp_avg_sq ||
			   s->max_exp_avg_sq;
		bool all = s->step && s->exp_avg && s->exp_avg_sq &&
			   (!o->amsgrad || s->max_exp_avg_sq);

		if (any && !all)
			err = ag_set_error(
				AG_EINVAL,
				"ag_optim_load_state: the state of parameter %d is incomplete",
				i);
	}
	if (err) {
		for (int i = 0; i < o->n_params; i++)
			state_clear(&fresh[i]);
		free(fresh);
		return err;
	}
	for (int i = 0; i < o->n_params; i++)
		state_clear(&o->state[i]);
	memcpy(o->state, fresh, sizeof(*fresh) * (size_t)o->n_params);
	free(fresh);
	named_clear(o);
	return 0;
}

/* ---- learning-rate schedulers ---- */

enum sched_kind { SCHED_STEP, SCHED_COSINE };

struct ag_lr_scheduler {
	enum sched_kind kind;
	struct ag_optim *o; /* borrowed: free the scheduler first */
	int last_epoch, n_groups, step_size, t_max;
	double gamma, eta_min;
	double *base; /* each group's lr at construction */
	struct ag_tensor *named[3]; /* ag_scheduler_state's, until the next */
};

static const char *const sched_names[3] = { "scheduler.last_epoch",
					    "scheduler.base_lrs",
					    "scheduler.last_lr" };

static struct ag_lr_scheduler *sched_new(const char *fn, struct ag_optim *o,
					 enum sched_kind kind)
{
	struct ag_lr_scheduler *s;

	if (!o) {
		ag__nn_err_null("%s: optimiser is NULL", fn);
		return NULL;
	}
	s = calloc(1, sizeof(*s));
	if (s)
		s->base = calloc((size_t)o->n_groups + 1, sizeof(*s->base));
	if (!s || !s->base) {
		free(s);
		ag_set_error(AG_ENOMEM, "%s: out of memory", fn);
		return NULL;
	}
	s->kind = kind;
	s->o = o;
	s->n_groups = o->n_groups;
	for (int i = 0; i < o->n_groups; i++)
		s->base[i] = o->groups[i].lr;
	return s;
}

struct ag_lr_scheduler *ag_step_lr_new(struct ag_optim *o, int step_size,
				       double gamma)
{
	NN_UNSCOPED();
	struct ag_lr_scheduler *s;

	if (step_size <= 0) {
		ag_set_error(AG_EINVAL,
			     "ag_step_lr_new: step_size %d must be positive",
			     step_size);
		return NULL;
	}
	s = sched_new("ag_step_lr_new", o, SCHED_STEP);
	if (s) {
		s->step_size = step_size;
		s->gamma = gamma;
	}
	return s;
}

struct ag_lr_scheduler *ag_cosine_lr_new(struct ag_optim *o, int t_max,
					 double eta_min)
{
	NN_UNSCOPED();
	struct ag_lr_scheduler *s;

	if (t_max <= 0) {
		ag_set_error(AG_EINVAL,
			     "ag_cosine_lr_new: t_max %d must be positive",
			     t_max);
		return NULL;
	}
	s = sched_new("ag_cosine_lr_new", o, SCHED_COSINE);
	if (s) {
		s->t_max = t_max;
		s->eta_min = eta_min;
	}
	return s;
}

/* torch's recursive (chainable) get_lr forms, for the same roundings */
static double next_lr(const struct ag_lr_scheduler *s, double lr, double base)
{
	int e = s->last_epoch, t = s->t_max;

	if (s->kind == SCHED_STEP)
		return e % s->step_size ? lr : lr * s->gamma;
	if ((((e - 1 - t) % (2 * t)) + 2 * t) % (2 * t) == 0)
		return lr + (base - s->eta_min) * (1 - cos(M_PI / t)) / 2;
	return (1 + cos(M_PI * e / t)) / (1 + cos(M_PI * (e - 1) / t)) *
		       (lr - s->eta_min) +
	       s->eta_min;
}

int ag_scheduler_step(struct ag_lr_scheduler *s)
{
	NN_UNSCOPED();
	if (!s)
		return ag_set_error(AG_EINVAL,
				    "ag_scheduler_step: scheduler is NULL");
	s->last_epoch++;
	for (int i = 0; i < s->n_groups; i++)
		s->o->groups[i].lr = next_lr(s, s->o->groups[i].lr, s->base[i]);
	return 0;
}

static void sched_named_clear(struct ag_lr_scheduler *s)
{
	for (int i = 0; i < 3; i++) {
		ag_tensor_put(s->named[i]);
		s->named[i] = NULL;
	}
}

void ag_scheduler_free(struct ag_lr_scheduler *s)
{
	NN_UNSCOPED();
	if (!s)
		return;
	sched_named_clear(s);
	free(s->base);
	free(s);
}

int ag_scheduler_state(struct ag_lr_scheduler *s, const char *const **names,
		       struct ag_tensor *const **tensors, int *n)
{
	NN_UNSCOPED();
	int64_t g;
	double *now;

	if (!s)
		return ag_set_error(AG_EINVAL,
				    "ag_scheduler_state: scheduler is NULL");
	sched_named_clear(s);
	g = s->n_groups;
	now = calloc((size_t)g + 1, sizeof(*now));
	for (int i = 0; now && i < s->n_groups; i++)
		now[i] = s->o->groups[i].lr;
	s->named[0] = ag_scalar(AG_I64, s->last_epoch);
	s->named[1] = ag_from_data(AG_F64, 1, &g, s->base);
	s->named[2] = now ? ag_from_data(AG_F64, 1, &g, now) : NULL;
	free(now);
	if (!s->named[0] || !s->named[1] || !s->named[2]) {
		sched_named_clear(s);
		return ag_set_error(AG_ENOMEM,
				    "ag_scheduler_state: out of memory");
	}
	if (names)
		*names = sched_names;
	if (tensors)
		*tensors = s->named;
	if (n)
		*n = 3;
	return 0;
}

/* Entry k of ag_scheduler_load_state is well formed for s. */
static int sched_check(const struct ag_lr_scheduler *s, int k,
		       struct ag_tensor *t)
{
	const char *fn = "ag_scheduler_load_state";

	if (!t)
		return ag_set_error(AG_EINVAL, "%s: tensor of \"%s\" is NULL",
				    fn, sched_names[k]);
	if (k == 0) {
		if (ag_tensor_ndim(t) != 0 || ag_tensor_dtype(t) != AG_I64)
			return ag_set_error(
				AG_EDTYPE,
				"%s: \"%s\" must be a 0-d i64, not %dd %s", fn,
				sched_names[k], ag_tensor_ndim(t),
				ag_dtype_name(ag_tensor_dtype(t)));
		if (ag_tensor_item_i64(t) < 0 ||
		    ag_tensor_item_i64(t) > INT32_MAX)
			return ag_set_error(AG_EINVAL,
					    "%s: \"%s\" is %lld, out of range",
					    fn, sched_names[k],
					    (long long)ag_tensor_item_i64(t));
		return 0;
	}
	if (ag_tensor_dtype(t) != AG_F64)
		return ag_set_error(AG_EDTYPE, "%s: \"%s\" is %s, not f64", fn,
				    sched_names[k],
				    ag_dtype_name(ag_tensor_dtype(t)));
	if (ag_tensor_ndim(t) != 1 || ag_tensor_shape(t)[0] != s->n_groups)
		return ag_set_error(
			AG_ESHAPE,
			"%s: \"%s\" must have shape [%d], one lr per group", fn,
			sched_names[k], s->n_groups);
	return 0;
}

/* v[0..n) from a 1-d f64 tensor of any layout */
static int sched_values(struct ag_tensor *t, double *v, int n)
{
	struct ag_tensor *c = ag_contiguous(t);

	if (!c)
		return -ag_errcode();
	memcpy(v, ag_tensor_data(c), sizeof(*v) * (size_t)n);
	ag_tensor_put(c);
	return 0;
}

int ag_scheduler_load_state(struct ag_lr_scheduler *s, const char *const *names,
			    struct ag_tensor *const *tensors, int n)
{
	NN_UNSCOPED();
	struct ag_tensor *got[3] = { NULL, NULL, NULL };
	double *base = NULL, *now = NULL;
	int err;

	if (!s || n < 0 || (n > 0 && (!names || !tensors)))
		return ag_set_error(
			AG_EINVAL,
			"ag_scheduler_load_state: bad arguments (%d entries)",
			n);
	for (int i = 0; i < n; i++) {
		int k = 0;

		while (k < 3 && (!names[i] || strcmp(names[i], sched_names[k])))
			k++;
		if (k == 3 || got[k])
			return ag_set_error(
				AG_EINVAL,
				"ag_scheduler_load_state: \"%s\" is %s",
				names[i] ? names[i] : "(null)",
				k == 3 ? "not a scheduler state entry" :
					 "given twice");
		err = sched_check(s, k, tensors[i]);
		if (err)
			return err;
		got[k] = tensors[i];
	}
	for (int k = 0; k < 3; k++)
		if (!got[k])
			return ag_set_error(
				AG_EINVAL,
				"ag_scheduler_load_state: \"%s\" is missing",
				sched_names[k]);
	base = calloc((size_t)s->n_groups + 1, sizeof(*base));
	now = calloc((size_t)s->n_groups + 1, sizeof(*now));
	err = !base || !now ?
		      ag_set_error(AG_ENOMEM,
				   "ag_scheduler_load_state: out of memory") :
		      0;
	if (!err)
		err = sched_values(got[1], base, s->n_groups);
	if (!err)
		err = sched_values(got[2], now, s->n_groups);
	if (!err) {
		s->last_epoch = (int)ag_tensor_item_i64(got[0]);
		memcpy(s->base, base, sizeof(*base) * (size_t)s->n_groups);
		for (int i = 0; i < s->n_groups; i++)
			s->o->groups[i].lr = now[i];
		sched_named_clear(s);
	}
	free(base);
	free(now);
	return err;
}

/* ---- clip_grad_norm_ ---- */

static double grad_norm(struct ag_tensor *g, double p)
{
	int64_t n = ag_tensor_numel(g);
	bool f32 = ag_tensor_dtype(g) == AG_F32;
	const void *d = ag_tensor_data(g);
	double acc = 0;

	for (int64_t i = 0; i < n; i++) {
		double v = fabs(f32 ? ((const float *)d)[i] :
				      ((const double *)d)[i]);

		if (isinf(p))
			acc = v > acc || isnan(v) ? v : acc;
		else if (p == 2)
			acc += v * v;
		else if (p == 1)
			acc += v;
		else
			acc += pow(v, p);
	}
	return isinf(p) ? acc :
	       p == 2	? sqrt(acc) :
	       p == 1	? acc :
			  pow(acc, 1 / p);
}

double ag_clip_grad_norm(struct ag_tensor *const *params, int n,
			 double max_norm, double norm_type)
{
	NN_UNSCOPED();
	struct ag_tensor **grads;
	double total = 0, coef;
	struct ag_mode prev;
	int ng = 0, err = 0;

	if (n < 0 || (n > 0 && !params) || !(norm_type > 0))
		return ag_set_error(
			AG_EINVAL,
			"ag_clip_grad_norm: %d parameters, norm_type %g (must be > 0)",
			n, norm_type);
	grads = calloc((size_t)n + 1, sizeof(*grads));
	if (!grads)
		return ag_set_error(AG_ENOMEM,
				    "ag_clip_grad_norm: out of memory");
	for (int i = 0; i < n; i++) {
		struct ag_tensor *g = params[i] ? ag_tensor_grad(params[i]) :
						  NULL;

		if (!g)
			continue;
		if (ag_tensor_dtype(g) == AG_I64) {
			ag_tensor_put(g);
			err = ag_set_error(
				AG_EDTYPE,
				"ag_clip_grad_norm: parameter %d has an i64 grad",
				i);
			goto out;
		}
		grads[ng++] = g;
	}
	/* torch: the norm of the per-gradient norms */
	for (int i = 0; i < ng; i++) {
		struct ag_tensor *c = ag_contiguous(grads[i]);
		double v = c ? grad_norm(c, norm_type) : NAN;

		ag_tensor_put(c);
		if (isinf(norm_type))
			total = v > total || isnan(v) ? v : total;
		else if (norm_type == 2)
			total += v * v;
		else
			total += pow(v, norm_type);
	}
	if (!isinf(norm_type))
		total = norm_type == 2 ? sqrt(total) :
					 pow(total, 1 / norm_type);
	coef = max_norm / (total + 1e-6);
	if (coef > 1)
		coef = 1;
	prev = ag_no_grad_enter();
	for (int i = 0; i < ng && !err; i++)
		err = ag_mul_scalar_(grads[i], coef);
	ag_mode_exit(prev);
out:
	for (int i = 0; i < ng; i++)
		ag_tensor_put(grads[i]);
	free(grads);
	return err ? err : total;
}
