// SPDX-License-Identifier: MIT
/*
 * Tensors: creation, reference counting, geometry, copies and comparisons.
 * Autograd state (grad_fn, .grad) is in engine/autograd/; a tensor that
 * never meets autograd carries none (meta == NULL).
 */
#include <inttypes.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include <ag/mode.h>
#include <ag/ops.h>

#include <ag/pool.h>

#include "internal.h"
#include "simd.h"

/*
 * simd/ splits large kernels over the pool through this hook (it does not
 * link against the engine).  Here because every program makes tensors, so
 * a static link always pulls this file in.
 */
__attribute__((constructor)) static void register_parallel_for(void)
{
	ag_k_set_parallel_for(ag_parallel_for);
}

size_t ag_dtype_size(enum ag_dtype dt)
{
	switch (dt) {
	case AG_F32:
		return 4;
	case AG_F64:
	case AG_I64:
		return 8;
	}
	return 0;
}

const char *ag_dtype_name(enum ag_dtype dt)
{
	switch (dt) {
	case AG_F32:
		return "f32";
	case AG_F64:
		return "f64";
	case AG_I64:
		return "i64";
	}
	return "?";
}

int ag__check_dtype(const char *fn, enum ag_dtype dt)
{
	if (dt != AG_F32 && dt != AG_F64 && dt != AG_I64)
		return ag__err(AG_EDTYPE, "%s: unknown dtype %d", fn, (int)dt);
	return 0;
}

const char *ag__shape_fmt(struct ag__shape_str *b, int ndim,
			  const int64_t *shape)
{
	char *buf = b->s;
	size_t n = sizeof(b->s), len = 0;

	len += snprintf(buf + len, n - len, "[");
	for (int d = 0; d < ndim && len < n; d++)
		len += snprintf(buf + len, n - len, "%s%" PRId64, d ? ", " : "",
				shape[d]);
	if (len < n)
		snprintf(buf + len, n - len, "]");
	return buf;
}

int64_t ag__dims_prod(int ndim, const int64_t *shape, int from, int to)
{
	int64_t p = 1;

	(void)ndim;
	for (int d = from; d < to; d++)
		if (__builtin_mul_overflow(p, shape[d], &p))
			return 0;
	return p;
}

const char *ag__shape_of(struct ag__shape_str *b, const struct ag_tensor *t)
{
	return ag__shape_fmt(b, t->ndim, t->shape);
}

int ag__shape_size(const char *fn, int ndim, const int64_t *shape,
		   enum ag_dtype dt, int64_t *numel, size_t *nbytes)
{
	size_t es = ag_dtype_size(dt);
	const char *what = "element count";
	int64_t n = 1;
	struct ag__shape_str buf;

	/* with a 0 anywhere the count is 0, however large the other dims */
	for (int d = 0; d < ndim; d++)
		if (!shape[d])
			n = 0;
	for (int d = 0; d < ndim && n; d++)
		if (__builtin_mul_overflow(n, shape[d], &n))
			goto overflow;
	what = "byte size";
	/* bytes also fit int64_t: element offsets times es do not wrap */
	if (nbytes &&
	    ((uint64_t)n > SIZE_MAX / es || n > INT64_MAX / (int64_t)es))
		goto overflow;
	*numel = n;
	if (nbytes)
		*nbytes = (size_t)n * es;
	return 0;
overflow:
	return ag__err(AG_EINVAL,
		       "%s%sshape %s of %s is too large: its %s overflows",
		       fn ? fn : "", fn ? ": " : "",
		       ag__shape_fmt(&buf, ndim, shape), ag_dtype_name(dt),
		       what);
}

int ag__check_shape(const char *fn, int ndim, const int64_t *shape,
		    enum ag_dtype dt, int64_t *numel)
{
	size_t nbytes;
	int rc = ag__check_dtype(fn, dt);

	if (rc)
		return rc;
	if (ndim < 0 || ndim > AG_MAX_DIMS)
		return ag__err(
			AG_EINVAL,
			"%s: %d dims requested; a tensor has 0 to %d dims", fn,
			ndim, AG_MAX_DIMS);
	if (ndim > 0 && !shape)
		return ag__err(AG_EINVAL, "%s: shape is NULL for %d dims", fn,
			       ndim);
	for (int d = 0; d < ndim; d++)
		if (shape[d] < 0)
			return ag__err(AG_EINVAL,
				       "%s: dim %d has negative size %" PRId64,
				       fn, d, shape[d]);
	return ag__shape_size(fn, ndim, shape, dt, numel, &nbytes);
}

