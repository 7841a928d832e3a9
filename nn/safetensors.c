// SPDX-License-Identifier: MIT
/*
 * safetensors files (include/ag/checkpoint.h says what is promised).  The
 * header is JSON, parsed and written with jansson.
 */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <jansson.h>

#include <ag/checkpoint.h>
#include <ag/error.h>
#include <ag/tensor.h>

#include "safetensors.h"
#include "nn_internal.h"

#if !defined(__BYTE_ORDER__) || __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "safetensors data is little-endian; a big-endian host would swap it"
#endif

/* The reference implementation's cap on the header. */
#define ST_MAX_HEADER 100000000u

/*
 * Every dtype of the format; ag < 0 when libag has no type for it.  rank
 * is the dtype's place in the reference writer's ordering (its Dtype enum,
 * smallest alignment first), which sorts tensors by it, largest first.
 */
static const struct st_dtype {
	const char *name;
	unsigned size;
	int ag;
	int rank;
} st_dtypes[] = {
	{ "F64", 8, AG_F64, 12 }, { "F32", 4, AG_F32, 11 },
	{ "I64", 8, AG_I64, 13 }, { "BOOL", 1, -1, 0 },
	{ "U8", 1, -1, 1 },	  { "I8", 1, -1, 2 },
	{ "F8_E5M2", 1, -1, 3 },  { "F8_E4M3", 1, -1, 4 },
	{ "I16", 2, -1, 5 },	  { "U16", 2, -1, 6 },
	{ "F16", 2, -1, 7 },	  { "BF16", 2, -1, 8 },
	{ "I32", 4, -1, 9 },	  { "U32", 4, -1, 10 },
	{ "U64", 8, -1, 14 },
};

struct st_entry {
	char *name;
	const struct st_dtype *dt;
	int ndim;
	int64_t *shape;
	uint64_t begin, end; /* within the data area */
};

struct ag_safetensors {
	unsigned char *data; /* the data area, a copy */
	uint64_t data_size;
	int n;
	struct st_entry *e; /* sorted by offset */
	struct st_entry **by_name; /* the same, sorted by name */
	json_t *meta; /* the "__metadata__" object or NULL */
};

static const struct st_dtype *st_dtype_of(enum ag_dtype dt)
{
	for (size_t i = 0; i < sizeof(st_dtypes) / sizeof(st_dtypes[0]); i++)
		if (st_dtypes[i].ag == (int)dt)
			return &st_dtypes[i];
	return NULL;
}

static const struct st_dtype *st_dtype_find(const char *name)
{
	for (size_t i = 0; i < sizeof(st_dtypes) / sizeof(st_dtypes[0]); i++)
		if (!strcmp(st_dtypes[i].name, name))
			return &st_dtypes[i];
	return NULL;
}

void ag_safetensors_close(struct ag_safetensors *st)
{
	NN_UNSCOPED();
	if (!st)
		return;
	for (int i = 0; i < st->n; i++) {
		free(st->e[i].name);
		free(st->e[i].shape);
	}
	free(st->e);
	free(st->by_name);
	free(st->data);
	json_decref(st->meta);
	free(st);
}

/* ---- open ---- */

static int st_parse_meta(const char *what, json_t *v)
{
	const char *k;
	json_t *s;

	if (!json_is_object(v))
		return ag_set_error(
			AG_EIO,
			"ag_safetensors_open: %s: \"__metadata__\" is not an object",
			what);
	json_object_foreach(v, k, s)
	{
		if (!json_is_string(s))
			return ag_set_error(
				AG_EIO,
				"ag_safetensors_open: %s: \"__metadata__\" value of '%s' is not a string",
				what, k);
	}
	return 0;
}

/* A JSON integer in [0, INT64_MAX]; -1 otherwise. */
static int64_t st_uint(json_t *v)
{
	json_int_t x;

	if (!json_is_integer(v))
		return -1;
	x = json_integer_value(v);
	return x < 0 ? -1 : (int64_t)x;
}

