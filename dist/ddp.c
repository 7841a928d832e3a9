// SPDX-License-Identifier: MIT
/*
 * DistributedDataParallel: gradients all-reduced in buckets while the
 * backward runs.
 *
 * A post-accumulate-grad hook on each parameter copies the parameter's
 * .grad into its slot of a bucket, a flat buffer of one dtype.  When the
 * last parameter of a bucket is in, the bucket's MPI_Iallreduce starts,
 * but only in bucket order: MPI needs every rank to start collectives on
 * a communicator in the same order, and the order hooks run in differs
 * between ranks (pool scheduling).  The first hook of a backward queues a
 * callback (ag_queue_callback) that runs when every node ran: it reduces
 * the parameters that got no gradient as zeros, waits for every bucket,
 * and writes the mean into each .grad before ag_backward returns.
 *
 * Open MPI progresses a non-blocking collective only inside MPI calls:
 * each hook tests the buckets in flight, and so does a progress thread
 * between hooks, so they advance while the backward computes.
 *
 * When every rank is on one node the buckets live in memory the ranks
 * share (shm.c) and the same points (start, test, wait) count the rank
 * in, reduce chunks, and wait, with no MPI call and no progress thread.
 */
#include <inttypes.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <ag/autograd.h>

#include "dist_internal.h"

#define DEFAULT_BUCKET_BYTES (25u << 20) /* torch's bucket_cap_mb */
/* torch.distributed._DEFAULT_FIRST_BUCKET_BYTES */
#define FIRST_BUCKET_BYTES (1u << 20)
/*
 * How often the progress thread tests the buckets in flight: 1 us or so
 * per test, so about 2% of a core while a bucket is on the wire, and a
 * round of the all-reduce waits at most this long for it.
 */
#define PROGRESS_NS 50000L

struct ddp_param {
	struct ag_ddp *ddp;
	struct ag_tensor *t; /* a reference */
	char *name;
	struct ag_hook *hook;
	int bucket;
	int64_t off; /* elements into the bucket */
	int64_t numel;
	bool ready; /* under ddp->lock: its gradient is in the bucket */
};

struct ddp_bucket {
	enum ag_dtype dtype;
	void *buf;
	int64_t numel;
	int nparams;
	size_t off; /* bytes into the shared data, with ddp->shm */
	int pending; /* parameters not ready yet, under ddp->lock */
	bool started;
	bool done;
	MPI_Request req;
};

struct ag_ddp {
	struct ag_module *module;
	struct ag_ddp_opts o;
	struct ddp_param *p;
	int np;
	struct ddp_bucket *b;
	int nb;
	/*
	 * Parameters in bucket order: at first the reverse of theirs; after
	 * the first reduced backward, the order their gradients became ready
	 * in on rank 0 (torch rebuilds its buckets the same way).
	 */
	int *order;
	int nordered; /* recorded so far in the first backward */
	bool rebuilt;
	/*
	 * Which parameters got a gradient, in finish(): made with the ddp,
	 * for an allocation failing there on one rank would hang the others.
	 */
	unsigned char *used;
	pthread_mutex_t lock; /* the state of the backward being reduced */
	bool active; /* a backward's hooks ran, its callback is queued */
	bool no_sync;
	int next; /* the next bucket to start */
	/*
	 * The progress thread (when world > 1): tests the buckets while one
	 * is in flight, waits on prog_cv (signalled when one starts) else.
	 */
	pthread_t prog;
	pthread_cond_t prog_cv;
	bool prog_on, prog_quit;
	/* the buckets in memory the ranks share (shm.c), or NULL: MPI */
	struct ag__shm *shm;
	int world;
	struct ag_ddp_stats stats; /* of the last (or running) backward */
};

static const char *fn_new = "ag_ddp_new";

/* FNV-1a over the bytes of s. */
static uint64_t fnv(uint64_t h, const void *s, size_t n)
{
	const unsigned char *c = s;

	for (size_t i = 0; i < n; i++) {
		h ^= c[i];
		h *= 0x100000001b3ULL;
	}
	return h;
}