void ag__contiguous_strides(int ndim, const int64_t *shape, int64_t *strides)
{
	int64_t s = 1;

	for (int d = ndim - 1; d >= 0; d--) {
		strides[d] = s;
		/* overflows only for an empty tensor, never indexed */
		if (__builtin_mul_overflow(s, shape[d] ? shape[d] : 1, &s))
			s = INT64_MAX;
	}
}

/* Sets up a header with room for the geometry of ndim dims after it. */
static void tensor_init(struct ag_tensor *t, int ndim)
{
	memset(t, 0, sizeof(*t));
	t->ndim = ndim;
	t->shape = t->geom;
	t->strides = t->geom + ndim;
	atomic_init(&t->refcount, 1);
	t->inference = ag__mode.inference != 0;
	ag__live_add(AG_LIVE_TENSORS, 1);
}

/* A header alone, for a storage made elsewhere; ndim is checked. */
static struct ag_tensor *tensor_alloc(int ndim)
{
	struct ag_tensor *t = ag__alloc(ag__tensor_bytes(ndim));

	if (!t) {
		ag__err(AG_ENOMEM, "out of memory allocating a tensor");
		return NULL;
	}
	tensor_init(t, ndim);
	return t;
}

/* A dense row-major geometry of numel elements (ndim is t's). */
static void dense_geometry(struct ag_tensor *t, enum ag_dtype dt, int ndim,
			   const int64_t *shape, int64_t numel)
{
	t->dtype = dt;
	t->numel = numel;
	if (ndim > 0)
		memcpy(t->shape, shape, sizeof(*shape) * (size_t)ndim);
	ag__contiguous_strides(ndim, t->shape, t->strides);
}

/*
 * The tensor and its storage come in one block: header, geometry, storage
 * header, data.  One allocation instead of two, and the header and data of
 * a small tensor share cache lines.  The block lives as long as the
 * storage (views may outlive the tensor).
 */
static struct ag_tensor *tensor_make(enum ag_dtype dt, int ndim,
				     const int64_t *shape, int64_t numel,
				     size_t nbytes)
{
	struct ag_tensor *t;
	size_t sbytes, head = ag__tensor_bytes(ndim);

	sbytes = ag__storage_bytes(nbytes);
	t = sbytes && sbytes <= SIZE_MAX - head ? ag__alloc(head + sbytes) :
						  NULL;
	if (!t) {
		ag__err(AG_ENOMEM, "out of memory allocating %zu bytes",
			nbytes);
		return NULL;
	}
	tensor_init(t, ndim);
	t->storage = ag__storage_init((char *)t + head, nbytes, head);
	t->storage->inference = t->inference;
	dense_geometry(t, dt, ndim, shape, numel);
	return t;
}

struct ag_tensor *ag__tensor_new(const char *fn, enum ag_dtype dt, int ndim,
				 const int64_t *shape)
{
	int64_t numel;

	if (ag__check_shape(fn, ndim, shape, dt, &numel))
		return NULL;
	return tensor_make(dt, ndim, shape, numel,
			   (size_t)numel * ag_dtype_size(dt));
}

struct ag_tensor *ag__tensor_like(const struct ag_tensor *t)
{
	int64_t numel;
	size_t nbytes;

	if (ag__shape_size(NULL, t->ndim, t->shape, t->dtype, &numel, &nbytes))
		return NULL;
	return tensor_make(t->dtype, t->ndim, t->shape, numel, nbytes);
}

struct ag_tensor *ag__tensor_view(struct ag_tensor *base, int ndim,
				  const int64_t *shape, const int64_t *strides,
				  int64_t offset)
{
	struct ag_tensor *t;
	int64_t numel;

	if (ag__shape_size(NULL, ndim, shape, base->dtype, &numel, NULL))
		return NULL;
	t = tensor_alloc(ndim);
	if (!t)
		return NULL;
	t->inference = base->inference;
	t->storage = base->storage;
	ag__storage_get(t->storage);
	t->dtype = base->dtype;
	t->offset = offset;
	t->numel = numel;
	for (int d = 0; d < ndim; d++) {
		t->shape[d] = shape[d];
		t->strides[d] = strides[d];
	}
	return t;
}