static int st_parse_entry(const char *what, const char *key, json_t *v,
			  struct st_entry *e)
{
	json_t *dt = json_object_get(v, "dtype");
	json_t *shape = json_object_get(v, "shape");
	json_t *offs = json_object_get(v, "data_offsets");
	uint64_t bytes;
	int64_t b, x;
	size_t i;

	if (!json_is_object(v))
		return ag_set_error(
			AG_EIO,
			"ag_safetensors_open: %s: tensor '%s' is not an object",
			what, key);
	if (!json_is_string(dt))
		return ag_set_error(
			AG_EIO,
			"ag_safetensors_open: %s: tensor '%s' has no dtype string",
			what, key);
	e->dt = st_dtype_find(json_string_value(dt));
	if (!e->dt)
		return ag_set_error(
			AG_EIO,
			"ag_safetensors_open: %s: tensor '%s' has unknown dtype \"%s\"",
			what, key, json_string_value(dt));
	if (!json_is_array(shape))
		return ag_set_error(
			AG_EIO,
			"ag_safetensors_open: %s: tensor '%s' has no shape array",
			what, key);
	if (json_array_size(shape) > INT_MAX / 8)
		return ag_set_error(
			AG_EIO,
			"ag_safetensors_open: %s: tensor '%s' has %zu dims",
			what, key, json_array_size(shape));
	e->ndim = (int)json_array_size(shape);
	e->shape = malloc(sizeof(*e->shape) * (e->ndim ? e->ndim : 1));
	if (!e->shape)
		return ag_set_error(AG_ENOMEM,
				    "ag_safetensors_open: out of memory");
	bytes = e->dt->size;
	for (i = 0; i < json_array_size(shape); i++) {
		x = st_uint(json_array_get(shape, i));
		if (x < 0)
			return ag_set_error(
				AG_EIO,
				"ag_safetensors_open: %s: tensor '%s': shape[%zu] is not a non-negative integer",
				what, key, i);
		e->shape[i] = x;
		if (__builtin_mul_overflow(bytes, (uint64_t)x, &bytes))
			return ag_set_error(
				AG_EIO,
				"ag_safetensors_open: %s: tensor '%s': the byte size of its shape overflows",
				what, key);
	}
	if (!json_is_array(offs) || json_array_size(offs) != 2)
		return ag_set_error(
			AG_EIO,
			"ag_safetensors_open: %s: tensor '%s' has no data_offsets [begin, end]",
			what, key);
	b = st_uint(json_array_get(offs, 0));
	x = st_uint(json_array_get(offs, 1));
	if (b < 0 || x < 0 || x < b)
		return ag_set_error(
			AG_EIO,
			"ag_safetensors_open: %s: tensor '%s': data_offsets are not integers 0 <= begin <= end",
			what, key);
	e->begin = (uint64_t)b;
	e->end = (uint64_t)x;
	if (e->end - e->begin != bytes)
		return ag_set_error(
			AG_EIO,
			"ag_safetensors_open: %s: tensor '%s': data_offsets [%llu, %llu] hold %llu bytes but %s of its shape needs %llu",
			what, key, (unsigned long long)e->begin,
			(unsigned long long)e->end,
			(unsigned long long)(e->end - e->begin), e->dt->name,
			(unsigned long long)bytes);
	e->name = strdup(key);
	if (!e->name)
		return ag_set_error(AG_ENOMEM,
				    "ag_safetensors_open: out of memory");
	return 0;
}

static int st_cmp_offset(const void *pa, const void *pb)
{
	const struct st_entry *a = pa, *b = pb;

	if (a->begin != b->begin)
		return a->begin < b->begin ? -1 : 1;
	if (a->end != b->end)
		return a->end < b->end ? -1 : 1;
	return strcmp(a->name, b->name);
}

