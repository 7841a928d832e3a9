// SPDX-License-Identifier: MIT
/*
 * All-reduce through memory the ranks share, for DDP's buckets when every
 * rank runs on one node.
 *
 * The buckets live in an MPI-3 shared window (MPI_Win_allocate_shared),
 * one segment per rank, so a rank reads and writes the others' buckets
 * directly: an all-reduce is one pass that sums the ranks' slices and
 * writes the mean back to every rank, with no message, no copy into MPI's
 * own buffers and no progress engine to drive.  Through MPI_Iallreduce on
 * two ranks of this 2-CPU machine the 784-512-512-10 mlp's 2.7 MB took
 * 1.2-1.8 ms of a 4 ms step; this pass takes a fraction of that.
 *
 * Who reduces: a bucket is cut into CHUNK-byte chunks.  Each rank counts
 * itself in when its bucket is full; once all are in, any rank that
 * looks (the last to arrive, from its hook; any rank testing or waiting)
 * claims chunks one at a time and reduces them, so ranks already idle
 * help the one still computing.  Each chunk is summed in rank order by
 * whoever claims it, so every rank ends up with the same bits.
 *
 * The counters in rank 0's segment only ever grow: each rank keeps, per
 * bucket slot, where the counters stood when the slot's last reduction
 * ended on it (the same on every rank, for every rank reduces the same
 * buckets in the same order).  A rank done with a bucket may refill it
 * for the next backward while a slower rank is still returning from the
 * last one: nobody reads a bucket before everyone is in again.
 */
#include <sched.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "dist_internal.h"

#define CHUNK (64u << 10)
#define SUB 1024 /* elements summed at a time, on the stack */
#define CACHELINE 64

/* One bucket slot's counters, a cache line each slot. */
struct shm_ctl {
	_Atomic uint64_t arrived; /* ranks in, over all reductions */
	_Atomic uint64_t claimed; /* chunks taken */
	_Atomic uint64_t done; /* chunks reduced */
	char pad[CACHELINE - 3 * sizeof(uint64_t)];
};

/* After the slots' counters: who gave up on the ddp. */
struct shm_state {
	_Atomic int abandoned; /* 1 + the first rank that did, or 0 */
	char pad[CACHELINE - sizeof(int)];
};

struct shm_base {
	uint64_t arrived, chunks;
};

struct ag__shm {
	MPI_Win win;
	int world, slots;
	char **seg; /* every rank's segment */
	struct shm_ctl *ctl; /* in rank 0's segment */
	struct shm_state *state; /* there too, after ctl[slots] */
	struct shm_base *base; /* per slot, this rank's */
	size_t ctl_bytes;
};

static inline void cpu_relax(void)
{
#if defined(__x86_64__) || defined(__i386__)
	__builtin_ia32_pause();
#endif
}

static size_t round_up(size_t n, size_t a)
{
	return (n + a - 1) / a * a;
}

/* Whether every rank of comm shares this rank's node. */
static int one_node(MPI_Comm comm, int world, bool *yes)
{
	MPI_Comm node;
	int n = 0, rc;

	rc = ag__dist_check(MPI_Comm_split_type(comm, MPI_COMM_TYPE_SHARED, 0,
						MPI_INFO_NULL, &node),
			    "ag_ddp", "MPI_Comm_split_type");
	if (rc)
		return rc;
	rc = ag__dist_check(MPI_Comm_size(node, &n), "ag_ddp", "MPI_Comm_size");
	MPI_Comm_free(&node);
	*yes = n == world;
	return rc;
}

static int map_segments(struct ag__shm *s, MPI_Comm comm, size_t bytes)
{
	MPI_Info info;
	MPI_Aint sz;
	int du, rc;
	char *mine;

	/* each segment on its own pages, first touched by its rank */
	MPI_Info_create(&info);
	MPI_Info_set(info, "alloc_shared_noncontig", "true");
	rc = ag__dist_check(MPI_Win_allocate_shared((MPI_Aint)bytes, 1, info,
						    comm, &mine, &s->win),
			    "ag_ddp", "MPI_Win_allocate_shared");
	MPI_Info_free(&info);
	if (rc) {
		s->win = MPI_WIN_NULL;
		return rc;
	}
	for (int r = 0; r < s->world && !rc; r++)
		rc = ag__dist_check(MPI_Win_shared_query(s->win, r, &sz, &du,
							 &s->seg[r]),
				    "ag_ddp", "MPI_Win_shared_query");
	if (rc)
		return rc;
	/* the MPI-3 idiom for loads and stores in a shared window */
	return ag__dist_check(MPI_Win_lock_all(MPI_MODE_NOCHECK, s->win),
			      "ag_ddp", "MPI_Win_lock_all");
}