struct ag_tensor *ag__tensor_on(struct ag_storage *s, enum ag_dtype dt,
				int ndim, const int64_t *shape)
{
	struct ag_tensor *t = tensor_alloc(ndim);
	int64_t numel = 1;

	if (!t)
		return NULL;
	t->inference = s->inference;
	t->storage = s;
	ag__storage_get(s);
	/*
	 * The shape fills s, so its product fits -- unless a size is 0: the
	 * others may then be anything up to INT64_MAX, and are not multiplied.
	 */
	for (int d = 0; d < ndim; d++)
		if (!shape[d])
			numel = 0;
	for (int d = 0; d < ndim && numel; d++)
		numel *= shape[d];
	dense_geometry(t, dt, ndim, shape, numel);
	return t;
}

struct ag_tensor *ag_tensor_get(struct ag_tensor *t)
{
	if (t)
		atomic_fetch_add_explicit(&t->refcount, 1,
					  memory_order_relaxed);
	return t;
}

void ag_tensor_put(struct ag_tensor *t)
{
	if (!t)
		return;
	if (atomic_fetch_sub_explicit(&t->refcount, 1, memory_order_acq_rel) !=
	    1)
		return;
	ag__meta_clear(t->meta);
	ag__mfree(t->name);
	if (t->ext) {
		if (t->ext->pack)
			t->ext->pack_free(t->ext->pack);
		ag__mfree(t->ext);
	}
	ag__live_add(AG_LIVE_TENSORS, -1);
	/* made with the storage in its block (tensor_make), not a view */
	if ((char *)t->storage - t->storage->block_off == (char *)t) {
		ag__storage_put(t->storage); /* frees t with it, maybe later */
		return;
	}
	ag__storage_put(t->storage);
	ag__free(t);
}

/* ---- creation ---- */

static void fill_value(struct ag_tensor *t, double v)
{
	void *p = ag__data(t);

	switch (t->dtype) {
	case AG_F32:
		for (int64_t i = 0; i < t->numel; i++)
			((float *)p)[i] = (float)v;
		break;
	case AG_F64:
		for (int64_t i = 0; i < t->numel; i++)
			((double *)p)[i] = v;
		break;
	case AG_I64:
		for (int64_t i = 0; i < t->numel; i++)
			((int64_t *)p)[i] = (int64_t)v;
		break;
	}
}

struct ag_tensor *ag_empty(enum ag_dtype dt, int ndim, const int64_t *shape)
{
	return ag__scope_add(ag__tensor_new("ag_empty", dt, ndim, shape));
}

struct ag_tensor *ag_zeros(enum ag_dtype dt, int ndim, const int64_t *shape)
{
	struct ag_tensor *t = ag__tensor_new("ag_zeros", dt, ndim, shape);

	if (t)
		memset(t->storage->data, 0, t->storage->nbytes);
	return ag__scope_add(t);
}

static bool int_value_ok(const char *fn, enum ag_dtype dt, double v)
{
	if (dt != AG_I64)
		return true;
	if (isfinite(v) && v >= -0x1p63 && v < 0x1p63)
		return true;
	ag__err(AG_EINVAL, "%s: value %g does not fit an i64 tensor", fn, v);
	return false;
}

struct ag_tensor *ag_full(enum ag_dtype dt, int ndim, const int64_t *shape,
			  double v)
{
	struct ag_tensor *t;

	if (!int_value_ok("ag_full", dt, v))
		return NULL;
	t = ag__tensor_new("ag_full", dt, ndim, shape);
	if (t)
		fill_value(t, v);
	return ag__scope_add(t);
}

struct ag_tensor *ag_ones(enum ag_dtype dt, int ndim, const int64_t *shape)
{
	struct ag_tensor *t = ag__tensor_new("ag_ones", dt, ndim, shape);

	if (t)
		fill_value(t, 1.0);
	return ag__scope_add(t);
}

struct ag_tensor *ag_scalar(enum ag_dtype dt, double v)
{
	struct ag_tensor *t;

	if (!int_value_ok("ag_scalar", dt, v))
		return NULL;
	t = ag__tensor_new("ag_scalar", dt, 0, NULL);
	if (t)
		fill_value(t, v);
	return ag__scope_add(t);
}