/* A hash of every name, dtype and shape: equal on ranks that match. */
static uint64_t describe(const char *const *names, struct ag_tensor *const *t,
			 int n, uint64_t h)
{
	for (int i = 0; i < n; i++) {
		int dt = ag_tensor_dtype(t[i]), nd = ag_tensor_ndim(t[i]);

		h = fnv(h, names[i], strlen(names[i]) + 1);
		h = fnv(h, &dt, sizeof(dt));
		h = fnv(h, &nd, sizeof(nd));
		h = fnv(h, ag_tensor_shape(t[i]), sizeof(int64_t) * nd);
	}
	return h;
}

/*
 * Every rank learns every rank's description, so a mismatch is an error
 * on all of them, in one collective, and never a hang in a later one: the
 * module's hash and counts, then the options that shape the buckets.
 */
#define NDESC 5

static int check_same(struct ag_module *m, int world,
		      const struct ag_ddp_opts *o)
{
	const char *const *pn, *const *bn;
	struct ag_tensor *const *pt, *const *bt;
	uint64_t mine[NDESC], *all;
	int npar, nbuf, rc, bad = -1;

	if (ag_module_named_parameters(m, &pn, &pt, &npar) ||
	    ag_module_named_buffers(m, &bn, &bt, &nbuf))
		return -ag_errcode();
	mine[0] = describe(pn, pt, npar, 0xcbf29ce484222325ULL);
	mine[0] = describe(bn, bt, nbuf, mine[0] ^ 1);
	mine[1] = (uint64_t)npar;
	mine[2] = (uint64_t)nbuf;
	/* options that decide the buckets and which collectives run */
	mine[3] = o->bucket_bytes;
	mine[4] = (uint64_t)o->find_unused_parameters |
		  (uint64_t)o->no_broadcast_buffers << 1 |
		  (uint64_t)o->no_shared_memory << 2;
	all = calloc((size_t)world * NDESC, sizeof(*all));
	if (!all)
		return ag_set_error(AG_ENOMEM, "%s: out of memory", fn_new);
	ag__dist_lock();
	rc = ag__dist_check(MPI_Allgather(mine, NDESC, MPI_UINT64_T, all, NDESC,
					  MPI_UINT64_T, ag__dist_comm()),
			    fn_new, "MPI_Allgather");
	ag__dist_unlock();
	for (int r = 1; r < world && !rc && bad < 0; r++)
		if (memcmp(&all[NDESC * r], all, 3 * sizeof(*all)))
			bad = r;
	for (int r = 1; r < world && !rc && bad < 0; r++)
		if (memcmp(&all[NDESC * r + 3], &all[3], 2 * sizeof(*all)))
			rc = ag_set_error(
				AG_EINVAL,
				"%s: rank %d's options differ from rank 0's: bucket_bytes %" PRIu64
				", find_unused_parameters %d, no_broadcast_buffers %d, no_shared_memory %d against %" PRIu64
				", %d, %d, %d; every rank must pass the same",
				fn_new, r, all[NDESC * r + 3],
				(int)(all[NDESC * r + 4] & 1),
				(int)(all[NDESC * r + 4] >> 1 & 1),
				(int)(all[NDESC * r + 4] >> 2 & 1), all[3],
				(int)(all[4] & 1), (int)(all[4] >> 1 & 1),
				(int)(all[4] >> 2 & 1));
	if (bad >= 0)
		rc = ag_set_error(
			AG_EINVAL,
			"%s: rank %d's module differs from rank 0's: %" PRIu64
			" parameters and %" PRIu64 " buffers against %" PRIu64
			" and %" PRIu64
			", or their names, dtypes or shapes differ",
			fn_new, bad, all[NDESC * bad + 1], all[NDESC * bad + 2],
			all[1], all[2]);
	free(all);
	return rc;
}

static int broadcast_all(struct ag_tensor *const *t, int n)
{
	int rc = 0;

	for (int i = 0; i < n && !rc; i++)
		rc = ag_dist_broadcast(t[i], 0);
	return rc;
}

static int broadcast_buffers(struct ag_module *m)
{
	const char *const *names;
	struct ag_tensor *const *t;
	int n;

	if (ag_module_named_buffers(m, &names, &t, &n))
		return -ag_errcode();
	return broadcast_all(t, n);
}

/*
 * Buckets in d->order, of one dtype each, closed once they hold at least
 * their limit (as torch): FIRST_BUCKET_BYTES for the first, so that the
 * first gradients go on the wire early, bucket_bytes for the others.
 */
