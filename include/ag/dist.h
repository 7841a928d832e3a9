/* SPDX-License-Identifier: MIT */
#ifndef AG_DIST_H
#define AG_DIST_H

#include <stdbool.h>
#include <stddef.h>

#include <ag/nn.h>
#include <ag/tensor.h>

/*
 * Data-parallel training over MPI: libag-dist (link -lag-dist -lag and
 * MPI's libraries; pkg-config ag-dist).  Built only where MPI is found;
 * libag itself never depends on MPI.  docs/distributed.md tells how to run.
 *
 * Every process (rank) runs the same program on its shard of the data.
 * The functions below that communicate are collective: every rank calls
 * them, in the same order.  Errors follow libag's rules (0 or -AG_E*, the
 * message per thread); an MPI failure is reported, not aborted on, with
 * the MPI error string in the message: AG_ENOMEM for MPI_ERR_NO_MEM,
 * AG_EINVAL for a bad argument, AG_EIO for the rest (a lost peer).
 */

/*
 * Initialises MPI (MPI_Init_thread; argc and argv may be NULL) asking for
 * MPI_THREAD_MULTIPLE; DDP calls MPI from pool threads (hooks) and its
 * progress thread, and every MPI call of libag-dist is serialised by a
 * lock, so MPI_THREAD_SERIALIZED suffices unless the application calls
 * MPI itself while a DDP backward runs.
 * If the application initialised MPI already, attaches to it (and then
 * ag_dist_finalize() leaves MPI running).  Works on a duplicate of
 * MPI_COMM_WORLD whose errors return.  ag_dist_init(argc, argv) is
 * ag_dist_init_ex(argc, argv, NULL).
 */
struct ag_dist_opts {
	/*
	 * 0: as many ranks as mpirun started.  Else the number of ranks this
	 * rank expects: if any rank expects a size MPI does not run (or
	 * passes a negative one), init fails on every rank with AG_EINVAL
	 * naming the first such rank, its expected size and MPI's, instead
	 * of a hang or wrong shards later.  Every rank takes part in one
	 * collective in init anyway, whatever it passes.
	 */
	int world_size;
};

/*
 * On failure nothing is left set up but MPI itself, if this call started
 * it (MPI cannot start again once finalised): call ag_dist_init_ex again,
 * or ag_dist_finalize() to end MPI.  Once ag_dist_finalize() ended MPI,
 * init fails with AG_EINVAL.  A call while initialised communicates
 * nothing: it returns 0, or AG_EINVAL on this rank alone if its
 * world_size is set and differs from the current one.
 */
AG_API int ag_dist_init(int *argc, char ***argv);
AG_API int ag_dist_init_ex(int *argc, char ***argv,
			   const struct ag_dist_opts *o);
/*
 * Frees the communicator, and finalises MPI if ag_dist_init started it
 * (also after an init that failed).
 */
AG_API int ag_dist_finalize(void);
/* This process's rank and the number of ranks; 0 and 1 before init. */
AG_API int ag_dist_rank(void);
AG_API int ag_dist_world_size(void);

enum ag_dist_op {
	AG_DIST_SUM,
	AG_DIST_MEAN, /* sum / world size; f32 and f64 only */
	AG_DIST_MAX,
};

/*
 * In place on t (contiguous, any dtype; every rank the same dtype and
 * number of elements): t = op over the ranks' t.  Writes t's data as
 * ag_tensor_data() does, without a version bump: do not reduce a tensor a
 * recorded op saved.
 */
AG_API int ag_dist_all_reduce(struct ag_tensor *t, enum ag_dist_op op);
/* In place: every rank's t becomes root's. */
AG_API int ag_dist_broadcast(struct ag_tensor *t, int root);
AG_API int ag_dist_barrier(void);

/*
 * Synchronised batch normalisation, as torch's SyncBatchNorm.
 *
 * ag_dist_batch_norm() takes ag_batch_norm()'s arguments.  Training with
 * more than one rank, it normalises x [N, C, ...] with the statistics of
 * every rank's batch together: each rank's count, mean and sum of squared
 * deviations per channel (f64) are gathered (MPI_Allgather) and merged in
 * rank order (Chan et al.), so every rank uses the same mean and biased
 * variance, and updates the running stats (if given) with the global
 * unbiased variance, unrecorded, as ag_batch_norm.  Its backward sums dy
 * and dy (x - mean) per channel over the ranks (torch's sum_dy and
 * sum_dy_xmu), so x's gradient is the one a single process holding the
 * whole batch would get; weight and bias get this rank's gradients (DDP
 * averages them).  Not twice differentiable (create_graph fails).
 * Eval mode, or one rank (also before ag_dist_init), is ag_batch_norm
 * itself, with no communication.
 *
 * Collective in training: every rank calls it, in the same order, with
 * the same training flag.  Every rank first learns whether every rank's
 * arguments passed ag_batch_norm's checks and hold the same C: if not, it
 * fails on every rank (AG_ESHAPE for different channel counts, naming the
 * range; a rank whose own arguments are bad keeps its own error, the
 * others name it).  A rank may hold no samples, if others do; fewer than
 * two values per channel over all the ranks is AG_EINVAL.  The backward's
 * exchange is point to point, tagged by the forward's sequence number,
 * so it may run on pool threads in any order beside DDP's all-reduces and
 * other synced layers; it happens where x needs a gradient, which must
 * then be true on every rank (a rank whose backward fails before it
 * leaves the others waiting, as a DDP collective would).
 */