/* The tensors must tile the data area: no gap, no overlap, nothing after. */
static int st_check_tiling(const char *what, struct ag_safetensors *st)
{
	uint64_t at = 0;

	qsort(st->e, st->n, sizeof(*st->e), st_cmp_offset);
	for (int i = 0; i < st->n; i++) {
		struct st_entry *e = &st->e[i];

		if (e->end > st->data_size)
			return ag_set_error(
				AG_EIO,
				"ag_safetensors_open: %s: tensor '%s': data_offsets [%llu, %llu] run past the %llu-byte data",
				what, e->name, (unsigned long long)e->begin,
				(unsigned long long)e->end,
				(unsigned long long)st->data_size);
		if (e->begin < at)
			return ag_set_error(
				AG_EIO,
				"ag_safetensors_open: %s: tensor '%s' [%llu, %llu] overlaps tensor '%s' [%llu, %llu]",
				what, e->name, (unsigned long long)e->begin,
				(unsigned long long)e->end, st->e[i - 1].name,
				(unsigned long long)st->e[i - 1].begin,
				(unsigned long long)st->e[i - 1].end);
		if (e->begin > at)
			return ag_set_error(
				AG_EIO,
				"ag_safetensors_open: %s: data bytes [%llu, %llu) before tensor '%s' belong to no tensor",
				what, (unsigned long long)at,
				(unsigned long long)e->begin, e->name);
		at = e->end;
	}
	if (at != st->data_size)
		return ag_set_error(
			AG_EIO,
			"ag_safetensors_open: %s: data bytes [%llu, %llu) after the last tensor belong to no tensor",
			what, (unsigned long long)at,
			(unsigned long long)st->data_size);
	return 0;
}

static int st_cmp_name(const void *pa, const void *pb)
{
	const struct st_entry *const *a = pa, *const *b = pb;

	return strcmp((*a)->name, (*b)->name);
}

/* Names are looked up by binary search: a module load asks for each. */
static int st_index(struct ag_safetensors *st)
{
	st->by_name = malloc(sizeof(*st->by_name) * ((size_t)st->n + 1));
	if (!st->by_name)
		return ag_set_error(AG_ENOMEM,
				    "ag_safetensors_open: out of memory");
	for (int i = 0; i < st->n; i++)
		st->by_name[i] = &st->e[i];
	qsort(st->by_name, st->n, sizeof(*st->by_name), st_cmp_name);
	return 0;
}

static int st_parse_header(const char *what, struct ag_safetensors *st,
			   const char *hdr, size_t len)
{
	json_error_t jerr;
	const char *key;
	json_t *root, *v;
	int err = 0;

	if (!len || hdr[0] != '{')
		return ag_set_error(
			AG_EIO,
			"ag_safetensors_open: %s: the header does not begin with '{'",
			what);
	root = json_loadb(hdr, len, JSON_REJECT_DUPLICATES, &jerr);
	if (!root)
		return ag_set_error(
			AG_EIO,
			"ag_safetensors_open: %s: the header is not valid JSON: %s (at byte %d)",
			what, jerr.text, jerr.position);
	if (!json_is_object(root)) {
		err = ag_set_error(
			AG_EIO,
			"ag_safetensors_open: %s: the header is not a JSON object",
			what);
		goto out;
	}
	st->e = calloc(json_object_size(root) + 1, sizeof(*st->e));
	if (!st->e) {
		err = ag_set_error(AG_ENOMEM,
				   "ag_safetensors_open: out of memory");
		goto out;
	}
	json_object_foreach(root, key, v)
	{
		if (!strcmp(key, "__metadata__")) {
			err = st_parse_meta(what, v);
			if (err)
				goto out;
			st->meta = json_incref(v);
			continue;
		}
		/* counted before parsing, so close() frees a half-made one */
		err = st_parse_entry(what, key, v, &st->e[st->n++]);
		if (err)
			goto out;
	}
	err = st_check_tiling(what, st);
	if (!err)
		err = st_index(st);
out:
	json_decref(root);
	return err;
}

