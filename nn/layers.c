// SPDX-License-Identifier: MIT
/*
 * The built-in modules, each a thin wrapper over the functional op it
 * names, defined through the same registration API users have.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include "nn_internal.h"

/* uniform in [-bound, bound) of shape, from g: (2 u - 1) bound, as torch */
static struct ag_tensor *uniform(struct ag_generator *g, int ndim,
				 const int64_t *shape, double bound)
{
	struct ag_tensor *t = ag_rand(g, AG_F32, ndim, shape);
	float *d;

	if (!t)
		return NULL;
	d = ag_tensor_data(t);
	for (int64_t i = 0; i < ag_tensor_numel(t); i++)
		d[i] = (float)((2.0 * d[i] - 1.0) * bound);
	return t;
}

/* registers a fresh tensor as a parameter, consuming the reference */
static int add_param(struct ag_module *m, const char *name, struct ag_tensor *t)
{
	struct ag_tensor *p = ag_parameter(t);
	int err;

	ag_tensor_put(t);
	if (!p)
		return -ag_errcode();
	err = ag_module_add_parameter(m, name, p);
	ag_tensor_put(p);
	return err;
}

static int add_buffer(struct ag_module *m, const char *name,
		      struct ag_tensor *t)
{
	int err;

	if (!t)
		return -ag_errcode();
	err = ag_module_add_buffer(m, name, t);
	ag_tensor_put(t);
	return err;
}

static void *module_alloc(size_t size, const struct ag_module_ops *ops)
{
	struct ag_module *m = calloc(1, size);

	if (!m) {
		ag_set_error(AG_ENOMEM, "%s: out of memory", ops->name);
		return NULL;
	}
	/* the ag_module is the first member of every built-in struct */
	ag_module_init(m, ops);
	return m;
}

/* weight and bias as torch's reset_parameters for Linear and Conv2d */
static int init_affine(struct ag_module *m, int ndim, const int64_t *wshape,
		       int64_t fan_in, bool bias, struct ag_generator *g)
{
	double bound = fan_in > 0 ? 1.0 / sqrt((double)fan_in) : 0.0;
	int err;

	if (!g)
		return ag_set_error(AG_EINVAL, "%s: generator is NULL",
				    ag_module_name(m));
	err = add_param(m, "weight", uniform(g, ndim, wshape, bound));
	if (err || !bias)
		return err;
	return add_param(m, "bias", uniform(g, 1, wshape, bound));
}

/* ---- Linear ---- */

static struct ag_tensor *linear_forward(struct ag_module *m,
					struct ag_tensor *x)
{
	return ag_linear(x, ag_module_get_parameter(m, "weight"),
			 ag_module_get_parameter(m, "bias"));
}

static int linear_prepack(struct ag_module *m)
{
	return ag_linear_prepack(ag_module_get_parameter(m, "weight"));
}

static const struct ag_module_ops linear_ops = {
	.name = "Linear",
	.forward = linear_forward,
	.prepack = linear_prepack,
};

struct ag_module *ag_linear_new(int64_t in, int64_t out, bool bias,
				struct ag_generator *g)
{
	NN_UNSCOPED();
	int64_t shape[2] = { out, in };
	struct ag_module *m;

	if (in <= 0 || out <= 0) {
		ag_set_error(
			AG_EINVAL,
			"ag_linear_new: in %lld and out %lld must be positive",
			(long long)in, (long long)out);
		return NULL;
	}
	m = module_alloc(sizeof(*m), &linear_ops);
	if (!m)
		return NULL;
	if (init_affine(m, 2, shape, in, bias, g)) {
		ag_module_put(m);
		return NULL;
	}
	return m;
}

/* ---- Conv2d ---- */

struct conv2d {
	struct ag_module m;
	struct ag_conv2d_opts o;
};

static struct ag_tensor *conv2d_forward(struct ag_module *m,
					struct ag_tensor *x)
{
	struct conv2d *c = nn_container_of(m, struct conv2d, m);

	return ag_conv2d(x, ag_module_get_parameter(m, "weight"),
			 ag_module_get_parameter(m, "bias"), &c->o);
}