static int make_buckets(struct ag_ddp *d)
{
	size_t cap = d->o.bucket_bytes, bytes = 0, limit, off = 0;
	struct ddp_bucket *b = NULL;

	limit = cap < FIRST_BUCKET_BYTES ? cap : FIRST_BUCKET_BYTES;
	d->b = calloc(d->np ? d->np : 1, sizeof(*d->b));
	if (!d->b)
		return ag_set_error(AG_ENOMEM, "%s: out of memory", fn_new);
	for (int i = 0; i < d->np; i++) {
		struct ddp_param *p = &d->p[d->order[i]];
		enum ag_dtype dt = ag_tensor_dtype(p->t);
		size_t sz = (size_t)p->numel * ag_dtype_size(dt);

		if (b && (b->dtype != dt || bytes >= limit)) {
			b = NULL;
			limit = cap;
		}
		if (!b) {
			b = &d->b[d->nb++];
			b->dtype = dt;
			bytes = 0;
		}
		p->bucket = (int)(b - d->b);
		p->off = b->numel;
		b->numel += p->numel;
		b->nparams++;
		bytes += sz;
	}
	for (int k = 0; k < d->nb; k++) {
		b = &d->b[k];
		b->pending = b->nparams;
		b->req = MPI_REQUEST_NULL;
		if (d->shm) {
			b->off = off;
			b->buf = (char *)ag__shm_data(d->shm) + off;
			off += (b->numel * ag_dtype_size(b->dtype) + 63) & ~63;
			continue;
		}
		if (b->numel > INT32_MAX)
			return ag_set_error(
				AG_EINVAL,
				"%s: bucket %d holds %lld elements, MPI counts stop at %d",
				fn_new, k, (long long)b->numel, INT32_MAX);
		b->buf = calloc((size_t)b->numel, ag_dtype_size(b->dtype));
		if (!b->buf)
			return ag_set_error(AG_ENOMEM, "%s: out of memory",
					    fn_new);
	}
	return 0;
}

static void free_buckets(struct ag_ddp *d)
{
	for (int k = 0; k < d->nb && !d->shm; k++)
		free(d->b[k].buf);
	free(d->b);
	d->b = NULL;
	d->nb = 0;
}

/*
 * After the first reduced backward: buckets in the order the gradients
 * arrived on rank 0 (every rank must use the same buckets), so the first
 * ready start first.  No request is in flight.
 */
static int rebuild(struct ag_ddp *d)
{
	int rc;

	ag__dist_lock();
	rc = ag__dist_check(MPI_Bcast(d->order, d->np, MPI_INT, 0,
				      ag__dist_comm()),
			    "ag_ddp", "MPI_Bcast");
	ag__dist_unlock();
	d->rebuilt = true;
	if (rc)
		return rc;
	free_buckets(d);
	return make_buckets(d);
}

/* Starts, in order, every bucket whose parameters are all in. */
static int start_ready(struct ag_ddp *d, bool from_hook)
{
	int rc = 0;

	while (d->next < d->nb && !d->b[d->next].pending && !rc) {
		struct ddp_bucket *b = &d->b[d->next++];

		d->stats.buckets++;
		d->stats.buckets_overlapped += from_hook;
		d->stats.bytes += (size_t)b->numel * ag_dtype_size(b->dtype);
		if (d->shm) {
			ag__shm_arrive(d->shm, (int)(b - d->b));
			b->started = true;
			continue;
		}
		ag__dist_lock();
		rc = ag__dist_check(
			MPI_Iallreduce(MPI_IN_PLACE, b->buf, (int)b->numel,
				       ag__dist_type(b->dtype), MPI_SUM,
				       ag__dist_comm(), &b->req),
			"ag_ddp", "MPI_Iallreduce");
		ag__dist_unlock();
		b->started = !rc;
		if (b->started && d->prog_on)
			pthread_cond_signal(&d->prog_cv);
	}
	return rc;
}

/* Lets the buckets in flight advance (MPI progresses inside calls). */
static int progress(struct ag_ddp *d)
{
	int rc = 0, flag;

	for (int k = 0; k < d->next && !rc; k++) {
		struct ddp_bucket *b = &d->b[k];

		if (!b->started || b->done)
			continue;
		if (d->shm) {
			/* the last rank in reduces, the others help */
			b->done = ag__shm_reduce(d->shm, k, b->off, b->numel,
						 b->dtype);
			d->stats.buckets_done_early += b->done;
			continue;
		}
		ag__dist_lock();
		rc = ag__dist_check(MPI_Test(&b->req, &flag, MPI_STATUS_IGNORE),
				    "ag_ddp", "MPI_Test");
		ag__dist_unlock();
		b->done = !rc && flag;
		d->stats.buckets_done_early += b->done;
	}
	return rc;
}