struct ag_safetensors *ag__safetensors_open_mem(const void *buf, size_t n,
						const char *what)
{
	NN_UNSCOPED();
	const unsigned char *p = buf;
	struct ag_safetensors *st;
	uint64_t hlen = 0;

	if (!buf && n)
		goto einval;
	if (n < 8) {
		ag_set_error(
			AG_EIO,
			"ag_safetensors_open: %s: %zu bytes, too short for the 8-byte header length",
			what, n);
		return NULL;
	}
	for (int i = 7; i >= 0; i--)
		hlen = hlen << 8 | p[i];
	if (hlen > ST_MAX_HEADER) {
		ag_set_error(
			AG_EIO,
			"ag_safetensors_open: %s: header length %llu is over the %u-byte limit",
			what, (unsigned long long)hlen, ST_MAX_HEADER);
		return NULL;
	}
	if (hlen > n - 8) {
		ag_set_error(
			AG_EIO,
			"ag_safetensors_open: %s: header length %llu runs past the end of the %zu-byte file",
			what, (unsigned long long)hlen, n);
		return NULL;
	}
	st = calloc(1, sizeof(*st));
	if (!st)
		goto enomem;
	st->data_size = n - 8 - hlen;
	if (st_parse_header(what, st, (const char *)p + 8, hlen))
		goto fail;
	/* +1: malloc(0) may return NULL */
	st->data = malloc(st->data_size + 1);
	if (!st->data) {
		ag_set_error(AG_ENOMEM, "ag_safetensors_open: out of memory");
		goto fail;
	}
	memcpy(st->data, p + 8 + hlen, st->data_size);
	return st;
fail:
	ag_safetensors_close(st);
	return NULL;
enomem:
	ag_set_error(AG_ENOMEM, "ag_safetensors_open: out of memory");
	return NULL;
einval:
	ag_set_error(AG_EINVAL, "ag_safetensors_open: buffer is NULL");
	return NULL;
}

static int read_all(int fd, unsigned char *p, size_t n)
{
	while (n) {
		ssize_t r = read(fd, p, n);

		if (r < 0 && errno == EINTR)
			continue;
		if (r <= 0)
			return r < 0 ? -errno : -EIO;
		p += r;
		n -= (size_t)r;
	}
	return 0;
}

struct ag_safetensors *ag_safetensors_open(const char *path)
{
	NN_UNSCOPED();
	struct ag_safetensors *st = NULL;
	unsigned char *buf = NULL;
	struct stat sb;
	int fd, e;

	if (!path) {
		ag_set_error(AG_EINVAL, "ag_safetensors_open: path is NULL");
		return NULL;
	}
	fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0) {
		ag_set_error(AG_EIO, "ag_safetensors_open: %s: %s", path,
			     strerror(errno));
		return NULL;
	}
	if (fstat(fd, &sb) || !S_ISREG(sb.st_mode)) {
		ag_set_error(AG_EIO,
			     "ag_safetensors_open: %s: not a regular file",
			     path);
		goto out;
	}
	buf = malloc((size_t)sb.st_size + 1);
	if (!buf) {
		ag_set_error(
			AG_ENOMEM,
			"ag_safetensors_open: %s: out of memory for %lld bytes",
			path, (long long)sb.st_size);
		goto out;
	}
	e = read_all(fd, buf, (size_t)sb.st_size);
	if (e) {
		ag_set_error(AG_EIO, "ag_safetensors_open: %s: read: %s", path,
			     strerror(-e));
		goto out;
	}
	st = ag__safetensors_open_mem(buf, (size_t)sb.st_size, path);
out:
	free(buf);
	close(fd);
	return st;
}

int ag_safetensors_count(const struct ag_safetensors *st)
{
	NN_UNSCOPED();
	if (!st)
		return ag_set_error(AG_EINVAL,
				    "ag_safetensors_count: st is NULL");
	return st->n;
}

const char *ag_safetensors_name(const struct ag_safetensors *st, int i)
{
	if (!st || i < 0 || i >= st->n) {
		ag_set_error(
			AG_EINVAL,
			"ag_safetensors_name: index %d out of range [0, %d)", i,
			st ? st->n : 0);
		return NULL;
	}
	return st->e[i].name;
}

const char *ag_safetensors_metadata(const struct ag_safetensors *st,
				    const char *key)
{
	if (!st || !key || !st->meta)
		return NULL;
	return json_string_value(json_object_get(st->meta, key));
}