struct ag_tensor *ag_arange(enum ag_dtype dt, double start, double end,
			    double step)
{
	struct ag_tensor *t;
	double count;
	int64_t n;

	if (!isfinite(start) || !isfinite(end) || !isfinite(step) ||
	    step == 0) {
		ag__err(AG_EINVAL,
			"ag_arange: start %g, end %g, step %g: need finite values and a nonzero step",
			start, end, step);
		return NULL;
	}
	if ((step > 0 && end < start) || (step < 0 && end > start)) {
		ag__err(AG_EINVAL,
			"ag_arange: step %g does not lead from %g to %g", step,
			start, end);
		return NULL;
	}
	count = ceil((end - start) / step);
	if (count > 0x1p62) {
		ag__err(AG_EINVAL, "ag_arange: %g elements is too many", count);
		return NULL;
	}
	n = (int64_t)count;
	/* the ends bound every value: check them before any cast to i64 */
	if (n &&
	    (!int_value_ok("ag_arange", dt, start) ||
	     !int_value_ok("ag_arange", dt, start + (double)(n - 1) * step)))
		return NULL;
	t = ag__tensor_new("ag_arange", dt, 1, &n);
	if (!t)
		return NULL;
	for (int64_t i = 0; i < n; i++) {
		double v = start + (double)i * step;

		switch (dt) {
		case AG_F32:
			((float *)t->storage->data)[i] = (float)v;
			break;
		case AG_F64:
			((double *)t->storage->data)[i] = v;
			break;
		case AG_I64:
			((int64_t *)t->storage->data)[i] = (int64_t)v;
			break;
		}
	}
	return ag__scope_add(t);
}

struct ag_tensor *ag_from_data(enum ag_dtype dt, int ndim, const int64_t *shape,
			       const void *data)
{
	struct ag_tensor *t;

	if (!data) {
		ag__err(AG_EINVAL, "ag_from_data: data is NULL");
		return NULL;
	}
	t = ag__tensor_new("ag_from_data", dt, ndim, shape);
	if (t)
		memcpy(t->storage->data, data, t->storage->nbytes);
	return ag__scope_add(t);
}

struct ag_tensor *ag_from_blob(enum ag_dtype dt, int ndim, const int64_t *shape,
			       void *data,
			       void (*free_fn)(void *data, void *arg),
			       void *arg)
{
	struct ag_storage *s;
	struct ag_tensor *t;
	int64_t numel;

	if (ag__check_shape("ag_from_blob", ndim, shape, dt, &numel))
		return NULL;
	if (!data) {
		ag__err(AG_EINVAL, "ag_from_blob: data is NULL");
		return NULL;
	}
	if ((uintptr_t)data % ag_dtype_size(dt)) {
		ag__err(AG_EINVAL,
			"ag_from_blob: data %p is not aligned to the %zu-byte %s element",
			data, ag_dtype_size(dt), ag_dtype_name(dt));
		return NULL;
	}
	/*
	 * The storage first: it is a plain block until counted below, so
	 * when the tensor fails there is nothing to undo but its free.  (A
	 * tensor header without a storage cannot go through ag_tensor_put.)
	 */
	s = ag__zalloc(sizeof(*s));
	if (!s) {
		ag__err(AG_ENOMEM, "ag_from_blob: out of memory");
		return NULL;
	}
	t = tensor_alloc(ndim);
	if (!t) {
		ag__free(s);
		return NULL;
	}
	atomic_init(&s->refcount, 1);
	atomic_init(&s->version, 0);
	atomic_init(&s->last_writer, NULL);
	s->data = data;
	s->nbytes = (size_t)numel * ag_dtype_size(dt);
	s->user_owned = true;
	s->free_fn = free_fn;
	s->free_arg = arg;
	s->inference = t->inference;
	/* user bytes are not ours: count the storage, not its bytes */
	ag__live_add(AG_LIVE_STORAGES, 1);
	t->storage = s;
	t->dtype = dt;
	t->numel = numel;
	if (ndim)
		memcpy(t->shape, shape, sizeof(*shape) * ndim);
	ag__contiguous_strides(ndim, t->shape, t->strides);
	return ag__scope_add(t);
}

/* ---- geometry ---- */

int ag_tensor_ndim(const struct ag_tensor *t)
{
	return t ? t->ndim : -1;
}

const int64_t *ag_tensor_shape(const struct ag_tensor *t)
{
	return t ? t->shape : NULL;
}

const int64_t *ag_tensor_strides(const struct ag_tensor *t)
{
	return t ? t->strides : NULL;
}

int64_t ag_tensor_numel(const struct ag_tensor *t)
{
	return t ? t->numel : -1;
}

enum ag_dtype ag_tensor_dtype(const struct ag_tensor *t)
{
	return t ? t->dtype : AG_F32;
}