/*
 * A gradient's slot times 1 / world, as torch's DDP divides while it
 * copies into the bucket: the all-reduce's sum is then the mean, with no
 * pass over the buckets after it.
 */
static void scale(void *v, enum ag_dtype dt, int64_t n, int world)
{
	if (world == 1)
		return;
	if (dt == AG_F32) {
		float *f = v, k = 1.0f / (float)world;

		for (int64_t i = 0; i < n; i++)
			f[i] *= k;
	} else if (dt == AG_F64) {
		double *f = v, k = 1.0 / world;

		for (int64_t i = 0; i < n; i++)
			f[i] *= k;
	}
}

static bool in_flight(const struct ag_ddp *d)
{
	for (int k = 0; k < d->next; k++)
		if (d->b[k].started && !d->b[k].done)
			return true;
	return false;
}

/*
 * Open MPI moves a non-blocking collective on only inside MPI calls: the
 * hooks test the buckets, but between hooks (a long GEMM) and after the
 * last one nothing would until finish() waits.  This thread tests them
 * every PROGRESS_NS while one is in flight, and sleeps on prog_cv
 * otherwise; it holds d->lock only while it tests.
 */
static void *prog_main(void *arg)
{
	struct ag_ddp *d = arg;
	struct timespec ts = { 0, PROGRESS_NS };

	pthread_mutex_lock(&d->lock);
	while (!d->prog_quit) {
		if (!in_flight(d)) {
			pthread_cond_wait(&d->prog_cv, &d->lock);
			continue;
		}
		progress(d); /* an error is finish()'s to report */
		pthread_mutex_unlock(&d->lock);
		nanosleep(&ts, NULL);
		pthread_mutex_lock(&d->lock);
	}
	pthread_mutex_unlock(&d->lock);
	return NULL;
}

static int prog_start(struct ag_ddp *d)
{
	if (d->world == 1 || d->shm)
		return 0;
	if (pthread_cond_init(&d->prog_cv, NULL))
		return ag_set_error(AG_ENOMEM, "%s: pthread_cond_init failed",
				    fn_new);
	if (pthread_create(&d->prog, NULL, prog_main, d)) {
		pthread_cond_destroy(&d->prog_cv);
		return ag_set_error(AG_ENOMEM,
				    "%s: cannot start a progress thread",
				    fn_new);
	}
	d->prog_on = true;
	return 0;
}

static void prog_stop(struct ag_ddp *d)
{
	if (!d->prog_on)
		return;
	pthread_mutex_lock(&d->lock);
	d->prog_quit = true;
	pthread_cond_signal(&d->prog_cv);
	pthread_mutex_unlock(&d->lock);
	pthread_join(d->prog, NULL);
	pthread_cond_destroy(&d->prog_cv);
	d->prog_on = false;
}

static int finish(void *arg);

static int grad_ready_one(struct ag_tensor *grad, struct ddp_param *p);

/*
 * A rank whose backward fails in its hooks will not fill its shared
 * buckets: the others, waiting for them, learn it and fail too.
 */
static int grad_ready(struct ag_tensor *grad, void *arg)
{
	struct ddp_param *p = arg;
	int rc = grad_ready_one(grad, p);

	if (rc && p->ddp->shm)
		ag__shm_abandon(p->ddp->shm);
	return rc;
}