int ag__shm_new(struct ag__shm **out, size_t bytes, int slots)
{
	MPI_Comm comm = ag__dist_comm();
	struct ag__shm *s;
	bool yes = false;
	int rc, world = ag_dist_world_size();

	*out = NULL;
	ag__dist_lock();
	rc = one_node(comm, world, &yes);
	ag__dist_unlock();
	if (rc || !yes)
		return rc;
	s = calloc(1, sizeof(*s));
	if (s) {
		s->win = MPI_WIN_NULL;
		s->seg = calloc((size_t)world, sizeof(*s->seg));
		s->base = calloc((size_t)(slots ? slots : 1), sizeof(*s->base));
	}
	/* every rank takes part in the window, or none does */
	rc = ag__dist_agree(s && s->seg && s->base ?
				    0 :
				    ag_set_error(AG_ENOMEM,
						 "ag_ddp: out of memory"),
			    "ag_ddp");
	if (rc)
		goto fail;
	s->world = world;
	s->slots = slots;
	s->ctl_bytes = round_up((size_t)slots * sizeof(struct shm_ctl) +
					sizeof(struct shm_state),
				4096);
	ag__dist_lock();
	rc = map_segments(s, comm, s->ctl_bytes + round_up(bytes, 4096));
	if (!rc) {
		s->ctl = (struct shm_ctl *)s->seg[0];
		s->state = (struct shm_state *)(s->ctl + slots);
		if (ag_dist_rank() == 0)
			memset(s->ctl, 0, s->ctl_bytes);
		/* nobody counts before rank 0 zeroed the counters */
		MPI_Win_sync(s->win);
		rc = ag__dist_check(MPI_Barrier(comm), "ag_ddp", "MPI_Barrier");
		MPI_Win_sync(s->win);
	}
	ag__dist_unlock();
	if (rc)
		goto fail;
	*out = s;
	return 0;
fail:
	ag__shm_free(s);
	return rc;
}

void ag__shm_free(struct ag__shm *s)
{
	if (!s)
		return;
	/* nobody waits for this rank any more (collective from here) */
	if (s->state)
		ag__shm_abandon(s);
	if (s->win != MPI_WIN_NULL) {
		ag__dist_lock();
		MPI_Win_unlock_all(s->win);
		MPI_Win_free(&s->win);
		ag__dist_unlock();
	}
	free(s->seg);
	free(s->base);
	free(s);
}

/* Rank r's buckets, after the counters' room. */
static char *data(struct ag__shm *s, int r)
{
	return s->seg[r] + s->ctl_bytes;
}

void *ag__shm_data(struct ag__shm *s)
{
	return data(s, ag_dist_rank());
}

static uint64_t nchunks(int64_t numel, size_t esz)
{
	size_t bytes = (size_t)numel * esz;

	return bytes ? (bytes + CHUNK - 1) / CHUNK : 1;
}

bool ag__shm_arrive(struct ag__shm *s, int slot)
{
	uint64_t n = atomic_fetch_add_explicit(&s->ctl[slot].arrived, 1,
					       memory_order_acq_rel);

	return n + 1 == s->base[slot].arrived + (uint64_t)s->world;
}

/*
 * Elements [lo, hi) of every rank's copy become their mean: summed in
 * rank order SUB at a time on the stack, then stored to every rank.  Two
 * ranks, the common case on one node, take one pass with no staging.
 */