static const struct ag_module_ops conv2d_ops = {
	.name = "Conv2d",
	.forward = conv2d_forward,
};

struct ag_module *ag_conv2d_new(int64_t in, int64_t out, int64_t kh, int64_t kw,
				const struct ag_conv2d_opts *o, bool bias,
				struct ag_generator *g)
{
	NN_UNSCOPED();
	struct conv2d *c;
	int64_t groups = o && o->groups ? o->groups : 1;
	int64_t shape[4];

	if (in <= 0 || out <= 0 || kh <= 0 || kw <= 0 || groups <= 0 ||
	    in % groups || out % groups) {
		ag_set_error(
			AG_EINVAL,
			"ag_conv2d_new: in %lld, out %lld, kernel %lldx%lld, groups %lld: sizes must be positive and groups divide the channels",
			(long long)in, (long long)out, (long long)kh,
			(long long)kw, (long long)groups);
		return NULL;
	}
	c = module_alloc(sizeof(*c), &conv2d_ops);
	if (!c)
		return NULL;
	if (o)
		c->o = *o;
	shape[0] = out;
	shape[1] = in / groups;
	shape[2] = kh;
	shape[3] = kw;
	if (init_affine(&c->m, 4, shape, shape[1] * kh * kw, bias, g)) {
		ag_module_put(&c->m);
		return NULL;
	}
	return &c->m;
}

/* ---- pooling ---- */

struct pool2d {
	struct ag_module m;
	int64_t kernel[2], stride[2], padding[2];
	int64_t out_h, out_w;
};

static struct ag_tensor *maxpool_forward(struct ag_module *m,
					 struct ag_tensor *x)
{
	struct pool2d *p = nn_container_of(m, struct pool2d, m);

	return ag_max_pool2d(x, p->kernel, p->stride, p->padding);
}

static struct ag_tensor *avgpool_forward(struct ag_module *m,
					 struct ag_tensor *x)
{
	struct pool2d *p = nn_container_of(m, struct pool2d, m);

	return ag_avg_pool2d(x, p->kernel, p->stride, p->padding);
}

static struct ag_tensor *adaptive_forward(struct ag_module *m,
					  struct ag_tensor *x)
{
	struct pool2d *p = nn_container_of(m, struct pool2d, m);

	return ag_adaptive_avg_pool2d(x, p->out_h, p->out_w);
}

static const struct ag_module_ops maxpool_ops = {
	.name = "MaxPool2d",
	.forward = maxpool_forward,
};

static const struct ag_module_ops avgpool_ops = {
	.name = "AvgPool2d",
	.forward = avgpool_forward,
};

static const struct ag_module_ops adaptive_ops = {
	.name = "AdaptiveAvgPool2d",
	.forward = adaptive_forward,
};

static struct ag_module *pool_new(const struct ag_module_ops *ops,
				  const int64_t kernel[2],
				  const int64_t stride[2],
				  const int64_t padding[2])
{
	struct pool2d *p;

	if (!kernel || kernel[0] <= 0 || kernel[1] <= 0) {
		ag_set_error(AG_EINVAL,
			     "%s: the kernel must be given and positive",
			     ops->name);
		return NULL;
	}
	p = module_alloc(sizeof(*p), ops);
	if (!p)
		return NULL;
	for (int i = 0; i < 2; i++) {
		p->kernel[i] = kernel[i];
		p->stride[i] = stride && stride[i] ? stride[i] : kernel[i];
		p->padding[i] = padding ? padding[i] : 0;
	}
	return &p->m;
}

struct ag_module *ag_maxpool2d_new(const int64_t kernel[2],
				   const int64_t stride[2],
				   const int64_t padding[2])
{
	NN_UNSCOPED();
	return pool_new(&maxpool_ops, kernel, stride, padding);
}

struct ag_module *ag_avgpool2d_new(const int64_t kernel[2],
				   const int64_t stride[2],
				   const int64_t padding[2])
{
	NN_UNSCOPED();
	return pool_new(&avgpool_ops, kernel, stride, padding);
}

struct ag_module *ag_adaptive_avgpool2d_new(int64_t out_h, int64_t out_w)
{
	NN_UNSCOPED();
	struct pool2d *p;