static const struct st_entry *st_find(const struct ag_safetensors *st,
				      const char *fn, const char *name)
{
	if (!st || !name) {
		ag_set_error(AG_EINVAL, "%s: %s is NULL", fn,
			     st ? "name" : "st");
		return NULL;
	}
	struct st_entry key = { .name = (char *)name }, *kp = &key, **hit;

	hit = bsearch(&kp, st->by_name, st->n, sizeof(*st->by_name),
		      st_cmp_name);
	if (hit)
		return *hit;
	ag_set_error(AG_EINVAL, "%s: no tensor '%s' in the file", fn, name);
	return NULL;
}

static int st_check_entry(const char *fn, const struct st_entry *e)
{
	if (e->dt->ag < 0)
		return ag_set_error(
			AG_EDTYPE,
			"%s: tensor '%s' is %s, which libag has no dtype for",
			fn, e->name, e->dt->name);
	if (e->ndim > AG_MAX_DIMS)
		return ag_set_error(
			AG_EINVAL,
			"%s: tensor '%s' has %d dims, more than AG_MAX_DIMS (%d)",
			fn, e->name, e->ndim, AG_MAX_DIMS);
	return 0;
}

int ag_safetensors_info(const struct ag_safetensors *st, const char *name,
			enum ag_dtype *dt, int *ndim, const int64_t **shape)
{
	NN_UNSCOPED();
	const struct st_entry *e = st_find(st, "ag_safetensors_info", name);
	int err;

	if (!e)
		return -AG_EINVAL;
	err = st_check_entry("ag_safetensors_info", e);
	if (err)
		return err;
	if (dt)
		*dt = (enum ag_dtype)e->dt->ag;
	if (ndim)
		*ndim = e->ndim;
	if (shape)
		*shape = e->shape;
	return 0;
}

struct ag_tensor *ag_safetensors_get(struct ag_safetensors *st,
				     const char *name)
{
	const struct st_entry *e = st_find(st, "ag_safetensors_get", name);

	if (!e || st_check_entry("ag_safetensors_get", e))
		return NULL;
	return ag_from_data((enum ag_dtype)e->dt->ag, e->ndim, e->shape,
			    st->data + e->begin);
}

/* ---- save ---- */

static atomic_long st_fail_step, st_steps;

void ag__safetensors_fail_at(long n)
{
	atomic_store(&st_steps, 0);
	atomic_store(&st_fail_step, n);
}

long ag__safetensors_steps(void)
{
	return atomic_load(&st_steps);
}

/* A fallible step of a save: true (errno = err) if the test hook fails it. */
static bool st_fault(int err)
{
	long k = atomic_fetch_add(&st_steps, 1) + 1;

	if (k != atomic_load(&st_fail_step))
		return false;
	errno = err;
	return true;
}

static void *st_malloc(size_t n)
{
	return st_fault(ENOMEM) ? NULL : malloc(n);
}

struct st_item {
	const char *name;
	struct ag_tensor *t;
	const struct st_dtype *dt;
	uint64_t bytes;
};

/*
 * As the reference writer orders them: by dtype rank, largest first (so
 * every tensor stays aligned to its element size), then by name.
 */
static int st_cmp_item(const void *pa, const void *pb)
{
	const struct st_item *a = pa, *b = pb;

	if (a->dt->rank != b->dt->rank)
		return a->dt->rank > b->dt->rank ? -1 : 1;
	return strcmp(a->name, b->name);
}