#define DEFINE_REDUCE(sfx, T)                                                 \
	static void reduce2_##sfx(T *restrict a, T *restrict b, int64_t n)    \
	{                                                                     \
		for (int64_t j = 0; j < n; j++) {                             \
			T v = (a[j] + b[j]) * (T)0.5;                         \
                                                                              \
			a[j] = v;                                             \
			b[j] = v;                                             \
		}                                                             \
	}                                                                     \
                                                                              \
	static void reduce_##sfx(struct ag__shm *s, size_t off, int64_t lo,   \
				 int64_t hi)                                  \
	{                                                                     \
		T acc[SUB], k = (T)1 / (T)s->world;                           \
                                                                              \
		if (s->world == 2) {                                          \
			reduce2_##sfx((T *)(data(s, 0) + off) + lo,           \
				      (T *)(data(s, 1) + off) + lo, hi - lo); \
			return;                                               \
		}                                                             \
		for (int64_t i = lo; i < hi; i += SUB) {                      \
			int64_t n = hi - i < SUB ? hi - i : SUB;              \
                                                                              \
			memcpy(acc, (T *)(data(s, 0) + off) + i,              \
			       n * sizeof(T));                                \
			for (int r = 1; r < s->world; r++) {                  \
				const T *src = (T *)(data(s, r) + off) + i;   \
                                                                              \
				for (int64_t j = 0; j < n; j++)               \
					acc[j] += src[j];                     \
			}                                                     \
			for (int64_t j = 0; j < n; j++)                       \
				acc[j] *= k;                                  \
			for (int r = 0; r < s->world; r++)                    \
				memcpy((T *)(data(s, r) + off) + i, acc,      \
				       n * sizeof(T));                        \
		}                                                             \
	}

DEFINE_REDUCE(f32, float)
DEFINE_REDUCE(f64, double)

bool ag__shm_reduce(struct ag__shm *s, int slot, size_t off, int64_t numel,
		    enum ag_dtype dt)
{
	struct shm_ctl *c = &s->ctl[slot];
	size_t esz = ag_dtype_size(dt);
	uint64_t first = s->base[slot].chunks, n = nchunks(numel, esz);
	uint64_t per = CHUNK / esz, k;

	if (atomic_load_explicit(&c->arrived, memory_order_acquire) <
	    s->base[slot].arrived + (uint64_t)s->world)
		return false;
	k = atomic_load_explicit(&c->claimed, memory_order_relaxed);
	while (k < first + n) {
		int64_t lo, hi;

		if (!atomic_compare_exchange_weak_explicit(
			    &c->claimed, &k, k + 1, memory_order_acquire,
			    memory_order_relaxed))
			continue;
		lo = (int64_t)((k - first) * per);
		hi = lo + (int64_t)per < numel ? lo + (int64_t)per : numel;
		if (dt == AG_F64)
			reduce_f64(s, off, lo, hi);
		else
			reduce_f32(s, off, lo, hi);
		atomic_fetch_add_explicit(&c->done, 1, memory_order_release);
		k = atomic_load_explicit(&c->claimed, memory_order_relaxed);
	}
	return atomic_load_explicit(&c->done, memory_order_acquire) >=
	       first + n;
}

void ag__shm_abandon(struct ag__shm *s)
{
	int none = 0;

	atomic_compare_exchange_strong_explicit(&s->state->abandoned, &none,
						ag_dist_rank() + 1,
						memory_order_acq_rel,
						memory_order_acquire);
}

int ag__shm_check(struct ag__shm *s)
{
	int r = atomic_load_explicit(&s->state->abandoned,
				     memory_order_acquire) -
		1;

	if (r < 0)
		return 0;
	return ag_set_error(
		AG_EIO,
		"ag_ddp: rank %d abandoned the reduction (its backward failed, or it freed its ddp); free the ddp on every rank",
		r);
}

/*
 * Until the slot's reduction is done, helping with it: spins while the
 * others are about to finish, then yields the CPU (ranks may outnumber
 * cores), then sleeps.  A rank that gave up (its backward failed before
 * it filled the bucket, or it freed its ddp) would never come: then an
 * error, within a nap.
 */
int ag__shm_wait(struct ag__shm *s, int slot, size_t off, int64_t numel,
		 enum ag_dtype dt)
{
	struct timespec nap = { 0, 20000 };
	int rc;

	for (unsigned i = 0; !ag__shm_reduce(s, slot, off, numel, dt); i++) {
		rc = ag__shm_check(s);
		if (rc)
			return rc;
		if (i < 256)
			cpu_relax();
		else if (i < 4096)
			sched_yield();
		else
			nanosleep(&nap, NULL);
	}
	return 0;
}

void ag__shm_next(struct ag__shm *s, int slot, int64_t numel, enum ag_dtype dt)
{
	s->base[slot].arrived += (uint64_t)s->world;
	s->base[slot].chunks += nchunks(numel, ag_dtype_size(dt));
}