	if (out_h <= 0 || out_w <= 0) {
		ag_set_error(
			AG_EINVAL,
			"ag_adaptive_avgpool2d_new: output %lldx%lld must be positive",
			(long long)out_h, (long long)out_w);
		return NULL;
	}
	p = module_alloc(sizeof(*p), &adaptive_ops);
	if (!p)
		return NULL;
	p->out_h = out_h;
	p->out_w = out_w;
	return &p->m;
}

/* ---- Flatten ---- */

struct flatten {
	struct ag_module m;
	int start, end;
};

static struct ag_tensor *flatten_forward(struct ag_module *m,
					 struct ag_tensor *x)
{
	struct flatten *f = nn_container_of(m, struct flatten, m);
	int nd = ag_tensor_ndim(x), s = f->start, e = f->end, k = 0;
	const int64_t *sh = ag_tensor_shape(x);
	int64_t shape[AG_MAX_DIMS], prod = 1;

	if (s < 0)
		s += nd;
	if (e < 0)
		e += nd;
	if (nd == 0 && (s == 0 || s == -1) && (e == 0 || e == -1)) {
		int64_t one = 1;

		return ag_reshape(x, 1, &one);
	}
	if (s < 0 || e >= nd || s > e) {
		ag_set_error(
			AG_EINVAL,
			"Flatten: dims %d..%d out of range for a %d-d input",
			f->start, f->end, nd);
		return NULL;
	}
	for (int i = 0; i < s; i++)
		shape[k++] = sh[i];
	for (int i = s; i <= e; i++)
		prod *= sh[i];
	shape[k++] = prod;
	for (int i = e + 1; i < nd; i++)
		shape[k++] = sh[i];
	return ag_reshape(x, k, shape);
}

static const struct ag_module_ops flatten_ops = {
	.name = "Flatten",
	.forward = flatten_forward,
};

struct ag_module *ag_flatten_new(int start_dim, int end_dim)
{
	NN_UNSCOPED();
	struct flatten *f = module_alloc(sizeof(*f), &flatten_ops);

	if (!f)
		return NULL;
	f->start = start_dim;
	f->end = end_dim;
	return &f->m;
}

/* ---- Dropout ---- */

struct dropout {
	struct ag_module m;
	double p;
	struct ag_generator *g; /* borrowed; NULL: the default generator */
};

static struct ag_tensor *dropout_forward(struct ag_module *m,
					 struct ag_tensor *x)
{
	struct dropout *d = nn_container_of(m, struct dropout, m);

	return ag_dropout(x, d->p, m->training, d->g);
}

static const struct ag_module_ops dropout_ops = {
	.name = "Dropout",
	.forward = dropout_forward,
};

struct ag_module *ag_dropout_new(double p, struct ag_generator *g)
{
	NN_UNSCOPED();
	struct dropout *d;

	if (!(p >= 0.0 && p <= 1.0)) {
		ag_set_error(AG_EINVAL, "ag_dropout_new: p %g is not in [0, 1]",
			     p);
		return NULL;
	}
	d = module_alloc(sizeof(*d), &dropout_ops);
	if (!d)
		return NULL;
	d->p = p;
	d->g = g;
	return &d->m;
}

/* ---- BatchNorm ---- */

struct batchnorm {
	struct ag_module m;
	int ndim_lo, ndim_hi; /* accepted input ranks */
	double eps, momentum;
	ag_batch_norm_fn norm; /* NULL: ag_batch_norm */
};

static struct ag_tensor *batchnorm_forward(struct ag_module *m,
					   struct ag_tensor *x)
{
	struct batchnorm *b = nn_container_of(m, struct batchnorm, m);
	struct ag_tensor *nbt = ag_module_get_buffer(m, "num_batches_tracked");
	int nd = ag_tensor_ndim(x);

