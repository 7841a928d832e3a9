// SPDX-License-Identifier: MIT
/*
 * The Fashion-MNIST loader (fmnist.h).  IDX files: a big-endian magic
 * number (0x00000803 for u8 images of 3 dims, 0x00000801 for u8 labels),
 * the big-endian dim sizes, then the bytes.
 */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <zlib.h>

#include <ag/nn.h>

#include "fmnist.h"
#include "fmnist_models.h"

#define IDX_IMAGES 0x00000803u
#define IDX_LABELS 0x00000801u

static int fail(struct fmnist *d, const char *fmt, ...)
	__attribute__((format(printf, 2, 3)));

static int fail(struct fmnist *d, const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(d->errmsg, sizeof(d->errmsg), fmt, ap);
	va_end(ap);
	return -1;
}

/* Exactly n bytes, or an error naming the file. */
static int read_exact(struct fmnist *d, gzFile f, const char *path, void *buf,
		      size_t n)
{
	unsigned char *p = buf;
	int errnum;

	while (n) {
		unsigned chunk = n > (1u << 30) ? 1u << 30 : (unsigned)n;
		int r = gzread(f, p, chunk);

		if (r <= 0) {
			const char *msg = gzerror(f, &errnum);

			return fail(
				d, "%s: %s", path,
				r < 0 || errnum ?
					msg :
					"truncated (unexpected end of data)");
		}
		p += r;
		n -= (size_t)r;
	}
	return 0;
}

static int read_u32s(struct fmnist *d, gzFile f, const char *path, uint32_t *v,
		     int n)
{
	unsigned char b[16];

	if (read_exact(d, f, path, b, 4 * (size_t)n))
		return -1;
	for (int i = 0; i < n; i++)
		v[i] = (uint32_t)b[4 * i] << 24 | (uint32_t)b[4 * i + 1] << 16 |
		       (uint32_t)b[4 * i + 2] << 8 | b[4 * i + 3];
	return 0;
}

/* Nothing may follow the data: a longer file is not what it claims. */
static int read_end(struct fmnist *d, gzFile f, const char *path)
{
	unsigned char extra;
	int errnum, r = gzread(f, &extra, 1);

	if (r < 0 || (r == 0 && (gzerror(f, &errnum), errnum)))
		return fail(d, "%s: %s", path, gzerror(f, &errnum));
	if (r > 0)
		return fail(d, "%s: data after the last item", path);
	return 0;
}

/* The u8 payload of an IDX file with magic and dims want[0..nd). */
static unsigned char *read_idx(struct fmnist *d, const char *path,
			       uint32_t magic, int nd, uint32_t *dims)
{
	unsigned char *data = NULL;
	uint32_t m;
	size_t n = 1;
	gzFile f = gzopen(path, "rb");

	if (!f) {
		fail(d, "%s: cannot open", path);
		return NULL;
	}
	if (read_u32s(d, f, path, &m, 1))
		goto out;
	if (m != magic) {
		fail(d, "%s: magic number 0x%08x, want 0x%08x", path, m, magic);
		goto out;
	}
	if (read_u32s(d, f, path, dims, nd))
		goto out;
	for (int i = 0; i < nd; i++)
		n *= dims[i];
	data = malloc(n + 1);
	if (!data) {
		fail(d, "%s: out of memory for %zu bytes", path, n);
		goto out;
	}
	if (read_exact(d, f, path, data, n) || read_end(d, f, path)) {
		free(data);
		data = NULL;
	}
out:
	gzclose(f);
	return data;
}

static int check_dims(struct fmnist *d, const char *images, const uint32_t *id,
		      const uint32_t *ld)
{
	if (id[1] != FMNIST_SIDE || id[2] != FMNIST_SIDE)
		return fail(d, "%s: images are %ux%u, want %dx%d", images,
			    id[1], id[2], FMNIST_SIDE, FMNIST_SIDE);
	if (id[0] != ld[0])
		return fail(d, "%s: %u images but %u labels", images, id[0],
			    ld[0]);
	/* a sanity cap: a corrupt count must not ask for gigabytes */
	if (id[0] > 1000000)
		return fail(d, "%s: %u images is not Fashion-MNIST", images,
			    id[0]);
	return 0;
}

static int fill(struct fmnist *d, const unsigned char *lb, const char *labels)
{
	for (int64_t i = 0; i < d->n; i++) {
		if (lb[i] > 9)
			return fail(d, "%s: label %u of item %lld is not 0..9",
				    labels, lb[i], (long long)i);
		d->labels[i] = lb[i];
		d->order[i] = i;
	}
	/* 256 values, not two divisions for each pixel of every batch */
	for (int v = 0; v < 256; v++)
		d->norm[v] = (float)((v / 255.0 - FMNIST_MEAN) / FMNIST_STD);
	return 0;
}