bool ag_tensor_is_contiguous(const struct ag_tensor *t)
{
	int64_t s = 1;

	if (!t)
		return false;
	if (t->ndim <= 1) /* the common case of small ops, without the loop */
		return t->ndim == 0 || t->shape[0] <= 1 || t->strides[0] == 1;
	if (!t->numel)
		return true; /* as torch: nothing to lay out */
	for (int d = t->ndim - 1; d >= 0; d--) {
		if (t->shape[d] != 1 && t->strides[d] != s)
			return false;
		s *= t->shape[d];
	}
	return true;
}

void *ag_tensor_data(struct ag_tensor *t)
{
	return t ? ag__data(t) : NULL;
}

uint64_t ag_tensor_version(const struct ag_tensor *t)
{
	if (!t || t->inference)
		return 0;
	return atomic_load_explicit(&t->storage->version, memory_order_acquire);
}

int ag_tensor_bump_version(struct ag_tensor *t)
{
	if (!t)
		return ag__err_null("ag_tensor_bump_version", "t");
	ag__storage_bump(t->storage, "a write through ag_tensor_data");
	return 0;
}

bool ag_tensor_is_inference(const struct ag_tensor *t)
{
	return t && t->inference;
}

int ag_tensor_set_name(struct ag_tensor *t, const char *name)
{
	char *copy = NULL;

	if (!t)
		return ag__err_null("ag_tensor_set_name", "t");
	if (name) {
		copy = ag__strdup(name);
		if (!copy)
			return -AG_ENOMEM;
	}
	ag__mfree(t->name);
	t->name = copy;
	return 0;
}

const char *ag_tensor_name(const struct ag_tensor *t)
{
	return t ? t->name : NULL;
}

/* ---- copies ---- */

void ag__copy_dense(const struct ag_tensor *t, void *dst)
{
	size_t es = ag_dtype_size(t->dtype);
	const char *src = t->storage->data;
	const int64_t *strides[1] = { t->strides };
	int64_t base[1] = { t->offset };
	char *out = dst;
	struct ag_walk w;

	if (ag_tensor_is_contiguous(t)) {
		memcpy(dst, src + t->offset * es, (size_t)t->numel * es);
		return;
	}
	ag__walk_init(&w, t->ndim, t->shape, 1, strides, base);
	while (ag__walk_next(&w)) {
		for (int64_t i = 0; i < w.inner; i++) {
			memcpy(out, src + (w.off[0] + i * w.inc[0]) * es, es);
			out += es;
		}
	}
}

int ag_tensor_copy_to(const struct ag_tensor *t, void *dst, size_t nbytes)
{
	size_t need;
	int64_t n;

	if (!t)
		return ag__err_null("ag_tensor_copy_to", "t");
	if (!dst)
		return ag__err(AG_EINVAL, "ag_tensor_copy_to: dst is NULL");
	if (ag__shape_size("ag_tensor_copy_to", t->ndim, t->shape, t->dtype, &n,
			   &need))
		return -AG_EINVAL;
	if (nbytes != need) {
		struct ag__shape_str buf;

		return ag__err(
			AG_EINVAL,
			"ag_tensor_copy_to: a %s tensor of shape %s needs %zu bytes, got %zu",
			ag_dtype_name(t->dtype), ag__shape_of(&buf, t), need,
			nbytes);
	}
	ag__copy_dense(t, dst);
	return 0;
}

int64_t ag__elem_offset(const struct ag_tensor *t, int64_t i)
{
	int64_t off = t->offset;

	for (int d = t->ndim - 1; d >= 0; d--) {
		off += (i % t->shape[d]) * t->strides[d];
		i /= t->shape[d];
	}
	return off;
}

double ag__get(const struct ag_tensor *t, int64_t i)
{
	int64_t off = ag__elem_offset(t, i);
	const void *p = t->storage->data;

	switch (t->dtype) {
	case AG_F32:
		return ((const float *)p)[off];
	case AG_F64:
		return ((const double *)p)[off];
	case AG_I64:
		return (double)((const int64_t *)p)[off];
	}
	return NAN;
}

static int64_t get_i64(const struct ag_tensor *t, int64_t i)
{
	return ((const int64_t *)t->storage->data)[ag__elem_offset(t, i)];
}