	if (nd < b->ndim_lo || nd > b->ndim_hi) {
		ag_set_error(AG_ESHAPE, "%s: expected a %d-d%s input, got %d-d",
			     ag_module_name(m), b->ndim_lo,
			     b->ndim_hi > b->ndim_lo ? " or 3-d" : "", nd);
		return NULL;
	}
	/*
	 * torch counts batches even when momentum is given.  The counter is
	 * i64, which the in-place ops do not take, and no graph saves it, so
	 * it is written directly.
	 */
	if (m->training && nbt)
		((int64_t *)ag_tensor_data(nbt))[0]++;
	return (b->norm ? b->norm : ag_batch_norm)(
		x, ag_module_get_buffer(m, "running_mean"),
		ag_module_get_buffer(m, "running_var"),
		ag_module_get_parameter(m, "weight"),
		ag_module_get_parameter(m, "bias"), m->training, b->momentum,
		b->eps);
}

static const struct ag_module_ops bn1d_ops = {
	.name = "BatchNorm1d",
	.forward = batchnorm_forward,
};

static const struct ag_module_ops bn2d_ops = {
	.name = "BatchNorm2d",
	.forward = batchnorm_forward,
};

static struct ag_module *batchnorm_new(const struct ag_module_ops *ops, int lo,
				       int hi, int64_t c, double eps,
				       double momentum)
{
	struct batchnorm *b;
	int err;

	if (c <= 0 || !(eps >= 0) || !(momentum >= 0 && momentum <= 1)) {
		ag_set_error(
			AG_EINVAL,
			"%s: channels %lld must be positive, eps %g >= 0, momentum %g in [0, 1]",
			ops->name, (long long)c, eps, momentum);
		return NULL;
	}
	b = module_alloc(sizeof(*b), ops);
	if (!b)
		return NULL;
	b->ndim_lo = lo;
	b->ndim_hi = hi;
	b->eps = eps;
	b->momentum = momentum;
	err = add_param(&b->m, "weight", ag_ones(AG_F32, 1, &c));
	if (!err)
		err = add_param(&b->m, "bias", ag_zeros(AG_F32, 1, &c));
	if (!err)
		err = add_buffer(&b->m, "running_mean",
				 ag_zeros(AG_F32, 1, &c));
	if (!err)
		err = add_buffer(&b->m, "running_var", ag_ones(AG_F32, 1, &c));
	if (!err)
		err = add_buffer(&b->m, "num_batches_tracked",
				 ag_zeros(AG_I64, 0, NULL));
	if (err) {
		ag_module_put(&b->m);
		return NULL;
	}
	return &b->m;
}

static int set_norm(struct ag_module *m, ag_batch_norm_fn fn)
{
	int n = 0;

	if (m->ops == &bn1d_ops || m->ops == &bn2d_ops) {
		nn_container_of(m, struct batchnorm, m)->norm = fn;
		n++;
	}
	for (int i = 0; i < m->n_children; i++)
		n += set_norm(m->children[i].m, fn);
	return n;
}

int ag_module_set_batch_norm_fn(struct ag_module *m, ag_batch_norm_fn fn)
{
	if (!m)
		return ag__nn_err_null(
			"ag_module_set_batch_norm_fn: m is NULL");
	return set_norm(m, fn);
}

struct ag_module *ag_batchnorm1d_new(int64_t features, double eps,
				     double momentum)
{
	NN_UNSCOPED();
	return batchnorm_new(&bn1d_ops, 2, 3, features, eps, momentum);
}

struct ag_module *ag_batchnorm2d_new(int64_t channels, double eps,
				     double momentum)
{
	NN_UNSCOPED();
	return batchnorm_new(&bn2d_ops, 4, 4, channels, eps, momentum);
}

/* ---- activations ---- */

struct act {
	struct ag_module m;
	double slope;
};

static struct ag_tensor *relu_forward(struct ag_module *m, struct ag_tensor *x)
{
	(void)m;
	return ag_relu(x);
}

static struct ag_tensor *gelu_forward(struct ag_module *m, struct ag_tensor *x)
{
	(void)m;
	return ag_gelu(x);
}

static struct ag_tensor *tanh_forward(struct ag_module *m, struct ag_tensor *x)
{
	(void)m;
	return ag_tanh(x);
}

static struct ag_tensor *sigmoid_forward(struct ag_module *m,
					 struct ag_tensor *x)
{
	(void)m;
	return ag_sigmoid(x);
}