AG_API struct ag_tensor *
ag_dist_batch_norm(struct ag_tensor *x, struct ag_tensor *running_mean,
		   struct ag_tensor *running_var, struct ag_tensor *weight,
		   struct ag_tensor *bias, bool training, double momentum,
		   double eps);
/*
 * torch.nn.SyncBatchNorm.convert_sync_batchnorm: every BatchNorm1d and
 * BatchNorm2d module in m's tree normalises with ag_dist_batch_norm from
 * now on (ag_module_set_batch_norm_fn; NULL there undoes it).  The
 * modules keep their names, parameters and buffers; nothing is sent.
 * Returns the number of modules switched, or -AG_EINVAL for m NULL.
 */
AG_API int ag_dist_sync_batchnorm(struct ag_module *m);

/*
 * DistributedDataParallel.
 *
 * ag_ddp_new() checks that every rank holds a module with the same
 * parameter and buffer names, dtypes and shapes (a mismatch fails on every
 * rank with AG_EINVAL naming the first rank that differs from rank 0),
 * copies rank 0's parameters and buffers to every rank, and hooks every
 * parameter that requires grad (post-accumulate-grad hooks).  Then each
 * ag_backward() through the module's output reduces the gradients while it
 * runs: parameters are packed into buckets of about bucket_bytes, in the
 * reverse of their registration order (about the order backward reaches
 * them) and, from the second backward on, in the order their gradients
 * became ready on rank 0 in the first.  A hook copies its gradient
 * divided by the world size into its bucket (as torch's DDP); a bucket
 * whose gradients are all in starts a non-blocking MPI all-reduce (a sum)
 * at once (buckets start in the same order on every rank), and a callback
 * queued on the backward waits for them all and writes the mean into each
 * .grad before ag_backward() returns.  So after backward every rank holds
 * the same .grad, the mean of the ranks' gradients, as torch's DDP.  MPI
 * moves a non-blocking all-reduce on only inside MPI calls: with more
 * than one rank, each ddp has a thread that tests the buckets in flight
 * every 50 us (and sleeps while none is).
 *
 * When every rank runs on one node the buckets are instead in memory the
 * ranks share, and the hooks copy gradients undivided: a bucket every
 * rank has filled is summed and divided in chunks by whichever ranks get
 * to it first (the last rank to fill it, ranks waiting in the callback),
 * with loads and stores; no thread is started.  Then ag_ddp_new() and
 * ag_ddp_free() are collective: call them on every rank.  And a rank
 * whose backward failed before it filled its buckets does not leave the
 * others waiting: once it frees its ddp (or fails in a DDP hook), their
 * backwards fail too, with AG_EIO naming it.
 *
 * A parameter that got no gradient in a backward is reduced as zeros;
 * with find_unused_parameters it then gets the mean of the others (its
 * .grad untouched only if no rank used it), without it the backward fails
 * with AG_EINVAL naming it (after the reduction: every rank returns).
 * ag_ddp_no_sync(ddp, true) accumulates gradients locally (micro-batches);
 * the first backward after ag_ddp_no_sync(ddp, false) reduces the sums.
 *
 * ag_ddp_forward() broadcasts rank 0's buffers (BatchNorm statistics)
 * before the module's forward, as torch's broadcast_buffers.  Run one
 * backward at a time through a ddp's module.  After a backward fails
 * midway the ranks may have started different reductions: ag_ddp_free()
 * and stop.
 */
struct ag_ddp_opts {
	/*
	 * 0: 25 MiB, as torch's bucket_cap_mb.  A bucket closes once it
	 * holds at least this many bytes, the first (as torch) once it holds
	 * 1 MiB or bucket_bytes if less, so that communication starts early.
	 */
	size_t bucket_bytes;
	bool find_unused_parameters;
	bool no_broadcast_buffers; /* ag_ddp_forward leaves buffers alone */
	/*
	 * When every rank runs on one node, the buckets live in memory the
	 * ranks share (an MPI-3 shared window) and are reduced there by
	 * loads and stores, without MPI_Iallreduce; the mean is the same on
	 * every rank, bitwise.  true: MPI_Iallreduce even then.  Across
	 * nodes it is MPI_Iallreduce either way.
	 */
	bool no_shared_memory;
};

struct ag_ddp;

/* Takes a reference to module; opts NULL: the defaults. */
AG_API struct ag_ddp *ag_ddp_new(struct ag_module *module,
				 const struct ag_ddp_opts *opts);
AG_API struct ag_tensor *ag_ddp_forward(struct ag_ddp *ddp,
					struct ag_tensor *x);
AG_API int ag_ddp_no_sync(struct ag_ddp *ddp, bool on);
/* NULL is fine; collective when the buckets are shared (above). */
AG_API void ag_ddp_free(struct ag_ddp *ddp);

/* What the last synchronised backward did, for tests and tuning. */
struct ag_ddp_stats {
	int buckets;
	/*
	 * Buckets started from a hook, while the backward still had nodes to
	 * run, rather than from the final callback.
	 */
	int buckets_overlapped;
	/*
	 * Buckets whose all-reduce completed before the final callback
	 * waited: communication the backward hid.
	 */
	int buckets_done_early;
	size_t bytes; /* all-reduced per backward */
	/* the buckets are in memory the ranks share (ag_ddp_opts) */
	bool shared_memory;
};
AG_API int ag_ddp_stats(struct ag_ddp *ddp, struct ag_ddp_stats *st);

#endif /* AG_DIST_H */