static int grad_ready_one(struct ag_tensor *grad, struct ddp_param *p)
{
	struct ag_ddp *d = p->ddp;
	struct ddp_bucket *b;
	size_t esz;
	int rc = 0;

	pthread_mutex_lock(&d->lock);
	b = &d->b[p->bucket]; /* the buckets change between backwards */
	esz = ag_dtype_size(b->dtype);
	if (d->no_sync) {
		pthread_mutex_unlock(&d->lock);
		return 0;
	}
	/* the reduction could never complete */
	if (d->shm && (rc = ag__shm_check(d->shm))) {
		pthread_mutex_unlock(&d->lock);
		return rc;
	}
	if (!d->active) {
		rc = ag_queue_callback(finish, d);
		d->active = !rc;
		d->nordered = 0; /* a failed backward may have left some */
		memset(&d->stats, 0, sizeof(d->stats));
	}
	if (!rc && p->ready)
		rc = ag_set_error(
			AG_EINVAL,
			"ag_ddp: parameter '%s' got a gradient twice in one backward; run one backward at a time through a DDP module",
			p->name);
	pthread_mutex_unlock(&d->lock);
	if (rc)
		return rc;
	/* its own slot, in a bucket that cannot start before it is in */
	rc = ag_tensor_copy_to(grad, (char *)b->buf + p->off * esz,
			       (size_t)p->numel * esz);
	if (rc)
		return rc;
	/* through shared memory the reduction itself divides */
	if (!d->shm)
		scale((char *)b->buf + p->off * esz, b->dtype, p->numel,
		      d->world);
	pthread_mutex_lock(&d->lock);
	p->ready = true;
	b->pending--;
	if (!d->rebuilt && d->nordered < d->np)
		d->order[d->nordered++] = (int)(p - d->p);
	rc = start_ready(d, true);
	if (!rc)
		rc = progress(d);
	pthread_mutex_unlock(&d->lock);
	return rc;
}

/*
 * Parameters no hook saw get zeros, so every rank starts every bucket;
 * with find_unused_parameters, which parameters some rank used is a MAX
 * over a byte per parameter.
 */
static int fill_unused(struct ag_ddp *d, unsigned char *used, int *nunused)
{
	*nunused = 0;
	for (int i = 0; i < d->np; i++) {
		struct ddp_param *p = &d->p[i];
		struct ddp_bucket *b = &d->b[p->bucket];
		size_t esz = ag_dtype_size(b->dtype);

		used[i] = p->ready;
		if (p->ready)
			continue;
		memset((char *)b->buf + p->off * esz, 0,
		       (size_t)p->numel * esz);
		p->ready = true;
		b->pending--;
		++*nunused;
		if (!d->rebuilt && d->nordered < d->np)
			d->order[d->nordered++] = i;
	}
	return start_ready(d, false);
}

static int wait_all(struct ag_ddp *d)
{
	int rc = 0, r;

	/* every started request must complete, even after an error */
	for (int k = 0; k < d->nb; k++) {
		struct ddp_bucket *b = &d->b[k];

		if (!b->started || b->done)
			continue;
		if (d->shm) {
			r = ag__shm_wait(d->shm, k, b->off, b->numel, b->dtype);
			b->done = !r;
			if (!rc)
				rc = r;
			continue;
		}
		ag__dist_lock();
		r = MPI_Wait(&b->req, MPI_STATUS_IGNORE);
		ag__dist_unlock();
		if (!rc)
			rc = ag__dist_check(r, "ag_ddp", "MPI_Wait");
		b->done = true;
	}
	return rc;
}

/* Ready for the next backward. */
static void reset(struct ag_ddp *d)
{
	for (int i = 0; i < d->np; i++)
		d->p[i].ready = false;
	for (int k = 0; k < d->nb; k++) {
		if (d->shm && d->b[k].done)
			ag__shm_next(d->shm, k, d->b[k].numel, d->b[k].dtype);
		d->b[k].pending = d->b[k].nparams;
		d->b[k].started = false;
		d->b[k].done = false;
		d->b[k].req = MPI_REQUEST_NULL;
	}
	d->next = 0;
	d->active = false;
}

/* .grad = the mean: in place when .grad is dense, else a new tensor. */
static int write_grad(struct ag_ddp *d, struct ddp_param *p)
{
	struct ddp_bucket *b = &d->b[p->bucket];
	size_t esz = ag_dtype_size(b->dtype);
	const char *src = (const char *)b->buf + p->off * esz;
	struct ag_tensor *g = ag_tensor_grad(p->t), *ng;
	int rc;

	if (g && ag_tensor_is_contiguous(g)) {
		memcpy(ag_tensor_data(g), src, (size_t)p->numel * esz);
		ag_tensor_put(g);
		return 0;
	}
	ag_tensor_put(g);
	ng = ag_from_data(b->dtype, ag_tensor_ndim(p->t), ag_tensor_shape(p->t),
			  src);
	if (!ng)
		return -ag_errcode();
	rc = ag_tensor_set_grad(p->t, ng);
	ag_tensor_put(ng);
	return rc;
}