static int st_check_items(const char *const *names,
			  struct ag_tensor *const *tensors, int n,
			  struct st_item *it)
{
	for (int i = 0; i < n; i++) {
		if (!names[i] || !tensors[i])
			return ag_set_error(
				AG_EINVAL,
				"ag_safetensors_save: %s[%d] is NULL",
				names[i] ? "tensors" : "names", i);
		if (!strcmp(names[i], "__metadata__"))
			return ag_set_error(
				AG_EINVAL,
				"ag_safetensors_save: the name \"__metadata__\" is reserved");
		it[i].name = names[i];
		it[i].t = tensors[i];
		it[i].dt = st_dtype_of(ag_tensor_dtype(tensors[i]));
		it[i].bytes =
			(uint64_t)ag_tensor_numel(tensors[i]) * it[i].dt->size;
	}
	qsort(it, n, sizeof(*it), st_cmp_item);
	for (int i = 1; i < n; i++)
		if (!strcmp(it[i].name, it[i - 1].name))
			return ag_set_error(
				AG_EINVAL,
				"ag_safetensors_save: the name '%s' is given twice",
				it[i].name);
	return 0;
}

static json_t *st_entry_json(const struct st_item *it, uint64_t at)
{
	struct ag_tensor *t = it->t;
	json_t *o = json_object(), *shape = json_array();
	const int64_t *sz = ag_tensor_shape(t);
	int bad = !o || !shape;

	for (int d = 0; !bad && d < ag_tensor_ndim(t); d++)
		bad = json_array_append_new(shape, json_integer(sz[d]));
	bad = bad ||
	      json_object_set_new(o, "dtype", json_string(it->dt->name)) ||
	      json_object_set(o, "shape", shape) ||
	      json_object_set_new(o, "data_offsets",
				  json_pack("[I, I]", (json_int_t)at,
					    (json_int_t)(at + it->bytes)));
	json_decref(shape);
	if (bad) {
		json_decref(o);
		return NULL;
	}
	return o;
}

/* The header, padded with spaces to a multiple of 8 bytes; NULL on error. */
static char *st_header(const struct st_item *it, int n, size_t *len)
{
	json_t *root = json_object();
	uint64_t at = 0;
	char *s, *p;
	size_t l;

	if (!root)
		goto enomem;
	for (int i = 0; i < n; i++) {
		json_t *o = st_entry_json(&it[i], at);

		if (!o)
			goto enomem;
		/* jansson takes keys as UTF-8 only */
		if (json_object_set_new(root, it[i].name, o)) {
			json_decref(root);
			ag_set_error(
				AG_EINVAL,
				"ag_safetensors_save: the name '%s' is not valid UTF-8",
				it[i].name);
			return NULL;
		}
		at += it[i].bytes;
	}
	s = json_dumps(root, JSON_COMPACT | JSON_PRESERVE_ORDER);
	json_decref(root);
	root = NULL; /* enomem below must not put it again */
	if (!s)
		goto enomem;
	l = strlen(s);
	p = st_malloc(l + 8);
	if (!p) {
		free(s);
		goto enomem;
	}
	memcpy(p, s, l);
	free(s);
	while (l % 8)
		p[l++] = ' ';
	*len = l;
	return p;
enomem:
	json_decref(root);
	ag_set_error(AG_ENOMEM, "ag_safetensors_save: out of memory");
	return NULL;
}

static int write_all(int fd, const void *buf, size_t n)
{
	const unsigned char *p = buf;

	while (n) {
		ssize_t w = st_fault(EIO) ? -1 : write(fd, p, n);

		if (w < 0 && errno == EINTR)
			continue;
		if (w < 0)
			return -errno;
		p += w;
		n -= (size_t)w;
	}
	return 0;
}

static int st_write_tensor(int fd, const struct st_item *it)
{
	struct ag_tensor *t = it->t;
	void *buf;
	int e;

	if (!it->bytes)
		return 0;
	if (ag_tensor_is_contiguous(t))
		return write_all(fd, ag_tensor_data(t), it->bytes);
	buf = st_malloc(it->bytes);
	if (!buf)
		return -ENOMEM;
	e = ag_tensor_copy_to(t, buf, it->bytes) ? -ENOMEM : 0;
	if (!e)
		e = write_all(fd, buf, it->bytes);
	free(buf);
	return e;
}

