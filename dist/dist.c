// SPDX-License-Identifier: MIT
/*
 * The process group: MPI set up (or attached to), a duplicate of
 * MPI_COMM_WORLD whose errors return instead of aborting the job, and
 * collectives on tensors.
 */
#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>

#include "dist_internal.h"

static MPI_Comm comm = MPI_COMM_NULL;
static bool started_mpi; /* ag_dist_init called MPI_Init_thread */
static int my_rank, world = 1;
static pthread_mutex_t mpi_lock = PTHREAD_MUTEX_INITIALIZER;

MPI_Comm ag__dist_comm(void)
{
	return comm;
}

void ag__dist_lock(void)
{
	pthread_mutex_lock(&mpi_lock);
}

void ag__dist_unlock(void)
{
	pthread_mutex_unlock(&mpi_lock);
}

/* An MPI error class as the closest AG_E* code. */
static int code_of(int mpi_rc)
{
	int cls = MPI_ERR_OTHER;

	MPI_Error_class(mpi_rc, &cls);
	switch (cls) {
	case MPI_ERR_NO_MEM:
		return AG_ENOMEM;
	case MPI_ERR_ARG:
	case MPI_ERR_COUNT:
	case MPI_ERR_TYPE:
	case MPI_ERR_OP:
	case MPI_ERR_ROOT:
	case MPI_ERR_RANK:
	case MPI_ERR_COMM:
	case MPI_ERR_BUFFER:
	case MPI_ERR_TRUNCATE:
		return AG_EINVAL;
	default:
		return AG_EIO;
	}
}

int ag__dist_check(int mpi_rc, const char *fn, const char *what)
{
	char msg[MPI_MAX_ERROR_STRING];
	int len = 0;

	if (mpi_rc == MPI_SUCCESS)
		return 0;
	if (MPI_Error_string(mpi_rc, msg, &len) != MPI_SUCCESS)
		snprintf(msg, sizeof(msg), "MPI error %d", mpi_rc);
	return ag_set_error(code_of(mpi_rc), "%s: %s failed: %s", fn, what,
			    msg);
}

MPI_Datatype ag__dist_type(enum ag_dtype dt)
{
	switch (dt) {
	case AG_F32:
		return MPI_FLOAT;
	case AG_F64:
		return MPI_DOUBLE;
	default:
		return MPI_INT64_T;
	}
}

int ag__dist_agree(int rc, const char *fn)
{
	int bad = rc != 0, any = bad, r;

	ag__dist_lock();
	r = MPI_Allreduce(&bad, &any, 1, MPI_INT, MPI_MAX, comm);
	ag__dist_unlock();
	if (rc)
		return rc;
	if (r != MPI_SUCCESS)
		return ag__dist_check(r, fn, "MPI_Allreduce");
	if (any)
		return ag_set_error(AG_EINVAL, "%s: another rank failed", fn);
	return 0;
}

int ag__dist_need_init(const char *fn)
{
	if (comm != MPI_COMM_NULL)
		return 0;
	return ag_set_error(AG_EINVAL, "%s: call ag_dist_init() first", fn);
}

/*
 * Every rank learns every rank's expected world size (one collective on
 * the new communicator), so a mismatch fails on all of them together,
 * naming the first rank that expects something else.
 */
static int check_world(const char *fn, int expect)
{
	int *all, rc;

	all = calloc((size_t)world, sizeof(*all));
	if (!all)
		return ag_set_error(AG_ENOMEM, "%s: out of memory", fn);
	rc = ag__dist_check(MPI_Allgather(&expect, 1, MPI_INT, all, 1, MPI_INT,
					  comm),
			    fn, "MPI_Allgather");
	for (int r = 0; r < world && !rc; r++) {
		if (all[r] < 0)
			rc = ag_set_error(
				AG_EINVAL,
				"%s: rank %d passes world_size %d; 0 (whatever MPI runs) or the number of ranks expected",
				fn, r, all[r]);
		else if (all[r] && all[r] != world)
			rc = ag_set_error(
				AG_EINVAL,
				"%s: rank %d expects a world size of %d, but MPI runs %d ranks",
				fn, r, all[r], world);
	}
	free(all);
	return rc;
}

int ag_dist_init(int *argc, char ***argv)
{
	return ag_dist_init_ex(argc, argv, NULL);
}

