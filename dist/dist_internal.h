/* SPDX-License-Identifier: MIT */
#ifndef AG_DIST_INTERNAL_H
#define AG_DIST_INTERNAL_H

/*
 * Shared by the process group (dist.c) and DDP (ddp.c).  Every MPI call
 * goes through ag__dist_lock()/unlock(): hooks call MPI from pool threads,
 * and MPI_THREAD_SERIALIZED is all the library asks of MPI.
 */
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <mpi.h>

#include <ag/dist.h>
#include <ag/error.h>

/* The communicator (errors return); MPI_COMM_NULL before ag_dist_init. */
MPI_Comm ag__dist_comm(void);
void ag__dist_lock(void);
void ag__dist_unlock(void);

/*
 * Turns an MPI return code into -AG_E* with "fn: what: <MPI's string>";
 * MPI_SUCCESS is 0.
 */
int ag__dist_check(int mpi_rc, const char *fn, const char *what);

/* The MPI type of a libag dtype. */
MPI_Datatype ag__dist_type(enum ag_dtype dt);

/*
 * Whether every rank got this far (rc 0 on all): one MPI_Allreduce, so a
 * rank that failed alone (out of memory) fails them all instead of leaving
 * them in the next collective.  Returns rc, or an error if another failed.
 */
int ag__dist_agree(int rc, const char *fn);

/* -AG_EINVAL unless ag_dist_init ran. */
int ag__dist_need_init(const char *fn);

/*
 * DDP's buckets in memory every rank maps (shm.c), when all ranks run on
 * one node.  ag__shm_new is collective: *out stays NULL (and 0 returns)
 * when the ranks span nodes.  bytes is this rank's data; slots the most
 * buckets.  ag__shm_free is collective too, and abandons (below).
 */
struct ag__shm;
int ag__shm_new(struct ag__shm **out, size_t bytes, int slots);
void ag__shm_free(struct ag__shm *s);
void *ag__shm_data(struct ag__shm *s); /* this rank's, 64-byte aligned */
/* This rank's bucket in slot is full; true if it was the last rank in. */
bool ag__shm_arrive(struct ag__shm *s, int slot);
/*
 * Reduces what is left to claim of slot's bucket (f32 or f64, off bytes
 * into every rank's data) once every rank is in; true when all of it is
 * the mean on every rank.  ag__shm_wait helps until then.
 */
bool ag__shm_reduce(struct ag__shm *s, int slot, size_t off, int64_t numel,
		    enum ag_dtype dt);
int ag__shm_wait(struct ag__shm *s, int slot, size_t off, int64_t numel,
		 enum ag_dtype dt);
/*
 * This rank will not fill its buckets again (ag__shm_free does it too):
 * ranks waiting for it, now or later, fail with AG_EIO naming the first
 * rank that gave up, as ag__shm_check does once one has.
 */
void ag__shm_abandon(struct ag__shm *s);
int ag__shm_check(struct ag__shm *s);
/* After the slot's reduction was done on this rank: ready for the next. */
void ag__shm_next(struct ag__shm *s, int slot, int64_t numel, enum ag_dtype dt);

#endif /* AG_DIST_INTERNAL_H */