/* Writes the whole file to fd and syncs it; a negative errno on failure. */
static int st_write_file(int fd, const char *hdr, size_t hlen,
			 const struct st_item *it, int n)
{
	unsigned char len[8];
	int e;

	for (int i = 0; i < 8; i++)
		len[i] = (unsigned char)((uint64_t)hlen >> (8 * i));
	e = write_all(fd, len, 8);
	if (!e)
		e = write_all(fd, hdr, hlen);
	for (int i = 0; !e && i < n; i++)
		e = st_write_tensor(fd, &it[i]);
	if (!e && (st_fault(EIO) || fsync(fd)))
		e = -errno;
	return e;
}

/* "dir/.base.XXXXXX" beside path, and the directory itself. */
static int st_temp_names(const char *path, char **tmp, char **dir)
{
	const char *slash = strrchr(path, '/');
	const char *base = slash ? slash + 1 : path;
	size_t dlen = slash ? (size_t)(slash - path) : 1;

	*tmp = st_malloc(strlen(path) + 16);
	*dir = st_malloc(dlen + 2);
	if (!*tmp || !*dir)
		return ag_set_error(AG_ENOMEM,
				    "ag_safetensors_save: out of memory");
	if (slash) {
		memcpy(*dir, path, dlen);
		(*dir)[dlen] = 0;
		if (!dlen)
			strcpy(*dir, "/");
	} else {
		strcpy(*dir, ".");
	}
	sprintf(*tmp, "%.*s.%s.XXXXXX", (int)(base - path), path, base);
	return 0;
}

static int st_replace(const char *path, const char *hdr, size_t hlen,
		      const struct st_item *it, int n)
{
	char *tmp = NULL, *dir = NULL;
	mode_t mode = 0644;
	struct stat sb;
	int fd = -1, dfd, e, err;

	err = st_temp_names(path, &tmp, &dir);
	if (err)
		goto out;
	if (!stat(path, &sb) && S_ISREG(sb.st_mode))
		mode = sb.st_mode & 07777;
	fd = st_fault(EIO) ? -1 : mkstemp(tmp);
	if (fd < 0) {
		err = ag_set_error(AG_EIO, "ag_safetensors_save: %s: %s", tmp,
				   strerror(errno));
		goto out;
	}
	e = st_fault(EIO) || fchmod(fd, mode) ? -errno : 0;
	if (!e)
		e = st_write_file(fd, hdr, hlen, it, n);
	if ((close(fd) || st_fault(EIO)) && !e)
		e = -errno;
	if (!e && (st_fault(EIO) || rename(tmp, path)))
		e = -errno;
	if (e) {
		unlink(tmp);
		err = ag_set_error(e == -ENOMEM ? AG_ENOMEM : AG_EIO,
				   "ag_safetensors_save: %s: %s", path,
				   strerror(-e));
		goto out;
	}
	/* the rename itself is durable once the directory is synced */
	dfd = st_fault(EIO) ? -1 :
			      open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (dfd < 0 || st_fault(EIO) || fsync(dfd))
		err = ag_set_error(AG_EIO, "ag_safetensors_save: %s: sync: %s",
				   dir, strerror(errno));
	if (dfd >= 0)
		close(dfd);
out:
	free(tmp);
	free(dir);
	return err;
}

int ag_safetensors_save(const char *path, const char *const *names,
			struct ag_tensor *const *tensors, int n)
{
	NN_UNSCOPED();
	struct st_item *it;
	size_t hlen;
	char *hdr;
	int err;

	if (!path || n < 0 || (n && (!names || !tensors)))
		return ag_set_error(
			AG_EINVAL,
			"ag_safetensors_save: path, names or tensors is NULL, or n = %d < 0",
			n);
	it = st_fault(ENOMEM) ? NULL : calloc((size_t)n + 1, sizeof(*it));
	if (!it)
		return ag_set_error(AG_ENOMEM,
				    "ag_safetensors_save: out of memory");
	err = st_check_items(names, tensors, n, it);
	if (err)
		goto out;
	hdr = st_header(it, n, &hlen);
	if (!hdr) {
		err = -ag_errcode();
		goto out;
	}
	err = st_replace(path, hdr, hlen, it, n);
	free(hdr);
out:
	free(it);
	return err;
}