static bool one_element(const char *fn, const struct ag_tensor *t)
{
	struct ag__shape_str buf;

	if (!t) {
		ag__err_null(fn, "t");
		return false;
	}
	if (t->numel == 1)
		return true;
	ag__err(AG_EINVAL,
		"%s: a tensor of shape %s has %" PRId64
		" elements; only one-element tensors convert to a scalar",
		fn, ag__shape_of(&buf, t), t->numel);
	return false;
}

double ag_tensor_item(const struct ag_tensor *t)
{
	if (!one_element("ag_tensor_item", t))
		return NAN;
	if (t->dtype == AG_I64) {
		int64_t v = get_i64(t, 0);

		if (v > (1LL << 53) || v < -(1LL << 53)) {
			ag__err(AG_EDTYPE,
				"ag_tensor_item: i64 value %" PRId64
				" cannot be held exactly by a double; use ag_tensor_item_i64",
				v);
			return NAN;
		}
		return (double)v;
	}
	return ag__get(t, 0);
}

int64_t ag_tensor_item_i64(const struct ag_tensor *t)
{
	if (!one_element("ag_tensor_item_i64", t))
		return 0;
	if (t->dtype != AG_I64) {
		ag__err(AG_EDTYPE,
			"ag_tensor_item_i64: tensor is %s, expected i64; use ag_tensor_item",
			ag_dtype_name(t->dtype));
		return 0;
	}
	return get_i64(t, 0);
}

static bool same_shape(const struct ag_tensor *a, const struct ag_tensor *b)
{
	if (a->ndim != b->ndim)
		return false;
	for (int d = 0; d < a->ndim; d++)
		if (a->shape[d] != b->shape[d])
			return false;
	return true;
}

bool ag_equal(const struct ag_tensor *a, const struct ag_tensor *b)
{
	if (!a || !b) {
		ag__err_null("ag_equal", !a ? "a" : "b");
		return false;
	}
	if (!same_shape(a, b))
		return false;
	for (int64_t i = 0; i < a->numel; i++) {
		if (a->dtype == AG_I64 && b->dtype == AG_I64) {
			if (get_i64(a, i) != get_i64(b, i))
				return false;
		} else if (ag__get(a, i) != ag__get(b, i)) {
			return false;
		}
	}
	return true;
}

/* b can be read with a's shape: its dims, aligned right, are 1 or a's. */
static bool broadcasts_to(const struct ag_tensor *b, const struct ag_tensor *a)
{
	if (b->ndim > a->ndim)
		return false;
	for (int d = 0; d < b->ndim; d++) {
		int64_t n = b->shape[d], want = a->shape[a->ndim - b->ndim + d];

		if (n != want && n != 1)
			return false;
	}
	return true;
}

/* Element of b at the row-major index i of a's shape, b broadcast to a. */
static double get_broadcast(const struct ag_tensor *b,
			    const struct ag_tensor *a, int64_t i)
{
	int64_t off = 0;

	for (int d = a->ndim - 1; d >= 0; d--) {
		int bd = d - (a->ndim - b->ndim);
		int64_t idx = i % a->shape[d];

		i /= a->shape[d];
		if (bd >= 0 && b->shape[bd] != 1)
			off += idx * b->strides[bd];
	}
	switch (b->dtype) {
	case AG_F32:
		return ((const float *)b->storage->data)[b->offset + off];
	case AG_F64:
		return ((const double *)b->storage->data)[b->offset + off];
	case AG_I64:
		return (double)((const int64_t *)
					b->storage->data)[b->offset + off];
	}
	return NAN;
}

bool ag_allclose(const struct ag_tensor *a, const struct ag_tensor *b,
		 double rtol, double atol)
{
	if (!a || !b) {
		ag__err_null("ag_allclose", !a ? "a" : "b");
		return false;
	}
	if (!broadcasts_to(b, a))
		return false;
	for (int64_t i = 0; i < a->numel; i++) {
		double x = ag__get(a, i), y = get_broadcast(b, a, i);

		if (x == y)
			continue; /* also equal infinities */
		if (isinf(x) || isinf(y))
			return false; /* inf - finite is inf, rtol * inf too */
		if (!(fabs(x - y) <= atol + rtol * fabs(y)))
			return false;
	}
	return true;
}

struct ag_tensor *ag__contiguous_copy(struct ag_tensor *t)
{
	struct ag_tensor *c =
		ag__tensor_new("ag_clone", t->dtype, t->ndim, t->shape);

	if (c)
		ag__copy_dense(t, c->storage->data);
	return c;
}
