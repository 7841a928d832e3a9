/* SPDX-License-Identifier: MIT */
#ifndef AG_DIST_INTERNAL_H
#define AG_DIST_INTERNAL_H

/*
 * Shared by the process group (dist.c) and DDP (ddp.c).  Every MPI call
 * goes through ag__dist_lock()/unlock(): hooks call MPI from pool threads,
 * and MPI_THREAD_SERIALIZED is all the library asks of MPI.
 */
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

/* -AG_EINVAL unless ag_dist_init ran. */
int ag__dist_need_init(const char *fn);

#endif /* AG_DIST_INTERNAL_H */