static struct ag_tensor *leaky_forward(struct ag_module *m, struct ag_tensor *x)
{
	return ag_leaky_relu(x, nn_container_of(m, struct act, m)->slope);
}

static const struct ag_module_ops relu_ops = { .name = "ReLU",
					       .forward = relu_forward };
static const struct ag_module_ops gelu_ops = { .name = "GELU",
					       .forward = gelu_forward };
static const struct ag_module_ops tanh_ops = { .name = "Tanh",
					       .forward = tanh_forward };
static const struct ag_module_ops sigmoid_ops = { .name = "Sigmoid",
						  .forward = sigmoid_forward };
static const struct ag_module_ops leaky_ops = { .name = "LeakyReLU",
						.forward = leaky_forward };

struct ag_module *ag_relu_new(void)
{
	NN_UNSCOPED();
	return module_alloc(sizeof(struct act), &relu_ops);
}

struct ag_module *ag_gelu_new(void)
{
	NN_UNSCOPED();
	return module_alloc(sizeof(struct act), &gelu_ops);
}

struct ag_module *ag_tanh_new(void)
{
	NN_UNSCOPED();
	return module_alloc(sizeof(struct act), &tanh_ops);
}

struct ag_module *ag_sigmoid_new(void)
{
	NN_UNSCOPED();
	return module_alloc(sizeof(struct act), &sigmoid_ops);
}

struct ag_module *ag_leaky_relu_new(double slope)
{
	NN_UNSCOPED();
	struct act *a = module_alloc(sizeof(*a), &leaky_ops);

	if (a)
		a->slope = slope;
	return a ? &a->m : NULL;
}

/* ---- Embedding ---- */

static struct ag_tensor *embedding_forward(struct ag_module *m,
					   struct ag_tensor *x)
{
	return ag_embedding(ag_module_get_parameter(m, "weight"), x);
}

static const struct ag_module_ops embedding_ops = {
	.name = "Embedding",
	.forward = embedding_forward,
};

struct ag_module *ag_embedding_new(int64_t num, int64_t dim,
				   struct ag_generator *g)
{
	NN_UNSCOPED();
	int64_t shape[2] = { num, dim };
	struct ag_module *m;

	if (num <= 0 || dim <= 0 || !g) {
		ag_set_error(
			AG_EINVAL,
			"ag_embedding_new: num %lld and dim %lld must be positive and the generator given",
			(long long)num, (long long)dim);
		return NULL;
	}
	m = module_alloc(sizeof(*m), &embedding_ops);
	if (!m)
		return NULL;
	if (add_param(m, "weight", ag_randn(g, AG_F32, 2, shape))) {
		ag_module_put(m);
		return NULL;
	}
	return m;
}

/* ---- Sequential ---- */

static struct ag_tensor *sequential_forward(struct ag_module *m,
					    struct ag_tensor *x)
{
	struct ag_tensor *y = ag_tensor_get(x);

	for (int i = 0; i < m->n_children && y; i++) {
		struct ag_tensor *next = ag_module_forward(m->children[i].m, y);

		ag_tensor_put(y);
		y = next;
	}
	return y;
}

static const struct ag_module_ops sequential_ops = {
	.name = "Sequential",
	.forward = sequential_forward,
};

struct ag_module *ag_sequential_new(struct ag_module *const *mods, int n)
{
	NN_UNSCOPED();
	struct ag_module *m = NULL;
	int i = 0;

	if (n < 0 || (n > 0 && !mods)) {
		ag_set_error(AG_EINVAL, "ag_sequential_new: %d modules at %p",
			     n, (const void *)mods);
		return NULL;
	}
	for (int j = 0; j < n; j++)
		if (!mods[j]) {
			ag__nn_err_null("ag_sequential_new: module %d is NULL",
					j);
			goto fail;
		}
	m = module_alloc(sizeof(*m), &sequential_ops);
	if (!m)
		goto fail;
	for (; i < n; i++) {
		char name[16];

		snprintf(name, sizeof(name), "%d", i);
		if (ag_module_add_child(m, name, mods[i])) {
			i++;
			goto fail;
		}
	}
	return m;
fail:
	for (; i < n; i++)
		ag_module_put(mods[i]);
	ag_module_put(m);
	return NULL;
}