/* The backward's callback: on the thread that called ag_backward. */
static int finish(void *arg)
{
	struct ag_ddp *d = arg;
	unsigned char *used = d->used;
	int rc, nunused = 0, first_unused = -1;

	pthread_mutex_lock(&d->lock);
	rc = fill_unused(d, used, &nunused);
	if (!rc && d->o.find_unused_parameters) {
		ag__dist_lock();
		rc = ag__dist_check(MPI_Allreduce(MPI_IN_PLACE, used, d->np,
						  MPI_UNSIGNED_CHAR, MPI_MAX,
						  ag__dist_comm()),
				    "ag_ddp", "MPI_Allreduce");
		ag__dist_unlock();
	}
	if (!rc)
		rc = wait_all(d);
	else
		wait_all(d);
	for (int i = 0; i < d->np && !rc; i++) {
		if (!used[i] && first_unused < 0)
			first_unused = i;
		if (used[i] || !d->o.find_unused_parameters)
			rc = write_grad(d, &d->p[i]);
	}
	reset(d);
	if (!rc && !d->rebuilt)
		rc = rebuild(d);
	pthread_mutex_unlock(&d->lock);
	if (!rc && nunused && !d->o.find_unused_parameters)
		rc = ag_set_error(
			AG_EINVAL,
			"ag_ddp: parameter '%s' (and %d more) received no gradient in this backward on this rank; pass find_unused_parameters if some parameters may go unused",
			d->p[first_unused].name, nunused - 1);
	return rc;
}

/*
 * The bucket order before any backward ran: backward reaches the last
 * layer first, so the reverse of the parameters.  And the used flags.
 */
static int first_order(struct ag_ddp *d)
{
	d->order = calloc(d->np ? d->np : 1, sizeof(*d->order));
	d->used = calloc(d->np ? d->np : 1, 1);
	if (!d->order || !d->used)
		return ag_set_error(AG_ENOMEM, "%s: out of memory", fn_new);
	for (int i = 0; i < d->np; i++)
		d->order[i] = d->np - 1 - i;
	return 0;
}

/*
 * With every rank on one node (and not opts.no_shared_memory), the
 * buckets go in memory all ranks map: room for the parameters' gradients
 * however the buckets are cut, each bucket 64-byte aligned.
 */
static int share_buckets(struct ag_ddp *d)
{
	size_t bytes = 0;
	bool ok = d->world > 1 && !d->o.no_shared_memory;

	for (int i = 0; i < d->np; i++) {
		enum ag_dtype dt = ag_tensor_dtype(d->p[i].t);
		size_t sz = (size_t)d->p[i].numel * ag_dtype_size(dt) + 64;

		if (__builtin_add_overflow(bytes, sz, &bytes))
			return ag_set_error(AG_ENOMEM,
					    "%s: the gradients exceed memory",
					    fn_new);
		ok = ok && (dt == AG_F32 || dt == AG_F64);
	}
	if (!ok)
		return 0;
	return ag__shm_new(&d->shm, bytes, d->np);
}

static int hook_params(struct ag_ddp *d)
{
	for (int i = 0; i < d->np; i++) {
		d->p[i].hook = ag_tensor_register_post_accumulate_grad_hook(
			d->p[i].t, grad_ready, &d->p[i]);
		if (!d->p[i].hook)
			return -ag_errcode();
	}
	return 0;
}

/* The parameters that require grad, with references and names. */
static int take_params(struct ag_ddp *d)
{
	const char *const *names;
	struct ag_tensor *const *t;
	int n;

	if (ag_module_named_parameters(d->module, &names, &t, &n))
		return -ag_errcode();
	d->p = calloc(n ? n : 1, sizeof(*d->p));
	if (!d->p)
		return ag_set_error(AG_ENOMEM, "%s: out of memory", fn_new);
	for (int i = 0; i < n; i++) {
		struct ddp_param *p = &d->p[d->np];

		if (!ag_tensor_requires_grad(t[i]))
			continue;
		if (!ag_tensor_is_contiguous(t[i]))
			return ag_set_error(
				AG_EINVAL,
				"%s: parameter '%s' is not contiguous", fn_new,
				names[i]);
		p->ddp = d;
		p->t = ag_tensor_get(t[i]);
		p->numel = ag_tensor_numel(t[i]);
		p->name = strdup(names[i]);
		d->np++;
		if (!p->name)
			return ag_set_error(AG_ENOMEM, "%s: out of memory",
					    fn_new);
	}
	return 0;
}