int fmnist_load_files(struct fmnist *d, const char *images, const char *labels)
{
	uint32_t id[3], ld[1];
	unsigned char *px = NULL, *lb = NULL;
	int err = -1;

	memset(d, 0, sizeof(*d));
	/* labels first: the smaller file settles the count */
	lb = read_idx(d, labels, IDX_LABELS, 1, ld);
	if (!lb)
		return -1;
	/* the header is checked before the 47 MB payload is read */
	px = read_idx(d, images, IDX_IMAGES, 3, id);
	if (!px || check_dims(d, images, id, ld))
		goto out;
	d->n = id[0];
	d->labels = malloc(sizeof(int64_t) * (size_t)d->n + 1);
	d->order = malloc(sizeof(int64_t) * (size_t)d->n + 1);
	if (!d->labels || !d->order) {
		fail(d, "out of memory for %lld images", (long long)d->n);
		goto out;
	}
	err = fill(d, lb, labels);
	if (!err) {
		d->pixels = px; /* kept: read_idx made it for this */
		px = NULL;
	}
out:
	free(px);
	free(lb);
	if (err)
		fmnist_free(d);
	return err;
}

int fmnist_load(struct fmnist *d, const char *dir, bool train)
{
	char images[512], labels[512];
	const char *set = train ? "train" : "t10k";

	if (!dir)
		dir = FMNIST_DIR;
	snprintf(images, sizeof(images), "%s/%s-images-idx3-ubyte.gz", dir,
		 set);
	snprintf(labels, sizeof(labels), "%s/%s-labels-idx1-ubyte.gz", dir,
		 set);
	return fmnist_load_files(d, images, labels);
}

void fmnist_free(struct fmnist *d)
{
	char msg[sizeof(d->errmsg)];

	memcpy(msg, d->errmsg, sizeof(msg));
	free(d->pixels);
	free(d->labels);
	free(d->order);
	memset(d, 0, sizeof(*d));
	memcpy(d->errmsg, msg, sizeof(msg)); /* a failed load keeps its why */
}

void fmnist_shuffle(struct fmnist *d, struct ag_generator *g)
{
	/* a permutation of 0..n-1 that depends on g alone, as torch.randperm:
	 * a run resumed with g's saved state shuffles as the whole run did */
	for (int64_t i = 0; i < d->n; i++)
		d->order[i] = i;
	/* the modulo's bias is below 2^-47 for n <= 2^17 */
	for (int64_t i = d->n - 1; i > 0; i--) {
		int64_t j = (int64_t)(ag_generator_next(g) % (uint64_t)(i + 1));
		int64_t t = d->order[i];

		d->order[i] = d->order[j];
		d->order[j] = t;
	}
}

int fmnist_shard(struct fmnist *d, int rank, int world)
{
	if (world < 1 || rank < 0 || rank >= world)
		return fail(d, "rank %d of %d ranks", rank, world);
	d->rank = rank;
	d->world = world;
	return 0;
}

int64_t fmnist_len(const struct fmnist *d)
{
	int64_t w = d->world > 1 ? d->world : 1;

	return (d->n + w - 1) / w;
}

/* Where the k-th image of this rank's share is in the epoch's order. */
static int64_t position(const struct fmnist *d, int64_t k)
{
	if (d->world <= 1)
		return k;
	return (d->rank + k * d->world) % d->n;
}

int64_t fmnist_batches(const struct fmnist *d, int64_t batch)
{
	return batch > 0 ? (fmnist_len(d) + batch - 1) / batch : 0;
}

int fmnist_batch(struct fmnist *d, int64_t i, int64_t batch,
		 struct ag_tensor **x, struct ag_tensor **y)
{
	int64_t start = i * batch, b, xs[4], ys[1];
	float *xp;
	int64_t *yp;

	*x = *y = NULL;
	if (batch <= 0 || i < 0 || i >= fmnist_batches(d, batch))
		return fail(d, "batch %lld of size %lld is out of range",
			    (long long)i, (long long)batch);
	b = fmnist_len(d) - start < batch ? fmnist_len(d) - start : batch;
	xs[0] = b;
	xs[1] = 1;
	xs[2] = xs[3] = FMNIST_SIDE;
	ys[0] = b;
	*x = ag_empty(AG_F32, 4, xs);
	*y = ag_empty(AG_I64, 1, ys);
	if (!*x || !*y) {
		ag_tensor_put(*x);
		ag_tensor_put(*y);
		*x = *y = NULL;
		return fail(d, "out of memory for a batch of %lld",
			    (long long)b);
	}
	xp = ag_tensor_data(*x);
	yp = ag_tensor_data(*y);
	for (int64_t k = 0; k < b; k++) {
		int64_t s = d->order[position(d, start + k)];
		const unsigned char *px = d->pixels + s * FMNIST_PIXELS;
		float *o = xp + k * FMNIST_PIXELS;

		for (int p = 0; p < FMNIST_PIXELS; p++)
			o[p] = d->norm[px[p]];
		yp[k] = d->labels[s];
	}
	return 0;
}

/* ---- the models (fmnist_models.c) ---- */

struct ag_module *fmnist_model(const char *name, struct ag_generator *g)
{
	if (!strcmp(name, "mlp"))
		return fmnist_mlp(g);
	if (!strcmp(name, "cnn"))
		return fmnist_cnn(28, g);
	return NULL;
}