int ag_dist_init_ex(int *argc, char ***argv, const struct ag_dist_opts *o)
{
	const char *fn = "ag_dist_init";
	int expect = o ? o->world_size : 0;
	int inited = 0, finalized = 0, provided = 0, rc;

	if (comm != MPI_COMM_NULL) {
		if (expect && expect != world)
			return ag_set_error(
				AG_EINVAL,
				"%s: already initialised with %d ranks, this call expects %d",
				fn, world, expect);
		return 0;
	}
	MPI_Finalized(&finalized);
	if (finalized)
		return ag_set_error(
			AG_EINVAL,
			"%s: MPI was finalised already, and cannot start again in this process",
			fn);
	MPI_Initialized(&inited);
	if (!inited) {
		rc = MPI_Init_thread(argc, argv, MPI_THREAD_MULTIPLE,
				     &provided);
		if (rc != MPI_SUCCESS)
			return ag_set_error(AG_EIO,
					    "%s: MPI_Init_thread failed (%d)",
					    fn, rc);
		started_mpi = true;
	} else {
		MPI_Query_thread(&provided);
	}
	/* on failure MPI stays up: ag_dist_finalize() ends what we started */
	if (provided < MPI_THREAD_SERIALIZED)
		return ag_set_error(
			AG_EINVAL,
			"%s: MPI gives thread level %d, libag-dist needs MPI_THREAD_SERIALIZED (%d) or more",
			fn, provided, MPI_THREAD_SERIALIZED);
	rc = ag__dist_check(MPI_Comm_dup(MPI_COMM_WORLD, &comm), fn,
			    "MPI_Comm_dup");
	if (rc) {
		comm = MPI_COMM_NULL;
		return rc;
	}
	rc = ag__dist_check(MPI_Comm_set_errhandler(comm, MPI_ERRORS_RETURN),
			    fn, "MPI_Comm_set_errhandler");
	if (!rc)
		rc = ag__dist_check(MPI_Comm_rank(comm, &my_rank), fn,
				    "MPI_Comm_rank");
	if (!rc)
		rc = ag__dist_check(MPI_Comm_size(comm, &world), fn,
				    "MPI_Comm_size");
	if (!rc)
		rc = check_world(fn, expect);
	if (!rc)
		return 0;
	MPI_Comm_free(&comm);
	comm = MPI_COMM_NULL;
	my_rank = 0;
	world = 1;
	return rc;
}

int ag_dist_finalize(void)
{
	int rc = 0, finalized = 0;

	if (comm != MPI_COMM_NULL)
		MPI_Comm_free(&comm);
	comm = MPI_COMM_NULL;
	/* also after a failed ag_dist_init, which leaves MPI running */
	if (started_mpi && !MPI_Finalized(&finalized) && !finalized)
		rc = ag__dist_check(MPI_Finalize(), "ag_dist_finalize",
				    "MPI_Finalize");
	started_mpi = false;
	my_rank = 0;
	world = 1;
	return rc;
}

int ag_dist_rank(void)
{
	return my_rank;
}

int ag_dist_world_size(void)
{
	return world;
}

/*
 * What a collective on t needs: libag-dist set up, t's dense data and its
 * element count within MPI's int counts; or -AG_E* naming fn.
 */
static int dense(const char *fn, struct ag_tensor *t, void **data, int64_t *n)
{
	int rc = ag__dist_need_init(fn);

	if (rc)
		return rc;
	if (!t)
		return ag_errcode() ?
			       -ag_errcode() :
			       ag_set_error(AG_EINVAL, "%s: t is NULL", fn);
	if (!ag_tensor_is_contiguous(t))
		return ag_set_error(
			AG_EINVAL,
			"%s: t must be contiguous (call ag_contiguous)", fn);
	*n = ag_tensor_numel(t);
	if (*n > INT32_MAX)
		return ag_set_error(AG_EINVAL,
				    "%s: %lld elements, MPI counts stop at %d",
				    fn, (long long)*n, INT32_MAX);
	*data = ag_tensor_data(t);
	return 0;
}

int ag_dist_all_reduce(struct ag_tensor *t, enum ag_dist_op op)
{
	const char *fn = "ag_dist_all_reduce";
	enum ag_dtype dt;
	int64_t n;
	void *data;
	int rc;

	rc = dense(fn, t, &data, &n);
	if (rc)
		return rc;
	dt = ag_tensor_dtype(t);
	if (op != AG_DIST_SUM && op != AG_DIST_MEAN && op != AG_DIST_MAX)
		return ag_set_error(AG_EINVAL, "%s: unknown op %d", fn,
				    (int)op);
	if (op == AG_DIST_MEAN && dt == AG_I64)
		return ag_set_error(AG_EDTYPE,
				    "%s: AG_DIST_MEAN of an i64 tensor", fn);
	ag__dist_lock();
	rc = ag__dist_check(
		MPI_Allreduce(MPI_IN_PLACE, data, (int)n, ag__dist_type(dt),
			      op == AG_DIST_MAX ? MPI_MAX : MPI_SUM, comm),
		fn, "MPI_Allreduce");
	ag__dist_unlock();
	if (rc || op != AG_DIST_MEAN)
		return rc;
	for (int64_t i = 0; i < n; i++) {
		if (dt == AG_F32)
			((float *)data)[i] /= (float)world;
		else
			((double *)data)[i] /= world;
	}
	return 0;
}

int ag_dist_broadcast(struct ag_tensor *t, int root)
{
	const char *fn = "ag_dist_broadcast";
	int64_t n;
	void *data;
	int rc;

	rc = dense(fn, t, &data, &n);
	if (rc)
		return rc;
	if (root < 0 || root >= world)
		return ag_set_error(AG_EINVAL,
				    "%s: root %d out of range for %d ranks", fn,
				    root, world);
	ag__dist_lock();
	rc = ag__dist_check(MPI_Bcast(data, (int)n,
				      ag__dist_type(ag_tensor_dtype(t)), root,
				      comm),
			    fn, "MPI_Bcast");
	ag__dist_unlock();
	return rc;
}

int ag_dist_barrier(void)
{
	int rc = ag__dist_need_init("ag_dist_barrier");

	if (rc)
		return rc;
	ag__dist_lock();
	rc = ag__dist_check(MPI_Barrier(comm), "ag_dist_barrier",
			    "MPI_Barrier");
	ag__dist_unlock();
	return rc;
}