struct ag_ddp *ag_ddp_new(struct ag_module *module,
			  const struct ag_ddp_opts *opts)
{
	struct ag_ddp_opts o = opts ? *opts : (struct ag_ddp_opts){ 0 };
	const char *const *names;
	struct ag_tensor *const *t;
	struct ag_ddp *d;
	int n, rc;

	if (!module) {
		ag_set_error(AG_EINVAL, "%s: module is NULL", fn_new);
		return NULL;
	}
	if (ag__dist_need_init(fn_new))
		return NULL;
	if (!o.bucket_bytes)
		o.bucket_bytes = DEFAULT_BUCKET_BYTES;
	/* first, so that every rank takes part in it whatever fails later */
	if (check_same(module, ag_dist_world_size(), &o))
		return NULL;
	d = calloc(1, sizeof(*d));
	if (!d) {
		rc = ag_set_error(AG_ENOMEM, "%s: out of memory", fn_new);
		/* the others learn it where they would have: in both */
		ag__dist_agree(rc, fn_new);
		ag__dist_agree(rc, fn_new);
		return NULL;
	}
	pthread_mutex_init(&d->lock, NULL);
	d->module = ag_module_get(module);
	d->world = ag_dist_world_size();
	d->o = o;
	rc = ag_module_named_parameters(module, &names, &t, &n) ?
		     -ag_errcode() :
		     broadcast_all(t, n);
	if (!rc)
		rc = broadcast_buffers(module);
	if (!rc)
		rc = take_params(d);
	if (!rc)
		rc = first_order(d);
	rc = ag__dist_agree(
		rc, fn_new); /* so that all or none take part in the next */
	if (!rc)
		rc = share_buckets(d);
	if (!rc)
		rc = make_buckets(d);
	if (!rc)
		rc = hook_params(d);
	if (!rc)
		rc = prog_start(d);
	rc = ag__dist_agree(rc, fn_new);
	if (rc) {
		ag_ddp_free(d);
		return NULL;
	}
	return d;
}

struct ag_tensor *ag_ddp_forward(struct ag_ddp *d, struct ag_tensor *x)
{
	if (!d) {
		ag_set_error(AG_EINVAL, "ag_ddp_forward: ddp is NULL");
		return NULL;
	}
	if (!d->o.no_broadcast_buffers && d->world > 1 &&
	    broadcast_buffers(d->module))
		return NULL;
	return ag_module_forward(d->module, x);
}

int ag_ddp_no_sync(struct ag_ddp *d, bool on)
{
	if (!d)
		return ag_set_error(AG_EINVAL, "ag_ddp_no_sync: ddp is NULL");
	pthread_mutex_lock(&d->lock);
	d->no_sync = on;
	pthread_mutex_unlock(&d->lock);
	return 0;
}

int ag_ddp_stats(struct ag_ddp *d, struct ag_ddp_stats *st)
{
	if (!d || !st)
		return ag_set_error(AG_EINVAL, "ag_ddp_stats: NULL argument");
	pthread_mutex_lock(&d->lock);
	/* MPI's buckets advance in the progress thread, shared ones here */
	if (d->shm && d->active)
		progress(d);
	*st = d->stats;
	st->shared_memory = d->shm;
	pthread_mutex_unlock(&d->lock);
	return 0;
}

void ag_ddp_free(struct ag_ddp *d)
{
	if (!d)
		return;
	for (int i = 0; i < d->np; i++)
		ag_hook_remove(d->p[i].hook);
	prog_stop(d);
	/* a backward that failed midway left requests MPI must complete */
	if (d->b && !d->shm)
		wait_all(d);
	for (int i = 0; i < d->np; i++) {
		ag_tensor_put(d->p[i].t);
		free(d->p[i].name);
	}
	free_buckets(d);
	ag__shm_free(d->shm);
	free(d->order);
	free(d->used);
	free(d->p);
	ag_module_put(d->module);
	pthread_mutex_destroy(&d->lock);
	free(d);
}
